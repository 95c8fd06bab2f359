"""Dynamixel and Feetech arms through the vendors' real SDKs, against pty bus emulators."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tether.core.errors import ConfigError, DeviceError
from tether.robot.config import ArmConfig
from tether.robot.drivers.dynamixel import DynamixelArm
from tether.robot.drivers.feetech import FeetechArm
from tether.robot.emulators import DynamixelBusEmulator, FeetechBusEmulator
from tether.robot.testing.contract import ArmContract

pytest.importorskip("dynamixel_sdk")
pytest.importorskip("scservo_sdk")

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def motors(model: str, **overrides) -> list[dict]:
    out = [{"name": n, "id": i + 1, "model": model} for i, n in enumerate(JOINTS)]
    for motor in out:
        motor.update(overrides.get(motor["name"], {}))
    return out


# A generous reply timeout: the emulator shares 2 busy CPU cores with the test process.
TIMEOUT = {"packet_timeout_ms": 150.0}


def dxl_config(port: str, **params) -> ArmConfig:
    base = {"port": port, "motors": motors("xl330-m288")} | TIMEOUT
    base.update(params)
    return ArmConfig(name="follower", driver="dynamixel", params=base)


def sts_config(port: str, **params) -> ArmConfig:
    base = {"port": port, "motors": motors("sts3215")} | TIMEOUT
    base.update(params)
    return ArmConfig(name="follower", driver="feetech", params=base)


@pytest.fixture
def dxl_bus():
    with DynamixelBusEmulator(list(range(1, 7))) as bus:
        yield bus


@pytest.fixture
def sts_bus():
    with FeetechBusEmulator(list(range(1, 7))) as bus:
        yield bus


class TestDynamixelContract(ArmContract):
    @pytest.fixture
    def make_arm(self, dxl_bus):
        return lambda: DynamixelArm.from_config(dxl_config(dxl_bus.port))


class TestFeetechContract(ArmContract):
    @pytest.fixture
    def make_arm(self, sts_bus):
        return lambda: FeetechArm.from_config(sts_config(sts_bus.port))


# --- behaviour shared by both families ---------------------------------------------------------


@pytest.fixture(params=["dynamixel", "feetech"])
def family(request, dxl_bus, sts_bus):
    if request.param == "dynamixel":
        return dxl_bus, DynamixelArm, dxl_config
    return sts_bus, FeetechArm, sts_config


def test_ticks_map_to_radians_with_zero_and_direction(family):
    bus, cls, config = family
    overrides = {"shoulder_lift": {"zero": 1024, "direction": -1}}
    arm = cls.from_config(config(bus.port, motors=motors(_model(cls), **overrides)))
    bus.servo(1).move_to(2048 + 1024)  # a quarter turn forward
    bus.servo(2).move_to(1024 + 512)  # an eighth turn past zero, mirrored
    with arm:
        pos = arm.read().position
    assert pos[0] == pytest.approx(math.pi / 2, abs=1e-9)
    assert pos[1] == pytest.approx(-math.pi / 4, abs=1e-9)
    assert pos[2] == pytest.approx(0.0, abs=1e-9)


def test_connect_holds_the_present_pose_then_tracks_commands(family, wait_until):
    bus, cls, config = family
    for servo_id in range(1, 7):
        bus.servo(servo_id).move_to(2048 + 100 * servo_id)
    arm = cls.from_config(config(bus.port))
    with arm:
        # torque is on and the goal equals where the arm was: nothing moves on connect
        for servo_id in range(1, 7):
            servo = bus.servo(servo_id)
            assert servo.torque_enabled
            assert servo.get(servo.layout.goal_position) == 2048 + 100 * servo_id
        start = arm.read().position
        target = start + 0.2
        arm.command(target)
        expected = arm.to_ticks(target)
        # SYNC WRITE has no reply: give the emulator a moment to apply it
        wait_until(
            lambda: [bus.servo(i).get(bus.servo(i).layout.goal_position) for i in range(1, 7)]
            == expected.astype(int).tolist(),
            what=f"the goal registers to become {expected.astype(int).tolist()}",
        )

        def settled():
            state = arm.read()
            return state if np.allclose(state.position, target, atol=2e-3) else None

        state = wait_until(settled, what=f"the servos to settle at {np.round(target, 3)}")
        assert state.velocity is not None and state.effort is not None
    assert not bus.servo(1).torque_enabled  # torque_off_on_close


def test_leader_config_keeps_torque_off_and_refuses_commands(family):
    bus, cls, config = family
    leader = cls.from_config(config(bus.port, torque=False))
    with leader:
        assert not any(bus.servo(i).torque_enabled for i in range(1, 7))
        bus.servo(3).move_to(2048 + 512)  # the operator moves the elbow by hand
        assert leader.read().position[2] == pytest.approx(math.pi / 4)
        with pytest.raises(DeviceError, match="torque: false"):
            leader.command(np.zeros(6))


def test_missing_servo_is_named_on_connect(family):
    bus, cls, config = family
    bus.servo(4).responding = False
    arm = cls.from_config(config(bus.port, retries=0))
    with pytest.raises(DeviceError, match=r"wrist_flex \(id 4\)"):
        arm.connect()
    assert not arm.is_connected


def test_servo_that_stops_answering_mid_session_is_named(family):
    bus, cls, config = family
    with cls.from_config(config(bus.port, retries=0)) as arm:
        arm.read()
        bus.servo(5).responding = False
        with pytest.raises(DeviceError, match=r"\[5\]"):
            arm.read()
        bus.servo(5).responding = True
        assert arm.read().position.shape == (6,)  # recovers once the servo answers again


def test_unplugged_adapter_raises_device_error_and_close_still_works(family):
    bus, cls, config = family
    arm = cls.from_config(config(bus.port))
    arm.connect()
    arm.read()
    bus.stop()  # the pty goes away like a USB adapter pulled out
    with pytest.raises(DeviceError, match="unplugged"):
        arm.read()
    with pytest.raises(DeviceError, match="unplugged"):
        arm.command(arm.spec.home)
    arm.close()  # logs, does not raise
    assert not arm.is_connected


def test_corrupted_reply_is_retried_then_reported(family, wait_until):
    bus, cls, config = family
    with cls.from_config(config(bus.port)) as arm:
        bus.corrupt_replies = 1  # one damaged status packet: retried, the caller never sees it
        retried = arm.bus.retried
        assert arm.read().position.shape == (6,)
        assert arm.bus.retried == retried + 1
        bus.corrupt_replies = 10_000  # persistent damage: reported, not returned
        with pytest.raises(DeviceError, match="(?i)corrupt|incorrect|no status"):
            arm.read()
        bus.corrupt_replies = 0

        def reads_again():
            try:
                return arm.read().position.shape == (6,)
            except DeviceError:  # replies to the failed attempts may still be draining
                return False

        wait_until(reads_again, what="a clean read once the corruption stopped")


def test_wrong_model_and_wrong_baudrate_are_clear(family):
    bus, cls, config = family
    wrong = motors(_model(cls), gripper={"model": _other_model(cls)})
    with pytest.raises(DeviceError, match="gripper .*expected"):
        cls.from_config(config(bus.port, motors=wrong)).connect()
    slow = cls.from_config(config(bus.port, baudrate=57600, retries=0, packet_timeout_ms=20.0))
    with pytest.raises(DeviceError, match="57600"):
        slow.connect()


def test_missing_port_names_the_fix():
    arm = DynamixelArm.from_config(dxl_config("/dev/ttyDOES_NOT_EXIST"))
    with pytest.raises(DeviceError, match="find-ports"):
        arm.connect()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"motors": []}, "motors' is empty"),
        ({"motors": [{"name": "a", "id": 1}, {"name": "b", "id": 1}]}, "repeats"),
        ({"motors": [{"name": "a", "id": 1, "direction": 2}]}, "direction"),
        ({"motors": [{"name": "a", "id": 1, "model": "xq999"}]}, "Unknown Dynamixel servo model"),
        ({"baudrate": 123}, "baudrate 123"),
        ({"operating_mode": "teleport"}, "operating mode 'teleport'"),
        ({"gripper": "claw"}, "not a motor name"),
        ({"speed": 3}, "Unknown config key 'arms.follower.params.speed'"),
    ],
)
def test_bad_config_is_rejected_with_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        DynamixelArm.from_config(dxl_config("/dev/null", **params))


# --- Dynamixel specifics -----------------------------------------------------------------------


def test_dynamixel_hardware_error_alert_is_reported(dxl_bus):
    with DynamixelArm.from_config(dxl_config(dxl_bus.port)) as arm:
        dxl_bus.servo(2).hardware_error = 0x20  # overload
        with pytest.raises(DeviceError, match="hardware fault"):
            arm.bus.read(2, "present_position")


def test_dynamixel_operating_mode_is_written_with_torque_off(dxl_bus):
    params = {"operating_mode": "current_position", "motors": motors("xl330-m288", gripper={"mode": "current"})}
    with DynamixelArm.from_config(dxl_config(dxl_bus.port, **params)) as arm:
        assert [dxl_bus.servo(i).get(dxl_bus.servo(i).layout.operating_mode) for i in range(1, 7)] == [
            5, 5, 5, 5, 5, 0,
        ]
        # the emulator refuses EEPROM writes with torque on, exactly like the servo does
        with pytest.raises(DeviceError, match="0x07"):
            arm.bus.write(1, "operating_mode", 3)


def test_dynamixel_goal_outside_position_limits_is_refused(dxl_bus):
    with DynamixelArm.from_config(dxl_config(dxl_bus.port)) as arm:
        with pytest.raises(DeviceError, match="limit"):
            arm.bus.write(1, "goal_position", 5000)


def test_dynamixel_byte_stuffing_survives_a_sync_read(dxl_bus):
    """Current -1 then velocity -3 put FF FF FD on the wire: it must be stuffed and unstuffed."""
    with DynamixelArm.from_config(dxl_config(dxl_bus.port)) as arm:
        servo = dxl_bus.servo(1)
        servo.physics = False
        servo.set(servo.layout.present_effort, -1)
        servo.set(servo.layout.present_velocity, -3)
        servo.set(servo.layout.present_position, 2048 + 4096)
        state = arm.read()
    assert state.effort[0] == pytest.approx(-0.001)
    assert state.velocity[0] == pytest.approx(-3 * 0.229 * 2 * math.pi / 60)
    assert state.position[0] == pytest.approx(2 * math.pi)


def test_feetech_mode_change_unlocks_and_relocks_the_eeprom(sts_bus):
    sts_bus.servo(3).set(sts_bus.servo(3).layout.operating_mode, 1)  # left in velocity mode
    with FeetechArm.from_config(sts_config(sts_bus.port)):
        servo = sts_bus.servo(3)
        assert servo.get(servo.layout.operating_mode) == 0
        assert servo.read(55, 1) == b"\x01"  # Lock restored
        assert sts_bus.counts["inst_0x03"] >= 3  # unlock, mode, lock


def test_feetech_sign_magnitude_speed_and_load(sts_bus):
    with FeetechArm.from_config(sts_config(sts_bus.port)) as arm:
        servo = sts_bus.servo(2)
        servo.physics = False
        servo.set(servo.layout.present_velocity, -200)
        servo.set(servo.layout.present_effort, -300)
        state = arm.read()
    assert state.velocity[1] == pytest.approx(-200 * 2 * math.pi / 4096)
    assert state.effort[1] == pytest.approx(-0.3)


def _model(cls) -> str:
    return "xl330-m288" if cls is DynamixelArm else "sts3215"


def _other_model(cls) -> str:
    return "xm430-w350" if cls is DynamixelArm else "sts3250"
