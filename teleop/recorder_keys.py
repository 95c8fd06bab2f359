"""Terminal keyboard controls for a recording, teleop or rollout session.

Keys (single key presses, no Enter needed when stdin is a terminal):
    s or Enter   save the current episode (during the reset countdown: start the next one now)
    d            discard the current episode
    r            re-record: discard it and record that episode again
    space        start the next episode now (skip the rest of the reset countdown)
    q or Esc     save the current episode and stop the session
    e            E-STOP: every arm holds its last safe command, latched until released
    x            release the e-stop (the arms follow targets again)

`tether teleop` and `tether rollout` bind only the e-stop keys (and q to stop). The letters avoid
the keyboard teleop device's keys (i k j l u o t g y h b n c v).

The reader works on any file descriptor (a pipe in tests); on a terminal it switches it to
cbreak mode and restores the settings on stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

log = logging.getLogger(__name__)

ESTOP_KEY = "e"
RELEASE_KEY = "x"
# Plain text: print it with legend() (or rich.markup.escape), because rich reads "[s]" as markup.
HELP = "keys: [s]ave  [d]iscard  [r]e-record  [space] start  [q]uit  [e] E-STOP  [x] release e-stop"
ESTOP_HELP = "keys: [e] E-STOP (latched)  [x] release e-stop"


def legend(text: str = HELP) -> str:
    """`text` escaped for rich, so `[s]ave` renders as written instead of as a markup tag."""
    from rich.markup import escape

    return escape(text)


class _Controllable(Protocol):
    def save(self) -> None: ...
    def discard(self) -> None: ...
    def rerecord(self) -> None: ...
    def start(self) -> None: ...
    def quit(self) -> None: ...


class _Stoppable(Protocol):
    def estop(self, reason: str = "operator") -> None: ...
    def reset_estop(self) -> None: ...


Binding = tuple[str, Callable[[], None]]  # (action name, what the key does)


def estop_bindings(
    robot: _Stoppable, on_change: Callable[[bool], None] | None = None
) -> dict[str, Binding]:
    """`e` latches the robot's e-stop, `x` releases it; `on_change(latched)` reports either."""

    def stop() -> None:
        robot.estop("e-stop key")
        if on_change is not None:
            on_change(True)

    def release() -> None:
        robot.reset_estop()
        if on_change is not None:
            on_change(False)

    return _bind({ESTOP_KEY + ESTOP_KEY.upper(): ("estop", stop),
                  RELEASE_KEY + RELEASE_KEY.upper(): ("release", release)})


def recorder_bindings(recorder: _Controllable) -> dict[str, Binding]:
    return _bind({keys: (name, getattr(recorder, name)) for name, keys in _RECORDER_KEYS.items()})


_RECORDER_KEYS = {"save": "sS\n\r", "discard": "dD", "rerecord": "rR", "start": " ", "quit": "qQ\x1b"}


def _bind(table: Mapping[str, Binding]) -> dict[str, Binding]:
    return {key: binding for keys, binding in table.items() for key in keys}


def dispatch(key: str, recorder: _Controllable) -> str | None:
    """Apply one key to the recorder; returns the action name, or None for an unbound key."""
    binding = recorder_bindings(recorder).get(key)
    if binding is None:
        return None
    binding[1]()
    return binding[0]


class KeyReader:
    """A daemon thread turning key presses on `fd` (default: stdin) into calls of `bindings`."""

    def __init__(self, bindings: Mapping[str, Binding], fd: int | None = None) -> None:
        self.bindings = dict(bindings)
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.actions: list[str] = []  # names of the actions taken, in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-keys", daemon=True)
        self._saved_tty = None

    def __enter__(self) -> KeyReader:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        if os.isatty(self.fd):
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
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
                binding = self.bindings.get(key)
                if binding is None:
                    continue
                name, action = binding
                try:
                    action()
                except Exception:  # a key must never kill the reader (the e-stop depends on it)
                    log.exception("key %r (%s) failed", key, name)
                self.actions.append(name)


class KeyboardControls(KeyReader):
    """The recorder's keys; with `robot`, also the e-stop keys (e latches, x releases)."""

    def __init__(
        self,
        recorder: _Controllable,
        fd: int | None = None,
        robot: _Stoppable | None = None,
        on_estop: Callable[[bool], None] | None = None,
    ) -> None:
        bindings = recorder_bindings(recorder)
        if robot is not None:
            bindings.update(estop_bindings(robot, on_estop))
        super().__init__(bindings, fd)
        self.recorder = recorder
