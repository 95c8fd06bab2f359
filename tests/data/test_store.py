"""EpisodeStore: layout, API, formats, bad input and a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from tether.core.errors import StoreError
from tether.data.layout import timing_key
from tether.data.store import EpisodeStore


def episode(n: int, k: int = 0, h: int = 24, w: int = 32) -> dict[str, np.ndarray]:
    t = np.arange(n)
    return {
        "state": np.stack([np.full(n, k), t, t * 0.5], axis=1).astype(np.float32),
        "action": np.stack([t, -t], axis=1).astype(np.float64),  # stored as float32
        "image.cam": np.stack([np.full((h, w, 3), (10 * k + 3 * i) % 250, np.uint8) for i in t]),
        "timestamp": t / 30.0 + 1000.0,
        timing_key("image.cam", "t_host"): t / 30.0 + 1000.0,
    }


@pytest.fixture
def store(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr", 30.0, robot_config={"name": "memory"},
                             calibration="calib/v1.yaml")
    for k, n in enumerate([5, 7, 4]):
        st.add_episode(episode(n, k), {"task": f"task {k}", "success": k != 1})
    yield st
    st.close()


def test_layout_is_diffusion_policy_replay_buffer(store):
    root = zarr.open_group(str(store.path), mode="r")
    np.testing.assert_array_equal(root["meta/episode_ends"][:], [5, 12, 16])
    assert root["meta/episode_ends"].dtype == np.int64
    assert root["data/state"].shape == (16, 3) and root["data/state"].dtype == np.float32
    assert root["data/action"].dtype == np.float32
    assert root["data/image.cam"].shape == (16, 24, 32, 3)
    assert root["data/image.cam"].chunks == (1, 24, 32, 3)
    assert root["data/timestamp"].dtype == np.float64
    assert root["timing/image.cam/t_host"].dtype == np.float64  # timing apart from data
    assert sorted(root["data"].array_keys()) == ["action", "image.cam", "state", "timestamp"]
    attrs = dict(root.attrs)
    assert attrs["fps"] == 30.0 and attrs["format_version"] == 2
    assert attrs["robot_config"] == {"name": "memory"} and attrs["calibration"] == "calib/v1.yaml"


def test_read_back_episodes_slices_and_metadata(store):
    assert store.n_episodes == 3 and store.n_steps == 16
    np.testing.assert_array_equal(store.episode_lengths, [5, 7, 4])
    ep = store.get_episode(1)
    np.testing.assert_array_equal(ep["state"][:, 1], np.arange(7))
    np.testing.assert_allclose(ep["timestamp"], np.arange(7) / 30.0 + 1000.0)  # float64 kept
    assert np.abs(ep["image.cam"].astype(int) - episode(7, 1)["image.cam"]).max() <= 2  # JPEG
    part = store.slice_episode(1, 2, 5, keys=["state"])
    assert list(part) == ["state"]
    np.testing.assert_array_equal(part["state"][:, 1], [2, 3, 4])
    np.testing.assert_array_equal(store.slice_episode(1, -2)["state"][:, 1], [5, 6])
    assert [len(e["action"]) for e in store.iter_episodes(["action"])] == [5, 7, 4]
    meta = store.episode_metadata(2)
    assert meta["task"] == "task 2" and meta["success"] is True and meta["length"] == 4
    store.update_episode_metadata(1, success=True, notes="reviewed")
    with EpisodeStore.open(store.path, "r") as again:
        assert again.episode_metadata(1)["notes"] == "reviewed"


def test_writer_buffers_discards_and_commits(store):
    writer = store.begin_episode(flush_every=3)
    data = episode(8, 9)
    for t in range(8):
        writer.append({k: v[t] for k, v in data.items()})
    assert writer.n_steps == 8
    with EpisodeStore.open(store.path, "r") as reader:  # uncommitted: invisible to readers
        assert reader.n_episodes == 3 and reader.recovery.partial_steps == 6
    writer.discard()
    assert store.array("state").shape[0] == 16
    with pytest.raises(StoreError, match="already committed or discarded"):
        writer.append({k: v[0] for k, v in data.items()})
    writer = store.begin_episode()
    writer.extend(data)
    assert writer.commit({"uid": 9}) == 3
    np.testing.assert_array_equal(store.get_episode(3)["state"][:, 0], 9)


def test_delete_compacts_without_reencoding_frames(store):
    before = store.get_episode(2)["image.cam"]
    store.delete_episode(0)
    assert store.n_episodes == 2
    np.testing.assert_array_equal(store.episode_ends, [7, 11])
    assert [store.episode_metadata(i)["task"] for i in range(2)] == ["task 1", "task 2"]
    np.testing.assert_array_equal(store.get_episode(1)["image.cam"], before)  # bytes copied
    assert not store.path.with_name("s.zarr.new").exists()
    assert not store.path.with_name("s.zarr.old").exists()
    store.add_episode(episode(3, 5))  # still writable after the swap
    assert store.n_episodes == 3


@pytest.mark.parametrize("fmt", [2, 3])
def test_merge_and_zarr_formats(tmp_path, store, fmt):
    other = EpisodeStore.create(tmp_path / f"o{fmt}.zarr", 30.0, zarr_format=fmt)
    other.add_episode(episode(6, 7), {"task": "other"})
    assert other.zarr_format == fmt
    other.close()
    if fmt == 2:
        assert (tmp_path / "o2.zarr" / ".zgroup").is_file()
        root = zarr.open_group(str(tmp_path / "o2.zarr"), mode="r", zarr_format=2)
        np.testing.assert_array_equal(root["meta/episode_ends"][:], [6])
    merged = EpisodeStore.merge(tmp_path / "m.zarr", [store.path, tmp_path / f"o{fmt}.zarr"])
    np.testing.assert_array_equal(merged.episode_ends, [5, 12, 16, 22])
    assert merged.episode_metadata(3)["task"] == "other"
    np.testing.assert_array_equal(merged.get_episode(3)["state"][:, 0], 7)
    np.testing.assert_array_equal(merged.get_episode(0)["image.cam"], store.get_episode(0)["image.cam"])
    merged.close()


def test_format_2_is_readable_with_plain_zarr_and_imagecodecs(tmp_path):
    """An outside reader needs only zarr + `imagecodecs.numcodecs.register_codecs()`."""
    st = EpisodeStore.create(tmp_path / "v2.zarr", 30.0, zarr_format=2)
    st.add_episode(episode(4, 3))
    st.close()
    code = (
        "import zarr, numpy, imagecodecs.numcodecs as c; c.register_codecs();"
        f"g = zarr.open_group({str(tmp_path / 'v2.zarr')!r}, mode='r');"
        "print(int(g['meta/episode_ends'][-1]), int(g['data/image.cam'][2].mean()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["4", str((30 + 6) % 250)]


def test_other_processes_cannot_write_at_the_same_time(store):
    code = f"from tether.data.store import EpisodeStore; EpisodeStore.open({str(store.path)!r}, 'a')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "StoreError" in result.stderr and f"is in use by process {os.getpid()}" in result.stderr
    with EpisodeStore.open(store.path, "r") as reader:  # readers are fine
        assert reader.n_episodes == 3


# ---------------------------------------------------------------------- bad input
def test_opening_something_that_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        EpisodeStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(StoreError, match="not an episode store"):
        EpisodeStore.open(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a tether episode store"):
        EpisodeStore.open(tmp_path / "foreign.zarr")
    with pytest.raises(StoreError, match="Refusing to overwrite"):
        EpisodeStore.create(tmp_path / "plain", 30.0, overwrite=True)
    with pytest.raises(StoreError, match="mode must be"):
        EpisodeStore.open(tmp_path / "foreign.zarr", "w")


def test_newer_format_version_is_refused(store):
    path = store.path
    store.close()
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="version 99, newer than this tether supports"):
        EpisodeStore.open(path)


def test_mismatched_shapes_dtypes_and_keys_are_refused(store):
    bad_shape = episode(4, 1)
    bad_shape["state"] = np.zeros((4, 5), np.float32)
    with pytest.raises(StoreError, match=r"Key 'state': step shape \(5,\) does not match"):
        store.add_episode(bad_shape)
    bad_dtype = episode(4, 1)
    bad_dtype["image.cam"] = bad_dtype["image.cam"].astype(np.float32)
    with pytest.raises(StoreError, match="Image key 'image.cam' must be uint8"):
        store.add_episode(bad_dtype)
    missing = episode(4, 1)
    del missing["timestamp"]
    with pytest.raises(StoreError, match=r"missing \['timestamp'\]"):
        store.add_episode(missing)
    ragged = episode(4, 1)
    ragged["action"] = ragged["action"][:3]
    with pytest.raises(StoreError, match="same number of steps"):
        store.add_episode(ragged)
    nan = episode(4, 1)
    nan["action"][2, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        store.add_episode(nan)
    with pytest.raises(StoreError, match="empty episode"):
        store.begin_episode().commit()
    # nothing committed was touched, and no tail was left behind
    assert store.n_episodes == 3 and store.array("state").shape[0] == 16
    np.testing.assert_array_equal(store.get_episode(2)["state"][:, 0], 2)


def test_read_only_store_refuses_writes(store):
    with EpisodeStore.open(store.path, "r") as reader:
        for action in (lambda: reader.add_episode(episode(3)), lambda: reader.delete_episode(0),
                       lambda: reader.set_attrs(note="x"), lambda: reader.begin_episode()):
            with pytest.raises(StoreError, match="open read-only"):
                action()
    with pytest.raises(StoreError, match="Episode 3 does not exist"):
        store.get_episode(3)


@pytest.fixture
def small_disk(tmp_path):
    """A real 600 kB tmpfs (root only); tests/data/test_store_integrity.py covers the same path
    without root by failing zarr's real write call with ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_a_clear_error_and_keeps_committed_episodes(small_disk):
    st = EpisodeStore.create(small_disk / "s.zarr", 30.0, image_codec="none")
    st.add_episode(episode(3, 1), {"task": "kept"})
    big = episode(2000, 2)  # ~4.6 MB of raw frames: cannot fit in 600 kB
    with pytest.raises(StoreError, match="Disk full"):
        st.add_episode(big)
    st.close()
    with EpisodeStore.open(small_disk / "s.zarr", "r") as reader:
        assert reader.n_episodes == 1
        assert reader.episode_metadata(0)["task"] == "kept"
        np.testing.assert_array_equal(reader.get_episode(0)["image.cam"], episode(3, 1)["image.cam"])
