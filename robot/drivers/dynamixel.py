"""Dynamixel arms (protocol 2.0, X-series): ALOHA ViperX/WidowX, Koch, GELLO-style leaders.

Config (`driver: dynamixel`), see configs/koch_leader.yaml and configs/aloha.yaml:

    params:
      port: /dev/ttyDXL_follower     # a udev symlink, see docs/hardware.md
      baudrate: 1000000
      operating_mode: current_position   # position | extended_position | current_position | velocity
      motors:
        - {name: shoulder_pan, id: 1, model: xl430-w250, zero: 2048, direction: 1}
        - {name: gripper, id: 6, model: xl330-m288, mode: current_position, lower: -0.2, upper: 1.6}

Present current, velocity and position (addresses 126-135) come back in one SYNC READ; goals go
out in one SYNC WRITE. Timestamps: the servos have no clock; `t_host` is the host's monotonic
time of the read (see servo_bus), `t_device` None. Tested against tether.robot.emulators.DynamixelBusEmulator through the
real dynamixel_sdk.
"""

from __future__ import annotations

import math

from tether.robot.drivers.servo_bus import BusDialect, Field, ModelInfo, ServoArm

DYNAMIXEL = BusDialect(
    name="Dynamixel",
    sdk_module="dynamixel_sdk",
    extra="dynamixel",
    baudrates=(9600, 57600, 115200, 1_000_000, 2_000_000, 3_000_000, 4_000_000),
    fields={
        "model_number": Field(0, 2),
        "id": Field(7, 1),
        "baud_rate": Field(8, 1),
        "operating_mode": Field(11, 1),
        "homing_offset": Field(20, 4, "twos"),
        "current_limit": Field(38, 2),
        "max_position_limit": Field(48, 4, "twos"),
        "min_position_limit": Field(52, 4, "twos"),
        "torque_enable": Field(64, 1),
        "hardware_error_status": Field(70, 1),
        "position_p_gain": Field(84, 2),
        "goal_current": Field(102, 2, "twos"),
        "goal_velocity": Field(104, 4, "twos"),
        "profile_velocity": Field(112, 4),
        "goal_position": Field(116, 4, "twos"),
        "present_effort": Field(126, 2, "twos"),  # Present Current
        "present_velocity": Field(128, 4, "twos"),
        "present_position": Field(132, 4, "twos"),
        "present_temperature": Field(146, 1),
    },
    # effort_unit: amperes per raw unit of Present Current (e-manual, per model); the XL430 has
    # no current sensor and reports Present Load at the same address: effort is then a fraction
    # of its maximum torque.
    models={
        "xl330-m077": ModelInfo(1190, 0.001),
        "xl330-m288": ModelInfo(1200, 0.001),
        "xc330-m288": ModelInfo(1240, 0.001),
        "xl430-w250": ModelInfo(1060, 0.001),  # no current sensor: Present Load, 0.1 % units
        "xm430-w350": ModelInfo(1020, 0.00269),
        "xh430-w350": ModelInfo(1010, 0.00269),
        "xm540-w270": ModelInfo(1120, 0.00269),
    },
    default_model="xl330-m288",
    velocity_unit=0.229 * 2 * math.pi / 60.0,  # 0.229 rpm per unit
    operating_modes={
        "current": 0,
        "velocity": 1,
        "position": 3,
        "extended_position": 4,
        "current_position": 5,
        "pwm": 16,
    },
    state_fields=("present_effort", "present_velocity", "present_position"),
    packet_handler_arg=2.0,
)


class DynamixelArm(ServoArm):
    """A Dynamixel protocol 2.0 arm; see the module docstring for its config."""

    dialect = DYNAMIXEL
