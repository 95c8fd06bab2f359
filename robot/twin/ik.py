"""Damped least-squares inverse kinematics on the twin's own model (for the scripted experts).

Works on a private MjData so solving never disturbs the simulation. The 5-joint SO-101 class
arm cannot reach arbitrary 6-D poses, but every pose the experts ask for (gripper pointing
down, any yaw; or along the arm's plane) is reachable, so the least-squares solution is exact
there; weights trade position against orientation when a target is slightly out of reach.
"""

from __future__ import annotations

import math

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
        tol: float = 5e-4,
    ) -> tuple[np.ndarray, float]:
        """Joint angles reaching `target_pos`/`target_rot`; returns (q, position error in m).

        Stops at `tol` metres and 10 x `tol` radians: the actuators' own tracking error is
        larger, and the experts are closed-loop where precision matters.
        """
        q = np.clip(np.array(q_init, dtype=np.float64), self.lower, self.upper)
        model, d, site, dof = self.model, self.data, self.site, self.dof_adr
        d.qpos[:] = qpos_full
        err = np.empty(6)
        jac = np.empty((6, len(q)))
        reg = damping * np.eye(6)
        err_pos = float("inf")
        for _ in range(iterations):
            d.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(model, d)
            np.subtract(target_pos, d.site_xpos[site], out=err[:3])
            # Axis-angle error (small-angle form): the skew part of target_rot @ rot.T.
            sk = target_rot @ d.site_xmat[site].reshape(3, 3).T
            err[3] = sk[2, 1] - sk[1, 2]
            err[4] = sk[0, 2] - sk[2, 0]
            err[5] = sk[1, 0] - sk[0, 1]
            err[3:] *= 0.5
            err_pos = math.sqrt(err[0] ** 2 + err[1] ** 2 + err[2] ** 2)
            err_rot = math.sqrt(err[3] ** 2 + err[4] ** 2 + err[5] ** 2)
            if err_pos < tol and err_rot < 10 * tol:
                break
            mujoco.mj_comPos(model, d)  # the Jacobian needs the com-based motion dofs
            mujoco.mj_jacSite(model, d, self._jacp, self._jacr, site)
            jac[:3] = self._jacp[:, dof]
            jac[3:] = self._jacr[:, dof]
            jac[3:] *= rot_weight
            err[3:] *= rot_weight
            dq = jac.T @ np.linalg.solve(jac @ jac.T + reg, err)
            step = float(np.abs(dq).max())
            if step < 1e-5:  # converged to the least-squares compromise (target not exact)
                break
            if step > 0.3:
                dq *= 0.3 / step
            q = np.minimum(np.maximum(q + dq, self.lower), self.upper)
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
