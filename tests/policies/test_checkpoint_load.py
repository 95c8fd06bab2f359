"""Loading a checkpoint with no training code, the Policy contract, and input validation."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tether.core.errors import PolicyError
from tether.policies.base import Policy
from tether.policies.checkpoint import find_checkpoint, load_policy
from tether.policies.trainer import TrainConfig, train

SMALL = {
    "act": {"dim": 32, "n_heads": 2, "ff_dim": 64, "vision_width": 8, "image_size": None},
    "diffusion": {"down_dims": [16, 32], "step_embed_dim": 16, "vision_width": 8, "num_keypoints": 4,
                  "image_feature_dim": 8, "image_size": None},
    "mlp": {"hidden_dim": 32, "vision_width": 8, "image_size": None},
}


@pytest.fixture(scope="module")
def runs(synthetic_store, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = {}
    for policy in SMALL:
        run = tmp_path_factory.mktemp(policy) / "run"
        out[policy] = train(TrainConfig(dataset=str(synthetic_store), policy=policy, preset="tiny", steps=6,
                                        batch_size=8, out=str(run), progress=False,
                                        model=dict(SMALL[policy])))
    return out


def _obs(rng, h=32, w=40):
    return {"state": rng.normal(size=3).astype(np.float32),
            "image.top": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}


LOADER = r"""
import json, sys
import numpy as np
from tether.policies.checkpoint import load_policy
policy = load_policy(sys.argv[1])
rng = np.random.default_rng(0)
obs = {"state": rng.normal(size=3).astype(np.float32),
       "image.top": rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)}
chunk = policy.predict_chunk(obs)
banned = [m for m in sys.modules if m.startswith(("tether.policies.trainer", "tether.data"))]
print(json.dumps({"chunk": chunk.tolist(), "banned": banned, "spec": policy.spec.as_dict()}))
"""


@pytest.mark.parametrize("policy", ["act", "diffusion", "mlp"])
def test_checkpoint_loads_in_a_fresh_process_without_training_code(runs, tmp_path, policy):
    moved = tmp_path / "exported"
    shutil.copytree(runs[policy] / "checkpoints" / "last", moved)  # nothing else travels with it
    proc = subprocess.run([sys.executable, "-c", LOADER, str(moved)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["banned"] == []
    here = load_policy(moved).predict_chunk(_obs(np.random.default_rng(0)))
    np.testing.assert_allclose(np.array(out["chunk"], dtype=np.float32), here, atol=1e-5)
    spec = out["spec"]
    assert spec["policy_type"] == policy and spec["action_dim"] == 3 and spec["fps"] == 10.0
    assert {a["name"]: (a["dtype"], a["shape"]) for a in spec["observation"]} == {
        "state": ("float32", [3]), "image.top": ("uint8", [32, 40, 3])}
    assert len(spec["normalizer_hash"]) == 16


def test_act_policy_contract(runs):
    policy = load_policy(runs["act"])
    assert isinstance(policy, Policy)
    chunk = policy.predict_chunk(_obs(np.random.default_rng(1)))
    assert chunk.dtype == np.float32 and chunk.shape == (10, 3) and np.all(np.isfinite(chunk))
    assert policy.spec.chunk_size == 10 and policy.last_inference_ms > 0
    raw = load_policy(runs["act"], use_ema=False).predict_chunk(_obs(np.random.default_rng(1)))
    assert not np.allclose(raw, chunk)  # EMA weights are the default, and they differ


def test_diffusion_history_reset_and_step_choice(runs):
    policy = load_policy(runs["diffusion"])
    rng = np.random.default_rng(2)
    o1, o2 = _obs(rng), _obs(rng)
    first = [policy.predict_chunk(o1), policy.predict_chunk(o2, steps=3)]
    policy.reset()
    again = [policy.predict_chunk(o1), policy.predict_chunk(o2, steps=3)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)  # reset clears history and the sampler's RNG
    assert first[0].shape == (8, 3)
    policy.reset()
    policy.predict_chunk(o1)
    # the history matters: o2 after o1 differs from o2 after o2
    after_o1 = policy.predict_chunk(o2, steps=3)
    policy.reset()
    policy.predict_chunk(o2)
    after_o2 = policy.predict_chunk(o2, steps=3)
    assert not np.allclose(after_o1, after_o2)
    for steps in (1, 10, 100):
        assert policy.predict_chunk(o1, steps=steps).shape == (8, 3)
    for bad in (0, 101, 2.5, True):
        with pytest.raises(PolicyError):
            policy.predict_chunk(o1, steps=bad)


def test_bad_observations_are_named(runs):
    policy = load_policy(runs["act"])
    good = _obs(np.random.default_rng(3))
    with pytest.raises(PolicyError, match="missing 'image.top'"):
        policy.predict_chunk({"state": good["state"]})
    with pytest.raises(PolicyError, match="'state' has shape"):
        policy.predict_chunk({**good, "state": np.zeros(4, np.float32)})
    with pytest.raises(PolicyError, match="uint8"):
        policy.predict_chunk({**good, "image.top": good["image.top"].astype(np.float32)})
    with pytest.raises(PolicyError, match="NaN"):
        policy.predict_chunk({**good, "state": np.full(3, np.nan, np.float32)})


def test_bad_checkpoints(runs, tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="holds no checkpoint"):
        load_policy(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(find_checkpoint(runs["act"]), broken)
    meta = json.loads((broken / "policy.json").read_text())
    meta["model_config"]["dim"] = 64
    (broken / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="do not match the model config"):
        load_policy(broken)
    stale = tmp_path / "stale"
    shutil.copytree(find_checkpoint(runs["act"]), stale)
    shutil.copy(find_checkpoint(runs["diffusion"]) / "normalizer.safetensors", stale)
    with pytest.raises(PolicyError, match="normalizer"):
        load_policy(stale)


# Parameter names of checkpoints written before the encoder was shared (tether.policies.vision.
# ImageEncoder): new name prefix -> the old one.
LEGACY_NAMES = {
    "act": {"vision.backbone.": "backbone.", "vision.head.": "input_proj."},
    "diffusion": {"vision.backbone.": "backbone.", "vision.head.0.": "keypoints.",
                  "vision.head.1.": "image_proj.0."},
}


@pytest.mark.parametrize("policy", ["act", "diffusion"])
def test_checkpoints_from_before_the_shared_encoder_still_load(runs, tmp_path, policy):
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(find_checkpoint(runs[policy]), old)
    for name in ("model.safetensors", "ema.safetensors"):
        renamed = {}
        for key, value in load_file(str(old / name)).items():
            prefix = next((p for p in LEGACY_NAMES[policy] if key.startswith(p)), None)
            renamed[key if prefix is None else LEGACY_NAMES[policy][prefix] + key[len(prefix):]] = value
        assert not any(k.startswith("vision.") for k in renamed)
        save_file(renamed, str(old / name))
    obs = _obs(np.random.default_rng(1))
    np.testing.assert_array_equal(load_policy(old).predict_chunk(obs),
                                  load_policy(runs[policy]).predict_chunk(obs))
    np.testing.assert_array_equal(load_policy(old, use_ema=False).predict_chunk(obs),
                                  load_policy(runs[policy], use_ema=False).predict_chunk(obs))
