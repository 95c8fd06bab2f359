"""Evaluate every checkpoint of a training run on the twin and mark the best one.

Training loss correlates poorly with task success, so checkpoints are picked by twin success
rate: each one gets the same held-out seeds, with its EMA weights, its raw weights, or both, and
the rule of `tether.app.eval.selection` (the latest evaluation indistinguishable from the
leader by 95% Wilson intervals) marks the best. `sweep.json` and `selection.html` (success and losses against step)
are written beside the per-checkpoint reports.

`twin_scorer` is the in-process evaluator `tether train --eval-every` uses: it returns counts,
not only a rate, so the trainer's choice can carry a confidence interval.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from tether.app.eval.runner import EvalConfig, evaluate
from tether.app.eval.selection import Scored, choose, neighbour_spread
from tether.core.errors import ConfigError, TetherError


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint directory (one holding policy.json) under a run, oldest step first."""
    run_dir = Path(run_dir)
    found = {p.parent.resolve(): p.parent for p in run_dir.rglob("policy.json")
             if not p.parent.name.endswith(".tmp")}
    if not found:
        raise TetherError(f"No checkpoints (directories with policy.json) under {run_dir}.")

    def step(path: Path) -> int:
        return int(json.loads((path / "policy.json").read_text()).get("step", 0))

    return sorted(found.values(), key=lambda p: (step(p), p.name))


def sweep(run_dir: Path, base: EvalConfig, show_progress: bool = True,
          weights: tuple[str, ...] = ("ema",), only_snapshots: bool = False) -> dict[str, Any]:
    """Evaluate each checkpoint with `base` settings; write sweep.json and selection.html.

    `weights`: ("ema",), ("raw",) or both; a checkpoint without EMA weights is evaluated raw.
    `only_snapshots`: skip `last` and `best` (copies of snapshots at the same steps)."""
    for w in weights:
        if w not in ("ema", "raw"):
            raise ConfigError(f"weights must be ema and/or raw, got '{w}'")
    results: list[dict[str, Any]] = []
    out_root = Path(base.out)
    for ckpt in list_checkpoints(run_dir):
        if only_snapshots and ckpt.name in ("last", "best"):
            continue
        meta = json.loads((ckpt / "policy.json").read_text())
        step = int(meta.get("step", 0))
        for w in weights:
            if w == "ema" and not meta.get("has_ema"):
                if "raw" in weights:
                    continue  # its raw evaluation is the same weights
                w = "raw"
            source = ckpt if w == "ema" or not meta.get("has_ema") else raw_view(ckpt, out_root / ".raw")
            name = ckpt.name if w == "ema" or len(weights) == 1 else f"{ckpt.name}.raw"
            config = replace(base, checkpoint=str(source), server=None, policy=None,
                             out=str(out_root / name))
            summary = evaluate(config, show_progress=show_progress)
            successes = int(round(summary["success_rate"] * summary["episodes"]))
            results.append({"checkpoint": str(ckpt), "step": step, "weights": w,
                            "success_rate": summary["success_rate"], "successes": successes,
                            "episodes": summary["episodes"], "success_ci95": summary["success_ci95"],
                            "report": str(Path(config.out) / "report.html")})
    if not results:
        raise TetherError(f"No checkpoints to evaluate under {run_dir}.")
    scored = [Scored.from_row(r) for r in results]
    choice = choose(scored)
    for i, r in enumerate(results):
        r["best"] = i == choice.index
        r["tied_with_best"] = i in choice.tied
    data = {"run": str(run_dir), "task": base.task, "episodes": base.episodes, "checkpoints": results,
            "best": results[choice.index]["checkpoint"], "best_weights": results[choice.index]["weights"],
            "selection": choice.as_dict(scored),
            "neighbour_spread": {w: neighbour_spread(scored, w) for w in ("ema", "raw")}}
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "sweep.json").write_text(json.dumps(data, indent=2) + "\n")
    from tether.app.eval.selection_report import write_selection_report

    write_selection_report(out_root / "selection.html", scored, choice, run_losses(Path(run_dir)),
                           title=f"{run_dir}: {base.task}, {base.episodes} episodes per checkpoint")
    shutil.rmtree(out_root / ".raw", ignore_errors=True)
    return data


def raw_view(ckpt: Path, root: Path) -> Path:
    """A checkpoint directory that loads `ckpt`'s raw (non-EMA) weights: policy.json with
    has_ema false beside links to the weights and normalizer (nothing is copied)."""
    view = root / f"{ckpt.parent.name}_{ckpt.name}"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    meta = json.loads((ckpt / "policy.json").read_text())
    meta["has_ema"] = False
    (view / "policy.json").write_text(json.dumps(meta))
    for name in ("model.safetensors", "normalizer.safetensors"):
        (view / name).symlink_to((ckpt / name).resolve())
    return view


def run_losses(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Training and validation losses against step, from a run's metrics.jsonl."""
    losses: dict[str, list[tuple[int, float]]] = {"train_loss": [], "val_loss": [], "val_loss_ema": []}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    seen: set[tuple[str, int]] = set()
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key, name in (("loss", "train_loss"), ("val_loss", "val_loss"), ("val_loss_ema", "val_loss_ema")):
            if key in row and (name, row["step"]) not in seen:
                seen.add((name, row["step"]))
                losses[name].append((int(row["step"]), float(row[key])))
    return {k: v for k, v in losses.items() if v}


def twin_scorer(task: str, episodes: int = 10, seed: int = 100_000, robot: list[str] | None = None,
                rollout: dict[str, Any] | None = None):
    """`score(policy) -> {"successes", "episodes", "success_rate"}` on seeded twin episodes, in
    this process, on a twin at the policy's own rate and camera size plus `robot` overrides (for
    example the recording's `safety.max_velocity`)."""
    from tether.app.eval.worker import run_episodes, twin_overrides_for
    from tether.robot.factory import make_robot

    config = EvalConfig(task=task, episodes=episodes, seed=seed, videos=0, robot=list(robot or []),
                        rollout=dict(rollout or {}))

    def score(policy) -> dict[str, Any]:
        twin = make_robot(f"twin:{task}", twin_overrides_for(policy.spec) + config.robot)
        with twin:
            records = list(run_episodes(twin, policy, config.seeds(), config))
        successes = sum(r.success for r in records)
        return {"successes": successes, "episodes": len(records),
                "success_rate": successes / len(records)}

    return score
