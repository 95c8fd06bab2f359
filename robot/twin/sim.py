"""The simulation core: one MjModel/MjData, simulated time, delayed commands, camera capture.

Arms and cameras of a twin share one TwinSim. Time only moves in `advance()` (fast mode: as
fast as the CPU allows, deterministic) or `catch_up()` (realtime mode: stepped to the wall
clock). Both step physics in whole timesteps, apply commands whose injected latency has
elapsed, and let cameras capture frames at their own rate, so the rest of the stack sees the
same timing structure a real robot has: commands land late, frames arrive late, and
`t_device` is the simulated capture time.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import mujoco
import numpy as np

from tether.robot.twin.models import ArmModel
from tether.robot.twin.render import current_backend


def release_gl_context() -> None:
    """Detach the current GL context from this thread.

    An EGL or OSMesa context can be current in one thread at a time; MuJoCo's Renderer makes
    its context current before each render but never lets go. Releasing after every render lets
    the robot be connected in one thread and stepped (and rendered) in another, e.g. a
    recorder's control-loop thread or the realtime physics thread.
    """
    backend = current_backend()
    if backend == "egl":
        from mujoco import egl

        if egl.EGL_DISPLAY is not None:
            egl.EGL.eglMakeCurrent(
                egl.EGL_DISPLAY, egl.EGL.EGL_NO_SURFACE, egl.EGL.EGL_NO_SURFACE,
                egl.EGL.EGL_NO_CONTEXT,
            )
    elif backend == "osmesa":
        from OpenGL import GL, osmesa

        osmesa.OSMesaMakeCurrent(None, None, GL.GL_FLOAT, 0, 0)


@dataclass(frozen=True)
class Delay:
    """Injected latency: every item is delayed by `latency_s` plus uniform [0, jitter_s)."""

    latency_s: float = 0.0
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.jitter_s < 0:
            raise ValueError("latency and jitter must be >= 0 seconds")

    @property
    def active(self) -> bool:
        return self.latency_s > 0 or self.jitter_s > 0

    def sample(self, rng: np.random.Generator) -> float:
        return self.latency_s + (rng.uniform(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0)


@dataclass
class ArmBinding:
    """Where one arm lives in the model: qpos/qvel addresses and actuator ids."""

    name: str
    model: ArmModel
    prefix: str
    qpos: np.ndarray  # addresses of arm joints + the left finger
    qvel: np.ndarray
    actuators: np.ndarray  # arm actuators + the gripper actuator
    tcp_site: int

    def to_ctrl(self, target: np.ndarray) -> np.ndarray:
        """Arm-interface units (rad, normalized gripper) -> actuator controls (rad, metres)."""
        ctrl = np.array(target, dtype=np.float64)
        ctrl[-1] = ctrl[-1] * self.model.finger_stroke
        return ctrl

    def from_qpos(self, qpos: np.ndarray) -> np.ndarray:
        pos = np.array(qpos[self.qpos], dtype=np.float64)
        pos[-1] = pos[-1] / self.model.finger_stroke
        return pos


class TwinSim:
    """Owns the MuJoCo state; every access goes through `lock` (cameras may live elsewhere)."""

    def __init__(
        self,
        xml: str,
        arms: list[tuple[str, ArmModel, str]],
        control_hz: float,
        command_delay: Delay | None = None,
        camera_delay: Delay | None = None,
        base_timestep: float = 0.002,
    ) -> None:
        if not control_hz > 0:
            raise ValueError(f"control rate must be positive, got {control_hz}")
        self.control_period = 1.0 / float(control_hz)
        substeps = max(1, int(np.ceil(self.control_period / base_timestep - 1e-9)))
        self.timestep = self.control_period / substeps
        self.substeps = substeps
        # The saved MJCF carries the timestep actually used (a divisor of the control period).
        self.xml = re.sub(r'<option timestep="[0-9.eE-]+"', f'<option timestep="{self.timestep:.12g}"',
                          xml, count=1)
        self.model = mujoco.MjModel.from_xml_string(self.xml)
        self.model.opt.timestep = self.timestep
        self.data = mujoco.MjData(self.model)
        self.lock = threading.RLock()
        self.arms = [self._bind(name, model, prefix) for name, model, prefix in arms]
        self.command_delay = command_delay or Delay()
        self.camera_delay = camera_delay or Delay()
        self.rng = np.random.default_rng(0)
        self._pending: deque[tuple[float, int, np.ndarray]] = deque()
        self._last_apply = 0.0
        self._step_index = 0  # physics steps since reset: exact time without float drift
        self._capture_hooks: list[Callable[[], None]] = []
        self._after_step_hooks: list[Callable[[], None]] = []
        self._wall_origin: float | None = None
        self.steps_total = 0
        self.lag_steps_dropped = 0
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

    # --- rendering -----------------------------------------------------------------------------
    def renderer(self, height: int, width: int) -> mujoco.Renderer:
        """A shared offscreen renderer per image size.

        Creating a GL context costs ~0.7 s on llvmpipe; cameras of one size share one and
        reconnecting a camera reuses it. `release_renderers()` (the robot's close) frees them.
        """
        key = (int(height), int(width))
        with self.lock:
            if key not in self._renderers:
                self._renderers[key] = mujoco.Renderer(self.model, key[0], key[1])
                release_gl_context()
            return self._renderers[key]

    def release_renderers(self) -> None:
        with self.lock:
            for renderer in self._renderers.values():
                renderer.close()
            self._renderers.clear()

    # --- model bookkeeping ---------------------------------------------------------------------
    def _bind(self, name: str, arm: ArmModel, prefix: str) -> ArmBinding:
        m = self.model
        joints = [prefix + j for j in arm.joints] + [prefix + "finger_left"]
        jids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in joints]
        if min(jids) < 0:
            raise ValueError(f"arm '{name}': joints {joints} not all found in the model")
        acts = [prefix + j for j in arm.joints] + [prefix + "gripper"]
        aids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, a) for a in acts]
        site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, prefix + "tcp")
        return ArmBinding(
            name=name,
            model=arm,
            prefix=prefix,
            qpos=np.array([m.jnt_qposadr[j] for j in jids]),
            qvel=np.array([m.jnt_dofadr[j] for j in jids]),
            actuators=np.array(aids),
            tcp_site=site,
        )

    def add_capture_hook(self, hook: Callable[[], None]) -> None:
        """Called after every physics step (cameras decide themselves whether a frame is due)."""
        self._capture_hooks.append(hook)

    def remove_capture_hook(self, hook: Callable[[], None]) -> None:
        if hook in self._capture_hooks:
            self._capture_hooks.remove(hook)

    def add_after_step_hook(self, hook: Callable[[], None]) -> None:
        """Task bookkeeping that must see every physics step (success latches, contacts)."""
        self._after_step_hooks.append(hook)

    # --- time ----------------------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return self._step_index * self.timestep

    @property
    def device_time(self) -> float:
        """Simulated seconds since the sim was built: the devices' clock (never goes back)."""
        return self.steps_total * self.timestep

    def advance(self, duration: float | None = None) -> None:
        """Step physics by `duration` seconds (default one control period), as fast as possible."""
        duration = self.control_period if duration is None else duration
        n = int(round(duration / self.timestep))
        with self.lock:
            for _ in range(n):
                self._step()

    def catch_up(self, max_lag_s: float = 0.25) -> int:
        """Realtime mode: step until simulated time reaches the wall time since reset.

        If the host fell more than `max_lag_s` behind (a debugger pause, a loaded machine), the
        missing time is dropped rather than simulated in a burst, like a real robot would not
        replay the past. Returns the number of steps taken.
        """
        now = time.monotonic()
        with self.lock:
            if self._wall_origin is None:
                self._wall_origin = now - self.time
            behind = (now - self._wall_origin) - self.time
            n = int(behind / self.timestep)
            max_n = int(max_lag_s / self.timestep)
            if n > max_n:
                self.lag_steps_dropped += n - max_n
                self._wall_origin += (n - max_n) * self.timestep
                n = max_n
            for _ in range(n):
                self._step()
        return max(n, 0)

    def _step(self) -> None:
        if self._pending:
            self._apply_due_commands()
        mujoco.mj_step(self.model, self.data)
        self._step_index += 1
        self.steps_total += 1
        for hook in self._after_step_hooks:
            hook()
        for hook in self._capture_hooks:
            hook()

    # --- arms ----------------------------------------------------------------------------------
    def command(self, arm_index: int, target: np.ndarray) -> None:
        """Queue a target (arm units); it reaches the actuators after the injected delay."""
        binding = self.arms[arm_index]
        ctrl = binding.to_ctrl(target)
        with self.lock:
            if not self.command_delay.active:
                self.data.ctrl[binding.actuators] = ctrl
                return
            t_apply = max(self.time + self.command_delay.sample(self.rng), self._last_apply)
            self._last_apply = t_apply
            self._pending.append((t_apply, arm_index, ctrl))

    def _apply_due_commands(self) -> None:
        now = self.time + 1e-12
        while self._pending and self._pending[0][0] <= now:
            _, arm_index, ctrl = self._pending.popleft()
            self.data.ctrl[self.arms[arm_index].actuators] = ctrl

    def arm_position(self, arm_index: int) -> np.ndarray:
        with self.lock:
            return self.arms[arm_index].from_qpos(self.data.qpos)

    def arm_velocity(self, arm_index: int) -> np.ndarray:
        binding = self.arms[arm_index]
        with self.lock:
            vel = np.array(self.data.qvel[binding.qvel], dtype=np.float64)
        vel[-1] /= binding.model.finger_stroke
        return vel

    def arm_effort(self, arm_index: int) -> np.ndarray:
        binding = self.arms[arm_index]
        with self.lock:
            return np.array(self.data.actuator_force[binding.actuators], dtype=np.float64)

    def set_arm_pose(self, arm_index: int, position: np.ndarray) -> None:
        """Teleport an arm (used at reset): joints, both fingers and the actuator targets."""
        binding = self.arms[arm_index]
        q = binding.to_ctrl(np.asarray(position, dtype=np.float64))
        with self.lock:
            self.data.qpos[binding.qpos] = q
            jid = mujoco.mj_name2id(
                self.model, mujoco.mjtObj.mjOBJ_JOINT, binding.prefix + "finger_right"
            )
            self.data.qpos[self.model.jnt_qposadr[jid]] = q[-1]
            self.data.qvel[binding.qvel] = 0.0
            self.data.ctrl[binding.actuators] = q

    # --- reset ---------------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        """Zero the state and time; re-seed the latency RNG. Tasks then place their objects."""
        with self.lock:
            mujoco.mj_resetData(self.model, self.data)
            self.rng = np.random.default_rng([int(seed), 0x7E7])
            self._pending.clear()
            self._last_apply = 0.0
            self._step_index = 0
            self._wall_origin = None

    def forward(self) -> None:
        with self.lock:
            mujoco.mj_forward(self.model, self.data)

    # --- lookups -------------------------------------------------------------------------------
    def body_id(self, name: str) -> int:
        bid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name)
        if bid < 0:
            raise KeyError(f"body '{name}' not in the twin model")
        return bid

    def geom_id(self, name: str) -> int:
        gid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name)
        if gid < 0:
            raise KeyError(f"geom '{name}' not in the twin model")
        return gid

    def joint_qposadr(self, name: str) -> int:
        jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if jid < 0:
            raise KeyError(f"joint '{name}' not in the twin model")
        return int(self.model.jnt_qposadr[jid])

    def contacts_between(self, geoms_a: set[int], geoms_b: set[int]) -> bool:
        """True when any active contact joins a geom of `geoms_a` with one of `geoms_b`."""
        d = self.data
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            if (g1 in geoms_a and g2 in geoms_b) or (g2 in geoms_a and g1 in geoms_b):
                return True
        return False
