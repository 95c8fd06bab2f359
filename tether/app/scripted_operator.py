"""A scripted "human" for takeover tests on the twin: it watches the policy and corrects it.

`ScriptedOperator` is a TeleopDevice (tether.robot.targets) whose targets are the twin's scripted
expert's (tether.robot.twin.expert), so corrections travel the same path as a person's at a
leader arm: Takeover -> safety layer -> arms. It also says when it wants control
(`wants_control`, read by tether.app.takeover.Takeover every tick), the way an operator watching
the robot would:

- the object drifted: it moved more than `drift_m` across the table from where the episode
  placed it while still on the table (the policy pushed or dropped it), or
- no success after `patience_s` of the episode (the policy dithers), when set.

Once in control it finishes the task (HG-DAgger: the human corrects until the end), or hands
back after `release_after_s` when set (to exercise the handover back to the policy); it takes
over at most once per episode. It reads privileged object poses, as the expert does: twin only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.interfaces import Observation
from tether.robot.targets import TeleopDevice

#: The object each twin task's operator watches.
WATCHED_OBJECT = {"lift": "cube", "transfer_cube": "cube", "insertion": "peg"}
LIFTED_M = 0.01  # above its starting height by this much, the object counts as picked up


class ScriptedOperator(TeleopDevice):
    """The twin's scripted expert plus an operator's judgement of when to take over."""

    def __init__(
        self,
        robot,
        drift_m: float = 0.015,
        patience_s: float | None = None,
        release_after_s: float | None = None,
        noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        from tether.robot.twin.expert import ScriptedExpert

        self.expert = ScriptedExpert(robot, noise=noise, seed=seed)  # refuses anything but the twin
        self.robot = robot
        if robot.task.name not in WATCHED_OBJECT:
            raise ConfigError(f"No watched object for twin task '{robot.task.name}'.")
        if not drift_m > 0:
            raise ConfigError(f"scripted operator drift_m must be positive, got {drift_m}")
        for label, value in (("patience_s", patience_s), ("release_after_s", release_after_s)):
            if value is not None and not value > 0:
                raise ConfigError(f"scripted operator {label} must be positive seconds, got {value}")
        self.object = WATCHED_OBJECT[robot.task.name]
        self.drift_m = float(drift_m)
        self.patience_s = patience_s
        self.release_after_s = release_after_s
        self.reason = ""  # why it took over, for the episode metadata
        self._start: np.ndarray | None = None
        self._taken_at: float | None = None
        self._released = False

    @classmethod
    def from_config(cls, params: dict[str, Any], robot) -> ScriptedOperator:
        known = {"drift_m", "patience_s", "release_after_s", "noise", "seed"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(
                f"Unknown scripted operator params {unknown}; known: {', '.join(sorted(known))}."
            )
        opt = {k: (None if params[k] in (None, "null", "none") else float(params[k]))
               for k in ("drift_m", "patience_s", "release_after_s", "noise") if k in params}
        return cls(robot, **opt, seed=int(params.get("seed", 0)))

    # --- TeleopDevice -----------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """At an episode's start (the robot was just reset): remember where the object is. At a
        takeover (mid-episode): the expert re-plans from the scene as it is now."""
        if self.robot.steps == 0:
            self._start = self._object_pos()
            self._taken_at = None
            self._released = False
            self.reason = ""
        self.expert.reset(seed)

    def next_target(self, observation: Observation | None = None) -> np.ndarray:
        return self.expert.next_target(observation)

    @property
    def episode_done(self) -> bool:
        return self.expert.episode_done

    @property
    def wants_control(self) -> bool:
        """True while this operator drives (or decides to start driving this tick)."""
        t = self.robot.steps / self.robot.fps
        if self._taken_at is not None:
            if self.release_after_s is not None and t - self._taken_at >= self.release_after_s:
                self._taken_at, self._released = None, True
                return False
            return True
        if self._released or self._start is None:
            return False
        pos = self._object_pos()
        on_table = pos[2] < self._start[2] + LIFTED_M
        drift = float(np.linalg.norm(pos[:2] - self._start[:2]))
        if on_table and drift > self.drift_m:
            self.reason = f"object drifted {drift * 1e3:.0f} mm"
        elif self.patience_s is not None and t >= self.patience_s and not self.robot.is_success():
            self.reason = f"no success after {self.patience_s:g} s"
        else:
            return False
        self._taken_at = t
        return True

    def _object_pos(self) -> np.ndarray:
        pos, _ = self.robot.task.body_pose(self.robot.sim, self.object)
        return np.asarray(pos, dtype=np.float64).copy()
