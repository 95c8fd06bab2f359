"""3Dconnexion SpaceMouse teleop through pyspacemouse (hidapi / easyhid underneath).

Push and twist the cap: the tool moves and turns at up to `linear_speed` / `angular_speed`.
Left button (held) closes the gripper, right button opens it. Axes use pyspacemouse's
right-handed Z-up convention (HID_Z_UP), which matches a robot base frame with x forward when
the device's cable points away from the operator; flip axes with `axis_signs`.

Config (robot config `teleop:` section):

    teleop:
      device: spacemouse
      params: {linear_speed: 0.1, angular_speed: 0.6, deadzone: 0.08, device: SpaceMouse Wireless}

The HID device needs read permission: see the udev rule in docs/hardware.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tether.core.config import from_dict
from tether.core.errors import ConfigError, DeviceError
from tether.core.optional import require
from tether.robot.interfaces import Robot
from tether.teleop.ee_control import EndEffectorParams, EndEffectorTeleop, OperatorInput

log = logging.getLogger(__name__)

READS_PER_TICK = 8  # a SpaceMouse sends translation and rotation in separate reports


@dataclass
class SpaceMouseParams(EndEffectorParams):
    device: str | None = None  # pyspacemouse device name; None: the first one found
    deadzone: float = 0.08  # normalized deflection ignored around rest (the cap never rests at 0)
    axis_signs: list[float] = field(default_factory=lambda: [1.0] * 6)


class SpaceMouseTeleop(EndEffectorTeleop):
    def __init__(self, robot: Robot, params: SpaceMouseParams, mouse: Any = None, ik=None) -> None:
        if len(params.axis_signs) != 6:
            raise ConfigError("teleop.params.axis_signs needs 6 values (x y z roll pitch yaw).")
        if not 0 <= params.deadzone < 1:
            raise ConfigError(f"teleop.params.deadzone must be in [0, 1), got {params.deadzone}.")
        super().__init__(robot, params, ik)
        self.params: SpaceMouseParams = params
        self.mouse = mouse  # a pyspacemouse SpaceMouseDevice; opened in connect() if None
        self._owns_mouse = mouse is None

    @classmethod
    def from_config(cls, params: dict[str, Any], robot: Robot) -> SpaceMouseTeleop:
        return cls(robot, from_dict(SpaceMouseParams, params, "teleop.params"))

    def connect(self) -> None:
        if self.mouse is not None:
            return
        pyspacemouse = require("pyspacemouse", "spacemouse", "the SpaceMouse")
        from pyspacemouse.types import AxisConvention

        try:
            self.mouse = pyspacemouse.open(device=self.params.device, axis_convention=AxisConvention.HID_Z_UP)
        except (RuntimeError, ValueError, OSError) as exc:
            if "HID API" in str(exc):
                raise DeviceError(
                    "pyspacemouse cannot load the hidapi C library; install it with "
                    "`sudo apt-get install libhidapi-hidraw0` (Debian/Ubuntu)."
                ) from exc
            raise DeviceError(
                f"No SpaceMouse could be opened ({exc}). Plug it in, and allow your user to read "
                "its hidraw device (udev rule in docs/hardware.md)."
            ) from exc

    def close(self) -> None:
        if self.mouse is not None and self._owns_mouse:
            self.mouse.close()
            self.mouse = None

    def read_input(self) -> OperatorInput:
        if self.mouse is None:
            raise DeviceError("SpaceMouseTeleop is not connected; call connect() first.")
        state = None
        for _ in range(READS_PER_TICK):
            state = self.mouse.read()
        axes = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], dtype=np.float64)
        axes = np.clip(axes, -1.0, 1.0)
        dz = self.params.deadzone
        # deadzone, then rescale so full deflection is still 1
        magnitude = np.clip((np.abs(axes) - dz) / (1.0 - dz), 0.0, 1.0)
        twist = np.sign(axes) * magnitude * np.asarray(self.params.axis_signs)
        buttons = list(state.buttons)
        gripper = 0.0
        if buttons and buttons[0]:
            gripper = -1.0
        elif len(buttons) > 1 and buttons[1]:
            gripper = 1.0
        return OperatorInput(twist=twist, gripper=gripper)
