"""Choosing a checkpoint by twin success, with the evaluation noise taken into account.

Success rates of neighbouring snapshots swing by more than their training loss suggests
(Butterfly Effects of SGD Noise), and a rate from n episodes carries binomial noise on top:
with 20 episodes the 95% Wilson interval of 70% is 48-85%. Picking the single highest number
therefore mostly picks noise. The rule here, stated once and used by `tether train --eval-every`
and `tether eval --sweep` alike:

1. The *leader* is the evaluation with the highest success rate.
2. Every evaluation whose success rate lies inside the leader's 95% Wilson interval, or whose
   own interval holds the leader's rate, is *indistinguishable* from it at this number of
   episodes (both ways: near 0% the leader's interval can exclude 0/20 while 0/20's interval
   holds 1/20, and the two cannot be told apart).
3. Among the indistinguishable ones, pick the latest step (more training, and the EMA has
   averaged over more of it); at the same step, EMA weights before raw ones.

The choice says when it was a coin toss (`tied` > 1) so reports can print it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tether.app.eval.stats import wilson_interval

__all__ = ["Choice", "Scored", "choose", "neighbour_spread"]

WEIGHTS = ("ema", "raw")


@dataclass
class Scored:
    """One twin evaluation of one snapshot's weights."""

    step: int
    successes: int
    episodes: int
    weights: str = "ema"  # ema | raw
    checkpoint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Scored:
        """From a metrics.jsonl / sweep.json row (successes and episodes, or a rate of 1 episode)."""
        episodes = int(row.get("episodes") or 1)
        successes = row.get("successes")
        if successes is None:
            successes = round(float(row["success_rate"]) * episodes)
        return cls(step=int(row["step"]), successes=int(successes), episodes=episodes,
                   weights=str(row.get("weights", "ema")), checkpoint=str(row.get("checkpoint", "")))


@dataclass
class Choice:
    index: int  # into the candidates
    leader: int
    tied: list[int]  # candidates indistinguishable from the leader (includes both)
    note: str

    def as_dict(self, candidates: Sequence[Scored]) -> dict[str, Any]:
        chosen = candidates[self.index]
        low, high = candidates[self.leader].ci95()
        return {"chosen": {**asdict(chosen), "success_rate": chosen.rate},
                "leader": {**asdict(candidates[self.leader]),
                           "success_rate": candidates[self.leader].rate,
                           "ci95": [low, high]},
                "tied": len(self.tied), "note": self.note,
                "rule": "highest success rate leads; of the evaluations inside the leader's 95% "
                        "Wilson interval, or holding its rate in their own, the latest step wins, "
                        "EMA before raw at the same step"}


def choose(candidates: Sequence[Scored], confidence: float = 0.95) -> Choice:
    """Apply the rule in the module docstring; raises ValueError on no candidates."""
    if not candidates:
        raise ValueError("no evaluations to choose from")

    def order(i: int) -> tuple[int, int]:  # later, then EMA before raw
        c = candidates[i]
        return (c.step, 1 if c.weights == "ema" else 0)

    leader = max(range(len(candidates)), key=lambda i: (candidates[i].rate, order(i)))
    low, high = wilson_interval(candidates[leader].successes, candidates[leader].episodes, confidence)
    eps = 1e-12
    lead_rate = candidates[leader].rate

    def indistinguishable(c: Scored) -> bool:
        own_low, own_high = wilson_interval(c.successes, c.episodes, confidence)
        return low - eps <= c.rate <= high + eps or own_low - eps <= lead_rate <= own_high + eps

    tied = [i for i, c in enumerate(candidates) if indistinguishable(c)]
    index = max(tied, key=order)
    lead, chosen = candidates[leader], candidates[index]
    if len(tied) == 1:
        note = (f"step {lead.step} ({lead.weights}) leads with {lead.rate:.0%}; no other evaluation "
                f"is inside its {confidence:.0%} interval {low:.0%}-{high:.0%} or holds "
                f"{lead.rate:.0%} in its own")
    else:
        note = (f"{len(tied)} evaluations are indistinguishable from the leader (its {confidence:.0%} "
                f"interval {low:.0%}-{high:.0%}; step {lead.step} {lead.weights}, {lead.rate:.0%} of "
                f"{lead.episodes}) at this many episodes; took the latest, step "
                f"{chosen.step} {chosen.weights} ({chosen.rate:.0%})")
    return Choice(index=index, leader=leader, tied=tied, note=note)


def neighbour_spread(candidates: Sequence[Scored], weights: str = "ema") -> dict[str, Any]:
    """How much success swings between consecutive snapshots of one kind of weights, next to
    what binomial evaluation noise alone would give (sd of a difference of two rates)."""
    series = sorted((c for c in candidates if c.weights == weights), key=lambda c: c.step)
    if len(series) < 2:
        return {"weights": weights, "snapshots": len(series)}
    jumps = [abs(b.rate - a.rate) for a, b in zip(series, series[1:], strict=False)]
    noise = []
    for a, b in zip(series, series[1:], strict=False):
        p = (a.successes + b.successes) / (a.episodes + b.episodes)
        noise.append((p * (1 - p) * (1 / a.episodes + 1 / b.episodes)) ** 0.5)
    return {"weights": weights, "snapshots": len(series),
            "mean_abs_change": sum(jumps) / len(jumps), "max_abs_change": max(jumps),
            "expected_abs_change_from_eval_noise": sum(n * (2 / 3.141592653589793) ** 0.5
                                                       for n in noise) / len(noise),
            "steps": [c.step for c in series], "success": [c.rate for c in series]}
