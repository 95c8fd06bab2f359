"""Human takeover during a rollout: who drives the arms this tick, and a handover without a jump.

HG-DAgger, RLIF and HIL-SERL all let an operator take over from a policy that is about to fail,
and keep the correction as training data. `Takeover` is that arbitration, one decision per
control tick (pure logic, no clock: the tick period `dt` is given), between

- the policy's action for the tick (the rollout's blended chunk; the policy keeps running in the
  shadow while the human drives, so its chunks are current when control comes back), and
- the operator's teleop device (a `tether.robot.targets.TeleopDevice`: leader arm, SpaceMouse,
  keyboard, or the twin's scripted operator in tests).

Control changes hands on a request: `take_over()` / `hand_back()` / `toggle()` from the API or a
key (`takeover_bindings`: space, which a USB foot pedal can type), or from the device itself when
it has a `wants_control` property (True/False; None = no opinion), as the scripted operator does.

A handover never jumps. On a request the device is reset (a leader arm walks from the follower's
pose, a SpaceMouse/keyboard re-anchors at it, a scripted expert re-plans from the scene), then

    POLICY --request--> TO_HUMAN --converged--> HUMAN --release--> TO_POLICY --converged--> POLICY

- `handover="ramp"` (default): during TO_HUMAN / TO_POLICY the command moves from the last
  command that reached the arms toward the new controller's target at most `handover_speed` x
  the safety layer's joint speed limit; the handover is over on the first tick the ramp reaches
  the target without being clipped, so the first direct command is within one limited step;
- `handover="align"` (to the human only): the follower holds where it is until the device's
  target is within `align_tolerance` of the measured follower pose (the operator brings the
  leader arm to the follower), then control switches. Handing back always ramps.

Every target still goes through the safety layer afterwards. Per tick, `controller` says who
was in control (`Controller`) and `intervening` whether the human's own targets were executed
(HUMAN only; handover ticks are neither the policy's nor the human's), which is what the episode
store records (`intervention_spans`, `control_spans`; see tether.data.interventions).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.targets import TeleopDevice

log = logging.getLogger(__name__)

__all__ = [
    "Controller",
    "Handover",
    "Takeover",
    "TakeoverConfig",
    "TAKEOVER_KEYS",
    "handover_speeds",
    "takeover_bindings",
]

#: Keys that toggle the takeover during `tether rollout --takeover` (a foot pedal that types a
#: space works too). Not used by the e-stop keys nor the keyboard teleop device.
TAKEOVER_KEYS = " "
TAKEOVER_HELP = "[space] take over / hand back"


class Controller(StrEnum):
    POLICY = "policy"
    TO_HUMAN = "to_human"
    HUMAN = "human"
    TO_POLICY = "to_policy"


@dataclass
class TakeoverConfig:
    """How control changes hands.

    handover: "ramp" (drive the follower from where it is toward the new controller's target)
        or "align" (hold until the device's target is within align_tolerance of the follower).
    handover_speed: fraction of the safety layer's per-joint speed limit a handover may use.
    align_tolerance: largest |device target - measured follower| per joint (rad; gripper in its
        unit) at which an "align" handover switches to the human.
    """

    handover: Literal["ramp", "align"] = "ramp"
    handover_speed: float = 0.25
    align_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.handover not in ("ramp", "align"):
            raise ConfigError(f"takeover handover must be 'ramp' or 'align', got {self.handover!r}")
        if not 0.0 < float(self.handover_speed) <= 1.0:
            raise ConfigError(
                f"takeover handover_speed is a fraction of the safety speed limit in (0, 1], "
                f"got {self.handover_speed}"
            )
        if not float(self.align_tolerance) > 0.0:
            raise ConfigError(f"takeover align_tolerance must be positive, got {self.align_tolerance}")


@dataclass
class Handover:
    """One change of hands: requested at `start_step`, complete at `end_step` (None: never)."""

    to: str  # "human" or "policy"
    start_step: int
    end_step: int | None = None
    mode: str = "ramp"

    @property
    def ticks(self) -> int | None:
        return None if self.end_step is None else self.end_step - self.start_step


class Takeover:
    """Arbitrate policy and operator per tick; see the module doc.

    device: the operator's TeleopDevice. max_velocity: the safety layer's speed limit per joint
    of the robot's action vector (`safety_velocity_of(robot)`). dt: the control period (s).
    """

    def __init__(
        self,
        device: TeleopDevice,
        max_velocity: np.ndarray,
        dt: float,
        config: TakeoverConfig | None = None,
    ) -> None:
        if not dt > 0:
            raise ConfigError(f"takeover needs a positive control period, got {dt}")
        self.device = device
        self.config = config or TakeoverConfig()
        self.max_velocity = np.asarray(max_velocity, dtype=np.float64)
        self.dt = float(dt)
        self.step_limit = self.max_velocity * self.config.handover_speed * self.dt
        self._lock = threading.Lock()
        self._requested = False
        self.controller = Controller.POLICY  # who controls the next tick
        self.tick_controller = Controller.POLICY  # who controlled the tick just decided
        self.handovers: list[Handover] = []
        self.controllers: list[str] = []  # who was in control, per tick of the episode
        self._step = 0

    # --- requests (any thread) ------------------------------------------------------------------
    def take_over(self) -> None:
        """The operator asks for control (a key, a pedal, the API)."""
        with self._lock:
            self._requested = True

    def hand_back(self) -> None:
        """The operator gives control back to the policy."""
        with self._lock:
            self._requested = False

    def toggle(self) -> None:
        with self._lock:
            self._requested = not self._requested

    @property
    def requested(self) -> bool:
        """Whether the human wants control now (the device's own wish wins when it has one)."""
        wish = getattr(self.device, "wants_control", None)
        if wish is not None:
            return bool(wish)
        with self._lock:
            return self._requested

    @property
    def intervening(self) -> bool:
        """True when the tick just decided executed the human's own target."""
        return self.tick_controller is Controller.HUMAN

    # --- one episode ----------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """New episode: the policy drives; the device prepares (a scripted operator re-plans)."""
        with self._lock:
            self._requested = False
        self.controller = self.tick_controller = Controller.POLICY
        self.handovers = []
        self.controllers = []
        self._step = 0
        self.device.reset(seed)

    def decide(
        self,
        observation,
        policy_action: np.ndarray | None,
        last_command: np.ndarray,
    ) -> np.ndarray | None:
        """The target of this tick (None: no target, the arms hold), and who gave it.

        observation: this tick's Observation. policy_action: the policy's action for this tick
        (None when it has none: a stall). last_command: what reached the arms last tick.
        """
        step = self._step
        self._step += 1
        last = np.asarray(last_command, dtype=np.float64)
        want_human = self.requested
        if want_human and self.controller in (Controller.POLICY, Controller.TO_POLICY):
            self._begin(Controller.TO_HUMAN, step)
        elif not want_human and self.controller in (Controller.HUMAN, Controller.TO_HUMAN):
            self._begin(Controller.TO_POLICY, step)
        tick = self.controller  # who controls this tick (a handover completing on it counts as the handover)
        target: np.ndarray | None
        if tick is Controller.POLICY:
            target = policy_action
        elif tick is Controller.HUMAN:
            target = self.device.next_target(observation)
        elif tick is Controller.TO_HUMAN:
            target = self._to_human(self.device.next_target(observation), observation, last, step)
        else:
            target = self._ramp(policy_action, last, step, Controller.POLICY)
        self.tick_controller = tick
        self.controllers.append(tick.value)
        return None if target is None else np.asarray(target, dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """What the episode store keeps: spans of who was in control and the handovers."""
        return {
            "intervention_spans": spans_of(self.controllers, {Controller.HUMAN.value}),
            "control_spans": control_spans(self.controllers),
            "handovers": [
                {**asdict(h), "ticks": h.ticks} for h in self.handovers
            ],
            "takeover": {
                "handover": self.config.handover,
                "handover_speed": self.config.handover_speed,
                "align_tolerance": self.config.align_tolerance,
            },
        }

    # --- internals --------------------------------------------------------------------------------
    def _begin(self, to: Controller, step: int) -> None:
        previous = self.handovers[-1] if self.handovers else None
        if previous is not None and previous.end_step is None:
            previous.end_step = step  # a handover interrupted by the opposite request
        if to is Controller.TO_HUMAN:
            self.device.reset(None)  # start from the follower's pose (leader walk, re-anchor, re-plan)
        mode = self.config.handover if to is Controller.TO_HUMAN else "ramp"
        self.handovers.append(Handover("human" if to is Controller.TO_HUMAN else "policy", step, mode=mode))
        self.controller = to
        log.info("takeover: handing over to the %s at step %d (%s)", self.handovers[-1].to, step, mode)

    def _to_human(self, human, observation, last, step) -> np.ndarray | None:
        if self.config.handover == "ramp":
            return self._ramp(human, last, step, Controller.HUMAN)
        if human is None:
            return None  # no input yet: the arms hold
        measured = np.asarray(observation.state, dtype=np.float64)
        gap = np.abs(np.asarray(human, dtype=np.float64) - measured)
        if np.all(gap <= self.config.align_tolerance):
            self._finish(Controller.HUMAN, step)
            return self._limit(human, last)
        return None  # hold until the operator brings the device to the follower

    def _ramp(self, goal, last, step, then: Controller) -> np.ndarray | None:
        if goal is None:
            return None  # nothing to ramp toward this tick: hold
        goal = np.asarray(goal, dtype=np.float64)
        delta = goal - last
        if np.all(np.abs(delta) <= self.step_limit + 1e-12):
            self._finish(then, step)
            return goal
        return self._limit(goal, last)

    def _limit(self, goal, last) -> np.ndarray:
        return last + np.clip(np.asarray(goal, dtype=np.float64) - last, -self.step_limit, self.step_limit)

    def _finish(self, to: Controller, step: int) -> None:
        self.handovers[-1].end_step = step + 1  # this tick's command was the last limited one
        self.controller = to
        log.info("takeover: the %s is in control from step %d", to.value, step + 1)


def spans_of(controllers: list[str], which: set[str]) -> list[list[int]]:
    """[start, stop) step ranges where the per-tick controller is one of `which`."""
    spans: list[list[int]] = []
    start = None
    for i, c in enumerate(controllers):
        if c in which and start is None:
            start = i
        elif c not in which and start is not None:
            spans.append([start, i])
            start = None
    if start is not None:
        spans.append([start, len(controllers)])
    return spans


def control_spans(controllers: list[str]) -> list[list[Any]]:
    """[start, stop, controller] runs covering every tick (who was in control, compactly)."""
    out: list[list[Any]] = []
    for i, c in enumerate(controllers):
        if out and out[-1][2] == c:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1, c])
    return out


def safety_velocity_of(robot) -> np.ndarray:
    """The safety layer's speed limit per entry of the robot's action vector (rad/s)."""
    return np.concatenate([np.asarray(arm.filter.max_velocity, dtype=np.float64) for arm in robot.arms.values()])


def handover_speeds(
    commands: np.ndarray, handovers: list[dict[str, Any]], dt: float, max_velocity: np.ndarray
) -> list[float]:
    """Peak commanded joint speed during each handover, as a fraction of the safety limit.

    Looks at the commands that reached the arms (`commands`, (T, A)) on the handover's ticks,
    from the one the request arrived on to the last limited one, each against the command
    before it: no jump means this stays at or below `handover_speed`.
    """
    commands = np.asarray(commands, dtype=np.float64)
    limit = np.asarray(max_velocity, dtype=np.float64)
    peaks = []
    for h in handovers:
        start = max(1, int(h["start_step"]))
        end = len(commands) if h.get("end_step") is None else min(len(commands), int(h["end_step"]))
        if end <= start:
            peaks.append(0.0)
            continue
        speed = np.abs(np.diff(commands[start - 1 : end], axis=0)) / dt
        peaks.append(float(np.max(speed / limit)))
    return peaks


def takeover_bindings(takeover: Takeover, on_change=None) -> dict[str, tuple[str, Any]]:
    """KeyReader bindings: space toggles the takeover; `on_change(requested)` reports it."""

    def toggle() -> None:
        takeover.toggle()
        if on_change is not None:
            on_change(takeover.requested)

    return {key: ("takeover", toggle) for key in TAKEOVER_KEYS}
