"""Does the quality score do its job? Flag the bad takes of a mixed twin dataset, then train on
the kept takes and on everything, same steps and seeds, and compare twin success.

1. record `--good` scripted lift takes and `--bad` takes by an imperfect operator
   (tether.app.quality_mix: jitter, pauses, gripper chatter, another grasp), shuffled, at 10 Hz
   with a small top camera (48x64: what the mlp `tiny` preset looks at, cheap to decode);
2. rank the store with the quality score (no policy; and with `--base-demos N`, also with a base
   policy trained on N clean takes, for compatibility) and report precision/recall of the flags;
3. write the kept episodes to keep.txt (what `tether data quality --keep-out` writes) and train
   the same policy twice per `--seeds` entry: on the mixed store and on the kept episodes
   (`tether train --episodes-from keep.txt`), then evaluate both on the same held-out seeds.

Prints one JSON object (also written to OUT/result.json).

    .venv/bin/python benchmarks/quality_filter.py --out runs/qf --set model.vision_width=8 --seeds 0,1,2
    .venv/bin/python benchmarks/quality_filter.py --skip-train --good 30 --bad 20   # flags only, ~1 min

One training of 2000 steps takes ~5-15 min on one thread of a shared 2-core machine; run the
sets in parallel processes with `--reuse --sets mixed` and `--reuse --sets filtered`. Results
and what they mean: docs/data.md, "Quality score".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/quality_filter", help="Folder for the store, runs, result.")
    parser.add_argument("--good", type=int, default=60, help="Scripted takes.")
    parser.add_argument("--bad", type=int, default=40, help="Imperfect takes.")
    parser.add_argument("--styles", default="jitter,pause,chatter,other_grasp",
                        help="Imperfect styles, comma separated (in turn over the bad takes).")
    parser.add_argument("--jitter-rad", type=float, default=0.05, help="Jitter of the jitter takes (rad).")
    parser.add_argument("--pauses", type=int, default=2, help="Pauses per pause take.")
    parser.add_argument("--policy", default="mlp", help="Policy family to train.")
    parser.add_argument("--preset", default="tiny", help="Training preset.")
    parser.add_argument("--camera", default="48x64", help="Top camera HxW the takes are recorded at.")
    parser.add_argument("--steps", type=int, default=2000, help="Training steps (both runs).")
    parser.add_argument("--seeds", default="0", help="Training seeds, comma separated.")
    parser.add_argument("--eval-episodes", type=int, default=30, help="Held-out twin episodes per run.")
    parser.add_argument("--base-demos", type=int, default=0,
                        help="Also score with a base policy trained on this many clean takes.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine more threads oversubscribe).")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="TrainConfig override key=value (repeatable), e.g. model.vision_width=8.")
    parser.add_argument("--sets", default="mixed,filtered",
                        help="Which training sets to run (mixed, filtered; filtered_base after a "
                             "--base-demos run), e.g. one per process.")
    parser.add_argument("--reuse", action="store_true",
                        help="Reuse OUT/mix.zarr (and the base policy) from an earlier run.")
    parser.add_argument("--skip-train", action="store_true", help="Only record and score.")
    args = parser.parse_args()

    from tether.app.quality import keep_episodes, rank_store
    from tether.app.quality_mix import detection, mix_plan, record_mix
    from tether.data.quality import read_episode_list, write_episode_list
    from tether.data.store import EpisodeStore

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    timings: dict[str, float] = {}
    result: dict = {"config": vars(args)}

    t0 = time.monotonic()
    plan = mix_plan(args.good, args.bad, styles, seed=0)
    height, width = (int(v) for v in args.camera.split("x"))
    if args.reuse and (out / "mix.zarr").exists():
        from tether.app.quality_mix import MixResult

        with EpisodeStore.open(out / "mix.zarr", "r") as store:
            meta = [store.episode_metadata(e) for e in range(store.n_episodes)]
        mix = MixResult(out / "mix.zarr", [m["operator"].removeprefix("imperfect:") for m in meta],
                        [m.get("success") for m in meta])
    else:
        mix = record_mix(out / "mix.zarr", plan, fps=10.0, cameras=["top"], width=width,
                         height=height, seed=0,
                         operator_options={"jitter_rad": args.jitter_rad, "pauses": args.pauses})
    timings["record_s"] = time.monotonic() - t0
    result["takes"] = {"total": len(plan), "scripted": args.good, "imperfect": args.bad,
                       "take_success_rate": sum(bool(s) for s in mix.success) / len(mix.success)}

    t0 = time.monotonic()
    with EpisodeStore.open(mix.path, "r") as store:
        reports = rank_store(store)
    timings["score_s"] = time.monotonic() - t0
    flagged = [bool(q["flags"]) for q in reports]
    result["detection"] = detection(mix.truth, flagged)
    keep = keep_episodes(reports)
    keep_file = write_episode_list(out / "keep.txt", keep, "kept by the quality score (no base policy)")
    result["kept_episodes"] = len(keep)

    if args.base_demos:
        t0 = time.monotonic()
        base_store, base_run = out / "base.zarr", out / "base_run"
        if not (args.reuse and (base_run / "checkpoints").exists()):
            record_mix(base_store, ["scripted"] * args.base_demos, fps=10.0, cameras=["top"],
                       width=width, height=height, seed=50_000)
            base_run = _train(base_store, base_run, args, seed=0, episodes=None)
        with EpisodeStore.open(mix.path, "r") as store:
            with_base = rank_store(store, base_policy=base_run)
        flagged_b = [bool(q["flags"]) for q in with_base]
        result["detection_with_base_policy"] = detection(mix.truth, flagged_b)
        keep_base = keep_episodes(with_base)
        write_episode_list(out / "keep_base.txt", keep_base, "kept with the base policy")
        result["kept_episodes_with_base_policy"] = len(keep_base)
        timings["base_policy_s"] = time.monotonic() - t0

    if not args.skip_train:
        kept = read_episode_list(keep_file)
        runs = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            sets = [s.strip() for s in args.sets.split(",")]
            choices = [("mixed", None), ("filtered", kept)]
            if (out / "keep_base.txt").exists():
                choices.append(("filtered_base", read_episode_list(out / "keep_base.txt")))
            for name, episodes in choices:
                if name not in sets:
                    continue
                t0 = time.monotonic()
                run = _train(mix.path, out / f"{name}_seed{seed}", args, seed, episodes)
                t_train = time.monotonic() - t0
                rate = _evaluate(run, args.eval_episodes)
                runs.append({"set": name, "seed": seed, "episodes": len(episodes or plan),
                             "success_rate": rate, "train_s": round(t_train, 1)})
                print(json.dumps(runs[-1]), flush=True)
        result["runs"] = runs
        for name in ("mixed", "filtered", "filtered_base"):
            rates = [r["success_rate"] for r in runs if r["set"] == name]
            if rates:
                result[f"{name}_success_rate"] = sum(rates) / len(rates)
        result["eval"] = {"task": "lift", "episodes": args.eval_episodes, "seeds": "100000.."}
    result["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    suffix = "" if args.sets == "mixed,filtered" else "_" + args.sets.replace(",", "_")
    (out / f"result{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def _train(store: Path, run_dir: Path, args, seed: int, episodes):
    import shutil

    from tether.core.config import apply_overrides, from_dict
    from tether.policies.trainer import TrainConfig, train

    if run_dir.exists():
        shutil.rmtree(run_dir)
    data = {"dataset": str(store), "policy": args.policy, "preset": args.preset, "out": str(run_dir),
            "steps": args.steps, "seed": seed, "episodes": episodes, "threads": args.threads,
            "progress": False}
    return Path(train(from_dict(TrainConfig, apply_overrides(data, args.overrides))))


def _evaluate(run_dir: Path, episodes: int) -> float:
    from tether.app.eval.worker import make_twin_evaluator
    from tether.policies.checkpoint import load_policy

    return make_twin_evaluator("lift", episodes=episodes)(load_policy(run_dir))


if __name__ == "__main__":
    main()
