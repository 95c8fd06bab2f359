"""The quality score of a take, with the parts that need more than the data layer.

tether.data.quality computes smoothness, coverage and consistency from the arrays alone. This
module adds what needs a robot or a policy, and wires the result to its users:

- which action dimensions are grippers (from the robot, or the twin task a store was recorded on);
- compatibility with a base policy (`--base-policy`): the policy's action error on the take in
  the states it knows (near the states of the store it was trained on, else of the store being
  recorded), after *Eliciting Compatible Demonstrations* (Gandhi et al. 2022); a take the
  policy would act very differently on is flagged `low_compatibility`, with the step and joint;
- `TakeScorer`: scores each take right after it is saved (`tether record` calls it through
  the recorder's `on_episode` callback), judged against the takes before it, and stores the
  result in the episode's metadata under `quality` (one durable metadata-file rewrite);
- `rank_store`: every episode judged against all the others (`tether data quality`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError
from tether.data.quality import (
    QUALITY_KEY,
    QualityConfig,
    Reference,
    episode_quality,
    store_quality,
)

log = logging.getLogger(__name__)

__all__ = ["BaseCompatibility", "TakeFeedback", "TakeScorer", "gripper_dims", "gripper_dims_of_store",
           "keep_episodes", "quality_line", "rank_store"]


# ---------------------------------------------------------------------------------- grippers
def gripper_dims(robot) -> list[int]:
    """Action indices of the robot's grippers (arms in robot order, as Robot.act lays them out)."""
    dims, offset = [], 0
    for arm in robot.arms.values():
        spec = arm.spec
        if spec.gripper_index is not None:
            dims.append(offset + int(spec.gripper_index))
        offset += int(spec.dof)
    return dims


def gripper_dims_of_store(store) -> list[int]:
    """Gripper action indices of the robot a store was recorded on, from its saved config.

    Twin stores name their task (its arm models say where the grippers are); hardware configs
    would need their drivers, so they get [] (no chatter metric) and a debug log."""
    config = store.attrs.get("robot_config") or {}
    task = config.get("twin_task") if isinstance(config, Mapping) else None
    if not task:
        log.debug("%s: no twin task in the robot config; gripper chatter is not measured", store.path)
        return []
    from tether.robot.twin.tasks import make_task

    dims, offset = [], 0
    for _, model, _ in make_task(str(task)).sim_arms():
        dims.append(offset + len(model.joints))
        offset += len(model.joints) + 1
    return dims


# ---------------------------------------------------------------------------------- base policy
class BaseCompatibility:
    """A base policy's judgement of takes: its action error in the states it knows, relative to
    its error on the takes it was trained on.

    The ratio calibrates itself: a policy trained briefly errs a lot everywhere, a converged one
    little, and a take it would do the same way as its training data has a ratio near 1. A take
    done another way (another grasp, another route) has a ratio well above it.

    policy: a loaded tether Policy (tether.policies.checkpoint.load_policy).
    training: (store path, episodes) the policy was trained on, when still there: defines the
        familiar states and the baseline error; else the store being scored stands in for it.
    max_steps: evaluate at most this many evenly spaced familiar steps per take (inference cost).
    """

    def __init__(self, policy, store, training: tuple[Path, list[int] | None] | None = None,
                 config: QualityConfig | None = None, max_steps: int = 60) -> None:
        self.policy = policy
        self.store = store
        self.config = config or QualityConfig()
        self.max_steps = int(max_steps)
        names = [a.name for a in policy.spec.observation]
        missing = [n for n in names if n not in store.keys]
        if missing:
            raise ConfigError(f"the base policy reads {', '.join(missing)}, which {store.path} does "
                              f"not record (it has {', '.join(store.data_keys)}); give a policy "
                              "trained on the same cameras and state.")
        self.keys = names
        if int(policy.spec.action_dim) != int(store.array("action").shape[1]):
            raise ConfigError(f"the base policy acts in {policy.spec.action_dim} dimensions, the "
                              f"store's actions have {store.array('action').shape[1]}; give a "
                              "policy for this robot.")
        self.reference: Reference | None = None
        self.baseline: float | None = None
        self._training = training
        if training is not None:
            from tether.data.store import EpisodeStore

            with EpisodeStore.open(training[0], "r") as train_store:
                chosen = training[1] if training[1] is not None else range(train_store.n_episodes)
                episodes = {int(e): train_store.get_episode(int(e), ["state", "action"]) for e in chosen}
                self.reference = Reference(*_dims(train_store), self.config)
                for e, d in episodes.items():
                    self.reference.add(e, d["state"], d["action"])
                self.baseline = self._baseline(train_store, episodes)

    @classmethod
    def load(cls, path: str | Path, store, config: QualityConfig | None = None) -> BaseCompatibility:
        """Load a checkpoint (run directory or checkpoint folder); its training store, when it is
        still where the run says, defines which states the policy knows and its usual error."""
        from tether.policies.checkpoint import load_policy

        policy = load_policy(path)
        return cls(policy, store, _training_of(Path(path)), config)

    def __call__(self, episode: int, state: np.ndarray, action: np.ndarray,
                 familiar: np.ndarray) -> dict[str, Any]:
        c = self.config
        basis = "states of the other takes"
        if self.reference is not None and self.reference.n_steps:
            dists, _ = self.reference.neighbours(state)
            familiar = dists[:, 0] < c.familiar_dist
            basis = "states the policy was trained on"
        if self.baseline is None:  # no training store: the store being scored is the yardstick
            self.reference = self.reference or _reference_of(self.store, self.config)
            self.baseline = self._baseline(self.store, None)
        steps = np.flatnonzero(familiar)
        note = ""
        if len(steps) < c.min_familiar:  # nothing known: judge the whole take, and say so
            steps, note, basis = np.arange(len(state)), " (no familiar states)", "every step"
        err, worst = self._errors(self.store, episode, steps, state, action)
        ratio = float(err.mean()) / self.baseline if len(err) else 0.0
        out: dict[str, Any] = {
            "score": float(np.exp(-((max(0.0, ratio - 1.0) / c.compatibility_ref) ** 2))),
            "metrics": {"error_ratio": ratio, "action_error": float(err.mean()) if len(err) else 0.0,
                        "baseline_error": self.baseline, "steps": int(len(steps)), "basis": basis},
            "flags": [], "reasons": [],
        }
        if ratio > c.compatibility_max:
            i = int(np.argmax(err))
            out["flags"].append("low_compatibility")
            out["reasons"].append(
                f"low compatibility with the base policy: its action error on this take is "
                f"{ratio:.1f}x its error on its training takes (limit {c.compatibility_max:g}x), "
                f"in {basis}{note}; worst at step {int(steps[i])}, action dimension {worst[i]}: "
                "a different way of doing the task than the policy's")
        return out

    def _steps(self, n: int, steps: np.ndarray | None = None) -> np.ndarray:
        steps = np.arange(n) if steps is None else steps
        if len(steps) > self.max_steps:
            steps = steps[np.linspace(0, len(steps) - 1, self.max_steps).round().astype(int)]
        return steps

    def _errors(self, store, episode: int, steps: np.ndarray, state: np.ndarray,
                action: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """RMS (over dimensions, in the reference's action-intent std) of demo - policy action."""
        steps = self._steps(len(state), steps)
        scale = self.reference.scales()[1] if self.reference is not None else np.ones(action.shape[1])
        start, _ = store.episode_range(episode)
        self.policy.reset()
        errors, worst = [], []
        for t in steps:
            obs = store.read_steps(start + int(t), start + int(t) + 1, self.keys)
            predicted = self.policy.predict_chunk({k: v[0] for k, v in obs.items()})[0]
            diff = (np.asarray(action[t], np.float64) - predicted) / scale
            errors.append(float(np.sqrt(np.mean(diff ** 2))))
            worst.append(int(np.argmax(np.abs(diff))))
        return np.asarray(errors), worst

    def _baseline(self, store, episodes: Mapping[int, Mapping[str, np.ndarray]] | None) -> float:
        """The policy's mean error over (up to max_steps x 4) steps spread over its takes."""
        if episodes is None:
            episodes = {e: store.get_episode(e, ["state", "action"]) for e in range(store.n_episodes)}
        per = max(1, (4 * self.max_steps) // max(1, len(episodes)))
        errors = []
        for e, d in episodes.items():
            n = len(d["state"])
            steps = np.unique(np.linspace(0, n - 1, min(n, per)).round().astype(int))
            errors.append(self._errors(store, e, steps, d["state"], d["action"])[0])
        value = float(np.concatenate(errors).mean()) if errors else 1.0
        return max(value, 1e-6)


def _dims(store) -> tuple[int, int]:
    return int(store.array("state").shape[1]), int(store.array("action").shape[1])


def _reference_of(store, config: QualityConfig) -> Reference:
    ref = Reference(*_dims(store), config)
    for e in range(store.n_episodes):
        d = store.get_episode(e, ["state", "action"])
        ref.add(e, d["state"], d["action"])
    return ref


def _training_of(path: Path) -> tuple[Path, list[int] | None] | None:
    """(store, episodes) a run was trained on, from its config.json, if the store still exists."""
    import json

    for run in (path, *list(path.parents)[:3]):
        cfg = run / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except (OSError, ValueError):
                return None
            dataset = data.get("dataset")
            if not dataset or not Path(dataset).exists():
                return None
            return Path(dataset), data.get("episodes")
    return None


# ---------------------------------------------------------------------------------- per take
class TakeScorer:
    """Scores each saved take against the takes before it and stores `quality` in its metadata.

    Built once per recording session on the open (append-mode) store; `score(episode)` is what
    the recorder's on_episode callback calls while the operator resets the scene.
    """

    def __init__(self, store, gripper: Sequence[int] = (), base_policy: BaseCompatibility | None = None,
                 config: QualityConfig | None = None) -> None:
        self.store = store
        self.gripper = list(gripper)
        self.base_policy = base_policy
        self.config = config or QualityConfig()
        self._reference: Reference | None = None

    def score(self, episode: int) -> dict[str, Any]:
        data = self.store.get_episode(episode, ["state", "action"])
        ref = self._grow(episode)
        compat = None
        if self.base_policy is not None:
            dists, _ = ref.neighbours(data["state"], before=episode) if ref.n_steps else (None, None)
            familiar = (dists[:, 0] < self.config.familiar_dist if dists is not None and dists.shape[1]
                        else np.zeros(len(data["state"]), bool))
            compat = self.base_policy(episode, data["state"], data["action"], familiar)
        quality = episode_quality(data["state"], data["action"], self.store.fps, ref, before=episode,
                                  gripper_dims=self.gripper, compatibility=compat, config=self.config)
        self.store.update_episode_metadata(episode, **{QUALITY_KEY: quality})
        ref.add(episode, data["state"], data["action"])
        return quality

    def _grow(self, episode: int) -> Reference:
        """The reference of every episode before `episode` (read once, then grown per take)."""
        if self._reference is None:
            state_dim = int(self.store.array("state").shape[1])
            action_dim = int(self.store.array("action").shape[1])
            self._reference = Reference(state_dim, action_dim, self.config)
        known = self._reference.episodes
        for e in range(episode):
            if e not in known:
                d = self.store.get_episode(e, ["state", "action"])
                self._reference.add(e, d["state"], d["action"])
        return self._reference


# ---------------------------------------------------------------------------------- a store
def rank_store(store, base_policy: str | Path | None = None, config: QualityConfig | None = None,
               progress=None) -> list[dict[str, Any]]:
    """Every episode's quality, judged against all the others (and the base policy if given)."""
    c = config or QualityConfig()
    compat = BaseCompatibility.load(base_policy, store, c) if base_policy else None
    call = None
    if compat is not None:
        def call(e, state, action, familiar):
            return compat(e, state, action, familiar)
    return store_quality(store, gripper_dims=gripper_dims_of_store(store), config=c,
                         compatibility=call, progress=progress)


def keep_episodes(reports: Sequence[Mapping[str, Any]], min_score: float = 0.0) -> list[int]:
    """Episodes with no flag and a score of at least `min_score`."""
    return [e for e, q in enumerate(reports) if not q["flags"] and q["score"] >= min_score]


def quality_line(q: Mapping[str, Any]) -> str:
    """One line for the operator: score, components, and why a take is flagged."""
    parts = [f"{name} {q[name]:.2f}" for name in ("smoothness", "consistency", "compatibility",
                                                   "coverage") if q.get(name) is not None]
    text = f"quality {q['score']:.2f} ({', '.join(parts)})"
    if q.get("flags"):
        text += "  FLAGGED: " + "; ".join(q.get("reasons") or q["flags"])
    return text


# ---------------------------------------------------------------------------------- recording
class TakeFeedback:
    """What `tether record` calls after every take: score a saved take, store the score in its
    metadata, and show one line (`show(line, flagged)`). A scoring failure never costs the take:
    it is logged and shown, and the session goes on."""

    def __init__(self, store, robot, base_policy: str | Path | None = None,
                 config: QualityConfig | None = None) -> None:
        compat = BaseCompatibility.load(base_policy, store, config) if base_policy else None
        self.scorer = TakeScorer(store, gripper_dims(robot), compat, config)
        self.scores: dict[int, dict[str, Any]] = {}

    def __call__(self, result, show) -> dict[str, Any] | None:
        if getattr(result, "episode", None) is None or result.outcome != "saved":
            return None
        try:
            quality = self.scorer.score(int(result.episode))
        except Exception as exc:  # noqa: BLE001 - feedback must never end a recording session
            log.warning("episode %s: quality not scored: %s", result.episode, exc)
            show(f"episode {result.episode}: quality not scored ({exc})", True)
            return None
        self.scores[int(result.episode)] = quality
        show(f"episode {result.episode}: {quality_line(quality)}", bool(quality["flags"]))
        return quality
