"""The Policy interface, shared by the inference server, the rollout client and the evaluator.

A policy takes one observation (the newest `state` and `image.<camera>` arrays, as produced by
`Observation.to_arrays()`) and returns a chunk of future actions. Policies that condition on
several past observations keep that history themselves; `reset()` clears it between episodes.

Per-episode state (history, random generator) belongs to one robot. A policy names the
attributes that hold it in `episode_state`; `fork()` then gives another robot its own copy
while sharing everything else (the weights), which is how the server keeps one robot's `reset`
or history from reaching another.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod

import numpy as np

from tether.core.schema import PolicySpec


class Policy(ABC):
    """Observation in, action chunk out. Implementations: ACT, diffusion, scripted, identity."""

    spec: PolicySpec

    #: Attributes holding per-episode state (observation history, RNG): `fork()` copies them,
    #: everything else (weights, normalizer, spec) is shared. Empty means memoryless.
    episode_state: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.last_inference_ms: float = 0.0

    @abstractmethod
    def reset(self) -> None:
        """Forget history; call at the start of every episode."""

    def fork(self) -> Policy:
        """A policy for one more robot: same weights, its own freshly reset episode state.

        A memoryless policy (no `episode_state`) returns itself. Override when the state is
        not in attributes of this object (a wrapper forks what it wraps).
        """
        if not self.episode_state:
            return self
        clone = copy.copy(self)
        for name in self.episode_state:
            setattr(clone, name, copy.deepcopy(getattr(self, name)))
        clone.reset()
        return clone

    def predict_chunk(self, observation: dict[str, np.ndarray], **options) -> np.ndarray:
        """Return float32 (n_actions, action_dim) actions, the first one for the current tick.

        `options` may carry per-request settings such as `steps` (DDIM steps for diffusion).
        """
        t0 = time.perf_counter()
        chunk = self._predict_chunk(observation, **options)
        self.last_inference_ms = (time.perf_counter() - t0) * 1e3
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != self.spec.action_dim:
            raise ValueError(
                f"{type(self).__name__} returned shape {chunk.shape}; expected (n, {self.spec.action_dim})"
            )
        return chunk

    @abstractmethod
    def _predict_chunk(self, observation: dict[str, np.ndarray], **options) -> np.ndarray: ...
