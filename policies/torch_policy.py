"""Torch policies behind the `Policy` interface the server and evaluator use.

Each family's registry entry (`tether.policies.registry`) names its wrapper here: `ChunkPolicy`
for memoryless chunk predictors (ACT, the MLP baseline), `DiffusionPolicy` for diffusion.

A `TorchPolicy` owns a model, its normalizer and its observation spec. It takes ONE timestep of
raw arrays (`state` float32 (D,), `image.<cam>` uint8 HxWx3), checks them against the spec
with errors that name the key, normalizes, runs the model and returns unnormalized float32
(n, action_dim) actions. Diffusion keeps its own observation history (obs_horizon steps; the
first observation of an episode is repeated until the history fills) and `reset()` clears it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

try:
    import torch
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError
from tether.core.schema import ArraySpec, PolicySpec
from tether.policies.base import Policy
from tether.policies.normalizer import Normalizer

__all__ = ["ACTPolicy", "ChunkPolicy", "DiffusionPolicy", "TorchPolicy", "make_spec"]


def make_spec(policy_type: str, state_dim: int, image_shapes: dict[str, list[int]], action_dim: int,
              chunk_size: int, fps: float, normalizer: Normalizer, extra: dict | None = None) -> PolicySpec:
    obs = [ArraySpec("state", "float32", (state_dim,))]
    obs += [ArraySpec(k, "uint8", tuple(int(s) for s in shape)) for k, shape in sorted(image_shapes.items())]
    return PolicySpec(policy_type, tuple(obs), action_dim, chunk_size, fps, normalizer.digest(),
                      dict(extra or {}))


class TorchPolicy(Policy):
    """Shared input checking and tensor conversion for the torch policies."""

    def __init__(self, model: torch.nn.Module, normalizer: Normalizer, spec: PolicySpec,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.normalizer = normalizer.to(self.device)
        self.spec = spec

    def _to_tensors(self, observation: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Validate one timestep against the spec; return tensors (state normalized, images CHW)."""
        out = {}
        for a in self.spec.observation:
            if a.name not in observation:
                raise PolicyError(
                    f"observation is missing '{a.name}' (expected keys: "
                    f"{[s.name for s in self.spec.observation]})"
                )
            x = np.asarray(observation[a.name])
            if tuple(x.shape) != tuple(a.shape):
                raise PolicyError(f"observation '{a.name}' has shape {x.shape}, expected {a.shape}")
            if a.dtype == "uint8" and x.dtype != np.uint8:
                raise PolicyError(f"observation '{a.name}' has dtype {x.dtype}, expected uint8 RGB")
            if a.dtype != "uint8":
                x = x.astype(np.float32, copy=False)
                if not np.all(np.isfinite(x)):
                    raise PolicyError(f"observation '{a.name}' contains NaN or inf")
            if not x.flags.writeable:  # zero-copy arrays from the server's receive buffer
                x = x.copy()
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            if a.dtype == "uint8":
                t = t.permute(2, 0, 1)
            else:
                t = self.normalizer.normalize(a.name, t)
            out[a.name] = t
        return out

    def _finish(self, actions: torch.Tensor) -> np.ndarray:
        return self.normalizer.unnormalize("action", actions[0]).float().cpu().numpy()


class ChunkPolicy(TorchPolicy):
    """A memoryless policy: every call returns `model.predict(obs)`, the full chunk of k
    actions, from the current observation alone; the runtime ensembles or executes it."""

    def reset(self) -> None:  # memoryless between calls
        pass

    def _predict_chunk(self, observation: dict[str, np.ndarray], **options) -> np.ndarray:
        obs = {k: v[None] for k, v in self._to_tensors(observation).items()}
        with torch.inference_mode():
            return self._finish(self.model.predict(obs))


class ACTPolicy(ChunkPolicy):
    """ACT at inference: z = 0, one chunk per call."""


class DiffusionPolicy(TorchPolicy):
    """Keeps obs_horizon steps of history; `sampler` and `steps` are chosen per call.

    The history holds encoded features, not images: each call runs the vision encoder on the
    new frame only (half the encoder cost at obs_horizon 2). `sampler` is a chunk sampler
    (`ddim`, `dpmpp`: `steps` network calls, `n_action_steps` actions) or `streaming` (one
    network call, `stream_actions` actions, from a rolling buffer kept per episode; see
    tether.policies.streaming). Defaults come from the checkpoint's config, or `set_sampling`.
    """

    episode_state = ("_history", "generator", "_stream")  # per robot: the server forks one per client

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._history: deque[torch.Tensor] = deque(maxlen=self.model.config.obs_horizon)
        self.generator = torch.Generator().manual_seed(0)
        self.sampler: str = self.model.config.sampler
        self.steps: int | None = None  # None: the config's inference_steps
        self.lookahead: int = self.model.config.stream_lookahead
        self._stream = None  # a StreamingSampler once the streaming sampler is used

    def set_sampling(self, sampler: str | None = None, steps: int | None = None,
                     lookahead: int | None = None) -> None:
        """Change the defaults used when a request names no sampler / steps / lookahead (`tether
        serve --sampler --stream-lookahead`); checked at once so a bad value fails at start-up."""
        from tether.policies.samplers import check_sampler

        if sampler is not None:
            self._check_streaming(check_sampler(sampler))
            self.sampler = sampler
        if steps is not None:
            self._check_steps(steps)
            self.model.scheduler.timesteps(int(steps))  # in range, or the error names it
            self.steps = int(steps)
        if lookahead is not None:
            self.lookahead = self._check_lookahead(lookahead)

    def reset(self) -> None:
        self._history.clear()
        self.generator.manual_seed(0)
        if self._stream is not None:
            self._stream.reset()

    def _predict_chunk(self, observation: dict[str, np.ndarray], steps: int | None = None,
                       sampler: str | None = None, lookahead: int | None = None,
                       **options) -> np.ndarray:
        from tether.policies.samplers import STREAMING, check_sampler

        sampler = check_sampler(self.sampler if sampler is None else sampler)
        if steps is not None:
            self._check_steps(steps)
        if sampler == STREAMING and steps is not None:
            raise PolicyError("the streaming sampler denoises one level per call; 'steps' does not "
                              "apply to it (drop --steps, or pick --sampler ddim/dpmpp)")
        if lookahead is not None:
            if sampler != STREAMING:
                raise PolicyError(f"'lookahead' extends the streaming sampler's reply; the {sampler} "
                                  "sampler returns whole chunks (drop --stream-lookahead, or pick "
                                  "--sampler streaming)")
            lookahead = self._check_lookahead(lookahead)
        self._check_streaming(sampler)
        current = self._to_tensors(observation)
        cams = self.model.config.cameras
        with torch.inference_mode():
            feats = self.model.encode_step(current["state"][None], {k: current[k][None] for k in cams},
                                           train=False)[0]
            if not self._history:  # first step of an episode: repeat it to fill the history
                self._history.extend([feats] * self._history.maxlen)
            else:
                self._history.append(feats)
            history = torch.stack(list(self._history))[None]
            if sampler == STREAMING:
                actions = self._streaming().step(
                    lambda x, t: self.model._denoise(x, t, history), self.generator,
                    device=history.device, dtype=history.dtype,
                    lookahead=self.lookahead if lookahead is None else lookahead)
            else:
                if self._stream is not None:  # a chunk in between: the buffer no longer follows
                    self._stream.reset()
                steps = self.steps if steps is None else int(steps)
                actions = self.model.sample_actions(history, steps, self.generator, sampler)
        return self._finish(actions)

    def _check_lookahead(self, lookahead) -> int:
        """0..(future actions - stream_actions): the buffer's clean estimates after the emitted
        actions are all a reply can carry."""
        from tether.policies.streaming import max_lookahead

        c = self.model.config
        most = max_lookahead(c)
        if isinstance(lookahead, bool) or not isinstance(lookahead, (int, np.integer)) \
                or not 0 <= int(lookahead) <= most:
            raise PolicyError(f"lookahead must be an integer from 0 to {most} (the streaming "
                              f"buffer's actions after the {c.stream_actions} emitted), got {lookahead!r}")
        return int(lookahead)

    def _check_steps(self, steps) -> None:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise PolicyError(f"steps must be an integer number of denoising steps, got {steps!r}")

    def _check_streaming(self, sampler: str) -> None:
        from tether.policies.samplers import STREAMING

        c = self.model.config
        if sampler == STREAMING and (c.streaming_fraction <= 0 or c.denoiser != "unet"):
            raise PolicyError(
                "this checkpoint was not trained for the streaming sampler (it needs the unet "
                "denoiser and per-position noise levels); retrain with --set "
                "model.streaming_fraction=0.5, or use --sampler ddim/dpmpp"
            )

    def _streaming(self):
        if self._stream is None:
            from tether.policies.streaming import StreamingSampler

            c = self.model.config
            self._stream = StreamingSampler(self.model.scheduler, c.horizon, c.obs_horizon - 1,
                                            c.action_dim, c.stream_actions)
        return self._stream
