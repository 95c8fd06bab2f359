"""Normalizer: exact round trips, constant dimensions, persistence, bad statistics."""

import numpy as np
import pytest
import torch

from tether.core.errors import PolicyError
from tether.policies.normalizer import Normalizer


def _stats(rng, d=5):
    x = rng.normal(3.0, 2.0, (200, d))
    x[:, 0] = 7.0  # a constant dimension (e.g. an unused gripper)
    return {"state": {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)},
            "action": {"min": x.min(0) - 1, "max": x.max(0) + 1, "mean": x.mean(0), "std": x.std(0)}}, x


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_round_trip_is_exact_and_scaled(mode):
    rng = np.random.default_rng(0)
    stats, x = _stats(rng)
    norm = Normalizer.from_stats(stats, {"state": mode})
    t = torch.from_numpy(x).float()
    y = norm.normalize("state", t)
    assert torch.allclose(norm.unnormalize("state", y), t, atol=1e-5)
    if mode == "min_max":
        assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
        assert torch.allclose(y[:, 1:].min(0).values, torch.full((4,), -1.0), atol=1e-5)
    else:
        assert torch.allclose(y[:, 1:].mean(0), torch.zeros(4), atol=1e-4)
        assert torch.allclose(y[:, 1:].std(0, unbiased=False), torch.ones(4), atol=1e-4)
    assert torch.all(torch.isfinite(y))  # constant dim did not divide by zero
    assert torch.allclose(y[:, 0], torch.zeros(200))


def test_identity_and_unknown_keys_pass_through():
    norm = Normalizer.from_stats({}, {"image.top": "identity"})
    x = torch.arange(6.0)
    assert norm.normalize("image.top", x) is x
    assert norm.unnormalize("other", x) is x


def test_save_load_keeps_values_modes_and_digest(tmp_path):
    stats, x = _stats(np.random.default_rng(1))
    norm = Normalizer.from_stats(stats, {"state": "mean_std", "action": "min_max"})
    norm.save(tmp_path / "n.safetensors")
    back = Normalizer.load(tmp_path / "n.safetensors")
    assert back.modes == norm.modes
    assert back.digest() == norm.digest()
    t = torch.from_numpy(x).float()
    for key in ("state", "action"):
        assert torch.equal(back.normalize(key, t), norm.normalize(key, t))
    other = Normalizer.from_stats(stats, {"state": "min_max", "action": "min_max"})
    assert other.digest() != norm.digest()


def test_errors_name_the_problem(tmp_path):
    stats, _ = _stats(np.random.default_rng(2))
    with pytest.raises(PolicyError, match="no dataset statistics for 'action'"):
        Normalizer.from_stats({"state": stats["state"]}, {"action": "mean_std"})
    with pytest.raises(PolicyError, match="mode"):
        Normalizer.from_stats(stats, {"state": "zscore"})
    bad = {"state": {k: v.copy() for k, v in stats["state"].items()}}
    bad["state"]["mean"][2] = np.nan
    with pytest.raises(PolicyError, match="NaN"):
        Normalizer.from_stats(bad, {"state": "mean_std"})
    with pytest.raises(PolicyError, match="missing"):
        Normalizer.load(tmp_path / "absent.safetensors")
