"""Sampling-speed frontier and Streaming Diffusion Policy on the twin (one JSON object).

    python benchmarks/samplers.py frontier  --checkpoint CK --episodes 50 --out reports/samplers
    python benchmarks/samplers.py streaming --checkpoint CK --episodes 30 --out reports/samplers
    python benchmarks/samplers.py latency   --checkpoint CK --repeats 30     # quiet machine only

`frontier`: success (95% Wilson interval) at DDIM 1, 2, 3, 5, 10, 20, 100 and DPM-Solver++ 1,
2, 3, 5, 10 steps, on the same held-out seeds, executed as in the Diffusion Policy paper (the
8-action chunk runs open loop, then the policy replans: `--blend switch`, request threshold 0).
Writes the `tether eval --sweep-steps` report (table + plot) under OUT/frontier.

`streaming`: streaming (one network call per control step) against chunked DDIM at an equal
per-step latency budget (1 step per tick: replanning every tick, or temporal ensembling of a
chunk asked for every tick), and at about equal average compute (10 steps per 8-action chunk,
and 1 step per chunk), each without and with a push of the object mid-episode (`--push`,
default 3 cm after step 10 and after step 20; the grasp starts near step 30).

`latency`: per-request inference time of each setting through the Policy interface, settings
interleaved round-robin so a change of machine load hits all of them alike. Success rates do
not depend on load (evaluation is lockstep); latencies do: run `latency` on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

DDIM_STEPS = [1, 2, 3, 5, 10, 20, 100]
DPMPP_STEPS = [1, 2, 3, 5, 10]
# The recording speed of `tether demo`'s lift data: evaluate at the speed the demos were made at.
SPEED = ["safety.max_velocity=0.5"]
OPEN_LOOP = {"blend": "switch", "request_threshold": 0}  # run the whole chunk, then replan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["frontier", "streaming", "latency"])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--task", default="lift")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--out", default="reports/samplers")
    parser.add_argument("--push", default="10:0.03,20:0.03",
                        help="STEP:METERS pushes for the streaming comparison (comma-separated)")
    parser.add_argument("--ddim-steps", default=",".join(map(str, DDIM_STEPS)))
    parser.add_argument("--dpmpp-steps", default=",".join(map(str, DPMPP_STEPS)))
    parser.add_argument("--only", default="", help="streaming: variants whose name contains this")
    parser.add_argument("--repeats", type=int, default=30, help="latency: requests per setting")
    parser.add_argument("--threads", type=int, default=1, help="latency: torch threads")
    args = parser.parse_args()
    t0 = time.monotonic()
    if args.what == "frontier":
        result = frontier(args)
    elif args.what == "streaming":
        result = streaming(args)
    else:
        result = latency(args)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=1))


def _base(args, **changes):
    from tether.app.eval.config import EvalConfig

    config = EvalConfig(task=args.task, episodes=args.episodes, workers=args.workers, seed=args.seed,
                        checkpoint=args.checkpoint, videos=0, robot=list(SPEED), out=args.out)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def frontier(args) -> dict:
    from tether.app.eval.steps_sweep import sweep_steps

    rows = []
    from tether.app.eval.steps_sweep import parse_steps

    for sampler, steps in (("ddim", parse_steps(args.ddim_steps)), ("dpmpp", parse_steps(args.dpmpp_steps))):
        base = _base(args, out=str(Path(args.out) / "frontier" / sampler), rollout=dict(OPEN_LOOP))
        rows += sweep_steps(base, steps, [sampler], show_progress=False)["settings"]
    # One table and plot over both samplers, beside the per-sampler folders.
    from tether.app.eval.steps_sweep import machine, write_frontier_plot, write_sweep_html

    out = Path(args.out) / "frontier"
    data = {"task": args.task, "policy": args.checkpoint, "episodes": args.episodes,
            "first_seed": args.seed, "blend": "switch, replan after the whole chunk",
            "machine": machine(), "settings": rows}
    write_sweep_html(out / "report.html", data, write_frontier_plot(out / "plots" / "frontier.png", rows))
    (out / "steps_sweep.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


# name -> (sampler, steps, rollout settings[, model config changes: on a copy of the checkpoint])
STREAMING_VARIANTS = {
    "streaming (1 call/tick)": ("streaming", None, {"blend": "switch"}),
    "streaming + 7 lookahead, temporal ensembling": ("streaming", None, {"blend": "ensemble"},
                                                      {"stream_lookahead": 7}),
    "ddim 1 step, replan every tick": ("ddim", 1, {"blend": "switch", "request_threshold": 7}),
    "ddim 1 step, temporal ensembling": ("ddim", 1, {"blend": "ensemble"}),
    "ddim 1 step, chunk of 8": ("ddim", 1, dict(OPEN_LOOP)),
    "ddim 10 steps, chunk of 8": ("ddim", 10, dict(OPEN_LOOP)),
}


def streaming(args) -> dict:
    from tether.app.eval.records import load_records
    from tether.app.eval.runner import evaluate
    from tether.app.eval.steps_sweep import machine

    rows = []
    for name, (sampler, steps, rollout, *model) in STREAMING_VARIANTS.items():
        if args.only not in name:
            continue
        checkpoint = _with_model_config(args, name, model[0]) if model else args.checkpoint
        for push in (None, *args.push.split(",")):
            slug = name.split(" (")[0].replace(" ", "_").replace(",", "")
            tail = f"_push{push.replace(':', '_')}" if push else ""
            out = Path(args.out) / "streaming" / f"{slug}{tail}"
            config = _base(args, sampler=sampler, steps=steps, rollout=rollout, push=push, out=str(out),
                           checkpoint=checkpoint)
            summary = evaluate(config, show_progress=False)
            records = load_records(out / "episodes")
            ticks = sum(r.length for r in records)
            first = [r.first_success_step for r in records if r.first_success_step is not None]
            rows.append({
                "variant": name, "push": push, "success_rate": summary["success_rate"],
                "successes": summary["successes"], "episodes": summary["episodes"],
                "success_ci95": summary["success_ci95"],
                "first_success_step_median": sorted(first)[len(first) // 2] if first else None,
                "inference_ms_p50": summary["inference_ms"]["p50"],
                "inference_ms_p99": summary["inference_ms"]["p99"],
                "inference_ms_per_tick": sum(sum(r.inference_ms) for r in records) / max(ticks, 1),
                "requests_per_tick": sum(len(r.inference_ms) for r in records) / max(ticks, 1),
            })
    return {"task": args.task, "checkpoint": args.checkpoint, "episodes": args.episodes,
            "machine": machine(), "rows": rows,
            "note": "success is load-independent; latencies indicative (loaded machine)"}


def _with_model_config(args, name: str, changes: dict) -> str:
    """A copy of the checkpoint whose policy.json model config has `changes` (inference-only
    settings such as stream_lookahead; the weights are the same)."""
    import shutil

    from tether.policies.checkpoint import find_checkpoint

    src = find_checkpoint(args.checkpoint)
    dst = Path(args.out) / "checkpoints" / name.split(",")[0].replace(" ", "_").replace("+", "")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    meta = json.loads((dst / "policy.json").read_text())
    meta["model_config"].update(changes)
    (dst / "policy.json").write_text(json.dumps(meta, indent=2))
    return str(dst)


def latency(args) -> dict:
    import numpy as np
    import torch

    from tether.app.eval.steps_sweep import machine
    from tether.app.eval.worker import twin_overrides_for
    from tether.policies.checkpoint import load_policy
    from tether.robot.factory import make_robot

    torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint)
    robot = make_robot(f"twin:{args.task}", twin_overrides_for(policy.spec) + SPEED)
    with robot:
        arrays = robot.reset(args.seed).to_arrays()
    obs = {a.name: arrays[a.name] for a in policy.spec.observation}
    settings = [("ddim", n) for n in DDIM_STEPS] + [("dpmpp", n) for n in DPMPP_STEPS]
    streams = policy.model.config.streaming_fraction > 0
    times: dict[str, list[float]] = {f"{s} {n}": [] for s, n in settings}
    if streams:
        times["streaming"] = []
        times["streaming first call (fill)"] = []
        stream, fill = policy.fork(), policy.fork()
        stream.predict_chunk(obs, sampler="streaming")  # the fill; every later call is one step
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(args.repeats):  # round-robin: load changes hit every setting alike
        for sampler, n in settings:
            policy.predict_chunk(obs, steps=n, sampler=sampler)
            times[f"{sampler} {n}"].append(policy.last_inference_ms)
        if streams:
            stream.predict_chunk(obs, sampler="streaming")
            times["streaming"].append(stream.last_inference_ms)
            fill.reset()
            fill.predict_chunk(obs, sampler="streaming")
            times["streaming first call (fill)"].append(fill.last_inference_ms)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"checkpoint": args.checkpoint, "threads": args.threads, "repeats": args.repeats,
            "machine": machine(), "cpu_over_wall": round(cpu / wall, 2),
            "ms": {k: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))}
                   for k, v in times.items() if v}}


if __name__ == "__main__":
    sys.exit(main())
