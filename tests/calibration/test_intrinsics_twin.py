"""Camera intrinsics on the twin: a ChArUco board textured into a MuJoCo scene, seen through a
camera of known fovy, must give back MuJoCo's own camera matrix.

Truth: fy = fx = (H/2) / tan(fovy/2), principal point ((W-1)/2, (H-1)/2) in OpenCV's pixel
convention (tether.robot.twin.boards.true_intrinsics). Default suite: 20 poses at 640x480
(~3 s); the slow version repeats it at 1280x720 for three fovy values and seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from tether.app.commands.calibrate_camera import calibrate_device, run_session, save_intrinsics
from tether.calibration.charuco import CharucoDetector, CharucoSpec, render_board
from tether.calibration.intrinsics import IntrinsicsResult, ViewSelector, calibrate
from tether.calibration.store import CalibrationStore
from tether.robot.twin.boards import (
    BoardCamera,
    BoardPose,
    BoardScene,
    spread_poses,
    true_intrinsics,
)

SPEC = CharucoSpec()  # 7x5 squares of 30 mm, the printable default
TEXTURE_PX_PER_M = 4000.0  # 4 texels per mm: sharper than any view below needs


@pytest.fixture(scope="module")
def scene():
    """One 640x480, fovy 60 scene for the default-suite tests (a GL context costs ~1 s)."""
    with BoardScene(render_board(SPEC, TEXTURE_PX_PER_M), SPEC.size_m, 60.0, 640, 480) as shared:
        yield shared


def _session(fovy: float, width: int, height: int, poses: int, seed: int, distance=(0.30, 0.45),
             scene: BoardScene | None = None):
    if scene is not None:
        return _render(scene, poses, seed, distance)
    with BoardScene(render_board(SPEC, TEXTURE_PX_PER_M), SPEC.size_m, fovy, width, height) as own:
        return _render(own, poses, seed, distance)


def _render(scene: BoardScene, poses: int, seed: int, distance) -> tuple[list[np.ndarray], np.ndarray]:
    views = spread_poses(poses, seed=seed, distance=distance, fovy_deg=scene.fovy_deg,
                         aspect=scene.width / scene.height)
    return [scene.render(p) for p in views], scene.camera_matrix


def _errors(result: IntrinsicsResult, truth: np.ndarray) -> dict[str, float]:
    return {
        "fx_rel": abs(result.fx / truth[0, 0] - 1),
        "fy_rel": abs(result.fy / truth[1, 1] - 1),
        "cx_px": abs(result.cx - truth[0, 2]),
        "cy_px": abs(result.cy - truth[1, 2]),
    }


def test_true_intrinsics_match_a_rendered_corner(scene):
    """The truth itself: a frontal board's first corner lands where the stated matrix puts it."""
    detection = CharucoDetector(SPEC).detect(scene.render(BoardPose(0.0, 0.0, 0.35)))
    k = true_intrinsics(60.0, 640, 480)
    assert detection.count == SPEC.corner_count
    # Corner id 0 sits one square in from the board's top-left corner; the board centre is on axis.
    offset = np.array([SPEC.square_m - SPEC.size_m[0] / 2, SPEC.square_m - SPEC.size_m[1] / 2])
    expected = k[:2, 2] + k[0, 0] * offset / 0.35
    i = int(np.flatnonzero(detection.ids == 0)[0])
    np.testing.assert_allclose(detection.corners[i], expected, atol=0.2)  # (W-1)/2, not W/2


def test_twin_camera_intrinsics_recovered(tmp_path, scene):
    """~20 poses through the live command's own session loop; result saved in the store."""
    images, truth = _session(fovy=60.0, width=640, height=480, poses=20, seed=0, scene=scene)
    with open(tmp_path / "log", "w") as sink:
        result = run_session(iter(images), SPEC, target_views=20, out=Console(file=sink))
    print(f"truth {np.round(truth[[0, 1, 0, 1], [0, 1, 2, 2]], 3)} estimate "
          f"{np.round([result.fx, result.fy, result.cx, result.cy], 3)} rms {result.rms_px:.3f} "
          f"views {len(result.per_view_px)}")
    errors = _errors(result, truth)
    assert errors["fx_rel"] < 0.01 and errors["fy_rel"] < 0.01, (result.camera_matrix, truth)
    assert errors["cx_px"] < 2.0 and errors["cy_px"] < 2.0, (result.camera_matrix, truth)
    assert result.rms_px < 0.5
    assert len(result.per_view_px) == len(result.corners_per_view) >= 12
    assert max(result.per_view_px) < 1.0

    config = tmp_path / "robot.yaml"
    config.write_text("name: bench\n")
    path = save_intrinsics(str(config), "front", SPEC, result)
    assert path.parent == tmp_path / "robot.calibration"
    record = CalibrationStore.for_robot(config).load("camera_intrinsics", "front")
    loaded = IntrinsicsResult.from_dict(record.data, record.residuals)
    np.testing.assert_allclose(loaded.camera_matrix, result.camera_matrix)
    assert record.residuals["rms_px"] == pytest.approx(result.rms_px)
    assert record.notes["board"]["square_m"] == SPEC.square_m


def test_live_command_gives_feedback_and_saves_into_the_robot_folder(tmp_path, scene):
    """`tether calibrate camera`'s procedure on a Camera that shows the board at 12 poses: one
    line per kept view (corners, coverage), a per-view error table, a record in the folder."""
    config = tmp_path / "arm.yaml"
    config.write_text("name: arm\n")
    log = tmp_path / "log"
    camera = BoardCamera(scene, spread_poses(12, seed=4), name="wrist")
    with open(log, "w") as sink:
        path = calibrate_device(camera, str(config), SPEC, views=8, timeout=60.0,
                                out=Console(file=sink, width=120))
    text = log.read_text()
    assert text.count("corners, tilt") == 8 and "coverage" in text
    assert "Reprojection error per view" in text and "total RMS" in text
    assert path == tmp_path / "arm.calibration" / "camera_intrinsics.wrist.yaml"
    record = CalibrationStore.for_robot(config).load("camera_intrinsics", "wrist")
    assert record.residuals["views"] == 8 and record.residuals["rms_px"] < 0.5


def test_selector_keeps_only_views_that_add_coverage(scene):
    images, _ = _session(fovy=60.0, width=640, height=480, poses=3, seed=1, scene=scene)
    selector = ViewSelector(CharucoDetector(SPEC))
    first = selector.offer(images[0])
    assert first.kept and first.corners == SPEC.corner_count and first.new_cells > 0
    again = selector.offer(images[0])
    assert not again.kept and "no coverage" in again.reason
    blank = selector.offer(np.full_like(images[0], 90))
    assert not blank.kept and blank.corners == 0
    assert len(selector.views) == 1


def test_too_few_views_names_the_fix():
    from tether.core.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 4 views"):
        calibrate(CharucoDetector(SPEC), [])


@pytest.mark.slow
@pytest.mark.parametrize("fovy,seed", [(45.0, 1), (60.0, 2), (75.0, 3)])
def test_twin_camera_intrinsics_full_accuracy(fovy, seed):
    distance = (0.45, 0.70) if fovy < 50 else (0.30, 0.50)
    images, truth = _session(fovy=fovy, width=1280, height=720, poses=40, seed=seed, distance=distance)
    detector = CharucoDetector(SPEC)
    selector = ViewSelector(detector)
    for image in images:
        selector.offer(image)
    result = calibrate(detector, selector.views)
    errors = _errors(result, truth)
    print(f"fovy {fovy}: truth {np.round(truth[[0, 1, 0, 1], [0, 1, 2, 2]], 3)} estimate "
          f"{np.round([result.fx, result.fy, result.cx, result.cy], 3)} rms {result.rms_px:.3f} "
          f"views {len(selector.views)}")
    assert errors["fx_rel"] < 0.01 and errors["fy_rel"] < 0.01
    assert errors["cx_px"] < 2.0 and errors["cy_px"] < 2.0
    assert result.rms_px < 0.5
