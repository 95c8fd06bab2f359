"""Hand-eye calibration: where a camera sits relative to the arm, from arm poses and board poses.

Layer: parts (calibration/); imports only core, numpy and OpenCV.

Two set-ups, one equation. Each station i gives the flange pose from forward kinematics,
`base_T_flange[i]`, and the calibration board's pose seen by the camera, `cam_T_target[i]`
(solvePnP on the detected corners).

- eye-in-hand (camera on the wrist, board fixed in the scene): the unknown is
  `flange_T_cam`; the board's `base_T_target = base_T_flange[i] @ flange_T_cam @ cam_T_target[i]`
  is the same at every station.
- eye-to-hand (camera fixed, board held by the gripper): the unknown is `base_T_cam`;
  `flange_T_target = inv(base_T_flange[i]) @ base_T_cam @ cam_T_target[i]` is constant.

Both are `M[i] @ X @ C[i] = const` with `M[i]` the flange pose (or its inverse), which is the
form cv2.calibrateHandEye (Tsai, Park, Horaud, Andreff, Daniilidis) and
cv2.calibrateRobotWorldHandEye (Shah, Li; X and the constant solved together) take. `solve`
runs them all and keeps the one whose predicted board poses fit the measured ones best.
opencv-python 5.0 dropped calibrateHandEye from the wheel: the project pins `opencv<5`.

Accuracy needs stations that differ in ROTATION about at least two distinct axes: a rotation
about one axis leaves the camera's offset along that axis unobservable, and translation-only
moves leave it unobservable altogether. `conditioning` measures that and `solve` warns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tether.core.errors import ConfigError

log = logging.getLogger(__name__)

Mode = Literal["eye_in_hand", "eye_to_hand"]
MODES: tuple[str, ...] = ("eye_in_hand", "eye_to_hand")

# Below these a pose set is poorly conditioned (measured on the twin: 1 px noise, ~15 stations).
MIN_STATIONS = 6
MIN_MAX_ROTATION_DEG = 15.0
MAX_CONDITION_NUMBER = 8.0


# --------------------------------------------------------------------------------------------
# Small SE(3) helpers
# --------------------------------------------------------------------------------------------


def transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a 3x3 rotation and a translation (m)."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return out


def invert(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (exact: no general matrix inverse)."""
    r = pose[:3, :3]
    return transform(r.T, -r.T @ pose[:3, 3])


def rotation_angle(rotation: np.ndarray) -> float:
    """Angle (rad) of a rotation matrix."""
    c = (np.trace(rotation) - 1.0) / 2.0
    return float(math.acos(min(1.0, max(-1.0, c))))


def pose_error(truth: np.ndarray, estimate: np.ndarray) -> tuple[float, float]:
    """Translation error (m) and rotation error (rad) between two poses."""
    dt = float(np.linalg.norm(truth[:3, 3] - estimate[:3, 3]))
    return dt, rotation_angle(truth[:3, :3].T @ estimate[:3, :3])


def mean_pose(poses: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of rigid transforms: mean translation, chordal mean rotation (SVD projection)."""
    stack = np.stack(poses)
    u, _, vt = np.linalg.svd(stack[:, :3, :3].sum(axis=0))
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return transform(r, stack[:, :3, 3].mean(axis=0))


# --------------------------------------------------------------------------------------------
# Where to put the arm
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box (arm base frame, metres) the flange must stay inside while calibrating."""

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]

    def __post_init__(self) -> None:
        if any(lo >= hi for lo, hi in zip(self.lower, self.upper, strict=True)):
            raise ConfigError(
                f"Workspace box lower {self.lower} must be below upper {self.upper} on every axis; "
                "give it as x0,y0,z0,x1,y1,z1."
            )

    @classmethod
    def parse(cls, text: str) -> WorkspaceBox:
        """'x0,y0,z0,x1,y1,z1' in metres."""
        try:
            v = [float(x) for x in text.split(",")]
        except ValueError:
            v = []
        if len(v) != 6:
            raise ConfigError(f"Workspace box '{text}': give six numbers x0,y0,z0,x1,y1,z1 (metres).")
        return cls(tuple(v[:3]), tuple(v[3:]))  # type: ignore[arg-type]

    def contains(self, point: np.ndarray) -> bool:
        p = np.asarray(point)
        return bool(np.all(p >= np.asarray(self.lower)) and np.all(p <= np.asarray(self.upper)))


def plan_stations(
    flange_pose: Callable[[np.ndarray], np.ndarray],
    q_center: np.ndarray,
    box: WorkspaceBox,
    n: int,
    spread: float | np.ndarray = 0.5,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    accept: Callable[[np.ndarray, np.ndarray], bool] | None = None,
    candidates: int = 600,
    seed: int = 0,
) -> list[np.ndarray]:
    """`n` joint configurations around `q_center` whose flange stays in `box`, chosen to differ
    as much as possible in orientation (what makes hand-eye well-conditioned).

    Candidates are `q_center` plus uniform joint offsets within +-`spread` rad (clipped to the
    joint limits); `accept(q, base_T_flange)` can veto a candidate (say, the board would be out
    of view). Greedy farthest-point selection on the rotation distance (plus position/0.1 m),
    then ordered nearest-neighbour in joint space so the arm travels little between stations.
    """
    rng = np.random.default_rng(seed)
    q_center = np.asarray(q_center, dtype=np.float64)
    lo = np.full_like(q_center, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.full_like(q_center, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    qs, poses = [], []
    for k in range(candidates):
        offset = rng.uniform(-1.0, 1.0, q_center.shape) * spread if k else 0.0
        q = np.clip(q_center + offset, lo, hi)
        pose = flange_pose(q)
        if not box.contains(pose[:3, 3]) or (accept is not None and not accept(q, pose)):
            continue
        qs.append(q)
        poses.append(pose)
    if len(qs) < n:
        raise ConfigError(
            f"Hand-eye plan: only {len(qs)} of {candidates} sampled poses keep the flange inside the "
            f"workspace box {box.lower}..{box.upper} (and the board in view); {n} are needed. "
            "Enlarge the box, move the centre pose into it, or lower --spread."
        )

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return rotation_angle(a[:3, :3].T @ b[:3, :3]) + float(np.linalg.norm(a[:3, 3] - b[:3, 3])) / 0.1

    chosen = [0]
    nearest = np.array([distance(poses[0], p) for p in poses])
    while len(chosen) < n:
        j = int(np.argmax(nearest))
        chosen.append(j)
        nearest = np.minimum(nearest, [distance(poses[j], p) for p in poses])
    # Visit order: nearest neighbour in joint space from the centre pose.
    left = chosen[1:]
    order = [chosen[0]]
    while left:
        last = qs[order[-1]]
        k = min(left, key=lambda i: float(np.abs(qs[i] - last).max()))
        order.append(k)
        left.remove(k)
    return [qs[i] for i in order]


# --------------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conditioning:
    """How well a station set pins down the hand-eye transform."""

    stations: int
    max_rotation_deg: float  # largest rotation between two stations
    condition_number: float  # of the stacked (R_ij - I): large = some direction unobservable
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stations": self.stations,
            "max_rotation_deg": round(self.max_rotation_deg, 3),
            "condition_number": round(self.condition_number, 3) if math.isfinite(self.condition_number)
            else None,
            "warnings": list(self.warnings),
        }


def conditioning(flange_poses: Sequence[np.ndarray]) -> Conditioning:
    """Measure the rotational diversity of the stations.

    The translation part of AX = XB solves (R_A - I) t_X = ...; stacked over all station pairs
    its smallest singular value is zero when every relative rotation shares one axis (that offset
    is then unobservable). The condition number of that stack is the warning signal.
    """
    n = len(flange_poses)
    blocks, max_angle = [], 0.0
    for i in range(n):
        for j in range(i + 1, n):
            rel = flange_poses[i][:3, :3].T @ flange_poses[j][:3, :3]
            max_angle = max(max_angle, rotation_angle(rel))
            blocks.append(rel - np.eye(3))
    warnings = []
    if n < MIN_STATIONS:
        warnings.append(f"only {n} stations; use at least {MIN_STATIONS} (15-25 is typical).")
    cond = math.inf
    if blocks:
        s = np.linalg.svd(np.concatenate(blocks), compute_uv=False)
        cond = float(s[0] / s[-1]) if s[-1] > 1e-12 else math.inf
    max_deg = math.degrees(max_angle)
    if max_deg < MIN_MAX_ROTATION_DEG:
        warnings.append(
            f"the flange orientation varies by at most {max_deg:.1f} deg between stations; tilt the "
            f"wrist more (>= {MIN_MAX_ROTATION_DEG:.0f} deg) or the camera offset is poorly determined."
        )
    if cond > MAX_CONDITION_NUMBER:
        warnings.append(
            f"poorly conditioned pose set (condition number {cond:.1f} > {MAX_CONDITION_NUMBER:.0f}): "
            "the stations rotate about nearly one axis; add stations rotated about other axes."
        )
    return Conditioning(n, max_deg, cond, tuple(warnings))


# --------------------------------------------------------------------------------------------
# Solving
# --------------------------------------------------------------------------------------------


@dataclass
class HandEyeResult:
    """The solved transform, the board's constant pose, and how well they explain the data."""

    mode: str
    transform: np.ndarray  # eye_in_hand: flange_T_cam; eye_to_hand: base_T_cam
    target: np.ndarray  # eye_in_hand: base_T_target; eye_to_hand: flange_T_target
    method: str
    residual_mm: np.ndarray  # per station: measured vs predicted board position in the camera
    residual_deg: np.ndarray  # per station: rotation between measured and predicted board pose
    conditioning: Conditioning
    methods: dict[str, tuple[float, float]] = field(default_factory=dict)  # method -> rms mm, deg

    @property
    def rms_mm(self) -> float:
        return float(np.sqrt(np.mean(self.residual_mm**2)))

    @property
    def rms_deg(self) -> float:
        return float(np.sqrt(np.mean(self.residual_deg**2)))

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.conditioning.warnings

    @property
    def transform_name(self) -> str:
        return "flange_T_cam" if self.mode == "eye_in_hand" else "base_T_cam"

    @property
    def target_name(self) -> str:
        return "base_T_target" if self.mode == "eye_in_hand" else "flange_T_target"

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats (YAML/JSON-ready)."""
        return {
            "mode": self.mode,
            "method": self.method,
            self.transform_name: np.round(self.transform, 9).tolist(),
            self.target_name: np.round(self.target, 9).tolist(),
            "residuals": {
                "rms_mm": round(self.rms_mm, 4),
                "rms_deg": round(self.rms_deg, 4),
                "max_mm": round(float(self.residual_mm.max()), 4),
                "max_deg": round(float(self.residual_deg.max()), 4),
                "per_station_mm": np.round(self.residual_mm, 4).tolist(),
                "per_station_deg": np.round(self.residual_deg, 4).tolist(),
            },
            "methods": {k: {"rms_mm": round(v[0], 4), "rms_deg": round(v[1], 4)} for k, v in self.methods.items()},
            "conditioning": self.conditioning.to_dict(),
        }


def _cv2():
    import cv2

    if not hasattr(cv2, "calibrateHandEye"):
        raise ConfigError(
            f"This OpenCV ({cv2.__version__}) has no calibrateHandEye (opencv 5 dropped it from the "
            "Python wheel); install opencv-python<5."
        )
    return cv2


def _hand_eye_methods(cv2) -> dict[str, int]:
    return {
        "tsai": cv2.CALIB_HAND_EYE_TSAI,
        "park": cv2.CALIB_HAND_EYE_PARK,
        "horaud": cv2.CALIB_HAND_EYE_HORAUD,
        "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
        "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
    }


def _world_methods(cv2) -> dict[str, int]:
    return {"shah": cv2.CALIB_ROBOT_WORLD_HAND_EYE_SHAH, "li": cv2.CALIB_ROBOT_WORLD_HAND_EYE_LI}


METHOD_NAMES = ("tsai", "park", "horaud", "andreff", "daniilidis", "shah", "li")


def _residuals(moving: list[np.ndarray], cam_t_target: list[np.ndarray], x: np.ndarray,
               fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measured vs predicted board pose in the camera: C_i' = inv(X) inv(M_i) fixed."""
    inv_x = invert(x)
    mm, deg = [], []
    for m, c in zip(moving, cam_t_target, strict=True):
        predicted = inv_x @ invert(m) @ fixed
        dt, dr = pose_error(c, predicted)
        mm.append(dt * 1000.0)
        deg.append(math.degrees(dr))
    return np.array(mm), np.array(deg)


def solve(
    base_t_flange: Sequence[np.ndarray],
    cam_t_target: Sequence[np.ndarray],
    mode: Mode = "eye_in_hand",
    method: str = "auto",
) -> HandEyeResult:
    """Solve hand-eye from paired stations (see the module docstring for the frames).

    `method`: one of METHOD_NAMES, or "auto" (run them all, keep the lowest residual; a
    residual in mm and one in degrees are combined as mm + 10 * deg). Warns (log + result) on a
    poorly-conditioned station set.
    """
    if mode not in MODES:
        raise ConfigError(f"Hand-eye mode '{mode}' is unknown; use one of {', '.join(MODES)}.")
    if method != "auto" and method not in METHOD_NAMES:
        raise ConfigError(f"Hand-eye method '{method}' is unknown; use auto or one of {', '.join(METHOD_NAMES)}.")
    if len(base_t_flange) != len(cam_t_target):
        raise ConfigError(
            f"Hand-eye: {len(base_t_flange)} flange poses but {len(cam_t_target)} board poses; "
            "every station needs both."
        )
    if len(base_t_flange) < 3:
        raise ConfigError(f"Hand-eye needs at least 3 stations (got {len(base_t_flange)}); collect more.")
    cv2 = _cv2()
    flange = [np.asarray(p, dtype=np.float64) for p in base_t_flange]
    cams = [np.asarray(p, dtype=np.float64) for p in cam_t_target]
    moving = flange if mode == "eye_in_hand" else [invert(p) for p in flange]
    cond = conditioning(flange)
    for w in cond.warnings:
        log.warning("hand-eye: %s", w)

    r_m = [m[:3, :3] for m in moving]
    t_m = [m[:3, 3].reshape(3, 1) for m in moving]
    r_c = [c[:3, :3] for c in cams]
    t_c = [c[:3, 3].reshape(3, 1) for c in cams]
    candidates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    wanted = METHOD_NAMES if method == "auto" else (method,)
    for name, flag in _hand_eye_methods(cv2).items():
        if name not in wanted:
            continue
        try:
            r, t = cv2.calibrateHandEye(r_m, t_m, r_c, t_c, method=flag)
        except cv2.error as exc:  # degenerate station sets make some solvers fail outright
            log.info("hand-eye: %s failed: %s", name, exc)
            continue
        x = transform(r, t)
        fixed = mean_pose([m @ x @ c for m, c in zip(moving, cams, strict=True)])
        candidates[name] = (x, fixed)
    inv_m = [invert(m) for m in moving]
    for name, flag in _world_methods(cv2).items():
        if name not in wanted:
            continue
        # cv2's AX = ZB: A = cam_T_world (world = the board), B = gripper_T_base = inv(M_i);
        # it returns X = base_T_world... in its naming, and Z = cam_T_gripper.
        try:
            r_bw, t_bw, r_gc, t_gc = cv2.calibrateRobotWorldHandEye(
                r_c, t_c, [m[:3, :3] for m in inv_m], [m[:3, 3].reshape(3, 1) for m in inv_m], method=flag
            )
        except cv2.error as exc:
            log.info("hand-eye: %s failed: %s", name, exc)
            continue
        x = invert(transform(r_gc, t_gc))
        candidates[name] = (x, invert(transform(r_bw, t_bw)))

    scores: dict[str, tuple[float, float]] = {}
    best, best_score = "", math.inf
    for name, (x, fixed) in candidates.items():
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(fixed))):
            continue
        mm, deg = _residuals(moving, cams, x, fixed)
        rms_mm, rms_deg = float(np.sqrt(np.mean(mm**2))), float(np.sqrt(np.mean(deg**2)))
        scores[name] = (rms_mm, rms_deg)
        if rms_mm + 10.0 * rms_deg < best_score:
            best, best_score = name, rms_mm + 10.0 * rms_deg
    if not best:
        raise ConfigError(
            "Hand-eye: every solver failed on these stations (degenerate motion); collect stations "
            "rotated about at least two different axes."
        )
    x, fixed = candidates[best]
    mm, deg = _residuals(moving, cams, x, fixed)
    return HandEyeResult(mode, x, fixed, best, mm, deg, cond, scores)


def _pose_to_vec(pose: np.ndarray) -> np.ndarray:
    import cv2

    return np.r_[cv2.Rodrigues(pose[:3, :3])[0].ravel(), pose[:3, 3]]


def _vec_to_pose(v: np.ndarray) -> np.ndarray:
    import cv2

    return transform(cv2.Rodrigues(np.asarray(v[:3], dtype=np.float64))[0], v[3:6])


def _reprojection(params: np.ndarray, moving: list[np.ndarray], observations: list[tuple[np.ndarray, np.ndarray]],
                  camera_matrix: np.ndarray, dist: np.ndarray) -> np.ndarray:
    import cv2

    inv_x, fixed = invert(_vec_to_pose(params[:6])), _vec_to_pose(params[6:])
    out = []
    for m, (obj, img) in zip(moving, observations, strict=True):
        c = inv_x @ invert(m) @ fixed
        proj, _ = cv2.projectPoints(obj, cv2.Rodrigues(c[:3, :3])[0], c[:3, 3], camera_matrix, dist)
        out.append((proj.reshape(-1, 2) - img).ravel())
    return np.concatenate(out)


def refine(
    result: HandEyeResult,
    base_t_flange: Sequence[np.ndarray],
    observations: Sequence[tuple[np.ndarray, np.ndarray]],
    camera_matrix: np.ndarray,
    dist_coeffs: np.ndarray | None = None,
    iterations: int = 15,
) -> tuple[HandEyeResult, float]:
    """Jointly refine the transform and the board pose by minimising the pixel reprojection
    error over every station (Levenberg-Marquardt, numeric Jacobian on 12 parameters).

    The closed-form solvers weigh noisy per-station board poses equally; the corners themselves
    are what was measured, so this is the maximum-likelihood answer under pixel noise. Returns
    the refined result and its RMS reprojection error (px). `observations[i]`: the board points
    (N, 3, board frame) and their pixels (N, 2) at station i.
    """
    k = np.asarray(camera_matrix, dtype=np.float64)
    dist = np.zeros(5) if dist_coeffs is None else np.asarray(dist_coeffs, dtype=np.float64)
    flange = [np.asarray(p, dtype=np.float64) for p in base_t_flange]
    moving = flange if result.mode == "eye_in_hand" else [invert(p) for p in flange]
    obs = [(np.asarray(o, dtype=np.float64).reshape(-1, 3), np.asarray(i, dtype=np.float64).reshape(-1, 2))
           for o, i in observations]
    params = np.r_[_pose_to_vec(result.transform), _pose_to_vec(result.target)]
    err = _reprojection(params, moving, obs, k, dist)
    cost, lam, eps, converged = float(err @ err), 1e-3, 1e-6, False
    for _ in range(iterations):
        jac = np.empty((err.size, params.size))
        for j in range(params.size):
            step = np.zeros_like(params)
            step[j] = eps
            jac[:, j] = (_reprojection(params + step, moving, obs, k, dist) - err) / eps
        jtj, jte = jac.T @ jac, jac.T @ err
        improved = False
        for _ in range(8):
            delta = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -jte)
            trial = params + delta
            trial_err = _reprojection(trial, moving, obs, k, dist)
            trial_cost = float(trial_err @ trial_err)
            if trial_cost < cost:
                params, err, lam, improved = trial, trial_err, lam * 0.3, True
                converged = cost - trial_cost < 1e-10 * max(cost, 1.0)
                cost = trial_cost
                break
            lam *= 10.0
        if not improved or converged:
            break
    x, fixed = _vec_to_pose(params[:6]), _vec_to_pose(params[6:])
    cams = [inv_c for inv_c in (invert(x) @ invert(m) @ fixed for m in moving)]
    measured = [board_pose_from_points(o, i, k, dist, min_points=4) for o, i in obs]
    mm, deg = _residuals(moving, [m if m is not None else c for m, c in zip(measured, cams, strict=True)],
                         x, fixed)
    refined = HandEyeResult(result.mode, x, fixed, result.method + "+refined", mm, deg,
                            result.conditioning, dict(result.methods))
    rms_px = float(np.sqrt(np.mean(err.reshape(-1, 2) ** 2) * 2))
    return refined, rms_px


# --------------------------------------------------------------------------------------------
# Board pose from an image
# --------------------------------------------------------------------------------------------


def board_pose_from_points(
    object_points: np.ndarray,
    image_points: np.ndarray,
    camera_matrix: np.ndarray,
    dist_coeffs: np.ndarray | None = None,
    min_points: int = 6,
) -> np.ndarray | None:
    """cam_T_target from matched board corners (board frame, m) and their pixels; None when too
    few corners were seen or PnP fails."""
    import cv2

    obj = np.asarray(object_points, dtype=np.float64).reshape(-1, 3)
    img = np.asarray(image_points, dtype=np.float64).reshape(-1, 2)
    if len(obj) < min_points:
        return None
    dist = np.zeros(5) if dist_coeffs is None else np.asarray(dist_coeffs, dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, np.asarray(camera_matrix, dtype=np.float64), dist,
                                  flags=cv2.SOLVEPNP_IPPE if len(obj) >= 4 else cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    ok, rvec, tvec = cv2.solvePnP(obj, img, np.asarray(camera_matrix, dtype=np.float64), dist, rvec,
                                  tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    return transform(cv2.Rodrigues(rvec)[0], tvec)


def charuco_board_pose(
    image: np.ndarray,
    board: Any,
    camera_matrix: np.ndarray,
    dist_coeffs: np.ndarray | None = None,
    min_corners: int = 6,
) -> np.ndarray | None:
    """cam_T_target of a cv2.aruco.CharucoBoard in an RGB image, or None if not enough corners.

    The board frame is OpenCV's: origin at the board's first corner, z out of the board."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(gray)
    if ids is None or len(ids) < min_corners:
        return None
    obj, img = board.matchImagePoints(corners, ids)
    return board_pose_from_points(obj, img, camera_matrix, dist_coeffs, min_points=min_corners)
