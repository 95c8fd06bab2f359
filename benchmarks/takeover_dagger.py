"""One round of human-gated corrections (HG-DAgger) on the twin, through the CLI; prints JSON.

    1. record `--demos` scripted lift demonstrations (10 Hz, an 80x60 top camera);
    2. train a deliberately under-trained mlp policy on them (`--steps`, tiny preset);
    3. roll it out on `--corrections` new seeds with the scripted operator ready to take over
       (`tether rollout --takeover scripted --record`), recording into a copy of the demo store;
    4. train again, same steps and seed, on demos + corrections: all steps (`all`), and only the
       human-driven ones (`hg-dagger`: --policy-weight 0 --intervention-weight 1);
    5. optionally (`--control`) train on demos + as many extra scripted demos (same seeds as the
       corrections), to separate "corrections" from "more data";
    6. evaluate every policy on the same `--eval` held-out seeds (tether eval, seed 100000+).

Example: python benchmarks/takeover_dagger.py --demos 12 --corrections 12 --steps 600 --eval 40
Slow on purpose (minutes); tests/integration/test_takeover_dagger_slow.py runs a version of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROBOT = ["--robot", "twin:lift", "--set", "fps=10", "--set", "twin_params.cameras=[top]",
         "--set", "twin_params.width=80", "--set", "twin_params.height=60"]


def tether(*args: str) -> str:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    done = subprocess.run([sys.executable, "-m", "tether.cli", *args], capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"tether {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def record(out: Path, episodes: int, seed: int) -> None:
    tether("record", *ROBOT, "--teleop", "scripted", "--episodes", str(episodes), "--seed",
           str(seed), "--out", str(out), "--no-keyboard")


def train(dataset: Path, out: Path, steps: int, seed: int, *extra: str) -> None:
    tether("train", "--dataset", str(dataset), "--policy", "mlp", "--preset", "tiny", "--steps",
           str(steps), "--seed", str(seed), "--out", str(out), "--overwrite", "--no-progress",
           "--threads", "1", *extra)


def evaluate(run: Path, episodes: int, out: Path) -> dict:
    tether("eval", "--task", "lift", "--checkpoint", str(run), "--episodes", str(episodes),
           "--workers", "1", "--videos", "0", "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    return {"success_rate": summary["success_rate"], "ci95": summary.get("success_ci95"),
            "episodes": episodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=12)
    ap.add_argument("--corrections", type=int, default=12)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval", type=int, default=40)
    ap.add_argument("--seeds", default="0", help="training seeds, comma separated")
    ap.add_argument("--patience", type=float, default=3.0, help="scripted operator patience_s")
    ap.add_argument("--control", action="store_true", help="also train on demos + extra demos")
    ap.add_argument("--out", type=Path, default=Path("runs/takeover_dagger"))
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    demos = out / "demos.zarr"
    if not demos.exists():
        record(demos, args.demos, 0)
    report: dict = {"demos": args.demos, "corrections": args.corrections, "steps": args.steps,
                    "eval_episodes": args.eval, "policy": "mlp tiny, 80x60 top camera, 10 Hz",
                    "runs": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
        base = out / f"base_s{seed}"
        train(demos, base, args.steps, seed)
        mixed = out / f"demos+corrections_s{seed}.zarr"
        shutil.rmtree(mixed, ignore_errors=True)
        shutil.copytree(demos, mixed)
        rollout_json = out / f"rollout_s{seed}.json"
        tether("rollout", *ROBOT, "--policy", str(base), "--lockstep", "--episodes",
               str(args.corrections), "--seed", "1000", "--takeover", "scripted",
               "--takeover-param", f"patience_s={args.patience}", "--record", str(mixed),
               "--json", str(rollout_json), "--no-keyboard")
        rollouts = json.loads(rollout_json.read_text())
        runs = {"base": base}
        for name, extra in (("all", ()), ("hg-dagger", ("--policy-weight", "0"))):
            runs[name] = out / f"{name}_s{seed}"
            train(mixed, runs[name], args.steps, seed, *extra)
        if args.control:
            more = out / f"demos+more_s{seed}.zarr"
            shutil.rmtree(more, ignore_errors=True)
            shutil.copytree(demos, more)
            tether("record", *ROBOT, "--teleop", "scripted", "--episodes", str(args.corrections),
                   "--seed", "1000", "--out", str(more), "--append", "--no-keyboard")
            runs["more-demos"] = out / f"more_s{seed}"
            train(more, runs["more-demos"], args.steps, seed)
        result = {
            "rollouts": {
                "success_with_takeover": sum(bool(r["success"]) for r in rollouts),
                "episodes": len(rollouts),
                "took_over": sum(r["handovers"] > 0 for r in rollouts),
                "intervention_steps": sum(r["intervention_steps"] for r in rollouts),
                "steps": sum(r["length"] for r in rollouts),
                "handover_peak_speed_max": max(
                    (p for r in rollouts for p in r.get("handover_peak_speed", [])), default=0.0),
            },
        }
        for name, run in runs.items():
            result[name] = evaluate(run, args.eval, out / f"eval_{name}_s{seed}")
        report["runs"][str(seed)] = result
        print(json.dumps({seed: result}), file=sys.stderr, flush=True)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
