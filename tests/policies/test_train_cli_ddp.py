"""`tether train` from the command line, resume, user errors, and 2-process DDP (gloo, CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

SMALL_ACT = ["--set", "model.dim=32", "--set", "model.n_heads=2", "--set", "model.ff_dim=64",
             "--set", "model.vision_width=8", "--set", "model.image_size=null", "--set", "batch_size=4",
             "--set", "log_every=2"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MUJOCO_GL": "egl"}


class _Result:
    def __init__(self, result) -> None:
        self.returncode = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr + (repr(result.exception) if result.exit_code and
                                       not isinstance(result.exception, SystemExit) else "")


def _tether(*args):
    """Run the real `tether` app in-process (a subprocess per call costs ~10 s of imports here)."""
    from typer.testing import CliRunner

    from tether.cli import build_app

    return _Result(CliRunner().invoke(build_app(), list(args)))


def test_cli_train_then_resume(synthetic_store, tmp_path):
    out = tmp_path / "run"
    proc = _tether("train", "--dataset", str(synthetic_store), "--policy", "act", "--preset", "tiny",
                   "--steps", "4", "--out", str(out), "--threads", "1", "--no-progress", *SMALL_ACT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "checkpoints/last/policy.json").read_text())["step"] == 4
    proc = _tether("train", "--resume", str(out), "--steps", "6", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "checkpoints/last/policy.json").read_text())["step"] == 6


@pytest.mark.parametrize("args, message", [
    (["--dataset", "/nonexistent/x.zarr"], "does not exist"),
    (["--policy", "bc"], "policy must be one of: act, diffusion"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--set", "model.nope=1"], "Unknown config key 'model.nope'"),
    (["--set", "lr"], "must look like key.sub=value"),
])
def test_cli_user_errors_exit_nonzero_without_traceback(synthetic_store, tmp_path, args, message):
    base = {"--dataset": str(synthetic_store), "--out": str(tmp_path / "r"), "--steps": "1"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value if flag != "--set" else base.get(flag, value)
    argv = [x for kv in base.items() for x in kv if kv[0] != "--set"]
    if "--set" in args:
        argv += ["--set", args[args.index("--set") + 1]]
    proc = _tether("train", *argv, "--no-progress")
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr and "Error(" not in proc.stderr  # a clean user error


def test_ddp_two_gloo_processes(synthetic_store, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tether.cli", "train", "--dataset", str(synthetic_store), "--policy", "act",
           "--preset", "tiny", "--steps", "4", "--out", str(out), "--threads", "1", "--no-progress",
           *SMALL_ACT]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]  # rank 0 alone logs
    assert all(r["world_size"] == 2 for r in rows)
    weights = load_file(str(out / "checkpoints/last/model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
