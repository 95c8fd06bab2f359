"""Latency calibration on the twin, where the injected latency is known exactly.

The twin is wrapped by tether.robot.latency (a generic robot-side wrapper: frames delivered and
stamped late, commands applied late, both with jitter); `tether.calibration.latency` must find
the delays the wrappers actually applied (their `stats()`) within 10 ms, and a rollout that
sends actions early by the estimate must track its plan better than one that does not.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from tether.app.rollout import Chunk, ChunkSource, RolloutConfig, run_episode
from tether.calibration.latency import (
    LatencyConfig,
    estimate_camera_latency,
    estimate_delay,
    fit_command_latency,
    run_excitation,
)
from tether.core.schema import PolicySpec
from tether.policies.simple import observation_specs_for
from tether.robot.factory import make_robot
from tether.robot.latency import InjectedLatency, LatencyOffsets, inject_latency

pytest.importorskip("mujoco")

CAMERA_S, COMMAND_S, JITTER_S = 0.080, 0.040, 0.010
SMALL = ["twin_params.width=160", "twin_params.height=120"]


def _calibrate(duration_s: float, seed: int = 0):
    robot = make_robot("twin:lift", SMALL)
    injection = inject_latency(robot, InjectedLatency(CAMERA_S, JITTER_S, COMMAND_S, JITTER_S, seed=seed))
    with robot:
        robot.reset(seed)
        log = run_excitation(robot, LatencyConfig(duration_s=duration_s, seed=seed))
    truth = injection.stats()
    return (estimate_camera_latency(log, "top"), fit_command_latency(log, "arm"), truth)


@pytest.fixture(scope="module")
def calibrated():
    return _calibrate(duration_s=12.0)


def test_estimate_delay_recovers_a_known_shift_with_sub_sample_precision():
    rng = np.random.default_rng(1)
    t = np.arange(0, 20, 1 / 30)  # a 30 Hz stream
    bumps = np.convolve(rng.random(len(t)) > 0.9, np.hanning(15), mode="same").astype(float)
    t_late = t[::1] + 0.0734  # the same signal, stamped 73.4 ms late, at another phase
    est = estimate_delay(t, bumps, t_late, bumps, max_lag_s=0.3)
    assert abs(est.delay_s - 0.0734) < 0.002
    assert est.peak > 0.95


def test_twin_camera_and_command_latency_within_10_ms(calibrated):
    camera, arm, truth = calibrated
    true_camera, true_command = truth["top"]["mean_s"], truth["arm"]["mean_s"]
    print(f"\ncamera: truth {true_camera * 1e3:.1f} ms, estimate {camera.latency_s * 1e3:.1f} ms "
          f"(peak {camera.peak:.2f}, halves differ {camera.spread_s * 1e3:.1f} ms)")
    print(f"command: truth {true_command * 1e3:.1f} ms, estimate {arm.latency_s * 1e3:.1f} ms, "
          f"servo tau {arm.time_constant_s * 1e3:.1f} ms (residual {arm.normalized_rms:.3f})")
    assert abs(true_camera - (CAMERA_S + JITTER_S / 2)) < 0.004  # the wrapper did what it says
    assert abs(camera.latency_s - true_camera) < 0.010
    assert abs(arm.latency_s - true_command) < 0.010
    assert camera.peak > 0.8 and arm.normalized_rms < 0.25
    # the twin's joints are critically damped position servos: kv/kp = 2 tau ~ 50 ms
    assert 0.015 < arm.time_constant_s < 0.035


class Trajectory(ChunkSource):
    """Plans a known joint trajectory: the chunk asked for at step s holds plan(s .. s+n)."""

    synchronous = True

    def __init__(self, robot, chunk: int = 15) -> None:
        self.home = robot.home.astype(np.float32)
        self.fps = float(robot.fps)
        self.chunk = chunk
        self.spec = PolicySpec("trajectory", observation_specs_for(robot), robot.action_dim, chunk, self.fps)
        self._ready: Chunk | None = None

    def plan(self, steps: np.ndarray) -> np.ndarray:
        t = np.asarray(steps, dtype=np.float32)[:, None] / self.fps
        out = np.repeat(self.home[None], len(t), axis=0)
        ramp = np.clip(t / 1.0, 0.0, 1.0)  # start at rest
        out[:, 0] += 0.3 * ramp[:, 0] * np.sin(2 * np.pi * 0.5 * t[:, 0])
        out[:, 2] += 0.2 * ramp[:, 0] * np.sin(2 * np.pi * 0.7 * t[:, 0])
        return out

    def request(self, observation, step: int, wait_s: float = 0.0) -> None:
        self._ready = Chunk(step, self.plan(np.arange(step, step + self.chunk)), 0.0, 0.0)

    def poll(self, timeout_s: float) -> Chunk | None:
        chunk, self._ready = self._ready, None
        return chunk


def _tracking_rms(latency: LatencyOffsets | None) -> float:
    robot = make_robot("twin:lift", ["twin_params.cameras=[]"])
    inject_latency(robot, InjectedLatency(command_s=COMMAND_S, command_jitter_s=JITTER_S))
    source = Trajectory(robot)
    config = RolloutConfig(max_steps=150, realtime=False, blend="switch", stop_on_success=False)
    with robot:
        result = run_episode(robot, source, config, seed=0, latency=latency)
    plan = source.plan(np.arange(result.length))
    warm = int(robot.fps)  # after the start ramp
    return float(np.sqrt(((result.joints[warm:, [0, 2]] - plan[warm:, [0, 2]]) ** 2).mean()))


def test_rollout_with_the_estimates_tracks_its_plan_better(calibrated):
    _, arm, _ = calibrated
    without = _tracking_rms(None)
    with_estimate = _tracking_rms(LatencyOffsets(arms={"arm": arm.latency_s}))
    print(f"\ntracking RMS: without compensation {without * 1e3:.1f} mrad, with "
          f"{with_estimate * 1e3:.1f} mrad ({arm.latency_s * 1e3:.1f} ms sent early)")
    assert with_estimate < 0.75 * without


def test_corrected_frames_are_paired_with_the_state_of_their_exposure():
    from tether.teleop.recorder_streams import DirectStreams

    robot = make_robot("twin:lift", SMALL)
    inject_latency(robot, InjectedLatency(camera_s=CAMERA_S))
    period = 1.0 / robot.fps
    with robot:
        robot.reset(0)
        for _ in range(10):
            robot.act(robot.home, t_target=robot.now())
        raw = DirectStreams(robot).sample()
        corrected = DirectStreams(robot, latency=LatencyOffsets(cameras={"top": CAMERA_S})).sample()
    for sample, expected_age in ((raw, 0.0), (corrected, CAMERA_S)):
        age = sample.capture_t["state.arm"] - sample.capture_t["image.top"]
        assert expected_age - 1e-6 <= age <= expected_age + period + 1e-6


@pytest.mark.slow
def test_twin_latency_full_accuracy_over_seeds():
    """Longer runs, several seeds: every estimate within 5 ms."""
    for seed in (1, 2, 3):
        camera, arm, truth = _calibrate(duration_s=30.0, seed=seed)
        print(f"\nseed {seed}: camera {camera.latency_s * 1e3:.1f} (truth {truth['top']['mean_s'] * 1e3:.1f}) "
              f"command {arm.latency_s * 1e3:.1f} (truth {truth['arm']['mean_s'] * 1e3:.1f}) ms")
        assert abs(camera.latency_s - truth["top"]["mean_s"]) < 0.005
        assert abs(arm.latency_s - truth["arm"]["mean_s"]) < 0.005
