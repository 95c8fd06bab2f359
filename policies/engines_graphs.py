"""What an inference engine runs for each policy family, and how the policy calls it back.

An engine never sees a whole `Policy`: it gets graphs, torch modules with fixed batch-1 inputs,
and returns runners. A family's `GraphAdapter` says which graphs to cut from its model and how
to put the runners back, so the policy's own code (normalization, observation history, the
DDIM loop and its generator) runs unchanged:

- ACT: one graph, `act`: normalized state + prepared images -> the normalized action chunk
  (ResNet-18 trunk, encoder and decoder together, so the engine can fuse across them);
- diffusion: `vision` (prepared images -> keypoint features, run once per call for the new
  frame) and `denoiser` (noisy actions, timestep, observation features -> prediction, run once
  per denoising step). Only the denoiser runs per step: the observation encoding of a chunk is
  computed once and kept in the policy's history.

Resizing and center-cropping images stay in torch in front of the graphs: exporters do not
reproduce torch's antialiased resize exactly (OpenVINO's differed by 2e-3). A model that does
neither (ACT at full resolution) takes uint8 images into its graph, where the scaling to [0, 1]
and the ImageNet normalization fuse with the first convolution.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

try:
    import torch
    from torch import nn
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError
from tether.core.schema import PolicySpec
from tether.policies.engines_runtimes import Runner
from tether.policies.vision import ImageEncoder, prepare_images

log = logging.getLogger(__name__)

__all__ = ["ADAPTERS", "Graph", "GraphAdapter"]


@dataclass
class Graph:
    """One piece of a model an engine runs: `module(*inputs)` with these exact shapes."""

    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class GraphAdapter:
    """A family's graphs (`graphs(model, spec)`) and the engine-backed model that calls them
    (`install(model, runners, graphs)`; a graph left eager has no runner)."""

    graphs: Callable[[nn.Module, PolicySpec], list[Graph]]
    install: Callable[[nn.Module, dict[str, Runner], dict[str, Graph]], nn.Module]


# -- shared: images --------------------------------------------------------------------------------


class _PreparedVision(nn.Module):
    """`ImageEncoder` taking what `_Preparation` hands over: uint8 images when the preparation
    is plain arithmetic (no resize, no crop: it runs inside the graph), else prepared floats."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.in_graph = _Preparation.of(encoder).in_graph

    def forward(self, images: dict[str, torch.Tensor], train: bool = False) -> list[torch.Tensor]:
        enc = self.encoder
        out = []
        for k in enc.cameras:
            x = prepare_images(images[k], None, 1.0, 0.0, False) if self.in_graph else images[k]
            out.append(enc.head(enc.backbone(x)))
        return out


@dataclass(frozen=True)
class _Preparation:
    """The part of image preparation that runs in torch, in front of the graph.

    Resizing (antialiased) and cropping stay in torch; a model that does neither (ACT at full
    resolution) hands the uint8 images straight to the graph, which scales and normalizes
    them itself (fused into the first convolution's input by the engine).
    """

    cameras: tuple[str, ...]
    image_size: tuple[int, int] | None
    crop_ratio: float

    @classmethod
    def of(cls, encoder: ImageEncoder) -> _Preparation:
        return cls(tuple(encoder.cameras), encoder.image_size, encoder.crop_ratio)

    @property
    def in_graph(self) -> bool:
        return self.image_size is None and self.crop_ratio >= 1.0

    def __call__(self, images: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """uint8 (B, 3, H, W) per camera -> the graph's image inputs, in camera order."""
        if self.in_graph:
            return [images[k].contiguous() for k in self.cameras]
        return [prepare_images(images[k], self.image_size, self.crop_ratio, 0.0, False).contiguous()
                for k in self.cameras]


def _example_images(spec: PolicySpec, cameras: list[str]) -> dict[str, torch.Tensor]:
    """Random uint8 images of the served shapes (H, W, 3 on the wire) as (1, 3, H, W)."""
    shapes = {a.name: a.shape for a in spec.observation}
    gen = torch.Generator().manual_seed(0)
    out = {}
    for k in cameras:
        if k not in shapes or len(shapes[k]) != 3:
            raise PolicyError(f"the policy spec has no image shape for camera '{k}'")
        h, w, c = shapes[k]
        out[k] = torch.randint(0, 256, (1, c, h, w), dtype=torch.uint8, generator=gen)
    return out


def _shallow_clone(model: nn.Module, **replace: nn.Module) -> nn.Module:
    """A copy of `model` sharing every submodule except those in `replace`."""
    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    for name, module in replace.items():
        setattr(clone, name, module)
    return clone


class _RunnerModule(nn.Module):
    """A runner standing where a submodule was: same call, same output.

    The engine was built for fixed input shapes; a call with others (the streaming sampler's
    per-position timesteps) runs the original module instead, noted once in the log.
    """

    def __init__(self, runner: Runner, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.runner = runner
        self.eager = [module]  # in a list: not a submodule, so it is not copied or moved
        self.signature = _signature(inputs)
        self._warned = False

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if _signature(inputs) == self.signature:
            return self.runner(*inputs)[0]
        if not self._warned:
            self._warned = True
            log.info("engine graph built for %s called with %s: that call shape runs eager",
                     self.signature, _signature(inputs))
        return self.eager[0](*inputs)


def _signature(inputs) -> tuple:
    return tuple((tuple(x.shape), x.dtype) for x in inputs)


# -- ACT -------------------------------------------------------------------------------------------


class _ACTGraph(nn.Module):
    """state (1, D) normalized, prepared images -> normalized action chunk (1, k, A); z = 0."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.cameras = list(model.config.cameras)
        self.model = _shallow_clone(model, vision=_PreparedVision(model.vision)) if self.cameras \
            else model

    def forward(self, state: torch.Tensor, *images: torch.Tensor) -> torch.Tensor:
        z = state.new_zeros(state.shape[0], self.model.config.latent_dim)
        return self.model._decode(state, dict(zip(self.cameras, images, strict=True)), z, train=False)


class _EngineACT(nn.Module):
    """Stands in for ACTModel at inference: `predict(obs)` through the `act_chunk` runner."""

    def __init__(self, model: nn.Module, runner: Runner) -> None:
        super().__init__()
        self.config = model.config
        self.runner = runner
        self.prepare = _Preparation.of(model.vision) if model.config.cameras else None

    def predict(self, obs: dict[str, torch.Tensor], steps: int | None = None) -> torch.Tensor:
        images = self.prepare(obs) if self.prepare is not None else []
        return self.runner(obs["state"], *images)[0]


def _act_graphs(model: nn.Module, spec: PolicySpec) -> list[Graph]:
    cams = list(model.config.cameras)
    state = torch.randn(1, model.config.state_dim, generator=torch.Generator().manual_seed(1))
    images = _Preparation.of(model.vision)(_example_images(spec, cams)) if cams else []
    return [Graph("act_chunk", _ACTGraph(model).eval(), (state, *images))]


def _act_install(model: nn.Module, runners: dict[str, Runner], graphs: dict[str, Graph]) -> nn.Module:
    return _EngineACT(model, runners["act_chunk"]) if "act_chunk" in runners else model


# -- diffusion -------------------------------------------------------------------------------------


class _VisionGraph(nn.Module):
    """Prepared images per camera -> per-camera features (tuple, camera order)."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.vision = _PreparedVision(encoder)
        self.cameras = list(encoder.cameras)

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.vision(dict(zip(self.cameras, images, strict=True))))


class _EngineVision(nn.Module):
    """Stands in for ImageEncoder at inference: `vision(images, train=False)` -> features."""

    def __init__(self, encoder: ImageEncoder, runner: Runner) -> None:
        super().__init__()
        self.prepare = _Preparation.of(encoder)
        self.runner = runner

    def forward(self, images: dict[str, torch.Tensor], train: bool = False) -> list[torch.Tensor]:
        if train:
            raise PolicyError("an engine-backed encoder runs inference only; train the torch model")
        return list(self.runner(*self.prepare(images)))


def _diffusion_graphs(model: nn.Module, spec: PolicySpec) -> list[Graph]:
    c = model.config
    gen = torch.Generator().manual_seed(2)
    graphs = []
    if c.cameras:
        images = _Preparation.of(model.vision)(_example_images(spec, list(c.cameras)))
        graphs.append(Graph("vision", _VisionGraph(model.vision).eval(), tuple(images)))
    # The denoiser's own inputs (the U-Net takes flattened features, the transformer does not):
    # record them from one call of the model's step function.
    captured: list[tuple[torch.Tensor, ...]] = []
    hook = model.denoiser.register_forward_pre_hook(lambda _m, args: captured.append(args))
    try:
        x = torch.randn(1, c.horizon, c.action_dim, generator=gen)
        t = torch.full((1,), c.num_train_steps // 2, dtype=torch.long)
        feats = torch.randn(1, c.obs_horizon, model.obs_feature_dim, generator=gen)
        with torch.no_grad():
            model._denoise(x, t, feats)
    finally:
        hook.remove()
    graphs.append(Graph("denoiser", model.denoiser, tuple(a.clone() for a in captured[0])))
    return graphs


def _diffusion_install(model: nn.Module, runners: dict[str, Runner],
                       graphs: dict[str, Graph]) -> nn.Module:
    replace: dict[str, nn.Module] = {}
    if "vision" in runners:
        replace["vision"] = _EngineVision(model.vision, runners["vision"])
    if "denoiser" in runners:
        replace["denoiser"] = _RunnerModule(runners["denoiser"], model.denoiser,
                                            graphs["denoiser"].inputs)
    return _shallow_clone(model, **replace) if replace else model


#: policy type -> its graphs. A family without an entry is served eager.
ADAPTERS: dict[str, GraphAdapter] = {
    "act": GraphAdapter(_act_graphs, _act_install),
    "diffusion": GraphAdapter(_diffusion_graphs, _diffusion_install),
}
