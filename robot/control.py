"""One control step, shared by teleop, recording and rollout.

    read -> target -> safety -> act, or a tick without a target -> hand the row to a hook

Every loop that drives a robot makes the same decisions each tick, so they are made here once:

- a target goes through `Robot.act` (the safety layer), stamped with when it is meant for on
  the robot's clock (`t_target`; by default now), and what reached the arms is returned;
- no target (the device or policy has none this tick, or a device read failed) is a tick
  without a target, `Robot.tick()`: the arms keep their last safe command and the stale-target
  watchdog holds them once targets stop for `stale_after_s`. There is no other way to hold;
  on the twin in lockstep both advance simulated time by exactly one control period, so a row
  is always one period;
- a device read that fails with a DeviceError is a hold, reported to `on_device_error`; a
  device that was closed (DeviceClosedError) cannot come back, so it ends the loop.

What is read (a robot observation, or a recorder's per-stream sample) and where targets come
from (a teleop device, a policy's chunks) are the caller's, passed in as callables: this layer
knows neither teleop nor policies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from tether.core.errors import DeviceClosedError, DeviceError
from tether.robot.interfaces import Robot
from tether.robot.runtime import Tick

R = TypeVar("R")  # what one read returns: an Observation, or a recorder's Sample


@dataclass(frozen=True)
class ControlRow(Generic[R]):
    """What one control step read, asked for and sent: one control period of the episode."""

    tick: Tick
    reading: R
    target: np.ndarray | None  # the target asked for; None when there was none (a hold)
    sent: np.ndarray  # the command that reached the arms, after the safety layer

    @property
    def held(self) -> bool:
        """No new target this tick: the arms kept (or the watchdog held) their last command."""
        return self.target is None


class ControlStep(Generic[R]):
    """`step(tick) -> ControlRow`: one tick of any loop that drives `robot`.

    read(tick): take the observation (or a sample of every stream) for this tick.
    target(reading, tick): the target for this tick, or None for no target.
    t_target(tick): when the target is meant for, on the robot's clock (default `robot.now()`);
        a target older than the safety layer's `stale_after_s` is refused and the arms hold.
    on_row(row): the recorder hook, called with every row (held ones included).
    on_device_error(exc): a target read failed with a DeviceError: the tick holds and this is
        told; without it the error propagates.
    """

    def __init__(
        self,
        robot: Robot,
        read: Callable[[Tick], R],
        target: Callable[[R, Tick], np.ndarray | None],
        t_target: Callable[[Tick], float] | None = None,
        on_row: Callable[[ControlRow[R]], None] | None = None,
        on_device_error: Callable[[DeviceError], None] | None = None,
    ) -> None:
        self.robot = robot
        self.read = read
        self.target = target
        self.t_target = t_target
        self.on_row = on_row
        self.on_device_error = on_device_error
        self.holds = 0  # ticks without a target
        self.device_errors = 0  # ticks whose target read failed (counted in holds too)

    def __call__(self, tick: Tick) -> ControlRow[R]:
        reading = self.read(tick)
        target = self._target(reading, tick)
        if target is None:
            self.holds += 1
            sent = self.robot.tick()
        else:
            t_target = self.robot.now() if self.t_target is None else self.t_target(tick)
            sent = self.robot.act(target, t_target=t_target)
        row = ControlRow(tick, reading, target, np.asarray(sent))
        if self.on_row is not None:
            self.on_row(row)
        return row

    def _target(self, reading: R, tick: Tick) -> np.ndarray | None:
        try:
            target = self.target(reading, tick)
        except DeviceClosedError:
            raise  # closed for good: holding forever would hide it
        except DeviceError as exc:
            if self.on_device_error is None:
                raise
            self.device_errors += 1
            self.on_device_error(exc)
            return None
        return None if target is None else np.asarray(target, dtype=np.float64)
