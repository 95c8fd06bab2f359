"""Who was in control at each step of an episode, and training weights derived from it.

An episode recorded by `tether rollout --record ... --takeover <device>` was driven partly by a
policy and partly by an operator who took over (HG-DAgger / RLIF / HIL-SERL corrections). The
store keeps that per step, compactly, in the episode's metadata (so such episodes still merge
with teleoperated ones: the arrays are the same):

    intervention_spans: [[start, stop], ...]          steps whose command was the human's own
    control_spans:      [[start, stop, who], ...]     every step: "policy", "human", "to_human"
                                                      or "to_policy" (a speed-limited handover)

A teleoperated episode (`tether record`) has no `control_spans`: every step is a human's. An
older recorder episode may carry `intervention_spans` only. Steps are episode-relative.

`step_repeats` turns that into how often each step anchors a training window, which is how
`tether train --intervention-weight W --policy-weight P` weights or selects corrections:
intervention steps count W times, steps the policy drove (or a handover ramped) P times (0
drops them: HG-DAgger keeps only human labels), every other step once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tether.core.errors import StoreError

HUMAN = "human"
POLICY = "policy"
TO_HUMAN = "to_human"
TO_POLICY = "to_policy"
CONTROLLERS = (POLICY, TO_HUMAN, HUMAN, TO_POLICY)

__all__ = ["CONTROLLERS", "controllers", "intervention_flags", "policy_flags", "step_repeats"]


def intervention_flags(metadata: Mapping[str, Any], length: int) -> np.ndarray:
    """(length,) bool: True on the steps whose command was the operator's during a takeover."""
    flags = np.zeros(int(length), dtype=bool)
    for start, stop in _spans(metadata.get("intervention_spans") or [], length, "intervention_spans"):
        flags[start:stop] = True
    return flags


def controllers(metadata: Mapping[str, Any], length: int) -> np.ndarray:
    """(length,) str: who controlled each step; "human" throughout for a teleoperated episode."""
    spans = metadata.get("control_spans")
    out = np.full(int(length), HUMAN, dtype=object)
    if not spans:
        return out
    for item in spans:
        if not isinstance(item, list | tuple) or len(item) != 3 or item[2] not in CONTROLLERS:
            raise StoreError(
                f"control_spans entry {item!r} is not [start, stop, who] with who one of "
                f"{', '.join(CONTROLLERS)}; fix the episode's metadata with "
                "EpisodeStore.update_episode_metadata."
            )
    for (start, stop), item in zip(
        _spans([s[:2] for s in spans], length, "control_spans"), spans, strict=True
    ):
        out[start:stop] = item[2]
    return out


def policy_flags(metadata: Mapping[str, Any], length: int) -> np.ndarray:
    """(length,) bool: steps the operator did not drive in a rollout (the policy or a handover)."""
    who = controllers(metadata, length)
    return (who == POLICY) | (who == TO_HUMAN) | (who == TO_POLICY)


def step_repeats(
    store,
    episodes: Iterable[int] | None = None,
    intervention_weight: float = 1.0,
    policy_weight: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """How many training windows each step of `store` anchors, (n_steps,) int64.

    Intervention steps get `intervention_weight`, policy-driven and handover steps
    `policy_weight`, others 1; a fractional weight is rounded up or down at random (seeded), so
    the expected count is the weight. Steps of episodes not in `episodes` get 0.
    """
    for label, w in (("intervention_weight", intervention_weight), ("policy_weight", policy_weight)):
        if not (np.isfinite(w) and w >= 0):
            raise StoreError(f"{label} must be a finite number >= 0, got {w}")
    weights = np.zeros(store.n_steps, dtype=np.float64)
    chosen = range(store.n_episodes) if episodes is None else episodes
    for e in chosen:
        start, stop = store.episode_range(int(e))
        meta = store.episode_metadata(int(e))
        w = np.ones(stop - start)
        w[policy_flags(meta, stop - start)] = policy_weight
        w[intervention_flags(meta, stop - start)] = intervention_weight
        weights[start:stop] = w
    base = np.floor(weights)
    extra = np.random.default_rng(seed).random(len(weights)) < (weights - base)
    return (base + extra).astype(np.int64)


def _spans(spans: Iterable[Any], length: int, what: str) -> list[tuple[int, int]]:
    out = []
    for item in spans:
        try:
            start, stop = (int(v) for v in item)
        except (TypeError, ValueError):
            raise StoreError(f"{what} entry {item!r} is not [start, stop]") from None
        if not 0 <= start <= stop <= length:
            raise StoreError(f"{what} entry {item!r} is outside the episode's {length} steps")
        out.append((start, stop))
    return out
