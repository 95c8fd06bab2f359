"""Live teleoperation without recording: a device drives a robot at its control rate.

`tether teleop` uses it to check a setup (leader calibration, SpaceMouse axes, safety limits)
before recording. Every target goes through `Robot.act`, i.e. the safety layer; a device that
has no input this tick (`None`) makes the robot hold its last safe command.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from tether.robot.interfaces import Robot
from tether.robot.runtime import LoopStats, RateLoop, Tick
from tether.teleop.base import TeleopDevice


@dataclass(frozen=True)
class TeleopReport:
    loop: LoopStats
    safety: dict[str, int]
    holds: int  # ticks where the device gave no target

    def as_dict(self) -> dict:
        return {"loop": self.loop.as_dict(), "safety": dict(self.safety), "holds": self.holds}


def run_teleop(
    robot: Robot,
    device: TeleopDevice,
    duration_s: float | None = None,
    max_ticks: int | None = None,
    realtime: bool = True,
    on_tick: Callable[[Tick], None] | None = None,
    stop: threading.Event | None = None,
) -> TeleopReport:
    """Drive `robot` from `device` until `duration_s`, `max_ticks`, `stop` is set, or the
    device reports `episode_done`. Robot and device must be connected.
    """
    holds = 0
    loop = RateLoop(robot.fps, realtime=realtime)

    def step(tick: Tick) -> bool:
        nonlocal holds
        target = device.next_target(robot.observe())
        if target is None:
            holds += 1
            robot.hold()
        else:
            robot.act(target)
        if on_tick is not None:
            on_tick(tick)
        return not device.episode_done and not (stop is not None and stop.is_set())

    stats = loop.run(step, max_ticks=max_ticks, duration_s=duration_s)
    return TeleopReport(stats, robot.safety_counts(), holds)
