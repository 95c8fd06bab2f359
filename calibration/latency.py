"""Latency calibration: how late each camera's stamps are, and how long an arm takes to obey.

Layer: calibration (a part; imports core and robot). The procedure (UMI measures the same two
figures on its hardware: camera 125-170 ms, robot 100-180 ms):

1. **Excite** (`run_excitation`): every tick, through `Robot.act` and so the safety layer, each
   arm's chosen joints make small smooth moves (raised-cosine steps of `amplitude` rad over
   `move_s`) separated by pauses of random length. Random pauses make the motion pattern
   unique in time, so a cross-correlation has one clear peak; small slow moves stay far from
   every limit. Each tick records what was commanded, the measured joints, and for every new
   camera frame how much the image changed since the previous one (mean absolute difference of
   grey levels: "image motion", a blinking screen region in UMI's words, here the arm itself).
2. **Arm command latency** (`fit_command_latency`): the measured positions are fitted by the
   commanded ones passed through a dead time L and a critically damped servo (two equal time
   constants tau): second-order-plus-dead-time, the textbook model of a position-controlled
   joint. L is the transport latency (bus, controller cycle): what the rollout sends early.
   tau is the servo's own tracking lag (L + 2 tau is the end-to-end delay a cross-correlation
   of positions would show). The fit compares velocities, so a static offset (gravity sag)
   does not matter; a grid over L and tau is refined by a parabola through the best L.
3. **Camera latency** (`estimate_delay`): image motion against joint speed; the lag of the
   normalized cross-correlation's peak (parabola-refined on a 1 ms grid) is how much later a
   frame is stamped than the motion it shows, measured against the joint states' stamps.

Every estimate comes with residuals: the correlation peak (1 = the image changes exactly with
the joint speed) or the normalized fit residual (0 = the model explains the motion), and the
spread between the estimates from the first and the second half of the run (a good run agrees
with itself within a few milliseconds). docs/calibration.md says what good values look like.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.interfaces import Robot
from tether.robot.runtime import RateLoop, Tick

log = logging.getLogger(__name__)

__all__ = [
    "ArmLatency",
    "CameraLatency",
    "DelayEstimate",
    "ExcitationLog",
    "LatencyConfig",
    "bump_trajectory",
    "estimate_camera_latency",
    "estimate_delay",
    "fit_command_latency",
    "image_motion",
    "run_excitation",
]

GRID_S = 0.001  # resampling grid of every estimate: 1 ms


@dataclass
class LatencyConfig:
    """The excitation: which joints, how far, how fast, how long.

    joints: joint names to move (default: the first two joints of every arm, which swing the
        whole arm through a fixed camera's view and move a wrist camera).
    amplitude: largest excursion from the start pose, rad (kept inside the joint limits).
    move_s: duration of one smooth move; pause_s: (min, max) rest between moves, random.
    hold_s: rest before the first move (so the start is not part of a correlation edge).
    max_lag_s: the largest latency looked for (cameras and arms).
    """

    duration_s: float = 20.0
    amplitude: float = 0.1
    move_s: float = 0.5
    pause_s: tuple[float, float] = (0.15, 0.7)
    hold_s: float = 0.5
    joints: list[str] | None = None
    max_lag_s: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.duration_s > 2 * self.move_s:
            raise ConfigError(f"latency duration_s {self.duration_s} must exceed two moves ({2 * self.move_s} s).")
        if not 0 < self.amplitude <= 0.5:
            raise ConfigError(f"latency amplitude {self.amplitude} rad must be in (0, 0.5]: small moves are safe moves.")
        if not self.move_s > 0 or not 0 <= self.pause_s[0] <= self.pause_s[1]:
            raise ConfigError("latency move_s must be positive and pause_s a (min, max) pair with min <= max.")
        if not self.max_lag_s > 0:
            raise ConfigError("latency max_lag_s must be positive.")


@dataclass
class ExcitationLog:
    """What one excitation run saw, every time on the robot's clock (`Robot.now()`)."""

    fps: float
    t_command: np.ndarray  # (T,) when each command was sent
    commanded: np.ndarray  # (T, A) what reached the arms (after the safety layer)
    t_joints: dict[str, np.ndarray]  # arm -> (T,) measurement stamps
    joints: dict[str, np.ndarray]  # arm -> (T, dof) measured positions
    excited: dict[str, list[int]]  # arm -> excited joint indices within the arm
    arm_slices: dict[str, slice]  # arm -> its columns of `commanded`
    t_motion: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (F,) stamps
    motion: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (F,) image motion
    safety: dict[str, int] = field(default_factory=dict)  # interventions during the run
    joint_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # arm -> its joints


@dataclass(frozen=True)
class DelayEstimate:
    delay_s: float
    peak: float  # normalized cross-correlation at the peak (1 = identical shapes)
    spread_s: float  # |first half - second half| estimate (nan when a half is too short)


@dataclass(frozen=True)
class CameraLatency:
    camera: str
    latency_s: float
    peak: float
    spread_s: float
    frames: int


@dataclass(frozen=True)
class ArmLatency:
    arm: str
    latency_s: float  # dead time L: send commands this much early
    time_constant_s: float  # tau of the critically damped servo model
    normalized_rms: float  # velocity residual / velocity RMS (0 = perfect model)
    spread_s: float
    joints: list[str]

    @property
    def tracking_lag_s(self) -> float:
        """End-to-end delay at low frequency (what a cross-correlation of positions shows)."""
        return self.latency_s + 2.0 * self.time_constant_s


# --------------------------------------------------------------------------------------------
# Excitation
# --------------------------------------------------------------------------------------------


def bump_trajectory(n_ticks: int, fps: float, n_joints: int, amplitude: float, move_s: float,
                    pause_s: tuple[float, float], hold_s: float, rng: np.random.Generator) -> np.ndarray:
    """(n_ticks, n_joints) offsets: smooth moves between random levels in [-amplitude, amplitude]
    with random pauses; every joint moves at the same moments (so their motions add up in an
    image) but to its own levels, and the trajectory ends back at zero."""
    t = np.arange(n_ticks) / fps
    out = np.zeros((n_ticks, n_joints))
    level = np.zeros(n_joints)
    t_start = hold_s
    end = n_ticks / fps - move_s - hold_s
    while t_start < end:
        remaining = end - t_start
        if remaining < move_s + pause_s[1] + move_s:  # room for one more move: go home
            new = np.zeros(n_joints)
        else:
            new = rng.uniform(-amplitude, amplitude, n_joints)
            flip = np.abs(new - level) < 0.5 * amplitude  # every move is large enough to see
            new[flip] = np.where(level[flip] > 0, -1, 1) * rng.uniform(0.5, 1.0, flip.sum()) * amplitude
        phase = np.clip((t - t_start) / move_s, 0.0, 1.0)
        shape = 0.5 - 0.5 * np.cos(np.pi * phase)  # raised cosine: zero speed at both ends
        active = t >= t_start
        out[active] = level + (new - level) * shape[active, None]
        level = new
        if not level.any():
            break
        t_start += move_s + rng.uniform(*pause_s)
    return out


def run_excitation(robot: Robot, config: LatencyConfig, cameras: list[str] | None = None,
                   paced: bool | None = None,
                   on_progress: Callable[[float], None] | None = None) -> ExcitationLog:
    """Move the arms through `bump_trajectory` (every command through the safety layer) and
    log commands, joint states and image motion. `paced`: follow the wall clock (default: unless
    the robot's time is simulated and not in realtime mode)."""
    if paced is None:
        paced = not robot.simulated_time or bool(getattr(robot, "realtime", False))
    if not robot.is_connected:
        robot.connect()
    cameras = list(robot.cameras) if cameras is None else cameras
    unknown = sorted(set(cameras) - set(robot.cameras))
    if unknown:
        raise ConfigError(f"Robot '{robot.name}' has no camera {unknown}; its cameras: "
                          f"{', '.join(robot.cameras) or 'none'}.")
    excited, slices = _excited_joints(robot, config.joints)
    first = robot.observe()
    centre = first.state.astype(np.float64)
    fps = float(robot.fps)
    n_ticks = int(round(config.duration_s * fps))
    columns = [slices[a].start + j for a, js in excited.items() for j in js]
    lower, upper = robot.lower[columns], robot.upper[columns]
    amp = min(config.amplitude, *(0.45 * (upper - lower)))
    centre[columns] = np.clip(centre[columns], lower + amp, upper - amp)
    rng = np.random.default_rng(config.seed)
    plan = np.repeat(centre[None], n_ticks, axis=0)
    plan[:, columns] += bump_trajectory(n_ticks, fps, len(columns), amp, config.move_s,
                                        config.pause_s, config.hold_s, rng)
    safety_before = dict(robot.safety_counts())
    t_cmd, sent_rows = [], []
    t_joints: dict[str, list[float]] = {a: [] for a in robot.arms}
    joints: dict[str, list[np.ndarray]] = {a: [] for a in robot.arms}
    motion = {c: _MotionMeter() for c in cameras}

    def step(tick: Tick) -> bool:
        k = tick.index
        now = robot.now()
        t_cmd.append(now)
        sent_rows.append(np.asarray(robot.act(plan[k], t_target=now), dtype=np.float64))
        obs = robot.observe()
        for name, js in obs.joints.items():
            t_joints[name].append(float(js.t_host))
            joints[name].append(np.asarray(js.position, dtype=np.float64))
        for name in cameras:
            motion[name].add(obs.frames[name])
        if on_progress is not None and k % max(1, int(fps)) == 0:
            on_progress(k / n_ticks)
        return k + 1 < n_ticks

    RateLoop(fps, realtime=paced).run(step, max_ticks=n_ticks)
    after = robot.safety_counts()
    safety = {k: v - safety_before.get(k, 0) for k, v in after.items() if v - safety_before.get(k, 0)}
    if safety:
        log.warning("the safety layer intervened during the latency excitation: %s", safety)
    return ExcitationLog(
        fps=fps, t_command=np.asarray(t_cmd), commanded=np.asarray(sent_rows),
        t_joints={a: np.asarray(v) for a, v in t_joints.items()},
        joints={a: np.asarray(v) for a, v in joints.items()}, excited=excited, arm_slices=slices,
        t_motion={c: m.times() for c, m in motion.items()},
        motion={c: m.values() for c, m in motion.items()}, safety=safety,
        joint_names={a: tuple(arm.spec.joint_names) for a, arm in robot.raw_arms.items()},
    )


def _excited_joints(robot: Robot, names: list[str] | None) -> tuple[dict[str, list[int]], dict[str, slice]]:
    slices, offset = {}, 0
    for arm_name, arm in robot.raw_arms.items():
        slices[arm_name] = slice(offset, offset + arm.spec.dof)
        offset += arm.spec.dof
    excited: dict[str, list[int]] = {}
    if names is None:
        for arm_name, arm in robot.raw_arms.items():
            movable = [i for i in range(arm.spec.dof) if i != arm.spec.gripper_index]
            excited[arm_name] = movable[:2]
        return excited, slices
    found = set()
    for arm_name, arm in robot.raw_arms.items():
        for i, joint in enumerate(arm.spec.joint_names):
            if joint in names or f"{arm_name}.{joint}" in names:
                excited.setdefault(arm_name, []).append(i)
                found.add(joint)
                found.add(f"{arm_name}.{joint}")
    missing = [n for n in names if n not in found]
    if missing:
        known = [f"{a}.{j}" for a, arm in robot.raw_arms.items() for j in arm.spec.joint_names]
        raise ConfigError(f"Unknown joints {missing} to excite; known: {', '.join(known)}.")
    return excited, slices


class _MotionMeter:
    """Image motion per new frame: mean |grey difference| to the previous frame, stamped at the
    midpoint of the two frames' `t_host` (the motion happened between the two exposures)."""

    def __init__(self) -> None:
        self._last: tuple[int, float, np.ndarray] | None = None
        self._t: list[float] = []
        self._v: list[float] = []

    def add(self, frame) -> None:
        if self._last is not None and frame.index == self._last[0]:
            return
        grey = image_grey(frame.image)
        if self._last is not None and frame.t_host > self._last[1]:
            self._t.append(0.5 * (frame.t_host + self._last[1]))
            self._v.append(image_motion(self._last[2], grey) / (frame.t_host - self._last[1]))
        self._last = (frame.index, float(frame.t_host), grey)

    def times(self) -> np.ndarray:
        return np.asarray(self._t)

    def values(self) -> np.ndarray:
        return np.asarray(self._v)


def image_grey(image: np.ndarray) -> np.ndarray:
    """Grey levels at half resolution, float32 (enough for motion, 4x less work)."""
    small = np.asarray(image)[::2, ::2]
    return small.astype(np.float32).mean(axis=2) if small.ndim == 3 else small.astype(np.float32)


def image_motion(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute grey-level difference between two frames (0 for a still scene)."""
    return float(np.abs(current - previous).mean())


# --------------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------------


def estimate_delay(t_ref: np.ndarray, ref: np.ndarray, t_sig: np.ndarray, sig: np.ndarray,
                   max_lag_s: float, min_lag_s: float | None = None) -> DelayEstimate:
    """How much later `sig` shows what `ref` shows: sig(t) ~ ref(t - delay).

    Both series are resampled on a 1 ms grid over their common span, centred, and
    cross-correlated (normalized) for delays in [min_lag_s, max_lag_s] (default
    [-max_lag_s, max_lag_s]); the peak is refined by a parabola through it and its neighbours.
    """
    min_lag_s = -max_lag_s if min_lag_s is None else min_lag_s
    delay, peak = _xcorr_delay(t_ref, ref, t_sig, sig, min_lag_s, max_lag_s)
    halves = []
    mid = 0.5 * (max(t_ref[0], t_sig[0]) + min(t_ref[-1], t_sig[-1]))
    for keep_ref, keep_sig in (((t_ref < mid), (t_sig < mid)), ((t_ref >= mid), (t_sig >= mid))):
        try:
            halves.append(_xcorr_delay(t_ref[keep_ref], ref[keep_ref], t_sig[keep_sig], sig[keep_sig],
                                       min_lag_s, max_lag_s)[0])
        except ConfigError:
            halves.append(float("nan"))
    return DelayEstimate(delay, peak, abs(halves[0] - halves[1]))


def _xcorr_delay(t_ref, ref, t_sig, sig, min_lag_s, max_lag_s) -> tuple[float, float]:
    t0 = max(t_ref[0], t_sig[0]) if len(t_ref) and len(t_sig) else 0.0
    t1 = min(t_ref[-1], t_sig[-1]) if len(t_ref) and len(t_sig) else 0.0
    if len(t_ref) < 8 or len(t_sig) < 8 or t1 - t0 < 4 * max(abs(min_lag_s), max_lag_s):
        raise ConfigError("Too little overlapping data to estimate a latency; run the excitation longer "
                          "(--duration) or check that the streams were recorded.")
    grid = np.arange(t0, t1, GRID_S)
    a = np.interp(grid, t_ref, ref)
    b = np.interp(grid, t_sig, sig)
    a = a - a.mean()
    b = b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if norm == 0:
        raise ConfigError("One of the signals never changes (no motion seen); check that the arm moved "
                          "and the camera sees it.")
    n = len(grid)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    full = np.fft.irfft(np.conj(np.fft.rfft(a, size)) * np.fft.rfft(b, size), size)
    lags = np.arange(int(np.floor(min_lag_s / GRID_S)), int(np.ceil(max_lag_s / GRID_S)) + 1)
    corr = full[lags % size] / norm  # corr[k] = sum a(t) b(t + lag_k)
    i = int(np.argmax(corr))
    frac = 0.0
    if 0 < i < len(corr) - 1:
        y0, y1, y2 = corr[i - 1], corr[i], corr[i + 1]
        denom = y0 - 2 * y1 + y2
        frac = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    return float((lags[i] + frac) * GRID_S), float(corr[i])


def estimate_camera_latency(log_: ExcitationLog, camera: str, max_lag_s: float = 0.4) -> CameraLatency:
    """Camera stamp latency: image motion against the excited joints' summed speed."""
    t_m, m = log_.t_motion.get(camera), log_.motion.get(camera)
    if t_m is None or len(t_m) < 8:
        raise ConfigError(f"Camera '{camera}' delivered too few new frames during the excitation "
                          "to measure its latency; check that it streams.")
    speeds = []
    t_ref = None
    for arm, idx in log_.excited.items():
        t = log_.t_joints[arm]
        q = log_.joints[arm][:, idx]
        t_mid = 0.5 * (t[1:] + t[:-1])
        dt = np.maximum(np.diff(t), 1e-9)
        v = np.abs(np.diff(q, axis=0) / dt[:, None]).sum(axis=1)
        if t_ref is None:
            t_ref = t_mid
            speeds.append(v)
        else:
            speeds.append(np.interp(t_ref, t_mid, v))
    assert t_ref is not None
    est = estimate_delay(t_ref, np.sum(speeds, axis=0), t_m, m, max_lag_s, min_lag_s=-0.1)
    return CameraLatency(camera, est.delay_s, est.peak, est.spread_s, int(len(t_m)))


def fit_command_latency(log_: ExcitationLog, arm: str, max_lag_s: float = 0.4,
                        max_tau_s: float = 0.15) -> ArmLatency:
    """Dead time L and servo time constant tau of one arm (see the module doc)."""
    idx = log_.excited.get(arm)
    if not idx:
        raise ConfigError(f"Arm '{arm}' was not excited; pick some of its joints to move.")
    cols = [log_.arm_slices[arm].start + j for j in idx]
    t_c, cmd = log_.t_command, log_.commanded[:, cols]
    t_q, q = log_.t_joints[arm], log_.joints[arm][:, idx]
    L_all, sse_all, tau_best, rms = _sopdt_grid(t_c, cmd, t_q, q, max_lag_s, max_tau_s)
    latency = _refine(L_all, sse_all)
    mid = 0.5 * (t_q[0] + t_q[-1])
    halves = []
    for keep in (t_q < mid, t_q >= mid):
        try:
            L_h, sse_h, _, _ = _sopdt_grid(t_c, cmd, t_q[keep], q[keep], max_lag_s, max_tau_s)
            halves.append(_refine(L_h, sse_h))
        except ConfigError:
            halves.append(float("nan"))
    names = [str(j) for j in idx] if log_.joint_names.get(arm) is None else [log_.joint_names[arm][j] for j in idx]
    return ArmLatency(arm, latency, float(tau_best), float(rms), abs(halves[0] - halves[1]), names)


def _sopdt_grid(t_c, cmd, t_q, q, max_lag_s, max_tau_s):
    """SSE of velocity residuals over a grid of dead times (min over tau per joint), summed
    over joints; returns (L grid, SSE per L, tau of the best L (mean over joints), normalized RMS)."""
    if len(t_q) < 16:
        raise ConfigError("Too few joint measurements to fit a latency; run the excitation longer.")
    t0 = t_c[0] - max_lag_s
    fine = np.arange(t0, t_q[-1] + GRID_S, GRID_S)
    # the command as the arm sees it: held from each send until the next (zero-order hold)
    hold_idx = np.clip(np.searchsorted(t_c, fine, side="right") - 1, 0, len(t_c) - 1)
    lags = np.arange(0.0, max_lag_s + 0.5 * GRID_S, GRID_S)
    taus = np.concatenate([[0.0], np.geomspace(0.002, max_tau_s, 32)])
    vq = np.diff(q, axis=0)  # measured position change per interval
    sse = np.zeros(len(lags))
    per_joint = []
    total = float((vq ** 2).sum())
    if total == 0:
        raise ConfigError("The arm did not move during the excitation; check torque, the e-stop "
                          "and the safety limits.")
    pos = (t_q[None, :] - lags[:, None] - t0) / GRID_S  # sample times shifted by every L

    def sse_for(staircase: np.ndarray, j: int, grid: np.ndarray) -> np.ndarray:
        out = np.empty((len(grid), len(lags)))
        for ti, tau in enumerate(grid):
            pred = _lerp(_critically_damped(staircase, tau, GRID_S), pos)
            out[ti] = ((np.diff(pred, axis=1) - vq[:, j][None, :]) ** 2).sum(axis=1)
        return out

    for j in range(q.shape[1]):
        staircase = cmd[hold_idx, j]
        coarse = sse_for(staircase, j, taus)
        # L and tau trade off along a valley (L + 2 tau is what the data pins down best): a
        # coarse tau grid would push its error into L, so refine tau around the best cell
        ti = int(np.unravel_index(np.argmin(coarse), coarse.shape)[0])
        fine_taus = np.linspace(taus[max(ti - 1, 0)], taus[min(ti + 1, len(taus) - 1)], 25)
        grid = np.concatenate([taus, fine_taus])
        per_tau = np.concatenate([coarse, sse_for(staircase, j, fine_taus)])
        sse += per_tau.min(axis=0)
        per_joint.append((grid, per_tau))
    i = int(np.argmin(sse))
    tau_at_best = float(np.mean([g[int(np.argmin(p[:, i]))] for g, p in per_joint]))
    return lags, sse, tau_at_best, math.sqrt(float(sse[i]) / total)


def _critically_damped(x: np.ndarray, tau: float, dt: float) -> np.ndarray:
    """x through two equal first-order lags (exact for a held input on the grid)."""
    if tau <= 0:
        return x.astype(np.float64)
    a = math.exp(-dt / tau)
    y = x.astype(np.float64)
    for _ in range(2):
        y = _first_order(y, a)
    return y


def _first_order(x: np.ndarray, a: float) -> np.ndarray:
    """y[k] = a y[k-1] + (1 - a) x[k], starting at rest on x[0] (scipy-free lfilter)."""
    # y[k] = (1-a) * sum_i a^(k-i) x[i] + a^(k+1) x[0]; evaluated in blocks to stay stable.
    out = np.empty_like(x)
    y = x[0]
    block = 256
    powers = a ** np.arange(1, block + 1)
    for s in range(0, len(x), block):
        seg = x[s : s + block]
        n = len(seg)
        # convolution of seg with (1-a) a^k, plus the carried state
        kernel = (1 - a) * a ** np.arange(n)
        conv = np.convolve(seg, kernel)[:n]
        out[s : s + n] = conv + y * powers[:n]
        y = out[s + n - 1]
    return out


def _lerp(values: np.ndarray, pos: np.ndarray) -> np.ndarray:
    pos = np.clip(pos, 0, len(values) - 1.000001)
    i = pos.astype(np.int64)
    f = pos - i
    return values[i] * (1 - f) + values[i + 1] * f


def _refine(lags: np.ndarray, sse: np.ndarray) -> float:
    i = int(np.argmin(sse))
    if 0 < i < len(sse) - 1:
        y0, y1, y2 = sse[i - 1], sse[i], sse[i + 1]
        denom = y0 - 2 * y1 + y2
        if denom > 0:
            return float(lags[i] + 0.5 * (y0 - y2) / denom * (lags[1] - lags[0]))
    return float(lags[i])
