"""CLI commands of this part (wired into `tether` by tether/cli.py): `tether train`, and the
server helper's `tether serve` / `tether keys` registered below it."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    _register_train(app)
    # server commands registered below
    from tether.app.commands.serve import _register_serve

    _register_serve(app)


# The examples `tether train --help` shows; tests run each of them with --dry-run.
TRAIN_EXAMPLES = (
    "tether train --dataset data.zarr --policy act --out runs/act_lift",
    "tether train --dataset data.zarr --policy act --preset cpu --steps 3000 --out runs/act_lift",
    "tether train --dataset data.zarr --set model.dim=256 --set lr=3e-4 --out runs/act_big",
)


def _register_train(app: typer.Typer) -> None:
    from tether.policies.registry import names as policy_names

    @app.command(
        "train",
        help=(
            f"Train a policy ({', '.join(policy_names())}) on an episode store, or resume a run.\n\n"
            f"Example: {TRAIN_EXAMPLES[0]}   (no --preset: 'cpu' on a CPU, minutes; 'default' on "
            "a GPU)\n\n"
            f"Example: {TRAIN_EXAMPLES[1]}\n\n"
            "Resume: tether train --resume runs/act_lift   (optionally --steps N to extend; Ctrl-C "
            "saves a checkpoint to resume from)\n\n"
            "An existing --out directory is refused: add --overwrite to replace that run.\n\n"
            "Keep the checkpoint that succeeds most on the twin: --eval-task lift --eval-every 500 "
            "(best = the latest evaluation indistinguishable from the leader by 95% intervals; "
            "--eval-weights both "
            "also tries the raw weights; --val-holdout 5 plots validation loss beside success in "
            "RUN/selection.html)\n\n"
            f"Any setting (keys of TrainConfig; model.* are model config keys): {TRAIN_EXAMPLES[2]}"
            "\n\nCheck a configuration without training: add --dry-run. "
            "Multi-process on this host: --nproc 2 (execs torchrun); across hosts: torchrun "
            "--nnodes N --rdzv-backend c10d ... -m tether.policies.train (docs/scaling.md)"
        ),
    )
    def train_command(
        datasets: list[str] = typer.Option(
            [], "--dataset", "-d", help="Episode store (.zarr or s3://... URL); repeat for several, "
            "PATH:WEIGHT to weight one (normalizer fitted over all)."),
        policy: str | None = typer.Option(None, "--policy", "-p", help=f"{' | '.join(policy_names())} (default act)."),
        preset: str | None = typer.Option(
            None, "--preset", help="tiny, cpu, default or full (default: cpu on CPU, default on GPU)."),
        steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default: preset)."),
        out: str | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/latest)."),
        resume: str | None = typer.Option(None, "--resume", help="Run directory to continue."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace the run in a non-empty --out (its checkpoints, config, metrics)."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML/TOML/JSON TrainConfig file."),
        overrides: list[str] = typer.Option([], "--set", help="key=value override, repeatable."),
        seed: int | None = typer.Option(None, "--seed", help="Random seed."),
        threads: int | None = typer.Option(None, "--threads", help="torch threads (0 = torch default)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar / lines."),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the resolved configuration and exit without training."),
        eval_task: str | None = typer.Option(
            None, "--eval-task", help="Evaluate on this twin task every --eval-every steps; keeps the best."),
        eval_every: int | None = typer.Option(None, "--eval-every", help="Steps between twin evaluations."),
        eval_episodes: int = typer.Option(10, "--eval-episodes", help="Seeded twin episodes per evaluation."),
        eval_weights: str | None = typer.Option(
            None, "--eval-weights", help="ema (default), raw or both: which weights each evaluation runs."),
        eval_set: list[str] = typer.Option(
            [], "--eval-set", help="Twin override for the evaluations, e.g. safety.max_velocity=0.5 "
            "(evaluate at the speed the demonstrations were recorded at)."),
        eval_blend: str = typer.Option(
            "ensemble", "--eval-blend", help="ensemble (temporal ensembling) or switch (execute "
            "whole chunks, as Diffusion Policy does)."),
        val_holdout: int | None = typer.Option(
            None, "--val-holdout", min=0, help="Keep the last N episodes out of training and log "
            "their loss at every evaluation."),
        keep_every: int | None = typer.Option(
            None, "--keep-every", help="Keep a checkpoint every N steps (for tether eval --sweep)."),
        nproc: int | None = typer.Option(
            None, "--nproc", min=1, help="Train with N processes on this host: execs torchrun "
            "(batch_size is per process)."),
        intervention_weight: float | None = typer.Option(
            None, "--intervention-weight", min=0.0, help="Takeover corrections: windows at steps the "
            "operator drove count W times (tether rollout --record --takeover)."),
        policy_weight: float | None = typer.Option(
            None, "--policy-weight", min=0.0, help="Weight of steps a policy drove in recorded "
            "rollouts (0 drops them, as HG-DAgger does; default 1)."),
        episodes_from: Path | None = typer.Option(
            None, "--episodes-from", help="Train on the episodes listed in this file (one index "
            "per line; `tether data quality STORE --keep-out FILE` writes it)."),
    ) -> None:
        from rich.console import Console

        from tether.policies.trainer import TrainingInterrupted

        console = Console(stderr=True)
        dataset = None if not datasets else datasets[0] if len(datasets) == 1 else list(datasets)
        overrides = [*overrides, *(f"{key}={value}" for key, value in (
            ("intervention_weight", intervention_weight), ("policy_weight", policy_weight))
            if value is not None)]
        overrides += [f"{key}={value}" for key, value in (
            ("eval_weights", eval_weights), ("val_holdout", val_holdout)) if value is not None]
        if episodes_from is not None:
            from tether.data.quality import read_episode_list

            overrides.append(f"episodes={read_episode_list(episodes_from)}")
        if nproc is not None and not dry_run:
            import os

            argv = torchrun_argv(nproc, dataset=dataset, policy=policy, preset=preset, steps=steps,
                                 out=out, resume=resume, overwrite=overwrite, config=config,
                                 overrides=overrides, seed=seed, threads=threads,
                                 no_progress=no_progress, keep_every=keep_every, eval_task=eval_task,
                                 eval_every=eval_every, eval_episodes=eval_episodes,
                                 eval_set=eval_set, eval_blend=eval_blend)
            os.execv(argv[0], argv)  # torchrun owns the processes (and Ctrl-C) from here
        try:
            if dry_run:
                _dry_run(dataset, policy, preset, steps, out, resume, config, overrides, seed, threads,
                         eval_every, keep_every)
                return
            evaluate = select = None
            if eval_task:
                from tether.app.eval.sweep import twin_scorer

                evaluate = twin_scorer(eval_task, eval_episodes, robot=eval_set,
                                       rollout={"blend": eval_blend})
                select = selection_writer(Path(resume or out or "runs/latest"), console)
            run_dir = _train(dataset, policy, preset, steps, out, resume, config, overrides, seed,
                             threads, not no_progress, evaluate, eval_every, keep_every, overwrite,
                             select)
        except TrainingInterrupted as exc:
            console.print(f"[yellow]interrupted[/yellow] ({exc.signal_name}) at step {exc.step}: "
                          f"checkpoint saved to {exc.checkpoint}\n"
                          f"continue with: tether train --resume {exc.run_dir}", highlight=False,
                          soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow] before the first training step; nothing saved")
            raise typer.Exit(130) from None
        console.print(f"[green]done:[/green] {run_dir}  (serve with: tether serve {run_dir})",
                      highlight=False, soft_wrap=True)


def selection_writer(run_dir: Path, console):
    """The trainer's `select(history) -> index`: the confidence-interval rule of
    tether.app.eval.selection; it also (re)writes RUN/selection.json and RUN/selection.html
    (success with intervals, training and validation loss against step) after every evaluation."""
    import json

    from tether.app.eval.selection import Scored, choose
    from tether.app.eval.selection_report import write_selection_report
    from tether.app.eval.sweep import run_losses

    def select(history: list[dict]) -> int:
        scored = [Scored.from_row(row) for row in history]
        choice = choose(scored)
        console.print(f"[bold]checkpoint choice[/bold]: {choice.note}", highlight=False, soft_wrap=True)
        (run_dir / "selection.json").write_text(json.dumps(
            {**choice.as_dict(scored), "evaluations": history}, indent=2) + "\n")
        write_selection_report(run_dir / "selection.html", scored, choice, run_losses(run_dir),
                               title=f"{run_dir}: twin success by step")
        return choice.index

    return select


def torchrun_argv(nproc: int, eval_task: str | None = None, eval_every: int | None = None,
                  eval_episodes: int = 10, eval_set: list[str] | None = None,
                  eval_blend: str = "ensemble", **options) -> list[str]:
    """The torchrun command `tether train --nproc N ...` execs: N processes on this host, each
    running the trainer with the same options (torchrun's own launcher, not ours).

    `python -m tether.policies.train` starts fastest; periodic twin evaluation needs the app
    layer, so with --eval-task each process runs `tether.cli train` instead."""
    import os
    import sys

    from tether.core.errors import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--nproc starts torchrun, but this process already runs under torchrun "
                          "(WORLD_SIZE is set); drop --nproc")
    flags = {"--dataset": options.get("dataset"), "--policy": options.get("policy"),
             "--preset": options.get("preset"), "--steps": options.get("steps"),
             "--out": options.get("out"), "--resume": options.get("resume"),
             "--config": options.get("config"), "--seed": options.get("seed"),
             "--threads": options.get("threads"), "--keep-every": options.get("keep_every")}
    args = [x for flag, value in flags.items() if value is not None and not isinstance(value, list)
            for x in (flag, str(value))]
    if isinstance(options.get("dataset"), list):  # several --dataset values
        args += [x for value in options["dataset"] for x in ("--dataset", str(value))]
    for item in options.get("overrides") or []:
        args += ["--set", item]
    args += [flag for flag, on in (("--overwrite", options.get("overwrite")),
                                   ("--no-progress", options.get("no_progress"))) if on]
    module = ["-m", "tether.policies.train"]
    if eval_task:
        module = ["-m", "tether.cli", "train"]
        args += ["--eval-task", eval_task, "--eval-episodes", str(eval_episodes)]
        args += ["--eval-every", str(eval_every)] if eval_every is not None else []
        args += [x for item in eval_set or [] for x in ("--eval-set", item)]
        args += ["--eval-blend", eval_blend]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(nproc), *module, *args]


def _train_config(dataset, policy, preset, steps, out, config, overrides, seed, threads, progress,
                  eval_every=None, keep_every=None):
    """The TrainConfig a command line asks for (before the preset fills it in)."""
    from tether.core.config import apply_overrides, from_dict, load_mapping
    from tether.policies.trainer import TrainConfig

    data = load_mapping(config) if config else {}
    explicit = {}
    for key, value in (("dataset", dataset), ("policy", policy), ("preset", preset), ("out", out),
                       ("steps", steps), ("seed", seed), ("threads", threads),
                       ("eval_every", eval_every), ("keep_every", keep_every)):
        if value is not None:
            explicit[key] = value
    data = {**data, **explicit, "progress": progress}
    return from_dict(TrainConfig, apply_overrides(data, overrides))


def _train(dataset, policy, preset, steps, out, resume, config, overrides, seed, threads, progress,
           evaluate=None, eval_every=None, keep_every=None, overwrite=False, select=None) -> Path:
    from tether.policies.trainer import TrainConfig, train

    if resume:
        if overwrite:
            from tether.core.errors import ConfigError

            raise ConfigError("--resume continues a run and --overwrite replaces it; choose one")
        cfg = TrainConfig(out=resume, steps=steps, progress=progress)
        return train(cfg, evaluate=evaluate, resume=True, select=select)
    cfg = _train_config(dataset, policy, preset, steps, out, config, overrides, seed, threads, progress,
                        eval_every, keep_every)
    if evaluate is not None and not cfg.eval_every:
        from tether.core.errors import ConfigError

        raise ConfigError("--eval-task needs --eval-every N (steps between evaluations).")
    return train(cfg, evaluate=evaluate, overwrite=overwrite, select=select)


def _dry_run(dataset, policy, preset, steps, out, resume, config, overrides, seed, threads,
             eval_every, keep_every) -> None:
    """Resolve (preset by device, overrides, model keys) and print the config; train nothing."""
    import json

    from tether.core.config import to_dict
    from tether.policies.registry import get_family
    from tether.policies.trainer import (
        choose_preset,
        load_run_config,
        resolve_config,
        resolve_device,
    )


    if resume:
        cfg = load_run_config(resume)
    else:
        cfg = _train_config(dataset, policy, preset, steps, out, config, overrides, seed, threads, True,
                            eval_every, keep_every)
        family = get_family(cfg.policy)  # an unknown policy fails before any other message
        if cfg.preset is None:
            name, why = choose_preset(resolve_device(cfg.device))
            typer.echo(f"preset '{name}' for {cfg.policy} (no preset given; {why})", err=True)
        cfg = resolve_config(cfg)
        family.make_config(cfg.model)  # unknown model keys fail here
    typer.echo(json.dumps(to_dict(cfg), indent=2))
