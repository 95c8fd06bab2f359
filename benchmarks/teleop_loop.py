"""Leader-follower teleop at 50 Hz on emulated buses; prints one JSON object.

A Feetech SO-101 leader (torque off) drives a Dynamixel follower through LeaderTeleop and the
safety layer, paced by RateLoop. Reported: achieved rate, loop jitter, per-tick work
(observe + leader read + act), and how long the follower's goal register takes to reflect a step
of the leader (leader moved -> goal written), against the tick period as the baseline.

    python benchmarks/teleop_loop.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from tether.robot.config import ArmConfig
from tether.robot.drivers.dynamixel import DynamixelArm
from tether.robot.emulators import DynamixelBusEmulator, FeetechBusEmulator
from tether.robot.interfaces import Robot
from tether.robot.runtime import RateLoop
from tether.robot.safety import SafetyConfig
from tether.teleop.factory import make_teleop

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
TICKS = 4096 / (2 * math.pi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--hz", type=float, default=50.0)
    args = parser.parse_args()
    motors = [{"name": n, "id": i + 1} for i, n in enumerate(JOINTS)]
    with DynamixelBusEmulator(list(range(1, 7))) as follower_bus, FeetechBusEmulator(list(range(1, 7))) as leader_bus:
        follower = DynamixelArm.from_config(
            ArmConfig("follower", "dynamixel", {"port": follower_bus.port, "motors": motors, "packet_timeout_ms": 100.0})
        )
        robot = Robot({"follower": follower}, safety=SafetyConfig(max_step=0.2), fps=args.hz)
        teleop = make_teleop("leader", robot, {
            "leaders": [{"follower": "follower", "driver": "feetech",
                         "params": {"port": leader_bus.port, "torque": False, "motors": motors, "packet_timeout_ms": 100.0}}],
            "startup_speed": 2.0,
        })
        step_at: list[float] = []
        seen_at: list[float] = []
        state = {"pending": None, "level": 0.0}

        def tick(t) -> None:
            robot.act(teleop.next_target(robot.observe()))
            if state["pending"] is not None:
                goal = follower_bus.servo(1).get(follower_bus.servo(1).layout.goal_position)
                if abs(goal - (2048 + state["level"] * TICKS)) < 2:
                    seen_at.append(time.perf_counter() - state["pending"])
                    state["pending"] = None
            elif teleop.engaged and t.index % 10 == 0:
                state["level"] = 0.1 if state["level"] == 0.0 else 0.0  # a 0.1 rad step
                leader_bus.servo(1).move_to(2048 + state["level"] * TICKS)
                state["pending"] = time.perf_counter()
                step_at.append(state["pending"])

        with robot, teleop:
            stats = RateLoop(args.hz).run(tick, duration_s=args.seconds)
        retries = follower.bus.retried + teleop.leaders["follower"].bus.retried
    latency = np.array(seen_at) * 1e3
    period_ms = 1e3 / args.hz
    result = stats.as_dict() | {
        "leader_steps": len(step_at),
        "step_to_goal_p50_ms": round(float(np.percentile(latency, 50)), 2) if len(latency) else None,
        "step_to_goal_p99_ms": round(float(np.percentile(latency, 99)), 2) if len(latency) else None,
        "tick_period_ms": period_ms,
        "bus_retries": retries,
    }
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
