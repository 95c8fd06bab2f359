"""Costs that stay flat as the store grows (issue 18): asserted as behaviour, not time.

Opening a store opens the same files whether it holds 5 or 60 episodes (episode metadata is
read on use, not at open), an append open lists no per-episode folder (data/last_commit.py),
and a commit writes the same files. A writer killed mid-episode is still recovered at any size.
benchmarks/store_growth.py measures the times at 100 / 1,000 / 10,000 episodes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tether.core.errors import StoreError
from tether.data import episodes as _episodes
from tether.data import last_commit
from tether.data import manifest as _manifest
from tether.data.store import EpisodeStore

_OPENED: list[str] | None = None
_LISTED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))
    if _LISTED is not None and event in ("os.listdir", "os.scandir") and \
            isinstance(args[0], str | bytes | os.PathLike):
        _LISTED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # cannot be removed; inert unless a test is counting


def opened_files(fn) -> list[str]:
    """Paths of the files (not folders) `fn()` opens, through Python or zarr."""
    global _OPENED
    _OPENED = []
    try:
        fn()
        return [p for p in _OPENED if not os.path.isdir(p)]
    finally:
        _OPENED = None


def touched(fn) -> tuple[list[str], list[str]]:
    """(files opened, folders listed) by `fn()`."""
    global _LISTED
    _LISTED = []
    try:
        files = opened_files(fn)
        return files, sorted(os.path.basename(p.rstrip("/")) for p in _LISTED)
    finally:
        _LISTED = None


def settle(path: Path) -> None:
    """Date the per-episode folders' last change well before now, then open for appending once.

    On kernels before 6.13 file times are coarse (one clock tick), so a commit's folder stamps
    are often in the tick its `last_commit.json` was written in; the next append open cannot
    trust them then and lists the folders (correct, and what every open did before). Tests that
    assert the listing is skipped make the stamps old, as a second session's would be.
    """
    old = time.time_ns() - 10**10
    for name in last_commit.FOLDERS:
        os.utime(path / name, ns=(old, old))
    EpisodeStore.open(path, "a").close()  # lists once, records the settled stamps


def grow(path: Path, n: int, start: int = 0) -> None:
    rng = np.random.default_rng(start)
    with EpisodeStore.open(path, "a") as store:
        for e in range(start, start + n):
            store.add_episode({"state": rng.normal(size=(3, 2)).astype(np.float32),
                               "action": rng.normal(size=(3, 2)).astype(np.float32),
                               "image.cam": rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)},
                              {"task": f"t{e}", "seed": e})


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), path)] = (st.st_mtime_ns, st.st_size)
    return out


def commit_footprint(path: Path, seed: int) -> tuple[int, int]:
    """(files created or rewritten, their bytes) by one commit."""
    before = snapshot(path)
    grow(path, 1, start=seed)
    after = snapshot(path)
    changed = [k for k, v in after.items() if before.get(k) != v]
    return len(changed), sum(after[k][1] for k in changed)


@pytest.fixture
def store_path(tmp_path) -> Path:
    path = tmp_path / "g.zarr"
    EpisodeStore.create(path, 10.0).close()
    return path


def test_open_opens_the_same_files_at_5_and_60_episodes(store_path):
    grow(store_path, 5)
    small_read = opened_files(lambda: EpisodeStore.open(store_path).close())
    small_append = opened_files(lambda: EpisodeStore.open(store_path, "a").close())
    grow(store_path, 55, start=5)
    large_read = opened_files(lambda: EpisodeStore.open(store_path).close())
    large_append = opened_files(lambda: EpisodeStore.open(store_path, "a").close())
    assert len(large_read) == len(small_read)
    assert len(large_append) == len(small_append)
    assert not any("/episodes/" in p for p in large_read)  # metadata is read on use
    with EpisodeStore.open(store_path) as store:  # ... and then it is all there
        assert store.episode_metadata(42)["task"] == "t42" and store.next_seed == 60


def test_a_commit_writes_the_same_files_at_5_and_60_episodes(store_path):
    grow(store_path, 5)
    small = commit_footprint(store_path, 5)
    grow(store_path, 54, start=6)
    large = commit_footprint(store_path, 60)
    assert large[0] == small[0]  # the episode's chunks, manifest, metadata, the commit point
    assert large[1] <= 2 * small[1]


def test_damaged_metadata_is_still_found_by_who_reads_it(store_path):
    grow(store_path, 4)
    (store_path / "episodes" / "000002.json").write_text("[]")
    with EpisodeStore.open(store_path) as reader:  # read-only: a placeholder, and it is counted
        assert reader.episode_metadata(2)["recovered"] is True
        assert reader.recovery.missing_metadata == 1 and reader.recovery.damaged
    with EpisodeStore.open(store_path, "a") as writer, pytest.raises(StoreError, match="repair"):
        writer.episode_metadata(2)


def test_append_open_and_next_seed_touch_the_same_files_at_5_and_60_episodes(store_path):
    def record_append_start() -> None:  # what `tether record --append` does before recording
        with EpisodeStore.open(store_path, "a") as store:
            assert store.next_seed == store.n_episodes  # grow() seeds episode e with e

    grow(store_path, 5)
    settle(store_path)
    small_files, small_listed = touched(record_append_start)
    grow(store_path, 55, start=5)
    settle(store_path)
    large_files, large_listed = touched(record_append_start)
    assert len(large_files) == len(small_files) and large_listed == small_listed
    assert not {"episodes", "manifest"} & set(large_listed)  # no per-episode folder is listed
    assert [p for p in large_files if "/episodes/" in p] == [str(store_path / "episodes/000059.json")]


@pytest.mark.parametrize("same_tick", [False, True])
def test_a_writer_killed_mid_commit_is_recovered_at_60_episodes(store_path, same_tick):
    """Killed after its manifest and metadata were written, before the commit point."""
    grow(store_path, 60)
    settle(store_path)
    record = last_commit.read(store_path)
    store = EpisodeStore.open(store_path, "a")
    writer = store.begin_episode()
    writer.extend({"state": np.ones((3, 2), np.float32), "action": np.ones((3, 2), np.float32),
                   "image.cam": np.ones((3, 8, 8, 3), np.uint8)})
    h = writer.handles
    manifest_bytes = _manifest.encode(_manifest.build(store_path, h.arrays, h.n_steps, h.n_steps + 3))
    (store_path / "manifest" / "000060.json").write_bytes(manifest_bytes)
    _episodes.write(store_path, 60, {"index": 60, "length": 3, "task": "killed", "seed": 60})
    store._lock.release()  # the process dies here: no discard, no commit
    if same_tick:  # as if it died within the clock tick of the last commit: stamps unchanged
        for name in last_commit.FOLDERS:
            mtime = record.folders[name][1]
            os.utime(store_path / name, ns=(mtime, mtime))
    opened: list[EpisodeStore] = []
    _, listed = touched(lambda: opened.append(EpisodeStore.open(store_path, "a")))
    # changed stamps: the folders are listed, as before; unchanged: the files are found by name
    assert ("episodes" in listed) is not same_tick
    with opened[0] as again:
        rec = again.recovery
        assert rec.partial_steps == 3 and rec.dropped_metadata == 1 and rec.repaired
        assert not rec.damaged and again.n_episodes == 60 and again.next_seed == 60
        assert not (store_path / "episodes" / "000060.json").exists()
        assert not (store_path / "manifest" / "000060.json").exists()
        assert again.array("state").shape[0] == again.n_steps
        assert again.add_episode({"state": np.zeros((2, 2), np.float32),
                                  "action": np.zeros((2, 2), np.float32),
                                  "image.cam": np.zeros((2, 8, 8, 3), np.uint8)},
                                 {"task": "next", "seed": 70}) == 60
    with EpisodeStore.open(store_path) as reader:
        assert reader.recovery.clean and reader.episode_metadata(60)["task"] == "next"
        assert reader.next_seed == 71


def test_a_lost_metadata_file_is_still_refused_at_60_episodes(store_path):
    grow(store_path, 60)
    settle(store_path)
    (store_path / "episodes" / "000030.json").unlink()
    with pytest.raises(StoreError, match=r"no \(readable\) metadata file.*tether data repair"):
        EpisodeStore.open(store_path, "a")


def test_lost_commits_past_the_last_valid_one_are_still_refused(store_path):
    grow(store_path, 8)
    settle(store_path)
    with EpisodeStore.open(store_path, "a") as store:  # two commits' ends vanish (torn write)
        store._h.ends_array.resize((6,))
    with pytest.raises(StoreError, match=r"damaged, not just interrupted.*tether data repair"):
        EpisodeStore.open(store_path, "a")


def test_next_seed_follows_metadata_edits(store_path):
    grow(store_path, 5)  # seeds 0..4
    with EpisodeStore.open(store_path, "a") as store:
        assert store.next_seed == 5
        store.update_episode_metadata(4, seed=1)  # the largest seed went down
        assert store.next_seed == 4
        store.update_episode_metadata(0, seed=99)
        assert store.next_seed == 100
    with EpisodeStore.open(store_path) as reader:
        assert reader.next_seed == 100
    (store_path / last_commit.FILE).write_text("{ torn")  # a damaged cache is ignored
    with EpisodeStore.open(store_path, "a") as store:
        assert store.next_seed == 100  # counted again from the files ...
        store.add_episode({"state": np.zeros((2, 2), np.float32), "action": np.zeros((2, 2), np.float32),
                           "image.cam": np.zeros((2, 8, 8, 3), np.uint8)}, {"seed": 3})
    assert last_commit.read(store_path).seeds == (6, 100)  # ... and the commit records them
