"""Leader-follower teleoperation: a hand-moved leader arm drives any follower Arm.

The leader is any `Arm` (usually a Dynamixel or Feetech arm with `torque: false`); its joints
map onto the follower through a leader/follower calibration (joint mapping, per-joint offset
and direction, gripper range). Targets go to `Robot.act`, so they always pass the safety layer.

Start-up: when the operator grabs the leader, it is rarely where the follower is. For the first
ticks after `connect()`/`reset()` the target walks from the follower's measured pose toward the
leader's at `startup_speed` (rad/s, all joints arriving together), and only once every joint is
within `startup_tolerance` does the follower track the leader directly. The follower therefore
never jumps, whatever the leader's pose.

Config (robot config `teleop:` section):

    teleop:
      device: leader
      params:
        calibration: configs/calibration/so101_leader.yaml   # optional; identity by name otherwise
        startup_speed: 0.5
        leaders:
          - follower: main          # which follower arm this leader drives
            driver: feetech
            params: {port: /dev/ttySO101_leader, torque: false, motors: [...]}
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.config import from_dict
from tether.core.errors import ConfigError
from tether.robot.config import ArmConfig
from tether.robot.interfaces import Arm, Observation, Robot
from tether.robot.joint_map import (
    JointMap,
    LeaderFollowerCalibration,
    default_pair,
)
from tether.robot.targets import TeleopDevice

log = logging.getLogger(__name__)


@dataclass
class LeaderArmParams:
    follower: str
    driver: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LeaderParams:
    leaders: list[LeaderArmParams]
    calibration: str | None = None
    startup_speed: float = 0.5  # rad/s while walking to the leader's pose
    startup_tolerance: float = 0.05  # rad; the follower tracks directly once this close


class LeaderTeleop(TeleopDevice):
    def __init__(
        self,
        robot: Robot,
        leaders: dict[str, Arm],
        calibration: LeaderFollowerCalibration | None = None,
        startup_speed: float = 0.5,
        startup_tolerance: float = 0.05,
    ) -> None:
        if not startup_speed > 0 or not startup_tolerance > 0:
            raise ConfigError("LeaderTeleop: startup_speed and startup_tolerance must be positive.")
        unknown = sorted(set(leaders) - set(robot.raw_arms))
        if unknown:
            raise ConfigError(
                f"Leader(s) configured for follower arm(s) {unknown}, but robot '{robot.name}' "
                f"has arms {list(robot.raw_arms)}."
            )
        if not leaders:
            raise ConfigError("LeaderTeleop needs at least one leader arm under 'leaders'.")
        self.robot = robot
        self.leaders = dict(leaders)
        self.startup_speed = float(startup_speed)
        self.startup_tolerance = float(startup_tolerance)
        self.period = 1.0 / robot.fps
        self.maps: dict[str, JointMap] = {}
        for follower_name, leader in self.leaders.items():
            follower_spec = robot.raw_arms[follower_name].spec
            pair = None
            if calibration is not None:
                pair = calibration.pairs.get(follower_name)
            if pair is None:
                pair = default_pair(leader.spec, follower_spec)
            self.maps[follower_name] = JointMap(pair, leader.spec, follower_spec)
        self._command: dict[str, np.ndarray] = {}
        self._engaged: dict[str, bool] = {}

    @classmethod
    def from_config(cls, params: dict[str, Any], robot: Robot) -> LeaderTeleop:
        if "leaders" not in params:
            raise ConfigError(
                "Leader teleop needs 'leaders' in teleop.params: for each follower arm, the leader "
                "arm's driver and params (see configs/so101_leader.yaml)."
            )
        parsed = from_dict(LeaderParams, params, "teleop.params")
        leaders = {item.follower: _build_arm(item) for item in parsed.leaders}
        calibration = None
        if parsed.calibration:
            calibration = LeaderFollowerCalibration.load(Path(parsed.calibration))
        return cls(robot, leaders, calibration, parsed.startup_speed, parsed.startup_tolerance)

    # --- lifecycle -----------------------------------------------------------------------------
    def connect(self) -> None:
        opened = []
        try:
            for leader in self.leaders.values():
                leader.connect()
                opened.append(leader)
        except BaseException:
            for leader in opened:
                leader.close()
            raise
        self.reset()

    def close(self) -> None:
        for leader in self.leaders.values():
            leader.close()

    def reset(self, seed: int | None = None) -> None:
        """Start a new start-up phase: the follower walks to the leader again."""
        self._command.clear()
        self._engaged = {name: False for name in self.leaders}

    @property
    def engaged(self) -> bool:
        """True once every follower has reached its leader and tracks it directly."""
        return bool(self._engaged) and all(self._engaged.values())

    # --- targets -------------------------------------------------------------------------------
    def leader_targets(self) -> dict[str, np.ndarray]:
        """Where each follower should be according to its leader (after calibration)."""
        return {name: self.maps[name](leader.read().position) for name, leader in self.leaders.items()}

    def next_target(self, observation: Observation) -> np.ndarray:
        wanted = self.leader_targets()
        parts = []
        for name in self.robot.raw_arms:
            measured = np.asarray(observation.joints[name].position, dtype=np.float64)
            if name not in wanted:
                parts.append(measured)  # arms without a leader hold where they are
                continue
            parts.append(self._follow(name, wanted[name], measured))
        return np.concatenate(parts)

    def _follow(self, name: str, target: np.ndarray, measured: np.ndarray) -> np.ndarray:
        if self._engaged.get(name):
            return target
        command = self._command.get(name)
        if command is None:
            command = measured.copy()
        delta = target - command
        largest = float(np.max(np.abs(delta))) if delta.size else 0.0
        max_step = self.startup_speed * self.period
        if largest > max_step:
            command = command + delta * (max_step / largest)  # all joints arrive together
        else:
            command = target.copy()
        self._command[name] = command
        if largest <= self.startup_tolerance:
            self._engaged[name] = True
            log.info("Leader engaged on '%s': the follower now tracks it directly", name)
        return command


def _build_arm(item: LeaderArmParams) -> Arm:
    from tether.robot.factory import ARM_DRIVERS

    if item.driver not in ARM_DRIVERS:
        raise ConfigError(
            f"Unknown leader driver '{item.driver}'. Known: {', '.join(sorted(ARM_DRIVERS))}."
        )
    module_name, class_name = ARM_DRIVERS[item.driver].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    name = f"{item.follower}_leader"
    return cls.from_config(ArmConfig(name=name, driver=item.driver, params=dict(item.params)))
