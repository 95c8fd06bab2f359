"""CLI command of the robot side: rollout (wired by tether/cli.py).

While it runs, `e` on the terminal latches the e-stop (every arm holds its last safe command)
until `x` releases it. When stdout is not a terminal (a pipe, nohup, CI) it prints a plain
progress line per episode and at most one every few seconds within an episode.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tether.app.commands.record import VIEW_HELP
from tether.core.progress import PlainLines

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
    sampler: str | None = typer.Option(
        None, "--sampler", help="Diffusion sampler per request: ddim, dpmpp or streaming "
        "(default: the policy's)."
    ),
    stream_lookahead: int | None = typer.Option(
        None, "--stream-lookahead", min=0, help="Streaming sampler: append the call's clean "
        "estimates of this many next actions to each reply, for --blend ensemble."
    ),
    realtime: bool = typer.Option(
        True, "--realtime/--lockstep",
        help="Pace to the wall clock, or wait for every chunk (--lockstep: simulated robots only).",
    ),
    resample: bool = typer.Option(
        False, "--resample",
        help="Run a policy whose fps differs from the robot's by time-interpolating each chunk "
             "onto the robot's ticks (otherwise refused; observations stay at the robot's rate).",
    ),
    keyboard: bool | None = typer.Option(
        None, "--keyboard/--no-keyboard",
        help="Read the e-stop keys from stdin (default: when stdin is a terminal).",
    ),
    timeout: float = typer.Option(0.5, "--timeout", help="Seconds before a request is resent."),
    connect_timeout: float = typer.Option(
        30.0, "--connect-timeout",
        help="Seconds to wait for the server's first answer (it may still be loading).",
    ),
    keys: Path | None = typer.Option(None, "--keys", help="CURVE key directory (see tether keys)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write per-episode summaries here."),
    overrides: list[str] = typer.Option([], "--set", help="Robot config override key=value."),
    view: str | None = typer.Option(None, "--view", help=VIEW_HELP),
    record: Path | None = typer.Option(
        None, "--record",
        help="Record every episode into this episode store (appended to when it exists), with "
             "who was in control per step.",
    ),
    takeover: str | None = typer.Option(
        None, "--takeover",
        help="Let the operator take over with this teleop device (leader, spacemouse, keyboard; "
             "scripted: the twin's scripted operator). Space toggles control.",
    ),
    takeover_param: list[str] = typer.Option(
        [], "--takeover-param", help="Takeover device option key=value (repeatable)."
    ),
    handover: str = typer.Option(
        "ramp", "--handover",
        help="ramp: drive the arm from where it is to the new controller's target; align: hold "
             "until the device is within tolerance of the arm (leader arms).",
    ),
    handover_speed: float = typer.Option(
        0.25, "--handover-speed", help="Handover speed as a fraction of the safety speed limit."
    ),
) -> None:
    """Run a policy on a robot: async chunks, latency alignment, blending, stall watchdog.

    The policy must run at the robot's fps (--set fps=N changes the robot's) unless --resample.
    A policy trained in another joint convention (e.g. on the twin) runs on a real arm only
    through its units calibration (tether calibrate units); without one it is refused.

    Keys (terminal): e E-STOP (every arm holds its last safe command; latched), x release it;
    with --takeover, space takes over / hands back.

    Example: tether rollout --robot twin:lift --server tcp://127.0.0.1:5555 --episodes 3
    Example: tether rollout --robot twin:lift --policy simple:hold --lockstep --max-steps 100
    Example: tether rollout --robot twin:lift --policy runs/bc --lockstep --takeover scripted --record corrections.zarr
    """
    from tether.core.errors import ConfigError

    try:
        if (server is None) == (policy is None):
            raise ConfigError(
                "give exactly one of --server ENDPOINT or --policy CHECKPOINT|simple:<name>"
            )
        from tether.app.eval.steps_sweep import check_stream_lookahead, parse_sampler

        if sampler is not None:  # before a server is contacted or a model loaded
            sampler = parse_sampler(sampler)
        check_stream_lookahead(stream_lookahead, None if sampler is None else [sampler])
        if keyboard is None:
            keyboard = sys.stdin.isatty()
        summaries = _run(
            robot, server, policy, episodes, seed, overrides, keys, timeout, connect_timeout,
            dict(max_steps=max_steps, blend=blend, ensemble_m=ensemble_m,
                 request_threshold=threshold, steps=steps, sampler=sampler,
                 stream_lookahead=stream_lookahead, realtime=realtime,
                 request_timeout_s=timeout, resample=resample),
            keyboard, view,
            dict(record=record, takeover=takeover, takeover_param=takeover_param,
                 handover=handover, handover_speed=handover_speed),
        )  # fmt: skip
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None
    _print(summaries)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summaries, indent=2))


def _run(
    robot_spec, server, policy, episodes, seed, overrides, keys, timeout, connect_timeout, options,
    keyboard=False, view=None, session_options=None,
) -> list[dict]:
    from tether.app.rollout import RolloutConfig, run_episode
    from tether.robot.factory import make_robot

    config = RolloutConfig(**options)
    robot = make_robot(robot_spec, overrides)
    from tether.app.calibration_check import warn_calibrations
    from tether.robot.factory import load_robot_config

    warn_calibrations(robot_spec, load_robot_config(robot_spec, overrides), console.print)
    units = _units_for(robot_spec)
    latency = _latency_for(robot_spec)
    if not config.realtime:  # before a server is contacted or a checkpoint loaded
        robot.require_simulated_time("--lockstep")
    session = _session(robot, robot_spec, overrides, config.realtime, session_options or {})
    summaries = []
    if server is not None:
        from tether.policies.client import PolicyClient

        source = PolicyClient(server, timeout_s=timeout, keys_dir=keys)
        source.wait_for_server(connect_timeout)
    else:
        from tether.app.commands.serve import SIMPLE_PREFIX, load_served_policy

        if policy.startswith(SIMPLE_PREFIX):  # built for this robot, --set overrides included
            from tether.policies.simple import make_simple_policy

            source = make_simple_policy(policy[len(SIMPLE_PREFIX) :], robot, 50)
        else:
            source = load_served_policy(policy, robot_spec, 50, 0.0, "cpu")
    progress = None if console.is_terminal else _PlainProgress(episodes, _plain)
    reader = None
    if keyboard:
        from tether.teleop.recorder_keys import ESTOP_HELP, KeyReader, estop_bindings, legend

        reader = KeyReader({**estop_bindings(robot, _say_estop), **session.bindings()})
        console.print(legend(ESTOP_HELP + session.legend))
    telemetry = None
    try:
        with robot:
            if view is not None:  # a live view (rerun), fed off the control loop
                from tether.app.live_view import live_view

                telemetry = live_view(view, robot, name=f"rollout {server or policy}")
            if reader is not None:
                reader.start()
            for episode in range(episodes):
                on_progress = None if progress is None else progress.step_callback(episode)
                try:
                    result = run_episode(
                        robot, source, config, seed=seed + episode, on_progress=on_progress,
                        units=units, telemetry=telemetry, latency=latency,
                        **session.episode_kwargs(),
                    )
                except BaseException:
                    session.abort()
                    raise
                summaries.append(result.summary())
                session.episode_done(result, summaries[-1])
                if progress is not None:
                    progress.finished(episode, summaries[-1])
    finally:
        session.close()
        if telemetry is not None:
            telemetry.close()
        if reader is not None:
            reader.stop()
        if server is not None:
            source.close()
    return summaries


def _session(robot, robot_spec, overrides, realtime, options):
    """The takeover device and the recording store of this run (tether.app.takeover_session)."""
    from tether.app.takeover_session import RolloutSession
    from tether.core.config import apply_overrides
    from tether.robot.factory import load_robot_config

    return RolloutSession(
        robot, load_robot_config(robot_spec, overrides), realtime,
        takeover=options.get("takeover"),
        takeover_params=apply_overrides({}, list(options.get("takeover_param") or [])),
        handover=options.get("handover", "ramp"),
        handover_speed=options.get("handover_speed", 0.25),
        record=options.get("record"),
        say=_plain,
    )


def _latency_for(robot_spec):
    """The robot's measured latencies (`tether calibrate latency`): frames are stamped at
    exposure and each arm is sent its plan early by its command latency; None without any."""
    from tether.robot.latency import LatencyOffsets

    offsets = LatencyOffsets.for_robot(robot_spec)
    if offsets:
        console.print(f"latency compensation: {offsets.describe()}")
    return offsets or None


def _units_for(robot_spec):
    """The robot's units calibration path (a policy in another joint convention maps through
    it, or is refused naming it); None for the twin."""
    if str(robot_spec).startswith("twin:"):
        return None
    from tether.robot.convention import units_path

    return units_path(robot_spec)


def _say_estop(latched: bool) -> None:
    if latched:
        console.print("[bold red]E-STOP latched[/bold red]: every arm holds; press x to release.")
    else:
        console.print("e-stop released: the arms follow the policy again.")


def _plain(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


class _PlainProgress:
    """Progress for a rollout whose output is not a terminal: one line per episode, and at most
    one line every `interval_s` within an episode (clock injectable for tests)."""

    def __init__(
        self,
        episodes: int,
        write: Callable[[str], None],
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.episodes = episodes
        self.lines = PlainLines(write, interval_s, clock, quiet_start=True)

    def step_callback(self, episode: int) -> Callable[[int, int], None]:
        def on_step(step: int, max_steps: int) -> None:
            self.lines.line(lambda: f"episode {episode + 1}/{self.episodes}: step {step + 1}/{max_steps}")

        return on_step

    def finished(self, episode: int, s: dict) -> None:
        success = "-" if s["success"] is None else ("yes" if s["success"] else "no")
        safety = ", ".join(f"{k} {v}" for k, v in s["safety"].items()) or "clean"
        self.lines.line(
            f"episode {episode + 1}/{self.episodes} (seed {s['seed']}): success {success}, "
            f"{s['length']} steps, {s['chunks']} chunks, {s['stalls']} stalls, safety {safety}",
            force=True,
        )


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
