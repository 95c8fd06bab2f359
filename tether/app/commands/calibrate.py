"""`tether calibrate ...`: calibration commands (wired into `tether` by tether/cli.py)."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console

from tether.core.errors import ConfigError

console = Console()


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    calibrate = typer.Typer(
        help="Calibration: leader/follower offsets.\n\n"
        "Example: tether calibrate leader --robot configs/so101_leader.yaml --out calib/so101.yaml",
        no_args_is_help=True,
    )
    calibrate.command("leader")(calibrate_leader)
    from tether.app.commands.calibrate_camera import register_camera

    register_camera(calibrate)  # camera, board, show
    app.add_typer(calibrate, name="calibrate")


def calibrate_leader(
    robot: str = typer.Option(..., "--robot", help="Robot config with a 'teleop: device: leader' section."),
    out: Path = typer.Option(..., "--out", help="Calibration file to write (YAML)."),
    direction: list[str] = typer.Option(
        [], "--direction", help="joint=-1 for a joint whose leader turns the other way (repeatable)."
    ),
    snap: float = typer.Option(
        math.pi / 2, "--snap", help="Round offsets to multiples of this (rad); 0 keeps them exact."
    ),
    yes: bool = typer.Option(False, "--yes", help="Do not wait for Enter (the arms are already posed)."),
) -> None:
    """Measure leader/follower offsets from one pose where both arms are placed alike.

    Torque stays off on the followers so you can pose them by hand. Offsets are rounded to
    quarter turns by default (servo horns mount in quarter-turn steps), so the pose only needs
    to match by eye.

    Example: tether calibrate leader --robot configs/so101_leader.yaml --out calib/so101.yaml
    """
    import numpy as np

    from tether.calibration.leader_follower import offsets_from_poses
    from tether.robot.factory import load_robot_config, make_robot
    from tether.robot.joint_map import LeaderFollowerCalibration, default_pair
    from tether.teleop.factory import make_teleop

    config = load_robot_config(robot)
    if config.teleop.device != "leader":
        raise ConfigError(f"{robot} has teleop device '{config.teleop.device}'; it needs 'leader'.")
    for arm in config.arms:
        if arm.driver in ("dynamixel", "feetech"):
            arm.params = dict(arm.params) | {"torque": False}  # followers limp: pose them by hand
    params = dict(config.teleop.params)
    params.pop("calibration", None)  # measure from scratch
    follower_robot = make_robot(config)
    teleop = make_teleop("leader", follower_robot, params)
    signs = _parse_directions(direction)
    if not yes:
        console.print("Put every leader and its follower in the same pose, then press Enter.")
        input()
    calibration = LeaderFollowerCalibration()
    with teleop:
        for name, leader in teleop.leaders.items():
            follower = follower_robot.raw_arms[name]
            follower.connect()
            try:
                follower_pos = follower.read().position
            finally:
                follower.close()
            leader_pos = leader.read().position
            pair = default_pair(leader.spec, follower.spec)
            leader_names = list(leader.spec.joint_names)
            follower_names = list(follower.spec.joint_names)
            for joint in pair.joints:
                joint.direction = signs.pop(joint.follower, 1)
                li, fi = leader_names.index(joint.leader), follower_names.index(joint.follower)
                offset = offsets_from_poses(
                    leader_pos[[li]], follower_pos[[fi]], np.array([joint.direction]), snap or None
                )[0]
                joint.offset = round(float(offset), 6)
            calibration.pairs[name] = pair
            console.print(f"[green]{name}[/green]: offsets " + ", ".join(
                f"{j.follower} {j.offset:+.4f}" for j in pair.joints
            ))
    if signs:
        raise ConfigError(f"--direction names unknown joints: {sorted(signs)}.")
    path = calibration.save(out)
    console.print(f"Wrote {path}. Use it with teleop.params.calibration: {path}")


def _parse_directions(items: list[str]) -> dict[str, int]:
    signs = {}
    for item in items:
        name, _, value = item.partition("=")
        if value.strip() not in ("1", "-1", "+1"):
            raise ConfigError(f"--direction '{item}' must look like joint=-1 or joint=1.")
        signs[name.strip()] = int(value)
    return signs
