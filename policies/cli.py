"""CLI commands of this part (wired into `tether` by tether/cli.py): `tether train`, and the
server helper's `tether serve` / `tether keys` registered below it."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    _register_train(app)
    # server commands registered below
    from tether.policies.serve_cli import _register_serve

    _register_serve(app)


def _register_train(app: typer.Typer) -> None:
    @app.command(
        "train",
        help=(
            "Train ACT or Diffusion Policy on an episode store, or resume a run.\n\n"
            "Example: tether train --dataset data.zarr --policy act --preset cpu --steps 3000 "
            "--out runs/act_lift\n\n"
            "Resume: tether train --resume runs/act_lift   (optionally --steps N to extend)\n\n"
            "Keep the checkpoint that succeeds most on the twin: --eval-task lift --eval-every 500\n\n"
            "Any setting: --set model.dim=256 --set lr=3e-4 (keys of TrainConfig; model.* are "
            "model config keys). Multi-process: torchrun --nproc_per_node 2 -m tether.cli train ..."
        ),
    )
    def train_command(
        dataset: str | None = typer.Option(None, "--dataset", "-d", help="Episode store (.zarr) to train on."),
        policy: str | None = typer.Option(None, "--policy", "-p", help="act (default) or diffusion."),
        preset: str | None = typer.Option(None, "--preset", help="tiny, cpu, default (default) or full."),
        steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default: preset)."),
        out: str | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/latest)."),
        resume: str | None = typer.Option(None, "--resume", help="Run directory to continue."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML/TOML/JSON TrainConfig file."),
        overrides: list[str] = typer.Option([], "--set", help="key=value override, repeatable."),
        seed: int | None = typer.Option(None, "--seed", help="Random seed."),
        threads: int | None = typer.Option(None, "--threads", help="torch threads (0 = torch default)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
        eval_task: str | None = typer.Option(
            None, "--eval-task", help="Evaluate on this twin task every --eval-every steps; keeps the best."),
        eval_every: int | None = typer.Option(None, "--eval-every", help="Steps between twin evaluations."),
        eval_episodes: int = typer.Option(10, "--eval-episodes", help="Seeded twin episodes per evaluation."),
        keep_every: int | None = typer.Option(
            None, "--keep-every", help="Keep a checkpoint every N steps (for tether eval --sweep)."),
    ) -> None:
        from rich.console import Console

        from tether.errors import TetherError

        console = Console(stderr=True)
        try:
            evaluate = None
            if eval_task:
                from tether.eval.worker import make_twin_evaluator

                evaluate = make_twin_evaluator(eval_task, eval_episodes)
            run_dir = _train(dataset, policy, preset, steps, out, resume, config, overrides, seed,
                             threads, not no_progress, evaluate, eval_every, keep_every)
        except TetherError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        console.print(f"[green]done:[/green] {run_dir}  (load with "
                      f"tether.policies.checkpoint.load_policy('{run_dir}'))")


def _train(dataset, policy, preset, steps, out, resume, config, overrides, seed, threads, progress,
           evaluate=None, eval_every=None, keep_every=None) -> Path:
    from tether.config import apply_overrides, from_dict, load_mapping
    from tether.policies.trainer import TrainConfig, train

    if resume:
        cfg = TrainConfig(out=resume, steps=steps, progress=progress)
        return train(cfg, evaluate=evaluate, resume=True)
    data = load_mapping(config) if config else {}
    explicit = {}
    for key, value in (("dataset", dataset), ("policy", policy), ("preset", preset), ("out", out),
                       ("steps", steps), ("seed", seed), ("threads", threads),
                       ("eval_every", eval_every), ("keep_every", keep_every)):
        if value is not None:
            explicit[key] = value
    data = {**data, **explicit, "progress": progress}
    cfg = from_dict(TrainConfig, apply_overrides(data, overrides))
    if evaluate is not None and not cfg.eval_every:
        from tether.errors import ConfigError

        raise ConfigError("--eval-task needs --eval-every N (steps between evaluations).")
    return train(cfg, evaluate=evaluate)
