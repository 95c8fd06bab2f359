"""A torch Dataset of training windows over an episode store.

Sample i is anchored at one step t of one episode and holds
- observations at t-obs_horizon+1 ... t (`state` float32 (To, D), `image.<cam>` uint8 (To, 3, H, W)),
- actions at t+action_start ... t+action_start+action_horizon-1 (`action` float32 (Ta, A)),
with indices outside the episode replaced by the nearest edge step (edge repeat) and flagged in
`obs_is_pad` / `action_is_pad` (bool), so windows never mix two episodes.

Low-dim arrays are loaded into memory at construction (small); images stay on disk and are
decoded inside each DataLoader worker. A batch (`__getitems__`) decodes each distinct frame once,
so overlapping windows (obs_horizon > 1, or a `LocalitySampler`) share work; `frame_cache` > 0
also keeps recent frames across batches (it costs a copy per frame, and only pays off for
sequential sampling). See docs/data.md for measured throughput.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, Sampler, default_collate, get_worker_info
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import StoreError
from tether.data.codecs import frame_decoder, is_video_array
from tether.data.location import is_url
from tether.data.store import EpisodeStore, chunk_file, is_image_key


class EpisodeDataset(Dataset):
    def __init__(
        self,
        store_path: str | Path,
        obs_horizon: int = 1,
        action_horizon: int = 16,
        action_start: int = 0,
        keys: Iterable[str] | None = None,
        episodes: Iterable[int] | None = None,
        frame_cache: int = 0,
        repeats: np.ndarray | None = None,
    ) -> None:
        """`repeats`: optional (n_steps,) count of windows anchored at each step of the store
        (0 leaves a step out; tether.data.interventions.step_repeats weights corrections)."""
        if obs_horizon < 1:
            raise ValueError(f"obs_horizon must be >= 1, got {obs_horizon}")
        if action_horizon < 1:
            raise ValueError(f"action_horizon must be >= 1, got {action_horizon}")
        # a URL stays a string (each DataLoader worker opens it with its own chunk cache)
        self.store_path = str(store_path) if is_url(str(store_path)) else Path(store_path)
        self.obs_horizon = int(obs_horizon)
        self.action_horizon = int(action_horizon)
        self.action_start = int(action_start)
        self.frame_cache = int(frame_cache)
        with EpisodeStore.open(self.store_path, "r") as store:
            self.fps = store.fps
            available = store.keys
            if "action" not in available:
                raise StoreError(f"{self.store_path} has no 'action' key; it cannot train a policy.")
            obs_keys = (
                [k for k in available if k == "state" or is_image_key(k)] if keys is None else list(keys)
            )
            for key in obs_keys:
                if key not in available:
                    raise StoreError(
                        f"Key '{key}' is not in {self.store_path}; available: {', '.join(available)}."
                    )
            self.keys = obs_keys
            self.image_keys = [k for k in obs_keys if is_image_key(k)]
            self.lowdim_keys = [k for k in obs_keys if not is_image_key(k)]
            ends = store.episode_ends
            n_total = len(ends)
            chosen = list(range(n_total)) if episodes is None else sorted(int(e) for e in episodes)
            for e in chosen:
                if not 0 <= e < n_total:
                    raise StoreError(f"Episode {e} is not in {self.store_path} ({n_total} episodes).")
            if not chosen:
                raise StoreError(f"No episodes selected from {self.store_path}.")
            self.episodes = chosen
            n = store.n_steps
            # read_steps checks chunks against the manifests: a lost chunk is an error, not zeros
            self._lowdim = store.read_steps(0, n, ("action", *self.lowdim_keys))
            self.image_shapes = {k: tuple(store.array(k).shape[1:]) for k in self.image_keys}
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        if repeats is not None:
            repeats = np.asarray(repeats, dtype=np.int64)
            if repeats.shape != (int(ends[-1]) if len(ends) else 0,) or np.any(repeats < 0):
                raise StoreError(f"repeats must be one count >= 0 per step of {self.store_path}")
        # every step of the chosen episodes, in order, without a Python loop per episode (the
        # index builds in O(steps) numpy work however many episodes the store has)
        picked = np.asarray(chosen, dtype=np.int64)
        ep_lo, ep_hi = starts[picked], np.asarray(ends, dtype=np.int64)[picked]
        lengths = ep_hi - ep_lo
        owner = np.repeat(np.arange(len(picked)), lengths)  # position in `chosen` of each step
        steps = ep_lo[owner] + np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        if repeats is not None:
            keep = np.repeat(np.arange(len(steps)), repeats[steps])
            steps, owner = steps[keep], owner[keep]
        if not len(steps):
            raise StoreError(f"No training windows left in {self.store_path} after weighting steps "
                             "(every chosen step has weight 0).")
        self._step = steps.astype(np.int64)
        self._lo = ep_lo[owner]
        self._hi = ep_hi[owner] - 1
        self._obs_offsets = np.arange(-self.obs_horizon + 1, 1)
        self._act_offsets = np.arange(self.action_horizon) + self.action_start
        self._reader: _FrameReader | None = None

    def __len__(self) -> int:
        return len(self._step)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        idx = np.asarray(indices, dtype=np.int64)
        if np.any(idx < 0) or np.any(idx >= len(self)):
            raise IndexError(f"sample index out of range 0..{len(self) - 1}")
        step, lo, hi = self._step[idx, None], self._lo[idx, None], self._hi[idx, None]
        obs_raw = step + self._obs_offsets
        act_raw = step + self._act_offsets
        obs_idx = np.clip(obs_raw, lo, hi)
        act_idx = np.clip(act_raw, lo, hi)
        obs_pad = obs_raw != obs_idx
        act_pad = act_raw != act_idx
        batch: dict[str, np.ndarray] = {
            "action": self._lowdim["action"][act_idx],
            **{k: self._lowdim[k][obs_idx] for k in self.lowdim_keys},
        }
        images = {k: self._images(k, obs_idx) for k in self.image_keys}
        items = []
        for j in range(len(idx)):
            item = {k: torch.from_numpy(v[j]) for k, v in batch.items()}
            for k, frames in images.items():
                # frames is (B, To, H, W, 3) as decoded; (To, 3, H, W) is a view of it, so no
                # transposing copy happens here (collate_windows keeps it that way)
                item[k] = frames[j].permute(0, 3, 1, 2)
            item["obs_is_pad"] = torch.from_numpy(obs_pad[j])
            item["action_is_pad"] = torch.from_numpy(act_pad[j])
            items.append(item)
        return items

    def _images(self, key: str, steps: np.ndarray) -> torch.Tensor:
        """Frames for a (B, To) grid of steps, each distinct frame decoded once.

        Inside a DataLoader worker the buffer is allocated in shared memory, so frames are
        decoded straight into the memory the batch travels in (no collate copy).
        """
        reader = self._get_reader()
        shape = (*steps.shape, *self.image_shapes[key])
        out = _shared_empty(shape) if get_worker_info() is not None else torch.empty(shape, dtype=torch.uint8)
        flat = out.numpy().reshape(-1, *self.image_shapes[key])
        reader.prefetch(key, steps)
        # distinct frames in ascending order: a video group is decoded forward once per batch
        flat_steps = steps.reshape(-1)
        unique, first, inverse = np.unique(flat_steps, return_index=True, return_inverse=True)
        for step, pos in zip(unique.tolist(), first.tolist(), strict=True):
            reader.frame_into(key, step, flat[pos])
        for pos, u in enumerate(inverse.reshape(-1).tolist()):
            if pos != first[u]:
                flat[pos] = flat[first[u]]
        return out

    def _get_reader(self) -> _FrameReader:
        # Opened lazily per process: DataLoader workers each get their own file handles.
        if self._reader is None or self._reader.pid != os.getpid():
            self._reader = _FrameReader(self.store_path, self.image_keys, self.frame_cache)
        return self._reader

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    # ------------------------------------------------------------------ conveniences
    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Normalizer statistics of the whole store (saved ones when current)."""
        from tether.data.stats import get_stats

        return get_stats(str(self.store_path))

    def locality_sampler(self, block: int = 8, seed: int = 0) -> LocalitySampler:
        return LocalitySampler(len(self), block=block, seed=seed)


class LocalitySampler(Sampler[int]):
    """Random order of blocks of `block` consecutive samples.

    Neighbouring samples share frames (a window of obs_horizon To overlaps the next by To-1), so
    a batch made of short runs decodes far fewer JPEGs than a fully random one. The runs are
    shuffled every epoch; with block=1 this is plain random sampling.
    """

    def __init__(self, n: int, block: int = 8, seed: int = 0) -> None:
        self.n = int(n)
        self.block = max(1, int(block))
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        starts = np.arange(0, self.n, self.block)
        rng.shuffle(starts)
        for s in starts:
            yield from range(int(s), min(int(s) + self.block, self.n))


def collate_windows(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`default_collate`, except image windows that are already one batch buffer are not copied.

    Pass it as `DataLoader(..., collate_fn=collate_windows)`: images arrive as a (B, To, 3, H, W)
    view of the decoded (B, To, H, W, 3) buffer (channels-last memory; call `.contiguous()` or
    convert with `.float()` in the model). The default collate also works, with one strided copy.
    """
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        base = _batch_base(values)
        out[key] = base if base is not None else default_collate(values)
    return out


def _batch_base(values: list[torch.Tensor]) -> torch.Tensor | None:
    """The (B, ...) view `values` were sliced from, if they are its consecutive rows."""
    first = values[0]
    if first.dim() < 2 or first.is_contiguous():
        return None
    storage = first.untyped_storage()
    step = first.numel()
    for j, v in enumerate(values):
        if v.untyped_storage().data_ptr() != storage.data_ptr() or v.shape != first.shape:
            return None
        if v.stride() != first.stride() or v.storage_offset() != first.storage_offset() + j * step:
            return None
    if first.storage_offset() != 0 or storage.nbytes() != step * len(values) * first.element_size():
        return None
    return torch.as_strided(first, (len(values), *first.shape), (step, *first.stride()), 0)


def _shared_empty(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialized uint8 tensor in shared memory (what DataLoader batches travel in)."""
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


def split_episodes(
    store_or_count: str | Path | EpisodeStore | int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split episode indices into (train, val) by episode, never by step, reproducibly."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if isinstance(store_or_count, int):
        n = store_or_count
    elif isinstance(store_or_count, EpisodeStore):
        n = store_or_count.n_episodes
    else:
        with EpisodeStore.open(store_or_count, "r") as store:
            n = store.n_episodes
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n > 0 else 0
    return sorted(int(e) for e in order[n_val:]), sorted(int(e) for e in order[:n_val])


class _FrameReader:
    """Decodes single frames: per-frame chunk files (JPEG, AVIF, JPEG XL) read directly
    (skipping zarr's per-call overhead), video arrays through their groups (data/video_store)."""

    def __init__(self, path: Path, keys: list[str], cache_size: int) -> None:
        from tether.data.video_store import VideoFrames

        self.pid = os.getpid()
        self.store = EpisodeStore.open(path, "r")
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._direct = {k: frame_decoder(self.store.array(k)) for k in keys}
        self.video = {k: VideoFrames(self.store, k) for k in keys if is_video_array(self.store.array(k))}
        self.decoded = 0  # frames decoded so far (work accounting, see tests)

    def prefetch(self, key: str, steps: np.ndarray) -> None:
        """For a store at a URL: fetch a batch's frames concurrently into the chunk cache
        (for video, each frame's group up to it: at most `gop` chunks)."""
        if not self.store.is_remote or (self._direct[key] is None and key not in self.video):
            return
        wanted = {int(s) for s in np.unique(steps)} - {s for k, s in self._cache if k == key}
        if key in self.video:
            from tether.data.codecs import video_settings

            back = video_settings(self.store.array(key)).gop - 1
            wanted = {p for s in wanted for p in range(max(0, s - back), s + 1)}
        if wanted:
            self.store.path.prefetch([chunk_file(self.store, key, s) for s in sorted(wanted)])

    def frame_into(self, key: str, step: int, out: np.ndarray) -> None:
        """Decode frame `step` of `key` into `out` (H, W, 3), from the cache when possible."""
        cached = self._cache.get((key, step))
        if cached is not None:
            self._cache.move_to_end((key, step))
            out[...] = cached
            return
        self.decoded += 1
        decode = self._direct[key]
        if key in self.video:
            self.video[key].frame_into(step, out)
        elif decode is not None:
            try:
                payload = chunk_file(self.store, key, step).read_bytes()
            except FileNotFoundError:  # never written (all-zero frame), or lost: the manifest knows
                error = self.store.missing_frame_error(key, step)
                if error is not None:
                    raise error from None
                out[...] = 0
            else:
                try:
                    decode(payload, out=out)
                except Exception as exc:  # noqa: BLE001 - imagecodecs raises its own error types
                    raise self.store.decode_error(key, step, exc) from exc
        else:
            out[...] = self.store.read_steps(step, step + 1, [key])[key][0]
        if self.cache_size > 0:
            self._cache[(key, step)] = out.copy()
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
