"""LeRobot camera videos with PyAV: episodes back to back in mp4 files, and reading them back.

Writing: one encoder per camera runs over all episodes, so an episode's segment of the file is
[from_timestamp, to_timestamp) with frame i of the file at exactly i / fps, which is what
lerobot's reader (torchcodec or pyav) expects: it seeks to `from_timestamp + timestamp` and
accepts a frame within 1e-4 s. A file is closed and the next one started once it passes the
size limit (lerobot's `video_files_size_in_mb`). Encoder settings are lerobot's
(`video_utils._get_codec_options`): yuv420p, GOP 2, CRF 30, SVT-AV1 preset 12. Data layer.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError, StoreError
from tether.core.optional import missing_extra

try:
    import av
except ImportError as exc:
    raise missing_extra(__name__, "av") from exc

#: --vcodec value -> (PyAV encoder, lerobot's name for it in info.json "video.codec").
VCODECS = {"h264": "libx264", "av1": "libsvtav1"}
PIX_FMT = "yuv420p"


def codec_options(encoder: str, crf: int, gop: int) -> dict[str, str]:
    options = {"g": str(gop), "crf": str(crf)}
    if encoder == "libsvtav1":
        options["preset"] = "12"
    return options


class VideoFileWriter:
    """One camera's frames, all episodes in order, into numbered mp4 files."""

    def __init__(self, root: Path, video_key: str, fps: float, vcodec: str, crf: int, gop: int,
                 max_mb: float, chunks_size: int, path_template: str) -> None:
        if vcodec not in VCODECS:
            raise ConfigError(f"--vcodec {vcodec!r} is not supported; use one of {', '.join(VCODECS)}.")
        self.root, self.key, self.fps = root, video_key, Fraction(fps).limit_denominator(1001)
        self.encoder, self.crf, self.gop = VCODECS[vcodec], crf, gop
        self.max_bytes, self.chunks_size, self.template = max_mb * 1024 * 1024, chunks_size, path_template
        self.file_counter = -1
        self._container = None
        self._stream = None
        self._frames_in_file = 0
        self._bytes = 0
        self.first_path: Path | None = None

    @property
    def location(self) -> dict[str, int]:
        return {"chunk_index": self.file_counter // self.chunks_size,
                "file_index": self.file_counter % self.chunks_size}

    def add_episode(self, frames: np.ndarray) -> dict[str, Any]:
        """Encode one episode (T, H, W, 3) uint8; returns its episodes-parquet columns."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise StoreError(f"{self.key}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}.")
        height, width = frames.shape[1:3]
        if height % 2 or width % 2:
            raise StoreError(
                f"{self.key}: {width}x{height} frames cannot be stored as {PIX_FMT} video (needs even "
                "width and height); crop or resize the camera to an even size first."
            )
        if self._container is None or self._bytes >= self.max_bytes:
            self._open(width, height)
        start = self._frames_in_file
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = self._frames_in_file
            vf.time_base = 1 / self.fps
            self._mux(self._stream.encode(vf))
            self._frames_in_file += 1
        loc = self.location
        prefix = f"videos/{self.key}/"
        return {
            prefix + "chunk_index": loc["chunk_index"], prefix + "file_index": loc["file_index"],
            prefix + "from_timestamp": float(start / self.fps),
            prefix + "to_timestamp": float(self._frames_in_file / self.fps),
        }

    def close(self) -> None:
        if self._container is not None:
            self._mux(self._stream.encode())
            self._container.close()
            self._container = None

    def _open(self, width: int, height: int) -> None:
        self.close()
        self.file_counter += 1
        path = self.root / self.template.format(video_key=self.key, **self.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.first_path = self.first_path or path
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream(
            self.encoder, rate=self.fps, options=codec_options(self.encoder, self.crf, self.gop))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, PIX_FMT
        self._stream.codec_context.time_base = 1 / self.fps
        self._frames_in_file = 0
        self._bytes = 0

    def _mux(self, packets) -> None:
        for packet in packets:
            self._bytes += packet.size
            self._container.mux(packet)


def video_info(path: Path) -> dict[str, Any]:
    """The `info` block lerobot stores with a video feature (video_utils.get_video_info)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        has_audio = len(container.streams.audio) > 0
        return {
            "video.height": stream.height, "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name, "video.pix_fmt": stream.pix_fmt,
            "video.is_depth_map": False, "video.fps": int(stream.base_rate),
            "video.channels": 3, "has_audio": has_audio,
        }


def read_segment(path: Path, from_ts: float, timestamps: np.ndarray, tolerance: float) -> np.ndarray:
    """Frames at `from_ts + timestamps` (seconds) of one mp4, as (T, H, W, 3) uint8 RGB.

    Seeks to the key frame before the segment and decodes forward, keeping for each wanted time
    the frame whose presentation time is nearest; refuses a gap wider than `tolerance`.
    """
    wanted = from_ts + np.asarray(timestamps, np.float64)
    if len(wanted) == 0:
        raise StoreError(f"{path}: empty episode segment at {from_ts:.3f} s.")
    try:
        container = av.open(str(path))
    except (OSError, av.error.FFmpegError) as exc:
        raise StoreError(f"Cannot open video {path}: {exc}") from exc
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        container.seek(int(max(wanted[0] - 1.0, 0.0) / stream.time_base), stream=stream, backward=True)
        out = None
        best = np.full(len(wanted), np.inf)
        last = wanted[-1] + tolerance
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            if t > last:
                break
            i = int(np.argmin(np.abs(wanted - t)))
            gap = abs(wanted[i] - t)
            if gap < best[i]:
                image = frame.to_ndarray(format="rgb24")
                if out is None:
                    out = np.empty((len(wanted), *image.shape), np.uint8)
                out[i], best[i] = image, gap
    if out is None or not np.all(best <= tolerance):
        missing = int(np.sum(best > tolerance))
        raise StoreError(
            f"{path}: {missing} of {len(wanted)} frames between {wanted[0]:.3f} s and "
            f"{wanted[-1]:.3f} s are not in the video (within {tolerance} s); the file is "
            "truncated or its episodes' from/to timestamps do not match it."
        )
    return out
