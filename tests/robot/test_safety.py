"""Safety layer: property tests over arbitrary target streams, plus the watchdog and e-stop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.robot import safety
from tether.robot.interfaces import ArmSpec
from tether.robot.memory import MemoryArm
from tether.robot.safety import SafeArm, SafetyConfig, SafetyFilter

SPEC = ArmSpec(
    name="test",
    joint_names=("a", "b", "c", "gripper"),
    lower=np.array([-1.0, -2.0, 0.0, 0.0]),
    upper=np.array([1.0, 0.5, 3.0, 0.08]),
    home=np.array([0.0, 0.0, 1.0, 0.04]),
    gripper_index=3,
)
# 10 rad/s with a 0.1 rad cap per call: at 100 Hz the two limits coincide (0.1 rad per tick).
CONFIG = SafetyConfig(max_velocity=10.0, max_step=0.1, stale_after_s=0.2)

wild_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=-5, max_value=5),
    st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0]),
)
target = st.one_of(
    st.none(),  # a gap: no target this tick
    st.lists(wild_float, min_size=4, max_size=4).map(np.array),
    st.lists(wild_float, min_size=0, max_size=6).map(np.array),  # wrong shapes too
)
event = st.tuples(
    target,
    st.floats(min_value=0.0, max_value=0.5),  # time since previous event (bursts and gaps)
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),  # age of the target, if stamped
    st.sampled_from(["", "", "", "", "", "", "", "", "estop", "reset"]),
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(event, min_size=1, max_size=60))
def test_every_command_is_finite_inside_limits_and_rate_limited(events):
    filt = SafetyFilter(SPEC, CONFIG)
    t = 0.0
    filt.seed(SPEC.home, t)
    previous = SPEC.home.copy()
    for tgt, dt, age, action in events:
        t += dt
        if action == "estop":
            filt.estop("test")
        elif action == "reset":
            filt.reset_estop()
        t_target = None if age is None else t - age
        decision = filt.step(tgt, t, t_target)
        cmd = decision.command
        assert cmd.shape == (4,)
        assert np.all(np.isfinite(cmd))
        assert np.all(cmd >= SPEC.lower) and np.all(cmd <= SPEC.upper)
        allowed = min(CONFIG.max_step, 10.0 * min(dt, CONFIG.stale_after_s))
        assert np.all(np.abs(cmd - previous) <= allowed + 1e-12)
        if filt.estopped:
            np.testing.assert_array_equal(cmd, previous)
        previous = cmd


def test_valid_target_is_reached_in_rate_limited_steps():
    filt = SafetyFilter(SPEC, CONFIG)
    filt.seed(SPEC.home, 0.0)
    goal = np.array([0.35, -0.2, 1.0, 0.04])
    commands = [filt.step(goal, 0.01 * i).command for i in range(1, 6)]
    np.testing.assert_allclose(commands[0], [0.1, -0.1, 1.0, 0.04])
    np.testing.assert_allclose(commands[-1], goal)
    assert filt.counts[safety.RATE_LIMITED] == 3


def test_out_of_limit_target_is_clipped_and_counted():
    filt = SafetyFilter(SPEC, SafetyConfig(max_velocity=1000.0))
    filt.seed(SPEC.home, 0.0)
    cmd = filt.step(np.array([5.0, -5.0, 1.0, 1.0]), 0.01).command
    np.testing.assert_allclose(cmd, [1.0, -2.0, 1.0, 0.08])
    assert filt.counts[safety.CLIPPED_TO_LIMITS] == 1


def test_nan_target_is_rejected_and_position_held():
    filt = SafetyFilter(SPEC, CONFIG)
    filt.seed(SPEC.home, 0.0)
    decision = filt.step(np.array([np.nan, 0, 1, 0.04]), 0.01)
    assert not decision.fresh
    assert decision.reasons == (safety.NON_FINITE,)
    np.testing.assert_array_equal(decision.command, SPEC.home)


def test_watchdog_holds_after_stale_period_and_resumes():
    filt = SafetyFilter(SPEC, CONFIG)
    filt.seed(SPEC.home, 0.0)
    filt.step(SPEC.home + [0.05, 0, 0, 0], 0.0)
    assert filt.step(None, 0.1).reasons == ()  # still fresh
    held = filt.step(None, 0.25)
    assert held.reasons == (safety.WATCHDOG_HOLD,)
    assert filt.step(SPEC.home, 0.3).fresh  # a fresh target resumes control


def test_stale_stamped_target_is_refused():
    filt = SafetyFilter(SPEC, CONFIG)
    filt.seed(SPEC.home, 0.0)
    decision = filt.step(SPEC.home + 0.05, 1.0, t_target=0.5)
    assert decision.reasons == (safety.STALE_TARGET,)
    np.testing.assert_array_equal(decision.command, SPEC.home)


def test_estop_latches_until_reset():
    filt = SafetyFilter(SPEC, CONFIG)
    filt.seed(SPEC.home, 0.0)
    filt.estop("button")
    for i in range(5):
        assert filt.step(SPEC.home + 0.05, 0.01 * i).reasons == (safety.ESTOP_HOLD,)
    filt.reset_estop()
    assert filt.step(SPEC.home + 0.05, 0.1).fresh


def test_safe_arm_sends_only_filtered_commands():
    arm = MemoryArm(SPEC)
    with SafeArm(arm, CONFIG) as safe:
        safe.command(np.array([10.0, 10.0, 10.0, 10.0]))
        safe.command(np.array([np.inf, 0, 0, 0]))
        safe.estop()
        safe.command(np.array([0.5, 0.0, 1.0, 0.04]))
    for before, after in zip([SPEC.home] + arm.commands, arm.commands):
        assert np.all(np.abs(after - before) <= CONFIG.max_step + 1e-12)
        assert np.all(after <= SPEC.upper) and np.all(after >= SPEC.lower)


def test_unseeded_filter_refuses_to_guess():
    with pytest.raises(RuntimeError, match="never seeded"):
        SafetyFilter(SPEC, CONFIG).step(SPEC.home, 0.0)
