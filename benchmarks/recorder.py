"""Recorder under load: N cameras at 480x640 + 2 arms at 30 Hz for 60 s into a JPEG store.

Cameras free-run on their own threads and serve camera-like frames with sensor noise (a
precomputed bank, so generating them costs nothing); the recorder samples, JPEG-encodes and
writes them in the background. Prints one JSON object. Baseline measured in the same run:
single-thread JPEG encode capacity, to show the headroom the writer has.

    .venv/bin/python benchmarks/recorder.py [--duration 60] [--cameras 3] [--fps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tether.data.inspect import summarize
from tether.data.store import EpisodeStore
from tether.data.synthetic import camera_frames
from tether.robot.interfaces import CameraSpec, Frame, Robot
from tether.robot.memory import MemoryArm, MemoryCamera, default_arm_spec
from tether.robot.targets import TeleopDevice
from tether.teleop.recorder import Recorder

LEROBOT_FRAMES_PER_S = 33.0  # LeRobot 0.4.4, one 480x640 camera, measured by the lead here


class BankCamera(MemoryCamera):
    """A free-running camera replaying a bank of noisy frames at its own fps."""

    def __init__(self, spec: CameraSpec, bank: np.ndarray) -> None:
        super().__init__(spec)
        self.bank = bank

    def _grab(self) -> Frame | None:
        delay = self._next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next_t += 1.0 / self.spec.fps
        t = time.monotonic()
        frame = Frame(self.bank[self._index % len(self.bank)], t, time.monotonic(), self._index)
        self._index += 1
        return frame


class Sine(TeleopDevice):
    def __init__(self, dof: int) -> None:
        self.dof = dof

    def next_target(self, observation):
        return np.full(self.dof, 0.3 * np.sin(observation.t_host))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()

    import imagecodecs

    banks = [camera_frames(24, args.height, args.width, seed=i) for i in range(args.cameras)]
    t0 = time.perf_counter()
    for frame in banks[0]:
        imagecodecs.jpeg8_encode(frame, level=90)
    encode_capacity = len(banks[0]) / (time.perf_counter() - t0)

    cams = {f"cam{i}": BankCamera(CameraSpec(f"cam{i}", args.width, args.height, args.fps), b)
            for i, b in enumerate(banks)}
    arms = {n: MemoryArm(default_arm_spec(n, 7)) for n in ("left", "right")}
    robot = Robot(arms, cams, fps=args.fps, name="bench")
    tmp = Path(tempfile.mkdtemp(prefix="tether-rec-bench-"))
    try:
        store = EpisodeStore.create(tmp / "bench.zarr", args.fps)
        load_before = os.getloadavg()
        with robot:
            recorder = Recorder(robot, Sine(robot.action_dim), store)
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            result = recorder.record_episode(duration_s=args.duration)
            wall = time.perf_counter() - wall0
            cpu = cpu_seconds() - cpu0
        summary = summarize(store)
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loop, sync = result.stats["loop"], result.stats["sync"]
    images = [s for s in summary["streams"] if s["key"].startswith("image.") and s["dtype"] == "uint8"]
    frames_per_s = args.cameras * result.steps / wall
    print(json.dumps({
        "benchmark": "recorder",
        "cameras": args.cameras, "resolution": [args.height, args.width], "arms": 2,
        "target_hz": args.fps, "duration_s": round(wall, 2), "ticks": result.steps,
        "achieved_hz": round(loop["achieved_hz"], 3),
        "skipped_ticks": loop["skipped_ticks"], "overruns": loop["overruns"],
        "jitter_p99_ms": round(loop["jitter_p99_ms"], 2), "step_p99_ms": round(loop["step_p99_ms"], 2),
        "camera_frames_dropped": {k: v["dropped"] for k, v in sync["cameras"].items()},
        "camera_frames_duplicated": {k: v["duplicated"] for k, v in sync["cameras"].items()},
        "skew_p50_ms": round(sync["skew_p50_ms"], 2), "skew_p99_ms": round(sync["skew_p99_ms"], 2),
        "writer_max_backlog_ticks": result.stats["writer"]["max_backlog"],
        "image_frames_per_s_into_store": round(frames_per_s, 1),
        "streams_frames_per_s": round((args.cameras + 2) * result.steps / wall, 1),
        "image_size_ratio_vs_raw": round(sum(s["raw_bytes"] for s in images)
                                         / max(1, sum(s["disk_bytes"] for s in images)), 2),
        "store_mb": round(summary["disk_bytes"] / 1e6, 1),
        "cpu_cores_used": round(cpu / wall, 2),
        "baseline_jpeg_encode_frames_per_s_one_core": round(encode_capacity, 1),
        "encode_headroom": round(encode_capacity / frames_per_s, 2),
        "vs_lerobot_frames_per_s": round(frames_per_s / LEROBOT_FRAMES_PER_S, 2),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
