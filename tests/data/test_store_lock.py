"""One writer lock (`<store>.lock`) per store, held across recovery, rewrite, swap and
re-creation, tested against a real second process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tether.core.errors import StoreError
from tether.data.store import EpisodeStore

HOLDER = Path(__file__).with_name("lock_holder.py")


def episode(n: int, k: int) -> dict[str, np.ndarray]:
    return {"state": np.full((n, 2), k + 1, np.float32),
            "image.cam": np.full((n, 8, 8, 3), 10 * k + 5, np.uint8)}


@pytest.fixture
def path(tmp_path) -> Path:
    p = tmp_path / "s.zarr"
    with EpisodeStore.create(p, 30.0) as store:
        for k in range(3):
            store.add_episode(episode(4 + k, k), {"k": k})
    return p


class Holder:
    """The second process; `expect` reads its next line, `go` lets it continue."""

    def __init__(self, path: Path, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HOLDER), str(path), mode], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def expect(self, word: str) -> str:
        line = self.proc.stdout.readline()
        assert line.startswith(word), f"holder said {line!r}; stderr: {self.proc.stderr.read()}"
        return line

    def go(self) -> str:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.expect("done")
        assert self.proc.wait(timeout=60) == 0
        return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_second_process_cannot_append_overwrite_or_recreate_while_one_writes(path):
    holder = Holder(path, "hold")
    try:
        holder.expect("ready")
        pid = holder.proc.pid
        with pytest.raises(StoreError, match=rf"in use by process {pid}.*read-only"):
            EpisodeStore.open(path, "a")
        with pytest.raises(StoreError, match=rf"in use by process {pid}"):
            EpisodeStore.create(path, 30.0, overwrite=True)
        with EpisodeStore.open(path, "r") as reader:  # readers are never locked out
            assert reader.n_episodes == 3
        holder.go()
    finally:
        holder.kill()
    with EpisodeStore.open(path, "a") as store:  # released when the holder is done
        assert store.n_episodes == 3


def test_nobody_can_remove_the_new_store_or_the_store_during_a_rewrite(path):
    new = path.with_name("s.zarr.new")
    holder = Holder(path, "rewrite")
    try:
        holder.expect("in-rewrite")
        assert new.is_dir()  # half-written compaction, lock held by the holder
        pid = holder.proc.pid
        for attempt in (lambda: EpisodeStore.open(path, "a"),
                        lambda: EpisodeStore.open(path, "a", repair=True),
                        lambda: EpisodeStore.create(path, 30.0, overwrite=True)):
            with pytest.raises(StoreError, match=rf"in use by process {pid}"):
                attempt()
        with EpisodeStore.open(path, "r") as reader:
            assert reader.n_episodes == 3
        assert new.is_dir() and path.is_dir()  # nothing was removed under the holder's feet
        assert holder.go().split() == ["done", "2"]
    finally:
        holder.kill()
    assert not new.exists() and not path.with_name("s.zarr.old").exists()
    with EpisodeStore.open(path, "a") as store:
        assert [store.episode_metadata(e)["k"] for e in range(2)] == [1, 2]
        np.testing.assert_array_equal(store.get_episode(0)["state"], episode(5, 1)["state"])


def test_a_killed_writer_releases_the_lock(path):
    holder = Holder(path, "hold")
    try:
        holder.expect("ready")
    finally:
        holder.kill()  # SIGKILL: the kernel drops the flock with the process
    with EpisodeStore.open(path, "a") as store:
        assert store.n_episodes == 3


def test_create_overwrite_holds_the_lock_until_closed(path):
    store = EpisodeStore.create(path, 15.0, overwrite=True)
    try:
        assert store.n_episodes == 0 and store.fps == 15.0
        with pytest.raises(StoreError, match=f"in use by process {os.getpid()}"):
            EpisodeStore.open(path, "a")  # even from this process
    finally:
        store.close()
    EpisodeStore.open(path, "a").close()


def test_lock_is_a_sibling_file_that_survives_compaction(path):
    with EpisodeStore.open(path, "a") as store:
        lock = path.with_name("s.zarr.lock")
        inode = lock.stat().st_ino
        store.delete_episodes([0])
        assert lock.stat().st_ino == inode and not (path / ".tether-writer.lock").exists()
        with pytest.raises(StoreError, match="in use by process"):
            EpisodeStore.open(path, "a")  # still held after the swap
        store.add_episode(episode(3, 9))
    assert not path.with_name("s.zarr.new.lock").exists()
