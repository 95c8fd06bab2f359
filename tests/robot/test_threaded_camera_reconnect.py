"""ThreadedCamera's own stall recovery: any camera built on it reopens a device gone silent."""

from __future__ import annotations

import threading
import time

import numpy as np

from tether.robot.interfaces import CameraSpec, Frame, ThreadedCamera


class FlakyCamera(ThreadedCamera):
    """Frames until `unplug()`; while unplugged reads time out and reopening fails."""

    def __init__(self, reconnect_after_s: float | None = 0.2) -> None:
        super().__init__(CameraSpec("flaky", 8, 6, 100.0), reconnect_after_s=reconnect_after_s)
        self.plugged = threading.Event()
        self.plugged.set()
        self.opens = 0
        self.resets = 0
        self._index = 0

    def _open(self) -> None:
        if not self.plugged.is_set():
            raise OSError("no such device")
        self.opens += 1

    def _grab(self) -> Frame | None:
        time.sleep(0.01)
        if not self.plugged.is_set():
            return None
        self._index += 1
        now = time.monotonic()
        return Frame(np.zeros((6, 8, 3), np.uint8), t_device=now, t_host=now, index=self._index)

    def _release(self) -> None:
        pass

    def _on_reconnect(self) -> None:
        self.resets += 1


def test_a_silent_device_is_reopened_and_frames_resume(wait_until):
    with FlakyCamera() as cam:
        wait_until(lambda: cam.read().index >= 3, what="first frames")
        cam.plugged.clear()
        wait_until(lambda: cam.reconnects >= 2, what="reopen attempts while unplugged")
        assert cam.frame_age_s > 0.2 and isinstance(cam.last_error, OSError)
        stalled = cam.read().index  # the last frame stays readable during the stall
        cam.plugged.set()
        wait_until(lambda: cam.read().index > stalled + 3, what="frames after the replug")
    assert cam.opens >= 2 and cam.resets == cam.reconnects


def test_recovery_can_be_turned_off(wait_until):
    with FlakyCamera(reconnect_after_s=None) as cam:
        wait_until(lambda: cam.read().index >= 2, what="first frames")
        cam.plugged.clear()
        wait_until(lambda: cam.frame_age_s > 0.5, what="half a second without frames")
        assert cam.reconnects == 0 and cam.opens == 1
