"""Without a vendor SDK, drivers still construct, and connect() names the pip extra to install."""

from __future__ import annotations

import sys

import pytest

from tether.core.errors import MissingExtraError
from tether.robot.config import ArmConfig, CameraConfig
from tether.robot.drivers.dynamixel import DynamixelArm
from tether.robot.drivers.feetech import FeetechArm
from tether.robot.drivers.realsense import RealSenseCamera
from tether.robot.drivers.ur_rtde import URArm

MOTORS = [{"name": "a", "id": 1}]


@pytest.mark.parametrize(
    ("module", "extra", "make"),
    [
        ("dynamixel_sdk", "dynamixel", lambda: DynamixelArm.from_config(ArmConfig("a", "dynamixel", {"port": "/dev/null", "motors": MOTORS}))),
        ("scservo_sdk", "feetech", lambda: FeetechArm.from_config(ArmConfig("a", "feetech", {"port": "/dev/null", "motors": MOTORS}))),
        ("pyrealsense2", "realsense", lambda: RealSenseCamera.from_config(CameraConfig("c", "realsense"))),
        ("rtde_receive", "ur", lambda: URArm.from_config(ArmConfig("u", "ur_rtde", {"host": "127.0.0.2"}))),
    ],
)
def test_missing_sdk_names_the_extra(monkeypatch, module, extra, make):
    device = make()
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    with pytest.raises(MissingExtraError, match=rf"pip install 'tether\[{extra}\]'"):
        device.connect()
    assert not device.is_connected
