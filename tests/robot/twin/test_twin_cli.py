"""`tether twin view` and `tether twin check` through the real CLI app."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from tether.cli import build_app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(build_app(), list(args))


def test_check_prints_one_json_object_with_the_required_keys():
    result = invoke("twin", "check", "--task", "lift", "--episodes", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("task", "episodes", "success_rate", "sim_steps_per_s", "render_fps"):
        assert key in data
    assert data["task"] == "lift" and data["episodes"] == 2
    assert data["success_rate"] == 1.0
    # throughput is reported (how much depends on the host: benchmarks/, not an assert)
    assert data["sim_steps_per_s"] > 0 and data["render_fps"] > 0


def test_view_writes_one_png_per_camera(tmp_path):
    out = tmp_path / "view"
    result = invoke(
        "twin", "view", "--task", "lift", "--out", str(out), "--width", "96", "--height", "64",
        "--depth", "--xml",
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["top.png", "front.png", "wrist.png", "top_depth.png", "front_depth.png", "wrist_depth.png",
         "scene.xml"]
    )
    import mujoco

    mujoco.MjModel.from_xml_string((out / "scene.xml").read_text())  # a loadable model
    image = np.asarray(Image.open(out / "front.png"))
    assert image.shape == (64, 96, 3)
    assert image.std() > 5  # a scene, not a blank buffer


def test_unknown_task_is_a_clean_error():
    result = invoke("twin", "check", "--task", "juggle", "--episodes", "1")
    assert result.exit_code == 2
    assert "Unknown twin task 'juggle'" in result.output
    assert "Traceback" not in result.output


def test_unknown_camera_is_a_clean_error(tmp_path):
    result = invoke("twin", "view", "--task", "lift", "--cameras", "left_wrist", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "no camera 'left_wrist'" in result.output


def test_interactive_viewer_without_display_explains_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = invoke("twin", "view", "--interactive")
    assert result.exit_code == 2
    assert "No display" in result.output


def test_help_has_examples():
    for command in ("view", "check"):
        result = invoke("twin", command, "--help")
        assert result.exit_code == 0 and "Example: tether twin" in result.output
