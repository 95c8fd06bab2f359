"""`tether eval` and `tether demo` (wired into `tether` by tether/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("demo")(demo_command)


def eval_command(
    task: str = typer.Option("lift", "--task", "-t", help="Twin task: lift, transfer_cube, insertion."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", "-c", help="Run or checkpoint directory."),
    server: str | None = typer.Option(None, "--server", help="Policy server address, e.g. tcp://127.0.0.1:5555."),
    policy: str | None = typer.Option(None, "--policy", help="'scripted': the twin's expert (a baseline)."),
    sweep_run: Path | None = typer.Option(None, "--sweep", help="Evaluate every checkpoint of this run."),
    episodes: int = typer.Option(20, "--episodes", "-n", min=1, help="Seeded episodes."),
    workers: int = typer.Option(1, "--workers", "-w", min=0, help="Worker processes (0: in this process)."),
    seed: int = typer.Option(100_000, "--seed", help="First seed (held out from data collection)."),
    out: Path = typer.Option(Path("reports/eval"), "--out", "-o", help="Report folder."),
    videos: int = typer.Option(2, "--videos", min=0, help="Videos of successes and of failures, per worker."),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps per chunk (diffusion policies)."),
    sampler: str | None = typer.Option(None, "--sampler", help="Diffusion sampler: ddim, dpmpp or "
                                       "streaming; comma-separated with --sweep-steps."),
    sweep_steps: str | None = typer.Option(None, "--sweep-steps", help="Evaluate a diffusion policy "
                                           "at each step count, e.g. 1,2,3,5,10,20,100: success "
                                           "and latency per setting (steps_sweep.json, report.html)."),
    push: str | None = typer.Option(None, "--push", help="STEP:METERS: push the object sideways "
                                    "after that control step (twin; a reaction test), e.g. 15:0.03."),
    blend: str = typer.Option("ensemble", "--blend", help="ensemble (temporal ensembling) or switch."),
    stream_lookahead: int | None = typer.Option(
        None, "--stream-lookahead", min=0, help="Streaming sampler: append the call's clean estimates "
        "of this many next actions to each reply, for --blend ensemble (default: the checkpoint's)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    env: str | None = typer.Option(None, "--env", help="A gymnasium env id instead of the twin task, "
                                   "e.g. Pendulum-v1 or tether/TwinLift-v0."),
    obs_map: Path | None = typer.Option(None, "--obs-map", help="YAML mapping the env's observations "
                                        "to the policy's cameras/state (docs/evaluation.md)."),
    backend: str = typer.Option("local", "--backend", help="local (worker processes) or ray (one Ray "
                                "task per episode; pip install 'tether[cluster]')."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to use with --backend ray "
                                       "(auto, host:6379, ray://head:10001); default: a local Ray."),
    overrides: list[str] = typer.Option([], "--set", help="Twin robot config override key=value "
                                        "(repeatable), e.g. safety.max_velocity=0.5 to evaluate at "
                                        "the speed the demonstrations were recorded at."),
) -> None:
    """Evaluate a policy on seeded twin episodes and write a report (JSON, CSV, plots, videos, HTML).

    Example: tether eval --task lift --checkpoint runs/act-lift --episodes 50 --workers 2

    Example: tether eval --env Pendulum-v1 --obs-map pendulum.yaml --server tcp://127.0.0.1:5555

    Example: tether eval --task lift --checkpoint /shared/runs/act-lift --episodes 500 --backend ray --address auto

    Example: tether eval --task lift --checkpoint runs/dp-lift --sweep-steps 1,3,10 --sampler ddim,dpmpp
    """
    import json

    from rich.console import Console

    from tether.app.eval.runner import EvalConfig, evaluate
    from tether.core.errors import TetherError

    console = Console(stderr=True)
    if push is not None:
        from tether.app.eval.perturb import Push

        Push.parse(push)  # a bad value fails before any worker starts
    config = EvalConfig(task=task, episodes=episodes, workers=workers, seed=seed,
                        checkpoint=checkpoint, server=server, policy=policy, out=str(out),
                        videos=videos, steps=steps, env=env,
                        rollout={"blend": blend, **_lookahead(stream_lookahead, sampler)},
                        obs_map=None if obs_map is None else str(obs_map.resolve()),
                        backend=backend, address=address, robot=list(overrides),
                        sampler=sampler, push=push)
    config.check_backend()
    if sweep_steps is not None:
        _sweep_steps(config, sweep_steps, sampler, steps, sweep_run, json_out, console)
        return
    if sampler is not None:
        from tether.app.eval.steps_sweep import parse_sampler

        parse_sampler(sampler, "; a comma-separated list goes with --sweep-steps.")
    if obs_map is not None and not obs_map.is_file():
        raise TetherError(f"--obs-map {obs_map} does not exist; write one (docs/evaluation.md, "
                          "'Any gymnasium env').")
    if (env or obs_map) and sweep_run is not None:
        raise TetherError("--sweep evaluates on the twin; drop --env/--obs-map.")
    if sweep_run is not None:
        from tether.app.eval.sweep import sweep

        if checkpoint or server or policy:
            raise TetherError("--sweep evaluates the run's own checkpoints; drop --checkpoint/--server/--policy.")
        result = sweep(sweep_run, config, show_progress=not json_out)
        if json_out:
            print(json.dumps(result, indent=2))
        else:
            for r in result["checkpoints"]:
                mark = "[bold green]best[/]" if r["best"] else ""
                console.print(f"{r['checkpoint']}: {r['success_rate']:.0%} {mark}")
        return
    summary = evaluate(config, show_progress=not json_out)
    if json_out:
        print(json.dumps(summary, indent=2, default=str))
    else:
        low, high = summary["success_ci95"]
        console.print(
            f"[bold]{env or task}[/]: success {summary['successes']}/{summary['episodes']} = "
            f"{summary['success_rate']:.0%} (95% CI {low:.0%}-{high:.0%}); report: {out / 'report.html'}"
        )


def _lookahead(stream_lookahead: int | None, sampler: str | None) -> dict[str, int]:
    """The rollout setting for --stream-lookahead (refused beside chunk samplers only)."""
    from tether.app.eval.steps_sweep import check_stream_lookahead, parse_samplers

    if stream_lookahead is None:
        return {}
    check_stream_lookahead(stream_lookahead, None if sampler is None else parse_samplers(sampler))
    return {"stream_lookahead": stream_lookahead}


def _sweep_steps(config, steps_text: str, sampler: str | None, steps: int | None,
                 sweep_run: Path | None, json_out: bool, console) -> None:
    """`--sweep-steps`: the sampling-speed frontier of one diffusion policy."""
    import json

    from tether.app.eval.steps_sweep import parse_samplers, parse_steps, sweep_steps
    from tether.core.errors import TetherError

    if steps is not None or sweep_run is not None:
        raise TetherError("--sweep-steps sets the steps itself; drop --steps/--sweep.")
    result = sweep_steps(config, parse_steps(steps_text), parse_samplers(sampler),
                         show_progress=not json_out)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    for r in result["settings"]:
        low, high = r["success_ci95"]
        n = "1 call/step" if r["steps"] is None else f"{r['steps']} steps"
        console.print(f"{r['sampler']} {n}: success {r['success_rate']:.0%} (95% CI {low:.0%}-"
                      f"{high:.0%}), inference p50 {r['inference_ms_p50']:.1f} ms (indicative)")
    console.print(f"report: {Path(config.out) / 'report.html'}")


def demo_command(
    quick: bool = typer.Option(False, "--quick", help="A shortened run for tests (a minute or two)."),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for data, run and report."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Evaluation worker processes."),
) -> None:
    """The main job: scripted demos -> Zarr -> ACT training -> ZMQ server -> twin evaluation.

    Example: tether demo            (about 10 minutes on 2 CPU cores)
    """
    from rich.console import Console

    from tether.app.eval.demo import DemoConfig, run_demo

    console = Console()
    run_demo(DemoConfig.quick(out, workers) if quick else DemoConfig(out=str(out), workers=workers),
             console)
