"""Store format v2: arrays classified by structure, one metadata file per episode, v1 migration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from tether.core.errors import StoreError
from tether.data import manifest as _manifest
from tether.data.layout import timing_key
from tether.data.store import EpisodeStore
from tether.data.verify import verify_path

WRIST_T = "image.wrist_t"  # validate_name refuses this camera name now; older configs had it


def episode(n: int, k: int = 0) -> dict[str, np.ndarray]:
    t = np.arange(n)
    return {
        "state": np.stack([np.full(n, k + 1), t], axis=1).astype(np.float32),
        "action": np.stack([t, -t], axis=1).astype(np.float32),
        WRIST_T: np.stack([np.full((16, 16, 3), (10 * k + 3 * i) % 250 + 1, np.uint8) for i in t]),
        "state_index": t.astype(np.float32),  # a data array whose name only looks like timing
        "timestamp": t / 30.0,
        timing_key(WRIST_T, "t_host"): 100.0 + t / 30.0,
        timing_key(WRIST_T, "t_recv"): 100.001 + t / 30.0,
        timing_key(WRIST_T, "index"): t + 7,
        timing_key("state", "t_host"): 100.0 + t / 30.0,
    }


@pytest.fixture
def path(tmp_path) -> Path:
    p = tmp_path / "s.zarr"
    with EpisodeStore.create(p, 30.0) as st:
        for k, n in enumerate([5, 7, 4]):
            st.add_episode(episode(n, k), {"task": f"t{k}", "seed": k})
    return p


def test_arrays_are_classified_by_structure_not_suffix(path):
    root = zarr.open_group(str(path), mode="r")
    assert sorted(root["data"].array_keys()) == ["action", "image.wrist_t", "state",
                                                  "state_index", "timestamp"]
    camera = root["data/image.wrist_t"]  # an image, not a float64 time array
    assert camera.dtype == np.uint8 and camera.shape == (16, 16, 16, 3) and camera.chunks[0] == 1
    assert root["data/state_index"].dtype == np.float32
    assert root["timing/image.wrist_t/t_host"].dtype == np.float64
    assert root["timing/image.wrist_t/index"].dtype == np.int64
    with EpisodeStore.open(path) as store:
        assert store.image_keys == [WRIST_T]
        assert store.timing_streams == {WRIST_T: ["index", "t_host", "t_recv"], "state": ["t_host"]}
        ep = store.get_episode(1)
        assert np.abs(ep[WRIST_T].astype(int) - episode(7, 1)[WRIST_T]).max() <= 2
        timing = store.timing(1)
        np.testing.assert_array_equal(timing[WRIST_T]["index"], np.arange(7) + 7)
        np.testing.assert_allclose(timing["state"]["t_host"], 100.0 + np.arange(7) / 30.0)
    assert verify_path(path).ok


def test_timing_keys_are_checked(path):
    bad = episode(3)
    bad[timing_key(WRIST_T, "index")] = np.arange(3) + 0.5
    with EpisodeStore.open(path, "a") as store:
        with pytest.raises(StoreError, match="must hold integers"):
            store.add_episode(bad)
        with pytest.raises(StoreError, match="Invalid timing key"):
            store.add_episode({**episode(3), "timing/x/latency": np.zeros(3)})
        with pytest.raises(StoreError, match="not one of"):
            timing_key("state", "latency")
        assert store.n_episodes == 3


def _files(path: Path) -> dict[str, tuple[int, int, bytes]]:
    folder = path / "episodes"
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes())
            for f in sorted(folder.iterdir())}


def test_a_commit_writes_only_its_own_episode_metadata(path):
    before = _files(path)
    meta_json = (path / "meta" / "zarr.json").read_bytes()
    assert sorted(before) == ["000000.json", "000001.json", "000002.json"]
    with EpisodeStore.open(path, "a") as store:
        assert store.add_episode(episode(3, 3), {"task": "t3"}) == 3
        after = _files(path)
        assert sorted(after) == [*before, "000003.json"]
        for name, stat in before.items():
            assert after[name] == stat, f"{name} was rewritten by another episode's commit"
        assert (path / "meta" / "zarr.json").read_bytes() == meta_json  # no list attribute
        store.update_episode_metadata(1, success=True)
        edited = _files(path)
        assert [n for n in edited if edited[n] != after[n]] == ["000001.json"]
    with EpisodeStore.open(path) as store:
        assert store.episode_metadata(1) == {"index": 1, "length": 7, "task": "t1", "seed": 1,
                                             "success": True}
        assert store.episode_metadata(3)["task"] == "t3" and store.next_seed == 3


def test_metadata_of_an_uncommitted_episode_is_hidden_then_removed(path):
    (path / "episodes" / "000003.json").write_text(json.dumps({"task": "killed"}))
    with EpisodeStore.open(path) as reader:
        assert reader.n_episodes == 3 and reader.recovery.dropped_metadata == 1
        assert not reader.recovery.damaged
    with EpisodeStore.open(path, "a") as store:
        assert store.recovery.repaired
        assert not (path / "episodes" / "000003.json").exists()
        assert store.add_episode(episode(2, 5), {"task": "next"}) == 3
        assert store.episode_metadata(3)["task"] == "next"


def test_a_missing_metadata_file_is_damage_that_repair_fills(path):
    (path / "episodes" / "000001.json").unlink()
    with pytest.raises(StoreError, match=r"no \(readable\) metadata file.*tether data repair"):
        EpisodeStore.open(path, "a")
    assert not verify_path(path).ok
    result = subprocess.run([sys.executable, "-m", "tether.cli", "data", "repair", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    with EpisodeStore.open(path, "a") as store:
        assert store.episode_metadata(1)["recovered"] is True
        assert store.episode_metadata(2)["task"] == "t2"


# ---------------------------------------------------------------------- format 1
def downgrade_to_v1(path: Path) -> None:
    """Rewrite a v2 store as tether's format 1 laid it out (timing by suffix in data/, one
    metadata list attribute), the way stores recorded before this change look on disk."""
    names = {"t_host": "_t", "t_recv": "_t_host", "index": "_index"}
    renamed = {}
    for stream in sorted((path / "timing").iterdir()):
        if not stream.is_dir():
            continue
        for field in sorted(p for p in stream.iterdir() if p.is_dir()):
            old = f"{stream.name}{names[field.name]}"
            os.rename(field, path / "data" / old)
            renamed[f"timing/{stream.name}/{field.name}"] = old
    shutil.rmtree(path / "timing")
    episodes = [json.loads((path / "episodes" / f"{e:06d}.json").read_text())
                for e in range(len(list((path / "episodes").iterdir())))]
    shutil.rmtree(path / "episodes")
    root = zarr.open_group(str(path), mode="r+")
    root["meta"].attrs["episodes"] = episodes
    root.attrs["format_version"] = 1
    for file in (path / "manifest").iterdir():
        man = json.loads(file.read_text())
        man["keys"] = {renamed.get(k, k): v for k, v in man["keys"].items()}
        man["version"] = 1
        file.write_text(json.dumps(man))


def v1_episode(n: int, k: int = 0) -> dict[str, np.ndarray]:
    ep = episode(n, k)
    ep["image.wrist"] = ep.pop(WRIST_T)  # format 1 could not hold a camera named wrist_t
    for field in ("t_host", "t_recv", "index"):
        ep[timing_key("image.wrist", field)] = ep.pop(timing_key(WRIST_T, field))
    del ep["state_index"]  # nor a data array named like that
    return ep


def test_format_1_store_is_refused_with_the_migrate_command_then_migrated(tmp_path):
    path = tmp_path / "old.zarr"
    with EpisodeStore.create(path, 30.0) as st:
        for k, n in enumerate([5, 7, 4]):
            st.add_episode(v1_episode(n, k), {"task": f"t{k}", "seed": k})
        expected = [st.get_episode(e) for e in range(3)]
        writer = st.begin_episode()  # an uncommitted tail, as a killed v1 writer left it
        writer.extend(v1_episode(3, 9))
        writer.active = False  # killed: nothing truncates the tail
        st._lock.release()
    downgrade_to_v1(path)
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=rf"format version 1.*tether data migrate {path}"):
            EpisodeStore.open(path, mode)
    result = subprocess.run([sys.executable, "-m", "tether.cli", "data", "migrate", str(path)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "from format v1 to v2" in result.stdout and "image.wrist_index ->" in result.stdout
    assert not (path.parent / "old.zarr.new").exists() and not (path.parent / "old.zarr.old").exists()
    with EpisodeStore.open(path, "r") as reader:
        assert reader.n_episodes == 3 and reader.recovery.partial_steps == 3  # tail kept hidden
    with EpisodeStore.open(path, "a") as store:
        assert store.recovery.repaired and store.array("state").shape[0] == store.n_steps == 16
        assert store.data_keys == ["action", "image.wrist", "state", "timestamp"]
        for e in range(3):
            got = store.get_episode(e)
            assert set(got) == set(expected[e])
            for key, values in expected[e].items():
                np.testing.assert_array_equal(got[key], values)  # frames moved, not re-encoded
            assert store.episode_metadata(e)["task"] == f"t{e}"
            assert store.manifest(e)["version"] == _manifest.MANIFEST_VERSION
        assert store.add_episode(v1_episode(2, 4)) == 3
    assert verify_path(path).ok
    again = subprocess.run([sys.executable, "-m", "tether.cli", "data", "migrate", str(path)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_migrate_names_a_missing_store(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tether.cli", "data", "migrate",
                             str(tmp_path / "nope.zarr")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 2 and "No episode store at" in result.stdout + result.stderr
    assert not (tmp_path / "nope.zarr.lock").exists()
