"""Store integrity: full disk at every write of a commit, damage never truncated silently,
read-only opens that change nothing, lost and corrupt chunks named by episode/key/frame,
damaged metadata files named."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr.storage._local as zarr_local

from tether.core.errors import StoreError
from tether.data.dataset import EpisodeDataset
from tether.data.layout import timing_key
from tether.data.store import EpisodeStore, chunk_file
from tether.data.verify import repair_store, verify_path
from tether.data.writer import ensure_arrays


def episode(n: int, k: int = 0) -> dict[str, np.ndarray]:
    t = np.arange(n)
    return {
        "state": np.stack([np.full(n, k + 1), t], axis=1).astype(np.float32),
        "action": np.stack([t, -t], axis=1).astype(np.float32),
        "image.cam": np.stack([np.full((16, 16, 3), (10 * k + 3 * i) % 250 + 1, np.uint8) for i in t]),
        "timestamp": t / 30.0,
        timing_key("image.cam", "index"): t,
    }


@pytest.fixture
def path(tmp_path) -> Path:
    p = tmp_path / "s.zarr"
    with EpisodeStore.create(p, 30.0) as st:
        for k, n in enumerate([5, 7, 4]):
            st.add_episode(episode(n, k), {"task": f"t{k}", "seed": 10 + k})
    return p


def tree_digest(folder: Path) -> str:
    """Names, sizes and contents of everything in `folder` (the store and its siblings)."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        h.update(root.encode())
        for name in sorted(files):
            h.update(name.encode())
            h.update((Path(root) / name).read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- full disk
@pytest.mark.parametrize("target", [
    "data/image.cam/c/",  # a frame chunk, while the episode is written
    "timing/image.cam/",  # a timing array, while the episode is written
    "meta/episode_ends/zarr.json",  # growing the commit array
    "meta/episode_ends/c/",  # the commit point itself
])
def test_full_disk_at_any_write_of_a_commit_drops_only_that_episode(path, monkeypatch, target):
    real_put = zarr_local._put
    armed = {"on": False}

    def put(file: Path, value, exclusive: bool = False):  # the real write call of zarr's LocalStore
        if armed["on"] and target in Path(file).relative_to(path).as_posix():
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_put(file, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    store = EpisodeStore.open(path, "a")
    armed["on"] = True
    with pytest.raises(StoreError, match="Disk full while .*dropped; committed episodes are intact"):
        store.add_episode(episode(6, 7))
    assert store.n_episodes == 3
    with EpisodeStore.open(path, "r") as reader:  # readable, the three committed episodes intact
        assert reader.n_episodes == 3 and not reader.recovery.damaged
        np.testing.assert_array_equal(reader.get_episode(1)["state"][:, 1], np.arange(7))
    assert verify_path(path).ok
    armed["on"] = False  # space freed: the same open store keeps working
    assert store.add_episode(episode(3, 8)) == 3
    store.close()
    with EpisodeStore.open(path, "a") as again:  # no damage, nothing refused
        assert again.n_episodes == 4 and not again.recovery.damaged
        np.testing.assert_array_equal(again.get_episode(3)["state"][:, 0], 9)


@pytest.mark.parametrize("module", ["writer", "episodes"])  # the manifest, the metadata file
def test_full_disk_in_the_manifest_or_metadata_write_is_a_dropped_episode(path, monkeypatch, module):
    import importlib

    def no_space(file, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    with EpisodeStore.open(path, "a") as store:
        monkeypatch.setattr(importlib.import_module(f"tether.data.{module}"), "write_durable", no_space)
        with pytest.raises(StoreError, match="Disk full"):
            store.add_episode(episode(4, 5))
        monkeypatch.undo()
        assert store.array("state").shape[0] == store.n_steps == 16  # tail truncated
    assert verify_path(path).ok


# ---------------------------------------------------------------------- append never loses data
def test_append_open_refuses_when_committed_data_is_missing_and_repair_fixes_it(path, tmp_path):
    root = zarr_local.LocalStore(str(path))
    import zarr

    group = zarr.open_group(root, mode="r+")
    for key in ("data/state", "data/action", "data/image.cam", "data/timestamp", "timing/image.cam/index"):
        group[key].resize((14, *group[key].shape[1:]))  # cut into episode 2
    before = tree_digest(tmp_path)
    with pytest.raises(StoreError, match=r"damaged, not just interrupted.*tether data repair"):
        EpisodeStore.open(path, "a")
    assert tree_digest(tmp_path) == before  # refused before changing anything
    with EpisodeStore.open(path, "r") as reader:  # readers see the intact episodes, flagged
        assert reader.n_episodes == 2 and reader.recovery.lost_episodes == 1
    assert not verify_path(path).ok
    result = repair_store(path)
    assert any("dropped 1 lost commit" in a for a in result.actions) and result.after.ok
    with EpisodeStore.open(path, "a") as store:
        assert store.n_episodes == 2
        np.testing.assert_array_equal(store.get_episode(1)["state"][:, 0], 2)


def test_lost_commit_point_chunk_is_refused_not_truncated(path, tmp_path):
    shutil.rmtree(path / "meta" / "episode_ends" / "c")  # every end reads back as 0
    with pytest.raises(StoreError, match="tether data repair"):
        EpisodeStore.open(path, "a")
    with EpisodeStore.open(path, "r") as reader:
        assert reader.n_episodes == 0 and reader.recovery.damaged
    assert EpisodeStore.open(path, "r").array("state").shape[0] == 16  # nothing truncated


def test_a_crash_tail_is_still_truncated_on_append(path):
    store = EpisodeStore.open(path, "a")
    writer = store.begin_episode()
    writer.extend(episode(6, 3))  # uncommitted data on disk, then the process "dies"
    store._lock.release()
    with EpisodeStore.open(path, "a") as again:
        assert again.recovery.partial_steps == 6 and again.recovery.repaired
        assert not again.recovery.damaged and again.n_episodes == 3
        assert again.array("state").shape[0] == 16


def test_read_only_open_changes_nothing_on_disk(path, tmp_path):
    store = EpisodeStore.open(path, "a")
    writer = store.begin_episode()
    writer.extend(episode(6, 3))  # a live uncommitted tail
    before = tree_digest(tmp_path)
    with EpisodeStore.open(path, "r") as reader:
        assert reader.n_episodes == 3 and reader.recovery.partial_steps == 6
        reader.get_episode(2)
        EpisodeDataset(path, action_horizon=2)[0]
    assert tree_digest(tmp_path) == before
    writer.discard()
    store.close()
    # an interrupted compaction: read-only refuses (with the fix) instead of renaming
    os.rename(path, path.with_name("s.zarr.old"))
    before = tree_digest(tmp_path)
    with pytest.raises(StoreError, match="half-way through a compaction.*tether data repair"):
        EpisodeStore.open(path, "r")
    assert tree_digest(tmp_path) == before
    with EpisodeStore.open(path, "a") as fixed:  # append (or repair) rolls it back
        assert fixed.n_episodes == 3


def test_read_only_open_creates_no_lock_file(tmp_path):
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path, 30.0).close()
    os.unlink(path.with_name("s.zarr.lock"))
    EpisodeStore.open(path, "r").close()
    assert not path.with_name("s.zarr.lock").exists()


# ---------------------------------------------------------------------- lost and corrupt chunks
def test_deleted_image_chunk_is_an_error_naming_episode_key_and_frame(path):
    with EpisodeStore.open(path) as store:
        chunk_file(store, "image.cam", 7).unlink()  # episode 1, frame 2
        with pytest.raises(StoreError, match=r"Episode 1, key 'image.cam', frame 2 .*is missing"):
            store.get_episode(1)
        store.get_episode(0)  # other episodes still read
    ds = EpisodeDataset(path, action_horizon=2)
    with pytest.raises(StoreError, match=r"Episode 1, key 'image.cam', frame 2"):
        ds[7]
    problems = verify_path(path).problems
    assert [(p.kind, p.episode, p.key, p.frame) for p in problems] == [("missing", 1, "image.cam", 2)]


def test_black_frames_that_were_never_stored_still_read_as_black(tmp_path):
    data = episode(4)
    data["image.cam"][1] = 0  # zarr does not store a chunk equal to the fill value
    # (per-frame JPEG; a video group stores every frame: tests/data/test_codecs.py)
    with EpisodeStore.create(tmp_path / "b.zarr", 30.0, image_codec="jpeg") as store:
        store.add_episode(data)
        assert not chunk_file(store, "image.cam", 1).exists()
        assert store.get_episode(0)["image.cam"][1].max() == 0
    assert EpisodeDataset(tmp_path / "b.zarr", action_horizon=1)[1]["image.cam"].max() == 0
    assert verify_path(tmp_path / "b.zarr").ok


def test_garbage_chunk_is_an_error_naming_episode_key_and_frame(path):
    with EpisodeStore.open(path) as store:
        chunk_file(store, "image.cam", 13).write_bytes(b"not a jpeg at all")  # episode 2, frame 1
        with pytest.raises(StoreError, match=r"Cannot decode episode 2, key 'image.cam', frame 1"):
            store.get_episode(2)
    with pytest.raises(StoreError, match=r"Cannot decode episode 2, key 'image.cam', frame 1"):
        EpisodeDataset(path, action_horizon=2)[13]
    problems = verify_path(path).problems
    assert [(p.kind, p.episode, p.key, p.frame) for p in problems] == [("corrupt", 2, "image.cam", 1)]


def test_lost_lowdim_chunk_is_detected(path):
    (path / "data" / "state" / "c" / "0" / "0").unlink()  # the one chunk of all 16 rows
    with EpisodeStore.open(path) as store, pytest.raises(StoreError, match=r"key 'state'.*missing"):
        store.get_episode(0)
    with pytest.raises(StoreError, match="key 'state'"):
        EpisodeDataset(path)
    report = verify_path(path)
    assert {(p.kind, p.episode, p.key) for p in report.problems} == {
        ("missing", e, "state") for e in range(3)}


def test_repair_drop_damaged_keeps_the_intact_episodes(path):
    with EpisodeStore.open(path) as store:
        chunk_file(store, "image.cam", 7).unlink()
    result = repair_store(path, drop_damaged=True)
    assert result.dropped_episodes == [1] and result.after.ok
    with EpisodeStore.open(path) as store:
        assert [store.episode_metadata(e)["task"] for e in range(store.n_episodes)] == ["t0", "t2"]


def test_stores_without_manifests_are_decoded_and_repair_writes_manifests(path):
    shutil.rmtree(path / "manifest")  # as written by an older tether
    report = verify_path(path)
    assert report.ok and report.unverified == [0, 1, 2]
    result = repair_store(path)
    assert result.after.ok and not result.after.unverified


# ---------------------------------------------------------------------- damaged metadata files
@pytest.mark.parametrize("relative", ["meta/zarr.json", "zarr.json", "data/state/zarr.json",
                                      "meta/episode_ends/zarr.json"])
def test_truncated_metadata_file_is_named(path, relative):
    file = path / relative
    file.write_text(file.read_text()[:40])
    with pytest.raises(StoreError, match=rf"{file}.* is damaged \(not valid JSON"):
        EpisodeStore.open(path)


def test_wrong_episode_metadata_is_named_and_repair_resets_only_it(path):
    (path / "episodes" / "000001.json").write_text(json.dumps(["oops"]))
    # opening reads no metadata file (open time stays flat); a writer that reads it refuses
    with EpisodeStore.open(path, "a") as writer, \
            pytest.raises(StoreError, match=r"episodes/000001.json is damaged.*tether data repair"):
        writer.episode_metadata(1)
    with EpisodeStore.open(path) as reader:  # readers go on (training needs no metadata)
        assert reader.recovery.damaged and reader.episode_metadata(1)["recovered"] is True
        assert reader.get_episode(1)["state"].shape == (7, 2)
    problems = verify_path(path).problems
    assert any(p.kind == "metadata" and "000001.json is damaged" in p.message for p in problems)
    result = repair_store(path)
    assert any("placeholder metadata" in a for a in result.actions) and result.after.ok
    with EpisodeStore.open(path) as store:
        assert store.episode_metadata(1)["recovered"] is True
        assert store.episode_metadata(2)["task"] == "t2"


def test_zarr_format_2_attrs_damage_is_named(tmp_path):
    path = tmp_path / "v2.zarr"
    with EpisodeStore.create(path, 30.0, zarr_format=2) as store:
        store.add_episode(episode(3))
    (path / "meta" / ".zattrs").write_text("{ truncated")
    with pytest.raises(StoreError, match=r"meta/\.zattrs is damaged"):
        EpisodeStore.open(path)


def test_next_seed_continues_after_recorded_seeds(path, tmp_path):
    with EpisodeStore.open(path) as store:
        assert store.next_seed == 13
    with EpisodeStore.create(tmp_path / "e.zarr", 30.0) as empty:
        assert empty.next_seed == 0


def test_a_deleted_array_is_damage_not_a_new_schema(path):
    shutil.rmtree(path / "data" / "image.cam")
    with pytest.raises(StoreError, match=r"data/image.cam are gone.*tether data repair"):
        EpisodeStore.open(path, "a")
    with EpisodeStore.open(path, "r") as reader:
        assert reader.recovery.missing_keys == ("image.cam",)
    assert {p.kind for p in verify_path(path).problems} >= {"missing", "damaged"}


def test_corrupt_manifest_is_named_and_repair_rewrites_it(path):
    (path / "manifest" / "000001.json").write_text("{ not json")
    with EpisodeStore.open(path) as store, pytest.raises(StoreError, match=r"000001.json is corrupt"):
        store.get_episode(1)
    assert [p.kind for p in verify_path(path).problems] == ["manifest"]
    result = repair_store(path)
    assert result.after.ok and any("episode(s) [1]" in a for a in result.actions)


def test_a_first_episode_killed_while_creating_arrays_does_not_fix_the_schema(tmp_path):
    path = tmp_path / "k.zarr"
    store = EpisodeStore.create(path, 30.0)
    partial = {k: v for k, v in episode(3).items() if k != "timestamp"}
    store.begin_episode().extend(partial)  # as if killed before the last array was created
    store._lock.release()
    with EpisodeStore.open(path, "a") as again:
        assert again.recovery.partial_steps == 3 and again.keys == []
        assert again.add_episode(episode(4)) == 0
        assert "timestamp" in again.keys
    shutil.rmtree(path)  # killed inside the array creation: arrays exist, still empty
    store = EpisodeStore.create(path, 30.0)
    ensure_arrays(store._h, partial)
    store._lock.release()
    with EpisodeStore.open(path, "a") as again:
        assert again.keys == [] and again.add_episode(episode(4)) == 0
    with EpisodeStore.create(tmp_path / "d.zarr", 30.0) as fresh:
        fresh.begin_episode().extend(partial)
        fresh._writer.discard()  # a discarded first attempt does not fix the schema either
        assert fresh.add_episode(episode(2)) == 0
