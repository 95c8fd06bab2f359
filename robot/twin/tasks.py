"""Twin tasks: a scene, seeded object placement, and a per-step success check.

A task is data plus three small functions, not a copy of an environment: the robot, the
cameras, the experts and the gym wrapper all run the same code path whatever the task.

- `lift`: the SO-101 class arm lifts a 4 cm cube at least 5 cm off the table and holds it.
- `insertion`: the SO-101 class arm picks a 2 cm square peg and inserts it at least 18 mm
  into a socket with 3 mm clearance per side (contact-rich: the walls guide the peg).
- `transfer_cube`: the ALOHA layout (two ViperX class arms facing each other); the right arm
  picks the cube and hands it to the left arm, which must hold it in the air alone (the ACT
  paper's task).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.twin.models import SO101, VX300, ArmModel, free_box, scene_xml, socket
from tether.robot.twin.sim import TwinSim

TABLE_Z = 0.0

SO101_CAMERAS = """
    <camera name="top" pos="0.17 0 0.62" xyaxes="0 -1 0 1 0 0" fovy="55"/>
    <camera name="front" pos="0.6 0 0.32" xyaxes="0 1 0 -0.5 0 0.866" fovy="55"/>
"""

# `top` sees both arms whole (the 4 cm cube is ~5 px wide at 128 px); `workspace` looks down
# from the same height at only the cube's spawn area and the handover point (x -0.18..0.38 m,
# y +-0.21 m at 4:3), so a small image resolves the cube ~2.4x finer (7x the pixels): what a
# CPU-sized policy at 72x96 needs to place a grasp (through `top` it missed by a few pixels).
ALOHA_CAMERAS = """
    <camera name="top" pos="0 0 0.95" xyaxes="1 0 0 0 1 0" fovy="62"/>
    <camera name="workspace" pos="0.1 0 0.95" xyaxes="1 0 0 0 1 0" fovy="25"/>
    <camera name="angle" pos="0 -0.75 0.55" xyaxes="1 0 0 0 0.6 0.8" fovy="60"/>
"""


@dataclass
class Task:
    """Base: subclasses set the scene and implement `place_objects` and `is_success`."""

    name: str = ""
    instruction: str = ""
    duration_s: float = 8.0
    arm_layout: list[tuple[str, ArmModel, str, tuple[float, float, float], float]] = field(
        default_factory=list
    )
    cameras: tuple[str, ...] = ()
    default_cameras: tuple[str, ...] = ("top",)
    hold_s: float = 0.5  # how long success must hold before an expert calls the episode done
    # Scales every random object yaw (1: the task's full range; 0: objects keep their base
    # orientation and only positions vary, as in the ACT paper's simulated tasks, whose
    # sample_box_pose / sample_insertion_pose fix the quaternion). Set from twin_params.
    yaw_randomization: float = 1.0

    def max_steps(self, fps: float) -> int:
        """Episode length in control ticks at `fps`."""
        return int(round(self.duration_s * fps))

    def scene(self) -> str:
        arms = [(m.kind, prefix, pos, yaw) for _, m, prefix, pos, yaw in self.arm_layout]
        return scene_xml(arms, self.objects_xml(), self.cameras_xml(), timestep=0.002)

    def sim_arms(self) -> list[tuple[str, ArmModel, str]]:
        return [(name, m, prefix) for name, m, prefix, _, _ in self.arm_layout]

    def objects_xml(self) -> str:
        raise NotImplementedError

    def cameras_xml(self) -> str:
        raise NotImplementedError

    def bind(self, sim: TwinSim) -> None:
        """Look up ids once per sim (geoms used by the success check)."""

    def place_objects(self, sim: TwinSim, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def is_success(self, sim: TwinSim) -> bool:
        raise NotImplementedError

    # --- helpers for subclasses and experts ----------------------------------------------------
    def random_yaw(self, rng: np.random.Generator, half_range: float) -> float:
        """A yaw in +-half_range scaled by `yaw_randomization`; one draw whatever the scale, so
        a seed places objects at the same positions with or without yaw."""
        return float(rng.uniform(-half_range, half_range)) * self.yaw_randomization

    @staticmethod
    def set_free_pose(sim: TwinSim, body: str, pos, yaw: float) -> None:
        adr = sim.joint_qposadr(body)
        sim.data.qpos[adr : adr + 3] = pos
        sim.data.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    @staticmethod
    def body_pose(sim: TwinSim, body: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and rotation matrix of a body (after the last physics step)."""
        bid = sim.body_id(body)
        return sim.data.xpos[bid].copy(), sim.data.xmat[bid].reshape(3, 3).copy()

    @staticmethod
    def yaw_of(rot: np.ndarray) -> float:
        return float(np.arctan2(rot[1, 0], rot[0, 0]))


def _pads(sim: TwinSim, prefix: str) -> tuple[int, int]:
    return sim.geom_id(prefix + "pad_left"), sim.geom_id(prefix + "pad_right")


@dataclass
class LiftTask(Task):
    name: str = "lift"
    instruction: str = "Pick up the red cube and lift it off the table."
    duration_s: float = 8.0
    cube_half: float = 0.02
    lift_height: float = 0.05

    def __post_init__(self) -> None:
        self.arm_layout = [("arm", SO101, "", (0.0, 0.0, 0.0), 0.0)]
        self.cameras = ("top", "front", "wrist")

    def objects_xml(self) -> str:
        h = self.cube_half
        return free_box("cube", (h, h, h), "0.85 0.1 0.1 1", mass=0.05)

    def cameras_xml(self) -> str:
        return SO101_CAMERAS

    def bind(self, sim: TwinSim) -> None:
        self._cube = sim.geom_id("cube")
        self._pads = _pads(sim, "")

    def place_objects(self, sim: TwinSim, rng: np.random.Generator) -> None:
        x = rng.uniform(0.13, 0.21)
        y = rng.uniform(-0.08, 0.08)
        yaw = self.random_yaw(rng, np.pi / 4)
        self.set_free_pose(sim, "cube", [x, y, TABLE_Z + self.cube_half], yaw)

    def is_success(self, sim: TwinSim) -> bool:
        pos, _ = self.body_pose(sim, "cube")
        lifted = pos[2] - self.cube_half >= TABLE_Z + self.lift_height
        left, right = self._pads
        return bool(
            lifted
            and sim.contacts_between({self._cube}, {left})
            and sim.contacts_between({self._cube}, {right})
        )


@dataclass
class InsertionTask(Task):
    name: str = "insertion"
    instruction: str = "Pick up the blue peg and insert it into the socket."
    duration_s: float = 12.0
    peg_half: tuple[float, float, float] = (0.01, 0.01, 0.035)
    socket_inner: float = 0.013
    socket_height: float = 0.03
    depth: float = 0.018

    def __post_init__(self) -> None:
        self.arm_layout = [("arm", SO101, "", (0.0, 0.0, 0.0), 0.0)]
        self.cameras = ("top", "front", "wrist")

    def objects_xml(self) -> str:
        return free_box("peg", self.peg_half, "0.15 0.3 0.85 1", mass=0.03) + socket(
            "socket", self.socket_inner, 0.008, self.socket_height, "0.2 0.6 0.25 1"
        )

    def cameras_xml(self) -> str:
        return SO101_CAMERAS

    def place_objects(self, sim: TwinSim, rng: np.random.Generator) -> None:
        peg_xy = [rng.uniform(0.13, 0.2), rng.uniform(0.03, 0.09)]
        self.set_free_pose(
            sim, "peg", [peg_xy[0], peg_xy[1], TABLE_Z + self.peg_half[2]],
            self.random_yaw(rng, np.pi / 4),
        )
        sock_xy = [rng.uniform(0.14, 0.2), rng.uniform(-0.09, -0.04)]
        yaw = self.random_yaw(rng, np.pi / 8)
        mocap = sim.model.body_mocapid[sim.body_id("socket")]
        sim.data.mocap_pos[mocap] = [sock_xy[0], sock_xy[1], TABLE_Z]
        sim.data.mocap_quat[mocap] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def socket_pose(self, sim: TwinSim) -> tuple[np.ndarray, float]:
        mocap = sim.model.body_mocapid[sim.body_id("socket")]
        q = sim.data.mocap_quat[mocap]
        yaw = 2.0 * np.arctan2(q[3], q[0])
        return sim.data.mocap_pos[mocap].copy(), float(yaw)

    def is_success(self, sim: TwinSim) -> bool:
        pos, rot = self.body_pose(sim, "peg")
        sock, yaw = self.socket_pose(sim)
        c, s = np.cos(yaw), np.sin(yaw)
        d = pos[:2] - sock[:2]
        local = np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1]])
        inside = bool(np.all(np.abs(local) < self.socket_inner))
        bottom = pos[2] - self.peg_half[2] * rot[2, 2]
        upright = rot[2, 2] > 0.9
        return inside and upright and bottom <= TABLE_Z + self.socket_height - self.depth


@dataclass
class TransferCubeTask(Task):
    name: str = "transfer_cube"
    instruction: str = "Pick up the red cube with the right arm and hand it to the left arm."
    duration_s: float = 12.0
    cube_half: float = 0.02

    def __post_init__(self) -> None:
        self.arm_layout = [
            ("left", VX300, "left_", (-0.469, 0.0, 0.0), 0.0),
            ("right", VX300, "right_", (0.469, 0.0, 0.0), np.pi),
        ]
        self.cameras = ("top", "workspace", "angle", "left_wrist", "right_wrist")

    def objects_xml(self) -> str:
        h = self.cube_half
        return free_box("cube", (h, h, h), "0.85 0.1 0.1 1", mass=0.05)

    def cameras_xml(self) -> str:
        return ALOHA_CAMERAS

    def bind(self, sim: TwinSim) -> None:
        self._cube = sim.geom_id("cube")
        self._table = sim.geom_id("table")
        self._left = set(_pads(sim, "left_"))
        self._right = set(_pads(sim, "right_"))

    def place_objects(self, sim: TwinSim, rng: np.random.Generator) -> None:
        x = rng.uniform(0.0, 0.2)
        y = rng.uniform(-0.1, 0.1)
        yaw = self.random_yaw(rng, np.pi / 4)
        self.set_free_pose(sim, "cube", [x, y, TABLE_Z + self.cube_half], yaw)

    def is_success(self, sim: TwinSim) -> bool:
        cube = {self._cube}
        return bool(
            sim.contacts_between(cube, self._left)
            and not sim.contacts_between(cube, self._right)
            and not sim.contacts_between(cube, {self._table})
        )


TASKS: dict[str, type[Task]] = {
    "lift": LiftTask,
    "insertion": InsertionTask,
    "transfer_cube": TransferCubeTask,
}


def make_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(
            f"Unknown twin task '{name}'. Known tasks: {', '.join(sorted(TASKS))} "
            "(for example twin:lift)."
        )
    return TASKS[name]()
