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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.core.errors import StoreError
from tether.data.durable import write_durable

EPISODES_DIR = "episodes"


def episode_file(store_path: Path, episode: int) -> Path:
    return Path(store_path) / EPISODES_DIR / f"{int(episode):06d}.json"


def write(store_path: Path, episode: int, metadata: Mapping[str, Any]) -> None:
    """Write (or replace) one episode's metadata durably; raises OSError untouched."""
    payload = json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True).encode()
    write_durable(episode_file(store_path, episode), payload)


def indices(store_path: Path) -> list[int]:
    """Episode indices that have a metadata file, sorted (reads the folder only)."""
    try:
        entries = os.listdir(Path(store_path) / EPISODES_DIR)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"Cannot list {Path(store_path) / EPISODES_DIR}: {exc.strerror}.") from exc
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
