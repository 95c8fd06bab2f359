"""A RealSense camera made of librealsense's own `software_device`, for tests and demos.

It registers a color sensor and a depth sensor with the options a D4xx exposes (exposure, auto
exposure, gain, depth units, inter-camera sync mode, global time), and a thread pushes frames at
the configured rate with device timestamps in the global-time domain (wall-clock milliseconds,
which is what librealsense's syncer pairs well). The frames are real `rs.frame` objects that go
through librealsense's syncer and `rs.align`, so the driver's processing runs unchanged.

`unplug()` stops the frames (as a pulled cable does) and `replug()` resumes them, to test the
driver's reconnect path.

Clocks: like a real D4xx in global-time mode, the stamps are Unix-epoch milliseconds, not the
host's monotonic clock every other stream is on; the driver must map them. `capture_time(index)`
gives the true capture instant of a pushed frame on the host's monotonic clock, so tests can
check that mapping and the recorder's frame choice against the truth.
"""

from __future__ import annotations

import threading
import time

import numpy as np


class SoftwareRealSense:
    def __init__(
        self,
        width: int = 64,
        height: int = 48,
        fps: float = 30.0,
        serial: str = "000000000001",
        depth: bool = True,
        sync_option: bool = True,
    ) -> None:
        import pyrealsense2 as rs

        self.rs = rs
        self.width, self.height, self.fps = width, height, fps
        self.serial = serial
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.device.register_info(rs.camera_info.name, "Intel RealSense D435 (software device)")
        self.device.register_info(rs.camera_info.firmware_version, "5.16.0.1")
        intr = rs.intrinsics()
        intr.width, intr.height = width, height
        intr.fx = intr.fy = float(width)
        intr.ppx, intr.ppy = width / 2, height / 2
        intr.model = rs.distortion.none
        intr.coeffs = [0.0] * 5

        self.color_sensor = self.device.add_sensor("RGB Camera")
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
        stream.width, stream.height, stream.fps = width, height, int(fps)
        stream.bpp, stream.fmt, stream.intrinsics = 3, rs.format.rgb8, intr
        self.color_profile = self.color_sensor.add_video_stream(stream).as_video_stream_profile()
        # option_range(min, max, default, step) in this binding
        self.color_sensor.add_option(rs.option.exposure, rs.option_range(1, 10000, 156, 1), True)
        self.color_sensor.add_option(rs.option.enable_auto_exposure, rs.option_range(0, 1, 1, 1), True)
        self.color_sensor.add_option(rs.option.gain, rs.option_range(0, 128, 64, 1), True)
        self.color_sensor.add_option(rs.option.global_time_enabled, rs.option_range(0, 1, 0, 1), True)

        self.depth_sensor = None
        self.depth_profile = None
        if depth:
            self.depth_sensor = self.device.add_sensor("Stereo Module")
            dstream = rs.video_stream()
            dstream.type, dstream.index, dstream.uid = rs.stream.depth, 0, 1
            dstream.width, dstream.height, dstream.fps = width, height, int(fps)
            dstream.bpp, dstream.fmt, dstream.intrinsics = 2, rs.format.z16, intr
            self.depth_profile = self.depth_sensor.add_video_stream(dstream).as_video_stream_profile()
            self.depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
            self.depth_sensor.add_option(rs.option.global_time_enabled, rs.option_range(0, 1, 0, 1), True)
            if sync_option:
                self.depth_sensor.add_option(
                    rs.option.inter_cam_sync_mode, rs.option_range(0, 2, 0, 1), True
                )
            identity = rs.extrinsics()
            identity.rotation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
            identity.translation = [0.0, 0.0, 0.0]
            self.depth_profile.register_extrinsics_to(self.color_profile, identity)
            self.color_profile.register_extrinsics_to(self.depth_profile, identity)

        self.frames_pushed = 0
        self._capture: dict[int, float] = {}  # frame index -> capture time, host monotonic
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._plugged = threading.Event()
        self._plugged.set()

    # --- frame content (deterministic, so tests can check what arrives) -----------------------
    def color_image(self, index: int) -> np.ndarray:
        image = np.zeros((self.height, self.width, 3), np.uint8)
        image[..., 0] = 200  # strong red channel: catches RGB/BGR swaps
        image[..., 1] = index % 256
        image[..., 2] = np.arange(self.width, dtype=np.uint8)[None, :]
        return image

    def depth_image(self, index: int) -> np.ndarray:
        return np.full((self.height, self.width), 500 + (index % 1000), np.uint16)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start pushing frames (call after the driver has opened and started the sensors)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="software-realsense", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._thread = None

    def record(self, path: str, seconds: float = 1.0) -> str:
        """Record `seconds` of frames into a librealsense recording (.db3 since 2.56, .bag before).

        Playing it back (`params.recording`) exercises the rs.pipeline path of the driver,
        which a software device cannot reach directly.
        """
        rs = self.rs
        recorder = rs.recorder(str(path), self.device)
        queue = rs.frame_queue(1000)
        sensors = list(recorder.query_sensors())
        for sensor in sensors:
            sensor.open(sensor.get_stream_profiles()[0])
            sensor.start(queue)
        self.start()
        time.sleep(seconds)
        self.stop()
        for sensor in sensors:
            sensor.stop()
            sensor.close()
        del sensors, recorder  # the file is finalized when the recorder is destroyed
        return str(path)

    def capture_time(self, index: int) -> float:
        """When frame `index` was captured, on the host's monotonic clock (the last 10000 kept)."""
        try:
            return self._capture[index]
        except KeyError:
            raise KeyError(f"frame {index} was not pushed (or is older than the 10000 kept)") from None

    def unplug(self) -> None:
        self._plugged.clear()

    def replug(self) -> None:
        self._plugged.set()

    def _run(self) -> None:
        rs = self.rs
        period = 1.0 / self.fps
        next_t = time.monotonic()
        # A camera stamps each frame when its sensor exposed it, on a regular clock: stamp the
        # frame's scheduled time (on the host's wall clock), not when this thread got to push
        # it, so a loaded host that pushes late frames in a burst still gives evenly spaced
        # stamps, and librealsense pairs color and depth of the same frame.
        wall_offset = time.time() - next_t
        index = 0
        while not self._stop.is_set():
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t_frame = next_t
            next_t += period
            if not self._plugged.is_set():
                continue
            stamp_ms = (t_frame + wall_offset) * 1000.0
            self._capture[index] = t_frame
            self._capture.pop(index - 10000, None)
            try:
                self._push(self.color_sensor, self.color_profile, self.color_image(index), 3, stamp_ms, index)
                if self.depth_sensor is not None:
                    self._push(self.depth_sensor, self.depth_profile, self.depth_image(index), 2, stamp_ms, index)
            except RuntimeError:
                pass  # the sensor is not streaming (the driver closed it): drop the frame
            index += 1
            self.frames_pushed = index
        del rs

    def _push(self, sensor, profile, pixels, bpp, stamp_ms, index) -> None:
        rs = self.rs
        frame = rs.software_video_frame()
        frame.pixels = np.ascontiguousarray(pixels)
        frame.bpp = bpp
        frame.stride = self.width * bpp
        frame.timestamp = stamp_ms
        frame.domain = rs.timestamp_domain.global_time
        frame.frame_number = index
        frame.profile = profile
        if bpp == 2:
            frame.depth_units = 0.001
        sensor.on_video_frame(frame)
