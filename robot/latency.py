"""Device latency: inject it into any robot (tests, rehearsals) and undo it from calibrated offsets.

Two delays matter to a robot learning stack (UMI measures both on its hardware: camera
125-170 ms, robot 100-180 ms):

- **camera latency**: a frame is stamped later than the moment it shows. A webcam without a
  clock of its own is stamped when the host receives it, tens of milliseconds after the shutter.
  A recorder that pairs frames with joint states by `t_host` then pairs each image with a state
  from the future, and a policy sees the world later than it thinks.
- **command latency**: a target reaches the motors some time after `Arm.command` returns (bus,
  controller cycle, the servo's own update period).

`inject_latency(robot, InjectedLatency(...))` adds both to any Robot, the twin or hardware, by
wrapping its devices in place: every camera in a `DelayedCamera` (frames delivered late, stamped
either at delivery, like a camera without a clock, or with their true capture time), and every
arm *under* its safety layer in a `DelayedArm` (commands applied late, as a slow bus would). The
safety layer still sees every target when it is sent, as on a real arm. Delivery is exact to the
robot's finest clock: on the twin, the wrappers run after every physics step (TwinRobot's
`add_step_hook`); on hardware a small thread delivers on the host clock. The wrappers record
the delays they actually applied (`stats()`), which is the ground truth a calibration is
checked against.

`LatencyOffsets` is the other direction: what `tether calibrate latency` measured, read from the
robot's calibration folder (`latency.<device>.yaml`, the record format of
tether.calibration.store), applied by the recorder (frame stamps moved back to capture time,
`correct`) and the rollout (actions sent early by each arm's command latency, `lead_s`). It is
read here, in the robot layer, because both of those sit above it and must not import each
other or the calibration part.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.interfaces import Arm, Camera, Frame, JointState, Observation, Robot

log = logging.getLogger(__name__)

__all__ = [
    "KIND",
    "DelayedArm",
    "DelayedCamera",
    "InjectedLatency",
    "LatencyInjection",
    "LatencyOffsets",
    "inject_latency",
    "latency_folder",
]

KIND = "latency"  # calibration record kind: latency.<device>.yaml
FORMAT = 1  # tether.calibration.store.FORMAT_VERSION
STAMPS = ("delivery", "capture")


@dataclass(frozen=True)
class InjectedLatency:
    """Delays to add: each item waits `<x>_s` plus uniform [0, `<x>_jitter_s`) seconds.

    camera_stamp: "delivery" stamps a late frame when it arrives (a camera without its own
    clock: the stamp is wrong by the delay, which is what `tether calibrate latency` measures
    and the recorder undoes); "capture" keeps its true capture time (a camera with a hardware
    clock: the frame is old, but honestly stamped).
    """

    camera_s: float = 0.0
    camera_jitter_s: float = 0.0
    command_s: float = 0.0
    command_jitter_s: float = 0.0
    camera_stamp: str = "delivery"
    seed: int = 0

    def __post_init__(self) -> None:
        for label in ("camera_s", "camera_jitter_s", "command_s", "command_jitter_s"):
            value = getattr(self, label)
            if not (isinstance(value, int | float) and np.isfinite(value) and value >= 0):
                raise ConfigError(f"injected latency {label} must be a number >= 0 seconds, got {value!r}")
        if self.camera_stamp not in STAMPS:
            raise ConfigError(f"camera_stamp must be one of {STAMPS}, got {self.camera_stamp!r}")


class _Delay:
    """Samples per-item delays; keeps items in order (a bus or a USB queue does not reorder)."""

    def __init__(self, base_s: float, jitter_s: float, rng: np.random.Generator) -> None:
        self.base_s, self.jitter_s, self.rng = float(base_s), float(jitter_s), rng
        self.last_due = -np.inf

    def due(self, t: float) -> float:
        jitter = self.rng.uniform(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0
        self.last_due = max(t + self.base_s + jitter, self.last_due)
        return self.last_due


class _Applied:
    """Running statistics of the delays actually applied (the injection's ground truth)."""

    def __init__(self) -> None:
        self.values: deque[float] = deque(maxlen=100_000)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    def summary(self) -> dict[str, float]:
        if not self.values:
            return {"count": 0, "mean_s": float("nan"), "min_s": float("nan"), "max_s": float("nan")}
        v = np.asarray(self.values)
        return {"count": int(v.size), "mean_s": float(v.mean()), "min_s": float(v.min()),
                "max_s": float(v.max())}


class DelayedCamera(Camera):
    """A camera whose frames become readable `delay` after capture.

    `pump()` takes the inner camera's newest frame into a queue and releases the frames whose
    time has come; `read()` pumps, then returns the newest released frame. The first frame after
    connect (or a twin reset, `restart()`) is released at once, so `read()` never waits.
    """

    def __init__(self, inner: Camera, delay: _Delay, clock: Callable[[], float], stamp: str) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.delay = delay
        self.clock = clock
        self.stamp = stamp
        self.applied = _Applied()  # delivered stamp - true capture time, per released frame
        self._queue: deque[tuple[float, Frame]] = deque()
        self._latest: Frame | None = None
        self._seen: int | None = None
        self._lock = threading.Lock()

    @property
    def is_connected(self) -> bool:
        return self.inner.is_connected

    def connect(self) -> None:
        self.inner.connect()
        self._first()

    def close(self) -> None:
        self.inner.close()
        with self._lock:
            self._queue.clear()
            self._latest = None

    def restart(self) -> None:
        """The twin's reset: the inner camera restarts, queued frames are dropped."""
        restart = getattr(self.inner, "restart", None)
        if restart is not None:
            restart()
        if self.inner.is_connected:
            self._first()

    def read(self) -> Frame:
        self._require_connected()
        self.pump()
        with self._lock:
            frame = self._latest
        if frame is None:
            self._first()
            frame = self._latest
        assert frame is not None
        return frame

    def pump(self) -> None:
        if not self.inner.is_connected:
            return
        now = self.clock()
        frame = self.inner.read()
        with self._lock:
            if frame.index != self._seen:
                self._seen = frame.index
                self._queue.append((max(self.delay.due(frame.t_host), now), frame))
            while self._queue and self._queue[0][0] <= now + 1e-9:
                t_out, raw = self._queue.popleft()
                self._latest = self._stamped(raw, t_out)

    def _stamped(self, frame: Frame, t_out: float) -> Frame:
        if self.stamp == "capture":
            self.applied.add(0.0)
            return frame
        shift = t_out - frame.t_host
        self.applied.add(shift)
        return dataclasses.replace(frame, t_host=t_out, t_device=frame.t_device + shift)

    def _first(self) -> None:
        frame = self.inner.read()
        with self._lock:
            self._queue.clear()
            self._seen = frame.index
            self._latest = frame


class DelayedArm(Arm):
    """An arm whose commands reach the inner arm `delay` after `command()` (in order).

    Sits under the SafeArm, like a slow bus: the safety layer judges each target when it is
    sent. `read()` is not delayed (the measured state is stamped when it is read).
    """

    def __init__(self, inner: Arm, delay: _Delay, clock: Callable[[], float]) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.delay = delay
        self.clock = clock
        self.applied = _Applied()  # time applied - time commanded, per command
        self._queue: deque[tuple[float, float, np.ndarray]] = deque()  # (t_sent, t_due, target)
        self._lock = threading.Lock()

    @property
    def is_connected(self) -> bool:
        return self.inner.is_connected

    def connect(self) -> None:
        self.inner.connect()

    def close(self) -> None:
        with self._lock:
            self._queue.clear()
        self.inner.close()

    def read(self) -> JointState:
        self.pump()
        return self.inner.read()

    def command(self, target_position: np.ndarray) -> None:
        self._require_connected()
        now = self.clock()
        target = np.array(target_position, dtype=np.float64)
        with self._lock:
            self._queue.append((now, self.delay.due(now), target))
        self.pump()

    def pump(self) -> None:
        now = self.clock()
        due = []
        with self._lock:
            while self._queue and self._queue[0][1] <= now + 1e-9:
                due.append(self._queue.popleft())
        for t_sent, _, target in due:
            if self.inner.is_connected:
                self.inner.command(target)
                self.applied.add(now - t_sent)


@dataclass
class LatencyInjection:
    """What `inject_latency` installed: the wrappers, their ground truth, and the pump."""

    cameras: dict[str, DelayedCamera]
    arms: dict[str, DelayedArm]
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def pump(self) -> None:
        for device in (*self.cameras.values(), *self.arms.values()):
            device.pump()

    def stats(self) -> dict[str, dict[str, float]]:
        """Per device, the delays actually applied: the truth a calibration is checked against."""
        out = {name: cam.applied.summary() for name, cam in self.cameras.items()}
        out.update({name: arm.applied.summary() for name, arm in self.arms.items()})
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self.pump()
            except Exception as exc:  # a closed device mid-shutdown: keep the thread quiet
                log.debug("latency pump: %s", exc)


def inject_latency(robot: Robot, latency: InjectedLatency) -> LatencyInjection:
    """Wrap `robot`'s cameras and arms (in place) so frames and commands arrive late.

    Call it before `robot.connect()` or after, but before the loop runs. Returns the handle
    whose `stats()` says what was applied; on a robot without a physics step hook (hardware) a
    daemon thread delivers on the host clock every millisecond until `stop()`.
    """
    rng = np.random.default_rng([int(latency.seed), 0x1A7])
    clock = robot.now
    cameras: dict[str, DelayedCamera] = {}
    if latency.camera_s > 0 or latency.camera_jitter_s > 0:
        for name, cam in list(robot.cameras.items()):
            wrapped = DelayedCamera(cam, _Delay(latency.camera_s, latency.camera_jitter_s, rng), clock,
                                    latency.camera_stamp)
            if cam.is_connected:
                wrapped._first()
            robot.cameras[name] = cameras[name] = wrapped
    arms: dict[str, DelayedArm] = {}
    if latency.command_s > 0 or latency.command_jitter_s > 0:
        for name, arm in list(robot.raw_arms.items()):
            wrapped_arm = DelayedArm(arm, _Delay(latency.command_s, latency.command_jitter_s, rng), clock)
            robot.raw_arms[name] = arms[name] = wrapped_arm
            robot.arms[name].arm = wrapped_arm  # under the safety layer, like a slow bus
    handle = LatencyInjection(cameras, arms)
    add_hook = getattr(robot, "add_step_hook", None)
    if add_hook is not None:
        add_hook(handle.pump)  # simulated physics: deliver after every physics step
    elif not robot.simulated_time:
        handle._thread = threading.Thread(target=handle._run, args=(0.001,), name="latency-pump",
                                          daemon=True)
        handle._thread.start()
    # (a simulated robot without a step hook delivers at each read/command: tick resolution)
    return handle


# --------------------------------------------------------------------------------------------
# Calibrated offsets: read from the robot's calibration folder, applied by recorder and rollout
# --------------------------------------------------------------------------------------------


def latency_folder(robot_spec: str | Path) -> Path:
    """The robot's calibration folder (as tether.calibration.store.calibration_dir)."""
    text = str(robot_spec)
    if text.startswith("twin:"):
        return Path(f"twin-{text.split(':', 1)[1]}.calibration")
    path = Path(text)
    return path.with_name(path.stem + ".calibration")


@dataclass(frozen=True)
class LatencyOffsets:
    """Measured latencies, seconds. cameras: how late each camera's stamps are (subtract);
    arms: how long after a command each arm starts to move (send that much early)."""

    cameras: Mapping[str, float] = field(default_factory=dict)
    arms: Mapping[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.cameras) or bool(self.arms)

    @classmethod
    def load(cls, folder: str | Path) -> LatencyOffsets:
        """Every `latency.<device>.yaml` record in a calibration folder (none: empty offsets)."""
        import yaml

        cameras: dict[str, float] = {}
        arms: dict[str, float] = {}
        root = Path(folder)
        for path in sorted(root.glob(f"{KIND}.*.yaml")) if root.is_dir() else []:
            try:
                raw = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"Cannot read latency calibration {path}: {exc}; delete it or "
                                  "re-run `tether calibrate latency`.") from exc
            if not isinstance(raw, dict) or raw.get("format_version") != FORMAT:
                raise ConfigError(f"{path} is not a version-{FORMAT} calibration record; re-run "
                                  "`tether calibrate latency`.")
            data: dict[str, Any] = raw.get("data") or {}
            device, value = data.get("device"), data.get("latency_s")
            if device not in ("camera", "arm") or not isinstance(value, int | float):
                raise ConfigError(f"{path} lacks data.device (camera|arm) or data.latency_s; re-run "
                                  "`tether calibrate latency`.")
            (cameras if device == "camera" else arms)[str(raw.get("name"))] = float(value)
        return cls(cameras, arms)

    @classmethod
    def for_robot(cls, robot_spec: str | Path) -> LatencyOffsets:
        return cls.load(latency_folder(robot_spec))

    def correct_frame(self, name: str, frame: Frame) -> Frame:
        """The frame stamped at its capture time (its stamp moved back by the camera's latency)."""
        shift = self.cameras.get(name, 0.0)
        if not shift:
            return frame
        return dataclasses.replace(frame, t_host=frame.t_host - shift)

    def correct(self, observation: Observation) -> Observation:
        """An observation whose frames carry their capture times (joint states are unchanged)."""
        if not self.cameras:
            return observation
        frames = {n: self.correct_frame(n, f) for n, f in observation.frames.items()}
        return dataclasses.replace(observation, frames=frames)

    def lead_s(self, robot: Robot) -> np.ndarray:
        """Per action entry, how early to send it: each arm's command latency over its joints."""
        return np.concatenate([np.full(arm.spec.dof, float(self.arms.get(name, 0.0)))
                               for name, arm in robot.arms.items()])

    def describe(self) -> str:
        parts = [f"camera {n} {v * 1e3:.0f} ms" for n, v in self.cameras.items()]
        parts += [f"arm {n} {v * 1e3:.0f} ms" for n, v in self.arms.items()]
        return ", ".join(parts) or "none"
