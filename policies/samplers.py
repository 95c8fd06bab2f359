"""Chunk samplers: turn pure noise into an action chunk with a chosen number of network calls.

Every sampler here integrates the same probability-flow ODE of the trained DDPM, so one
checkpoint serves them all and the choice is made per request (or per checkpoint / server):

- `ddim` (Song et al. 2021): first order; one network call per step.
- `dpmpp`: DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095): a second-order multistep solver
  in log-SNR time on the data prediction, reusing the previous step's prediction, so it is
  second order at the cost of one network call per step. At 5-10 steps it lands closer to the
  ODE's solution than DDIM at the same cost (tests/policies/test_samplers.py shows it on a
  Gaussian whose exact solution is known).
- `streaming` (Streaming Diffusion Policy, Høeg et al. 2024) is not a chunk sampler: it keeps a
  rolling, partially denoised buffer between calls and lives in `tether.policies.streaming`; it
  is listed here so every sampler name is checked in one place.

Timesteps use "trailing" spacing (Lin et al. 2023, arXiv 2305.08891): the first step always
starts at the noisiest training timestep, where pure noise belongs. The older "leading"
spacing (kept as `spacing="leading"`) starts 1 step at t=0 and 3 steps at t=66 of 100: it
hands the network pure noise labelled as nearly clean, which is what ruins 1-3 step sampling
there, not the step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

try:
    import torch
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError

if TYPE_CHECKING:  # the scheduler imports this module; only its type is needed here
    from tether.policies.schedulers import NoiseScheduler

__all__ = ["CHUNK_SAMPLERS", "SAMPLERS", "STREAMING", "check_sampler", "ddim", "dpmpp_2m"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t (B,) long) -> prediction
ChunkSampler = Callable[["NoiseScheduler", ModelFn, torch.Tensor, list[int]], torch.Tensor]

STREAMING = "streaming"


def ddim(sched: NoiseScheduler, model_fn: ModelFn, x: torch.Tensor, ts: list[int]) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) through the timesteps `ts` (noisiest first), then to clean."""
    for i, t in enumerate(ts):
        t_next = ts[i + 1] if i + 1 < len(ts) else -1
        a_t, a_next = sched.alpha_bar_at(t), sched.alpha_bar_at(t_next)
        x0 = sched.predict_x0(x, model_fn(x, _batch(x, t)), a_t)
        if t_next < 0:
            return x0
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    return x


def dpmpp_2m(sched: NoiseScheduler, model_fn: ModelFn, x: torch.Tensor, ts: list[int]) -> torch.Tensor:
    """DPM-Solver++(2M): multistep second order on the data prediction, in log-SNR time.

    With lambda = log(alpha / sigma) and h = lambda_next - lambda_t, one step is
        x_next = (sigma_next / sigma_t) x_t - alpha_next (exp(-h) - 1) D,
    D = x0_t on the first step (that step is exactly DDIM) and
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev with r = h_prev / h after it. The last step goes to
    sigma = 0 (h infinite), where the update is the data prediction itself (first order, the
    "lower order final" of the paper's reference code).
    """
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i, t in enumerate(ts):
        t_next = ts[i + 1] if i + 1 < len(ts) else -1
        a_t, a_next = sched.alpha_bar_at(t), sched.alpha_bar_at(t_next)
        x0 = sched.predict_x0(x, model_fn(x, _batch(x, t)), a_t)
        if t_next < 0:
            return x0
        h = _log_snr(a_next) - _log_snr(a_t)
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = math.sqrt((1 - a_next) / (1 - a_t)) * x - math.sqrt(a_next) * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


CHUNK_SAMPLERS: dict[str, ChunkSampler] = {"ddim": ddim, "dpmpp": dpmpp_2m}
SAMPLERS: tuple[str, ...] = (*CHUNK_SAMPLERS, STREAMING)


def check_sampler(name: object, allowed: tuple[str, ...] = SAMPLERS) -> str:
    """`name` if it is a known sampler, else a PolicyError listing the choices."""
    if not isinstance(name, str) or name not in allowed:
        raise PolicyError(
            f"unknown sampler {name!r}; use one of {', '.join(allowed)} (ddim: first order; "
            "dpmpp: DPM-Solver++(2M), better at few steps; streaming: one network call per "
            "control step, needs a checkpoint trained with streaming_fraction > 0)"
        )
    return name


def _batch(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _log_snr(alpha_bar: float) -> float:
    """lambda = log(alpha / sigma) = 0.5 log(alpha_bar / (1 - alpha_bar))."""
    return 0.5 * math.log(alpha_bar / (1 - alpha_bar))
