"""Universal Robots arms (UR3e/5e/10e/16e) through ur_rtde: servoJ streaming, protective-stop aware.

Config (`driver: ur_rtde`), see configs/ur5e_realsense_spacemouse.yaml:

    params:
      host: 192.168.1.10
      servo_period_s: 0.02     # servoJ blocks for this long: the control period (50 Hz)
      lookahead_time: 0.1      # [0.03, 0.2] s: larger is smoother and lags more
      gain: 300                # [100, 2000]: proportional gain of the target tracking
      home: [0, -1.57, 1.57, -1.57, -1.57, 0]

The arm is position-controlled by streaming servoJ targets (ur_rtde uploads its control script
and writes the targets into RTDE input registers). `read()` reads actual joint positions and
velocities from RTDE at the controller rate. Time: `t_device` is the controller's RTDE
`timestamp` (seconds since the controller booted), raw; `t_host` is that stamp mapped onto the
host's monotonic clock by a DeviceClockMapper (tether.core.clock), so two reads of the same data
package carry the same `t_host`, and a controller reboot (its clock restarts) re-synchronises.
When the controller is protective- or emergency-stopped, `command()` refuses to send and raises
DeviceError saying how to recover, instead of queueing targets that would run once the stop is
cleared.

With `read_only: true` the driver only opens the RTDE receive interface: record a UR that an
operator moves in freedrive (kinesthetic teaching) or that runs its own program.

Tests: the receive side runs against `tether.robot.emulators.rtde` (an RTDE output peer speaking
the real protocol to ur_rtde); the control side (servoJ) needs a controller that runs ur_rtde's
uploaded script, which no peer here provides, so it is tested up to the SDK call.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from tether.core.clock import DeviceClockMapper
from tether.core.config import from_dict
from tether.core.errors import ConfigError, DeviceError
from tether.core.optional import require
from tether.robot.interfaces import Arm, ArmSpec, JointState

log = logging.getLogger(__name__)

UR_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
# RTDE outputs this driver reads; a short list keeps the data packages small.
RECEIVE_VARIABLES = ["timestamp", "actual_q", "actual_qd", "robot_mode", "safety_mode", "safety_status_bits"]


@dataclass
class URParams:
    host: str
    frequency: float = 500.0  # RTDE rate; 125 on CB-series controllers
    servo_period_s: float = 0.02
    lookahead_time: float = 0.1
    gain: float = 300.0
    lower: list[float] = field(default_factory=lambda: [-2 * math.pi] * 6)
    upper: list[float] = field(default_factory=lambda: [2 * math.pi] * 6)
    home: list[float] = field(default_factory=lambda: [0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0])
    read_only: bool = False  # only read (record a UR moved in freedrive or by its own program)
    max_joint_speed: float = 3.0  # rad/s (UR5e joints top out at pi): bigger steps are refused
    stop_script_on_close: bool = True


def validate(params: URParams, name: str) -> None:
    if not 0.03 <= params.lookahead_time <= 0.2:
        raise ConfigError(f"Arm '{name}': lookahead_time must be in [0.03, 0.2] s, got {params.lookahead_time}.")
    if not 100 <= params.gain <= 2000:
        raise ConfigError(f"Arm '{name}': gain must be in [100, 2000], got {params.gain}.")
    if not 0.002 <= params.servo_period_s <= 0.1:
        raise ConfigError(
            f"Arm '{name}': servo_period_s must be in [0.002, 0.1] s (500 Hz to 10 Hz), got {params.servo_period_s}."
        )
    for label in ("lower", "upper", "home"):
        if len(getattr(params, label)) != 6:
            raise ConfigError(f"Arm '{name}': '{label}' needs 6 values (one per joint).")


class URArm(Arm):
    def __init__(self, name: str, params: URParams) -> None:
        validate(params, name)
        self.params = params
        self.spec = ArmSpec(
            name=name,
            joint_names=UR_JOINTS,
            lower=np.array(params.lower, dtype=np.float64),
            upper=np.array(params.upper, dtype=np.float64),
            home=np.array(params.home, dtype=np.float64),
            gripper_index=None,
        )
        self._control = None
        self._receive = None
        self._last_command: np.ndarray | None = None
        self.clock = DeviceClockMapper(f"arm {name}")

    @classmethod
    def from_config(cls, config) -> URArm:
        params = from_dict(URParams, dict(config.params), f"arms.{config.name}.params")
        return cls(config.name, params)

    @property
    def is_connected(self) -> bool:
        return self._receive is not None

    def connect(self) -> None:
        if self._receive is not None:
            return
        rtde_receive = require("rtde_receive", "ur", "UR arms", package="ur-rtde")
        rtde_control = require("rtde_control", "ur", "UR arms", package="ur-rtde")
        host = self.params.host
        try:
            receive = rtde_receive.RTDEReceiveInterface(host, self.params.frequency, RECEIVE_VARIABLES)
        except RuntimeError as exc:
            raise DeviceError(
                f"Arm '{self.name}': could not reach the UR controller at {host} (RTDE port 30004): "
                f"{exc}. Check the network cable and IP, and that the robot is powered on."
            ) from exc
        if self.params.read_only:
            self._receive, self._control = receive, None
            return
        try:
            control = rtde_control.RTDEControlInterface(host, self.params.frequency)
        except RuntimeError as exc:
            receive.disconnect()
            raise DeviceError(
                f"Arm '{self.name}': RTDE control on {host} failed: {exc}. Put the robot in remote "
                "control mode on the pendant, release the brakes, and close any running program."
            ) from exc
        self._receive, self._control = receive, control
        self._last_command = None

    def close(self) -> None:
        control, receive = self._control, self._receive
        self._control = self._receive = None
        if control is not None:
            try:
                control.servoStop()
                if self.params.stop_script_on_close:
                    control.stopScript()
                control.disconnect()
            except RuntimeError as exc:
                log.warning("Arm '%s': error while stopping servoJ: %s", self.name, exc)
        if receive is not None:
            receive.disconnect()

    def read(self) -> JointState:
        self._require_connected()
        receive = self._receive
        t_device = float(receive.getTimestamp())
        q = np.asarray(receive.getActualQ(), dtype=np.float64)
        qd = np.asarray(receive.getActualQd(), dtype=np.float64)
        t_host = self.clock.map(t_device, time.monotonic())
        return JointState(position=q, velocity=qd, t_host=t_host, t_device=t_device)

    def command(self, target_position: np.ndarray) -> None:
        self._require_connected()
        if self._control is None:
            raise DeviceError(
                f"Arm '{self.name}' is connected read-only (params.read_only: true); it cannot be "
                "commanded."
            )
        target = self.check_target(target_position, self._last_command)
        receive, control = self._receive, self._control
        if self.stopped:
            kind = "emergency" if receive.isEmergencyStopped() else "protective"
            raise DeviceError(
                f"Arm '{self.name}' is in a {kind} stop; no command was sent. Clear the stop on the "
                "pendant (check for a collision first), then reconnect."
            )
        p = self.params
        if not control.servoJ(target.tolist(), 0.0, 0.0, p.servo_period_s, p.lookahead_time, p.gain):
            raise DeviceError(f"Arm '{self.name}': servoJ was rejected by the controller.")
        self._last_command = target

    @property
    def stopped(self) -> bool:
        """True while the controller is protective- or emergency-stopped."""
        self._require_connected()
        return bool(self._receive.isProtectiveStopped() or self._receive.isEmergencyStopped())

    def check_target(self, target_position, previous: np.ndarray | None) -> np.ndarray:
        """Everything that must hold before a target reaches servoJ (no I/O; unit-tested)."""
        target = np.asarray(target_position, dtype=np.float64)
        if target.shape != (6,) or not np.all(np.isfinite(target)):
            raise ValueError(f"Arm '{self.name}' expects 6 finite joint targets, got {target!r}")
        if np.any(target < self.spec.lower) or np.any(target > self.spec.upper):
            raise DeviceError(f"Arm '{self.name}': target {target.round(3)} is outside the joint limits.")
        if previous is not None:
            step = np.abs(target - previous).max()
            allowed = self.params.max_joint_speed * self.params.servo_period_s
            if step > allowed + 1e-12:
                raise DeviceError(
                    f"Arm '{self.name}': a {step:.3f} rad step in one period exceeds max_joint_speed "
                    f"({self.params.max_joint_speed} rad/s) x servo_period_s; lower the robot config's "
                    "safety.max_step (the cap per command) or safety.max_velocity."
                )
        return target
