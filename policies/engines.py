"""Inference engines: run a loaded policy's network through a faster runtime than eager PyTorch.

    policy = load_engine_policy("runs/act_lift", engine="auto")      # what `tether serve` does
    policy = accelerate(load_policy(path), "openvino", "bf16")       # the same, by hand

An engine is a row of `ENGINES` (a runtime, the precisions it offers, the package it needs).
`accelerate` cuts the family's graphs out of the model (`tether.policies.engines_graphs`),
builds each with the engine (`tether.policies.engines_runtimes`), checks the engine's output
against eager PyTorch on the same inputs, and returns a policy of the same class whose model
calls the runners. Normalization, observation history, the DDIM loop and its generator stay in
the policy, so one engine serves every step count and sampler.

Nothing here fails a load: a missing package, an export error or an output that differs from
eager beyond the precision's tolerance leaves that graph on eager PyTorch, with one warning
naming the reason. Which engine ran is in `policy.engine` (an `EngineChoice`).

Measured on this 2-core AVX512-BF16 CPU, the one that wins for both families is OpenVINO:
see docs/policies.md (Inference engines) and `benchmarks/engines.py` for the figures.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

try:
    import torch
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import ConfigError
from tether.core.optional import is_installed
from tether.policies.base import Policy
from tether.policies.engines_graphs import ADAPTERS, Graph
from tether.policies.engines_runtimes import (
    BuildRequest,
    Runner,
    build_compile,
    build_eager,
    build_onnx,
    build_openvino,
    input_summary,
)

log = logging.getLogger(__name__)

__all__ = ["AUTO", "AUTO_BF16_MIN_PARAMS", "ENGINES", "PRECISIONS", "TOLERANCE", "Engine", "EngineChoice", "accelerate",
           "auto_precision", "engine_names", "load_engine_policy", "native_bf16"]

#: Bump when the graphs change shape or meaning: cached artifacts of other versions are ignored.
GRAPH_VERSION = 1

PRECISIONS = ("fp32", "bf16")

#: Largest |engine - eager| accepted per precision, relative to max(1, max |eager output|).
#: fp32 engines agree to ~1e-6 (summation order); bf16 keeps 8 mantissa bits (~0.4%).
TOLERANCE = {"fp32": 1e-4, "bf16": 6e-2}


@dataclass(frozen=True)
class Engine:
    """One inference runtime: `build(request) -> runner`; `package` must import for it to run."""

    name: str
    summary: str
    build: Callable[[BuildRequest], Runner]
    precisions: tuple[str, ...] = ("fp32",)
    package: str | None = None  # import name; None: always available (part of torch)
    caches: bool = False  # writes an artifact next to the checkpoint
    auto_bf16: bool = False  # `--precision auto` may pick bf16 (see `auto_precision`)


#: name -> engine. `--engine` takes these names or `auto`.
ENGINES: dict[str, Engine] = {
    "eager": Engine("eager", "PyTorch as trained (bf16: a bf16 copy under autocast)", build_eager,
                    ("fp32", "bf16")),
    "compile": Engine("compile", "torch.compile, inductor CPU, weights frozen", build_compile),
    "onnx": Engine("onnx", "ONNX Runtime CPU (torch.onnx export)", build_onnx, package="onnxruntime",
                   caches=True),
    "openvino": Engine("openvino", "OpenVINO CPU (fp32, or bf16 where the CPU has it)",
                       build_openvino, ("fp32", "bf16"), package="openvino", caches=True,
                       auto_bf16=True),
}

#: `--engine auto`: per policy type, the engines to try, best first (benchmarks/engines.py).
AUTO: dict[str, tuple[str, ...]] = {
    "act": ("openvino", "onnx", "eager"),
    "diffusion": ("openvino", "onnx", "eager"),
}


#: `--precision auto` runs a graph in bf16 from this many parameters up (fp32 below): large
#: graphs are bound by reading their weights (the paper U-Net: 1 GB per denoising step) or by
#: dot products, which bf16 halves; small ones gain nothing. Measured on the twin: the same
#: success with bf16 (docs/policies.md, Inference engines).
AUTO_BF16_MIN_PARAMS = 20_000_000


def auto_precision(engine: Engine, graph: Graph) -> str:
    """What `--precision auto` runs `graph` at on `engine`: bf16 when the engine offers it for
    auto, the CPU computes bf16 natively (AVX512-BF16 or AMX) and the graph is large; else fp32."""
    if not engine.auto_bf16 or not native_bf16():
        return "fp32"
    params = sum(p.numel() for p in graph.module.parameters())
    return "bf16" if params >= AUTO_BF16_MIN_PARAMS else "fp32"


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (Linux: /proc/cpuinfo flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class EngineChoice:
    """What runs a policy: engine and precision per graph, and why any graph fell back."""

    requested: str  # the engine asked for (auto, openvino, ...)
    precision: str  # the precision asked for (auto, fp32, bf16); per graph in `graphs`
    graphs: dict[str, str] = field(default_factory=dict)  # graph -> "engine/precision" it runs on
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # graph -> vs eager fp32
    fallbacks: dict[str, str] = field(default_factory=dict)  # graph -> why it runs eager
    build_s: float = 0.0

    @property
    def engine(self) -> str:
        """The engine every graph runs on, e.g. `openvino` ("mixed" when they differ)."""
        names = {v.split("/")[0] for v in self.graphs.values()} or {"eager"}
        return names.pop() if len(names) == 1 else "mixed"

    def __str__(self) -> str:
        runs = set(self.graphs.values()) or {"eager/fp32"}
        if len(runs) == 1:
            return runs.pop()
        return ", ".join(f"{g} {v}" for g, v in self.graphs.items())


def engine_names() -> list[str]:
    """Valid `--engine` values."""
    return ["auto", *ENGINES]


def load_engine_policy(path: str | Path, engine: str = "auto", precision: str = "auto",
                       device: str = "cpu", cache: bool = True) -> Policy:
    """`load_policy` plus `accelerate`; exported artifacts are cached in `<checkpoint>/engines/`
    (keyed by the weight files, the input shapes and the runtime versions)."""
    from tether.policies.checkpoint import find_checkpoint, load_policy

    check(engine, precision)
    ckpt = find_checkpoint(path)
    policy = load_policy(ckpt, device=device)
    return accelerate(policy, engine, precision, cache_dir=ckpt / "engines" if cache else None,
                      cache_tag=checkpoint_tag(ckpt))


def check(engine: str, precision: str) -> None:
    """ConfigError for an unknown engine or precision, or a precision the engine lacks."""
    if engine != "auto" and engine not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'; use one of: {', '.join(engine_names())}")
    if precision != "auto" and precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; use auto, {', '.join(PRECISIONS)}")
    if engine != "auto" and precision != "auto" and precision not in ENGINES[engine].precisions:
        raise ConfigError(f"engine '{engine}' runs {', '.join(ENGINES[engine].precisions)}, not "
                          f"{precision}; choose another --precision or --engine")


def accelerate(policy: Policy, engine: str = "auto", precision: str = "auto", *,
               cache_dir: Path | None = None, cache_tag: str = "") -> Policy:
    """The policy with its graphs on `engine` (a new policy object; `policy` is unchanged).

    `auto` tries the family's engines in `AUTO` order; a graph whose engine is missing, fails
    to build or disagrees with eager beyond `TOLERANCE` runs eager, with one warning. Precision
    `auto` is per graph (`auto_precision`). Returns `policy` itself when everything runs eager
    fp32.
    """
    check(engine, precision)
    policy_type = policy.spec.policy_type
    prec = precision
    choice = EngineChoice(engine, prec)
    adapter = ADAPTERS.get(policy_type)
    model = getattr(policy, "model", None)
    device = getattr(policy, "device", torch.device("cpu"))
    reason = None
    if adapter is None or model is None:
        reason = f"no engine graphs are defined for '{policy_type}' policies"
    elif torch.device(device).type != "cpu":
        reason = f"engines run on the CPU; the policy is on {device}"
    if reason is not None:
        if engine not in ("auto", "eager") or prec == "bf16":
            log.warning("engine %s/%s not used: %s; serving eager", engine, prec, reason)
        policy.engine = choice  # type: ignore[attr-defined]
        return policy
    candidates = AUTO.get(policy_type, ("eager",)) if engine == "auto" else (engine,)
    if engine == "auto" and prec != "auto":  # keep only engines offering that precision
        candidates = tuple(c for c in candidates if prec in ENGINES[c].precisions) or ("eager",)
    t0 = time.perf_counter()
    graphs = {g.name: g for g in adapter.graphs(model, policy.spec)}
    runners: dict[str, Runner] = {}
    for graph in graphs.values():
        runner = _build_graph(graph, candidates, prec, choice, cache_dir, cache_tag, policy_type)
        if runner is not None:
            runners[graph.name] = runner
    choice.build_s = time.perf_counter() - t0
    if not runners:
        policy.engine = choice  # type: ignore[attr-defined]
        return policy
    engined = _with_model(policy, adapter.install(model, runners, graphs))
    engined.engine = choice  # type: ignore[attr-defined]
    log.info("%s policy runs on %s (built in %.1f s)", policy_type, choice, choice.build_s)
    return engined


def _with_model(policy: Policy, model: torch.nn.Module) -> Policy:
    """A copy of `policy` (its settings, such as a diffusion policy's default sampler, kept)
    calling `model`, with its own fresh episode state."""
    clone = copy.copy(policy)
    for name in policy.episode_state:
        setattr(clone, name, copy.deepcopy(getattr(policy, name)))
    clone.model = model.eval()
    clone.reset()
    return clone


def _build_graph(graph: Graph, candidates: tuple[str, ...], precision: str, choice: EngineChoice,
                 cache_dir: Path | None, cache_tag: str, policy_type: str) -> Runner | None:
    """The first candidate engine that builds and agrees with eager; None means plain eager."""
    reasons = []
    with torch.no_grad():
        reference = _outputs(graph.module(*graph.inputs))
    for name in candidates:
        engine = ENGINES[name]
        p = auto_precision(engine, graph) if precision == "auto" else precision
        p = p if p in engine.precisions else "fp32"
        if name == "eager" and p == "fp32":
            break
        if engine.package is not None and not is_installed(engine.package):
            reasons.append(f"{name}: {engine.package} is not installed (pip install 'tether[fast]')")
            continue
        artifact = None
        if engine.caches and cache_dir is not None:
            artifact = cache_dir / _artifact_name(graph, name, cache_tag, engine.package)
        request = BuildRequest(graph.module, graph.inputs, p, torch.get_num_threads(), artifact)
        try:
            runner = engine.build(request)
            diff, scale = _difference(reference, runner(*graph.inputs))
        except Exception as exc:  # any export/runtime failure: try the next engine
            reasons.append(f"{name}: {type(exc).__name__}: {_first_line(exc)}")
            continue
        if diff > TOLERANCE[p] * max(1.0, scale):
            reasons.append(f"{name}/{p}: output differs from eager by {diff:.3g} (max |output| "
                           f"{scale:.3g}, tolerance {TOLERANCE[p]:g} relative)")
            continue
        choice.graphs[graph.name] = f"{name}/{p}"
        choice.max_abs_diff[graph.name] = diff
        log.info("%s graph '%s' on %s/%s: max |diff| vs eager %.2g", policy_type, graph.name, name,
                 p, diff)
        return runner
    choice.graphs[graph.name] = "eager/fp32"
    if reasons:
        choice.fallbacks[graph.name] = "; ".join(reasons)
        log.warning("%s graph '%s' runs eager: %s", policy_type, graph.name, "; ".join(reasons))
    return None


def _outputs(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _difference(reference: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    if len(got) != len(reference):
        raise RuntimeError(f"the engine returned {len(got)} outputs, eager {len(reference)}")
    diff = scale = 0.0
    for r, g in zip(reference, got, strict=True):
        if tuple(g.shape) != tuple(r.shape):
            raise RuntimeError(f"the engine returned shape {tuple(g.shape)}, eager {tuple(r.shape)}")
        if not torch.isfinite(g).all() and torch.isfinite(r).all():
            raise RuntimeError("the engine returned NaN or inf where eager did not")
        diff = max(diff, float((g.float() - r.float()).abs().max()))
        scale = max(scale, float(r.abs().max()))
    return diff, scale


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


# -- artifact cache --------------------------------------------------------------------------------


def checkpoint_tag(ckpt: Path) -> str:
    """Identifies a checkpoint's weights by its files' sizes and modification times (a rewrite
    by `tether train` replaces the directory, and with it the cache)."""
    parts = []
    for name in ("policy.json", "model.safetensors", "ema.safetensors"):
        path = Path(ckpt) / name
        if path.is_file():
            st = path.stat()
            parts.append([name, st.st_size, st.st_mtime_ns])
    return json.dumps(parts)


def _artifact_name(graph: Graph, engine: str, cache_tag: str, package: str | None) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        runtime = version(package) if package else ""
    except PackageNotFoundError:
        runtime = "?"
    key = json.dumps([GRAPH_VERSION, cache_tag, input_summary(graph.inputs), torch.__version__,
                      engine, runtime])
    return f"{graph.name}-{engine}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
