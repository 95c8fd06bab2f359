"""Robot configuration: which drivers, with which parameters, under which safety limits.

Driver names map to classes through an explicit table (no `_target_` strings that import
arbitrary code): see `robot/factory.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.core.schema import validate_name
from tether.robot.safety import SafetyConfig


@dataclass
class ArmConfig:
    name: str
    driver: str  # key of tether.robot.factory.ARM_DRIVERS, e.g. "dynamixel", "feetech", "ur_rtde"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The name becomes part of array keys (`state.<arm>`): refuse one that would not parse.
        validate_name(self.name, "arm")


@dataclass
class CameraConfig:
    name: str
    driver: str  # key of tether.robot.factory.CAMERA_DRIVERS, e.g. "realsense", "opencv"
    width: int = 640
    height: int = 480
    fps: float = 30.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_name(self.name, "camera")  # becomes `image.<camera>` in stores and on the wire


@dataclass
class TeleopConfig:
    device: str = "none"  # key of tether.teleop.factory.DEVICES: "leader", "spacemouse", "keyboard", "scripted"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RobotConfig:
    """A robot as a config file describes it (see configs/*.yaml).

    `safety` limits every arm: `max_velocity` (rad/s) and `max_following_error` (rad) take one
    number, one per joint, or a mapping per arm name (`{left: 2.0, right: [...]}`); see
    SafetyConfig in robot/safety.py.
    """

    name: str = "robot"
    fps: float = 30.0
    arms: list[ArmConfig] = field(default_factory=list)
    cameras: list[CameraConfig] = field(default_factory=list)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    # The twin: when set ("lift", "transfer_cube", ...), arms/cameras come from the MuJoCo twin.
    twin_task: str | None = None
    twin_params: dict[str, Any] = field(default_factory=dict)
    # How `tether record` stores this robot's camera frames in a new store (a codec spec such as
    # "h264", "h264:crf=20", "jpeg"; docs/data.md, Image codecs); None: the store's default.
    image_codec: str | None = None


def twin_camera_overrides(cameras: Sequence[str], width: int | None = None,
                          height: int | None = None) -> list[str]:
    """Overrides (`key=value`, as `--set` takes them) for a twin that renders exactly `cameras`
    at `width` x `height`. One spelling for every caller that builds a twin for a recording or a
    policy (evaluation, demos, quality mixes), so a change of the syntax cannot miss one."""
    out = [f"twin_params.cameras=[{','.join(cameras)}]"]
    if width is not None:
        out.append(f"twin_params.width={int(width)}")
    if height is not None:
        out.append(f"twin_params.height={int(height)}")
    return out
