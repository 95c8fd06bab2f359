"""The one control step (tether.robot.control) every loop uses, and the twin's episode API.

On memory arms with a manual clock: a target goes through the safety layer stamped `t_target`,
no target is a tick without one (the watchdog holds once targets are stale), a failed device
read is a counted hold, a closed device ends the loop, and every row reaches the hook. On the
twin in lockstep: every row is exactly one control period of simulated time, holds included.
"""

from __future__ import annotations

import numpy as np
import pytest

from tether.core.errors import DeviceClosedError, DeviceError
from tether.robot.control import ControlRow, ControlStep
from tether.robot.episodic import EpisodicRobot, as_episodic
from tether.robot.interfaces import Robot
from tether.robot.memory import ManualClock, MemoryArm
from tether.robot.runtime import RateLoop, Tick
from tether.robot.safety import SafetyConfig

FPS = 50.0


def memory_robot() -> tuple[Robot, ManualClock]:
    clock = ManualClock()
    arm = MemoryArm(clock=clock, time_constant_s=0.0)
    robot = Robot({"arm": arm}, safety=SafetyConfig(stale_after_s=0.1, max_velocity=10.0),
                  fps=FPS, clock=clock, simulated_time=True)
    robot.connect()
    return robot, clock


def run(robot, clock, targets, **kwargs) -> tuple[list[ControlRow], ControlStep]:
    """Drive `robot` through ControlStep for len(targets) ticks; targets[i] is tick i's target,
    None (no target), or an exception the device raises."""
    rows: list[ControlRow] = []

    def target(observation, tick: Tick):
        value = targets[tick.index]
        if isinstance(value, BaseException):
            raise value
        return value

    control = ControlStep(robot, read=lambda tick: robot.observe(), target=target,
                          on_row=rows.append, **kwargs)

    def step(tick):
        control(tick)
        clock.advance(1.0 / FPS)

    RateLoop(FPS, realtime=False).run(step, max_ticks=len(targets))
    return rows, control


def test_a_target_goes_through_safety_and_no_target_is_a_tick_of_the_watchdog():
    robot, clock = memory_robot()
    goal = np.full(6, 0.1)
    targets = [goal, goal, None, None, None, None, None, None, goal]
    rows, control = run(robot, clock, targets)
    assert [r.held for r in rows] == [t is None for t in targets]
    assert control.holds == 6 and control.device_errors == 0
    np.testing.assert_allclose(rows[1].sent, goal)  # within the speed limit: passed through
    np.testing.assert_allclose(rows[2].sent, goal)  # no target: the last safe command again
    assert robot.safety_counts().get("watchdog_hold", 0) >= 1, robot.safety_counts()
    assert [r.tick.index for r in rows] == list(range(len(targets)))
    assert all(r.reading.state.shape == (6,) for r in rows)


def test_t_target_stamps_the_target_and_a_late_one_is_refused():
    robot, clock = memory_robot()
    goal = np.full(6, 0.1)
    rows, _ = run(robot, clock, [goal, goal], t_target=lambda tick: clock() - 1.0)
    np.testing.assert_allclose(rows[-1].sent, 0.0)  # a second old: refused, the arm holds home
    assert robot.safety_counts().get("stale_target", 0) == 2, robot.safety_counts()


def test_a_failed_device_read_holds_and_is_counted_but_a_closed_device_ends_the_loop():
    robot, clock = memory_robot()
    seen: list[DeviceError] = []
    goal = np.full(6, 0.05)
    rows, control = run(robot, clock, [goal, DeviceError("bus timeout"), goal],
                        on_device_error=seen.append)
    assert [r.held for r in rows] == [False, True, False]
    assert control.device_errors == 1 and control.holds == 1 and len(seen) == 1
    with pytest.raises(DeviceClosedError):
        run(robot, clock, [goal, DeviceClosedError("unplugged")], on_device_error=seen.append)
    with pytest.raises(DeviceError, match="no handler"):
        run(robot, clock, [DeviceError("no handler")])


def test_the_twin_is_an_episodic_robot_and_hardware_is_not():
    from tether.robot.factory import make_robot

    twin = make_robot("twin:lift", ["twin_params.cameras=[]"])
    assert isinstance(twin, EpisodicRobot) and as_episodic(twin) is twin
    robot, _ = memory_robot()
    assert as_episodic(robot) is None
    twin.close()


@pytest.mark.parametrize("fps", [30.0, 50.0])
def test_on_the_twin_in_lockstep_every_row_is_one_control_period_holds_included(fps):
    """The twin's simulated time moves by exactly 1/fps between consecutive rows, whether the
    row sent a target or held (no target, or a device read that failed)."""
    from tether.robot.factory import make_robot

    twin = make_robot("twin:lift", [f"fps={fps:g}", "twin_params.width=64",
                                     "twin_params.height=48"])
    pattern = ["go", None, "go", "go", DeviceError("flaky bus"), None, None, "go"] * 3
    with twin:
        twin.reset(0)
        home = twin.home.copy()

        def target(observation, tick):
            value = pattern[tick.index]
            if isinstance(value, BaseException):
                raise value
            return None if value is None else home + 0.01 * tick.index

        times: list[float] = []
        frames: list[float] = []

        def on_row(row: ControlRow) -> None:
            times.append(row.reading.joints["arm"].t_device)
            frames.append(row.reading.frames["top"].t_device)

        control = ControlStep(twin, read=lambda tick: twin.observe(), target=target,
                              on_row=on_row, on_device_error=lambda exc: None)
        RateLoop(fps, realtime=False).run(control, max_ticks=len(pattern))
        sim_end = twin.sim_time
        steps = twin.steps
    assert control.holds == sum(v is None or isinstance(v, BaseException) for v in pattern)
    np.testing.assert_allclose(np.diff(times), 1.0 / fps, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.diff(frames), 1.0 / fps, rtol=0, atol=1e-9)
    assert steps == len(pattern)
    assert sim_end == pytest.approx(len(pattern) / fps, abs=1e-9)
