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
def diffusion_checkpoint(tmp_path_factory, state_diffusion_checkpoint) -> Path:
    return state_diffusion_checkpoint(tmp_path_factory.mktemp("sampler"))


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


def test_stream_lookahead_reaches_the_streaming_sampler_and_is_refused_beside_chunks(
        tmp_path, state_diffusion_checkpoint):
    """`--stream-lookahead k`: every request asks the streaming sampler for k extra actions (the
    ensembled variant measured best); beside a chunk sampler it is refused before anything runs,
    and beyond the checkpoint's buffer the policy names the range."""
    streaming = state_diffusion_checkpoint(tmp_path, streaming_fraction=0.5)
    ran = rollout("--policy", str(streaming), "--sampler", "streaming", "--stream-lookahead", "3",
                  "--blend", "ensemble")
    assert ran.returncode == 0, ran.stdout + ran.stderr[-3000:]
    assert "8 steps" in " ".join(ran.stdout.split())
    too_far = rollout("--policy", str(streaming), "--sampler", "streaming", "--stream-lookahead", "7")
    text = " ".join((too_far.stdout + too_far.stderr).split())
    assert too_far.returncode == 2 and "lookahead must be an integer from 0 to 6" in text, text
    assert "Traceback" not in text
    beside_chunks = rollout("--policy", "simple:hold", "--sampler", "dpmpp", "--stream-lookahead", "2")
    text = " ".join((beside_chunks.stdout + beside_chunks.stderr).split())
    assert beside_chunks.returncode == 2, text
    assert "--stream-lookahead applies to the streaming sampler" in text and "Traceback" not in text
