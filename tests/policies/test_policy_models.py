"""ACT and diffusion networks: shapes, losses, config errors."""

import pytest
import torch

from tether.core.errors import PolicyError
from tether.policies.act import ACTConfig, ACTModel, chunk_size_for_fps
from tether.policies.diffusion import DiffusionConfig, DiffusionModel


def _batch(b=3, to=1, ta=10, d=4, a=4, h=32, w=40):
    return {
        "state": torch.randn(b, to, d),
        "image.top": torch.randint(0, 256, (b, to, 3, h, w), dtype=torch.uint8),
        "action": torch.randn(b, ta, a),
        "action_is_pad": torch.zeros(b, ta, dtype=torch.bool),
    }


def test_chunk_size_scales_with_fps():
    assert chunk_size_for_fps(50) == 100
    assert chunk_size_for_fps(30) == 60
    assert chunk_size_for_fps(10, seconds=0.5) == 5


def _act(**kw):
    cfg = dict(state_dim=4, action_dim=4, cameras=["image.top"], chunk_size=10, dim=32, n_heads=4,
               ff_dim=64, enc_layers=1, vae_enc_layers=1, latent_dim=8, vision_width=8)
    cfg.update(kw)
    return ACTModel(ACTConfig(**cfg))


def test_act_loss_and_prediction_shapes():
    torch.manual_seed(0)
    model = _act()
    loss, parts = model(_batch())
    assert loss.ndim == 0 and set(parts) == {"l1", "kl"}
    loss.backward()
    assert model.vision.backbone.conv1.weight.grad is not None
    out = model.eval().predict({"state": torch.randn(2, 4), "image.top": torch.zeros(2, 3, 32, 40, dtype=torch.uint8)})
    assert out.shape == (2, 10, 4)


def test_act_padded_actions_do_not_count():
    torch.manual_seed(0)
    model = _act(use_vae=False, dropout=0.0)
    batch = _batch()
    batch["action_is_pad"][:, 5:] = True
    loss1, _ = model(batch)
    batch["action"][:, 5:] += 100.0  # padded steps change wildly: the loss must not
    loss2, _ = model(batch)
    assert torch.allclose(loss1, loss2)


def test_act_several_cameras_and_state_only():
    torch.manual_seed(0)
    two = _act(cameras=["image.a", "image.b"])
    b = _batch()
    b["image.a"] = b["image.b"] = b.pop("image.top")
    assert torch.isfinite(two(b)[0])
    state_only = _act(cameras=[])
    assert state_only.eval().predict({"state": torch.randn(1, 4)}).shape == (1, 10, 4)


def test_act_config_errors():
    with pytest.raises(PolicyError, match="state_dim"):
        ACTModel(ACTConfig())
    with pytest.raises(PolicyError, match="chunk_size"):
        _act()(_batch(ta=5))


@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_diffusion_loss_and_sampling(denoiser, prediction):
    torch.manual_seed(0)
    cfg = DiffusionConfig(state_dim=4, action_dim=4, cameras=["image.top"], denoiser=denoiser,
                          down_dims=[16, 32], step_embed_dim=16, d_model=32, n_layers=1, n_heads=2,
                          num_keypoints=4, image_feature_dim=8, vision_width=8, prediction_type=prediction)
    model = DiffusionModel(cfg)
    loss, _ = model(_batch(to=2, ta=16))
    loss.backward()
    model.eval()
    obs = {"state": torch.randn(1, 2, 4), "image.top": torch.zeros(1, 2, 3, 32, 40, dtype=torch.uint8)}
    for steps in (1, 3, 100):
        out = model.predict(obs, steps=steps, generator=torch.Generator().manual_seed(0))
        assert out.shape == (1, 8, 4) and torch.all(out.abs() <= 1.0)  # clipped sample space
    with pytest.raises(PolicyError, match="DDIM steps"):
        model.predict(obs, steps=0)


def test_diffusion_config_errors():
    with pytest.raises(PolicyError, match="divisible"):
        DiffusionModel(DiffusionConfig(state_dim=2, action_dim=2, horizon=10, down_dims=[8, 16, 32]))
    with pytest.raises(PolicyError, match="n_action_steps"):
        DiffusionModel(DiffusionConfig(state_dim=2, action_dim=2, n_action_steps=16, down_dims=[8, 16]))
