"""The third family, `mlp`, added through the registry alone: it trains with `tether train`, its
loss drops clearly, its checkpoint round-trips and the policy server serves it."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tether.policies.checkpoint import find_checkpoint, load_policy  # noqa: E402
from tether.policies.client import PolicyClient  # noqa: E402
from tether.policies.server import PolicyServer, ServerConfig  # noqa: E402
from tether.policies.trainer import TrainConfig, train  # noqa: E402

# Small enough for ~30 s on one busy CPU core; the toy task's target is visible only in the image.
SMALL = ["--set", "model.vision_width=8", "--set", "model.image_size=null", "--set", "model.hidden_dim=128",
         "--set", "batch_size=16", "--set", "lr=3e-3", "--set", "log_every=20", "--threads", "1"]


def _tether(*args):
    from typer.testing import CliRunner

    from tether.cli import build_app

    result = CliRunner().invoke(build_app(), list(args))
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def mlp_run(synthetic_store, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mlp") / "run"
    _tether("train", "--dataset", str(synthetic_store), "--policy", "mlp", "--preset", "tiny",
            "--steps", "140", "--out", str(out), "--no-progress", *SMALL)
    return out


def _episodes(store_path):
    from tether.data.store import EpisodeStore

    with EpisodeStore.open(store_path, "r") as store:
        return {k: np.asarray(store.array(k)[:]) for k in ("state", "action", "image.top")}


def test_loss_drops_and_the_policy_beats_the_mean_action(mlp_run, synthetic_store):
    rows = [json.loads(line) for line in (mlp_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.25 * losses[0], losses
    data = _episodes(synthetic_store)
    policy = load_policy(mlp_run)
    assert policy.spec.policy_type == "mlp" and policy.spec.chunk_size == 10  # 1 s at 10 fps (tiny)
    idx = np.arange(0, len(data["state"]), 3)
    pred = np.stack([policy.predict_chunk({"state": data["state"][i], "image.top": data["image.top"][i]})[0]
                     for i in idx])
    err = np.abs(pred - data["action"][idx]).mean()
    baseline = np.abs(data["action"].mean(0) - data["action"][idx]).mean()
    assert err < 0.35 * baseline, (err, baseline)


def test_checkpoint_round_trips_and_serves(mlp_run, synthetic_store):
    data = _episodes(synthetic_store)
    obs = {"state": data["state"][7], "image.top": data["image.top"][7]}
    here = load_policy(mlp_run).predict_chunk(obs)
    again = load_policy(find_checkpoint(mlp_run, prefer="last")).predict_chunk(obs)
    np.testing.assert_array_equal(here, again)
    with PolicyServer(load_policy(mlp_run), ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=10.0) as client:
            assert client.info().spec.policy_type == "mlp"
            client.reset()
            reply = client.infer(obs)
    assert reply.actions.shape == (10, 3)
    np.testing.assert_allclose(reply.actions, here, atol=1e-5)


def test_gru_decoder_trains_and_resumes(synthetic_store, tmp_path):
    """BC-RNN style decoder: a few steps, then a resume that continues bit-identically."""
    model = {"decoder": "gru", "vision_width": 8, "image_size": None, "hidden_dim": 32}
    common = dict(dataset=str(synthetic_store), policy="mlp", preset="tiny", batch_size=8, progress=False,
                  model=model, log_every=2)
    straight = train(TrainConfig(**common, steps=6, out=str(tmp_path / "a")))
    train(TrainConfig(**common, steps=3, out=str(tmp_path / "b")))
    resumed = train(TrainConfig(out=str(tmp_path / "b"), steps=6, progress=False), resume=True)
    from safetensors.torch import load_file

    a = load_file(str(straight / "checkpoints/last/model.safetensors"))
    b = load_file(str(resumed / "checkpoints/last/model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("gru.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    chunk = load_policy(resumed).predict_chunk({"state": np.zeros(3, np.float32),
                                                "image.top": np.zeros((32, 40, 3), np.uint8)})
    assert chunk.shape == (10, 3) and np.isfinite(chunk).all()
