"""The rollout loop on the MuJoCo twin: in-process and through the server, chunk alignment,
and the watchdog against a server that stalls or dies mid-rollout."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from tether.app.rollout import RolloutConfig, run_episode
from tether.core.errors import PolicyError, TetherError
from tether.core.schema import ArraySpec
from tether.policies.base import Policy
from tether.policies.client import PolicyClient
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import IdentityPolicy, SlowPolicy, WaypointPolicy, observation_specs_for
from tether.robot.factory import make_robot

FPS = 50.0
DELTA = np.array([0.3, 0.2, -0.2, -0.2, 0.2, -0.5])


@pytest.fixture(scope="module")
def robot():
    twin = make_robot("twin:lift", ["fps=50"])
    with twin:
        yield twin


def waypoint(robot, speed=1.0, chunk_size=20) -> WaypointPolicy:
    goal = robot.home + DELTA
    return WaypointPolicy(
        observation_specs_for(robot), goal, speed=speed, chunk_size=chunk_size, fps=FPS
    )


class StallingPolicy(Policy):
    """Wraps a policy; its `stall_at`-th call blocks for `stall_s` (a stalled GPU, a GC pause)."""

    def __init__(self, inner: Policy, stall_at: int, stall_s: float) -> None:
        super().__init__()
        self.inner, self.spec = inner, inner.spec
        self.stall_at, self.stall_s, self.calls = stall_at, stall_s, 0

    def reset(self) -> None:
        self.calls = 0

    def _predict_chunk(self, observation, **options):
        self.calls += 1
        if self.calls == self.stall_at:
            time.sleep(self.stall_s)
        return self.inner.predict_chunk(observation, **options)


def _reached_goal(result, robot, tol=0.02) -> bool:
    return bool(np.abs(result.joints[-1] - (robot.home + DELTA)).max() < tol)


def _held_commands_are_constant(result) -> None:
    held = np.flatnonzero(result.held)
    assert held.size > 0
    for i in held:
        np.testing.assert_array_equal(
            result.actions[i], result.actions[held[0] - 1 if i == held[0] else i - 1]
        )


# --- in-process ------------------------------------------------------------------------------


def test_in_process_lockstep_reaches_the_goal_and_is_deterministic(robot):
    config = RolloutConfig(max_steps=60, realtime=False)
    first = run_episode(robot, waypoint(robot), config, seed=3)
    second = run_episode(robot, waypoint(robot), config, seed=3)
    assert first.length == 60 and first.actions.shape == (60, 6) and first.joints.shape == (60, 6)
    assert _reached_goal(first, robot)
    assert first.stalls == 0 and not first.held.any() and first.dropped_actions == 0
    assert first.success is False  # a waypoint does not lift the cube
    np.testing.assert_array_equal(first.actions, second.actions)


def test_a_policy_that_does_not_fit_the_robot_is_refused_before_anything_moves(robot):
    wrong = IdentityPolicy(
        (ArraySpec("state", "float32", (6,)), ArraySpec("image.top", "uint8", (480, 640, 3))), 6
    )
    steps_before = robot.steps
    with pytest.raises(PolicyError, match=r"image.top.*\(480, 640, 3\).*\(240, 320, 3\)"):
        run_episode(robot, wrong, RolloutConfig(max_steps=10, realtime=False))
    assert robot.steps == steps_before


# --- through the server ----------------------------------------------------------------------


@pytest.mark.realtime  # no stall needs each chunk within its 200 ms budget on a loaded host
@pytest.mark.parametrize("blend", ["ensemble", "switch"])
def test_full_rollout_through_the_server_in_real_time(robot, blend, check_tick_accounting):
    chunk_size, max_steps = 20, 75
    policy = waypoint(robot, chunk_size=chunk_size)
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=1.0) as client:
            result = run_episode(robot, client, RolloutConfig(max_steps=max_steps, blend=blend), seed=1)
    # Ticks lost to overruns on a busy machine still advance time (and are not executed): the
    # step index is the slot of the loop's fixed schedule, so every step of the episode was
    # either executed or counted as skipped.
    loop = result.loop
    assert result.length + loop["skipped_ticks"] == max_steps and _reached_goal(result, robot)
    check_tick_accounting(loop)
    assert result.stalls == 0 and not result.held.any()
    assert len(result.latency_ms) == len(result.inference_ms) >= result.chunks
    assert all(0 <= i <= lat for i, lat in zip(result.inference_ms, result.latency_ms))
    # Each chunk covers at most chunk_size steps and no step was held: enough chunks came.
    assert result.chunks >= math.ceil(max_steps / chunk_size)
    if blend == "switch":
        # The next chunk is asked for only once half a chunk remains: one request per 10 steps.
        assert result.chunks <= math.ceil(max_steps / (chunk_size // 2)) + 1
    else:
        # A request is in flight at all times: a new one goes out at the tick its reply arrives,
        # so a reply of latency L ticks comes at least every L + 1 ticks.
        latency_ticks = math.ceil(max(result.latency_ms) / (1e3 / FPS))
        assert result.chunks >= max_steps / (latency_ticks + 1) - 1, result.latency_ms


@pytest.mark.realtime  # no stall: each 80 ms reply within its 200 ms budget on a loaded host
def test_late_chunks_are_aligned_by_time_and_expired_actions_dropped(robot):
    latency_ticks = 4
    slow = SlowPolicy(waypoint(robot, chunk_size=30), latency_ticks / FPS)
    with PolicyServer(slow, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=1.0) as client:
            config = RolloutConfig(max_steps=75, blend="switch", request_threshold=10)
            result = run_episode(robot, client, config, seed=2)
    assert result.stalls == 0
    per_chunk = result.dropped_actions / max(1, result.chunks - 1)
    measured_ticks = np.mean(result.latency_ms[1:]) / (1e3 / FPS)
    # Each chunk after the first arrives >= 4 ticks after its observation: exactly the rows for
    # the ticks that passed meanwhile are dropped (no more, or actions would be skipped).
    assert latency_ticks - 0.5 <= per_chunk <= measured_ticks + 1.0, (per_chunk, measured_ticks)
    assert _reached_goal(result, robot)


@pytest.mark.realtime  # the hold comes within 100 ms of the last action running out
def test_a_stalled_server_makes_the_arm_hold_within_100_ms_then_resume(robot):
    stalling = StallingPolicy(waypoint(robot, speed=0.5, chunk_size=10), stall_at=4, stall_s=0.4)
    with PolicyServer(stalling, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=1.0) as client:
            config = RolloutConfig(
                max_steps=110, blend="switch", request_threshold=5, request_timeout_s=1.0
            )
            result = run_episode(robot, client, config, seed=4)
    assert result.stalls >= 1, result.summary()
    assert all(s.hold_delay_ms < 100 for s in result.stall_events)
    stall = max(result.stall_events, key=lambda s: s.duration_s)  # the 0.4 s stall
    assert stall.end_step is not None and stall.duration_s > 0.15
    _held_commands_are_constant(result)
    # resumed and kept going: every hold ended, the episode finished moving, at the goal
    assert all(s.end_step is not None for s in result.stall_events)
    assert not result.held[-1]
    assert _reached_goal(result, robot)


def _restart_later(server: PolicyServer, policy: Policy, endpoint: str, robot, down_ticks,
                   box: dict, wait_until) -> None:
    """Stop `server` once it has served 3 chunks; start a new one on the same endpoint after the
    rollout has run `down_ticks` ticks without it (None: never). Triggered by the rollout's
    progress, not by wall-clock delays, so a slow host changes nothing."""
    try:
        wait_until(lambda: server.stats.inferences >= 3, what="3 chunks served before the kill")
        server.stop()
        if down_ticks is not None:
            steps = robot.steps
            wait_until(lambda: robot.steps >= steps + down_ticks, what="the rollout to run on")
            box["server"] = PolicyServer(policy, ServerConfig(endpoint)).start()
    except BaseException as exc:  # noqa: BLE001 - reported by the test thread
        box["error"] = exc


def test_a_server_that_dies_mid_rollout_is_survived_and_rejoined(robot, wait_until):
    policy = waypoint(robot, speed=0.5, chunk_size=10)
    server = PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")).start()
    endpoint = server.endpoint
    box: dict = {}
    killer = threading.Thread(
        target=_restart_later, args=(server, policy, endpoint, robot, 25, box, wait_until)
    )
    try:
        with PolicyClient(endpoint, timeout_s=0.2) as client:
            killer.start()
            # 200 steps: after the restart (step ~50) a loaded host has >= 3 s of schedule to
            # reconnect in
            config = RolloutConfig(
                max_steps=200, blend="switch", request_threshold=5, request_timeout_s=0.2
            )
            result = run_episode(robot, client, config, seed=5)
    finally:
        killer.join()
        if "server" in box:
            box["server"].stop()
    assert "error" not in box, box
    assert result.stalls >= 1 and result.request_errors, result.summary()
    assert all(s.hold_delay_ms < 100 * 5 for s in result.stall_events)  # within a few ticks
    assert result.stall_events[-1].end_step is not None, result.summary()  # rejoined the new server
    _held_commands_are_constant(result)
    assert _reached_goal(result, robot)


def test_a_server_that_never_returns_leaves_the_arm_holding(robot, wait_until):
    policy = waypoint(robot, speed=0.5, chunk_size=10)
    server = PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")).start()
    box: dict = {}
    killer = threading.Thread(
        target=_restart_later, args=(server, policy, server.endpoint, robot, None, box, wait_until)
    )
    with PolicyClient(server.endpoint, timeout_s=0.2) as client:
        killer.start()
        config = RolloutConfig(
            max_steps=60, blend="switch", request_threshold=5, request_timeout_s=0.2
        )
        result = run_episode(robot, client, config, seed=6)
    killer.join()
    assert "error" not in box, box
    assert result.stalls >= 1 and result.stall_events[-1].end_step is None  # never resumed
    assert result.held[-10:].all()
    _held_commands_are_constant(result)


def test_no_server_at_all_fails_fast_with_a_clear_error(robot):
    with PolicyClient("tcp://127.0.0.1:9", timeout_s=0.2) as client:
        with pytest.raises(TetherError, match="no 'info'"):
            run_episode(robot, client, RolloutConfig(max_steps=10))


def test_a_reply_still_in_flight_at_episode_end_never_feeds_the_next_episode(robot):
    slow = SlowPolicy(waypoint(robot, chunk_size=20), 0.06)
    with PolicyServer(slow, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=1.0) as client:
            config = RolloutConfig(max_steps=20, blend="ensemble")
            first = run_episode(robot, client, config, seed=7)
            second = run_episode(robot, client, config, seed=8)
    assert first.chunks >= 2 and second.chunks >= 2
    for result in (first, second):
        assert result.request_errors == {} and result.stalls == 0
        assert not np.isnan(result.targets).any()


@pytest.mark.slow
def test_repeated_server_deaths_over_a_long_rollout(robot):
    policy = waypoint(robot, speed=0.2, chunk_size=10)
    server = PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")).start()
    endpoint = server.endpoint
    current = {"server": server}
    stop = threading.Event()

    def chaos() -> None:
        while not stop.wait(0.8):
            current["server"].stop()
            time.sleep(0.3)
            current["server"] = PolicyServer(policy, ServerConfig(endpoint)).start()

    thread = threading.Thread(target=chaos, daemon=True)
    try:
        with PolicyClient(endpoint, timeout_s=0.2) as client:
            thread.start()
            config = RolloutConfig(
                max_steps=400, blend="switch", request_threshold=5, request_timeout_s=0.2
            )
            result = run_episode(robot, client, config, seed=9)
    finally:
        stop.set()
        thread.join()
        current["server"].stop()
    assert result.stalls >= 4
    assert all(s.hold_delay_ms < 100 for s in result.stall_events)
    _held_commands_are_constant(result)
    # Every stall but one still going at the end resumed; the arm moved between the outages.
    assert sum(s.end_step is None for s in result.stall_events) <= 1
    assert result.held.mean() < 0.6 and result.chunks >= 10
