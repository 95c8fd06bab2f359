"""The ChArUco board: its definition, its detection in an image, and a printable rendering.

Layer: calibration (a part; imports core only). OpenCV's own `cv2.aruco.CharucoBoard` and
`CharucoDetector` do the work; this module keeps the board's *real* size next to its layout, so
a printout, the twin's textured board and the solver all agree on metres per square.
OpenCV must stay below 5.0 (`opencv-python-headless<5`): 5.0 dropped `calibrateHandEye` from the
Python wheel, which the hand-eye procedure needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError
from tether.core.optional import missing_extra

try:
    import cv2
except ImportError as exc:  # pragma: no cover - depends on the install
    raise missing_extra(__name__, "cv2") from exc

MM_PER_INCH = 25.4


@dataclass(frozen=True)
class CharucoSpec:
    """A ChArUco board as printed: layout, ArUco dictionary and real sizes in metres.

    The defaults fit an A4 sheet (7 x 5 squares of 30 mm = 210 x 150 mm) and give 24 inner
    corners, enough for a view to pin down a homography even when part of the board is hidden.
    """

    squares_x: int = 7
    squares_y: int = 5
    square_m: float = 0.030
    marker_m: float = 0.022
    dictionary: str = "DICT_5X5_100"

    def __post_init__(self) -> None:
        if self.squares_x < 3 or self.squares_y < 3:
            raise ConfigError(
                f"A ChArUco board needs at least 3 x 3 squares, got {self.squares_x} x {self.squares_y}."
            )
        if not 0 < self.marker_m < self.square_m:
            raise ConfigError(
                f"The marker side ({self.marker_m} m) must be positive and smaller than the square "
                f"side ({self.square_m} m); about 0.7 x the square is usual."
            )
        if not hasattr(cv2.aruco, self.dictionary):
            raise ConfigError(
                f"Unknown ArUco dictionary '{self.dictionary}'; use one of OpenCV's names such "
                "as DICT_5X5_100 or DICT_4X4_50."
            )

    @property
    def size_m(self) -> tuple[float, float]:
        """(width, height) of the squared area in metres, without the white margin."""
        return self.squares_x * self.square_m, self.squares_y * self.square_m

    @property
    def corner_count(self) -> int:
        """Inner chessboard corners: the points a full detection returns."""
        return (self.squares_x - 1) * (self.squares_y - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharucoSpec:
        return cls(**data)

    def board(self) -> cv2.aruco.CharucoBoard:
        """OpenCV's board object (object points in metres, z = 0, origin at a board corner)."""
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard(
            (self.squares_x, self.squares_y), self.square_m, self.marker_m, dictionary
        )


@dataclass(frozen=True)
class Detection:
    """ChArUco corners found in one image: pixel positions and the board's corner ids."""

    corners: np.ndarray  # (N, 2) float32, OpenCV pixel convention (pixel centres at integers)
    ids: np.ndarray  # (N,) int32
    image_size: tuple[int, int]  # (width, height)

    @property
    def count(self) -> int:
        return int(len(self.ids))


class CharucoDetector:
    """Detect a board's corners in images; one detector object serves a whole session."""

    def __init__(self, spec: CharucoSpec) -> None:
        self.spec = spec
        self.board = spec.board()
        self._detector = cv2.aruco.CharucoDetector(self.board)

    def detect(self, image: np.ndarray) -> Detection:
        """Corners in an RGB/BGR or grey uint8 image; an empty Detection when none are found."""
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        corners, ids, _, _ = self._detector.detectBoard(grey)
        size = (int(grey.shape[1]), int(grey.shape[0]))
        if ids is None or len(ids) == 0:
            return Detection(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), size)
        return Detection(corners.reshape(-1, 2).astype(np.float32), ids.reshape(-1).astype(np.int32), size)

    def object_points(self, detection: Detection) -> np.ndarray:
        """(N, 3) board-frame coordinates in metres of the detected corners."""
        return self.board.getChessboardCorners()[detection.ids].astype(np.float32)


def render_board(spec: CharucoSpec, px_per_m: float, margin_m: float = 0.0) -> np.ndarray:
    """The board as a grey uint8 image at `px_per_m`, with a white margin of `margin_m`.

    The squared area is exactly `size_m * px_per_m` pixels, so a texture or a printout scaled
    from this image keeps the real square size.
    """
    width_m, height_m = spec.size_m
    margin_px = int(round(margin_m * px_per_m))
    inner = (int(round(width_m * px_per_m)), int(round(height_m * px_per_m)))
    image = spec.board().generateImage(inner, marginSize=0, borderBits=1)
    if margin_px:
        image = cv2.copyMakeBorder(image, *(4 * [margin_px]), cv2.BORDER_CONSTANT, value=255)
    return image


def write_printable(spec: CharucoSpec, path: str | Path, dpi: int = 300, margin_mm: float = 10.0) -> Path:
    """Write the board as PNG or PDF at `dpi`, so that printing at 100 % gives `square_m`.

    The file carries its resolution (PNG pHYs / PDF page size): print with "actual size", not
    "fit to page", then measure one square with a ruler and pass the measured size to
    `tether calibrate camera --square-mm` if it differs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".pdf"):
        raise ConfigError(f"Board output '{path}' must end in .png or .pdf.")
    px_per_m = dpi / MM_PER_INCH * 1000.0
    image = render_board(spec, px_per_m, margin_m=margin_mm / 1000.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ModuleNotFoundError as exc:
        if suffix == ".pdf":
            raise missing_extra(__name__, "PIL") from exc
        Image = None
    if Image is None:
        if not cv2.imwrite(str(path), image):  # PNG without the resolution tag
            raise ConfigError(f"Could not write {path}; check the folder is writable.")
        return path
    picture = Image.fromarray(image)
    if suffix == ".pdf":
        picture.save(path, "PDF", resolution=float(dpi))
    else:
        picture.save(path, "PNG", dpi=(dpi, dpi))
    return path
