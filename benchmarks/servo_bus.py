"""Servo bus round trips through the real SDKs against the pty emulators; prints one JSON object.

Baseline (same run): reading the same 6 servos with 6 unicast READs, as naive drivers do.
On real hardware add wire time and the USB adapter's latency timer (set it to 1 ms).

    python benchmarks/servo_bus.py [--iterations 500]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tether.robot.config import ArmConfig
from tether.robot.drivers.dynamixel import DynamixelArm
from tether.robot.drivers.feetech import FeetechArm
from tether.robot.emulators import DynamixelBusEmulator, FeetechBusEmulator

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def measure(name: str, emulator_cls, arm_cls, iterations: int) -> dict:
    with emulator_cls(list(range(1, 7))) as bus:
        motors = [{"name": n, "id": i + 1} for i, n in enumerate(JOINTS)]
        arm = arm_cls.from_config(ArmConfig("arm", name, {"port": bus.port, "motors": motors, "packet_timeout_ms": 200.0}))
        with arm:
            arm.read()
            sync, unicast, write = [], [], []
            for _ in range(iterations):
                t0 = time.perf_counter()
                state = arm.read()
                sync.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for servo_id in arm.ids:
                    arm.bus.read(servo_id, "present_position")
                unicast.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                arm.command(state.position)
                write.append(time.perf_counter() - t0)
            retried = arm.bus.retried
    return {
        "sync_read_6_servos": percentiles(sync),
        "unicast_read_6_servos_baseline": percentiles(unicast),
        "sync_write_6_servos": percentiles(write),
        "speedup_p50": round(float(np.median(unicast) / np.median(sync)), 2),
        "retries": retried,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=500)
    args = parser.parse_args()
    result = {
        "iterations": args.iterations,
        "dynamixel": measure("dynamixel", DynamixelBusEmulator, DynamixelArm, args.iterations),
        "feetech": measure("feetech", FeetechBusEmulator, FeetechArm, args.iterations),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
