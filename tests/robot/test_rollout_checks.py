"""`tether rollout` safety and identity checks on the twin: the policy's rate, --resample,
lockstep only on simulated robots, the stale-target watchdog, the e-stop key, plain progress."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tether.app.commands.rollout import _PlainProgress
from tether.app.rollout import LocalSource, RolloutConfig, resample_chunk, run_episode
from tether.cli import build_app
from tether.policies.base import Policy
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import WaypointPolicy, observation_specs_for
from tether.robot.factory import make_robot

NO_CAMERAS = ["--set", "twin_params.cameras=[]"]
STALE_AFTER_S = 0.25  # SafetyConfig's default
runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    return build_app()


@pytest.fixture(scope="module")
def twin():
    return make_robot("twin:lift", ["twin_params.cameras=[]"])


def waypoint(robot, fps: float, speed: float = 0.3, chunk_size: int = 10) -> WaypointPolicy:
    goal = robot.home + np.array([0.8, 0.5, -0.5, -0.5, 0.5, 0.0])
    return WaypointPolicy(
        observation_specs_for(robot), goal, speed=speed, chunk_size=chunk_size, fps=fps
    )


def _tether(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """The real CLI in a subprocess with stdout and stderr piped (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, "MUJOCO_GL": "egl", "COLUMNS": "200"},
    )


# --- the policy's rate ------------------------------------------------------------------------


def test_a_policy_at_another_rate_is_refused_naming_both(app, twin):
    policy = waypoint(twin, fps=10.0)
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        result = runner.invoke(app, ["rollout", "--server", server.endpoint, "--max-steps", "5",
                                     *NO_CAMERAS])  # fmt: skip
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "10 fps" in text and "30 fps" in text and "--resample" in text
    assert "Traceback" not in result.output


def test_resample_runs_it_through_the_cli(app, twin, tmp_path):
    policy = waypoint(twin, fps=10.0)
    out = tmp_path / "r.json"
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        result = runner.invoke(app, ["rollout", "--server", server.endpoint, "--max-steps", "30",
                                     "--lockstep", "--resample", "--blend", "switch",
                                     "--json", str(out), *NO_CAMERAS])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())[0]
    assert summary["length"] == 30 and summary["held_ticks"] == 0 and summary["chunks"] >= 1


def test_resampled_chunks_play_at_the_policy_speed(twin):
    speed = 0.3  # rad/s, planned by a 10 fps policy and executed at 30 fps
    policy = waypoint(twin, fps=10.0, speed=speed, chunk_size=40)  # one 4 s chunk
    config = RolloutConfig(
        max_steps=31, realtime=False, blend="switch", request_threshold=0, resample=True
    )
    result = run_episode(twin, policy, config, seed=0)
    assert result.chunks == 1
    travelled = np.abs(result.targets[30] - result.targets[0]).max()  # one second of ticks
    assert travelled == pytest.approx(speed, abs=1e-3)  # not 3x (rows played at robot rate)


def test_resample_chunk_interpolates_over_the_chunk_span():
    chunk = np.arange(5, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], dtype=np.float32)
    up = resample_chunk(chunk, policy_fps=10.0, robot_fps=30.0)
    assert up.shape == (15, 2)
    np.testing.assert_allclose(up[:13, 0], np.arange(13) / 3.0, atol=1e-6)  # linear in time
    np.testing.assert_allclose(up[12:, 0], 4.0)  # the last row held for its own period
    down = resample_chunk(chunk, policy_fps=30.0, robot_fps=10.0)
    np.testing.assert_allclose(down[:, 1], [0.0, -6.0])
    assert resample_chunk(chunk, 30.0, 30.0) is not None


# --- lockstep only where time is simulated ----------------------------------------------------


def test_lockstep_is_refused_on_a_real_time_robot(app, tmp_path):
    config = tmp_path / "memory.yaml"
    config.write_text(yaml.safe_dump({"name": "mem", "arms": [{"name": "main", "driver": "memory"}]}))
    result = runner.invoke(app, ["rollout", "--robot", str(config), "--policy", "simple:hold",
                                 "--lockstep", "--max-steps", "5"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--lockstep" in result.output and "real time" in result.output


class _DropsEveryOther(LocalSource):
    """An in-process source that leaves every other request unanswered (a lost reply)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy, None)
        self.requests = 0

    def request(self, observation, step, wait_s=0.0):
        self.requests += 1
        if self.requests % 2 == 1:
            super().request(observation, step, wait_s)


def test_lockstep_rollout_ticks_are_one_control_period_each_holds_included(twin):
    """In lockstep the twin's simulated time advances by exactly 1/fps per executed tick,
    whether the tick ran an action or held (no chunk covered it)."""
    source = _DropsEveryOther(waypoint(twin, fps=twin.fps, chunk_size=4))
    sim_times: list[float] = []
    config = RolloutConfig(max_steps=40, realtime=False, blend="switch", request_threshold=0,
                           stop_on_success=False)
    result = run_episode(twin, source, config, seed=0,
                         on_progress=lambda step, total: sim_times.append(twin.sim_time))
    assert result.length == 40 and twin.steps == 40
    assert 0 < result.held.sum() < 40, result.held  # some ticks held, most acted
    np.testing.assert_allclose(sim_times, (np.arange(40) + 1) / twin.fps, rtol=0, atol=1e-9)


# --- the watchdog -----------------------------------------------------------------------------


class _SilentAfter(Policy):
    """Answers `answers` requests, then never again until `release` is set (a hung GPU)."""

    def __init__(self, inner: Policy, answers: int) -> None:
        super().__init__()
        self.inner, self.spec, self.answers, self.calls = inner, inner.spec, answers, 0
        self.release = threading.Event()

    def reset(self) -> None:
        self.inner.reset()

    def _predict_chunk(self, observation, **options):
        self.calls += 1
        if self.calls > self.answers:
            self.release.wait(30.0)
        return self.inner.predict_chunk(observation, **options)


def test_a_policy_that_goes_silent_makes_the_arm_hold_within_stale_after_s(app, twin, tmp_path):
    policy = _SilentAfter(waypoint(twin, fps=twin.fps), answers=2)
    out = tmp_path / "silent.json"
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        try:
            result = runner.invoke(app, ["rollout", "--server", server.endpoint, "--max-steps",
                                         "45", "--blend", "switch", "--threshold", "5",
                                         "--timeout", "0.3", "--json", str(out), *NO_CAMERAS])  # fmt: skip
        finally:
            policy.release.set()
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())[0]
    watchdog = summary["safety"].get("watchdog_hold", 0)
    assert summary["held_ticks"] > 0 and watchdog > 0, summary
    # every tick without an action after the first stale_after_s (+ one tick) was a watchdog hold
    assert summary["held_ticks"] - watchdog <= math.floor(STALE_AFTER_S * twin.fps) + 1, summary


# --- the e-stop key and plain progress --------------------------------------------------------


def test_rollout_e_key_latches_the_estop_and_progress_is_plain_when_piped(tmp_path):
    out = tmp_path / "e.json"
    result = _tether("rollout", "--policy", "simple:waypoint", "--lockstep", "--max-steps", "60",
                     "--episodes", "2", "--keyboard", "--json", str(out), *NO_CAMERAS,
                     stdin=b"e")  # fmt: skip
    stdout = result.stdout.decode()
    assert result.returncode == 0, stdout + result.stderr.decode()
    assert "[e] E-STOP" in stdout and "E-STOP latched" in stdout
    assert "episode 1/2 (seed 0)" in stdout and "episode 2/2 (seed 1)" in stdout
    first, second = json.loads(out.read_text())
    assert first["safety"]["estop_hold"] > 0
    assert second["safety"]["estop_hold"] == second["length"]  # still latched: never released


def test_plain_rollout_progress_is_rate_limited():
    now = [0.0]
    lines: list[str] = []
    progress = _PlainProgress(1, lines.append, interval_s=5.0, clock=lambda: now[0])
    on_step = progress.step_callback(0)
    for step in range(300):  # 10 s at 30 Hz
        now[0] = step / 30
        on_step(step, 300)
    assert len(lines) == 1 and lines[0].startswith("episode 1/1: step")


def test_evaluation_refuses_a_robot_without_episodes():
    from tether.app.eval.config import EvalConfig
    from tether.app.eval.worker import run_episodes
    from tether.core.errors import ConfigError
    from tether.policies.simple import IdentityPolicy
    from tether.robot.interfaces import Robot
    from tether.robot.memory import MemoryArm

    robot = Robot({"arm": MemoryArm()}, name="bench-arm")
    policy = IdentityPolicy(observation_specs_for(robot), robot.action_dim, fps=robot.fps)
    with pytest.raises(ConfigError, match="bench-arm.*twin"):
        next(run_episodes(robot, policy, [0], EvalConfig(policy="scripted")))
