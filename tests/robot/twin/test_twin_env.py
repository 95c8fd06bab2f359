"""The gymnasium wrapper: env checker, spaces, determinism, success reward."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from tether.core.errors import ConfigError
from tether.robot.twin import make_env
from tether.robot.twin.env import ENV_IDS
from tether.robot.twin.expert import ScriptedExpert


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(task="lift", width=64, height=48),
        dict(task="transfer_cube", cameras=[], render_mode="rgb_array"),
    ],
)
def test_env_passes_gymnasiums_checker(kwargs):
    env = make_env(**kwargs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # style advice (normalized boxes) is not a failure
            check_env(env, skip_render_check=False)
    finally:
        env.close()


def test_spaces_match_the_robot():
    env = make_env("lift", cameras=["top", "wrist"], width=64, height=48)
    try:
        assert env.action_space.shape == (6,)
        assert set(env.observation_space.spaces) == {"state", "image.top", "image.wrist"}
        assert env.observation_space["image.wrist"].shape == (48, 64, 3)
        obs, info = env.reset(seed=1)
        assert env.observation_space.contains(obs)
        assert info["is_success"] is False
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(3))
    finally:
        env.close()


def test_reset_with_a_seed_is_reproducible_and_the_expert_earns_reward():
    env = make_env("lift", cameras=[])
    try:
        a, _ = env.reset(seed=42)
        b, _ = env.reset(seed=42)
        np.testing.assert_array_equal(a["state"], b["state"])
        expert = ScriptedExpert(env.unwrapped.robot)
        expert.reset(0)
        total, terminated, truncated = 0.0, False, False
        while not (terminated or truncated):
            _, reward, terminated, truncated, info = env.step(expert.next_target(None))
            total += reward
        assert terminated and not truncated and info["is_success"]
        assert total >= 0.5 * 50 - 1  # success held for the task's 0.5 s hold time
    finally:
        env.close()


def test_registered_ids_make_envs():
    assert "tether/TwinLift-v0" in ENV_IDS
    env = gym.make("tether/TwinLift-v0", cameras=[])
    try:
        obs, _ = env.reset(seed=0)
        assert obs["state"].shape == (6,)
    finally:
        env.close()


def test_unknown_task_is_a_config_error():
    with pytest.raises(ConfigError, match="Unknown twin task"):
        make_env("juggle")
