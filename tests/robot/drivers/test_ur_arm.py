"""URArm up to the ur_rtde call: config checks, target checks, and the SDK's real connect failure.

No UR simulator (URSim) is available here and RTDEControlInterface needs a controller that runs
its uploaded script, so streaming servoJ against a peer is not tested; see docs/hardware.md.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tether.errors import ConfigError, DeviceClosedError, DeviceError
from tether.robot.config import ArmConfig
from tether.robot.drivers.ur_rtde import URArm

pytest.importorskip("rtde_receive")


def config(**params) -> ArmConfig:
    return ArmConfig(name="ur5e", driver="ur_rtde", params={"host": "127.0.0.1"} | params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lookahead_time": 0.5}, r"lookahead_time must be in \[0.03, 0.2\]"),
        ({"gain": 50}, r"gain must be in \[100, 2000\]"),
        ({"servo_period_s": 1.0}, "servo_period_s"),
        ({"home": [0, 0, 0]}, "'home' needs 6 values"),
        ({"hostname": "x"}, "Unknown config key 'arms.ur5e.params.hostname'"),
    ],
)
def test_bad_config_is_rejected(params, message):
    with pytest.raises(ConfigError, match=message):
        URArm.from_config(config(**params))


def test_spec_is_a_six_joint_arm_without_gripper():
    arm = URArm.from_config(config())
    assert arm.spec.joint_names == ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
    assert arm.spec.gripper_index is None
    np.testing.assert_allclose(arm.spec.home, [0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0])


def test_targets_are_checked_before_servoj():
    arm = URArm.from_config(config(servo_period_s=0.02, max_joint_speed=1.0))
    home = arm.spec.home
    np.testing.assert_array_equal(arm.check_target(home + 0.02, home), home + 0.02)
    with pytest.raises(DeviceError, match="exceeds max_joint_speed"):
        arm.check_target(home + 0.03, home)
    with pytest.raises(DeviceError, match="outside the joint limits"):
        arm.check_target(home + 7.0, None)
    with pytest.raises(ValueError, match="6 finite"):
        arm.check_target(np.full(6, np.nan), None)


def test_no_controller_gives_a_clear_error_from_the_real_sdk():
    arm = URArm.from_config(config())
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="could not reach the UR controller at 127.0.0.1"):
        arm.connect()
    assert time.monotonic() - t0 < 10.0
    assert not arm.is_connected
    with pytest.raises(DeviceClosedError):
        arm.read()
