"""One time base: the host's monotonic clock, and device clocks mapped onto it.

Every stream a driver returns carries `t_host`, seconds on the host's `time.monotonic()` clock
(on the twin: the simulated clock its Robot runs on), and keeps the device's own stamp apart as
`t_device`. Sync, skew and latency only ever compare `t_host`; device clocks differ in origin
(a UR controller counts from its boot, a RealSense in global-time mode from the Unix epoch) and
in rate, so subtracting two devices' stamps is meaningless.

`DeviceClockMapper` turns a device stamp into host time with a measured offset. Each sample
gives `t_received - t_device` = offset + transport latency; latency is never negative, so the
smallest value over recent samples (the lowest-latency one) is the best estimate of the offset,
and jitter only ever adds to the others. Device and host clocks also drift apart (crystals
differ by tens of ppm), so the minima of successive blocks of samples are fitted by a line over a
sliding window. A device clock that jumps backwards (a camera or controller rebooted, a clock
domain switched) restarts the estimate, with a warning.

The mapper is pure: no hidden clock, every time is passed in, so tests drive it with synthetic
streams.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: The host clock every hardware `t_host` is on. Code that stamps time takes a clock argument
#: defaulting to it, so tests (and the twin, whose clock is simulated) can inject their own.
host_now: Callable[[], float] = time.monotonic


@dataclass
class _Block:
    """The lowest-offset sample seen within one block of host time."""

    t_start: float  # host time the block began
    t_device: float  # device time of its lowest-offset sample
    offset: float  # t_received - t_device of that sample


class DeviceClockMapper:
    """Maps one device's clock onto host time by a measured, drift-tracked offset.

    name: the device, for log messages.
    window_s: host seconds of history the offset and drift are estimated over.
    block_s: host seconds per block; each block keeps its lowest-offset sample.
    reset_after_s: a device stamp this far behind the previous one is a clock reset; the
        estimate restarts (smaller backward steps are treated as the device repeating itself).
    max_drift: the largest rate difference believed (1e-3 = 1000 ppm); a fitted slope beyond it
        is noise and the plain minimum is used instead.
    """

    def __init__(
        self,
        name: str = "device",
        window_s: float = 10.0,
        block_s: float = 1.0,
        reset_after_s: float = 0.5,
        max_drift: float = 1e-3,
    ) -> None:
        if not 0 < block_s <= window_s:
            raise ValueError("DeviceClockMapper needs 0 < block_s <= window_s")
        self.name = name
        self.window_s = float(window_s)
        self.block_s = float(block_s)
        self.reset_after_s = float(reset_after_s)
        self.max_drift = float(max_drift)
        self.resets = 0
        self._blocks: deque[_Block] = deque()
        self._last_device: float | None = None
        self._last_mapped: float | None = None
        self._fit: tuple[float, float, float] | None = None  # (t_device ref, offset at ref, slope)

    # --- public API ----------------------------------------------------------------------------
    def map(self, t_device: float, t_received: float) -> float:
        """Host time of a sample stamped `t_device` by the device and received at `t_received`.

        The result is never later than `t_received` (nothing arrives before it happens) and never
        earlier than the previous result (the stream's host times do not run backwards), except
        after a clock reset.
        """
        t_device, t_received = float(t_device), float(t_received)
        if self._last_device is not None and t_device < self._last_device - self.reset_after_s:
            self.reset(
                f"its clock jumped back {self._last_device - t_device:.3f} s "
                f"({self._last_device:.3f} -> {t_device:.3f})"
            )
        self._add(t_device, t_received)
        self._last_device = t_device
        mapped = min(t_device + self.offset_at(t_device), t_received)
        if self._last_mapped is not None and mapped < self._last_mapped:
            mapped = min(self._last_mapped, t_received)
        self._last_mapped = mapped
        return mapped

    def offset_at(self, t_device: float) -> float:
        """The current estimate of host minus device time at device time `t_device`."""
        if self._fit is None:
            raise ValueError(f"The clock mapper of '{self.name}' has no samples yet; call map() first.")
        ref, offset, slope = self._fit
        return offset + slope * (t_device - ref)

    @property
    def offset(self) -> float | None:
        """Host minus device time at the newest sample (None before the first one)."""
        return None if self._last_device is None else self.offset_at(self._last_device)

    @property
    def drift(self) -> float:
        """Fitted rate difference (host seconds gained per device second), 0 until measurable."""
        return 0.0 if self._fit is None else self._fit[2]

    def reset(self, reason: str = "reset requested") -> None:
        """Forget every sample (a device clock restarted); the next sample starts afresh."""
        if self._blocks:
            self.resets += 1
            log.warning("Clock of '%s' re-synchronised: %s", self.name, reason)
        self._blocks.clear()
        self._last_device = None
        self._last_mapped = None
        self._fit = None

    # --- estimation ----------------------------------------------------------------------------
    def _add(self, t_device: float, t_received: float) -> None:
        offset = t_received - t_device
        blocks = self._blocks
        if blocks and t_received - blocks[-1].t_start < self.block_s:
            last = blocks[-1]
            if offset < last.offset:
                last.t_device, last.offset = t_device, offset
        else:
            blocks.append(_Block(t_received, t_device, offset))
        while len(blocks) > 1 and t_received - blocks[0].t_start > self.window_s:
            blocks.popleft()
        self._fit = self._estimate()

    def _estimate(self) -> tuple[float, float, float]:
        """Line through the blocks' minima (drift), or the plain minimum if too few blocks.

        The newest block is still filling, so its minimum may be a poor one; it joins the fit
        only through the lower envelope check below.
        """
        blocks = list(self._blocks)
        best = min(blocks, key=lambda b: b.offset)
        plain = (best.t_device, best.offset, 0.0)
        full = blocks[:-1] if len(blocks) > 3 else []
        if len(full) < 3:
            return plain
        xs = [b.t_device for b in full]
        ys = [b.offset for b in full]
        x0 = xs[-1]
        mx = sum(x - x0 for x in xs) / len(xs)
        my = sum(ys) / len(ys)
        sxx = sum((x - x0 - mx) ** 2 for x in xs)
        if sxx <= 0:
            return plain
        slope = sum((x - x0 - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        if abs(slope) > self.max_drift:
            return plain
        # The line through the mean sits inside the jitter band; lower it onto the envelope so no
        # block's minimum lies below it (each minimum is an upper bound of the true offset).
        intercept = my - slope * mx
        intercept += min(b.offset - (intercept + slope * (b.t_device - x0)) for b in blocks)
        return (x0, intercept, slope)
