"""Inference engines side by side (issue 17): latency of ACT and diffusion per engine, JSON lines.

    .venv/bin/python benchmarks/engines.py                        # everything, 2 threads
    .venv/bin/python benchmarks/engines.py --models act --engines eager/fp32,openvino/bf16
    .venv/bin/python benchmarks/engines.py --compile              # also torch.compile (minutes)
    .venv/bin/python benchmarks/engines.py --smoke                # tiny models: checks it runs

Models (random weights, seed 0, the shapes LeRobot's defaults use): ACT paper size (ResNet-18,
dim 512, 4+1 layers, chunk 100, 14-dim, frozen BatchNorm folded as `load_policy` does) at
240x320 and 480x640, called through `Policy.predict_chunk` (what the server runs, minus the
transport: normalization, the network, unnormalization); Diffusion Policy with the paper U-Net
(512/1024/2048, 252 M parameters) at 96x96: one denoising step (the denoiser alone, what runs
per step) and a 10-step and 3-step DDIM chunk through `predict_chunk` (vision encoder once, then
the steps).

Every engine is built from the same weights with `tether.policies.engines.accelerate` and timed
alternately: each round runs every engine `--per-round` times before the next round starts, so
a change of load hits all engines alike. One JSON line per (item, engine): p50/p90 ms, process
CPU time over wall time (2 threads busy ~ 2.0; far lower means the machine was shared), the
load average, the build time and the largest |output - eager fp32| on the same input. Figures
are only comparable within one run; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import datetime
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

DEFAULT_ENGINES = "eager/fp32,eager/bf16,onnx/fp32,openvino/fp32,openvino/bf16"
STATE_DIM = ACTION_DIM = 14


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="act,diffusion", help="act, diffusion (comma separated)")
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help="ENGINE/PRECISION, comma separated")
    parser.add_argument("--compile", action="store_true", help="also compile/fp32 (torch.compile)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny models, 1 round: checks the script")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    engines = [tuple(e.split("/")) for e in args.engines.split(",") if e]
    if args.compile:
        engines.append(("compile", "fp32"))
    if args.smoke:
        args.rounds, args.per_round = 1, 2
    common = {"threads": args.threads, "torch": torch.__version__, "openvino": _version("openvino"),
              "onnxruntime": _version("onnxruntime"), "date": datetime.date.today().isoformat(),
              "smoke": args.smoke}
    models = [m.strip() for m in args.models.split(",")]
    if "act" in models:
        for h, w in ((48, 64),) if args.smoke else ((240, 320), (480, 640)):
            bench_act(h, w, engines, args, common)
    if "diffusion" in models:
        bench_diffusion(engines, args, common)


# -- models -----------------------------------------------------------------------------------------


def _normalizer(mode: str):
    from tether.policies.normalizer import Normalizer

    stats = {k: {"min": -np.ones(d), "max": np.ones(d), "mean": np.zeros(d), "std": np.ones(d)}
             for k, d in (("state", STATE_DIM), ("action", ACTION_DIM))}
    return Normalizer.from_stats(stats, {"state": mode, "action": mode})


def _observation(h: int, w: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"state": rng.normal(size=STATE_DIM).astype(np.float32),
            "image.top": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}


def act_policy(h: int, w: int, smoke: bool):
    """ACT as `load_policy` serves it (BatchNorm folded, channels-last trunk)."""
    import torch

    from tether.policies.act import ACTConfig, ACTModel
    from tether.policies.checkpoint import optimize_for_inference
    from tether.policies.presets import get_preset
    from tether.policies.torch_policy import ACTPolicy, make_spec

    cfg = get_preset("act", "tiny" if smoke else "default")["model"]
    cfg.pop("chunk_seconds")
    cfg.pop("image_size", None)
    torch.manual_seed(0)
    model = ACTModel(ACTConfig(state_dim=STATE_DIM, action_dim=ACTION_DIM, cameras=["image.top"],
                               chunk_size=100, vision_norm="frozen_batch", **cfg)).eval()
    norm = _normalizer("mean_std")
    spec = make_spec("act", STATE_DIM, {"image.top": [h, w, 3]}, ACTION_DIM, 100, 50.0, norm)
    return ACTPolicy(optimize_for_inference(model), norm, spec)


def diffusion_policy(smoke: bool):
    """Diffusion Policy with the paper U-Net (`full` preset) at 96x96."""
    import torch

    from tether.policies.diffusion import DiffusionConfig, DiffusionModel
    from tether.policies.presets import get_preset
    from tether.policies.torch_policy import DiffusionPolicy, make_spec

    cfg = get_preset("diffusion", "tiny" if smoke else "full")["model"]
    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(state_dim=STATE_DIM, action_dim=ACTION_DIM,
                                           cameras=["image.top"], **cfg)).eval()
    norm = _normalizer("min_max")
    spec = make_spec("diffusion", STATE_DIM, {"image.top": [96, 96, 3]}, ACTION_DIM,
                     model.config.n_action_steps, 10.0, norm)
    return DiffusionPolicy(model, norm, spec)


# -- benchmarks -------------------------------------------------------------------------------------


def bench_act(h: int, w: int, engines, args, common) -> None:
    base = act_policy(h, w, args.smoke)
    obs = _observation(h, w)
    built = _build(base, engines)
    reference = base.predict_chunk(obs)
    calls = {name: (lambda p=p: p.predict_chunk(obs)) for name, (p, _) in built.items()}
    diffs = {name: float(np.abs(p.predict_chunk(obs) - reference).max()) for name, (p, _) in built.items()}
    _report(f"act_{h}x{w}", "one ACT call (predict_chunk: normalize, network, unnormalize)",
            calls, diffs, built, args, common)


def bench_diffusion(engines, args, common) -> None:
    import torch

    base = diffusion_policy(args.smoke)
    obs = _observation(96, 96)
    built = _build(base, engines)
    c = base.model.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, c.horizon, c.action_dim, generator=gen)
    t = torch.tensor([c.num_train_steps // 2])
    feats = torch.randn(1, c.obs_horizon, base.model.obs_feature_dim, generator=gen)

    def step(policy) -> torch.Tensor:
        with torch.inference_mode():
            return policy.model._denoise(x, t, feats)

    reference = step(base)
    _report("diffusion_step", "one denoising step of the full U-Net (the denoiser alone)",
            {n: (lambda p=p: step(p)) for n, (p, _) in built.items()},
            {n: float((step(p) - reference).abs().max()) for n, (p, _) in built.items()},
            built, args, common)
    for steps in (10, 3):
        def chunk(policy, s=steps) -> np.ndarray:
            return policy.predict_chunk(obs, steps=s)

        def first_chunk(policy, s=steps) -> np.ndarray:
            policy.reset()  # the same generator state for every engine
            return policy.predict_chunk(obs, steps=s)

        ref = first_chunk(base)
        _report(f"diffusion_chunk_{steps}", f"a {steps}-step DDIM chunk at 96x96 (predict_chunk: "
                "vision once, then the steps)",
                {n: (lambda p=p: chunk(p)) for n, (p, _) in built.items()},
                {n: float(np.abs(first_chunk(p) - ref).max()) for n, (p, _) in built.items()},
                built, args, common)


def _build(base, engines) -> dict[str, tuple]:
    """name -> (policy, build seconds). Engines that fell back to eager are left out (logged).

    Exports go to a temporary cache, so an engine's second precision reuses its first export
    (its build_s is then the compile time only)."""
    from tether.policies.engines import accelerate

    cache = Path(tempfile.mkdtemp(prefix="tether-bench-engines-"))
    atexit.register(shutil.rmtree, cache, True)
    out = {}
    for engine, precision in engines:
        t0 = time.perf_counter()
        policy = base if (engine, precision) == ("eager", "fp32") else accelerate(
            copy.copy(base), engine, precision, cache_dir=cache, cache_tag=str(id(base)))
        name = f"{engine}/{precision}"
        ran = str(getattr(policy, "engine", "eager/fp32"))
        if name != "eager/fp32" and ran != name:
            print(json.dumps({"bench": "engines", "engine": name, "skipped": f"ran as {ran}",
                              "why": getattr(policy.engine, "fallbacks", {})}), flush=True)
            continue
        out[name] = (policy, round(time.perf_counter() - t0, 1))
    return out


def _report(item: str, what: str, calls: dict[str, Callable], diffs: dict[str, float], built,
            args, common) -> None:
    load0 = os.getloadavg()[0]
    wall = {n: [] for n in calls}
    cpu = {n: [] for n in calls}
    for fn in calls.values():  # warm-up: first calls allocate and (compile) specialize
        fn()
        fn()
    for _ in range(args.rounds):
        for name, fn in calls.items():
            for _ in range(args.per_round):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
    load1 = os.getloadavg()[0]
    eager = float(np.percentile(wall["eager/fp32"], 50)) if "eager/fp32" in wall else None
    for name in calls:
        p50 = float(np.percentile(wall[name], 50))
        print(json.dumps({
            "bench": "engines", "item": item, "what": what, "engine": name,
            "p50_ms": round(p50, 2), "p90_ms": round(float(np.percentile(wall[name], 90)), 2),
            "n": len(wall[name]), "speedup_vs_eager": round(eager / p50, 2) if eager else None,
            "max_abs_diff_vs_eager": diffs[name],
            "cpu_per_wall": round(sum(cpu[name]) / sum(wall[name]), 2),
            "loadavg": [round(load0, 2), round(load1, 2)], "build_s": built[name][1], **common,
        }), flush=True)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
