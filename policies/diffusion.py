"""Diffusion Policy (Chi et al. 2023): a denoiser conditioned on recent observations.

The observation encoder turns the last `obs_horizon` (2) steps of state and images into
conditioning features (`ImageEncoder`: ResNet-18 with GroupNorm + spatial-softmax keypoints per
camera). A
denoiser predicts the noise (or the clean chunk) of a `horizon` (16) step action sequence;
DDIM sampling (`tether.policies.schedulers`) turns noise into actions with a step count chosen
per call. The policy executes `n_action_steps` (8) actions starting at the current step.

Two denoisers:
- `unet`: the 1D temporal conv U-Net with FiLM conditioning (scale and bias from the diffusion
  step embedding and the observation features) in every residual block;
- `transformer`: action tokens attend to a time token and one token per observation step.

CPU speed. The layers are PyTorch's own: at batch 1 the paper-size U-Net is bound by reading its
252 M weights once per denoising step, which hand-written kernels cannot change (they were
slower than the native layers on torch 2.13). Serving speed comes from an inference engine
(`tether.policies.engines`: OpenVINO, bf16 weights where the CPU has them), which runs the
denoiser alone per step; the observation encoding is computed once per chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError
from tether.policies.presets import DIFFUSION_PRESETS
from tether.policies.registry import Horizons, PolicyFamily
from tether.policies.schedulers import NoiseScheduler
from tether.policies.torch_policy import DiffusionPolicy
from tether.policies.vision import ImageEncoder, accept_legacy_names

__all__ = ["FAMILY", "DiffusionConfig", "DiffusionModel"]


@dataclass
class DiffusionConfig:
    state_dim: int = 0
    action_dim: int = 0
    cameras: list[str] = field(default_factory=list)
    obs_horizon: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    denoiser: str = "unet"  # unet | transformer
    down_dims: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    # transformer denoiser
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    dropout: float = 0.1
    # diffusion
    num_train_steps: int = 100
    prediction_type: str = "epsilon"  # epsilon | sample
    inference_steps: int = 10  # default sampler steps when a request does not say
    sampler: str = "ddim"  # default sampler: ddim | dpmpp | streaming (tether.policies.samplers)
    clip_sample: bool = True
    # Streaming Diffusion Policy (tether.policies.streaming): the share of training samples
    # noised with per-position levels (the rolling buffer's), and actions emitted per call.
    streaming_fraction: float = 0.0
    stream_actions: int = 1
    stream_lookahead: int = 0  # inference: estimates of later actions after them (for ensembling)
    # vision
    vision_norm: str = "group"
    vision_width: int = 64  # ResNet-18 base width; 64 is standard (pretrained weights need it)
    pretrained_backbone: str | None = None
    num_keypoints: int = 32
    image_feature_dim: int = 64
    image_size: list[int] | None = None
    crop_ratio: float = 0.9
    color_jitter: float = 0.0

    def validate(self) -> None:
        if self.state_dim <= 0 or self.action_dim <= 0:
            raise PolicyError("diffusion needs state_dim and action_dim > 0 (they come from the dataset)")
        if self.denoiser not in ("unet", "transformer"):
            raise PolicyError(f"denoiser must be 'unet' or 'transformer', got '{self.denoiser}'")
        if self.denoiser == "unet":
            factor = 2 ** (len(self.down_dims) - 1)
            if self.horizon % factor:
                raise PolicyError(
                    f"horizon {self.horizon} must be divisible by {factor} for a U-Net with "
                    f"{len(self.down_dims)} levels"
                )
            if any(d % self.n_groups for d in self.down_dims):
                raise PolicyError(f"every down_dims entry must be divisible by n_groups={self.n_groups}")
        if self.obs_horizon - 1 + self.n_action_steps > self.horizon:
            raise PolicyError(
                f"obs_horizon - 1 + n_action_steps ({self.obs_horizon - 1 + self.n_action_steps}) "
                f"must not exceed horizon ({self.horizon})"
            )
        if not 1 <= self.inference_steps <= self.num_train_steps:
            raise PolicyError(f"inference_steps must be in 1..{self.num_train_steps}")
        from tether.policies.streaming import check_streaming_config

        check_streaming_config(self)


# -- U-Net -----------------------------------------------------------------------------------------


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, groups: int) -> None:
        super().__init__(nn.Conv1d(cin, cout, k, padding=k // 2), nn.GroupNorm(groups, cout), nn.Mish())


class _ResBlock(nn.Module):
    """Two conv blocks; FiLM (per-channel scale and bias from the condition) between them."""

    def __init__(self, cin: int, cout: int, cond_dim: int, k: int, groups: int) -> None:
        super().__init__()
        self.block1 = _ConvBlock(cin, cout, k, groups)
        self.block2 = _ConvBlock(cout, cout, k, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.residual = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """cond (B, C), or (B, L, C) per position (streaming: one noise level per action),
        averaged down to this block's length."""
        if cond.dim() == 3:
            cond = cond.transpose(1, 2)
            if cond.shape[-1] != x.shape[-1]:
                cond = F.avg_pool1d(cond, cond.shape[-1] // x.shape[-1])
            scale, bias = self.film(cond.transpose(1, 2)).transpose(1, 2).chunk(2, dim=1)
        else:
            scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        out = self.block1(x) * scale + bias
        return self.block2(out) + self.residual(x)


def _step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(1e4) / (half - 1)))
    arg = t.float()[:, None] * freq[None]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class ConditionalUnet1D(nn.Module):
    def __init__(self, action_dim: int, global_cond_dim: int, c: DiffusionConfig) -> None:
        super().__init__()
        e = c.step_embed_dim
        self.step_dim = e
        self.step_mlp = nn.Sequential(nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e))
        cond_dim = e + global_cond_dim
        dims = [action_dim, *c.down_dims]
        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        k, g = c.kernel_size, c.n_groups
        self.down = nn.ModuleList()
        for i, (din, dout) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(nn.ModuleList([
                _ResBlock(din, dout, cond_dim, k, g), _ResBlock(dout, dout, cond_dim, k, g),
                nn.Conv1d(dout, dout, 3, stride=2, padding=1) if not last else nn.Identity()]))
        mid = dims[-1]
        self.mid = nn.ModuleList([_ResBlock(mid, mid, cond_dim, k, g), _ResBlock(mid, mid, cond_dim, k, g)])
        self.up = nn.ModuleList()
        for din, dout in reversed(pairs[1:]):  # every up level doubles the length back
            self.up.append(nn.ModuleList([
                _ResBlock(2 * dout, din, cond_dim, k, g), _ResBlock(din, din, cond_dim, k, g),
                nn.ConvTranspose1d(din, din, 4, stride=2, padding=1)]))
        start = c.down_dims[0]
        self.final = nn.Sequential(_ConvBlock(start, start, k, g), nn.Conv1d(start, action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """x (B, T, A) noisy actions, t (B,) steps or (B, T) per position, global_cond (B, G)."""
        if t.dim() == 2:  # per-position levels: FiLM per position (same weights)
            step = self.step_mlp(_step_embedding(t.flatten(), self.step_dim)).view(*t.shape, -1)
            cond = torch.cat([step, global_cond[:, None].expand(-1, t.shape[1], -1)], dim=-1)
        else:
            cond = torch.cat([self.step_mlp(_step_embedding(t, self.step_dim)), global_cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, cond), cond)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, cond)
        for res1, res2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(res2(res1(h, cond), cond))
        return self.final(h).transpose(1, 2)


class TransformerDenoiser(nn.Module):
    """Action tokens (with a learned position) attend to [time token, obs tokens]."""

    def __init__(self, action_dim: int, obs_feature_dim: int, c: DiffusionConfig) -> None:
        super().__init__()
        d = c.d_model
        self.step_dim = d
        self.in_proj = nn.Linear(action_dim, d)
        self.pos = nn.Parameter(torch.randn(1, c.horizon, d) * 0.02)
        self.cond_proj = nn.Linear(obs_feature_dim, d)
        self.cond_pos = nn.Parameter(torch.randn(1, c.obs_horizon + 1, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        self.cond_encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, c.n_heads, 4 * d, c.dropout, activation="gelu",
                                       batch_first=True, norm_first=True), num_layers=1,
            enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d, c.n_heads, 4 * d, c.dropout, activation="gelu",
                                       batch_first=True, norm_first=True), num_layers=c.n_layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, action_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs_features: torch.Tensor) -> torch.Tensor:
        time_tok = self.time_mlp(_step_embedding(t, self.step_dim))[:, None]
        cond = torch.cat([time_tok, self.cond_proj(obs_features)], dim=1) + self.cond_pos
        memory = self.cond_encoder(cond)
        h = self.decoder(self.in_proj(x) + self.pos, memory)
        return self.head(self.norm(h))


# -- the full model --------------------------------------------------------------------------------


class DiffusionModel(nn.Module):
    """Observation encoder + denoiser + scheduler. Works on normalized state/actions."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.scheduler = NoiseScheduler(c.num_train_steps, c.prediction_type, c.clip_sample)
        feat = c.state_dim
        if c.cameras:
            self.vision = ImageEncoder(
                c.cameras, head="keypoints", out_dim=c.image_feature_dim, norm=c.vision_norm,
                width=c.vision_width, pretrained=c.pretrained_backbone, num_keypoints=c.num_keypoints,
                image_size=c.image_size, crop_ratio=c.crop_ratio, color_jitter=c.color_jitter)
            feat += len(c.cameras) * c.image_feature_dim
        # Checkpoints from before the shared encoder name these modules at the top level.
        accept_legacy_names(self, {"backbone.": "vision.backbone.", "keypoints.": "vision.head.0.",
                                   "image_proj.0.": "vision.head.1."})
        self.obs_feature_dim = feat
        if c.denoiser == "unet":
            self.denoiser = ConditionalUnet1D(c.action_dim, feat * c.obs_horizon, c)
        else:
            self.denoiser = TransformerDenoiser(c.action_dim, feat, c)

    def encode_obs(self, state: torch.Tensor, images: dict[str, torch.Tensor], train: bool) -> torch.Tensor:
        """state (B, To, D), images uint8 (B, To, 3, H, W) -> per-step features (B, To, F)."""
        b, to = state.shape[:2]
        flat = self.encode_step(state.flatten(0, 1), {k: images[k].flatten(0, 1) for k in self.config.cameras},
                                train)
        return flat.view(b, to, -1)

    def encode_step(self, state: torch.Tensor, images: dict[str, torch.Tensor], train: bool) -> torch.Tensor:
        """One observation step: state (N, D), images uint8 (N, 3, H, W) -> features (N, F).

        Features of a step do not depend on the other steps, so at inference the policy encodes
        each new frame once and keeps the features of the previous ones.
        """
        parts = [state]
        if self.config.cameras:
            parts += self.vision(images, train)
        return torch.cat(parts, dim=-1)

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, obs_features: torch.Tensor) -> torch.Tensor:
        if self.config.denoiser == "unet":
            return self.denoiser(x, t, obs_features.flatten(1))
        return self.denoiser(x, t, obs_features)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training forward pass (what DDP wraps): the loss and its parts."""
        return self.compute_loss(batch)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        state = batch["state"][:, : c.obs_horizon]
        if state.shape[1] != c.obs_horizon:
            raise PolicyError(f"diffusion expects obs_horizon={c.obs_horizon} states per sample, "
                              f"got {state.shape[1]}; build the dataset with the same obs_horizon")
        actions = batch["action"][:, : c.horizon]
        if actions.shape[1] != c.horizon:
            raise PolicyError(f"diffusion expects horizon={c.horizon} actions per sample, got "
                              f"{actions.shape[1]}")
        images = {k: batch[k][:, : c.obs_horizon] for k in c.cameras}
        feats = self.encode_obs(state, images, train=True)
        noise = torch.randn_like(actions)
        t = torch.randint(0, c.num_train_steps, (actions.shape[0],), device=actions.device)
        noisy = self.scheduler.add_noise(actions, noise, t)
        if c.streaming_fraction > 0:  # some samples get the rolling buffer's per-position levels
            from tether.policies.streaming import mix_streaming_levels

            t, noisy, weight = mix_streaming_levels(self.scheduler, actions, noise, t, c)
        pred = self._denoise(noisy, t, feats)
        err = F.mse_loss(pred, self.scheduler.target(actions, noise), reduction="none")
        if c.streaming_fraction > 0:
            err = err * weight.unsqueeze(-1)  # clean context positions teach nothing
        pad = batch.get("action_is_pad")
        if pad is not None:
            err = err * (~pad[:, : c.horizon]).unsqueeze(-1)
        loss = err.mean()
        return loss, {"mse": float(loss.detach())}

    @torch.inference_mode()
    def predict(self, obs: dict[str, torch.Tensor], steps: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """obs: `state` (B, To, D) normalized, `image.*` uint8 (B, To, 3, H, W) -> (B, n_action_steps, A)."""
        feats = self.encode_obs(obs["state"], {k: obs[k] for k in self.config.cameras}, train=False)
        return self.sample_actions(feats, steps, generator)

    @torch.inference_mode()
    def sample_actions(self, feats: torch.Tensor, steps: int | None = None,
                       generator: torch.Generator | None = None, sampler: str | None = None) -> torch.Tensor:
        """Encoded observations (B, To, F) -> normalized actions (B, n_action_steps, A) by a
        chunk sampler (`ddim`, `dpmpp`; None: the config's default, ddim when that is streaming)."""
        c = self.config
        steps = c.inference_steps if steps is None else steps
        if sampler is None:
            sampler = c.sampler if c.sampler != "streaming" else "ddim"
        b = feats.shape[0]
        sample = self.scheduler.sample(lambda x, t: self._denoise(x, t, feats),
                                       (b, c.horizon, c.action_dim), steps, generator,
                                       device=feats.device, dtype=feats.dtype, sampler=sampler)
        start = c.obs_horizon - 1
        return sample[:, start: start + c.n_action_steps]

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name or "pos" in name else decay).append(p)
        return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


# -- registry entry --------------------------------------------------------------------------------


def _horizons(c: DiffusionConfig) -> Horizons:
    return Horizons(obs_horizon=c.obs_horizon, action_horizon=c.horizon,
                    action_start=-(c.obs_horizon - 1), chunk=c.n_action_steps,
                    extra={"obs_horizon": c.obs_horizon, "inference_steps": c.inference_steps,
                           "num_train_steps": c.num_train_steps})


FAMILY = PolicyFamily(
    name="diffusion",
    summary="Diffusion Policy: denoises an action sequence conditioned on recent observations",
    config_class=DiffusionConfig,
    model_class=DiffusionModel,
    policy_class=DiffusionPolicy,
    # samples are clipped to [-1, 1], so actions must live there
    normalizer_modes={"state": "min_max", "action": "min_max"},
    horizons=_horizons,
    presets=DIFFUSION_PRESETS,
)
