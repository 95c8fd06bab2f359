"""`tether calibrate hand-eye`: where a camera sits relative to an arm (eye-in-hand or eye-to-hand).

Layer: app. It wires the robot (arms through the safety layer, cameras), the arm's forward
kinematics (the twin's MuJoCo model, or a real arm's MJCF) and the ChArUco detector into
tether.calibration.hand_eye, which does the maths.

Two ways to collect stations:
- automatic (default): plan `--stations` joint configurations around the arm's current pose whose
  flange stays inside `--box`, and drive the arm there slowly (`--speed`, joint space, every
  command through Robot.act and so the safety layer), letting it settle before each image;
- `--manual`: pose the arm yourself (torque off, or with a leader) and press Enter per station.

Either way `--save-stations FILE` keeps the raw stations (joints, flange pose, detected corners;
JSON) and `--load-stations FILE` re-solves from such a file without moving anything. The result
goes into the robot's calibration folder as record `hand_eye.<camera>`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from tether.core.errors import ConfigError

console = Console()

# image -> (board points (N, 3) m, pixels (N, 2)) or None when the board is not seen
Detect = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]
MIN_CORNERS = 6


def register(app: typer.Typer) -> None:
    """Add `calibrate hand-eye` to the `tether calibrate` group."""
    for group in app.registered_groups:
        if group.name == "calibrate" and group.typer_instance is not None:
            group.typer_instance.command("hand-eye")(calibrate_hand_eye)
            return
    calibrate = typer.Typer(help="Calibration commands.", no_args_is_help=True)
    calibrate.command("hand-eye")(calibrate_hand_eye)
    app.add_typer(calibrate, name="calibrate")


# --------------------------------------------------------------------------------------------
# Stations
# --------------------------------------------------------------------------------------------


@dataclass
class Station:
    """One arm pose and what the camera saw there."""

    joints: np.ndarray  # the arm's joint positions as measured (gripper included)
    base_t_flange: np.ndarray  # 4x4, from forward kinematics of the measured joints
    object_points: np.ndarray  # (N, 3) board frame, metres
    image_points: np.ndarray  # (N, 2) pixels

    def to_dict(self) -> dict[str, Any]:
        return {
            "joints": self.joints.tolist(),
            "base_T_flange": self.base_t_flange.tolist(),
            "object_points": self.object_points.tolist(),
            "image_points": self.image_points.tolist(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Station:
        try:
            return cls(
                np.asarray(raw["joints"], dtype=np.float64),
                np.asarray(raw["base_T_flange"], dtype=np.float64).reshape(4, 4),
                np.asarray(raw["object_points"], dtype=np.float64).reshape(-1, 3),
                np.asarray(raw["image_points"], dtype=np.float64).reshape(-1, 2),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"A hand-eye station lacks or garbles {exc}; re-collect it with --save-stations."
            ) from exc


def save_stations(path: Path, stations: list[Station], camera_matrix: np.ndarray,
                  dist_coeffs: np.ndarray, mode: str) -> Path:
    data = {
        "mode": mode,
        "camera_matrix": np.asarray(camera_matrix).tolist(),
        "dist_coeffs": np.asarray(dist_coeffs).reshape(-1).tolist(),
        "stations": [s.to_dict() for s in stations],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def load_stations(path: Path) -> tuple[list[Station], np.ndarray, np.ndarray, str | None]:
    try:
        raw = json.loads(path.read_text())
        stations = [Station.from_dict(s) for s in raw["stations"]]
        return (stations, np.asarray(raw["camera_matrix"], dtype=np.float64),
                np.asarray(raw["dist_coeffs"], dtype=np.float64), raw.get("mode"))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a hand-eye stations file ({exc}); write one with --save-stations."
        ) from exc


# --------------------------------------------------------------------------------------------
# Robot side: kinematics, intrinsics, motion
# --------------------------------------------------------------------------------------------


def arm_slice(robot, arm_name: str) -> slice:
    """Where one arm's entries sit in the robot's action/state vector."""
    start = 0
    for name, arm in robot.arms.items():
        if name == arm_name:
            return slice(start, start + arm.spec.dof)
        start += arm.spec.dof
    raise ConfigError(f"Robot '{robot.name}' has no arm '{arm_name}' (arms: {', '.join(robot.arms)}).")


def flange_kinematics(robot, arm_name: str, mjcf: Path | None = None, flange: str = "gripper",
                      base: str = "base", joints: list[str] | None = None):
    """`flange_pose(q) -> base_T_flange` for one arm: the twin's own model, or `mjcf` for a real
    arm (bodies `flange` and `base`, joints default to the arm's joint names minus the gripper)."""
    from tether.calibration.kinematics import MujocoFlangePose, twin_flange_pose

    spec = robot.arms[arm_name].spec
    if mjcf is None:
        sim = getattr(robot, "sim", None)
        if sim is None:
            raise ConfigError(
                f"Robot '{robot.name}' is not the twin, so hand-eye needs the arm's kinematics: pass "
                "--mjcf with a MuJoCo model of the arm (and --flange/--base body names)."
            )
        binding = sim.arms[list(robot.arms).index(arm_name)]
        return twin_flange_pose(sim.model, binding.prefix, binding.model.joints)
    import mujoco

    if not mjcf.exists():
        raise ConfigError(f"--mjcf: model file '{mjcf}' not found.")
    try:
        model = mujoco.MjModel.from_xml_path(str(mjcf))
    except ValueError as exc:
        raise ConfigError(f"--mjcf: MuJoCo could not load '{mjcf}': {exc}") from exc
    names = joints or [j for i, j in enumerate(spec.joint_names) if i != spec.gripper_index]
    return MujocoFlangePose(model, names, flange, base)


def camera_intrinsics(robot_spec: str, robot, camera: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The camera's matrix and distortion: its `camera_intrinsics` record, or on the twin the
    model's exact values. Returns (K, dist, where they came from)."""
    from tether.calibration.store import CalibrationStore

    record = CalibrationStore.for_robot(robot_spec).get("camera_intrinsics", camera)
    if record is not None:
        return (np.asarray(record.data["camera_matrix"], dtype=np.float64),
                np.asarray(record.data["dist_coeffs"], dtype=np.float64), "calibration record")
    sim = getattr(robot, "sim", None)
    if sim is not None and camera in robot.cameras:
        import mujoco

        cid = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        spec = robot.cameras[camera].spec
        f = (spec.height / 2.0) / math.tan(math.radians(float(sim.model.cam_fovy[cid])) / 2.0)
        k = np.array([[f, 0, (spec.width - 1) / 2.0], [0, f, (spec.height - 1) / 2.0], [0, 0, 1.0]])
        return k, np.zeros(5), "the twin's model"
    raise ConfigError(
        f"Camera '{camera}' has no intrinsics calibration; run "
        f"`tether calibrate camera --robot {robot_spec} --camera {camera}` first."
    )


def _paced(robot) -> bool:
    """True when the loop must wait for the wall clock (hardware, or the twin in realtime)."""
    return not robot.simulated_time or bool(getattr(robot, "realtime", False))


def move_arm(robot, arm_name: str, goal: np.ndarray, speed: float, settle_s: float) -> np.ndarray:
    """Drive one arm to `goal` in a straight joint-space line at <= `speed` rad/s, every tick
    through Robot.act (the safety layer clamps limits and velocity), then hold `settle_s`.

    Other arms and the gripper hold where they are. Returns the last command sent."""
    if not speed > 0:
        raise ConfigError(f"--speed must be positive (rad/s), got {speed}.")
    part = arm_slice(robot, arm_name)
    start = np.asarray(robot.observe().state, dtype=np.float64)
    target = start.copy()
    goal = np.asarray(goal, dtype=np.float64)
    target[part.start : part.start + len(goal)] = goal
    distance = float(np.abs(target - start).max())
    period = 1.0 / robot.fps
    steps = max(1, math.ceil(distance / (speed * period)))
    settle = max(1, math.ceil(settle_s / period))
    paced = _paced(robot)
    next_t = time.monotonic()
    sent = start
    for k in range(1, steps + settle + 1):
        action = start + (target - start) * min(1.0, k / steps)
        sent = robot.act(action, t_target=robot.now())
        if paced:
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
    return sent


def collect_stations(robot, arm_name: str, camera: str, plan: list[np.ndarray], flange_pose,
                     detect: Detect, speed: float = 0.25, settle_s: float = 0.5,
                     report: Callable[[int, int, str], None] | None = None) -> list[Station]:
    """Visit every planned joint configuration and keep the ones where the board is seen.

    The flange pose comes from the MEASURED joints after settling (not the plan), so tracking
    error of the arm does not enter the calibration."""
    part = arm_slice(robot, arm_name)
    stations = []
    for i, q in enumerate(plan):
        move_arm(robot, arm_name, q, speed, settle_s)
        obs = robot.observe()
        joints = np.asarray(obs.joints[arm_name].position, dtype=np.float64)
        if camera not in obs.frames:
            raise ConfigError(f"Robot '{robot.name}' has no camera '{camera}' (cameras: {', '.join(obs.frames)}).")
        seen = detect(obs.frames[camera].image)
        if seen is None:
            if report:
                report(i, len(plan), "board not seen; skipped")
            continue
        stations.append(Station(joints, flange_pose(joints[: part.stop - part.start]), *seen))
        if report:
            report(i, len(plan), f"{len(seen[0])} corners")
    return stations


def charuco_detect(spec, min_corners: int = MIN_CORNERS) -> Detect:
    """A Detect for a ChArUco board (tether.calibration.charuco)."""
    from tether.calibration.charuco import CharucoDetector

    detector = CharucoDetector(spec)

    def detect(image: np.ndarray):
        found = detector.detect(image)
        if found.count < min_corners:
            return None
        return detector.object_points(found).astype(np.float64), found.corners.astype(np.float64)

    return detect


def solve_stations(stations: list[Station], mode: str, camera_matrix: np.ndarray,
                   dist_coeffs: np.ndarray, method: str = "auto"):
    """Closed-form OpenCV solve, then the joint reprojection refinement. Returns (result, px)."""
    from tether.calibration import hand_eye as he

    poses, kept = [], []
    for s in stations:
        pose = he.board_pose_from_points(s.object_points, s.image_points, camera_matrix, dist_coeffs)
        if pose is not None:
            poses.append(pose)
            kept.append(s)
    if len(kept) < 3:
        raise ConfigError(
            f"Only {len(kept)} stations saw the board; hand-eye needs at least 3 (15-25 is typical). "
            "Check the board is in view of the camera over the workspace box, or use --manual."
        )
    flanges = [s.base_t_flange for s in kept]
    closed = he.solve(flanges, poses, mode, method)  # type: ignore[arg-type]
    return he.refine(closed, flanges, [(s.object_points, s.image_points) for s in kept],
                     camera_matrix, dist_coeffs)


def show_result(result, rms_px: float, console_: Console = console) -> None:
    table = Table(title=f"hand-eye ({result.mode}, {result.method})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    t = result.transform[:3, 3] * 1000.0
    table.add_row(f"{result.transform_name} translation (mm)", ", ".join(f"{v:.2f}" for v in t))
    import cv2

    rvec = cv2.Rodrigues(result.transform[:3, :3])[0].ravel()
    table.add_row(f"{result.transform_name} rotation vector (deg)",
                  ", ".join(f"{math.degrees(v):.2f}" for v in rvec))
    table.add_row("stations", str(len(result.residual_mm)))
    table.add_row("reprojection RMS (px per corner)", f"{rms_px:.3f}")
    table.add_row("board pose residual RMS (mm / deg)", f"{result.rms_mm:.2f} / {result.rms_deg:.3f}")
    table.add_row("max rotation between stations (deg)", f"{result.conditioning.max_rotation_deg:.1f}")
    table.add_row("condition number", f"{result.conditioning.condition_number:.2f}")
    console_.print(table)
    for w in result.warnings:
        console_.print(f"[yellow]warning:[/yellow] {w}")


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def calibrate_hand_eye(
    robot: str = typer.Option(..., "--robot", help="Robot config file, or twin:<task>."),
    camera: str = typer.Option(..., "--camera", help="The camera to calibrate."),
    mode: str = typer.Option("eye-in-hand", "--mode",
                             help="eye-in-hand (camera on the wrist) or eye-to-hand (camera fixed, board in the gripper)."),
    arm: str | None = typer.Option(None, "--arm", help="The arm that moves (default: the first)."),
    box: str | None = typer.Option(
        None, "--box", help="Workspace box x0,y0,z0,x1,y1,z1 (m, arm base frame) the flange stays in."
    ),
    stations: int = typer.Option(15, "--stations", help="How many stations to plan (15-25 is typical)."),
    spread: float = typer.Option(0.4, "--spread", help="Max joint offset from the start pose (rad)."),
    speed: float = typer.Option(0.25, "--speed", help="Joint speed while moving (rad/s); keep it slow."),
    settle: float = typer.Option(0.5, "--settle", help="Seconds to hold still before each image."),
    manual: bool = typer.Option(False, "--manual", help="Pose the arm by hand; Enter captures a station."),
    load: Path | None = typer.Option(None, "--load-stations", help="Solve from a saved stations file."),
    save: Path | None = typer.Option(None, "--save-stations", help="Also write the raw stations (JSON)."),
    mjcf: Path | None = typer.Option(None, "--mjcf", help="A real arm's MuJoCo model for its kinematics."),
    flange: str = typer.Option("gripper", "--flange", help="The flange body in --mjcf."),
    base: str = typer.Option("base", "--base", help="The base body in --mjcf."),
    squares_x: int = typer.Option(7, "--squares-x", help="ChArUco board squares across."),
    squares_y: int = typer.Option(5, "--squares-y", help="ChArUco board squares down."),
    square: float = typer.Option(0.030, "--square", help="Printed square side (m); measure it."),
    marker: float = typer.Option(0.022, "--marker", help="Printed marker side (m)."),
    dictionary: str = typer.Option("DICT_5X5_100", "--dictionary", help="ArUco dictionary of the board."),
    method: str = typer.Option("auto", "--method", help="auto, tsai, park, horaud, andreff, daniilidis, shah or li."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Robot config override a.b=value (repeatable), e.g. twin_params.cameras=[wrist]."
    ),
) -> None:
    """Calibrate a wrist camera (eye-in-hand) or a fixed camera (eye-to-hand) against the arm.

    Example: tether calibrate hand-eye --robot twin:lift --camera wrist --box 0.05,-0.2,0.05,0.35,0.2,0.4
    """
    from tether.calibration import hand_eye as he

    he_mode = mode.replace("-", "_")
    if he_mode not in he.MODES:
        raise ConfigError(f"--mode '{mode}' is unknown; use eye-in-hand or eye-to-hand.")
    if load is not None:
        found, k, dist, saved_mode = load_stations(load)
        if saved_mode and saved_mode != he_mode:
            raise ConfigError(f"{load} was collected {saved_mode}; pass --mode {saved_mode.replace('_', '-')}.")
        _finish(robot, camera, he_mode, found, k, dist, method, save, source=str(load))
        return

    from tether.calibration.charuco import CharucoSpec
    from tether.robot.factory import make_robot

    if not manual and box is None:
        raise ConfigError("--box is needed to move the arm (x0,y0,z0,x1,y1,z1 in metres), or use --manual.")
    workspace = None if manual else he.WorkspaceBox.parse(box)  # type: ignore[arg-type]
    board = CharucoSpec(squares_x, squares_y, square, marker, dictionary)
    bot = make_robot(robot, overrides)
    if camera not in bot.cameras:
        raise ConfigError(
            f"Robot '{bot.name}' has no camera '{camera}' (cameras: {', '.join(bot.cameras) or 'none'}); "
            "fix --camera, or on the twin add it with --set twin_params.cameras=[<names>]."
        )
    arm_name = arm or next(iter(bot.arms))
    arm_slice(bot, arm_name)
    fk = flange_kinematics(bot, arm_name, mjcf, flange, base)
    k, dist, origin = camera_intrinsics(robot, bot, camera)
    console.print(f"intrinsics of '{camera}' from {origin}")
    detect = charuco_detect(board)
    with bot:
        if manual:
            found = _collect_by_hand(bot, arm_name, camera, fk, detect)
        else:
            spec = bot.arms[arm_name].spec
            dof = len(fk.joint_names) if hasattr(fk, "joint_names") else spec.dof
            q0 = np.asarray(bot.observe().joints[arm_name].position, dtype=np.float64)[:dof]
            plan = he.plan_stations(fk, q0, workspace, stations, spread, spec.lower[:dof], spec.upper[:dof])
            console.print(f"moving '{arm_name}' through {len(plan)} stations at {speed} rad/s")
            found = collect_stations(
                bot, arm_name, camera, plan, fk, detect, speed, settle,
                report=lambda i, n, msg: console.print(f"station {i + 1}/{n}: {msg}"),
            )
            move_arm(bot, arm_name, q0, speed, settle)  # back where it started
    _finish(robot, camera, he_mode, found, k, dist, method, save, source="robot")


def _collect_by_hand(robot, arm_name: str, camera: str, fk, detect: Detect) -> list[Station]:
    part = arm_slice(robot, arm_name)
    found: list[Station] = []
    console.print("Pose the arm so the camera sees the board; Enter captures, 'q' + Enter solves.")
    while True:
        if input(f"[{len(found)} stations] ").strip().lower() == "q":
            return found
        obs = robot.observe()
        joints = np.asarray(obs.joints[arm_name].position, dtype=np.float64)
        seen = detect(obs.frames[camera].image)
        if seen is None:
            console.print("[yellow]board not seen; move and try again[/yellow]")
            continue
        found.append(Station(joints, fk(joints[: part.stop - part.start]), *seen))
        console.print(f"station {len(found)}: {len(seen[0])} corners")


def _finish(robot: str, camera: str, mode: str, found: list[Station], k: np.ndarray,
            dist: np.ndarray, method: str, save: Path | None, source: str) -> None:
    from tether.calibration.store import CalibrationRecord, CalibrationStore

    if save is not None:
        console.print(f"stations written to {save_stations(save, found, k, dist, mode)}")
    result, rms_px = solve_stations(found, mode, k, dist, method)
    show_result(result, rms_px)
    data = result.to_dict()
    residuals = data.pop("residuals") | {"reprojection_rms_px": round(rms_px, 4)}
    record = CalibrationRecord("hand_eye", camera, data, residuals,
                               notes={"source": source, "conditioning": data.pop("conditioning")})
    path = CalibrationStore.for_robot(robot).save(record)
    console.print(f"saved {path}")
