"""Keyboard end-effector teleop from a terminal (no X server, works over ssh).

Each key press moves the tool for `key_hold_s` at full speed (terminal key repeat then gives a
smooth motion while a key is held):

    i / k   +x / -x (forward / back)       t / g   roll  + / -
    j / l   +y / -y (left / right)         y / h   pitch + / -
    u / o   +z / -z (up / down)            b / n   yaw   + / -
    c / v   close / open the gripper
    e       E-STOP: every arm holds its last safe command (latched)
    x       release the e-stop

The keys avoid the recorder's own (s, d, r, q, space, Enter); e and x mean the same here as in
the recorder, so the e-stop works even when this device has the terminal to itself. Both read a terminal: when
recording with keyboard teleop, give this device its own terminal with `tty: /dev/pts/N`
(run `tty` in a second window), or every key goes to whichever reader wins the byte.

Config:  teleop: {device: keyboard, params: {linear_speed: 0.1, key_hold_s: 0.1, tty: /dev/pts/3}}
"""

from __future__ import annotations

import os
import select
import termios
import tty
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.core.config import from_dict
from tether.core.errors import ConfigError, DeviceError
from tether.robot.interfaces import Robot
from tether.teleop.ee_control import EndEffectorParams, EndEffectorTeleop, OperatorInput

KEYMAP: dict[str, tuple[int, float]] = {
    "i": (0, 1.0), "k": (0, -1.0),
    "j": (1, 1.0), "l": (1, -1.0),
    "u": (2, 1.0), "o": (2, -1.0),
    "t": (3, 1.0), "g": (3, -1.0),
    "y": (4, 1.0), "h": (4, -1.0),
    "b": (5, 1.0), "n": (5, -1.0),
}
GRIPPER_KEYS = {"c": -1.0, "v": 1.0}
ESTOP_KEY, RELEASE_KEY = "e", "x"  # as in teleop/recorder_keys.py


@dataclass
class KeyboardParams(EndEffectorParams):
    key_hold_s: float = 0.1  # how long one key press drives its axis at full speed
    tty: str | None = None  # a terminal device to read; default: this process's stdin


class TerminalKeys:
    """Non-blocking single-key reader on a terminal in cbreak mode (restored on close)."""

    def __init__(self, fd: int | None = None, path: str | None = None) -> None:
        self._path = path
        self._fd = fd
        self._own_fd = False
        self._saved = None

    def open(self) -> None:
        if self._fd is None:
            if self._path is not None:
                try:
                    self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
                except OSError as exc:
                    raise DeviceError(f"Keyboard teleop: cannot open terminal '{self._path}': {exc}.") from exc
                self._own_fd = True
            else:
                self._fd = 0
        if os.isatty(self._fd):
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)

    def close(self) -> None:
        if self._fd is None:
            return
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        if self._own_fd:
            os.close(self._fd)
            self._fd = None

    def poll(self) -> str:
        """All characters typed since the last poll ('' when none)."""
        if self._fd is None:
            raise DeviceError("Keyboard teleop is not connected; call connect() first.")
        chunks = []
        while select.select([self._fd], [], [], 0)[0]:
            try:
                data = os.read(self._fd, 1024)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode("utf-8", errors="ignore")


class KeyboardTeleop(EndEffectorTeleop):
    def __init__(self, robot: Robot, params: KeyboardParams, keys: TerminalKeys | None = None, ik=None) -> None:
        if not params.key_hold_s > 0:
            raise ConfigError(f"teleop.params.key_hold_s must be positive, got {params.key_hold_s}.")
        super().__init__(robot, params, ik)
        self.params: KeyboardParams = params
        self.keys = keys or TerminalKeys(path=params.tty)
        self._hold_ticks = max(1, int(round(params.key_hold_s * robot.fps)))
        self._active = np.zeros(6)  # direction per axis
        self._remaining = np.zeros(6, dtype=np.int64)  # ticks left per axis
        self._gripper_ticks = 0
        self._gripper_dir = 0.0

    @classmethod
    def from_config(cls, params: dict[str, Any], robot: Robot) -> KeyboardTeleop:
        return cls(robot, from_dict(KeyboardParams, params, "teleop.params"))

    def connect(self) -> None:
        self.keys.open()

    def close(self) -> None:
        self.keys.close()

    def read_input(self) -> OperatorInput:
        for key in self.keys.poll().lower():
            if key in KEYMAP:
                axis, sign = KEYMAP[key]
                self._active[axis] = sign
                self._remaining[axis] = self._hold_ticks
            elif key in GRIPPER_KEYS:
                self._gripper_dir = GRIPPER_KEYS[key]
                self._gripper_ticks = self._hold_ticks
            elif key == ESTOP_KEY:
                self.robot.estop("keyboard teleop e-stop key")
            elif key == RELEASE_KEY:
                self.robot.reset_estop()
        twist = np.where(self._remaining > 0, self._active, 0.0)
        self._remaining = np.maximum(self._remaining - 1, 0)
        gripper = self._gripper_dir if self._gripper_ticks > 0 else 0.0
        self._gripper_ticks = max(self._gripper_ticks - 1, 0)
        return OperatorInput(twist=twist, gripper=gripper)
