"""Streaming Diffusion Policy: buffer levels and shifting, one network call per step, training
levels, and a tiny trained model streaming actions through the policy server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tether.core.errors import PolicyError
from tether.policies.diffusion import DiffusionConfig, DiffusionModel
from tether.policies.normalizer import Normalizer
from tether.policies.schedulers import NoiseScheduler
from tether.policies.streaming import StreamingSampler, StreamSchedule, mix_streaming_levels
from tether.policies.torch_policy import DiffusionPolicy, make_spec


def test_levels_rise_along_the_buffer_and_each_call_lowers_them_one_stage():
    s = StreamSchedule(num_train_steps=100, horizon=16, start=1, emit=1)
    rest, before = s.resting().tolist(), s.before_call().tolist()
    assert s.blocks == 15
    assert rest[:2] == [0, 0] and before[:1] == [0]  # the past action and (after a call) the current one
    assert before[-1] == 100 and before[1] == 7  # the fresh tail is pure noise
    assert all(a < b for a, b in zip(rest[1:], rest[2:], strict=False))  # strictly rising after the head
    assert before[:-1] == rest[1:]  # shifting by one position is exactly one stage up
    # The first call's fill: all pure noise -> the resting staircase, never going up.
    fill = s.fill()
    assert len(fill) == 15 and fill[0][0].tolist() == [100] * 16 and fill[-1][1].tolist() == rest
    for (b0, a0), (b1, _) in zip(fill, fill[1:], strict=False):
        assert torch.equal(a0, b1) and torch.all(a0 <= b0)


def test_emitting_a_short_chunk_moves_whole_blocks():
    s = StreamSchedule(num_train_steps=100, horizon=16, start=1, emit=3)
    assert s.blocks == 5
    assert s.resting().tolist() == [0, 0, 0, 0, 20, 20, 20, 40, 40, 40, 60, 60, 60, 80, 80, 80]
    assert s.before_call().tolist()[-3:] == [100, 100, 100]
    with pytest.raises(PolicyError, match="divide"):
        StreamSchedule(100, 16, 1, emit=4)


def _oracle_run(emit: int, calls_per_step: list[int], seen_t: list[torch.Tensor]):
    """Stream 14 actions with a sample-prediction oracle whose clean plan is f(k) = k / 20 for
    absolute step k; return the emitted actions and the sampler."""
    sched = NoiseScheduler(100, prediction_type="sample")
    sampler = StreamingSampler(sched, horizon=8, start=1, action_dim=1, emit=emit)
    step = {"k": 0}

    def oracle(x, t):
        seen_t.append(t.clone())
        p = torch.arange(8, dtype=x.dtype)
        return ((step["k"] + p - 1) / 20).view(1, 8, 1)  # position p is absolute step k + p - 1

    out = []
    for k in range(0, 14, emit):
        step["k"] = k
        before = sampler.calls
        out.append(sampler.step(oracle, torch.Generator().manual_seed(k)))
        calls_per_step.append(sampler.calls - before)
    return torch.cat(out, dim=1)[0, :, 0], sampler


@pytest.mark.parametrize("emit", [1, 7])
def test_the_buffer_shifts_and_each_step_costs_one_network_call(emit):
    calls, seen = [], []
    actions, sampler = _oracle_run(emit, calls, seen)
    blocks = 7 // emit
    assert calls[0] == blocks and all(c == 1 for c in calls[1:])  # fill once, then ONE call a step
    # The oracle knows the clean plan; the head emitted at step k is the plan's action for k, so
    # the buffer shifted by exactly `emit` positions per step.
    torch.testing.assert_close(actions, torch.arange(14, dtype=torch.float32) / 20)
    # The network is told a level per position: past/head clean (t 0), rising to the noisy tail.
    t_steady = seen[-1][0]
    expected = torch.clamp(sampler.schedule.before_call() - 1, min=0)
    assert torch.equal(t_steady, expected) and t_steady[-1] == 99


def test_lookahead_appends_the_calls_clean_estimates_of_the_next_actions():
    sched = NoiseScheduler(100, prediction_type="sample")
    plain = StreamingSampler(sched, horizon=8, start=1, action_dim=1)
    ahead = StreamingSampler(sched, horizon=8, start=1, action_dim=1)
    plan = lambda k: lambda x, t: ((k + torch.arange(8, dtype=x.dtype) - 1) / 20).view(1, 8, 1)  # noqa: E731
    for k in range(3):
        one = plain.step(plan(k), torch.Generator().manual_seed(k))
        chunk = ahead.step(plan(k), torch.Generator().manual_seed(k), lookahead=4)
        assert chunk.shape == (1, 5, 1)
        torch.testing.assert_close(chunk[:, :1], one)  # the emitted action is the buffer's own
        torch.testing.assert_close(chunk[0, :, 0], (k + torch.arange(5.0)) / 20)  # then the plan
    with pytest.raises(PolicyError, match="stream_lookahead must be an integer from 0 to 14"):
        DiffusionConfig(state_dim=2, action_dim=2, stream_lookahead=15).validate()


def test_past_positions_are_kept_as_clean_context():
    sched = NoiseScheduler(100, prediction_type="sample")
    sampler = StreamingSampler(sched, horizon=8, start=1, action_dim=2)
    rng = torch.Generator().manual_seed(0)
    noisy_oracle = lambda x, t: torch.randn(x.shape, generator=rng).clamp(-1, 1)  # noqa: E731
    sampler.step(noisy_oracle)
    head = sampler.buffer[:, 1].clone()
    emitted = sampler.step(noisy_oracle)
    assert torch.equal(sampler.buffer[:, 0], head)  # last step's action, untouched by the call
    assert torch.equal(emitted, sampler.buffer[:, 1:2])
    sampler.reset()
    assert sampler.buffer is None


def test_training_levels_mix_the_buffer_staircase_with_shared_levels():
    sched = NoiseScheduler(100)
    c = DiffusionConfig(state_dim=2, action_dim=2, horizon=16, streaming_fraction=1.0)
    schedule = StreamSchedule(100, 16, 1)
    torch.manual_seed(0)
    actions, noise = torch.rand(256, 16, 2) * 2 - 1, torch.randn(256, 16, 2)
    t = torch.randint(0, 100, (256,))
    t_pos, noisy, weight = mix_streaming_levels(sched, actions, noise, t, c)
    levels = torch.where(weight > 0, t_pos + 1, 0)
    steady = torch.all(levels == schedule.before_call(), dim=1)
    assert 0.5 < steady.float().mean() < 0.9  # the rest are stages of the first call's fill
    for row in levels[~steady]:  # a fill stage: the resting staircase raised to a floor
        floor = row[0]
        assert torch.equal(row, torch.maximum(schedule.resting(), floor))
    clean = weight == 0
    assert torch.equal(noisy[clean], actions[clean])  # clean context is the true action
    c.streaming_fraction = 0.5
    _, _, weight = mix_streaming_levels(sched, actions, noise, t, c)
    shared = torch.all(weight > 0, dim=1)
    assert 0.2 < shared.float().mean() < 0.8  # about half keep one shared level


def test_the_unet_takes_a_level_per_position_with_its_own_weights():
    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(state_dim=2, action_dim=2, down_dims=[16, 32, 64],
                                           step_embed_dim=16, streaming_fraction=0.5)).eval()
    x, feats = torch.randn(2, 16, 2), torch.randn(2, 2, 2)
    t = torch.tensor([5, 60])
    with torch.no_grad():
        shared = model._denoise(x, t, feats)
        per_position = model._denoise(x, t[:, None].expand(-1, 16), feats)
        staircase = model._denoise(x, torch.arange(16).expand(2, -1) * 6, feats)
    torch.testing.assert_close(per_position, shared)  # equal levels: exactly the shared-t network
    assert not torch.allclose(staircase, shared)


def test_streaming_needs_a_unet_trained_for_it():
    with pytest.raises(PolicyError, match="streaming needs the 'unet' denoiser"):
        DiffusionConfig(state_dim=2, action_dim=2, denoiser="transformer", sampler="streaming").validate()
    with pytest.raises(PolicyError, match="stream_actions must be a whole divisor of"):
        DiffusionConfig(state_dim=2, action_dim=2, stream_actions=2).validate()


H = 8


def _toy(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """state s in [-1, 1]^2 -> a deterministic plan a_p = s (0.3 + 0.6 p / H)."""
    state = torch.rand(n, 2, generator=g) * 2 - 1
    ramp = 0.3 + 0.6 * torch.arange(H, dtype=torch.float32) / H
    return state, state[:, None, :] * ramp[None, :, None]


@pytest.fixture(scope="module")
def streaming_policy() -> DiffusionPolicy:
    """A tiny state-only model trained 60 steps with half the samples at streaming levels."""
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test thread setting
    torch.manual_seed(0)
    config = DiffusionConfig(state_dim=2, action_dim=2, cameras=[], horizon=H, n_action_steps=4,
                             down_dims=[16, 32], step_embed_dim=16, prediction_type="sample",
                             streaming_fraction=0.5, sampler="streaming")
    model = DiffusionModel(config)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        state, action = _toy(32, g)
        loss, _ = model({"state": state[:, None].expand(-1, 2, -1), "action": action})
        opt.zero_grad()
        loss.backward()
        opt.step()
    stats = {k: {"min": -np.ones(2), "max": np.ones(2), "mean": np.zeros(2), "std": np.ones(2)}
             for k in ("state", "action")}
    norm = Normalizer.from_stats(stats, {"state": "min_max", "action": "min_max"})
    spec = make_spec("diffusion", 2, {}, 2, 4, 10.0, norm, {"num_train_steps": 100})
    return DiffusionPolicy(model.eval(), norm, spec)


def test_a_trained_model_streams_one_action_per_call_through_the_server(streaming_policy):
    from tether.policies.client import PolicyClient, RemoteError
    from tether.policies.server import PolicyServer, ServerConfig

    state = np.array([0.6, -0.5], np.float32)
    plan = state[None] * (0.3 + 0.6 * np.arange(H) / H)[:, None]
    with PolicyServer(streaming_policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=20.0) as client:
            client.reset()
            streamed = [client.infer({"state": state}).actions for _ in range(4)]
            with pytest.raises(RemoteError, match="'steps' does not apply"):
                client.infer({"state": state}, steps=5)
            client.reset()
            chunk = client.infer({"state": state}, steps=10, sampler="ddim").actions
    assert all(a.shape == (1, 2) and np.isfinite(a).all() for a in streamed)
    # The state never changes here, so every call emits the plan's action for position 1 (the
    # current step): the model learned it, and the buffer feeds the same plan forward.
    for action in streamed:
        np.testing.assert_allclose(action[0], plan[1], atol=0.1)
    assert chunk.shape == (4, 2)  # the same checkpoint still samples chunks


def test_a_forked_robot_gets_its_own_buffer(streaming_policy):
    obs = {"state": np.array([0.2, 0.1], np.float32)}
    streaming_policy.reset()
    streaming_policy.predict_chunk(obs)
    other = streaming_policy.fork()
    assert other._stream is None or other._stream.buffer is None
    assert streaming_policy._stream.buffer is not None


def test_lookahead_is_chosen_per_request_and_as_a_server_default(streaming_policy):
    """The measured best streaming variant (lookahead + temporal ensembling) needs no edited
    checkpoint: `lookahead` travels per request (`tether eval|rollout --stream-lookahead`), and
    `set_sampling` gives a server its default (`tether serve --stream-lookahead`)."""
    from tether.core.errors import ProtocolError
    from tether.policies.client import PolicyClient, RemoteError
    from tether.policies.server import PolicyServer, ServerConfig

    state = np.array([0.6, -0.5], np.float32)
    plan = state[None] * (0.3 + 0.6 * np.arange(H) / H)[:, None]
    with PolicyServer(streaming_policy.fork(), ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=20.0) as client:
            client.reset()
            for _ in range(3):
                ahead = client.infer({"state": state}, lookahead=4).actions
            plain = client.infer({"state": state}).actions
            with pytest.raises(RemoteError, match="'lookahead' extends the streaming sampler's reply"):
                client.infer({"state": state}, sampler="ddim", lookahead=2)
            with pytest.raises(RemoteError, match=f"lookahead must be an integer from 0 to {H - 2}"):
                client.infer({"state": state}, lookahead=H)
            with pytest.raises(ProtocolError, match="'lookahead' must be an integer"):
                client.infer({"state": state}, lookahead=-1)  # refused before it is sent
            assert client.infer({"state": state}).actions.shape == (1, 2)  # still serving
    assert ahead.shape == (5, 2) and plain.shape == (1, 2)
    # the emitted action, then the call's clean estimates of the plan's next four positions
    np.testing.assert_allclose(ahead, plan[1:6], atol=0.1)

    served = streaming_policy.fork()
    served.set_sampling(lookahead=3)
    assert served.predict_chunk({"state": state}).shape == (4, 2)
    assert served.predict_chunk({"state": state}, lookahead=0).shape == (1, 2)  # a request's wins
    with pytest.raises(PolicyError, match="lookahead must be an integer"):
        served.set_sampling(lookahead=H)
