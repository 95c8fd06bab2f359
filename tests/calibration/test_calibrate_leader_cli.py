"""`tether calibrate leader` on emulated buses: offsets snapped to quarter turns, then used."""

from __future__ import annotations

import math

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from tether.app.commands.calibrate import register
from tether.robot.emulators import FeetechBusEmulator
from tether.robot.factory import make_robot
from tether.robot.joint_map import LeaderFollowerCalibration
from tether.teleop.factory import make_teleop

TICKS = 4096 / (2 * math.pi)
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def write_config(tmp_path, follower_port, leader_port, calibration=None):
    motors = [{"name": n, "id": i + 1} for i, n in enumerate(JOINTS)]
    for m in motors:
        m.update(lower=-3.0, upper=3.0)
    motors[-1].update(lower=0.0, upper=1.5)
    leader_motors = [dict(m) for m in motors]
    leader_motors[-1].update(lower=0.0, upper=1.0)
    data = {
        "name": "so101",
        "fps": 30,
        "arms": [{"name": "follower", "driver": "feetech", "params": {"port": follower_port, "motors": motors, "packet_timeout_ms": 400.0}}],
        "teleop": {
            "device": "leader",
            "params": {
                "startup_speed": 1.0,
                "leaders": [
                    {"follower": "follower", "driver": "feetech",
                     "params": {"port": leader_port, "torque": False, "motors": leader_motors,
                                "packet_timeout_ms": 400.0}}
                ],
            },
        },
    }
    if calibration:
        data["teleop"]["params"]["calibration"] = str(calibration)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_calibrate_then_teleop_with_the_file(tmp_path, wait_until):
    app = typer.Typer()
    register(app)
    with FeetechBusEmulator(list(range(1, 7))) as follower_bus, FeetechBusEmulator(list(range(1, 7))) as leader_bus:
        # same physical pose; the follower's shoulder_lift horn is mounted a quarter turn off and
        # its elbow turns the other way; poses matched by eye (a few degrees off)
        leader = np.array([0.10, 0.20, 0.30, -0.10, 0.05, 0.5])
        follower = leader + np.array([0.03, math.pi / 2 - 0.04, 0.0, 0.02, -0.03, 0.0])
        follower[2] = -leader[2] + 0.05
        for i in range(6):
            leader_bus.servo(i + 1).move_to(2048 + leader[i] * TICKS)
            follower_bus.servo(i + 1).move_to(2048 + follower[i] * TICKS)
        config = write_config(tmp_path, follower_bus.port, leader_bus.port)
        out = tmp_path / "calib.yaml"
        result = CliRunner().invoke(
            app,
            ["calibrate", "leader", "--robot", str(config), "--out", str(out),
             "--direction", "elbow_flex=-1", "--yes"],
        )
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert not follower_bus.servo(1).torque_enabled  # followers stayed limp
        calibration = LeaderFollowerCalibration.load(out)
        joints = {j.follower: j for j in calibration.pairs["follower"].joints}
        assert joints["shoulder_lift"].offset == pytest.approx(math.pi / 2, abs=1e-6)
        assert joints["elbow_flex"].direction == -1 and joints["elbow_flex"].offset == 0.0
        assert all(joints[n].offset == 0.0 for n in ("shoulder_pan", "wrist_flex", "wrist_roll"))

        # teleop with the file: the follower ends where the leader says, through the offsets
        robot = make_robot(write_config(tmp_path, follower_bus.port, leader_bus.port, out))
        params = yaml.safe_load((tmp_path / "robot.yaml").read_text())["teleop"]["params"]
        teleop = make_teleop("leader", robot, params)
        expected = leader[:5] + np.array([0, math.pi / 2, 0, 0, 0])
        expected[2] = -leader[2]
        with robot, teleop:
            # The emulated follower moves in wall-clock time: drive it at the robot's rate until
            # it converges (an unpaced loop on a fast host would read it before it got there).
            def tick_and_check() -> bool:
                observation = robot.observe()
                if teleop.engaged and np.allclose(observation.state[:5], expected, atol=0.01):
                    return True
                robot.act(teleop.next_target(observation))
                return False

            wait_until(tick_and_check, timeout=30.0, interval=1.0 / robot.fps,
                       what=f"the follower to reach {expected.round(3)} through the calibration")
            state = robot.observe().state
    np.testing.assert_allclose(state[:5], expected, atol=0.01)


def test_bad_direction_is_named(tmp_path):
    app = typer.Typer()
    register(app)
    with FeetechBusEmulator(list(range(1, 7))) as a, FeetechBusEmulator(list(range(1, 7))) as b:
        config = write_config(tmp_path, a.port, b.port)
        result = CliRunner().invoke(
            app, ["calibrate", "leader", "--robot", str(config), "--out", str(tmp_path / "c.yaml"),
                  "--direction", "elbow=2", "--yes"],
        )
    assert result.exit_code != 0
    assert "joint=-1" in str(result.exception)
