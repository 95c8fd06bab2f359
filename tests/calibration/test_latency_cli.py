"""`tether calibrate latency` end to end: records next to the robot config, rehearsals save nothing."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
import yaml
from typer.testing import CliRunner

from tether.cli import build_app
from tether.robot.latency import LatencyOffsets

pytest.importorskip("mujoco")


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "lift.yaml"
    path.write_text(yaml.safe_dump({"name": "lift", "fps": 30, "twin_task": "lift",
                                    "twin_params": {"width": 160, "height": 120}}))
    return path


def test_measures_saves_and_loads_back(config):
    result = CliRunner().invoke(build_app(), ["calibrate", "latency", "--robot", str(config),
                                              "--duration", "8"])
    assert result.exit_code == 0, result.output
    folder = config.with_name("lift.calibration")
    assert sorted(p.name for p in folder.glob("latency.*.yaml")) == ["latency.arm.yaml", "latency.top.yaml"]
    offsets = LatencyOffsets.for_robot(config)
    # the plain twin stamps frames at capture and applies commands at once
    assert abs(offsets.cameras["top"]) < 0.010
    assert 0.0 <= offsets.arms["arm"] < 0.010
    arm = yaml.safe_load((folder / "latency.arm.yaml").read_text())
    assert arm["residuals"]["normalized_rms"] < 0.25 and arm["data"]["joints"] == ["shoulder_pan", "shoulder_lift"]
    shown = CliRunner().invoke(build_app(), ["calibrate", "show", "--robot", str(config)])
    assert shown.exit_code == 0 and "latency" in shown.output


def test_a_rehearsal_with_injected_latency_reports_truth_and_saves_nothing(config):
    result = CliRunner().invoke(build_app(), [
        "calibrate", "latency", "--robot", str(config), "--duration", "8", "--no-arms",
        "--inject-camera-ms", "80", "--inject-command-ms", "40", "--inject-jitter-ms", "10"])
    assert result.exit_code == 0, result.output
    assert "injected" in result.output and "nothing saved" in result.output
    assert not config.with_name("lift.calibration").exists()


def test_unknown_camera_is_refused_with_the_cameras_it_has(config):
    result = CliRunner().invoke(build_app(), ["calibrate", "latency", "--robot", str(config),
                                              "--camera", "nope"])
    assert result.exit_code != 0
    assert "no camera ['nope']" in result.output and "top" in result.output
