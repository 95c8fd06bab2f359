"""`tether eval` end to end on the twin with the scripted expert, the report, and bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.cli import build_app

runner = CliRunner()
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def render_in_chromium(html: Path, tmp_path: Path) -> str:
    """Load a report in headless Chromium; return the DOM it rendered (fails if Chromium is missing)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is not installed; `make setup` installs it (apt package chromium)"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1200,1600", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, timeout=90, check=True)
    assert shot.stat().st_size > 20_000, "the screenshot of the report is (nearly) blank"
    dom = subprocess.run([*common, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=90, check=True).stdout
    return dom


def test_eval_scripted_writes_a_complete_report(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "eval", "--task", "lift", "--policy", "scripted",
         "--episodes", "3", "--workers", "2", "--videos", "1", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 3 and summary["success_rate"] == 1.0
    assert summary["success_ci95"][0] > 0.3 and summary["success_ci95"][1] == 1.0
    for key in ("action_latency_ms", "inference_ms", "safety_interventions", "episode_length", "stalls"):
        assert key in summary
    assert json.loads((out / "summary.json").read_text())["episodes"] == 3
    rows = (out / "episodes.csv").read_text().strip().splitlines()
    assert rows[0].startswith("seed,success") and len(rows) == 4
    for plot in ("success_by_seed", "latency_histogram", "joint_trajectories"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 5000
    videos = list((out / "videos").glob("*.webm"))
    assert videos and all(v.stat().st_size > 10_000 for v in videos)
    dom = render_in_chromium(out / "report.html", tmp_path)
    assert 'id="success-rate"' in dom and "Success 3/3" in dom
    assert dom.count("<video") >= 1 and dom.count("<img") >= 3


def test_eval_refuses_ambiguous_or_missing_policy(tmp_path):
    app = build_app()
    none = runner.invoke(app, ["eval", "--task", "lift", "--out", str(tmp_path)])
    assert none.exit_code == 2 and "exactly one policy source" in none.output
    two = runner.invoke(app, ["eval", "--policy", "scripted", "--server", "tcp://127.0.0.1:1",
                              "--out", str(tmp_path)])
    assert two.exit_code == 2 and "exactly one policy source" in two.output


def test_eval_reports_a_missing_checkpoint(tmp_path):
    result = runner.invoke(build_app(), ["eval", "--checkpoint", str(tmp_path / "nope"), "--episodes", "1",
                                         "--workers", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "nope" in (result.output + str(result.exception))


def test_eval_stream_lookahead_reaches_the_policy_and_is_refused_beside_chunks(
        tmp_path, state_diffusion_checkpoint):
    """`--stream-lookahead k` rides on every request of the evaluation (a value past the
    checkpoint's buffer fails naming the range, so it got there); beside a chunk sampler it is
    refused before any worker starts."""
    checkpoint = str(state_diffusion_checkpoint(tmp_path, streaming_fraction=0.5))
    app = build_app()
    base = ["eval", "--task", "lift", "--checkpoint", checkpoint, "--episodes", "1", "--workers", "0",
            "--videos", "0", "--out", str(tmp_path / "r"), "--sampler"]
    ran = runner.invoke(app, [*base, "streaming", "--stream-lookahead", "3"])
    assert ran.exit_code == 0, ran.output
    too_far = runner.invoke(app, [*base, "streaming", "--stream-lookahead", "7"])
    assert too_far.exit_code != 0
    assert "lookahead must be an integer from 0 to 6" in " ".join(too_far.output.split())
    chunks = runner.invoke(app, [*base, "ddim", "--stream-lookahead", "3"])
    assert chunks.exit_code == 2 and "applies to the streaming sampler" in " ".join(chunks.output.split())


@pytest.mark.slow
def test_scripted_expert_success_over_100_episodes(tmp_path):
    from tether.app.eval.runner import EvalConfig, evaluate

    summary = evaluate(EvalConfig(task="lift", episodes=100, workers=2, policy="scripted",
                                  out=str(tmp_path), videos=0), show_progress=False)
    assert summary["success_rate"] >= 0.95


def test_eval_set_reaches_the_twin_and_names_a_bad_key(tmp_path):
    """`--set` configures the evaluation twin (the demo evaluates at its recording's speed limit):
    a slower twin needs more steps for the same seed, and a mistyped key is named."""
    app = build_app()

    def length(*overrides: str) -> float:
        result = runner.invoke(app, ["eval", "--task", "lift", "--policy", "scripted", "--episodes", "1",
                                     "--workers", "0", "--videos", "0", "--json",
                                     "--out", str(tmp_path / f"r{len(overrides)}"), *overrides])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["success_rate"] == 1.0
        return summary["episode_length"]["mean"]

    assert length("--set", "safety.max_velocity=0.5") > length()
    bad = runner.invoke(app, ["eval", "--task", "lift", "--policy", "scripted", "--episodes", "1",
                              "--workers", "0", "--out", str(tmp_path / "bad"), "--set", "safety.max_velocty=0.5"])
    assert bad.exit_code == 2 and "max_velocty" in bad.output
