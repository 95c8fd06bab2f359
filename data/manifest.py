"""Per-episode chunk manifests: what a committed episode's chunks were, so loss is detectable.

zarr reads a missing chunk as its fill value, so a deleted JPEG frame comes back as a black
image and a deleted low-dim chunk as zeros, silently. It also never writes a chunk that equals
the fill value (`write_empty_chunks=False`), so absence alone proves nothing. At each commit the
store writes `manifest/<episode>.json` (before the commit point, durably) holding, per store key
(data keys and `timing/<stream>/<field>` keys, see data/layout):

- image keys (one frame per chunk): the CRC32 of every frame's chunk file, `null` for frames
  that were all zeros and so never stored;
- low-dim keys (chunks of many rows, shared between episodes): the chunk indices that existed
  and the CRC32 of the episode's decoded rows. Chunk bytes change when later episodes append
  rows into a shared chunk; the episode's own rows never do, so their checksum stays valid.

zarr 3.1.6 has no setting to raise on a missing chunk instead (its array config holds only
`order`, `write_empty_chunks` and `target_shard_size_bytes`; see zarr/core/config.py), hence
this file. Readers use the manifest to tell "never stored" from "lost"; `verify.verify_store` uses the
checksums. Stores written before manifests existed have none and are reported as unverified.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.data.layout import array_dir
from tether.data.location import as_location, listdir

MANIFEST_DIR = "manifest"
MANIFEST_VERSION = 2  # keys are store keys (data names or timing/<stream>/<field> paths)


def manifest_file(store_path: Path, episode: int) -> Path:
    return as_location(store_path) / MANIFEST_DIR / f"{int(episode):06d}.json"


def chunk_path(store_path: Path, key: str, array: Any, chunk_index: int) -> Path:
    """File of chunk `chunk_index` (along time) of the array `key` (data or timing, data/layout)."""
    return chunk_in(array_dir(store_path, key), array, chunk_index)


def chunk_in(folder: Path, array: Any, chunk_index: int) -> Path:
    """File of chunk `chunk_index` (along time) of the zarr array stored in `folder`."""
    coords = (int(chunk_index),) + (0,) * (len(array.shape) - 1)
    return as_location(folder) / array.metadata.encode_chunk_key(coords)


def is_framewise(array: Any) -> bool:
    """One step per chunk (image keys): each chunk file belongs to exactly one frame."""
    return int(array.chunks[0]) == 1


def build(store_path: Path, arrays: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """The manifest of the steps `start:stop`, read back from what is on disk now."""
    keys: dict[str, Any] = {}
    for key in sorted(arrays):
        arr = arrays[key]
        if is_framewise(arr):
            crcs: list[int | None] = []
            for step in range(start, stop):
                try:
                    crcs.append(zlib.crc32(chunk_path(store_path, key, arr, step).read_bytes()))
                except FileNotFoundError:
                    crcs.append(None)  # all-zero frame: zarr stores nothing for it
            keys[key] = {"frames_crc32": crcs}
        else:
            rows = int(arr.chunks[0])
            present = [
                c for c in range(start // rows, (stop - 1) // rows + 1)
                if chunk_path(store_path, key, arr, c).is_file()
            ]
            keys[key] = {"chunk_rows": rows, "chunks": present,
                         "rows_crc32": rows_crc32(np.asarray(arr[start:stop]))}
    return {"version": MANIFEST_VERSION, "start": int(start), "stop": int(stop), "keys": keys}


def rows_crc32(values: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(values).tobytes())


def encode(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, separators=(",", ":")).encode()


def load(store_path: Path, episode: int) -> dict[str, Any] | None:
    """The manifest of `episode`, None when the store has none for it (written before v0.x)."""
    path = manifest_file(store_path, episode)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"Cannot read {path}: {exc.strerror}. Check the store's permissions.") from exc
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("keys"), dict):
            raise ValueError("not a manifest object")
        int(manifest["start"]), int(manifest["stop"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"Chunk manifest {path} is corrupt ({exc}). Run `tether data repair "
            f"{store_path}` to rebuild it from the data on disk (or restore it from a backup)."
        ) from exc
    return manifest


def remove_from(store_path: Path, first_episode: int) -> int:
    """Delete manifests of episodes >= `first_episode` (left by an uncommitted episode)."""
    folder = as_location(store_path) / MANIFEST_DIR
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in listdir(folder):
        stem = entry.split(".", 1)[0]
        if entry.endswith(".json") and stem.isdigit() and int(stem) >= first_episode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / entry)
                removed += 1
    return removed


def expected_frame(manifest: Mapping[str, Any] | None, key: str, frame: int) -> bool | None:
    """True when the manifest says frame `frame` (episode-relative) has a stored chunk."""
    if manifest is None or key not in manifest["keys"]:
        return None
    crcs = manifest["keys"][key].get("frames_crc32")
    if crcs is None or not 0 <= frame < len(crcs):
        return None
    return crcs[frame] is not None


def count_from(store_path: Path, first_episode: int) -> int:
    """How many manifests exist for episodes >= `first_episode` (reads the folder only)."""
    folder = as_location(store_path) / MANIFEST_DIR
    try:
        entries = listdir(folder)
    except OSError:
        return 0
    return sum(
        1 for e in entries
        if e.endswith(".json") and e.split(".", 1)[0].isdigit() and int(e.split(".", 1)[0]) >= first_episode
    )
