"""Speed limits per second and the following-error bound (issue 12, item 3).

The pure SafetyFilter is checked with hypothesis over arbitrary streams of targets, timings
(bursts in the same millisecond, long gaps, a clock that steps back), measured positions (near,
far, NaN), stale stamps and e-stops. SafeArm and Robot are checked on injected clocks: a blocked
arm released later does not snap, the twin is limited per simulated second, and unpaced modes
are refused on a robot whose time is real.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.core.errors import ConfigError, SafetyError
from tether.robot import safety
from tether.robot.interfaces import ArmSpec, JointState, Robot
from tether.robot.memory import ManualClock, MemoryArm
from tether.robot.safety import SafeArm, SafetyConfig, SafetyFilter

SPEC = ArmSpec(
    name="test",
    joint_names=("a", "b", "c", "gripper"),
    lower=np.array([-1.0, -2.0, 0.0, 0.0]),
    upper=np.array([1.0, 0.5, 3.0, 0.08]),
    home=np.array([0.0, 0.0, 1.0, 0.04]),
    gripper_index=3,
)
V_MAX = np.array([1.0, 2.0, 0.5, 0.1])
E_MAX = np.array([0.2, 0.3, 0.1, 0.02])
CONFIG = SafetyConfig(max_velocity=V_MAX.tolist(), max_following_error=E_MAX.tolist(), stale_after_s=0.2)
EPS = 1e-9

wild_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=-5, max_value=5),
    st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0]),
)
target = st.one_of(
    st.none(),  # no target this tick
    st.lists(st.floats(min_value=-5, max_value=5), min_size=4, max_size=4).map(np.array),
    st.lists(wild_float, min_size=4, max_size=4).map(np.array),
    st.lists(wild_float, min_size=0, max_size=6).map(np.array),  # wrong shapes too
)
gap = st.one_of(
    st.just(0.0),  # a burst: several calls in the same instant
    st.floats(min_value=0.0, max_value=1e-3),  # the same millisecond
    st.floats(min_value=0.0, max_value=0.1),
    st.floats(min_value=0.1, max_value=30.0),  # long pauses
    st.floats(min_value=-0.5, max_value=0.0),  # a clock that steps back
)
# How the measured position relates to the previous command: near it (an arm that follows),
# anywhere (blocked, pushed away, a glitchy reading), broken, or not known.
measured = st.one_of(
    st.none(),
    st.tuples(st.just("near"), st.lists(st.floats(-0.3, 0.3), min_size=4, max_size=4)),
    st.tuples(st.just("abs"), st.lists(st.floats(-5, 5), min_size=4, max_size=4)),
    st.tuples(st.just("abs"), st.lists(wild_float, min_size=4, max_size=4)),
)
event = st.tuples(
    target,
    gap,
    st.one_of(st.none(), st.floats(min_value=-0.1, max_value=1.0)),  # age of the target
    measured,
    st.sampled_from(["", "", "", "", "", "", "", "", "estop", "reset"]),
)


def _measurement(kind, previous: np.ndarray) -> np.ndarray | None:
    if kind is None:
        return None
    how, values = kind
    values = np.array(values, dtype=np.float64)
    return previous + values if how == "near" else values


@settings(max_examples=400, deadline=None)
@given(
    st.lists(event, min_size=1, max_size=40),
    st.sampled_from(["home", "edge", "outside"]),
    st.one_of(st.none(), st.floats(min_value=1e-3, max_value=0.5)),
)
def test_commands_respect_velocity_and_following_error_for_any_stream(events, start, max_step):
    config = SafetyConfig(
        max_velocity=CONFIG.max_velocity,
        max_following_error=CONFIG.max_following_error,
        stale_after_s=CONFIG.stale_after_s,
        max_step=max_step,
    )
    filt = SafetyFilter(SPEC, config)
    seed = {
        "home": SPEC.home,
        "edge": SPEC.upper.copy(),
        "outside": SPEC.upper + np.array([0.3, 0.0, 0.5, 0.01]),  # a reading past the limits
    }[start]
    t = 100.0
    filt.seed(seed, t)
    previous = seed.copy()
    cap = np.inf if max_step is None else max_step
    for tgt, dt, age, kind, action in events:
        t_prev, t = t, t + dt
        if action == "estop":
            filt.estop("test")
        elif action == "reset":
            filt.reset_estop()
        meas = _measurement(kind, previous)
        t_target = None if age is None else t - age
        decision = filt.step(tgt, t, t_target, meas)
        cmd = decision.command
        assert cmd.shape == (4,)
        assert np.all(np.isfinite(cmd))
        # inside the joint limits, or (seeded outside) never further out than before
        lo, hi = np.minimum(SPEC.lower, previous), np.maximum(SPEC.upper, previous)
        assert np.all(cmd >= lo - EPS) and np.all(cmd <= hi + EPS)
        # per second, with the real elapsed time, capped; a burst moves nothing
        elapsed = min(max(t - t_prev, 0.0), config.stale_after_s)
        assert np.all(np.abs(cmd - previous) <= np.minimum(V_MAX * elapsed, cap) + EPS)
        if meas is not None and decision.fresh:
            # within the bound of the measurement, or, when the previous command was already
            # further (the arm was pushed away, a glitchy reading), no further than it was
            assert np.all(np.isfinite(meas))
            distance = np.abs(cmd - meas)
            assert np.all(distance <= np.maximum(E_MAX, np.abs(previous - meas)) + EPS)
            inside = np.abs(previous - meas) <= E_MAX
            assert np.all(distance[inside] <= E_MAX[inside] + EPS)
        if filt.estopped or not decision.fresh:
            np.testing.assert_array_equal(cmd, previous)
        previous = cmd


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=2, max_value=200), st.floats(min_value=0.0, max_value=1e-3))
def test_a_burst_in_one_millisecond_moves_almost_nothing(n, span):
    filt = SafetyFilter(SPEC, CONFIG)
    filt.seed(SPEC.home, 0.0)
    far = SPEC.upper.copy()
    for i in range(n):
        cmd = filt.step(far, span * i / (n - 1)).command
    assert np.all(np.abs(cmd - SPEC.home) <= V_MAX * span + EPS)


def test_distance_covered_depends_on_time_not_on_the_call_rate():
    goal = np.array([1.0, 0.5, 3.0, 0.08])
    covered = []
    for hz in (10, 100, 1000):
        filt = SafetyFilter(SPEC, CONFIG)
        filt.seed(SPEC.home, 0.0)
        for i in range(1, int(0.3 * hz) + 1):
            cmd = filt.step(goal, i / hz).command
        covered.append(cmd - SPEC.home)
    for c in covered:
        np.testing.assert_allclose(c, np.minimum(V_MAX * 0.3, goal - SPEC.home), atol=1e-9)


def test_a_long_pause_credits_at_most_stale_after_s():
    filt = SafetyFilter(SPEC, CONFIG)
    filt.seed(SPEC.home, 0.0)
    cmd = filt.step(SPEC.upper, 3600.0).command
    np.testing.assert_allclose(cmd - SPEC.home, np.minimum(V_MAX * 0.2, SPEC.upper - SPEC.home))
    assert safety.RATE_LIMITED in filt.counts


def test_max_step_is_an_extra_cap_per_call():
    filt = SafetyFilter(SPEC, SafetyConfig(max_velocity=10.0, max_step=0.05))
    filt.seed(SPEC.home, 0.0)
    cmd = filt.step(SPEC.home + 1.0, 0.1).command  # 1 rad/s x 0.1 s would allow 1.0
    np.testing.assert_allclose(np.abs(cmd - SPEC.home)[:3], 0.05)


def test_following_error_bounds_the_goal_of_a_stuck_joint():
    filt = SafetyFilter(SPEC, SafetyConfig(max_velocity=10.0, max_following_error=0.2))
    filt.seed(SPEC.home, 0.0)
    stuck = SPEC.home.copy()
    for i in range(1, 50):
        decision = filt.step(SPEC.home + [0.9, 0, 0, 0], 0.02 * i, measured=stuck)
    np.testing.assert_allclose(decision.command[0], 0.2)
    assert safety.FOLLOWING_ERROR in decision.reasons


def test_bad_measurement_holds():
    filt = SafetyFilter(SPEC, CONFIG)
    filt.seed(SPEC.home, 0.0)
    decision = filt.step(SPEC.home + 0.01, 0.1, measured=np.array([np.nan, 0, 1, 0]))
    assert decision.reasons == (safety.BAD_MEASUREMENT,)
    np.testing.assert_array_equal(decision.command, SPEC.home)


# --- limits from config and spec -------------------------------------------------------------


def test_limits_resolve_from_config_then_spec_then_defaults():
    default = SafetyConfig()
    v = default.velocity_for(SPEC)
    np.testing.assert_allclose(v[:3], safety.DEFAULT_MAX_VELOCITY)
    assert v[3] == pytest.approx(0.08 / safety.DEFAULT_GRIPPER_TRAVEL_S)  # its range in 0.5 s
    e = default.following_error_for(SPEC)
    np.testing.assert_allclose(e[:3], safety.DEFAULT_MAX_FOLLOWING_ERROR)
    assert e[3] == np.inf  # a gripper squeezes by being commanded past the object

    fast = ArmSpec(**{**SPEC.__dict__, "max_velocity": 2.5})
    np.testing.assert_allclose(default.velocity_for(fast), 2.5)
    np.testing.assert_allclose(SafetyConfig(max_velocity=0.5).velocity_for(fast), 0.5)
    per_arm = SafetyConfig(max_velocity={"test": [1, 2, 3, 4], "other": 9.0})
    np.testing.assert_allclose(per_arm.velocity_for(SPEC), [1, 2, 3, 4])
    with pytest.raises(ConfigError, match="4 joints"):
        SafetyConfig(max_velocity=[1.0, 2.0]).velocity_for(SPEC)
    with pytest.raises(ConfigError, match="positive"):
        SafetyConfig(max_velocity=0.0).velocity_for(SPEC)


def test_safety_section_of_a_config_file_accepts_numbers_lists_and_per_arm_mappings(tmp_path):
    from tether.robot.factory import load_robot_config

    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\narms:\n  - {name: left, driver: memory}\n  - {name: right, driver: memory}\n"
        "safety:\n  max_velocity: {left: 1.5, right: [1, 1, 1, 1, 1, 2]}\n"
        "  max_following_error: 0.25\n  max_step: 0.1\n"
    )
    config = load_robot_config(path)
    from tether.robot.factory import make_robot

    robot = make_robot(config)
    np.testing.assert_allclose(robot.arms["left"].filter.max_velocity, 1.5)
    np.testing.assert_allclose(robot.arms["right"].filter.max_velocity, [1, 1, 1, 1, 1, 2])
    np.testing.assert_allclose(robot.arms["right"].filter.max_following_error, 0.25)
    assert robot.arms["left"].filter.max_step == pytest.approx(0.1)
    config.safety.max_velocity = {"lef": 1.0}  # a typo is an error, not a silent default
    with pytest.raises(ConfigError, match="lef.*left, right"):
        make_robot(config)


# --- SafeArm and Robot on injected clocks ----------------------------------------------------


class BlockableArm(MemoryArm):
    """A memory arm that follows its command at once, except joint 0 while `blocked`."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(SPEC, time_constant_s=0.0, clock=clock)
        self.blocked_at: float | None = None

    def read(self) -> JointState:
        state = super().read()
        if self.blocked_at is None:
            return state
        position = state.position.copy()
        position[0] = self.blocked_at
        return JointState(position=position, t_host=state.t_host, t_device=state.t_device)


def test_a_blocked_arm_released_later_does_not_snap():
    clock = ManualClock()
    arm = BlockableArm(clock)
    config = SafetyConfig(max_velocity=1.0, max_following_error=0.2)
    goal = SPEC.home + np.array([0.9, 0.0, 0.0, 0.0])
    with SafeArm(arm, config, clock=clock) as safe:
        arm.blocked_at = 0.0  # a hand holds joint 0 where it is
        for _ in range(200):  # 4 s of a teleop pushing towards the goal
            clock.advance(0.02)
            safe.read()
            safe.command(goal)
        assert arm.commands[-1][0] == pytest.approx(0.2)  # no goal built up behind the hand
        arm.blocked_at = None  # released
        positions = []
        for _ in range(100):
            clock.advance(0.02)
            positions.append(safe.read().position[0])
            safe.command(goal)
    jumps = np.abs(np.diff([0.0] + positions))
    assert jumps[0] <= 0.2 + 1e-9  # the release moves it at most the following error
    assert np.all(jumps[1:] <= 1.0 * 0.02 + 1e-9)  # then it moves at the velocity limit
    assert positions[-1] == pytest.approx(0.9)


def test_safe_arm_reads_the_arm_when_its_cached_reading_is_old():
    clock = ManualClock()
    arm = BlockableArm(clock)
    config = SafetyConfig(max_velocity=10.0, max_following_error=0.2, measured_max_age_s=0.05)
    with SafeArm(arm, config, clock=clock) as safe:
        arm.blocked_at = -0.5  # the arm was pushed away; nobody called safe.read() since
        clock.advance(0.1)
        sent = safe.command(SPEC.home + [0.5, 0, 0, 0])
    assert sent[0] == pytest.approx(0.0)  # never further from the arm than before


def memory_robot(clock: ManualClock, **kwargs) -> Robot:
    arm = MemoryArm(SPEC, time_constant_s=0.0, clock=clock)
    return Robot({"main": arm}, safety=CONFIG, fps=50, name="mem", clock=clock, **kwargs)


def test_robot_tick_holds_once_targets_are_stale():
    clock = ManualClock()
    with memory_robot(clock) as robot:
        clock.advance(0.02)
        robot.act(SPEC.home + 0.01, t_target=robot.now())
        clock.advance(0.1)
        robot.tick()
        assert robot.safety_counts().get(safety.WATCHDOG_HOLD, 0) == 0
        clock.advance(0.15)
        held = robot.tick()
        assert robot.safety_counts()[safety.WATCHDOG_HOLD] == 1
        np.testing.assert_allclose(held, robot.arms["main"].filter.last_command)
        # a target stamped too long ago is refused
        stamp = robot.now()
        clock.advance(0.3)
        robot.act(SPEC.home, t_target=stamp)
        assert robot.safety_counts()[safety.STALE_TARGET] == 1


def test_unpaced_modes_are_refused_on_a_real_time_robot():
    clock = ManualClock()
    robot = memory_robot(clock)
    assert robot.simulated_time is False
    with pytest.raises(SafetyError, match=r"--fast .*'mem' runs in real time.*--realtime"):
        robot.require_simulated_time("fast")
    with pytest.raises(SafetyError, match="--lockstep"):
        robot.require_simulated_time("--lockstep")
    memory_robot(clock, simulated_time=True).require_simulated_time("fast")  # no error


def test_twin_is_limited_per_simulated_second_and_allows_unpaced_modes():
    from tether.robot.config import RobotConfig
    from tether.robot.twin import make_twin_robot
    from tether.robot.twin.robot import TWIN_MAX_VELOCITY

    robot = make_twin_robot(RobotConfig(twin_task="lift", fps=50, twin_params={"cameras": []}))
    assert robot.simulated_time
    robot.require_simulated_time("lockstep")
    with robot:
        robot.reset(0)
        far = robot.upper.copy()
        previous = robot.home.copy()
        for _ in range(10):  # fast mode: each act is one simulated period, whatever the host
            t0 = robot.now()
            sent = robot.act(far, t_target=t0)
            assert robot.now() == pytest.approx(t0 + 0.02)
            assert np.all(np.abs(sent - previous) <= TWIN_MAX_VELOCITY * 0.02 + 1e-9)
            previous = sent
        # calls in the same simulated instant cannot move the arm (the first one may still use
        # the period since the last act)
        arm = robot.arms["arm"]
        arm.command(far[: arm.spec.dof])
        before = arm.filter.last_command
        for _ in range(20):
            arm.command(far[: arm.spec.dof])
        np.testing.assert_allclose(arm.filter.last_command, before)
        # tick() lets simulated time pass and holds once the target is stale
        for _ in range(int(0.3 * robot.fps)):
            robot.tick()
        assert robot.safety_counts().get(safety.WATCHDOG_HOLD, 0) >= 1


def test_first_act_of_a_twin_episode_moves_one_period_worth():
    from tether.robot.config import RobotConfig
    from tether.robot.twin import make_twin_robot
    from tether.robot.twin.robot import TWIN_MAX_VELOCITY

    robot = make_twin_robot(RobotConfig(twin_task="lift", fps=50, twin_params={"cameras": []}))
    try:
        robot.reset(0)  # connects: the arm rests at home from one period before the episode
        target = robot.home + 0.5
        sent = robot.act(np.clip(target, robot.lower, robot.upper))
        np.testing.assert_allclose(np.abs(sent - robot.home)[:5], TWIN_MAX_VELOCITY / 50)
    finally:
        robot.close()
