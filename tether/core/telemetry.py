"""Live telemetry from a control loop, without ever slowing it down.

The recorder, `tether teleop` and the rollout call a `Telemetry` at each tick (`tick`), when a
policy's chunk arrives (`chunk`) and on discrete happenings (`event`). Every call is
non-blocking: `LiveTelemetry` only takes references and a few counters on the loop's thread and
puts one item in a bounded queue; a worker thread turns items into whatever the sink does
(tether.app.live_view streams them to a rerun viewer). When the sink falls behind:

- camera frames go first: a tick carries frames at most `max_image_hz` per second, and none
  while the queue is more than half full (the viewer sees fewer frames, never stale ones);
- when the queue is full the whole item is dropped and counted (`dropped`), the loop never waits.

This module is core (no numpy-heavy work, no rerun): the loops depend on the `Telemetry`
protocol only, and the app layer passes a real one in (`NullTelemetry` is the default).
Objects handed to `tick` (an observation, its frames) are read later on the worker thread, so
the loop must not mutate them afterwards; every tether loop builds a new observation per tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class Telemetry(Protocol):
    """What a control loop tells a live view; every call returns at once."""

    def tick(self, tick: Any, observation: Any, target: Any, sent: Any, robot: Any = None) -> None:
        """One control tick: the loop's `Tick`, the observation read, the target asked for
        (None: a hold), the command that reached the arms; `robot` for safety counters."""

    def chunk(self, step: int, actions: Any) -> None:
        """A policy's whole action chunk, (n, A), whose row 0 is meant for `step`."""

    def event(self, kind: str, message: str) -> None:
        """Something the operator should see on the timeline (episode start/end, e-stop)."""

    def close(self) -> None:
        """Flush what is queued and release the sink."""


class NullTelemetry:
    """The default: tells nobody, costs nothing."""

    def tick(self, tick: Any, observation: Any, target: Any, sent: Any, robot: Any = None) -> None:
        pass

    def chunk(self, step: int, actions: Any) -> None:
        pass

    def event(self, kind: str, message: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class TickItem:
    """One tick as the worker sees it: references plus what must be read on the loop thread."""

    seq: int  # ticks seen by this telemetry (across episodes): the viewer's step axis
    index: int  # the loop's own tick index (restarts every episode)
    t_scheduled: float  # monotonic seconds
    t_start: float
    t_logged: float  # when the loop handed the tick over (t_logged - t_start: the step so far)
    observation: Any
    target: Any
    sent: Any
    with_frames: bool  # False: frames were skipped (rate limit, or the sink is behind)
    safety: Mapping[str, int] = field(default_factory=dict)  # cumulative counts by reason
    estop: bool = False
    queued: int = 0  # queue length when it was put (how far behind the sink is)


@dataclass(frozen=True)
class ChunkItem:
    seq: int  # the tick sequence number it arrived at
    step: int
    actions: Any
    t_logged: float


@dataclass(frozen=True)
class EventItem:
    seq: int
    kind: str
    message: str
    t_logged: float


class TelemetrySink(Protocol):
    """Where `LiveTelemetry`'s worker sends items (on its own thread, in order)."""

    def handle(self, item: TickItem | ChunkItem | EventItem, stats: Mapping[str, int]) -> None: ...

    def close(self) -> None: ...


class LiveTelemetry:
    """A `Telemetry` that hands every call to `sink` on a worker thread through a bounded queue.

    max_queue: items waiting at most; beyond it new items are dropped (counted).
    max_image_hz: frames per second per tick stream forwarded at most (0: never frames).
    """

    def __init__(self, sink: TelemetrySink, max_queue: int = 64, max_image_hz: float = 10.0,
                 clock=time.monotonic) -> None:
        self.sink = sink
        self.max_queue = int(max_queue)
        self.image_period = 1.0 / max_image_hz if max_image_hz > 0 else float("inf")
        self._clock = clock
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._seq = 0
        self._next_frames: float | None = None  # when the next tick may carry frames
        self.counts = {"ticks": 0, "dropped": 0, "frames_skipped": 0, "sink_errors": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the loop's side
    def tick(self, tick: Any, observation: Any, target: Any, sent: Any, robot: Any = None) -> None:
        now = self._clock()
        self._seq += 1
        self.counts["ticks"] += 1
        queued = self._queue.qsize()
        with_frames = queued < self.max_queue // 2 and self._frames_due(now)
        if not with_frames:
            self.counts["frames_skipped"] += 1
        safety: Mapping[str, int] = {}
        estop = False
        if robot is not None:  # counters mutate on this thread: read them here, not later
            safety = robot.safety_counts()
            estop = any(arm.filter.estopped for arm in robot.arms.values())
        self._put(TickItem(self._seq, int(tick.index), float(tick.t_scheduled),
                           float(tick.t_start), now, observation, target, sent, with_frames,
                           safety, estop, queued))

    def _frames_due(self, now: float) -> bool:
        """On a fixed grid of image periods (10% early is on time, so a 30 Hz loop gives
        10 Hz frames, not 7.5); after a gap the grid restarts rather than bursting."""
        period = self.image_period
        if period == float("inf"):
            return False
        if self._next_frames is not None and now < self._next_frames - 0.1 * period:
            return False
        if self._next_frames is None:
            self._next_frames = now + period
        else:
            self._next_frames = max(self._next_frames + period, now + 0.5 * period)
        return True

    def chunk(self, step: int, actions: Any) -> None:
        self._put(ChunkItem(self._seq, int(step), actions, self._clock()))

    def event(self, kind: str, message: str) -> None:
        self._put(EventItem(self._seq, kind, message, self._clock()))

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the worker finish what is queued (at most `timeout_s`), then close the sink."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("telemetry: the viewer did not keep up; dropping what is still queued")
        self._thread.join(timeout_s)
        try:
            self.sink.close()
        except Exception as exc:  # the viewer went away: nothing the robot needs to know
            log.warning("telemetry: closing the live view failed: %s", exc)

    def __enter__(self) -> LiveTelemetry:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _put(self, item: TickItem | ChunkItem | EventItem) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.counts["dropped"] += 1

    # ---------------------------------------------------------------- the worker's side
    def _run(self) -> None:
        last_warning = -float("inf")
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.sink.handle(item, self.counts)
            except Exception as exc:  # a broken viewer connection must never reach the loop
                self.counts["sink_errors"] += 1
                if time.monotonic() - last_warning > 5.0:
                    last_warning = time.monotonic()
                    log.warning("telemetry: the live view failed to log an item: %s", exc)


__all__ = [
    "ChunkItem",
    "EventItem",
    "LiveTelemetry",
    "NullTelemetry",
    "Telemetry",
    "TelemetrySink",
    "TickItem",
]
