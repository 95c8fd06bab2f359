"""Damped-least-squares inverse kinematics on a MuJoCo model (the twin's, or any MJCF).

    dq = J^T (J J^T + lambda^2 I)^-1 e

`e` stacks the position error (m) and the weighted orientation error (rad, as a rotation
vector). The damping `lambda` keeps steps bounded near singularities (a stretched arm, wrist
alignment) where a plain pseudo-inverse would command huge joint jumps; each iteration's step is
also clipped. It works for 5-DoF arms (SO-101), where a full 6-D pose is not reachable: the
solver then trades position against the weighted orientation error instead of failing.

The solver owns its own MjData, so calling it never disturbs a running simulation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from tether.core.errors import ConfigError

os.environ.setdefault("MUJOCO_GL", "egl")


@dataclass(frozen=True)
class IKResult:
    q: np.ndarray
    position_error: float  # m
    rotation_error: float  # rad
    iterations: int


class DLSIK:
    def __init__(
        self,
        model,
        joint_names: list[str],
        site_name: str,
        damping: float = 0.05,
        rotation_weight: float = 0.3,
        max_step: float = 0.2,
    ) -> None:
        import mujoco

        self.mujoco = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        self.damping = float(damping)
        self.rotation_weight = float(rotation_weight)
        self.max_step = float(max_step)
        ids = []
        for name in joint_names:
            jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise ConfigError(f"IK: the model has no joint '{name}'.")
            ids.append(jid)
        self.site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site_name)
        if self.site < 0:
            raise ConfigError(f"IK: the model has no site '{site_name}' (the tool centre point).")
        self.qpos_adr = np.array([model.jnt_qposadr[j] for j in ids])
        self.dof_adr = np.array([model.jnt_dofadr[j] for j in ids])
        limited = np.array([model.jnt_limited[j] for j in ids], dtype=bool)
        ranges = np.array([model.jnt_range[j] for j in ids])
        self.lower = np.where(limited, ranges[:, 0], -np.inf)
        self.upper = np.where(limited, ranges[:, 1], np.inf)
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    @property
    def dof(self) -> int:
        return len(self.qpos_adr)

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tool position (3,) and rotation matrix (3, 3) at joint positions `q`."""
        self.data.qpos[self.qpos_adr] = q
        self.mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(
        self,
        q_start: np.ndarray,
        position: np.ndarray,
        rotation: np.ndarray | None = None,
        iterations: int = 20,
        tolerance: float = 1e-4,
    ) -> IKResult:
        """Joint positions that bring the tool to `position` (and `rotation`, if given)."""
        mj = self.mujoco
        q = np.clip(np.asarray(q_start, dtype=np.float64).copy(), self.lower, self.upper)
        position = np.asarray(position, dtype=np.float64)
        n_rows = 6 if rotation is not None else 3
        err = np.zeros(n_rows)
        done = 0
        for step in range(1, iterations + 1):
            done = step
            pos, rot = self.forward(q)
            err[:3] = position - pos
            if rotation is not None:
                err[3:] = self.rotation_weight * rotation_error(rotation, rot)
            if np.linalg.norm(err) < tolerance:
                break
            mj.mj_comPos(self.model, self.data)
            mj.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)
            jac = self._jacp[:, self.dof_adr]
            if rotation is not None:
                jac = np.vstack([jac, self.rotation_weight * self._jacr[:, self.dof_adr]])
            lhs = jac @ jac.T + (self.damping**2) * np.eye(n_rows)
            dq = jac.T @ np.linalg.solve(lhs, err)
            largest = np.abs(dq).max()
            if largest > self.max_step:
                dq *= self.max_step / largest
            q = np.clip(q + dq, self.lower, self.upper)
        pos, rot = self.forward(q)
        rot_err = float(np.linalg.norm(rotation_error(rotation, rot))) if rotation is not None else 0.0
        return IKResult(q, float(np.linalg.norm(position - pos)), rot_err, done)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, world frame) that turns `current` into `target`."""
    delta = target @ current.T
    cos = np.clip((np.trace(delta) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    axis = np.array([delta[2, 1] - delta[1, 2], delta[0, 2] - delta[2, 0], delta[1, 0] - delta[0, 1]])
    sin = np.sin(angle)
    if sin < 1e-6:  # ~180 degrees: take the axis from the diagonal
        axis = np.sqrt(np.maximum((np.diag(delta) + 1.0) / 2.0, 0.0))
        return axis / np.linalg.norm(axis) * angle
    return axis / (2.0 * sin) * angle


def rotation_from_vector(vector: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrix of a rotation vector (axis * angle)."""
    angle = float(np.linalg.norm(vector))
    if angle < 1e-12:
        return np.eye(3)
    k = np.asarray(vector) / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def twin_arm_ik(robot, arm_name: str | None = None, **kwargs) -> tuple[DLSIK, int]:
    """A DLSIK on the twin's own model for one of its arms; also returns the arm's index.

    The solver covers the arm joints (not the gripper); positions come and go in the Arm
    interface's units, which for arm joints are the model's radians.
    """
    sim = getattr(robot, "sim", None)
    if sim is None:
        raise ConfigError(
            f"Robot '{robot.name}' has no MuJoCo model to run IK on; end-effector teleop needs the "
            "twin, or an 'mjcf' model of the real arm in the teleop params."
        )
    names = list(robot.raw_arms)
    if arm_name and arm_name not in names:
        raise ConfigError(f"Robot '{robot.name}' has no arm '{arm_name}' (arms: {names}).")
    index = names.index(arm_name) if arm_name else 0
    binding = sim.arms[index]
    joints = [f"{binding.prefix}{j}" for j in binding.model.joints]
    site = sim.model.site(binding.tcp_site).name
    return DLSIK(sim.model, joints, site, **kwargs), index
