"""The twin's arm and camera pass the same contract suite as hardware drivers."""

from __future__ import annotations

import pytest

from tether.robot.config import RobotConfig
from tether.robot.testing.contract import ArmContract, CameraContract
from tether.robot.twin import make_twin_robot


def _robot(task: str, cameras: list[str]):
    return make_twin_robot(RobotConfig(twin_task=task, fps=50, twin_params={"cameras": cameras}))


@pytest.fixture(scope="module")
def lift_robot():
    return _robot("lift", ["top"])


@pytest.fixture(scope="module")
def aloha_robot():
    return _robot("transfer_cube", ["left_wrist"])


def _fresh_arm(robot, name: str):
    """A fresh episode (arm at home), then hand the raw arm to the contract unconnected."""
    robot.close()
    robot.reset(0)
    robot.close()
    return robot.raw_arms[name]


class TestTwinArmSO101(ArmContract):
    @pytest.fixture
    def make_arm(self):
        robot = _robot("lift", [])
        return lambda: _fresh_arm(robot, "arm")


class TestTwinArmViperX(ArmContract):
    @pytest.fixture
    def make_arm(self):
        robot = _robot("transfer_cube", [])
        return lambda: _fresh_arm(robot, "right")


class TestTwinCamera(CameraContract):
    @pytest.fixture
    def make_camera(self, lift_robot):
        def make():
            cam = lift_robot.cameras["top"]
            cam.close()
            return cam

        yield make
        lift_robot.cameras["top"].close()


class TestTwinWristCamera(CameraContract):
    @pytest.fixture
    def make_camera(self, aloha_robot):
        def make():
            cam = aloha_robot.cameras["left_wrist"]
            cam.close()
            return cam

        yield make
        aloha_robot.cameras["left_wrist"].close()
