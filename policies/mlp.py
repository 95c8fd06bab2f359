"""A plain behaviour-cloning baseline: state + pooled image features -> an action chunk.

The sanity baseline for reports: if ACT or Diffusion Policy do not beat this on a task, the
data or the setup is the problem, not the architecture. Each camera goes through the shared
`ImageEncoder` (ResNet-18, global average pooling); its features and the normalized state feed
an MLP. The `mlp` decoder predicts the k actions of the chunk at once from the last hidden
layer; the `gru` decoder (BC-RNN style, Mandlekar et al. 2021) unrolls a GRU over the k steps of
the chunk, so consecutive actions are predicted one from the other. Loss: L1 on normalized
actions, padded steps masked. Memoryless at inference, like ACT: one chunk per call.

Added through the registry alone (`FAMILY` below plus one line in
`tether.policies.registry.FAMILIES`): the trainer, checkpoints, `tether train` and `tether
serve` needed no change.
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
from tether.policies.registry import Horizons, PolicyFamily
from tether.policies.torch_policy import ChunkPolicy
from tether.policies.vision import ImageEncoder, optimize_trunks

__all__ = ["FAMILY", "MLPConfig", "MLPModel"]

DECODERS = ("mlp", "gru")


@dataclass
class MLPConfig:
    state_dim: int = 0
    action_dim: int = 0
    cameras: list[str] = field(default_factory=list)  # observation keys, e.g. ["image.top"]
    chunk_size: int = 20  # actions predicted per call
    decoder: str = "mlp"  # mlp (whole chunk at once) | gru (BC-RNN style, step by step)
    hidden_dim: int = 256
    n_layers: int = 2
    dropout: float = 0.0
    image_feature_dim: int = 64  # per camera, after pooling
    vision_norm: str = "batch"  # batch | frozen_batch | group
    vision_width: int = 64  # ResNet-18 base width; 64 is standard (pretrained weights need it)
    pretrained_backbone: str | None = None  # local torchvision-style ResNet-18 weights
    image_size: list[int] | None = None  # resize images to [H, W] before the backbone
    crop_ratio: float = 1.0
    color_jitter: float = 0.0

    def validate(self) -> None:
        if self.state_dim <= 0 or self.action_dim <= 0:
            raise PolicyError("mlp needs state_dim and action_dim > 0 (they come from the dataset)")
        if self.decoder not in DECODERS:
            raise PolicyError(f"mlp decoder must be one of {DECODERS}, got '{self.decoder}'")
        if self.chunk_size < 1 or self.hidden_dim < 1 or self.n_layers < 1:
            raise PolicyError(f"mlp chunk_size, hidden_dim and n_layers must be >= 1 (got "
                              f"{self.chunk_size}, {self.hidden_dim}, {self.n_layers})")


class MLPModel(nn.Module):
    """Works on normalized state/actions and uint8 images, like every family's model."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        feat = c.state_dim
        if c.cameras:
            self.vision = ImageEncoder(
                c.cameras, head="pool", out_dim=c.image_feature_dim, norm=c.vision_norm,
                width=c.vision_width, pretrained=c.pretrained_backbone, image_size=c.image_size,
                crop_ratio=c.crop_ratio, color_jitter=c.color_jitter)
            feat += len(c.cameras) * c.image_feature_dim
        layers: list[nn.Module] = []
        for i in range(c.n_layers):
            layers += [nn.Linear(feat if i == 0 else c.hidden_dim, c.hidden_dim), nn.ReLU(),
                       nn.Dropout(c.dropout)]
        self.trunk = nn.Sequential(*layers)
        if c.decoder == "mlp":
            self.head = nn.Linear(c.hidden_dim, c.chunk_size * c.action_dim)
        else:
            self.step_embed = nn.Parameter(torch.randn(1, c.chunk_size, c.hidden_dim) * 0.02)
            self.gru = nn.GRU(c.hidden_dim, c.hidden_dim, batch_first=True)
            self.head = nn.Linear(c.hidden_dim, c.action_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training forward pass (what DDP wraps): the loss and its parts."""
        return self.compute_loss(batch)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: `state` (B, T, D) normalized, `image.*` uint8 (B, T, 3, H, W), `action`
        (B, k, A) normalized, `action_is_pad` (B, k) bool. Uses the last observation step."""
        c = self.config
        actions = batch["action"][:, : c.chunk_size]
        if actions.shape[1] != c.chunk_size:
            raise PolicyError(f"mlp chunk_size is {c.chunk_size} but the batch has {actions.shape[1]} "
                              "actions; build the dataset with action_horizon = chunk_size")
        pred = self._decode(batch["state"][:, -1], {k: batch[k][:, -1] for k in c.cameras}, train=True)
        err = F.l1_loss(pred, actions, reduction="none")
        pad = batch.get("action_is_pad")
        if pad is not None:
            err = err * (~pad[:, : c.chunk_size]).unsqueeze(-1)
        loss = err.mean()
        return loss, {"l1": float(loss.detach())}

    @torch.inference_mode()
    def predict(self, obs: dict[str, torch.Tensor], steps: int | None = None) -> torch.Tensor:
        """obs: `state` (B, D) normalized, `image.*` uint8 (B, 3, H, W) -> (B, k, A) normalized."""
        return self._decode(obs["state"], {k: obs[k] for k in self.config.cameras}, train=False)

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Weight decay on weight matrices and kernels only (not biases, norms, embeddings)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 and name != "step_embed" else no_decay).append(p)
        return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]

    def _decode(self, state: torch.Tensor, images: dict[str, torch.Tensor], train: bool) -> torch.Tensor:
        c = self.config
        parts = [state]
        if c.cameras:
            parts += self.vision(images, train)
        h = self.trunk(torch.cat(parts, dim=-1))  # (B, hidden)
        if c.decoder == "mlp":
            return self.head(h).view(-1, c.chunk_size, c.action_dim)
        steps = h[:, None] + self.step_embed  # the chunk's k steps, each knowing its index
        out, _ = self.gru(steps, h[None].contiguous())
        return self.head(out)


# -- registry entry --------------------------------------------------------------------------------


def _horizons(c: MLPConfig) -> Horizons:
    return Horizons(obs_horizon=1, action_horizon=c.chunk_size, action_start=0, chunk=c.chunk_size,
                    extra={"obs_horizon": 1})


def _dataset_fields(model_config: dict, fps: float) -> dict:
    """The chunk covers `chunk_seconds` (a preset key) at the dataset's rate unless chunk_size
    is given."""
    model_config = dict(model_config)
    seconds = model_config.pop("chunk_seconds", None)
    if "chunk_size" not in model_config and seconds is not None:
        model_config["chunk_size"] = max(1, round(seconds * fps))
    return model_config


_TRAIN_SMALL = {"batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 30,
                "grad_clip": 10.0, "ema_decay": 0.99}
PRESETS = {
    "tiny": {"model": {"hidden_dim": 128, "n_layers": 2, "image_feature_dim": 32, "vision_width": 16,
                       "image_size": [48, 64], "chunk_seconds": 1.0},
             "train": {"steps": 400, **_TRAIN_SMALL}},
    "cpu": {"model": {"hidden_dim": 256, "n_layers": 3, "image_feature_dim": 64, "vision_width": 32,
                      "image_size": [60, 80], "chunk_seconds": 1.0},
            "train": {"steps": 5000, **_TRAIN_SMALL, "lr": 5e-4, "warmup_steps": 100, "ema_decay": 0.995}},
    "default": {"model": {"hidden_dim": 512, "n_layers": 3, "image_feature_dim": 64, "image_size": [96, 128],
                          "crop_ratio": 0.9, "chunk_seconds": 1.0},
                "train": {"steps": 30_000, "batch_size": 64, "lr": 3e-4, "weight_decay": 1e-4,
                          "warmup_steps": 500, "grad_clip": 10.0, "ema_decay": 0.999}},
}
PRESETS["full"] = PRESETS["default"]

FAMILY = PolicyFamily(
    name="mlp",
    summary="BC baseline: MLP (or GRU) on state + pooled ResNet-18 features, predicting a chunk",
    config_class=MLPConfig,
    model_class=MLPModel,
    policy_class=ChunkPolicy,
    normalizer_modes={"state": "mean_std", "action": "mean_std"},
    horizons=_horizons,
    presets=PRESETS,
    dataset_fields=_dataset_fields,
    trainer_keys=("chunk_seconds",),
    prepare_for_inference=optimize_trunks,
)
