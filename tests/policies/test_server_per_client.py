"""Per-client policy state on the server: one robot's reset or history never reaches another.

Each client's replies in a two-client run must equal the replies of a one-client run with the
same inputs, whatever the other client sends or resets in between.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tether.core.schema import ArraySpec
from tether.policies.client import PolicyClient
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import IdentityPolicy, SlowPolicy

OBS = (ArraySpec("state", "float32", (4,)),)
LOCAL = "tcp://127.0.0.1:0"


class HistoryPolicy(IdentityPolicy):
    """Mean of the states seen this episode plus seeded noise: depends on history AND RNG."""

    policy_type = "history"
    episode_state = ("history", "rng")

    def __init__(self) -> None:
        super().__init__(OBS, action_dim=4, chunk_size=3, fps=10)
        self.history: list[np.ndarray] = []
        self.rng = np.random.default_rng(0)

    def reset(self) -> None:
        self.history = []
        self.rng = np.random.default_rng(0)

    def _predict_chunk(self, observation, **options):
        self.history.append(np.array(observation["state"]))
        mean = np.mean(self.history, axis=0)
        return mean + self.rng.normal(0.0, 1.0, (self.spec.chunk_size, 4))


def obs(value: float) -> dict[str, np.ndarray]:
    return {"state": np.full(4, value, dtype=np.float32)}


# A script per client: ("reset",) or ("infer", value). B's script has a reset in the middle too.
SCRIPT_A = [("reset",), ("infer", 10.0), ("infer", 11.0), ("reset",), ("infer", 12.0), ("reset",)]
SCRIPT_B = [("reset",), ("infer", 1.0), ("infer", 2.0), ("infer", 3.0), ("reset",), ("infer", 4.0)]


def run_alone(policy, script) -> list[np.ndarray]:
    with PolicyServer(policy, ServerConfig(LOCAL)) as server:
        with PolicyClient(server.endpoint, timeout_s=10.0) as client:
            return [r for r in (_do(client, step) for step in script) if r is not None]


def _do(client: PolicyClient, step) -> np.ndarray | None:
    if step[0] == "reset":
        client.reset()
        return None
    return client.infer(obs(step[1]), steps=2).actions


def run_interleaved(policy, config: ServerConfig | None = None):
    config = config or ServerConfig(LOCAL)
    replies: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    with PolicyServer(policy, config) as server:
        with (
            PolicyClient(server.endpoint, timeout_s=10.0, client_name="a") as a,
            PolicyClient(server.endpoint, timeout_s=10.0, client_name="b") as b,
        ):
            for step_a, step_b in zip(SCRIPT_A, SCRIPT_B, strict=True):
                for name, client, step in (("b", b, step_b), ("a", a, step_a)):
                    reply = _do(client, step)
                    if reply is not None:
                        replies[name].append(reply)
    return replies, server


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_one_clients_reset_and_history_do_not_change_what_another_receives():
    alone_a = run_alone(HistoryPolicy(), SCRIPT_A)
    alone_b = run_alone(HistoryPolicy(), SCRIPT_B)
    together, _ = run_interleaved(HistoryPolicy())
    _assert_same(together["b"], alone_b)
    _assert_same(together["a"], alone_a)
    # The check has teeth: one shared state would mix the two clients' histories.
    shared = HistoryPolicy()
    mixed = []
    for step_a, step_b in zip(SCRIPT_A, SCRIPT_B, strict=True):
        for step in (step_b, step_a):
            if step[0] == "reset":
                shared.reset()
            elif step is step_b:
                mixed.append(shared.predict_chunk(obs(step[1])))
            else:
                shared.predict_chunk(obs(step[1]))
    assert any(not np.array_equal(m, w) for m, w in zip(mixed, alone_b, strict=True))


def test_a_wrapped_policy_is_forked_through_its_wrapper():
    inner = HistoryPolicy()
    slow = SlowPolicy(inner, 0.0)
    fork = slow.fork()
    assert isinstance(fork, SlowPolicy) and fork.inner is not inner
    fork.predict_chunk(obs(5.0))
    assert inner.history == [] and len(fork.inner.history) == 1
    memoryless = IdentityPolicy(OBS, action_dim=4)
    assert memoryless.fork() is memoryless and SlowPolicy(memoryless, 0).fork().inner is memoryless


def test_client_states_are_bounded_and_the_evicted_client_starts_afresh(caplog):
    with caplog.at_level(logging.WARNING, logger="tether.policies.server"):
        config = ServerConfig(LOCAL, max_client_states=1)
        with PolicyServer(HistoryPolicy(), config) as server:
            with (
                PolicyClient(server.endpoint, timeout_s=10.0, client_name="a") as a,
                PolicyClient(server.endpoint, timeout_s=10.0, client_name="b") as b,
            ):
                first = a.infer(obs(1.0)).actions
                a.infer(obs(2.0))
                b.infer(obs(7.0))  # a's state is dropped to make room
                again = a.infer(obs(1.0)).actions
            assert len(server.client_policies) == 1
            assert server.client_policies.evictions >= 1
    np.testing.assert_array_equal(again, first)  # as after a reset: fresh history and RNG
    assert "dropped the policy state" in caplog.text and "max_client_states" in caplog.text


def test_a_reconnecting_client_keeps_its_state():
    with PolicyServer(HistoryPolicy(), ServerConfig(LOCAL)) as server:
        with PolicyClient(server.endpoint, timeout_s=10.0) as client:
            client.reset()
            client.infer(obs(1.0))
            client.reconnect()  # what a timeout does: a new socket, the same routing id
            after = client.infer(obs(3.0)).actions
    reference = HistoryPolicy()
    reference.predict_chunk(obs(1.0))
    np.testing.assert_array_equal(after, reference.predict_chunk(obs(3.0)))


# --- diffusion: the real policy with history and a generator ------------------------------------

torch = pytest.importorskip("torch")


def _tiny_diffusion():
    from tether.policies.diffusion import DiffusionConfig, DiffusionModel
    from tether.policies.normalizer import Normalizer
    from tether.policies.torch_policy import DiffusionPolicy, make_spec

    torch.manual_seed(0)
    model = DiffusionModel(
        DiffusionConfig(
            state_dim=4, action_dim=4, cameras=[], horizon=8, n_action_steps=4,
            down_dims=[16, 32], n_groups=4, step_embed_dim=16,
        )
    )  # fmt: skip
    stats = {
        k: {"min": -np.ones(4), "max": np.ones(4), "mean": np.zeros(4), "std": np.ones(4)}
        for k in ("state", "action")
    }
    norm = Normalizer.from_stats(stats, {"state": "mean_std", "action": "mean_std"})
    spec = make_spec("diffusion", 4, {}, 4, 4, 10.0, norm, {"num_train_steps": 100})
    return DiffusionPolicy(model, norm, spec)


def test_diffusion_history_and_generator_are_per_client():
    policy = _tiny_diffusion()
    fork = policy.fork()
    assert fork.model is policy.model and fork._history is not policy._history
    assert fork.generator is not policy.generator
    alone_b = run_alone(_tiny_diffusion(), SCRIPT_B)
    together, _ = run_interleaved(_tiny_diffusion())
    _assert_same(together["b"], alone_b)
