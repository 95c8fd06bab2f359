"""The terminal bell at the start and the end of every take (`tether record --bell`).

An operator at a leader arm watches the robot, not the screen: a beep (the terminal's BEL
character, which most terminals sound or flash) says "recording" and another "stopped". The
recorder's status stream says when a take starts (its phase becomes "recording") and the
`on_episode` callback when it ends; `TakeBell` turns those into exactly one bell each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

BEL = "\a"


class TakeBell:
    """Rings `stream` once when a take starts recording and once when it stops."""

    def __init__(self, stream: IO[str], enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.rung = 0
        self._recording = False

    def status(self, status: dict[str, Any]) -> None:
        """Feed every recorder status (`Recorder.on_status`)."""
        recording = status.get("phase") == "recording"
        if recording and not self._recording:
            self._ring()
        self._recording = recording

    def finished(self, result: Any = None) -> None:
        """Feed every finished take (`Recorder.run(on_episode=...)`)."""
        if self._recording:
            self._ring()
        self._recording = False

    def wrap_status(self, inner: Callable[[dict], None] | None) -> Callable[[dict], None]:
        def on_status(status: dict) -> None:
            self.status(status)
            if inner is not None:
                inner(status)

        return on_status

    def _ring(self) -> None:
        self.rung += 1
        if self.enabled:
            self.stream.write(BEL)
            self.stream.flush()
