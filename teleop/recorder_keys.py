"""Terminal keyboard controls for a recording session.

Keys (single key presses, no Enter needed when stdin is a terminal):
    s or Enter   save the current episode (during the reset countdown: start the next one now)
    d            discard the current episode
    r            re-record: discard it and record that episode again
    space        start the next episode now (skip the rest of the reset countdown)
    q or Esc     save the current episode and stop the session

The reader works on any file descriptor (a pipe in tests); on a terminal it switches it to
cbreak mode and restores the settings on stop.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from typing import Protocol

HELP = "keys: [s]ave  [d]iscard  [r]e-record  [space] start  [q]uit"


class _Controllable(Protocol):
    def save(self) -> None: ...
    def discard(self) -> None: ...
    def rerecord(self) -> None: ...
    def start(self) -> None: ...
    def quit(self) -> None: ...


def dispatch(key: str, recorder: _Controllable) -> str | None:
    """Apply one key to the recorder; returns the action name, or None for an unbound key."""
    if key in ("s", "S", "\n", "\r"):
        recorder.save()
        return "save"
    if key in ("d", "D"):
        recorder.discard()
        return "discard"
    if key in ("r", "R"):
        recorder.rerecord()
        return "rerecord"
    if key == " ":
        recorder.start()
        return "start"
    if key in ("q", "Q", "\x1b"):
        recorder.quit()
        return "quit"
    return None


class KeyboardControls:
    """A daemon thread turning key presses on `fd` (default: stdin) into recorder controls."""

    def __init__(self, recorder: _Controllable, fd: int | None = None) -> None:
        self.recorder = recorder
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.actions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rec-keys", daemon=True)
        self._saved_tty = None

    def start(self) -> None:
        if os.isatty(self.fd):
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self._saved_tty is not None:
            import termios

            with contextlib.suppress(Exception):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            data = os.read(self.fd, 32)
            if not data:  # EOF: nobody will type any more
                return
            for key in data.decode(errors="ignore"):
                action = dispatch(key, self.recorder)
                if action is not None:
                    self.actions.append(action)
