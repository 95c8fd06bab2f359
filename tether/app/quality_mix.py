"""A mixed-quality dataset on the twin: scripted takes plus takes by a deliberately worse operator.

The quality score (tether.data.quality, tether.app.quality) must flag bad takes without being
told which they are. To check it, we need takes whose badness we know: `ImperfectOperator`
wraps the twin's scripted expert (tether.robot.twin.expert, not modified) and drives it the way
a tired or different operator would, one style per take:

    jitter       shaky hands: Gaussian noise of `jitter_rad` on every arm joint target
    pause        hesitation: the target freezes twice mid-take for 1.2-2.0 s
    chatter      a nervous gripper: it half-closes and reopens on the way to the cube
    other_grasp  another strategy: the cube is grasped on its other pair of faces (gripper yaw
                 turned 90 degrees), a valid grasp the scripted takes never use

`record_mix` writes such a store, with the truth in each episode's metadata (`operator`:
`scripted` or `imperfect:<style>`), for the tests and benchmarks/quality_filter.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.interfaces import Observation
from tether.robot.targets import TeleopDevice

STYLES = ("jitter", "pause", "chatter", "other_grasp")
SCRIPTED_OPERATOR = "scripted"


class ImperfectOperator(TeleopDevice):
    """The scripted expert, driven badly in one `style` (see the module docstring)."""

    def __init__(self, robot, style: str, seed: int = 0, jitter_rad: float = 0.05,
                 noise: float = 0.0, pauses: int = 2) -> None:
        if style not in STYLES:
            raise ConfigError(f"unknown imperfect style '{style}'; known: {', '.join(STYLES)}")
        from tether.robot.twin.expert import ScriptedExpert

        expert_cls = _other_grasp_expert() if style == "other_grasp" else ScriptedExpert
        self.expert = expert_cls(robot, noise=noise, seed=seed)
        self.robot = robot
        self.style = style
        self.jitter_rad = float(jitter_rad)
        self.n_pauses = int(pauses)
        self.rng = np.random.default_rng(seed)
        self._tick = 0
        self._last: np.ndarray | None = None
        self._pauses: list[tuple[int, int]] = []

    def reset(self, seed: int | None = None) -> None:
        self.expert.reset(seed)
        self.rng = np.random.default_rng([0 if seed is None else int(seed), 0x1BAD])
        self._tick = 0
        self._last = None
        fps = float(self.robot.fps)
        # pauses within the motion (the scripted lift moves for ~3.5 s)
        starts = sorted(self.rng.uniform(0.4, 2.6, size=self.n_pauses) * fps)
        self._pauses = [(int(s), int(s + self.rng.uniform(1.2, 2.0) * fps)) for s in starts]

    @property
    def episode_done(self) -> bool:
        return self.expert.episode_done

    def next_target(self, observation: Observation | None) -> np.ndarray:
        tick = self._tick
        self._tick += 1
        if self.style == "pause" and self._last is not None and any(a <= tick < b for a, b in self._pauses):
            return self._last.copy()  # the expert's clock does not advance: it resumes after
        target = np.asarray(self.expert.next_target(observation), dtype=np.float64).copy()
        grip = self.robot.arms[next(iter(self.robot.arms))].spec.gripper_index
        if self.style == "jitter":
            arm = [d for d in range(len(target)) if d != grip]
            target[arm] += self.rng.normal(0.0, self.jitter_rad, size=len(arm))
        elif self.style == "chatter" and grip is not None:
            fps = float(self.robot.fps)
            if 0.2 * fps <= tick < 1.6 * fps and (tick // max(1, int(0.2 * fps))) % 2 == 1:
                target[grip] = min(target[grip], 0.45)  # half-close, then open again
        self._last = target
        return target


def _other_grasp_expert():
    """The scripted expert with the lift grasp turned 90 degrees about the vertical: the
    planner is the expert's own, its poses rotated on the way out."""
    from tether.robot.twin.expert import Pose, ScriptedExpert

    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

    class OtherGraspExpert(ScriptedExpert):
        def _enter(self, index: int, t: float) -> None:
            super()._enter(index, t)
            if self._current.name in ("approach", "descend", "close", "lift"):
                sign = 1.0 if self.seed % 2 == 0 else -1.0  # turn either way: both faces are valid
                turn = quarter if sign > 0 else quarter.T
                self._to = [Pose(p.pos, turn @ p.rot, p.grip) for p in self._to]

    return OtherGraspExpert


@dataclass
class MixResult:
    path: Path
    truth: list[str]  # per episode: "scripted" or the imperfect style
    success: list[bool | None]

    @property
    def bad(self) -> list[int]:
        return [e for e, t in enumerate(self.truth) if t != SCRIPTED_OPERATOR]


def mix_plan(n_good: int, n_bad: int, styles: Sequence[str] = STYLES, seed: int = 0) -> list[str]:
    """Which operator records each take: `n_bad` imperfect takes (styles in turn) shuffled
    among `n_good` scripted ones, reproducibly."""
    plan = [SCRIPTED_OPERATOR] * n_good + [styles[i % len(styles)] for i in range(n_bad)]
    order = np.random.default_rng(seed).permutation(len(plan))
    return [plan[i] for i in order]


def record_mix(out: str | Path, plan: Sequence[str], *, fps: float = 10.0, cameras: Sequence[str] = (),
               width: int = 160, height: int = 120, seed: int = 0, expert_noise: float = 0.3,
               overwrite: bool = True, operator_options: dict[str, Any] | None = None) -> MixResult:
    """Record one take per entry of `plan` (see mix_plan) of twin lift into a new store, in
    fast mode, with the truth as each episode's `operator`; `operator_options` holds ImperfectOperator
    options (jitter_rad, pauses)."""
    from tether.core.config import to_dict
    from tether.data.store import EpisodeStore
    from tether.robot.config import twin_camera_overrides
    from tether.robot.factory import load_robot_config, make_robot
    from tether.robot.twin.expert import ScriptedExpert
    from tether.robot.twin.render import configure_backend
    from tether.teleop.recorder import SAVED, Recorder

    configure_backend()
    overrides = [f"fps={fps}", *twin_camera_overrides(cameras, width, height)]
    config = load_robot_config("twin:lift", overrides)
    robot = make_robot(config)
    truth: list[str] = []
    success: list[bool | None] = []
    with robot, EpisodeStore.create(out, fps, robot_config=to_dict(config), overwrite=overwrite) as store:
        scripted = ScriptedExpert(robot, noise=expert_noise, seed=seed)
        recorder = Recorder(robot, scripted, store, fps=fps, realtime=False, task="lift")
        for i, who in enumerate(plan):
            device: TeleopDevice = scripted if who == SCRIPTED_OPERATOR else \
                ImperfectOperator(robot, who, seed=seed + i, noise=expert_noise,
                                  **(operator_options or {}))
            recorder.teleop = device
            operator = who if who == SCRIPTED_OPERATOR else f"imperfect:{who}"
            result = recorder.record_episode(max_steps=robot.max_steps, seed=seed + i,
                                             metadata={"operator": operator})
            if result.outcome != SAVED:
                raise RuntimeError(f"take {i} ({who}) was not saved")
            truth.append(who)
            success.append(result.success)
        from tether.data.stats import compute_stats

        compute_stats(store, save=True)
    return MixResult(Path(out), truth, success)


def detection(truth: Sequence[str], flagged: Sequence[bool]) -> dict[str, Any]:
    """Precision and recall of `flagged` against the truth, overall and per style."""
    bad = np.array([t != SCRIPTED_OPERATOR for t in truth])
    flag = np.asarray(flagged, dtype=bool)
    tp = int((bad & flag).sum())
    fp = int((~bad & flag).sum())
    fn = int((bad & ~flag).sum())
    per_style = {}
    for style in sorted(set(truth) - {SCRIPTED_OPERATOR}):
        rows = np.array([t == style for t in truth])
        per_style[style] = {"takes": int(rows.sum()), "flagged": int((rows & flag).sum())}
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "true_positives": tp, "false_positives": fp, "false_negatives": fn,
        "scripted_takes": int((~bad).sum()), "imperfect_takes": int(bad.sum()),
        "per_style": per_style,
    }
