"""TwinRobot: a Robot whose arms and cameras are the MuJoCo twin, plus episode control.

Fast mode (default): `act()` advances simulated time by exactly one control period, so data
generation and evaluation run as fast as the CPU allows and are deterministic under a seed.
Realtime mode: a physics thread (started by `connect()`) steps the simulation to the wall clock
and captures camera frames on their own schedule, like hardware that keeps moving whether or
not anyone is looking; `act()` only sends targets. For a human at a leader arm and for latency
tests.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from tether.core.errors import ConfigError, DeviceError
from tether.robot.config import RobotConfig
from tether.robot.interfaces import CameraSpec, Observation, Robot
from tether.robot.safety import SafetyConfig
from tether.robot.twin.devices import TwinArm, TwinCamera
from tether.robot.twin.sim import Delay, TwinSim
from tether.robot.twin.tasks import Task, make_task

# Speed the twin's arms may be commanded at (rad/s; the gripper in its normalized 0..1 unit per
# second), unless the robot config's `safety.max_velocity` says otherwise. 3 rad/s is about what
# the modelled servo classes reach (STS3215 ~4.7, XM540 ~3.1 rad/s no load) and what the twin
# configs allowed before limits were per second (0.1 rad per tick at 30 Hz); the scripted
# experts peak at ~1.2 rad/s on lift and ~2.5 on the gripper, so they are not throttled.
TWIN_MAX_VELOCITY = 3.0


@dataclass
class TwinParams:
    """Options of `twin_params` in a RobotConfig (all optional).

    cameras: camera names (default: the task's, e.g. ["top"]); [] for no rendering at all.
    width, height: image size (default 320x240; up to 640x480). depth: also render depth.
    camera_fps: capture rate in simulated time (default: the control rate).
    realtime: pace physics to the wall clock instead of stepping once per act().
    command_latency_s / command_jitter_s: delay before a command reaches the actuators.
    camera_latency_s / camera_jitter_s: delay between capture and delivery of a frame.
    seed: the first episode's seed (reset(seed) chooses later ones).
    dynamics: a twin dynamics file (`tether calibrate twin`, robot/twin/params.py): per-joint
        gains, damping, armature, friction; its command latency applies unless
        command_latency_s is set here.
    yaw_randomization: scale of the task's random object yaws, 0..1 (default 1, the full
        range; 0 varies positions only, the distribution of the ACT paper's sim tasks).
    """

    cameras: list[str] | None = None
    width: int = 320
    height: int = 240
    depth: bool = False
    camera_fps: float | None = None
    realtime: bool = False
    command_latency_s: float = 0.0
    command_jitter_s: float = 0.0
    camera_latency_s: float = 0.0
    camera_jitter_s: float = 0.0
    seed: int = 0
    dynamics: str | None = None
    yaw_randomization: float = 1.0

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> TwinParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(
                f"Unknown twin_params {unknown}. Known: {', '.join(sorted(known))}."
            )
        params = dict(params)
        if isinstance(params.get("cameras"), str):  # `twin_params.cameras=top,wrist` from a CLI
            params["cameras"] = [c.strip() for c in params["cameras"].split(",") if c.strip()]
        for label in ("depth", "realtime"):
            if label in params and not isinstance(params[label], bool):
                raise ConfigError(f"twin_params.{label} must be true or false, got {params[label]!r}")
        for label in ("camera_fps", "command_latency_s", "command_jitter_s", "camera_latency_s",
                      "camera_jitter_s"):
            value = params.get(label)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"twin_params.{label} must be a number, got {value!r}")
        if params.get("camera_fps") is not None and not params["camera_fps"] > 0:
            raise ConfigError("twin_params.camera_fps must be positive")
        if params.get("dynamics") is not None and not isinstance(params["dynamics"], str):
            raise ConfigError(f"twin_params.dynamics must be a file path, got {params['dynamics']!r}")
        if not isinstance(params.get("seed", 0), int) or params.get("seed", 0) < 0:
            raise ConfigError(f"twin_params.seed must be a non-negative integer, got {params['seed']!r}")
        yaw = params.get("yaw_randomization", 1.0)
        if isinstance(yaw, bool) or not isinstance(yaw, int | float) or not 0.0 <= yaw <= 1.0:
            raise ConfigError(f"twin_params.yaw_randomization must be a number from 0 to 1, got {yaw!r}")
        out = cls(**params)
        if out.cameras is not None and (
            not isinstance(out.cameras, list | tuple) or not all(isinstance(c, str) for c in out.cameras)
        ):
            raise ConfigError(f"twin_params.cameras must be a list of names, got {out.cameras!r}")
        for label in ("width", "height"):
            value = getattr(out, label)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"twin_params.{label} must be a positive integer, got {value!r}")
        if out.width > 640 or out.height > 480:
            raise ConfigError(
                f"twin_params width x height {out.width}x{out.height} exceeds 640x480, the "
                "twin's offscreen buffer; pick a smaller image."
            )
        for label in ("command_latency_s", "command_jitter_s", "camera_latency_s", "camera_jitter_s"):
            if float(getattr(out, label)) < 0:
                raise ConfigError(f"twin_params.{label} must be >= 0 seconds")
        return out


class TwinRobot(Robot):
    """The twin as a Robot: same arms/cameras API as hardware, plus the episode API
    (tether.robot.episodic.EpisodicRobot: reset(seed), is_success(), succeeded, max_steps,
    steps) and its task.

    Its time is simulated (`simulated_time`): `now()` is the simulation's device time, which
    the safety layer and `t_target` stamps use.
    """

    simulated_time = True

    def __init__(
        self,
        task: Task,
        params: TwinParams | None = None,
        fps: float = 50.0,
        safety: SafetyConfig | None = None,
        name: str | None = None,
    ) -> None:
        params = params or TwinParams()
        self.task = task
        self.params = params
        self.realtime = bool(params.realtime)
        self.sim = TwinSim(
            task.scene(),
            task.sim_arms(),
            control_hz=fps,
            command_delay=Delay(params.command_latency_s, params.command_jitter_s),
        )
        if params.dynamics:  # a twin fitted to a real arm (robot/twin/params.py)
            from tether.robot.twin.params import apply_to_sim

            apply_to_sim(self.sim, params.dynamics, latency_set=params.command_latency_s > 0)
        task.bind(self.sim)
        arms = {
            arm_name: TwinArm(self.sim, i, arm_name)
            for i, (arm_name, *_rest) in enumerate(task.sim_arms())
        }
        for arm in arms.values():
            if arm.spec.max_velocity is None:
                arm.spec = dataclasses.replace(arm.spec, max_velocity=TWIN_MAX_VELOCITY)
        camera_names = list(task.default_cameras if params.cameras is None else params.cameras)
        for cam in camera_names:
            if cam not in task.cameras:
                raise ConfigError(
                    f"Task '{task.name}' has no camera '{cam}'. Its cameras: "
                    f"{', '.join(task.cameras)}."
                )
        cam_fps = float(params.camera_fps or fps)
        camera_delay = Delay(params.camera_latency_s, params.camera_jitter_s)
        cameras = {
            cam: TwinCamera(
                self.sim,
                CameraSpec(cam, params.width, params.height, cam_fps, params.depth),
                camera_delay,
            )
            for cam in camera_names
        }
        # The safety layer runs on simulated time (never reset, so it never goes back): in fast
        # mode the velocity limit is per simulated second, whatever the host's speed.
        super().__init__(
            arms,
            cameras,
            safety=safety,
            fps=fps,
            name=name or f"twin-{task.name}",
            clock=self._sim_clock,
        )
        self.sim.add_after_step_hook(self._track_success)
        self._physics: threading.Thread | None = None
        self._stop_physics = threading.Event()
        self.physics_error: BaseException | None = None
        self._steps = 0
        self._success_steps = 0
        self._succeeded = False
        self._reset_state(params.seed)

    # --- episode control -----------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        """New episode: objects placed from `seed`, arms at home, safety filters re-seeded.

        Connects the robot if needed and returns the episode's first observation.
        """
        self._reset_state(seed)
        if not self._connected:
            self.connect()  # connecting seeds the filters at now: seed them as at a reset
            self._seed_safety()
        return self.observe()

    def _reset_state(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"Episode seeds are non-negative integers, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        with self.sim.lock:
            self.sim.reset(seed)
            for i, arm in enumerate(self.raw_arms.values()):
                self.sim.set_arm_pose(i, arm.spec.home)
            self.task.place_objects(self.sim, rng)
            self.sim.forward()
            self._steps = 0
            self._success_steps = 0
            self._succeeded = False
            for cam in self.cameras.values():
                cam.restart()
        self._seed_safety()

    def _seed_safety(self) -> None:
        # The arms rest at home: seeded one period back, the first act() of the episode (sent
        # at the reset's simulated time) may already move by one period's worth of velocity.
        t_rest = self.now() - 1.0 / self.fps
        for safe in self.arms.values():
            safe.seed(safe.spec.home, t=t_rest)

    def _sim_clock(self) -> float:
        return self.sim.device_time

    @property
    def sim_time(self) -> float:
        """Simulated seconds since the last reset."""
        return self.sim.time

    @property
    def steps(self) -> int:
        """Control ticks (act calls) since the last reset."""
        return self._steps

    @property
    def max_steps(self) -> int:
        return self.task.max_steps(self.fps)

    def is_success(self) -> bool:
        """The task's success check on the current state (the per-step success signal)."""
        with self.sim.lock:
            return self.task.is_success(self.sim)

    @property
    def success_held_s(self) -> float:
        """How long success has held without interruption, in simulated seconds."""
        return self._success_steps * self.sim.timestep

    @property
    def succeeded(self) -> bool:
        """True once success has held for the task's hold time at any point this episode."""
        return self._succeeded

    def _track_success(self) -> None:
        # Checked once per control period (contacts are cheap, but not free at 500 Hz).
        if self.sim._step_index % self.sim.substeps:
            return
        if self.task.is_success(self.sim):
            self._success_steps += self.sim.substeps
            if self._success_steps * self.sim.timestep >= self.task.hold_s - 1e-9:
                self._succeeded = True
        else:
            self._success_steps = 0

    def connect(self) -> None:
        if self._connected:
            return
        super().connect()
        if self.realtime:
            self._stop_physics.clear()
            self._physics = threading.Thread(
                target=self._physics_loop, name=f"{self.name}-physics", daemon=True
            )
            self._physics.start()

    def close(self) -> None:
        if self._physics is not None:
            self._stop_physics.set()
            self._physics.join(timeout=2.0)
            self._physics = None
        super().close()
        self.sim.release_renderers()

    def _physics_loop(self) -> None:
        """Realtime mode: keep simulated time level with the wall clock."""
        period = self.sim.timestep
        while not self._stop_physics.is_set():
            try:
                self.sim.catch_up()
            except Exception as exc:  # keep a record; the next observe() raises it
                self.physics_error = exc
                return
            time.sleep(period)

    # --- I/O -----------------------------------------------------------------------------------
    def observe(self) -> Observation:
        self._check_physics()
        return super().observe()

    def act(self, action: np.ndarray, t_target: float | None = None) -> np.ndarray:
        """Send one action; in fast mode, then advance simulated time by one control period."""
        self._check_physics()
        return self._one_period(super().act(action, t_target=t_target))

    def tick(self) -> np.ndarray:
        """A tick without a new target (the watchdog runs); like act(), one period passes."""
        self._check_physics()
        return self._one_period(super().tick())

    def hold(self) -> np.ndarray:
        """Re-send every arm's last safe command; like act(), one control tick of time passes."""
        self._check_physics()
        return self._one_period(super().hold())

    def _one_period(self, sent: np.ndarray) -> np.ndarray:
        """Every command is one control tick: in fast mode the simulation advances by it."""
        if not self.realtime:
            self.sim.advance()
        self._steps += 1
        return sent

    def _check_physics(self) -> None:
        if self.physics_error is not None:
            raise DeviceError(
                f"The twin's realtime physics thread stopped: {self.physics_error!r}"
            ) from self.physics_error

    def add_step_hook(self, hook) -> None:
        """Call `hook()` after every physics step: sub-tick timing for device wrappers such as
        tether.robot.latency (it runs in the thread that steps, under the sim lock)."""
        self.sim.add_after_step_hook(hook)

    def privileged_state(self) -> dict[str, np.ndarray]:
        """Object poses (for experts and debugging; policies never see this)."""
        with self.sim.lock:
            out = {}
            for b in range(self.sim.model.nbody):
                if self.sim.model.body_jntnum[b] == 1 and self.sim.model.jnt_type[
                    self.sim.model.body_jntadr[b]
                ] == 0:
                    name = self.sim.model.body(b).name
                    out[f"{name}_pos"] = self.sim.data.xpos[b].copy()
                    out[f"{name}_quat"] = self.sim.data.xquat[b].copy()
            return out


def make_twin_robot(config: RobotConfig) -> TwinRobot:
    """Build the twin described by a RobotConfig (`twin_task` + `twin_params`)."""
    if not config.twin_task:
        raise ConfigError("RobotConfig.twin_task is empty; use a spec like twin:lift.")
    task = make_task(config.twin_task)
    try:
        params = TwinParams.from_dict(dict(config.twin_params or {}))
    except TypeError as exc:
        raise ConfigError(f"Bad twin_params {config.twin_params!r}: {exc}") from exc
    if not config.fps > 0:
        raise ConfigError(f"Robot fps must be positive, got {config.fps}")
    task.yaw_randomization = float(params.yaw_randomization)
    return TwinRobot(task, params, fps=config.fps, safety=config.safety, name=config.name)
