"""Trainer mechanics on a real (small) episode store: outputs, bit-identical resume, evaluation."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tether.core.errors import ConfigError, PolicyError
from tether.policies.base import Policy
from tether.policies.trainer import TrainConfig, load_run_config, train

SMALL = {
    "act": {"dim": 32, "n_heads": 2, "ff_dim": 64, "vision_width": 8, "image_size": None},
    "diffusion": {"down_dims": [16, 32], "step_embed_dim": 16, "vision_width": 8, "num_keypoints": 4,
                  "image_feature_dim": 8, "image_size": None},
}


def _config(store, out, policy="act", steps=8, **kw):
    return TrainConfig(dataset=str(store), policy=policy, preset="tiny", steps=steps, out=str(out),
                       batch_size=8, log_every=2, save_every=4, progress=False, model=dict(SMALL[policy]),
                       **kw)


def _tensors(run, name):
    return load_file(str(run / "checkpoints" / "last" / name))


@pytest.mark.parametrize("policy", ["act", "diffusion"])
def test_resume_continues_bit_identically(synthetic_store, tmp_path, policy):
    straight = train(_config(synthetic_store, tmp_path / "straight", policy, steps=8))
    first = train(_config(synthetic_store, tmp_path / "resumed", policy, steps=4))
    resumed = train(TrainConfig(out=str(first), steps=8, progress=False), resume=True)
    for name in ("model.safetensors", "ema.safetensors", "train_state.safetensors"):
        a, b = _tensors(straight, name), _tensors(resumed, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    straight_rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]


def test_run_directory_contents(synthetic_store, tmp_path):
    run = train(_config(synthetic_store, tmp_path / "run", steps=4))
    ckpt = run / "checkpoints" / "last"
    for name in ("policy.json", "model.safetensors", "ema.safetensors", "normalizer.safetensors",
                 "train_state.safetensors", "train_state.json"):
        assert (ckpt / name).is_file(), name
    meta = json.loads((ckpt / "policy.json").read_text())
    assert meta["policy_type"] == "act" and meta["step"] == 4
    assert meta["model_config"]["chunk_size"] == 10  # 1 s at 10 fps (tiny preset)
    cfg = load_run_config(run)
    assert cfg.lr == 1e-3 and cfg.model["dim"] == 32  # preset filled in, override kept
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,key,value" and any(",lr," in line for line in csv_lines)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "lr", "it_s", "grad_norm", "l1"} <= set(row)


def test_periodic_evaluation_keeps_the_best_checkpoint(synthetic_store, tmp_path):
    scores = iter([0.2, 0.9, 0.5])
    seen = []

    def evaluate(policy: Policy) -> float:
        assert isinstance(policy, Policy)
        seen.append(policy.spec.chunk_size)
        return next(scores)

    run = train(_config(synthetic_store, tmp_path / "run", steps=6, eval_every=2), evaluate=evaluate)
    assert len(seen) == 3
    best = json.loads((run / "checkpoints" / "best" / "policy.json").read_text())
    assert best["step"] == 4  # the 0.9 evaluation
    rates = [json.loads(line).get("success_rate") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rates if r is not None] == [0.2, 0.9, 0.5]
    assert json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())["best_score"] == 0.9


def test_bad_configs_fail_with_clear_messages(synthetic_store, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        train(_config(tmp_path / "missing.zarr", tmp_path / "r"))
    with pytest.raises(ConfigError, match="policy must be"):
        train(_config(synthetic_store, tmp_path / "r", policy="act", steps=1).__class__(
            dataset=str(synthetic_store), policy="bc", out=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match="preset"):
        train(TrainConfig(dataset=str(synthetic_store), preset="huge", out=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match="camera key 'image.side'"):
        train(_config(synthetic_store, tmp_path / "r", cameras=["image.side"]))
    with pytest.raises(ConfigError, match="Unknown config key 'model.bogus'"):
        train(TrainConfig(dataset=str(synthetic_store), preset="tiny", steps=1, out=str(tmp_path / "r"),
                          model={"bogus": 1}, progress=False))
    with pytest.raises(PolicyError, match="not a tether training run"):
        train(TrainConfig(out=str(tmp_path / "nothing")), resume=True)
