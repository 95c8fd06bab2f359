"""A gymnasium env as an evaluation target: `tether eval --env <id> --obs-map cfg.yaml`. Layer: app.

Makes the env (`gymnasium.make`, registering tether's own twin envs first when the id is
`tether/...`), reads the obs-map file, and wraps both in tether.robot.gym_robot.GymRobot, which
the evaluation worker then drives exactly like the twin: same rollout client, same report.

The twin's scripted expert can drive a tether twin env too (`--policy scripted`): it reads the
privileged simulation state of the TwinRobot inside the env.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tether.core.config import load_mapping
from tether.core.errors import ConfigError
from tether.core.optional import require
from tether.core.schema import PolicySpec
from tether.robot.gym_robot import GymRobot, ObsMap

TETHER_PREFIX = "tether/"


def load_obs_map(path: str | Path | None) -> ObsMap:
    """The obs-map file (YAML/TOML/JSON); no file maps the whole observation to `state`."""
    if path is None:
        return ObsMap.from_mapping({"state": ["obs"]})
    return ObsMap.from_mapping(load_mapping(path), source=f"obs-map {path}")


def make_gym_robot(env_id: str | None, obs_map: ObsMap, spec: PolicySpec | None = None,
                   max_steps: int | None = None) -> GymRobot:
    """GymRobot over `gymnasium.make(env_id, **make_kwargs)`; its rate defaults to the policy's."""
    gym = require("gymnasium", "twin", "to evaluate on gymnasium envs")
    env_id = env_id or obs_map.env
    if not env_id:
        raise ConfigError("no gymnasium env given: pass --env <id> (e.g. Pendulum-v1) or set 'env' "
                          "in the obs-map.")
    if env_id.startswith(TETHER_PREFIX):
        import tether.robot.twin.env  # noqa: F401  (registers tether/Twin*-v0)
    kwargs: dict[str, Any] = dict(obs_map.make_kwargs)
    if obs_map.uses_render:
        kwargs.setdefault("render_mode", "rgb_array")
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise ConfigError(f"gymnasium cannot make '{env_id}': {exc}. Check the id (`python -c "
                          "\"import gymnasium; gymnasium.pprint_registry()\"`) and the obs-map's "
                          "make_kwargs.") from exc
    if env_id.startswith(TETHER_PREFIX) and not (max_steps or obs_map.max_steps):
        max_steps = env.unwrapped.robot.max_steps  # the twin task's own episode length
    try:
        return GymRobot(env, obs_map, fps=None if spec is None else float(spec.fps),
                        max_steps=max_steps)
    except BaseException:
        env.close()
        raise


def twin_robot_in(robot: GymRobot):
    """The TwinRobot inside a tether twin env (for the scripted expert), or a clear error."""
    inner = getattr(getattr(robot.env, "unwrapped", None), "robot", None)
    if inner is None or not hasattr(inner, "sim"):
        raise ConfigError(f"--policy scripted needs a tether twin env (tether/TwinLift-v0, ...); "
                          f"'{robot.name}' has no scripted expert. Pass --checkpoint or --server.")
    return inner
