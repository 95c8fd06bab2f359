"""Training across processes (torchrun, gloo on CPU) gives the weights one process gets with the
combined batch: 2 processes on one host (`tether train --nproc 2`), 2 "hosts" on localhost through
the c10d rendezvous, and a 2-process run resumed on 1 process.

Made exact-able: the mlp policy on state only (no BatchNorm, dropout 0), one torch thread, the
batch order a pure function of (seed, step, global batch), and fewer steps than the warmup so the
learning rate does not depend on the total step count. What remains is float summation order in
the gradient all-reduce: differences of ~1e-8 after 6 AdamW steps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.policies.distributed import BatchOrder, per_rank_batch
from tether.policies.trainer import TrainConfig, train

TOLERANCE = 1e-6  # max abs parameter difference allowed (float summation order only)
STEPS = 6


def _options(store: Path) -> list[str]:
    """The run, as command-line options (the warmup of 30 steps keeps lr independent of --steps)."""
    return ["--dataset", str(store), "--policy", "mlp", "--preset", "tiny", "--threads", "1",
            "--no-progress", "--set", "cameras=[]", "--set", "log_every=3", "--set", "warmup_steps=30"]


def _reference(store: Path, out: Path, batch_size: int, steps: int = STEPS) -> Path:
    """One process, in this one: the run every multi-process run must reproduce."""
    config = TrainConfig(dataset=str(store), policy="mlp", preset="tiny", steps=steps, out=str(out),
                         batch_size=batch_size, threads=1, progress=False, cameras=[], log_every=3,
                         warmup_steps=30, keep_every=3)
    return train(config)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {**{f"model.{k}": v for k, v in load_file(str(checkpoint / "model.safetensors")).items()},
            **{f"ema.{k}": v for k, v in load_file(str(checkpoint / "ema.safetensors")).items()}}


def max_abs_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _env() -> dict[str, str]:
    # gloo picks its interface from the hostname; on loopback-only test machines name it.
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the batch order: no overlap between ranks, the same global batches at any world size ----------


@pytest.mark.parametrize("n, batch, world", [(100, 4, 2), (100, 3, 3), (7, 4, 2)])
def test_ranks_split_each_global_batch_without_overlap(n, batch, world):
    one = BatchOrder(n, batch * world, seed=5)
    ranks = [BatchOrder(n, batch, seed=5, rank=r, world=world) for r in range(world)]
    seen: list[int] = []
    for step in range(3 * one.per_epoch):
        parts = [r.batch(step) for r in ranks]
        assert [i for p in parts for i in p] == one.batch(step)  # together: one process's batch
        assert all(len(p) == batch for p in parts)
        if n >= batch * world:  # whole epochs: no sample on two ranks, none twice in an epoch
            seen += [i for p in parts for i in p]
            if (step + 1) % one.per_epoch == 0:
                assert len(set(seen)) == len(seen)
                seen = []


def test_resume_on_another_world_size_keeps_the_global_batch():
    assert per_rank_batch(4, 2, 2) == (4, None)
    assert per_rank_batch(4, 2, 1)[0] == 8
    assert per_rank_batch(8, 1, 4)[0] == 2
    batch, note = per_rank_batch(4, 2, 3)  # 8 does not divide by 3: keep 4 per process, say so
    assert batch == 4 and "does not divide" in note


def test_nproc_execs_torchrun_with_the_same_options(monkeypatch):
    from tether.app.commands.train import torchrun_argv
    from tether.core.errors import ConfigError

    argv = torchrun_argv(2, dataset="d.zarr", policy="mlp", steps=5, out="runs/x",
                         overrides=["batch_size=4"], no_progress=True, overwrite=False)
    assert argv[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2"]
    assert argv[6:8] == ["-m", "tether.policies.train"]
    assert argv[8:] == ["--dataset", "d.zarr", "--policy", "mlp", "--steps", "5", "--out", "runs/x",
                        "--set", "batch_size=4", "--no-progress"]
    with_eval = torchrun_argv(2, dataset="d.zarr", eval_task="lift", eval_every=10)
    assert with_eval[6:9] == ["-m", "tether.cli", "train"] and "--eval-task" in with_eval
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="already runs under torchrun"):
        torchrun_argv(2, dataset="d.zarr")


def test_nproc_forwards_every_evaluation_option(monkeypatch, tmp_path):
    """`tether train --nproc 2 --eval-...`: each torchrun process gets the evaluation options
    (they once stopped at --eval-every: --eval-set and --eval-blend were dropped silently)."""
    import os

    from typer.testing import CliRunner

    from tether.cli import build_app

    class Execd(Exception):
        pass

    def capture(path, argv):
        raise Execd(argv)

    monkeypatch.setattr(os, "execv", capture)
    result = CliRunner().invoke(build_app(), [
        "train", "--nproc", "2", "--dataset", str(tmp_path / "d.zarr"), "--policy", "mlp",
        "--eval-task", "lift", "--eval-every", "10", "--eval-episodes", "4",
        "--eval-set", "safety.max_velocity=0.5", "--eval-set", "fps=10", "--eval-blend", "switch",
        "--eval-weights", "both", "--val-holdout", "2"])
    assert isinstance(result.exception, Execd), result.output
    argv = result.exception.args[0]
    joined = " ".join(argv)
    assert "--eval-task lift --eval-episodes 4 --eval-every 10" in joined
    assert "--eval-set safety.max_velocity=0.5 --eval-set fps=10 --eval-blend switch" in joined
    assert "--set eval_weights=both" in joined and "--set val_holdout=2" in joined


# -- real processes ---------------------------------------------------------------------------------


def test_two_processes_match_one_process_with_the_combined_batch(synthetic_store, tmp_path):
    """`tether train --nproc 2` (batch 4 each) == one process with batch 8, after 3 steps; the
    same run resumed on ONE process to step 6 == the one-process run at step 6."""
    reference = _reference(synthetic_store, tmp_path / "one", batch_size=8)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "tether.cli", "train", "--nproc", "2", *_options(synthetic_store),
           "--steps", "3", "--set", "batch_size=4", "--out", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    at_3 = max_abs_diff(two / "checkpoints/last", reference / "checkpoints/step_0000003")
    print(f"2 processes vs 1, step 3: max abs param diff {at_3:.2e}")
    assert at_3 <= TOLERANCE
    # The comparison is sensitive: without the gradient all-reduce a rank would train on its own
    # 4 samples, which moves the weights elsewhere by far more than the tolerance.
    alone = _reference(synthetic_store, tmp_path / "alone", batch_size=4, steps=3)
    assert max_abs_diff(alone / "checkpoints/last", two / "checkpoints/last") > 100 * TOLERANCE

    # Resume the 2-process run on 1 process: batch 8 keeps the global batch and the batch order.
    train(TrainConfig(out=str(two), steps=STEPS, progress=False), resume=True)
    at_6 = max_abs_diff(two / "checkpoints/last", reference / "checkpoints/last")
    print(f"resumed on 1 process, step {STEPS}: max abs param diff {at_6:.2e}")
    assert at_6 <= TOLERANCE


@pytest.mark.slow
def test_two_hosts_through_c10d_rendezvous_match_one_process(synthetic_store, tmp_path):
    """Two torchrun launchers (two "hosts" of 1 process) meet at a c10d rendezvous on localhost.
    Each gets its own --out: the rank-0 host writes the checkpoints, the other writes nothing."""
    reference = _reference(synthetic_store, tmp_path / "one", batch_size=8)
    endpoint = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / "host0", tmp_path / "host1"]
    procs = []
    for out in outs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "tether-test",
               "-m", "tether.policies.train", *_options(synthetic_store), "--steps", str(STEPS),
               "--set", "batch_size=4", "--out", str(out)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=_env()))
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    written = [out for out in outs if (out / "checkpoints").exists()]
    assert len(written) == 1, f"checkpoints written on {written}; only rank 0 writes"
    diff = max_abs_diff(written[0] / "checkpoints/last", reference / "checkpoints/last")
    print(f"2 hosts (c10d) vs 1 process, step {STEPS}: max abs param diff {diff:.2e}")
    assert diff <= TOLERANCE
