"""A gymnasium wrapper around TwinRobot, for people who want the familiar env API.

Observations are the recorder's arrays (`state`, `image.<camera>`), actions are joint targets
(radians, gripper normalized 0-1) that pass through the same safety layer as on hardware.
Reward is the per-step success signal (1.0 while the task is achieved); an episode terminates
once success has held for the task's hold time (unless `terminate_on_success=False`) and is
truncated after the task's episode length.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from tether.robot.config import RobotConfig
from tether.robot.interfaces import STATE_KEY, image_key
from tether.robot.safety import SafetyConfig
from tether.robot.twin.robot import TwinRobot, make_twin_robot

# Measured positions can overshoot a limit a little (soft joint limits, grasp contacts).
_STATE_MARGIN = 0.5


class TwinEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        task: str,
        cameras: list[str] | None = None,
        width: int = 320,
        height: int = 240,
        fps: float = 50.0,
        render_mode: str | None = None,
        terminate_on_success: bool = True,
        max_step: float | None = None,
        max_velocity: float | None = None,
        **twin_params: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        params = dict(twin_params, width=width, height=height)
        if cameras is not None:
            params["cameras"] = list(cameras)
        # max_velocity: joint speed limit per simulated second (default: the twin arms' own);
        # max_step: an optional extra cap per step.
        safety = SafetyConfig(max_step=max_step, max_velocity=max_velocity)
        config = RobotConfig(
            name=f"twin-{task}", fps=fps, twin_task=task, twin_params=params, safety=safety
        )
        self.robot: TwinRobot = make_twin_robot(config)
        self.robot.connect()
        self.render_mode = render_mode
        self.terminate_on_success = terminate_on_success
        self.metadata = dict(self.metadata, render_fps=fps)
        lower, upper = self.robot.lower, self.robot.upper
        self.action_space = spaces.Box(lower.astype(np.float32), upper.astype(np.float32))
        obs_spaces: dict[str, spaces.Space] = {
            STATE_KEY: spaces.Box(
                (lower - _STATE_MARGIN).astype(np.float32), (upper + _STATE_MARGIN).astype(np.float32)
            )
        }
        for name, cam in self.robot.cameras.items():
            obs_spaces[image_key(name)] = spaces.Box(
                0, 255, (cam.spec.height, cam.spec.width, 3), dtype=np.uint8
            )
        self.observation_space = spaces.Dict(obs_spaces)
        self._render_camera = None

    @property
    def task(self):
        return self.robot.task

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        observation = self.robot.reset(episode_seed)
        return self._arrays(observation), self._info()

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape}, got {action.shape}"
            )
        self.robot.act(action)
        observation = self.robot.observe()
        success = self.robot.is_success()
        terminated = bool(self.terminate_on_success and self.robot.succeeded)
        truncated = bool(self.robot.steps >= self.robot.max_steps and not terminated)
        return self._arrays(observation), float(success), terminated, truncated, self._info(success)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self.robot.cameras:
            return next(iter(self.robot.cameras.values())).read().image
        if self._render_camera is None:
            from tether.robot.interfaces import CameraSpec
            from tether.robot.twin.devices import TwinCamera

            self._render_camera = TwinCamera(
                self.robot.sim, CameraSpec("top", 320, 240, self.robot.fps)
            )
            self._render_camera.connect()
        self._render_camera.restart()
        return self._render_camera.read().image

    def close(self) -> None:
        if self._render_camera is not None:
            self._render_camera.close()
            self._render_camera = None
        self.robot.close()

    def _arrays(self, observation) -> dict[str, np.ndarray]:
        arrays = observation.to_arrays()
        arrays[STATE_KEY] = np.clip(
            arrays[STATE_KEY],
            self.observation_space[STATE_KEY].low,
            self.observation_space[STATE_KEY].high,
        )
        return arrays

    def _info(self, success: bool | None = None) -> dict[str, Any]:
        return {
            "is_success": self.robot.is_success() if success is None else success,
            "sim_time": self.robot.sim_time,
            "steps": self.robot.steps,
        }


ENV_IDS = {
    "tether/TwinLift-v0": "lift",
    "tether/TwinInsertion-v0": "insertion",
    "tether/TwinTransferCube-v0": "transfer_cube",
}


def register_envs() -> None:
    """Register the twin tasks with gymnasium (`gym.make("tether/TwinLift-v0")`)."""
    for env_id, task in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=TwinEnv, kwargs={"task": task})


register_envs()
