"""Forward kinematics for hand-eye calibration: `flange_pose(joint_positions) -> 4x4`.

Layer: parts (calibration/). Hand-eye calibration only needs one thing from the arm: the pose
of its flange (the last link, where a wrist camera or a board is mounted) in the arm's base
frame, for given joint positions. The solver takes that as a plain callable (`FlangePose`), so a
real arm's vendor kinematics, a URDF library, or the MuJoCo model below all fit. This module
provides the MuJoCo one: the twin's own model, or a real arm's MJCF (the same kind of file
end-effector teleop loads). MuJoCo is imported by the caller that built the model; here it is
used on that model only, with a private MjData, so computing FK never disturbs a simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tether.core.errors import ConfigError

# joint positions (the arm's joints, no gripper) -> base_T_flange (4x4, metres)
FlangePose = Callable[[np.ndarray], np.ndarray]


class MujocoFlangePose:
    """`flange_pose(q)` for one arm of a MuJoCo model: body `flange` relative to body `base`.

    `joints` are the arm's joint names in the order of `q` (extra trailing entries of `q`, such
    as a gripper, are ignored). The pose is relative to the arm's base body, so an arm placed
    anywhere in the scene gives the same numbers as the real arm's base frame.
    """

    def __init__(self, model: Any, joints: Sequence[str], flange: str, base: str) -> None:
        import mujoco

        self._mujoco = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        adr = []
        for name in joints:
            jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise ConfigError(f"Kinematics: the model has no joint '{name}'; check the joint names.")
            adr.append(int(model.jnt_qposadr[jid]))
        self.qpos_adr = np.array(adr, dtype=int)
        self.flange = self._body(flange)
        self.base = self._body(base)
        self.joint_names = list(joints)

    def _body(self, name: str) -> int:
        bid = self._mujoco.mj_name2id(self.model, self._mujoco.mjtObj.mjOBJ_BODY, name)
        if bid < 0:
            raise ConfigError(f"Kinematics: the model has no body '{name}'; check the body names.")
        return int(bid)

    def world_pose(self, body: int) -> np.ndarray:
        """World pose (4x4) of a body id after the last `__call__`."""
        out = np.eye(4)
        out[:3, :3] = self.data.xmat[body].reshape(3, 3)
        out[:3, 3] = self.data.xpos[body]
        return out

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        if q.shape[0] < len(self.qpos_adr):
            raise ConfigError(
                f"Kinematics: got {q.shape[0]} joint positions, the arm has {len(self.qpos_adr)}."
            )
        self.data.qpos[self.qpos_adr] = q[: len(self.qpos_adr)]
        self._mujoco.mj_kinematics(self.model, self.data)
        world_base = self.world_pose(self.base)
        return np.linalg.inv(world_base) @ self.world_pose(self.flange)


def twin_flange_pose(model: Any, prefix: str, joints: Sequence[str]) -> MujocoFlangePose:
    """The twin arm's FK: its `<prefix>gripper` body (the flange carrying the wrist camera)
    relative to its `<prefix>base` body."""
    return MujocoFlangePose(model, [prefix + j for j in joints], prefix + "gripper", prefix + "base")
