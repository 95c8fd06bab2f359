"""Camera intrinsics from ChArUco views: which views to keep, and OpenCV's solver on them.

Layer: calibration (a part; imports core only). The procedure is pure: views in, decision or
result out, no camera and no clock, so the twin test and the live command share every line.
`ViewSelector` keeps a view only when it adds coverage: an image cell seen at a tilt no kept
view showed yet. Focal length needs tilted views and distortion needs corners near the image
border; a pile of frontal views in the middle of the image gives neither, whatever their count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tether.calibration.charuco import CharucoDetector, Detection
from tether.core.errors import ConfigError
from tether.core.optional import missing_extra

try:
    import cv2
except ImportError as exc:  # pragma: no cover - depends on the install
    raise missing_extra(__name__, "cv2") from exc

# Tilt classes of a view: frontal, or leaning left/right/up/down (from the board homography).
TILTS = ("frontal", "left", "right", "up", "down")


@dataclass(frozen=True)
class ViewVerdict:
    """What the selector made of one image: kept or not, and why (shown to the user)."""

    kept: bool
    reason: str
    corners: int
    new_cells: int
    tilt: str
    coverage: float  # fraction of image cells seen by the kept views so far (any tilt)


@dataclass
class ViewSelector:
    """Keep views that add coverage (image cell x tilt class); reject weak or redundant ones.

    `grid` splits the image into cells; `min_corners` rejects views whose corners cannot pin a
    homography reliably (OpenCV needs at least 4 non-collinear, 6+ is safer).
    """

    detector: CharucoDetector
    grid: tuple[int, int] = (6, 4)
    min_corners: int = 8
    min_new_cells: int = 1
    tilt_threshold: float = 0.08
    views: list[Detection] = field(default_factory=list)
    _seen: set[tuple[int, int, str]] = field(default_factory=set)

    def offer(self, image: np.ndarray) -> ViewVerdict:
        """Detect the board in `image` and keep the view if it adds coverage."""
        return self.offer_detection(self.detector.detect(image))

    def offer_detection(self, detection: Detection) -> ViewVerdict:
        if detection.count < self.min_corners:
            return ViewVerdict(False, f"only {detection.count} corners (need {self.min_corners})",
                               detection.count, 0, "-", self.coverage(detection.image_size))
        if _collinear(detection.corners):
            return ViewVerdict(False, "corners on one line", detection.count, 0, "-",
                               self.coverage(detection.image_size))
        tilt = self.tilt_of(detection)
        cells = {(cx, cy, tilt) for cx, cy in self._cells(detection)}
        new = cells - self._seen
        if len(new) < self.min_new_cells:
            return ViewVerdict(False, "adds no coverage: move or tilt the board", detection.count,
                               0, tilt, self.coverage(detection.image_size))
        self._seen |= cells
        self.views.append(detection)
        return ViewVerdict(True, "kept", detection.count, len(new), tilt,
                           self.coverage(detection.image_size))

    def coverage(self, image_size: tuple[int, int] | None = None) -> float:
        """Fraction of image cells in which some kept view had a corner."""
        cells = {(cx, cy) for cx, cy, _ in self._seen}
        return len(cells) / (self.grid[0] * self.grid[1])

    def tilts_seen(self) -> set[str]:
        return {tilt for _, _, tilt in self._seen}

    def tilt_of(self, detection: Detection) -> str:
        """Classify the board's tilt from the perspective part of its plane-to-image homography."""
        obj = self.detector.object_points(detection)[:, :2]
        homography, _ = cv2.findHomography(obj, detection.corners)
        if homography is None:
            return "frontal"
        homography = homography / homography[2, 2]
        width_m, height_m = self.detector.spec.size_m
        # h31 * board width: how much the far edge shrinks relative to the near one.
        gx, gy = homography[2, 0] * width_m, homography[2, 1] * height_m
        if max(abs(gx), abs(gy)) < self.tilt_threshold:
            return "frontal"
        if abs(gx) >= abs(gy):
            return "left" if gx > 0 else "right"
        return "up" if gy > 0 else "down"

    def _cells(self, detection: Detection) -> set[tuple[int, int]]:
        width, height = detection.image_size
        cx = np.clip((detection.corners[:, 0] / width * self.grid[0]).astype(int), 0, self.grid[0] - 1)
        cy = np.clip((detection.corners[:, 1] / height * self.grid[1]).astype(int), 0, self.grid[1] - 1)
        return set(zip(cx.tolist(), cy.tolist(), strict=True))


@dataclass(frozen=True)
class IntrinsicsResult:
    """OpenCV's camera model for one camera, with the residuals that say how far to trust it."""

    camera_matrix: np.ndarray  # 3x3, pixels, OpenCV convention (pixel centres at integers)
    dist_coeffs: np.ndarray  # (k1, k2, p1, p2, k3)
    image_size: tuple[int, int]  # (width, height)
    rms_px: float  # total RMS reprojection error over every corner of every view
    per_view_px: list[float]  # RMS reprojection error of each view
    corners_per_view: list[int]

    @property
    def fx(self) -> float:
        return float(self.camera_matrix[0, 0])

    @property
    def fy(self) -> float:
        return float(self.camera_matrix[1, 1])

    @property
    def cx(self) -> float:
        return float(self.camera_matrix[0, 2])

    @property
    def cy(self) -> float:
        return float(self.camera_matrix[1, 2])

    def to_dict(self) -> dict:
        """Plain data for the calibration store (YAML/JSON): lists and floats only."""
        return {
            "image_size": list(self.image_size),
            "camera_matrix": self.camera_matrix.tolist(),
            "dist_coeffs": self.dist_coeffs.reshape(-1).tolist(),
            "model": "opencv_pinhole_k1k2p1p2k3",
        }

    def residuals(self) -> dict:
        return {
            "rms_px": self.rms_px,
            "per_view_px": [round(e, 4) for e in self.per_view_px],
            "corners_per_view": self.corners_per_view,
            "views": len(self.per_view_px),
        }

    @classmethod
    def from_dict(cls, data: dict, residuals: dict | None = None) -> IntrinsicsResult:
        residuals = residuals or {}
        return cls(
            camera_matrix=np.asarray(data["camera_matrix"], dtype=np.float64),
            dist_coeffs=np.asarray(data["dist_coeffs"], dtype=np.float64),
            image_size=tuple(data["image_size"]),
            rms_px=float(residuals.get("rms_px", float("nan"))),
            per_view_px=list(residuals.get("per_view_px", [])),
            corners_per_view=list(residuals.get("corners_per_view", [])),
        )


MIN_VIEWS = 4


def calibrate(detector: CharucoDetector, views: list[Detection], fix_k3: bool = False) -> IntrinsicsResult:
    """Solve intrinsics + distortion with `cv2.calibrateCameraExtended` on the kept views.

    `fix_k3` holds the sixth-order radial term at zero: do it for ordinary lenses with few
    views, where k3 mostly fits noise; keep it free for wide-angle lenses.
    """
    if len(views) < MIN_VIEWS:
        raise ConfigError(
            f"Camera calibration needs at least {MIN_VIEWS} views with the board, got {len(views)}; "
            "show the board at more positions and tilts (fill the corners of the image)."
        )
    sizes = {v.image_size for v in views}
    if len(sizes) != 1:
        raise ConfigError(f"Views have different image sizes {sorted(sizes)}; calibrate one resolution at a time.")
    image_size = sizes.pop()
    object_points = [detector.object_points(v).reshape(-1, 1, 3) for v in views]
    image_points = [v.corners.reshape(-1, 1, 2).astype(np.float32) for v in views]
    flags = cv2.CALIB_FIX_K3 if fix_k3 else 0
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    rms, matrix, dist, _, _, _, _, per_view = cv2.calibrateCameraExtended(
        object_points, image_points, image_size, None, None, flags=flags, criteria=criteria
    )
    return IntrinsicsResult(
        camera_matrix=np.asarray(matrix, dtype=np.float64),
        dist_coeffs=np.asarray(dist, dtype=np.float64).reshape(-1),
        image_size=image_size,
        rms_px=float(rms),
        per_view_px=[float(e) for e in np.asarray(per_view).reshape(-1)],
        corners_per_view=[v.count for v in views],
    )


def _collinear(points: np.ndarray, tolerance_px: float = 2.0) -> bool:
    """Whether all points lie within `tolerance_px` of one line (a degenerate view)."""
    centred = points - points.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    return singular[-1] / np.sqrt(len(points)) < tolerance_px
