"""A flat calibration target textured into a MuJoCo scene and seen by a camera of known fovy.

Layer: robot (robot/twin). The twin's ground truth for camera calibration: a board (any picture
with a real size, e.g. a ChArUco board rendered by tether.calibration.charuco) hangs on a mocap
body in front of a fixed camera; `render(pose)` moves it and returns the image. The camera's
true intrinsics follow from MuJoCo's projection (`true_intrinsics`). This module knows nothing
about ChArUco: the calibration part hands it a texture, so the layers stay one-way.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import mujoco
import numpy as np

from tether.robot.interfaces import Camera, CameraSpec, Frame
from tether.robot.twin.sim import release_gl_context


def true_intrinsics(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """The 3x3 camera matrix of a MuJoCo camera, in OpenCV's pixel convention.

    MuJoCo's `fovy` is the vertical field of view and its pixels are square, so
    fy = fx = (H/2) / tan(fovy/2). Its OpenGL viewport maps the optical axis to the centre of
    the image, x = W/2 in coordinates where a pixel spans [i, i+1); OpenCV puts pixel centres
    at integers, so the principal point is ((W-1)/2, (H-1)/2).
    """
    f = (height / 2.0) / math.tan(math.radians(fovy_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class BoardPose:
    """Where the board's centre is in the camera frame (OpenCV axes: x right, y down, z ahead),
    and its tilt: rotation about the camera's x then y axis, then spin about its normal (deg)."""

    x: float
    y: float
    z: float
    tilt_x_deg: float = 0.0
    tilt_y_deg: float = 0.0
    spin_deg: float = 0.0


class BoardScene:
    """A camera at the origin and a textured board on a mocap body; one offscreen renderer.

    `texture` is the board picture (grey or RGB uint8, top row first) covering `size_m`
    (width, height) in metres exactly. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        texture: np.ndarray,
        size_m: tuple[float, float],
        fovy_deg: float = 60.0,
        width: int = 640,
        height: int = 480,
    ) -> None:
        self.fovy_deg = float(fovy_deg)
        self.width, self.height = int(width), int(height)
        self.size_m = (float(size_m[0]), float(size_m[1]))
        xml = _scene_xml(self.size_m, self.fovy_deg, self.width, self.height)
        self.model = mujoco.MjModel.from_xml_string(xml, {"board.png": _png_bytes(texture)})
        self.data = mujoco.MjData(self.model)
        self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        release_gl_context()

    @property
    def camera_matrix(self) -> np.ndarray:
        return true_intrinsics(self.fovy_deg, self.width, self.height)

    def render(self, pose: BoardPose) -> np.ndarray:
        """An RGB uint8 image (H, W, 3) of the board at `pose`."""
        # MuJoCo cameras look along their -z with y up; OpenCV's camera frame has y down, z ahead.
        flip = np.diag([1.0, -1.0, -1.0])
        rot_cv = _rot_x(pose.tilt_x_deg) @ _rot_y(pose.tilt_y_deg) @ _rot_z(pose.spin_deg)
        # The board plane's texture runs along its x (right) and y (up); in OpenCV's frame
        # the board's "up" is -y, and its visible face (+z) must point back at the camera.
        board_in_cv = rot_cv @ np.diag([1.0, -1.0, -1.0])
        rotation = flip @ board_in_cv
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, rotation.reshape(-1))
        self.data.mocap_pos[0] = flip @ np.array([pose.x, pose.y, pose.z])
        self.data.mocap_quat[0] = quat
        mujoco.mj_forward(self.model, self.data)
        self._renderer.update_scene(self.data, camera="calib")
        image = self._renderer.render()
        release_gl_context()
        return image.copy()

    def close(self) -> None:
        self._renderer.close()

    def __enter__(self) -> BoardScene:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def spread_poses(count: int, seed: int = 0, distance: tuple[float, float] = (0.30, 0.45),
                 fovy_deg: float = 60.0, aspect: float = 4 / 3, max_tilt_deg: float = 35.0) -> list[BoardPose]:
    """`count` board poses that cover the image and tilt both ways (what a good calibration
    session looks like): centres spread over the middle 60 % of the view, tilts up to
    `max_tilt_deg` about both axes, alternating in sign so the focal length is observable."""
    rng = np.random.default_rng(seed)
    half_y = math.tan(math.radians(fovy_deg) / 2.0)
    poses = []
    for i in range(count):
        z = float(rng.uniform(*distance))
        u, v = rng.uniform(-0.3, 0.3, size=2)
        tilt = max_tilt_deg * rng.uniform(0.4, 1.0, size=2) * np.where(rng.random(2) < 0.5, -1, 1)
        if i % 3 == 0:
            tilt = tilt * 0.2  # some near-frontal views: they fix the board scale
        poses.append(BoardPose(
            x=float(u * 2 * half_y * aspect * z), y=float(v * 2 * half_y * z), z=z,
            tilt_x_deg=float(tilt[0]), tilt_y_deg=float(tilt[1]),
            spin_deg=float(rng.uniform(-15, 15)),
        ))
    return poses


def _scene_xml(size_m: tuple[float, float], fovy_deg: float, width: int, height: int) -> str:
    hx, hy = size_m[0] / 2.0, size_m[1] / 2.0
    # An emissive, unlit board: the image is the texture alone, whatever the light.
    return f"""
<mujoco model="calibration_board">
  <visual>
    <global offwidth="{width}" offheight="{height}"/>
    <quality offsamples="8"/>
    <headlight ambient="0.2 0.2 0.2" diffuse="0 0 0" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="board" type="2d" file="board.png"/>
    <material name="board" texture="board" texrepeat="1 1" texuniform="false"
              emission="1" specular="0" shininess="0" rgba="1 1 1 1"/>
  </asset>
  <worldbody>
    <camera name="calib" pos="0 0 0" quat="1 0 0 0" fovy="{fovy_deg}"/>
    <body name="board" mocap="true" pos="0 0 -0.4">
      <geom name="board" type="plane" size="{hx} {hy} 0.01" material="board"
            contype="0" conaffinity="0"/>
    </body>
  </worldbody>
</mujoco>
"""


def _png_bytes(texture: np.ndarray) -> bytes:
    """PNG-encode a texture for MuJoCo's asset dict (mujoco decodes PNG itself)."""
    import zlib

    image = np.asarray(texture, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return len(payload).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    out.write(chunk(b"IHDR", header))
    out.write(chunk(b"IDAT", zlib.compress(raw, 6)))
    out.write(chunk(b"IEND", b""))
    return out.getvalue()


def _rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class BoardCamera(Camera):
    """A Camera whose every `read()` shows the board at the next of `poses` (cycling): the twin
    stand-in for a person moving a board in front of a real camera during `tether calibrate
    camera`. Frames are rendered on demand; `t_host`/`t_device` count frames at `fps`."""

    def __init__(self, scene: BoardScene, poses: list[BoardPose], name: str = "board_cam", fps: float = 30.0) -> None:
        self.spec = CameraSpec(name, scene.width, scene.height, fps)
        self._scene = scene
        self._poses = list(poses)
        self._index = -1
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def close(self) -> None:
        self._connected = False

    def read(self) -> Frame:
        self._require_connected()
        self._index += 1
        image = self._scene.render(self._poses[self._index % len(self._poses)])
        t = self._index / self.spec.fps
        return Frame(image=image, t_device=t, t_host=t, index=self._index)
