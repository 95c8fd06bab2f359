"""Import a diffusion_policy-style ReplayBuffer (zarr format 2, no tether attributes)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from tether.core.errors import StoreError
from tether.data.converters import import_replay_buffer


def test_import_replay_buffer(tmp_path):
    src = tmp_path / "replay.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=2)
    n = 12
    root.create_array("data/camera_0", data=np.full((n, 16, 16, 3), 77, np.uint8), chunks=(1, 16, 16, 3))
    root.create_array("data/robot_eef_pose", data=np.arange(n * 6, dtype=np.float64).reshape(n, 6))
    root.create_array("data/action", data=np.ones((n, 2), np.float64))
    root.create_array("data/timestamp", data=np.arange(n) / 10.0)
    root.create_array("meta/episode_ends", data=np.array([5, 12], np.int64))
    store = import_replay_buffer(src, tmp_path / "out.zarr", fps=10.0, rename={"robot_eef_pose": "state"})
    assert store.n_episodes == 2 and list(store.episode_lengths) == [5, 7]
    assert set(store.keys) == {"image.camera_0", "state", "action", "timestamp"}
    ep = store.get_episode(1)
    np.testing.assert_array_equal(ep["state"][0], np.arange(30, 36))
    assert ep["state"].dtype == np.float32 and ep["timestamp"].dtype == np.float64
    assert np.abs(ep["image.camera_0"].astype(int) - 77).max() <= 2
    assert store.episode_metadata(1)["source_episode"] == 1
    store.close()
    with pytest.raises(StoreError, match="not a ReplayBuffer-layout"):
        import_replay_buffer(tmp_path / "out.zarr" / "data", tmp_path / "x.zarr", fps=10.0)
