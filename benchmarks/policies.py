"""Policy speed on this CPU: inference latency, training rate, parameter counts (one JSON object).

    python benchmarks/policies.py                # latency + training rate (~3 min)
    python benchmarks/policies.py --lift         # also: train ACT on twin `lift` to >= 80% success
    python benchmarks/policies.py --quick        # fewer repeats

Latency is batch 1 through the `Policy` interface (what the server runs), 2 torch threads.
Every optimized number is quoted against a baseline measured in the same run on the same
weights: ACT in plain eager mode (BatchNorm unfused, NCHW), diffusion with PyTorch's native Conv1d /
ConvTranspose1d / GroupNorm instead of the GEMM-based batch-1 kernels. LeRobot 0.4.4 figures
measured earlier on this machine (quoted in issue 6) are included for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

LEROBOT = {"act_240x320_ms": 83.0, "act_480x640_ms": 280.0, "diffusion_full_10_steps_ms": 1800.0,
           "diffusion_full_100_steps_ms": 17800.0, "diffusion_full_step_ms": 180.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lift", action="store_true", help="train ACT on twin lift to >= 80%%")
    parser.add_argument("--lift-episodes", type=int, default=100)
    parser.add_argument("--lift-steps", type=int, default=5000)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 15
    out: dict = {"threads": args.threads, "torch": torch.__version__, "lerobot_reference": LEROBOT,
                 "load_average": os.getloadavg()[0]}
    out["act"] = bench_act(repeats)
    out["diffusion"] = bench_diffusion(repeats)
    out["diffusion_full_unet"] = bench_full_unet(repeats)
    out["training"] = bench_training(3 if args.quick else 8)
    if args.lift:
        out["lift"] = bench_lift(args.lift_episodes, args.lift_steps, args.threads)
    out["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


# -- helpers ----------------------------------------------------------------------------------------


def _normalizer(state_dim: int, action_dim: int, mode: str):
    from tether.policies.normalizer import Normalizer

    stats = {k: {"min": -np.ones(d), "max": np.ones(d), "mean": np.zeros(d), "std": np.ones(d)}
             for k, d in (("state", state_dim), ("action", action_dim))}
    return Normalizer.from_stats(stats, {"state": mode, "action": mode})


def _latency(fn, repeats: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2),
            "p90_ms": round(float(np.percentile(times, 90)), 2), "n": repeats}


def _params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _native(model):
    """The baseline for diffusion: since the batch-1 kernels were removed (the inference
    engines in tether.policies.engines replace them) the model uses PyTorch's layers already."""
    return model


# -- ACT --------------------------------------------------------------------------------------------


def bench_act(repeats: int) -> dict:
    """LeRobot's default ACT: ResNet-18 (frozen BN), dim 512, 4+1 layers, chunk 100, 14-dim."""
    import torch

    from tether.policies.act import ACTConfig, ACTModel
    from tether.policies.checkpoint import optimize_for_inference
    from tether.policies.torch_policy import ACTPolicy, make_spec

    results = {}
    for h, w in ((240, 320), (480, 640)):
        torch.manual_seed(0)
        cfg = ACTConfig(state_dim=14, action_dim=14, cameras=["image.top"], chunk_size=100,
                        vision_norm="frozen_batch")
        model = ACTModel(cfg).eval()
        norm = _normalizer(14, 14, "mean_std")
        spec = make_spec("act", 14, {"image.top": [h, w, 3]}, 14, 100, 50.0, norm)
        rng = np.random.default_rng(0)
        obs = {"state": rng.normal(size=14).astype(np.float32),
               "image.top": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
        baseline = ACTPolicy(model, norm, spec)
        base = _latency(lambda p=baseline, o=obs: p.predict_chunk(o), repeats)
        import copy

        fused_model = optimize_for_inference(copy.deepcopy(model))  # what load_policy does
        fast = ACTPolicy(fused_model, norm, spec)
        opt = _latency(lambda p=fast, o=obs: p.predict_chunk(o), repeats)
        diff = float(np.abs(fast.predict_chunk(obs) - baseline.predict_chunk(obs)).max())
        key = f"{h}x{w}"
        results[key] = {**opt, "baseline_eager": base,
                        "speedup_vs_baseline": round(base["p50_ms"] / opt["p50_ms"], 2),
                        "vs_lerobot": round(opt["p50_ms"] / LEROBOT[f"act_{key}_ms"], 2),
                        "max_abs_diff_vs_baseline": diff}
    results["params"] = _params(model)
    return results


# -- diffusion --------------------------------------------------------------------------------------


def _diffusion_policy(preset: str):
    import torch

    from tether.policies.diffusion import DiffusionConfig, DiffusionModel
    from tether.policies.presets import get_preset
    from tether.policies.torch_policy import DiffusionPolicy, make_spec

    torch.manual_seed(0)
    model_cfg = get_preset("diffusion", preset)["model"]
    cfg = DiffusionConfig(state_dim=14, action_dim=14, cameras=["image.top"], **model_cfg)
    model = DiffusionModel(cfg).eval()
    norm = _normalizer(14, 14, "min_max")
    spec = make_spec("diffusion", 14, {"image.top": [96, 96, 3]}, 14, cfg.n_action_steps, 50.0, norm)
    return model, norm, spec, DiffusionPolicy


def bench_diffusion(repeats: int) -> dict:
    """The default (CPU) preset at 96x96 with 100, 10 and 3 DDIM steps."""
    model, norm, spec, cls = _diffusion_policy("default")
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=14).astype(np.float32),
           "image.top": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)}
    fast, native = cls(model, norm, spec), cls(_native(model), norm, spec)
    out = {"preset": "default", "params": _params(model),
           "down_dims": list(model.config.down_dims)}
    for steps in (100, 10, 3):
        n = max(3, repeats // 3) if steps == 100 else repeats
        opt = _latency(lambda s=steps: fast.predict_chunk(obs, steps=s), n)
        base = _latency(lambda s=steps: native.predict_chunk(obs, steps=s), n)
        out[f"steps_{steps}"] = {**opt, "baseline_native_layers": base,
                                 "speedup_vs_baseline": round(base["p50_ms"] / opt["p50_ms"], 2)}
    return out


def bench_full_unet(repeats: int) -> dict:
    """Paper-size U-Net (512/1024/2048): time per denoising step and per 10-step chunk."""
    import torch

    model, norm, spec, cls = _diffusion_policy("full")
    c = model.config
    feats = torch.randn(1, c.obs_horizon, model.obs_feature_dim)
    x = torch.randn(1, c.horizon, c.action_dim)
    t = torch.tensor([50])
    native = _native(model)
    with torch.inference_mode():
        opt = _latency(lambda: model._denoise(x, t, feats), repeats)
        base = _latency(lambda: native._denoise(x, t, feats), max(3, repeats // 2))
        diff = float((model._denoise(x, t, feats) - native._denoise(x, t, feats)).abs().max())
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=14).astype(np.float32),
           "image.top": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)}
    policy = cls(model, norm, spec)
    chunk10 = _latency(lambda: policy.predict_chunk(obs, steps=10), max(3, repeats // 3), warmup=1)
    return {"params": _params(model), "denoiser_params": _params(model.denoiser),
            "step": {**opt, "baseline_native_layers": base,
                     "speedup_vs_baseline": round(base["p50_ms"] / opt["p50_ms"], 2),
                     "fraction_of_lerobot_step": round(opt["p50_ms"] / LEROBOT["diffusion_full_step_ms"], 3),
                     "max_abs_diff_vs_baseline": diff},
            "chunk_10_steps": {**chunk10, "vs_lerobot": round(
                chunk10["p50_ms"] / LEROBOT["diffusion_full_10_steps_ms"], 3)}}


# -- training ---------------------------------------------------------------------------------------


def bench_training(iters: int) -> dict:
    """Optimizer steps per second on synthetic batches shaped like the twin data (60x80 camera)."""
    import torch

    from tether.policies.act import ACTConfig, ACTModel
    from tether.policies.diffusion import DiffusionConfig, DiffusionModel
    from tether.policies.presets import get_preset

    out = {}
    cases = [("act", "cpu", 32, 30), ("act", "default", 8, 100), ("diffusion", "default", 64, 16),
             ("diffusion", "tiny", 32, 16)]
    for policy, preset, batch, horizon in cases:
        p = get_preset(policy, preset)
        mcfg = dict(p["model"])
        mcfg.pop("chunk_seconds", None)
        torch.manual_seed(0)
        if policy == "act":
            model = ACTModel(ACTConfig(state_dim=6, action_dim=6, cameras=["image.top"], chunk_size=horizon,
                                       **mcfg))
            to = 1
        else:
            model = DiffusionModel(DiffusionConfig(state_dim=6, action_dim=6, cameras=["image.top"], **mcfg))
            to = 2
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        b = {"state": torch.randn(batch, to, 6),
             "image.top": torch.randint(0, 256, (batch, to, 3, 60, 80), dtype=torch.uint8),
             "action": torch.randn(batch, horizon, 6),
             "action_is_pad": torch.zeros(batch, horizon, dtype=torch.bool)}

        def step(model=model, opt=opt, b=b):
            loss, _ = model(b)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        rate = iters / (time.perf_counter() - t0)
        out[f"{policy}_{preset}"] = {"it_s": round(rate, 2), "batch": batch, "params": _params(model),
                                     "samples_s": round(rate * batch, 1)}
    return out


# -- ACT on twin lift to >= 80% success ------------------------------------------------------------


def bench_lift(episodes: int, steps: int, threads: int, eval_episodes: int = 50,
               workdir: str | None = None) -> dict:
    """Record scripted demos (60x80 camera), train the `cpu` ACT preset, evaluate 50 seeded
    held-out episodes with temporal ensembling. Returns times and the success rate."""
    import subprocess

    from tether.app.eval.runner import EvalConfig
    from tether.app.eval.worker import run_episodes
    from tether.policies.checkpoint import load_policy
    from tether.policies.trainer import TrainConfig, train
    from tether.robot.factory import make_robot

    work = Path(workdir or tempfile.mkdtemp(prefix="tether-lift-"))
    store = work / "lift.zarr"
    cam = ["twin_params.width=80", "twin_params.height=60"]
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "tether.cli", "record", "--robot", "twin:lift", "--teleop", "scripted",
           "--episodes", str(episodes), "--out", str(store), "--overwrite", "--seed", "0"]
    for c in cam:
        cmd += ["--set", c]
    subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    t_record = time.perf_counter() - t0
    t1 = time.perf_counter()
    run = train(TrainConfig(dataset=str(store), policy="act", preset="cpu", steps=steps,
                            out=str(work / "run"), threads=threads, progress=False),
                overwrite=True)  # a reused --workdir replaces its previous run
    t_train = time.perf_counter() - t1
    policy = load_policy(run)
    config = EvalConfig(task="lift", episodes=eval_episodes, seed=100_000, policy="in-process", videos=0)
    robot = make_robot("twin:lift", cam)
    t2 = time.perf_counter()
    with robot:
        records = list(run_episodes(robot, policy, config.seeds(), config))
    success = sum(r.success for r in records) / len(records)
    return {"demos": episodes, "train_steps": steps, "record_s": round(t_record, 1),
            "train_s": round(t_train, 1), "eval_s": round(time.perf_counter() - t2, 1),
            "eval_episodes": len(records), "success_rate": success, "run_dir": str(run)}


if __name__ == "__main__":
    main()
