"""The policy registry: every family is complete, unknown names are clear errors, and nothing
outside a family's module and the registry table branches on a policy's name."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tether.core.errors import ConfigError, PolicyError  # noqa: E402
from tether.policies import registry  # noqa: E402
from tether.policies.checkpoint import build_model  # noqa: E402
from tether.policies.normalizer import MODES  # noqa: E402
from tether.policies.presets import get_preset  # noqa: E402
from tether.policies.trainer import TrainConfig, resolve_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PRESET_NAMES = {"tiny", "cpu", "default", "full"}


@pytest.mark.parametrize("name", registry.names())
def test_every_family_is_complete(name):
    family = registry.get_family(name)
    assert family.name == name and family.summary
    assert dataclasses.is_dataclass(family.config_class)
    assert set(family.normalizer_modes) == {"state", "action"}
    assert set(family.normalizer_modes.values()) <= set(MODES)
    assert set(family.presets) >= PRESET_NAMES
    for preset in PRESET_NAMES:  # every preset's model keys are config fields (or trainer keys)
        family.make_config(family.preset(preset)["model"])
        assert set(family.preset(preset)["train"]) <= {f.name for f in dataclasses.fields(TrainConfig)}
    fields = family.dataset_fields(dict(family.preset("tiny")["model"]), 10.0)
    assert not set(fields) & set(family.trainer_keys)  # consumed before the config is built
    model = family.build({**fields, "state_dim": 3, "action_dim": 2, "cameras": []})
    h = family.horizons(model.config)
    assert h.obs_horizon >= 1 and h.chunk >= 1 and h.action_horizon >= h.chunk
    assert -h.action_start == h.obs_horizon - 1 or h.action_start == 0
    assert model.parameter_groups(1e-3, 1e-4)


def test_unknown_names_are_errors_naming_the_known_ones(tmp_path):
    known = ", ".join(registry.names())
    assert known.startswith("act, diffusion")
    with pytest.raises(ConfigError, match=f"policy must be one of: {known}"):
        resolve_config(TrainConfig(dataset="x.zarr", policy="bc", preset="tiny"))
    with pytest.raises(ConfigError, match="unknown preset 'huge' for act"):
        get_preset("act", "huge")
    with pytest.raises(PolicyError, match=f"unknown policy type 'vla' in .*policy.json; known types: {known}"):
        build_model("vla", {}, source=tmp_path / "policy.json")


def test_a_bad_model_config_names_the_key():
    with pytest.raises(ConfigError, match="model.nope"):
        registry.get_family("act").make_config({"nope": 1})
    with pytest.raises(PolicyError, match="chunk_size"):
        registry.get_family("act").build({"state_dim": 3, "action_dim": 2, "chunk_size": 0})


def _name_branches(path: Path, names: set[str]) -> list[str]:
    """`x == "act"`, `x in ("act", ...)`, `match x: case "act"`: comparisons with a family name."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                found += [f"{path.relative_to(ROOT)}:{node.lineno}" for v in values
                          if isinstance(v, ast.Constant) and v.value in names]
        if isinstance(node, ast.MatchValue) and getattr(node.value, "value", None) in names:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_nothing_outside_a_family_module_branches_on_its_name():
    families = {Path(module.replace("tether.policies.", "policies/") + ".py")
                for module in registry.FAMILIES.values()}
    files = [p for folder in ("policies", "tether", "data", "robot", "teleop", "calibration")
             for p in (ROOT / folder).rglob("*.py")
             if p.relative_to(ROOT) not in families | {Path("policies/registry.py")}]
    offenders = [hit for path in files for hit in _name_branches(path, set(registry.names()))]
    assert offenders == []


def _tiny_model_config(family) -> dict:
    """The family's tiny preset, shrunk further (narrow trunk, small native images)."""
    config = family.dataset_fields(family.preset("tiny")["model"], 10.0)
    config.update(state_dim=3, action_dim=2, cameras=["image.top"], vision_width=8, image_size=None)
    return config


@pytest.mark.parametrize("name", registry.names())
def test_family_contract_train_step_predict_and_checkpoint_round_trip(name, tmp_path):
    """What every family must do for the trainer, the loader and the server (a contract suite)."""
    import numpy as np

    from tether.policies.checkpoint import load_policy, save_checkpoint
    from tether.policies.normalizer import Normalizer
    from tether.policies.torch_policy import make_spec

    torch.manual_seed(0)
    family = registry.get_family(name)
    model = family.build(_tiny_model_config(family))
    h = family.horizons(model.config)
    b, (hh, ww) = 4, (32, 40)
    batch = {"state": torch.randn(b, h.obs_horizon, 3),
             "image.top": torch.randint(0, 256, (b, h.obs_horizon, 3, hh, ww), dtype=torch.uint8),
             "action": torch.randn(b, h.action_horizon, 2),
             "action_is_pad": torch.zeros(b, h.action_horizon, dtype=torch.bool)}
    model.train()
    loss, metrics = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert all(p.grad is not None for g in model.parameter_groups(1e-3, 0.0) for p in g["params"])

    stats = {k: {"min": -np.ones(d), "max": np.ones(d), "mean": np.zeros(d), "std": np.ones(d)}
             for k, d in (("state", 3), ("action", 2))}
    norm = Normalizer.from_stats(stats, family.normalizer_modes)
    spec = make_spec(name, 3, {"image.top": [hh, ww, 3]}, 2, h.chunk, 10.0, norm, h.extra)
    model.eval()
    obs = {"state": np.zeros(3, np.float32), "image.top": np.full((hh, ww, 3), 128, np.uint8)}
    here = family.policy_class(model, norm, spec).predict_chunk(obs)
    assert here.shape == (h.chunk, 2) and np.isfinite(here).all()
    ckpt = save_checkpoint(tmp_path / name, model=model, normalizer=norm, policy_type=name, spec=spec, step=1)
    loaded = load_policy(ckpt)
    assert loaded.spec == spec
    np.testing.assert_allclose(loaded.predict_chunk(obs), here, atol=1e-4)
