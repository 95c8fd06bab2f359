"""Write episode videos that play in any browser (VP8 WebM through OpenCV's FFmpeg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tether.core.errors import TetherError


def write_webm(frames: Sequence[np.ndarray], path: Path, fps: float) -> Path:
    """Encode RGB uint8 HxWx3 frames; raises TetherError if this OpenCV build cannot."""
    import cv2

    if not frames:
        raise TetherError(f"No frames to write to {path}.")
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), float(fps), (width, height))
    if not writer.isOpened():
        raise TetherError(
            f"OpenCV could not open a VP8 WebM writer for {path}; install opencv-python-headless "
            "from PyPI (its wheels bundle FFmpeg with libvpx)."
        )
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
