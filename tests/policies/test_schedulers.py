"""DDPM/DDIM scheduler: the schedule, step choice at inference, and exact sampling math."""

import math

import pytest
import torch

from tether.core.errors import PolicyError
from tether.policies.schedulers import NoiseScheduler, squared_cosine_betas


def test_squared_cosine_schedule_matches_formula():
    betas = squared_cosine_betas(100)
    assert betas.shape == (100,) and torch.all(betas > 0) and torch.all(betas <= 0.999)
    ab = torch.cumprod(1 - betas, 0)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(ab[49]) == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
    assert torch.all(ab[1:] < ab[:-1])  # monotonically more noise


@pytest.mark.parametrize("steps, expected", [(1, [0]), (3, [66, 33, 0]), (10, list(range(90, -1, -10))),
                                             (100, list(range(99, -1, -1)))])
def test_leading_timesteps_for_any_step_count(steps, expected):
    assert NoiseScheduler(100).timesteps(steps, spacing="leading") == expected


@pytest.mark.parametrize("steps, expected", [(1, [99]), (3, [99, 66, 32]), (10, list(range(99, 0, -10))),
                                             (100, list(range(99, -1, -1)))])
def test_trailing_timesteps_start_at_the_noisiest_step(steps, expected):
    assert NoiseScheduler(100).timesteps(steps) == expected


@pytest.mark.parametrize("bad", [0, 101, -3, 2.5, "10"])
def test_invalid_step_counts_are_rejected(bad):
    with pytest.raises(PolicyError, match="DDIM steps"):
        NoiseScheduler(100).timesteps(bad)


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("steps", [1, 3, 10, 100])
def test_ddim_with_an_oracle_denoiser_recovers_the_target(prediction, steps):
    """With a perfect network, DDIM lands on the clean sample for every step count (in float64:
    at t=99 an epsilon prediction is divided by sqrt(alpha_bar) ~ 5e-4, so float32 rounding
    alone is ~1e-4 there)."""
    sched = NoiseScheduler(100, prediction_type=prediction)
    x0 = torch.rand(2, 16, 3, dtype=torch.float64) * 1.6 - 0.8

    def oracle(x_t, t):
        a = sched.alphas_cumprod[t[0]]
        if prediction == "sample":
            return x0
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    out = sched.sample(oracle, x0.shape, steps, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    assert torch.allclose(out, x0, atol=1e-6)


def test_add_noise_and_targets():
    sched = NoiseScheduler(100)
    x0, noise = torch.ones(4, 8, 2), torch.randn(4, 8, 2)
    t = torch.tensor([0, 10, 50, 99])
    xt = sched.add_noise(x0, noise, t)
    a = sched.alphas_cumprod[t].float().view(-1, 1, 1)
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-6)
    assert sched.target(x0, noise) is noise
    assert NoiseScheduler(100, prediction_type="sample").target(x0, noise) is x0
    with pytest.raises(PolicyError, match="prediction_type"):
        NoiseScheduler(100, prediction_type="v")
