"""The fixed-rate loop, driven by a fake clock: pacing, overrun and skip accounting, no catch-up
bursts, fast mode. One `realtime` test checks the same accounting against the real clock."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.robot.runtime import RateLoop

HZ = 64.0  # a period of 1/64 s is exact in binary: the fake-clock checks below can be exact
P = 1.0 / HZ


class FakeClock:
    """A monotonic clock that moves only when the loop sleeps or a step 'works'."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the loop asked to sleep a non-positive time"
        self.sleeps.append(seconds)
        self.now += seconds

    def work(self, seconds: float) -> None:
        self.now += seconds


def fake_loop(hz: float = HZ, realtime: bool = True) -> tuple[RateLoop, FakeClock]:
    clock = FakeClock()
    return RateLoop(hz, realtime=realtime, clock=clock, sleep=clock.sleep), clock


def test_a_free_step_runs_exactly_on_schedule():
    loop, clock = fake_loop()
    t0 = clock.now
    ticks = []
    stats = loop.run(ticks.append, duration_s=0.5)
    assert stats.ticks == 32 and [t.index for t in ticks] == list(range(32))
    assert [t.t_scheduled for t in ticks] == [t0 + i * P for i in range(32)]
    assert all(t.t_start == t.t_scheduled for t in ticks)
    assert clock.sleeps == [P] * 31  # slept to each deadline; the first tick starts at once
    assert stats.overruns == 0 and stats.skipped_ticks == 0 and stats.jitter_max_ms == 0.0
    assert stats.duration_s == 31 * P


def test_an_overrun_skips_whole_periods_and_the_loop_never_bursts_to_catch_up():
    loop, clock = fake_loop()
    t0 = clock.now
    ticks = []

    def step(tick):
        ticks.append(tick)
        if tick.index == 2:
            clock.work(5.5 * P)  # runs from 2 P to 7.5 P: the slots 3 P .. 6 P pass by

    stats = loop.run(step, max_ticks=8)
    starts = [t.t_start - t0 for t in ticks]
    assert stats.ticks == 8 and stats.overruns == 1
    assert stats.skipped_ticks == 4  # 3 P .. 6 P dropped; 7 P runs late, at once
    assert [t.slot for t in ticks] == [0, 1, 2, 7, 8, 9, 10, 11]
    assert starts == [0.0, P, 2 * P, 7.5 * P, 8 * P, 9 * P, 10 * P, 11 * P]
    assert [t.t_scheduled - t0 for t in ticks] == [s * P for s in [0, 1, 2, 7, 8, 9, 10, 11]]
    assert stats.jitter_max_ms == pytest.approx(0.5 * P * 1e3)  # the late tick, within its slot
    assert stats.step_p99_ms > 0


def test_short_overruns_do_not_shift_the_schedule_or_lose_ticks(check_tick_accounting):
    """A step a little longer than a period, again and again: each next tick starts late
    within its own slot (never re-anchored), and the time each overrun ate is counted."""
    loop, clock = fake_loop()
    t0 = clock.now
    ticks = []

    def step(tick):
        ticks.append(tick)
        clock.work(1.25 * P)  # every step ends a quarter period into the next slot

    stats = loop.run(step, max_ticks=8)
    # Ends at 1.25, 2.5, 3.75, 5.0 (exactly on slot 4: skipped), 6.25, ... periods.
    assert [t.slot for t in ticks] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert all(0 <= t.t_start - t.t_scheduled < P for t in ticks)
    assert [t.t_scheduled for t in ticks] == [t0 + t.slot * P for t in ticks]
    assert stats.duration_s == 10 * P and stats.last_start_s == 8.75 * P and stats.overruns == 8
    assert stats.ticks + stats.skipped_ticks == 9  # slots 0 .. 8, up to the last tick's
    check_tick_accounting(stats.as_dict(), slack_ticks=0)


def test_duration_bounds_the_slots_started_not_the_ticks_run():
    loop, clock = fake_loop()
    ticks = []

    def step(tick):
        ticks.append(tick)
        if tick.index == 1:
            clock.work(3.5 * P)

    stats = loop.run(step, duration_s=8 * P)
    assert [t.slot for t in ticks] == [0, 1, 4, 5, 6, 7]
    assert stats.ticks + stats.skipped_ticks == 8


def test_a_sleep_that_oversleeps_skips_the_slots_it_missed(check_tick_accounting):
    """A loaded host wakes the loop late: the tick runs in the slot in progress (its own
    schedule time and step index), and the slots slept through are counted as skipped."""
    loop, clock = fake_loop()
    t0 = clock.now

    def sleep(seconds):
        clock.sleep(seconds + (2.5 * P if len(clock.sleeps) == 2 else 0.0))

    loop._sleep = sleep
    ticks = []
    stats = loop.run(ticks.append, max_ticks=6)
    assert [t.slot for t in ticks] == [0, 1, 2, 5, 6, 7]  # woke at 5.5 P, not 3 P
    assert all(0 <= t.t_start - t.t_scheduled < P for t in ticks)
    assert stats.skipped_ticks == 2 and stats.overruns == 0
    assert [t.t_scheduled - t0 for t in ticks] == [t.slot * P for t in ticks]
    check_tick_accounting(stats.as_dict(), slack_ticks=0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hz=st.sampled_from([10.0, 30.0, 50.0, 64.0, 100.0, 500.0]),
    work=st.lists(st.floats(0.0, 6.0), min_size=1, max_size=60),  # step times, in periods
    stop_by=st.sampled_from(["max_ticks", "step", "duration"]),
)
def test_executed_plus_skipped_ticks_account_for_elapsed_time(hz, work, stop_by, check_tick_accounting):
    loop, clock = fake_loop(hz)
    period = 1.0 / hz
    t0 = clock.now
    ticks = []

    def step(tick):
        ticks.append(tick)
        clock.work(work[tick.index % len(work)] * period)
        return not (stop_by == "step" and tick.index == len(work) - 1)

    if stop_by == "duration":
        stats = loop.run(step, duration_s=len(work) * period)
    else:
        stats = loop.run(step, max_ticks=len(work) if stop_by == "max_ticks" else None)
    if stop_by != "duration":
        assert stats.ticks == len(work)
    check_tick_accounting(stats.as_dict(), slack_ticks=0)
    for before, after in zip(ticks, ticks[1:]):
        assert after.slot > before.slot, "two ticks in one slot: a burst to catch up"
        assert after.t_start >= before.t_start + period * work[before.index % len(work)] - 1e-9
    for t in ticks:
        assert t.t_scheduled == t0 + t.slot * period, "the schedule moved off its grid"
        assert -1e-9 <= t.t_start - t.t_scheduled < period, "a tick ran outside its own slot"
    skipped_between = sum(b.slot - a.slot - 1 for a, b in zip(ticks, ticks[1:]))
    assert ticks[0].slot == 0 and stats.skipped_ticks >= skipped_between

    def overran_by(t):  # in periods: how far past its slot's end the tick's step ran
        return (t.t_start + work[t.index % len(work)] * period - t0) / period - (t.slot + 1)

    assert sum(overran_by(t) > 1e-3 for t in ticks) <= stats.overruns
    assert stats.overruns <= sum(overran_by(t) > -1e-3 for t in ticks)


def test_step_returning_false_or_stop_from_another_thread_ends_the_loop(wait_until):
    loop = RateLoop(hz=1000.0, realtime=False)
    stats = loop.run(lambda tick: tick.index < 9)
    assert stats.ticks == 10
    loop2, _ = fake_loop(50.0)
    stats2 = loop2.run(lambda tick: loop2.stop() if tick.index == 3 else None, max_ticks=100)
    assert stats2.ticks == 4

    loop3 = RateLoop(hz=200.0)
    seen: list[int] = []
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("stats", loop3.run(
        lambda tick: seen.append(tick.index), duration_s=60.0)))
    runner.start()
    wait_until(lambda: len(seen) >= 3, what="the loop to run 3 ticks")
    loop3.stop()
    runner.join(timeout=20.0)
    assert not runner.is_alive(), "stop() from another thread did not end the loop"
    assert result["stats"].ticks == len(seen) >= 3


def test_fast_mode_never_sleeps():
    loop, clock = fake_loop(hz=1.0, realtime=False)
    stats = loop.run(lambda tick: clock.work(0.001), max_ticks=50)
    assert stats.ticks == 50 and clock.sleeps == []
    assert stats.overruns == 0 and stats.skipped_ticks == 0


@pytest.mark.realtime
def test_on_the_real_clock_ticks_and_skips_account_for_the_time(check_tick_accounting):
    stats = RateLoop(hz=100.0).run(lambda tick: None, duration_s=0.5)
    assert stats.ticks >= 1 and stats.duration_s >= 0.49
    check_tick_accounting(stats.as_dict())
    assert 0 <= stats.jitter_p50_ms <= stats.jitter_p99_ms <= stats.jitter_max_ms


def test_rejects_nonpositive_rate():
    with pytest.raises(ValueError, match="positive"):
        RateLoop(hz=0)
