"""Streaming Diffusion Policy (Høeg et al. 2024): one network call per control step.

A chunk sampler pays all its denoising steps whenever it plans. Streaming keeps the action
sequence between calls instead, as a buffer whose actions sit at increasing noise levels: the
action for the current step is clean, the next one nearly so, the last one pure noise. Every
call (with the newest observation)

1. shifts the buffer by `e` actions (`stream_actions`, 1 by default): the actions just
   executed become clean context, `e` fresh pure-noise actions enter at the tail;
2. denoises every action by one level with ONE network call that takes a noise level per
   position;
3. emits the `e` actions that have just become clean, optionally followed by `lookahead`
   (`stream_lookahead`) of the call's clean estimates for the actions after them: those are
   not final (later calls refine them) but let the runtime blend calls with temporal
   ensembling, as it does for chunks; the first `e` rows are the buffer's own.

So each action is refined over J = (horizon - obs_horizon + 1) / e calls, each made with a
newer observation: the plan keeps up with the world at the cost of one network call per step.

Levels are integers k in 0..K (K = training steps): 0 is clean, k >= 1 is training timestep
k - 1, K is pure noise. With J blocks of `e` actions, block b (b = 0 for the current step's
actions) rests at level(b) = round(b K / J) after a call, and sits one level higher, level(b+1),
just before it. Actions before the current step (the obs_horizon - 1 past ones) are clean
context and are never changed.

The first call of an episode has no buffer: it fills one from pure noise with J calls whose
levels come down together, each action stopping at its resting level. That first call costs
J network calls (like a J-step chunk); every later call costs one.

The buffer assumes one call per `e` control ticks: the rollout asks every tick with the
`ensemble` blend, or with `switch` when the reply is `e` rows (no lookahead). Asked less often, it
still works but its plan runs late.

The network must take a level per position. The 1D U-Net does with its own weights (FiLM per
position, `tether.policies.diffusion`), but a model trained only with one level per sample has
never seen a staircase of levels, so a checkpoint is trained for streaming with
`streaming_fraction > 0`: that share of training samples gets the buffer's levels (the resting
staircase before a call, or one of the fill's stages) instead of one shared level, the rest stay
standard so chunk samplers keep working on the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import torch
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError
from tether.policies.samplers import STREAMING, check_sampler

__all__ = ["StreamSchedule", "StreamingSampler", "check_streaming_config", "mix_streaming_levels"]

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B,H,A), t (B,H)) -> prediction

FILL_SHARE = 0.3  # of streaming training samples: levels of the first call's fill stages


def future_actions(c: Any) -> int:
    """The buffer's future actions: the horizon less the obs_horizon - 1 past ones."""
    return c.horizon - (c.obs_horizon - 1)


def max_lookahead(c: Any) -> int:
    """The most clean estimates a streaming reply can carry after its emitted actions: the
    buffer's future actions less the `stream_actions` emitted."""
    return future_actions(c) - c.stream_actions


def check_streaming_config(c: Any) -> None:
    """Validate a DiffusionConfig's sampler and streaming fields (PolicyError naming the fix)."""
    check_sampler(c.sampler)
    if not 0.0 <= float(c.streaming_fraction) <= 1.0:
        raise PolicyError(f"streaming_fraction must be in [0, 1], got {c.streaming_fraction}")
    future = future_actions(c)
    e = c.stream_actions
    if isinstance(e, bool) or not isinstance(e, int) or e < 1 or future % e:
        raise PolicyError(
            f"stream_actions must be a whole divisor of horizon - obs_horizon + 1 = {future} "
            f"(the buffer's future actions), got {e!r}"
        )
    look, most = c.stream_lookahead, max_lookahead(c)
    if isinstance(look, bool) or not isinstance(look, int) or not 0 <= look <= most:
        raise PolicyError(f"stream_lookahead must be an integer from 0 to {most} (the buffer's "
                          f"actions after the emitted ones), got {look!r}")
    if (c.streaming_fraction > 0 or c.sampler == STREAMING) and c.denoiser != "unet":
        raise PolicyError("streaming needs the 'unet' denoiser (it takes a noise level per "
                          f"action); this config uses '{c.denoiser}'")


class StreamSchedule:
    """The buffer's levels: which noise level each position has before and after a call."""

    def __init__(self, num_train_steps: int, horizon: int, start: int, emit: int = 1) -> None:
        if emit < 1 or (horizon - start) % emit:
            raise PolicyError(f"emit ({emit}) must divide the {horizon - start} future actions")
        self.K, self.horizon, self.start, self.emit = num_train_steps, horizon, start, emit
        self.blocks = (horizon - start) // emit  # J: calls an action spends in the buffer
        block = torch.full((horizon,), -1, dtype=torch.long)
        block[start:] = torch.arange(horizon - start) // emit
        self._block = block  # -1 for the clean past positions

    def level(self, j: int | torch.Tensor) -> torch.Tensor:
        """Level of stage j in 0..J: round(j K / J); 0 is clean, J is pure noise."""
        j = torch.as_tensor(j, dtype=torch.float64)
        return torch.round(j * self.K / self.blocks).long()

    def resting(self) -> torch.Tensor:
        """(H,) levels after a call: the current block clean, the last one level(J-1)."""
        return torch.where(self._block < 0, 0, self.level(self._block.clamp(min=0)))

    def before_call(self) -> torch.Tensor:
        """(H,) levels after the shift, before the call: each block one stage higher."""
        return torch.where(self._block < 0, 0, self.level(self._block.clamp(min=0) + 1))

    def fill(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(levels before, levels after) of the J calls that build the first buffer from noise."""
        rest = self.resting()
        return [(torch.maximum(rest, self.level(self.blocks - c)),
                 torch.maximum(rest, self.level(self.blocks - c - 1))) for c in range(self.blocks)]


class StreamingSampler:
    """One robot's rolling buffer; `step` returns the next `emit` clean actions (normalized)."""

    def __init__(self, scheduler, horizon: int, start: int, action_dim: int, emit: int = 1) -> None:
        self.scheduler = scheduler
        self.schedule = StreamSchedule(scheduler.num_train_steps, horizon, start, emit)
        self.action_dim = action_dim
        self.buffer: torch.Tensor | None = None  # (1, H, A) at `schedule.resting()` levels
        self.estimate: torch.Tensor | None = None  # (1, H, A) the last call's clean estimate
        self.calls = 0  # network calls so far (the test counts them; the report shows them)

    def reset(self) -> None:
        self.buffer = None
        self.estimate = None

    def step(self, denoise: DenoiseFn, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             lookahead: int = 0) -> torch.Tensor:
        """Advance one control step with the newest observation (inside `denoise`): the `e`
        clean actions, then `lookahead` estimates of the following ones: (1, e + lookahead, A)."""
        s = self.schedule
        if self.buffer is None:  # first call of the episode: J calls from pure noise
            x = self._noise(s.horizon, generator, device, dtype)
            for before, after in s.fill():
                x = self._denoise_once(denoise, x, before, after)
        else:
            fresh = self._noise(s.emit, generator, device, dtype)
            x = torch.cat([self.buffer[:, s.emit:], fresh], dim=1)
            x = self._denoise_once(denoise, x, s.before_call(), s.resting())
        self.buffer = x
        head = x[:, s.start: s.start + s.emit]
        if lookahead <= 0:
            return head
        ahead = self.estimate[:, s.start + s.emit: s.start + s.emit + lookahead]
        return torch.cat([head, ahead], dim=1)

    def _noise(self, n: int, generator, device, dtype) -> torch.Tensor:
        return torch.randn((1, n, self.action_dim), generator=generator, dtype=dtype).to(device)

    def _denoise_once(self, denoise: DenoiseFn, x: torch.Tensor, before: torch.Tensor,
                      after: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        before, after = before.to(x.device), after.to(x.device)
        out = denoise(x, network_timesteps(before)[None].expand(x.shape[0], -1))
        x_next, self.estimate = denoise_step(self.scheduler, x, out, before, after)
        return x_next


def network_timesteps(levels: torch.Tensor) -> torch.Tensor:
    """The timestep the network is told for each level (clean context: 0, the least noisy)."""
    return (levels - 1).clamp(min=0)


def level_alpha_bar(scheduler, levels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cumulative alpha of each level (level 0: 1.0, clean)."""
    ac = scheduler.alphas_cumprod.to(levels.device)
    return torch.where(levels > 0, ac[network_timesteps(levels)], torch.ones_like(ac[0])).to(dtype)


def denoise_step(scheduler, x: torch.Tensor, out: torch.Tensor, before: torch.Tensor,
                 after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM per position from `before` to `after` levels (H,), unchanged where they are equal;
    returns the new buffer and the clean estimate x0 of every position."""
    a_t = level_alpha_bar(scheduler, before, x.dtype).view(1, -1, 1)
    a_next = level_alpha_bar(scheduler, after, x.dtype).view(1, -1, 1)
    x0 = scheduler.predict_x0(x, out, a_t)
    noisy = (before > 0).view(1, -1, 1)
    eps = (x - a_t.sqrt() * x0) / torch.where(noisy, (1 - a_t).sqrt(), torch.ones_like(a_t))
    moved = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    moved = torch.where((after == 0).view(1, -1, 1), x0, moved)
    return torch.where((after == before).view(1, -1, 1), x, moved), x0


def mix_streaming_levels(scheduler, actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                         c: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training batch for streaming: `streaming_fraction` of the samples get the buffer's levels.

    Returns per-position network timesteps (B, H), the noised actions, and a loss weight (B, H)
    that is 0 on clean context positions (nothing to denoise there). Of the streaming samples,
    FILL_SHARE get a stage of the first call's fill, the rest the resting staircase before a
    call. The other samples keep their one shared timestep `t` (standard training).
    """
    b, h = actions.shape[:2]
    sched = StreamSchedule(c.num_train_steps, h, c.obs_horizon - 1, c.stream_actions)
    device = actions.device
    levels = (t + 1).view(b, 1).expand(b, h).clone()  # shared level of the standard samples
    stream = torch.rand(b, device=device) < c.streaming_fraction
    fill = torch.rand(b, device=device) < FILL_SHARE
    stage = torch.randint(1, sched.blocks + 1, (b, 1), device=device)
    fill_levels = torch.maximum(sched.resting().to(device)[None], sched.level(stage).to(device))
    steady = sched.before_call().to(device)[None].expand(b, h)
    chosen = torch.where(fill[:, None], fill_levels, steady)
    levels = torch.where(stream[:, None], chosen, levels)
    t_pos = network_timesteps(levels)
    noised = scheduler.add_noise(actions, noise, t_pos)
    clean = (levels == 0).unsqueeze(-1)
    noised = torch.where(clean, actions, noised)
    return t_pos, noised, (levels > 0).to(actions.dtype)
