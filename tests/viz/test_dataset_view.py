"""`tether view`: recorded episodes in rerun (read back from .rrd) and as HTML pages checked in
headless Chromium (as the eval report is); `tether inspect` shows operator and quality."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("rerun")

from tether.app.live_view import read_rrd  # noqa: E402
from tether.cli import build_app  # noqa: E402

runner = CliRunner()
STEPS = 24
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two scripted twin episodes of STEPS rows; only episode 1 carries a quality score."""
    from tether.data.store import EpisodeStore

    out = tmp_path_factory.mktemp("view") / "demo.zarr"
    result = runner.invoke(build_app(), [
        "record", "--robot", "twin:lift", "--teleop", "scripted", "--fast", "--episodes", "2",
        "--episode-time", str(STEPS / 30), "--operator", "ada", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    with EpisodeStore.open(out, "a") as st:
        st.update_episode_metadata(0, quality=None)  # as if recorded before takes were scored
        st.update_episode_metadata(1, quality={"score": 0.8125, "smoothness": 0.9})
    return out


def test_view_rrd_holds_time_aligned_cameras_joints_and_actions(store, tmp_path):
    from tether.data.store import EpisodeStore

    result = runner.invoke(build_app(), ["view", str(store), "--rrd", str(tmp_path / "rrd")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "rrd").glob("*.rrd"))
    assert [f.name for f in files] == ["demo_episode_0000.rrd", "demo_episode_0001.rrd"]
    with EpisodeStore.open(store) as st:
        ts = st.get_episode(1, ["timestamp"])["timestamp"]
    info = read_rrd(files[1])
    rows = info["entities"]
    assert rows["/cameras/top"] == STEPS
    assert rows["/joints/position"] == rows["/joints/command"] == STEPS  # no joint names stored
    assert rows["/episode/info"] == 1
    for entity in ("/cameras/top", "/joints/position", "/joints/command"):
        timelines = info["timelines"][entity]
        assert timelines["step"] == list(range(STEPS))
        np.testing.assert_allclose(timelines["time"], ts - ts[0], atol=1e-6)  # one instant per row


def test_view_one_episode_to_one_file_and_refusals(store, tmp_path):
    one = tmp_path / "one.rrd"
    result = runner.invoke(build_app(), ["view", str(store), "--episode", "0", "--rrd", str(one)])
    assert result.exit_code == 0, result.output
    assert read_rrd(one)["entities"]["/cameras/top"] == STEPS
    both = runner.invoke(build_app(), ["view", str(store), "--rrd", str(tmp_path / "two.rrd")])
    assert both.exit_code == 2 and "pass --episode N" in both.output
    missing = runner.invoke(build_app(), ["view", str(store), "--episode", "7", "--rrd", str(one)])
    assert missing.exit_code == 2 and "episode 7 does not exist" in missing.output


def test_view_html_pages_render_in_headless_chromium(store, tmp_path):
    out = tmp_path / "pages"
    result = runner.invoke(build_app(), ["view", str(store), "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["episode_0000.html", "episode_0001.html",
                                                     "index.html"]
    page = out / "episode_0001.html"
    text = page.read_text()
    assert "src='data:video/webm;base64," in text and "http" not in text.split("<body>")[1].replace(
        "http://www.w3.org/2000/svg", "")  # self-contained: nothing to fetch
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is not installed; `make setup` installs it (apt package chromium)"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    shot = tmp_path / "page.png"
    subprocess.run([*common, "--window-size=1200,1000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=90, check=True)
    assert shot.stat().st_size > 20_000, "the screenshot of the page is (nearly) blank"
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=90, check=True).stdout
    assert dom.count("<video") == 1
    assert dom.count("<svg") == 6 and dom.count("class=\"position\"") == 6  # one plot per joint
    assert "id=\"info-operator\">ada<" in dom and "id=\"info-quality\">0.812<" in dom
    assert f"{STEPS} steps" in dom
    index = (out / "index.html").read_text()
    assert "episode_0000.html" in index and "0.812" in index


def test_inspect_shows_operator_and_quality(store):
    result = runner.invoke(build_app(), ["inspect", str(store), "--json"])
    assert result.exit_code == 0, result.output
    episodes = json.loads(result.output)["per_episode"]
    assert [e["quality"] for e in episodes] == [None, 0.8125]
    assert [e["operator"] for e in episodes] == ["ada", "ada"]
    assert [e["length"] for e in episodes] == [STEPS, STEPS]
    table = runner.invoke(build_app(), ["inspect", str(store)], terminal_width=200)
    assert table.exit_code == 0
    rows = [line for line in table.output.splitlines() if "ada" in line]
    assert len(rows) == 2 and "0.812" in rows[1] and "0.812" not in rows[0]
    assert " - " in rows[0].split("ada")[1]  # no quality score yet: '-'
