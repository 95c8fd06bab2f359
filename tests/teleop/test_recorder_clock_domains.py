"""The recorder across clock domains: a RealSense stamping Unix-epoch time beside a servo arm.

The camera is librealsense's own `software_device` (tether.robot.emulators.realsense) pushing
frames in the global-time domain, i.e. epoch milliseconds (~1.7e12), through the real syncer
and the real RealSenseCamera driver. The arm is a Dynamixel arm on a pty bus emulator, read
through the real dynamixel_sdk and stamped on the host's monotonic clock. Before one time base,
the recorder compared those two clocks directly: a skew of ~1.7e9 s and a nearest-frame choice
made across domains.

The truth is known independently of every timestamp: the emulator logs each frame's capture
instant on the host clock, and joint 0 of the arm is back-driven along a known ramp in host
time, so a recorded joint position says when the arm was read. From the recorded images
(frame index in the green channel) and states, each row's true camera and arm capture times
follow; the recorder's frame choice and its skew report are checked against them.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tether.data.store import EpisodeStore
from tether.robot.config import ArmConfig
from tether.robot.drivers.dynamixel import DynamixelArm
from tether.robot.drivers.realsense import RealSenseCamera, RealSenseParams
from tether.robot.emulators import DynamixelBusEmulator
from tether.robot.interfaces import CameraSpec, Robot
from tether.robot.targets import TeleopDevice
from tether.teleop.recorder import SAVED, Recorder

pytest.importorskip("pyrealsense2")
pytest.importorskip("dynamixel_sdk")
from tether.robot.emulators.realsense import SoftwareRealSense  # noqa: E402

FPS = 30.0
W, H = 64, 48
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
ZERO = 2048  # ticks at 0 rad (the driver's default)
RAMP_START, RAMP_RATE = 1100, 500.0  # ticks, ticks per host second: 2 ms per tick
RAD_PER_TICK = 2 * math.pi / 4096


class Idle(TeleopDevice):
    """An operator who never moves the leader: every tick holds (the arm is back-driven)."""

    def next_target(self, observation):
        return None


def ramp(servo, t0: float) -> None:
    """Back-drive `servo` along a ramp in host time: its present position says when it was read."""
    servo.physics = False  # goals do not move it; only the hand (the ramp) does

    def update() -> None:
        ticks = RAMP_START + (time.monotonic() - t0) * RAMP_RATE
        servo.set(servo.layout.present_position, int(round(ticks)))

    servo.update = update


# Records in real time from two emulators on a shared host: margins hold under `make test-stress`.
pytestmark = pytest.mark.realtime


@pytest.fixture
def realsense():
    device = SoftwareRealSense(W, H, FPS, serial="832112070009", depth=False)
    device.start()
    yield device
    device.stop()


@pytest.fixture
def bus():
    with DynamixelBusEmulator(list(range(1, 7))) as emulator:
        yield emulator


def test_sync_and_skew_across_epoch_and_monotonic_clocks(tmp_path, realsense, bus):
    motors = [{"name": n, "id": i + 1, "model": "xl330-m288"} for i, n in enumerate(JOINTS)]
    arm = DynamixelArm.from_config(
        ArmConfig(name="arm", driver="dynamixel",
                  params={"port": bus.port, "motors": motors, "packet_timeout_ms": 400.0})
    )
    camera = RealSenseCamera(CameraSpec("top", W, H, FPS), RealSenseParams(), device=realsense.device)
    robot = Robot({"arm": arm}, {"top": camera}, fps=FPS, name="mixed-clocks")
    t0 = time.monotonic()
    ramp(bus.servo(1), t0)
    with EpisodeStore.create(tmp_path / "mixed.zarr", FPS, image_codec="zstd") as store, robot:
        # the two devices really are on different clocks
        frame, state = camera.read(), arm.read()
        assert frame.t_device > 1e9 and abs(frame.t_device - time.time()) < 5.0
        assert state.t_device is None and abs(state.t_host - time.monotonic()) < 5.0
        result = Recorder(robot, Idle(), store, realtime=True).record_episode(duration_s=1.5)
        assert result.outcome == SAVED
        ep = store.get_episode(0, keys=["image.top", "state"])
        sync = store.episode_metadata(0)["stats"]["sync"]
        timing = store.timing(0)

    # both clocks are stored: t_host (host monotonic) for every stream, and the raw device stamps
    # apart from it (the camera's epoch-based ms as seconds; NaN for the arm, which has no clock)
    camera_t = timing["image.top"]
    assert np.all(np.abs(camera_t["t_host"] - t0) < 60.0)
    assert np.all(camera_t["t_device"] > 1e9) and np.all(np.diff(camera_t["t_device"]) >= 0)
    assert np.all(np.isnan(timing["state.arm"]["t_device"]))

    # what each row holds, and when it was really captured (on the host's monotonic clock)
    indices = [int(round(np.median(img[..., 1]))) for img in ep["image.top"]]
    assert all(np.array_equal(img, realsense.color_image(i)) for img, i in zip(ep["image.top"], indices))
    t_cam = np.array([realsense.capture_time(i) for i in indices])
    ticks = ep["state"][:, 0].astype(np.float64) / RAD_PER_TICK + ZERO
    t_arm = t0 + (ticks - RAMP_START) / RAMP_RATE
    true_skew_ms = np.abs(t_cam - t_arm) * 1e3
    half_period_ms = 500.0 / FPS

    # the right frames: a row's frame is the one captured nearest the arm state beside it. On a
    # shared host a frame can reach the recorder after the tick that wanted it; the recorder then
    # keeps the older frame and must say so. The contract: when its own stamps show the host kept
    # up (at most 10% of rows skewed by more than half a period), the choice is right - most rows
    # exact, none further than the neighbouring frame unless its own stored skew says it was late
    # (a frame that reached the recorder after its tick: 103 ms stored for a row 3 frames off in
    # one CI run), median true skew within half a period; when the host did not keep up, the skew
    # is in the stored stamps and the report (checked below), not hidden.
    nearest = [_nearest_frame(realsense, i, t) for i, t in zip(indices, t_arm, strict=True)]
    off = np.abs(np.array(indices) - np.array(nearest))
    assert len(indices) >= 0.5 * 1.5 * FPS
    stored_skew_ms = np.abs(camera_t["t_host"] - timing["state.arm"]["t_host"]) * 1e3
    if np.mean(stored_skew_ms > half_period_ms) <= 0.1:
        flagged = stored_skew_ms > half_period_ms
        assert np.mean(off == 0) >= 0.75 and np.all((off <= 1) | flagged), (indices, nearest, stored_skew_ms)
        assert np.percentile(true_skew_ms, 50) <= half_period_ms
    assert np.all(np.diff(indices) >= 0)

    # the skew report is correct: milliseconds, not the 1.7e9 s between the epoch and the host's
    # boot, and its median agrees with the true one up to the mapping's error (the lowest
    # latency seen) and the arm's stamp (the middle of its bus round trip)
    # (the bound is the epoch mix-up's scale, not the host's punctuality: a loaded host stalls the
    # camera for a third of a second now and then, and the report must show that too)
    assert sync["skew_max_ms"] < 60e3
    assert sync["skew_max_ms"] == pytest.approx(stored_skew_ms.max(), abs=1.0)
    assert sync["skew_p50_ms"] == pytest.approx(float(np.percentile(true_skew_ms, 50)), abs=5.0)


def _nearest_frame(device: SoftwareRealSense, index: int, t: float) -> int:
    """The pushed frame (around `index`) whose true capture time is nearest host time `t`."""
    candidates = {}
    for i in range(index - 3, index + 4):
        try:
            candidates[i] = abs(device.capture_time(i) - t)
        except KeyError:
            continue
    return min(candidates, key=candidates.get)
