"""The twin's arm and camera pass the same contract suite as hardware drivers."""

from __future__ import annotations

import pytest

from tether.robot.config import RobotConfig
from tether.robot.testing.contract import ArmContract, CameraContract
from tether.robot.twin import make_twin_robot


@pytest.fixture(scope="module")
def lift_robot():
    return make_twin_robot(RobotConfig(twin_task="lift", fps=50, twin_params={"cameras": ["top"]}))


@pytest.fixture(scope="module")
def aloha_robot():
    return make_twin_robot(
        RobotConfig(twin_task="transfer_cube", fps=50, twin_params={"cameras": ["left_wrist"]})
    )


class TestTwinArmSO101(ArmContract):
    @pytest.fixture
    def make_arm(self, lift_robot):
        def make():
            lift_robot.reset(0)
            arm = lift_robot.raw_arms["arm"]
            arm.close()
            return arm

        return make


class TestTwinArmViperX(ArmContract):
    @pytest.fixture
    def make_arm(self, aloha_robot):
        def make():
            aloha_robot.reset(0)
            arm = aloha_robot.raw_arms["right"]
            arm.close()
            return arm

        return make


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
