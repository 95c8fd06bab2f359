"""Converters into the episode store from other ReplayBuffer-layout datasets.

diffusion_policy (and UMI, and many lab scripts) write the same three-line layout without the
tether attributes: `data/<key>` arrays concatenated over time and `meta/episode_ends`. This
imports such a group (zarr format 2 or 3, any numcodecs/imagecodecs compression) into a new
tether store: 4-D uint8 arrays with 3 channels become `image.<name>` (JPEG), everything else is
copied under its own name (floats as float32, `timestamp`-like keys as float64).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tether.core.errors import StoreError
from tether.core.schema import image_key, is_image_key
from tether.data.store import EpisodeStore


def import_replay_buffer(
    source: str | Path,
    out: str | Path,
    fps: float,
    rename: Mapping[str, str] | None = None,
    **create_kwargs,
) -> EpisodeStore:
    """Copy every episode of a ReplayBuffer-layout zarr group into a new EpisodeStore.

    `rename` maps source keys to store keys (e.g. {"robot_eef_pose": "state"}); keys mapped to
    "" are skipped. Returns the new store, open for appending.
    """
    import imagecodecs.numcodecs
    import zarr

    imagecodecs.numcodecs.register_codecs()  # Jpeg2k, JpegXL, ... as diffusion_policy uses
    try:
        root = zarr.open_group(str(source), mode="r")
        ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
        data = root["data"]
    except Exception as exc:
        raise StoreError(
            f"{source} is not a ReplayBuffer-layout zarr group (needs data/<key> and "
            f"meta/episode_ends): {exc}"
        ) from exc
    arrays = {name: arr for name, arr in data.arrays()}
    rename = dict(rename or {})
    names = {}
    for name, arr in arrays.items():
        target = rename.get(name, name)
        if not target:
            continue
        if arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3 and not is_image_key(target):
            target = image_key(target)
        names[name] = target
    if len(set(names.values())) != len(names):
        raise StoreError(f"Key mapping {names} maps two source keys to one store key.")
    store = EpisodeStore.create(out, fps, **create_kwargs)
    start = 0
    try:
        for episode, end in enumerate(ends):
            block = {target: np.asarray(arrays[name][start:end]) for name, target in names.items()}
            store.add_episode(block, {"source": str(source), "source_episode": episode})
            start = int(end)
    except BaseException:
        store.close()
        raise
    return store
