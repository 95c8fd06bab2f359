"""Per-episode metadata: one small JSON object per committed episode, `episodes/<NNNNNN>.json`.

A commit writes only its own episode's file (durably, before the commit point), and editing one
episode's metadata rewrites only that file, so the cost of a commit does not grow with the
number of episodes and a torn write can damage at most the episode being written. Files of
episodes at or past the commit point belong to an uncommitted episode and are removed by the
writer's recovery; a committed episode without a file is damage that `tether data repair` fills
with a placeholder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.core.errors import StoreError
from tether.data.durable import write_durable
from tether.data.location import as_location, listdir

EPISODES_DIR = "episodes"

log = logging.getLogger(__name__)


def episode_file(store_path: Path, episode: int) -> Path:
    return as_location(store_path) / EPISODES_DIR / f"{int(episode):06d}.json"


def write(store_path: Path, episode: int, metadata: Mapping[str, Any]) -> None:
    """Write (or replace) one episode's metadata durably; raises OSError untouched."""
    payload = json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True).encode()
    write_durable(episode_file(store_path, episode), payload)


def indices(store_path: Path) -> list[int]:
    """Episode indices that have a metadata file, sorted (reads the folder only)."""
    folder = as_location(store_path) / EPISODES_DIR
    try:
        entries = listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"Cannot list {folder}: {exc.strerror}.") from exc
    out = []
    for entry in entries:
        stem, _, ext = entry.partition(".")
        if ext == "json" and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def load(store_path: Path, episode: int) -> dict[str, Any] | None:
    """One episode's metadata, None when it has no file, StoreError naming repair when damaged."""
    path = episode_file(store_path, episode)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"Cannot read {path}: {exc.strerror}. Check the store's permissions.") from exc
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        value = exc
    if not isinstance(value, dict):
        raise StoreError(
            f"{path} is damaged: it must hold one JSON object with the episode's metadata. "
            f"Restore the file from a backup, or run `tether data repair {store_path}` to reset "
            "that episode's metadata (the recorded data is kept)."
        )
    return value


def remove_from(store_path: Path, first_episode: int) -> int:
    """Delete the metadata of episodes >= `first_episode` (left by an uncommitted episode)."""
    removed = 0
    for episode in indices(store_path):
        if episode >= first_episode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(episode_file(store_path, episode))
                removed += 1
    return removed


PLACEHOLDER = {"recovered": True, "notes": "metadata was lost"}


class LazyMetadata:
    """The committed episodes' metadata, each file read on first access, then kept.

    Opening a store reads none of the files, so open time and memory do not grow with the
    number of episodes (10,000 files took ~1.4 s to read eagerly). Which files exist is known
    from one folder listing (`present`): a committed episode without a file is damage reported
    at open; a file whose content is damaged is found when it is read (or by `check_all`, which
    `tether data verify` and `EpisodeStore.recovery` run). Writable opens raise on a damaged file
    they read, unless repairing; read-only ones log it and stand a placeholder in, so training
    goes on.
    """

    def __init__(self, store_path: Any, count: int, present: set[int] | None, *,
                 strict: bool) -> None:
        self._path = store_path
        self._count = int(count)
        self._strict = strict
        self._cache: dict[int, dict[str, Any]] = {}
        # None: not listed (a read-only open); absent files are then found when read
        self.missing: set[int] = set() if present is None else \
            {e for e in range(self._count) if e not in present}
        self.errors: dict[int, str] = {}
        self.checked = False

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        for episode in range(self._count):
            yield self[episode]

    def __getitem__(self, episode: int) -> dict[str, Any]:
        episode = int(episode)
        if not 0 <= episode < self._count:
            raise IndexError(episode)
        cached = self._cache.get(episode)
        if cached is not None:
            return cached
        meta = None
        if episode not in self.missing:
            try:
                meta = load(self._path, episode)
            except StoreError as exc:
                if self._strict:
                    raise
                log.warning("Store %s: %s", self._path, exc)
                self.errors[episode] = str(exc)
            if meta is None:
                self.missing.add(episode)
        if meta is None:
            meta = dict(PLACEHOLDER)
        self._cache[episode] = meta
        return meta

    def __setitem__(self, episode: int, metadata: dict[str, Any]) -> None:
        if not 0 <= episode < self._count:
            raise IndexError(episode)
        self._cache[int(episode)] = metadata
        self.missing.discard(int(episode))
        self.errors.pop(int(episode), None)

    def append(self, metadata: dict[str, Any]) -> None:
        self._cache[self._count] = metadata
        self._count += 1

    def adopt(self, other: LazyMetadata) -> None:
        """Keep what `other` (an earlier view of the same files) already read."""
        for episode, meta in other._cache.items():
            if episode < self._count and episode not in self.missing:
                self._cache.setdefault(episode, meta)
        for episode, error in other.errors.items():
            self.errors.setdefault(episode, error)
            self.missing.add(episode)

    def check_all(self) -> tuple[int, tuple[str, ...]]:
        """Read every file once: (episodes without readable metadata, what was wrong)."""
        if not self.checked:
            for episode in range(self._count):
                self[episode]
            self.checked = True
        return len(self.missing), tuple(self.errors[e] for e in sorted(self.errors))
