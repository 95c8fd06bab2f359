"""Perturbations for evaluation on the twin: push the task's object in the middle of an episode.

A policy that replans from fresh observations should recover from a pushed object; one that
executes long open-loop chunks reacts later. `--push 15:0.03` moves the object 3 cm sideways,
toward the middle of the table (so it stays where the demonstrations put objects), right after
control step 15, and stops it. The push goes through the episode's `on_progress` hook, the one
place the rollout calls back every tick, so the loop itself knows nothing about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tether.core.errors import ConfigError


@dataclass(frozen=True)
class Push:
    step: int  # control step after which the object moves
    distance_m: float  # sideways (y), toward y = 0

    @classmethod
    def parse(cls, text: str) -> Push:
        """'STEP:METERS', e.g. '15:0.03'."""
        try:
            step, distance = text.split(":")
            push = cls(int(step), float(distance))
        except ValueError:
            push = None
        if push is None or push.step < 0 or not 0 < push.distance_m < 0.5:
            raise ConfigError(f"--push takes STEP:METERS (a step >= 0, 0 < meters < 0.5), e.g. "
                              f"15:0.03, got '{text}'")
        return push


def push_hook(robot, push: Push) -> Callable[[int, int], None]:
    """An `on_progress(step, max_steps)` callback that pushes the object once per episode."""
    sim = getattr(robot, "sim", None)
    if sim is None:
        raise ConfigError(f"--push needs the twin (it moves a simulated object); "
                          f"'{getattr(robot, 'name', robot)}' is not one")
    joint = _free_joint(sim)

    def on_progress(step: int, max_steps: int) -> None:
        if step == push.step:
            move_sideways(sim, joint, push.distance_m)

    return on_progress


def move_sideways(sim, jid: int, distance_m: float) -> None:
    """Shift the body of free joint `jid` by `distance_m` in y toward y = 0 and stop it."""
    import mujoco

    qadr, vadr = int(sim.model.jnt_qposadr[jid]), int(sim.model.jnt_dofadr[jid])
    with sim.lock:
        y = float(sim.data.qpos[qadr + 1])
        sim.data.qpos[qadr + 1] = y - distance_m if y > 0 else y + distance_m
        sim.data.qvel[vadr: vadr + 6] = 0.0
        mujoco.mj_forward(sim.model, sim.data)


def _free_joint(sim) -> int:
    """The free joint of the task's first free-floating body (lift's cube, insertion's peg)."""
    import mujoco

    m = sim.model
    for j in range(m.njnt):
        if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            return j
    raise ConfigError("--push: this twin task has no free object to push")
