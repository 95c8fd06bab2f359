"""The runtimes behind `tether.policies.engines`: each turns one graph into a runner.

A graph is a torch module with fixed example inputs (batch 1, the shapes the policy serves);
a runner is a callable `runner(*tensors) -> tuple of float32 tensors` computing the same thing.
Each builder here is one row of the engine table in `tether.policies.engines`:

- `eager`: the module itself (fp32), or a bf16 copy of it run under autocast;
- `compile`: `torch.compile` (inductor, CPU, weights frozen into the graph);
- `onnx`: exported with `torch.onnx.export`, run by ONNX Runtime's CPU provider;
- `openvino`: converted with `openvino.convert_model` (TorchScript tracing), compiled for the
  CPU plugin with fp32 or bf16 inference precision (bf16 runs natively on CPUs with
  AVX512-BF16 or AMX; elsewhere OpenVINO keeps fp32).

Exported artifacts (`.onnx`, OpenVINO IR `.xml` + `.bin`: protobuf / XML + raw weights, never
pickle) are written to `artifact` when given, atomically (temporary names, then rename), and
reused by the next load; without one the export stays in memory. Each runner copies its outputs: both runtimes reuse their output
buffers, and the sampling loop feeds one step's output into the next.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    import torch
    from torch import nn
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

log = logging.getLogger(__name__)

__all__ = ["BuildRequest", "Runner", "build_compile", "build_eager", "build_onnx",
           "build_openvino"]

#: runner(*inputs) -> outputs, all torch tensors on the CPU, outputs float32.
Runner = Callable[..., tuple[torch.Tensor, ...]]


@dataclass
class BuildRequest:
    """What a builder needs: the graph, its example inputs, the precision, where to cache."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    precision: str  # fp32 | bf16
    threads: int
    artifact: Path | None = None  # path stem for a cached export (suffix added per runtime)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# -- eager ---------------------------------------------------------------------------------------


def build_eager(req: BuildRequest) -> Runner:
    """fp32: the module as it is. bf16: a bf16 copy of the weights run under CPU autocast (the
    weights are converted once, so no step pays for casting them)."""
    if req.precision == "fp32":
        module = req.module

        def run_fp32(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.inference_mode():
                return _as_tuple(module(*inputs))

        return run_fp32
    module = copy.deepcopy(req.module).to(torch.bfloat16)

    def run_bf16(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return tuple(o.float() for o in _as_tuple(module(*inputs)))

    return run_bf16


# -- torch.compile --------------------------------------------------------------------------------


def build_compile(req: BuildRequest) -> Runner:
    """Inductor with freezing (constant weights, prepacked for oneDNN); compiles on this call.

    Inputs are passed as fresh contiguous inference-mode tensors: the compiled graph is guarded
    on strides and on inference-mode-ness, and the sampling loop feeds a transposed view back,
    which would otherwise recompile (tens of seconds) on the first request.
    """
    compiled = torch.compile(req.module, options={"freezing": True})

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            inputs = tuple(x.clone(memory_format=torch.contiguous_format) for x in inputs)
            return tuple(o.clone() for o in _as_tuple(compiled(*inputs)))

    run(*req.inputs)  # compile now, not on the first request
    return run


# -- ONNX Runtime ---------------------------------------------------------------------------------


def build_onnx(req: BuildRequest) -> Runner:
    import onnxruntime as ort

    path = _artifact(req.artifact, ".onnx")
    if path is not None and path.is_file():
        log.info("engine artifact %s reused", path)
        model: str | bytes = str(path)
    else:
        buffer = io.BytesIO()
        names = [f"input{i}" for i in range(len(req.inputs))]
        with torch.no_grad(), warnings_quiet(), _no_mha_fastpath():
            torch.onnx.export(req.module, req.inputs, buffer, input_names=names, dynamo=False,
                              opset_version=17)
        model = buffer.getvalue()
        if path is not None:
            _save_atomically([path], lambda tmp: tmp[0].write_bytes(model))
    options = ort.SessionOptions()
    options.intra_op_num_threads = req.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(req.inputs):
        raise RuntimeError(f"the ONNX graph has {len(names)} inputs, expected {len(req.inputs)}")

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs, strict=True)}
        return tuple(torch.from_numpy(o) for o in session.run(None, feed))

    return run


# -- OpenVINO -------------------------------------------------------------------------------------


@functools.cache
def openvino_core():
    """The process's one `ov.Core`, made on first use and kept until the process exits.

    OpenVINO's CPU plugin gives the thread that compiles its own alternate signal stack per
    Core and puts back the one it found when that Core is destroyed. Cores destroyed in the
    order they were made (a diffusion policy's two graphs, two policies loaded in turn) leave
    the thread on an unmapped alternate stack, and its next signal with a Python handler
    (Ctrl-C, SIGTERM, the SIGCHLD handler of a torch DataLoader with workers) kills the
    process with SIGSEGV. One Core that is never destroyed cannot be released out of order
    (tests/policies/test_engines_signals.py)."""
    import openvino as ov

    return ov.Core()


def build_openvino(req: BuildRequest) -> Runner:
    import openvino as ov

    core = openvino_core()
    xml = _artifact(req.artifact, ".xml")
    keep: tuple = ()
    if xml is not None and xml.is_file() and xml.with_suffix(".bin").is_file():
        log.info("engine artifact %s reused", xml)
        model = core.read_model(str(xml))
    else:
        with torch.no_grad(), warnings_quiet():
            model = ov.convert_model(req.module, example_input=req.inputs)
        keep = (req.module,)  # the converted model may share the module's weight memory
        if xml is not None:  # fp32 weights: the precision is chosen at compile time
            _save_atomically([xml, xml.with_suffix(".bin")],
                             lambda tmp: ov.save_model(model, str(tmp[0]), compress_to_fp16=False))
    config = {"INFERENCE_PRECISION_HINT": "bf16" if req.precision == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": req.threads, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    n_out = len(compiled.outputs)
    lock = threading.Lock()  # one request object: policies forked per client share it

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _ = keep, model  # alive as long as the runner
        with lock:
            request.infer([x.detach().cpu().numpy() for x in inputs])
            return tuple(torch.from_numpy(request.get_output_tensor(i).data.copy())
                         for i in range(n_out))

    return run


# -- artifacts ------------------------------------------------------------------------------------


def _artifact(stem: Path | None, suffix: str) -> Path | None:
    return None if stem is None else stem.with_name(stem.name + suffix)


def _save_atomically(paths: list[Path], write: Callable[[list[Path]], None]) -> None:
    """Write `paths` (the last one is the commit marker: an IR's .xml after its .bin) under
    temporary names, then rename. A failure (read-only checkpoint, full disk) is logged: the
    engine still runs from memory, it is only not cached."""
    tmps = [p.with_name(f".{p.stem}.{os.getpid()}.tmp{p.suffix}") for p in paths]
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        write(tmps)
        for tmp, path in zip(tmps, paths, strict=True):
            os.replace(tmp, path)
        log.info("engine artifact written: %s", paths[-1])
    except (OSError, RuntimeError) as exc:
        log.warning("engine artifact %s not cached (%s); it is rebuilt on the next load",
                    paths[-1], exc)
    finally:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def _no_mha_fastpath():
    """nn.Transformer*'s fused inference kernel has no ONNX export; trace the plain layers."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def warnings_quiet():
    """Tracing warns about every Python int it freezes (shapes are fixed at batch 1 anyway)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def input_summary(inputs: Sequence[torch.Tensor]) -> str:
    """`float32[1,16,14] int64[1]`: the shapes a graph was exported for (part of the cache key)."""
    return " ".join(f"{str(x.dtype).removeprefix('torch.')}{list(x.shape)}" for x in inputs)
