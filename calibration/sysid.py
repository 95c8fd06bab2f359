"""Fit the twin to an arm: per-joint actuator gain, damping, armature, friction loss and the
command latency, from logged trajectories (calibration layer; needs `tether[calibrate]`).

Method (output-error identification):

1. Every logged episode is replayed open loop in a *bare* MuJoCo model of the twin (its arms and
   table, no objects, no cameras): the logged commands (what reached the arms, after the safety
   layer) drive the position actuators, delayed by the candidate latency; the simulated joint
   positions are compared with the logged ones at the logged times. `mujoco.rollout` runs the
   whole episode in C, so one replay of 10 s at 2 ms steps costs a few tens of milliseconds.
2. Latency, first guess: a commanded position reaches the actuators on the first physics step
   after `t_command + latency`, so the replay is exact at whole physics steps of latency. A grid
   search (every 4th step up to `latency_max_s`, then every step near the best) with the
   starting parameters gives the first guess.
3. Latency and parameters together: scipy.optimize.least_squares (trust-region reflective,
   bounded, finite-difference Jacobian) on the stacked position errors of the fitted joints,
   over the log of each parameter (all are positive scales; log steps are relative, bounds keep
   them physical) and the latency (the replay blends controls between whole steps, so the error
   is smooth in it). The Jacobian is grouped: one replay per field for all joints at once.
4. The latency snapped to the best whole physics step near that estimate, and the parameters
   refined there with the full Jacobian (exact convergence: the replay is exact there).

Timing fields: commands are the store's `action` (the recorder logs `robot.act()`'s return
value: the command after the safety layer), measurements its `state`; both are placed on the
store's `timestamp` (the tick time: the recorder samples the state at the start of a tick and
sends that tick's command right after). Per-stream capture times (`timing/state/t_host`) are not
used: on the twin in fast mode they run on another origin, and any constant offset between
sampling and sending ends up in the fitted latency, which is where it acts.

The result is a `tether.robot.twin.params.TwinDynamics` (written by `tether calibrate twin` as a
`twin_params` calibration record) plus a `SysidReport` of residuals, per-parameter values and
their identifiability (relative standard error from the Jacobian at the optimum).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError
from tether.core.optional import missing_extra

try:
    import mujoco
    from mujoco import rollout as mj_rollout

    from tether.robot.twin.models import scene_xml
    from tether.robot.twin.params import FIELDS, TwinDynamics, apply_dynamics, read_joint_values
    from tether.robot.twin.sim import TwinSim
    from tether.robot.twin.tasks import make_task
except ImportError as exc:  # pragma: no cover - depends on the install
    raise missing_extra(__name__, "mujoco") from exc

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FIELDS",
    "LogTrajectory",
    "ReplayModel",
    "SysidConfig",
    "SysidReport",
    "fit_twin",
    "tracking_error",
    "trajectories_from_store",
]

DEFAULT_FIELDS = ("kp", "kv", "armature", "frictionloss")

# Smallest value a parameter may take (log parametrisation needs > 0) and its start when the
# model's own value is 0 (the twin has no friction loss by default).
_FLOOR = {"kp": 1e-2, "kv": 1e-4, "damping": 1e-4, "armature": 1e-5, "frictionloss": 1e-4}
_START_IF_ZERO = {"kv": 0.1, "damping": 0.01, "armature": 0.001, "frictionloss": 0.01}


@dataclass
class LogTrajectory:
    """One logged episode: commands and measured positions, full robot vectors, on one clock."""

    t_command: np.ndarray  # (N,) seconds from the episode's first row
    command: np.ndarray  # (N, D) what reached the arms (arm units: rad, gripper 0..1)
    t_measured: np.ndarray  # (M,) seconds, same origin
    measured: np.ndarray  # (M, D) joint positions

    def __post_init__(self) -> None:
        self.t_command = np.asarray(self.t_command, dtype=np.float64)
        self.command = np.asarray(self.command, dtype=np.float64)
        self.t_measured = np.asarray(self.t_measured, dtype=np.float64)
        self.measured = np.asarray(self.measured, dtype=np.float64)
        if self.command.ndim != 2 or len(self.command) != len(self.t_command) or len(self.command) < 2:
            raise ConfigError("A logged trajectory needs at least 2 commands, shaped (N, D) with N times.")
        if self.measured.shape[0] != len(self.t_measured) or self.measured.shape[1] != self.command.shape[1]:
            raise ConfigError("Logged positions must be (M, D) with M times and the commands' D.")
        if not (np.all(np.isfinite(self.command)) and np.all(np.isfinite(self.measured))):
            raise ConfigError("The logged trajectory holds NaN/inf; drop that episode.")
        if np.any(np.diff(self.t_command) <= 0) or np.any(np.diff(self.t_measured) < 0):
            raise ConfigError("Logged timestamps must increase; the store's `timestamp` is damaged.")


def trajectories_from_store(path: str | Path, episodes: Sequence[int] | None = None) -> list[LogTrajectory]:
    """Read episodes of a tether store as LogTrajectory (see the module doc for the fields)."""
    from tether.data.store import EpisodeStore

    with EpisodeStore.open(path, "r") as store:
        missing = [k for k in ("action", "state", "timestamp") if k not in store.keys]
        if missing:
            raise ConfigError(f"{path} lacks {missing}; record it with `tether calibrate excite` "
                              "(or `tether record`).")
        chosen = list(range(store.n_episodes)) if episodes is None else list(episodes)
        bad = [e for e in chosen if not 0 <= e < store.n_episodes]
        if bad or not chosen:
            raise ConfigError(f"{path} has episodes 0..{store.n_episodes - 1}; cannot use {bad or chosen}.")
        out = []
        for episode in chosen:
            data = store.get_episode(episode, ["action", "state", "timestamp"])
            t = np.asarray(data["timestamp"], dtype=np.float64)
            t = t - t[0]
            out.append(LogTrajectory(t, data["action"], t, data["state"]))
        return out


class ReplayModel:
    """The bare twin of a task (arms and table only) that replays logged commands.

    `joints` are the robot's joint names in action order (`arm.joint`); `simulate` returns the
    positions of every joint at the logged times for a batch of parameter sets.
    """

    def __init__(self, task: str, fps: float) -> None:
        twin_task = make_task(task)
        arms = [(m.kind, prefix, pos, yaw) for _, m, prefix, pos, yaw in twin_task.arm_layout]
        self.task = task
        self.sim = TwinSim(scene_xml(arms, "", "", timestep=0.002), twin_task.sim_arms(), control_hz=fps)
        self.model = self.sim.model
        self.dt = float(self.model.opt.timestep)
        self.layout = [(b.name, b.prefix, tuple(b.model.joint_names)) for b in self.sim.arms]
        self.joints = [f"{name}.{j}" for name, _, joints in self.layout for j in joints]
        self._nq = self.model.nq
        self._spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._data = self.sim.data

    def nominal(self, joints: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, float]]:
        """The model's own value of each field for `arm.joint` names."""
        out = {}
        for name in joints:
            arm, joint = name.split(".", 1)
            prefix = next(p for a, p, _ in self.layout if a == arm)
            out[name] = read_joint_values(self.model, prefix, joint, fields)
        return out

    def with_values(self, values: dict[str, dict[str, float]]) -> mujoco.MjModel:
        """A copy of the bare model with per-joint values (`arm.joint -> {field: value}`)."""
        model = copy.copy(self.model)
        dynamics = TwinDynamics()
        for name, fields in values.items():
            arm, joint = name.split(".", 1)
            dynamics.arms.setdefault(arm, {})[joint] = dict(fields)
        apply_dynamics(model, self.layout, dynamics)
        return model

    def controls(self, log_: LogTrajectory, latency_s: float, nstep: int) -> np.ndarray:
        """(nstep, nu) actuator controls: the command in force before each physics step.

        A command reaches the actuators on the first physics step at or after `t + latency`
        (as in the twin's TwinSim). Between two whole steps of latency the controls are blended
        linearly, so the replay error is continuous in the latency and least_squares can fit it
        with the other parameters; at whole steps the replay is exact.
        """
        whole = np.floor(latency_s / self.dt + 1e-9)
        frac = latency_s / self.dt - whole
        actions = self._actions(log_, whole * self.dt, nstep)
        if frac > 1e-6:
            actions = (1 - frac) * actions + frac * self._actions(log_, (whole + 1) * self.dt, nstep)
        ctrl = np.zeros((nstep, self.model.nu))
        offset = 0
        for binding in self.sim.arms:
            n = len(binding.model.joint_names)
            block = actions[:, offset:offset + n].copy()
            block[:, -1] *= binding.model.finger_stroke
            ctrl[:, binding.actuators] = block
            offset += n
        return ctrl

    def _actions(self, log_: LogTrajectory, latency_s: float, nstep: int) -> np.ndarray:
        t_steps = np.arange(nstep) * self.dt
        index = np.searchsorted(log_.t_command + latency_s, t_steps + 1e-9, side="right") - 1
        return np.where(index[:, None] >= 0, log_.command[np.maximum(index, 0)], log_.measured[0])

    def initial_state(self, log_: LogTrajectory) -> np.ndarray:
        """The arms at rest at the first logged position, actuators holding it."""
        d = self._data
        mujoco.mj_resetData(self.model, d)
        offset = 0
        for i, binding in enumerate(self.sim.arms):
            n = len(binding.model.joint_names)
            self.sim.set_arm_pose(i, log_.measured[0, offset:offset + n])
            offset += n
        mujoco.mj_forward(self.model, d)
        state = np.empty(mujoco.mj_stateSize(self.model, self._spec))
        mujoco.mj_getState(self.model, d, state, self._spec)
        return state

    def simulate(self, models: Sequence[mujoco.MjModel], log_: LogTrajectory,
                 latencies: Sequence[float]) -> np.ndarray:
        """(B, M, D) joint positions at the logged times; one model per latency or one for all."""
        nstep = int(np.ceil(log_.t_measured[-1] / self.dt - 1e-9)) + 1
        controls = np.stack([self.controls(log_, lat, nstep) for lat in latencies])
        batch = max(len(models), len(controls))
        model_list = list(models) if len(models) == batch else [models[0]] * batch
        state0 = self.initial_state(log_)
        states, _ = mj_rollout.rollout(model_list, self._data, state0[None], controls,
                                       control_spec=mujoco.mjtState.mjSTATE_CTRL, nstep=nstep)
        qpos = np.concatenate([np.broadcast_to(state0[1:1 + self._nq], (batch, 1, self._nq)),
                               states[:, :, 1:1 + self._nq]], axis=1)  # (B, nstep + 1, nq)
        positions = np.concatenate([self._arm_positions(qpos, b) for b in self.sim.arms], axis=-1)
        step = log_.t_measured / self.dt
        i0 = np.clip(np.floor(step).astype(int), 0, nstep - 1)
        w = (step - i0)[None, :, None]
        return positions[:, i0] * (1 - w) + positions[:, i0 + 1] * w

    @staticmethod
    def _arm_positions(qpos: np.ndarray, binding) -> np.ndarray:
        pos = qpos[..., binding.qpos].copy()
        pos[..., -1] /= binding.model.finger_stroke
        return pos


@dataclass
class SysidConfig:
    """What to fit and how.

    joints: `arm.joint` names to fit (default: every joint but grippers).
    fields: per-joint parameters (robot/twin/params.py FIELDS; default kp, damping, armature,
        frictionloss).
    latency_max_s: the latency search range; latency_s: a known latency (skips the search).
    start: per-joint starting values (default: the twin model's own).
    """

    joints: list[str] | None = None
    fields: tuple[str, ...] = DEFAULT_FIELDS
    latency_max_s: float = 0.25
    latency_s: float | None = None
    start: dict[str, dict[str, float]] | None = None
    start_latency_s: float = 0.0
    max_evaluations: int = 60  # least_squares steps with the grouped Jacobian
    polish_evaluations: int = 20  # then steps with the full Jacobian (0: skip)
    bound_factor: float = 20.0  # each parameter stays within start / f .. start * f

    def __post_init__(self) -> None:
        bad = [f for f in self.fields if f not in FIELDS]
        if bad or not self.fields:
            raise ConfigError(f"Unknown twin parameters {bad}; choose from {', '.join(FIELDS)}.")
        if not 0 < self.latency_max_s < 2:
            raise ConfigError("latency_max_s must be in (0, 2) seconds.")


@dataclass
class SysidReport:
    """Fitted values, how well they explain the logs, and how well each is determined."""

    dynamics: TwinDynamics
    latency_s: float
    start: dict[str, dict[str, float]]
    fitted: dict[str, dict[str, float]]
    rel_std: dict[str, dict[str, float]]  # relative standard error of each parameter (1 sigma)
    rms_start_rad: float  # tracking error of the starting twin (its latency too) on the fit data
    rms_fit_rad: float
    per_joint_rms_rad: dict[str, float]
    evaluations: int
    latency_curve: list[tuple[float, float]] = field(default_factory=list)  # (latency s, rms rad)
    latency_std_s: float = float("nan")

    def residuals(self) -> dict[str, Any]:
        return {
            "rms_start_rad": self.rms_start_rad, "rms_fit_rad": self.rms_fit_rad,
            "per_joint_rms_rad": self.per_joint_rms_rad,
            "relative_std": self.rel_std, "evaluations": self.evaluations,
        }

    def poorly_identified(self, threshold: float = 0.1) -> list[str]:
        """`joint.field` whose relative standard error exceeds `threshold` (the data cannot pin
        them down: excite that joint more, or fix the parameter)."""
        return [f"{j}.{k}" for j, v in self.rel_std.items() for k, s in v.items() if not s <= threshold]


def fit_twin(
    model: ReplayModel,
    logs: Sequence[LogTrajectory],
    config: SysidConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> SysidReport:
    """Fit latency and per-joint parameters to `logs` (see the module doc)."""
    from scipy.optimize import least_squares  # the calibrate extra; import errors name it

    config = config or SysidConfig()
    say = progress or (lambda message: log.info(message))
    problem = _Problem(model, logs, config)
    start_model = model.with_values(problem.start)
    if config.latency_s is not None:
        latency, curve = float(config.latency_s), []
    else:
        latency, curve = _search_latency(model, start_model, logs, problem.columns, config.latency_max_s)
        say(f"latency with the starting parameters: {latency * 1000:.0f} ms (grid search)")
    rms_start = _rms(problem.residual(problem.x0(config.start_latency_s)))
    known = config.latency_s is not None
    problem.fixed_latency = latency if known else None
    x0 = problem.x0(latency)
    lo, hi = problem.bounds()
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
    # 1. Latency and parameters together (the replay blends controls between whole physics
    #    steps of latency, so the error is smooth in it), with the cheap grouped Jacobian.
    evaluations = 0
    result = least_squares(problem.residual, x0, jac=problem.grouped_jacobian, bounds=(lo, hi),
                           x_scale="jac", xtol=1e-8, ftol=1e-6, gtol=1e-10,
                           max_nfev=config.max_evaluations)
    evaluations += int(result.nfev) + int(result.njev or 0) * (len(config.fields) + 2)
    x = result.x
    if not known:
        latency_blend = problem.latency_of(x)
        say(f"joint fit: latency {latency_blend * 1000:.1f} ms, rms {_rms(result.fun) * 1000:.4f} mrad")
        # 2. The twin applies a command on a whole physics step: snap the latency to the best
        #    whole step near the blended estimate (there the replay is exact), then
        # 3. fit the parameters at that latency with the full Jacobian (exact convergence).
        fitted_model = model.with_values(problem.values_of(x))
        latency, local = _search_latency(model, fitted_model, logs, problem.columns,
                                         high=latency_blend + 2 * model.dt,
                                         low=max(0.0, latency_blend - 2 * model.dt), coarse=False)
        curve = sorted(set(curve) | set(local))
        x = x[:-1]
        problem.fixed_latency = latency
    lo, hi = problem.bounds()
    x = np.clip(x, lo + 1e-9, hi - 1e-9)
    if config.polish_evaluations > 0:
        result = least_squares(problem.residual, x, jac=problem.full_jacobian, bounds=(lo, hi),
                               x_scale="jac", xtol=1e-10, ftol=1e-10, gtol=1e-10,
                               max_nfev=config.polish_evaluations)
        x = result.x
        evaluations += int(result.nfev) + int(result.njev or 0) * (len(x) + 1)
    say(f"fit at latency {latency * 1000:.0f} ms: rms {_rms(result.fun) * 1000:.4f} mrad "
        f"({evaluations} replays)")
    problem.fixed_latency = None
    x = np.append(x, latency / problem.LATENCY_UNIT)
    final = problem.residual(x)
    jac = problem.full_jacobian(x)
    rel_std = _relative_std(jac, final, problem.keys)
    fitted = problem.values_of(x)
    latency = problem.latency_of(x)
    latency_std = rel_std.pop("latency", {}).get("s", float("nan"))
    dynamics = TwinDynamics(command_latency_s=latency)
    for name, values in fitted.items():
        arm, joint = name.split(".", 1)
        dynamics.arms.setdefault(arm, {})[joint] = values
    m = model.with_values(fitted)
    errors = [model.simulate([m], lg, [latency])[0] - lg.measured for lg in logs]
    per_joint = {j: _rms(np.concatenate([e[:, c] for e in errors]))
                 for j, c in zip(problem.joints, problem.columns, strict=True)}
    return SysidReport(dynamics, latency, problem.start, fitted, rel_std, rms_start, _rms(final),
                       per_joint, evaluations, curve,
                       latency_std_s=latency_std)


class _Problem:
    """The least-squares problem: x = [log of each (joint, field)..., latency / LATENCY_UNIT]."""

    LATENCY_UNIT = 0.01  # s: latency enters x in units of 10 ms (comparable to log steps)
    STEP = 1e-3  # finite-difference step in x (0.1% of a parameter, 10 us of latency)

    def __init__(self, model: ReplayModel, logs: Sequence[LogTrajectory], config: SysidConfig) -> None:
        self.model, self.logs, self.config = model, list(logs), config
        self.joints = _fit_joints(model, config.joints)
        self.columns = [model.joints.index(j) for j in self.joints]
        fields = tuple(config.fields)
        start = model.nominal(self.joints, fields)
        for name, values in (config.start or {}).items():
            start.setdefault(name, {}).update({k: v for k, v in values.items() if k in fields})
        self.start = {j: {k: (v if v > 0 else _START_IF_ZERO.get(k, _FLOOR[k] * 10)) for k, v in vals.items()}
                      for j, vals in start.items()}
        self.fields = fields
        self.params = [(j, k) for j in self.joints for k in fields]
        self.fixed_latency: float | None = None  # set: x holds the physical parameters only

    @property
    def keys(self) -> list[tuple[str, str]]:
        return self.params + ([] if self.fixed_latency is not None else [("latency", "s")])

    def split(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(log parameters, latency s) of x."""
        if self.fixed_latency is not None:
            return x, self.fixed_latency
        return x[:-1], float(x[-1] * self.LATENCY_UNIT)

    def x0(self, latency: float) -> np.ndarray:
        logs = [np.log(self.start[j][k]) for j, k in self.params]
        return np.array(logs + ([] if self.fixed_latency is not None else [latency / self.LATENCY_UNIT]))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        f = self.config.bound_factor
        lo = [np.log(max(self.start[j][k] / f, _FLOOR[k])) for j, k in self.params]
        hi = [np.log(self.start[j][k] * f) for j, k in self.params]
        if self.fixed_latency is None:
            lo, hi = lo + [0.0], hi + [self.config.latency_max_s / self.LATENCY_UNIT]
        return np.array(lo), np.array(hi)

    def values_of(self, x: np.ndarray) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {j: {} for j in self.joints}
        for (j, k), value in zip(self.params, np.exp(self.split(x)[0]), strict=True):
            out[j][k] = float(value)
        return out

    def latency_of(self, x: np.ndarray) -> float:
        return self.split(x)[1]

    def predict(self, models: list, latencies: list[float]) -> np.ndarray:
        """(B, R) stacked errors of the fitted joints for a batch of (model, latency)."""
        parts = [self.model.simulate(models, lg, latencies)[:, :, self.columns]
                 - lg.measured[None, :, self.columns] for lg in self.logs]
        return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)

    def residual(self, x: np.ndarray) -> np.ndarray:
        return self.predict([self.model.with_values(self.values_of(x))], [self.latency_of(x)])[0]

    def grouped_jacobian(self, x: np.ndarray) -> np.ndarray:
        """Forward differences, one simulation per field for all joints at once (plus latency).

        A joint's parameters are taken to move only that joint's error (the coupling between
        joints through the arm's inertia is dropped from the Jacobian, not from the residual,
        so the optimum is unchanged; only the steps are approximate). Cost: len(fields) + 2
        replays per Jacobian instead of joints * fields + 2.
        """
        n_joints, n_fields = len(self.joints), len(self.fields)
        n_params = len(self.params)
        trials = [x.copy()]
        for f in range(n_fields):
            step = x.copy()
            step[f:n_params:n_fields] += self.STEP
            trials.append(step)
        if self.fixed_latency is None:
            step = x.copy()
            step[-1] += self.STEP
            trials.append(step)
        errors = self.predict([self.model.with_values(self.values_of(t)) for t in trials],
                              [self.latency_of(t) for t in trials])
        base = errors[0]
        jac = np.zeros((len(base), len(x)))
        rows = np.arange(len(base))
        owner = self._row_owner(len(base))
        for f in range(n_fields):
            diff = (errors[1 + f] - base) / self.STEP
            for j in range(n_joints):
                mask = owner == j
                jac[rows[mask], j * n_fields + f] = diff[mask]
        if self.fixed_latency is None:
            jac[:, -1] = (errors[-1] - base) / self.STEP
        return jac

    def full_jacobian(self, x: np.ndarray) -> np.ndarray:
        """Forward differences for every parameter (for the standard errors at the optimum)."""
        trials = [x.copy()]
        for i in range(len(x)):
            step = x.copy()
            step[i] += self.STEP
            trials.append(step)
        errors = self.predict([self.model.with_values(self.values_of(t)) for t in trials],
                              [self.latency_of(t) for t in trials])
        return ((errors[1:] - errors[0]) / self.STEP).T

    def _row_owner(self, n_rows: int) -> np.ndarray:
        """Which fitted joint each residual row belongs to (rows are (time, joint) raveled)."""
        return np.tile(np.arange(len(self.joints)), n_rows // len(self.joints))


def tracking_error(model: ReplayModel, logs: Sequence[LogTrajectory], dynamics: TwinDynamics | None,
                   joints: Sequence[str] | None = None) -> float:
    """Open-loop RMS position error (rad) of a twin (None: the model as built, no latency)
    replaying `logs`, over `joints` (default: every joint but grippers)."""
    columns = [model.joints.index(j) for j in _fit_joints(model, list(joints) if joints else None)]
    m = copy.copy(model.model)
    latency = 0.0
    if dynamics is not None:
        apply_dynamics(m, model.layout, dynamics)
        latency = dynamics.command_latency_s or 0.0
    errors = [(model.simulate([m], lg, [latency])[0] - lg.measured)[:, columns] for lg in logs]
    return _rms(np.concatenate([e.ravel() for e in errors]))


def _fit_joints(model: ReplayModel, joints: list[str] | None) -> list[str]:
    if not joints:
        return [j for j in model.joints if not j.endswith(".gripper")]
    out = []
    for joint in joints:
        hits = [n for n in model.joints if n == joint or n.split(".", 1)[1] == joint]
        if len(hits) != 1:
            raise ConfigError(f"Joint '{joint}' {'is ambiguous' if hits else 'is not in the twin'}; "
                              f"joints: {', '.join(model.joints)} (use arm.joint).")
        out.append(hits[0])
    return list(dict.fromkeys(out))


def _search_latency(model: ReplayModel, m: mujoco.MjModel, logs: Sequence[LogTrajectory],
                    columns: list[int], high: float, low: float = 0.0,
                    coarse: bool = True) -> tuple[float, list[tuple[float, float]]]:
    """Best latency on a grid: every 4th physics step over [low, high], then every step near the
    best (the error is piecewise constant between physics steps)."""
    def errors(candidates: np.ndarray) -> np.ndarray:
        total = np.zeros(len(candidates))
        count = 0
        for lg in logs:
            pred = model.simulate([m], lg, list(candidates))[:, :, columns]
            total += np.sum((pred - lg.measured[None, :, columns]) ** 2, axis=(1, 2))
            count += pred.shape[1] * pred.shape[2]
        return np.sqrt(total / count)

    dt = model.dt
    first, last = int(np.ceil(low / dt - 1e-9)), int(np.floor(high / dt + 1e-9))
    stride = 4 if coarse else 1
    grid = np.arange(first, last + 1, stride) * dt
    rms = errors(grid)
    curve = list(zip(grid.tolist(), rms.tolist(), strict=True))
    best = float(grid[int(np.argmin(rms))])
    if stride > 1:
        fine = np.arange(max(first, round(best / dt) - stride + 1), round(best / dt) + stride) * dt
        fine_rms = errors(fine)
        curve += list(zip(fine.tolist(), fine_rms.tolist(), strict=True))
        best = float(fine[int(np.argmin(fine_rms))])
    return best, sorted(curve)


def _relative_std(jac: np.ndarray, residual: np.ndarray, keys: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """1-sigma relative error of each parameter: the log-parameter's standard error, from the
    Gauss-Newton covariance s^2 (J^T J)^-1 with s^2 the residual variance."""
    dof = max(1, len(residual) - len(keys))
    s2 = float(residual @ residual) / dof
    jtj = jac.T @ jac
    try:
        cov = np.linalg.pinv(jtj) * s2
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:  # pragma: no cover - pinv does not raise on finite input
        std = np.full(len(keys), np.inf)
    out: dict[str, dict[str, float]] = {}
    for (j, k), value in zip(keys, std, strict=True):
        if j == "latency":  # not a log parameter: its standard error in seconds
            out[j] = {k: float(value * _Problem.LATENCY_UNIT)}
            continue
        out.setdefault(j, {})[k] = float(np.expm1(value)) if np.isfinite(value) else float("inf")
    return out


def _rms(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean(values ** 2))) if values.size else 0.0
