"""How good is a take? Per-episode quality metrics on the recorded arrays, pure numpy.

Operators get this feedback right after each take (`tether record` prints it, and stores it in
the episode's metadata under `quality`) and `tether data quality` ranks a whole store with it.
The metrics follow two lines of work on demonstration quality:

- *Data Quality in Imitation Learning* (Belkhale et al. 2023): demonstrations should have low
  **action divergence** (in states other demonstrations also visit, act as they do) and good
  **state diversity** (reach new states). Here: `consistency` (action divergence against the
  nearest states of the other episodes) and `coverage` (how many of the take's states are new).
- *Eliciting Compatible Demonstrations for Multi-Human Imitation Learning* (Gandhi et al. 2022):
  a new demonstration is compatible with a base policy when the policy agrees with its actions
  in the states the policy knows, however novel the rest is. That needs a policy (torch), so it
  lives in the app layer (tether.app.quality) and enters here only as an optional number.

Plus what an operator can fix at once, `smoothness`: jerk (a dimensionless roughness of the
commanded joint path, so a fixed rate's noise floor is the same on every robot), pauses in the
middle of a take (measured on the joint state) and gripper chatter (command reversals).

Every component is in [0, 1], higher is better; `score` is their weighted mean. A component that
crosses its limit (QualityConfig) adds a `flag` and a `reason` that says what happened in the
robot's terms. Units: the state and action arrays are in the robot's units (radians, gripper in
its own unit); distances between states are RMS over dimensions in units of the store's per-
dimension standard deviation, so the limits do not depend on how many joints a robot has.

Episode lists (`write_episode_list` / `read_episode_list`) are the plain-text files that
`tether data quality --keep-out` writes and `tether train --episodes-from` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError, StoreError

QUALITY_KEY = "quality"  # the episode metadata key
QUALITY_VERSION = 1

__all__ = [
    "QUALITY_KEY", "QualityConfig", "Reference", "consistency", "coverage", "episode_quality",
    "read_episode_list", "smoothness", "store_quality", "write_episode_list",
]


@dataclass(frozen=True)
class QualityConfig:
    """Limits and scales of the quality metrics (defaults measured on twin lift demos at 10-50 Hz).

    jerk_ref / jerk_max: roughness = median over the moving arm joints of sum |third difference|
        / sum |first difference| of the command. A smooth path gives ~0.1-0.6, white noise ~3.2
        at any rate.
    idle_speed: rad/s (per joint, state) below which the robot counts as still.
    pause_max_s: a still period in the middle of a take longer than this is a pause.
    gripper_deadband: fraction of the gripper command's range a move must exceed to count.
    gripper_reversals_max: open/close direction changes allowed per take (grasp and release: 2).
    familiar_dist / novel_dist: RMS distance (in state standard deviations) under which a state
        has been seen before, over which it is new.
    divergence_ref / divergence_max: RMS action difference (in action standard deviations) to
        the neighbours' actions in familiar states.
    compatibility_ref / compatibility_max: a base policy's action error on the take over its error
        on its own training takes (1 = as usual); the score is exp(-((ratio - 1) / ref)^2).
    weights: of smoothness, consistency (or compatibility when given) and coverage in `score`.
    neighbours: k of the k-nearest-neighbour action average; max_reference: states kept in the
        reference (evenly subsampled beyond it, so a big store stays fast).
    min_familiar / min_reference_episodes: consistency is judged only on at least this many
        familiar steps, against at least this many other takes (before that it is None).
    """

    jerk_ref: float = 1.5
    jerk_max: float = 1.2
    idle_speed: float = 0.03
    pause_max_s: float = 0.8
    gripper_deadband: float = 0.05
    gripper_reversals_max: int = 3
    familiar_dist: float = 0.25
    novel_dist: float = 0.4
    divergence_ref: float = 0.6
    divergence_max: float = 1.0
    compatibility_ref: float = 1.5
    compatibility_max: float = 4.0
    weights: dict[str, float] = field(
        default_factory=lambda: {"smoothness": 0.45, "consistency": 0.4, "coverage": 0.15})
    neighbours: int = 5
    max_reference: int = 20000
    min_familiar: int = 3
    min_reference_episodes: int = 5  # fewer other takes: too few to say what "usual" is


# ---------------------------------------------------------------------------------- smoothness
def smoothness(action: np.ndarray, state: np.ndarray, fps: float,
               gripper_dims: Sequence[int] = (), config: QualityConfig | None = None) -> dict[str, Any]:
    """Jerk, mid-take pauses and gripper chatter of one episode -> scores, metrics, flags."""
    c = config or QualityConfig()
    action = _2d(action, "action")
    state = _2d(state, "state")
    grip = [d for d in gripper_dims if 0 <= d < action.shape[1]]
    arm = [d for d in range(action.shape[1]) if d not in grip]
    flags: list[str] = []
    reasons: list[str] = []

    roughness = _roughness(action[:, arm]) if arm else 0.0
    jerk_score = 1.0 / (1.0 + (roughness / c.jerk_ref) ** 2)
    if roughness > c.jerk_max:
        flags.append("jerky")
        reasons.append(f"jerky commands: roughness {roughness:.2f} (smooth motion < {c.jerk_max:g}; "
                       "shaking hands, a noisy leader reading or a low control rate)")

    pauses = _pauses(state, fps, c.idle_speed, [d for d in range(state.shape[1]) if d not in grip])
    still_grip = _pauses(state, fps, c.idle_speed, list(range(state.shape[1])))
    idle_s = float(sum(still_grip)) / fps
    longest = max(still_grip, default=0) / fps
    idle_score = float(np.exp(-max(0.0, longest - 0.5 * c.pause_max_s) / c.pause_max_s))
    if longest > c.pause_max_s:
        flags.append("pauses")
        reasons.append(f"paused {longest:.1f} s mid-take ({idle_s:.1f} s still in total; limit "
                       f"{c.pause_max_s:g} s)")

    reversals = max((_reversals(action[:, d], c.gripper_deadband) for d in grip), default=0)
    excess = max(0, reversals - 2)
    grip_score = float(np.exp(-excess / 2.0))
    if reversals > c.gripper_reversals_max:
        flags.append("gripper_chatter")
        reasons.append(f"gripper chatter: {reversals} open/close reversals (limit "
                       f"{c.gripper_reversals_max})")
    return {
        "score": float(jerk_score * idle_score * grip_score),
        "jerk": float(jerk_score), "idle": float(idle_score), "gripper": float(grip_score),
        "metrics": {"roughness": float(roughness), "longest_pause_s": float(longest),
                    "idle_s": idle_s, "arm_still_s": float(sum(pauses)) / fps,
                    "gripper_reversals": int(reversals)},
        "flags": flags, "reasons": reasons,
    }


def _roughness(x: np.ndarray) -> float:
    """Median over the joints that move of sum |third difference| / sum |first difference|.

    The median, not a pooled sum, so one joint with a legitimate step (a gripper nobody told us
    about, a wrist flip) does not make a smooth take look jerky; shaking moves every joint."""
    if len(x) < 4:
        return 0.0
    travel = np.abs(np.diff(x, axis=0)).sum(axis=0)
    moving = travel > 1e-6 * max(1.0, float(np.abs(x).max()))
    if not moving.any():
        return 0.0
    third = np.abs(np.diff(x, n=3, axis=0)).sum(axis=0)
    return float(np.median(third[moving] / travel[moving]))


def _pauses(state: np.ndarray, fps: float, idle_speed: float, dims: list[int]) -> list[int]:
    """Lengths (steps) of still runs strictly inside the take (not at its start or end)."""
    if len(state) < 3 or not dims:
        return []
    speed = np.abs(np.diff(state[:, dims], axis=0)).max(axis=1) * fps
    still = speed < idle_speed
    runs: list[int] = []
    t, n = 0, len(still)
    while t < n:
        if still[t]:
            start = t
            while t < n and still[t]:
                t += 1
            if start > 0 and t < n:  # leading reaction time and the final hold are normal
                runs.append(t - start)
        else:
            t += 1
    return runs


def _reversals(g: np.ndarray, deadband: float) -> int:
    """Direction changes of a command, ignoring moves under `deadband` x its range."""
    span = float(np.max(g) - np.min(g)) if len(g) else 0.0
    if span < 1e-9:
        return 0
    tol = deadband * span
    anchor, direction, count = float(g[0]), 0, 0
    for value in g[1:]:
        delta = float(value) - anchor
        if abs(delta) < tol:
            continue
        sign = 1 if delta > 0 else -1
        if direction and sign != direction:
            count += 1
        direction, anchor = sign, float(value)
    return count


# ---------------------------------------------------------------------------------- reference
class Reference:
    """The states and actions of a set of episodes, normalized, for nearest-neighbour queries.

    `scale` per dimension is the standard deviation over the reference (floored), so a
    distance of 1 is one typical spread. Built once per store (or grown take by take while
    recording) and queried with an episode index to leave out, so an episode is never its own
    neighbour.
    """

    def __init__(self, state_dim: int, action_dim: int, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()
        self._states: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._episodes: list[np.ndarray] = []
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, episode: int, state: np.ndarray, action: np.ndarray) -> None:
        state, action = _2d(state, "state"), _2d(action, "action")
        if state.shape[1] != self.state_dim or action.shape[1] != self.action_dim:
            raise StoreError(f"episode {episode}: state/action widths {state.shape[1]}/"
                             f"{action.shape[1]} differ from the store's {self.state_dim}/"
                             f"{self.action_dim}")
        self._states.append(state.astype(np.float32))
        self._actions.append(intent(state, action).astype(np.float32))
        self._episodes.append(np.full(len(state), int(episode), dtype=np.int64))
        self._cache = None

    @property
    def n_steps(self) -> int:
        return int(sum(len(s) for s in self._states))

    @property
    def episodes(self) -> set[int]:
        return {int(e[0]) for e in self._episodes if len(e)}

    def scales(self) -> tuple[np.ndarray, np.ndarray]:
        """(state std, action std) per dimension, floored so a constant dimension never divides
        by zero."""
        _, _, _, s_scale, a_scale = self._arrays()
        return s_scale, a_scale

    def _arrays(self):
        if self._cache is None:
            if not self._states:
                s = np.zeros((0, self.state_dim), np.float32)
                a = np.zeros((0, self.action_dim), np.float32)
                e = np.zeros(0, np.int64)
            else:
                s, a, e = (np.concatenate(x) for x in (self._states, self._actions, self._episodes))
            s_scale = _floor_std(s)
            a_scale = _floor_std(a)
            if len(s) > self.config.max_reference:  # evenly spaced: every episode keeps its share
                pick = np.linspace(0, len(s) - 1, self.config.max_reference).round().astype(np.int64)
                s, a, e = s[pick], a[pick], e[pick]
            self._cache = (s / s_scale, a / a_scale, e, s_scale, a_scale)
        return self._cache

    def neighbours(self, state: np.ndarray, exclude: int | None = None, before: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(distances (T, k), normalized neighbour actions (T, k, A)) of each query state among
        the reference states of other episodes (`exclude`), or of episodes < `before` only."""
        s, a, e, s_scale, _ = self._arrays()
        k = self.config.neighbours
        mask = np.ones(len(s), dtype=bool)
        if exclude is not None:
            mask &= e != exclude
        if before is not None:
            mask &= e < before
        ref, ref_a = s[mask], a[mask]
        q = (_2d(state, "state") / s_scale).astype(np.float32)
        if len(ref) == 0:
            return np.full((len(q), 0), np.inf), np.zeros((len(q), 0, self.action_dim), np.float32)
        k = min(k, len(ref))
        dists = np.empty((len(q), k), np.float64)
        idx = np.empty((len(q), k), np.int64)
        ref_sq = (ref.astype(np.float64) ** 2).sum(axis=1)
        for lo in range(0, len(q), 256):
            block = q[lo:lo + 256].astype(np.float64)
            d2 = (block ** 2).sum(axis=1)[:, None] + ref_sq[None, :] - 2.0 * block @ ref.T.astype(np.float64)
            near = np.argpartition(d2, k - 1, axis=1)[:, :k]
            rows = np.arange(len(block))[:, None]
            order = np.argsort(d2[rows, near], axis=1)
            near = near[rows, order]
            idx[lo:lo + len(block)] = near
            dists[lo:lo + len(block)] = np.sqrt(np.maximum(d2[rows, near], 0.0) / ref.shape[1])
        return dists, ref_a[idx]


def _floor_std(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.ones(x.shape[1], np.float32)
    std = x.std(axis=0)
    span = x.max(axis=0) - x.min(axis=0)
    return np.maximum(std, np.maximum(0.01 * span, 1e-3)).astype(np.float32)


# ---------------------------------------------------------------------------------- coverage
def coverage(dists: np.ndarray, config: QualityConfig | None = None) -> dict[str, Any]:
    """How new the take's states are: the fraction farther than `novel_dist` from every
    reference state (1.0 for the first take: everything is new)."""
    c = config or QualityConfig()
    nearest = dists[:, 0] if dists.shape[1] else np.full(len(dists), np.inf)
    novel = float(np.mean(nearest > c.novel_dist)) if len(nearest) else 0.0
    finite = nearest[np.isfinite(nearest)]
    return {
        "score": novel,
        "metrics": {"novel_fraction": novel,
                    "median_novelty": float(np.median(finite)) if len(finite) else None,
                    "familiar_fraction": float(np.mean(nearest < c.familiar_dist)) if len(nearest) else 0.0},
        "familiar": nearest < c.familiar_dist,
    }


def intent(state: np.ndarray, action: np.ndarray) -> np.ndarray:
    """What an action asks for beyond where the robot is: `action - state` when both have the
    same layout (position control: the commanded motion), else the action itself. Comparing
    intents, not raw targets, keeps the robot's position (which the neighbours share anyway)
    from drowning the direction it is being driven in."""
    state, action = _2d(state, "state"), _2d(action, "action")
    return action - state if state.shape == action.shape else action


def consistency(state: np.ndarray, action: np.ndarray, dists: np.ndarray, neighbour_actions: np.ndarray,
                action_scale: np.ndarray, config: QualityConfig | None = None) -> dict[str, Any]:
    """Action divergence in familiar states: how far the take's actions are (RMS, in action
    standard deviations) from what the nearest other episodes did in the same states."""
    c = config or QualityConfig()
    if dists.shape[1] == 0:
        return _no_familiar("consistency", 0)
    familiar = dists[:, 0] < c.familiar_dist
    n = int(familiar.sum())
    if n < c.min_familiar:
        return _no_familiar("consistency", n)
    weights = 1.0 / (dists[familiar] + 1e-3)
    mean_nn = (neighbour_actions[familiar] * weights[..., None]).sum(1) / weights.sum(1)[:, None]
    err = np.sqrt(((intent(state, action)[familiar] / action_scale - mean_nn) ** 2).mean(axis=1))
    divergence = float(np.mean(err))
    out = {"score": float(np.exp(-((divergence / c.divergence_ref) ** 2))),
           "metrics": {"divergence": divergence, "familiar_steps": n}, "flags": [], "reasons": []}
    if divergence > c.divergence_max:
        worst = np.flatnonzero(familiar)[int(np.argmax(err))]
        out["flags"].append("inconsistent")
        out["reasons"].append(
            f"acts unlike the other takes in familiar states: action divergence {divergence:.2f} "
            f"std (limit {c.divergence_max:g}) over {n} steps, worst at step {worst}")
    return out


def _no_familiar(name: str, n: int) -> dict[str, Any]:
    """Too few known states to judge: neither reward nor punish (score None)."""
    return {"score": None, "metrics": {"familiar_steps": n}, "flags": [], "reasons": []}


# ---------------------------------------------------------------------------------- one episode
def episode_quality(
    state: np.ndarray,
    action: np.ndarray,
    fps: float,
    reference: Reference | None = None,
    *,
    episode: int | None = None,
    before: int | None = None,
    gripper_dims: Sequence[int] = (),
    compatibility: Mapping[str, Any] | None = None,
    config: QualityConfig | None = None,
) -> dict[str, Any]:
    """The `quality` metadata of one take: score, components, metrics, flags and reasons.

    reference: other episodes' states/actions (None or empty: coverage 1, consistency None).
    episode / before: leave this episode out of the reference, or use only earlier episodes
        (what the store held when the take was recorded).
    compatibility: the app layer's base-policy result ({"score", "metrics", "flags", "reasons"}).
    """
    c = config or QualityConfig()
    if len(state) != len(action):
        raise StoreError(f"state and action differ in length ({len(state)} vs {len(action)})")
    smooth = smoothness(action, state, fps, gripper_dims, c)
    if reference is not None and reference.n_steps:
        dists, nn_actions = reference.neighbours(state, exclude=episode, before=before)
        _, a_scale = reference.scales()
    else:
        dists = np.full((len(state), 0), np.inf)
        nn_actions, a_scale = np.zeros((len(state), 0, action.shape[1])), np.ones(action.shape[1])
    cover = coverage(dists, c)
    others = _reference_episodes(reference, episode, before)
    if others >= c.min_reference_episodes:
        consist = consistency(state, action, dists, nn_actions, a_scale, c)
    else:
        consist = _no_familiar("consistency", 0)
    components: dict[str, float | None] = {
        "smoothness": smooth["score"], "coverage": cover["score"], "consistency": consist["score"]}
    flags = smooth["flags"] + consist["flags"]
    reasons = smooth["reasons"] + consist["reasons"]
    metrics = {**smooth["metrics"], **cover["metrics"], **consist["metrics"]}
    weights = dict(c.weights)
    if compatibility is not None:
        components["compatibility"] = compatibility.get("score")
        flags += list(compatibility.get("flags", []))
        reasons += list(compatibility.get("reasons", []))
        metrics.update({f"compatibility_{k}": v for k, v in compatibility.get("metrics", {}).items()})
        # the base policy is the better judge of the actions: it replaces the store's neighbours
        weights["compatibility"] = weights.pop("consistency", 0.0)
    used = {k: w for k, w in weights.items() if components.get(k) is not None}
    total = sum(used.values())
    score = sum(w * float(components[k]) for k, w in used.items()) / total if total else 0.0
    return {
        "version": QUALITY_VERSION,
        "score": round(float(score), 4),
        **{k: (None if v is None else round(float(v), 4)) for k, v in components.items()},
        "flags": flags,
        "reasons": reasons,
        "metrics": {k: _round(v) for k, v in metrics.items()},
        "reference_episodes": others,
        "config": {k: v for k, v in asdict(c).items() if k != "weights"},
    }


def _reference_episodes(reference: Reference | None, episode: int | None, before: int | None) -> int:
    if reference is None:
        return 0
    eps = reference.episodes - ({episode} if episode is not None else set())
    return len([e for e in eps if before is None or e < before])


def _round(v: Any) -> Any:
    return round(float(v), 4) if isinstance(v, float | np.floating) else v


# ---------------------------------------------------------------------------------- a store
def store_quality(store, *, gripper_dims: Sequence[int] = (), config: QualityConfig | None = None,
                  compatibility=None, progress=None) -> list[dict[str, Any]]:
    """Quality of every committed episode of an open EpisodeStore, each judged against all the
    others (leave one out). `compatibility(episode, state, action, familiar) -> dict | None` adds
    a base policy's judgement (tether.app.quality). Returns one dict per episode, in order."""
    c = config or QualityConfig()
    if "state" not in store.keys or "action" not in store.keys:
        raise StoreError(f"{store.path} needs 'state' and 'action' arrays to be scored "
                         f"(has {', '.join(store.keys)}).")
    episodes = [store.get_episode(e, ["state", "action"]) for e in range(store.n_episodes)]
    reference = reference_from(episodes, c)
    out = []
    for e, data in enumerate(episodes):
        compat = None
        if compatibility is not None:
            dists, _ = reference.neighbours(data["state"], exclude=e)
            familiar = dists[:, 0] < c.familiar_dist if dists.shape[1] else np.zeros(len(dists), bool)
            compat = compatibility(e, data["state"], data["action"], familiar)
        out.append(episode_quality(data["state"], data["action"], store.fps, reference, episode=e,
                                   gripper_dims=gripper_dims, compatibility=compat, config=c))
        if progress is not None:
            progress(e)
    return out


def reference_from(episodes: Iterable[Mapping[str, np.ndarray]], config: QualityConfig | None = None
                   ) -> Reference:
    episodes = list(episodes)
    if not episodes:
        raise StoreError("no episodes to build a quality reference from")
    first = episodes[0]
    ref = Reference(_2d(first["state"], "state").shape[1], _2d(first["action"], "action").shape[1], config)
    for e, data in enumerate(episodes):
        ref.add(e, data["state"], data["action"])
    return ref


def _2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise StoreError(f"{name} must be (T, D), got shape {x.shape}")
    return x


# ---------------------------------------------------------------------------------- episode lists
def write_episode_list(path: str | Path, episodes: Iterable[int], header: str = "") -> Path:
    """One episode index per line; `#` lines are comments (what produced the list)."""
    path = Path(path)
    lines = [f"# {line}" for line in header.splitlines()] + [str(int(e)) for e in episodes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_episode_list(path: str | Path) -> list[int]:
    """Episode indices from a list file (one per line, `#` comments, blank lines ignored)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"episode list {path} does not exist; write one with `tether data "
                          "quality STORE --keep-out FILE`.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the episode list {path}: {exc}") from exc
    out: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        if not item.isdigit():
            raise ConfigError(f"{path}:{number}: '{item}' is not an episode index (one "
                              "non-negative integer per line, # for comments).")
        out.append(int(item))
    if not out:
        raise ConfigError(f"episode list {path} names no episodes.")
    return sorted(set(out))
