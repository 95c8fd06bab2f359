"""`tether record`: teleop a robot and record episodes into a Zarr store."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    app.command(name="record")(record_command)


def record_command(
    out: Path = typer.Option(..., "--out", "-o", help="Store to write (a .zarr directory)."),
    robot: str = typer.Option("twin:lift", "--robot", help="twin:<task> or a robot config file."),
    teleop: str | None = typer.Option(
        None, "--teleop",
        help="scripted, leader, spacemouse, keyboard (default: the config's teleop.device; scripted on twin:).",
    ),
    episodes: int = typer.Option(1, "--episodes", "-n", min=1, help="Episodes to save."),
    fps: float | None = typer.Option(None, "--fps", help="Recording rate (default: the robot's, 30)."),
    episode_time: float | None = typer.Option(
        None, "--episode-time", help="Seconds per episode (default: the twin task's limit, else 60)."
    ),
    reset_time: float | None = typer.Option(
        None, "--reset-time", help="Countdown between episodes (default 0 in fast mode, 5 otherwise)."
    ),
    realtime: bool | None = typer.Option(
        None, "--realtime/--fast", help="Pace to the wall clock (default: fast for twin:, realtime else)."
    ),
    task: str = typer.Option("", "--task", help="Task description stored with every episode."),
    operator: str = typer.Option("", "--operator", help="Who recorded (stored with every episode)."),
    append: bool = typer.Option(False, "--append", help="Append to an existing store."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    zarr_format: int = typer.Option(3, "--zarr-format", help="3, or 2 for older zarr readers."),
    image_quality: int = typer.Option(90, "--image-quality", help="JPEG quality 1-100."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first episode (twin object placement)."),
    keyboard: bool | None = typer.Option(
        None, "--keyboard/--no-keyboard", help="Keyboard controls (default: on a terminal in realtime)."
    ),
    teleop_param: list[str] = typer.Option([], "--teleop-param", help="Device option key=value."),
    overrides: list[str] = typer.Option([], "--set", help="Robot config override, e.g. fps=50."),
) -> None:
    """Record teleoperated episodes into a Zarr episode store.

    Example: tether record --robot twin:lift --teleop scripted --episodes 10 --out data.zarr

    Keys while recording (terminal): s save, d discard, r re-record, space start, q quit.
    """
    import sys

    from rich.console import Console

    from tether.errors import TetherError

    console = Console(stderr=True)
    try:
        _record(
            console, out, robot, teleop, episodes, fps, episode_time, reset_time, realtime, task,
            operator, append, overwrite, zarr_format, image_quality, seed,
            keyboard if keyboard is not None else None, teleop_param, overrides, sys.stdin.isatty(),
        )
    except TetherError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc


def _record(console, out, robot_spec, teleop_name, episodes, fps, episode_time, reset_time,
            realtime, task, operator, append, overwrite, zarr_format, image_quality, seed,
            keyboard, teleop_params, overrides, is_tty) -> None:
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.live import Live

    from tether.config import apply_overrides, save_config, to_dict
    from tether.data.store import EpisodeStore
    from tether.errors import ConfigError, StoreError
    from tether.robot.factory import load_robot_config, make_robot
    from tether.teleop.factory import make_teleop
    from tether.teleop.recorder import SAVED, Recorder
    from tether.teleop.recorder_keys import HELP
    from tether.teleop.recorder_view import StatusView

    is_twin = robot_spec.startswith("twin:")
    if realtime is None:
        realtime = not is_twin
    overrides = list(overrides)
    if fps is not None:
        overrides.append(f"fps={fps}")
    if is_twin and realtime:
        overrides.append("twin_params.realtime=true")
    config = load_robot_config(robot_spec, overrides)
    # The robot config's `teleop:` section names the device and its parameters (leader ports,
    # calibration file...); --teleop picks another device, --teleop-param overrides single keys.
    configured = config.teleop.device if config.teleop.device != "none" else None
    if teleop_name is None:
        teleop_name = configured or ("scripted" if is_twin else None)
    if teleop_name is None:
        raise ConfigError(f"No teleop device: pass --teleop (scripted, leader, spacemouse, keyboard) "
                          f"or set teleop.device in {robot_spec}.")
    base_params = dict(config.teleop.params) if teleop_name == configured else {}
    params = apply_overrides(base_params, teleop_params)
    rate = float(config.fps)
    if append and overwrite:
        raise ConfigError("Use either --append or --overwrite, not both.")
    if append:
        store = EpisodeStore.open(out, "a")
        if abs(store.fps - rate) > 1e-9:
            store.close()
            raise StoreError(f"{out} was recorded at {store.fps:g} fps; record at that rate "
                             f"(--fps {store.fps:g}) or into a new store.")
    else:
        store = EpisodeStore.create(
            out, rate, zarr_format=zarr_format, image_quality=image_quality,
            robot_config=to_dict(config), overwrite=overwrite,
        )
        save_config(config, Path(out) / "robot_config.yaml")  # also readable without zarr
    robot = make_robot(config)
    device = make_teleop(teleop_name, robot, params)
    if episode_time is None:
        steps = getattr(robot, "max_steps", None)
        episode_time = steps / rate if steps else 60.0
    if reset_time is None:
        reset_time = 5.0 if realtime else 0.0
    shares_terminal = teleop_name == "keyboard" and not params.get("tty")
    if keyboard is None:
        keyboard = bool(realtime and is_tty) and not shares_terminal
        if shares_terminal and realtime and is_tty:
            console.print("recorder keys are off: keyboard teleop reads this terminal; pass "
                          "--teleop-param tty=/dev/pts/N (another window) to have both.")
    view = StatusView(episodes)
    with store, robot, device:
        recorder = Recorder(robot, device, store, fps=rate, realtime=realtime, task=task,
                            operator=operator, on_status=view.update)
        if keyboard:
            console.print(HELP)
        with Live(view, console=console, refresh_per_second=5, transient=False) as live:
            view.live = live

            def report(result) -> None:
                view.finished(result)

            results = recorder.run(
                episodes, episode_time_s=episode_time if realtime else None,
                max_steps=None if realtime else int(round(episode_time * rate)),
                reset_time_s=reset_time, seed=seed, keyboard=keyboard, on_episode=report,
            )
        saved = [r for r in results if r.outcome == SAVED]
        if store.n_episodes:  # normalizer statistics, computed once and saved with the store
            from tether.data.stats import compute_stats

            compute_stats(store, save=True)
        console.print(
            f"saved {len(saved)} episode(s) to {out} ({store.n_episodes} in store); "
            f"success {sum(bool(r.success) for r in saved)}/{len(saved)}"
        )
        for warning in recorder.warnings[-5:]:
            console.print(f"[yellow]warning:[/yellow] {warning}")
