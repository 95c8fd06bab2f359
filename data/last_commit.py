"""`<store>/last_commit.json`: what the last commit knew, so an append open lists no folder.

The commit point stays `meta/episode_ends` (data/writer.py); this file is a cache beside it,
rewritten after every commit (after the commit point), after a metadata edit, and by an append
open that had to list the folders. It is written with a rename but never fsynced, and nothing in
it is trusted without a check, so a stale, torn or missing file only costs the listing that
every append open did before it existed:

    {"episodes": 60,
     "folders": {"episodes": [inode, mtime_ns], "manifest": [inode, mtime_ns]},
     "seeds": [60, 61]}

- `episodes`: committed episodes when it was written; `folders` describes exactly that many.
- `folders`: the `episodes/` and `manifest/` folders' inode and modification time, taken when
  the writer knew they held every committed episode's files and nothing beyond. A folder's
  mtime changes whenever a file in it is created, removed or renamed over, so while both stamps
  are unchanged no file was lost and no crashed writer left one since: an append open need not
  list the folders (10,000 names each). Timestamps have a granularity (a clock tick on kernels
  before 6.13): a change in the tick the stamp was taken in would keep it. So the stamps count
  only when this file itself is younger than both (its mtime is later), the rule git uses for
  its index ("racy git"); otherwise the open lists, as it always did.
- `seeds`: `[k, s]`, where `s` is one past the largest integer `seed` in the metadata of
  episodes `0..k-1` (null when none has one). Only those episodes need reading to know the next seed; this
  holds while metadata changes go through the store (`update_episode_metadata` keeps it).

Local stores only: remote stores are read-only and never consult it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.data.episodes import EPISODES_DIR
from tether.data.manifest import MANIFEST_DIR

FILE = "last_commit.json"
FOLDERS = (EPISODES_DIR, MANIFEST_DIR)

log = logging.getLogger(__name__)

Stamp = tuple[int, int] | None  # (inode, mtime_ns) of a folder, None when it does not exist


@dataclass(frozen=True)
class LastCommit:
    """One read of `last_commit.json` (see the module docstring)."""

    episodes: int
    folders: Mapping[str, Stamp]
    seeds: tuple[int, int | None]
    written_ns: int  # the file's own mtime: stamps taken in that clock tick cannot be trusted

    def folders_unchanged(self, store_path: Path) -> bool:
        """True when neither folder changed since the stamps were taken (and they can tell)."""
        for name in FOLDERS:
            recorded = self.folders.get(name)
            try:
                if folder_stamp(store_path, name) != recorded:
                    return False
            except OSError:
                return False
            if recorded is not None and not recorded[1] < self.written_ns:
                return False  # taken in the same clock tick as the file: a change could hide
        return True


def read(store_path: Path) -> LastCommit | None:
    """The file's content, None when it is absent, unreadable or not what `write` writes."""
    try:
        with open(Path(store_path) / FILE, "rb") as f:
            written_ns = os.fstat(f.fileno()).st_mtime_ns
            value = json.loads(f.read())
        folders = {name: _stamp(value["folders"][name]) for name in FOLDERS}
        count, seed = value["seeds"]
        seeds = (int(count), None if seed is None else int(seed))
        return LastCommit(int(value["episodes"]), folders, seeds, written_ns)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.debug("Store %s: ignoring %s (%s)", store_path, FILE, exc)
        return None


def write(store_path: Path, episodes: int, seeds: tuple[int, int | None]) -> None:
    """Record the folders as they are now: call only when they hold exactly the committed
    episodes' files. Best effort: a failure leaves an older file, which the checks reject."""
    path = Path(store_path) / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    try:
        payload = json.dumps({
            "episodes": int(episodes),
            "folders": {name: folder_stamp(store_path, name) for name in FOLDERS},
            "seeds": [int(seeds[0]), None if seeds[1] is None else int(seeds[1])],
        }, separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            # Looking at the file before writing makes kernels with multigrain timestamps
            # (6.13+) give the write a fine-grained mtime, so the stamps above are older.
            os.fstat(fd)
            os.write(fd, payload)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("Store %s: could not write %s (%s)", store_path, FILE, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def folder_stamp(store_path: Path, name: str) -> Stamp:
    try:
        st = os.stat(Path(store_path) / name)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def next_seed_after(next_seed: int | None, metadata: Mapping[str, Any]) -> int | None:
    """`next_seed` (None: no seed yet) once the episode with `metadata` is counted."""
    seed = metadata.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed + 1 if next_seed is None else max(next_seed, seed + 1)
    return next_seed


def _stamp(value: Any) -> Stamp:
    if value is None:
        return None
    inode, mtime_ns = value
    return (int(inode), int(mtime_ns))
