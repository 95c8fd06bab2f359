"""URArm: config and target checks, the receive side against an RTDE peer, and the SDK's own
connection failures.

No UR simulator (URSim) is available here and RTDEControlInterface needs a controller that runs
its uploaded script, so streaming servoJ is tested only up to the SDK call; see docs/hardware.md.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tether.core.errors import ConfigError, DeviceClosedError, DeviceError
from tether.robot.config import ArmConfig
from tether.robot.drivers.ur_rtde import URArm

pytest.importorskip("rtde_receive")


def config(**params) -> ArmConfig:
    return ArmConfig(name="ur5e", driver="ur_rtde", params={"host": "127.0.0.1", **params})


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
    arm = URArm.from_config(config(host="127.0.0.2"))  # loopback, but nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="could not reach the UR controller at 127.0.0.2"):
        arm.connect()
    assert time.monotonic() - t0 < 10.0
    assert not arm.is_connected
    with pytest.raises(DeviceClosedError):
        arm.read()


# --- the receive side against an RTDE peer speaking the real protocol --------------------------


@pytest.fixture(scope="module")
def rtde_peer():
    """tether.robot.emulators.rtde in its own process (ur_rtde holds the GIL while connecting)."""
    import json
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.robot.emulators.rtde", "--max-seconds", "120"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    banner = proc.stdout.readline()
    if "RTDE peer" not in banner:
        proc.kill()
        pytest.skip("port 30004 is taken on this machine")

    def send(update: dict) -> None:
        proc.stdin.write(json.dumps(update) + "\n")
        proc.stdin.flush()
        time.sleep(0.05)  # a few data packages at 500 Hz

    yield send
    proc.stdin.write("quit\n")
    proc.stdin.flush()
    proc.wait(timeout=10)


class TestURReadOnlyContract:
    """The contract's read-side tests, on a read-only URArm fed by the RTDE peer."""

    @pytest.fixture
    def make_arm(self, rtde_peer):
        return lambda: URArm.from_config(config(read_only=True))

    from tether.robot.testing.contract import ArmContract as _C

    test_connect_and_close_are_idempotent = _C.test_connect_and_close_are_idempotent
    test_state_matches_spec = _C.test_state_matches_spec
    test_timestamps_are_monotonic = _C.test_timestamps_are_monotonic
    test_read_does_not_block = _C.test_read_does_not_block


def test_controller_clock_restart_resynchronises_host_time(rtde_peer, wait_until):
    """The controller's clock starts again (a reboot): t_host stays on the host clock."""
    with URArm.from_config(config(read_only=True)) as arm:
        wait_until(lambda: arm.read().t_device > 1.0, what="a second of controller time")
        before = arm.read()
        rtde_peer({"restart_clock": True})
        wait_until(lambda: arm.read().t_device < before.t_device - 0.5, what="the restarted clock")
        after = arm.read()
        assert arm.clock.resets == 1
        assert before.t_host < after.t_host <= time.monotonic()
        assert after.t_host - after.t_device > before.t_host - before.t_device + 0.5


def test_read_only_arm_reads_joints_controller_time_and_stops(rtde_peer, wait_until):
    q = [0.1, -1.2, 1.3, -0.4, -1.5, 0.6]
    rtde_peer({"actual_q": q, "actual_qd": [0.01] * 6, "safety_status_bits": 1})
    with URArm.from_config(config(read_only=True)) as arm:
        # the peer is another process: poll until its update reaches us
        wait_until(lambda: np.allclose(arm.read().position, q), what="the peer's joint positions")
        first = arm.read()
        np.testing.assert_allclose(first.position, q)
        np.testing.assert_allclose(first.velocity, [0.01] * 6)
        # controller clock, advancing at 500 Hz
        wait_until(lambda: arm.read().t_device > first.t_device, what="the controller clock to advance")
        # t_device counts from the controller's start (the peer's start); the measured offset is
        # that start on the host's monotonic clock (the peer runs on this host), and t_host the
        # capture instant on it: after the previous read, never in the future
        state = arm.read()
        assert time.monotonic() - 120.0 < arm.clock.offset < time.monotonic() - state.t_device + 0.05
        assert first.t_host <= state.t_host <= time.monotonic()
        assert state.t_host - state.t_device == pytest.approx(arm.clock.offset_at(state.t_device))
        assert not arm.stopped
        rtde_peer({"safety_status_bits": 1 << 2})  # protective stop
        wait_until(lambda: arm.stopped, what="the protective stop to be reported")
        with pytest.raises(DeviceError, match="read-only"):
            arm.command(np.array(q))
        rtde_peer({"safety_status_bits": 1})


def test_control_needs_remote_control_mode(rtde_peer):
    """Against the peer the real RTDEControlInterface fails (no dashboard server): clear error."""
    arm = URArm.from_config(config())
    with pytest.raises(DeviceError, match="remote\\s+control mode"):
        arm.connect()
    assert not arm.is_connected
