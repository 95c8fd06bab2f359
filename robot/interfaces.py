"""The device interfaces every driver and the MuJoCo twin implement.

Hardware and the twin are interchangeable behind these classes: switching a session from the
twin to a real arm is a config change. Units: radians (gripper in its spec's own unit), meters,
seconds. Images are RGB uint8 HWC.

Time (see tether.core.clock): every Frame and JointState carries `t_host`, its capture time in
seconds on the host's `time.monotonic()` clock (on the twin, the simulated clock its Robot runs
on), and `t_device`, the device's own stamp, kept raw. A driver whose device stamps its own
time maps it onto the host clock with a DeviceClockMapper; one without stamps its receive time.
Only `t_host` is compared across streams.

Observation dictionaries handed to recorders and policies use fixed keys: `state` (all arms'
positions concatenated in robot order, float32), `image.<camera>` (uint8 HxWx3), and recorded
actions use `action`. Per-stream timing (`t_host`, `t_device`, `index`) is kept apart from
the data arrays (tether.core.schema.TIMING_FIELDS).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tether.core.errors import ConfigError, DeviceClosedError, DeviceError
from tether.core.schema import ACTION, STATE, image_key

log = logging.getLogger(__name__)

# Array names are built by tether.core.schema only; these aliases keep the robot API's names.
STATE_KEY = STATE
ACTION_KEY = ACTION


# --------------------------------------------------------------------------------------------
# Data carried between devices, recorder and policies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One camera image with its timing.

    `index` is the device's frame counter: a jump larger than one between two reads means the
    camera dropped frames; an equal index means the reader saw the same frame twice.
    """

    image: np.ndarray  # uint8 (H, W, 3) RGB
    # Capture time, seconds on the device's own clock, raw (a RealSense in global-time mode:
    # Unix-epoch seconds; a webcam without stamps: the host receive time). Never compare it
    # with another stream's.
    t_device: float
    # Capture time, seconds on the host's monotonic clock: the device stamp mapped by a measured
    # offset (tether.core.clock), or the receive time when the device has no clock of its own.
    t_host: float
    index: int
    depth: np.ndarray | None = None  # uint16 (H, W), millimetres unless the driver says otherwise


@dataclass(frozen=True)
class JointState:
    """Measured joint positions (the gripper, if any, is one entry of `position`).

    `t_host`: when the state was measured, seconds on the host's monotonic clock (a controller
    stamp mapped by a measured offset, or the host time of the bus round trip). `t_device`: the
    controller's own stamp, raw, or None when the device has no clock (serial servo buses).
    """

    position: np.ndarray  # float64 (n_joints,)
    t_host: float
    velocity: np.ndarray | None = None
    effort: np.ndarray | None = None
    t_device: float | None = None


@dataclass(frozen=True)
class ArmSpec:
    """Static description of an arm: names, limits and home pose as data, not code."""

    name: str
    joint_names: tuple[str, ...]
    lower: np.ndarray  # float64 (n,), position limits
    upper: np.ndarray  # float64 (n,)
    home: np.ndarray  # float64 (n,)
    gripper_index: int | None = None  # which entry of `position` is the gripper
    # Per-joint speed the arm can safely be commanded at, rad/s (gripper: its unit per second).
    # None: the safety layer's conservative default applies (see robot/safety.py).
    max_velocity: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        for label in ("lower", "upper", "home", "max_velocity"):
            raw = getattr(self, label)
            if raw is None and label == "max_velocity":
                continue
            value = np.asarray(raw, dtype=np.float64)
            if label == "max_velocity" and value.ndim == 0:
                value = np.full(n, float(value))
            if value.shape != (n,):
                raise ValueError(
                    f"ArmSpec '{self.name}': {label} has shape {value.shape}, expected ({n},) "
                    f"to match joint_names"
                )
            object.__setattr__(self, label, value)
        if self.max_velocity is not None and not (
            np.all(np.isfinite(self.max_velocity)) and np.all(self.max_velocity > 0)
        ):
            raise ValueError(f"ArmSpec '{self.name}': max_velocity must be finite and positive")
        if np.any(self.lower >= self.upper):
            raise ValueError(f"ArmSpec '{self.name}': every lower limit must be below its upper limit")
        if np.any(self.home < self.lower) or np.any(self.home > self.upper):
            raise ValueError(f"ArmSpec '{self.name}': home pose lies outside the joint limits")
        if self.gripper_index is not None and not 0 <= self.gripper_index < n:
            raise ValueError(f"ArmSpec '{self.name}': gripper_index {self.gripper_index} out of range")

    @property
    def dof(self) -> int:
        return len(self.joint_names)


@dataclass(frozen=True)
class CameraSpec:
    name: str
    width: int
    height: int
    fps: float
    depth: bool = False


@dataclass(frozen=True)
class Observation:
    """A synchronized snapshot of a robot: joint states and the newest frame per camera.

    `t_host`: when the snapshot was taken, on the robot's clock (`Robot.now()`).
    """

    t_host: float
    joints: Mapping[str, JointState]  # arm name -> state, in robot order
    frames: Mapping[str, Frame] = field(default_factory=dict)  # camera name -> frame

    @property
    def state(self) -> np.ndarray:
        """All arms' positions concatenated in robot order (float32)."""
        return np.concatenate([js.position for js in self.joints.values()]).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The policy/recorder view: `state` plus `image.<camera>` arrays."""
        arrays: dict[str, np.ndarray] = {STATE_KEY: self.state}
        for name, frame in self.frames.items():
            arrays[image_key(name)] = frame.image
        return arrays

    def stream_times(self) -> dict[str, float]:
        """Capture time of every stream on the host clock (`t_host`), keyed like `to_arrays`.

        Only host times: device clocks have different origins and rates, so they are never
        compared across streams (see tether.core.clock).
        """
        times = {}
        for name, js in self.joints.items():
            times[f"{STATE_KEY}.{name}"] = js.t_host
        for name, frame in self.frames.items():
            times[image_key(name)] = frame.t_host
        return times

    def device_times(self) -> dict[str, float | None]:
        """Every stream's raw device stamp (None where the device has no clock), for the record."""
        times: dict[str, float | None] = {}
        for name, js in self.joints.items():
            times[f"{STATE_KEY}.{name}"] = js.t_device
        for name, frame in self.frames.items():
            times[image_key(name)] = frame.t_device
        return times


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


class _Device(ABC):
    """Connect/close lifecycle shared by cameras and arms; idempotent on both ends."""

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self) -> None:
        """Open the device. Calling it on a connected device does nothing."""

    @abstractmethod
    def close(self) -> None:
        """Release the device. Calling it twice, or before connect, does nothing."""

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise DeviceClosedError(
                f"{type(self).__name__} '{getattr(self, 'name', '?')}' is not connected; "
                "call connect() (or use it as a context manager) first."
            )


class Camera(_Device):
    """A camera whose `read()` returns the newest frame without waiting for a new one.

    `connect()` returns once the first frame has arrived, so `read()` always has something to
    give; a background thread (see ThreadedCamera) keeps the newest frame so the control loop
    never blocks on the device.
    """

    spec: CameraSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    def read(self) -> Frame:
        """The newest frame. Raises DeviceClosedError when not connected."""


class Arm(_Device):
    """A position-controlled arm (the gripper is one joint of it)."""

    spec: ArmSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    def read(self) -> JointState:
        """The latest measured joint state."""

    @abstractmethod
    def command(self, target_position: np.ndarray) -> None:
        """Send a joint position target. Use it through SafeArm, never directly."""


class ThreadedCamera(Camera):
    """Base for cameras whose device delivers frames at its own pace; it owns stall recovery.

    Subclasses implement `_open`, `_grab` (block until the next frame, return it or None on a
    timeout or an unusable frame) and `_release`. A daemon thread keeps the newest frame;
    `read()` only takes a lock.

    Stalls: when no frame has arrived for `reconnect_after_s` (a pulled cable, a USB reset, a
    driver that hung), the thread releases the device and opens it again, and keeps retrying
    every `reconnect_after_s` until it is back, so a recording resumes by itself. `read()`
    meanwhile returns the last frame (its unchanged index shows the stall to the recorder);
    `reconnects`, `frame_age_s` and `last_error` say what happened. `reconnect_after_s=None`
    turns recovery off. Subclasses that keep per-session state (frame counters) reset it in
    `_on_reconnect`.
    """

    first_frame_timeout_s: float = 5.0
    reconnect_after_s: float | None = 2.0

    def __init__(self, spec: CameraSpec, reconnect_after_s: float | None = None) -> None:
        self.spec = spec
        if reconnect_after_s is not None:
            if not reconnect_after_s > 0:
                raise ConfigError(f"Camera '{spec.name}': reconnect_after_s must be positive.")
            self.reconnect_after_s = float(reconnect_after_s)
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._first = threading.Event()
        self._error: BaseException | None = None
        self._opened = False
        self._last_frame = 0.0  # host time of the newest frame (or of connect())
        self._last_attempt = 0.0  # host time of the last reopen attempt
        self.reconnects = 0

    @property
    def is_connected(self) -> bool:
        return self._thread is not None

    def connect(self) -> None:
        if self._thread is not None:
            return
        self._open()
        self._opened = True
        self._last_frame = self._last_attempt = time.monotonic()
        self._stop.clear()
        self._first.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        if not self._first.wait(self.first_frame_timeout_s):
            error = self._error
            self.close()
            raise DeviceError(
                f"Camera '{self.name}' delivered no frame within {self.first_frame_timeout_s:.1f} s"
                f"{f' ({error})' if error else ''}; check the cable, the device path and that no "
                "other program holds the camera."
            )

    def read(self) -> Frame:
        self._require_connected()
        with self._lock:
            frame = self._latest
        if frame is None:  # only possible if connect() raced with close()
            raise DeviceClosedError(f"Camera '{self.name}' has no frame; it was closed.")
        return frame

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=2.0)
        self._thread = None
        with self._lock:
            self._latest = None
        if self._opened:
            self._opened = False
            self._release()

    @property
    def last_error(self) -> BaseException | None:
        """The last error the grab thread saw (it keeps trying; the recorder reports stalls)."""
        return self._error

    @property
    def frame_age_s(self) -> float:
        """Seconds since the newest frame arrived (or since connect())."""
        return time.monotonic() - self._last_frame

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._opened:  # a reopen failed: try again once the back-off has passed
                self._reconnect_if_stalled()
                continue
            try:
                frame = self._grab()
            except Exception as exc:  # keep the thread alive; a stall is reported by consumers
                self._error = exc
                self._reconnect_if_stalled()
                self._stop.wait(0.01)
                continue
            if frame is None:
                self._reconnect_if_stalled()
                continue
            self._last_frame = time.monotonic()
            with self._lock:
                self._latest = frame
            self._first.set()

    def _reconnect_if_stalled(self) -> None:
        """Release and reopen the device once it has been silent for `reconnect_after_s`."""
        after = self.reconnect_after_s
        if after is None:
            if not self._opened:
                self._stop.wait(0.1)
            return
        if time.monotonic() - max(self._last_frame, self._last_attempt) <= after:
            if not self._opened:
                self._stop.wait(min(0.05, after))
            return
        if self._opened:
            self._opened = False
            try:
                self._release()
            except Exception as exc:  # a device that vanished may fail to close; reopen anyway
                self._error = exc
        self.reconnects += 1
        log.warning(
            "Camera '%s': no frame for %.1f s; reopening it (attempt %d)",
            self.name,
            self.frame_age_s,
            self.reconnects,
        )
        self._on_reconnect()
        self._last_attempt = time.monotonic()  # the next attempt comes one full period later
        try:
            self._open()
        except Exception as exc:  # not back yet: the thread retries after the back-off
            self._error = exc
            return
        self._opened = True

    def _on_reconnect(self) -> None:
        """Called before a stalled device is reopened; reset per-session state here."""

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _grab(self) -> Frame | None: ...

    @abstractmethod
    def _release(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Robot: a named set of arms and cameras
# --------------------------------------------------------------------------------------------


class Robot:
    """Arms and cameras from config, with every arm wrapped in the safety layer.

    `act(action)` splits the action vector by arm (robot order) and sends each part through that
    arm's SafeArm. Subclasses (the twin) may advance simulated time in `act`.

    Time: `now()` is the safety clock every SafeArm of this robot uses (time.monotonic() on
    hardware; simulated seconds on the twin). Stamp targets (`t_target`) on this clock.
    `simulated_time` says whether that time is driven by the program rather than the wall: only
    then may a loop run unpaced (fast, lockstep), see `require_simulated_time`.
    """

    #: True when the robot's time is simulated (the twin): a loop may run faster than real time.
    simulated_time: bool = False

    def __init__(
        self,
        arms: Mapping[str, Arm],
        cameras: Mapping[str, Camera] | None = None,
        safety=None,
        fps: float = 30.0,
        name: str = "robot",
        clock: Callable[[], float] | None = None,
        simulated_time: bool | None = None,
    ) -> None:
        from tether.robot.safety import SafeArm, SafetyConfig

        if not arms:
            raise ValueError("A Robot needs at least one arm.")
        self.name = name
        self.fps = float(fps)
        self.raw_arms: dict[str, Arm] = dict(arms)
        self.cameras: dict[str, Camera] = dict(cameras or {})
        self.clock: Callable[[], float] = clock or time.monotonic
        if simulated_time is not None:
            self.simulated_time = bool(simulated_time)
        config = safety if safety is not None else SafetyConfig()
        for label in ("max_velocity", "max_following_error"):
            per_arm = getattr(config, label, None)
            unknown = sorted(set(per_arm) - set(self.raw_arms)) if isinstance(per_arm, Mapping) else []
            if unknown:
                from tether.core.errors import ConfigError

                raise ConfigError(
                    f"safety.{label} names arm(s) {unknown} that robot '{name}' does not have; "
                    f"its arms are {', '.join(self.raw_arms)}."
                )
        self.arms: dict[str, SafeArm] = {
            arm_name: SafeArm(arm, config, clock=self.clock)
            for arm_name, arm in self.raw_arms.items()
        }
        self._connected = False

    def now(self) -> float:
        """The time on this robot's safety clock (use it for `t_target`)."""
        return self.clock()

    def require_simulated_time(self, mode: str) -> None:
        """Refuse an unpaced mode (`--fast`, `--lockstep`, ...) on a robot that runs in real time.

        Unpaced loops command the arm as fast as the host runs; only a simulation, whose time
        advances with the loop, can take that. Raises SafetyError naming the mode and the fix.
        """
        if self.simulated_time:
            return
        from tether.core.errors import SafetyError

        flag = mode if mode.startswith("--") else f"--{mode}"
        raise SafetyError(
            f"{flag} drives the arm as fast as the loop runs; robot '{self.name}' runs in real "
            "time, so run it with --realtime (unpaced modes are for the twin only)."
        )

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            return
        opened: list = []
        try:
            for arm in self.arms.values():
                arm.connect()
                opened.append(arm)
            for cam in self.cameras.values():
                cam.connect()
                opened.append(cam)
        except BaseException:
            for device in reversed(opened):
                device.close()
            raise
        self._connected = True

    def close(self) -> None:
        for cam in self.cameras.values():
            cam.close()
        for arm in self.arms.values():
            arm.close()
        self._connected = False

    # --- description ---------------------------------------------------------------------------
    @property
    def arm_specs(self) -> list[ArmSpec]:
        return [arm.spec for arm in self.raw_arms.values()]

    @property
    def action_dim(self) -> int:
        return sum(spec.dof for spec in self.arm_specs)

    @property
    def state_dim(self) -> int:
        return self.action_dim

    @property
    def camera_specs(self) -> list[CameraSpec]:
        return [cam.spec for cam in self.cameras.values()]

    @property
    def home(self) -> np.ndarray:
        return np.concatenate([spec.home for spec in self.arm_specs])

    @property
    def lower(self) -> np.ndarray:
        return np.concatenate([spec.lower for spec in self.arm_specs])

    @property
    def upper(self) -> np.ndarray:
        return np.concatenate([spec.upper for spec in self.arm_specs])

    # --- I/O -----------------------------------------------------------------------------------
    def observe(self) -> Observation:
        if not self._connected:
            raise DeviceClosedError(f"Robot '{self.name}' is not connected; call connect() first.")
        joints = {name: arm.read() for name, arm in self.arms.items()}
        frames = {name: cam.read() for name, cam in self.cameras.items()}
        return Observation(t_host=self.now(), joints=joints, frames=frames)

    def act(self, action: np.ndarray, t_target: float | None = None) -> np.ndarray:
        """Send one action (all arms, robot order) through the safety layer.

        t_target: when the action was produced, on this robot's clock (`now()`); an action older
        than `stale_after_s` is refused and the arms hold. Returns what actually reached the
        arms (after limits, velocity and following-error limits, and e-stop).
        """
        if not self._connected:
            raise DeviceClosedError(f"Robot '{self.name}' is not connected; call connect() first.")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise ValueError(
                f"Robot '{self.name}' expects an action of shape ({self.action_dim},), got {action.shape}"
            )
        sent = []
        offset = 0
        for arm in self.arms.values():
            n = arm.spec.dof
            sent.append(arm.command(action[offset : offset + n], t_target=t_target))
            offset += n
        return np.concatenate(sent)

    def tick(self) -> np.ndarray:
        """One control tick without a new target: every arm re-sends its last safe command
        while its target is fresh and holds (counting a watchdog hold) once it is stale.

        Call it on every tick a loop has no new target (a teleop device or policy that is late),
        so the stale-target watchdog runs. Returns what reached the arms.
        """
        if not self._connected:
            raise DeviceClosedError(f"Robot '{self.name}' is not connected; call connect() first.")
        return np.concatenate([arm.tick() for arm in self.arms.values()])

    def hold(self) -> np.ndarray:
        """Re-send every arm's last safe command (used by watchdogs when targets stop)."""
        return np.concatenate([arm.hold() for arm in self.arms.values()])

    def estop(self, reason: str = "operator") -> None:
        for arm in self.arms.values():
            arm.estop(reason)

    def reset_estop(self) -> None:
        for arm in self.arms.values():
            arm.reset_estop()

    def safety_counts(self) -> dict[str, int]:
        """Rejections and clamps per reason, summed over arms."""
        total: dict[str, int] = {}
        for arm in self.arms.values():
            for reason, count in arm.filter.counts.items():
                total[reason] = total.get(reason, 0) + count
        return total
