"""Damped-least-squares IK on the twin's model, and keyboard end-effector teleop through a pty."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tether.core.errors import ConfigError
from tether.robot.factory import make_robot
from tether.robot.twin.ik import rotation_error, rotation_from_vector
from tether.teleop.factory import make_teleop
from tether.teleop.ik import twin_arm_ik
from tether.teleop.keyboard import KeyboardParams, KeyboardTeleop, TerminalKeys

pytest.importorskip("mujoco")


@pytest.fixture
def twin():
    robot = make_robot("twin:lift", ["twin_params.cameras=[]"])
    with robot:
        robot.reset(seed=0)
        yield robot


def test_ik_reaches_random_reachable_poses(twin):
    ik, _ = twin_arm_ik(twin)
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(20):
        q = rng.uniform(ik.lower, ik.upper) * 0.5
        position, rotation = ik.forward(q)
        result = ik.solve(np.zeros(ik.dof), position, rotation, iterations=100)
        worst = max(worst, result.position_error)
        assert np.all(result.q >= ik.lower) and np.all(result.q <= ik.upper)
    assert worst < 2e-3  # metres, from the zero pose, 5-DoF arm with weighted orientation


def test_ik_steps_stay_bounded_out_of_reach(twin):
    ik, _ = twin_arm_ik(twin)
    q0 = np.zeros(ik.dof)
    result = ik.solve(q0, np.array([5.0, 0.0, 0.3]), iterations=1)  # 5 m away: unreachable
    assert np.all(np.isfinite(result.q))
    assert np.abs(result.q - q0).max() <= ik.max_step + 1e-12
    assert result.position_error > 1.0


def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(2)
    for _ in range(20):
        vector = rng.normal(size=3)
        vector *= rng.uniform(0.01, 3.0) / np.linalg.norm(vector)
        rotation = rotation_from_vector(vector)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rotation_error(rotation, np.eye(3)), vector, atol=1e-9)


def tcp(robot) -> np.ndarray:
    ik, _ = twin_arm_ik(robot)
    state = robot.observe().state.astype(np.float64)
    return ik.forward(state[:5])[0]


def run(robot, teleop, ticks):
    for _ in range(ticks):
        robot.act(teleop.next_target(robot.observe()))


def test_key_presses_move_the_tool_along_their_axis(twin):
    master, slave = os.openpty()
    try:
        params = KeyboardParams(linear_speed=0.1, key_hold_s=0.1)
        teleop = KeyboardTeleop(twin, params, keys=TerminalKeys(fd=slave))
        with teleop:
            run(twin, teleop, 5)  # no keys: nothing moves
            start = tcp(twin)
            os.write(master, b"u")  # +z for 0.1 s at 0.1 m/s: 1 cm
            run(twin, teleop, int(1.0 * twin.fps))  # then let the arm settle
            after_up = tcp(twin)
            os.write(master, b"i")  # +x, 1 cm
            run(twin, teleop, int(1.0 * twin.fps))
            after_forward = tcp(twin)
    finally:
        os.close(master)
        os.close(slave)
    np.testing.assert_allclose(after_up - start, [0, 0, 0.01], atol=2.5e-3)
    np.testing.assert_allclose(after_forward - after_up, [0.01, 0, 0], atol=2.5e-3)


def test_keyboard_from_config_reads_a_named_terminal_and_drives_the_gripper(twin):
    master, slave = os.openpty()
    try:
        teleop = make_teleop("keyboard", twin, {"tty": os.ttyname(slave), "key_hold_s": 0.5})
        with teleop:
            g = twin.raw_arms["arm"].spec.gripper_index
            opened = twin.observe().state[g]
            os.write(master, b"c")  # close: 0.5 s at a full range per second
            run(twin, teleop, int(1.0 * twin.fps))
            closed = twin.observe().state[g]
    finally:
        os.close(master)
        os.close(slave)
    assert opened - closed > 0.3


def test_bad_keyboard_params_are_named(twin):
    with pytest.raises(ConfigError, match="key_hold_s"):
        make_teleop("keyboard", twin, {"key_hold_s": 0})
    with pytest.raises(ConfigError, match="linear_speed"):
        make_teleop("keyboard", twin, {"linear_speed": -1.0})
    with pytest.raises(ConfigError, match="no arm 'left'"):
        make_teleop("keyboard", twin, {"arm": "left"})


def test_ur5e_kinematic_model_matches_published_forward_kinematics():
    """configs/models/ur5e_kinematics.xml against UR's DH numbers, then 6-D IK on it."""
    import mujoco

    from tether.robot.twin.ik import DLSIK

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    model = mujoco.MjModel.from_xml_path(str(root / "configs/models/ur5e_kinematics.xml"))
    joints = ["shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3"]
    ik = DLSIK(model, joints, "tcp", rotation_weight=1.0)
    # zero pose: x = -(a2 + a3), y = -(d4 + d6), z = d1 - d5 (UR5e DH, metres)
    np.testing.assert_allclose(ik.forward(np.zeros(6))[0], [-0.8172, -0.2329, 0.0628], atol=1e-3)
    home = np.array([0, -np.pi / 2, np.pi / 2, -np.pi / 2, -np.pi / 2, 0])
    np.testing.assert_allclose(ik.forward(home)[0], [-0.4919, -0.1333, 0.4879], atol=1e-3)
    rng = np.random.default_rng(3)
    for _ in range(10):
        q = home + rng.uniform(-0.4, 0.4, size=6)
        position, rotation = ik.forward(q)
        result = ik.solve(home, position, rotation, iterations=100)
        assert result.position_error < 1e-3 and result.rotation_error < 1e-2
