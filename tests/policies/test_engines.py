"""Inference engines through the served path: tiny ACT and diffusion checkpoints, loaded the way
`tether serve` loads them, served on 127.0.0.1 and asked by a real client, answer what eager
PyTorch answers (fp32: within 1e-4; bf16: within 5e-2 of max(1, |action|), actions in
normalized-to-raw units of ~1). A missing engine, a failing export or an engine that computes
something else falls back to eager with one warning, and the server still serves."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tether.app.commands.serve import load_served_policy  # noqa: E402
from tether.core.errors import ConfigError  # noqa: E402
from tether.core.optional import is_installed  # noqa: E402
from tether.policies import engines  # noqa: E402
from tether.policies.checkpoint import save_checkpoint  # noqa: E402
from tether.policies.client import PolicyClient  # noqa: E402
from tether.policies.engines import (  # noqa: E402
    ENGINES,
    Engine,
    accelerate,
    auto_precision,
    native_bf16,
)
from tether.policies.engines_graphs import Graph  # noqa: E402
from tether.policies.normalizer import Normalizer  # noqa: E402
from tether.policies.server import PolicyServer, ServerConfig  # noqa: E402
from tether.policies.torch_policy import make_spec  # noqa: E402

IMAGE = (48, 64, 3)
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


def _checkpoint(root, policy_type: str):
    torch.manual_seed(0)
    common = dict(state_dim=6, action_dim=6, cameras=["image.top"], vision_width=8)
    if policy_type == "act":
        from tether.policies.act import ACTConfig, ACTModel

        model = ACTModel(ACTConfig(**common, chunk_size=10, dim=32, n_heads=2, ff_dim=64,
                                   enc_layers=1, dec_layers=1, vae_enc_layers=1, latent_dim=4))
        chunk, mode = 10, "mean_std"
    else:
        from tether.policies.diffusion import DiffusionConfig, DiffusionModel

        # Sample prediction without clipping: the actions follow the network, not the clip bounds.
        model = DiffusionModel(DiffusionConfig(
            **common, horizon=8, n_action_steps=4, down_dims=[16, 32], n_groups=4,
            step_embed_dim=16, num_keypoints=8, image_feature_dim=16, prediction_type="sample",
            clip_sample=False, inference_steps=5))
        chunk, mode = 4, "min_max"
    stats = {k: {"min": -np.ones(6), "max": np.ones(6), "mean": np.zeros(6), "std": np.ones(6)}
             for k in ("state", "action")}
    norm = Normalizer.from_stats(stats, {"state": mode, "action": mode})
    spec = make_spec(policy_type, 6, {"image.top": list(IMAGE)}, 6, chunk, 10.0, norm)
    return save_checkpoint(root / policy_type, model=model, normalizer=norm,
                           policy_type=policy_type, spec=spec, step=0)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    return {kind: _checkpoint(root, kind) for kind in ("act", "diffusion")}


def _observations(n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"state": rng.normal(size=6).astype(np.float32),
             "image.top": rng.integers(0, 256, IMAGE, dtype=np.uint8)} for _ in range(n)]


def _served_actions(policy, observations) -> list[np.ndarray]:
    """Reset, then one infer per observation, through a server and client on 127.0.0.1."""
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=20.0) as client:
            client.reset()
            return [client.infer(obs).actions for obs in observations]


def _load(ckpt, engine: str, precision: str = "auto"):
    return load_served_policy(str(ckpt), None, 50, 0.0, "cpu", engine=engine, precision=precision)


RUNS = [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("eager", "bf16")]


@pytest.mark.parametrize("kind", ["act", "diffusion"])
@pytest.mark.parametrize("engine, precision", RUNS)
def test_engine_serves_what_eager_serves(checkpoints, kind, engine, precision):
    package = ENGINES[engine].package
    if package is not None and not is_installed(package):
        pytest.skip(f"{package} is not installed (tether[fast])")
    ckpt = checkpoints[kind]
    observations = _observations()
    expected = _served_actions(_load(ckpt, "eager"), observations)
    policy = _load(ckpt, engine, precision)
    assert set(policy.engine.graphs.values()) == {f"{engine}/{precision}"}, policy.engine.fallbacks
    got = _served_actions(policy, observations)
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape
        assert np.abs(g - e).max() <= TOLERANCE[precision] * max(1.0, np.abs(e).max())
    if ENGINES[engine].caches:  # exported once, next to the checkpoint, and reused
        assert any(p.name.startswith(f"{'act_chunk' if kind == 'act' else 'denoiser'}-{engine}-")
                   for p in (ckpt / "engines").iterdir())


@pytest.mark.skipif(not is_installed("openvino"), reason="openvino is not installed (tether[fast])")
def test_auto_picks_openvino_and_other_call_shapes_run_eager(checkpoints):
    """The streaming sampler calls the denoiser with per-position timesteps, a shape the engine
    was not built for: that call runs the torch module and gives the same result."""
    policy = _load(checkpoints["diffusion"], "auto")
    assert str(policy.engine) == "openvino/fp32"
    eager = _load(checkpoints["diffusion"], "eager")
    c = eager.model.config
    x = torch.randn(1, c.horizon, c.action_dim)
    t = torch.arange(c.horizon)[None] * 5
    feats = torch.randn(1, c.obs_horizon, eager.model.obs_feature_dim)
    with torch.inference_mode():
        assert torch.allclose(policy.model._denoise(x, t, feats), eager.model._denoise(x, t, feats))


def _fails_to_build(request):
    raise RuntimeError("export exploded")


def _computes_zeros(request):
    return lambda *inputs: tuple(torch.zeros_like(o) for o in _outputs(request))


def _outputs(request):
    with torch.no_grad():
        out = request.module(*request.inputs)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("engine, reason", [
    (Engine("missing", "a runtime that is not installed", _fails_to_build,
            package="tether_no_such_runtime"), "tether_no_such_runtime is not installed"),
    (Engine("broken", "an export that fails", _fails_to_build), "export exploded"),
    (Engine("wrong", "an engine computing something else", _computes_zeros),
     "differs from eager"),
])
def test_an_engine_that_cannot_run_falls_back_to_eager_and_still_serves(
        checkpoints, monkeypatch, caplog, engine, reason):
    monkeypatch.setitem(ENGINES, engine.name, engine)
    ckpt = checkpoints["act"]
    observations = _observations(2)
    with caplog.at_level(logging.WARNING, logger=engines.__name__):
        policy = _load(ckpt, engine.name)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("tether.policies.engines")]
    assert len(warnings) == 1 and reason in warnings[0] and "runs eager" in warnings[0]
    assert str(policy.engine) == "eager/fp32" and reason in policy.engine.fallbacks["act_chunk"]
    expected = _served_actions(_load(ckpt, "eager"), observations)
    for e, g in zip(expected, _served_actions(policy, observations), strict=True):
        np.testing.assert_array_equal(g, e)


def test_unknown_engine_or_precision_is_a_config_error(checkpoints):
    with pytest.raises(ConfigError, match="unknown engine 'tensorrt'.*openvino"):
        _load(checkpoints["act"], "tensorrt")
    with pytest.raises(ConfigError, match="engine 'onnx' runs fp32, not bf16"):
        _load(checkpoints["act"], "onnx", "bf16")
    with pytest.raises(ConfigError, match="apply to checkpoints"):
        load_served_policy("simple:hold", "twin:lift", 10, 0.0, "cpu", engine="openvino")


def test_accelerate_leaves_the_given_policy_alone(checkpoints):
    from tether.policies.checkpoint import load_policy

    policy = load_policy(checkpoints["act"])
    model = policy.model
    accelerate(policy, "eager", "bf16")
    assert policy.model is model and next(model.parameters()).dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["act", "diffusion"])
def test_torch_compile_serves_what_eager_serves(checkpoints, kind):
    """torch.compile takes 1-2 minutes per graph on a loaded 2-core machine: slow suite."""
    test_engine_serves_what_eager_serves(checkpoints, kind, "compile", "fp32")


def test_auto_precision_is_bf16_only_for_large_graphs_on_cpus_with_native_bf16():
    large = Graph("big", torch.nn.Linear(5000, 4000), (torch.zeros(1, 5000),))  # 20 M parameters
    small = Graph("small", torch.nn.Linear(50, 40), (torch.zeros(1, 50),))
    assert auto_precision(ENGINES["openvino"], large) == ("bf16" if native_bf16() else "fp32")
    assert auto_precision(ENGINES["openvino"], small) == "fp32"
    assert auto_precision(ENGINES["onnx"], large) == "fp32"  # no bf16 there
    assert auto_precision(ENGINES["eager"], large) == "fp32"  # auto never converts eager weights


def test_tether_serve_refuses_an_unknown_engine_with_the_list(checkpoints):
    from typer.testing import CliRunner

    from tether.cli import build_app

    result = CliRunner().invoke(build_app(), ["serve", str(checkpoints["act"]), "--engine", "trt"])
    assert result.exit_code == 2
    assert "unknown engine 'trt'" in result.output and "openvino" in result.output
