"""Real checkpoints (tiny ACT and diffusion, random weights) served and rolled out on the twin."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tether.app.commands.serve import load_served_policy  # noqa: E402
from tether.app.rollout import RolloutConfig, run_episode  # noqa: E402
from tether.policies.checkpoint import save_checkpoint  # noqa: E402
from tether.policies.client import PolicyClient  # noqa: E402
from tether.policies.normalizer import Normalizer  # noqa: E402
from tether.policies.server import PolicyServer, ServerConfig  # noqa: E402
from tether.policies.torch_policy import make_spec  # noqa: E402
from tether.robot.factory import make_robot  # noqa: E402

IMAGE = [240, 320, 3]


def _normalizer() -> Normalizer:
    stats = {
        k: {"min": -np.ones(6), "max": np.ones(6), "mean": np.zeros(6), "std": np.ones(6)}
        for k in ("state", "action")
    }
    return Normalizer.from_stats(stats, {"state": "mean_std", "action": "mean_std"})


def _tiny_checkpoint(tmp_path, policy_type: str):
    torch.manual_seed(0)
    common = dict(
        state_dim=6, action_dim=6, cameras=["image.top"], vision_width=8, image_size=[24, 32]
    )
    if policy_type == "act":
        from tether.policies.act import ACTConfig, ACTModel

        model = ACTModel(
            ACTConfig(
                **common,
                chunk_size=10,
                dim=32,
                n_heads=2,
                ff_dim=64,
                enc_layers=1,
                dec_layers=1,
                vae_enc_layers=1,
                latent_dim=4,
            )
        )
        chunk = 10
    else:
        from tether.policies.diffusion import DiffusionConfig, DiffusionModel

        model = DiffusionModel(
            DiffusionConfig(
                **common,
                horizon=8,
                n_action_steps=4,
                down_dims=[16, 32],
                n_groups=4,
                step_embed_dim=16,
                num_keypoints=8,
                image_feature_dim=16,
            )
        )
        chunk = 4
    norm = _normalizer()
    spec = make_spec(policy_type, 6, {"image.top": IMAGE}, 6, chunk, 50.0, norm)
    return save_checkpoint(tmp_path / policy_type, model=model, normalizer=norm,
                           policy_type=policy_type, spec=spec, step=0)  # fmt: skip


@pytest.fixture(scope="module")
def robot():
    twin = make_robot("twin:lift", ["fps=50"])
    with twin:
        yield twin


@pytest.mark.parametrize("policy_type", ["act", "diffusion"])
def test_a_served_checkpoint_runs_an_episode_on_the_twin(tmp_path, robot, policy_type):
    policy = load_served_policy(str(_tiny_checkpoint(tmp_path, policy_type)), None, 0, 0.0, "cpu")
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=5.0) as client:
            spec = client.info().spec
            assert spec.policy_type == policy_type and spec.normalizer_hash
            config = RolloutConfig(max_steps=16, realtime=False, blend="switch", steps=2)
            result = run_episode(robot, client, config, seed=0)
    assert result.length == 16 and result.chunks >= 2 and result.stalls == 0
    assert np.isfinite(result.actions).all() and not result.held.any()
    assert result.request_errors == {}


def test_diffusion_steps_are_chosen_per_request(tmp_path):
    policy = load_served_policy(str(_tiny_checkpoint(tmp_path, "diffusion")), None, 0, 0.0, "cpu")
    obs = {
        "state": np.zeros(6, np.float32),
        "image.top": np.zeros(IMAGE, np.uint8),
    }
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=10.0) as client:
            client.reset()
            one = client.infer(obs, steps=1)
            client.reset()
            eight = client.infer(obs, steps=8)
            client.reset()
            again = client.infer(obs, steps=1)
    assert one.actions.shape == (4, 6)
    np.testing.assert_array_equal(one.actions, again.actions)  # reset restores the generator
    assert not np.array_equal(one.actions, eight.actions)  # the step count reached the sampler
