"""Several stores as one dataset: weights, the normalizer over all, reconciliation by name."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app
from tether.core.errors import ConfigError, StoreError
from tether.data.multi import DatasetSpec, TrainingData
from tether.data.remote import push
from tether.data.stats import compute_stats
from tether.data.store import EpisodeStore


def make(path, n_episodes=3, seed=0, state_dim=4, cameras=("image.top",), fps=10.0, shape=(12, 16)):
    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, fps) as store:
        for e in range(n_episodes):
            n = 5 + e
            data = {"state": rng.normal(seed, 1 + seed, size=(n, state_dim)).astype(np.float32),
                    "action": rng.normal(size=(n, 3)).astype(np.float32)}
            for cam in cameras:
                data[cam] = rng.integers(0, 255, (n, *shape, 3), dtype=np.uint8)
            store.add_episode(data, {"task": f"t{e}"})
    return path


@pytest.mark.parametrize(("text", "path", "weight"), [
    ("a.zarr", "a.zarr", 1.0), ("a.zarr:0.5", "a.zarr", 0.5), ("s3://b/x.zarr:2", "s3://b/x.zarr", 2.0),
    ("s3://b/x.zarr", "s3://b/x.zarr", 1.0), ("memory://b/y.zarr:1e-1", "memory://b/y.zarr", 0.1),
])
def test_dataset_specs(text, path, weight):
    assert DatasetSpec.parse(text) == DatasetSpec(path, weight)


def test_a_zero_weight_is_refused():
    with pytest.raises(StoreError, match="weight must be > 0"):
        DatasetSpec.parse("a.zarr:0")


def test_normalizer_over_all_stores_equals_the_merged_store(tmp_path):
    a, b = make(tmp_path / "a.zarr", seed=0), make(tmp_path / "b.zarr", n_episodes=2, seed=3)
    data = TrainingData([str(a), f"{b}:0.5"])
    merged = EpisodeStore.merge(tmp_path / "all.zarr", [a, b])
    merged.close()
    expected = compute_stats(tmp_path / "all.zarr", save=False, image_samples=10_000)
    pooled = data.stats()
    for key in ("state", "action"):
        for name in ("min", "max", "mean", "std"):
            np.testing.assert_allclose(pooled[key][name], expected[key][name], rtol=1e-4, atol=1e-5)
    # ... and differs from either store alone
    assert not np.allclose(pooled["state"]["mean"], compute_stats(a, save=False)["state"]["mean"])


def test_weights_repeat_or_thin_a_store_and_items_come_from_it(tmp_path):
    a, b = make(tmp_path / "a.zarr", seed=0), make(tmp_path / "b.zarr", n_episodes=4, seed=1)
    data = TrainingData([str(a), f"{b}:0.5"])
    ds = data.dataset(["state", "image.top"], seed=0, obs_horizon=1, action_horizon=2)
    n_a = sum(5 + e for e in range(3))
    n_b = sum(5 + e for e in range(4))
    assert len(ds) == n_a + round(0.5 * n_b)
    sources = [ds.source(i)[0] for i in range(len(ds))]
    assert sources.count(0) == n_a and sources.count(1) == round(0.5 * n_b)
    batch = ds.__getitems__([0, len(ds) - 1])
    store, sample = ds.source(len(ds) - 1)
    same = ds.parts[store].__getitems__([sample])[0]
    assert all(np.array_equal(batch[1][k], same[k]) for k in same)
    twice = TrainingData([str(a), f"{b}:2"]).dataset(["state"], seed=0, obs_horizon=1, action_horizon=2)
    assert len(twice) == n_a + 2 * n_b


def test_cameras_are_matched_by_name_and_mismatches_are_named(tmp_path):
    a = make(tmp_path / "a.zarr", cameras=("image.top", "image.wrist"))
    b = make(tmp_path / "b.zarr", cameras=("image.top",), seed=2)
    assert TrainingData([str(a), str(b)]).cameras == ["image.top"]  # the shared one
    with pytest.raises(ConfigError, match=r"camera key 'image.wrist' is not in .*b.zarr"):
        TrainingData([str(a), str(b)], cameras=["image.top", "image.wrist"])
    small = make(tmp_path / "small.zarr", shape=(8, 8), seed=4)
    with pytest.raises(StoreError, match=r"camera 'image.top' is \(8, 8, 3\)"):
        TrainingData([str(a), str(small)])
    other_robot = make(tmp_path / "r.zarr", state_dim=6, seed=5)
    with pytest.raises(StoreError, match="'state' has shape .*robots differ"):
        TrainingData([str(a), str(other_robot)])
    slow = make(tmp_path / "slow.zarr", fps=5.0, seed=6)
    with pytest.raises(StoreError, match="5 fps"):
        TrainingData([str(a), str(slow)])


def test_train_on_a_local_and_a_remote_store(tmp_path):
    a = make(tmp_path / "a.zarr")
    b = make(tmp_path / "b.zarr", seed=1)
    url = f"file://{tmp_path}/remote/b.zarr"
    push(b, url)
    result = CliRunner().invoke(build_app(), [
        "train", "--dataset", str(a), "--dataset", f"{url}:0.5", "--policy", "mlp",
        "--preset", "tiny", "--steps", "2", "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(build_app(), [
        "train", "--dataset", str(a), "--dataset", str(make(tmp_path / "c.zarr", state_dim=2)),
        "--policy", "mlp", "--preset", "tiny", "--steps", "2", "--out", str(tmp_path / "run2")])
    assert result.exit_code == 2 and "robots differ" in result.output
