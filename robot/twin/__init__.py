"""The MuJoCo digital twin: arms, tasks, scripted experts and rendered cameras.

Importing this package is cheap: MuJoCo loads on first use of `make_twin_robot`, `TwinRobot`,
`make_env` and friends. It needs the `twin` extra, though: on a robot computer's slim install,
importing it (or `make_robot("twin:...")`) raises MissingExtraError naming `tether[twin]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.core.optional import require_extra
from tether.robot.twin.render import configure_backend

# Before any submodule imports mujoco (see render.py); a user's own MUJOCO_GL wins.
configure_backend()

if TYPE_CHECKING:  # pragma: no cover
    from tether.robot.config import RobotConfig
    from tether.robot.twin.robot import TwinRobot

# Every module of the twin needs MuJoCo: without the `twin` extra (a robot computer's slim
# install), importing any of them raises one MissingExtraError naming it. Checks only that the
# packages are installed; MuJoCo itself still loads on first use.
require_extra(__name__, "twin")

__all__ = ["TASKS", "TwinRobot", "make_env", "make_twin_robot", "task_names"]

_LAZY = {
    "TwinRobot": "tether.robot.twin.robot",
    "TwinParams": "tether.robot.twin.robot",
    "TwinArm": "tether.robot.twin.devices",
    "TwinCamera": "tether.robot.twin.devices",
    "TASKS": "tether.robot.twin.tasks",
    "ScriptedExpert": "tether.robot.twin.expert",
}


def make_twin_robot(config: RobotConfig) -> TwinRobot:
    """Build (not connect) the twin for `config.twin_task` with `config.twin_params`."""
    from tether.robot.twin.robot import make_twin_robot as build

    return build(config)


def make_env(task: str, **kwargs: Any):
    """A gymnasium.Env of a twin task; see tether.robot.twin.env.TwinEnv for the options."""
    from tether.robot.twin.env import TwinEnv

    return TwinEnv(task, **kwargs)


def task_names() -> list[str]:
    """Names of the twin's tasks (without importing MuJoCo)."""
    return ["insertion", "lift", "transfer_cube"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tether.robot.twin' has no attribute '{name}'")
