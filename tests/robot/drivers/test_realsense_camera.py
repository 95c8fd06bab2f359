"""RealSenseCamera through pyrealsense2, fed by librealsense's own software_device.

Frames are injected with device timestamps into real rs sensors, paired by rs.syncer and
aligned by rs.align: only the USB transport is missing. The rs.pipeline path cannot start a
software device (it never enumerates in the context); it is covered for its error messages.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tether.core.errors import ConfigError, DeviceError
from tether.robot.config import CameraConfig
from tether.robot.drivers.realsense import RealSenseCamera, RealSenseParams
from tether.robot.interfaces import CameraSpec
from tether.robot.testing.contract import CameraContract

rs = pytest.importorskip("pyrealsense2")
from tether.robot.emulators.realsense import SoftwareRealSense  # noqa: E402

W, H, FPS = 64, 48, 30.0


@pytest.fixture
def camera_device():
    device = SoftwareRealSense(W, H, FPS, serial="832112070001")
    device.start()
    yield device
    device.stop()


def make(device: SoftwareRealSense, **params) -> RealSenseCamera:
    spec = CameraSpec("top", W, H, FPS, depth=params.get("depth", False))
    return RealSenseCamera(spec, RealSenseParams(**params), device=device.device)


class TestRealSenseContract(CameraContract):
    @pytest.fixture
    def make_camera(self, camera_device):
        return lambda: make(camera_device, depth=True)


def test_color_and_aligned_depth_carry_device_timestamps(camera_device, wait_until):
    with make(camera_device, depth=True) as cam:
        t0, m0 = time.time(), time.monotonic()
        frames = {}

        def five_frames() -> bool:
            frame = cam.read()
            frames[frame.index] = frame
            return len(frames) >= 5

        wait_until(five_frames, what="5 distinct frames")
        t1, m1 = time.time(), time.monotonic()
        assert cam.timestamp_domain == "global_time"
    for index, frame in frames.items():
        np.testing.assert_array_equal(frame.image, camera_device.color_image(index))
        assert frame.depth is not None and frame.depth.dtype == np.uint16
        # aligned with identity extrinsics and equal intrinsics: the depth survives resampling
        assert np.median(frame.depth) == 500 + index
        # global time: device stamps on the host's wall clock, while we were reading (a frame
        # read first may have been captured up to a period or so before)
        assert t0 - 1.0 < frame.t_device <= t1
        # ... and t_host is the same instant on the host's monotonic clock, not the epoch
        assert m0 - 1.0 < frame.t_host <= m1
    ordered = [frames[i] for i in sorted(frames)]
    # device time advances with the frame index (how evenly depends on the host's scheduler)
    assert np.all(np.diff([f.t_device for f in ordered]) > 0)
    assert np.all(np.diff([f.t_host for f in ordered]) >= 0)
    assert cam.clock.offset == pytest.approx(time.monotonic() - time.time(), abs=0.5)


def test_exposure_gain_global_time_and_sync_mode_reach_the_sensors(camera_device):
    with make(camera_device, depth=True, exposure_us=8000, gain=32, sync_mode="slave"):
        color, depth = camera_device.color_sensor, camera_device.depth_sensor
        assert color.get_option(rs.option.enable_auto_exposure) == 0
        assert color.get_option(rs.option.exposure) == 8000
        assert color.get_option(rs.option.gain) == 32
        assert color.get_option(rs.option.global_time_enabled) == 1
        assert depth.get_option(rs.option.inter_cam_sync_mode) == 2


def test_sync_mode_on_a_camera_without_it_is_refused():
    device = SoftwareRealSense(W, H, FPS, sync_option=False)
    device.start()
    try:
        with pytest.raises(DeviceError, match="inter_cam_sync_mode"):
            make(device, depth=True, sync_mode="master").connect()
    finally:
        device.stop()


def test_exposure_outside_the_range_names_the_range(camera_device):
    with pytest.raises(ConfigError, match=r"\[1, 10000\]"):
        make(camera_device, exposure_us=50000).connect()


def test_unsupported_mode_lists_what_the_camera_offers(camera_device):
    cam = RealSenseCamera(CameraSpec("top", 1280, 720, 30), RealSenseParams(), device=camera_device.device)
    with pytest.raises(DeviceError, match=r"Offered: 64x48@30"):
        cam.connect()


def test_reconnects_after_the_camera_disappears(camera_device, wait_until):
    with make(camera_device, reconnect_after_s=0.3, frame_timeout_ms=50) as cam:
        before = cam.read().index
        camera_device.unplug()
        time.sleep(0.8)
        assert cam.read().index - before <= 2  # nothing new while unplugged
        camera_device.replug()
        wait_until(lambda: cam.read().index > before + 5, what="frames after the replug")
        assert cam.reconnects >= 1


def test_two_cameras_master_and_slave(camera_device):
    second = SoftwareRealSense(W, H, FPS, serial="832112070002")
    second.start()
    try:
        with make(camera_device, sync_mode="master") as a, make(second, sync_mode="slave") as b:
            fa, fb = a.read(), b.read()
            assert camera_device.depth_sensor.get_option(rs.option.inter_cam_sync_mode) == 1
            assert second.depth_sensor.get_option(rs.option.inter_cam_sync_mode) == 2
            assert abs(fa.t_device - fb.t_device) < 1.0  # one device time base (global time)
            assert abs(fa.t_host - fb.t_host) < 1.0  # and both mapped onto the host's
    finally:
        second.stop()


def test_pipeline_path_reports_missing_serial_and_bad_config():
    cam = RealSenseCamera.from_config(
        CameraConfig("top", "realsense", 640, 480, 30, params={"serial": "999"})
    )
    with pytest.raises(DeviceError, match="no RealSense with serial 999"):
        cam.connect()
    with pytest.raises(ConfigError, match="sync_mode"):
        RealSenseCamera.from_config(CameraConfig("top", "realsense", params={"sync_mode": "leader"}))
    with pytest.raises(ConfigError, match="exposure"):
        RealSenseCamera.from_config(CameraConfig("top", "realsense", params={"exposure": 3}))


def test_pipeline_path_plays_a_recording_with_aligned_depth(tmp_path, wait_until):
    device = SoftwareRealSense(W, H, FPS, serial="832112070003")
    path = device.record(str(tmp_path / "take.db3"), seconds=1.0)
    config = CameraConfig("top", "realsense", W, H, FPS, params={"recording": path, "depth": True})
    with RealSenseCamera.from_config(config) as cam:
        frames = {}

        def five_frames() -> bool:
            frame = cam.read()
            frames[frame.index] = frame
            return len(frames) >= 5

        wait_until(five_frames, what="5 distinct frames from the recording")
    for index, frame in frames.items():
        np.testing.assert_array_equal(frame.image, device.color_image(index))
        assert np.median(frame.depth) == 500 + index
