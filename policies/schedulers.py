"""Noise schedules: DDPM for training, DDIM for sampling with any step count (1..T).

Diffusion Policy trains with T = 100 DDPM steps on a squared-cosine schedule (Nichol &
Dhariwal 2021). Because DDIM (Song et al. 2021) only needs the cumulative alphas of the
timesteps it visits, the same trained network samples with 100, 10 or 3 steps: the step count
is a per-request choice at inference, never a retraining decision.

The network predicts either the noise (`epsilon`) or the clean sample (`sample`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

try:
    import torch
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError

__all__ = ["NoiseScheduler", "squared_cosine_betas"]


def squared_cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """betas from alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2) (the `squaredcos_cap_v2` schedule)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
             for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


class NoiseScheduler:
    """Forward noising for training and deterministic DDIM sampling (eta = 0)."""

    def __init__(self, num_train_steps: int = 100, prediction_type: str = "epsilon",
                 clip_sample: bool = True, schedule: str = "squared_cosine") -> None:
        if prediction_type not in ("epsilon", "sample"):
            raise PolicyError(f"prediction_type must be 'epsilon' or 'sample', got '{prediction_type}'")
        if schedule == "squared_cosine":
            betas = squared_cosine_betas(num_train_steps)
        elif schedule == "linear":
            betas = torch.linspace(1e-4, 2e-2, num_train_steps, dtype=torch.float64)
        else:
            raise PolicyError(f"unknown noise schedule '{schedule}'; use 'squared_cosine' or 'linear'")
        self.num_train_steps = num_train_steps
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float64 (T,)

    # -- training --------------------------------------------------------------------------------

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) for integer timesteps t (B,)."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise if self.prediction_type == "epsilon" else x0

    # -- sampling --------------------------------------------------------------------------------

    def timesteps(self, steps: int) -> list[int]:
        """The DDIM timesteps visited with `steps` steps, high noise first ("leading" spacing)."""
        if not isinstance(steps, int) or not 1 <= steps <= self.num_train_steps:
            raise PolicyError(
                f"DDIM steps must be an integer from 1 to {self.num_train_steps} (the training "
                f"steps), got {steps!r}"
            )
        ratio = self.num_train_steps // steps
        return [i * ratio for i in range(steps)][::-1]

    def sample(self, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               shape: tuple[int, ...], steps: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Run DDIM from pure noise; `model_fn(x_t, t)` returns the network's prediction."""
        ts = self.timesteps(steps)
        x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        ac = self.alphas_cumprod
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            a_t = float(ac[t])
            a_prev = float(ac[t_prev]) if t_prev >= 0 else 1.0
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
            out = model_fn(x, t_batch)
            if self.prediction_type == "epsilon":
                x0 = (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
            else:
                x0 = out
            if self.clip_sample:
                x0 = x0.clamp(-1.0, 1.0)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return x
