"""`tether demo --quick`: every stage of the main job, end to end, through the real CLI."""

import json
import subprocess
import sys


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=480,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tether demo: lift" in result.stdout  # the summary table

    summary = json.loads((out / "demo_summary.json").read_text())
    for key in ("demos", "train_time_s", "success_rate", "success_ci95", "inference_ms",
                "transport_overhead_ms", "action_latency_ms", "report", "timings_s"):
        assert key in summary, f"demo_summary.json lacks '{key}'"
    assert summary["demos"] == 4 and summary["demo_success_rate"] == 1.0
    assert 0.0 <= summary["success_rate"] <= 1.0
    assert summary["inference_ms"]["p50"] > 0
    assert summary["transport_overhead_ms"]["p50"] is not None

    # Every stage left its artefact: a store, a checkpoint, a report.
    assert (out / "data.zarr" / "meta").is_dir()
    assert list((out / "run").rglob("policy.json"))
    report = out / "report"
    eval_summary = json.loads((report / "summary.json").read_text())
    assert eval_summary["episodes"] == 4
    assert eval_summary["policy"].startswith("server=tcp://127.0.0.1:")
    assert (report / "report.html").stat().st_size > 10_000
    assert len((report / "episodes.csv").read_text().strip().splitlines()) == 5
