"""The trainer shared by ACT and Diffusion Policy.

AdamW, cosine learning rate with linear warmup, gradient clipping, EMA weights (used for
evaluation and export), seeded and resumable: a resumed run on CPU continues bit-identically,
because everything random is either saved (model, EMA, optimizer, torch/numpy/python RNG
states) or a pure function of (seed, step) (the batch order). Checkpoints are safetensors +
JSON (`tether.policies.checkpoint`). Metrics go to `metrics.jsonl` and `metrics.csv` in the run
directory; a rich progress bar shows loss, lr and it/s.

Periodic evaluation: pass `evaluate(policy) -> success rate` and set `eval_every`; the best
checkpoint by success rate is kept in `checkpoints/best`, because training loss predicts
closed-loop success poorly.

Multi-process: launched under torchrun (`WORLD_SIZE` > 1) the trainer uses DDP (gloo on CPU);
each rank reads its own shard of every global batch and rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tether.config import from_dict, save_config
from tether.errors import ConfigError, PolicyError
from tether.policies.base import Policy
from tether.policies.normalizer import Normalizer
from tether.policies.presets import get_preset

__all__ = ["TrainConfig", "load_run_config", "resolve_config", "train"]

log = logging.getLogger(__name__)

NORMALIZER_MODES = {
    "act": {"state": "mean_std", "action": "mean_std"},
    "diffusion": {"state": "min_max", "action": "min_max"},
}


@dataclass
class TrainConfig:
    """Everything a run needs. Unset (None) fields come from the preset."""

    dataset: str = ""
    policy: str = "act"  # act | diffusion
    preset: str = "default"  # tiny | cpu | default | full
    out: str = "runs/latest"
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    grad_clip: float | None = None
    ema_decay: float | None = None
    use_ema: bool = True
    seed: int = 0
    episodes: list[int] | None = None  # training episodes (default: all)
    cameras: list[str] | None = None  # image keys to use (default: all in the store)
    model: dict[str, Any] = field(default_factory=dict)  # model config overrides
    num_workers: int = 0
    threads: int = 0  # torch.set_num_threads when > 0
    log_every: int = 25
    save_every: int = 500
    eval_every: int = 0
    keep_every: int = 0  # > 0: also keep an inference-only snapshot checkpoints/step_NNNNNNN
    progress: bool = True


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill unset fields from the preset and check the values."""
    if config.policy not in NORMALIZER_MODES:
        raise ConfigError(f"policy must be 'act' or 'diffusion', got '{config.policy}'")
    preset = get_preset(config.policy, config.preset)
    resolved = copy.deepcopy(config)
    for key, value in preset["train"].items():
        if getattr(resolved, key) is None:
            setattr(resolved, key, value)
    resolved.model = {**preset["model"], **config.model}
    if resolved.steps < 1 or resolved.batch_size < 1:
        raise ConfigError(f"steps and batch_size must be >= 1 (got {resolved.steps}, {resolved.batch_size})")
    if not resolved.dataset:
        raise ConfigError("no dataset given; pass --dataset path/to/data.zarr")
    return resolved


def train(config: TrainConfig, evaluate: Callable[[Policy], float] | None = None,
          resume: bool = False) -> Path:
    """Train a policy; returns the run directory. With `resume`, continue the run in `config.out`."""
    dist = _Distributed.from_env()
    try:
        return _Trainer(config, evaluate, resume, dist).run()
    finally:
        dist.close()


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved TrainConfig saved in a run directory (for `tether train --resume`)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise PolicyError(f"{run_dir} has no config.json; it is not a tether training run")
    return from_dict(TrainConfig, json.loads(path.read_text()))


# ----------------------------------------------------------------------------------------------


class _Distributed:
    def __init__(self, rank: int, world: int, active: bool) -> None:
        self.rank, self.world, self.active = rank, world, active

    @classmethod
    def from_env(cls) -> _Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, False)
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group("gloo")
        return cls(tdist.get_rank(), tdist.get_world_size(), True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as tdist

            tdist.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


class _BatchOrder:
    """Batch indices as a pure function of (seed, step): a resumed run sees the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        global_batch = batch_size * world
        self.per_epoch = max(1, n // global_batch)
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def batch(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            need = self.per_epoch * self.batch_size * self.world
            if need > self.n:  # tiny datasets: wrap around so every batch is full
                perm = perm.repeat(math.ceil(need / self.n))
            self._perm, self._epoch = perm, epoch
        start = (pos * self.world + self.rank) * self.batch_size
        return self._perm[start:start + self.batch_size].tolist()


class _StepSampler(torch.utils.data.Sampler[list[int]]):
    def __init__(self, order: _BatchOrder, start: int, stop: int) -> None:
        self.order, self.start, self.stop = order, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.order.batch(step)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _Trainer:
    def __init__(self, config: TrainConfig, evaluate, resume: bool, dist: _Distributed) -> None:
        self.dist = dist
        self.evaluate = evaluate
        self.run_dir = Path(config.out)
        self.resume = resume
        if resume:
            saved = load_run_config(self.run_dir)
            if config.steps is not None:
                saved.steps = config.steps  # allow extending a finished run
            saved.progress = config.progress
            self.config = saved
        else:
            self.config = resolve_config(config)
        c = self.config
        if c.threads > 0:
            torch.set_num_threads(c.threads)

    # -- setup -----------------------------------------------------------------------------------

    def _build(self) -> None:
        from tether.data.dataset import EpisodeDataset
        from tether.data.stats import get_stats
        from tether.data.store import EpisodeStore, is_image_key
        from tether.policies.checkpoint import build_model
        from tether.policies.torch_policy import make_spec

        c = self.config
        if not Path(c.dataset).exists():
            raise ConfigError(f"dataset {c.dataset} does not exist; record one with `tether record`")
        with EpisodeStore.open(c.dataset, "r") as store:
            fps = float(store.fps)
            keys = list(store.keys)
            if "state" not in keys or "action" not in keys:
                raise PolicyError(f"{c.dataset} needs 'state' and 'action' arrays (has {keys})")
            cameras = [k for k in keys if is_image_key(k)] if c.cameras is None else list(c.cameras)
            for cam in cameras:
                if cam not in keys:
                    raise ConfigError(f"camera key '{cam}' is not in {c.dataset} (keys: {keys})")
            state_dim = int(store.array("state").shape[1])
            action_dim = int(store.array("action").shape[1])
            image_shapes = {k: list(store.array(k).shape[1:]) for k in cameras}
        model_cfg = dict(c.model)
        chunk_seconds = model_cfg.pop("chunk_seconds", None)
        model_cfg.update(state_dim=state_dim, action_dim=action_dim, cameras=cameras)
        if c.policy == "act" and "chunk_size" not in c.model:
            from tether.policies.act import chunk_size_for_fps

            model_cfg["chunk_size"] = chunk_size_for_fps(fps, chunk_seconds or 2.0)
        torch.manual_seed(c.seed)  # model init
        self.model = build_model(c.policy, model_cfg)
        mc = self.model.config
        if c.policy == "act":
            horizons = {"obs_horizon": 1, "action_horizon": mc.chunk_size, "action_start": 0}
            chunk = mc.chunk_size
        else:
            horizons = {"obs_horizon": mc.obs_horizon, "action_horizon": mc.horizon,
                        "action_start": -(mc.obs_horizon - 1)}
            chunk = mc.n_action_steps
        self.dataset = EpisodeDataset(c.dataset, keys=["state", *cameras], episodes=c.episodes, **horizons)
        stats = get_stats(c.dataset)
        self.normalizer = Normalizer.from_stats(stats, NORMALIZER_MODES[c.policy])
        extra = {"obs_horizon": horizons["obs_horizon"]}
        if c.policy == "diffusion":
            extra.update(inference_steps=mc.inference_steps, num_train_steps=mc.num_train_steps)
        self.spec = make_spec(c.policy, state_dim, image_shapes, action_dim, chunk, fps,
                              self.normalizer, extra)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if c.use_ema else None
        self.optimizer = torch.optim.AdamW(self.model.parameter_groups(c.lr, c.weight_decay))
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        self.net: nn.Module = self.model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model)
        self.order = _BatchOrder(len(self.dataset), c.batch_size, c.seed, self.dist.rank, self.dist.world)
        self.step = 0
        self.best_score: float | None = None

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> Path:
        c = self.config
        self._build()
        if self.resume:
            self._load_train_state()
        else:
            _seed_everything(c.seed + self.dist.rank)
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_config(c, self.run_dir / "config.json")
                for name in ("metrics.jsonl", "metrics.csv"):
                    (self.run_dir / name).unlink(missing_ok=True)
        if self.step >= c.steps:
            log.info("run %s already reached step %d", self.run_dir, self.step)
            return self.run_dir
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_StepSampler(self.order, self.step, c.steps),
            num_workers=c.num_workers, generator=torch.Generator(),  # never touch the global RNG
            persistent_workers=False)
        self.model.train()
        window_t, window_n = time.perf_counter(), 0
        sums: dict[str, float] = {}
        with self._progress() as progress:
            task = progress.add_task("train", total=c.steps, completed=self.step, loss=float("nan"),
                                     lr=0.0, rate=0.0)
            for batch in loader:
                metrics = self._train_step(batch)
                self.step += 1
                window_n += 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                if self.step % c.log_every == 0 or self.step == c.steps:
                    dt = time.perf_counter() - window_t
                    row = {"step": self.step, **{k: v / window_n for k, v in sums.items()},
                           "lr": self.optimizer.param_groups[0]["lr"], "it_s": window_n / dt,
                           "world_size": self.dist.world,
                           "time": time.time()}
                    self._log(row)
                    progress.update(task, loss=row["loss"], lr=row["lr"], rate=row["it_s"])
                    window_t, window_n, sums = time.perf_counter(), 0, {}
                progress.update(task, completed=self.step)
                evaluating = c.eval_every > 0 and self.evaluate is not None and (
                    self.step % c.eval_every == 0 or self.step == c.steps)
                if self.step % c.save_every == 0 or self.step == c.steps or evaluating:
                    self._save("last")
                if c.keep_every > 0 and (self.step % c.keep_every == 0 or self.step == c.steps):
                    # Snapshots for `tether eval --sweep`: success, not loss, picks the checkpoint.
                    self._save(f"step_{self.step:07d}", with_train_state=False)
                if evaluating:
                    self._evaluate()
        self.dist.barrier()
        return self.run_dir

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        c = self.config
        factor = _lr_factor(self.step, c.warmup_steps, c.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        batch = dict(batch)
        batch["state"] = self.normalizer.normalize("state", batch["state"].float())
        batch["action"] = self.normalizer.normalize("action", batch["action"].float())
        loss, metrics = self.net(batch)
        if not torch.isfinite(loss):
            raise PolicyError(f"loss became {float(loss)} at step {self.step}; lower the learning "
                              "rate or check the dataset statistics for constant or huge values")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            _ema_update(self.ema, self.model, min(c.ema_decay, (1 + self.step) / (10 + self.step)))
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), **metrics}

    # -- checkpoints, logs, evaluation -------------------------------------------------------------

    def _save(self, name: str, with_train_state: bool = True) -> None:
        from tether.policies.checkpoint import save_checkpoint

        if not self.dist.is_main:
            return
        save_checkpoint(self.run_dir / "checkpoints" / name, model=self.model, normalizer=self.normalizer,
                        policy_type=self.config.policy, spec=self.spec, step=self.step,
                        ema_model=self.ema,
                        train_state=self._train_state() if with_train_state else None)

    def _train_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        opt = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        scalars: dict[str, Any] = {}
        for idx, state in opt["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"opt.{idx}.{key}"] = value
                else:
                    scalars[f"{idx}.{key}"] = value
        np_state = np.random.get_state()
        tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
        py_state = random.getstate()
        info = {
            "step": self.step,
            "best_score": self.best_score,
            "param_groups": opt["param_groups"],
            "opt_scalars": scalars,
            "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        }
        return tensors, info

    def _load_train_state(self) -> None:
        from safetensors.torch import load_file

        from tether.policies.checkpoint import _load_state

        ckpt = self.run_dir / "checkpoints" / "last"
        if not (ckpt / "train_state.json").is_file():
            raise PolicyError(f"{self.run_dir} has no resumable checkpoint (checkpoints/last/"
                              "train_state.json); start a new run instead of --resume")
        _load_state(self.model, load_file(str(ckpt / "model.safetensors")), ckpt)
        if self.ema is not None:
            _load_state(self.ema, load_file(str(ckpt / "ema.safetensors")), ckpt)
        tensors = load_file(str(ckpt / "train_state.safetensors"))
        info = json.loads((ckpt / "train_state.json").read_text())
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for key, value in info["opt_scalars"].items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        self.step = int(info["step"])
        self.best_score = info.get("best_score")
        torch.set_rng_state(tensors["rng.torch"])
        name, pos, has_gauss, cached = info["rng_numpy"]
        np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = info["rng_python"]
        random.setstate((version, tuple(internal), gauss))
        if self.dist.rank:  # other ranks: a distinct, reproducible stream
            torch.manual_seed(self.config.seed + self.dist.rank + self.step)
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _evaluate(self) -> None:
        import shutil

        from tether.policies.checkpoint import load_policy

        if not self.dist.is_main:
            return
        policy = load_policy(self.run_dir / "checkpoints" / "last", use_ema=self.config.use_ema)
        t0 = time.perf_counter()
        score = float(self.evaluate(policy))
        row = {"step": self.step, "success_rate": score, "eval_s": time.perf_counter() - t0,
               "time": time.time()}
        self._log(row)
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            best = self.run_dir / "checkpoints" / "best"
            if best.exists():
                shutil.rmtree(best)
            shutil.copytree(self.run_dir / "checkpoints" / "last", best)
            self._save("last")  # records best_score for resume
        self.model.train()

    def _log(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "key", "value"])
            for key, value in row.items():
                if key != "step":
                    writer.writerow([row["step"], key, value])

    def _progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[rate]:.1f} it/s"), TimeRemainingColumn(),
            disable=not (self.config.progress and self.dist.is_main),
        )


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

