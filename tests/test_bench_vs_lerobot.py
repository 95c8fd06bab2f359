"""benchmarks/vs_lerobot.py (issue 17): the harness works, whatever the figures are.

Fast: tether's side of every item, in this process at tiny sizes (one thread), prints the JSON
lines the summary reads, and every figure gets a tether value; the orchestrator summarizes a
results file (ratios, goals, the contention rule) and writes only a complete run into the docs,
keeping the hand-written text around the generated table. No LeRobot venv is needed.

Slow: the orchestrator end to end at tiny sizes, tether only, and with LeRobot's side when its
venv has been built (`make bench-lerobot` builds it). The real figures come from
`make bench-lerobot` on a quiet machine; nothing here asserts a speed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CLI = BENCH / "vs_lerobot.py"


@pytest.fixture
def harness(monkeypatch):
    """The helper modules, imported as the orchestrator and the side scripts import them."""
    monkeypatch.syspath_prepend(str(BENCH / "vs_lerobot"))
    monkeypatch.syspath_prepend(str(BENCH))
    modules = {}
    for name, path in (("tether_side", BENCH / "vs_lerobot" / "tether_side.py"),
                       ("report", BENCH / "vs_lerobot" / "report.py"), ("cli", CLI)):
        spec = importlib.util.spec_from_file_location(f"_vs_lerobot_{name}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def rows_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_tether_side_gives_every_figure(harness, tmp_path, capsys, one_thread):
    side, report = harness["tether_side"], harness["report"]
    base = ["--workdir", str(tmp_path), "--size", "tiny", "--threads", "1", "--runs", "1",
            "--warmup", "0"]
    train = ["--train-steps", "1", "--train-warmup", "1", "--train-batch", "4",
             "--train-workers", "0", "--train-hw", "48x64", "--train-frames", "12"]
    side.main(["--item", "prep", "--prep", "8x48x64,12x48x64", *base])
    side.main(["--item", "env", *base])
    eager = ["--engine", "eager"]  # engines exporting graphs are their own tests' business
    side.main(["--item", "act", "--hw", "48x64", *eager, *base])
    side.main(["--item", "diffusion", "--few-steps", "2", *eager, *base])
    side.main(["--item", "dataset", "--frames", "8x48x64", "--samples", "8", "--batch", "4",
               "--workers", "0", *base])
    for policy in ("act", "diffusion"):
        side.main(["--item", "train", "--policy", policy, *train, *base])
    rows = rows_of(capsys.readouterr().out)

    assert {r["bench"] for r in rows} == {
        "env", "act", "diffusion_chunk", "diffusion_step", "diffusion_unet_eager", "dataset_write",
        "dataset_fidelity", "dataset_read", "train"}
    assert all(r["side"] == "tether" for r in rows)
    for r in rows:  # every timed figure says how contended its window was
        if r["bench"] not in ("env", "dataset_fidelity"):
            assert r["cpu_per_wall"] is not None and r["others_cpu_per_wall"] >= 0, r
            assert len(r["loadavg_before"]) == 3
    act = next(r for r in rows if r["bench"] == "act")
    assert act["chunk"][1] == 14 and act["params"] > 0 and act["engine"].startswith("eager")
    chunks = {r["steps"]: r for r in rows if r["bench"] == "diffusion_chunk"}
    assert set(chunks) == {10, 2}
    write = next(r for r in rows if r["bench"] == "dataset_write")
    assert write["frames"] == 8 and 0 < write["bytes_per_frame_images"] < 48 * 64 * 3
    fidelity = next(r for r in rows if r["bench"] == "dataset_fidelity")
    assert fidelity["psnr_vs_input_db"] > 25  # JPEG q90 of the noisy frames
    read = next(r for r in rows if r["bench"] == "dataset_read")
    assert read["batch_shapes"]["image.top"] == [4, 2, 3, 48, 64]
    assert read["batch_shapes"]["action"] == [4, 16, 14]
    trained = {r["policy"]: r for r in rows if r["bench"] == "train"}
    assert set(trained) == {"act", "diffusion"}
    assert all(r["steps_per_s"] > 0 and r["steps_timed"] == 1 for r in trained.values())

    summaries = report.summarize(rows, report.figures(2, ["48x64"]))
    for s in summaries:
        line = s.as_json()
        assert line["tether"] is not None, line["figure"]
        assert line["lerobot"] is None and line["ratio"] is None and line["met"] is None
        assert {"figure", "unit", "better", "goal", "tether_rounds", "lerobot_rounds"} <= set(line)


def _row(side: str, bench: str, **fields) -> dict:
    return {"side": side, "bench": bench, "cpu_per_wall": 1.98, "others_cpu_per_wall": 0.02,
            "loadavg_before": [0.5, 0.4, 0.3], "accepted": True, **fields}


def full_run() -> list[dict]:
    """Results of a (made-up) complete run: every figure on both sides, two rounds."""
    meta = {"bench": "run", "side": "run", "argv": ["--write-docs"], "items": ["act", "diffusion",
            "dataset", "train"], "rounds": 2, "runs": 20, "engine": "default",
            "image_codec": "default", "few_steps": 4, "size": "full", "threads": 2,
            "date": "2026-12-03", "machine": "2 cores of a test CPU", "tether_commit": "abc1234",
            "cpw_min": 1.9, "others_max": 0.15, "train_batch": 8, "train_workers": 2,
            "train_steps": 10, "train_warmup": 3, "train_hw": "240x320", "duration_min": 14.0}
    rows = [meta, {"side": "tether", "bench": "env", "torch": "2.13.0+cpu"},
            {"side": "lerobot", "bench": "env", "torch": "2.14.1", "lerobot": "0.4.4"}]
    for k in (1.0, 1.1):  # two rounds
        for side, f in (("tether", 1.0), ("lerobot", 2.0)):
            for h, w in ((240, 320), (480, 640)):
                rows.append(_row(side, "act", image=[3, h, w], p50_ms=k * f * 40 * h / 240))
            rows.append(_row(side, "diffusion_step", step_ms=k * f * 30))
            rows.append(_row(side, "diffusion_unet_eager", p50_ms=k * f * 35))
            rows.append(_row(side, "diffusion_chunk", steps=10, scheduler="DDIM",
                             p50_ms=k * f * 400))
            rows.append(_row(side, "diffusion_chunk", steps=4, scheduler="DDIM", p50_ms=k * f * 200))
            rows.append(_row(side, "diffusion_chunk", steps=100, scheduler="DDPM",
                             p50_ms=k * f * 7000))
            for variant in ("record_defaults", "streaming"):
                rows.append(_row(side, "dataset_write", variant=variant, frames_per_s=k * 100 / f,
                                 bytes_per_frame_images=10_000 * f))
            rows.append(_row(side, "dataset_fidelity", psnr_vs_input_db=34.0,
                             psnr_vs_noise_free_db=35.0))
            rows.append(_row(side, "dataset_read", samples_per_s=k * 600 / f))
            for policy in ("act", "diffusion"):
                rows.append(_row(side, "train", policy=policy, steps_per_s=k * 0.5 / f))
    return rows


def test_summary_ratios_goals_and_contention(harness):
    report, cli = harness["report"], harness["cli"]
    rows = full_run()
    rows.append(_row("tether", "act", image=[3, 240, 320], p50_ms=1e6, accepted=False))  # rerun
    by_id = {s.figure.id: s for s in report.summarize(rows, report.figures())}
    act = by_id["act_240x320"]
    assert act.tether == pytest.approx(42.0) and act.lerobot == pytest.approx(84.0)
    assert act.ratio == pytest.approx(0.5) and act.met is True  # goal <= 0.5
    assert by_id["diffusion_chunk_few_vs_ddpm100"].ratio == pytest.approx(200 / 14000, abs=1e-3)
    assert by_id["image_bytes_per_frame"].met is True  # 0.5 <= 1.0
    assert by_id["loader_samples_per_s"].met is False  # 2x < 3x
    assert by_id["train_diffusion"].met is True and by_id["train_diffusion"].ratio == 2.0
    assert by_id["diffusion_unet_eager"].met is None  # no goal

    a = cli.parser().parse_args([])
    assert cli.contention([_row("tether", "act", cpu_per_wall=1.95)], a) == []
    assert cli.contention([_row("tether", "train", cpu_per_wall=1.5, others_cpu_per_wall=0.5)], a)
    assert cli.contention([_row("tether", "act", cpu_per_wall=1.5)], a) == []  # its own, not load
    assert cli.contention([_row("lerobot", "dataset_write", cpu_per_wall=1.0)], a) == []
    assert cli.contention([_row("lerobot", "dataset_read", others_cpu_per_wall=0.6)], a)


def test_cli_summarizes_a_results_file_and_writes_only_full_runs(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in full_run()) + "\n")
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nNotes written by hand.\n\n<!-- BEGIN generated by "
                    "benchmarks/vs_lerobot.py: do not edit by hand -->\nold table\n"
                    "<!-- END generated -->\n\n## What limits each figure\n\nMore notes.\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(CLI), "--from-results", str(results), *args],
                              capture_output=True, text=True, timeout=120)

    done = run("--write-docs", str(docs))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line)["summary"] for line in done.stdout.splitlines()]
    assert len(lines) == 14 and all(line["ratio"] is not None for line in lines)
    text = docs.read_text()
    assert "old table" not in text and "Notes written by hand." in text and "More notes." in text
    assert "| ACT 240x320" in text and "2026-12-03" in text and "make bench-lerobot" in text
    assert text.count("<!-- BEGIN generated") == 1

    rows = [r for r in full_run() if not (r["side"] == "lerobot" and r["bench"] == "train")]
    results.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs.write_text("unchanged\n")
    done = run("--write-docs", str(docs))
    assert done.returncode == 0 and "not writing" in done.stderr
    assert docs.read_text() == "unchanged\n"


@pytest.mark.slow
def test_orchestrator_end_to_end_tiny(tmp_path):
    """Every item, each side in its own process, at tiny sizes; LeRobot's side too when its venv
    exists (build it with `make bench-lerobot`)."""
    sys.path.insert(0, str(BENCH))
    try:
        from vs_lerobot import lerobot_venv
    finally:
        sys.path.remove(str(BENCH))
    venv = lerobot_venv.venv_dir()
    side = "both" if (venv / lerobot_venv.STAMP).exists() else "tether"
    done = subprocess.run(
        [sys.executable, str(CLI), "--side", side, "--size", "tiny", "--runs", "2", "--warmup", "1",
         "--rounds", "1", "--train-steps", "2", "--train-warmup", "1", "--ddpm-runs", "1",
         "--threads", "1", "--cpw-min", "0", "--others-max", "99", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line)["summary"] for line in done.stdout.splitlines()
                 if line.startswith('{"summary"')]
    assert len(summaries) == 13  # one ACT size at --size tiny
    assert all(s["tether"] is not None for s in summaries)
    if side == "both":
        assert all(s["lerobot"] is not None and s["ratio"] is not None for s in summaries)
