"""`tether calibrate camera | board | show`: camera intrinsics and the robot's calibration folder.

Layer: app (tether/app/commands). Registered into the `calibrate` group by
tether/app/commands/calibrate.py. The procedure itself lives in tether.calibration (charuco,
intrinsics, store); this module wires a robot's camera to it and talks to the user with rich.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from tether.core.errors import ConfigError

console = Console()

DEFAULT_VIEWS = 20
GOOD_RMS_PX = 0.5  # below this a calibration is good; above 1 px something is wrong


def register_camera(calibrate: typer.Typer) -> None:
    """Add `camera`, `board` and `show` to the `tether calibrate` group."""
    calibrate.command("camera")(calibrate_camera)
    calibrate.command("board")(calibrate_board)
    calibrate.command("show")(calibrate_show)


def _board_options(squares: str, square_mm: float, marker_mm: float, dictionary: str):
    from tether.calibration.charuco import CharucoSpec

    try:
        sx, sy = (int(v) for v in squares.lower().split("x"))
    except ValueError as exc:
        raise ConfigError(f"--squares '{squares}' must look like 7x5 (columns x rows).") from exc
    return CharucoSpec(sx, sy, square_mm / 1000.0, marker_mm / 1000.0, dictionary)


SQUARES = typer.Option("7x5", "--squares", help="Board squares, columns x rows.")
SQUARE_MM = typer.Option(30.0, "--square-mm", help="Side of one square as printed (mm): measure it.")
MARKER_MM = typer.Option(22.0, "--marker-mm", help="Side of one ArUco marker as printed (mm).")
DICTIONARY = typer.Option("DICT_5X5_100", "--dictionary", help="OpenCV ArUco dictionary name.")


def calibrate_board(
    out: Path = typer.Option(..., "--out", help="Board file to write: .png or .pdf."),
    squares: str = SQUARES,
    square_mm: float = SQUARE_MM,
    marker_mm: float = MARKER_MM,
    dictionary: str = DICTIONARY,
    dpi: int = typer.Option(300, "--dpi", help="Print resolution; the file carries it."),
) -> None:
    """Write a printable ChArUco board with its real square size.

    Print at 100 % ("actual size"), glue it flat on something rigid, and measure one square:
    pass the measured size to `tether calibrate camera --square-mm`.

    Example: tether calibrate board --out board.pdf
    """
    from tether.calibration.charuco import write_printable

    spec = _board_options(squares, square_mm, marker_mm, dictionary)
    path = write_printable(spec, out, dpi=dpi)
    width, height = (1000 * s for s in spec.size_m)
    console.print(
        f"Wrote {path}: {spec.squares_x}x{spec.squares_y} squares of {square_mm:g} mm "
        f"({width:g} x {height:g} mm, {spec.dictionary}). Print at 100 %, then measure a square."
    )


def calibrate_camera(
    robot: str = typer.Option(..., "--robot", help="Robot config (its calibration folder sits next to it)."),
    camera: str = typer.Option(..., "--camera", help="Camera name in the robot config."),
    squares: str = SQUARES,
    square_mm: float = SQUARE_MM,
    marker_mm: float = MARKER_MM,
    dictionary: str = DICTIONARY,
    views: int = typer.Option(DEFAULT_VIEWS, "--views", help="Stop after this many kept views."),
    timeout: float = typer.Option(300.0, "--timeout", help="Give up collecting after this many seconds."),
    fix_k3: bool = typer.Option(False, "--fix-k3", help="Hold k3 at 0 (ordinary lenses, few views)."),
) -> None:
    """Calibrate one camera's intrinsics and distortion with a ChArUco board.

    Move the board slowly through the whole image, near and far, tilted left, right, up and
    down; each view that adds coverage is kept and reported. Ctrl-C stops early and solves with
    the views kept so far. The result goes into the robot's calibration folder.

    Example: tether calibrate camera --robot configs/so101.yaml --camera wrist
    """
    from tether.robot.factory import load_robot_config, make_robot

    spec = _board_options(squares, square_mm, marker_mm, dictionary)
    config = load_robot_config(robot)
    names = [c.name for c in config.cameras] or list(config.twin_params.get("cameras", []))
    if names and camera not in names:
        raise ConfigError(f"Robot '{config.name}' has no camera '{camera}'; it has {names}. Pass one of them to --camera.")
    rig = make_robot(config)
    if camera not in rig.cameras:
        raise ConfigError(f"Robot '{config.name}' has no camera '{camera}'; it has {sorted(rig.cameras)}.")
    calibrate_device(rig.cameras[camera], robot, spec, views, timeout, fix_k3)


def calibrate_device(cam, robot: str, spec, views: int = DEFAULT_VIEWS, timeout: float = 300.0,
                     fix_k3: bool = False, out: Console | None = None, clock=time.monotonic) -> Path:
    """The live procedure on one connected-on-demand Camera: collect, solve, report, save."""
    out = out or console
    out.print(f"Show the {spec.squares_x}x{spec.squares_y} board to '{cam.name}'; Ctrl-C to stop early.")
    with cam:
        deadline = clock() + timeout
        result = run_session(_frames(cam.read, lambda: clock() > deadline), spec, views, fix_k3, out)
    path = save_intrinsics(robot, cam.name, spec, result)
    out.print(f"Saved {path}")
    return path


def calibrate_show(
    robot: str = typer.Option(..., "--robot", help="Robot config (or twin:<task>)."),
) -> None:
    """List the robot's calibrations: what is there, how good, how old, and what is missing.

    Example: tether calibrate show --robot configs/so101.yaml
    """
    from tether.app.calibration_check import needed_calibrations
    from tether.calibration.store import KINDS, CalibrationStore
    from tether.robot.factory import load_robot_config

    config = load_robot_config(robot)
    store = CalibrationStore.for_robot(robot)
    table = Table(title=f"Calibrations of {config.name} ({store.root})")
    for column in ("kind", "name", "state", "created", "tether", "residual"):
        table.add_column(column)
    rows = store.status(needed_calibrations(config))
    for status in rows:
        record = status.record
        colour = {"ok": "green", "stale": "yellow", "missing": "red"}[status.state]
        table.add_row(
            status.kind, status.name, f"[{colour}]{status.state}[/{colour}]",
            record.created[:19] if record else "-", record.tether_version if record else "-",
            _residual_text(record.residuals) if record else "-",
        )
    console.print(table)
    for status in rows:
        if status.state != "ok":
            fix = KINDS.get(status.kind, "the calibration command").format(robot=robot, name=status.name)
            console.print(f"{status.kind} '{status.name}' is {status.state}: {fix}")


def run_session(
    frames: Iterator[np.ndarray],
    spec,
    target_views: int = DEFAULT_VIEWS,
    fix_k3: bool = False,
    out: Console | None = None,
):
    """Offer frames to a ViewSelector until `target_views` are kept (or the frames end / Ctrl-C),
    print a line per kept view and a running hint for rejected ones, then solve and report."""
    from tether.calibration.charuco import CharucoDetector
    from tether.calibration.intrinsics import ViewSelector, calibrate

    out = out or console
    detector = CharucoDetector(spec)
    selector = ViewSelector(detector)
    last_hint = ""
    try:
        for image in frames:
            verdict = selector.offer(image)
            if verdict.kept:
                out.print(
                    f"[green]view {len(selector.views):2d}[/green] {verdict.corners:2d}/{spec.corner_count} "
                    f"corners, tilt {verdict.tilt:7s} +{verdict.new_cells} cells, coverage "
                    f"{100 * verdict.coverage:3.0f} %, tilts {len(selector.tilts_seen())}/5"
                )
                if len(selector.views) >= target_views:
                    break
            elif verdict.reason != last_hint:
                out.print(f"[dim]{verdict.reason}[/dim]")
                last_hint = verdict.reason
    except KeyboardInterrupt:
        out.print(f"Stopped: solving with {len(selector.views)} views.")
    result = calibrate(detector, selector.views, fix_k3=fix_k3)
    report(result, out)
    return result


def report(result, out: Console | None = None) -> None:
    """Per-view and total reprojection error, with what a good value is."""
    out = out or console
    table = Table(title="Reprojection error per view (px)")
    table.add_column("view")
    table.add_column("corners")
    table.add_column("rms px")
    worst = max(result.per_view_px)
    for i, (err, n) in enumerate(zip(result.per_view_px, result.corners_per_view, strict=True), 1):
        mark = " [yellow]<- worst[/yellow]" if err == worst and len(result.per_view_px) > 1 else ""
        table.add_row(str(i), str(n), f"{err:.3f}{mark}")
    out.print(table)
    verdict = "[green]good[/green]" if result.rms_px < GOOD_RMS_PX else "[yellow]check the board is flat and the views sharp[/yellow]"
    k = result.camera_matrix
    out.print(
        f"fx {k[0, 0]:.2f}  fy {k[1, 1]:.2f}  cx {k[0, 2]:.2f}  cy {k[1, 2]:.2f}  "
        f"dist {np.array2string(result.dist_coeffs, precision=4)}\n"
        f"total RMS {result.rms_px:.3f} px over {len(result.per_view_px)} views: {verdict}"
    )


def save_intrinsics(robot: str, camera: str, spec, result) -> Path:
    """Save `result` as the camera's record in the robot's calibration folder."""
    from tether.calibration.store import CalibrationRecord, CalibrationStore

    record = CalibrationRecord(
        kind="camera_intrinsics", name=camera, data=result.to_dict(), residuals=result.residuals(),
        notes={"board": spec.to_dict()},
    )
    return CalibrationStore.for_robot(robot).save(record)


def _frames(read: Callable, expired: Callable[[], bool]) -> Iterator[np.ndarray]:
    """New images from a Camera's `read()` (same frame index skipped) until `expired()`."""
    last_index = None
    while not expired():
        frame = read()
        if frame.index == last_index:
            time.sleep(0.005)  # the camera's thread has no new frame yet
            continue
        last_index = frame.index
        yield frame.image


def _residual_text(residuals: dict) -> str:
    if "rms_px" in residuals:
        return f"{residuals['rms_px']:.3f} px RMS"
    if "rms_fit_rad" in residuals:  # twin_params (tether calibrate twin)
        held = residuals.get("holdout_rms_after_rad")
        return f"{residuals['rms_fit_rad'] * 1000:.3f} mrad RMS" + (
            f", held out {held * 1000:.3f}" if isinstance(held, float) else "")
    return ", ".join(f"{k} {v}" for k, v in residuals.items() if isinstance(v, int | float))[:40] or "-"
