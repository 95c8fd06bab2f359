"""Intel RealSense D4xx cameras through pyrealsense2: color, optional aligned depth.

Config (`driver: realsense`), see configs/ur5e_realsense_spacemouse.yaml and configs/aloha.yaml:

    cameras:
      - name: top
        driver: realsense
        width: 640
        height: 480
        fps: 30
        params:
          serial: "123622270536"     # `tether find-cameras` lists serials
          depth: true                # uint16 depth in millimetres, aligned to the color image
          exposure_us: 8000          # manual exposure (turns auto exposure off); omit for auto
          sync_mode: master          # none | master | slave: hardware sync over the sync cable

Timestamps: `t_device` is the color frame's own timestamp, raw, in seconds. With
`global_time: true` (default) librealsense expresses it in its global-time domain: the camera's
hardware clock translated onto the host's *system* clock, i.e. Unix-epoch seconds (~1.7e9),
which is not the monotonic clock every other stream uses; with `global_time: false` it is the
camera's hardware clock (seconds since it powered up). Either way `t_host` is that stamp mapped
onto the host's monotonic clock by a DeviceClockMapper (offset measured from the lowest-latency
frames, drift tracked; tether.core.clock), so it is the capture time on the one time base the
recorder compares. The domain actually delivered is logged, and a domain switch restarts the
mapping. Global time still helps: its stamps do not drift against the host.

Frames are read by a background thread that keeps the newest set. If no frame arrives for
`reconnect_after_s` (unplugged cable, USB reset), ThreadedCamera closes the device and opens it
again by serial number, so a recording resumes by itself when the camera comes back.

Two ways to reach a device: `rs.pipeline` (real devices by serial, or a recording via
`recording:` -- `.db3` since librealsense 2.56, `.bag` before), or sensor-level streaming into an `rs.syncer` for a device object handed in directly
(that is how tests drive librealsense's own `software_device`, which a pipeline cannot start).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.core.clock import DeviceClockMapper
from tether.core.config import from_dict
from tether.core.errors import ConfigError, DeviceError
from tether.core.optional import require
from tether.robot.interfaces import CameraSpec, Frame, ThreadedCamera

log = logging.getLogger(__name__)

SYNC_MODES = {"none": 0, "master": 1, "slave": 2}


@dataclass
class RealSenseParams:
    serial: str | None = None  # None: the only connected camera
    depth: bool = False
    align_depth: bool = True  # depth resampled into the color camera's pixels
    exposure_us: float | None = None  # manual exposure; None keeps auto exposure
    gain: float | None = None
    sync_mode: str = "none"
    global_time: bool = True
    frame_timeout_ms: int = 200
    reconnect_after_s: float = 2.0
    recording: str | None = None  # play a librealsense recording (.db3 / .bag) instead


class RealSenseCamera(ThreadedCamera):
    def __init__(self, spec: CameraSpec, params: RealSenseParams | None = None, device: Any = None) -> None:
        self.params = params or RealSenseParams()
        super().__init__(spec, reconnect_after_s=self.params.reconnect_after_s)
        if self.params.sync_mode not in SYNC_MODES:
            raise ConfigError(
                f"Camera '{spec.name}': sync_mode '{self.params.sync_mode}' is not one of "
                f"{', '.join(SYNC_MODES)}."
            )
        if self.params.exposure_us is not None and not self.params.exposure_us > 0:
            raise ConfigError(f"Camera '{spec.name}': exposure_us must be positive.")
        self._device = device  # an rs.device given directly (software device, tests)
        self._source: _Source | None = None
        self._align = None
        # Device frame numbers restart when a camera is reopened; indices handed out never do.
        self._index_base = 0
        self._last_index = -1
        self.timestamp_domain: str | None = None
        self.clock = DeviceClockMapper(f"camera {spec.name}")

    @classmethod
    def from_config(cls, config) -> RealSenseCamera:
        params = from_dict(RealSenseParams, dict(config.params), f"cameras.{config.name}.params")
        spec = CameraSpec(config.name, config.width, config.height, config.fps, depth=params.depth)
        return cls(spec, params)

    # --- ThreadedCamera hooks ------------------------------------------------------------------
    def _open(self) -> None:
        rs = require("pyrealsense2", "realsense", "RealSense cameras")
        if self._device is not None:
            source: _Source = _SensorSource(rs, self._device, self.spec, self.params.depth)
        else:
            source = _PipelineSource(rs, self.spec, self.params)
        source.start()
        try:
            self._configure(rs, source.device)
        except BaseException:
            source.stop()
            raise
        self._source = source
        self._align = rs.align(rs.stream.color) if self.params.depth and self.params.align_depth else None

    def _grab(self) -> Frame | None:
        source = self._source
        if source is None:
            return None
        frames = source.wait(self.params.frame_timeout_ms)
        t_received = time.monotonic()
        if frames is None:
            return None  # ThreadedCamera reopens the device once this lasts reconnect_after_s
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        depth = frames.get_depth_frame() if self.params.depth else None
        if not color or (self.params.depth and not depth):
            return None  # an incomplete set (the syncer is still pairing streams)
        domain = str(color.get_frame_timestamp_domain()).split(".")[-1]
        if domain != self.timestamp_domain:
            if self.timestamp_domain is not None:
                self.clock.reset(f"its timestamps moved from {self.timestamp_domain} to {domain}")
            self.timestamp_domain = domain
            log.info("Camera '%s': timestamps in the %s domain", self.name, domain)
        image = np.asanyarray(color.get_data())
        if image.shape != (self.spec.height, self.spec.width, 3):
            raise DeviceError(
                f"Camera '{self.name}' delivered color frames of shape {image.shape}, configured "
                f"{self.spec.height}x{self.spec.width}x3."
            )
        depth_image = None
        if depth:
            depth_image = _depth_mm(depth, np.asanyarray(depth.get_data()))
        index = self._index_base + int(color.get_frame_number())
        if index <= self._last_index:
            return None  # a repeated or stale frame
        self._last_index = index
        t_device = color.get_timestamp() / 1000.0  # ms in the delivered domain -> s
        return Frame(
            image=image.copy(),
            t_device=t_device,
            t_host=self.clock.map(t_device, t_received),
            index=index,
            depth=depth_image,
        )

    def _release(self) -> None:
        if self._source is not None:
            self._source.stop()
            self._source = None

    # --- helpers -------------------------------------------------------------------------------
    def _configure(self, rs, device) -> None:
        """Exposure, gain, global time and hardware sync, on whichever sensors offer them."""
        sensors = list(device.query_sensors())
        color = _find_sensor(rs, sensors, "RGB Camera") or sensors[0]
        if self.params.exposure_us is not None:
            _set(rs, color, rs.option.enable_auto_exposure, 0, self.name)
            _set(rs, color, rs.option.exposure, self.params.exposure_us, self.name)
        if self.params.gain is not None:
            _set(rs, color, rs.option.gain, self.params.gain, self.name)
        for sensor in sensors:
            option = rs.option.global_time_enabled
            if sensor.supports(option) and not sensor.is_option_read_only(option):
                sensor.set_option(option, 1.0 if self.params.global_time else 0.0)
        if self.params.sync_mode != "none":
            stereo = _find_sensor(rs, sensors, "Stereo Module")
            if stereo is None or not stereo.supports(rs.option.inter_cam_sync_mode):
                raise DeviceError(
                    f"Camera '{self.name}' has no inter_cam_sync_mode option, so sync_mode "
                    f"'{self.params.sync_mode}' cannot be set. Hardware sync needs a D415/D435/D455 "
                    "with firmware >= 5.12 and the sync cable; use sync_mode: none otherwise."
                )
            stereo.set_option(rs.option.inter_cam_sync_mode, float(SYNC_MODES[self.params.sync_mode]))

    def connect(self) -> None:
        if not self.is_connected:
            self._index_base, self._last_index = 0, -1
        super().connect()

    def _on_reconnect(self) -> None:
        # The reopened device counts frames from zero again; keep handing out larger indices.
        self._index_base = self._last_index + 1


class _Source:
    device: Any

    def start(self) -> None: ...
    def wait(self, timeout_ms: int): ...
    def stop(self) -> None: ...


class _PipelineSource(_Source):
    """A live camera chosen by serial number (or a recording) through rs.pipeline."""

    def __init__(self, rs, spec: CameraSpec, params: RealSenseParams) -> None:
        self.rs, self.spec, self.params = rs, spec, params
        self.pipeline = None
        self.device = None

    def start(self) -> None:
        rs, spec, params = self.rs, self.spec, self.params
        config = rs.config()
        if params.recording:
            config.enable_device_from_file(params.recording, repeat_playback=False)
        else:
            serials = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
            if params.serial is None and len(serials) != 1:
                raise DeviceError(
                    f"Camera '{spec.name}': {len(serials)} RealSense cameras are connected "
                    f"({', '.join(serials) or 'none'}); set params.serial to pick one."
                )
            serial = params.serial or serials[0]
            if serial not in serials:
                raise DeviceError(
                    f"Camera '{spec.name}': no RealSense with serial {serial} (found: "
                    f"{', '.join(serials) or 'none'}). Check the USB 3 cable and `tether find-cameras`."
                )
            config.enable_device(serial)
        fps = int(round(spec.fps))
        config.enable_stream(rs.stream.color, spec.width, spec.height, rs.format.rgb8, fps)
        if params.depth:
            config.enable_stream(rs.stream.depth, spec.width, spec.height, rs.format.z16, fps)
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(config)
        except RuntimeError as exc:
            raise DeviceError(
                f"Camera '{spec.name}': the camera refused {spec.width}x{spec.height} @ {fps} fps"
                f"{' with depth' if params.depth else ''}: {exc}. Choose a mode it supports "
                "(realsense-viewer lists them); USB 2 links support fewer modes."
            ) from exc
        self.pipeline = pipeline
        self.device = profile.get_device()

    def wait(self, timeout_ms: int):
        ok, frames = self.pipeline.try_wait_for_frames(timeout_ms)
        return frames if ok else None

    def stop(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except RuntimeError:
                pass
            self.pipeline = None


class _SensorSource(_Source):
    """Open matching stream profiles on a device's sensors and pair them with an rs.syncer."""

    def __init__(self, rs, device, spec: CameraSpec, depth: bool) -> None:
        self.rs, self.device, self.spec, self.depth = rs, device, spec, depth
        self.syncer = None
        self._started: list = []

    def start(self) -> None:
        rs = self.rs
        wanted = [(rs.stream.color, rs.format.rgb8)]
        if self.depth:
            wanted.append((rs.stream.depth, rs.format.z16))
        self.syncer = rs.syncer()
        for stream, fmt in wanted:
            sensor, profile = self._find_profile(stream, fmt)
            sensor.open(profile)
            sensor.start(self.syncer)
            self._started.append(sensor)

    def wait(self, timeout_ms: int):
        ok, frames = self.syncer.try_wait_for_frames(timeout_ms)
        return frames if ok else None

    def stop(self) -> None:
        for sensor in self._started:
            try:
                sensor.stop()
                sensor.close()
            except RuntimeError:
                pass
        self._started.clear()

    def _find_profile(self, stream, fmt):
        spec = self.spec
        offered = []
        for sensor in self.device.query_sensors():
            for profile in sensor.get_stream_profiles():
                if profile.stream_type() != stream or not profile.is_video_stream_profile():
                    continue
                video = profile.as_video_stream_profile()
                offered.append(f"{video.width()}x{video.height()}@{profile.fps()} {profile.format()}")
                if (
                    video.width() == spec.width
                    and video.height() == spec.height
                    and profile.fps() == int(round(spec.fps))
                    and profile.format() == fmt
                ):
                    return sensor, profile
        raise DeviceError(
            f"Camera '{spec.name}': no {stream} stream at {spec.width}x{spec.height} @ "
            f"{spec.fps:g} fps in {fmt}. Offered: {', '.join(offered) or 'none'}."
        )


def _find_sensor(rs, sensors, name: str):
    for sensor in sensors:
        if sensor.get_info(rs.camera_info.name) == name:
            return sensor
    return None


def _set(rs, sensor, option, value: float, camera: str) -> None:
    if not sensor.supports(option):
        raise DeviceError(f"Camera '{camera}': the color sensor has no option {option}.")
    valid = sensor.get_option_range(option)
    if not valid.min <= value <= valid.max:
        raise ConfigError(
            f"Camera '{camera}': {option} = {value} is outside the camera's range "
            f"[{valid.min:g}, {valid.max:g}]."
        )
    sensor.set_option(option, float(value))


def _depth_mm(depth_frame, raw: np.ndarray) -> np.ndarray:
    """Depth in millimetres whatever the sensor's depth unit (D405 uses 0.1 mm)."""
    units = depth_frame.get_units()  # metres per raw unit
    if abs(units - 0.001) < 1e-9:
        return raw.copy()
    return np.clip(np.rint(raw.astype(np.float64) * units * 1000.0), 0, 65535).astype(np.uint16)
