"""Per-episode synchronization accounting for the recorder.

Every tick the recorder hands over, per stream, the capture time and (for cameras) the device
frame index of the sample it took. From those this module counts, per camera, dropped frames
(the index jumped by more than one between ticks) and duplicated frames (same index twice), the
cross-stream skew of each tick (newest minus oldest capture time), camera stalls (no new frame
for `stall_after_s`), and turns them into the stats stored in the episode metadata. It also
decides when to warn live; warnings are rate-limited to one per kind per second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class CameraCounters:
    frames: int = 0
    dropped: int = 0
    duplicated: int = 0
    stalls: int = 0
    last_index: int | None = None
    stalled: bool = False


@dataclass
class SyncMonitor:
    """Accumulates one episode's sync statistics; `tick()` is called once per recorded step."""

    fps: float
    stall_after_s: float | None = None
    on_warning: Callable[[str], None] | None = None
    cameras: dict[str, CameraCounters] = field(default_factory=dict)
    skews: list[float] = field(default_factory=list)
    skew_warnings: int = 0
    _last_warn: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stall_after_s is None:
            self.stall_after_s = max(0.1, 3.0 / self.fps)

    @property
    def half_period_s(self) -> float:
        return 0.5 / self.fps

    def tick(
        self,
        capture_times: Mapping[str, float],
        camera_indices: Mapping[str, int],
        camera_ages: Mapping[str, float] | None = None,
    ) -> None:
        """Account one tick. `camera_ages`: seconds since each camera's newest frame arrived."""
        times = list(capture_times.values())
        skew = (max(times) - min(times)) if len(times) > 1 else 0.0
        self.skews.append(skew)
        if skew > self.half_period_s:
            self.skew_warnings += 1
            self._warn(
                "skew",
                f"cross-stream skew {skew * 1e3:.1f} ms exceeds half a frame period "
                f"({self.half_period_s * 1e3:.1f} ms)",
            )
        for name, index in camera_indices.items():
            c = self.cameras.setdefault(name, CameraCounters())
            if c.last_index is not None:
                jump = index - c.last_index
                if jump == 0:
                    c.duplicated += 1
                elif jump > 1:
                    c.dropped += jump - 1
            if c.last_index != index:
                c.frames += 1
            c.last_index = index
            age = (camera_ages or {}).get(name)
            if age is not None and age > self.stall_after_s:
                if not c.stalled:
                    c.stalls += 1
                    c.stalled = True
                self._warn(f"stall:{name}", f"camera '{name}' stalled: no new frame for {age:.2f} s")
            elif age is not None:
                c.stalled = False

    def summary(self) -> dict:
        skews = np.asarray(self.skews) * 1e3 if self.skews else np.zeros(1)
        return {
            "skew_p50_ms": float(np.percentile(skews, 50)),
            "skew_p99_ms": float(np.percentile(skews, 99)),
            "skew_max_ms": float(skews.max()),
            "skew_over_half_period": int(self.skew_warnings),
            "cameras": {
                name: {"frames": c.frames, "dropped": c.dropped, "duplicated": c.duplicated,
                       "stalls": c.stalls}
                for name, c in self.cameras.items()
            },
        }

    def live(self) -> dict:
        """Small dict for the live status line."""
        recent = self.skews[-30:]
        return {
            "skew_ms": (max(recent) * 1e3) if recent else 0.0,
            "dropped": {n: c.dropped for n, c in self.cameras.items()},
            "stalled": [n for n, c in self.cameras.items() if c.stalled],
        }

    def warn(self, kind: str, message: str) -> None:
        """Log a live warning of `kind`, at most once per second per kind."""
        self._warn(kind, message)

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(kind, -1e9) < 1.0:
            return
        self._last_warn[kind] = now
        log.warning(message)
        if self.on_warning is not None:
            self.on_warning(message)
