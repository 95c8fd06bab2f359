"""ACT temporal ensembling: blend every chunk that predicted the current step.

ACT queries the policy every tick and gets a chunk of k future actions, so each control step
is covered by up to k predictions made at different times. The paper averages them with
weights w_i = exp(-m * i), where i = 0 is the OLDEST prediction for that step: a small m
weights all predictions alike, a large m trusts the oldest one most, which smooths the motion.
The same class serves the rollout client (chunks arrive asynchronously, aligned by step index)
and the in-process evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TemporalEnsembler", "ensemble_weights"]


def ensemble_weights(n: int, m: float) -> np.ndarray:
    """Normalized weights for n predictions of one step, index 0 = oldest prediction."""
    if n <= 0:
        raise ValueError(f"need at least one prediction to weight, got n={n}")
    w = np.exp(-float(m) * np.arange(n, dtype=np.float64))
    return w / w.sum()


@dataclass
class _Chunk:
    t0: int
    order: int  # insertion counter, breaks ties between chunks with the same t0
    actions: np.ndarray  # (k, action_dim) float64

    @property
    def t_end(self) -> int:
        """First step NOT covered by this chunk."""
        return self.t0 + len(self.actions)


class TemporalEnsembler:
    """Keeps recent action chunks and returns the exponentially weighted action for a step.

    `add_chunk(t0, chunk)` stores a chunk whose row k is the action for step t0 + k.
    `action_at(t)` blends every stored row that targets step t, oldest prediction first with
    weight exp(-m * i), and returns None when no chunk covers t (the caller then holds position
    or asks for a new chunk). Chunks that end at or before t are dropped on each call, so memory
    stays bounded to the chunks still in flight; steps are expected to be queried in increasing
    order, as a control loop does.
    """

    def __init__(self, m: float = 0.01, max_chunks: int | None = None) -> None:
        if not np.isfinite(m) or m < 0:
            raise ValueError(f"ensembling coefficient m must be a finite number >= 0, got {m}")
        if max_chunks is not None and max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1 or None, got {max_chunks}")
        self.m = float(m)
        self.max_chunks = max_chunks
        self._chunks: list[_Chunk] = []
        self._counter = 0
        self._action_dim: int | None = None

    def reset(self) -> None:
        """Forget all chunks (start of an episode)."""
        self._chunks.clear()
        self._counter = 0
        self._action_dim = None

    def __len__(self) -> int:
        return len(self._chunks)

    def add_chunk(self, t0: int, chunk: np.ndarray) -> None:
        """Store `chunk` (k, action_dim); row k is the action for step t0 + k."""
        actions = np.asarray(chunk, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise ValueError(f"chunk must have shape (k, action_dim) with k >= 1, got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("chunk contains NaN or inf; refusing to blend it into the actions")
        if self._action_dim is None:
            self._action_dim = actions.shape[1]
        elif actions.shape[1] != self._action_dim:
            raise ValueError(
                f"chunk action_dim {actions.shape[1]} differs from earlier chunks ({self._action_dim}); "
                "call reset() between policies"
            )
        self._chunks.append(_Chunk(int(t0), self._counter, actions.copy()))
        self._counter += 1
        self._chunks.sort(key=lambda c: (c.t0, c.order))
        if self.max_chunks is not None and len(self._chunks) > self.max_chunks:
            del self._chunks[: len(self._chunks) - self.max_chunks]

    def action_at(self, t: int) -> np.ndarray | None:
        """The blended float32 action for step t, or None if no stored chunk covers t."""
        t = int(t)
        self._chunks = [c for c in self._chunks if c.t_end > t]
        rows = [c.actions[t - c.t0] for c in self._chunks if c.t0 <= t]
        if not rows:
            return None
        weights = ensemble_weights(len(rows), self.m)
        return (weights[:, None] * np.stack(rows)).sum(axis=0).astype(np.float32)

    def coverage(self, t: int) -> int:
        """How many stored chunks predict step t (for logging and tests)."""
        return sum(1 for c in self._chunks if c.t0 <= t < c.t_end)
