"""The recorder: teleop in, synchronized episodes out, without ever waiting on the disk.

    robot + teleop --(fixed-rate loop, RateLoop)--> tick records --(queue)--> writer thread
                                                                              --> EpisodeStore

Each tick samples every stream (see recorder_streams), asks the teleop device for a target,
sends it through the robot's safety layer stamped with the time it was produced (a tick without
a target, or whose device read failed with a DeviceError, calls `robot.tick()`, so the
stale-target watchdog holds the arm once the device has been silent for `stale_after_s`; this
is the shared control step, tether.robot.control, so a row is one control period), and
queues one record: the observation arrays, the
action that actually reached the arms (`robot.act()`'s return value), the tick time, and each
stream's capture time, host time and frame index. A background thread JPEG-encodes and appends
records to the store's uncommitted tail; `save` commits the episode (episode_ends last), and
`discard` truncates it. Per-episode sync statistics (achieved rate, drops and duplicates per
camera, skew p50/p99, loop overruns) go into the episode metadata.

Controls work from the API (`save()`, `discard()`, `rerecord()`, `start()`, `quit()`, `estop()`,
`release_estop()`, thread-safe) and from the terminal keyboard (recorder_keys) in `run()`. The
e-stop latches across episodes until released; the episodes go on recording the held arm.

`realtime=False` (fast mode) is only allowed on a robot whose time is simulated.
"""

from __future__ import annotations

import datetime as _dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tether.core.errors import DeviceError, StoreError, TetherError
from tether.core.telemetry import NullTelemetry, Telemetry
from tether.data.layout import timing_key
from tether.data.store import EpisodeStore, EpisodeWriter
from tether.robot.control import ControlRow, ControlStep
from tether.robot.episodic import as_episodic
from tether.robot.interfaces import ACTION_KEY, STATE_KEY, Robot, image_key
from tether.robot.latency import LatencyOffsets
from tether.robot.runtime import RateLoop, Tick
from tether.robot.targets import TeleopDevice
from tether.teleop.recorder_stats import SyncMonitor
from tether.teleop.recorder_streams import DirectStreams, Sample, ThreadedStreams

log = logging.getLogger(__name__)

SAVED, DISCARDED = "saved", "discarded"


@dataclass
class EpisodeResult:
    outcome: str  # "saved" or "discarded"
    episode: int | None  # store index when saved
    steps: int
    stats: dict[str, Any]
    success: bool | None = None
    rerecord: bool = False  # the operator asked to record this episode again


@dataclass
class _Controls:
    """Thread-safe operator requests, consumed by the loop."""

    stop_episode: threading.Event = field(default_factory=threading.Event)
    start: threading.Event = field(default_factory=threading.Event)
    quit: threading.Event = field(default_factory=threading.Event)
    decision: str = SAVED
    rerecord: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, decision: str, rerecord: bool = False) -> None:
        with self.lock:
            self.decision = decision
            self.rerecord = rerecord
        self.stop_episode.set()
        self.start.set()  # also ends a reset countdown

    def reset(self) -> None:
        with self.lock:
            self.decision, self.rerecord = SAVED, False
        self.stop_episode.clear()
        self.start.clear()


class Recorder:
    """Record episodes from any Robot (twin or hardware) driven by any TeleopDevice."""

    def __init__(
        self,
        robot: Robot,
        teleop: TeleopDevice,
        store: EpisodeStore,
        fps: float | None = None,
        realtime: bool = True,
        task: str = "",
        operator: str = "",
        flush_every: int = 16,
        on_status: Callable[[dict], None] | None = None,
        telemetry: Telemetry | None = None,
        latency: LatencyOffsets | None = None,
    ) -> None:
        self.robot = robot
        self.latency = latency  # calibrated camera latency: frame stamps moved to exposure time
        self.telemetry = telemetry or NullTelemetry()  # --view: a live view, off the loop thread
        self.teleop = teleop
        self.store = store
        self.fps = float(fps if fps is not None else store.fps)
        if abs(self.fps - store.fps) > 1e-9:
            raise StoreError(
                f"Recorder fps {self.fps} differs from the store's fps {store.fps}; record into a "
                "new store or use the store's rate."
            )
        if not realtime:
            robot.require_simulated_time("--fast (realtime=False)")
        self.realtime = realtime
        self.task = task
        self.operator = operator
        self.flush_every = flush_every
        self.on_status = on_status
        self.controls = _Controls()
        self.warnings: list[str] = []
        self.status: dict[str, Any] = {}
        self._loop: RateLoop | None = None

    # ------------------------------------------------------------------ API controls
    def save(self) -> None:
        """End the current episode and keep it."""
        self.controls.request(SAVED)

    def discard(self) -> None:
        """End the current episode and drop it."""
        self.controls.request(DISCARDED)

    def rerecord(self) -> None:
        """Drop the current episode and record it again."""
        self.controls.request(DISCARDED, rerecord=True)

    def start(self) -> None:
        """Skip the rest of the reset countdown."""
        self.controls.start.set()

    def quit(self) -> None:
        """Save the current episode and stop the session."""
        self.controls.quit.set()
        self.controls.request(SAVED)

    def estop(self, reason: str = "operator") -> None:
        """Latch the robot's e-stop: every arm holds its last safe command until released."""
        self.robot.estop(reason)

    def release_estop(self) -> None:
        """Release the e-stop; the arms follow the device's targets again."""
        self.robot.reset_estop()

    @property
    def estopped(self) -> bool:
        return _estopped(self.robot)

    # ------------------------------------------------------------------ one episode
    def record_episode(
        self,
        max_steps: int | None = None,
        duration_s: float | None = None,
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        episode_label: str = "",
    ) -> EpisodeResult:
        """Record until the teleop says done, `max_steps`/`duration_s`, or a control request."""
        self.controls.reset()
        if not self.robot.is_connected:
            self.robot.connect()
        if seed is None:
            seed = self.store.n_episodes
        _reset_robot(self.robot, seed)
        self.teleop.reset(seed)
        streams = (
            ThreadedStreams(self.robot, self.fps, latency=self.latency) if self.realtime
            else DirectStreams(self.robot, latency=self.latency)
        )
        monitor = SyncMonitor(self.fps, on_warning=self._warn)
        # Live, the loop never waits on the disk (it warns below); offline nobody is waiting on
        # the arm, so the loop waits for the writer instead of queueing the whole episode in memory.
        writer = _WriterThread(self.store.begin_episode(self.flush_every),
                               max_backlog=None if self.realtime else int(2 * self.fps))
        safety_before = dict(self.robot.safety_counts())
        loop = RateLoop(self.fps, realtime=self.realtime)
        self._loop = loop
        t_wall = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        state = {"steps": 0, "t0": time.monotonic(), "last_status": 0.0, "device_errors": 0}
        spans = _Spans()

        def device_failed(exc: DeviceError) -> None:  # a leader's bus timed out, a cable came loose
            state["device_errors"] += 1
            monitor.warn("device", f"teleop device failed, the arm holds: {exc}")

        def to_store(row: ControlRow[Sample]) -> None:
            t_tick = row.tick.t_start if self.realtime else row.tick.index / self.fps
            writer.put(_record(row.reading, row.sent, t_tick))

        control = ControlStep(
            self.robot,
            read=lambda tick: streams.sample(tick.t_scheduled),
            target=lambda sample, tick: self.teleop.next_target(sample.observation),
            on_row=to_store,
            on_device_error=device_failed,
        )

        def step(tick: Tick) -> bool:
            row = control(tick)
            sample = row.reading
            self.telemetry.tick(tick, sample.observation, row.target, row.sent, self.robot)
            spans.track(state["steps"], bool(getattr(self.teleop, "intervening", False)))
            if writer.backlog > 2 * self.fps:
                monitor.warn("writer", f"the disk is falling behind: {writer.backlog} ticks queued")
            monitor.tick(sample.capture_t, sample.camera_index, sample.camera_age)
            state["steps"] += 1
            now = time.monotonic()
            if now - state["last_status"] > 0.2:
                state["last_status"] = now
                self._publish(episode_label, state, monitor, writer, tick)
            if writer.error is not None:
                return False
            if self.controls.stop_episode.is_set() or self.teleop.episode_done:
                return False
            return not (max_steps is not None and state["steps"] >= max_steps)

        try:
            streams.start()
            loop_stats = loop.run(step, max_ticks=max_steps, duration_s=duration_s)
        except BaseException:
            streams.stop()
            writer.finish(None)
            raise
        streams.stop()
        self._loop = None
        with self.controls.lock:
            decision, rerecord = self.controls.decision, self.controls.rerecord
        success = _success(self.robot)
        stats = {
            "loop": loop_stats.as_dict(),
            "sync": monitor.summary(),
            "writer": {"max_backlog": writer.max_backlog},
            "device_errors": state["device_errors"],
            "safety": _diff_counts(self.robot.safety_counts(), safety_before),
        }
        meta = {
            "task": self.task,
            "operator": self.operator,
            "success": success,
            "notes": "",
            "intervention_spans": spans.finish(state["steps"]),
            "seed": seed,
            "fps": self.fps,
            "realtime": self.realtime,
            "t_start_utc": t_wall,
            "robot": getattr(self.robot, "name", "robot"),
            "stats": stats,
            **({"camera_latency_s": dict(self.latency.cameras)} if self.latency else {}),
            **dict(metadata or {}),
        }
        if writer.error is not None:
            writer.finish(None)
            raise writer.error
        if state["steps"] == 0:
            decision = DISCARDED
        index = writer.finish(meta if decision == SAVED else None)
        result = EpisodeResult(decision, index, state["steps"], stats, success, rerecord)
        self.telemetry.event("episode", f"{episode_label or index}: {decision}, {state['steps']} steps, "
                             f"success {success}")
        log.info(
            "episode %s: %s, %d steps, %.1f Hz, skew p99 %.1f ms, drops %s",
            index if index is not None else "-", decision, state["steps"], loop_stats.achieved_hz,
            stats["sync"]["skew_p99_ms"],
            {n: c["dropped"] for n, c in stats["sync"]["cameras"].items()},
        )
        return result

    # ------------------------------------------------------------------ a session
    def run(
        self,
        num_episodes: int,
        episode_time_s: float | None = None,
        max_steps: int | None = None,
        reset_time_s: float = 0.0,
        seed: int | None = 0,
        keyboard: bool = False,
        on_episode: Callable[[EpisodeResult], None] | None = None,
        on_estop: Callable[[bool], None] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> list[EpisodeResult]:
        """Record `num_episodes` saved episodes with a reset countdown between them.

        keyboard: read the session keys (recorder_keys, e-stop included) from stdin.
        on_estop: called with True when the e-stop key latches, False when it is released.
        tasks: task strings cycled per saved episode (the k-th saved take gets tasks[k % n]);
            default: the recorder's `task` for all.
        `rerecord()` (key r) during the reset countdown takes the last saved episode back: it is
        removed from the store and recorded again from the same seed.
        """
        from tether.teleop.recorder_keys import KeyboardControls

        keys = KeyboardControls(self, robot=self.robot, on_estop=on_estop) if keyboard else None
        if keys is not None:
            keys.start()
        results: list[EpisodeResult] = []
        saved = 0
        attempt = 0
        last_saved: tuple[int, int | None] | None = None  # (store index, seed) of the last take
        redo_seed: int | None = None
        try:
            while saved < num_episodes and not self.controls.quit.is_set():
                if saved > 0 or attempt > 0:
                    self._countdown(reset_time_s, saved, num_episodes)
                    if self.controls.quit.is_set():
                        break
                    if last_saved is not None and self._take_back(last_saved[0]):
                        saved -= 1
                        redo_seed, last_saved = last_saved[1], None
                ep_seed = None if seed is None else seed + attempt
                if redo_seed is not None:
                    ep_seed, redo_seed = redo_seed, None
                label = f"{saved + 1}/{num_episodes}"
                task = {"task": tasks[saved % len(tasks)]} if tasks else None
                result = self.record_episode(
                    max_steps=max_steps, duration_s=episode_time_s, seed=ep_seed,
                    episode_label=label, metadata=task,
                )
                attempt += 1
                results.append(result)
                if result.outcome == SAVED:
                    saved += 1
                    last_saved = (result.episode, ep_seed) if result.episode is not None else None
                if on_episode is not None:
                    on_episode(result)
        finally:
            if keys is not None:
                keys.stop()
        return results

    def _take_back(self, episode: int) -> bool:
        """After a countdown: if the operator asked to re-record (r), remove the last saved take."""
        with self.controls.lock:
            again, self.controls.rerecord = self.controls.rerecord, False
        if not again or episode != self.store.n_episodes - 1:
            return False
        self.store.delete_episodes([episode])
        log.info("episode %d taken back: recording it again", episode)
        return True

    def _countdown(self, reset_time_s: float, saved: int, total: int) -> None:
        self.controls.start.clear()
        deadline = time.monotonic() + reset_time_s
        while not self.controls.start.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.status = {"phase": "reset", "remaining_s": remaining, "episode": f"{saved + 1}/{total}"}
            if self.on_status is not None:
                self.on_status(dict(self.status))
            self.controls.start.wait(min(0.1, remaining))

    # ------------------------------------------------------------------ helpers
    def _publish(self, label, state, monitor, writer, tick) -> None:
        elapsed = time.monotonic() - state["t0"]
        live = monitor.live()
        self.status = {
            "phase": "recording",
            "episode": label,
            "elapsed_s": elapsed,
            "steps": state["steps"],
            "fps": state["steps"] / elapsed if elapsed > 0 else 0.0,
            "skew_ms": live["skew_ms"],
            "dropped": live["dropped"],
            "stalled": live["stalled"],
            "backlog": writer.backlog,
            "estop": _estopped(self.robot),
        }
        if self.on_status is not None:
            self.on_status(dict(self.status))

    def _warn(self, message: str) -> None:
        self.warnings.append(message)


class _WriterThread:
    """Appends tick records to the store's tail in the background.

    Unbounded (`max_backlog` None) the loop never waits on it: a live recording must keep its
    rate, and a growing backlog is reported instead. Bounded, `put` waits once that many ticks
    are queued: an offline recording then runs at the disk's pace.
    """

    def __init__(self, writer: EpisodeWriter, max_backlog: int | None = None) -> None:
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_backlog) if max_backlog else 0)
        self.error: BaseException | None = None
        self.max_backlog = 0
        self._thread = threading.Thread(target=self._run, name="rec-writer", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def put(self, record: dict[str, np.ndarray]) -> None:
        self._put(record)
        self.max_backlog = max(self.max_backlog, self._queue.qsize())

    def _put(self, item: dict[str, np.ndarray] | None) -> None:
        """Queue `item`, waiting while the queue is full (bounded) - but never on a writer thread
        that died of something unexpected: that becomes `error`, and the loop stops on it."""
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    if self.error is None:
                        self.error = StoreError("the recorder's writer thread stopped unexpectedly")
                    return

    def finish(self, metadata: Mapping[str, Any] | None) -> int | None:
        """Drain, then commit with `metadata` (or discard when None). Returns the episode index."""
        self._put(None)
        self._thread.join()
        if self.error is not None:
            if self.writer.active:
                self.writer.discard()
            if metadata is None:
                return None
            raise self.error
        if metadata is None:
            self.writer.discard()
            return None
        return self.writer.commit(metadata)

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            if self.error is not None:
                continue  # drain without writing after a failure
            try:
                self.writer.append(record)
            except (TetherError, OSError) as exc:
                self.error = exc if isinstance(exc, TetherError) else StoreError(str(exc))
                log.error("recorder writer failed: %s", exc)


class _Spans:
    """[start, stop) step ranges during which the teleop device reported `intervening`.

    Devices used for human-in-the-loop correction (a leader arm taking over from a policy) set
    `intervening`; the spans let training weight or select the corrected segments.
    """

    def __init__(self) -> None:
        self.spans: list[list[int]] = []
        self._start: int | None = None

    def track(self, step: int, active: bool) -> None:
        if active and self._start is None:
            self._start = step
        elif not active and self._start is not None:
            self.spans.append([self._start, step])
            self._start = None

    def finish(self, steps: int) -> list[list[int]]:
        if self._start is not None:
            self.spans.append([self._start, steps])
            self._start = None
        return self.spans


def _record(sample: Sample, sent: np.ndarray, t_tick: float) -> dict[str, np.ndarray]:
    """One step for the store; images are copied because a driver may reuse its buffers."""
    obs = sample.observation
    record: dict[str, np.ndarray] = {
        STATE_KEY: obs.state,
        ACTION_KEY: np.asarray(sent, dtype=np.float32),
        "timestamp": np.float64(t_tick),
    }
    for name, frame in obs.frames.items():
        key = image_key(name)
        record[key] = np.array(frame.image, dtype=np.uint8, copy=True)
        record[timing_key(key, "index")] = np.int64(frame.index)
    for stream, t in sample.capture_t.items():  # timing lives apart from data (data/layout)
        record[timing_key(stream, "t_host")] = np.float64(t)
    for stream, t in sample.host_t.items():
        record[timing_key(stream, "t_recv")] = np.float64(t)
    for stream, t in sample.device_t.items():  # the device's raw stamp (NaN: it has no clock)
        record[timing_key(stream, "t_device")] = np.float64(t)
    return record


def _reset_robot(robot: Robot, seed: int) -> None:
    """Robots with episodes (the twin) place their objects from the seed; hardware has none."""
    episodic = as_episodic(robot)
    if episodic is not None:
        episodic.reset(seed)


def _estopped(robot: Robot) -> bool:
    return any(arm.filter.estopped for arm in robot.arms.values())


def _success(robot: Robot) -> bool | None:
    """The episode's outcome on a robot with episodes (None on hardware: the operator knows).

    Success counts if it held for the task's hold time at any point, or holds at the end."""
    episodic = as_episodic(robot)
    if episodic is None:
        return None
    try:
        return bool(episodic.succeeded) or bool(episodic.is_success())
    except Exception as exc:  # a broken success check must not lose the episode
        log.warning("the robot's success check failed: %s", exc)
        return None


def _diff_counts(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0)}
