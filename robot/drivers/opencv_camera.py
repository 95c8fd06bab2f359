"""UVC / V4L2 webcams (and video files) through cv2.VideoCapture.

Config (`driver: opencv`):

    cameras:
      - name: wrist
        driver: opencv
        width: 640
        height: 480
        fps: 30
        params:
          source: /dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920-video-index0   # or 0, or a file
          fourcc: MJPG      # USB 2 webcams need MJPG for 640x480 @ 30 fps
          strict: true      # refuse a resolution / fps / format the device does not grant

Why strict by default: V4L2 silently falls back to the nearest mode it supports (often 640x480
at 5 fps over YUYV), and a dataset recorded at the wrong rate is only noticed at training time.
A video file plays back paced at the configured fps (looping by default), which is how the
driver is tested here and a handy way to replay a scene.

Timestamps: a live device's `t_device` is `CAP_PROP_POS_MSEC` in seconds when the backend
reports one (V4L2: the driver's buffer timestamp, taken when the frame was captured, on the
kernel's clock), and `t_host` is that stamp mapped onto the host's monotonic clock by a
DeviceClockMapper (tether.core.clock), so the capture time survives a late read. A backend that
reports no stamp (0 or negative, common for GStreamer/MSMF or a stuck value) gives the host
receive time for both. A file's frames are stamped with their playback schedule, which is on
the host's monotonic clock already (`t_host == t_device`). A source that stops delivering is
reopened after `reconnect_after_s` by ThreadedCamera.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tether.core.clock import DeviceClockMapper
from tether.core.config import from_dict
from tether.core.errors import ConfigError, DeviceError
from tether.core.optional import require
from tether.robot.interfaces import CameraSpec, Frame, ThreadedCamera

log = logging.getLogger(__name__)


@dataclass
class OpenCVParams:
    source: int | str = 0
    fourcc: str | None = "MJPG"
    backend: str = "auto"  # auto | v4l2 | ffmpeg | gstreamer
    strict: bool = True
    loop: bool = True  # files only: restart at the end instead of stalling
    fps_tolerance: float = 1.0  # Hz of disagreement accepted before strict refuses
    reconnect_after_s: float = 1.0  # reopen the device after this long without a frame


class OpenCVCamera(ThreadedCamera):
    def __init__(self, spec: CameraSpec, params: OpenCVParams | None = None) -> None:
        self.params = params or OpenCVParams()
        super().__init__(spec, reconnect_after_s=self.params.reconnect_after_s)
        if self.params.fourcc is not None and len(self.params.fourcc) != 4:
            raise ConfigError(f"Camera '{spec.name}': fourcc must have 4 characters, got '{self.params.fourcc}'.")
        if self.params.backend not in _BACKENDS:
            raise ConfigError(
                f"Camera '{spec.name}': backend '{self.params.backend}' is not one of {sorted(_BACKENDS)}."
            )
        self._cap = None
        self._index = 0
        self._next_t = 0.0
        self._last_msec: float | None = None
        self.clock = DeviceClockMapper(f"camera {spec.name}")

    @classmethod
    def from_config(cls, config) -> OpenCVCamera:
        params = from_dict(OpenCVParams, dict(config.params), f"cameras.{config.name}.params")
        spec = CameraSpec(config.name, config.width, config.height, config.fps)
        return cls(spec, params)

    @property
    def is_file(self) -> bool:
        source = self.params.source
        return isinstance(source, str) and not source.startswith("/dev/") and Path(source).is_file()

    # --- ThreadedCamera hooks ------------------------------------------------------------------
    def _open(self) -> None:
        cv2 = require("cv2", "opencv", "USB cameras", package="opencv-python-headless")

        source = self.params.source
        if isinstance(source, str) and not self.is_file and not os.path.exists(source):
            raise DeviceError(
                f"Camera '{self.name}': '{source}' does not exist. List cameras with "
                "`tether find-cameras`; prefer the stable /dev/v4l/by-id/... paths."
            )
        cap = cv2.VideoCapture(source, _backend_table()[self.params.backend])
        if not cap.isOpened():
            cap.release()
            raise DeviceError(
                f"Camera '{self.name}': OpenCV could not open '{source}'. Check that it exists, that "
                "no other program holds it, and that your user is in the 'video' group."
            )
        try:
            if not self.is_file:
                self._request_mode(cap)
            self._check_mode(cap)
        except BaseException:
            cap.release()
            raise
        self._cap = cap
        self._next_t = max(self._next_t, time.monotonic())
        self._last_msec = None

    def _grab(self) -> Frame | None:
        import cv2

        cap = self._cap
        if cap is None:
            return None
        if self.is_file:
            delay = self._next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t_device = self._next_t
            self._next_t = max(self._next_t + 1.0 / self.spec.fps, time.monotonic() - 0.5)
        ok, bgr = cap.read()
        t_received = time.monotonic()
        if not ok and self.is_file and self.params.loop:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = cap.read()
        if not ok or bgr is None:
            time.sleep(0.005)  # a dead source fails at once; ThreadedCamera reopens it in time
            return None
        if self.is_file:
            t_host = t_device  # the playback schedule is on the host clock already
        else:
            t_device, t_host = self._stamp(cap.get(cv2.CAP_PROP_POS_MSEC), t_received)
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if image.shape[:2] != (self.spec.height, self.spec.width):
            raise DeviceError(
                f"Camera '{self.name}' delivered {image.shape[1]}x{image.shape[0]} frames, "
                f"configured {self.spec.width}x{self.spec.height}."
            )
        frame = Frame(image=np.ascontiguousarray(image), t_device=t_device, t_host=t_host, index=self._index)
        self._index += 1
        return frame

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    # --- helpers -------------------------------------------------------------------------------
    def _request_mode(self, cap) -> None:
        import cv2

        if self.params.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.params.fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.spec.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.spec.height)
        cap.set(cv2.CAP_PROP_FPS, self.spec.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of stale ones

    def _check_mode(self, cap) -> None:
        import cv2

        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        problems = []
        if (width, height) != (self.spec.width, self.spec.height):
            problems.append(f"resolution {width}x{height} instead of {self.spec.width}x{self.spec.height}")
        if fps > 0 and abs(fps - self.spec.fps) > self.params.fps_tolerance:
            problems.append(f"{fps:g} fps instead of {self.spec.fps:g}")
        if self.params.fourcc and not self.is_file:
            code = int(cap.get(cv2.CAP_PROP_FOURCC))
            granted = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
            if code and granted != self.params.fourcc:
                problems.append(f"format {granted!r} instead of {self.params.fourcc!r}")
        if not problems:
            return
        message = (
            f"Camera '{self.name}' ({self.params.source}) granted {', '.join(problems)}. "
            "Pick a mode the device supports (`v4l2-ctl --list-formats-ext -d <device>`), or set "
            "strict: false to accept what it offers."
        )
        if self.params.strict:
            raise DeviceError(message)
        log.warning(message)

    def connect(self) -> None:
        if not self.is_connected:
            self._index = 0  # frame indices restart per session, never on a reconnect
            self._next_t = 0.0
        super().connect()

    def _stamp(self, msec: float, t_received: float) -> tuple[float, float]:
        """(t_device, t_host) of a live frame from the backend's position stamp in ms.

        A stamp is meaningful when positive and advancing; otherwise (a backend that reports
        nothing, or repeats one value) the host receive time stands in for both.
        """
        last, self._last_msec = self._last_msec, msec
        if not msec > 0 or (last is not None and msec == last):
            return t_received, t_received
        t_device = msec / 1000.0
        return t_device, self.clock.map(t_device, t_received)


def _backend_table() -> dict[str, int]:
    import cv2

    return {
        "auto": cv2.CAP_ANY,
        "v4l2": cv2.CAP_V4L2,
        "ffmpeg": cv2.CAP_FFMPEG,
        "gstreamer": cv2.CAP_GSTREAMER,
    }


# Names only: cv2 (tether[opencv]) is imported at connect, so a robot without USB cameras
# never needs it.
_BACKENDS = ("auto", "v4l2", "ffmpeg", "gstreamer")
