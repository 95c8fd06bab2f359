"""Chunk samplers: DPM-Solver++(2M) and DDIM solve the same ODE, selectable per call and served.

Two convergence checks:
- on Gaussian data, where the probability-flow ODE's exact solution is known in closed form,
  both samplers converge to it and DPM-Solver++ gets there in fewer steps (second order);
- on a tiny trained diffusion model with a fixed noise, DPM-Solver++ at 100 steps lands within
  0.03 (normalized action units, range [-1, 1]) of DDIM at 100 steps, and their gap shrinks
  with the step count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tether.core.errors import PolicyError
from tether.policies.diffusion import DiffusionConfig, DiffusionModel
from tether.policies.normalizer import Normalizer
from tether.policies.samplers import check_sampler
from tether.policies.schedulers import NoiseScheduler
from tether.policies.torch_policy import DiffusionPolicy, make_spec

MU, S = 0.3, 0.2  # the Gaussian data: x0 ~ N(MU, S^2) in every dimension


def _gaussian_oracle(sched: NoiseScheduler):
    """The exact denoiser of N(MU, S^2) data, in the scheduler's prediction type."""

    def model_fn(x, t):
        a = sched.alphas_cumprod[t[0]]
        x0 = MU + S * S * a.sqrt() / (a * S * S + 1 - a) * (x - a.sqrt() * MU)
        return x0 if sched.prediction_type == "sample" else (x - a.sqrt() * x0) / (1 - a).sqrt()

    return model_fn


def _exact_solution(sched: NoiseScheduler, x_start: torch.Tensor) -> torch.Tensor:
    """The ODE keeps (x_t - sqrt(a) MU) / sqrt(a S^2 + 1 - a) constant: map x at t = T-1 to t = 0."""
    a = sched.alphas_cumprod[-1]
    return MU + S * (x_start - a.sqrt() * MU) / (a * S * S + 1 - a).sqrt()


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_both_samplers_converge_to_the_exact_ode_solution(prediction):
    sched = NoiseScheduler(100, prediction_type=prediction, clip_sample=False)
    shape = (4, 16, 2)
    x_start = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = _exact_solution(sched, x_start)
    error = {}
    for sampler in ("ddim", "dpmpp"):
        for steps in (10, 20, 50, 100):
            out = sched.sample(_gaussian_oracle(sched), shape, steps, torch.Generator().manual_seed(0),
                               dtype=torch.float64, sampler=sampler)
            error[sampler, steps] = float((out - exact).abs().max())
    # measured: ddim 0.19 / 0.10 / 0.042 / 0.022, dpmpp 0.16 / 0.052 / 0.0056 / 0.0010
    assert error["ddim", 100] < 0.03 and error["dpmpp", 100] < 2e-3, error
    for steps in (10, 20, 50):  # closer to the exact solution at the same cost
        assert error["dpmpp", steps] < error["ddim", steps], error
    # order: halving the step size cuts DDIM's error ~2x (first order), DPM-Solver++'s > 3x
    assert error["dpmpp", 50] / error["dpmpp", 100] > 3 > error["ddim", 50] / error["ddim", 100]


@pytest.fixture(scope="module")
def tiny_model() -> DiffusionModel:
    """A tiny state-only epsilon model, trained 40 steps on noisy actions around 0.5 * state."""
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test thread setting
    torch.manual_seed(0)
    config = DiffusionConfig(state_dim=2, action_dim=2, cameras=[], horizon=8, n_action_steps=4,
                             down_dims=[16, 32], step_embed_dim=16, prediction_type="epsilon")
    model = DiffusionModel(config)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        state = torch.rand(32, 2, generator=g) * 2 - 1
        action = (0.5 * state[:, None] + 0.2 * torch.randn(32, 8, 2, generator=g)).clamp(-1, 1)
        loss, _ = model({"state": state[:, None].expand(-1, 2, -1), "action": action})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_dpmpp_at_many_steps_matches_ddim_on_a_tiny_model(tiny_model):
    feats = tiny_model.encode_obs(torch.zeros(2, 2, 2), {}, train=False)

    def run(sampler: str, steps: int) -> torch.Tensor:
        return tiny_model.sample_actions(feats, steps, torch.Generator().manual_seed(0), sampler)

    gap_10 = float((run("dpmpp", 10) - run("ddim", 10)).abs().max())
    gap_100 = float((run("dpmpp", 100) - run("ddim", 100)).abs().max())
    assert gap_100 < 0.03, gap_100
    assert gap_100 < gap_10 / 3, (gap_10, gap_100)


def test_one_step_is_the_same_for_both_samplers(tiny_model):
    """One step is the data prediction at t = T-1 for both: a check of the shared first step."""
    feats = tiny_model.encode_obs(torch.zeros(1, 2, 2), {}, train=False)
    one = [tiny_model.sample_actions(feats, 1, torch.Generator().manual_seed(3), s) for s in ("ddim", "dpmpp")]
    torch.testing.assert_close(one[0], one[1])


def test_unknown_sampler_is_a_clear_policy_error(tiny_model):
    feats = tiny_model.encode_obs(torch.zeros(1, 2, 2), {}, train=False)
    with pytest.raises(PolicyError, match="unknown sampler 'euler'; use one of ddim, dpmpp "):
        tiny_model.sample_actions(feats, 3, sampler="euler")
    with pytest.raises(PolicyError, match="unknown sampler"):
        check_sampler(None)
    with pytest.raises(PolicyError, match="unknown sampler"):
        DiffusionModel(DiffusionConfig(state_dim=2, action_dim=2, down_dims=[16, 32], sampler="heun"))


def _policy(model: DiffusionModel) -> DiffusionPolicy:
    stats = {k: {"min": -np.ones(2), "max": np.ones(2), "mean": np.zeros(2), "std": np.ones(2)}
             for k in ("state", "action")}
    norm = Normalizer.from_stats(stats, {"state": "min_max", "action": "min_max"})
    spec = make_spec("diffusion", 2, {}, 2, 4, 10.0, norm, {"num_train_steps": 100})
    return DiffusionPolicy(model, norm, spec)


def test_the_policy_takes_a_sampler_per_call_and_a_default(tiny_model):
    policy = _policy(tiny_model)
    obs = {"state": np.array([0.4, -0.2], np.float32)}
    chunks = {}
    for sampler in ("ddim", "dpmpp"):
        policy.reset()
        chunks[sampler] = policy.predict_chunk(obs, steps=5, sampler=sampler)
        assert chunks[sampler].shape == (4, 2)
    assert not np.array_equal(chunks["ddim"], chunks["dpmpp"])  # the name reached the sampler
    policy.set_sampling("dpmpp", 5)
    policy.reset()
    np.testing.assert_array_equal(policy.predict_chunk(obs), chunks["dpmpp"])
    with pytest.raises(PolicyError, match="unknown sampler"):
        policy.predict_chunk(obs, sampler="DDIM")
    with pytest.raises(PolicyError, match="unknown sampler"):
        policy.set_sampling("plms")
    with pytest.raises(PolicyError, match="DDIM steps must be an integer from 1 to 100"):
        policy.set_sampling(steps=500)
    with pytest.raises(PolicyError, match="not trained for the streaming sampler"):
        policy.predict_chunk(obs, sampler="streaming")


def test_the_sampler_is_chosen_per_request_through_the_server(tiny_model):
    from tether.policies.client import PolicyClient, RemoteError
    from tether.policies.server import PolicyServer, ServerConfig

    obs = {"state": np.array([0.4, -0.2], np.float32)}
    with PolicyServer(_policy(tiny_model), ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=20.0) as client:
            client.reset()
            ddim = client.infer(obs, steps=5, sampler="ddim")
            client.reset()
            dpmpp = client.infer(obs, steps=5, sampler="dpmpp")
            with pytest.raises(RemoteError, match="unknown sampler 'euler'") as err:
                client.infer(obs, steps=5, sampler="euler")
            assert err.value.code == "policy_error"
            client.reset()
            again = client.infer(obs, steps=5)  # no sampler: the checkpoint's default, ddim
    assert ddim.actions.shape == (4, 2) and not np.array_equal(ddim.actions, dpmpp.actions)
    np.testing.assert_array_equal(again.actions, ddim.actions)


def test_log_snr_steps_of_the_default_schedule_are_finite():
    """DPM-Solver++ works in log-SNR: every visited timestep must have 0 < alpha_bar < 1."""
    sched = NoiseScheduler(100)
    for steps in (1, 2, 3, 5, 10, 20, 100):
        for t in sched.timesteps(steps):
            a = sched.alpha_bar_at(t)
            assert 0 < a < 1 and math.isfinite(math.log(a / (1 - a)))
