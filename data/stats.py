"""Normalizer statistics, computed once per store and saved inside it.

`compute_stats(store)` returns `{key: {"min", "max", "mean", "std": np.ndarray}}` for `state` and
`action` (per dimension) and, for every camera, per-channel image statistics in [0, 1] units
estimated from up to `image_samples` evenly spaced frames. With `save=True` (the default for
writable stores) they go into the `meta` attributes as JSON lists, tagged with the number of
committed steps, so `load_stats` can tell when new episodes made them stale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.core.schema import is_image_key
from tether.data.store import EpisodeStore

STATS_ATTR = "stats"
LOWDIM_KEYS = ("state", "action")
STAT_NAMES = ("min", "max", "mean", "std")


def compute_stats(
    store: EpisodeStore | str, *, save: bool | None = None, image_samples: int = 64
) -> dict[str, dict[str, np.ndarray]]:
    """Min/max/mean/std per key over all committed steps (and cheap per-channel image stats)."""
    opened = isinstance(store, EpisodeStore)
    st = store if opened else EpisodeStore.open(store, "a" if save else "r")
    try:
        n = st.n_steps
        if n == 0:
            raise StoreError(f"{st.path} has no committed episodes; record some before computing stats.")
        stats: dict[str, dict[str, np.ndarray]] = {}
        for key in LOWDIM_KEYS:
            if key in st.keys:
                values = np.asarray(st.read_steps(0, n, [key])[key], dtype=np.float64)
                stats[key] = _summary(values.reshape(n, -1), (1,) if values.ndim == 1 else values.shape[1:])
        for key in st.image_keys:
            picks = np.unique(np.linspace(0, n - 1, num=min(n, image_samples)).round().astype(int))
            frames = np.stack([st.read_steps(int(i), int(i) + 1, [key])[key][0] for i in picks]).astype(np.float64) / 255.0
            stats[key] = _summary(frames.reshape(-1, 3), (3,))
        if save is None:
            save = st.mode == "a"
        if save:
            payload = {k: {s: v.tolist() for s, v in d.items()} for k, d in stats.items()}
            st.set_meta_attrs(**{STATS_ATTR: {"n_steps": n, "stats": payload}})
        return stats
    finally:
        if not opened:
            st.close()


def load_stats(store: EpisodeStore | str, *, allow_stale: bool = False) -> dict[str, dict[str, np.ndarray]] | None:
    """Saved statistics, or None when there are none (or they predate newer episodes)."""
    st = store if isinstance(store, EpisodeStore) else EpisodeStore.open(store, "r")
    try:
        saved: dict[str, Any] | None = st.meta_attrs.get(STATS_ATTR)
        if not saved:
            return None
        if saved.get("n_steps") != st.n_steps and not allow_stale:
            return None
        return {
            key: {name: np.asarray(value, dtype=np.float32) for name, value in entry.items()}
            for key, entry in saved["stats"].items()
        }
    finally:
        if not isinstance(store, EpisodeStore):
            st.close()


def get_stats(store: EpisodeStore | str) -> dict[str, dict[str, np.ndarray]]:
    """Saved statistics if current, else computed (and saved when the store is writable)."""
    stats = load_stats(store)
    if stats is not None:
        return stats
    try:  # save them so the next run does not recompute, when the store can be written
        writable = store.mode == "a" if isinstance(store, EpisodeStore) else True
        computed = compute_stats(store, save=writable)
    except StoreError:  # read-only location or another writer holds the lock
        computed = compute_stats(store, save=False)
    return {k: {s: v.astype(np.float32) for s, v in d.items()} for k, d in computed.items()}


def _summary(values: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {
        "min": values.min(axis=0).reshape(shape).astype(np.float32),
        "max": values.max(axis=0).reshape(shape).astype(np.float32),
        "mean": values.mean(axis=0).reshape(shape).astype(np.float32),
        "std": values.std(axis=0).reshape(shape).astype(np.float32),
    }


__all__ = ["compute_stats", "get_stats", "is_image_key", "load_stats"]
