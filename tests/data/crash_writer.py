"""Writer process for the kill -9 test: records episodes forever until it is killed.

Episode `uid` has a length and content that depend only on `uid`, so the test can verify every
committed episode after the kill. After each commit (or compaction) it prints the list of uids
in the store, flushed, so the parent knows what was durably committed before the kill.
"""

from __future__ import annotations

import sys

import numpy as np

from tether.data.store import EpisodeStore


def episode_length(uid: int) -> int:
    return int(np.random.default_rng(uid).integers(3, 40))


def step(uid: int, t: int) -> dict[str, np.ndarray]:
    return {
        "state": np.array([uid, t, 0.5], dtype=np.float32),
        "action": np.array([t, -uid], dtype=np.float32),
        "image.cam": np.full((24, 32, 3), frame_value(uid, t), dtype=np.uint8),
        "timestamp": np.float64(t / 30.0),
    }


def frame_value(uid: int, t: int) -> int:
    return (uid * 37 + t * 5) % 200 + 20


def main(path: str) -> None:
    store = EpisodeStore.open(path, "a")
    uids = [int(store.episode_metadata(e)["uid"]) for e in range(store.n_episodes)]
    uid = max(uids, default=-1) + 1
    print("ready", flush=True)
    while True:
        writer = store.begin_episode(flush_every=4)
        for t in range(episode_length(uid)):
            writer.append(step(uid, t))
        writer.commit({"uid": uid, "task": "crash test"})
        uids.append(uid)
        uid += 1
        if uid % 7 == 0 and len(uids) > 2:  # exercise compaction too
            store.delete_episode(0)
            uids.pop(0)
        print("uids", " ".join(map(str, uids)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
