"""Costs that stay flat as the store grows (issue 18): asserted as behaviour, not time.

Opening a store opens the same files whether it holds 5 or 60 episodes (episode metadata is
read on use, not at open), and a commit writes the same files. benchmarks/store_growth.py
measures the times at 100 / 1,000 / 10,000 episodes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tether.core.errors import StoreError
from tether.data.store import EpisodeStore

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


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
