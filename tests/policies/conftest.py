"""Fixtures for the policy/trainer tests: real episode stores, small and fast.

`synthetic_store`: a store written through the real EpisodeStore API with a toy reaching task
(a bright square shows the target; actions move the state toward it), for mechanics tests
that need seconds, not minutes. `lift_store`: scripted twin demos recorded through the real
recorder CLI at 60x80, shared by the learning tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

LIFT_TRAIN_EPISODES = list(range(10))
LIFT_TEST_EPISODES = [10, 11, 12, 13]


def write_synthetic_store(path: Path, episodes: int = 6, steps: int = 30, h: int = 32, w: int = 40,
                          seed: int = 0) -> Path:
    from tether.data.store import EpisodeStore

    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, fps=10, overwrite=True) as store:
        for _ in range(episodes):
            target = rng.uniform(-1, 1, 2)
            x = rng.uniform(-1, 1, 3)
            state = np.zeros((steps, 3), np.float32)
            action = np.zeros((steps, 3), np.float32)
            image = np.zeros((steps, h, w, 3), np.uint8)
            r = int((target[1] + 1) / 2 * (h - 6))
            c = int((target[0] + 1) / 2 * (w - 6))
            for t in range(steps):
                state[t] = x
                a = x.copy()
                a[:2] += 0.3 * (target - x[:2])
                action[t] = a
                x = a + rng.normal(0, 0.01, 3)
                image[t, r:r + 6, c:c + 6] = 255
            store.add_episode({"state": state, "action": action, "image.top": image})
    return path


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> Path:
    return write_synthetic_store(tmp_path_factory.mktemp("synthetic") / "toy.zarr")


@pytest.fixture(scope="session")
def lift_store(tmp_path_factory) -> Path:
    """14 scripted `lift` demos on the twin (state + one 60x80 camera, 10 Hz), via `tether record`.

    10 Hz keeps the episodes short (~45 steps) so a tiny policy sees many epochs in seconds, and
    makes each step a real move, so "repeat the last action" is not a near-perfect predictor.
    """
    out = tmp_path_factory.mktemp("lift") / "lift.zarr"
    cmd = [sys.executable, "-m", "tether.cli", "record", "--robot", "twin:lift", "--teleop", "scripted",
           "--episodes", str(len(LIFT_TRAIN_EPISODES) + len(LIFT_TEST_EPISODES)), "--out", str(out),
           "--seed", "100", "--set", "twin_params.width=80", "--set", "twin_params.height=60",
           "--set", "fps=10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MUJOCO_GL": "egl"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The machine is shared by parallel jobs; with 2 OpenMP threads on 2 busy cores torch
    spends most of its time in barrier waits (10x slower here). One thread is fast and steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
