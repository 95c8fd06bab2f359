#!/usr/bin/env python
"""tether's side of the side-by-side with LeRobot: one item per process, JSON lines on stdout.

Run by `benchmarks/vs_lerobot.py` with tether's venv. Everything goes through tether's public
paths: policies through a saved checkpoint and `load_policy` (what `tether serve` runs, with
`--engine` when the installed tether has inference engines), the store through
`EpisodeStore` + `EpisodeWriter` (what the recorder does), reading through `EpisodeDataset`
(what the trainer does), training through `tether.policies.trainer.train`.

Items: env, prep (test frames for both sides), act, diffusion, dataset, train.
`--size tiny` shrinks every model and data size (for the fast test of the harness); the
figures of a real run come from `--size full`.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import threading
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

SIDE = "tether"
STATE_DIM = ACTION_DIM = 14
CAMERA = "image.top"

#: Per size: the ACT preset, the diffusion preset, the image sizes and data sizes used.
SIZES = {
    "full": {"act_preset": "default", "diffusion_preset": "full", "diffusion_hw": (96, 96),
             "train_diffusion_hw": (96, 96), "act_fps": 50.0},
    "tiny": {"act_preset": "tiny", "diffusion_preset": "tiny", "diffusion_hw": (48, 64),
             "train_diffusion_hw": (48, 64), "act_fps": 10.0},
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--item", required=True,
                   choices=["env", "prep", "act", "diffusion", "dataset", "train"])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hw", default="240x320", help="ACT image size HxW")
    p.add_argument("--engine", default=None, help="inference engine (default: tether's own)")
    p.add_argument("--few-steps", type=int, default=4)
    p.add_argument("--image-codec", default=None)
    p.add_argument("--frames", default="300x480x640", help="NxHxW of the dataset item's frames")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples", type=int, default=3200)
    p.add_argument("--policy", choices=["act", "diffusion"], default="act")
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--train-warmup", type=int, default=2)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-workers", type=int, default=2)
    p.add_argument("--train-hw", default="240x320", help="ACT training image size HxW")
    p.add_argument("--train-frames", type=int, default=200)
    p.add_argument("--prep", default="", help="prep: comma-separated NxHxW frame sets to write")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.item == "env":
        env_info()
    elif a.item == "prep":
        for spec in filter(None, a.prep.split(",")):
            prep_frames(a.workdir, *(int(v) for v in spec.split("x")))
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
    import tether
    from tether.data.codecs import IMAGE_CODECS

    emit(side=SIDE, bench="env", torch=torch.__version__, threads=torch.get_num_threads(),
         python=python_version(), tether=getattr(tether, "__version__", "?"),
         cpus=os.cpu_count(), engines=available_engines(), image_codecs=list(IMAGE_CODECS),
         default_image_codec=_default_image_codec())


# -- frames shared with the LeRobot side ----------------------------------------------------------


def frames_path(workdir: Path, n: int, h: int, w: int, clean: bool = False) -> Path:
    return workdir / f"{'clean' if clean else 'frames'}_{n}x{h}x{w}.npy"


def prep_frames(workdir: Path, n: int, h: int, w: int) -> None:
    """Camera-like frames (a panning textured scene + sensor noise, tether.data.synthetic) and
    their noise-free versions (PSNR against the scene, not against the noise)."""
    from tether.data.synthetic import camera_frames, scene

    out, clean_out = frames_path(workdir, n, h, w), frames_path(workdir, n, h, w, clean=True)
    if out.exists() and clean_out.exists():
        return
    frames = camera_frames(n, h, w, noise=3.0, seed=0)
    base = scene(h, w, 0)
    clean = np.stack([np.clip(base[:, (i * 3) % w: (i * 3) % w + w], 0, 255) for i in range(n)])
    np.save(out.with_suffix(".tmp.npy"), frames)
    np.save(clean_out.with_suffix(".tmp.npy"), np.round(clean).astype(np.uint8))
    os.replace(out.with_suffix(".tmp.npy"), out)
    os.replace(clean_out.with_suffix(".tmp.npy"), clean_out)


# -- served policies ---------------------------------------------------------------------------------


def _engines():
    """tether.policies.engines when this tether has inference engines, else None."""
    try:
        from tether.policies import engines
    except ImportError:
        return None
    return engines if hasattr(engines, "load_engine_policy") else None


def available_engines() -> list[str] | None:
    """`--engine` values of the installed tether (None when it has no engine choice)."""
    engines = _engines()
    return None if engines is None else list(engines.engine_names())


def load_served(ckpt: Path, engine: str | None):
    """(policy, engine description): the policy as `tether serve` loads it. `engine` is
    NAME[/PRECISION] (e.g. `openvino/bf16`); None means `auto` when this tether has engines
    and eager PyTorch when it has none. Asking for an engine this tether lacks is an error."""
    from tether.policies.checkpoint import load_policy

    engines = _engines()
    if engines is None:
        if engine not in (None, "eager"):
            sys.exit(f"this tether has no inference engines (tether.policies.engines); --engine "
                     f"{engine} cannot run. Use --engine eager or leave it out")
        return load_policy(ckpt), "eager"
    name, _, precision = (engine or "auto").partition("/")
    policy = engines.load_engine_policy(ckpt, engine=name, precision=precision or "auto")
    return policy, str(getattr(policy, "engine", name))


def engine_diff(policy) -> dict:
    """The engine's own check against eager PyTorch (max |difference| per graph), if any."""
    diff = getattr(getattr(policy, "engine", None), "max_abs_diff", None)
    return {"engine_max_abs_diff": dict(diff)} if diff else {}


def _stats(dim: int) -> dict[str, np.ndarray]:
    return {"min": -np.ones(dim), "max": np.ones(dim), "mean": np.zeros(dim), "std": np.ones(dim)}


def checkpoint(workdir: Path, policy: str, model_cfg: dict, image: tuple[int, int], fps: float):
    """A checkpoint of a randomly initialised (seed 0) model, cached in `workdir` by config."""
    from tether.policies.checkpoint import save_checkpoint
    from tether.policies.normalizer import Normalizer
    from tether.policies.registry import get_family
    from tether.policies.torch_policy import make_spec

    family = get_family(policy)
    cfg = family.dataset_fields(dict(model_cfg), fps)
    cfg.update(state_dim=STATE_DIM, action_dim=ACTION_DIM, cameras=[CAMERA])
    key = hashlib.sha1(json.dumps([policy, cfg, image, fps], sort_keys=True).encode()).hexdigest()
    path = workdir / "checkpoints" / f"{policy}-{key[:12]}"
    torch.manual_seed(0)
    model = family.build(cfg, load_pretrained=False)
    if not (path / "policy.json").is_file():
        normalizer = Normalizer.from_stats({"state": _stats(STATE_DIM), "action": _stats(ACTION_DIM)},
                                           family.normalizer_modes)
        horizons = family.horizons(model.config)
        spec = make_spec(policy, STATE_DIM, {CAMERA: [*image, 3]}, ACTION_DIM, horizons.chunk, fps,
                         normalizer, horizons.extra)
        save_checkpoint(path, model=model, normalizer=normalizer, policy_type=policy, spec=spec,
                        step=0)
    return path, model


def _observation(h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=STATE_DIM).astype(np.float32),
            CAMERA: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}


def bench_act(a: argparse.Namespace, image: tuple[int, int]) -> None:
    """ACT, numpy uint8 HxWx3 + state -> the whole action chunk, through the served policy.

    The `default` preset is the paper's (and LeRobot's default) architecture: ResNet-18, dim 512,
    8 heads, ff 3200, 4 encoder / 1 decoder / 4 VAE-encoder layers, latent 32, chunk 2 s = 100
    steps at 50 Hz. Frozen BatchNorm as LeRobot has it (both fold it away at inference)."""
    from tether.policies.presets import get_preset

    size = SIZES[a.size]
    model_cfg = {**get_preset("act", size["act_preset"])["model"], "vision_norm": "frozen_batch"}
    ckpt, model = checkpoint(a.workdir, "act", model_cfg, image, size["act_fps"])
    policy, engine = load_served(ckpt, a.engine)
    obs = _observation(*image)
    chunk = policy.predict_chunk(obs)
    c = model.config
    res = latency(lambda: policy.predict_chunk(obs), a.runs, a.warmup)
    emit(side=SIDE, bench="act", variant="served policy predict_chunk", engine=engine,
         **engine_diff(policy),
         image=[3, *image], chunk=list(chunk.shape), dim=c.dim, n_heads=c.n_heads, ff_dim=c.ff_dim,
         enc_layers=c.enc_layers, dec_layers=c.dec_layers, vae_enc_layers=c.vae_enc_layers,
         params=nparams(model), threads=torch.get_num_threads(), **res)


def bench_diffusion(a: argparse.Namespace) -> None:
    """Diffusion Policy through the served policy: chunks at 10 DDIM steps and at `few_steps`.

    The per-step figure is (t(10) - t(few)) / (10 - few) of those two served chunks, whatever
    the engine runs inside (LeRobot's side measures the same difference). The eager U-Net call is
    timed as well, when the model exposes it, to compare with earlier figures."""
    from tether.policies.presets import get_preset

    size = SIZES[a.size]
    image = size["diffusion_hw"]
    model_cfg = get_preset("diffusion", size["diffusion_preset"])["model"]
    ckpt, model = checkpoint(a.workdir, "diffusion", model_cfg, image, 50.0)
    policy, engine = load_served(ckpt, a.engine)
    c = model.config
    common = dict(side=SIDE, engine=engine, **engine_diff(policy), image=[3, *image],
                  crop=round(image[0] * c.crop_ratio),
                  obs_horizon=c.obs_horizon, horizon=c.horizon, n_action_steps=c.n_action_steps,
                  down_dims=list(c.down_dims), params=nparams(model),
                  params_unet=nparams(model.denoiser), threads=torch.get_num_threads())
    frames = [_observation(*image, seed=s) for s in range(4)]
    counter = iter(range(10**9))

    def chunk(steps: int):
        return lambda: policy.predict_chunk(frames[next(counter) % 4], steps=steps)

    chunk(10)()  # fills the observation history
    results = {}
    for steps in (10, a.few_steps):
        results[steps] = res = latency(chunk(steps), a.runs, a.warmup)
        emit(bench="diffusion_chunk", variant=f"served predict_chunk, {steps} steps (new frame "
             "encoded, the previous one's features kept)", steps=steps, **common, **res)
    if a.few_steps < 10:
        per_step = (results[10]["p50_ms"] - results[a.few_steps]["p50_ms"]) / (10 - a.few_steps)
        emit(bench="diffusion_step", variant=f"served, (t(10 steps) - t({a.few_steps})) / "
             f"{10 - a.few_steps}", step_ms=round(per_step, 2), **common,
             cpu_per_wall=min(results[10]["cpu_per_wall"], results[a.few_steps]["cpu_per_wall"]),
             others_cpu_per_wall=max(results[10]["others_cpu_per_wall"],
                                     results[a.few_steps]["others_cpu_per_wall"]),
             loadavg_before=results[10]["loadavg_before"])
    unet = getattr(model, "denoiser", None)
    if unet is not None and c.denoiser == "unet":
        x = torch.randn(1, c.horizon, ACTION_DIM)
        t = torch.tensor([50])
        cond = torch.randn(1, c.obs_horizon * model.obs_feature_dim)
        model.eval()
        with torch.inference_mode():
            res = latency(lambda: unet(x, t, cond), a.runs, a.warmup)
        emit(bench="diffusion_unet_eager", variant="model.denoiser(x, t, cond), eager, batch 1",
             **common, **res)


# -- dataset: write, size, fidelity, loader ------------------------------------------------------------


def _default_image_codec() -> str:
    from tether.data.store import EpisodeStore

    return str(inspect.signature(EpisodeStore.create).parameters["image_codec"].default)


def bench_dataset(a: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader, RandomSampler

    from tether.data.dataset import EpisodeDataset, collate_windows
    from tether.data.store import EpisodeStore

    n, h, w = (int(v) for v in a.frames.split("x"))
    frames = np.load(frames_path(a.workdir, n, h, w))
    clean = np.load(frames_path(a.workdir, n, h, w, clean=True))
    rng = np.random.default_rng(0)
    state = rng.standard_normal((n, STATE_DIM)).astype(np.float32)
    action = rng.standard_normal((n, ACTION_DIM)).astype(np.float32)
    root = a.workdir / "datasets" / "tether_write.zarr"
    shutil.rmtree(root, ignore_errors=True)
    codec = {"image_codec": a.image_codec} if a.image_codec else {}
    per = n // a.episodes
    with Window() as window:  # what the recorder's writer does, frame by frame, then commit
        store = EpisodeStore.create(root, 30.0, **codec)
        i = 0
        for _ in range(a.episodes):
            writer = store.begin_episode()
            for _ in range(per):
                writer.append({CAMERA: frames[i], "state": state[i], "action": action[i]})
                i += 1
            writer.commit()
        store.close()
    with EpisodeStore.open(root) as store:
        attrs = dict(store.attrs)
        decoded = store.read_steps(0, store.n_steps, [CAMERA])[CAMERA]
    image_bytes = dir_bytes(str(root / "data" / CAMERA))
    emit(side=SIDE, bench="dataset_write", variant="EpisodeStore + EpisodeWriter, 2 episodes",
         image_codec=attrs.get("image_codec", a.image_codec or _default_image_codec()),
         image_quality=attrs.get("image_quality"), frames=i, image=[h, w, 3],
         frames_per_s=round(i / window.wall, 1), cpu_ms_per_frame=round(window.cpu / i * 1e3, 2),
         bytes_per_frame_images=round(image_bytes / i),
         bytes_per_frame_total=round(dir_bytes(str(root)) / i), threads=torch.get_num_threads(),
         **window.info())
    emit(side=SIDE, bench="dataset_fidelity", frames=len(decoded),
         psnr_vs_input_db=psnr(decoded, frames[:i]), psnr_vs_noise_free_db=psnr(decoded, clean[:i]),
         input_psnr_vs_noise_free_db=psnr(frames[:i], clean[:i]))
    del frames, clean, decoded

    dataset = EpisodeDataset(root, obs_horizon=2, action_horizon=16)
    sampler = RandomSampler(dataset, replacement=True, num_samples=a.samples,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=a.batch, num_workers=a.workers, sampler=sampler,
                        collate_fn=collate_windows)
    emit(side=SIDE, bench="dataset_read", variant="EpisodeDataset + collate_windows, random "
         "windows (obs 2, 16 actions)", **read_loader(loader, a))


def read_loader(loader, a: argparse.Namespace) -> dict:
    """Samples/s of `loader` after its first batch (workers up), with the window's accounting."""
    it = iter(loader)
    t0 = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - t0
    count = 0
    with Window() as window:
        for batch in it:
            count += len(batch["action"])
    del it
    return {"batch_size": a.batch, "num_workers": a.workers, "samples": count + len(first["action"]),
            "batch_shapes": {k: list(v.shape) for k, v in first.items() if hasattr(v, "shape")},
            "first_batch_s": round(first_s, 3), "samples_per_s": round(count / window.wall, 1),
            "cpu_ms_per_sample": round(window.cpu / max(count, 1) * 1e3, 2), **window.info()}


# -- training --------------------------------------------------------------------------------------


def train_store(a: argparse.Namespace, image: tuple[int, int]) -> Path:
    """A store of `train_frames` camera-like frames at `image` (cached in the workdir)."""
    from tether.data.store import EpisodeStore

    n = a.train_frames
    codec = {"image_codec": a.image_codec} if a.image_codec else {}
    codec_tag = hashlib.sha1((a.image_codec or _default_image_codec()).encode()).hexdigest()[:8]
    name = f"tether_train_{n}x{image[0]}x{image[1]}_{codec_tag}.zarr"  # a new default: new store
    root = a.workdir / "datasets" / name
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    frames = np.load(frames_path(a.workdir, n, *image))
    rng = np.random.default_rng(0)
    state = rng.standard_normal((n, STATE_DIM)).astype(np.float32)
    action = np.cumsum(rng.standard_normal((n, ACTION_DIM)).astype(np.float32) * 0.05, axis=0)
    with EpisodeStore.create(root, 50.0, **codec) as store:
        per = n // 2
        for e in range(2):
            lo = e * per
            store.add_episode({CAMERA: frames[lo:lo + per], "state": state[lo:lo + per],
                               "action": action[lo:lo + per]}, {"task": "bench"})
    (root / ".complete").touch()
    return root


def bench_train(a: argparse.Namespace) -> None:
    """Training steps/s of `tether.policies.trainer.train` (the loop `tether train` runs: the
    DataLoader, forward + backward, gradient clipping, AdamW, EMA, metrics), over the steps after
    `train_warmup`. The trainer logs every step; a watcher thread stamps the CPU of this process
    tree when the warmup row and the last row appear in metrics.jsonl."""
    from tether.policies.trainer import TrainConfig, train

    size = SIZES[a.size]
    if a.policy == "act":
        image, preset = hw(a.train_hw), size["act_preset"]
        model = {"vision_norm": "frozen_batch"}
    else:
        image, preset = size["train_diffusion_hw"], size["diffusion_preset"]
        model = {}
    store = train_store(a, image)
    run_dir = a.workdir / "runs" / f"tether_{a.policy}"
    steps = a.train_warmup + a.train_steps
    config = TrainConfig(dataset=str(store), policy=a.policy, preset=preset, device="cpu",
                         out=str(run_dir), steps=steps, batch_size=a.train_batch, seed=0,
                         model=model, num_workers=a.train_workers, threads=a.threads,
                         log_every=1, save_every=10**9, progress=False)
    watcher = _RowWatcher(run_dir / "metrics.jsonl", (a.train_warmup, steps))
    watcher.start()
    try:
        train(config, overwrite=True)
    finally:
        watcher.stop()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "it_s" in r]
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints of the full diffusion model: 4 GB
    t_start, t_end = rows[a.train_warmup - 1]["time"], rows[steps - 1]["time"]
    wall = t_end - t_start
    emit(side=SIDE, bench="train", policy=a.policy, preset=preset, variant="tether.policies."
         "trainer.train (AdamW, grad clip, EMA, DataLoader)", image=[3, *image],
         batch_size=a.train_batch, num_workers=a.train_workers, steps_timed=a.train_steps,
         warmup_steps=a.train_warmup, steps_per_s=round(a.train_steps / wall, 4),
         step_ms_p50=round(float(np.median([1e3 / r["it_s"] for r in rows[a.train_warmup:]])), 1),
         loss_first=rows[0]["loss"], loss_last=rows[-1]["loss"], threads=torch.get_num_threads(),
         **watcher.info(wall))


class _RowWatcher:
    """Stamps (CPU of this process tree, busy CPU of the machine, load) when a JSON-lines file
    reaches given line counts. Polls its size every 10 ms; costs nothing measurable."""

    def __init__(self, path: Path, marks: tuple[int, int]) -> None:
        self.path, self.marks = path, marks
        self.stamps: dict[int, tuple[float, float, tuple[float, ...]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        size = -1
        while not self._stop.wait(0.01) and len(self.stamps) < len(self.marks):
            try:
                new = self.path.stat().st_size
            except OSError:
                continue
            if new == size:
                continue
            size = new
            lines = self.path.read_bytes().count(b"\n")
            for mark in self.marks:
                if lines >= mark and mark not in self.stamps:
                    self.stamps[mark] = (tree_cpu_seconds(), machine_busy_seconds(), os.getloadavg())

    def info(self, wall: float) -> dict:
        if len(self.stamps) < 2:
            return {"cpu_per_wall": None, "others_cpu_per_wall": None}
        (cpu0, busy0, load0), (cpu1, busy1, load1) = (self.stamps[m] for m in self.marks)
        return {"wall_s": round(wall, 3), "cpu_s": round(cpu1 - cpu0, 3),
                "cpu_per_wall": round((cpu1 - cpu0) / wall, 2),
                "others_cpu_per_wall": round(max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / wall, 2),
                "loadavg_before": [round(x, 2) for x in load0],
                "loadavg_after": [round(x, 2) for x in load1]}


if __name__ == "__main__":
    main()
