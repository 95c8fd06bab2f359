"""The ready configs in configs/: they parse, build their robot and teleop device, and the
SO-101 / Koch leader configs run end to end on emulated servo buses and a video file."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tether.core.config import from_dict, load_mapping
from tether.robot.config import RobotConfig
from tether.robot.emulators import DynamixelBusEmulator, FeetechBusEmulator
from tether.robot.factory import load_robot_config, make_robot
from tether.teleop.factory import make_teleop

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
EXPECTED = {
    "twin_lift.yaml", "twin_aloha.yaml", "so101_leader.yaml", "koch_leader.yaml", "aloha.yaml",
    "ur5e_realsense_spacemouse.yaml",
}


def test_every_required_config_exists():
    assert EXPECTED <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_its_robot_and_teleop(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # model paths in configs are relative to the repository root
    config = load_robot_config(path)
    robot = make_robot(config)  # constructs drivers; nothing is opened
    device = make_teleop(config.teleop.device, robot, config.teleop.params)
    assert robot.action_dim > 0
    if config.name == "aloha":
        assert len(robot.raw_arms) == 2 and len(device.leaders) == 2 and len(robot.cameras) == 4
    if hasattr(robot, "close"):
        robot.close()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cam") / "cam.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()
    return str(path)


@pytest.mark.parametrize(
    ("name", "emulator"),
    [("so101_leader.yaml", FeetechBusEmulator), ("koch_leader.yaml", DynamixelBusEmulator)],
)
def test_leader_config_runs_on_emulated_buses(name, emulator, video, wait_until):
    """Only ports and camera sources change: the same config drives emulated hardware."""
    data = load_mapping(ROOT / "configs" / name)
    follower_models = {m["id"]: m.get("model", "sts3215") for m in data["arms"][0]["params"]["motors"]}
    leader_params = data["teleop"]["params"]["leaders"][0]["params"]
    leader_models = {m["id"]: m.get("model", "sts3215") for m in leader_params["motors"]}
    with emulator(follower_models) as follower_bus, emulator(leader_models) as leader_bus:
        data["arms"][0]["params"].update(port=follower_bus.port, packet_timeout_ms=400.0)
        leader_params.update(port=leader_bus.port, packet_timeout_ms=400.0)
        for cam in data["cameras"]:
            cam.update(width=64, height=48, params={"source": video})
        config = from_dict(RobotConfig, data)
        robot = make_robot(config)
        teleop = make_teleop(config.teleop.device, robot, config.teleop.params)
        pose = {1: 0.3, 2: -0.2, 3: 0.25, 4: 0.1, 5: 0.0}
        for servo_id, angle in pose.items():
            leader_bus.servo(servo_id).move_to(2048 + angle * 4096 / (2 * math.pi))
        with robot, teleop:
            # The emulated follower moves in wall-clock time: drive it at the robot's rate until
            # it has converged on the leader's pose (a fast host must not outrun it).
            observations = []

            def tick_and_check() -> bool:
                observation = robot.observe()
                observations.append(observation)
                if teleop.engaged and np.allclose(observation.state[:5], goal, atol=0.01):
                    return True
                robot.act(teleop.next_target(observation))
                return False

            goal = list(pose.values())
            wait_until(tick_and_check, timeout=30.0, interval=1.0 / robot.fps,
                       what=f"the follower to reach the leader's pose {goal}")
            assert len(observations) > 1  # it had to walk there: the pose was not free
            assert set(observations[-1].frames) == {c["name"] for c in data["cameras"]}
