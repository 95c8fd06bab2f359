"""Live teleoperation without recording: a device drives a robot at its control rate.

`tether teleop` uses it to check a setup (leader calibration, SpaceMouse axes, safety limits)
before recording. Each tick is the shared control step (tether.robot.control): every target
goes through `Robot.act`, i.e. the safety layer, stamped with the time it was produced; a tick
without a new target (`None`, or a device read that failed) calls `Robot.tick()`, so the
stale-target watchdog holds the arm once targets stop for `stale_after_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tether.core.errors import DeviceError
from tether.core.telemetry import NullTelemetry, Telemetry
from tether.robot.control import ControlStep
from tether.robot.interfaces import Robot
from tether.robot.runtime import LoopStats, RateLoop, Tick
from tether.robot.targets import TeleopDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeleopReport:
    loop: LoopStats
    safety: dict[str, int]
    holds: int  # ticks where the device gave no target
    device_errors: int = 0  # ticks where reading the device failed (counted in holds too)

    def as_dict(self) -> dict:
        return {
            "loop": self.loop.as_dict(),
            "safety": dict(self.safety),
            "holds": self.holds,
            "device_errors": self.device_errors,
        }


def run_teleop(
    robot: Robot,
    device: TeleopDevice,
    duration_s: float | None = None,
    max_ticks: int | None = None,
    realtime: bool = True,
    on_tick: Callable[[Tick], None] | None = None,
    stop: threading.Event | None = None,
    telemetry: Telemetry | None = None,
) -> TeleopReport:
    """Drive `robot` from `device` until `duration_s`, `max_ticks`, `stop` is set, or the
    device reports `episode_done`. Robot and device must be connected.

    `realtime=False` (unpaced) is only allowed on a robot whose time is simulated. A device
    whose read fails (DeviceError: a leader's bus times out, a cable is pulled) gives no target
    that tick: the arm holds through the watchdog instead of the loop dying with the arm in an
    unknown state; the errors are counted and logged. A device that was closed
    (DeviceClosedError) ends the loop with that error: it will not come back. `telemetry`
    (a live view, --view) is told every tick without the loop waiting on it.
    """
    view = telemetry or NullTelemetry()
    if not realtime:
        robot.require_simulated_time("--fast (realtime=False)")
    last_log = -1e9
    loop = RateLoop(robot.fps, realtime=realtime)

    def device_failed(exc: DeviceError) -> None:
        nonlocal last_log
        if time.monotonic() - last_log >= 1.0:  # one line per second while it lasts
            last_log = time.monotonic()
            log.warning(
                "teleop device failed (%d ticks so far), arm holding: %s", control.device_errors, exc
            )

    control = ControlStep(
        robot,
        read=lambda tick: robot.observe(),
        target=lambda observation, tick: device.next_target(observation),
        on_device_error=device_failed,
    )

    def step(tick: Tick) -> bool:
        row = control(tick)
        view.tick(tick, row.reading, row.target, row.sent, robot)
        if on_tick is not None:
            on_tick(tick)
        return not device.episode_done and not (stop is not None and stop.is_set())

    stats = loop.run(step, max_ticks=max_ticks, duration_s=duration_s)
    return TeleopReport(stats, robot.safety_counts(), control.holds, control.device_errors)
