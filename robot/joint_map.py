"""Leader/follower calibration: how a leader arm's joints map onto a follower's.

One file per setup, read in one place (here), so offsets are never scattered through scripts.
For every follower arm it lists, per follower joint, which leader joint drives it, with an
offset and a direction:

    follower[j] = offset[j] + direction[j] * leader[leader_joint(j)]      (radians)

and how the gripper maps: a leader trigger/gripper range onto the follower gripper range,
linearly and clipped (leader grippers rarely travel as far as follower grippers).

    format: tether.leader_follower/1
    pairs:
      main:                               # follower arm name in the robot config
        joints:
          - {follower: shoulder_pan, leader: shoulder_pan, offset: 0.0, direction: 1}
          - {follower: shoulder_lift, leader: shoulder_lift, offset: 1.5708, direction: -1}
        gripper: {follower: gripper, leader: gripper, leader_range: [0.1, 0.9],
                  follower_range: [0.0, 1.0]}

It lives in the robot layer because teleop applies it and calibration produces it: both import
it from here and never each other. `tether.calibration.leader_follower` computes the offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tether.core.config import from_dict, load_mapping, save_config
from tether.core.errors import ConfigError
from tether.robot.interfaces import ArmSpec

FORMAT = "tether.leader_follower/1"


@dataclass
class JointMapping:
    follower: str
    leader: str
    offset: float = 0.0
    direction: int = 1


@dataclass
class GripperMapping:
    follower: str
    leader: str
    leader_range: tuple[float, float]  # leader positions at follower_range[0] and [1]
    follower_range: tuple[float, float]


@dataclass
class ArmPairCalibration:
    joints: list[JointMapping] = field(default_factory=list)
    gripper: GripperMapping | None = None


@dataclass
class LeaderFollowerCalibration:
    pairs: dict[str, ArmPairCalibration] = field(default_factory=dict)
    format: str = FORMAT

    @classmethod
    def load(cls, path: str | Path) -> LeaderFollowerCalibration:
        data = load_mapping(path)
        calibration = from_dict(cls, data)
        if calibration.format != FORMAT:
            raise ConfigError(
                f"Calibration {path} has format '{calibration.format}', expected '{FORMAT}'. "
                "Re-create it with `tether calibrate leader`."
            )
        for name, pair in calibration.pairs.items():
            for i, joint in enumerate(pair.joints):
                if joint.direction not in (1, -1):
                    raise ConfigError(
                        f"Calibration {path}: pairs.{name}.joints[{i}].direction must be 1 or -1."
                    )
        return calibration

    def save(self, path: str | Path) -> Path:
        return save_config(self, path)


class JointMap:
    """A compiled pair mapping: leader position vector -> follower position vector."""

    def __init__(self, pair: ArmPairCalibration, leader: ArmSpec, follower: ArmSpec) -> None:
        leader_names = list(leader.joint_names)
        follower_names = list(follower.joint_names)
        self.follower_dof = follower.dof
        self.source = np.full(follower.dof, -1, dtype=np.int64)
        self.offset = np.zeros(follower.dof)
        self.direction = np.ones(follower.dof)
        where = f"leader '{leader.name}' -> follower '{follower.name}'"
        for joint in pair.joints:
            j = _index(follower_names, joint.follower, f"follower joint ({where})")
            self.source[j] = _index(leader_names, joint.leader, f"leader joint ({where})")
            self.offset[j] = joint.offset
            self.direction[j] = joint.direction
        self.gripper: tuple[int, int, tuple[float, float], tuple[float, float]] | None = None
        if pair.gripper is not None:
            g = pair.gripper
            if g.leader_range[0] == g.leader_range[1]:
                raise ConfigError(f"Gripper mapping of {where}: leader_range must not be empty.")
            self.gripper = (
                _index(follower_names, g.follower, f"follower gripper ({where})"),
                _index(leader_names, g.leader, f"leader gripper ({where})"),
                tuple(g.leader_range),
                tuple(g.follower_range),
            )
        covered = set(np.flatnonzero(self.source >= 0))
        if self.gripper is not None:
            covered.add(self.gripper[0])
        uncovered = [follower_names[j] for j in range(follower.dof) if j not in covered]
        if uncovered:
            raise ConfigError(
                f"Calibration of {where} does not say which leader joint drives {uncovered}; "
                "add them under 'joints' (or 'gripper')."
            )

    def __call__(self, leader_position: np.ndarray) -> np.ndarray:
        leader_position = np.asarray(leader_position, dtype=np.float64)
        out = np.zeros(self.follower_dof)
        mapped = self.source >= 0
        out[mapped] = self.offset[mapped] + self.direction[mapped] * leader_position[self.source[mapped]]
        if self.gripper is not None:
            j, i, (l0, l1), (f0, f1) = self.gripper
            s = np.clip((leader_position[i] - l0) / (l1 - l0), 0.0, 1.0)
            out[j] = f0 + s * (f1 - f0)
        return out


def default_pair(leader: ArmSpec, follower: ArmSpec) -> ArmPairCalibration:
    """Identity mapping by joint name (or by order when names differ and the counts match).

    The gripper maps the leader's gripper limits onto the follower's.
    """
    if leader.dof != follower.dof and not set(follower.joint_names) <= set(leader.joint_names):
        raise ConfigError(
            f"Leader '{leader.name}' has joints {list(leader.joint_names)} and follower "
            f"'{follower.name}' has {list(follower.joint_names)}: they cannot be paired without a "
            "calibration file; write one (see docs/hardware.md) and pass it as 'calibration'."
        )
    by_name = set(follower.joint_names) <= set(leader.joint_names)
    joints, gripper = [], None
    for j, name in enumerate(follower.joint_names):
        source = name if by_name else leader.joint_names[j]
        if j == follower.gripper_index and leader.gripper_index is not None:
            li = leader.gripper_index
            gripper = GripperMapping(
                follower=name,
                leader=leader.joint_names[li],
                leader_range=(float(leader.lower[li]), float(leader.upper[li])),
                follower_range=(float(follower.lower[j]), float(follower.upper[j])),
            )
        else:
            joints.append(JointMapping(follower=name, leader=source))
    return ArmPairCalibration(joints=joints, gripper=gripper)


def _index(names: list[str], name: str, what: str) -> int:
    if name not in names:
        raise ConfigError(f"Unknown {what} '{name}'. Known: {', '.join(names)}.")
    return names.index(name)
