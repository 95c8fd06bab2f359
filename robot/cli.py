"""CLI command of the robot side: rollout (wired by tether/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    app.command("rollout")(rollout)


def rollout(
    robot: str = typer.Option(
        "twin:lift", "--robot", "-r", help="twin:<task> or a robot config file."
    ),
    server: str | None = typer.Option(None, "--server", "-s", help="Policy server endpoint."),
    policy: str | None = typer.Option(
        None, "--policy", "-p", help="Run in-process instead: a checkpoint or simple:<name>."
    ),
    episodes: int = typer.Option(1, "--episodes", "-n", min=1, help="Episodes to run."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first episode (twin)."),
    max_steps: int | None = typer.Option(
        None, "--max-steps", help="Ticks per episode (default: task's)."
    ),
    blend: str = typer.Option("ensemble", "--blend", help="ensemble | switch."),
    ensemble_m: float = typer.Option(0.01, "--m", help="Temporal ensembling coefficient."),
    threshold: int | None = typer.Option(
        None, "--threshold", help="Request the next chunk when this many actions remain."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Denoising steps per request (diffusion)."
    ),
    realtime: bool = typer.Option(
        True, "--realtime/--lockstep", help="Pace to the wall clock, or wait for every chunk."
    ),
    timeout: float = typer.Option(0.5, "--timeout", help="Seconds before a request is resent."),
    keys: Path | None = typer.Option(None, "--keys", help="CURVE key directory (see tether keys)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write per-episode summaries here."),
    overrides: list[str] = typer.Option([], "--set", help="Robot config override key=value."),
) -> None:
    """Run a policy on a robot: async chunks, latency alignment, blending, stall watchdog.

    Example: tether rollout --robot twin:lift --server tcp://127.0.0.1:5555 --episodes 3
    Example: tether rollout --robot twin:lift --policy simple:hold --lockstep --max-steps 100
    """
    from tether.errors import ConfigError, TetherError

    try:
        if (server is None) == (policy is None):
            raise ConfigError(
                "give exactly one of --server ENDPOINT or --policy CHECKPOINT|simple:<name>"
            )
        summaries = _run(
            robot, server, policy, episodes, seed, overrides, keys, timeout,
            dict(max_steps=max_steps, blend=blend, ensemble_m=ensemble_m,
                 request_threshold=threshold, steps=steps, realtime=realtime,
                 request_timeout_s=timeout),
        )  # fmt: skip
    except TetherError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None
    _print(summaries)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summaries, indent=2))


def _run(
    robot_spec, server, policy, episodes, seed, overrides, keys, timeout, options
) -> list[dict]:
    from tether.robot.factory import make_robot
    from tether.robot.rollout import RolloutConfig, run_episode

    config = RolloutConfig(**options)
    robot = make_robot(robot_spec, overrides)
    summaries = []
    if server is not None:
        from tether.policies.client import PolicyClient

        source = PolicyClient(server, timeout_s=timeout, keys_dir=keys)
    else:
        from tether.policies.serve_cli import load_served_policy

        source = load_served_policy(policy, robot_spec, 50, 0.0, "cpu")
    try:
        with robot:
            for episode in range(episodes):
                result = run_episode(robot, source, config, seed=seed + episode)
                summaries.append(result.summary())
    finally:
        if server is not None:
            source.close()
    return summaries


def _print(summaries: list[dict]) -> None:
    table = Table(title="rollout")
    for column in (
        "seed",
        "success",
        "steps",
        "chunks",
        "latency p50/p99 ms",
        "dropped",
        "stalls",
        "safety",
    ):
        table.add_column(column)
    for s in summaries:
        table.add_row(
            str(s["seed"]),
            "-" if s["success"] is None else ("yes" if s["success"] else "no"),
            str(s["length"]),
            str(s["chunks"]),
            f"{s['latency_p50_ms']:.1f} / {s['latency_p99_ms']:.1f}",
            str(s["dropped_actions"]),
            str(s["stalls"]),
            ", ".join(f"{k} {v}" for k, v in s["safety"].items()) or "-",
        )
    console.print(table)
