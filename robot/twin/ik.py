"""Damped-least-squares inverse kinematics on a MuJoCo model: the twin's, or any arm's MJCF.

    dq = J^T (J J^T + lambda^2 I)^-1 e

`e` stacks the position error (m) and the weighted orientation error (rad, a rotation vector).
The damping `lambda` keeps steps bounded near singularities (a stretched arm, wrist alignment)
where a plain pseudo-inverse would command huge joint jumps; each iteration's step is also
clipped. It works for 5-DoF arms (SO-101), where a full 6-D pose is not reachable: the solver
then trades position against the weighted orientation error instead of failing.

The one solver of the project: the twin's scripted experts (`DLSIK.for_arm`) and end-effector
teleop (tether.teleop.ik, on the twin or a real arm's MJCF) both use it. It owns its MjData, so
solving never disturbs a running simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from tether.core.errors import ConfigError
from tether.robot.twin.sim import ArmBinding


@dataclass(frozen=True)
class IKResult:
    q: np.ndarray
    position_error: float  # m, at q
    rotation_error: float  # rad, at q (0 when no rotation was asked for)
    iterations: int


class DLSIK:
    """IK for the joints `joint_names` of `model`, moving the site `site_name` (the tool)."""

    def __init__(
        self,
        model: mujoco.MjModel,
        joint_names: list[str],
        site_name: str,
        damping: float = 0.05,
        rotation_weight: float = 0.3,
        max_step: float = 0.2,
    ) -> None:
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

    @classmethod
    def for_arm(cls, model: mujoco.MjModel, binding: ArmBinding, **kwargs) -> DLSIK:
        """The solver for one twin arm's joints (not the gripper) and its TCP site."""
        joints = [f"{binding.prefix}{j}" for j in binding.model.joints]
        return cls(model, joints, model.site(binding.tcp_site).name, **kwargs)

    @property
    def dof(self) -> int:
        return len(self.qpos_adr)

    def forward(self, q: np.ndarray, qpos: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tool position (3,) and rotation matrix (3, 3) at joint positions `q`.

        `qpos` sets the model's other joints first (the other arm, free objects); otherwise they
        keep their last value (the model's default pose at first)."""
        if qpos is not None:
            self.data.qpos[:] = qpos
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(
        self,
        q_start: np.ndarray,
        position: np.ndarray,
        rotation: np.ndarray | None = None,
        iterations: int = 20,
        tolerance: float = 1e-4,
        rotation_tolerance: float | None = None,
        qpos: np.ndarray | None = None,
    ) -> IKResult:
        """Joint positions that bring the tool to `position` (and `rotation`, if given).

        Stops when the tool is within `tolerance` metres and `rotation_tolerance` radians
        (default 10 x tolerance), when a step no longer moves the joints (the least-squares
        compromise of an unreachable pose), or after `iterations` steps. The errors returned
        are those at the returned q.
        """
        model, d, site = self.model, self.data, self.site
        rot_tol = 10.0 * tolerance if rotation_tolerance is None else rotation_tolerance
        q = np.clip(np.asarray(q_start, dtype=np.float64).copy(), self.lower, self.upper)
        position = np.asarray(position, dtype=np.float64)
        n_rows = 6 if rotation is not None else 3
        err = np.zeros(n_rows)
        jac = np.empty((n_rows, self.dof))
        reg = (self.damping**2) * np.eye(n_rows)
        if qpos is not None:
            d.qpos[:] = qpos
        steps = 0
        while True:
            d.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(model, d)
            np.subtract(position, d.site_xpos[site], out=err[:3])
            ex, ey, ez = err[:3].tolist()
            pos_err = math.sqrt(ex * ex + ey * ey + ez * ez)
            rot_err = 0.0
            if rotation is not None:
                rot_vec = rotation_error(rotation, d.site_xmat[site].reshape(3, 3))
                rx, ry, rz = rot_vec.tolist()
                rot_err = math.sqrt(rx * rx + ry * ry + rz * rz)
                np.multiply(rot_vec, self.rotation_weight, out=err[3:])
            if (pos_err < tolerance and rot_err < rot_tol) or steps == iterations:
                break
            mujoco.mj_comPos(model, d)  # the Jacobian needs the com-based motion dofs
            mujoco.mj_jacSite(model, d, self._jacp, self._jacr, site)
            jac[:3] = self._jacp[:, self.dof_adr]
            if rotation is not None:
                jac[3:] = self.rotation_weight * self._jacr[:, self.dof_adr]
            dq = jac.T @ np.linalg.solve(jac @ jac.T + reg, err)
            largest = float(np.abs(dq).max())
            if largest < 1e-5:  # converged to the least-squares compromise (target not exact)
                break
            if largest > self.max_step:
                dq *= self.max_step / largest
            q = np.minimum(np.maximum(q + dq, self.lower), self.upper)  # (np.clip is slower)
            steps += 1
        return IKResult(q, pos_err, rot_err, steps)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, world frame) that turns `current` into `target`.

    Plain floats rather than numpy scalars: the experts solve IK every tick, so this is hot."""
    (a, b, c), (d, e, f), (g, h, i) = (target @ current.T).tolist()
    vx, vy, vz = h - f, c - g, d - b  # 2 sin(angle) * axis
    two_sin = math.sqrt(vx * vx + vy * vy + vz * vz)
    angle = math.atan2(0.5 * two_sin, 0.5 * (a + e + i - 1.0))
    if angle < 1e-9:
        return np.zeros(3)
    if two_sin < 2e-6:  # ~180 degrees: the skew part vanishes, take the axis from the diagonal
        axis = np.sqrt(np.maximum((np.array([a, e, i]) + 1.0) / 2.0, 0.0))
        return axis / np.linalg.norm(axis) * angle
    scale = angle / two_sin
    return np.array([vx * scale, vy * scale, vz * scale])


def rotation_from_vector(vector: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrix of a rotation vector (axis * angle)."""
    angle = float(np.linalg.norm(vector))
    if angle < 1e-12:
        return np.eye(3)
    k = np.asarray(vector) / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


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
