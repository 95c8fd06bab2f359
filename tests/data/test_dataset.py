"""EpisodeDataset windows at episode boundaries (property-tested), workers, split, stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.core.errors import StoreError
from tether.data.dataset import EpisodeDataset, LocalitySampler, collate_windows, split_episodes
from tether.data.stats import compute_stats, get_stats, load_stats
from tether.data.store import EpisodeStore

LENGTHS = [1, 4, 9, 2, 6]


def _frame(k: int, t: int) -> int:
    return (k * 50 + t * 4) % 240 + 8


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "ds.zarr"
    with EpisodeStore.create(path, 30.0) as store:
        for k, n in enumerate(LENGTHS):
            t = np.arange(n)
            store.add_episode({
                "state": np.stack([np.full(n, k), t], 1).astype(np.float32),
                "action": np.stack([np.full(n, k), t, -t], 1).astype(np.float32),
                "image.a": np.stack([np.full((16, 20, 3), _frame(k, i), np.uint8) for i in t]),
                "image.b": np.stack([np.full((8, 8, 3), 255 - _frame(k, i), np.uint8) for i in t]),
            })
    return path


@settings(max_examples=60, deadline=None)
@given(
    obs_horizon=st.integers(1, 4),
    action_horizon=st.integers(1, 12),
    action_start=st.integers(-3, 2),
    index=st.integers(0, sum(LENGTHS) - 1),
)
def test_windows_never_cross_episodes_and_pad_by_edge_repeat(
    store_path, obs_horizon, action_horizon, action_start, index
):
    ds = EpisodeDataset(store_path, obs_horizon=obs_horizon, action_horizon=action_horizon,
                        action_start=action_start, frame_cache=0)
    assert len(ds) == sum(LENGTHS)
    ends = np.cumsum(LENGTHS)
    k = int(np.searchsorted(ends, index, side="right"))
    t = index - (ends[k - 1] if k else 0)
    n = LENGTHS[k]
    item = ds[index]
    # Reference computed independently from the definition.
    obs_t = np.arange(t - obs_horizon + 1, t + 1)
    act_t = np.arange(t + action_start, t + action_start + action_horizon)
    np.testing.assert_array_equal(item["obs_is_pad"].numpy(), (obs_t < 0) | (obs_t >= n))
    np.testing.assert_array_equal(item["action_is_pad"].numpy(), (act_t < 0) | (act_t >= n))
    np.testing.assert_array_equal(item["state"][:, 0].numpy(), k)  # never another episode
    np.testing.assert_array_equal(item["state"][:, 1].numpy(), np.clip(obs_t, 0, n - 1))
    np.testing.assert_array_equal(item["action"][:, 0].numpy(), k)
    np.testing.assert_array_equal(item["action"][:, 1].numpy(), np.clip(act_t, 0, n - 1))
    assert item["image.a"].shape == (obs_horizon, 3, 16, 20) and item["image.a"].dtype == torch.uint8
    expected = np.array([_frame(k, i) for i in np.clip(obs_t, 0, n - 1)])
    assert np.abs(item["image.a"].float().mean((1, 2, 3)).numpy() - expected).max() < 2.5
    assert item["state"].dtype == torch.float32 and item["action"].dtype == torch.float32


def test_dataloader_with_workers_and_locality_sampler(store_path):
    ds = EpisodeDataset(store_path, obs_horizon=2, action_horizon=4, keys=["state", "image.b"])
    assert set(ds[0]) == {"state", "image.b", "action", "obs_is_pad", "action_is_pad"}
    sampler = LocalitySampler(len(ds), block=4, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(ds))) and order != list(range(len(ds)))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=sampler, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["image.b"].shape[1:] == (2, 3, 8, 8)
        assert batch["image.b"].is_contiguous()
        seen.extend(batch["state"][:, -1, :].tolist())
    assert len(seen) == len(ds)
    assert sorted(map(tuple, seen)) == sorted((k, t) for k, n in enumerate(LENGTHS) for t in range(n))


def test_episode_selection_and_split(store_path):
    train, val = split_episodes(store_path, val_fraction=0.4, seed=1)
    assert sorted(train + val) == list(range(len(LENGTHS))) and len(val) == 2
    assert split_episodes(store_path, 0.4, seed=1) == (train, val)  # reproducible
    ds = EpisodeDataset(store_path, episodes=val)
    assert len(ds) == sum(LENGTHS[e] for e in val)
    assert {int(ds[i]["state"][0, 0]) for i in range(len(ds))} == set(val)
    assert split_episodes(1, 0.5) == ([0], [])
    with pytest.raises(StoreError, match="Episode 9 is not in"):
        EpisodeDataset(store_path, episodes=[9])
    with pytest.raises(StoreError, match="Key 'image.c' is not in"):
        EpisodeDataset(store_path, keys=["image.c"])
    with pytest.raises(ValueError, match="obs_horizon"):
        EpisodeDataset(store_path, obs_horizon=0)


def test_stats_are_computed_once_and_saved(tmp_path, store_path):
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(store_path, path)
    assert load_stats(path) is None
    stats = compute_stats(path, save=True)
    states = np.concatenate([np.stack([np.full(n, k), np.arange(n)], 1) for k, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(stats["state"]["min"], states.min(0))
    np.testing.assert_allclose(stats["state"]["max"], states.max(0))
    np.testing.assert_allclose(stats["state"]["mean"], states.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["state"]["std"], states.std(0), rtol=1e-6)
    assert stats["action"]["mean"].shape == (3,) and stats["image.a"]["mean"].shape == (3,)
    loaded = load_stats(path)
    for key in ("state", "action", "image.a"):
        for name in ("min", "max", "mean", "std"):
            np.testing.assert_allclose(loaded[key][name], stats[key][name], rtol=1e-6)
    with EpisodeStore.open(path, "a") as store:  # a new episode makes saved stats stale
        store.add_episode({k: v[:1] for k, v in store.get_episode(0).items()})
    assert load_stats(path) is None and load_stats(path, allow_stale=True) is not None
    assert get_stats(path)["state"]["max"].shape == (2,)
    assert load_stats(path) is not None  # get_stats saved what it computed


def test_collate_windows_matches_default_collate_without_copying(store_path):
    ds = EpisodeDataset(store_path, obs_horizon=3, action_horizon=2)
    order = [3, 4, 5, 6, 0, 13]
    fast = torch.utils.data.DataLoader(ds, batch_size=6, sampler=order, num_workers=1,
                                       collate_fn=collate_windows)
    slow = torch.utils.data.DataLoader(ds, batch_size=6, sampler=order, num_workers=0)
    a, b = next(iter(fast)), next(iter(slow))
    assert set(a) == set(b)
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype
        assert torch.equal(a[key], b[key]), key
    assert a["image.a"].shape == (6, 3, 3, 16, 20)
    assert a["image.a"].stride()[-3:] == (1, 20 * 3, 3)  # channels-last view of the decoded buffer


def test_a_batch_decodes_each_frame_once(store_path):
    ds = EpisodeDataset(store_path, obs_horizon=2, action_horizon=1, keys=["image.a"])
    start = LENGTHS[0] + LENGTHS[1]  # episode 2 has 9 steps
    ds.__getitems__([start + t for t in range(8)])  # 8 overlapping windows
    assert ds._get_reader().decoded == 8  # steps 0..7 (step 0 padded by repeating itself)
    ds.__getitems__([start + 8, start + 8, start + 2])
    assert ds._get_reader().decoded == 8 + 4  # (7, 8) twice and (1, 2): 4 distinct frames
