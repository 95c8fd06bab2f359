"""The policy registry: one entry per policy family, and the only table that knows their names.

A family's module (`tether.policies.act`, ...) defines `FAMILY = PolicyFamily(...)`: its config
class, model class, inference wrapper, normalizer modes, horizons, presets and inference
transform. `FAMILIES` below maps each name to that module. The trainer, the checkpoint loader,
the presets and `tether train` ask this module and never branch on a policy's name, so adding a
family is one new module plus one line in `FAMILIES`.

Modules are imported on first use: listing the names (for an error message, `--help`) costs
nothing, and only the family a run or a checkpoint names is imported.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.core.config import from_dict
from tether.core.errors import ConfigError, PolicyError

if TYPE_CHECKING:
    from torch import nn

    from tether.policies.base import Policy

__all__ = ["FAMILIES", "Horizons", "PolicyFamily", "get_family", "names"]

#: policy type (as in `--policy` and a checkpoint's policy.json) -> the module defining FAMILY.
FAMILIES: dict[str, str] = {
    "act": "tether.policies.act",
    "diffusion": "tether.policies.diffusion",
    "mlp": "tether.policies.mlp",
}


@dataclass(frozen=True)
class Horizons:
    """How a family samples training data and what it serves, derived from its model config.

    `obs_horizon` observation steps per sample (1: the current one only); `action_horizon`
    actions per training sample, starting `action_start` steps from the current one (negative:
    past actions too, as Diffusion Policy denoises); `chunk` actions returned per inference
    call; `extra` goes into the PolicySpec the server publishes.
    """

    obs_horizon: int
    action_horizon: int
    action_start: int
    chunk: int
    extra: dict[str, Any] = field(default_factory=dict)

    def dataset_kwargs(self) -> dict[str, int]:
        """The episode dataset's window arguments."""
        return {"obs_horizon": self.obs_horizon, "action_horizon": self.action_horizon,
                "action_start": self.action_start}


def _no_dataset_fields(model_config: dict[str, Any], fps: float) -> dict[str, Any]:
    return model_config


@dataclass(frozen=True)
class PolicyFamily:
    """Everything the trainer, the loader and the CLI need to know about one policy family.

    - `config_class`: the model config dataclass (checked strictly, saved in policy.json);
    - `model_class`: builds the nn.Module from that config. It provides `compute_loss` through
      `forward(batch) -> (loss, metrics)`, `parameter_groups(lr, weight_decay)` and whatever
      `policy_class` calls;
    - `policy_class`: the inference wrapper, `policy_class(model, normalizer, spec, device)`;
    - `normalizer_modes`: {"state": mode, "action": mode} (see `tether.policies.normalizer`);
    - `horizons(config) -> Horizons`;
    - `presets`: {"tiny"|"cpu"|"default"|"full": {"model": {...}, "train": {...}}};
    - `dataset_fields(model_config, fps) -> model_config`: fills fields that follow from the
      dataset (ACT's chunk covers a time span) and consumes the `trainer_keys` presets use for it;
    - `prepare_for_inference(model)`: in-place transforms `load_policy` applies (BN folding).
    """

    name: str
    summary: str
    config_class: type
    model_class: Callable[[Any], nn.Module]
    policy_class: Callable[..., Policy]
    normalizer_modes: Mapping[str, str]
    horizons: Callable[[Any], Horizons]
    presets: Mapping[str, Mapping[str, Mapping[str, Any]]]
    dataset_fields: Callable[[dict[str, Any], float], dict[str, Any]] = _no_dataset_fields
    trainer_keys: tuple[str, ...] = ()
    prepare_for_inference: Callable[[nn.Module], Any] | None = None

    def preset(self, name: str) -> dict[str, dict[str, Any]]:
        """A deep copy of preset `name` ({"model": {...}, "train": {...}})."""
        if name not in self.presets:
            raise ConfigError(f"unknown preset '{name}' for {self.name}; use one of {sorted(self.presets)}")
        return deepcopy({k: dict(v) for k, v in self.presets[name].items()})

    def make_config(self, model_config: Mapping[str, Any], source: Path | None = None) -> Any:
        """The config dataclass from a plain dict, strictly checked (unknown keys are errors).

        `trainer_keys` are accepted and ignored, so a resolved run config can be checked before
        the dataset fills them in. With `source` (a checkpoint's policy.json) a bad config is a
        PolicyError naming the file."""
        data = {k: v for k, v in model_config.items() if k not in self.trainer_keys}
        try:
            return from_dict(self.config_class, data, "model")
        except ConfigError as exc:
            if source is None:
                raise
            raise PolicyError(f"model_config in {source} is invalid: {exc} The checkpoint is corrupt "
                              "or from another tether version; use another checkpoint") from exc

    def build(self, model_config: Mapping[str, Any], *, load_pretrained: bool = True,
              source: Path | None = None) -> nn.Module:
        """The model built from a plain config dict; `model.config` keeps the config as given.

        `load_pretrained=False` never opens the `pretrained_backbone` file named in the config:
        a checkpoint's own weights are loaded over the model anyway, and a path stored in a
        checkpoint may not exist (or hold other weights) on the machine that loads it.
        """
        config = self.make_config(model_config, source)
        build_config = config
        if not load_pretrained and getattr(config, "pretrained_backbone", None):
            build_config = dataclasses.replace(config, pretrained_backbone=None)
        model = self.model_class(build_config)
        model.config = config
        return model


def names() -> list[str]:
    """The registered policy types, sorted."""
    return sorted(FAMILIES)


def get_family(name: str, source: Path | None = None) -> PolicyFamily:
    """The family registered as `name`.

    An unknown name is a ConfigError (a run config or `--policy`), or a PolicyError naming
    `source` when it comes from a checkpoint; both list the known types."""
    if not isinstance(name, str) or name not in FAMILIES:
        known = ", ".join(names())
        if source is not None:
            raise PolicyError(f"unknown policy type '{name}' in {source}; known types: {known}. Use a "
                              "checkpoint made by `tether train` or upgrade tether if it came from "
                              "a newer version")
        raise ConfigError(f"unknown policy '{name}'; policy must be one of: {known} "
                          "(e.g. --policy act)")
    family = getattr(importlib.import_module(FAMILIES[name]), "FAMILY", None)
    if not isinstance(family, PolicyFamily) or family.name != name:
        raise PolicyError(f"{FAMILIES[name]} does not define FAMILY = PolicyFamily(name='{name}', ...); "
                          "fix the module or its line in tether.policies.registry.FAMILIES")
    return family
