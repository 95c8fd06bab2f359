"""The fixed-rate loop: achieved rate, jitter measurement, overrun handling, fast mode."""

import time

import pytest

from tether.robot.runtime import RateLoop


def test_realtime_loop_hits_its_rate():
    loop = RateLoop(hz=100.0)
    stats = loop.run(lambda tick: None, duration_s=0.5)
    assert 45 <= stats.ticks <= 51
    assert stats.achieved_hz == pytest.approx(100.0, rel=0.1)
    assert stats.jitter_p50_ms < 5.0
    assert stats.overruns == 0


def test_overruns_are_counted_and_not_caught_up():
    loop = RateLoop(hz=100.0)
    starts = []

    def step(tick):
        starts.append(tick.t_start)
        if tick.index == 2:
            time.sleep(0.055)  # miss ~5 deadlines

    stats = loop.run(step, max_ticks=8)
    assert stats.overruns == 1
    assert stats.skipped_ticks >= 4
    gaps = [b - a for a, b in zip(starts[3:], starts[4:])]
    assert min(gaps) >= 0.008, "loop burst to catch up after an overrun"


def test_step_returning_false_stops_and_stop_is_thread_safe():
    loop = RateLoop(hz=1000.0, realtime=False)
    stats = loop.run(lambda tick: tick.index < 9)
    assert stats.ticks == 10
    loop2 = RateLoop(hz=50.0)
    stats2 = loop2.run(lambda tick: loop2.stop() if tick.index == 3 else None, max_ticks=100)
    assert stats2.ticks == 4


def test_fast_mode_does_not_sleep():
    loop = RateLoop(hz=1.0, realtime=False)
    t0 = time.monotonic()
    stats = loop.run(lambda tick: None, max_ticks=50)
    assert stats.ticks == 50
    assert time.monotonic() - t0 < 1.0


def test_rejects_nonpositive_rate():
    with pytest.raises(ValueError, match="positive"):
        RateLoop(hz=0)
