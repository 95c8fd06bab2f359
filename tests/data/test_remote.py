"""Stores on object storage, against a real S3-protocol server (moto in server mode) bound to
127.0.0.1 on a free port: push -> open/inspect/train from the URL -> the same batches as the
local store; a push killed between its uploads leaves no half-visible episode and resumes."""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tether.cli import build_app
from tether.core.errors import StoreError
from tether.data.dataset import EpisodeDataset
from tether.data.remote import push
from tether.data.store import EpisodeStore
from tether.data.synthetic import camera_frames

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """Credentials and endpoint only through the standard AWS environment; a fresh bucket."""
    import s3fs

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "cache"))
    bucket = f"b{tmp_path.name.lower().replace('_', '-')[-40:]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.mkdir(bucket)
    return f"s3://{bucket}"


def _store(path, n_episodes=3, seed=0):
    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, 10.0) as store:
        for e in range(n_episodes):
            n = 6 + 2 * e
            store.add_episode({
                "state": rng.normal(size=(n, 4)).astype(np.float32),
                "action": rng.normal(size=(n, 3)).astype(np.float32),
                "image.top": camera_frames(n, 24, 32, seed=seed + e),
            }, {"task": f"t{e}", "seed": e})
    return path


def test_push_open_inspect_and_identical_batches(s3, tmp_path):
    local = _store(tmp_path / "lift.zarr")
    url = f"{s3}/lift.zarr"
    result = CliRunner().invoke(build_app(), ["data", "push", str(local), url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["remote_after"] == 3
    with EpisodeStore.open(url) as remote, EpisodeStore.open(local) as mine:
        assert remote.is_remote and remote.n_episodes == 3 and not remote.recovery.damaged
        assert remote.episode_metadata(2)["task"] == "t2"
        for e in range(3):
            a, b = remote.get_episode(e), mine.get_episode(e)
            assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    summary = CliRunner().invoke(build_app(), ["inspect", url, "--json"])
    assert summary.exit_code == 0, summary.output
    info = json.loads(summary.output)
    assert info["episodes"] == 3 and info["disk_bytes"] > 0
    # the same windows, batch for batch, read through the bounded chunk cache
    kwargs = dict(obs_horizon=2, action_horizon=4, keys=["state", "image.top"])
    remote_ds, local_ds = EpisodeDataset(url, **kwargs), EpisodeDataset(local, **kwargs)
    assert len(remote_ds) == len(local_ds)
    order = torch.randperm(len(local_ds), generator=torch.Generator().manual_seed(0)).tolist()
    for start in range(0, len(order), 8):
        for a, b in zip(remote_ds.__getitems__(order[start:start + 8]),
                        local_ds.__getitems__(order[start:start + 8]), strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)
    # a nothing-new push is a no-op; a remote URL cannot be opened for writing
    assert push(local, url).pushed == []
    with pytest.raises(StoreError, match="tether data push"):
        EpisodeStore.open(url, "a")


def test_train_a_tiny_policy_from_the_url(s3, tmp_path):
    local = _store(tmp_path / "lift.zarr")
    url = f"{s3}/train.zarr"
    push(local, url)
    result = CliRunner().invoke(build_app(), [
        "train", "--dataset", url, "--policy", "mlp", "--preset", "tiny", "--steps", "3",
        "--out", str(tmp_path / "run"), "--no-progress", "--set", "log_every=1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_a_push_cut_before_its_commit_point_leaves_no_half_visible_episode(s3, tmp_path):
    local = _store(tmp_path / "lift.zarr", n_episodes=4)
    url = f"{s3}/cut.zarr"

    def crash(episode, phase):
        if episode == 2 and phase == "uploaded":
            raise KeyboardInterrupt  # the data, manifest and metadata of episode 2 are up

    with pytest.raises(KeyboardInterrupt):
        push(local, url, on_episode=crash)
    with EpisodeStore.open(url) as remote:
        assert remote.n_episodes == 2 and not remote.recovery.damaged
        assert remote.n_steps == 6 + 8
    report = push(local, url)  # resumes at the remote commit point
    assert report.remote_before == 2 and report.pushed == [2, 3]
    with EpisodeStore.open(url) as remote, EpisodeStore.open(local) as mine:
        assert remote.n_episodes == 4
        assert np.array_equal(remote.get_episode(3)["image.top"], mine.get_episode(3)["image.top"])


def test_a_diverged_remote_is_refused(s3, tmp_path):
    url = f"{s3}/div.zarr"
    push(_store(tmp_path / "a.zarr", n_episodes=2, seed=0), url)
    with pytest.raises(StoreError, match="not the first episodes"):
        push(_store(tmp_path / "b.zarr", n_episodes=3, seed=5), url)


def test_merge_and_export_from_a_url(s3, tmp_path):
    url = f"{s3}/m.zarr"
    push(_store(tmp_path / "a.zarr", n_episodes=2), url)
    _store(tmp_path / "b.zarr", n_episodes=1, seed=9)
    result = CliRunner().invoke(build_app(), ["data", "merge", str(tmp_path / "all.zarr"),
                                              str(tmp_path / "b.zarr"), url])
    assert result.exit_code == 0, result.output
    with EpisodeStore.open(tmp_path / "all.zarr") as merged, EpisodeStore.open(url) as remote:
        assert merged.n_episodes == 3
        assert np.array_equal(merged.get_episode(2)["image.top"], remote.get_episode(1)["image.top"])
    result = CliRunner().invoke(build_app(), ["export", url, "--format", "diffusion_policy",
                                              "--out", str(tmp_path / "replay.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n_episodes"] == 2


def test_record_to_a_url_uploads_the_committed_episodes(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("MUJOCO_GL", "egl")
    url = f"{s3}/rec.zarr"
    result = CliRunner().invoke(build_app(), [
        "record", "--robot", "twin:lift", "--set", "fps=10", "--set", "twin_params.cameras=[]",
        "--teleop", "scripted", "--episodes", "2", "--episode-time", "0.8", "--fast",
        "--out", url])
    assert result.exit_code == 0, result.output
    assert f"uploaded 2 episode(s) to {url}" in result.output
    with EpisodeStore.open(url) as remote:
        assert remote.n_episodes == 2 and "state" in remote.keys
    from tether.data.remote import staging_path

    with EpisodeStore.open(staging_path(url)) as local:  # the local copy stays, for resuming
        assert local.n_episodes == 2
