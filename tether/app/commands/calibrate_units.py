"""`tether calibrate units`: map an arm's joints and gripper onto the twin's convention (app layer).

Registered by tether/cli.py (COMMAND_MODULES); it joins the `calibrate` group that
tether.app.commands.calibrate creates (or creates it when that module is absent). The procedure
is tether.calibration.units; the file it writes (tether.robot.convention) is what `tether
rollout` maps a twin-trained policy through.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tether.core.errors import ConfigError

console = Console()


def register(app: typer.Typer) -> None:
    """Add `calibrate units` to the `tether calibrate` group."""
    for group in app.registered_groups:
        if group.name == "calibrate" and group.typer_instance is not None:
            group.typer_instance.command("units")(calibrate_units)
            return
    calibrate = typer.Typer(help="Calibration commands.", no_args_is_help=True)
    calibrate.command("units")(calibrate_units)
    app.add_typer(calibrate, name="calibrate")


def calibrate_units(
    robot: Path = typer.Option(..., "--robot", help="Robot config file (a real arm, not twin:)."),
    arm: str | None = typer.Option(None, "--arm", help="Arm to calibrate (default: every arm)."),
    direction: list[str] = typer.Option(
        [], "--direction", help="joint=-1 for a joint that turns against the twin's (repeatable)."
    ),
    second_pose: str = typer.Option(
        "none", "--second-pose",
        help="A second pose to sign every joint that moves: 'home' (the twin's home), "
             "comma-separated radians, or 'none'.",
    ),
    gripper: str = typer.Option("gripper", "--gripper", help="Gripper joint name ('' for none)."),
    out: Path | None = typer.Option(
        None, "--out", help="File to write (default: calibration/<config>/units.yaml next to it)."
    ),
) -> None:
    """Measure the map from an arm's own radians to the twin's (zeros, directions, gripper 0..1).

    Torque stays off: you pose the arm by hand at the twin's zero pose (and optionally a second
    pose), then open and close the gripper fully. A twin-trained policy then runs on this robot
    (`tether rollout` maps through the file); without the file such a rollout is refused.

    Example: tether calibrate units --robot configs/so101_leader.yaml --second-pose home
    """
    import numpy as np

    from tether.calibration.units import measure_units, range_report
    from tether.robot.convention import UnitsCalibration, units_path
    from tether.robot.factory import load_robot_config, make_robot

    if str(robot).startswith("twin:"):
        raise ConfigError("the twin is the reference convention; calibrate a real robot config.")
    config = load_robot_config(robot)
    for arm_config in config.arms:
        if arm_config.driver in ("dynamixel", "feetech"):
            arm_config.params = dict(arm_config.params) | {"torque": False}  # pose by hand
    built = make_robot(config)
    names = [arm] if arm else list(built.raw_arms)
    unknown = [n for n in names if n not in built.raw_arms]
    if unknown:
        raise ConfigError(f"--arm {unknown[0]} is not in {robot} (arms: {list(built.raw_arms)}).")
    signs = _parse_directions(direction)
    path = Path(out) if out is not None else units_path(robot)
    calibration = UnitsCalibration.load(path) if path.is_file() else UnitsCalibration()
    calibration.robot, calibration.created, calibration.tool_version = config.name, "", ""
    for name in names:
        device = built.raw_arms[name]
        joint_names = list(device.spec.joint_names)
        second = _second_pose(second_pose, joint_names)
        with device:
            fit = measure_units(
                lambda d=device: d.read().position, joint_names, _ask, second_twin=second,
                directions={k: v for k, v in signs.items() if k in joint_names},
                gripper=gripper or None,
            )
        calibration.arms[name] = fit.convention
        calibration.residuals[name] = {"second_pose_rad": fit.residuals,
                                       "directions_from_poses": fit.inferred_directions}
        _show(name, fit)
        limits = _twin_limits(joint_names)
        if limits is not None:
            spec = device.spec
            for problem in range_report(fit.convention, joint_names, *limits,
                                        np.asarray(spec.lower), np.asarray(spec.upper)):
                console.print(f"[yellow]warning[/yellow] {name}: {problem}")
    written = calibration.save(path)
    console.print(f"Wrote {written}. `tether rollout --robot {robot}` maps twin policies through it.")


def _ask(message: str) -> None:
    console.print(message)
    input()


def _show(name: str, fit) -> None:
    table = Table(title=f"{name}: robot -> twin")
    for column in ("joint", "offset rad", "direction", "residual rad"):
        table.add_column(column)
    for j in fit.convention.joints:
        residual = fit.residuals.get(j.name)
        table.add_row(j.name, f"{j.offset:+.4f}", f"{j.direction:+d}",
                      "-" if residual is None else f"{residual:.4f}")
    g = fit.convention.gripper
    if g is not None:
        table.add_row(g.name, f"closed {g.closed:+.4f}", f"open {g.open:+.4f}", "-")
    console.print(table)


def _second_pose(text: str, joint_names: list[str]):
    import numpy as np

    text = text.strip().lower()
    if text in ("", "none"):
        return None
    if text == "home":
        model = _twin_model(joint_names)
        if model is None:
            raise ConfigError("--second-pose home needs a twin arm with the same joint names "
                              f"({joint_names}); give the pose as comma-separated radians.")
        return np.asarray(model.home, dtype=np.float64)
    try:
        pose = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise ConfigError(f"--second-pose '{text}' must be home, none or comma-separated radians.") from None
    if len(pose) != len(joint_names):
        raise ConfigError(f"--second-pose has {len(pose)} values; the arm has {len(joint_names)} joints.")
    return pose


def _twin_model(joint_names: list[str]):
    """The twin arm model with these joint names (None without the twin extra or a match)."""
    try:
        from tether.robot.twin.models import ARM_MODELS
    except ImportError:
        return None
    for model in ARM_MODELS.values():
        if list(model.joint_names) == list(joint_names):
            return model
    return None


def _twin_limits(joint_names: list[str]):
    import numpy as np

    model = _twin_model(joint_names)
    if model is None:
        return None
    lower = np.append(np.asarray(model.lower, float), 0.0)  # gripper: 0 closed .. 1 open
    upper = np.append(np.asarray(model.upper, float), 1.0)
    return lower, upper


def _parse_directions(items: list[str]) -> dict[str, int]:
    signs = {}
    for item in items:
        name, _, value = item.partition("=")
        if value.strip() not in ("1", "-1", "+1"):
            raise ConfigError(f"--direction '{item}' must look like joint=-1 or joint=1.")
        signs[name.strip()] = int(value)
    return signs
