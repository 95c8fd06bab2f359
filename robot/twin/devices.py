"""TwinArm and TwinCamera: the twin's devices behind the same interfaces as hardware.

Both read simulated state from a shared TwinSim. Neither moves time on its own; the robot (or a
test, through `advance()`) steps the simulation. The camera renders offscreen on the CPU when
a frame is due in simulated time, keeps frames in a small queue until their injected latency
has passed, and `read()` hands over the newest delivered frame without rendering.

Time: the twin's host clock is its simulated clock (`TwinRobot.now()`, the one its safety layer
runs on), so `t_host` and `t_device` are both simulated seconds of the capture (the device
"stamps" on the host clock, the offset is exactly zero). An injected camera latency delays
when a frame is delivered, never its capture time.
"""

from __future__ import annotations

import time
from collections import deque

import mujoco
import numpy as np

from tether.core.errors import DeviceError
from tether.robot.interfaces import Arm, ArmSpec, Camera, CameraSpec, Frame, JointState
from tether.robot.twin.sim import Delay, TwinSim, release_gl_context


class TwinArm(Arm):
    """One simulated arm; positions in radians, the gripper normalized (0 closed, 1 open)."""

    def __init__(self, sim: TwinSim, index: int, name: str) -> None:
        self.sim = sim
        self.index = index
        model = sim.arms[index].model
        self.spec = ArmSpec(
            name=name,
            joint_names=model.joint_names,
            lower=np.array(model.lower + (0.0,)),
            upper=np.array(model.upper + (1.0,)),
            home=np.array(model.home),
            gripper_index=len(model.joints),
        )
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def close(self) -> None:
        self._connected = False

    def read(self) -> JointState:
        self._require_connected()
        with self.sim.lock:
            return JointState(
                position=self.sim.arm_position(self.index),
                t_host=self.sim.device_time,
                velocity=self.sim.arm_velocity(self.index),
                effort=self.sim.arm_effort(self.index),
                t_device=self.sim.device_time,
            )

    def command(self, target_position: np.ndarray) -> None:
        self._require_connected()
        target = np.asarray(target_position, dtype=np.float64)
        if target.shape != (self.spec.dof,):
            raise ValueError(
                f"TwinArm '{self.name}' expects a target of shape ({self.spec.dof},), "
                f"got {target.shape}"
            )
        self.sim.command(self.index, target)

    def advance(self) -> None:
        """Let one control period of simulated time pass (used by the contract tests)."""
        self.sim.advance()


class TwinCamera(Camera):
    """An offscreen MuJoCo camera with simulated capture times and injected latency.

    Shadows, reflections and multisampling are off: on llvmpipe they cost 10x the frame rate
    and add nothing a policy needs. Depth, when enabled, is uint16 millimetres.
    """

    def __init__(self, sim: TwinSim, spec: CameraSpec, delay: Delay | None = None) -> None:
        if mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_CAMERA, spec.name) < 0:
            raise DeviceError(f"The twin scene has no camera named '{spec.name}'.")
        if spec.width > sim.model.vis.global_.offwidth or spec.height > sim.model.vis.global_.offheight:
            raise DeviceError(
                f"Camera '{spec.name}' {spec.height}x{spec.width} exceeds the offscreen buffer "
                f"{sim.model.vis.global_.offheight}x{sim.model.vis.global_.offwidth}."
            )
        self.spec = spec
        self.sim = sim
        self.delay = delay or Delay()
        self._renderer: mujoco.Renderer | None = None
        self._period = 1.0 / spec.fps
        self._next_capture = 0.0
        self._index = -1
        self._queue: deque[tuple[float, Frame]] = deque()  # (t_available, frame)
        self._latest: Frame | None = None
        self.renders = 0
        self.render_s = 0.0  # wall time spent rendering (for benchmarks and `twin check`)

    @property
    def is_connected(self) -> bool:
        return self._renderer is not None

    def connect(self) -> None:
        if self._renderer is not None:
            return
        try:
            self._renderer = self.sim.renderer(self.spec.height, self.spec.width)
        except Exception as exc:  # no GL backend: say which one to install
            raise DeviceError(
                f"Could not create an offscreen renderer for camera '{self.spec.name}' ({exc}). "
                "Set MUJOCO_GL=egl (needs libegl1 + libgl1-mesa-dri) or MUJOCO_GL=osmesa "
                "(apt-get install libosmesa6)."
            ) from exc
        self.sim.add_capture_hook(self._on_step)
        self.restart()

    def close(self) -> None:
        if self._renderer is None:
            return
        self.sim.remove_capture_hook(self._on_step)
        self._renderer = None  # shared with other cameras of this sim; the robot releases it
        self._latest = None
        self._queue.clear()

    def restart(self) -> None:
        """After a sim reset: drop queued frames and capture the current scene at once."""
        if self._renderer is None:
            return
        with self.sim.lock:
            self._queue.clear()
            self._next_capture = self.sim.device_time
            self._capture()
            # The first frame after (re)start is available immediately, so read() never waits.
            _, self._latest = self._queue.pop()

    def read(self) -> Frame:
        self._require_connected()
        frame = self._latest
        if frame is None:
            raise DeviceError(f"Camera '{self.spec.name}' has no frame yet.")
        return frame

    def advance(self) -> None:
        """Let one control period of simulated time pass (used by the contract tests)."""
        self.sim.advance()

    # --- capture -------------------------------------------------------------------------------
    def _on_step(self) -> None:
        now = self.sim.device_time
        if now + 1e-9 >= self._next_capture:
            self._capture()
        while self._queue and self._queue[0][0] <= now + 1e-9:
            _, self._latest = self._queue.popleft()

    def _capture(self) -> None:
        renderer = self._renderer
        assert renderer is not None
        t_capture = self.sim.device_time
        t0 = time.perf_counter()
        renderer.update_scene(self.sim.data, camera=self.spec.name)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        image = renderer.render().copy()
        depth = None
        if self.spec.depth:
            renderer.enable_depth_rendering()
            metres = renderer.render()
            renderer.disable_depth_rendering()
            depth = np.clip(metres * 1000.0, 0, 65535).astype(np.uint16)
        release_gl_context()
        self._index += 1
        self.renders += 1
        self.render_s += time.perf_counter() - t0
        # Next capture on the camera's own schedule, never in the past.
        while self._next_capture <= t_capture + 1e-9:
            self._next_capture += self._period
        frame = Frame(image=image, t_device=t_capture, t_host=t_capture, index=self._index, depth=depth)
        t_available = t_capture + (self.delay.sample(self.sim.rng) if self.delay.active else 0.0)
        if self._queue and t_available < self._queue[-1][0]:
            t_available = self._queue[-1][0]  # frames arrive in order
        self._queue.append((t_available, frame))
