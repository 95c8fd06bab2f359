"""End-effector teleop: integrate an operator's twist into a tool pose, solve IK, emit joints.

SpaceMouse and keyboard only differ in how they produce the twist and the gripper command; the
rest lives here. The target pose starts at the arm's measured tool pose (so nothing moves until
the operator does), each tick adds `twist * dt` (translation in the robot base frame, rotation
about world axes at the tool), and damped-least-squares IK on the MuJoCo model turns it into
joint targets, seeded from the previous solution so successive targets stay close. When the
operator pushes past the reachable workspace the target stops at the reached pose instead of
running away. Other arms of the robot hold their measured positions. The result goes through
`Robot.act`, i.e. the safety layer.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.interfaces import Observation, Robot
from tether.robot.targets import TeleopDevice
from tether.teleop.ik import twin_arm_ik

if TYPE_CHECKING:  # pragma: no cover
    from tether.robot.twin.ik import DLSIK

REACH_TOLERANCE_M = 0.01


@dataclass
class EndEffectorParams:
    arm: str | None = None  # which arm the device moves (default: the first)
    linear_speed: float = 0.10  # m/s at full deflection (SpaceMouse) / per second of key repeat
    angular_speed: float = 0.6  # rad/s
    gripper_speed: float = 1.0  # fraction of the gripper range per second
    damping: float = 0.05
    rotation_weight: float = 0.3
    # A real arm has no simulation to borrow a model from: name an MJCF of its kinematics.
    mjcf: str | None = None  # e.g. configs/models/ur5e_kinematics.xml
    mjcf_joints: list[str] | None = None  # default: the arm's joint names without the gripper
    mjcf_site: str = "tcp"


@dataclass(frozen=True)
class OperatorInput:
    """One tick of operator input: a twist in [-1, 1] per axis and a gripper direction."""

    twist: np.ndarray  # (6,) vx vy vz wx wy wz, normalized
    gripper: float = 0.0  # -1 close, +1 open, 0 hold


class EndEffectorTeleop(TeleopDevice):
    def __init__(self, robot: Robot, params: EndEffectorParams, ik: DLSIK | None = None) -> None:
        for label in ("linear_speed", "angular_speed", "gripper_speed", "damping"):
            if not getattr(params, label) > 0:
                raise ConfigError(f"teleop.params.{label} must be positive, got {getattr(params, label)}.")
        self.robot = robot
        self.params = params
        names = list(robot.raw_arms)
        if params.arm is not None and params.arm not in names:
            raise ConfigError(f"Robot '{robot.name}' has no arm '{params.arm}' (arms: {names}).")
        if ik is None and params.mjcf:
            ik = _mjcf_ik(robot, params)
        if ik is None:
            ik, index = twin_arm_ik(robot, params.arm, damping=params.damping,
                                    rotation_weight=params.rotation_weight)
        else:
            index = names.index(params.arm) if params.arm in names else 0
        self.ik = ik
        self.arm_index = index
        self.arm_name = list(robot.raw_arms)[index]
        spec = robot.raw_arms[self.arm_name].spec
        self.spec = spec
        self.joint_index = np.array([i for i in range(spec.dof) if i != spec.gripper_index])
        if len(self.joint_index) != ik.dof:
            raise ConfigError(
                f"IK model has {ik.dof} joints but arm '{self.arm_name}' has {len(self.joint_index)} "
                "(without the gripper)."
            )
        self.period = 1.0 / robot.fps
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.target_position: np.ndarray | None = None
        self.target_rotation: np.ndarray | None = None
        self._q: np.ndarray | None = None
        self._gripper: float | None = None

    @abstractmethod
    def read_input(self) -> OperatorInput:
        """The operator's input for this tick (non-blocking)."""

    def next_target(self, observation: Observation) -> np.ndarray:
        measured = {name: np.asarray(js.position, dtype=np.float64) for name, js in observation.joints.items()}
        arm_q = measured[self.arm_name]
        if self.target_position is None:
            self._q = arm_q[self.joint_index].copy()
            self.target_position, self.target_rotation = self.ik.forward(self._q)
            if self.spec.gripper_index is not None:
                self._gripper = float(arm_q[self.spec.gripper_index])
        command = self.read_input()
        self._integrate(command)
        result = self.ik.solve(self._q, self.target_position, self.target_rotation)
        self._q = result.q
        if result.position_error > REACH_TOLERANCE_M:
            # out of reach: stop the target where the arm can actually be
            self.target_position, _ = self.ik.forward(result.q)
        target = arm_q.copy()
        target[self.joint_index] = result.q
        if self.spec.gripper_index is not None and self._gripper is not None:
            target[self.spec.gripper_index] = self._gripper
        parts = [target if name == self.arm_name else measured[name] for name in self.robot.raw_arms]
        return np.concatenate(parts)

    def _integrate(self, command: OperatorInput) -> None:
        from tether.robot.twin.ik import rotation_from_vector  # loaded with the IK already

        twist = np.clip(np.asarray(command.twist, dtype=np.float64), -1.0, 1.0)
        dt = self.period
        self.target_position = self.target_position + twist[:3] * self.params.linear_speed * dt
        rotation = rotation_from_vector(twist[3:] * self.params.angular_speed * dt)
        self.target_rotation = rotation @ self.target_rotation
        g = self.spec.gripper_index
        if g is not None and self._gripper is not None and command.gripper:
            span = self.spec.upper[g] - self.spec.lower[g]
            step = np.sign(command.gripper) * self.params.gripper_speed * span * dt
            self._gripper = float(np.clip(self._gripper + step, self.spec.lower[g], self.spec.upper[g]))


def _mjcf_ik(robot: Robot, params: EndEffectorParams) -> DLSIK:
    from tether.robot.twin.render import configure_backend

    configure_backend()  # before mujoco's first import
    import mujoco

    from tether.robot.twin.ik import DLSIK

    path = Path(params.mjcf)
    if not path.is_file():
        raise ConfigError(f"teleop.params.mjcf: model file '{path}' not found.")
    try:
        model = mujoco.MjModel.from_xml_path(str(path))
    except ValueError as exc:
        raise ConfigError(f"teleop.params.mjcf: MuJoCo could not load '{path}': {exc}") from exc
    arm = robot.raw_arms[params.arm] if params.arm else next(iter(robot.raw_arms.values()))
    joints = params.mjcf_joints or [
        n for i, n in enumerate(arm.spec.joint_names) if i != arm.spec.gripper_index
    ]
    return DLSIK(model, list(joints), params.mjcf_site, params.damping, params.rotation_weight)
