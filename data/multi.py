"""Several episode stores (local or remote) trained on as one dataset.

`tether train --dataset a.zarr --dataset s3://bucket/b.zarr:0.5` gives each store a sampling
weight (default 1: its samples appear once per epoch; 0.5 half of them, 2 twice; drawn
reproducibly from the seed), fits the normalizer over all stores together (statistics pooled by
step counts, as if the stores were one), and reconciles the stores by name: `state`, `action`
and every camera used must exist in each store with the same shape, fps must match, and so must
the robot's joint convention. What cannot be reconciled is a StoreError naming the store and
the difference. `tether data merge` makes one physical store instead (data/editing.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError, StoreError
from tether.core.schema import is_image_key
from tether.data.location import is_url
from tether.data.store import EpisodeStore

log = logging.getLogger(__name__)

_WEIGHT = re.compile(r"^(?P<path>.+):(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


@dataclass(frozen=True)
class DatasetSpec:
    """One `--dataset` value: a store (path or URL) and its sampling weight."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        """`a.zarr`, `a.zarr:0.5`, `s3://bucket/b.zarr:2` (the weight is the last `:number`)."""
        text = str(text).strip()
        match = _WEIGHT.match(text)
        if match and not match["path"].endswith(":/"):
            path, weight = match["path"], float(match["weight"])
        else:
            path, weight = text, 1.0
        if not path:
            raise StoreError(f"--dataset '{text}' names no store.")
        if not weight > 0:
            raise StoreError(f"--dataset '{text}': the weight must be > 0, got {weight:g}.")
        return cls(path, weight)


def parse_specs(value: str | Sequence[str] | None) -> list[DatasetSpec]:
    values = [value] if isinstance(value, str | Path) else list(value or [])
    specs = [DatasetSpec.parse(str(v)) for v in values if str(v).strip()]
    if not specs:
        raise StoreError("no dataset given; pass --dataset path/to/data.zarr (repeatable).")
    return specs


@dataclass
class StoreInfo:
    """What training needs to know about one store before building a model."""

    spec: DatasetSpec
    fps: float
    keys: list[str]
    shapes: dict[str, tuple[int, ...]]
    attrs: dict[str, Any]
    n_steps: int


def describe(spec: DatasetSpec) -> StoreInfo:
    path = spec.path
    if not is_url(path) and not Path(path).exists():
        raise ConfigError(f"dataset {path} does not exist; record one with `tether record`")
    with EpisodeStore.open(path, "r") as store:
        return StoreInfo(spec, float(store.fps), list(store.keys),
                         {k: tuple(int(d) for d in store.array(k).shape[1:]) for k in store.data_keys},
                         store.attrs, store.n_steps)


def reconcile(infos: Sequence[StoreInfo], cameras: Iterable[str] | None) -> list[str]:
    """The cameras to train on, after checking every store provides the same streams by name.

    `cameras` None: the cameras all stores share (a camera only some have is left out, with a
    warning naming it). StoreError when fps, state/action sizes, a chosen camera's presence or
    shape, or the joint convention differ.
    """
    first = infos[0]
    for info in infos:
        for key in ("state", "action"):
            if key not in info.keys:
                raise StoreError(f"{info.spec.path} needs 'state' and 'action' arrays (has {info.keys}).")
    for info in infos[1:]:
        if abs(info.fps - first.fps) > 1e-9:
            raise StoreError(f"{info.spec.path} was recorded at {info.fps:g} fps but "
                             f"{first.spec.path} at {first.fps:g}; train on stores of one rate "
                             "(resample one of them first).")
        for key in ("state", "action"):
            if info.shapes[key] != first.shapes[key]:
                raise StoreError(
                    f"'{key}' has shape {info.shapes[key]} per step in {info.spec.path} but "
                    f"{first.shapes[key]} in {first.spec.path}: the robots differ and cannot be "
                    "trained on together.")
        a, b = first.attrs.get("convention"), info.attrs.get("convention")
        if a and b and a != b:
            raise StoreError(f"{info.spec.path} is in joint convention '{b}' but {first.spec.path} "
                             f"in '{a}'; convert one (tether.robot.convention) first.")
    if cameras is None:
        sets = [{k for k in info.keys if is_image_key(k)} for info in infos]
        common = set.intersection(*sets)
        dropped = sorted(set.union(*sets) - common)
        if dropped:
            log.warning("cameras %s are not in every dataset; training on %s", dropped,
                        sorted(common) or "state only")
        chosen = sorted(common)
    else:
        chosen = list(cameras)
    for cam in chosen:
        for info in infos:
            if cam not in info.keys:
                raise ConfigError(f"camera key '{cam}' is not in {info.spec.path} (keys: {info.keys}).")
            if info.shapes[cam] != infos[0].shapes[cam]:
                raise StoreError(
                    f"camera '{cam}' is {info.shapes[cam]} in {info.spec.path} but "
                    f"{infos[0].shapes[cam]} in {infos[0].spec.path}; resize one of them first.")
    return chosen


def combine_stats(parts: Sequence[tuple[dict[str, dict[str, np.ndarray]], int]]) -> dict[str, dict[str, np.ndarray]]:
    """Pool per-store statistics (min/max/mean/std) weighted by step counts, as if one store."""
    keys = set.intersection(*(set(stats) for stats, _ in parts))
    out: dict[str, dict[str, np.ndarray]] = {}
    total = float(sum(n for _, n in parts))
    for key in sorted(keys):
        entries = [(stats[key], n) for stats, n in parts]
        mean = sum(np.asarray(e["mean"], np.float64) * n for e, n in entries) / total
        second = sum((np.asarray(e["std"], np.float64) ** 2 + np.asarray(e["mean"], np.float64) ** 2) * n
                     for e, n in entries) / total
        out[key] = {
            "min": np.min([e["min"] for e, _ in entries], axis=0).astype(np.float32),
            "max": np.max([e["max"] for e, _ in entries], axis=0).astype(np.float32),
            "mean": mean.astype(np.float32),
            "std": np.sqrt(np.maximum(second - mean**2, 0.0)).astype(np.float32),
        }
    return out


class TrainingData:
    """The stores of one training run: their description, the dataset and the statistics."""

    def __init__(self, value: str | Sequence[str], cameras: Iterable[str] | None = None) -> None:
        self.specs = parse_specs(value)
        self.infos = [describe(s) for s in self.specs]
        self.cameras = reconcile(self.infos, None if cameras is None else list(cameras))
        first = self.infos[0]
        self.fps = first.fps
        self.attrs = first.attrs
        self.state_dim = int(first.shapes["state"][0])
        self.action_dim = int(first.shapes["action"][0])
        self.image_shapes = {k: list(first.shapes[k]) for k in self.cameras}

    @property
    def single(self) -> bool:
        return len(self.specs) == 1 and self.specs[0].weight == 1.0

    def dataset(self, keys: Sequence[str], episodes: Iterable[int] | None = None, seed: int = 0,
                **window: Any):
        from tether.data.dataset import EpisodeDataset

        if self.single:
            return EpisodeDataset(self.specs[0].path, keys=list(keys), episodes=episodes, **window)
        if episodes is not None:
            raise StoreError("'episodes' selects episodes of one store; with several --dataset "
                             "values make one store first (`tether data merge`).")
        parts = [EpisodeDataset(s.path, keys=list(keys), **window) for s in self.specs]
        return WeightedConcat(parts, [s.weight for s in self.specs], seed)

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        from tether.data.stats import get_stats

        if len(self.specs) == 1:
            return get_stats(self.specs[0].path)
        return combine_stats([(get_stats(i.spec.path), i.n_steps) for i in self.infos])


class WeightedConcat:
    """Samples of several EpisodeDatasets, each store's repeated or thinned by its weight.

    Store i contributes round(weight_i * len_i) samples per epoch (a fixed, seeded choice), so
    any sampler over `range(len(self))` draws the stores in the requested proportions. Batches
    (`__getitems__`) are split by store and put back in order.
    """

    def __init__(self, parts: Sequence[Any], weights: Sequence[float], seed: int = 0) -> None:
        self.parts = list(parts)
        rng = np.random.default_rng(seed)
        store_of, sample_of = [], []
        for i, (part, weight) in enumerate(zip(self.parts, weights, strict=True)):
            n = len(part)
            count = max(1, int(round(weight * n)))
            reps = -(-count // n)
            chosen = np.sort(np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]) \
                if count != n else np.arange(n)
            store_of.append(np.full(count, i, np.int64))
            sample_of.append(chosen.astype(np.int64))
        self._store = np.concatenate(store_of)
        self._sample = np.concatenate(sample_of)
        self.fps = self.parts[0].fps
        self.image_keys = self.parts[0].image_keys

    def __len__(self) -> int:
        return len(self._store)

    def source(self, index: int) -> tuple[int, int]:
        """(store number, sample index in that store) of a sample."""
        return int(self._store[index]), int(self._sample[index])

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        idx = np.asarray(indices, np.int64)
        if np.any(idx < 0) or np.any(idx >= len(self)):
            raise IndexError(f"sample index out of range 0..{len(self) - 1}")
        out: list[Any] = [None] * len(idx)
        stores = self._store[idx]
        for i in np.unique(stores):
            where = np.nonzero(stores == i)[0]
            items = self.parts[int(i)].__getitems__(self._sample[idx[where]].tolist())
            for pos, item in zip(where.tolist(), items, strict=True):
                out[pos] = item
        return out


__all__ = ["DatasetSpec", "TrainingData", "WeightedConcat", "combine_stats", "parse_specs", "reconcile"]
