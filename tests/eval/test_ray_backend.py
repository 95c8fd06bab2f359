"""`tether eval --backend ray`: one Ray task per episode gives the local backend's per-episode
results, seed for seed (success, length, every joint position and command, bit for bit).

The Ray head runs in its own process (2 CPUs, loopback, no dashboard) and every Ray evaluation is
a `tether eval --backend ray --address ...` process joining it, as on a real cluster: the path a
user takes is tested, and Ray's threads and signal handlers stay out of the pytest process. The
policy is a tiny state-only mlp trained for a few steps on scripted twin demos: an untrained
policy is as good as any for equality, and each Ray task loads it from the checkpoint path itself
(no weights travel through Ray).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed: pip install 'tether[cluster]' (make setup installs it)",
                allow_module_level=True)

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


HEAD = """
import sys, ray
context = ray.init(address="local", num_cpus=2, include_dashboard=False,
                   _node_ip_address="127.0.0.1", log_to_driver=False)
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()  # until the test closes stdin (or dies): then shut the head down
ray.shutdown()
"""


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A private Ray head in its own process; its address for `tether eval --address`."""
    log = tmp_path_factory.mktemp("ray_head") / "head.log"
    with log.open("w") as err:
        head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        address = head.stdout.readline().strip()  # blocks until the head is up (or has died)
        assert address, f"the Ray head did not start: {log.read_text()[-2000:]}"
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)


def tether_eval(address: str, *args: str) -> subprocess.CompletedProcess:
    """`tether eval --backend ray` as its own process, a driver joining the head (bounded)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tether.cli", "eval", "--backend", "ray",
                           "--address", address, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _episodes(report):
    from tether.app.eval.records import load_records

    return {r.seed: r for r in load_records(report / "episodes")}


def test_ray_tasks_reproduce_the_local_backend_episode_for_episode(checkpoint, tmp_path, ray_address):
    from tether.app.eval.runner import EvalConfig, evaluate

    local = evaluate(EvalConfig(task="lift", episodes=SEEDS, workers=2, checkpoint=str(checkpoint),
                                out=str(tmp_path / "local"), videos=0), show_progress=False)
    result = tether_eval(ray_address, "--task", "lift", "--checkpoint", str(checkpoint),
                         "--episodes", str(SEEDS), "--videos", "0", "--out", str(tmp_path / "ray"),
                         "--json")
    assert result.returncode == 0, result.stderr[-3000:]
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
def test_ray_tasks_through_a_policy_server_match_the_local_backend(checkpoint, tmp_path, ray_address):
    """The other policy source: every Ray task is a client of one `tether serve` (127.0.0.1)."""
    import socket

    from tether.app.eval.runner import EvalConfig, evaluate

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tether.cli", "serve", str(checkpoint), "--bind",
                               f"tcp://127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        common = ["--task", "lift", "--episodes", "2", "--videos", "0"]
        evaluate(EvalConfig(task="lift", episodes=2, videos=0, server=f"tcp://127.0.0.1:{port}",
                            workers=1, out=str(tmp_path / "local")), show_progress=False)
        result = tether_eval(ray_address, *common, "--server", f"tcp://127.0.0.1:{port}",
                             "--out", str(tmp_path / "ray"))
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    a, b = _episodes(tmp_path / "local"), _episodes(tmp_path / "ray")
    assert sorted(a) == sorted(b)
    for seed in a:
        assert a[seed].length == b[seed].length and a[seed].success == b[seed].success
        assert np.array_equal(a[seed].joints, b[seed].joints), seed


def test_videos_come_back_through_the_object_store(tmp_path, ray_address):
    """The scripted expert (default twin cameras): each task encodes its video on its node and
    returns the bytes; `--videos 1` keeps the first success in seed order and drops the other."""
    out = tmp_path / "r"
    result = tether_eval(ray_address, "--task", "lift", "--episodes", "2", "--policy", "scripted",
                         "--videos", "1", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["success_rate"] == 1.0
    records = _episodes(out)
    kept = [r.video for r in records.values() if r.video]
    assert len(kept) == 1 and records[min(records)].video == kept[0]
    assert [p.relative_to(out).as_posix() for p in (out / "videos").iterdir()] == kept
    assert (out / kept[0]).stat().st_size > 10_000


def test_a_failing_task_reports_the_seed_and_the_cause(tmp_path, ray_address):
    # The path exists nowhere: each task fails loading it, and says so (it is not a local file,
    # so the driver cannot know it is missing on the cluster).
    result = tether_eval(ray_address, "--task", "lift", "--episodes", "1", "--checkpoint",
                         str(tmp_path / "nope"), "--videos", "0", "--out", str(tmp_path / "r"))
    assert result.returncode != 0 and "nope" in result.stdout + result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr  # a named error, not a crash


def test_address_without_the_ray_backend_is_refused(tmp_path):
    result = CliRunner().invoke(build_app(), [
        "eval", "--policy", "scripted", "--address", "auto", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--backend ray" in result.output
