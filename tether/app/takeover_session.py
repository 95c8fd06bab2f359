"""What `tether rollout --takeover DEVICE --record STORE` adds around each rollout episode.

- `--takeover DEVICE`: the operator's teleop device (leader, spacemouse, keyboard from the
  teleop factory; on the twin, `scripted`: the scripted operator that takes over when the
  object drifts, tether.app.scripted_operator). Space toggles control (a foot pedal can type
  it); handovers are speed-limited (tether.app.takeover).
- `--record STORE`: every episode goes into an episode store with who was in control per step
  (tether.app.rollout_store); a store that exists is appended to (rounds of corrections
  accumulate), after checking its rate.

The rollout loop itself does not know about either: it gets `takeover=` and `on_row=`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.app.takeover import (
    TAKEOVER_HELP,
    Takeover,
    TakeoverConfig,
    handover_speeds,
    safety_velocity_of,
    takeover_bindings,
)
from tether.core.errors import ConfigError, StoreError

SCRIPTED = "scripted"


class RolloutSession:
    """The optional takeover and recording of a `tether rollout` run."""

    def __init__(
        self,
        robot,
        robot_config,
        realtime: bool,
        takeover: str | None = None,
        takeover_params: dict[str, Any] | None = None,
        handover: str = "ramp",
        handover_speed: float = 0.25,
        record: Path | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.robot = robot
        self.say = say
        self.takeover: Takeover | None = None
        self.recorder = None
        self.store = None
        self.device = None
        self.device_name = takeover
        if takeover is not None:
            if takeover != SCRIPTED and not realtime:
                raise ConfigError(
                    f"--lockstep runs the robot faster than real time, which a person at the "
                    f"{takeover} cannot follow; drop --lockstep (only --takeover scripted runs "
                    "in lockstep)."
                )
            self.device = _make_device(takeover, robot, dict(takeover_params or {}))
            cfg = TakeoverConfig(handover=handover, handover_speed=handover_speed)
            self.takeover = Takeover(self.device, safety_velocity_of(robot), 1.0 / robot.fps, cfg)
        if record is not None:
            self.store = _open_store(Path(record), robot.fps, robot_config, say)
            from tether.app.rollout_store import RolloutRecorder

            self.recorder = RolloutRecorder(self.store, realtime=realtime)

    # --- wiring ---------------------------------------------------------------------------------
    def bindings(self) -> dict:
        """Key bindings to add to the rollout's key reader (space: take over / hand back)."""
        if self.takeover is None:
            return {}

        def said(requested: bool) -> None:
            self.say("takeover: the operator takes control" if requested
                     else "takeover: handing control back to the policy")

        return takeover_bindings(self.takeover, said)

    @property
    def legend(self) -> str:
        return f"  {TAKEOVER_HELP}" if self.takeover is not None else ""

    def episode_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of run_episode for one episode; call before each episode."""
        if self.recorder is not None:
            self.recorder.begin()
        return {
            "takeover": self.takeover,
            "on_row": self.recorder.on_row if self.recorder is not None else None,
        }

    def episode_done(self, result, summary: dict[str, Any]) -> None:
        """Commit the recorded episode; add handover speeds and the store index to `summary`."""
        if self.takeover is not None:
            peaks = handover_speeds(result.actions, result.takeover.get("handovers", []),
                                    1.0 / self.robot.fps, safety_velocity_of(self.robot))
            summary["handover_peak_speed"] = [round(p, 4) for p in peaks]
            summary["takeover_reason"] = getattr(self.device, "reason", "") or None
        if self.recorder is not None:
            extra = {"takeover_device": self.device_name}
            if summary.get("takeover_reason"):
                extra["takeover_reason"] = summary["takeover_reason"]
            summary["stored_episode"] = self.recorder.finish(result, extra)

    def abort(self) -> None:
        if self.recorder is not None:
            self.recorder.abort()

    def close(self) -> None:
        """Normalizer statistics for the store (as `tether record` does), then close it."""
        if self.store is None:
            return
        try:
            if self.store.n_episodes:
                from tether.data.stats import compute_stats

                compute_stats(self.store, save=True)
                self.say(f"recorded: {self.store.path} ({self.store.n_episodes} episodes)")
        finally:
            self.store.close()
        if self.device is not None:
            self.device.close()


def _make_device(name: str, robot, params: dict[str, Any]):
    if name == SCRIPTED:
        from tether.robot.twin.robot import TwinRobot

        if not isinstance(robot, TwinRobot):
            raise ConfigError(
                "--takeover scripted is the twin's scripted operator; on hardware take over with "
                "a device: --takeover leader | spacemouse | keyboard."
            )
        from tether.app.scripted_operator import ScriptedOperator

        device = ScriptedOperator.from_config(params, robot)
    else:
        from tether.teleop.factory import make_teleop

        device = make_teleop(name, robot, params)
    device.connect()
    return device


def _open_store(path: Path, fps: float, robot_config, say):
    from tether.core.config import to_dict
    from tether.data.store import EpisodeStore

    if path.exists():
        store = EpisodeStore.open(path, "a")
        if abs(store.fps - fps) > 1e-9:
            store.close()
            raise StoreError(f"{path} was recorded at {store.fps:g} fps but the robot runs at "
                             f"{fps:g}; record into another store or --set fps={store.fps:g}.")
        say(f"appending to {path} ({store.n_episodes} episodes so far)")
        return store
    return EpisodeStore.create(path, fps, robot_config=to_dict(robot_config))

