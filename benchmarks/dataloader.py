"""Training DataLoader throughput: samples/s with 2 workers, obs horizon 2, 1 and 3 cameras.

Builds a store of camera-like 480x640 JPEG frames, then measures EpisodeDataset through a torch
DataLoader (2 workers, batch 32, `collate_windows`) with fully random sampling and with
`LocalitySampler` (shuffled runs of 8 neighbouring windows, which share frames). Baseline in the
same run: a plain ReplayBuffer-style dataset that indexes the zarr arrays per sample with the
default collate. Prints one JSON object.

    .venv/bin/python benchmarks/dataloader.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tether.data.dataset import EpisodeDataset, LocalitySampler, collate_windows
from tether.data.store import EpisodeStore
from tether.data.synthetic import camera_frames

LEROBOT_FRAMES_PER_S = 314.0  # LeRobot 0.4.4 DataLoader, one 480x640 camera, measured by the lead


class NaiveZarrDataset(Dataset):
    """What a straightforward ReplayBuffer-style dataset does: zarr slicing per sample."""

    def __init__(self, path: Path, keys: list[str]) -> None:
        self.path, self.keys = path, keys
        with EpisodeStore.open(path) as store:
            self.n = store.n_steps
        self.store = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.store is None:
            self.store = EpisodeStore.open(self.path)
        lo = min(max(0, i - 1), self.n - 2)  # same work as a 2-step window (edges clamped)
        item = {k: torch.from_numpy(np.asarray(self.store.array(k)[lo : lo + 2])) for k in self.keys}
        start = min(i, self.n - 16)
        item["action"] = torch.from_numpy(np.asarray(self.store.array("action")[start : start + 16]))
        return item

    def __getstate__(self):
        return {**self.__dict__, "store": None}


def measure(loader: DataLoader, seconds: float) -> tuple[float, float]:
    """(samples/s, CPU seconds per sample summed over the main process and its workers).

    The machine is shared, so samples/s depends on the load; CPU per sample does much less,
    and 2 / cpu_per_sample is what 2 idle cores would deliver.
    """
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    it = iter(loader)
    count = len(next(it)["action"])  # workers up (their CPU is counted too)
    t0 = time.perf_counter()
    timed = 0
    while time.perf_counter() - t0 < seconds:
        try:
            batch = next(it)
        except StopIteration:
            it._shutdown_workers()
            it = iter(loader)
            continue
        timed += len(batch["action"])
    rate = timed / (time.perf_counter() - t0)
    it._shutdown_workers()  # reaps the workers, so RUSAGE_CHILDREN includes them
    del it
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(b, f) - getattr(a, f) for a, b in ((self0, self1), (kids0, kids1))
              for f in ("ru_utime", "ru_stime"))
    return rate, cpu / (count + timed)


def build(path: Path, cameras: int, episodes: int, steps: int) -> None:
    banks = [camera_frames(steps, seed=c) for c in range(cameras)]
    with EpisodeStore.create(path, 30.0, image_codec="jpeg") as store:  # codecs: benchmarks/codecs.py
        for _ in range(episodes):
            data = {f"image.cam{c}": banks[c] for c in range(cameras)}
            data["state"] = np.random.rand(steps, 14).astype(np.float32)
            data["action"] = np.random.rand(steps, 14).astype(np.float32)
            store.add_episode(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    out: dict = {"benchmark": "dataloader", "workers": 2, "batch_size": args.batch,
                 "obs_horizon": 2, "action_horizon": 16, "resolution": [480, 640]}
    tmp = Path(tempfile.mkdtemp(prefix="tether-dl-bench-"))
    try:
        for cameras in (1, 3):
            path = tmp / f"c{cameras}.zarr"
            build(path, cameras, episodes=4, steps=120)
            ds = EpisodeDataset(path, obs_horizon=2, action_horizon=16)
            common = dict(batch_size=args.batch, num_workers=2)
            runs = {
                "random": DataLoader(ds, shuffle=True, collate_fn=collate_windows, **common),
                "locality_sampler": DataLoader(ds, sampler=LocalitySampler(len(ds), 8),
                                               collate_fn=collate_windows, **common),
                "baseline_naive_zarr": DataLoader(
                    NaiveZarrDataset(path, ds.image_keys + ["state"]), shuffle=True, **common
                ),
            }
            result = {}
            for name, loader in runs.items():
                rate, cpu = measure(loader, args.seconds)
                result[f"samples_per_s_{name}"] = round(rate, 1)
                result[f"cpu_ms_per_sample_{name}"] = round(cpu * 1e3, 2)
                result[f"idle_2core_samples_per_s_{name}"] = round(2.0 / cpu, 1)
            for name in ("random", "locality_sampler"):
                result[f"cpu_efficiency_vs_baseline_{name}"] = round(
                    result["cpu_ms_per_sample_baseline_naive_zarr"]
                    / result[f"cpu_ms_per_sample_{name}"], 2)
            out[f"{cameras}_camera"] = result
        one = out["1_camera"]
        out["vs_lerobot_314_per_s"] = {
            "measured_random": round(one["samples_per_s_random"] / LEROBOT_FRAMES_PER_S, 2),
            "measured_locality": round(one["samples_per_s_locality_sampler"] / LEROBOT_FRAMES_PER_S, 2),
            "idle_2core_random": round(one["idle_2core_samples_per_s_random"] / LEROBOT_FRAMES_PER_S, 2),
            "idle_2core_locality": round(
                one["idle_2core_samples_per_s_locality_sampler"] / LEROBOT_FRAMES_PER_S, 2),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_1m_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
