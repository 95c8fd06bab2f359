"""`tether eval --env <gymnasium id> --obs-map cfg.yaml`: any gymnasium env as an evaluation target.

The env runs behind tether.robot.gym_robot.GymRobot through the same rollout client and report as
the twin: gymnasium's own CartPole-v1 (Discrete actions) and Pendulum-v1 (Box actions, clipped)
driven by served policies, and tether's registered tether/TwinLift-v0 driven by the twin's
scripted expert with its camera and render() output mapped to policy cameras.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.app.eval.gym_target import load_obs_map, make_gym_robot
from tether.app.eval.records import EpisodeRecord
from tether.app.eval.runner import EvalConfig, evaluate
from tether.app.eval.worker import _gym_target, run_episodes
from tether.app.rollout import RolloutConfig, run_episode
from tether.cli import build_app
from tether.core.errors import ConfigError, PolicyError, TetherError
from tether.core.schema import ArraySpec, PolicySpec
from tether.policies.base import Policy
from tether.policies.server import PolicyServer, ServerConfig
from tether.robot.episodic import as_episodic
from tether.robot.gym_robot import ObsMap

gymnasium = pytest.importorskip("gymnasium")
runner = CliRunner()


class CartPoleBalancer(Policy):
    """Push the cart under the pole (a linear rule); `push` >= 0 always pushes one way instead."""

    def __init__(self, push: float | None = None, action_dim: int = 1) -> None:
        super().__init__()
        self.push = push
        self.spec = PolicySpec(policy_type="balancer", observation=(ArraySpec("state", "float32", (4,)),),
                               action_dim=action_dim, chunk_size=1, fps=50.0)

    def reset(self) -> None:
        pass

    def _predict_chunk(self, observation, **options) -> np.ndarray:
        x, v, theta, omega = (float(a) for a in observation["state"])
        action = self.push if self.push is not None else float(theta + 0.5 * omega + 0.01 * x + 0.1 * v > 0)
        return np.full((1, self.spec.action_dim), action, np.float32)


class PendulumSwingUp(Policy):
    """Energy pumping, then PD at the top; asks for up to 10 N m (the env takes 2: clipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = PolicySpec(policy_type="swingup", observation=(ArraySpec("state", "float32", (3,)),),
                               action_dim=1, chunk_size=1, fps=20.0)

    def reset(self) -> None:
        pass

    def _predict_chunk(self, observation, **options) -> np.ndarray:
        c, s, w = (float(a) for a in observation["state"])
        if c > 0.85:
            u = -(10 * np.arctan2(s, c) + 2 * w)
        else:
            u = 2.0 * np.sign(w or 1.0) if 0.5 * w * w + 15 * (c - 1) < 0 else -0.5 * np.sign(w)
        return np.array([[u]], np.float32)


def write(path, text):
    path.write_text(text)
    return path


def read_csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def cartpole_map(tmp_path):
    return write(tmp_path / "cartpole.yaml", "env: CartPole-v1\nstate: [obs]\nmax_steps: 50\n"
                                             "success: {return_at_least: 40}\n")


def test_served_policy_on_cartpole_same_seeds_same_report(tmp_path, cartpole_map):
    """A policy server evaluated on gymnasium's CartPole: success by return, per-episode returns
    in the report, the same seeds give the same results, and a failing policy's episodes end
    where gymnasium terminates them."""
    out = tmp_path / "report"
    with PolicyServer(CartPoleBalancer(), ServerConfig("tcp://127.0.0.1:0")) as server:
        result = runner.invoke(build_app(), [
            "eval", "--obs-map", str(cartpole_map), "--server", server.endpoint, "--episodes", "2",
            "--workers", "0", "--seed", "7", "--out", str(out), "--videos", "0", "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        config = EvalConfig(obs_map=str(cartpole_map), server=server.endpoint, episodes=2, seed=7)
        again = list(gym_records(config, server.endpoint))
    assert summary["task"] == "CartPole-v1" and summary["seeds"] == [7, 8]
    assert summary["successes"] == 2 and summary["episode_return"]["mean"] == 50.0
    assert json.loads((out / "summary.json").read_text())["episode_return"]["max"] == 50.0
    rows = read_csv(out / "episodes.csv")
    assert [(r["success"], r["length"], r["return"]) for r in rows] == [("1", "50", "50")] * 2
    first = [EpisodeRecord.load(p) for p in sorted((out / "episodes").glob("*.json"))]
    for a, b in zip(first, again):  # same seeds -> same episodes, action for action
        assert (a.seed, a.success, a.length, a.episode_return) == (b.seed, b.success, b.length, b.episode_return)
        assert np.array_equal(a.actions, b.actions) and np.array_equal(a.joints, b.joints)

    # Always pushing right drops the pole: gymnasium terminates, the rollout stops there.
    with PolicyServer(CartPoleBalancer(push=1.0), ServerConfig("tcp://127.0.0.1:0")) as server:
        bad = list(gym_records(config, server.endpoint))
    assert [r.success for r in bad] == [False, False]
    assert all(5 <= r.length < 40 and r.episode_return == r.length for r in bad)  # 1 per step


def gym_records(config: EvalConfig, endpoint: str):
    """The evaluation worker's episode loop on the config's env, without writing a report."""
    robot, client = _gym_target(replace(config, server=endpoint))
    try:
        with robot:
            yield from run_episodes(robot, client, config.seeds(), config)
    finally:
        client.close()


def test_box_actions_are_clipped_to_the_action_space_and_counted(tmp_path):
    obs_map = ObsMap.from_mapping({"state": ["obs"], "max_steps": 60,
                                   "success": {"reward_at_least": -0.05}})
    policy = PendulumSwingUp()
    robot = make_gym_robot("Pendulum-v1", obs_map, policy.spec)
    results = []
    with robot:
        for seed in (1, 2, 1):
            result = run_episode(robot, policy, RolloutConfig(realtime=False), seed=seed)
            results.append((result.success, result.length, robot.episode_return, result.actions.copy()))
            assert np.all(np.abs(result.actions) <= 2.0)  # Pendulum's torque limit
            assert result.joints.shape == (result.length, 3)  # the state vector, not the action's size
    assert results[0][0] and results[0][1] < 60
    assert results[0][:3] == results[2][:3] and np.array_equal(results[0][3], results[2][3])
    assert robot.safety_counts()["clipped"] > 0


def test_twin_env_with_camera_and_render(tmp_path):
    """tether's own registered gymnasium env, its camera and its render() output as two policy
    cameras, driven by the twin's scripted expert; success is the env's info["is_success"]."""
    obs_map = write(tmp_path / "lift.yaml", """
make_kwargs: {cameras: [top], width: 64, height: 48}
state: [state]
cameras:
  top: image.top
  overview: {key: render, size: [24, 32]}
""")
    config = EvalConfig(env="tether/TwinLift-v0", obs_map=str(obs_map), policy="scripted",
                        episodes=1, videos=1)
    robot, expert = _gym_target(config)
    with robot:
        assert as_episodic(robot) is robot and robot.max_steps == 400  # the twin task's length
        frames = robot.reset(3).frames
        assert frames["top"].image.shape == (48, 64, 3) and frames["overview"].image.shape == (24, 32, 3)
        (record,) = run_episodes(robot, expert, config.seeds(), config, video_dir=tmp_path)
    assert record.success and record.episode_return is not None
    # The env terminates once success has held for the task's hold time, after the first success.
    assert record.first_success_step < record.length < record.max_steps
    assert record.video.endswith("_top.webm") and (tmp_path / record.video).stat().st_size > 1000


def test_shapes_that_cannot_match_are_refused_with_the_fix(tmp_path, cartpole_map):
    wide = CartPoleBalancer(action_dim=2)
    robot = make_gym_robot(None, load_obs_map(cartpole_map), wide.spec)
    with robot:
        with pytest.raises(PolicyError, match="outputs 2 actions per step, the robot takes 1"):
            run_episode(robot, wide, RolloutConfig(realtime=False), seed=0)
        with pytest.raises(ConfigError, match="takes an action of 1 values"):
            robot.act(np.zeros(2))
    bad_key = ObsMap.from_mapping({"state": ["position"], "max_steps": 5})
    with pytest.raises(ConfigError, match="no key 'position'.*use 'obs'"):
        make_gym_robot("CartPole-v1", bad_key)
    with pytest.raises(ConfigError, match="unknown key"):
        ObsMap.from_mapping({"state": ["obs"], "camera": {}})
    with pytest.raises(ConfigError, match="render"):
        make_gym_robot("CartPole-v1", ObsMap.from_mapping({"cameras": {"top": "obs"}, "max_steps": 5}))
    result = runner.invoke(build_app(), ["eval", "--env", "CartPole-v1", "--obs-map",
                                         str(tmp_path / "missing.yaml"), "--policy", "scripted"])
    assert result.exit_code != 0 and "missing.yaml does not exist" in result.output
    config = EvalConfig(env="CartPole-v1", obs_map=str(cartpole_map), policy="scripted", workers=0,
                        episodes=1, out=str(tmp_path / "scripted"))
    with pytest.raises(TetherError, match="needs a tether twin env"):
        evaluate(config, show_progress=False)


class PixelBalancer(CartPoleBalancer):
    """The balancer, also asking for a camera (it reads the state; the pixels must arrive)."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = PolicySpec(policy_type="pixels", action_dim=1, chunk_size=1, fps=50.0, observation=(
            ArraySpec("state", "float32", (4,)), ArraySpec("image.front", "uint8", (100, 150, 3))))
        self.seen: list[np.ndarray] = []

    def _predict_chunk(self, observation, **options) -> np.ndarray:
        self.seen.append(observation["image.front"].copy())
        return super()._predict_chunk(observation, **options)


def test_cartpole_rendered_to_pixels_is_a_camera():
    """An outside env's render() output (gymnasium classic-control, drawn by pygame) reaches the
    policy as image.front at the obs-map's size, and the same seed gives the same pixels."""
    pytest.importorskip("pygame")  # tether[twin] installs it
    obs_map = ObsMap.from_mapping({"state": ["obs"], "max_steps": 15,
                                   "cameras": {"front": {"key": "render", "size": [100, 150]}}})
    policy = PixelBalancer()
    robot = make_gym_robot("CartPole-v1", obs_map, policy.spec)
    runs = []
    with robot:
        for _ in range(2):
            policy.seen.clear()
            result = run_episode(robot, policy, RolloutConfig(realtime=False, record_frames=True), seed=5)
            runs.append(np.stack(policy.seen))
            assert result.length == 15 and len(result.frames["front"]) == 15
    first, second = runs
    assert first.shape[1:] == (100, 150, 3) and first.dtype == np.uint8
    assert np.array_equal(first, second)
    assert first.std() > 5 and len({f.tobytes() for f in first}) > 1  # a picture that moves
