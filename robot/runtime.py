"""The fixed-rate control loop shared by teleop, recording and rollout.

It sleeps to absolute deadlines (so small delays do not accumulate into drift), never tries to
"catch up" after an overrun (a burst of late commands is worse for an arm than a skipped tick),
and measures itself: achieved rate, start-time jitter against the schedule, and overruns.
With `realtime=False` it runs as fast as possible, for simulated data generation and evaluation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tick:
    index: int
    t_scheduled: float  # when this tick should have started (monotonic seconds)
    t_start: float  # when it did start


@dataclass(frozen=True)
class LoopStats:
    ticks: int
    duration_s: float
    target_hz: float
    achieved_hz: float
    jitter_p50_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    overruns: int  # ticks whose work ran past the next deadline
    skipped_ticks: int  # deadlines dropped because of overruns
    step_p50_ms: float
    step_p99_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class RateLoop:
    """Call `step(tick)` at `hz` until it returns False, `max_ticks` or `duration_s`, or `stop()`."""

    def __init__(
        self,
        hz: float,
        realtime: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not hz > 0:
            raise ValueError(f"control rate must be positive, got {hz}")
        self.hz = float(hz)
        self.period = 1.0 / self.hz
        self.realtime = realtime
        self._clock = clock
        self._sleep = sleep
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the loop to finish after the current tick (thread-safe)."""
        self._stop.set()

    def run(
        self,
        step: Callable[[Tick], bool | None],
        max_ticks: int | None = None,
        duration_s: float | None = None,
    ) -> LoopStats:
        self._stop.clear()
        jitter: list[float] = []
        step_times: list[float] = []
        overruns = 0
        skipped = 0
        t0 = self._clock()
        next_deadline = t0
        index = 0
        while not self._stop.is_set():
            if max_ticks is not None and index >= max_ticks:
                break
            if duration_s is not None and next_deadline - t0 >= duration_s:
                break
            if self.realtime:
                delay = next_deadline - self._clock()
                if delay > 0:
                    self._sleep(delay)
            t_start = self._clock()
            if self.realtime:
                jitter.append(max(0.0, t_start - next_deadline))
            keep_going = step(Tick(index, next_deadline, t_start))
            t_end = self._clock()
            step_times.append(t_end - t_start)
            index += 1
            if keep_going is False:
                break
            next_deadline += self.period
            if self.realtime and t_end > next_deadline:
                overruns += 1
                missed = int((t_end - next_deadline) // self.period)
                skipped += missed
                next_deadline += missed * self.period
                if next_deadline < t_end:
                    next_deadline = t_end  # start right away; do not burst to catch up
            if not self.realtime:
                next_deadline = t_end
        duration = self._clock() - t0
        return _stats(index, duration, self.hz, jitter, step_times, overruns, skipped)


def _stats(ticks, duration, hz, jitter, step_times, overruns, skipped) -> LoopStats:
    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q) * 1e3) if values else 0.0

    return LoopStats(
        ticks=ticks,
        duration_s=duration,
        target_hz=hz,
        achieved_hz=ticks / duration if duration > 0 else 0.0,
        jitter_p50_ms=pct(jitter, 50),
        jitter_p99_ms=pct(jitter, 99),
        jitter_max_ms=max(jitter) * 1e3 if jitter else 0.0,
        overruns=overruns,
        skipped_ticks=skipped,
        step_p50_ms=pct(step_times, 50),
        step_p99_ms=pct(step_times, 99),
    )
