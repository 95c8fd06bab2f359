"""Editing episode stores: delete (compaction), copy/merge of episodes, and format migration.

Everything that rewrites a store builds the new one beside it (`<store>.new`) under the store's
writer lock and swaps it in with two directory renames; `resolve_interrupted_swap` finishes or
rolls back a swap a crash cut short. Frames are copied as bytes (never re-encoded) wherever the
source and target codec settings match (JPEG, per-frame AVIF/JPEG XL, and video: each video
group lies inside its episode, data/video.py). These functions use the public `EpisodeStore` API and an
`EpisodeWriter`; they take the store class from their caller so this module does not import it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tether.core.errors import StoreError
from tether.data import episodes as _episodes
from tether.data import manifest as _manifest
from tether.data.codecs import (
    DEFAULT_JPEG_QUALITY,
    is_video_array,
    register_codecs,
    same_frame_encoding,
)
from tether.data.durable import fsync_dir, sync_filesystem, write_durable
from tether.data.layout import (
    DATA,
    FORMAT_NAME,
    FORMAT_VERSION,
    META,
    TIMING,
    array_dir,
    is_timing_key,
    legacy_v1_key,
    looks_like_store,
    parse_timing_key,
)
from tether.data.lock import StoreLock, holder_pid
from tether.data.writer import Handles, ensure_arrays, os_error, prepare_block

if TYPE_CHECKING:
    from tether.data.store import EpisodeStore

log = logging.getLogger(__name__)

EXTRA_FILES = ("robot_config.yaml",)  # files beside the zarr data, copied on rewrite
CREATE_ATTRS = {
    "tether_format", "format_version", "fps", "image_codec", "image_quality", "robot_config",
    "calibration", "created",
}


# ---------------------------------------------------------------------- copy and merge
def append_from(target: EpisodeStore, source: EpisodeStore, episodes: Iterable[int] | None) -> list[int]:
    """Copy committed episodes of `source` into `target`; returns their new indices."""
    if abs(source.fps - target.fps) > 1e-9:
        raise StoreError(
            f"Cannot merge {source.path} (fps {source.fps}) into {target.path} (fps "
            f"{target.fps}); resample one of them first."
        )
    if target.n_steps and set(source.keys) != set(target.keys):
        raise StoreError(
            f"Cannot merge {source.path}: its keys {source.keys} differ from {target.keys}."
        )
    chosen = range(source.n_episodes) if episodes is None else episodes
    return [copy_episode(target, source, int(e)) for e in chosen]


def merge(store_cls: type[EpisodeStore], out: str | Path, sources: Iterable[str | Path],
          **create_kwargs: Any) -> EpisodeStore:
    """Create `out` holding every committed episode of `sources`, in order."""
    opened = [store_cls.open(s, "r") for s in sources]
    try:
        if not opened:
            raise StoreError("merge needs at least one source store.")
        first = opened[0]
        kwargs = {
            "zarr_format": first.zarr_format,
            "image_codec": first.attrs.get("image_codec", "jpeg"),
            "image_quality": first.attrs.get("image_quality", DEFAULT_JPEG_QUALITY),
            "robot_config": first.attrs.get("robot_config"),
            "calibration": first.attrs.get("calibration"),
            **create_kwargs,
        }
        store = store_cls.create(out, first.fps, **kwargs)
        try:
            for source in opened:
                store.append_from(source)
        except BaseException:
            store.close()  # releases the lock; what was merged so far stays committed
            raise
    finally:
        for source in opened:
            source.close()
    return store


def copy_episode(target: EpisodeStore, source: EpisodeStore, episode: int) -> int:
    """Append one committed episode of `source` to `target` and commit it."""
    start, stop = source.episode_range(episode)
    n = stop - start
    metadata = source.episode_metadata(episode)
    metadata.pop("index", None)
    metadata.pop("length", None)
    writer = target.begin_episode()
    h: Handles = writer.handles  # the target store, held under its writer lock
    if not h.arrays:  # adopt the source schema so frames can be copied as bytes
        ensure_arrays(h, {
            k: np.zeros((0, *source.array(k).shape[1:]), dtype=source.array(k).dtype)
            for k in source.keys
        })
    raw_keys = [k for k in source.image_keys
                if k in h.arrays and same_frame_encoding(source.array(k), h.arrays[k])]
    try:
        copied = [k for k in source.keys if k not in raw_keys]
        video = [k for k in copied if is_video_array(source.array(k))]  # zarr alone cannot decode
        block = {k: np.asarray(source.array(k)[start:stop]) for k in copied if k not in video}
        block.update(source.read_steps(start, stop, video) if video else {})
        prepared, _ = prepare_block(h, block, expected=set(h.arrays) - set(raw_keys))
        if set(block) | set(raw_keys) != set(h.arrays):
            raise StoreError(f"Cannot copy from {source.path}: keys {source.keys} differ from "
                             f"{target.keys}.")
        for key in raw_keys:
            dst = h.arrays[key]
            base = dst.shape[0]
            dst.resize((base + n, *dst.shape[1:]))
            _copy_chunks(source, key, start, target, base, n)
        writer.write_prepared(prepared, n)
        writer.count_written(n)
        return writer.commit(metadata)
    except OSError as exc:
        if writer.active:
            writer.discard()
        raise os_error(exc, f"copying episode {episode} from {source.path}") from exc
    except BaseException:
        if writer.active:
            writer.discard()
        raise


def _copy_chunks(src: EpisodeStore, key: str, src_start: int, dst: EpisodeStore, dst_start: int,
                 n: int) -> None:
    for i in range(n):
        source = src.chunk_path(key, src_start + i)
        target = dst.chunk_path(key, dst_start + i)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            payload = source.read_bytes()
        except FileNotFoundError:  # an all-zero frame is not stored (fill value), or lost
            error = src.missing_frame_error(key, src_start + i)
            if error is not None:
                raise error from None
            target.unlink(missing_ok=True)
            continue
        episode, frame = src.locate(src_start + i)
        man = src.manifest(episode)
        if man is not None and key in man["keys"]:
            crcs = man["keys"][key].get("frames_crc32", [])
            if frame < len(crcs) and crcs[frame] is not None and crcs[frame] != zlib.crc32(payload):
                raise src.decode_error(key, src_start + i, ValueError(
                    "checksum differs from the one written at commit"))
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, target)


# ---------------------------------------------------------------------- compaction
def rewrite(store: EpisodeStore, keep: list[int], lock: StoreLock) -> None:
    """Copy episodes `keep` into `<store>.new`, then swap directories, all under `lock`.

    The lock is never released in between, so no other process can open, remove or recreate
    the store or its `.new` while the rewrite runs. The caller reloads the store afterwards.
    """
    path = store.path
    new_path, old_path = _siblings(path)
    try:
        for leftover in (new_path, old_path):  # only a crashed writer of ours leaves these
            if leftover.exists():
                shutil.rmtree(leftover)
        attrs = {k: v for k, v in store.attrs.items() if k not in CREATE_ATTRS}
        fresh = type(store).create(
            new_path, store.fps, zarr_format=store.zarr_format,
            image_codec=store.attrs.get("image_codec", "jpeg"),
            image_quality=int(store.attrs.get("image_quality", DEFAULT_JPEG_QUALITY)),
            robot_config=store.attrs.get("robot_config"),
            calibration=store.attrs.get("calibration"), attrs=attrs, _lock=lock,
        )
        try:
            fresh.append_from(store, keep)
        finally:
            fresh.close()
        _copy_extra_files(path, new_path)
        _swap_in(path, new_path, old_path)
    except OSError as exc:
        raise os_error(exc, f"compacting {path}") from exc


def _copy_extra_files(path: Path, new_path: Path) -> None:
    for extra in EXTRA_FILES:
        if (path / extra).is_file():
            shutil.copy2(path / extra, new_path / extra)


def _swap_in(path: Path, new_path: Path, old_path: Path) -> None:
    """Replace `path` by the complete `new_path` (synced first); `resolve_interrupted_swap`
    finishes or rolls back a crash between the two renames."""
    sync_filesystem(new_path)
    os.rename(path, old_path)
    os.rename(new_path, path)
    fsync_dir(path.parent)
    shutil.rmtree(old_path)


def _siblings(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + ".new"), path.with_name(path.name + ".old")


def remove_tree(path: Path, action: str) -> None:
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise os_error(exc, action) from exc


def finish_interrupted_swap(path: Path, cleanup: bool) -> None:
    """Complete or roll back a rewrite that a crash interrupted.

    The rewrite builds `<store>.new`, renames `<store>` to `<store>.old`, renames `.new` into
    place and removes `.old`. If the store itself is missing, one of the renames was cut short.
    """
    new, old = _siblings(path)
    if not path.exists() and old.exists():
        if new.exists():
            os.rename(new, path)  # the new store was complete (and synced) before the first rename
            log.warning("Store %s: finished an interrupted compaction.", path)
        else:
            os.rename(old, path)
            log.warning("Store %s: rolled back an interrupted compaction.", path)
        fsync_dir(path.parent)
    if cleanup and path.exists():
        for leftover in (new, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def resolve_interrupted_swap(path: Path, writable: bool) -> None:
    """A crash between a rewrite's two renames leaves `<store>.old` (and `.new`) only.

    A writable open (lock held) finishes or rolls back the swap and removes leftovers. A
    read-only open never renames or deletes anything: it refuses with the command that fixes it.
    """
    if writable:
        finish_interrupted_swap(path, cleanup=True)
        return
    new, old = _siblings(path)
    if not path.exists() and old.exists():
        pid = holder_pid(path)
        if pid:
            who = f"process {pid}" if pid > 0 else "another process"
            raise StoreError(
                f"{path} is being compacted by {who} right now; open it again when that finishes."
            )
        raise StoreError(
            f"{path} was left half-way through a compaction by a process that crashed "
            f"({old.name}{' and ' + new.name if new.exists() else ''} exist beside it). Run "
            f"`tether data repair {path}` (or open it with mode='a') to finish it."
        )


# ---------------------------------------------------------------------- migration
def migrate(path: Path) -> dict[str, Any]:
    """Upgrade a format-1 store to the current format, in place and crash-safe.

    Version 1 kept per-stream timing in `data/` as `<stream>_t` / `_t_host` / `_index` and all
    episode metadata in one `meta` attribute. The copy `<store>.new` gets its timing arrays moved
    to `timing/<stream>/<field>` (folders renamed: chunks are neither decoded nor re-encoded),
    one metadata file per episode, manifests keyed the new way and format version 2; then it is
    swapped in like a compaction. An uncommitted tail is carried over and truncated by the next
    append open, as usual. Returns what was done.
    """
    import zarr

    register_codecs()
    path = Path(path)
    if not path.exists() and not _siblings(path)[1].exists():
        raise StoreError(f"No episode store at {path}: the path does not exist.")
    lock = StoreLock(path).acquire("migrate it")
    try:
        finish_interrupted_swap(path, cleanup=True)
        if not looks_like_store(path):
            raise StoreError(f"{path} is not an episode store (no zarr group metadata found).")
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
        version = attrs.get("format_version")
        if attrs.get("tether_format") != FORMAT_NAME:
            raise StoreError(f"{path} is not a tether episode store (tether_format is "
                             f"{attrs.get('tether_format')!r}); nothing to migrate.")
        if version == FORMAT_VERSION:
            return {"path": str(path), "from_version": version, "to_version": version, "moved": {}}
        if version != 1:
            raise StoreError(f"{path} has store format version {version!r}; `tether data migrate` "
                             f"upgrades version 1 to {FORMAT_VERSION}. Use a matching tether.")
        new_path, old_path = _siblings(path)
        for leftover in (new_path, old_path):
            if leftover.exists():
                shutil.rmtree(leftover)
        try:
            shutil.copytree(path, new_path)
            moved, n_meta = _restructure_v1(new_path)
            _swap_in(path, new_path, old_path)
        except OSError as exc:
            raise os_error(exc, f"migrating {path}") from exc
        return {"path": str(path), "from_version": 1, "to_version": FORMAT_VERSION,
                "moved": moved, "episode_metadata_files": n_meta}
    finally:
        lock.release()


def _restructure_v1(path: Path) -> tuple[dict[str, str], int]:
    """Turn the version-1 copy at `path` into version 2 (see `migrate`)."""
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    data = root[DATA]
    names = [name for name, _ in data.arrays()]
    moved: dict[str, str] = {}
    timing = root.require_group(TIMING)
    for name in names:
        key = legacy_v1_key(name)
        if not is_timing_key(key) or len(data[name].shape) != 1:
            continue  # a data array (version 1 read a 1-D `<x>_t` as time; anything else is data)
        stream, _ = parse_timing_key(key)
        timing.require_group(stream)
        os.rename(path / DATA / name, array_dir(path, key))
        moved[name] = key
    meta = root[META]
    entries = meta.attrs.get("episodes", [])
    written = 0
    for episode, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict):  # a missing/damaged entry is for `tether data repair`
            _episodes.write(path, episode, entry)
            written += 1
    if "episodes" in meta.attrs:
        del meta.attrs["episodes"]
    folder = path / _manifest.MANIFEST_DIR
    for man_file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            man = json.loads(man_file.read_text())
            keys = man["keys"]
        except (ValueError, KeyError, TypeError):
            continue  # a corrupt manifest stays corrupt: verify names it, repair rebuilds it
        man["keys"] = {moved.get(k, k): v for k, v in keys.items()}
        man["version"] = _manifest.MANIFEST_VERSION
        write_durable(man_file, _manifest.encode(man))
    root.attrs["format_version"] = FORMAT_VERSION
    return moved, written
