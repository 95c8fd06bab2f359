"""`tether calibrate latency`: measure camera and arm latency and save them per device.

Layer: app. Wires the robot (tether.robot), the optional latency injection for rehearsals
(tether.robot.latency), the procedure (tether.calibration.latency) and the calibration folder
(tether.calibration.store). The recorder and the rollout read the records back through
tether.robot.latency.LatencyOffsets.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from tether.core.errors import ConfigError

console = Console()

# What a trustworthy run looks like (docs/calibration.md explains them).
GOOD_CAMERA_PEAK = 0.8
GOOD_ARM_RESIDUAL = 0.25
GOOD_SPREAD_S = 0.010


def register(app: typer.Typer) -> None:
    """Add `calibrate latency` to the `tether calibrate` group."""
    for group in app.registered_groups:
        if group.name == "calibrate" and group.typer_instance is not None:
            group.typer_instance.command("latency")(calibrate_latency)
            return
    calibrate = typer.Typer(help="Calibration commands.", no_args_is_help=True)
    calibrate.command("latency")(calibrate_latency)
    app.add_typer(calibrate, name="calibrate")


def calibrate_latency(
    robot: str = typer.Option(..., "--robot", help="Robot config file, or twin:<task>."),
    camera: list[str] = typer.Option(
        [], "--camera", help="Camera to measure (repeatable; default: every camera of the robot)."),
    arms: bool = typer.Option(True, "--arms/--no-arms", help="Also measure every arm's command latency."),
    duration: float = typer.Option(20.0, "--duration", help="Seconds of excitation (more: tighter estimates)."),
    amplitude: float = typer.Option(0.1, "--amplitude", help="Largest joint excursion from the start pose (rad)."),
    move_s: float = typer.Option(0.5, "--move-s", help="Duration of one smooth move (s); keep it slow."),
    joints: list[str] = typer.Option(
        [], "--joint", help="Joint to move, arm.joint or joint (repeatable; default: the first two of each arm)."),
    max_lag: float = typer.Option(0.4, "--max-lag", help="Largest latency looked for (s)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random pauses between moves."),
    inject_camera_ms: float = typer.Option(
        0.0, "--inject-camera-ms", help="Rehearsal (nothing is saved): delay every frame and its stamp by this much."),
    inject_command_ms: float = typer.Option(
        0.0, "--inject-command-ms", help="Rehearsal: apply every command this much late first."),
    inject_jitter_ms: float = typer.Option(
        0.0, "--inject-jitter-ms", help="Rehearsal: uniform extra delay [0, this) per frame and command."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Measure and print; save nothing."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Robot config override a.b=value (repeatable), e.g. twin_params.width=160."),
) -> None:
    """Measure how late each camera stamps its frames and how long each arm takes to obey.

    The arm makes small smooth moves with random pauses (through the safety layer); each
    camera's image motion is cross-correlated with the joints' speed, and each arm's measured
    motion is fitted by its commands through a dead time and a servo lag. The results go to the
    robot's calibration folder as latency.<device>.yaml; `tether record` and `tether rollout`
    apply them. Keep the arm's surroundings clear: it moves about --amplitude rad.

    Example: tether calibrate latency --robot twin:lift --duration 12 --inject-camera-ms 80 --inject-command-ms 40 --dry-run
    """
    from tether.calibration.latency import (
        LatencyConfig,
        estimate_camera_latency,
        fit_command_latency,
        run_excitation,
    )
    from tether.robot.factory import make_robot
    from tether.robot.latency import InjectedLatency, inject_latency

    config = LatencyConfig(duration_s=duration, amplitude=amplitude, move_s=move_s,
                           joints=list(joints) or None, max_lag_s=max_lag, seed=seed)
    bot = make_robot(robot, overrides)
    cameras = list(camera) or list(bot.cameras)
    unknown = sorted(set(cameras) - set(bot.cameras))
    if unknown:
        raise ConfigError(f"Robot '{bot.name}' has no camera {unknown} (cameras: "
                          f"{', '.join(bot.cameras) or 'none'}); fix --camera, or on the twin add it "
                          "with --set twin_params.cameras=[<names>].")
    if not cameras and not arms:
        raise ConfigError("Nothing to measure: the robot has no camera and --no-arms was given.")
    injection = None
    if inject_camera_ms or inject_command_ms or inject_jitter_ms:
        injection = inject_latency(bot, InjectedLatency(
            camera_s=inject_camera_ms / 1e3, camera_jitter_s=inject_jitter_ms / 1e3 if cameras else 0.0,
            command_s=inject_command_ms / 1e3, command_jitter_s=inject_jitter_ms / 1e3, seed=seed))
        console.print(f"[yellow]rehearsal:[/yellow] injecting camera {inject_camera_ms:g} ms, command "
                      f"{inject_command_ms:g} ms, jitter [0, {inject_jitter_ms:g}) ms")
    console.print(f"moving {bot.name} for {duration:g} s (amplitude {amplitude:g} rad); keep clear of the arm")
    try:
        with bot:
            reset = getattr(bot, "reset", None)
            if callable(reset):
                reset(seed)
            log = run_excitation(bot, config, cameras)
    finally:
        if injection is not None:
            injection.stop()
    if log.safety:
        console.print(f"[yellow]the safety layer intervened[/yellow] {log.safety}: lower --amplitude or "
                      "raise --move-s so the moves stay inside its limits.")
    results = []
    for name in cameras:
        results.append(("camera", name, estimate_camera_latency(log, name, max_lag)))
    if arms:
        for name in log.excited:
            results.append(("arm", name, fit_command_latency(log, name, max_lag)))
    truth = injection.stats() if injection is not None else {}
    _show(results, truth)
    if dry_run or injection is not None:
        console.print("nothing saved (" + ("--dry-run" if dry_run else
                      "a rehearsal with injected latency describes the injection, not the robot") + ")")
        return
    _save(robot, results, config)


def _show(results, truth) -> None:
    table = Table("device", "latency ms", "servo lag ms", "quality", "halves differ ms", "verdict")
    if truth:
        table.add_column("injected ms")
    for kind, name, est in results:
        if kind == "camera":
            quality, good = f"peak {est.peak:.2f}", est.peak >= GOOD_CAMERA_PEAK
            lag = "-"
        else:
            quality, good = f"residual {est.normalized_rms:.2f}", est.normalized_rms <= GOOD_ARM_RESIDUAL
            lag = f"{2e3 * est.time_constant_s:.1f}"
        good = good and not est.spread_s > GOOD_SPREAD_S
        row = [f"{kind} {name}", f"{est.latency_s * 1e3:.1f}", lag, quality, f"{est.spread_s * 1e3:.1f}",
               "[green]good[/green]" if good else "[yellow]repeat longer[/yellow]"]
        if truth:
            row.append(f"{truth.get(name, {}).get('mean_s', float('nan')) * 1e3:.1f}")
        table.add_row(*row)
    console.print(table)


def _save(robot: str, results, config) -> None:
    from tether.calibration.store import CalibrationRecord, CalibrationStore

    store = CalibrationStore.for_robot(robot)
    method = {"duration_s": config.duration_s, "amplitude_rad": config.amplitude, "move_s": config.move_s,
              "seed": config.seed}
    for kind, name, est in results:
        if kind == "camera":
            data = {"device": "camera", "latency_s": round(est.latency_s, 5)}
            residuals = {"peak_correlation": round(est.peak, 4), "halves_spread_s": round(est.spread_s, 5),
                         "frames": est.frames}
        else:
            data = {"device": "arm", "latency_s": round(est.latency_s, 5),
                    "servo_time_constant_s": round(est.time_constant_s, 5),
                    "tracking_lag_s": round(est.tracking_lag_s, 5), "joints": est.joints}
            residuals = {"normalized_rms": round(est.normalized_rms, 4),
                         "halves_spread_s": round(est.spread_s, 5)}
        path = store.save(CalibrationRecord("latency", name, data, residuals, notes={"excitation": method}))
        console.print(f"saved {path}")
