"""In-memory Arm and Camera: real implementations with no device behind them.

Used by tests of the layers above the drivers (safety, runtime, recorder plumbing) and as the
reference implementation the contract suite is checked against. The arm tracks its target with
a first-order lag in wall-clock time (or on an injected clock); the camera produces a synthetic
pattern at its own fps on a background thread, like a real camera would. Both stamp `t_host` on
their clock (the arm's injected clock, the camera's `time.monotonic()`); having no separate
device clock, their `t_device` is the same value.

A Robot of memory arms is a real-time robot (`simulated_time` False), like the hardware it
stands in for: its arm moves in wall-clock time whether or not the loop keeps up. A test that
wants to run one unpaced and deterministically gives the robot and its arms one ManualClock
(`Robot(..., clock=clock, simulated_time=True)`) and advances it per tick.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from tether.robot.interfaces import (
    Arm,
    ArmSpec,
    CameraSpec,
    Frame,
    JointState,
    ThreadedCamera,
)


def default_arm_spec(name: str = "arm", dof: int = 6) -> ArmSpec:
    names = tuple(f"joint{i}" for i in range(dof - 1)) + ("gripper",)
    return ArmSpec(
        name=name,
        joint_names=names,
        lower=np.full(dof, -np.pi),
        upper=np.full(dof, np.pi),
        home=np.zeros(dof),
        gripper_index=dof - 1,
    )


class ManualClock:
    """A clock that moves only when told to: inject it where code takes `clock=time.monotonic`."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        if dt < 0:
            raise ValueError("ManualClock only moves forward")
        self.t += float(dt)
        return self.t


class MemoryArm(Arm):
    def __init__(
        self,
        spec: ArmSpec | None = None,
        time_constant_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec or default_arm_spec()
        self.time_constant_s = time_constant_s
        self.clock = clock
        self._lock = threading.Lock()
        self._connected = False
        self._position = self.spec.home.copy()
        self._target = self.spec.home.copy()
        self._t_update = clock()
        self.commands: list[np.ndarray] = []  # everything that reached the "motors"

    @classmethod
    def from_config(cls, config) -> MemoryArm:
        """Build from an ArmConfig; params: dof (default 6), time_constant_s."""
        params = dict(config.params)
        spec = default_arm_spec(config.name, int(params.pop("dof", 6)))
        return cls(spec, **params)

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True
        self._t_update = self.clock()

    def close(self) -> None:
        self._connected = False

    def read(self) -> JointState:
        self._require_connected()
        with self._lock:
            now = self._advance()
            return JointState(position=self._position.copy(), t_host=now, t_device=now)

    def command(self, target_position: np.ndarray) -> None:
        self._require_connected()
        target = np.asarray(target_position, dtype=np.float64)
        if target.shape != (self.spec.dof,):
            raise ValueError(f"MemoryArm expects shape ({self.spec.dof},), got {target.shape}")
        with self._lock:
            self._advance()
            self._target = target.copy()
            self.commands.append(target.copy())

    def _advance(self) -> float:
        now = self.clock()
        dt = max(now - self._t_update, 0.0)
        alpha = 1.0 - np.exp(-dt / self.time_constant_s) if self.time_constant_s > 0 else 1.0
        self._position += alpha * (self._target - self._position)
        self._t_update = now
        return now


class MemoryCamera(ThreadedCamera):
    """Synthetic frames at `spec.fps`: a moving gradient stamped with the frame index."""

    def __init__(self, spec: CameraSpec | None = None) -> None:
        super().__init__(spec or CameraSpec(name="cam", width=64, height=48, fps=30.0))
        self._index = 0
        self._next_t = 0.0

    @classmethod
    def from_config(cls, config) -> MemoryCamera:
        return cls(CameraSpec(config.name, config.width, config.height, config.fps))

    def connect(self) -> None:
        if not self.is_connected:
            self._index = 0  # frame indices restart per session, never on a reconnect
        super().connect()

    def _open(self) -> None:
        self._next_t = time.monotonic()

    def _grab(self) -> Frame | None:
        delay = self._next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next_t += 1.0 / self.spec.fps
        t = time.monotonic()
        h, w = self.spec.height, self.spec.width
        image = np.empty((h, w, 3), dtype=np.uint8)
        image[..., 0] = (np.arange(w)[None, :] + self._index) % 256
        image[..., 1] = (np.arange(h)[:, None] * 2) % 256
        image[..., 2] = self._index % 256
        frame = Frame(image=image, t_device=t, t_host=t, index=self._index)
        self._index += 1
        return frame

    def _release(self) -> None:
        pass
