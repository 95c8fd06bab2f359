"""Hand-eye calibration against the twin's ground truth (issue 15 item 2).

The twin gives the truth exactly: the flange pose from its forward kinematics (MuJoCo body
poses), the wrist camera's mount on the flange and the fixed camera's pose from the model. Board
corners are projected through the true camera and 1 px Gaussian noise is added before solvePnP
and the solve, as a detector's corners would be. Accuracy target: 2 mm and 0.5 degrees.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")
pytest.importorskip("cv2")

from tether.calibration import hand_eye as he  # noqa: E402
from tether.calibration.kinematics import twin_flange_pose  # noqa: E402
from tether.robot.twin.models import SO101  # noqa: E402
from tether.robot.twin.tasks import make_task  # noqa: E402

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # MuJoCo camera frame (looks down -z, y up) -> OpenCV
BOX = he.WorkspaceBox((0.05, -0.2, 0.05), (0.35, 0.2, 0.4))
# Eye-to-hand: the board is a plate in front of the gripper, its normal along the approach axis.
BOARD_ON_FLANGE_R = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def board_points(cols: int = 7, rows: int = 5, square: float = 0.03) -> np.ndarray:
    grid = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), -1).reshape(-1, 2) * square
    return np.c_[grid, np.zeros(len(grid))]


class TwinScene:
    """The SO-101 twin's model, one of its cameras, and a board projected with pixel noise."""

    def __init__(self, camera: str, width: int = 640, height: int = 480) -> None:
        self.model = mujoco.MjModel.from_xml_string(make_task("lift").scene())
        self.fk = twin_flange_pose(self.model, "", SO101.joints)
        self.cid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        f = (height / 2) / math.tan(math.radians(self.model.cam_fovy[self.cid]) / 2)
        self.K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
        self.size = (width, height)
        self.points = board_points()
        self.fk(np.zeros(5))
        self.world_base = self.fk.world_pose(self.fk.base)

    def camera_in_base(self, q: np.ndarray) -> np.ndarray:
        self.fk(q)
        mujoco.mj_camlight(self.model, self.fk.data)
        d = self.fk.data
        world_cam = he.transform(d.cam_xmat[self.cid].reshape(3, 3), d.cam_xpos[self.cid]) @ FLIP
        return he.invert(self.world_base) @ world_cam

    def project(self, cam_t_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = (cam_t_target[:3, :3] @ self.points.T).T + cam_t_target[:3, 3]
        return p[:, 2], (self.K @ (p / p[:, 2:3]).T).T[:, :2]

    def visible(self, cam_t_target: np.ndarray, margin: float = 20.0) -> bool:
        z, uv = self.project(cam_t_target)
        w, h = self.size
        return bool(
            cam_t_target[2, 2] < -0.5  # the board faces the camera
            and z.min() > 0.08
            and np.all(uv >= margin)
            and np.all(uv[:, 0] <= w - margin)
            and np.all(uv[:, 1] <= h - margin)
        )

    def observe(self, cam_t_target: np.ndarray, rng: np.random.Generator, noise_px: float = 1.0):
        _, uv = self.project(cam_t_target)
        return self.points, uv + rng.normal(0.0, noise_px, uv.shape)


def eye_in_hand_truth() -> tuple[TwinScene, np.ndarray, np.ndarray]:
    scene = TwinScene("wrist")
    q = np.zeros(5)
    flange_t_cam = he.invert(scene.fk(q)) @ scene.camera_in_base(q)
    base_t_target = he.invert(scene.world_base) @ he.transform(np.eye(3), (0.13, -0.06, 0.001))
    return scene, flange_t_cam, base_t_target


def eye_to_hand_truth() -> tuple[TwinScene, np.ndarray, np.ndarray]:
    scene = TwinScene("front")
    base_t_cam = scene.camera_in_base(np.zeros(5))
    r = BOARD_ON_FLANGE_R
    flange_t_target = he.transform(r, np.array([0.11, 0.0, 0.0]) - r @ np.array([0.09, 0.06, 0.0]))
    return scene, base_t_cam, flange_t_target


def collect(mode: str, n: int, seed: int, noise_px: float = 1.0, candidates: int = 600):
    """Plan n stations in BOX on the twin, and observe the board at each with pixel noise."""
    if mode == "eye_in_hand":
        scene, x_true, fixed = eye_in_hand_truth()
        q0 = np.array(SO101.home[:5])

        def cam_t_target(flange: np.ndarray) -> np.ndarray:
            return he.invert(flange @ x_true) @ fixed
    else:
        scene, x_true, fixed = eye_to_hand_truth()
        q0 = np.array([0.0, -0.19, -0.21, 0.0, 0.0])

        def cam_t_target(flange: np.ndarray) -> np.ndarray:
            return he.invert(x_true) @ flange @ fixed

    qs = he.plan_stations(
        scene.fk, q0, BOX, n, spread=0.7, lower=SO101.lower, upper=SO101.upper,
        accept=lambda q, flange: scene.visible(cam_t_target(flange)), seed=seed,
        candidates=candidates,
    )
    rng = np.random.default_rng(seed)
    flanges = [scene.fk(q) for q in qs]
    obs = [scene.observe(cam_t_target(f), rng, noise_px) for f in flanges]
    return scene, x_true, fixed, qs, flanges, obs


def report(label: str, truth: np.ndarray, estimate: np.ndarray) -> tuple[float, float]:
    dt, dr = he.pose_error(truth, estimate)
    def mm(t: np.ndarray) -> str:
        return ", ".join(f"{v * 1000:.2f}" for v in t)

    print(f"{label} | truth t=({mm(truth[:3, 3])}) mm | estimate t=({mm(estimate[:3, 3])}) mm | "
          f"error {dt * 1000:.2f} mm {math.degrees(dr):.3f} deg")
    return dt * 1000.0, math.degrees(dr)


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_recovers_the_camera_transform_within_2mm_and_half_a_degree(mode):
    scene, x_true, fixed_true, _qs, flanges, obs = collect(mode, n=15, seed=0)
    for f in flanges:
        assert BOX.contains(f[:3, 3])
    poses = [he.board_pose_from_points(o, i, scene.K) for o, i in obs]
    closed = he.solve(flanges, poses, mode)
    result, rms_px = he.refine(closed, flanges, obs, scene.K)
    mm, deg = report(f"{mode} {result.transform_name}", x_true, result.transform)
    report(f"{mode} {result.target_name}", fixed_true, result.target)
    assert mm < 2.0 and deg < 0.5
    assert not result.warnings  # a good station set: no conditioning warning
    # Residuals: 1 px noise per axis is ~1.4 px per corner; the board poses agree within mm.
    assert 1.0 < rms_px < 2.0
    assert result.residual_mm.shape == (15,) and result.rms_mm < 5.0 and result.rms_deg < 1.5
    d = result.to_dict()
    assert d["residuals"]["rms_mm"] == pytest.approx(result.rms_mm, abs=1e-3)
    assert set(d["methods"]) >= {"tsai", "park", "shah"}


def test_closed_form_solvers_alone_are_close():
    """Without the reprojection refinement the best OpenCV solver is already within a few mm."""
    scene, x_true, _, _, flanges, obs = collect("eye_in_hand", n=15, seed=1)
    result = he.solve(flanges, [he.board_pose_from_points(o, i, scene.K) for o, i in obs])
    mm, deg = report("closed-form flange_T_cam", x_true, result.transform)
    assert mm < 5.0 and deg < 1.0


def test_noise_free_stations_are_recovered_exactly():
    scene, x_true, _, _, flanges, obs = collect("eye_to_hand", n=8, seed=2, noise_px=0.0)
    result = he.solve(flanges, [he.board_pose_from_points(o, i, scene.K) for o, i in obs], "eye_to_hand")
    mm, deg = report("noise-free base_T_cam", x_true, result.transform)
    assert mm < 0.1 and deg < 0.01 and result.rms_mm < 0.1


def test_rotation_about_one_axis_warns_poorly_conditioned(caplog):
    """Stations that only turn the wrist roll (one axis) leave an offset unobservable: warn."""
    scene, x_true, fixed = eye_in_hand_truth()
    q0 = np.array(SO101.home[:5])
    qs = [q0 + np.array([0, 0, 0, 0, a]) for a in np.linspace(-0.6, 0.6, 8)]
    flanges = [scene.fk(q) for q in qs]
    poses = [he.invert(f @ x_true) @ fixed for f in flanges]
    with caplog.at_level(logging.WARNING, logger="tether.calibration.hand_eye"):
        result = he.solve(flanges, poses)
    assert any("poorly conditioned" in w for w in result.warnings)
    assert "poorly conditioned" in caplog.text
    few = he.conditioning(flanges[:3])
    assert any("only 3 stations" in w for w in few.warnings)


def test_small_rotations_warn():
    scene, *_ = eye_in_hand_truth()
    q0 = np.array(SO101.home[:5])
    rng = np.random.default_rng(0)
    flanges = [scene.fk(q0 + rng.uniform(-0.05, 0.05, 5)) for _ in range(10)]
    assert any("varies by at most" in w for w in he.conditioning(flanges).warnings)


def test_plan_refuses_a_box_the_arm_cannot_reach():
    scene, *_ = eye_in_hand_truth()
    far = he.WorkspaceBox((1.0, 1.0, 1.0), (1.2, 1.2, 1.2))
    with pytest.raises(he.ConfigError, match="workspace box"):
        he.plan_stations(scene.fk, np.array(SO101.home[:5]), far, 5, candidates=50)


def test_workspace_box_parse():
    box = he.WorkspaceBox.parse("0.1,-0.2,0.05,0.3,0.2,0.4")
    assert box.contains(np.array([0.2, 0.0, 0.1])) and not box.contains(np.array([0.2, 0.0, 0.5]))
    with pytest.raises(he.ConfigError, match="six numbers"):
        he.WorkspaceBox.parse("1,2,3")
    with pytest.raises(he.ConfigError, match="below upper"):
        he.WorkspaceBox.parse("0.3,0,0,0.1,1,1")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_accuracy_over_many_seeds(mode):
    """Full-accuracy version: 10 station sets of 20 stations each."""
    errors = []
    for seed in range(10):
        scene, x_true, _, _, flanges, obs = collect(mode, n=20, seed=seed, candidates=2000)
        closed = he.solve(flanges, [he.board_pose_from_points(o, i, scene.K) for o, i in obs], mode)
        result, _ = he.refine(closed, flanges, obs, scene.K)
        errors.append(report(f"{mode} seed {seed}", x_true, result.transform))
    errors = np.array(errors)
    print(f"{mode}: max {errors[:, 0].max():.2f} mm {errors[:, 1].max():.3f} deg")
    assert errors[:, 0].max() < 2.0 and errors[:, 1].max() < 0.5


# --------------------------------------------------------------------------------------------
# The command's collection loop on the running twin robot
# --------------------------------------------------------------------------------------------


def test_command_moves_the_twin_through_the_safety_layer_and_solves(tmp_path, monkeypatch):
    """Drive the twin (Robot.act, safety layer on) through planned stations inside the box, then
    solve from the saved stations with the CLI. The twin scene has no printed board, so the
    detector is replaced by the board's true corners projected through the twin's wrist camera
    at the settled pose, with 1 px noise: everything else is the command's own path."""
    from typer.testing import CliRunner

    from tether.app.commands import calibrate_hand_eye as cmd
    from tether.calibration.store import CalibrationStore
    from tether.cli import build_app
    from tether.robot.factory import make_robot

    monkeypatch.chdir(tmp_path)
    robot = make_robot("twin:lift", ["twin_params.cameras=[wrist]", "twin_params.camera_fps=2"])
    scene, x_true, base_t_target = eye_in_hand_truth()
    k, dist, origin = cmd.camera_intrinsics("twin:lift", robot, "wrist")
    assert origin == "the twin's model"
    fk = cmd.flange_kinematics(robot, "arm")
    rng = np.random.default_rng(0)
    sim = robot.sim
    cid = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_CAMERA, "wrist")
    base_id = sim.body_id("base")

    def detect_truth(_image):
        with sim.lock:
            world_cam = he.transform(sim.data.cam_xmat[cid].reshape(3, 3), sim.data.cam_xpos[cid]) @ FLIP
            world_base = he.transform(sim.data.xmat[base_id].reshape(3, 3), sim.data.xpos[base_id])
        cam_t_target = he.invert(world_cam) @ world_base @ base_t_target
        if not scene.visible(cam_t_target):
            return None
        p = (cam_t_target[:3, :3] @ scene.points.T).T + cam_t_target[:3, 3]
        uv = (k @ (p / p[:, 2:3]).T).T[:, :2]
        return scene.points, uv + rng.normal(0.0, 1.0, uv.shape)

    spec = robot.arms["arm"].spec
    with robot:
        q0 = np.asarray(robot.observe().joints["arm"].position)[:5]
        plan = he.plan_stations(
            fk, q0, BOX, 12, spread=0.6, lower=spec.lower[:5], upper=spec.upper[:5],
            accept=lambda q, f: scene.visible(he.invert(f @ x_true) @ base_t_target), seed=3,
        )
        stations = cmd.collect_stations(robot, "arm", "wrist", plan, fk, detect_truth, speed=1.0, settle_s=0.3)
    assert len(stations) >= 10
    for s in stations:  # measured poses stayed in the box, and FK of the measured joints is used
        assert BOX.contains(s.base_t_flange[:3, 3])
        assert np.allclose(s.base_t_flange, fk(s.joints[:5]))
    saved = cmd.save_stations(tmp_path / "stations.json", stations, k, dist, "eye_in_hand")

    result = CliRunner().invoke(
        build_app(), ["calibrate", "hand-eye", "--robot", "twin:lift", "--camera", "wrist",
                      "--load-stations", str(saved)],
    )
    assert result.exit_code == 0, result.output
    assert "reprojection RMS" in result.output
    record = CalibrationStore.for_robot("twin:lift").load("hand_eye", "wrist")
    estimate = np.asarray(record.data["flange_T_cam"])
    mm, deg = report("command flange_T_cam", x_true, estimate)
    assert mm < 2.0 and deg < 0.5
    assert record.residuals["reprojection_rms_px"] < 2.0
    assert record.notes["conditioning"]["warnings"] == []


def test_command_refuses_a_mode_mismatch_and_a_missing_box(tmp_path):
    from typer.testing import CliRunner

    from tether.app.commands import calibrate_hand_eye as cmd
    from tether.cli import build_app

    path = cmd.save_stations(tmp_path / "s.json", [], np.eye(3), np.zeros(5), "eye_to_hand")
    result = CliRunner().invoke(build_app(), ["calibrate", "hand-eye", "--robot", "twin:lift", "--camera",
                                              "wrist", "--load-stations", str(path)])
    assert result.exit_code != 0 and "--mode eye-to-hand" in result.output
    result = CliRunner().invoke(build_app(), ["calibrate", "hand-eye", "--robot", "twin:lift", "--camera", "wrist"])
    assert result.exit_code != 0 and "--box is needed" in result.output
    result = CliRunner().invoke(build_app(), ["calibrate", "hand-eye", "--robot", "twin:lift", "--camera", "wrist",
                                              "--box", "0,0,0,1,1"])
    assert result.exit_code != 0 and "six numbers" in result.output
    result = CliRunner().invoke(build_app(), ["calibrate", "hand-eye", "--robot", "twin:lift", "--camera", "nope",
                                              "--box", "0,0,0,1,1,1"])
    assert result.exit_code != 0 and "no camera 'nope'" in result.output


# --------------------------------------------------------------------------------------------
# Rendered ChArUco board, detected by OpenCV (no synthetic corners)
# --------------------------------------------------------------------------------------------


def _euler_xyz_deg(r: np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) with r = Rx(a) Ry(b) Rz(c), degrees (the BoardPose tilt convention)."""
    b = math.asin(max(-1.0, min(1.0, r[0, 2])))
    return math.degrees(math.atan2(-r[1, 2], r[2, 2])), math.degrees(b), math.degrees(math.atan2(-r[0, 1], r[0, 0]))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_rendered_charuco_board_detected_by_opencv(mode):
    """The same stations, but each image is the ChArUco board rendered by MuJoCo (robot/twin/
    boards.py) at the true camera-board pose and found by the command's ChArUco detector. The
    detected board frame differs from the rendered plane's by a fixed transform, which hand-eye
    absorbs into the board's unknown pose; the camera transform is compared with the truth."""
    from tether.app.commands import calibrate_hand_eye as cmd
    from tether.calibration.charuco import CharucoSpec, render_board
    from tether.robot.twin.boards import BoardPose, BoardScene

    spec = CharucoSpec()  # 7 x 5 squares of 30 mm
    hx, hy = spec.size_m[0] / 2, spec.size_m[1] / 2
    outline = np.array([[-hx, -hy, 0], [hx, -hy, 0], [hx, hy, 0], [-hx, hy, 0.0]])
    if mode == "eye_in_hand":
        scene, x_true, _ = eye_in_hand_truth()
        q0 = np.array(SO101.home[:5])
        plane = he.invert(scene.world_base) @ he.transform(np.eye(3), (0.22, 0.0, 0.001))

        def cam_t_plane(flange):
            return he.invert(flange @ x_true) @ plane
    else:
        scene, x_true, _ = eye_to_hand_truth()
        q0 = np.array([0.0, -0.19, -0.21, 0.0, 0.0])
        plane = he.transform(BOARD_ON_FLANGE_R, (0.11, 0.0, 0.0))

        def cam_t_plane(flange):
            return he.invert(x_true) @ flange @ plane

    def visible(c: np.ndarray) -> bool:
        scene.points = outline
        return scene.visible(c, margin=30)

    qs = he.plan_stations(scene.fk, q0, BOX, 15, spread=0.7, lower=SO101.lower, upper=SO101.upper,
                          accept=lambda q, f: visible(cam_t_plane(f)), seed=0, candidates=800)
    fovy = float(scene.model.cam_fovy[scene.cid])
    detect = cmd.charuco_detect(spec)
    stations = []
    with BoardScene(render_board(spec, 4000.0), spec.size_m, fovy, *scene.size) as board_scene:
        k = board_scene.camera_matrix
        for q in qs:
            flange = scene.fk(q)
            c = cam_t_plane(flange)
            rot_cv = c[:3, :3] @ np.diag([1.0, -1.0, -1.0])
            a, b, s = _euler_xyz_deg(rot_cv)
            image = board_scene.render(BoardPose(*c[:3, 3], tilt_x_deg=a, tilt_y_deg=b, spin_deg=s))
            seen = detect(image)
            if seen is not None:
                stations.append(cmd.Station(np.asarray(q), flange, *seen))
    assert len(stations) >= 12
    result, rms_px = cmd.solve_stations(stations, mode, k, np.zeros(5))
    mm, deg = report(f"rendered {mode} {result.transform_name}", x_true, result.transform)
    print(f"rendered {mode}: {len(stations)} stations, reprojection {rms_px:.3f} px, method {result.method}")
    assert mm < 2.0 and deg < 0.5
    assert rms_px < 1.0
