"""The safety layer: the only path from a target to an arm.

Teleop devices, policies and the rollout client all produce joint targets; every one of them
passes through a SafetyFilter before `Arm.command`. The filter guarantees, for any input stream:

- every command is finite (NaN/inf targets are rejected and the last safe command is held);
- every command lies inside the joint limits (targets are clipped, with a margin);
- every command differs from the previous one by at most `max_step` per joint (rate limit);
- a target older than `stale_after_s` is refused (the stale-target watchdog), and `tick()`
  holds the last safe command when no fresh target has arrived for `stale_after_s`;
- after `estop()` every call holds the last safe command until `reset_estop()` (latched).

Each rejection or clamp is counted by reason and logged (rate-limited so a stuck stream does
not flood the log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from tether.robot.interfaces import Arm, ArmSpec, JointState

log = logging.getLogger(__name__)

# Reasons, as counted in SafetyFilter.counts and reported by recorders and evaluators.
NON_FINITE = "non_finite"
WRONG_SHAPE = "wrong_shape"
CLIPPED_TO_LIMITS = "clipped_to_limits"
RATE_LIMITED = "rate_limited"
STALE_TARGET = "stale_target"
WATCHDOG_HOLD = "watchdog_hold"
ESTOP_HOLD = "estop_hold"


@dataclass
class SafetyConfig:
    """Limits applied to every arm command.

    max_step: largest change of any joint between two consecutive commands, in radians (the
        gripper joint uses the same number in its own unit). At 50 Hz, 0.05 rad is 2.5 rad/s.
    limit_margin: targets are clipped this far inside the arm's joint limits.
    stale_after_s: a target older than this (or no target for this long) makes the arm hold.
    """

    max_step: float = 0.05
    limit_margin: float = 0.0
    stale_after_s: float = 0.25


@dataclass(frozen=True)
class SafetyDecision:
    command: np.ndarray
    reasons: tuple[str, ...]
    fresh: bool  # True when the command follows a new target; False when holding


class SafetyFilter:
    """Pure, clock-explicit safety logic (no I/O), so it can be property-tested exhaustively."""

    def __init__(self, spec: ArmSpec, config: SafetyConfig | None = None) -> None:
        self.spec = spec
        self.config = config or SafetyConfig()
        margin = self.config.limit_margin
        self.lower = spec.lower + margin
        self.upper = spec.upper - margin
        if np.any(self.lower > self.upper):
            raise ValueError(f"limit_margin {margin} leaves no range for arm '{spec.name}'")
        self.max_step = float(self.config.max_step)
        if not self.max_step > 0:
            raise ValueError("SafetyConfig.max_step must be positive")
        self.counts: Counter[str] = Counter()
        self._last: np.ndarray | None = None
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

    def seed(self, position: np.ndarray, t_now: float) -> None:
        """Start from the measured position so the first command cannot jump."""
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (self.spec.dof,) or not np.all(np.isfinite(position)):
            raise ValueError(f"cannot seed safety filter of '{self.spec.name}' with {position!r}")
        self._last = position.copy()
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
    def step(self, target: np.ndarray | None, t_now: float, t_target: float | None = None) -> SafetyDecision:
        """Turn a target (or None: no new target this tick) into a safe command."""
        if self._last is None:
            raise RuntimeError(
                f"SafetyFilter of arm '{self.spec.name}' was never seeded with a measured position"
            )
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
        reasons: list[str] = []
        clipped = np.clip(target, self.lower, self.upper)
        if np.any(clipped != target):
            reasons.append(CLIPPED_TO_LIMITS)
        delta = clipped - self._last
        limited = np.clip(delta, -self.max_step, self.max_step)
        if np.any(limited != delta):
            reasons.append(RATE_LIMITED)
        command = self._last + limited
        # A previous command outside the limits (only possible when seeded out of range) may move
        # back inside by at most max_step; never further out.
        command = np.clip(command, np.minimum(self.lower, self._last), np.maximum(self.upper, self._last))
        for reason in reasons:
            self._count(reason)
        self._last = command
        self._t_last_fresh = t_now
        return SafetyDecision(command.copy(), tuple(reasons), fresh=True)

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
            level = logging.INFO if reason in (CLIPPED_TO_LIMITS, RATE_LIMITED) else logging.WARNING
            log.log(
                level,
                "safety[%s]: %s%s (%d so far)",
                self.spec.name,
                reason,
                f" ({detail})" if detail else "",
                self.counts[reason],
            )


class SafeArm(Arm):
    """An Arm wrapper that sends nothing to the device without passing the SafetyFilter."""

    def __init__(self, arm: Arm, config: SafetyConfig | None = None, clock=time.monotonic) -> None:
        self.arm = arm
        self.spec = arm.spec
        self.filter = SafetyFilter(arm.spec, config)
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def is_connected(self) -> bool:
        return self.arm.is_connected

    def connect(self) -> None:
        if self.arm.is_connected and self.filter.last_command is not None:
            return
        self.arm.connect()
        self.filter.seed(self.arm.read().position, self._clock())

    def close(self) -> None:
        self.arm.close()

    def read(self) -> JointState:
        return self.arm.read()

    def command(self, target_position: np.ndarray | None, t_target: float | None = None) -> np.ndarray:
        """Filter a target and send the result; returns the command that was sent."""
        self._require_connected()
        with self._lock:
            decision = self.filter.step(target_position, self._clock(), t_target)
            self.arm.command(decision.command)
        return decision.command

    def tick(self) -> np.ndarray:
        """Call once per control tick without a new target: holds once targets go stale."""
        return self.command(None)

    def hold(self) -> np.ndarray:
        """Re-send the last safe command regardless of staleness."""
        self._require_connected()
        with self._lock:
            command = self.filter.last_command
            assert command is not None
            self.arm.command(command)
        return command

    def estop(self, reason: str = "operator") -> None:
        self.filter.estop(reason)
        if self.arm.is_connected:
            self.hold()

    def reset_estop(self) -> None:
        self.filter.reset_estop()
