"""`--view`: record, teleop and rollout stream into rerun; read the .rrd back with rerun's reader.

The live view runs off the control loop (tether.core.telemetry): a bounded queue that drops
and counts instead of blocking, frames skipped first. Tests log to a file (`--view out.rrd`) and
read it back with `rerun.chunk.RrdReader` (through tether.app.live_view.read_rrd): which entities
exist, how many rows each holds, and the timelines of those rows.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("rerun")

from tether.app.live_view import parse_view, read_rrd  # noqa: E402
from tether.cli import build_app  # noqa: E402
from tether.core.errors import ConfigError  # noqa: E402
from tether.core.telemetry import LiveTelemetry, TickItem  # noqa: E402

runner = CliRunner()


def texts(path: Path, entity: str) -> list[str]:
    """Every TextLog line logged under `entity` (through rerun's own reader)."""
    from rerun.chunk import RrdReader

    out: list[str] = []
    for chunk in RrdReader(str(path)).stream().to_chunks():
        if chunk.entity_path == entity:
            batch = chunk.to_record_batch()
            column = [c for c in batch.schema.names if c.endswith(":text")][0]
            out += [row[0] for row in batch.column(column).to_pylist() if row]
    return out


def test_record_view_file_reads_back_with_every_stream(tmp_path):
    rrd = tmp_path / "live.rrd"
    result = runner.invoke(build_app(), [
        "record", "--robot", "twin:lift", "--teleop", "scripted", "--fast", "--episodes", "1",
        "--episode-time", "1", "--out", str(tmp_path / "d.zarr"), "--view", str(rrd),
    ])
    assert result.exit_code == 0, result.output
    steps = 30  # 1 s at the twin's 30 fps
    info = read_rrd(rrd)
    rows = info["entities"]
    # one row per tick (+1 static row naming the joint series)
    for entity in ("/joints/position", "/joints/target", "/joints/command", "/timing/ms",
                   "/timing/counts"):
        assert rows[entity] == steps + 1, (entity, rows)
    assert 1 <= rows["/cameras/top"] <= steps  # frames are rate-limited, never more than ticks
    position = info["timelines"]["/joints/position"]
    assert position["step"] == list(range(1, steps + 1))
    assert np.all(np.diff(position["time"]) >= 0) and position["time"][0] >= 0
    camera_steps = info["timelines"]["/cameras/top"]["step"]
    assert set(camera_steps) <= set(position["step"])  # frames sit on ticks of the same timeline
    assert any(line.startswith("episode: 1/1: saved") for line in texts(rrd, "/events"))


def test_rollout_view_logs_every_chunk_and_the_ticks(tmp_path):
    rrd, summary = tmp_path / "rollout.rrd", tmp_path / "summary.json"
    result = runner.invoke(build_app(), [
        "rollout", "--robot", "twin:lift", "--policy", "simple:hold", "--lockstep",
        "--max-steps", "20", "--view", str(rrd), "--json", str(summary), "--no-keyboard",
    ])
    assert result.exit_code == 0, result.output
    s = json.loads(summary.read_text())[0]
    info = read_rrd(rrd)
    assert info["entities"]["/policy/chunk"] == s["chunks"]  # the whole predicted chunk, each time
    assert info["entities"]["/timing/ms"] == s["length"] + 1 == 21
    assert info["entities"]["/joints/target"] == s["length"] + 1


def test_teleop_view_shows_the_estop_and_holds(tmp_path):
    from tether.app.live_view import live_view
    from tether.robot.factory import make_robot
    from tether.teleop.factory import make_teleop
    from tether.teleop.run import run_teleop

    rrd = tmp_path / "teleop.rrd"
    robot = make_robot("twin:lift")
    device = make_teleop("scripted", robot, {})
    with robot, device:
        robot.reset(0)
        view = live_view(str(rrd), robot)

        def on_tick(tick):
            if tick.index == 10:
                robot.estop("test")
            if tick.index == 20:
                robot.reset_estop()

        report = run_teleop(robot, device, max_ticks=30, realtime=False, on_tick=on_tick,
                            telemetry=view)
        view.close()
    assert report.loop.ticks == 30 and view.counts["dropped"] == 0
    lines = texts(rrd, "/events")
    assert "E-STOP latched: every arm holds" in lines and "e-stop released" in lines
    assert any(line.startswith("safety: ") for line in lines), lines  # refusals while latched


class _BlockedSink:
    """A viewer that has stopped reading: handle() waits until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.items: list = []

    def handle(self, item, stats) -> None:
        self.release.wait(30)
        self.items.append(item)

    def close(self) -> None:
        pass


class _Tick:
    def __init__(self, index: int) -> None:
        self.index, self.t_scheduled, self.t_start = index, float(index), float(index)


def test_a_stalled_viewer_never_blocks_the_loop_it_drops_and_counts():
    sink = _BlockedSink()
    t = [0.0]
    telemetry = LiveTelemetry(sink, max_queue=8, max_image_hz=10.0, clock=lambda: t[0])
    for i in range(200):  # would hang here if a call waited for the sink
        t[0] = i * 0.02  # 50 Hz
        telemetry.tick(_Tick(i), observation=None, target=None, sent=None)
    assert telemetry.counts["ticks"] == 200
    assert telemetry.counts["dropped"] >= 200 - 8 - 1  # the queue holds 8, the worker 1
    sink.release.set()
    telemetry.close()
    ticks = [item for item in sink.items if isinstance(item, TickItem)]
    assert 1 <= len(ticks) <= 9
    # frames: at most 10 per second, and none while the queue was more than half full
    assert sum(item.with_frames for item in ticks) <= 2


def test_frames_are_rate_limited_when_the_viewer_keeps_up():
    sink = _BlockedSink()
    sink.release.set()
    t = [0.0]
    telemetry = LiveTelemetry(sink, max_queue=1000, max_image_hz=10.0, clock=lambda: t[0])
    for i in range(100):  # 2 s at 50 Hz
        t[0] = i * 0.02
        telemetry.tick(_Tick(i), observation=None, target=None, sent=None)
    telemetry.close()
    assert telemetry.counts["dropped"] == 0
    with_frames = sum(item.with_frames for item in sink.items)
    assert with_frames == 20  # 10 per second for 2 s
    assert telemetry.counts["frames_skipped"] == 80


@pytest.mark.parametrize("spec,kind", [("spawn", "spawn"), ("a/b.rrd", "file"),
                                       ("tcp://0.0.0.0:9877", "serve"), ("web", "web"),
                                       ("web:9000", "web"),
                                       ("rerun+http://10.0.0.2:9876/proxy", "connect")])
def test_view_targets_parse(spec, kind):
    assert parse_view(spec).kind == kind


def test_a_bad_view_target_names_the_accepted_forms():
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        parse_view("udp://x")
    with pytest.raises(ConfigError, match="not a port number"):
        parse_view("tcp://host:port")


def test_spawn_without_a_display_says_what_works_instead(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = runner.invoke(build_app(), [
        "record", "--robot", "twin:lift", "--teleop", "scripted", "--fast", "--episodes", "1",
        "--episode-time", "0.2", "--out", str(tmp_path / "d.zarr"), "--view", "spawn",
    ])
    assert result.exit_code == 2, result.output
    assert "no display" in result.output and "--view tcp://0.0.0.0:9876" in result.output
    assert not (tmp_path / "d.zarr").exists()  # nothing recorded, no empty store left


def test_rollout_streams_over_the_network_to_a_viewer_elsewhere(tmp_path, wait_until):
    """--view rerun+http://HOST:PORT/proxy: a rerun server (here on 127.0.0.1, saving what it
    receives, as a viewer on the operator's laptop would show it) gets every tick and chunk."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    received = tmp_path / "received.rrd"
    rerun_bin = Path(sys.executable).parent / "rerun"
    server = subprocess.Popen([str(rerun_bin), "--bind", "127.0.0.1", "--port", str(port),
                               "--save", str(received)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: _listening(port), what="the rerun server listening")
        result = runner.invoke(build_app(), [
            "rollout", "--robot", "twin:lift", "--policy", "simple:hold", "--lockstep",
            "--max-steps", "15", "--view", f"rerun+http://127.0.0.1:{port}/proxy",
            "--no-keyboard",
        ])
        assert result.exit_code == 0, result.output

        def rows():
            try:
                return read_rrd(received)["entities"].get("/timing/ms") == 16
            except Exception:  # the server is still writing
                return False

        wait_until(rows, what="the server saving every tick it received")
    finally:
        # the `rerun` script runs the viewer binary as a child: stop the whole process group, or
        # the binary outlives the test
        import os
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    assert read_rrd(received)["entities"]["/joints/position"] == 16


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
