"""The safety layer: the only path from a target to an arm.

Teleop devices, policies and the rollout client all produce joint targets; every one of them
passes through a SafetyFilter before `Arm.command`. The filter guarantees, for any input stream
and any timing of the calls:

- every command is finite (NaN/inf targets are rejected and the last safe command is held);
- every command lies inside the joint limits (targets are clipped, with a margin);
- speed: every command differs from the previous one by at most `v_max * dt` per joint, where
  `v_max` is the joint's velocity limit (rad/s; the gripper in its own unit per second) and
  `dt` the time since the previous command on the safety clock, capped at `stale_after_s` so a
  long pause cannot bank a jump. A burst of calls in the same millisecond moves (almost)
  nothing. `max_step`, when set, is an additional cap per call;
- following error: a new command is never more than `max_following_error` from the arm's
  *measured* position, so an arm that is blocked (a hand, a table, a stalled servo) does not
  accumulate a goal that snaps when it is released. When the previous command is already
  further than that from the measurement (the arm was pushed away), the command never moves
  further away from it: the velocity limit wins over the following-error bound, so a bad
  reading can only slow the arm down, never make the command jump;
- a target older than `stale_after_s` is refused (the stale-target watchdog), and `tick()`
  holds the last safe command when no fresh target has arrived for `stale_after_s`;
- after `estop()` every call holds the last safe command until `reset_estop()` (latched).

Time comes from an injected clock: `time.monotonic()` on hardware, the simulated time on the
twin, so a twin that runs faster than real time is limited per *simulated* second. Each
rejection or clamp is counted by reason and logged (rate-limited so a stuck stream does not
flood the log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.interfaces import Arm, ArmSpec, JointState

log = logging.getLogger(__name__)

# Reasons, as counted in SafetyFilter.counts and reported by recorders and evaluators.
NON_FINITE = "non_finite"
WRONG_SHAPE = "wrong_shape"
CLIPPED_TO_LIMITS = "clipped_to_limits"
RATE_LIMITED = "rate_limited"
FOLLOWING_ERROR = "following_error"
BAD_MEASUREMENT = "bad_measurement"
STALE_TARGET = "stale_target"
WATCHDOG_HOLD = "watchdog_hold"
ESTOP_HOLD = "estop_hold"

_CLAMPS = (CLIPPED_TO_LIMITS, RATE_LIMITED, FOLLOWING_ERROR)

# Defaults when neither the config nor the arm's spec gives a limit.
#
# 1.0 rad/s per arm joint: a 0.4 m link then moves its tip at 0.4 m/s, slow enough for a person
# next to the arm to react, and below the no-load speed of every servo class the project
# drives (STS3215 ~4.7 rad/s, XM540 ~3.1 rad/s, UR5e base ~3.1 rad/s), so the servo can always
# follow and the commanded and real speeds agree. Configs for a known arm raise it explicitly.
DEFAULT_MAX_VELOCITY = 1.0
# The gripper is in its own unit (radians, meters or 0..1): by default it may cross its whole
# range in this many seconds.
DEFAULT_GRIPPER_TRAVEL_S = 0.5
# 0.3 rad: larger than the lag of a servo tracking at the default speed plus gravity sag, small
# enough that a blocked joint released later moves at most that far at once.
DEFAULT_MAX_FOLLOWING_ERROR = 0.3
# The gripper has no following-error bound by default: it holds an object by being commanded
# past it (the squeeze), which is exactly a large following error.

Limit = float | list[float] | dict[str, float | list[float]] | None


@dataclass
class SafetyConfig:
    """Limits applied to every arm command.

    max_velocity: joint speed limit, rad/s (the gripper in its own unit per second). A number
        applies to every joint of every arm, a list gives one value per joint, a mapping
        `{arm_name: number or list}` sets arms separately. Unset: the arm spec's
        `max_velocity`, else 1.0 rad/s per joint and the gripper's range in 0.5 s.
    max_following_error: largest distance of a new command from the measured position, rad
        (gripper: own unit); number, list or per-arm mapping like max_velocity. Unset: 0.3 rad
        per joint, no bound on the gripper. `.inf` disables it for a joint.
    max_step: optional extra cap on the change of any joint per call, whatever the elapsed
        time (unset: none; the per-second limit above is the speed limit).
    limit_margin: targets are clipped this far inside the arm's joint limits.
    stale_after_s: a target older than this (or no target for this long) makes the arm hold;
        also the longest time credited to one command by the velocity limit.
    measured_max_age_s: a position read through the SafeArm at most this old (safety clock) is
        used for the following-error bound; an older one is refreshed by reading the arm.
    """

    max_velocity: float | list[float] | dict[str, float | list[float]] | None = None
    max_following_error: float | list[float] | dict[str, float | list[float]] | None = None
    max_step: float | None = None
    limit_margin: float = 0.0
    stale_after_s: float = 0.25
    measured_max_age_s: float = 0.05

    def velocity_for(self, spec: ArmSpec) -> np.ndarray:
        """Per-joint velocity limit of `spec`'s arm: config, else the spec, else the defaults."""
        value = _per_joint(self.max_velocity, spec, "max_velocity")
        if value is None and spec.max_velocity is not None:
            value = np.asarray(spec.max_velocity, dtype=np.float64)
        if value is None:
            value = np.full(spec.dof, DEFAULT_MAX_VELOCITY)
            if spec.gripper_index is not None:
                g = spec.gripper_index
                value[g] = (spec.upper[g] - spec.lower[g]) / DEFAULT_GRIPPER_TRAVEL_S
        if not np.all(np.isfinite(value)) or np.any(value <= 0):
            raise ConfigError(
                f"safety.max_velocity for arm '{spec.name}' must be finite and positive per "
                f"joint, got {value.tolist()}; set a speed in rad/s such as 1.0."
            )
        return value

    def following_error_for(self, spec: ArmSpec) -> np.ndarray:
        """Per-joint following-error bound of `spec`'s arm (inf: unbounded)."""
        value = _per_joint(self.max_following_error, spec, "max_following_error")
        if value is None:
            value = np.full(spec.dof, DEFAULT_MAX_FOLLOWING_ERROR)
            if spec.gripper_index is not None:
                value[spec.gripper_index] = np.inf
        if np.any(np.isnan(value)) or np.any(value <= 0):
            raise ConfigError(
                f"safety.max_following_error for arm '{spec.name}' must be positive per joint "
                f"(.inf for no bound), got {value.tolist()}."
            )
        return value


def _per_joint(value: Limit, spec: ArmSpec, label: str) -> np.ndarray | None:
    """A scalar, per-joint list or per-arm mapping resolved for one arm (None: not set)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return _per_joint(value.get(spec.name), spec, label)
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return np.full(spec.dof, float(array))
    if array.shape != (spec.dof,):
        raise ConfigError(
            f"safety.{label} lists {array.size} values but arm '{spec.name}' has {spec.dof} "
            f"joints ({', '.join(spec.joint_names)}); give one number for all joints, one per "
            f"joint, or a mapping {{{spec.name}: [...]}} per arm."
        )
    return array


@dataclass(frozen=True)
class SafetyDecision:
    command: np.ndarray
    reasons: tuple[str, ...]
    fresh: bool  # True when the command follows a new target; False when holding


class SafetyFilter:
    """Pure, clock-explicit safety logic (no I/O), so it can be property-tested exhaustively.

    The caller passes the time (`t_now`, any clock that only matters through differences) and,
    when it has one, the measured position; the filter keeps the last command and its time.
    """

    def __init__(self, spec: ArmSpec, config: SafetyConfig | None = None) -> None:
        self.spec = spec
        self.config = config or SafetyConfig()
        margin = self.config.limit_margin
        self.lower = spec.lower + margin
        self.upper = spec.upper - margin
        if np.any(self.lower > self.upper):
            raise ValueError(f"limit_margin {margin} leaves no range for arm '{spec.name}'")
        self.max_velocity = self.config.velocity_for(spec)
        self.max_following_error = self.config.following_error_for(spec)
        max_step = self.config.max_step
        self.max_step = float("inf") if max_step is None else float(max_step)
        if not self.max_step > 0:
            raise ValueError("SafetyConfig.max_step must be positive (or unset for no per-call cap)")
        if not self.config.stale_after_s > 0:
            raise ValueError("SafetyConfig.stale_after_s must be positive")
        self.counts: Counter[str] = Counter()
        self._last: np.ndarray | None = None
        self._t_last: float | None = None  # time of the last command (fresh or held)
        self._t_last_fresh: float | None = None
        self._estop_reason: str | None = None
        self._last_log: dict[str, float] = {}

    # --- state ---------------------------------------------------------------------------------
    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._last is None else self._last.copy()

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    def max_delta(self, dt: float) -> np.ndarray:
        """Largest change per joint allowed for a command `dt` seconds after the previous one."""
        dt = min(max(float(dt), 0.0), self.config.stale_after_s)
        return np.minimum(self.max_velocity * dt, self.max_step)

    def seed(self, position: np.ndarray, t_now: float) -> None:
        """Start from the measured position so the first command cannot jump."""
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (self.spec.dof,) or not np.all(np.isfinite(position)):
            raise ValueError(f"cannot seed safety filter of '{self.spec.name}' with {position!r}")
        self._last = position.copy()
        self._t_last = t_now
        self._t_last_fresh = t_now

    def estop(self, reason: str = "operator") -> None:
        if self._estop_reason is None:
            log.warning("E-stop latched on arm '%s': %s", self.spec.name, reason)
        self._estop_reason = reason

    def reset_estop(self) -> None:
        if self._estop_reason is not None:
            log.warning("E-stop reset on arm '%s'", self.spec.name)
        self._estop_reason = None

    # --- decisions -----------------------------------------------------------------------------
    def step(
        self,
        target: np.ndarray | None,
        t_now: float,
        t_target: float | None = None,
        measured: np.ndarray | None = None,
    ) -> SafetyDecision:
        """Turn a target (or None: no new target this tick) into a safe command.

        t_now: now, on the safety clock. t_target: when the target was produced, same clock.
        measured: the arm's measured position, if known (None: no following-error bound).
        """
        if self._last is None or self._t_last is None:
            raise RuntimeError(
                f"SafetyFilter of arm '{self.spec.name}' was never seeded with a measured position"
            )
        dt = t_now - self._t_last
        # A clock that went back (a simulation reset without re-seeding) credits no time.
        self._t_last = t_now
        if self._estop_reason is not None:
            return self._hold(ESTOP_HOLD)
        if target is None:
            stale = self._t_last_fresh is None or t_now - self._t_last_fresh > self.config.stale_after_s
            if stale:
                return self._hold(WATCHDOG_HOLD)
            return SafetyDecision(self._last.copy(), (), fresh=False)
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (self.spec.dof,):
            return self._hold(WRONG_SHAPE, detail=f"shape {target.shape}, expected ({self.spec.dof},)")
        if not np.all(np.isfinite(target)):
            return self._hold(NON_FINITE)
        if t_target is not None and t_now - t_target > self.config.stale_after_s:
            return self._hold(STALE_TARGET, detail=f"{(t_now - t_target) * 1e3:.0f} ms old")
        if measured is not None:
            measured = np.asarray(measured, dtype=np.float64)
            if measured.shape != (self.spec.dof,) or not np.all(np.isfinite(measured)):
                return self._hold(BAD_MEASUREMENT, detail=f"measured {measured!r}")
        last = self._last
        reasons: list[str] = []
        # Each clamp is an interval that contains the previous command, so clipping by them in
        # turn equals clipping by their intersection, and the previous command is always allowed.
        command = np.clip(target, self.lower, self.upper)
        if np.any(command != target):
            reasons.append(CLIPPED_TO_LIMITS)
        if measured is not None:
            err = self.max_following_error
            lo = np.minimum(measured - err, last)
            hi = np.maximum(measured + err, last)
            bounded = np.clip(command, lo, hi)
            if np.any(bounded != command):
                reasons.append(FOLLOWING_ERROR)
            command = bounded
        step = self.max_delta(dt)
        limited = np.clip(command, last - step, last + step)
        if np.any(limited != command):
            reasons.append(RATE_LIMITED)
        command = limited
        # A previous command outside the limits (only possible when seeded out of range) may move
        # back inside, never further out.
        command = np.clip(command, np.minimum(self.lower, last), np.maximum(self.upper, last))
        for reason in reasons:
            self._count(reason)
        self._last = command
        self._t_last_fresh = t_now
        return SafetyDecision(command.copy(), tuple(reasons), fresh=True)

    def hold(self, t_now: float) -> np.ndarray:
        """The last safe command, re-sent now (no staleness check; e-stop or not)."""
        if self._last is None:
            raise RuntimeError(
                f"SafetyFilter of arm '{self.spec.name}' was never seeded with a measured position"
            )
        self._t_last = t_now
        return self._last.copy()

    def _hold(self, reason: str, detail: str = "") -> SafetyDecision:
        self._count(reason, detail)
        assert self._last is not None
        return SafetyDecision(self._last.copy(), (reason,), fresh=False)

    def _count(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e9) >= 1.0:  # at most one line per reason per second
            self._last_log[reason] = now
            # Clamps are normal operation (a fast teleop move); refusals and holds are not.
            level = logging.INFO if reason in _CLAMPS else logging.WARNING
            log.log(
                level,
                "safety[%s]: %s%s (%d so far)",
                self.spec.name,
                reason,
                f" ({detail})" if detail else "",
                self.counts[reason],
            )


class SafeArm(Arm):
    """An Arm wrapper that sends nothing to the device without passing the SafetyFilter.

    `clock` is the safety clock (time.monotonic on hardware, simulated time on the twin).
    Positions read through `read()` are remembered with their clock time and reused for the
    following-error bound while fresh, so a loop that observes every tick costs no extra read.
    """

    def __init__(
        self,
        arm: Arm,
        config: SafetyConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.arm = arm
        self.spec = arm.spec
        self.filter = SafetyFilter(arm.spec, config)
        self.clock = clock
        self._lock = threading.Lock()
        self._measured: tuple[np.ndarray, float] | None = None

    @property
    def is_connected(self) -> bool:
        return self.arm.is_connected

    def connect(self) -> None:
        if self.arm.is_connected and self.filter.last_command is not None:
            return
        self.arm.connect()
        self.seed(self.read().position)

    def seed(self, position: np.ndarray | None = None, t: float | None = None) -> None:
        """Restart the filter from `position` (default: a fresh reading).

        t: when the arm was last known to be commanded there, on this arm's clock (default:
        now). The twin seeds one control period in the past at a reset, since its arm has
        rested at home and the episode's first command takes effect over the coming period.
        """
        if position is None:
            position = self.read().position
        position = np.asarray(position, dtype=np.float64)
        now = self.clock()
        with self._lock:
            self.filter.seed(position, now if t is None else min(float(t), now))
            self._measured = (position.copy(), now)

    def close(self) -> None:
        self.arm.close()

    def read(self) -> JointState:
        state = self.arm.read()
        self._measured = (np.array(state.position, dtype=np.float64), self.clock())
        return state

    def measured_position(self, t_now: float | None = None) -> np.ndarray:
        """The last position read through this SafeArm if fresh, else a new reading."""
        now = self.clock() if t_now is None else t_now
        cached = self._measured
        if cached is not None and 0.0 <= now - cached[1] <= self.filter.config.measured_max_age_s:
            return cached[0]
        return np.array(self.read().position, dtype=np.float64)

    def command(self, target_position: np.ndarray | None, t_target: float | None = None) -> np.ndarray:
        """Filter a target and send the result; returns the command that was sent.

        t_target: when the target was produced, on this arm's clock (`clock()`); a target older
        than `stale_after_s` is refused.
        """
        self._require_connected()
        with self._lock:
            now = self.clock()
            measured = None
            if target_position is not None and not self.filter.estopped:
                measured = self.measured_position(now)
            decision = self.filter.step(target_position, now, t_target, measured)
            self.arm.command(decision.command)
        return decision.command

    def tick(self) -> np.ndarray:
        """Call once per control tick without a new target: holds once targets go stale."""
        return self.command(None)

    def hold(self) -> np.ndarray:
        """Re-send the last safe command regardless of staleness."""
        self._require_connected()
        with self._lock:
            command = self.filter.hold(self.clock())
            self.arm.command(command)
        return command

    def estop(self, reason: str = "operator") -> None:
        self.filter.estop(reason)
        if self.arm.is_connected:
            self.hold()

    def reset_estop(self) -> None:
        self.filter.reset_estop()
