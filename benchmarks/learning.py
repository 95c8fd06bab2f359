"""Learning results on the twin (issue 19): ACT on bimanual transfer_cube and insertion,
Diffusion Policy on lift and transfer_cube, from 50 scripted demonstrations (lift: 100), evaluated on
held-out seeds, with the curve of success against training time.

For every recipe (task x policy, `RECIPES` below):

1. record `--demos` scripted demonstrations (seeds 0..) plus `--val-demos` more for the
   validation loss, at 10 Hz through the recipe's cameras, at the task's joint speed limit
   (one store per task, cameras, demo count and speed limit, shared by the recipes that match);
2. train with `--snapshots` evenly spaced inference snapshots (`keep_every`), two torch threads;
3. evaluate every snapshot on `--snapshot-episodes` seeds from 200000 (EMA weights; `--raw`
   adds the raw ones) and pick one by the confidence-interval rule of tether.app.eval.selection;
4. evaluate the pick on `--episodes` *other* held-out seeds (100000..), so the reported rate is
   not inflated by having chosen on it, and write the usual HTML eval report (videos, latency).

Writes OUT/learning.json (printed too), OUT/learning.html (curves of success against training
time and step, links to every report) and OUT/<recipe>/sweep/selection.html (success and loss
against step, EMA and raw).

    make bench-learning                                   # everything, the defaults below
    .venv/bin/python benchmarks/learning.py --recipes diffusion_lift --steps 1600
    .venv/bin/python benchmarks/learning.py --smoke      # every stage, tiny, a few minutes

Choices for a 2-core CPU (docs/policies.md, "Learning results"): 10 Hz control (an episode is
~50-100 decisions), one camera recorded at 96x128 - `top` on lift, the ALOHA scene's narrow
`workspace` view on transfer_cube (the cube ~10 px wide there, ~5 px in `top`), the SO-101's
`wrist` camera on insertion - fed at 72x96 (diffusion on lift: 48x64); the task's joint speed
limit (transfer_cube, insertion: the gripper at 10/s); for ACT on transfer_cube the ACT paper's
object distribution (positions only, `Recipe.yaw_randomization`; the other recipes keep the
twin's +-45 deg of yaw, as they were measured); ACT `cpu` preset (dim 128, 2+1 layers, ResNet-18 width 32, chunk 1 s, temporal ensembling with m = 0.01 as in the paper); diffusion
`tiny` preset (U-Net 32/64/128, width-16 ResNet-18; lift from 100 demos, 4000 steps), batch 64,
lr 1e-3, obs horizon 2, 16 predicted / 8 executed actions, sample prediction, 10 DDIM steps,
EMA 0.995. Steps are what fits ~30-60 min per run on
a quiet machine; on a loaded one runs take 3-5x longer (success rates do not depend on load:
evaluation is lockstep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

ACT_MODEL = {"image_size": [72, 96], "chunk_seconds": 1.0}
# The `tiny` preset (U-Net 32/64/128, width-16 ResNet-18 at 48x64) trained longer and harder.
DIFFUSION_TINY_MODEL = {"prediction_type": "sample", "streaming_fraction": 0.5}
DIFFUSION_TINY_TRAIN = {"lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.995, "batch_size": 64}
# What the scripted expert needs per task at 10 Hz (rad/s; the ViperX tasks need longer moves
# per tick than lift: at 0.5 the transfer and insertion experts fail every episode).
# transfer_cube lists its ViperX joints (6 joints, then the gripper in 0..1 per second): a single
# number also limits the gripper, and at 1/s the recorded close became a 10-tick ramp trailing
# the finger reading, so ACT learned to command "a little more closed than now". Where the
# fingers stopped at 0.72 on the cube (0.5 in the demos' firm grasp) that copy was a fixed point:
# no squeeze, the arm holding the cube 3-4 cm up until time ran out (6 of the 14 failures in 30
# episodes of the 56% run; 2 of 13 in the same 30 seeds after). At 10/s the recorded close is the
# expert's own 0.6 s one. Insertion's SO-101 (5 joints, then the gripper) gets the same.
TASK_SPEED: dict[str, float | list[float]] = {"lift": 0.5, "insertion": [1.0] * 5 + [10.0],
                                              "transfer_cube": [1.0] * 6 + [10.0]}


@dataclass
class Recipe:
    task: str
    policy: str
    steps: int
    preset: str = "cpu"
    demos: int = 50  # scripted training demonstrations (`--demos` overrides every recipe's)
    cameras: tuple[str, ...] = ("top",)  # twin cameras recorded (and so seen by the policy)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    target: float = 0.0  # the success rate the issue asks for
    # Scale of the objects' random yaw (twin_params.yaw_randomization), recording and evaluation
    # alike: 1 the twin's full +-45 deg, 0 the ACT paper's sim distribution (sample_box_pose and
    # sample_insertion_pose vary positions only).
    yaw_randomization: float = 1.0


RECIPES: dict[str, Recipe] = {
    # The narrow `workspace` view shows the cube ~10 px wide at 96x128 (the full `top` view: ~4
    # px, where the 72x96 ACT input could not place the grasp: 0/50, every miss a few px off).
    # The paper's position-only cube. With the twin's +-45 deg of yaw the wrist turned the
    # fingers 45 deg off the cube's faces in most failures (the cube ~10 px wide at 72x96, and
    # the face-aligned grasp jumps by 90 deg where the yaw crosses +-45): the fingers closed on
    # the corners (reading ~0.72, the demos' firm grasp 0.5) and the policy, in a state no demo
    # had, stalled - 62% after 12000 steps. Position-only: 19/20 on every snapshot from step 1000.
    "act_transfer_cube": Recipe("transfer_cube", "act", 4000, model=ACT_MODEL, cameras=("workspace",),
                                rollout={"blend": "ensemble", "ensemble_m": 0.01}, target=0.9,
                                yaw_randomization=0.0),
    # The SO-101's wrist camera sees the peg and the socket large from the home pose and keeps
    # them in view through the grasp and the approach (in `top` the 2 cm peg is ~3 px at 72x96).
    "act_insertion": Recipe("insertion", "act", 8000, model=ACT_MODEL, cameras=("wrist",),
                            rollout={"blend": "ensemble", "ensemble_m": 0.01}, target=0.5),
    # Diffusion Policy executes 8 actions of each 16-step prediction, then asks again. Lift uses
    # the checkpoint recipe of the sampling frontier (docs/policies.md: 84-92% at every DDIM step
    # count): the tiny U-Net, 100 demos, 4000 steps; the 64/128/256 U-Net at 1600 steps got 68%.
    "diffusion_lift": Recipe("lift", "diffusion", 4000, preset="tiny", demos=100,
                             model=DIFFUSION_TINY_MODEL, train=DIFFUSION_TINY_TRAIN,
                             rollout={"blend": "switch", "request_threshold": 0}, target=0.8),
    # The same recipe through ACT's view and data: the `workspace` camera fed at ACT's 72x96
    # (at the tiny preset's 48x64 the cube would be ~5 px, where ACT through `top` got 0/50).
    "diffusion_transfer_cube": Recipe("transfer_cube", "diffusion", 3000, preset="tiny",
                                      cameras=("workspace",),
                                      model={**DIFFUSION_TINY_MODEL, "image_size": [72, 96]},
                                      train=DIFFUSION_TINY_TRAIN,
                                      rollout={"blend": "switch", "request_threshold": 0}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench_learning")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"Comma separated: {', '.join(RECIPES)}.")
    parser.add_argument("--tasks", default=None, help="Only the recipes of these tasks (comma separated).")
    parser.add_argument("--demos", type=int, default=None,
                        help="Training demonstrations per recipe (default: the recipe's, 50 or 100).")
    parser.add_argument("--val-demos", type=int, default=5, help="Extra demonstrations for the validation loss.")
    parser.add_argument("--steps", type=int, default=None, help="Training steps (default: the recipe's).")
    parser.add_argument("--snapshots", type=int, default=8, help="Snapshots evaluated along each run.")
    parser.add_argument("--snapshot-episodes", type=int, default=20, help="Episodes per snapshot.")
    parser.add_argument("--episodes", type=int, default=50, help="Held-out episodes for the chosen snapshot.")
    parser.add_argument("--raw", action="store_true", help="Also evaluate every snapshot's raw (non-EMA) weights.")
    parser.add_argument("--preset", default=None, help="Override the recipes' preset (tiny for a smoke run).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (the machine is the run's alone).")
    parser.add_argument("--workers", type=int, default=2, help="Evaluation worker processes (one torch thread each; a single worker gets 2 threads, 10x slower on a busy machine).")
    parser.add_argument("--reuse", action="store_true", help="Keep finished recordings and runs.")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny everything (2 demos, 20 steps, 2 episodes, tiny preset, lift).")
    args = parser.parse_args()
    if args.smoke:
        args.demos, args.val_demos, args.steps, args.snapshots = 2, 1, 20, 2
        args.snapshot_episodes, args.episodes, args.preset = 2, 2, "tiny"
        if args.recipes == parser.get_default("recipes") and args.tasks is None:
            args.recipes = "diffusion_lift"
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")
    if args.tasks:
        tasks = set(args.tasks.split(","))
        names = [n for n in names if RECIPES[n].task in tasks]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": _machine(),
                              "settings": {k: v for k, v in vars(args).items()}, "recipes": {}}
    for name in names:
        result["recipes"][name] = run_recipe(name, RECIPES[name], args, out)
        (out / "learning.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        write_index(out / "learning.html", result)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    (out / "learning.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_index(out / "learning.html", result)
    print(json.dumps(result, indent=2, default=str))


def run_recipe(name: str, recipe: Recipe, args, out: Path) -> dict[str, Any]:
    from tether.app.eval.config import EvalConfig
    from tether.app.eval.runner import evaluate
    from tether.app.eval.selection import Scored
    from tether.app.eval.sweep import sweep
    from tether.policies.trainer import TrainConfig, train

    twin = twin_overrides(recipe)
    demos = args.demos or recipe.demos
    dataset = record(recipe, demos + args.val_demos,
                     out / "data" / store_name(recipe, demos), args.reuse)
    steps = args.steps or recipe.steps
    run_dir = out / name / "run"
    train_s = None
    done = _trained_steps(run_dir) if args.reuse else None
    if done is None or done < steps:
        config = TrainConfig(
            dataset=str(dataset), policy=recipe.policy, preset=args.preset or recipe.preset,
            out=str(run_dir), steps=steps, threads=args.threads, model=dict(recipe.model),
            keep_every=max(1, steps // max(1, args.snapshots)), val_holdout=args.val_demos,
            save_every=max(1, steps // max(1, args.snapshots)), progress=True,
            log_every=max(1, min(50, steps // 20)), **recipe.train)
        t0 = time.time()
        # --reuse continues a run that was stopped (Ctrl-C, SIGTERM) instead of starting again
        train(config, resume=done is not None, overwrite=done is None)
        train_s = time.time() - t0 if done is None else None  # resumed: from the log's times
    base = EvalConfig(task=recipe.task, episodes=args.snapshot_episodes, workers=args.workers,
                      seed=200_000, out=str(out / name / "sweep"), videos=0, robot=twin,
                      rollout=dict(recipe.rollout))
    swept = sweep(run_dir, base, show_progress=False, weights=("ema", "raw") if args.raw else ("ema",),
                  only_snapshots=True)
    chosen = next(c for c in swept["checkpoints"] if c["best"])
    final_ckpt = chosen["checkpoint"]
    if chosen["weights"] == "raw":
        from tether.app.eval.sweep import raw_view

        final_ckpt = str(raw_view(Path(final_ckpt), out / name / "final_raw"))
    final = evaluate(EvalConfig(task=recipe.task, episodes=args.episodes, workers=args.workers,
                                seed=100_000, out=str(out / name / "report"), videos=2, robot=twin,
                                checkpoint=final_ckpt, rollout=dict(recipe.rollout)),
                     show_progress=False)
    times = _train_times(run_dir)
    curve = []
    for c in swept["checkpoints"]:
        s = Scored.from_row(c)
        curve.append({"step": c["step"], "weights": c["weights"], "train_s": times.get(c["step"]),
                      "success_rate": c["success_rate"], "successes": c["successes"],
                      "episodes": c["episodes"], "ci95": list(s.ci95()),
                      "val_loss": _at_step(run_dir, c["step"], "val_loss")})
    return {
        "task": recipe.task, "policy": recipe.policy, "preset": args.preset or recipe.preset,
        "model": recipe.model, "train": {**recipe.train, "steps": steps, "threads": args.threads},
        "rollout": recipe.rollout, "cameras": list(recipe.cameras), "demos": demos, "val_demos": args.val_demos,
        "max_velocity": TASK_SPEED[recipe.task], "yaw_randomization": recipe.yaw_randomization,
        "target": recipe.target,
        "train_s": train_s if train_s is not None else times.get(steps),
        "curve": curve, "selection": swept["selection"], "neighbour_spread": swept["neighbour_spread"],
        "chosen": {"checkpoint": chosen["checkpoint"], "weights": chosen["weights"], "step": chosen["step"]},
        "success_rate": final["success_rate"], "success_ci95": final["success_ci95"],
        "eval_episodes": final["episodes"], "eval_seeds_from": 100_000,
        "inference_ms": {k: final["inference_ms"].get(k) for k in ("p50", "p99")},
        "report": str(out / name / "report" / "report.html"),
        "selection_report": str(out / name / "sweep" / "selection.html"),
    }


def store_name(recipe: Recipe, demos: int) -> str:
    """The demonstrations' store, named by everything that shapes them (task, cameras, count,
    speed limit, yaw distribution), so `--reuse` never trains a recipe on demos recorded under
    other settings."""
    speed = TASK_SPEED[recipe.task]
    limit = "-".join(f"{v:g}" for v in speed) if isinstance(speed, list) else f"{speed:g}"
    return f"{recipe.task}_{'_'.join(recipe.cameras)}_{demos}_v{limit}_yaw{recipe.yaw_randomization:g}.zarr"


def demo_config(recipe: Recipe, **fields: Any):
    """The DemoConfig of the recipe's speed limit and yaw distribution (recording, evaluation)."""
    from tether.app.eval.demo import DemoConfig

    return DemoConfig(task=recipe.task, max_velocity=TASK_SPEED[recipe.task],
                      yaw_randomization=recipe.yaw_randomization, **fields)


def twin_overrides(recipe: Recipe) -> list[str]:
    """The twin settings the recipe's demonstrations were recorded under (speed limit, object
    yaw), for every evaluation of a policy trained on them."""
    return demo_config(recipe).task_overrides()


def record(recipe: Recipe, demos: int, path: Path, reuse: bool) -> Path:
    """Scripted demonstrations at 10 Hz, the recipe's cameras at 96x128, its task's speed limit
    and its object yaw distribution."""
    from rich.console import Console

    from tether.app.eval.demo import collect
    from tether.data.store import EpisodeStore
    from tether.robot.twin.render import configure_backend

    configure_backend()
    if reuse and path.is_dir():
        with EpisodeStore.open(path, "r") as store:
            if store.n_episodes == demos:
                return path
    path.parent.mkdir(parents=True, exist_ok=True)
    config = demo_config(recipe, demos=demos, camera_height=96, camera_width=128, fps=10.0,
                         cameras=list(recipe.cameras))
    collect(config, path, Console(stderr=True))
    return path


def _trained_steps(run_dir: Path) -> int | None:
    """The step of the run's last checkpoint (None without one): a stopped run saved one too."""
    state = run_dir / "checkpoints" / "last" / "train_state.json"
    return int(json.loads(state.read_text())["step"]) if state.is_file() else None


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _train_times(run_dir: Path) -> dict[int, float]:
    """Seconds of training at each logged step, from the first log row (its own steps added back
    at the run's mean rate), so snapshots can be placed on a time axis."""
    rows = [r for r in _rows(run_dir) if "loss" in r and "time" in r]
    if not rows:
        return {}
    first = rows[0]
    t0 = first["time"] - first["step"] / max(first.get("it_s") or 1.0, 1e-9)
    return {int(r["step"]): r["time"] - t0 for r in rows}


def _at_step(run_dir: Path, step: int, key: str) -> float | None:
    for row in _rows(run_dir):
        if row.get("step") == step and key in row:
            return row[key]
    return None


def _machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_start": list(os.getloadavg())}


def write_index(path: Path, result: dict[str, Any]) -> None:
    """learning.html: a table of the recipes and, per recipe, success against training minutes."""
    rows, charts = [], []
    for name, r in result["recipes"].items():
        low, high = r["success_ci95"]
        rel = os.path.relpath(r["report"], path.parent)
        sel = os.path.relpath(r["selection_report"], path.parent)
        minutes = (r["train_s"] or 0) / 60
        rows.append(f"<tr><td>{name}</td><td>{r['demos']}</td><td>{r['train']['steps']}</td>"
                    f"<td>{minutes:.0f} min</td><td>step {r['chosen']['step']} {r['chosen']['weights']}"
                    f"</td><td><b>{r['success_rate']:.0%}</b> ({low:.0%}-{high:.0%}) of "
                    f"{r['eval_episodes']}</td><td>{r['target']:.0%}</td><td><a href='{rel}'>report</a> "
                    f"<a href='{sel}'>selection</a></td></tr>")
        charts.append(f"<h3>{name}</h3>" + _time_svg(r["curve"]))
    page = ("<!doctype html><meta charset='utf-8'><title>tether learning results</title>"
            "<body style='font-family:sans-serif'><h1>Learning results on the twin</h1>"
            f"<p>{result['date']}, {result['machine'].get('cpus')} CPUs, load average at start "
            f"{result['machine'].get('load_average_start')}</p><table border='1' cellpadding='3'>"
            "<tr><th>recipe</th><th>demos</th><th>steps</th><th>training</th><th>chosen</th>"
            "<th>success (95% CI)</th><th>target</th><th></th></tr>" + "".join(rows) + "</table>"
            "<h2>success of the snapshots against training time</h2>" + "".join(charts) + "</body>\n")
    path.write_text(page)


def _time_svg(curve: list[dict[str, Any]]) -> str:
    w, h, pad = 560, 220, 40
    pts = sorted((c for c in curve if c["train_s"] is not None and c["weights"] == "ema"),
                 key=lambda c: c["train_s"])
    if not pts:
        return "<p>no snapshots</p>"
    t_max = max(c["train_s"] for c in pts) or 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        return pad + (w - 2 * pad) * t / t_max, h - pad - (h - 2 * pad) * v

    parts = [f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='black'/>",
             f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{h - pad}' stroke='black'/>",
             f"<text x='{w / 2}' y='{h - 6}' text-anchor='middle'>training minutes (0-{t_max / 60:.0f})</text>",
             f"<text x='4' y='{pad - 10}'>success (EMA, 95% CI)</text>"]
    line = " ".join("{:.1f},{:.1f}".format(*xy(c["train_s"], c["success_rate"])) for c in pts)
    parts.append(f"<polyline points='{line}' fill='none' stroke='#1f77b4'/>")
    for c in pts:
        x, y = xy(c["train_s"], c["success_rate"])
        _, y_lo = xy(0, c["ci95"][0])
        _, y_hi = xy(0, c["ci95"][1])
        parts.append(f"<line x1='{x:.1f}' y1='{y_lo:.1f}' x2='{x:.1f}' y2='{y_hi:.1f}' stroke='#1f77b4' "
                     f"stroke-opacity='0.4'/><circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='#1f77b4'>"
                     f"<title>step {c['step']}: {c['successes']}/{c['episodes']}</title></circle>")
    for v in (0.0, 0.5, 1.0):
        _, y = xy(0, v)
        parts.append(f"<text x='{pad - 4}' y='{y + 4:.1f}' text-anchor='end' font-size='11'>{v:.0%}</text>")
    return f"<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>{''.join(parts)}</svg>"


if __name__ == "__main__":
    main()
