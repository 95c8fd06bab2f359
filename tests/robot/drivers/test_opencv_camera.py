"""OpenCVCamera through cv2.VideoCapture on a real source: a generated MJPG video file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tether.core.errors import ConfigError, DeviceError
from tether.robot.config import CameraConfig
from tether.robot.drivers.opencv_camera import OpenCVCamera
from tether.robot.testing.contract import CameraContract

W, H, FPS, N = 64, 48, 30.0, 12


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    """N frames: a red left half (in RGB) and a gray level that encodes the frame number."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    assert writer.isOpened()
    for i in range(N):
        bgr = np.zeros((H, W, 3), np.uint8)
        bgr[:, : W // 2] = (0, 0, 255)  # red, in OpenCV's BGR order
        bgr[:, W // 2 :] = 20 * i
        writer.write(bgr)
    writer.release()
    return str(path)


def config(source, **kw) -> CameraConfig:
    params = {"source": source} | kw.pop("params", {})
    return CameraConfig(name="wrist", driver="opencv", width=kw.get("width", W),
                        height=kw.get("height", H), fps=kw.get("fps", FPS), params=params)


class TestOpenCVContract(CameraContract):
    @pytest.fixture
    def make_camera(self, video):
        return lambda: OpenCVCamera.from_config(config(video))


def test_frames_are_rgb_in_order_and_paced(video, wait_until):
    with OpenCVCamera.from_config(config(video)) as cam:
        seen = {}

        def eight_frames() -> bool:
            frame = cam.read()
            seen[frame.index] = frame
            return len(seen) >= 8

        wait_until(eight_frames, what="8 distinct frames")
    frames = [seen[i] for i in sorted(seen)][:8]
    first = frames[0].image
    assert first[:, : W // 4, 0].mean() > 200 and first[:, : W // 4, 2].mean() < 60  # red is R
    levels = [f.image[:, -8:].mean() for f in frames]
    indices = [f.index for f in frames]
    np.testing.assert_allclose(levels, [20 * (i % N) for i in indices], atol=6)
    # paced at the configured rate: a frame's device time is its index over the fps (a frame the
    # polling above missed under load leaves a gap of whole periods, never a shifted stamp)
    periods = np.diff([f.t_device for f in frames])
    np.testing.assert_allclose(periods, np.diff(indices) / FPS, atol=1e-6)


def test_file_loops_when_it_ends(video, wait_until):
    with OpenCVCamera.from_config(config(video, fps=120.0, params={"fps_tolerance": 100.0})) as cam:
        wait_until(lambda: cam.read().index >= N + 3, what=f"frame {N + 3} of a {N}-frame file")
        frame = cam.read()
    assert frame.index >= N + 3
    assert frame.image[:, -8:].mean() == pytest.approx(20 * (frame.index % N), abs=6)


def test_refused_resolution_and_fps_are_named(video):
    with pytest.raises(DeviceError, match=r"resolution 64x48 instead of 640x480"):
        OpenCVCamera.from_config(config(video, width=640, height=480)).connect()
    with pytest.raises(DeviceError, match=r"30 fps instead of 60"):
        OpenCVCamera.from_config(config(video, fps=60.0)).connect()


def test_missing_device_and_bad_params_are_clear(tmp_path):
    with pytest.raises(DeviceError, match="find-cameras"):
        OpenCVCamera.from_config(config("/dev/video_missing")).connect()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video")
    with pytest.raises(DeviceError, match="could not open"):
        OpenCVCamera.from_config(config(str(junk))).connect()
    with pytest.raises(ConfigError, match="fourcc"):
        OpenCVCamera.from_config(config(0, params={"fourcc": "MJPEG"}))
    with pytest.raises(ConfigError, match="backend"):
        OpenCVCamera.from_config(config(0, params={"backend": "directshow"}))


def test_reopens_a_source_that_stopped_delivering(video, wait_until):
    """With loop: false the file runs dry like a stalled device: the driver reopens it."""
    params = {"loop": False, "reconnect_after_s": 0.2, "fps_tolerance": 100.0}
    with OpenCVCamera.from_config(config(video, fps=120.0, params=params)) as cam:
        # frames keep coming after the stall
        wait_until(lambda: cam.read().index >= N + 2, what="frames after the file ran dry")
        assert cam.reconnects >= 1


def test_live_stamps_are_mapped_onto_the_host_clock_or_replaced_by_receive_time():
    """A live backend's POS_MSEC (V4L2: the kernel's buffer time) is mapped; none is replaced."""
    cam = OpenCVCamera.from_config(config(0))
    # a device clock 1000 s behind the host's, frames received 2-6 ms after capture
    for k, latency in enumerate([0.006, 0.002, 0.004, 0.005]):
        t_capture = 5000.0 + k / FPS
        t_device, t_host = cam._stamp((t_capture - 1000.0) * 1000.0, t_capture + latency)
        assert t_device == pytest.approx(t_capture - 1000.0)
        assert t_host <= t_capture + latency
    assert t_host == pytest.approx(t_capture + 0.002)  # offset from the fastest frame
    # a backend without stamps (0), or stuck on one value: the receive time stands in
    assert cam._stamp(0.0, 6000.0) == (6000.0, 6000.0)
    cam._stamp(5.0, 6000.1)
    assert cam._stamp(5.0, 6000.2) == (6000.2, 6000.2)
