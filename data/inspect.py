"""What `tether inspect` shows: a store's streams, sizes, episodes and sync stats; videos.

`summarize(store)` returns plain JSON types so `--json` output is machine-readable and the rich
table is only a view of the same dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.core.schema import is_image_key
from tether.data.codecs import codec_info, describe
from tether.data.layout import array_path, is_timing_key
from tether.data.location import is_remote
from tether.data.store import EpisodeStore


def summarize(store: EpisodeStore) -> dict[str, Any]:
    n = store.n_steps
    streams = []
    sizes = _sizes_by_folder(store)  # one walk of the store, not one per array and one in total
    for key in store.keys:
        arr = store.array(key)
        raw = int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize * n
        disk = sizes.get(key, 0) if sizes is not None else _dir_size(store.array_dir(key))
        streams.append({
            "key": key,
            "dtype": str(arr.dtype),
            "shape": [n, *map(int, arr.shape[1:])],
            # images: the codec and its settings (data/codecs.codec_info); low-dim: lossless
            **({"codec": (info := codec_info(arr))["name"], "codec_label": describe(info),
                "codec_settings": {k: v for k, v in info.items() if k != "name"}}
               if is_image_key(key) and not is_timing_key(key) else {"codec": "lossless"}),
            "raw_bytes": raw,
            "disk_bytes": disk,
        })
    episodes = []
    lengths = store.episode_lengths  # once: it is computed from all ends
    for e in range(store.n_episodes):
        meta = store.episode_metadata(e)
        length = int(lengths[e])
        stats = meta.get("stats", {})
        sync = stats.get("sync", {})
        episodes.append({
            "episode": e,
            "length": length,
            "duration_s": length / store.fps,
            "success": meta.get("success"),
            "task": meta.get("task", ""),
            "operator": meta.get("operator", ""),
            "quality": _quality_score(meta.get("quality")),  # None until scored
            "achieved_hz": stats.get("loop", {}).get("achieved_hz"),
            "overruns": stats.get("loop", {}).get("overruns"),
            "skew_p50_ms": sync.get("skew_p50_ms"),
            "skew_p99_ms": sync.get("skew_p99_ms"),
            "dropped": {k: v.get("dropped") for k, v in sync.get("cameras", {}).items()},
            "duplicated": {k: v.get("duplicated") for k, v in sync.get("cameras", {}).items()},
        })
    raw_total = sum(s["raw_bytes"] for s in streams)
    disk_total = sizes["<total>"] if sizes is not None else _dir_size(store.path)
    return {
        "path": str(store.path),
        "format_version": store.attrs.get("format_version"),
        "zarr_format": store.zarr_format,
        "fps": store.fps,
        "episodes": store.n_episodes,
        "steps": n,
        "duration_s": n / store.fps,
        "success_rate": _success_rate(episodes),
        "raw_bytes": raw_total,
        "disk_bytes": disk_total,
        "compression_ratio": raw_total / disk_total if disk_total else None,
        "streams": streams,
        "per_episode": episodes,
        "recovered_partial_steps": store.recovery.partial_steps,
        "lost_episodes": store.recovery.lost_episodes,  # damage: see `tether data verify`
    }


def write_episode_media(store: EpisodeStore, episode: int, out: Path, max_tiles: int = 16) -> Path:
    """An mp4/avi video of the episode's cameras side by side, or a PNG contact sheet."""
    import cv2

    keys = store.image_keys
    if not keys:
        raise StoreError(f"{store.path} has no camera streams to render.")
    data = store.get_episode(episode, keys)
    frames = np.concatenate([data[k] for k in keys], axis=2)  # cameras side by side: T,H,W*,3
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".mp4", ".avi"):
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if suffix == ".mp4" else "MJPG"))
        h, w = frames.shape[1:3]
        writer = cv2.VideoWriter(str(out), fourcc, store.fps, (w, h))
        if not writer.isOpened():
            raise StoreError(f"OpenCV could not open a video writer for {out}; try a .png sheet.")
        try:
            for frame in frames:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))
        finally:
            writer.release()
    elif suffix == ".png":
        picks = np.unique(np.linspace(0, len(frames) - 1, num=min(max_tiles, len(frames))).astype(int))
        tiles = [frames[i] for i in picks]
        cols = int(np.ceil(np.sqrt(len(tiles))))
        rows = int(np.ceil(len(tiles) / cols))
        h, w = tiles[0].shape[:2]
        sheet = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
        for i, tile in enumerate(tiles):
            r, c = divmod(i, cols)
            sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
        if not cv2.imwrite(str(out), sheet[..., ::-1]):
            raise StoreError(f"Could not write {out}.")
    else:
        raise StoreError(f"Unsupported output '{out.name}': use .mp4, .avi or .png.")
    return out


def _quality_score(quality: Any) -> float | None:
    """The stored quality score (`quality: {"score": float, ...}` in the episode metadata)."""
    if isinstance(quality, dict):
        quality = quality.get("score")
    if isinstance(quality, bool) or not isinstance(quality, (int, float)):
        return None
    return float(quality)


def _success_rate(episodes: list[dict]) -> float | None:
    flags = [e["success"] for e in episodes if e["success"] is not None]
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def _sizes_by_folder(store: EpisodeStore) -> dict[str, int] | None:
    """Bytes on disk per store key and `<total>`, from a single walk (None for a remote store)."""
    if store.is_remote:
        return None
    root = str(store.path)
    folders = {os.path.join(root, *array_path(k).split("/")): k for k in store.keys}
    out = {"<total>": 0}
    for top, _dirs, files in os.walk(root):
        owner = None
        probe = top
        while len(probe) >= len(root):  # the array folder this one is inside, if any
            if probe in folders:
                owner = folders[probe]
                break
            probe = os.path.dirname(probe)
        for name in files:
            try:
                size = os.lstat(os.path.join(top, name)).st_size
            except OSError:
                continue
            out["<total>"] += size
            if owner is not None:
                out[owner] = out.get(owner, 0) + size
    return out


def _dir_size(path: Path) -> int:
    if is_remote(path):  # one listing of the objects, no reads
        return path.size_under()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


__all__ = ["is_image_key", "summarize", "write_episode_media"]
