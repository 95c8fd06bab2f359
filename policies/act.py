"""ACT: Action Chunking with Transformers (Zhao et al. 2023), readable in one sitting.

A CVAE: during training a small transformer encoder reads [CLS, state, action chunk] and
produces a style latent z; the main encoder-decoder transformer reads [z, state, image tokens]
and k learned queries decode a chunk of k actions. Loss = L1(actions) + kl_weight * KL(z).
At inference z = 0 (the prior mean) and the VAE encoder is not run.

Image tokens: every camera goes through one shared ResNet-18 trunk (`ImageEncoder`, head
`tokens`); its layer4 map is projected to `dim` channels and gets a 2D sine position embedding. Positions are added to
queries and keys in every attention layer, as in DETR/ACT.

The chunk length defaults to 100 steps at 50 Hz and scales with the dataset fps
(`chunk_size_for_fps`). Execution (temporal ensembling or plain chunks) is the runtime's job:
see `tether.policies.ensembling.TemporalEnsembler`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError
from tether.policies.presets import ACT_PRESETS
from tether.policies.registry import Horizons, PolicyFamily
from tether.policies.torch_policy import ACTPolicy
from tether.policies.vision import (
    ImageEncoder,
    accept_legacy_names,
    optimize_trunks,
    sine_embedding_2d,
)

__all__ = ["FAMILY", "ACTConfig", "ACTModel", "chunk_size_for_fps"]


def chunk_size_for_fps(fps: float, seconds: float = 2.0) -> int:
    """ACT's default chunk covers 2 s (100 steps at 50 Hz); keep that horizon at other rates."""
    return max(1, round(seconds * fps))


@dataclass
class ACTConfig:
    state_dim: int = 0
    action_dim: int = 0
    cameras: list[str] = field(default_factory=list)  # observation keys, e.g. ["image.top"]
    chunk_size: int = 100
    dim: int = 512
    n_heads: int = 8
    ff_dim: int = 3200
    enc_layers: int = 4
    dec_layers: int = 1
    vae_enc_layers: int = 4
    latent_dim: int = 32
    dropout: float = 0.1
    kl_weight: float = 10.0
    use_vae: bool = True
    vision_norm: str = "batch"  # batch | frozen_batch | group
    vision_width: int = 64  # ResNet-18 base width; 64 is standard (pretrained weights need it)
    pretrained_backbone: str | None = None  # local torchvision-style ResNet-18 weights
    image_size: list[int] | None = None  # resize images to [H, W] before the backbone
    crop_ratio: float = 1.0
    color_jitter: float = 0.0
    lr_backbone: float = 1e-5  # ACT trains the backbone with a smaller learning rate

    def validate(self) -> None:
        if self.state_dim <= 0 or self.action_dim <= 0:
            raise PolicyError("ACT needs state_dim and action_dim > 0 (they come from the dataset)")
        if self.dim % self.n_heads or self.dim % 4:
            raise PolicyError(f"ACT dim {self.dim} must be divisible by n_heads {self.n_heads} and 4")
        if self.chunk_size < 1:
            raise PolicyError(f"ACT chunk_size must be >= 1, got {self.chunk_size}")


class _Attention(nn.Module):
    """Multi-head attention with position embeddings added to queries and keys (DETR style)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, q, k, v, q_pos=None, k_pos=None, key_padding_mask=None):
        q = q if q_pos is None else q + q_pos
        k = k if k_pos is None else k + k_pos
        return self.attn(q, k, v, key_padding_mask=key_padding_mask, need_weights=False)[0]


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pos=None, key_padding_mask=None):
        x = self.norm1(x + self.drop(self.self_attn(x, x, x, pos, pos, key_padding_mask)))
        return self.norm2(x + self.drop(self.ff(x)))


class _DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, heads, dropout)
        self.cross_attn = _Attention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, x_pos, mem_pos):
        x = self.norm1(x + self.drop(self.self_attn(x, x, x, x_pos, x_pos)))
        x = self.norm2(x + self.drop(self.cross_attn(x, memory, memory, x_pos, mem_pos)))
        return self.norm3(x + self.drop(self.ff(x)))


def _sine_1d(n: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(1e4)) / dim))
    emb = torch.zeros(n, dim)
    emb[:, 0::2] = torch.sin(pos * freq)
    emb[:, 1::2] = torch.cos(pos * freq)
    return emb


class ACTModel(nn.Module):
    """The ACT network. Works on normalized state/actions and uint8 images."""

    def __init__(self, config: ACTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        d = c.dim
        if c.cameras:
            self.vision = ImageEncoder(
                c.cameras, head="tokens", out_dim=d, norm=c.vision_norm, width=c.vision_width,
                pretrained=c.pretrained_backbone, image_size=c.image_size, crop_ratio=c.crop_ratio,
                color_jitter=c.color_jitter)
        # Checkpoints from before the shared encoder name these modules at the top level.
        accept_legacy_names(self, {"backbone.": "vision.backbone.", "input_proj.": "vision.head."})
        # CVAE encoder: [CLS, state, actions] -> (mu, logvar)
        if c.use_vae:
            self.vae_cls = nn.Parameter(torch.zeros(1, 1, d))
            self.vae_state_proj = nn.Linear(c.state_dim, d)
            self.vae_action_proj = nn.Linear(c.action_dim, d)
            self.vae_encoder = nn.ModuleList(
                _EncoderLayer(d, c.n_heads, c.ff_dim, c.dropout) for _ in range(c.vae_enc_layers)
            )
            self.register_buffer("vae_pos", _sine_1d(c.chunk_size + 2, d)[None], persistent=False)
            self.latent_head = nn.Linear(d, 2 * c.latent_dim)
        self.latent_proj = nn.Linear(c.latent_dim, d)
        self.state_proj = nn.Linear(c.state_dim, d)
        self.extra_pos = nn.Parameter(torch.randn(1, 2, d) * 0.02)  # [latent, state]
        self.encoder = nn.ModuleList(
            _EncoderLayer(d, c.n_heads, c.ff_dim, c.dropout) for _ in range(c.enc_layers)
        )
        self.decoder = nn.ModuleList(
            _DecoderLayer(d, c.n_heads, c.ff_dim, c.dropout) for _ in range(c.dec_layers)
        )
        self.query_pos = nn.Parameter(torch.randn(1, c.chunk_size, d) * 0.02)
        self.action_head = nn.Linear(d, c.action_dim)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    # -- public API ---------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training forward pass (what DDP wraps): the loss and its parts."""
        return self.compute_loss(batch)


    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: `state` (B, 1 or T, D) normalized, `image.*` uint8 (B, T, 3, H, W),
        `action` (B, k, A) normalized, `action_is_pad` (B, k) bool."""
        state = batch["state"][:, -1]
        actions = batch["action"][:, : self.config.chunk_size]
        if actions.shape[1] != self.config.chunk_size:
            raise PolicyError(
                f"ACT chunk_size is {self.config.chunk_size} but the batch has {actions.shape[1]} "
                "actions; build the dataset with action_horizon = chunk_size"
            )
        pad = batch.get("action_is_pad")
        pad = pad[:, : self.config.chunk_size] if pad is not None else torch.zeros_like(actions[..., 0], dtype=torch.bool)
        images = {k: batch[k][:, -1] for k in self.config.cameras}
        mu = logvar = None
        if self.config.use_vae:
            mu, logvar = self._encode_style(state, actions, pad)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        else:
            z = state.new_zeros(state.shape[0], self.config.latent_dim)
        pred = self._decode(state, images, z, train=True)
        l1 = (F.l1_loss(pred, actions, reduction="none") * (~pad).unsqueeze(-1)).mean()
        metrics = {"l1": float(l1.detach())}
        loss = l1
        if mu is not None:
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
            loss = loss + self.config.kl_weight * kl
            metrics["kl"] = float(kl.detach())
        return loss, metrics

    @torch.inference_mode()
    def predict(self, obs: dict[str, torch.Tensor], steps: int | None = None) -> torch.Tensor:
        """obs: `state` (B, D) normalized, `image.*` uint8 (B, 3, H, W) -> (B, k, A) normalized."""
        state = obs["state"]
        z = state.new_zeros(state.shape[0], self.config.latent_dim)
        return self._decode(state, {k: obs[k] for k in self.config.cameras}, z, train=False)

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The backbone learns at `lr_backbone`, the rest at `lr` (ACT's recipe)."""
        trunk = "vision.backbone."
        backbone = [p for n, p in self.named_parameters() if n.startswith(trunk) and p.requires_grad]
        rest = [p for n, p in self.named_parameters() if not n.startswith(trunk) and p.requires_grad]
        groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
        if backbone:
            groups.append({"params": backbone, "lr": self.config.lr_backbone, "weight_decay": weight_decay})
        return groups

    # -- internals ------------------------------------------------------------------------------

    def _encode_style(self, state, actions, pad):
        b = state.shape[0]
        tokens = torch.cat(
            [self.vae_cls.expand(b, -1, -1), self.vae_state_proj(state)[:, None],
             self.vae_action_proj(actions)], dim=1)
        mask = torch.cat([pad.new_zeros(b, 2), pad], dim=1)
        x = tokens
        for layer in self.vae_encoder:
            x = layer(x, self.vae_pos, key_padding_mask=mask)
        mu, logvar = self.latent_head(x[:, 0]).chunk(2, dim=-1)
        return mu, logvar

    def _image_tokens(self, images: dict[str, torch.Tensor], train: bool):
        tokens, pos = [], []
        for feat in self.vision(images, train):  # (B, d, h, w) per camera
            h, w = feat.shape[-2:]
            tokens.append(feat.flatten(2).transpose(1, 2))
            pos.append(self._pos2d(h, w, feat))
        return tokens, pos

    def _pos2d(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        if (h, w) not in self._pos_cache:
            self._pos_cache[(h, w)] = sine_embedding_2d(h, w, self.config.dim)[None]
        return self._pos_cache[(h, w)].to(like.dtype)

    def _decode(self, state, images, z, train: bool):
        b = state.shape[0]
        tokens = [self.latent_proj(z)[:, None], self.state_proj(state)[:, None]]
        pos = [self.extra_pos]
        if self.config.cameras:
            img_tokens, img_pos = self._image_tokens(images, train)
            tokens += img_tokens
            pos += img_pos
        memory = torch.cat(tokens, dim=1)
        mem_pos = torch.cat(pos, dim=1)
        for layer in self.encoder:
            memory = layer(memory, mem_pos)
        x = memory.new_zeros(b, self.config.chunk_size, self.config.dim)
        for layer in self.decoder:
            x = layer(x, memory, self.query_pos, mem_pos)
        return self.action_head(x)


# -- registry entry --------------------------------------------------------------------------------


def _horizons(c: ACTConfig) -> Horizons:
    return Horizons(obs_horizon=1, action_horizon=c.chunk_size, action_start=0, chunk=c.chunk_size,
                    extra={"obs_horizon": 1})


def _dataset_fields(model_config: dict, fps: float) -> dict:
    """The chunk covers `chunk_seconds` (preset key, default 2 s) at the dataset's rate, unless
    chunk_size is given."""
    model_config = dict(model_config)
    seconds = model_config.pop("chunk_seconds", None)
    if "chunk_size" not in model_config:
        model_config["chunk_size"] = chunk_size_for_fps(fps, seconds or 2.0)
    return model_config


FAMILY = PolicyFamily(
    name="act",
    summary="ACT: CVAE transformer predicting action chunks (Zhao et al. 2023)",
    config_class=ACTConfig,
    model_class=ACTModel,
    policy_class=ACTPolicy,
    normalizer_modes={"state": "mean_std", "action": "mean_std"},
    horizons=_horizons,
    presets=ACT_PRESETS,
    dataset_fields=_dataset_fields,
    trainer_keys=("chunk_seconds",),
    prepare_for_inference=optimize_trunks,
)
