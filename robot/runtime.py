"""The fixed-rate control loop shared by teleop, recording and rollout.

The schedule is a fixed grid of periods ("slots") from the loop's start: slot k begins at
t0 + k * period, and the grid never moves. A tick runs in the slot it was scheduled for:
on time when the previous step finished early (the loop sleeps to the slot's start, an
absolute deadline, so small delays never accumulate into drift), or late within its slot when
the previous step overran into it. Every slot that began and ended while a step was still
running (or while the host overslept) is skipped and counted. The loop never tries to "catch up" (a burst of late commands
is worse for an arm than a skipped tick): at most one tick starts in any slot. So executed +
skipped ticks account exactly for the schedule the loop ran through (`ticks + skipped_ticks`
is the number of slots begun by the time the last tick started, `last_start_s`), and a tick's
slot is its position in time (`Tick.slot`), whatever overruns came before.

It measures itself: achieved rate, start-time jitter against the schedule, and overruns.
With `realtime=False` it runs as fast as possible (one slot per tick), for simulated data
generation and evaluation.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tick:
    index: int  # ticks executed before this one
    t_scheduled: float  # when this tick's slot began (monotonic seconds; on the grid)
    t_start: float  # when the tick did start (>= t_scheduled, less than a period later)
    slot: int = -1  # periods since the loop started (== index unless ticks were skipped)

    def __post_init__(self) -> None:
        if self.slot < 0:  # a Tick built by hand (tests, callers) without a slot: no skips
            object.__setattr__(self, "slot", self.index)


@dataclass(frozen=True)
class LoopStats:
    ticks: int
    duration_s: float  # from the first slot's start to the end of the last step
    last_start_s: float  # from the first slot's start to the last tick's start
    target_hz: float
    achieved_hz: float
    jitter_p50_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    overruns: int  # steps whose work ran past the start of the next slot
    # slots no tick ran in (a step overran, or a sleep overslept, through them), up to the last
    # tick's slot
    # (ticks + skipped_ticks == slots_begun(last_start_s, 1 / target_hz))
    skipped_ticks: int
    step_p50_ms: float
    step_p99_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


SLOT_EPS = 1e-6  # periods: float rounding of t0 + k * period must not move a time across a slot


def slots_begun(elapsed_s: float, period_s: float) -> int:
    """How many slots of the schedule have begun `elapsed_s` after its start (slot 0 at 0 s).

    The one formula for "where in the schedule is this time", used by the loop and by checks of
    its statistics (ticks + skipped_ticks == slots_begun(last_start_s, 1 / target_hz)). A time a
    rounding error short of a slot's start counts as in that slot (SLOT_EPS periods).
    """
    return int(math.floor(elapsed_s / period_s + SLOT_EPS)) + 1


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
        """Run ticks; `duration_s` bounds the slots started (slot k starts at k * period)."""
        self._stop.clear()
        jitter: list[float] = []
        step_times: list[float] = []
        overruns = 0
        t0 = self._clock()
        t_end = t_last_start = t0
        slot = 0  # the slot the next tick runs in
        last_slot = -1  # the slot of the last tick run
        index = 0
        while not self._stop.is_set():
            if max_ticks is not None and index >= max_ticks:
                break
            if duration_s is not None and slot * self.period >= duration_s:
                break
            t_scheduled = t0 + slot * self.period
            if self.realtime:
                delay = t_scheduled - self._clock()
                if delay > 0:
                    self._sleep(delay)
            t_start = self._clock()
            if self.realtime:
                # A sleep that overslept past the slot (a loaded host): run in the slot in
                # progress instead, the ones it overslept are skipped like after an overrun.
                slot = max(slot, slots_begun(t_start - t0, self.period) - 1)
                t_scheduled = t0 + slot * self.period
                if duration_s is not None and slot * self.period >= duration_s:
                    break
                jitter.append(max(0.0, t_start - t_scheduled))
            keep_going = step(Tick(index, t_scheduled, t_start, slot))
            last_slot, t_last_start = slot, t_start
            t_end = self._clock()
            step_times.append(t_end - t_start)
            index += 1
            if not self.realtime:
                slot += 1
            else:
                # The next tick runs in the slot in progress when this step ended, or in the
                # next one if this step ended within its own slot; slots in between are skipped.
                in_progress = slots_begun(t_end - t0, self.period) - 1
                if (t_end - t0) / self.period > slot + 1 + SLOT_EPS:
                    overruns += 1
                slot = max(slot + 1, in_progress)
            if keep_going is False:
                break
        # Every slot up to the last tick's ran a tick or was skipped. (Slots the last step
        # overran into are not skipped: no tick was going to run in them.)
        skipped = last_slot + 1 - index
        return _stats(index, t_end - t0, t_last_start - t0, self.hz, jitter, step_times,
                      overruns, skipped)


def _stats(ticks, duration, last_start, hz, jitter, step_times, overruns, skipped) -> LoopStats:
    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q) * 1e3) if values else 0.0

    return LoopStats(
        ticks=ticks,
        duration_s=duration,
        last_start_s=last_start,
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
