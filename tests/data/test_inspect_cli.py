"""`tether inspect`: summary, JSON, video and contact sheet, and clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app
from tether.data.store import EpisodeStore

runner = CliRunner()


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, 30.0) as store:
        for k, n in enumerate([12, 8]):
            frames = np.clip(100 + rng.normal(0, 30, (n, 48, 64, 3)), 0, 255).astype(np.uint8)
            store.add_episode(
                {"state": np.zeros((n, 2), np.float32), "action": np.zeros((n, 2), np.float32),
                 "image.front": frames, "image.side": frames[:, ::-1]},
                {"success": k == 0, "task": "t", "stats": {"sync": {"skew_p99_ms": 1.5,
                 "skew_p50_ms": 1.0, "cameras": {"front": {"dropped": k, "duplicated": 0}}}}},
            )
    return path


def test_inspect_json(store_path):
    result = runner.invoke(build_app(), ["inspect", str(store_path), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["episodes"] == 2 and s["steps"] == 20 and s["success_rate"] == 0.5
    assert [e["length"] for e in s["per_episode"]] == [12, 8]
    assert s["per_episode"][1]["dropped"] == {"front": 1}
    keys = {st["key"]: st for st in s["streams"]}
    assert keys["image.front"]["shape"] == [20, 48, 64, 3] and keys["image.front"]["dtype"] == "uint8"
    assert keys["state"]["dtype"] == "float32"


def test_inspect_table_and_one_episode(store_path):
    result = runner.invoke(build_app(), ["inspect", str(store_path)])
    assert result.exit_code == 0 and "image.front" in result.output and "episodes" in result.output
    result = runner.invoke(build_app(), ["inspect", str(store_path), "--episode", "1", "--json"])
    assert json.loads(result.output)["per_episode"][0]["episode"] == 1


@pytest.mark.parametrize("name", ["ep.mp4", "ep.png"])
def test_inspect_writes_video_or_contact_sheet(store_path, tmp_path, name):
    out = tmp_path / name
    result = runner.invoke(build_app(), ["inspect", str(store_path), "-e", "0", "--video", str(out)])
    assert result.exit_code == 0, result.output
    if name.endswith(".png"):
        sheet = cv2.imread(str(out))
        assert sheet.shape[1] % 128 == 0 and sheet.shape[0] % 48 == 0  # 2 cameras side by side
    else:
        cap = cv2.VideoCapture(str(out))
        count = 0
        while cap.read()[0]:
            count += 1
        assert count == 12


def test_inspect_errors(store_path, tmp_path):
    result = runner.invoke(build_app(), ["inspect", str(tmp_path / "nope.zarr")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(build_app(), ["inspect", str(store_path), "--episode", "5"])
    assert result.exit_code == 2 and "Episode 5 does not exist" in result.output
    result = runner.invoke(build_app(), ["inspect", str(store_path), "--video", str(tmp_path / "x.mp4")])
    assert result.exit_code == 2 and "--video needs --episode" in result.output
    result = runner.invoke(build_app(), ["inspect", str(store_path), "-e", "0", "--video", str(tmp_path / "x.gif")])
    assert result.exit_code == 2 and "Unsupported output" in result.output
    result = runner.invoke(build_app(), ["inspect", "--help"])
    assert "Example: tether inspect" in result.output
