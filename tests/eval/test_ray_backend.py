"""`tether eval --backend ray`: one Ray task per episode gives the local backend's per-episode
results, seed for seed (success, length, every joint position and command, bit for bit).

The test starts its own Ray head in this process (2 CPUs, loopback, no dashboard) and shuts it
down after. The policy is a tiny state-only mlp trained for a few steps on scripted twin demos: an
untrained policy is as good as any for equality, and each Ray task loads it from the checkpoint
path itself (no weights travel through Ray).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app

ray = pytest.importorskip(
    "ray", reason="ray is not installed: pip install 'tether[cluster]' (make setup installs it)")

SEEDS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tether.policies.trainer import TrainConfig, train

    tmp = tmp_path_factory.mktemp("ray_eval")
    data = tmp / "lift.zarr"
    recorded = CliRunner().invoke(build_app(), [
        "record", "--robot", "twin:lift", "--episodes", "2", "--out", str(data), "--set", "fps=10",
        "--set", "twin_params.cameras=[]"])
    assert recorded.exit_code == 0, recorded.output
    run = train(TrainConfig(dataset=str(data), policy="mlp", preset="tiny", steps=3, batch_size=8,
                            out=str(tmp / "run"), threads=1, progress=False))
    return run


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _episodes(report):
    from tether.app.eval.records import load_records

    return {r.seed: r for r in load_records(report / "episodes")}


def test_ray_tasks_reproduce_the_local_backend_episode_for_episode(checkpoint, tmp_path, local_ray):
    from tether.app.eval.runner import EvalConfig, evaluate

    local = evaluate(EvalConfig(task="lift", episodes=SEEDS, workers=2, checkpoint=str(checkpoint),
                                out=str(tmp_path / "local"), videos=0), show_progress=False)
    result = CliRunner().invoke(build_app(), [
        "eval", "--task", "lift", "--checkpoint", str(checkpoint), "--episodes", str(SEEDS),
        "--backend", "ray", "--videos", "0", "--out", str(tmp_path / "ray"), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    on_ray = json.loads(result.stdout)
    assert on_ray["backend"] == "ray" and on_ray["seeds"] == local["seeds"]
    a, b = _episodes(tmp_path / "local"), _episodes(tmp_path / "ray")
    assert sorted(a) == sorted(b) == local["seeds"]
    for seed in a:
        assert (a[seed].success, a[seed].length, a[seed].first_success_step) == (
            b[seed].success, b[seed].length, b[seed].first_success_step), seed
        assert np.array_equal(a[seed].joints, b[seed].joints), seed
        assert np.array_equal(a[seed].actions, b[seed].actions), seed
    assert on_ray["success_rate"] == local["success_rate"]


@pytest.mark.slow
def test_ray_tasks_through_a_policy_server_match_the_local_backend(checkpoint, tmp_path, local_ray):
    """The other policy source: every Ray task is a client of one `tether serve` (127.0.0.1)."""
    import os
    import socket
    import subprocess
    import sys

    from tether.app.eval.runner import EvalConfig, evaluate

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tether.cli", "serve", str(checkpoint), "--bind",
                               f"tcp://127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        common = {"task": "lift", "episodes": 2, "server": f"tcp://127.0.0.1:{port}", "videos": 0}
        evaluate(EvalConfig(**common, workers=1, out=str(tmp_path / "local")), show_progress=False)
        evaluate(EvalConfig(**common, backend="ray", out=str(tmp_path / "ray")), show_progress=False)
    finally:
        server.terminate()
        server.wait(timeout=30)
    a, b = _episodes(tmp_path / "local"), _episodes(tmp_path / "ray")
    assert sorted(a) == sorted(b)
    for seed in a:
        assert a[seed].length == b[seed].length and a[seed].success == b[seed].success
        assert np.array_equal(a[seed].joints, b[seed].joints), seed


def test_videos_come_back_through_the_object_store(tmp_path, local_ray):
    """The scripted expert (default twin cameras): each task encodes its video on its node and
    returns the bytes; `--videos 1` keeps the first success in seed order and drops the other."""
    from tether.app.eval.runner import EvalConfig, evaluate

    out = tmp_path / "r"
    summary = evaluate(EvalConfig(task="lift", episodes=2, policy="scripted", backend="ray", out=str(out),
                                  videos=1), show_progress=False)
    assert summary["success_rate"] == 1.0
    records = _episodes(out)
    kept = [r.video for r in records.values() if r.video]
    assert len(kept) == 1 and records[min(records)].video == kept[0]
    assert [p.relative_to(out).as_posix() for p in (out / "videos").iterdir()] == kept
    assert (out / kept[0]).stat().st_size > 10_000


def test_a_failing_task_reports_the_seed_and_the_cause(tmp_path, local_ray):
    from tether.app.eval.runner import EvalConfig, evaluate
    from tether.core.errors import TetherError

    # The path exists nowhere: each task fails loading it, and says so (it is not a local file,
    # so the driver cannot know it is missing on the cluster).
    config = EvalConfig(task="lift", episodes=1, checkpoint=str(tmp_path / "nope"), backend="ray",
                        out=str(tmp_path / "r"), videos=0)
    with pytest.raises(TetherError, match="nope"):
        evaluate(config, show_progress=False)


def test_address_without_the_ray_backend_is_refused(tmp_path):
    result = CliRunner().invoke(build_app(), [
        "eval", "--policy", "scripted", "--address", "auto", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--backend ray" in result.output
