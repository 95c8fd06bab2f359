"""How the recorder samples a robot's streams each tick.

`ThreadedStreams` (real time): every camera and every arm is read by its own thread into a
short ring buffer, so a slow device never stalls the control loop. At each tick the recorder
picks a reference time, the newest capture time that every live stream has reached, and takes
from each stream the sample captured nearest to it; this keeps the cross-stream skew within
about half a frame period even though the devices free-run (diffusion_policy's real-robot code
aligns observations the same way).

`DirectStreams` (simulation, non-real-time): calls `robot.observe()` in the loop, because a
simulated robot only advances when the loop acts.

Time: selection and skew use `t_host` only, each stream's capture time on the robot's clock
(the host's monotonic clock on hardware, the simulated clock on the twin). Drivers map their
devices' own stamps onto it (tether.core.clock); the raw stamps ride along in `device_t` for
the record and are never compared, because device clocks differ in origin (a RealSense in
global-time mode stamps Unix-epoch seconds, a UR controller counts from its boot, a servo bus
has no clock at all).

Camera latency (`latency`, a tether.robot.latency.LatencyOffsets from `tether calibrate
latency`): a camera that stamps frames late (on receipt, not at exposure) has each stamp moved
back by its measured latency as it is read, so selection and the stored `t_host` use the time
the image was taken and each frame is paired with the joint state of that moment.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tether.robot.interfaces import (
    STATE_KEY,
    Frame,
    JointState,
    Observation,
    Robot,
    image_key,
)
from tether.robot.latency import LatencyOffsets


@dataclass(frozen=True)
class Sample:
    """One tick's observation plus the timing of each stream it was built from."""

    observation: Observation
    capture_t: dict[str, float]  # stream -> capture time on the host clock (`t_host`)
    host_t: dict[str, float]  # stream -> when the recorder received it, on the host clock
    camera_index: dict[str, int]  # camera name -> device frame index
    camera_age: dict[str, float]  # camera name -> seconds since its newest frame arrived
    # stream -> the device's own stamp, raw (NaN where the device has no clock); never compared
    device_t: dict[str, float] = field(default_factory=dict)


def arm_stream(name: str) -> str:
    return f"{STATE_KEY}.{name}"


class DirectStreams:
    """Synchronous sampling through `robot.observe()` (simulation / fast mode)."""

    def __init__(self, robot: Robot, latency: LatencyOffsets | None = None) -> None:
        self.robot = robot
        self.latency = latency

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def sample(self, t_sched: float | None = None) -> Sample:
        obs = self.robot.observe()
        if self.latency:
            obs = self.latency.correct(obs)  # frames stamped at exposure, not receipt
        capture = obs.stream_times()
        return Sample(
            observation=obs,
            capture_t=capture,
            host_t=dict(capture),  # read synchronously: received when captured
            camera_index={n: int(f.index) for n, f in obs.frames.items()},
            camera_age={n: 0.0 for n in obs.frames},
            device_t=_device_times(obs),
        )


class _Poller:
    """A thread reading one device into a ring buffer of (t_host, value, t_received).

    `t_received` is when this reader got the value, on the same clock as `t_host` (`clock`).
    """

    def __init__(self, name: str, read, is_new, period_s: float, history: int, clock) -> None:
        self.name = name
        self._read = read
        self._clock = clock
        self._is_new = is_new
        self._period = period_s
        self._buffer: deque = deque(maxlen=history)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rec-{name}", daemon=True)
        self.error: BaseException | None = None
        self.t_last_new = time.monotonic()

    def start(self) -> None:
        self._push(self._read())  # fail fast on a dead device, and never sample an empty buffer
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def snapshot(self) -> list:
        with self._lock:
            return list(self._buffer)

    def _push(self, value) -> None:
        with self._lock:
            last = self._buffer[-1][1] if self._buffer else None
            if last is None or self._is_new(last, value):
                self._buffer.append((value.t_host, value, self._clock()))
                self.t_last_new = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._push(self._read())
            except Exception as exc:  # reported as a stall by the monitor; keep trying
                self.error = exc
            self._stop.wait(self._period)


class ThreadedStreams:
    """One reader thread per camera and per arm; nearest-in-time selection at each tick.

    Times are on the robot's clock (`robot.now()`, which `t_host` is on); the tick's scheduled
    time comes from the loop's monotonic clock and is translated onto it.
    """

    def __init__(self, robot: Robot, fps: float, history: int = 8,
                 latency: LatencyOffsets | None = None) -> None:
        self.robot = robot
        self.fps = fps
        self._clock = robot.now
        self._pollers: dict[str, _Poller] = {}
        self._phase = 0.0
        self._phase_vec: np.ndarray | None = None
        arm_period = 1.0 / (4.0 * fps)  # arms sampled 4x the loop rate: nearest sample < 1/8 frame
        for name, arm in robot.arms.items():
            self._pollers[arm_stream(name)] = _Poller(
                arm_stream(name), arm.read, lambda a, b: True, arm_period, history * 4, self._clock
            )
        for name, cam in robot.cameras.items():
            period = min(0.002, 1.0 / (8.0 * cam.spec.fps))
            read = cam.read if not latency else _corrected(cam.read, name, latency)
            self._pollers[image_key(name)] = _Poller(
                image_key(name), read, _new_frame, period, history, self._clock
            )

    def start(self) -> None:
        started = []
        try:
            for poller in self._pollers.values():
                poller.start()
                started.append(poller)
        except BaseException:
            for poller in started:
                poller.stop()
            raise

    def stop(self) -> None:
        for poller in self._pollers.values():
            poller.stop()

    def _update_phase(self, capture_times: list[float], period: float) -> None:
        """Circular running mean of the cameras' capture phase modulo the loop period."""
        angles = np.asarray(capture_times) % period / period * 2 * np.pi
        vec = np.array([np.cos(angles).mean(), np.sin(angles).mean()])
        self._phase_vec = vec if self._phase_vec is None else 0.9 * self._phase_vec + 0.1 * vec
        angle = float(np.arctan2(self._phase_vec[1], self._phase_vec[0])) % (2 * np.pi)
        self._phase = angle / (2 * np.pi) * period

    def sample(self, t_sched: float | None = None) -> Sample:
        """Pick, per stream, the sample captured nearest the tick's reference time.

        The reference is phase-locked to the cameras: it sits on the cameras' mean capture
        phase, at least half a period plus the measured transport latency before the tick. So
        the frame chosen is always half a period away from the moment the next one arrives, and
        jitter does not flip the choice between neighbours (which would show up as a duplicated
        plus a dropped frame).
        """
        wall = time.monotonic()
        now = self._clock()
        t_sched = now if t_sched is None else now - (wall - t_sched)  # onto the robot's clock
        snaps = {name: p.snapshot() for name, p in self._pollers.items()}
        ages = {name: wall - p.t_last_new for name, p in self._pollers.items()}
        stall_after = max(0.1, 3.0 / self.fps)
        period = 1.0 / self.fps
        cams = [image_key(n) for n in self.robot.cameras if ages[image_key(n)] <= stall_after]
        if cams:
            # how long after its capture a frame reaches this reader (transport + polling)
            latency = max(float(np.median([e[2] - e[0] for e in snaps[c]])) for c in cams)
            self._update_phase([snaps[c][-1][0] for c in cams], period)
            base = t_sched - latency - 0.5 * period
            t_ref = base - ((base - self._phase) % period)
        else:
            t_ref = t_sched
        chosen = {name: min(s, key=lambda e: abs(e[0] - t_ref)) for name, s in snaps.items()}
        joints: dict[str, JointState] = {}
        frames: dict[str, Frame] = {}
        host: dict[str, float] = {}
        for name in self.robot.arms:
            js = chosen[arm_stream(name)][1]
            joints[name] = js
            host[arm_stream(name)] = chosen[arm_stream(name)][2]
        for name in self.robot.cameras:
            frame = chosen[image_key(name)][1]
            frames[name] = frame
            host[image_key(name)] = chosen[image_key(name)][2]
        obs = Observation(t_host=now, joints=joints, frames=frames)
        return Sample(
            observation=obs,
            capture_t={name: entry[0] for name, entry in chosen.items()},
            host_t=host,
            camera_index={n: int(f.index) for n, f in frames.items()},
            camera_age={n: ages[image_key(n)] for n in self.robot.cameras},
            device_t=_device_times(obs),
        )


def _device_times(obs: Observation) -> dict[str, float]:
    return {k: (np.nan if t is None else float(t)) for k, t in obs.device_times().items()}


def _corrected(read, name: str, latency: LatencyOffsets):
    """A camera read whose frames carry their exposure time (stamp minus measured latency)."""
    return lambda: latency.correct_frame(name, read())


def _new_frame(last: Frame, new: Frame) -> bool:
    return new.index != last.index
