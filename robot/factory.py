"""Build a Robot from a spec string (`twin:lift`) or a config file (`configs/so101.yaml`).

Drivers are looked up in explicit tables and imported only when used, so a machine without a
vendor SDK can still run everything else; a missing SDK raises MissingExtraError naming the pip
extra. Every driver class provides `from_config(config)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

from tether.core.config import load_config
from tether.core.errors import ConfigError
from tether.robot.config import ArmConfig, CameraConfig, RobotConfig
from tether.robot.interfaces import Robot

ARM_DRIVERS: dict[str, str] = {
    "memory": "tether.robot.memory:MemoryArm",
    "dynamixel": "tether.robot.drivers.dynamixel:DynamixelArm",
    "feetech": "tether.robot.drivers.feetech:FeetechArm",
    "ur_rtde": "tether.robot.drivers.ur_rtde:URArm",
}

CAMERA_DRIVERS: dict[str, str] = {
    "memory": "tether.robot.memory:MemoryCamera",
    "realsense": "tether.robot.drivers.realsense:RealSenseCamera",
    "opencv": "tether.robot.drivers.opencv_camera:OpenCVCamera",
}


def load_robot_config(spec: str | Path, overrides: Iterable[str] = ()) -> RobotConfig:
    """Resolve `twin:<task>` or a config path into a RobotConfig."""
    text = str(spec)
    if text.startswith("twin:"):
        task = text.split(":", 1)[1]
        if not task:
            raise ConfigError("Robot spec 'twin:' needs a task, for example twin:lift")
        from tether.core.config import apply_overrides, from_dict

        data = apply_overrides({"name": f"twin-{task}", "twin_task": task}, overrides)
        return from_dict(RobotConfig, data)
    return load_config(RobotConfig, spec, overrides)


def make_robot(spec: str | Path | RobotConfig, overrides: Iterable[str] = ()) -> Robot:
    """Create (not connect) the robot described by `spec`."""
    config = spec if isinstance(spec, RobotConfig) else load_robot_config(spec, overrides)
    if config.twin_task:
        from tether.robot.twin import make_twin_robot

        return make_twin_robot(config)
    if not config.arms:
        raise ConfigError(f"Robot config '{config.name}' lists no arms; add an 'arms:' section.")
    arms = {arm.name: _build(ARM_DRIVERS, arm.driver, arm, "arm") for arm in config.arms}
    cameras = {cam.name: _build(CAMERA_DRIVERS, cam.driver, cam, "camera") for cam in config.cameras}
    return Robot(arms, cameras, safety=config.safety, fps=config.fps, name=config.name)


def _build(table: dict[str, str], driver: str, config: ArmConfig | CameraConfig, kind: str):
    if driver not in table:
        raise ConfigError(
            f"Unknown {kind} driver '{driver}' for '{config.name}'. Known: {', '.join(sorted(table))}."
        )
    module_name, class_name = table[driver].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_config(config)
