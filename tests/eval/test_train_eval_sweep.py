"""Periodic twin evaluation during training and `tether eval --sweep` share one episode loop.

A tiny ACT is trained on scripted twin demos with `--eval-task` (the trainer keeps the best
checkpoint by twin success) and `--keep-every` (step snapshots); the sweep then evaluates every
snapshot on the same seeds, at the policy's own rate and camera size, and marks one best.
"""

import json

from typer.testing import CliRunner

from tether.cli import build_app
from tether.policies.checkpoint import load_policy

runner = CliRunner()


def test_periodic_eval_keeps_best_and_sweep_marks_one(tmp_path):
    app = build_app()
    data = tmp_path / "lift.zarr"
    recorded = runner.invoke(app, [
        "record", "--robot", "twin:lift", "--episodes", "3", "--out", str(data),
        "--set", "fps=10", "--set", "twin_params.width=64", "--set", "twin_params.height=48",
    ])
    assert recorded.exit_code == 0, recorded.output

    run = tmp_path / "run"
    trained = runner.invoke(app, [
        "train", "--dataset", str(data), "--policy", "act", "--preset", "tiny", "--steps", "40",
        "--out", str(run), "--eval-task", "lift", "--eval-every", "20", "--eval-episodes", "2",
        "--keep-every", "20", "--no-progress", "--threads", "1",
    ])
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if "success_rate" in line]
    assert [row["step"] for row in evals] == [20, 40]
    assert all(0.0 <= row["success_rate"] <= 1.0 for row in evals)
    assert (run / "checkpoints" / "best" / "policy.json").is_file()
    snapshots = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert snapshots == ["step_0000020", "step_0000040"]
    assert load_policy(run / "checkpoints" / "step_0000020").spec.fps == 10

    out = tmp_path / "sweep"
    swept = runner.invoke(app, ["eval", "--task", "lift", "--sweep", str(run), "--episodes", "2",
                                "--workers", "0", "--videos", "0", "--out", str(out), "--json"])
    assert swept.exit_code == 0, swept.output + repr(swept.exception)
    result = json.loads((out / "sweep.json").read_text())
    names = {c["checkpoint"].rsplit("/", 1)[-1] for c in result["checkpoints"]}
    assert {"step_0000020", "step_0000040", "last", "best"} <= names
    assert sum(c["best"] for c in result["checkpoints"]) == 1
    for c in result["checkpoints"]:
        summary = json.loads((out / c["checkpoint"].rsplit("/", 1)[-1] / "summary.json").read_text())
        assert summary["seeds"] == [100000, 100001]  # the same held-out seeds for every checkpoint


def test_eval_task_without_interval_is_refused(tmp_path):
    result = runner.invoke(build_app(), ["train", "--dataset", str(tmp_path / "x.zarr"),
                                         "--eval-task", "lift", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--eval-every" in result.output
