"""One normalizer for ACT and Diffusion Policy, built from dataset statistics.

The statistics travel inside every checkpoint (as safetensors tensors plus a JSON mode table),
so a served policy needs nothing but its checkpoint directory. Each key has a mode:

- `mean_std`: (x - mean) / std, what ACT uses for state and actions;
- `min_max`: maps [min, max] to [-1, 1], what Diffusion Policy uses (its samples are clipped
  to [-1, 1], so actions must live there);
- `identity`: passes through (images are scaled to [0, 1] by the vision encoder instead).

Constant dimensions (std 0 or min == max, e.g. a gripper never used) would divide by zero;
they get a unit scale instead, so they normalize to a constant and unnormalize back exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError

__all__ = ["MODES", "Normalizer"]

MODES = ("mean_std", "min_max", "identity")
_EPS = 1e-6


class Normalizer(nn.Module):
    """Per-key affine normalization: y = (x - offset) / scale, stored as buffers.

    Build it with `Normalizer.from_stats(stats, modes)` where `stats` is the output of
    `tether.data.stats.compute_stats` ({key: {"min","max","mean","std": array}}).
    """

    def __init__(self, modes: Mapping[str, str], offsets: Mapping[str, torch.Tensor],
                 scales: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.modes = dict(modes)
        for key, mode in self.modes.items():
            if mode not in MODES:
                raise PolicyError(f"normalizer mode for '{key}' is '{mode}'; use one of {MODES}")
            if mode == "identity":
                continue
            self.register_buffer(_buf(key, "offset"), offsets[key].float().clone())
            self.register_buffer(_buf(key, "scale"), scales[key].float().clone())

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping[str, np.ndarray]],
                   modes: Mapping[str, str]) -> Normalizer:
        offsets, scales = {}, {}
        for key, mode in modes.items():
            if mode == "identity":
                continue
            if key not in stats:
                raise PolicyError(
                    f"no dataset statistics for '{key}' (have: {sorted(stats)}); recompute the "
                    "stats with tether.data.stats.compute_stats or drop the key from the config"
                )
            s = {k: np.asarray(v, dtype=np.float64) for k, v in stats[key].items()}
            if mode == "mean_std":
                std = s["std"]
                offsets[key] = torch.from_numpy(s["mean"])
                scales[key] = torch.from_numpy(np.where(std < _EPS, 1.0, std))
            elif mode == "min_max":
                lo, hi = s["min"], s["max"]
                half = (hi - lo) / 2.0
                offsets[key] = torch.from_numpy((hi + lo) / 2.0)
                scales[key] = torch.from_numpy(np.where(half < _EPS, 1.0, half))
            else:
                raise PolicyError(f"normalizer mode for '{key}' is '{mode}'; use one of {MODES}")
            if not (torch.isfinite(offsets[key]).all() and torch.isfinite(scales[key]).all()):
                raise PolicyError(f"dataset statistics for '{key}' contain NaN or inf; check the data")
        return cls(modes, offsets, scales)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        if self.modes.get(key, "identity") == "identity":
            return x
        return (x - getattr(self, _buf(key, "offset"))) / getattr(self, _buf(key, "scale"))

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        if self.modes.get(key, "identity") == "identity":
            return y
        return y * getattr(self, _buf(key, "scale")) + getattr(self, _buf(key, "offset"))

    def dim(self, key: str) -> int | None:
        name = _buf(key, "offset")
        return int(getattr(self, name).shape[-1]) if hasattr(self, name) else None

    # -- persistence: tensors in safetensors, modes in its metadata ------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: buf.detach().contiguous() for name, buf in self.named_buffers()}

    def digest(self) -> str:
        """A short hash of modes and values; clients compare it to detect a stale checkpoint."""
        h = hashlib.sha256(json.dumps(self.modes, sort_keys=True).encode())
        for name, t in sorted(self.tensors().items()):
            h.update(name.encode())
            h.update(t.numpy().astype(np.float32).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file(self.tensors(), str(path), metadata={"modes": json.dumps(self.modes)})

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"normalizer file {path} is missing; the checkpoint is incomplete")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if "modes" not in meta:
            raise PolicyError(f"{path} has no 'modes' metadata; it is not a tether normalizer")
        modes = json.loads(meta["modes"])
        offsets = {k: tensors[_buf(k, "offset")] for k, m in modes.items() if m != "identity"}
        scales = {k: tensors[_buf(k, "scale")] for k, m in modes.items() if m != "identity"}
        return cls(modes, offsets, scales)


def _buf(key: str, what: str) -> str:
    # Buffer names may not contain dots; keys like `image.top` or `state` are mapped 1:1.
    return f"{key.replace('.', '__')}__{what}"
