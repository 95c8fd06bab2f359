"""`tether calibrate excite` and `tether calibrate twin`: fit the twin to an arm (app layer).

Registered by tether/cli.py (COMMAND_MODULES); both join the `calibrate` group. `excite` wires
the recorder (teleop) to an excitation trajectory (calibration) and records it through the
robot's safety layer into an episode store; `twin` fits the twin's per-joint gains, damping,
armature, friction and command latency to such a store (tether.calibration.sysid) and writes a
`twin_params` calibration record that twin robots load through `twin_params.dynamics`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tether.core.errors import ConfigError

console = Console()


def register(app: typer.Typer) -> None:
    """Add `calibrate excite` and `calibrate twin` to the `tether calibrate` group."""
    for group in app.registered_groups:
        if group.name == "calibrate" and group.typer_instance is not None:
            group.typer_instance.command("excite")(calibrate_excite)
            group.typer_instance.command("twin")(calibrate_twin)
            return
    calibrate = typer.Typer(help="Calibration commands.", no_args_is_help=True)
    calibrate.command("excite")(calibrate_excite)
    calibrate.command("twin")(calibrate_twin)
    app.add_typer(calibrate, name="calibrate")


def calibrate_excite(
    robot: str = typer.Option(..., "--robot", help="twin:<task> or a robot config file."),
    out: Path = typer.Option(..., "--out", "-o", help="Episode store to write (a .zarr directory)."),
    episodes: int = typer.Option(3, "--episodes", help="Trajectories to record (each its own seed)."),
    duration: float = typer.Option(12.0, "--duration", help="Seconds of excitation per episode."),
    joints: str = typer.Option("", "--joints", help="Comma-separated joints (default: all but grippers)."),
    kind: str = typer.Option("multisine", "--kind", help="multisine or chirp."),
    amplitude: float = typer.Option(0.4, "--amplitude", help="Largest excursion from home, rad."),
    velocity_fraction: float = typer.Option(
        0.5, "--velocity-fraction", help="Peak speed as a fraction of the safety layer's max_velocity."),
    f_max: float = typer.Option(3.0, "--f-max", help="Highest frequency, Hz."),
    seed: int = typer.Option(0, "--seed", help="First episode's seed (phases of the sines)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    overrides: list[str] = typer.Option([], "--set", help="Robot config override key=value."),
) -> None:
    """Record excitation trajectories (multisine or chirp per joint, from home and back to rest)
    through the robot's safety layer, for `tether calibrate twin`.

    The arm moves on its own within its joint limits, at most --amplitude rad from home and at
    --velocity-fraction of its speed limit: clear the workspace first. A twin records in fast
    (simulated) time, hardware in real time.

    Example: tether calibrate excite --robot twin:lift --out real.zarr --episodes 3
    """
    from tether.calibration.excitation import ExcitationConfig, ExcitationDevice, limits_from_robot
    from tether.core.config import to_dict
    from tether.data.store import EpisodeStore
    from tether.robot.factory import load_robot_config, make_robot
    from tether.teleop.recorder import Recorder

    if episodes < 1:
        raise ConfigError("--episodes must be at least 1.")
    config = load_robot_config(robot, overrides)
    built = make_robot(config)
    excitation = ExcitationConfig(kind=kind, joints=_names(joints), duration_s=duration,
                                  amplitude=amplitude, velocity_fraction=velocity_fraction,
                                  f_max=f_max, seed=seed)
    device = ExcitationDevice(excitation, limits_from_robot(built), built.fps)
    realtime = not getattr(built, "simulated_time", False)
    with built:
        with EpisodeStore.create(out, built.fps, robot_config=to_dict(config), overwrite=overwrite) as store:
            recorder = Recorder(built, device, store, realtime=realtime, task="excitation")
            for i in range(episodes):
                result = recorder.record_episode(max_steps=device.steps, seed=seed + i,
                                                 metadata=device.metadata())
                console.print(f"episode {i}: {getattr(result, 'steps', device.steps)} steps")
            counts = {k: v for k, v in dict(built.safety_counts()).items() if v}
    if counts:
        console.print(f"[yellow]warning[/yellow] the safety layer changed commands: {counts} "
                      "(the fit uses what reached the arm; lower --amplitude/--velocity-fraction "
                      "if this is large).")
    console.print(f"Wrote {out}. Next: tether calibrate twin --dataset {out} --robot {robot}")


def calibrate_twin(
    dataset: Path = typer.Option(..., "--dataset", help="Store recorded with `tether calibrate excite`."),
    robot: str = typer.Option("twin:lift", "--robot",
                              help="Robot config the twin stands for (twin:<task> or a file)."),
    twin: str | None = typer.Option(None, "--twin", help="Twin task to fit (default: the robot config's)."),
    holdout: int | None = typer.Option(
        None, "--holdout", help="Episode kept out of the fit to check it (default: the last, with 2+)."),
    joints: str = typer.Option("", "--joints", help="Comma-separated joints to fit (default: all but grippers)."),
    fields: str = typer.Option("kp,kv,armature,frictionloss", "--fields",
                               help="Per-joint parameters: kp, kv, damping, armature, frictionloss."),
    latency: float | None = typer.Option(None, "--latency", help="Known command latency, s (skip its search)."),
    latency_max: float = typer.Option(0.25, "--latency-max", help="Largest latency searched, s."),
    out: Path | None = typer.Option(
        None, "--out", help="File to write (default: twin_params.dynamics.yaml in the robot's calibration folder)."),
) -> None:
    """Fit the twin's per-joint actuator gain (kp) and damping (kv), armature, friction loss and
    the command latency to logged trajectories, by replaying the logged commands in the twin and
    minimising the position error (scipy least_squares).

    Writes a `twin_params` calibration record; a twin robot loads it with
    `twin_params: {dynamics: <file>}` in its config.

    Example: tether calibrate twin --dataset real.zarr --robot twin:lift
    """
    from tether.calibration.store import CalibrationRecord, CalibrationStore
    from tether.calibration.sysid import (
        ReplayModel,
        SysidConfig,
        fit_twin,
        tracking_error,
        trajectories_from_store,
    )
    from tether.data.store import EpisodeStore
    from tether.robot.factory import load_robot_config

    config = load_robot_config(robot)
    task = twin or config.twin_task
    if not task:
        raise ConfigError(f"{robot} is not a twin; pass --twin <task> (the twin to fit, e.g. lift) "
                          "and record the dataset in the twin's units (tether calibrate units).")
    with EpisodeStore.open(dataset, "r") as store:
        n_episodes, fps = store.n_episodes, store.fps
    if n_episodes == 0:
        raise ConfigError(f"{dataset} has no episodes; record some with `tether calibrate excite`.")
    if holdout is None and n_episodes >= 2:
        holdout = n_episodes - 1
    if holdout is not None and not 0 <= holdout < n_episodes:
        raise ConfigError(f"--holdout {holdout}: {dataset} has episodes 0..{n_episodes - 1}.")
    if holdout is not None and n_episodes < 2:
        raise ConfigError("--holdout needs at least 2 episodes (one to fit, one to check).")
    fit_episodes = [e for e in range(n_episodes) if e != holdout]
    model = ReplayModel(task, fps)
    logs = trajectories_from_store(dataset, fit_episodes)
    sysid = SysidConfig(joints=_names(joints), fields=tuple(_names(fields) or ()),
                        latency_s=latency, latency_max_s=latency_max)
    report = fit_twin(model, logs, sysid, progress=lambda m: console.print(f"  {m}"))
    residuals = report.residuals() | {"latency_std_s": report.latency_std_s,
                                      "episodes_fit": fit_episodes}
    if holdout is not None:
        held = trajectories_from_store(dataset, [holdout])
        before = tracking_error(model, held, None, report.fitted.keys())
        after = tracking_error(model, held, report.dynamics, report.fitted.keys())
        residuals |= {"holdout_episode": holdout, "holdout_rms_before_rad": before,
                      "holdout_rms_after_rad": after}
    _show(report)
    record = CalibrationRecord(
        kind="twin_params", name="dynamics", data=report.dynamics.to_dict(), residuals=residuals,
        notes={"dataset": str(dataset), "twin_task": task, "start": report.start,
               "method": "output-error replay in the bare twin, scipy least_squares (log parameters)"},
    )
    if out is None:
        path = CalibrationStore.for_robot(robot).save(record)
    else:
        path = _write(record, Path(out))
    if holdout is not None:
        console.print(f"held-out episode {holdout}: open-loop tracking error "
                      f"{residuals['holdout_rms_before_rad'] * 1000:.3f} -> "
                      f"{residuals['holdout_rms_after_rad'] * 1000:.3f} mrad")
    weak = report.poorly_identified()
    if weak:
        console.print(f"[yellow]warning[/yellow] poorly identified (relative error > 10%): {', '.join(weak)}; "
                      "excite those joints more (--amplitude, --f-max) or leave the field out (--fields).")
    console.print(f"Wrote {path}. A twin loads it with `twin_params: {{dynamics: {path}}}` in its config "
                  f"(or --set twin_params.dynamics={path}).")


def _show(report) -> None:
    table = Table(title=f"twin fit: latency {report.latency_s * 1000:.1f} ms, tracking error "
                        f"{report.rms_start_rad * 1000:.3f} -> {report.rms_fit_rad * 1000:.4f} mrad")
    for column in ("parameter", "start", "fit", "±1σ %", "joint rms mrad"):
        table.add_column(column)
    for joint, values in report.fitted.items():
        for i, (name, value) in enumerate(values.items()):
            table.add_row(f"{joint}.{name}", f"{report.start[joint][name]:.4g}", f"{value:.4g}",
                          f"{100 * report.rel_std[joint][name]:.2f}",
                          f"{report.per_joint_rms_rad[joint] * 1000:.4f}" if i == 0 else "")
    console.print(table)


def _write(record, path: Path) -> Path:
    """An explicit --out file: the same record, written atomically."""
    import os

    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(record.to_dict(), sort_keys=False))
    os.replace(tmp, path)
    return path


def _names(text: str) -> list[str] | None:
    names = [n.strip() for n in text.split(",") if n.strip()]
    return names or None
