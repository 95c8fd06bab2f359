"""Second process for the lock tests: holds a store's writer lock until told to go on.

    lock_holder.py STORE hold      open for appending, print "ready", wait for a line on stdin
    lock_holder.py STORE rewrite   delete episode 0, pausing mid-rewrite (`<store>.new` half
                                   written, lock held) with "in-rewrite" until a line arrives
Prints "done <n_episodes>" and exits 0 when finished.
"""

from __future__ import annotations

import sys

from tether.data import editing
from tether.data.store import EpisodeStore


def main(path: str, mode: str) -> None:
    store = EpisodeStore.open(path, "a")
    if mode == "hold":
        print("ready", flush=True)
        sys.stdin.readline()
    else:
        real_copy = editing.copy_episode
        paused = []

        def copy_then_pause(target, source, episode):
            index = real_copy(target, source, episode)
            if not paused:
                paused.append(True)
                print("in-rewrite", flush=True)
                sys.stdin.readline()
            return index

        editing.copy_episode = copy_then_pause
        store.delete_episodes([0])
    print("done", store.n_episodes, flush=True)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
