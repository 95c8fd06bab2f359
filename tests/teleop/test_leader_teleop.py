"""A leader arm emulated on a pty servo bus drives a follower through the safety layer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tether.core.errors import ConfigError
from tether.robot.emulators import DynamixelBusEmulator, FeetechBusEmulator
from tether.robot.interfaces import ArmSpec, Robot
from tether.robot.memory import ManualClock, MemoryArm
from tether.robot.safety import SafetyConfig
from tether.teleop.factory import make_teleop
from tether.teleop.leader import LeaderTeleop

pytest.importorskip("scservo_sdk")

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
TICKS_PER_RAD = 4096 / (2 * math.pi)
MAX_VELOCITY = 5.0  # rad/s: 0.1 rad per tick at 50 Hz


def leader_params(port: str, driver: str = "feetech", follower: str = "main") -> dict:
    motors = [{"name": n, "id": i + 1} for i, n in enumerate(JOINTS)]
    motors[-1].update({"lower": 0.0, "upper": 1.0})  # the leader's trigger travels 1 rad
    return {
        "leaders": [
            {"follower": follower, "driver": driver, "params": {"port": port, "torque": False, "motors": motors, "packet_timeout_ms": 400.0}}
        ],
        "startup_speed": 1.0,
        "startup_tolerance": 0.02,
    }


def memory_robot(fps: float = 50.0) -> Robot:
    """A follower on a manual clock that `run_ticks` advances one period per tick: the loop runs
    unpaced and deterministic, and the safety layer sees the time a real loop would."""
    n = len(JOINTS)
    lower, upper = np.full(n, -math.pi), np.full(n, math.pi)
    lower[-1], upper[-1] = 0.0, 2.0  # follower gripper range is twice the leader's
    spec = ArmSpec("main", JOINTS, lower, upper, np.zeros(n), gripper_index=n - 1)
    clock = ManualClock()
    arm = MemoryArm(spec, time_constant_s=0.0, clock=clock)  # follows at once: checks are exact
    safety = SafetyConfig(max_velocity=MAX_VELOCITY)  # MAX_VELOCITY / fps rad per tick
    return Robot({"main": arm}, safety=safety, fps=fps, name="so101-memory", clock=clock,
                 simulated_time=True)


@pytest.fixture
def leader_bus():
    with FeetechBusEmulator(list(range(1, 7))) as bus:
        yield bus


def set_leader(bus, pose: np.ndarray) -> None:
    for servo_id, angle in enumerate(pose, start=1):
        bus.servo(servo_id).move_to(2048 + angle * TICKS_PER_RAD)


def run_ticks(robot, teleop, n: int) -> list[np.ndarray]:
    sent = []
    for _ in range(n):
        robot.clock.advance(1.0 / robot.fps)
        target = teleop.next_target(robot.observe())
        sent.append(robot.act(target))
    return sent


def test_startup_walks_slowly_to_the_leader_then_tracks_it(leader_bus):
    robot = memory_robot()
    pose = np.array([1.0, -0.6, 0.4, 0.2, -0.3, 0.75])
    set_leader(leader_bus, pose)
    teleop = make_teleop("leader", robot, leader_params(leader_bus.port))
    assert isinstance(teleop, LeaderTeleop)
    with robot, teleop:
        sent = run_ticks(robot, teleop, 90)  # the gripper walks 1.5 rad: 75 ticks
        steps = np.abs(np.diff(np.stack([robot.home] + sent), axis=0))
        # 1 rad/s at 50 Hz: never more than 0.02 rad per tick although the leader is 1 rad away
        assert steps.max() <= 1.0 / 50 + 1e-9
        assert teleop.engaged
        expected = pose.copy()
        expected[-1] = 0.75 * 2.0  # leader trigger [0, 1] -> follower gripper [0, 2]
        np.testing.assert_allclose(robot.observe().state, expected, atol=2 / TICKS_PER_RAD)

        # engaged: the follower now tracks the leader (rate-limited only by the safety layer)
        moved = pose + np.array([0.05, 0.05, -0.05, 0.0, 0.0, -0.05])
        set_leader(leader_bus, moved)
        run_ticks(robot, teleop, 3)
        expected = moved.copy()
        expected[-1] = 0.7 * 2.0
        np.testing.assert_allclose(robot.observe().state, expected, atol=2 / TICKS_PER_RAD)

        # a new episode starts a new walk, from wherever the follower is
        teleop.reset()
        assert not teleop.engaged


def test_a_leader_jump_is_rate_limited_by_the_safety_layer(leader_bus):
    robot = memory_robot()
    set_leader(leader_bus, np.zeros(6))
    teleop = make_teleop("leader", robot, leader_params(leader_bus.port))
    with robot, teleop:
        run_ticks(robot, teleop, 2)
        assert teleop.engaged
        set_leader(leader_bus, np.array([2.0, 0, 0, 0, 0, 0]))  # the servo glitches a full 2 rad
        sent = run_ticks(robot, teleop, 1)[0]
        assert sent[0] == pytest.approx(MAX_VELOCITY / robot.fps)  # one tick at the speed limit
        assert robot.safety_counts().get("rate_limited", 0) >= 1


def test_dynamixel_leader_with_calibration_file(tmp_path):
    calibration = tmp_path / "calib.yaml"
    joints = "\n".join(
        f"      - {{follower: {n}, leader: {n}, offset: {0.5 if n == 'elbow_flex' else 0.0}, "
        f"direction: {-1 if n == 'shoulder_lift' else 1}}}"
        for n in JOINTS[:-1]
    )
    calibration.write_text(
        "format: tether.leader_follower/1\npairs:\n  main:\n    joints:\n"
        + joints
        + "\n    gripper: {follower: gripper, leader: gripper, leader_range: [0.2, 0.7], "
        "follower_range: [0.0, 1.0]}\n"
    )
    robot = memory_robot()
    with DynamixelBusEmulator(list(range(1, 7))) as bus:
        pose = np.array([0.2, 0.3, 0.1, 0.0, 0.0, 0.45])
        set_leader(bus, pose)
        params = leader_params(bus.port, driver="dynamixel") | {"calibration": str(calibration)}
        teleop = make_teleop("leader", robot, params)
        with robot, teleop:
            run_ticks(robot, teleop, 40)
            assert teleop.engaged
            state = robot.observe().state
    np.testing.assert_allclose(state, [0.2, -0.3, 0.6, 0.0, 0.0, 0.5], atol=2 / TICKS_PER_RAD)


def test_leader_for_an_unknown_follower_is_refused(leader_bus):
    with pytest.raises(ConfigError, match="follower arm"):
        make_teleop("leader", memory_robot(), leader_params(leader_bus.port, follower="left"))
    with pytest.raises(ConfigError, match="needs 'leaders'"):
        make_teleop("leader", memory_robot(), {})
    with pytest.raises(ConfigError, match="Unknown leader driver"):
        params = leader_params(leader_bus.port)
        params["leaders"][0]["driver"] = "servo9000"
        make_teleop("leader", memory_robot(), params)


def test_leader_drives_the_twin_follower(leader_bus):
    twin = pytest.importorskip("tether.robot.twin")
    if not hasattr(twin, "make_twin_robot"):
        pytest.skip("the twin has not landed yet")
    from tether.robot.factory import make_robot

    robot = make_robot("twin:lift", ["twin_params.cameras=[]"])
    spec = next(iter(robot.raw_arms.values())).spec
    pose = np.clip(spec.home + 0.3, spec.lower, spec.upper)
    # leader motors named like the twin's joints; gripper range mapped onto the twin's
    motors = [{"name": n, "id": i + 1} for i, n in enumerate(spec.joint_names)]
    params = {
        "leaders": [
            {
                "follower": spec.name,
                "driver": "feetech",
                "params": {"port": leader_bus.port, "torque": False, "motors": motors,
                           "packet_timeout_ms": 400.0},
            }
        ],
        "startup_speed": 1.0,
    }
    set_leader(leader_bus, pose)
    teleop = make_teleop("leader", robot, params)
    with robot, teleop:
        robot.reset(seed=0)
        before = robot.observe().state
        for _ in range(int(3 * robot.fps)):
            robot.act(teleop.next_target(robot.observe()))
        after = robot.observe().state
    assert teleop.engaged
    arm = [i for i in range(spec.dof) if i != spec.gripper_index]
    assert np.abs(after[arm] - pose[arm]).max() < 0.1, (before, after, pose)


def test_tether_teleop_command_runs_a_leader_config(tmp_path, leader_bus, check_tick_accounting):
    """`tether teleop` with a config file: the device and its params come from `teleop:`."""
    import json

    import typer
    import yaml
    from typer.testing import CliRunner

    from tether.app.commands.hardware import register

    with DynamixelBusEmulator(list(range(1, 7))) as follower_bus:
        motors = [{"name": n, "id": i + 1} for i, n in enumerate(JOINTS)]
        motors[-1].update(lower=0.0, upper=2.0)  # follower gripper range
        config = {
            "name": "so101-emulated",
            "fps": 50,
            "arms": [{"name": "main", "driver": "dynamixel",
                      "params": {"port": follower_bus.port, "motors": motors, "packet_timeout_ms": 400.0}}],
            "teleop": {"device": "leader", "params": leader_params(leader_bus.port)},
        }
        path = tmp_path / "robot.yaml"
        path.write_text(yaml.safe_dump(config))
        set_leader(leader_bus, np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0]))
        app = typer.Typer()
        register(app)
        # 2 s: the 0.3 rad walk needs ~15 ticks at 1 rad/s, with room for ticks a loaded host skips
        result = CliRunner().invoke(app, ["teleop", "--robot", str(path), "--duration", "2.0", "--json"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        summary = json.loads(result.output.strip().splitlines()[-1])
        position = (follower_bus.servo(1).position - 2048) / TICKS_PER_RAD
    assert summary["loop"]["target_hz"] == 50 and summary["loop"]["duration_s"] >= 1.9
    check_tick_accounting(summary["loop"])  # ran paced for the whole duration, nothing lost
    assert position == pytest.approx(0.3, abs=0.01)  # walked to the leader and settled there
