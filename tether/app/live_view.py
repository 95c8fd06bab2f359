"""`--view`: stream a running loop (record, teleop, rollout) into a rerun viewer.

    loop thread --LiveTelemetry (tether.core.telemetry: bounded queue, drop and count)-->
        worker thread --RerunSink--> rerun RecordingStream --> viewer / server / .rrd file

Where the stream goes is one string (`--view SPEC`):

    spawn                     a native viewer on this machine (the default of a bare --view)
    out.rrd                   a file, opened later with `rerun out.rrd` (what the tests read back)
    tcp://HOST:PORT           serve over gRPC on PORT, for a headless robot computer: on the
                              laptop run `rerun rerun+http://ROBOT:PORT/proxy`
    web[:PORT]                also serve the web viewer on PORT (default 9090): open
                              http://ROBOT:PORT/?url=rerun%2Bhttp://ROBOT:9876/proxy
    rerun+http://HOST:PORT/proxy   connect to a viewer already running elsewhere

What is logged (the entity paths below; `tether view` lays out a recorded episode the same way):
every camera (JPEG-compressed when OpenCV is there, at most `max_image_hz` per second), joint
positions, targets (what the device or policy asked for) and commands (what passed the safety
layer), each policy chunk as one line per action dimension over its future steps, safety events
(clamps and refusals by reason, holds, e-stop) as a text log, and loop timing (`timing/ms`: step
time, start jitter, sync skew across streams; `timing/counts`: the telemetry queue, its drops,
safety interventions). Timelines: `step` (ticks since the view opened) and `time` (seconds since
the first tick).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError
from tether.core.optional import missing_extra
from tether.core.telemetry import ChunkItem, EventItem, LiveTelemetry, TickItem

try:
    import rerun as rr
except ImportError as exc:
    raise missing_extra(__name__, "rerun") from exc

log = logging.getLogger(__name__)

APPLICATION_ID = "tether"
DEFAULT_GRPC_PORT = 9876
DEFAULT_WEB_PORT = 9090

# Entity paths, shared with the dataset viewer (tether.app.episode_view).
CAMERAS = "cameras"
JOINT_POSITION = "joints/position"
JOINT_TARGET = "joints/target"
JOINT_COMMAND = "joints/command"
POLICY_CHUNK = "policy/chunk"
EVENTS = "events"
TIMING = "timing"
TIMING_MS = "timing/ms"  # per tick: step time, start jitter, sync skew across streams
TIMING_MS_SERIES = ("step_ms", "jitter_ms", "skew_ms")
TIMING_COUNTS = "timing/counts"  # per tick: telemetry queue, items dropped, safety interventions
TIMING_COUNT_SERIES = ("queue", "dropped", "safety_interventions")
STEP, TIME = "step", "time"  # timelines


@dataclass(frozen=True)
class ViewTarget:
    """A parsed `--view` value."""

    kind: str  # spawn | file | serve | web | connect
    path: Path | None = None
    port: int | None = None
    url: str | None = None


def parse_view(spec: str) -> ViewTarget:
    """`--view SPEC` as a ViewTarget; a ConfigError lists the accepted forms."""
    spec = spec.strip()
    if spec in ("", "spawn"):
        return ViewTarget("spawn")
    if spec.endswith(".rrd"):
        return ViewTarget("file", path=Path(spec))
    if spec.startswith("rerun+http://") or spec.startswith("rerun+https://"):
        return ViewTarget("connect", url=spec)
    if spec.startswith("tcp://"):
        _host, _, port = spec[len("tcp://"):].rpartition(":")
        return ViewTarget("serve", port=_port(port, spec))
    if spec == "web" or spec.startswith("web:"):
        port = spec.partition(":")[2]
        return ViewTarget("web", port=_port(port, spec) if port else DEFAULT_WEB_PORT)
    raise ConfigError(
        f"--view {spec!r} is not a view target; use one of: spawn (a viewer on this machine), "
        "FILE.rrd, tcp://HOST:PORT (serve for `rerun rerun+http://HOST:PORT/proxy`), "
        "web[:PORT] (serve the web viewer too), or rerun+http://HOST:PORT/proxy (a viewer "
        "elsewhere)."
    )


def _port(text: str, spec: str) -> int:
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    raise ConfigError(f"--view {spec!r}: {text!r} is not a port number (1-65535), e.g. tcp://0.0.0.0:9876.")


def open_recording(spec: str, name: str, recording_id: str | None = None) -> rr.RecordingStream:
    """A RecordingStream sending to `spec` (see parse_view); tells where to look via logging."""
    target = parse_view(spec)
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=recording_id)
    rec.send_recording_name(name)
    if target.kind == "file":
        assert target.path is not None
        target.path.parent.mkdir(parents=True, exist_ok=True)
        rec.save(target.path)
    elif target.kind == "spawn":
        _require_display()
        rec.spawn(connect=True)
    elif target.kind == "connect":
        rec.connect_grpc(target.url)
    elif target.kind == "serve":
        url = rec.serve_grpc(grpc_port=target.port, server_memory_limit="25%")
        log.warning("live view served at %s: run `rerun %s` on a machine with a display", url,
                    url.replace("127.0.0.1", "<this-host>").replace("localhost", "<this-host>"))
    else:  # web
        url = rec.serve_grpc(grpc_port=DEFAULT_GRPC_PORT, server_memory_limit="25%")
        rr.serve_web_viewer(web_port=target.port, open_browser=False, connect_to=url)
        here = url.replace("127.0.0.1", "<this-host>").replace("localhost", "<this-host>")
        log.warning("live view: open http://<this-host>:%d/?url=%s in a browser", target.port,
                    here.replace("+", "%2B"))
    return rec


def _require_display() -> None:
    """A native viewer needs a screen: on a headless Linux box say what works instead."""
    import os
    import sys

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError(
            "--view spawn opens a viewer window, but this machine has no display (DISPLAY and "
            "WAYLAND_DISPLAY are unset); serve it instead with --view tcp://0.0.0.0:9876 (then "
            "`rerun rerun+http://THIS-HOST:9876/proxy` on your laptop), --view web, or save it "
            "with --view FILE.rrd."
        )


def joint_names(robot) -> list[str]:
    """Series names for the state/action vectors: `joint` or `arm/joint` with several arms."""
    arms = list(robot.arms.items())
    names = []
    for arm_name, arm in arms:
        spec = arm.filter.spec if hasattr(arm, "filter") else arm.spec
        names += [j if len(arms) == 1 else f"{arm_name}/{j}" for j in spec.joint_names]
    return names


def live_view(spec: str, robot, name: str = "live", max_image_hz: float = 10.0,
              max_queue: int = 64) -> LiveTelemetry:
    """The telemetry a loop is given when `--view SPEC` is on; close() it when the run ends."""
    rec = open_recording(spec, name)
    sink = RerunSink(rec, joint_names(robot))
    return LiveTelemetry(sink, max_queue=max_queue, max_image_hz=max_image_hz)


class RerunSink:
    """Turns telemetry items into rerun log calls (runs on the telemetry worker thread).

    Scalars (joints, timing) are batched: rows collect for `batch_s` seconds of ticks and go
    out in one `send_columns` per entity, several times cheaper than a `log` per row. That
    matters beyond this thread: the worker shares the interpreter with the control loop, and
    every millisecond it holds the GIL is one the loop may wait for. Frames (JPEG-encoded by
    OpenCV, which releases the GIL), chunks and events are logged as they come.
    """

    def __init__(self, rec: rr.RecordingStream, names: Sequence[str], jpeg_quality: int = 80,
                 batch_s: float = 0.25) -> None:
        self.rec = rec
        self.names = list(names)
        self.batch_s = batch_s
        self._t0: float | None = None
        self._safety: dict[str, int] = {}
        self._estop = False
        self._holding = False
        self._encode = jpeg_encoder(jpeg_quality)
        self._rows: dict[str, tuple[list[int], list[float], list]] = {}
        self._t_flush: float | None = None
        log_series_names(rec, self.names)
        rec.log(TIMING_MS, rr.SeriesLines(names=list(TIMING_MS_SERIES)), static=True)
        rec.log(TIMING_COUNTS, rr.SeriesLines(names=list(TIMING_COUNT_SERIES)), static=True)

    def handle(self, item: TickItem | ChunkItem | EventItem, stats: Mapping[str, int]) -> None:
        if isinstance(item, TickItem):
            self._tick(item, stats)
        elif isinstance(item, ChunkItem):
            self._at(item.seq, item.t_logged)
            log_chunk(self.rec, np.asarray(item.actions, dtype=np.float32))
        else:
            self._at(item.seq, item.t_logged)
            self.rec.log(EVENTS, rr.TextLog(f"{item.kind}: {item.message}", level="INFO"))

    def close(self) -> None:
        self.flush()
        self.rec.flush()
        self.rec.disconnect()

    def flush(self) -> None:
        """Send the batched scalar rows, one `send_columns` per entity."""
        for entity, (steps, times, values) in self._rows.items():
            if steps:
                self.rec.send_columns(
                    entity,
                    indexes=[rr.TimeColumn(STEP, sequence=steps),
                             rr.TimeColumn(TIME, duration=times)],
                    columns=rr.Scalars.columns(scalars=np.asarray(values, dtype=np.float64)),
                )
        self._rows.clear()

    def _at(self, seq: int, t: float) -> None:
        if self._t0 is None:
            self._t0 = t
        self.rec.set_time(STEP, sequence=seq)
        self.rec.set_time(TIME, duration=max(0.0, t - self._t0))

    def _row(self, entity: str, seq: int, t: float, value) -> None:
        steps, times, values = self._rows.setdefault(entity, ([], [], []))
        steps.append(seq)
        times.append(t)
        values.append(value)

    def _tick(self, item: TickItem, stats: Mapping[str, int]) -> None:
        if self._t0 is None:
            self._t0 = item.t_scheduled
        t = max(0.0, item.t_start - self._t0)
        obs = item.observation
        self._row(JOINT_POSITION, item.seq, t, np.asarray(obs.state, dtype=np.float64))
        if item.target is not None:
            self._row(JOINT_TARGET, item.seq, t, np.asarray(item.target, dtype=np.float64))
        self._row(JOINT_COMMAND, item.seq, t, np.asarray(item.sent, dtype=np.float64))
        times = list(obs.stream_times().values())
        skew = (max(times) - min(times)) * 1e3 if len(times) > 1 else 0.0
        self._row(TIMING_MS, item.seq, t, [(item.t_logged - item.t_start) * 1e3,
                                            (item.t_start - item.t_scheduled) * 1e3, skew])
        self._row(TIMING_COUNTS, item.seq, t, [float(item.queued), float(stats.get("dropped", 0)),
                                                float(sum(item.safety.values()))])
        if item.with_frames or self._changes(item):
            self._at(item.seq, item.t_start)
        if item.with_frames:
            for camera, frame in obs.frames.items():
                self.rec.log(f"{CAMERAS}/{camera}", self._encode(frame.image))
        self._safety_events(item)
        if self._t_flush is None:
            self._t_flush = item.t_start
        if item.t_start - self._t_flush >= self.batch_s:
            self._t_flush = item.t_start
            self.flush()

    def _changes(self, item: TickItem) -> bool:
        return (item.estop != self._estop or (item.target is None) != self._holding
                or any(c != self._safety.get(r, 0) for r, c in item.safety.items()))

    def _safety_events(self, item: TickItem) -> None:
        for reason, count in item.safety.items():
            new = count - self._safety.get(reason, 0)
            if new > 0:
                self.rec.log(EVENTS, rr.TextLog(f"safety: {reason} +{new}", level="WARN"))
        self._safety = dict(item.safety)
        if item.estop != self._estop:
            self._estop = item.estop
            text = "E-STOP latched: every arm holds" if item.estop else "e-stop released"
            self.rec.log(EVENTS, rr.TextLog(text, level="CRITICAL" if item.estop else "INFO"))
        holding = item.target is None
        if holding != self._holding:
            self._holding = holding
            text = "hold: no target, the arm keeps its last command" if holding else "targets again"
            self.rec.log(EVENTS, rr.TextLog(text, level="WARN" if holding else "INFO"))


def jpeg_encoder(quality: int):
    """image -> a rerun archetype: JPEG through OpenCV (releases the GIL), else raw pixels."""
    try:
        import cv2
    except ImportError:
        return lambda image: rr.Image(np.ascontiguousarray(image))

    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]

    def encode(image: np.ndarray):
        # cvtColor, not image[..., ::-1]: a strided numpy copy holds the GIL ~50x longer
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        if not ok:
            return rr.Image(np.ascontiguousarray(image))
        return rr.EncodedImage(contents=buf.tobytes(), media_type="image/jpeg")

    return encode


def log_series_names(rec: rr.RecordingStream, names: Sequence[str]) -> None:
    """Name the joint series once (static), so plots show `shoulder_pan`, not `0`."""
    if not names:
        return
    for path in (JOINT_POSITION, JOINT_TARGET, JOINT_COMMAND):
        rec.log(path, rr.SeriesLines(names=list(names)), static=True)


def log_chunk(rec: rr.RecordingStream, actions: np.ndarray) -> None:
    """A whole chunk as one 2D line per action dimension: x = steps ahead, y = value."""
    if actions.ndim != 2 or len(actions) == 0:
        return
    steps = np.arange(len(actions), dtype=np.float32)
    strips = [np.stack([steps, actions[:, j]], axis=1) for j in range(actions.shape[1])]
    rec.log(POLICY_CHUNK, rr.LineStrips2D(strips))


def read_rrd(path: str | Path) -> dict[str, Any]:
    """What an .rrd holds, through rerun's own reader: rows per entity and each timeline's values.

    {"entities": {path: rows}, "timelines": {path: {timeline: [values]}}}; static rows are
    counted under their entity with no timeline. Used by tests and `tether view` checks.
    """
    from rerun.chunk import RrdReader

    entities: dict[str, int] = {}
    timelines: dict[str, dict[str, list]] = {}
    with warnings.catch_warnings():  # a file a server streamed has no footer: fine for stream()
        warnings.filterwarnings("ignore", message=".*no footer.*")
        reader = RrdReader(str(path))
    for chunk in reader.stream().to_chunks():
        entity = chunk.entity_path
        entities[entity] = entities.get(entity, 0) + chunk.num_rows
        if chunk.is_static:
            continue
        batch = chunk.to_record_batch()
        for name in chunk.timeline_names:
            if name == "log_time":
                continue
            column = batch.column(name)
            if name == TIME:  # duration[ns] -> seconds (pyarrow's timedelta drops nanoseconds)
                column = column.cast("int64")
                values = [v / 1e9 for v in column.to_pylist()]
            else:
                values = column.to_pylist()
            timelines.setdefault(entity, {}).setdefault(name, []).extend(values)
    for per_entity in timelines.values():
        for name in per_entity:
            per_entity[name].sort()
    return {"entities": entities, "timelines": timelines}


__all__ = ["RerunSink", "ViewTarget", "live_view", "open_recording", "parse_view", "read_rrd"]
