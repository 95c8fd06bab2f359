"""What `--view` costs the control loop: tick time with and without the live view, same run.

A real-time teleop loop (`tether.teleop.run.run_teleop`, 50 Hz) drives an in-memory 6-DoF arm
with two synthetic 480x640 cameras at 30 fps (their own threads, like real drivers), from a
sine-wave device. Rounds alternate without and with the live view (rerun, logging to an .rrd
file on the telemetry worker thread: JPEG-encoded frames at the default 10 Hz, joints, targets,
commands, timing), so both sides see the same machine load. Reported per side: the loop's step
time p50/p99 (the work of one tick, pooled over its rounds; rerun's work runs on another thread
but shares the interpreter, so GIL contention shows up here), start jitter p99, and for the view
the time the telemetry call itself takes on the loop thread. Prints one JSON object; `load1` is
the 1-minute load average at the start and end (other processes share the CPU).

    .venv/bin/python benchmarks/live_view.py [--seconds 6] [--rounds 3] [--image-hz 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tether.app.live_view import live_view, read_rrd
from tether.robot.interfaces import CameraSpec, Robot
from tether.robot.memory import MemoryArm, MemoryCamera
from tether.robot.runtime import Tick
from tether.teleop.run import run_teleop


class SineDevice:
    """A TeleopDevice whose target is a slow sine around home (within any velocity limit)."""

    episode_done = False

    def __init__(self, dof: int) -> None:
        self.dof = dof
        self.t0 = time.monotonic()

    def reset(self, seed=None) -> None:
        self.t0 = time.monotonic()

    def next_target(self, observation):
        t = time.monotonic() - self.t0
        return 0.2 * np.sin(2 * np.pi * 0.25 * t + np.arange(self.dof))

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass


class TimedTelemetry:
    """Wraps a Telemetry to time each call on the loop thread."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.call_ms: list[float] = []

    def tick(self, *args, **kwargs) -> None:
        t0 = time.perf_counter()
        self.inner.tick(*args, **kwargs)
        self.call_ms.append((time.perf_counter() - t0) * 1e3)

    def chunk(self, *args) -> None:
        self.inner.chunk(*args)

    def event(self, *args) -> None:
        self.inner.event(*args)

    def close(self) -> None:
        self.inner.close()


def make_robot(hz: float) -> Robot:
    cameras = {name: MemoryCamera(CameraSpec(name, 640, 480, 30.0)) for name in ("top", "wrist")}
    return Robot({"arm": MemoryArm()}, cameras=cameras, fps=hz, name="bench")


def one_round(robot: Robot, seconds: float, view_path: Path | None, image_hz: float):
    """Run the loop for `seconds`; per-tick step durations (ms), jitter, telemetry stats."""
    steps: list[float] = []
    jitter: list[float] = []
    state = {"tick": None}

    def on_tick(tick: Tick) -> None:  # called at the end of each step: the step's work so far
        steps.append((time.monotonic() - tick.t_start) * 1e3)
        jitter.append((tick.t_start - tick.t_scheduled) * 1e3)
        state["tick"] = tick

    telemetry = None
    if view_path is not None:
        telemetry = TimedTelemetry(live_view(str(view_path), robot, name="bench",
                                             max_image_hz=image_hz))
    device = SineDevice(robot.action_dim)
    report = run_teleop(robot, device, duration_s=seconds, on_tick=on_tick, telemetry=telemetry)
    extra = {}
    if telemetry is not None:
        telemetry.close()
        extra = {"call_ms": telemetry.call_ms, "counts": dict(telemetry.inner.counts)}
    return steps, jitter, report, extra


def pct(values, q) -> float:
    return round(float(np.percentile(values, q)), 3) if len(values) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (alternating)")
    parser.add_argument("--hz", type=float, default=50.0)
    parser.add_argument("--image-hz", type=float, default=10.0)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    sides = {"baseline": {"steps": [], "jitter": [], "overruns": 0, "ticks": 0},
             "view": {"steps": [], "jitter": [], "overruns": 0, "ticks": 0, "call_ms": [],
                      "dropped": 0, "frames_skipped": 0, "rrd_frames": 0}}
    per_round = []
    with tempfile.TemporaryDirectory() as tmp, make_robot(args.hz) as robot:
        run_teleop(robot, SineDevice(robot.action_dim), duration_s=1.0)  # warm up
        for r in range(args.rounds):
            for side in ("baseline", "view"):
                path = Path(tmp) / f"round{r}.rrd" if side == "view" else None
                steps, jitter, report, extra = one_round(robot, args.seconds, path, args.image_hz)
                s = sides[side]
                s["steps"] += steps
                s["jitter"] += jitter
                s["overruns"] += report.loop.overruns
                s["ticks"] += report.loop.ticks
                per_round.append({"side": side, "step_p50_ms": pct(steps, 50),
                                  "step_p99_ms": pct(steps, 99)})
                if side == "view":
                    s["call_ms"] += extra["call_ms"]
                    s["dropped"] += extra["counts"]["dropped"]
                    s["frames_skipped"] += extra["counts"]["frames_skipped"]
                    s["rrd_frames"] += sum(v for k, v in read_rrd(path)["entities"].items()
                                           if k.startswith("/cameras/"))
    out = {
        "loop_hz": args.hz, "cameras": "2 x 480x640 @ 30 fps", "image_hz": args.image_hz,
        "seconds_per_round": args.seconds, "rounds_per_side": args.rounds,
        "load1_start": round(load_start, 2), "load1_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    for side, s in sides.items():
        out[side] = {"ticks": s["ticks"], "step_p50_ms": pct(s["steps"], 50),
                     "step_p99_ms": pct(s["steps"], 99), "jitter_p99_ms": pct(s["jitter"], 99),
                     "overruns": s["overruns"]}
    v = sides["view"]
    out["view"] |= {"telemetry_call_p50_ms": pct(v["call_ms"], 50),
                    "telemetry_call_p99_ms": pct(v["call_ms"], 99),
                    "dropped": v["dropped"], "frames_logged": v["rrd_frames"],
                    "frames_skipped_ticks": v["frames_skipped"]}
    out["added_step_p50_ms"] = round(out["view"]["step_p50_ms"] - out["baseline"]["step_p50_ms"], 3)
    out["added_step_p99_ms"] = round(out["view"]["step_p99_ms"] - out["baseline"]["step_p99_ms"], 3)
    out["rounds"] = per_round
    print(json.dumps(out))


if __name__ == "__main__":
    main()
