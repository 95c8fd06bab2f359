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
        lo = max(0, i - 1)
        item = {k: torch.from_numpy(np.asarray(self.store.array(k)[lo : i + 1])) for k in self.keys}
        item["action"] = torch.from_numpy(np.asarray(self.store.array("action")[i : i + 16]))
        return item

    def __getstate__(self):
        return {**self.__dict__, "store": None}


def measure(loader: DataLoader, seconds: float) -> float:
    it = iter(loader)
    next(it)  # workers up
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        count += len(batch["action"])
    return count / (time.perf_counter() - t0)


def build(path: Path, cameras: int, episodes: int, steps: int) -> None:
    banks = [camera_frames(steps, seed=c) for c in range(cameras)]
    with EpisodeStore.create(path, 30.0) as store:
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
    out: dict = {"benchmark": "dataloader", "workers": 2, "batch_size": args.batch,
                 "obs_horizon": 2, "action_horizon": 16, "resolution": [480, 640]}
    tmp = Path(tempfile.mkdtemp(prefix="tether-dl-bench-"))
    try:
        for cameras in (1, 3):
            path = tmp / f"c{cameras}.zarr"
            build(path, cameras, episodes=4, steps=120)
            ds = EpisodeDataset(path, obs_horizon=2, action_horizon=16)
            common = dict(batch_size=args.batch, num_workers=2, persistent_workers=True)
            random_sps = measure(DataLoader(ds, shuffle=True, collate_fn=collate_windows, **common),
                                 args.seconds)
            local_sps = measure(DataLoader(ds, sampler=LocalitySampler(len(ds), 8),
                                           collate_fn=collate_windows, **common), args.seconds)
            naive = NaiveZarrDataset(path, ds.image_keys + ["state"])
            naive_sps = measure(DataLoader(naive, shuffle=True, **common), args.seconds)
            out[f"{cameras}_camera"] = {
                "samples_per_s_random": round(random_sps, 1),
                "samples_per_s_locality_sampler": round(local_sps, 1),
                "baseline_naive_zarr_samples_per_s": round(naive_sps, 1),
                "speedup_random_vs_baseline": round(random_sps / naive_sps, 2),
                "speedup_locality_vs_baseline": round(local_sps / naive_sps, 2),
                "frames_per_s_random": round(random_sps * 2 * cameras, 1),
            }
        one = out["1_camera"]
        out["vs_lerobot_samples_per_s"] = {
            "random": round(one["samples_per_s_random"] / LEROBOT_FRAMES_PER_S, 2),
            "locality": round(one["samples_per_s_locality_sampler"] / LEROBOT_FRAMES_PER_S, 2),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
