"""Evaluate every checkpoint of a training run on the twin and mark the best one.

Training loss correlates poorly with task success, so checkpoints are picked by twin success
rate: each one gets the same held-out seeds, and ties go to the later checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from tether.app.eval.runner import EvalConfig, evaluate
from tether.core.errors import TetherError


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint directory (one holding policy.json) under a run, oldest step first."""
    run_dir = Path(run_dir)
    found = {p.parent.resolve(): p.parent for p in run_dir.rglob("policy.json")}
    if not found:
        raise TetherError(f"No checkpoints (directories with policy.json) under {run_dir}.")

    def step(path: Path) -> int:
        return int(json.loads((path / "policy.json").read_text()).get("step", 0))

    return sorted(found.values(), key=lambda p: (step(p), p.name))


def sweep(run_dir: Path, base: EvalConfig, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate each checkpoint with `base` settings; write sweep.json beside the reports."""
    results = []
    out_root = Path(base.out)
    for ckpt in list_checkpoints(run_dir):
        config = replace(base, checkpoint=str(ckpt), server=None, policy=None,
                         out=str(out_root / ckpt.name))
        summary = evaluate(config, show_progress=show_progress)
        step = int(json.loads((ckpt / "policy.json").read_text()).get("step", 0))
        results.append({"checkpoint": str(ckpt), "step": step, "success_rate": summary["success_rate"],
                        "success_ci95": summary["success_ci95"], "report": str(Path(config.out) / "report.html")})
    best = max(results, key=lambda r: (r["success_rate"], r["step"]))
    for r in results:
        r["best"] = r is best
    data = {"run": str(run_dir), "task": base.task, "episodes": base.episodes, "checkpoints": results,
            "best": best["checkpoint"]}
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "sweep.json").write_text(json.dumps(data, indent=2) + "\n")
    return data
