"""The contract suite run against the in-memory reference devices, and the Robot wrapper."""

import numpy as np
import pytest

from tether.core.errors import DeviceClosedError
from tether.robot.interfaces import CameraSpec, Robot, image_key
from tether.robot.memory import ManualClock, MemoryArm, MemoryCamera
from tether.robot.safety import SafetyConfig
from tether.robot.testing.contract import ArmContract, CameraContract


class TestMemoryCamera(CameraContract):
    @pytest.fixture
    def make_camera(self):
        return lambda: MemoryCamera(CameraSpec("cam", width=32, height=24, fps=100.0))


class TestMemoryArm(ArmContract):
    @pytest.fixture
    def make_arm(self):
        return lambda: MemoryArm()


def make_robot() -> Robot:
    return Robot(
        arms={"left": MemoryArm(), "right": MemoryArm()},
        cameras={"top": MemoryCamera(CameraSpec("top", 32, 24, 60.0))},
        safety=SafetyConfig(max_step=0.1),
        fps=30,
        clock=ManualClock(),  # the safety layer's time: the test advances it
    )


def test_robot_observe_and_act_through_safety():
    with make_robot() as robot:
        obs = robot.observe()
        arrays = obs.to_arrays()
        assert arrays["state"].shape == (12,) and arrays["state"].dtype == np.float32
        assert arrays[image_key("top")].shape == (24, 32, 3)
        assert set(obs.stream_times()) == {"state.left", "state.right", "image.top"}
        robot.clock.advance(0.2)  # 1 rad/s default x 0.2 s, capped per call by max_step
        sent = robot.act(np.full(12, 3.0))
        np.testing.assert_allclose(sent, 0.1)  # rate limited from home (zeros)
        assert robot.safety_counts()["rate_limited"] == 2
        robot.estop()
        np.testing.assert_allclose(robot.act(np.zeros(12)), 0.1)
        with pytest.raises(ValueError, match="shape"):
            robot.act(np.zeros(3))


def test_robot_refuses_io_when_closed():
    robot = make_robot()
    with pytest.raises(DeviceClosedError):
        robot.observe()
