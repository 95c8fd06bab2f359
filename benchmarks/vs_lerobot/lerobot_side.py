#!/usr/bin/env python
"""LeRobot 0.4.4's side of the side-by-side: one item per process, JSON lines on stdout.

Run by `benchmarks/vs_lerobot.py` with the LeRobot venv's python (see lerobot_venv.py). Random
weights, nothing downloaded (`pretrained_backbone_weights=None`). Configurations are LeRobot's
defaults, which are the architectures tether's presets use: ACT = ResNet-18 (frozen BatchNorm),
dim 512, 8 heads, ff 3200, 4 encoder / 1 decoder / 4 VAE-encoder layers, latent 32, chunk 100;
Diffusion = U-Net 512/1024/2048, GroupNorm ResNet-18, 32 keypoints, obs 2, horizon 16, 8 actions,
crop 86x86 of 96x96 (tether's 0.9 center crop).

Inference goes through LeRobot's own pipeline, numpy uint8 in, unnormalized action chunk out:
`prepare_observation_for_inference` -> preprocessor -> policy -> postprocessor (for diffusion the
observation queues as `select_action` fills them, then `predict_action_chunk`). Training runs
LeRobot's own `lerobot.scripts.lerobot_train.train` on a LeRobotDataset it wrote itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from measure import (
    Window,
    dir_bytes,
    emit,
    latency,
    machine_busy_seconds,
    nparams,
    psnr,
    python_version,
    tree_cpu_seconds,
)

SIDE = "lerobot"
STATE_DIM = ACTION_DIM = 14
IMG = "observation.images.top"
STATE = "observation.state"

SIZES = {
    "full": {"diffusion_hw": (96, 96), "crop": (86, 86)},
    "tiny": {"diffusion_hw": (48, 64), "crop": (43, 58)},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--item", required=True, choices=["env", "act", "diffusion", "dataset", "train"])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hw", default="240x320")
    p.add_argument("--few-steps", type=int, default=4)
    p.add_argument("--ddpm-runs", type=int, default=5)
    p.add_argument("--frames", default="300x480x640")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples", type=int, default=3200)
    p.add_argument("--policy", choices=["act", "diffusion"], default="act")
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--train-warmup", type=int, default=2)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-workers", type=int, default=2)
    p.add_argument("--train-hw", default="240x320")
    p.add_argument("--train-frames", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sys.argv = sys.argv[:1]  # lerobot's config parser reads sys.argv; it must see none of ours
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.item == "env":
        env_info()
    elif a.item == "act":
        bench_act(a, hw(a.hw))
    elif a.item == "diffusion":
        bench_diffusion(a)
    elif a.item == "dataset":
        bench_dataset(a)
    else:
        bench_train(a)


def hw(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def env_info() -> None:
    import lerobot
    import torchcodec
    import torchvision

    emit(side=SIDE, bench="env", lerobot=lerobot.__version__, torch=torch.__version__,
         torchvision=torchvision.__version__, torchcodec=torchcodec.__version__,
         threads=torch.get_num_threads(), python=python_version(), cpus=os.cpu_count())


def features(image: tuple[int, int]):
    from lerobot.configs.types import FeatureType, PolicyFeature

    return ({IMG: PolicyFeature(type=FeatureType.VISUAL, shape=(3, *image)),
             STATE: PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))},
            {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))})


def stats() -> dict:
    unit = {"mean": torch.zeros(STATE_DIM), "std": torch.ones(STATE_DIM),
            "min": -torch.ones(STATE_DIM), "max": torch.ones(STATE_DIM)}
    image = {"mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
             "std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1),
             "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
    return {IMG: image, STATE: dict(unit), "action": dict(unit)}


def observation(image: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {STATE: rng.normal(size=STATE_DIM).astype(np.float32),
            IMG: rng.integers(0, 256, (*image, 3), dtype=np.uint8)}


def act_config(image: tuple[int, int], tiny: bool, **kw):
    from lerobot.policies.act.configuration_act import ACTConfig

    inputs, outputs = features(image)
    small = dict(dim_model=64, n_heads=4, dim_feedforward=256, n_encoder_layers=2,
                 n_vae_encoder_layers=1, latent_dim=16, chunk_size=10, n_action_steps=10)
    return ACTConfig(input_features=inputs, output_features=outputs,
                     pretrained_backbone_weights=None, device="cpu", push_to_hub=False,
                     **(small if tiny else {}), **kw)


def bench_act(a: argparse.Namespace, image: tuple[int, int]) -> None:
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors
    from lerobot.policies.utils import prepare_observation_for_inference

    cfg = act_config(image, a.size == "tiny")
    torch.manual_seed(0)
    policy = ACTPolicy(cfg).eval()
    pre, post = make_act_pre_post_processors(cfg, dataset_stats=stats())
    obs = observation(image)
    device = torch.device("cpu")

    def pipeline():
        with torch.inference_mode():
            batch = pre(prepare_observation_for_inference(dict(obs), device))
            return post(policy.predict_action_chunk(batch))

    chunk = pipeline()
    res = latency(pipeline, a.runs, a.warmup)
    emit(side=SIDE, bench="act", variant="prepare_observation_for_inference -> preprocessor -> "
         "predict_action_chunk -> postprocessor", image=[3, *image], chunk=list(chunk.shape[1:]),
         dim=cfg.dim_model, n_heads=cfg.n_heads, ff_dim=cfg.dim_feedforward,
         enc_layers=cfg.n_encoder_layers, dec_layers=cfg.n_decoder_layers,
         vae_enc_layers=cfg.n_vae_encoder_layers, params=nparams(policy),
         threads=torch.get_num_threads(), **res)


def diffusion_config(image: tuple[int, int], size: str, **kw):
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    inputs, outputs = features(image)
    small = dict(down_dims=(32, 64, 128), diffusion_step_embed_dim=32,
                 spatial_softmax_num_keypoints=16) if size == "tiny" else {}
    return DiffusionConfig(input_features=inputs, output_features=outputs,
                           pretrained_backbone_weights=None, crop_shape=SIZES[size]["crop"],
                           device="cpu", push_to_hub=False, **small, **kw)


def bench_diffusion(a: argparse.Namespace) -> None:
    """Chunks through LeRobot's pipeline with DDIM at 10 and at `few_steps` steps (their
    difference gives the per-step time, as on tether's side), then its default DDPM 100 steps."""
    from diffusers import DDIMScheduler
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
    from lerobot.policies.utils import populate_queues, prepare_observation_for_inference
    from lerobot.utils.constants import ACTION, OBS_IMAGES

    image = SIZES[a.size]["diffusion_hw"]
    cfg = diffusion_config(image, a.size)  # LeRobot's default: DDPM, 100 steps
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg).eval()
    dm = policy.diffusion
    ddpm = dm.noise_scheduler
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats())
    frames = [observation(image, seed=s) for s in range(4)]
    device = torch.device("cpu")
    calls = iter(range(10**9))
    policy.reset()

    def pipeline():  # what select_action does when its action queue runs empty
        with torch.inference_mode():
            batch = pre(prepare_observation_for_inference(dict(frames[next(calls) % 4]), device))
            batch = dict(batch)
            batch.pop(ACTION, None)
            batch[OBS_IMAGES] = torch.stack([batch[k] for k in cfg.image_features], dim=-4)
            policy._queues = populate_queues(policy._queues, batch)
            return post(policy.predict_action_chunk(batch))

    common = dict(side=SIDE, image=[3, *image], crop=list(cfg.crop_shape),
                  obs_horizon=cfg.n_obs_steps, horizon=cfg.horizon,
                  n_action_steps=cfg.n_action_steps, down_dims=list(cfg.down_dims),
                  params=nparams(policy), params_unet=nparams(dm.unet),
                  threads=torch.get_num_threads())
    dm.noise_scheduler = DDIMScheduler.from_config(ddpm.config)
    results = {}
    for steps in (10, a.few_steps):
        dm.num_inference_steps = steps
        results[steps] = res = latency(pipeline, a.runs, a.warmup)
        emit(bench="diffusion_chunk", variant=f"pipeline, DDIM {steps} steps (both obs frames "
             "encoded)", steps=steps, scheduler="DDIM", **common, **res)
    if a.few_steps < 10:
        per_step = (results[10]["p50_ms"] - results[a.few_steps]["p50_ms"]) / (10 - a.few_steps)
        emit(bench="diffusion_step", variant=f"pipeline, (t(10 steps) - t({a.few_steps})) / "
             f"{10 - a.few_steps}", step_ms=round(per_step, 2), **common,
             cpu_per_wall=min(results[10]["cpu_per_wall"], results[a.few_steps]["cpu_per_wall"]),
             others_cpu_per_wall=max(results[10]["others_cpu_per_wall"],
                                     results[a.few_steps]["others_cpu_per_wall"]),
             loadavg_before=results[10]["loadavg_before"])
    x = torch.randn(1, cfg.horizon, ACTION_DIM)
    t = torch.tensor([50])
    cond = torch.randn(1, (STATE_DIM + 2 * cfg.spatial_softmax_num_keypoints) * cfg.n_obs_steps)
    with torch.inference_mode():
        res = latency(lambda: dm.unet(x, t, global_cond=cond), a.runs, a.warmup)
    emit(bench="diffusion_unet_eager", variant="DiffusionConditionalUnet1d, batch 1", **common, **res)
    dm.noise_scheduler = ddpm
    dm.num_inference_steps = ddpm.config.num_train_timesteps
    res = latency(pipeline, a.ddpm_runs, 1)
    emit(bench="diffusion_chunk", variant=f"pipeline, DDPM {dm.num_inference_steps} steps "
         "(LeRobot's default)", steps=dm.num_inference_steps, scheduler="DDPM", **common, **res)


# -- dataset ---------------------------------------------------------------------------------------

#: How LeRobotDataset.create is called per write variant: `lerobot-record`'s defaults (PNG
#: frames written by 4 threads, then AV1 per episode) and streaming encoding (frames go
#: straight to the encoder).
WRITE_VARIANTS = {
    "record_defaults": {"image_writer_threads": 4},
    "streaming": {"streaming_encoding": True, "encoder_threads": 2},
}


def write_dataset(root: Path, frames: np.ndarray, episodes: int, fps: int, variant: str) -> int:
    """A LeRobotDataset of `frames` (+ random state/action) at `root`; returns frames written."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    n, h, w, _ = frames.shape
    rng = np.random.default_rng(0)
    state = rng.standard_normal((n, STATE_DIM)).astype(np.float32)
    action = np.cumsum(rng.standard_normal((n, ACTION_DIM)).astype(np.float32) * 0.05, axis=0)
    shutil.rmtree(root, ignore_errors=True)
    feats = {IMG: {"dtype": "video", "shape": (h, w, 3), "names": ["height", "width", "channels"]},
             STATE: {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
             "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": None}}
    ds = LeRobotDataset.create(repo_id="local/bench", fps=fps, root=root, features=feats,
                               use_videos=True, **WRITE_VARIANTS[variant])
    per, i = n // episodes, 0
    for _ in range(episodes):
        for _ in range(per):
            ds.add_frame({IMG: frames[i], STATE: state[i], "action": action[i], "task": "bench"})
            i += 1
        ds.save_episode()
    ds.finalize()
    if getattr(ds, "image_writer", None) is not None:
        ds.stop_image_writer()
    return i


def decode_videos(root: Path) -> np.ndarray:
    import av

    videos = sorted(str(p) for p in root.rglob("*.mp4"))
    out = []
    for path in videos:
        with av.open(path) as container:
            out += [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(out)


def bench_dataset(a: argparse.Namespace) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from torch.utils.data import DataLoader, RandomSampler

    n, h, w = (int(v) for v in a.frames.split("x"))
    frames = np.load(a.workdir / f"frames_{n}x{h}x{w}.npy")
    clean = np.load(a.workdir / f"clean_{n}x{h}x{w}.npy")
    roots = {}
    for variant in WRITE_VARIANTS:
        roots[variant] = root = a.workdir / "datasets" / f"lerobot_{variant}"
        with Window() as window:
            count = write_dataset(root, frames, a.episodes, 30, variant)
        video = dir_bytes(str(root), ".mp4")
        emit(side=SIDE, bench="dataset_write", variant=variant, create_kwargs=WRITE_VARIANTS[variant],
             frames=count, image=[h, w, 3], frames_per_s=round(count / window.wall, 1),
             cpu_ms_per_frame=round(window.cpu / count * 1e3, 2),
             bytes_per_frame_images=round(video / count),
             bytes_per_frame_total=round(dir_bytes(str(root)) / count),
             threads=torch.get_num_threads(), **window.info())
    decoded = decode_videos(roots["record_defaults"])
    ok = decoded.shape == frames[:len(decoded)].shape and len(decoded) == count
    emit(side=SIDE, bench="dataset_fidelity", variant="record_defaults", frames=len(decoded),
         psnr_vs_input_db=psnr(decoded, frames[:count]) if ok else None,
         psnr_vs_noise_free_db=psnr(decoded, clean[:count]) if ok else None)
    del frames, clean, decoded

    fps = 30
    deltas = {IMG: [-1 / fps, 0.0], STATE: [-1 / fps, 0.0], "action": [i / fps for i in range(16)]}
    dataset = LeRobotDataset("local/bench", root=roots["record_defaults"], delta_timestamps=deltas)
    sampler = RandomSampler(dataset, replacement=True, num_samples=a.samples,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=a.batch, num_workers=a.workers, sampler=sampler)
    it = iter(loader)
    t0 = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - t0
    count = 0
    with Window() as window:
        for batch in it:
            count += len(batch["action"])
    del it
    emit(side=SIDE, bench="dataset_read", variant="LeRobotDataset(delta_timestamps) + default "
         "collate, random windows (obs 2, 16 actions)", video_backend=dataset.video_backend,
         batch_size=a.batch, num_workers=a.workers, samples=count + len(first["action"]),
         batch_shapes={k: list(v.shape) for k, v in first.items() if hasattr(v, "shape")},
         first_batch_s=round(first_s, 3), samples_per_s=round(count / window.wall, 1),
         cpu_ms_per_sample=round(window.cpu / max(count, 1) * 1e3, 2), **window.info())


# -- training ----------------------------------------------------------------------------------------


def bench_train(a: argparse.Namespace) -> None:
    """Steps/s of LeRobot's own `train()` (lerobot-train): its DataLoader (video decoded by
    torchcodec), preprocessor, and `update_policy` (forward, backward, grad clip, optimizer,
    lr scheduler) through accelerate on CPU. `update_policy` is wrapped to stamp the time and
    the CPU of this process tree after the warmup steps and after the last one."""
    from lerobot.configs.default import DatasetConfig, WandBConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.scripts import lerobot_train

    if a.policy == "act":
        image = hw(a.train_hw)
        policy_cfg = act_config(image, a.size == "tiny")
        policy_cfg.input_features, policy_cfg.output_features = {}, {}  # from the dataset
    else:
        image = SIZES[a.size]["diffusion_hw"]
        policy_cfg = diffusion_config(image, a.size)
        policy_cfg.input_features, policy_cfg.output_features = {}, {}
    root = train_dataset(a, image)
    out = a.workdir / "runs" / f"lerobot_{a.policy}"
    shutil.rmtree(out, ignore_errors=True)
    steps = a.train_warmup + a.train_steps
    cfg = TrainPipelineConfig(
        dataset=DatasetConfig(repo_id="local/bench_train", root=str(root)), policy=policy_cfg,
        output_dir=out, seed=1000, num_workers=a.train_workers, batch_size=a.train_batch,
        steps=steps, eval_freq=0, log_freq=10**9, save_checkpoint=False,
        wandb=WandBConfig(enable=False))
    stamps: list[tuple[float, float, float, tuple[float, ...]]] = []
    losses: list[float] = []
    original = lerobot_train.update_policy

    def update_policy(tracker, *args, **kwargs):
        result = original(tracker, *args, **kwargs)
        losses.append(float(result[0].loss.val))
        if len(losses) in (a.train_warmup, steps):
            stamps.append((time.perf_counter(), tree_cpu_seconds(), machine_busy_seconds(),
                           os.getloadavg()))
        return result

    lerobot_train.update_policy = update_policy
    try:
        lerobot_train.train(cfg)
    finally:
        lerobot_train.update_policy = original
        shutil.rmtree(out, ignore_errors=True)
    logging.getLogger().handlers.clear()
    (t0, cpu0, busy0, load0), (t1, cpu1, busy1, load1) = stamps
    wall = t1 - t0
    emit(side=SIDE, bench="train", policy=a.policy, variant="lerobot.scripts.lerobot_train.train "
         "(accelerate, update_policy, its DataLoader)", image=[3, *image],
         batch_size=a.train_batch, num_workers=a.train_workers, steps_timed=a.train_steps,
         warmup_steps=a.train_warmup, steps_per_s=round(a.train_steps / wall, 4),
         loss_first=losses[0], loss_last=losses[-1], threads=torch.get_num_threads(),
         wall_s=round(wall, 3), cpu_s=round(cpu1 - cpu0, 3),
         cpu_per_wall=round((cpu1 - cpu0) / wall, 2),
         others_cpu_per_wall=round(max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / wall, 2),
         loadavg_before=[round(x, 2) for x in load0], loadavg_after=[round(x, 2) for x in load1])


def train_dataset(a: argparse.Namespace, image: tuple[int, int]) -> Path:
    """A LeRobotDataset of `train_frames` frames at `image`, 50 fps (cached in the workdir)."""
    n = a.train_frames
    root = a.workdir / "datasets" / f"lerobot_train_{n}x{image[0]}x{image[1]}"
    if (root / ".complete").exists():
        return root
    frames = np.load(a.workdir / f"frames_{n}x{image[0]}x{image[1]}.npy")
    write_dataset(root, frames, 2, 50, "record_defaults")
    (root / ".complete").touch()
    return root


if __name__ == "__main__":
    main()
