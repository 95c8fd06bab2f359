"""kill -9 a process that is recording into a store, at random moments, and check the store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tether.data.store import EpisodeStore

WRITER = Path(__file__).with_name("crash_writer.py")
sys.path.insert(0, str(WRITER.parent))
from crash_writer import episode_length, frame_value  # noqa: E402


def _run_and_kill(path: Path, delay_s: float) -> list[int]:
    """Start the writer; once it reported its first commit, SIGKILL it `delay_s` later.

    Waiting for a commit (not a fixed time after start) makes every round commit something
    however slow the machine is; the kill still lands at a random point of a later episode,
    commit or compaction. Returns the last reported uids.
    """
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"writer did not start: {line!r}"
        first = proc.stdout.readline()
        assert first.startswith("uids"), f"writer failed before its first commit: {first!r}"
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reported = [ln for ln in (first + out).splitlines() if ln.startswith("uids")]
    return [int(u) for u in reported[-1].split()[1:]] if reported else []


def _check_store(path: Path, reported: list[int], previous: list[int]) -> tuple[list[int], int]:
    with EpisodeStore.open(path, "r") as peek:  # read-only: hides the tail, touches nothing
        partial = peek.recovery.partial_steps
    with EpisodeStore.open(path, "a") as store:  # append mode: repairs the tail
        assert store.recovery.partial_steps == partial
        uids = [int(store.episode_metadata(e)["uid"]) for e in range(store.n_episodes)]
        for e, uid in enumerate(uids):
            data = store.get_episode(e)
            n = episode_length(uid)
            assert len(data["state"]) == n, f"episode uid {uid} has wrong length"
            np.testing.assert_array_equal(data["state"][:, 0], uid)
            np.testing.assert_array_equal(data["state"][:, 1], np.arange(n))
            expected = np.array([frame_value(uid, t) for t in range(n)])
            assert np.abs(data["image.cam"].reshape(n, -1).astype(int).mean(1) - expected).max() < 3
        assert store.n_steps == sum(episode_length(u) for u in uids)
        for arr_key in store.keys:  # the tail was truncated on disk
            assert store.array(arr_key).shape[0] == store.n_steps
    # Durability: what was reported committed is there, except at most one compaction or
    # commit that completed after the last report.
    base = reported or previous
    missing = [u for u in base if u not in uids]
    extra = [u for u in uids if u not in base]
    assert len(missing) <= 1 and len(extra) <= 1, (base, uids)
    if missing:
        assert missing == [base[0]], "only a compaction of the first episode may be unreported"
    return uids, partial


def _kill_loop(tmp_path: Path, repetitions: int, seed: int) -> int:
    """Returns how many kills left a partial (uncommitted) tail behind."""
    rng = random.Random(seed)
    path = tmp_path / "crash.zarr"
    EpisodeStore.create(path, 30.0).close()
    uids: list[int] = []
    torn = 0
    for _ in range(repetitions):
        reported = _run_and_kill(path, rng.uniform(0.05, 0.8))
        uids, partial = _check_store(path, reported, uids)
        torn += partial > 0
    with EpisodeStore.open(path, "r") as store:
        assert store.recovery.clean  # the last append-mode open repaired everything
        assert store.n_episodes == len(uids) > 0
    return torn


def test_sigkill_during_recording_keeps_committed_episodes(tmp_path):
    _kill_loop(tmp_path, repetitions=5, seed=1)


@pytest.mark.slow
def test_sigkill_twenty_times(tmp_path):
    torn = _kill_loop(tmp_path, repetitions=20, seed=2)
    assert torn >= 5, f"only {torn} of 20 kills hit an episode mid-write; the test lost its teeth"
