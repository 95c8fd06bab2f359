"""DeviceClockMapper on synthetic streams: known offset, latency jitter, drift and a reset."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tether.core.clock import DeviceClockMapper, host_now

EPOCH = 1.7e9  # a RealSense in global-time mode stamps wall-clock (epoch) seconds
HOST0 = 5000.0  # a host's monotonic clock counts from its boot


def stream(n, rate, drift=0.0, jitter=0.004, base=0.0005, seed=0, t_dev0=EPOCH):
    """(t_capture_host, t_device, t_received) for n samples at `rate` Hz.

    The true offset (host minus device time) is HOST0 - t_dev0 at the first sample.
    The device clock runs (1 + drift) times as fast as the host's; latency is `base` plus an
    exponential jitter with mean `jitter` (a loaded host delivers some samples very late).
    """
    rng = np.random.default_rng(seed)
    t_capture = HOST0 + np.arange(n) / rate
    t_device = t_dev0 + (t_capture - HOST0) * (1.0 + drift)
    t_received = t_capture + base + rng.exponential(jitter, n)
    return t_capture, t_device, t_received


def mapped(mapper, t_device, t_received):
    return np.array([mapper.map(d, r) for d, r in zip(t_device, t_received, strict=True)])


def test_constant_offset_is_found_within_the_lowest_latency():
    cap, dev, rec = stream(600, 30.0)
    mapper = DeviceClockMapper("cam")
    out = mapped(mapper, dev, rec)
    err = out - cap
    # after the first second the error is the smallest latency seen (0.5 ms + a little), never
    # the mean latency (4.5 ms) and never the 1.7e9 s between the clocks
    assert np.all(np.abs(err[30:]) < 0.002)
    assert abs(np.median(err[30:]) - 0.0005) < 0.001
    assert np.all(out <= rec)  # nothing is mapped to after it arrived
    assert np.all(np.diff(out) >= 0)


def test_heavy_jitter_does_not_move_the_estimate():
    cap, dev, rec = stream(900, 30.0, jitter=0.05, seed=3)  # mean latency 50 ms
    out = mapped(DeviceClockMapper("cam"), dev, rec)
    assert np.all(np.abs(out[60:] - cap[60:]) < 0.005)
    # the naive "receive time" is off by the latency; the mapped time is not
    assert np.median(rec - cap) > 0.03


def test_drift_is_tracked_over_a_sliding_window():
    drift = 2e-4  # 200 ppm: 12 ms per minute, more than any crystal, so it must be tracked
    cap, dev, rec = stream(120 * 100, 100.0, drift=drift, seed=1)  # 120 s at 100 Hz
    mapper = DeviceClockMapper("arm", window_s=10.0, block_s=1.0)
    out = mapped(mapper, dev, rec)
    late = slice(20 * 100, None)
    assert np.all(np.abs(out[late] - cap[late]) < 0.002)  # uncorrected: up to 24 ms
    assert mapper.drift == pytest.approx(-drift, rel=0.2)  # host gains -drift s per device s


def test_a_backwards_jump_restarts_the_estimate_with_a_warning(caplog):
    cap1, dev1, rec1 = stream(300, 30.0, seed=4)
    # the device reboots: its clock starts again near zero while host time goes on
    cap2, dev2, rec2 = stream(300, 30.0, seed=5, t_dev0=12.0)
    cap2, rec2 = cap2 + 10.0 + 1 / 30, rec2 + 10.0 + 1 / 30
    mapper = DeviceClockMapper("ur5e")
    mapped(mapper, dev1, rec1)
    with caplog.at_level(logging.WARNING, logger="tether.core.clock"):
        out = mapped(mapper, dev2, rec2)
    assert mapper.resets == 1
    assert any("ur5e" in r.message and "jumped back" in r.message for r in caplog.records)
    assert np.all(np.abs(out[30:] - cap2[30:]) < 0.002)
    # small backward steps (a device repeating a stamp) are not resets
    mapper.map(dev2[-1] - 0.01, rec2[-1] + 0.01)
    assert mapper.resets == 1


def test_repeated_stale_reads_keep_their_capture_time():
    """A UR controller read twice between packages: same stamp, later receipt, same host time."""
    mapper = DeviceClockMapper("ur")
    first = mapper.map(100.0, HOST0 + 0.001)
    again = mapper.map(100.0, HOST0 + 0.009)
    assert again == pytest.approx(first)


def test_offset_before_any_sample_is_an_error_naming_the_fix():
    mapper = DeviceClockMapper("cam")
    assert mapper.offset is None
    with pytest.raises(ValueError, match="map"):
        mapper.offset_at(1.0)


def test_host_now_is_monotonic():
    a = host_now()
    assert host_now() >= a
