"""`tether record` (teleop a robot and record episodes into a Zarr store) and `tether teleop`.

Both read single keys from the terminal while they run (recorder_keys): `e` latches the e-stop
(every arm holds its last safe command) until `x` releases it. A person driving a device
(leader, spacemouse, keyboard) always gets real time, even on the twin; only the scripted expert
may run faster than real time, and only on a robot whose time is simulated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tether.core.errors import ConfigError

SCRIPTED = "scripted"  # the only device that is not a person, so the only one that may run fast
VIEW_HELP = ("Live view in rerun (tether[viz]): spawn (a viewer here), FILE.rrd, tcp://HOST:PORT "
             "(serve for a viewer elsewhere: rerun rerun+http://HOST:PORT/proxy), web[:PORT] (also "
             "the web viewer), or rerun+http://HOST:PORT/proxy. Logged off the control loop.")


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    app.command(name="record")(record_command)


def record_command(
    out: str = typer.Option(..., "--out", "-o", help="Store to write: a .zarr directory, or an "
                            "s3://... URL (recorded locally, committed episodes uploaded as you go)."),
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
        None, "--realtime/--fast",
        help="Pace to the wall clock (default). --fast: scripted teleop on a simulated robot only "
             "(the default for twin: with --teleop scripted).",
    ),
    task: str = typer.Option("", "--task", help="Task description stored with every episode."),
    operator: str = typer.Option("", "--operator", help="Who recorded (stored with every episode)."),
    append: bool = typer.Option(False, "--append", help="Append to an existing store."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    zarr_format: int = typer.Option(3, "--zarr-format", help="3, or 2 for older zarr readers "
                                    "(then JPEG frames by default: they cannot decode video)."),
    image_codec: str | None = typer.Option(
        None, "--image-codec",
        help="Camera frames in a new store: h264 (default; h264:crf=20,gop=16), av1, jpeg, avif, "
             "jxl, zstd, none (docs/data.md, Image codecs). Default: the robot config's "
             "image_codec, else h264."),
    image_quality: int = typer.Option(90, "--image-quality", help="JPEG quality 1-100 (--image-codec jpeg)."),
    seed: int | None = typer.Option(
        None, "--seed",
        help="Seed of the first episode (twin object placement; default 0, with --append the "
             "seed after the store's last episode).",
    ),
    keyboard: bool | None = typer.Option(
        None, "--keyboard/--no-keyboard",
        help="Read the keys below from stdin (default: when stdin is a terminal, in real time).",
    ),
    teleop_param: list[str] = typer.Option([], "--teleop-param", help="Device option key=value."),
    overrides: list[str] = typer.Option([], "--set", help="Robot config override, e.g. fps=50."),
    view: str | None = typer.Option(None, "--view", help=VIEW_HELP),
    base_policy: Path | None = typer.Option(
        None, "--base-policy", help="Checkpoint or run directory: each take's quality score also "
        "rates its compatibility with this policy (a take it would do differently is flagged)."),
    tasks: str | None = typer.Option(
        None, "--tasks", help="Comma-separated task descriptions cycled per saved take "
        "(take 1 the first, take 2 the second, ...); instead of --task."),
    bell: bool | None = typer.Option(
        None, "--bell/--no-bell", help="Ring the terminal bell when a take starts and when it "
        "stops (default: when stderr is a terminal)."),
) -> None:
    """Record teleoperated episodes into a Zarr episode store.

    Example: tether record --robot twin:lift --teleop scripted --episodes 10 --out data.zarr

    Keys while recording (terminal): s save, d discard, r re-record, space start, q quit,
    e E-STOP (every arm holds; latched), x release the e-stop.
    """
    from rich.console import Console


    console = Console(stderr=True)
    _record(
        console, out, robot, teleop, episodes, fps, episode_time, reset_time, realtime, task,
        operator, append, overwrite, zarr_format, image_quality, seed, keyboard, teleop_param,
        overrides, sys.stdin.isatty(), view=view, base_policy=base_policy,
        tasks=_parse_tasks(tasks, task), bell=console.is_terminal if bell is None else bell,
        image_codec=image_codec,
    )


def teleop_command(
    robot: str = typer.Option("twin:lift", "--robot", help="twin:<task> or a robot config file."),
    device: str | None = typer.Option(
        None, "--device", help="leader, spacemouse, keyboard, scripted (default: the config's teleop.device)."
    ),
    param: list[str] = typer.Option([], "--param", help="Device option key=value (repeatable)."),
    overrides: list[str] = typer.Option([], "--set", help="Robot config override a.b=value (repeatable)."),
    duration: float = typer.Option(0.0, "--duration", help="Seconds to run (0: until Ctrl-C or q)."),
    keyboard: bool | None = typer.Option(
        None, "--keyboard/--no-keyboard",
        help="Read the e-stop keys from stdin (default: when stdin is a terminal).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    view: str | None = typer.Option(None, "--view", help=VIEW_HELP),
) -> None:
    """Teleoperate a robot live, without recording: check calibration, axes and limits first.

    The device and its parameters come from the config's `teleop:` section unless given here.
    Every target passes the safety layer; when the device stops giving targets the arm holds.
    Always in real time. Ctrl-C (or q) stops.

    Keys (terminal): e E-STOP (every arm holds its last safe command; latched), x release it.

    Example: tether teleop --robot configs/so101_leader.yaml --duration 60
    """
    import json
    import signal
    import threading

    from rich.console import Console

    from tether.core.config import apply_overrides
    from tether.robot.episodic import as_episodic
    from tether.robot.factory import load_robot_config, make_robot
    from tether.teleop.factory import make_teleop
    from tether.teleop.recorder_keys import ESTOP_HELP, KeyReader, estop_bindings, legend
    from tether.teleop.run import run_teleop

    console = Console(stderr=as_json)
    config = load_robot_config(robot, overrides)
    name = device or config.teleop.device
    if name in ("none", ""):
        raise ConfigError(f"{robot} names no teleop device; pass --device (leader, spacemouse, keyboard).")
    base = dict(config.teleop.params) if name == config.teleop.device else {}
    params = apply_overrides(base, param)
    the_robot = make_robot(config)
    the_device = make_teleop(name, the_robot, params)
    stop = threading.Event()
    if keyboard is None:
        keyboard = sys.stdin.isatty() and not _shares_terminal(name, params)
    keys = None
    if keyboard:
        bindings = estop_bindings(the_robot, lambda latched: _say_estop(console, latched))
        bindings.update({"q": ("quit", stop.set), "Q": ("quit", stop.set)})
        keys = KeyReader(bindings)
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with the_robot, the_device:
            episodic = as_episodic(the_robot)
            if episodic is not None:
                episodic.reset(0)
            console.print(f"teleop: {name} -> {config.name} at {config.fps:g} Hz (Ctrl-C stops)")
            if keys is not None:
                console.print(legend(ESTOP_HELP + "  [q] quit"))
                keys.start()
            telemetry = _live_view(view, the_robot, f"teleop {name}")
            try:
                report = run_teleop(the_robot, the_device, duration_s=duration or None, stop=stop,
                                    telemetry=telemetry)
            finally:
                if telemetry is not None:
                    telemetry.close()
    finally:
        if keys is not None:
            keys.stop()
        signal.signal(signal.SIGINT, previous)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    loop = report.loop
    console.print(
        f"{loop.ticks} ticks at {loop.achieved_hz:.1f} Hz (target {loop.target_hz:g}), jitter p99 "
        f"{loop.jitter_p99_ms:.1f} ms, overruns {loop.overruns}, holds {report.holds}, "
        f"safety {report.safety or 'clean'}"
    )


def _live_view(view: str | None, robot, name: str):
    """The live view's telemetry for `--view SPEC`, or None without it."""
    if view is None:
        return None
    from tether.app.live_view import live_view

    return live_view(view, robot, name=name)


def _say_estop(console, latched: bool) -> None:
    if latched:
        console.print("[bold red]E-STOP latched[/bold red]: every arm holds; press x to release.")
    else:
        console.print("e-stop released: the arms follow targets again.")


def _shares_terminal(device: str, params: dict) -> bool:
    """Keyboard teleop without its own tty reads this terminal: the session keys must not."""
    return device == "keyboard" and not params.get("tty")


def _record(console, out, robot_spec, teleop_name, episodes, fps, episode_time, reset_time,
            realtime, task, operator, append, overwrite, zarr_format, image_quality, seed,
            keyboard, teleop_params, overrides, is_tty, view=None, base_policy=None, tasks=None,
            bell=False, image_codec=None) -> None:
    from tether.robot.twin.render import configure_backend

    configure_backend()  # before anything imports mujoco
    from tether.core.config import apply_overrides, to_dict
    from tether.data.location import is_url
    from tether.robot.episodic import as_episodic
    from tether.robot.factory import load_robot_config, make_robot
    from tether.teleop.factory import make_teleop

    remote = str(out) if is_url(str(out)) else None  # object storage: record locally, upload
    if remote:
        from tether.data.remote import staging_path

        out = staging_path(remote)
        console.print(f"recording to {out}, uploading committed episodes to {remote}", soft_wrap=True)
    out = Path(out)
    is_twin = robot_spec.startswith("twin:")
    overrides = list(overrides)
    if fps is not None:
        overrides.append(f"fps={fps}")
    # The robot config's `teleop:` section names the device and its parameters (leader ports,
    # calibration file...); --teleop picks another device, --teleop-param overrides single keys.
    config = load_robot_config(robot_spec, overrides)
    configured = config.teleop.device if config.teleop.device != "none" else None
    if teleop_name is None:
        teleop_name = configured or (SCRIPTED if is_twin else None)
    if teleop_name is None:
        raise ConfigError(f"No teleop device: pass --teleop (scripted, leader, spacemouse, keyboard) "
                          f"or set teleop.device in {robot_spec}.")
    human = teleop_name != SCRIPTED
    if realtime is False and human:
        raise ConfigError(
            f"--fast runs the robot faster than real time, which a person at the {teleop_name} "
            "cannot follow; drop --fast (only --teleop scripted records fast)."
        )
    if realtime is None:
        realtime = human or not is_twin
    if is_twin and realtime:
        config = load_robot_config(robot_spec, [*overrides, "twin_params.realtime=true"])
    _check_out(out, append, overwrite)
    image_codec, image_quality = _image_codec(image_codec, config, zarr_format, image_quality)
    from tether.app.calibration_check import warn_calibrations

    warn_calibrations(robot_spec, config, console.print)  # missing/stale: warn, keep recording
    latency = _latency_offsets(robot_spec, console)  # calibrated camera latency: frames stamped at exposure
    base_params = dict(config.teleop.params) if teleop_name == configured else {}
    params = apply_overrides(base_params, teleop_params)
    rate = float(config.fps)
    robot = make_robot(config)
    if not realtime:
        robot.require_simulated_time("--fast")
    device = make_teleop(teleop_name, robot, params)
    if episode_time is None:
        episodic = as_episodic(robot)
        steps = episodic.max_steps if episodic is not None else None
        episode_time = steps / rate if steps else 60.0
    if reset_time is None:
        reset_time = 5.0 if realtime else 0.0
    shares_terminal = _shares_terminal(teleop_name, params)
    if keyboard is None:
        keyboard = bool(realtime and is_tty) and not shares_terminal
        if shares_terminal and realtime and is_tty:
            console.print("recorder keys are off: keyboard teleop reads this terminal (its e/x keys "
                          "still work); pass --teleop-param tty=/dev/pts/N (another window) to have both.")
    # Connect before the store exists: a robot that cannot be reached leaves nothing behind.
    with robot, device:
        store, created = _open_store(out, append, overwrite, rate, zarr_format, image_quality,
                                     to_dict(config), config, image_codec)
        pusher = None
        if remote:
            from tether.data.remote import BackgroundPusher

            pusher = BackgroundPusher(out, remote).start()
        try:
            with store:
                if seed is None:
                    seed = _next_seed(store)
                elif append and seed < store.next_seed and seed in _seeds(store):
                    console.print(f"[yellow]warning:[/yellow] seed {seed} was already recorded in "
                                  f"{out}; episodes from it repeat earlier ones on the twin.")
                _session(console, store, robot, device, episodes, rate, realtime, task, operator,
                         episode_time, reset_time, seed, keyboard, out, view=view,
                         base_policy=base_policy, latency=latency, tasks=tasks, bell=bell)
        finally:
            if pusher is not None:
                _finish_push(console, pusher, out, remote)
            if created and _is_empty(out):
                import shutil

                shutil.rmtree(out, ignore_errors=True)  # nothing recorded: no empty store left
                console.print(f"nothing was saved; removed the empty store {out}")


def _finish_push(console, pusher, out: Path, remote: str) -> None:
    """Upload what the background pusher has not yet; say how to resume when that fails."""
    try:
        pusher.close()
    except Exception as exc:  # noqa: BLE001 - the episodes are safe locally; say how to resume
        console.print(f"[yellow]upload incomplete[/yellow] ({exc}); the episodes are in {out}; "
                      f"resume with: tether data push {out} {remote}", soft_wrap=True)
        return
    console.print(f"uploaded {pusher.pushed} episode(s) to {remote}", soft_wrap=True)


def _parse_tasks(tasks: str | None, task: str) -> list[str] | None:
    """`--tasks a,b,c` as a list (None without it); refused with --task or when empty."""
    if tasks is None:
        return None
    if task:
        raise ConfigError("Use either --task (one task for every take) or --tasks (cycled per take), "
                          "not both.")
    items = [t.strip() for t in tasks.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--tasks {tasks!r} names no task; give comma-separated descriptions, e.g. "
                          "--tasks 'pick the red cube,pick the blue cube'.")
    return items


def _check_out(out: Path, append: bool, overwrite: bool) -> None:
    """Refuse before anything connects or is created, with the CLI's own options as the fix."""
    if append and overwrite:
        raise ConfigError("Use either --append or --overwrite, not both.")
    if append and not out.exists():
        raise ConfigError(f"{out} does not exist, so there is nothing to --append to; drop "
                          "--append to create it.")
    if not append and not overwrite and out.exists():
        raise ConfigError(f"{out} already exists: add --append to record more episodes into it, "
                          "--overwrite to replace it, or choose another --out.")


def _image_codec(given: str | None, config, zarr_format: int, image_quality: int) -> tuple[str, int]:
    """(spec, JPEG quality): --image-codec, else the robot config's `image_codec`, else the
    store's default; checked now, before anything connects (a typo fails here, not after the
    first take)."""
    from tether.data.codecs import default_image_codec, parse_image_codec

    spec = given or getattr(config, "image_codec", None) or default_image_codec(zarr_format)
    codec = parse_image_codec(spec, image_quality)
    return codec.spec, int(codec.settings.get("quality", image_quality))


def _open_store(out, append, overwrite, rate, zarr_format, image_quality, robot_config, config,
                image_codec=None):
    from tether.core.config import save_config
    from tether.core.errors import StoreError
    from tether.data.store import EpisodeStore

    if append:
        store = EpisodeStore.open(out, "a")
        if abs(store.fps - rate) > 1e-9:
            store.close()
            raise StoreError(f"{out} was recorded at {store.fps:g} fps; record at that rate "
                             f"(--fps {store.fps:g}) or into a new store.")
        return store, False
    store = EpisodeStore.create(out, rate, zarr_format=zarr_format, image_codec=image_codec,
                                image_quality=image_quality, robot_config=robot_config,
                                overwrite=overwrite)
    try:
        save_config(config, Path(out) / "robot_config.yaml")  # also readable without zarr
    except BaseException:
        store.close()
        raise
    return store, True


def _seeds(store) -> set[int]:
    """Every recorded seed. Reads every episode's metadata, so it is asked only about a seed
    below `store.next_seed` (a larger one cannot have been recorded)."""
    seeds = set()
    for episode in range(store.n_episodes):
        value = store.episode_metadata(episode).get("seed")
        if isinstance(value, int):
            seeds.add(value)
    return seeds


def _next_seed(store) -> int:
    """The first seed after every episode in the store, so appended episodes never repeat one
    (episodes recorded without a seed still count, so the seed never falls behind them)."""
    return max(store.next_seed, store.n_episodes)


def _is_empty(out: Path) -> bool:
    from tether.core.errors import StoreError
    from tether.data.store import EpisodeStore

    if not out.exists():
        return False
    try:
        with EpisodeStore.open(out, "r") as store:
            return store.n_episodes == 0
    except StoreError:
        return False  # not readable as a store: leave it alone for the user to inspect


def _latency_offsets(robot_spec: str, console):
    """The robot's measured latencies (`tether calibrate latency`), or None when it has none."""
    from tether.robot.latency import LatencyOffsets

    offsets = LatencyOffsets.for_robot(robot_spec)
    if offsets:
        console.print(f"latency calibration: {offsets.describe()}")
    return offsets or None


def _session(console, store, robot, device, episodes, rate, realtime, task, operator,
             episode_time, reset_time, seed, keyboard, out, view=None, base_policy=None,
             latency=None, tasks=None, bell=False) -> None:
    from rich.live import Live

    from tether.app.quality import TakeFeedback
    from tether.app.session_bell import TakeBell
    from tether.teleop.recorder import SAVED, Recorder
    from tether.teleop.recorder_keys import legend
    from tether.teleop.recorder_view import PlainProgress, StatusView

    quality = TakeFeedback(store, robot, base_policy)  # each saved take: score, metadata, a line
    telemetry = _live_view(view, robot, f"record {out}")
    view = StatusView(episodes)
    recorder = Recorder(robot, device, store, fps=rate, realtime=realtime, task=task,
                        operator=operator, on_status=view.update, telemetry=telemetry,
                        latency=latency)
    run = dict(
        num_episodes=episodes, episode_time_s=episode_time if realtime else None,
        max_steps=None if realtime else int(round(episode_time * rate)),
        reset_time_s=reset_time, seed=seed, keyboard=keyboard,
        on_estop=lambda latched: _say_estop(console, latched), tasks=tasks,
    )
    ring = TakeBell(console.file, enabled=bell)  # a beep when each take starts and stops
    recorder.on_status = ring.wrap_status(recorder.on_status)
    if keyboard:
        console.print(legend())
    try:
        if console.is_terminal:
            with Live(view, console=console, refresh_per_second=5, transient=False) as live:
                view.live = live
                results = recorder.run(**run, on_episode=lambda r: (
                    ring.finished(r), view.finished(r), quality(r, view.note)))
        else:  # a pipe, nohup, CI: plain lines, a few per minute, instead of a live display
            plain = PlainProgress(episodes, write=lambda line: console.print(
                line, markup=False, highlight=False, soft_wrap=True))
            recorder.on_status = ring.wrap_status(plain.update)
            results = recorder.run(**run, on_episode=lambda r: (
                ring.finished(r), plain.finished(r), quality(r, plain.note)))
    finally:
        if telemetry is not None:
            telemetry.close()
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
