"""`tether data verify|repair` and `tether inspect --verify` through the real CLI: exit code 2,
a message naming the file, and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app
from tether.data.store import EpisodeStore, chunk_file

runner = CliRunner()


@pytest.fixture
def path(tmp_path) -> Path:
    p = tmp_path / "s.zarr"
    with EpisodeStore.create(p, 30.0) as store:
        for k in range(3):
            n = 4 + k
            store.add_episode({"state": np.full((n, 2), k + 1, np.float32),
                               "action": np.zeros((n, 2), np.float32),
                               "image.cam": np.full((n, 8, 8, 3), 20 * k + 5, np.uint8)})
    return p


def cli(*args: str):
    return runner.invoke(build_app(), list(args))


def test_verify_ok_and_json(path):
    result = cli("data", "verify", str(path))
    assert result.exit_code == 0, result.output
    assert "OK: 3 episodes" in result.output
    report = json.loads(cli("data", "verify", str(path), "--json").output)
    assert report["ok"] and report["episodes"] == 3


def test_verify_and_inspect_name_episode_key_frame_and_file(path):
    with EpisodeStore.open(path) as store:
        chunk_file(store, "image.cam", 5).unlink()  # episode 1, frame 1
        chunk_file(store, "image.cam", 10).write_bytes(b"garbage")  # episode 2, frame 1
    for args in (("data", "verify", str(path)), ("inspect", str(path), "--verify")):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "episode 1, key 'image.cam', frame 1: chunk data/image.cam/c/5/0/0/0 is missing" in result.output
        assert "episode 2, key 'image.cam', frame 1: chunk data/image.cam/c/10/0/0/0" in result.output
        assert "Traceback" not in result.output
    report = json.loads(cli("inspect", str(path), "--verify", "--json").output)["verify"]
    assert report["damaged_episodes"] == [1, 2]
    result = cli("inspect", str(path), "-e", "2", "--video", str(path.parent / "ep.png"))
    assert result.exit_code == 2 and "Cannot decode episode 2, key 'image.cam', frame 1" in result.output


def test_repair_drops_damaged_episodes_on_request(path):
    with EpisodeStore.open(path) as store:
        chunk_file(store, "image.cam", 5).unlink()
    result = cli("data", "repair", str(path))
    assert result.exit_code == 2 and "--drop-damaged" in result.output
    result = cli("data", "repair", str(path), "--drop-damaged")
    assert result.exit_code == 0, result.output
    assert "deleted damaged episode(s) [1]" in result.output and "OK: 2 episodes" in result.output


def _truncate(file: Path) -> None:
    file.write_text(file.read_text()[:30])


def _bad_episode_metadata(file: Path) -> None:
    file.write_text(json.dumps("not an object"))


CASES = {
    "truncated meta/zarr.json": ("meta/zarr.json", _truncate, "is damaged (not valid JSON"),
    "truncated root zarr.json": ("zarr.json", _truncate, "is damaged (not valid JSON"),
    "truncated array metadata": ("data/image.cam/zarr.json", _truncate, "is damaged (not valid JSON"),
    "episode metadata not an object": ("episodes/000001.json", _bad_episode_metadata,
                                       "must hold one JSON object"),
}


@pytest.mark.parametrize(("command", "case"), [
    *((["data", "verify"], case) for case in sorted(CASES)),
    (["inspect"], "truncated meta/zarr.json"),
])
def test_damaged_metadata_through_the_real_cli(path, case, command):
    relative, damage, message = CASES[case]
    damage(path / relative)
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", *command, str(path)], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "400"}, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert str(path / relative) in output and message in output
    assert "Traceback" not in output


def test_append_refusal_names_repair(path):
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for key in ("state", "action", "image.cam"):
        group[f"data/{key}"].resize((10, *group[f"data/{key}"].shape[1:]))  # cut into episode 2
    with pytest.raises(Exception, match="tether data repair"):
        EpisodeStore.open(path, "a")
    result = cli("data", "repair", str(path))
    assert result.exit_code == 0, result.output
    assert "dropped 1 lost commit" in result.output


def test_missing_store_and_help(tmp_path):
    result = cli("data", "verify", str(tmp_path / "nope.zarr"))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert "Example: tether data verify" in cli("data", "verify", "--help").output
