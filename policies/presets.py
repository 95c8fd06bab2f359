"""Named model + training settings per policy: `tiny`, `cpu`, `default`, `full`.

The tables of ACT and Diffusion Policy; every family's registry entry names its own table
(`tether.policies.registry`), and `get_preset` looks it up there.

- `tiny`: trains in a minute or two on a laptop CPU; for tests and smoke runs.
- `cpu`: what learns the twin tasks in minutes on 2 CPU cores (small images, small networks).
- `default`: ACT with the paper architecture (ResNet-18, dim 512, chunk 2 s);
  Diffusion Policy with a CPU-sized U-Net 64/128/256 and a half-width ResNet-18
  (10 DDIM steps in < 100 ms at 96x96).
- `full`: Diffusion Policy with the paper U-Net (512/1024/2048); for ACT the same as default.

A preset fills every TrainConfig / model field the user left unset; explicit values win. When
no preset is named, the trainer picks `cpu` on a CPU and `default` on a GPU
(`tether.policies.trainer.choose_preset`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACT_PRESETS", "DIFFUSION_PRESETS", "get_preset"]

_ACT_TINY = {
    "model": {"dim": 64, "n_heads": 4, "ff_dim": 256, "enc_layers": 2, "dec_layers": 1,
              "vae_enc_layers": 1, "latent_dim": 16, "dropout": 0.0, "kl_weight": 1.0,
              "image_size": [48, 64], "chunk_seconds": 1.0, "vision_width": 16},
    "train": {"steps": 400, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 30,
              "grad_clip": 10.0, "ema_decay": 0.99},
}
_ACT_CPU = {
    "model": {"dim": 128, "n_heads": 4, "ff_dim": 512, "enc_layers": 2, "dec_layers": 1,
              "vae_enc_layers": 2, "latent_dim": 16, "dropout": 0.0, "kl_weight": 1.0,
              "image_size": [60, 80], "chunk_seconds": 1.0, "lr_backbone": 5e-4,
              "vision_width": 32},
    "train": {"steps": 5000, "batch_size": 32, "lr": 5e-4, "weight_decay": 1e-4, "warmup_steps": 100,
              "grad_clip": 10.0, "ema_decay": 0.995},
}
_ACT_DEFAULT = {
    "model": {"dim": 512, "n_heads": 8, "ff_dim": 3200, "enc_layers": 4, "dec_layers": 1,
              "vae_enc_layers": 4, "latent_dim": 32, "dropout": 0.1, "kl_weight": 10.0,
              "chunk_seconds": 2.0},
    "train": {"steps": 100_000, "batch_size": 8, "lr": 1e-5, "weight_decay": 1e-4, "warmup_steps": 500,
              "grad_clip": 10.0, "ema_decay": 0.999},
}
_DIFF_TINY = {
    "model": {"down_dims": [32, 64, 128], "step_embed_dim": 32, "kernel_size": 5, "n_groups": 8,
              "num_keypoints": 16, "image_feature_dim": 32, "image_size": [48, 64], "vision_width": 16,
              "crop_ratio": 0.9, "inference_steps": 10},
    "train": {"steps": 400, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-6, "warmup_steps": 30,
              "grad_clip": 10.0, "ema_decay": 0.99},
}
_DIFF_DEFAULT = {
    "model": {"down_dims": [64, 128, 256], "step_embed_dim": 64, "kernel_size": 5, "n_groups": 8,
              "num_keypoints": 32, "image_feature_dim": 64, "image_size": [96, 96], "vision_width": 32,
              "crop_ratio": 0.9, "inference_steps": 10},
    "train": {"steps": 20_000, "batch_size": 64, "lr": 3e-4, "weight_decay": 1e-6, "warmup_steps": 500,
              "grad_clip": 10.0, "ema_decay": 0.999},
}
_DIFF_FULL = {
    "model": {"down_dims": [512, 1024, 2048], "step_embed_dim": 128, "kernel_size": 5, "n_groups": 8,
              "num_keypoints": 32, "image_feature_dim": 64, "image_size": [96, 96],
              "crop_ratio": 0.9, "inference_steps": 10},
    "train": {"steps": 100_000, "batch_size": 64, "lr": 1e-4, "weight_decay": 1e-6, "warmup_steps": 500,
              "grad_clip": 10.0, "ema_decay": 0.9999},
}

# Each family's entry in tether.policies.registry points at its table; a new family may keep its
# table in its own module instead (tether.policies.mlp does).
ACT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": _ACT_TINY, "cpu": _ACT_CPU, "default": _ACT_DEFAULT, "full": _ACT_DEFAULT}
DIFFUSION_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": _DIFF_TINY, "cpu": _DIFF_DEFAULT, "default": _DIFF_DEFAULT, "full": _DIFF_FULL}


def get_preset(policy: str, name: str) -> dict[str, dict[str, Any]]:
    """A deep copy of preset `name` for `policy` ({"model": {...}, "train": {...}}); unknown
    policies and presets are ConfigErrors listing the known ones."""
    from tether.policies.registry import get_family

    return get_family(policy).preset(name)
