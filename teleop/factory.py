"""Build a teleop device by name. Explicit table, lazy imports (hardware SDKs are optional).

Every device class provides `from_config(params: dict, robot: Robot) -> TeleopDevice`; the robot
is passed because devices map their input onto its arms (the scripted expert also reads the
twin's privileged task state through it).
"""

from __future__ import annotations

import importlib
from typing import Any

from tether.core.errors import ConfigError
from tether.robot.interfaces import Robot
from tether.robot.targets import TeleopDevice

DEVICES: dict[str, str] = {
    "scripted": "tether.robot.twin.expert:ScriptedExpert",
    "leader": "tether.teleop.leader:LeaderTeleop",
    "spacemouse": "tether.teleop.spacemouse:SpaceMouseTeleop",
    "keyboard": "tether.teleop.keyboard:KeyboardTeleop",
}


def make_teleop(name: str, robot: Robot, params: dict[str, Any] | None = None) -> TeleopDevice:
    if name not in DEVICES:
        raise ConfigError(f"Unknown teleop device '{name}'. Known: {', '.join(sorted(DEVICES))}.")
    module_name, class_name = DEVICES[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_config(dict(params or {}), robot)
