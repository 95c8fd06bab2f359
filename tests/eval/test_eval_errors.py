"""`tether eval` reports a failing policy's own error (type, message, seed) instead of a generic
worker failure, in worker processes and in-process; and prints plain progress lines when its
stdout is a pipe."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tether.app.eval.progress import PlainProgress
from tether.core.errors import PolicyError
from tether.core.schema import ArraySpec
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import IdentityPolicy

STATE = (ArraySpec("state", "float32", (6,)),)  # twin:lift's state: the twin runs camera-less


class FailingPolicy(IdentityPolicy):
    def _predict_chunk(self, observation, **options):
        raise PolicyError("the model exploded on purpose")


def tether_eval(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tether.cli", "eval", "--task", "lift", "--videos", "0", *args]
    env = {**os.environ, "MUJOCO_GL": "egl"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _text(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines


@pytest.mark.parametrize("workers", ["1", "0"])
def test_a_policy_that_raises_is_reported_as_itself_naming_the_seed(tmp_path, workers):
    policy = FailingPolicy(STATE, action_dim=6, chunk_size=5, fps=30.0)
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        proc = tether_eval("--server", server.endpoint, "--episodes", "2", "--workers", workers,
                           "--out", str(tmp_path / "report"))  # fmt: skip
    text = _text(proc)
    assert proc.returncode == 2, text
    assert "the model exploded on purpose" in text and "seed 100000" in text, text
    assert "produced no result" not in text and "Traceback" not in text
    assert server.stats.errors["policy_error"] == 1  # not retried


def test_an_in_process_checkpoint_error_is_reported_as_itself(tmp_path):
    torch = pytest.importorskip("torch")
    from tether.policies.checkpoint import save_checkpoint
    from tether.policies.diffusion import DiffusionConfig, DiffusionModel
    from tether.policies.normalizer import Normalizer
    from tether.policies.torch_policy import make_spec

    torch.manual_seed(0)
    config = DiffusionConfig(state_dim=6, action_dim=6, cameras=[], horizon=8, n_action_steps=4,
                             down_dims=[16, 32], n_groups=4, step_embed_dim=16)  # fmt: skip
    stats = {
        k: {"min": -np.ones(6), "max": np.ones(6), "mean": np.zeros(6), "std": np.ones(6)}
        for k in ("state", "action")
    }
    norm = Normalizer.from_stats(stats, {"state": "mean_std", "action": "mean_std"})
    spec = make_spec("diffusion", 6, {}, 6, 4, 30.0, norm, {"num_train_steps": 100})
    ckpt = save_checkpoint(tmp_path / "diffusion", model=DiffusionModel(config), normalizer=norm,
                           policy_type="diffusion", spec=spec, step=0)  # fmt: skip
    proc = tether_eval("--checkpoint", str(ckpt), "--steps", "0", "--episodes", "1",
                       "--workers", "1", "--out", str(tmp_path / "report"))  # fmt: skip
    text = _text(proc)
    assert proc.returncode == 2, text
    assert "PolicyError" in text and "from 1 to 100" in text and "seed 100000" in text, text
    assert "Traceback" not in text


def test_piped_stdout_gets_plain_progress_lines(tmp_path):
    policy = IdentityPolicy(STATE, action_dim=6, chunk_size=10, fps=30.0)
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        proc = tether_eval("--server", server.endpoint, "--episodes", "2", "--workers", "1",
                           "--out", str(tmp_path / "report"))  # fmt: skip
    assert proc.returncode == 0, _text(proc)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("eval lift:")]
    assert lines[0] == "eval lift: 0/2 episodes started", proc.stdout
    assert lines[-1].startswith("eval lift: 2/2 episodes, success ") and lines[-1].endswith(
        "(done)"
    )
    assert "\x1b[" not in "".join(lines)  # plain text, no terminal control codes


def test_plain_progress_is_rate_limited_with_a_heartbeat():
    now = [0.0]
    lines: list[str] = []
    progress = PlainProgress("eval lift", 10, lines.append, lambda: now[0], 2.0, 30.0)
    assert lines == ["eval lift: 0/10 episodes started"]
    now[0] = 1.0
    assert not progress.update(1, 1)  # an episode finished, but too soon after the last line
    now[0] = 2.5
    assert progress.update(1, 1) and lines[-1] == "eval lift: 1/10 episodes, success 1/1, 2 s"
    now[0] = 20.0
    assert not progress.update(1, 1)  # nothing new, no heartbeat yet
    now[0] = 33.0
    assert progress.update(1, 1)  # heartbeat: still alive
    now[0] = 36.0
    assert progress.update(3, 2) and lines[-1].startswith("eval lift: 3/10 episodes, success 2/3")
    progress.finish(10, 7)
    assert lines[-1] == "eval lift: 10/10 episodes, success 7/10, 36 s (done)"
