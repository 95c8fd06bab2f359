"""Feetech STS arms (SO-100 / SO-101 follower and leader) through feetech-servo-sdk.

Config (`driver: feetech`), see configs/so101_leader.yaml:

    params:
      port: /dev/ttySO101_follower
      baudrate: 1000000
      motors:
        - {name: shoulder_pan, id: 1, model: sts3215, zero: 2048, direction: 1}
        ...
        - {name: gripper, id: 6, lower: 0.0, upper: 1.7}

Present position, speed and load (addresses 56-61) come back in one SYNC READ. Speed and load
are sign-magnitude (sign in bit 15 and bit 10). Timestamps: the servos have no clock; `t_host`
is the host's monotonic time of the read (see servo_bus), `t_device` None. Tested against
tether.robot.emulators.FeetechBusEmulator through the real scservo_sdk.
"""

from __future__ import annotations

import math

from tether.robot.drivers.servo_bus import BusDialect, Field, ModelInfo, ServoArm

FEETECH = BusDialect(
    name="Feetech",
    sdk_module="scservo_sdk",
    extra="feetech",
    baudrates=(38400, 57600, 115200, 128000, 250000, 500000, 1_000_000),
    fields={
        "model_number": Field(3, 2),
        "id": Field(5, 1),
        "baud_rate": Field(6, 1),
        "min_position_limit": Field(9, 2),
        "max_position_limit": Field(11, 2),
        "operating_mode": Field(33, 1),
        "torque_enable": Field(40, 1),
        "acceleration": Field(41, 1),
        "goal_position": Field(42, 2, "bit15"),
        "goal_speed": Field(46, 2, "bit15"),
        "lock": Field(55, 1),
        "present_position": Field(56, 2, "bit15"),
        "present_velocity": Field(58, 2, "bit15"),  # steps/s
        "present_effort": Field(60, 2, "bit10"),  # load, 0.1 % of max torque
        "present_voltage": Field(62, 1),
        "present_temperature": Field(63, 1),
        "present_current": Field(69, 2, "bit15"),
    },
    models={
        "sts3215": ModelInfo(777, 0.001),  # load in 0.1 % -> fraction of max torque
        "sts3250": ModelInfo(2825, 0.001),
    },
    default_model="sts3215",
    velocity_unit=2 * math.pi / 4096,  # steps/s -> rad/s
    operating_modes={"position": 0, "velocity": 1, "pwm": 2, "step": 3},
    state_fields=("present_position", "present_velocity", "present_effort"),
    packet_handler_arg=0,  # protocol_end 0: little-endian words (STS series)
    eeprom_lock=("lock", 0, 1),  # STS keeps EEPROM writes only while 'Lock' is 0
)


class FeetechArm(ServoArm):
    """A Feetech STS arm; see the module docstring for its config."""

    dialect = FEETECH
