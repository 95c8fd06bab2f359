"""The per-robot calibration folder: versioned YAML records, history, staleness, `calibrate show`."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from tether.app.commands.calibrate import register
from tether.calibration.store import CalibrationRecord, CalibrationStore, calibration_dir
from tether.core.errors import ConfigError

CONFIG = """\
name: bench
arms: []
cameras:
  - {name: wrist, driver: opencv}
  - {name: top, driver: opencv}
"""


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _record(name: str = "wrist", rms: float = 0.21) -> CalibrationRecord:
    return CalibrationRecord(
        kind="camera_intrinsics", name=name,
        data={"camera_matrix": np.eye(3) * 400.0, "dist_coeffs": np.zeros(5), "image_size": (640, 480)},
        residuals={"rms_px": np.float64(rms), "per_view_px": [0.2, 0.25]},
    )


def _config(tmp_path, age_s: float = 3600.0):
    path = tmp_path / "bench.yaml"
    path.write_text(CONFIG)
    past = time.time() - age_s  # the config predates the records saved below
    os.utime(path, (past, past))
    return path


def test_folder_sits_next_to_the_robot_config(tmp_path):
    assert calibration_dir(tmp_path / "so101.yaml") == tmp_path / "so101.calibration"
    assert calibration_dir("twin:lift").name == "twin-lift.calibration"


def test_round_trip_is_plain_yaml_with_date_version_and_residuals(tmp_path):
    store = CalibrationStore.for_robot(_config(tmp_path))
    path = store.save(_record())
    raw = yaml.safe_load(path.read_text())  # plain YAML: safe_load reads it, no pickle tags
    assert raw["format_version"] == 1 and raw["kind"] == "camera_intrinsics" and raw["name"] == "wrist"
    assert raw["tether_version"] and raw["created"].endswith("Z")
    assert raw["residuals"]["rms_px"] == pytest.approx(0.21)
    loaded = store.load("camera_intrinsics", "wrist")
    np.testing.assert_allclose(loaded.data["camera_matrix"], np.eye(3) * 400.0)
    assert loaded.data["image_size"] == [640, 480]
    assert [r.name for r in store.records()] == ["wrist"]


def test_saving_again_keeps_the_old_record_in_history(tmp_path):
    store = CalibrationStore.for_robot(_config(tmp_path))
    store.save(_record(rms=0.3))
    store.save(_record(rms=0.2))
    assert store.load("camera_intrinsics", "wrist").residuals["rms_px"] == pytest.approx(0.2)
    history = store.history("camera_intrinsics", "wrist")
    assert len(history) == 1 and yaml.safe_load(history[0].read_text())["residuals"]["rms_px"] == pytest.approx(0.3)
    assert len(store.records()) == 1  # history is not a current record


def test_status_says_ok_stale_and_missing(tmp_path):
    config = _config(tmp_path)
    store = CalibrationStore.for_robot(config)
    store.save(_record("wrist"))
    needs = [("camera_intrinsics", "wrist"), ("camera_intrinsics", "top")]
    states = {s.name: s.state for s in store.status(needs)}
    assert states == {"wrist": "ok", "top": "missing"}
    warnings = store.warnings(needs)
    assert len(warnings) == 1 and "top" in warnings[0] and "tether calibrate camera" in warnings[0]

    os.utime(config, None)  # touched (a fresh clone, a copy) but not changed: still current
    assert {s.name: s.state for s in store.status(needs)}["wrist"] == "ok"
    config.write_text(config.read_text() + "\n# the wrist camera moved\n")  # edited
    assert {s.name: s.state for s in store.status(needs)}["wrist"] == "stale"
    assert any("earlier version" in w and "wrist" in w for w in store.warnings(needs))


def test_missing_and_unreadable_records_name_the_fix(tmp_path):
    store = CalibrationStore.for_robot(_config(tmp_path))
    with pytest.raises(ConfigError, match="tether calibrate camera"):
        store.load("camera_intrinsics", "wrist")
    store.root.mkdir()
    (store.root / "camera_intrinsics.wrist.yaml").write_text("format_version: 99\nkind: x\n")
    with pytest.raises(ConfigError, match="format_version 99"):
        store.load("camera_intrinsics", "wrist")
    with pytest.raises(ConfigError, match="letters, digits"):
        CalibrationRecord(kind="camera_intrinsics", name="../evil", data={})


def test_calibrate_show_lists_present_stale_and_missing(tmp_path):
    config = _config(tmp_path)
    CalibrationStore.for_robot(config).save(_record("wrist", rms=0.123))
    result = CliRunner().invoke(_app(), ["calibrate", "show", "--robot", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "wrist" in result.output and "0.123 px RMS" in result.output
    assert "top" in result.output and "missing" in result.output
    assert "tether calibrate camera --robot" in result.output


def test_calibrate_board_writes_a_printable_board_at_real_size(tmp_path):
    from PIL import Image

    out = tmp_path / "board.png"
    result = CliRunner().invoke(_app(), ["calibrate", "board", "--out", str(out), "--dpi", "200"])
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.info["dpi"][0] == pytest.approx(200, abs=0.01)
    # 7 x 30 mm of squares + 2 x 10 mm margin = 230 mm at 200 dpi
    assert image.size[0] == pytest.approx(230 / 25.4 * 200, abs=2)
    pdf = tmp_path / "board.pdf"
    assert CliRunner().invoke(_app(), ["calibrate", "board", "--out", str(pdf)]).exit_code == 0
    assert pdf.read_bytes().startswith(b"%PDF")


def test_record_and_rollout_warnings_for_missing_and_stale(tmp_path):
    from tether.app.calibration_check import warn_calibrations
    from tether.robot.factory import load_robot_config

    config_path = _config(tmp_path)
    config = load_robot_config(config_path)
    said: list[str] = []
    messages = warn_calibrations(str(config_path), config, said.append)
    assert len(messages) == 2 and all("tether calibrate camera" in m for m in messages)
    assert len(said) == 2
    store = CalibrationStore.for_robot(config_path)
    store.save(_record("wrist"))
    store.save(_record("top"))
    assert warn_calibrations(str(config_path), config) == []
    config_path.write_text(config_path.read_text() + "\n# a camera moved\n")
    assert len(warn_calibrations(str(config_path), config)) == 2  # both made for the old config
    assert warn_calibrations("twin:lift", load_robot_config("twin:lift")) == []  # twin: exact truth
