"""Noise schedules: DDPM for training, DDIM / DPM-Solver++ sampling with any step count (1..T).

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
from tether.policies.samplers import CHUNK_SAMPLERS, check_sampler

__all__ = ["NoiseScheduler", "squared_cosine_betas"]


def squared_cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """betas from alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2) (the `squaredcos_cap_v2` schedule)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
             for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


class NoiseScheduler:
    """Forward noising for training; deterministic sampling (tether.policies.samplers)."""

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
        """q(x_t | x_0) for integer timesteps t: (B,) one per sample, or (B, T) one per position
        of a (B, T, ...) sequence (Streaming Diffusion Policy's training)."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        a = a.view(*a.shape, *([1] * (x0.dim() - a.dim())))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise if self.prediction_type == "epsilon" else x0

    # -- sampling --------------------------------------------------------------------------------

    def timesteps(self, steps: int, spacing: str = "trailing") -> list[int]:
        """The training timesteps a `steps`-step sampler visits, noisiest first.

        "trailing" (the default) starts at T-1 for every step count: [99] for 1 step,
        [99, 66, 32] for 3. "leading" is the older DDIM spacing ([0] for 1 step, [66, 33, 0] for
        3), which starts few-step sampling at a timestep far less noisy than the pure noise it
        is given (see tether.policies.samplers).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.num_train_steps:
            raise PolicyError(
                f"DDIM steps must be an integer from 1 to {self.num_train_steps} (the training "
                f"steps), got {steps!r}"
            )
        n = self.num_train_steps
        if spacing == "trailing":
            return [int(round(n - i * n / steps)) - 1 for i in range(steps)]
        if spacing == "leading":
            ratio = n // steps
            return [i * ratio for i in range(steps)][::-1]
        raise PolicyError(f"unknown timestep spacing '{spacing}'; use 'trailing' or 'leading'")

    def alpha_bar_at(self, t: int) -> float:
        """Cumulative alpha of training timestep t; t = -1 is the clean sample (1.0)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def predict_x0(self, x: torch.Tensor, out: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
        """The clean-sample estimate from the network output at noise level `alpha_bar` (a float,
        or a tensor broadcasting against x for per-position levels), clipped when configured."""
        if self.prediction_type == "epsilon":
            a = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
            x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
        else:
            x0 = out
        return x0.clamp(-1.0, 1.0) if self.clip_sample else x0

    def sample(self, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               shape: tuple[int, ...], steps: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               sampler: str = "ddim", spacing: str = "trailing") -> torch.Tensor:
        """Sample from pure noise with a chunk sampler (`ddim` or `dpmpp`, see
        tether.policies.samplers); `model_fn(x_t, t)` returns the network's prediction."""
        run = CHUNK_SAMPLERS.get(sampler)
        if run is None:
            check_sampler(sampler, tuple(CHUNK_SAMPLERS))
        ts = self.timesteps(steps, spacing)
        x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        return run(self, model_fn, x, ts)
