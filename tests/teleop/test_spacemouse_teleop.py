"""SpaceMouse teleop: raw HID reports through pyspacemouse's own parser, IK on the twin.

The seam is below pyspacemouse: a replayed HID report source stands in for easyhid's hidraw
device (there is no SpaceMouse on this machine); pyspacemouse's SpaceMouseDevice, its device
spec table and axis convention are the real ones.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tether.core.errors import ConfigError, DeviceError
from tether.robot.factory import make_robot
from tether.teleop.factory import make_teleop
from tether.teleop.ik import twin_arm_ik
from tether.teleop.spacemouse import SpaceMouseParams, SpaceMouseTeleop

pytest.importorskip("pyspacemouse")
from pyspacemouse.config_helpers import apply_axis_convention  # noqa: E402
from pyspacemouse.device import SpaceMouseDevice  # noqa: E402
from pyspacemouse.loader import get_device_specs  # noqa: E402
from pyspacemouse.types import AxisConvention  # noqa: E402


class ReplayHID:
    """HID reports queued by the test, read like a non-blocking hidraw device."""

    product_string = "SpaceNavigator (replay)"
    manufacturer_string = "3Dconnexion"
    release_number = 0x0432
    serial_number = ""

    def __init__(self) -> None:
        self.reports: list[bytes] = []

    def push(self, report: bytes) -> None:
        self.reports.append(report)

    def open(self) -> None: ...
    def close(self) -> None: ...
    def set_nonblocking(self, value: bool) -> None: ...

    def read(self, size: int) -> bytes:
        return self.reports.pop(0)[:size] if self.reports else b""


def translation(x=0, y=0, z=0) -> bytes:
    return bytes([1]) + struct.pack("<hhh", x, y, z)


def buttons(left=False, right=False) -> bytes:
    return bytes([3, int(left) | int(right) << 1])


@pytest.fixture
def twin():
    robot = make_robot("twin:lift", ["twin_params.cameras=[]"])
    with robot:
        robot.reset(seed=0)
        yield robot


@pytest.fixture
def mouse():
    spec = apply_axis_convention(get_device_specs()["SpaceNavigator"], AxisConvention.HID_Z_UP)
    hid = ReplayHID()
    device = SpaceMouseDevice(spec, hid)
    device.open()
    return device, hid


def tcp(robot) -> np.ndarray:
    ik, _ = twin_arm_ik(robot)
    return ik.forward(robot.observe().state.astype(np.float64)[:5])[0]


def run(robot, teleop, ticks):
    for _ in range(ticks):
        robot.act(teleop.next_target(robot.observe()))


def test_full_deflection_moves_at_linear_speed(twin, mouse):
    device, hid = mouse
    teleop = SpaceMouseTeleop(twin, SpaceMouseParams(linear_speed=0.05), mouse=device)
    with teleop:
        run(twin, teleop, 3)
        start = tcp(twin)
        # HID_Z_UP: +x raw is +x; raw z is inverted by the convention (HID z points down)
        hid.push(translation(x=350))
        ticks = int(0.4 * twin.fps)
        run(twin, teleop, ticks)
        hid.push(translation())
        run(twin, teleop, int(1.0 * twin.fps))
        moved = tcp(twin) - start
    expected = 0.05 * ticks / twin.fps  # 2 cm
    np.testing.assert_allclose(moved, [expected, 0, 0], atol=3e-3)


def test_small_deflection_inside_the_deadzone_does_nothing(twin, mouse):
    device, hid = mouse
    teleop = SpaceMouseTeleop(twin, SpaceMouseParams(deadzone=0.1), mouse=device)
    with teleop:
        run(twin, teleop, 3)
        start = tcp(twin)
        hid.push(translation(x=20, y=-25, z=30))  # ~0.06-0.09 of full scale: sensor noise
        run(twin, teleop, int(0.5 * twin.fps))
        assert np.abs(tcp(twin) - start).max() < 1e-3
        target = teleop.read_input()
    np.testing.assert_array_equal(target.twist, np.zeros(6))


def test_buttons_close_and_open_the_gripper(twin, mouse):
    device, hid = mouse
    teleop = SpaceMouseTeleop(twin, SpaceMouseParams(gripper_speed=2.0), mouse=device)
    g = twin.raw_arms["arm"].spec.gripper_index
    with teleop:
        run(twin, teleop, 2)
        opened = twin.observe().state[g]
        hid.push(buttons(left=True))
        run(twin, teleop, int(0.5 * twin.fps))
        hid.push(buttons())
        run(twin, teleop, int(0.3 * twin.fps))
        closed = twin.observe().state[g]
    assert opened - closed > 0.5


def test_config_errors_and_missing_device(twin):
    with pytest.raises(ConfigError, match="axis_signs"):
        make_teleop("spacemouse", twin, {"axis_signs": [1, 1]})
    with pytest.raises(ConfigError, match="deadzone"):
        make_teleop("spacemouse", twin, {"deadzone": 1.5})
    teleop = make_teleop("spacemouse", twin, {})
    with pytest.raises(DeviceError, match="SpaceMouse"):
        teleop.connect()  # no HID device here: pyspacemouse finds none
