"""`tether rollout --sampler`: the diffusion sampler per request reaches the policy, and a name
no policy knows is refused before anything is loaded or sent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")


def rollout(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tether.cli", "rollout", "--robot", "twin:lift", "--lockstep",
           "--max-steps", "8", "--set", "twin_params.cameras=[]", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def diffusion_checkpoint(tmp_path_factory) -> Path:
    """A tiny state-only diffusion checkpoint (random weights): which sampler ran is what counts."""
    import numpy as np
    import torch

    from tether.policies.checkpoint import save_checkpoint
    from tether.policies.diffusion import DiffusionConfig, DiffusionModel
    from tether.policies.normalizer import Normalizer
    from tether.policies.torch_policy import make_spec

    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(state_dim=6, action_dim=6, cameras=[], horizon=8,
                                           n_action_steps=4, down_dims=[16, 32], n_groups=4,
                                           step_embed_dim=16))
    stats = {k: {"min": -np.ones(6), "max": np.ones(6), "mean": np.zeros(6), "std": np.ones(6)}
             for k in ("state", "action")}
    norm = Normalizer.from_stats(stats, {"state": "min_max", "action": "min_max"})
    spec = make_spec("diffusion", 6, {}, 6, 4, 30.0, norm)
    root = tmp_path_factory.mktemp("sampler")
    return save_checkpoint(root / "dp", model=model, normalizer=norm, policy_type="diffusion",
                           spec=spec, step=0)


def test_a_chunk_sampler_runs_and_streaming_reaches_the_policy(diffusion_checkpoint):
    ran = rollout("--policy", str(diffusion_checkpoint), "--sampler", "dpmpp", "--steps", "2")
    assert ran.returncode == 0, ran.stdout + ran.stderr[-3000:]
    assert "8 steps" in " ".join(ran.stdout.split())
    # streaming needs a checkpoint trained for it: the policy itself says so, so the name got there
    refused = rollout("--policy", str(diffusion_checkpoint), "--sampler", "streaming")
    text = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2, text
    assert "streaming_fraction" in text and "Traceback" not in text


def test_an_unknown_sampler_is_refused_naming_the_choices():
    refused = rollout("--policy", "simple:hold", "--sampler", "euler")
    text = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2, text
    assert "ddim, dpmpp, streaming" in text and "'euler'" in text and "Traceback" not in text
