"""Scripted experts: waypoints in Cartesian space, IK to joint targets, one per twin task.

The expert is a TeleopDevice (the "scripted operator"), so demonstrations it produces travel the
same path as a human's: recorder -> safety layer -> arms. It reads privileged object poses
through the TwinRobot it was given (as the ACT scripted policies do); each phase's target is
computed when the phase starts, from the state at that moment, which makes the later phases
closed-loop (e.g. the peg's measured offset in the hand is used to line it up with the socket).

`noise` (0 = none, ~1 = a lot) perturbs free-space waypoints by up to noise x 15 mm, grasp
points by noise x 3 mm, phase durations by up to noise x 25 %, and adds noise x 0.01 rad of
Gaussian noise to joint targets, so demonstrations differ between seeds without failing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

from tether.core.errors import ConfigError
from tether.robot.interfaces import Observation
from tether.robot.targets import TeleopDevice
from tether.robot.twin.ik import DLSIK, rot_down, rot_horizontal
from tether.robot.twin.robot import TwinRobot

ARRIVED_RAD = 0.03  # a phase ends once every arm joint is this close to its goal...
MAX_WAIT_S = 2.0  # ...or this long after its planned end
IK_DAMPING = 1e-3**0.5  # lambda: lambda^2 = 1e-3 keeps steps tame near the stretched pose


@dataclass
class Pose:
    """A gripper target: TCP position (m), rotation (3x3, tool x = approach), gripper (0-1)."""

    pos: np.ndarray
    rot: np.ndarray
    grip: float


@dataclass
class Phase:
    name: str
    duration_s: float
    targets: Callable[[], list[Pose]]  # evaluated when the phase starts


class ScriptedExpert(TeleopDevice):
    """Waypoint + IK expert for every twin task. `next_target()` returns a full action vector."""

    def __init__(self, robot: TwinRobot, noise: float = 0.0, seed: int = 0) -> None:
        if not isinstance(robot, TwinRobot):
            raise ConfigError(
                "The scripted expert drives the MuJoCo twin only; use a twin robot such as "
                f"twin:lift (got {type(robot).__name__})."
            )
        if not 0.0 <= float(noise) <= 2.0:
            raise ConfigError(f"scripted expert noise must be in [0, 2], got {noise}")
        if robot.task.name not in _PLANNERS:
            raise ConfigError(f"No scripted expert for task '{robot.task.name}'.")
        self.robot = robot
        self.noise = float(noise)
        self.seed = int(seed)
        # 30 iterations to 0.5 mm / 5 mrad (solve below): the actuators' tracking error is larger,
        # and the experts are closed-loop where precision matters.
        self.iks = [DLSIK.for_arm(robot.sim.model, b, damping=IK_DAMPING, max_step=0.3)
                    for b in robot.sim.arms]
        self.rng = np.random.default_rng(self.seed)
        self._phases: list[Phase] | None = None
        self._ticks = 0

    @classmethod
    def from_config(cls, params: dict[str, Any], robot) -> ScriptedExpert:
        known = {"noise", "seed"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"Unknown scripted expert params {unknown}; known: noise, seed.")
        return cls(robot, noise=float(params.get("noise", 0.0)), seed=int(params.get("seed", 0)))

    # --- TeleopDevice --------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Forget the plan; the next call re-plans from the (newly reset) scene."""
        if seed is not None:
            self.seed = int(seed)
        self.rng = np.random.default_rng([self.seed, 0xE4])
        self._phases = None
        self._ticks = 0

    @property
    def episode_done(self) -> bool:
        return self.robot.succeeded or self.robot.steps >= self.robot.max_steps

    @property
    def phase(self) -> str:
        return self._current.name if self._phases is not None else "unplanned"

    def next_target(self, observation: Observation | None = None) -> np.ndarray:
        """The joint targets for this tick (all arms, robot order)."""
        if self._phases is None:
            self._plan()
        dt = 1.0 / self.robot.fps
        t = self._ticks * dt
        self._ticks += 1
        while self._index + 1 < len(self._phases) and t >= self._phase_end - 1e-9:
            # Move on only once the arms got there: at low control rates the safety layer's
            # per-tick limit makes them lag the plan, and closing early would miss the grasp.
            if not self._arrived() and t < self._phase_end + MAX_WAIT_S:
                break
            self._enter(self._index + 1, t)
        phase_t = t - self._phase_start
        s = min(1.0, phase_t / max(self._current.duration_s, 1e-6))
        s = s * s * (3.0 - 2.0 * s)  # smoothstep: zero velocity at the waypoints
        qpos_full = self.robot.sim.data.qpos.copy()
        action = []
        for i, ik in enumerate(self.iks):
            start, goal = self._from[i], self._to[i]
            pos = start.pos + s * (goal.pos - start.pos)
            rot = _slerp(start.rot, goal.rot, s)
            grip = start.grip + s * (goal.grip - start.grip)
            q = ik.solve(self._q[i], pos, rot, iterations=30, tolerance=5e-4, qpos=qpos_full).q
            self._q[i] = q
            if self.noise > 0:
                q = q + self.rng.normal(0.0, 0.01 * self.noise, size=q.shape)
            action.append(np.concatenate([q, [grip]]))
        return np.concatenate(action)

    def _arrived(self) -> bool:
        sim = self.robot.sim
        for i in range(len(self.iks)):
            actual = sim.arm_position(i)[:-1]
            if np.max(np.abs(actual - self._q[i])) > ARRIVED_RAD:
                return False
        return True

    # --- planning ------------------------------------------------------------------------------
    def _plan(self) -> None:
        sim = self.robot.sim
        qpos = sim.data.qpos.copy()
        self._q = [qpos[ik.qpos_adr].copy() for ik in self.iks]
        self._to = []
        for i, ik in enumerate(self.iks):
            pos, rot = ik.forward(self._q[i], qpos)
            self._to.append(Pose(pos, rot, float(sim.arm_position(i)[-1])))
        self._phases = _PLANNERS[self.robot.task.name](self)
        if self.noise > 0:
            for p in self._phases:
                p.duration_s *= 1.0 + 0.25 * self.noise * self.rng.uniform(-1, 1)
        self._enter(0, 0.0)

    def _enter(self, index: int, t: float) -> None:
        self._index = index
        self._current = self._phases[index]
        self._phase_start = t
        self._phase_end = t + self._current.duration_s
        self._from = self._to
        self._to = self._current.targets()

    # helpers for planners
    def jitter(self, scale_m: float) -> np.ndarray:
        """A random offset of up to noise x scale_m in x and y (zero without noise)."""
        if self.noise <= 0:
            return np.zeros(3)
        return np.array([*self.rng.uniform(-1, 1, 2) * scale_m * self.noise, 0.0])

    def hold(self, i: int) -> Pose:
        """The arm's previous target (keep it where the last phase left it)."""
        p = self._to[i]
        return Pose(p.pos.copy(), p.rot.copy(), p.grip)

    def tcp(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        sim = self.robot.sim
        site = sim.arms[i].tcp_site
        return sim.data.site_xpos[site].copy(), sim.data.site_xmat[site].reshape(3, 3).copy()

    def base_xy(self, i: int) -> np.ndarray:
        return np.array(self.robot.task.arm_layout[i][3][:2])


def grasp_yaw(object_yaw: float, natural: float) -> float:
    """Gripper yaw aligned with an object face (mod 90 deg), closest to the arm's natural yaw."""
    candidates = object_yaw + np.arange(-6, 7) * (np.pi / 2)
    return float(candidates[np.argmin(np.abs(_wrap(candidates - natural)))])


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _slerp(r0: np.ndarray, r1: np.ndarray, s: float) -> np.ndarray:
    if s <= 0.0:
        return r0
    if s >= 1.0:
        return r1
    q0, q1 = np.zeros(4), np.zeros(4)
    mujoco.mju_mat2Quat(q0, r0.ravel())
    mujoco.mju_mat2Quat(q1, r1.ravel())
    if np.dot(q0, q1) < 0:
        q1 = -q1
    dot = min(1.0, float(np.dot(q0, q1)))
    theta = np.arccos(dot)
    if theta < 1e-6:
        q = q0
    else:
        q = (np.sin((1 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)
    q /= np.linalg.norm(q)
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, q)
    return mat.reshape(3, 3)


# --------------------------------------------------------------------------------------------
# Task plans
# --------------------------------------------------------------------------------------------


def _plan_lift(e: ScriptedExpert) -> list[Phase]:
    task, sim = e.robot.task, e.robot.sim
    cube, rot = task.body_pose(sim, "cube")
    natural = float(np.arctan2(cube[1] - e.base_xy(0)[1], cube[0] - e.base_xy(0)[0]))
    yaw = grasp_yaw(task.yaw_of(rot), natural)
    down = rot_down(yaw)
    grasp = cube + np.array([0, 0, 0.005]) + e.jitter(0.003)
    above = grasp + np.array([0, 0, 0.08]) + e.jitter(0.015)
    lift = np.array([grasp[0] * 0.85, grasp[1] * 0.85, 0.13]) + e.jitter(0.015)
    return [
        Phase("approach", 1.0, lambda: [Pose(above, down, 1.0)]),
        Phase("descend", 0.8, lambda: [Pose(grasp, down, 1.0)]),
        Phase("close", 0.6, lambda: [Pose(grasp, down, 0.0)]),
        Phase("lift", 1.2, lambda: [Pose(lift, down, 0.0)]),
        Phase("hold", 1e9, lambda: [e.hold(0)]),
    ]


def _plan_insertion(e: ScriptedExpert) -> list[Phase]:
    task, sim = e.robot.task, e.robot.sim
    peg, rot = task.body_pose(sim, "peg")
    natural = float(np.arctan2(peg[1], peg[0]))
    yaw = grasp_yaw(task.yaw_of(rot), natural)
    grasp = np.array([peg[0], peg[1], 0.05]) + e.jitter(0.003)
    above = grasp + np.array([0, 0, 0.08]) + e.jitter(0.015)
    lifted = np.array([grasp[0], grasp[1], 0.14])
    state: dict[str, Any] = {}

    def over_socket(z: float | None = None) -> list[Pose]:
        # Closed loop: where is the peg relative to the TCP now, and where must the TCP go?
        sock, sock_yaw = task.socket_pose(sim)
        peg_pos, peg_rot = task.body_pose(sim, "peg")
        tcp, _ = e.tcp(0)
        offset = peg_pos - tcp
        if "yaw" not in state:
            turn = float(_wrap(sock_yaw - task.yaw_of(peg_rot)))
            turn = (turn + np.pi / 4) % (np.pi / 2) - np.pi / 4
            state["yaw"] = yaw + turn
        peg_bottom = peg_pos[2] - task.peg_half[2]
        target = np.array([sock[0] - offset[0], sock[1] - offset[1], 0.14])
        if z is not None:
            target[2] = tcp[2] + (z - peg_bottom)
        return [Pose(target, rot_down(state["yaw"]), 0.0)]

    return [
        Phase("approach", 1.0, lambda: [Pose(above, rot_down(yaw), 1.0)]),
        Phase("descend", 0.8, lambda: [Pose(grasp, rot_down(yaw), 1.0)]),
        Phase("close", 0.6, lambda: [Pose(grasp, rot_down(yaw), 0.0)]),
        Phase("lift", 0.8, lambda: [Pose(lifted, rot_down(yaw), 0.0)]),
        Phase("carry", 1.2, over_socket),
        Phase("align", 0.6, over_socket),
        Phase("lower", 0.8, lambda: over_socket(z=0.04)),
        Phase("insert", 1.0, lambda: over_socket(z=0.002)),
        Phase("release", 0.8, lambda: [Pose(e.hold(0).pos, e.hold(0).rot, 1.0)]),
        Phase("retreat", 0.8, lambda: [Pose(e.hold(0).pos + [0, 0, 0.06], e.hold(0).rot, 1.0)]),
        Phase("hold", 1e9, lambda: [e.hold(0)]),
    ]


def _plan_transfer(e: ScriptedExpert) -> list[Phase]:
    task, sim = e.robot.task, e.robot.sim
    LEFT, RIGHT = 0, 1
    cube, rot = task.body_pose(sim, "cube")
    base = e.base_xy(RIGHT)
    natural = float(np.arctan2(cube[1] - base[1], cube[0] - base[0]))
    yaw = grasp_yaw(task.yaw_of(rot), natural)
    grasp = cube + np.array([0, 0, 0.005]) + e.jitter(0.003)
    above = grasp + np.array([0, 0, 0.08]) + e.jitter(0.015)
    meet = np.array([0.0, 0.0, 0.22]) + e.jitter(0.015)
    left_rot = rot_horizontal(0.0, finger_vertical=True)
    carry_yaw = grasp_yaw(0.0, natural)  # fingers along world y at the meeting point

    def right_to_meet() -> list[Pose]:
        return [
            Pose(meet + np.array([-0.12, 0, 0]), left_rot, 1.0),
            Pose(meet + np.array([0, 0, 0.005]), rot_down(carry_yaw), 0.0),
        ]

    def left_in() -> list[Pose]:
        c, _ = task.body_pose(sim, "cube")
        return [Pose(c + np.array([0.01, 0, 0]), left_rot, 1.0), e.hold(RIGHT)]

    def right_away() -> list[Pose]:
        r = e.hold(RIGHT)
        return [e.hold(LEFT), Pose(r.pos + np.array([0.1, 0, 0.08]), r.rot, 1.0)]

    return [
        Phase("approach", 1.2, lambda: [e.hold(LEFT), Pose(above, rot_down(yaw), 1.0)]),
        Phase("descend", 0.8, lambda: [e.hold(LEFT), Pose(grasp, rot_down(yaw), 1.0)]),
        Phase("close", 0.6, lambda: [e.hold(LEFT), Pose(grasp, rot_down(yaw), 0.0)]),
        Phase("lift", 0.6, lambda: [e.hold(LEFT), Pose(grasp + [0, 0, 0.08], rot_down(yaw), 0.0)]),
        Phase("meet", 2.0, right_to_meet),
        Phase("left_in", 1.2, left_in),
        Phase("left_close", 0.6, lambda: [Pose(e.hold(LEFT).pos, left_rot, 0.0), e.hold(RIGHT)]),
        Phase("right_open", 0.8, lambda: [e.hold(LEFT), Pose(e.hold(RIGHT).pos, e.hold(RIGHT).rot, 1.0)]),
        Phase("right_away", 1.0, right_away),
        Phase("hold", 1e9, lambda: [e.hold(LEFT), e.hold(RIGHT)]),
    ]


_PLANNERS: dict[str, Callable[[ScriptedExpert], list[Phase]]] = {
    "lift": _plan_lift,
    "insertion": _plan_insertion,
    "transfer_cube": _plan_transfer,
}
