"""Record rollout episodes into an episode store: `tether rollout --record out.zarr`.

Every tick of a rollout (tether.app.rollout, `on_row`) becomes one step with the same arrays a
teleoperated recording has (`state`, `action` = the command that reached the arms, `timestamp`,
`image.<camera>`, per-stream timing), so rollout episodes merge with `tether record` episodes
and train with them. Who was in control goes into the episode's metadata: `intervention_spans`
and `control_spans` (see tether.data.interventions), the handovers, and `source: "rollout"`.

Steps are appended by a background thread (the loop never waits on the disk) to the store's
uncommitted tail; `finish()` commits the episode atomically (or drops it), as the recorder does.
"""

from __future__ import annotations

import datetime as _dt
import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from tether.core.errors import StoreError, TetherError
from tether.core.schema import ACTION, STATE, image_key
from tether.data.layout import timing_key
from tether.data.store import EpisodeStore
from tether.robot.control import ControlRow

log = logging.getLogger(__name__)

__all__ = ["RolloutRecorder", "step_record"]


class RolloutRecorder:
    """Write one rollout episode at a time into `store` (open for appending)."""

    def __init__(self, store: EpisodeStore, realtime: bool, flush_every: int = 16) -> None:
        store.require_writable()
        self.store = store
        self.realtime = bool(realtime)
        self.flush_every = flush_every
        self._writer: _Background | None = None
        self._t_wall = ""

    def begin(self) -> None:
        """Start an episode (its steps go to the uncommitted tail)."""
        self._writer = _Background(self.store.begin_episode(self.flush_every))
        self._t_wall = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

    def on_row(self, row: ControlRow, step: int) -> None:
        """The rollout's per-tick hook: queue this tick's step."""
        assert self._writer is not None, "begin() first"
        t_tick = row.tick.t_start if self.realtime else row.tick.index / self.store.fps
        self._writer.put(step_record(row.reading, row.sent, t_tick))

    def finish(self, result, metadata: Mapping[str, Any] | None = None) -> int | None:
        """Commit the episode with `result`'s (a rollout EpisodeResult) outcome and who was in
        control; an episode without steps is dropped. Returns its index in the store."""
        writer, self._writer = self._writer, None
        assert writer is not None, "begin() first"
        if result.length == 0:
            writer.finish(None)
            return None
        takeover = dict(result.takeover)
        meta = {
            "task": "",
            "operator": "",
            "success": result.success,
            "notes": "",
            "intervention_spans": takeover.pop("intervention_spans", []),
            "control_spans": takeover.pop("control_spans", [[0, result.length, "policy"]]),
            **takeover,
            "source": "rollout",
            "seed": result.seed,
            "fps": self.store.fps,
            "realtime": self.realtime,
            "t_start_utc": self._t_wall,
            "stats": {"loop": result.loop, "safety": result.safety, "stalls": result.stalls},
            **dict(metadata or {}),
        }
        return writer.finish(meta)

    def abort(self) -> None:
        """Drop the episode in progress (an error or Ctrl-C ended the rollout)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.finish(None)


def step_record(observation, sent: np.ndarray, t_tick: float) -> dict[str, np.ndarray]:
    """One store step from an Observation, keyed as the recorder keys a teleoperated one."""
    record: dict[str, np.ndarray] = {
        STATE: observation.state,
        ACTION: np.asarray(sent, dtype=np.float32),
        "timestamp": np.float64(t_tick),
    }
    for name, frame in observation.frames.items():
        key = image_key(name)
        record[key] = np.array(frame.image, dtype=np.uint8, copy=True)
        record[timing_key(key, "index")] = np.int64(frame.index)
    for stream, t in observation.stream_times().items():  # read synchronously: received at capture
        record[timing_key(stream, "t_host")] = np.float64(t)
        record[timing_key(stream, "t_recv")] = np.float64(t)
    for stream, t in observation.device_times().items():
        record[timing_key(stream, "t_device")] = np.float64(np.nan if t is None else t)
    return record


class _Background:
    """Appends steps on a thread; `finish` drains, then commits or discards."""

    def __init__(self, writer) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="rollout-writer", daemon=True)
        self._thread.start()

    def put(self, record: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(record)

    def finish(self, metadata: Mapping[str, Any] | None) -> int | None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None or metadata is None:
            if self.writer.active:
                self.writer.discard()
            if self.error is not None and metadata is not None:
                raise self.error
            return None
        return self.writer.commit(metadata)

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.writer.append(record)
            except (TetherError, OSError) as exc:
                self.error = exc if isinstance(exc, TetherError) else StoreError(str(exc))
                log.error("rollout recorder failed: %s", exc)
