"""tether.robot.latency on hardware-like (real-time, non-twin) devices: the wrappers keep the
device contract, commands land late and in order, and calibrated offsets load and apply."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from tether.core.errors import ConfigError
from tether.robot.interfaces import CameraSpec, Frame, Observation, Robot
from tether.robot.latency import InjectedLatency, LatencyOffsets, inject_latency
from tether.robot.memory import ManualClock, MemoryArm, MemoryCamera
from tether.robot.testing.contract import ArmContract, CameraContract


def _robot(clock=None) -> Robot:
    return Robot(arms={"arm": MemoryArm(clock=clock) if clock else MemoryArm()},
                 cameras={"cam": MemoryCamera(CameraSpec("cam", 32, 24, 100.0))}, fps=30, clock=clock)


class TestDelayedCamera(CameraContract):
    @pytest.fixture
    def make_camera(self):
        def make():
            robot = _robot()
            inject_latency(robot, InjectedLatency(camera_s=0.02, camera_jitter_s=0.005))
            return robot.cameras["cam"]
        return make


class TestDelayedArm(ArmContract):
    @pytest.fixture
    def make_arm(self):
        def make():
            robot = _robot()
            inject_latency(robot, InjectedLatency(command_s=0.02, command_jitter_s=0.005))
            return robot.raw_arms["arm"]
        return make


def test_commands_pass_the_safety_layer_then_land_late_and_in_order():
    clock = ManualClock()
    robot = _robot(clock)
    memory = robot.raw_arms["arm"]
    injection = inject_latency(robot, InjectedLatency(command_s=0.04))
    try:
        with robot:
            clock.advance(0.1)
            target = robot.home + 0.01
            robot.act(target, t_target=robot.now())
            clock.advance(0.039)
            injection.pump()
            assert memory.commands == []  # not yet: still on the "bus"
            robot.act(target + 0.01, t_target=robot.now())
            clock.advance(0.002)
            injection.pump()
            assert len(memory.commands) == 1
            np.testing.assert_allclose(memory.commands[0], target)
            clock.advance(0.040)
            injection.pump()
            assert len(memory.commands) == 2
    finally:
        injection.stop()
    stats = injection.stats()["arm"]
    assert stats["count"] == 2 and abs(stats["mean_s"] - 0.0415) < 1e-9  # delivered at the pumps: 41 and 42 ms


def test_offsets_load_from_the_calibration_folder_and_correct_stamps(tmp_path):
    config = tmp_path / "so101.yaml"
    config.write_text("name: so101\n")
    folder = tmp_path / "so101.calibration"
    folder.mkdir()
    for name, device, value in (("wrist", "camera", 0.12), ("arm", "arm", 0.05)):
        (folder / f"latency.{name}.yaml").write_text(yaml.safe_dump({
            "format_version": 1, "kind": "latency", "name": name, "created": "2026-12-02T00:00:00Z",
            "data": {"device": device, "latency_s": value}}))
    offsets = LatencyOffsets.for_robot(config)
    assert offsets.cameras == {"wrist": 0.12} and offsets.arms == {"arm": 0.05}
    frame = Frame(np.zeros((2, 2, 3), np.uint8), t_device=5.0, t_host=10.0, index=3)
    obs = offsets.correct(Observation(t_host=10.0, joints={}, frames={"wrist": frame}))
    assert obs.frames["wrist"].t_host == pytest.approx(9.88) and obs.frames["wrist"].t_device == 5.0
    robot = _robot()
    np.testing.assert_allclose(LatencyOffsets(arms={"arm": 0.05}).lead_s(robot), 0.05)
    assert not LatencyOffsets.for_robot(tmp_path / "other.yaml")  # no folder: nothing to apply
    (folder / "latency.bad.yaml").write_text(yaml.safe_dump({"format_version": 1, "name": "bad", "data": {}}))
    with pytest.raises(ConfigError, match="calibrate latency"):
        LatencyOffsets.for_robot(config)


def test_bad_injection_values_are_refused():
    with pytest.raises(ConfigError, match="camera_s"):
        InjectedLatency(camera_s=-0.1)
    with pytest.raises(ConfigError, match="camera_stamp"):
        InjectedLatency(camera_stamp="late")
