"""Damped least-squares inverse kinematics on the twin's own model (for the scripted experts).

Works on a private MjData so solving never disturbs the simulation. The 5-joint SO-101 class
arm cannot reach arbitrary 6-D poses, but every pose the experts ask for (gripper pointing
down, any yaw; or along the arm's plane) is reachable, so the least-squares solution is exact
there; weights trade position against orientation when a target is slightly out of reach.
"""

from __future__ import annotations

import mujoco
import numpy as np

from tether.robot.twin.sim import ArmBinding


class ArmIK:
    def __init__(self, model: mujoco.MjModel, binding: ArmBinding) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.binding = binding
        self.qpos_adr = binding.qpos[:-1]  # arm joints only, not the finger
        self.dof_adr = binding.qvel[:-1]
        self.lower = np.array(binding.model.lower)
        self.upper = np.array(binding.model.upper)
        self.site = binding.tcp_site
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def tcp_pose(self, qpos_full: np.ndarray, arm_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and rotation matrix for arm joints `arm_q` (other joints from qpos_full)."""
        self.data.qpos[:] = qpos_full
        self.data.qpos[self.qpos_adr] = arm_q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(
        self,
        qpos_full: np.ndarray,
        q_init: np.ndarray,
        target_pos: np.ndarray,
        target_rot: np.ndarray,
        rot_weight: float = 0.3,
        iterations: int = 30,
        damping: float = 1e-3,
        tol: float = 3e-4,
    ) -> tuple[np.ndarray, float]:
        """Joint angles reaching `target_pos`/`target_rot`; returns (q, position error in m)."""
        q = np.clip(np.array(q_init, dtype=np.float64), self.lower, self.upper)
        d = self.data
        d.qpos[:] = qpos_full
        err_pos = np.inf
        n = len(q)
        for _ in range(iterations):
            d.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_comPos(self.model, d)
            pos = d.site_xpos[self.site]
            rot = d.site_xmat[self.site].reshape(3, 3)
            e_pos = target_pos - pos
            # Axis-angle error (small-angle form): the skew part of target_rot @ rot.T.
            sk = target_rot @ rot.T
            e_rot = 0.5 * np.array([sk[2, 1] - sk[1, 2], sk[0, 2] - sk[2, 0], sk[1, 0] - sk[0, 1]])
            err_pos = float(np.linalg.norm(e_pos))
            if err_pos < tol and np.linalg.norm(e_rot) < 10 * tol:
                break
            mujoco.mj_jacSite(self.model, d, self._jacp, self._jacr, self.site)
            jac = np.vstack([self._jacp[:, self.dof_adr], rot_weight * self._jacr[:, self.dof_adr]])
            err = np.concatenate([e_pos, rot_weight * e_rot])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(6), err)
            step = np.max(np.abs(dq))
            if step < 1e-5:  # converged to the least-squares compromise (target not exact)
                break
            if step > 0.3:
                dq *= 0.3 / step
            q = np.clip(q + dq, self.lower, self.upper)
            assert q.shape == (n,)
        return q, err_pos


def rot_down(yaw: float) -> np.ndarray:
    """Rotation of a gripper pointing straight down (tool x = -z) with fingers along yaw.

    Columns are the tool frame's axes in world coordinates: x approach, y finger direction.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    x = np.array([0.0, 0.0, -1.0])
    y = np.array([-s, c, 0.0])
    z = np.cross(x, y)
    return np.column_stack([x, y, z])


def rot_horizontal(approach_yaw: float, finger_vertical: bool = True) -> np.ndarray:
    """Gripper pointing horizontally along `approach_yaw`; fingers close vertically (or not)."""
    c, s = np.cos(approach_yaw), np.sin(approach_yaw)
    x = np.array([c, s, 0.0])
    y = np.array([0.0, 0.0, 1.0]) if finger_vertical else np.array([-s, c, 0.0])
    z = np.cross(x, y)
    return np.column_stack([x, y, z])
