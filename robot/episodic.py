"""EpisodicRobot: the episode API of a robot that has episodes (the twin), as one Protocol.

Hardware has no episodes: nobody can put the cube back from code. The twin does: `reset(seed)`
places the objects, and it can tell whether the task is done. Loops that run episodes (record,
rollout, eval) ask `as_episodic(robot)` once and branch on None, instead of probing for
attribute names one by one.

Two success signals, not one under two names:
- `is_success()`: the task's check on the state right now (a per-step signal, e.g. the cube is
  above the table this instant);
- `succeeded`: success has held for the task's hold time at some point of this episode (what
  an episode's outcome is judged on; it latches).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tether.robot.interfaces import Observation


@runtime_checkable
class EpisodicRobot(Protocol):
    """A robot with seeded episodes and a success check (TwinRobot implements it)."""

    def reset(self, seed: int) -> Observation:
        """Start an episode from `seed` (connecting if needed); returns its first observation."""
        ...

    def is_success(self) -> bool:
        """The task's success check on the current state."""
        ...

    @property
    def succeeded(self) -> bool:
        """True once success has held for the task's hold time during this episode."""
        ...

    @property
    def max_steps(self) -> int:
        """The task's episode length in control ticks at the robot's rate."""
        ...

    @property
    def steps(self) -> int:
        """Control ticks since the last reset."""
        ...


def as_episodic(robot: object) -> EpisodicRobot | None:
    """`robot` as an EpisodicRobot, or None for a robot without episodes (hardware)."""
    return robot if isinstance(robot, EpisodicRobot) else None


def episode_ended(robot: object) -> bool:
    """True once the robot ended its episode itself (a gymnasium env that terminated or was
    truncated, tether.robot.gym_robot); the twin's episodes end only by the loop's step count."""
    return bool(getattr(robot, "episode_ended", False))
