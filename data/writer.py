"""Writing an episode store: create, append to the uncommitted tail, commit, and recover.

Crash safety: an episode's data is appended to the tail of every array first, then its chunk
manifest (`manifest/<episode>.json`, data/manifest.py) and its metadata
(`episodes/<episode>.json`, data/episodes.py) are written durably and the file system synced,
and `meta/episode_ends` is written last and fsynced. Each file write is atomic: zarr >= 3.1.3
(pinned) writes every file to `<name>.<uuid>.partial` and `os.replace`s it, and the store's own
files go through data/durable.py. So `episode_ends` is the single commit point: a writer killed at
any moment leaves every committed episode intact, and `recover` truncates the partial tail when
the store is next opened for writing (and hides it, without touching the disk, when opened
read-only). Damage that is not a partial tail (committed data missing) is never truncated
silently: append opens refuse and name `tether data repair`.

The functions here work on a `Handles` (the open zarr groups and arrays of one store); the
public `EpisodeStore` (data/store.py) owns one and holds the writer lock (data/lock.py).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.data import episodes as _episodes
from tether.data import last_commit as _last_commit
from tether.data import manifest as _manifest
from tether.data.codecs import (
    CODEC_ATTR,
    DEFAULT_JPEG_QUALITY,
    image_encoding,
    lowdim_encoding,
    parse_image_codec,
)
from tether.data.durable import fsync_dir, fsync_file, sync_filesystem, write_durable
from tether.data.layout import (
    DATA,
    EPISODE_ENDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOWDIM_CHUNK,
    META,
    TIMING,
    array_path,
    check_key,
    is_framewise,
    is_timing_key,
    meta_file,
    normalize,
    parse_timing_key,
)
from tether.data.video import check_frame_shape
from tether.data.video_store import EpisodeVideo

log = logging.getLogger(__name__)

_WRITE_BLOCK = 64  # frames per zarr write call
PLACEHOLDER = _episodes.PLACEHOLDER


@dataclass
class Handles:
    """The open parts of one store: what readers read and the writer appends to."""

    path: Path
    root: Any  # zarr.Group
    meta: Any  # zarr.Group `meta`
    ends_array: Any  # zarr.Array `meta/episode_ends`
    arrays: dict[str, Any]  # store key -> zarr.Array (length may include an uncommitted tail)
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # committed ends
    episodes: Any = field(default_factory=list)  # committed metadata (episodes.LazyMetadata)
    # (k, s): s is one past the largest integer seed of episodes 0..k-1 (None: no seed among
    # them); None until looked up (data/last_commit.py; writable opens look it up at once)
    seeds: tuple[int, int | None] | None = None

    @property
    def n_episodes(self) -> int:
        return len(self.ends)

    @property
    def n_steps(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def zarr_format(self) -> int:
        return int(self.root.metadata.zarr_format)


@dataclass(frozen=True)
class Recovery:
    """What `open` found: a partial (uncommitted) tail left by a crashed writer, or damage.

    A partial tail (data after the last commit, at most one metadata file and one torn
    `episode_ends` entry) is what a killed writer leaves; append opens truncate it. Anything
    more (`lost_episodes`, `missing_metadata`) means committed data is gone; append opens refuse
    unless `repair=True`.
    """

    partial_steps: int  # steps beyond the last committed episode
    dropped_metadata: int  # metadata files of uncommitted episodes
    invalid_ends: int  # trailing episode_ends entries that were not a valid commit
    repaired: bool  # True when the tail was truncated on disk (append mode)
    lost_episodes: int = 0  # episode_ends entries that look committed but whose data is missing
    missing_metadata: int = 0  # committed episodes without (readable) metadata
    missing_keys: tuple[str, ...] = ()  # arrays the last commit had that are gone
    metadata_errors: tuple[str, ...] = ()  # unreadable metadata files (counted in missing_metadata)
    complete: bool = True  # False: a read-only open that did not list the folders (see recover)

    @property
    def clean(self) -> bool:
        return self.partial_steps == 0 and self.dropped_metadata == 0 and self.invalid_ends == 0

    @property
    def damaged(self) -> bool:
        """Committed data is missing: not a crash tail, needs `tether data repair`."""
        return self.lost_episodes > 0 or self.missing_metadata > 0 or bool(self.missing_keys)


# ---------------------------------------------------------------------- creation
def create_files(path: Path, fps: float, zarr_format: int, image_codec: str | None,
                 image_quality: int, robot_config: Mapping[str, Any] | None, calibration: Any,
                 attrs: Mapping[str, Any] | None) -> None:
    """Write an empty store's groups; the root attributes go last (without them it is no store)."""
    import zarr

    codec = parse_image_codec(image_codec, image_quality)  # data/codecs: spec + JPEG quality
    root_attrs = {
        "tether_format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fps": float(fps),
        "image_codec": codec.spec,
        "image_quality": int(codec.settings.get("quality", image_quality)),
        "robot_config": jsonable(robot_config or {}),
        "calibration": jsonable(calibration),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **_convention(robot_config),
        **jsonable(dict(attrs or {})),
    }
    try:
        root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
        root.create_group(DATA)
        root.create_group(TIMING)
        meta = root.create_group(META)
        enc = lowdim_encoding(zarr_format)
        meta.create_array(
            "episode_ends", shape=(0,), chunks=(1 << 16,), dtype="int64", fill_value=0, **enc.kwargs
        )
        root.attrs.update(root_attrs)
    except OSError as exc:
        raise os_error(exc, f"creating {path}") from exc


def _convention(robot_config: Mapping[str, Any] | None) -> dict[str, str]:
    """`convention`: the joint convention the data is in (tether.robot.convention), when known;
    a policy trained on it carries it, and rollout maps or refuses on a robot in another."""
    from tether.robot.convention import convention_for

    convention = convention_for(robot_config or {})
    return {"convention": convention} if convention else {}


# ---------------------------------------------------------------------- recovery
def recover(h: Handles, raw_ends: np.ndarray, writable: bool, repair: bool,
            full: bool = True) -> Recovery:
    """Keep the longest valid prefix of episode_ends; hide or truncate what follows it.

    A killed writer leaves at most: data past the last commit, one manifest and one metadata
    file, and one `episode_ends` entry still at the fill value 0 (the array grew but its chunk
    was not yet rewritten). That tail is truncated when `writable`. Any other invalid entry
    means committed episodes lost data: a writable open refuses (unless repairing); read-only
    hides it.

    `full=False` (read-only opens) skips listing the metadata and manifest folders: what is
    visible depends only on `episode_ends` and the array lengths, so a reader opens the same
    few files at 100 or 10,000 episodes. The returned Recovery is then `complete=False` and
    `EpisodeStore.recovery` finishes it (with `full=True`) when someone asks.

    A writable open skips the listing too when `last_commit.json` shows the two folders
    unchanged since the last commit (data/last_commit.py): then they hold every committed
    episode's files and nothing beyond, and what a writer killed since could have left is
    looked for by name (the files of episode `valid`, and `valid + 1` as a sign of lost
    commits, which sends it back to the listing). Otherwise it lists, and leaves a fresh
    `last_commit.json` for the next open.
    """
    full = full or writable or repair
    lengths = [arr.shape[0] for arr in h.arrays.values()]
    limit = min(lengths) if lengths else 0
    valid = 0
    previous = 0
    for end in raw_ends:
        if end <= previous or end > limit:
            break
        previous = int(end)
        valid += 1
    tail = raw_ends[valid:]
    invalid = len(tail)
    # Zeros are the fill value: a commit cut between growing the array and writing its chunk,
    # or a shrink cut short. A non-zero invalid end is a commit whose data is gone.
    lost = 0 if all(int(e) == 0 for e in tail) else invalid
    # Manifests and metadata files are written just before the commit point: one past the last
    # valid episode is an uncommitted episode's; any further one belonged to a lost commit.
    present: list[int] | None = None
    dropped_meta = 0
    missing_keys: tuple[str, ...] = ()
    record = _last_commit.read(h.path) if writable else None
    quick = writable and not repair and _unchanged_since_last_commit(h.path, record, valid)
    if writable:  # seeds of a prefix stay valid, unless repairing drops or resets episodes
        keep = record is not None and not repair and record.seeds[0] <= valid
        h.seeds = record.seeds if keep else (0, None)
    if quick:
        dropped_meta = int(_episodes.episode_file(h.path, valid).is_file())
        missing_keys = _keys_lost_since_commit(h, valid)
    elif full:
        lost = max(lost, _manifest.count_from(h.path, valid + 1))
        present = _episodes.indices(h.path)
        lost = max(lost, sum(1 for e in present if e > valid))
        dropped_meta = sum(1 for e in present if e >= valid)
        missing_keys = _keys_lost_since_commit(h, valid)
    h.ends = raw_ends[:valid].copy()
    committed = h.n_steps
    partial = max(lengths) - committed if lengths else 0
    if (lost or missing_keys) and writable and not repair:
        _refuse(h, lost, 0, valid, missing_keys)
    # Metadata files are read when used, not here (open time stays flat as the store grows):
    # one listing tells which exist. A writable open reads the newest one (a writer's last
    # commit); repairing reads all, to reset the damaged ones.
    h.episodes = _episodes.LazyMetadata(h.path, valid, None if present is None else set(present),
                                        strict=writable and not repair)
    meta_errors: tuple[str, ...] = ()
    if repair:
        h.episodes.check_all()
    elif writable and valid:
        h.episodes[valid - 1]
    missing_meta = len(h.episodes.missing)
    if missing_meta and writable and not repair:
        _refuse(h, lost, missing_meta, valid, missing_keys)
    if repair:
        meta_errors = tuple(h.episodes.errors[e] for e in sorted(h.episodes.errors))
    repaired = False
    uncommitted_schema = valid == 0 and bool(h.arrays)
    if writable and (partial or dropped_meta or invalid or missing_meta or uncommitted_schema):
        try:
            if uncommitted_schema:
                drop_uncommitted_schema(h)
            truncate_tail(h)
            shrink_ends(h, valid)
            if quick:
                _remove_file(_episodes.episode_file(h.path, valid))
            else:
                _episodes.remove_from(h.path, valid)
            for episode in sorted(h.episodes.missing):  # all read when repairing
                _episodes.write(h.path, episode, h.episodes[episode])
        except OSError as exc:
            raise os_error(exc, "truncating an interrupted episode") from exc
        repaired = True
    if writable:  # manifests of uncommitted episodes
        removed = _remove_file(_manifest.manifest_file(h.path, valid)) if quick else \
            _manifest.remove_from(h.path, valid)
        if not quick or removed or repaired:  # the folders now hold exactly the commits
            _last_commit.write(h.path, valid, h.seeds)
    recovery = Recovery(partial, dropped_meta, invalid, repaired, lost, missing_meta, missing_keys,
                        meta_errors, complete=full)
    if recovery.damaged:
        log.warning(
            "Store %s is damaged: %s %s", h.path,
            describe_damage(lost, missing_meta, valid, missing_keys),
            "Repaired: the damaged episodes were dropped." if repaired else
            f"They are hidden; run `tether data repair {h.path}`.",
        )
    elif not recovery.clean:
        log.warning(
            "Store %s: found an uncommitted tail of %d steps (%d metadata files, %d invalid "
            "commit entries) from an interrupted writer; %s. %d committed episodes are intact.",
            h.path, partial, dropped_meta, invalid,
            "it was truncated" if repaired else "it is hidden (opened read-only)", valid,
        )
    return recovery


def _unchanged_since_last_commit(path: Path, record: _last_commit.LastCommit | None,
                                 valid: int) -> bool:
    """The folders are as the last commit left them, and nothing lies past the next episode."""
    if record is None or record.episodes != valid or not record.folders_unchanged(path):
        return False
    # Files of episode valid + 1 would mean commits were lost (a torn write of episode_ends);
    # the listing counts and reports them.
    return not (_episodes.episode_file(path, valid + 1).exists()
                or _manifest.manifest_file(path, valid + 1).exists())


def _remove_file(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _refuse(h: Handles, lost: int, missing_meta: int, valid: int, missing_keys: tuple[str, ...]):
    raise StoreError(
        f"{h.path} is damaged, not just interrupted: "
        + describe_damage(lost, missing_meta, valid, missing_keys)
        + f" Opening it for appending would silently drop that. Run `tether data verify "
        f"{h.path}` to see the damage, then `tether data repair {h.path}` to keep the "
        f"{valid} intact episodes (or restore the store from a backup)."
    )


def _keys_lost_since_commit(h: Handles, valid: int) -> tuple[str, ...]:
    """Arrays the last committed episode's manifest lists that the store no longer has."""
    if valid == 0:
        return ()
    try:
        man = _manifest.load(h.path, valid - 1)
    except StoreError:
        return ()  # a corrupt manifest is reported by verify, not fatal here
    if man is None:
        return ()
    return tuple(sorted(set(man["keys"]) - set(h.arrays)))


def describe_damage(lost: int, missing_meta: int, valid: int, missing_keys: tuple[str, ...] = ()) -> str:
    parts = [f"the arrays {', '.join(array_path(k) for k in missing_keys)} are gone"] if missing_keys else []
    if lost:
        parts.append(f"{lost} committed episode(s) after episode {valid - 1} have missing data "
                     "(meta/episode_ends, the data arrays and the manifests disagree)")
    if missing_meta:
        parts.append(f"{missing_meta} committed episode(s) have no (readable) metadata file")
    return "; ".join(parts) + "."


def truncate_tail(h: Handles) -> None:
    committed = h.n_steps
    for arr in h.arrays.values():
        if arr.shape[0] != committed:
            arr.resize((committed, *arr.shape[1:]))


def drop_uncommitted_schema(h: Handles) -> None:
    """With no committed episode, the arrays are only a killed first episode's tail.

    Its writer may have died while creating them one by one, so the set of keys is not a schema
    anyone committed to: remove them (and their timing groups), and the next episode creates its
    own.
    """
    for key in list(h.arrays):
        folder = h.path / array_path(key)
        if is_timing_key(key):
            folder = folder.parent  # the stream's group: created with its first array
        shutil.rmtree(folder, ignore_errors=True)
        del h.arrays[key]


def shrink_ends(h: Handles, n: int) -> None:
    """Cut `episode_ends` to `n` entries, zeroing the cut slots first.

    zarr keeps a shrunk array's last chunk as it was, so without zeroing, a later commit that
    grows the array again would briefly expose an old end value there; a crash at that moment
    would look like a valid commit. Zero is never a valid end.
    """
    arr = h.ends_array
    if arr.shape[0] > n:
        arr[n:] = 0
        arr.resize((n,))


def restore_committed(h: Handles) -> None:
    """After a failed commit: bring the disk back to the last commit, as far as it lets us.

    Whatever cannot be undone (a full disk refuses even metadata rewrites) is an uncommitted
    tail that the next append open truncates.
    """
    n = h.n_episodes
    steps = [
        (lambda: drop_uncommitted_schema(h)) if n == 0 else (lambda: truncate_tail(h)),
        lambda: shrink_ends(h, n),
        lambda: _manifest.remove_from(h.path, n),
        lambda: _episodes.remove_from(h.path, n),
    ]
    for step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - best effort, reported, recovery covers it
            log.warning("Store %s: could not undo part of a failed commit (%s); the next "
                        "append open will truncate it.", h.path, exc)


# ---------------------------------------------------------------------- appending
def prepare_block(h: Handles, block: Mapping[str, np.ndarray],
                  expected: set[str] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Validate a block of steps against the layout and the store's arrays.

    Returns the normalized arrays and the block's length. `expected` is the set of keys the
    block must hold (default: the store's keys, once it has any).
    """
    if not block:
        raise StoreError("An episode block must contain at least one key.")
    out: dict[str, np.ndarray] = {}
    length = None
    for key, value in block.items():
        arr = normalize(check_key(key), np.asarray(value))
        if length is None:
            length = arr.shape[0]
        elif arr.shape[0] != length:
            raise StoreError(
                f"Key '{key}' has {arr.shape[0]} steps but other keys have {length}; every "
                "key of an episode block needs the same number of steps."
            )
        out[key] = arr
    if expected is None and h.arrays:
        expected = set(h.arrays)
    if expected is not None:
        missing = sorted(expected - set(out))
        extra = sorted(set(out) - expected)
        if missing or extra:
            raise StoreError(
                f"Episode keys do not match the store {h.path}: missing {missing}, "
                f"unexpected {extra}. Every episode must record the same streams."
            )
    for key, arr in out.items():
        existing = h.arrays.get(key)
        if existing is None:
            continue
        if tuple(existing.shape[1:]) != arr.shape[1:]:
            raise StoreError(
                f"Key '{key}': step shape {arr.shape[1:]} does not match the store's "
                f"{tuple(existing.shape[1:])}."
            )
        if np.dtype(existing.dtype) != arr.dtype:
            raise StoreError(
                f"Key '{key}': dtype {arr.dtype} does not match the store's {existing.dtype}."
            )
    return out, int(length or 0)


def ensure_arrays(h: Handles, block: Mapping[str, np.ndarray]) -> None:
    """Create the store's arrays from the first block (the schema every episode then follows)."""
    if h.arrays:
        return
    attrs = h.root.attrs
    fmt = h.zarr_format
    codec = parse_image_codec(attrs.get("image_codec", "jpeg"),
                              int(attrs.get("image_quality", DEFAULT_JPEG_QUALITY)))
    for key, arr in block.items():
        if is_framewise(key):
            if codec.is_video:
                check_frame_shape(codec.name, *arr.shape[1:3])
            enc = image_encoding(codec, None, fmt)
            chunks = (1, *arr.shape[1:])
            described = {"attributes": {CODEC_ATTR: codec.config()}}  # what `tether inspect` shows
        else:
            enc = lowdim_encoding(fmt)
            chunks = (LOWDIM_CHUNK, *arr.shape[1:])
            described = {}
        if is_timing_key(key):
            stream, name = parse_timing_key(key)
            group = h.root[TIMING].require_group(stream)
        else:
            group, name = h.root[DATA], key
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            created = group.create_array(
                name, shape=(0, *arr.shape[1:]), chunks=chunks, dtype=arr.dtype, fill_value=0,
                **enc.kwargs, **described,
            )
        h.arrays[key] = created


def append_block(h: Handles, block: Mapping[str, np.ndarray], n: int,
                 video: EpisodeVideo | None = None) -> None:
    """Append `n` prepared steps to the tail of every array (invisible until commit).

    Video arrays (data/video_store.py) go through the episode's encoders in `video`.
    """
    ensure_arrays(h, block)
    for key, arr in block.items():
        target = h.arrays[key]
        start = target.shape[0]
        target.resize((start + n, *target.shape[1:]))
        if video is not None and video.owns(key, target):
            video.write(key, target, start, arr)
            continue
        step = _WRITE_BLOCK if is_framewise(key) else n  # bounded in-flight chunk writes
        for i in range(0, n, step):
            target[start + i : start + min(i + step, n)] = arr[i : i + step]


def commit(h: Handles, n_steps: int, metadata: Mapping[str, Any]) -> int:
    """Make the tail an episode. Raises OSError untouched (the caller undoes and reports)."""
    start = h.n_steps
    end = start + n_steps
    for key, arr in h.arrays.items():
        if arr.shape[0] != end:
            raise StoreError(
                f"Internal error: key '{key}' has {arr.shape[0]} steps, expected {end}; the "
                "episode was not committed."
            )
    episode = h.n_episodes
    entry = {"index": episode, "length": n_steps, **jsonable(dict(metadata))}
    # 1. the chunk manifest and 2. this episode's metadata (its own file only), then everything
    # of the episode reaches the disk before 3.
    manifest = _manifest.build(h.path, h.arrays, start, end)
    write_durable(_manifest.manifest_file(h.path, episode), _manifest.encode(manifest))
    _episodes.write(h.path, episode, entry)
    sync_filesystem(h.path)
    new_ends = np.concatenate([h.ends, [end]]).astype(np.int64)
    h.ends_array.resize((len(new_ends),))  # 3. the commit point
    h.ends_array[len(new_ends) - 1 :] = new_ends[-1:]
    h.ends = new_ends
    h.episodes.append(entry)
    if h.seeds is not None and h.seeds[0] == episode:  # caught up: count this one too
        h.seeds = (episode + 1, _last_commit.next_seed_after(h.seeds[1], entry))
    try:
        _fsync_commit_point(h)
    except OSError as exc:
        raise StoreError(
            f"Episode {episode} was committed to {h.path}, but flushing it to disk failed "
            f"({exc.strerror}); it may be lost if the machine loses power now. Check the disk."
        ) from exc
    # 4. a cache for the next append open (no folder listing, the next seed); never required
    _last_commit.write(h.path, h.n_episodes, h.seeds or (0, None))
    return episode


def _fsync_commit_point(h: Handles) -> None:
    folder = h.path / EPISODE_ENDS
    last = _manifest.chunk_in(folder, h.ends_array, (len(h.ends) - 1) // int(h.ends_array.chunks[0]))
    for path in (last, meta_file(folder)):
        fsync_file(path)
    for path in {last.parent, folder, h.path / META}:
        fsync_dir(path)


class EpisodeWriter:
    """Buffers one episode's steps and appends them to the store's uncommitted tail.

    `append` takes one step (`key -> array`: data keys and `timing/<stream>/<field>` keys, see
    data/layout), `extend` a block of steps; every `flush_every` steps the buffer is written, so
    memory stays bounded for long episodes. Nothing is visible to readers until `commit()`.
    """

    def __init__(self, handles: Handles, flush_every: int = 32) -> None:
        self._h = handles
        self.flush_every = max(1, int(flush_every))
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self._steps = 0  # steps already written to the tail
        self._video = EpisodeVideo(handles.path)  # this episode's encoders (new groups)
        self.active = True

    @property
    def n_steps(self) -> int:
        return self._steps + self._buffered

    @property
    def handles(self) -> Handles:
        """The store being written (data/editing appends raw chunk copies through it)."""
        return self._h

    def append(self, step: Mapping[str, np.ndarray]) -> None:
        self._require_active()
        if self._buffer and set(step) != set(self._buffer):
            raise StoreError(
                f"Step keys {sorted(step)} differ from this episode's keys {sorted(self._buffer)}."
            )
        for key, value in step.items():
            self._buffer.setdefault(key, []).append(np.asarray(value))
        self._buffered += 1
        if self._buffered >= self.flush_every:
            self.flush()

    def extend(self, block: Mapping[str, np.ndarray]) -> None:
        self._require_active()
        self.flush()
        self._write(block)

    def flush(self) -> None:
        self._require_active()
        if not self._buffered:
            return
        try:
            block = {key: np.stack(values) for key, values in self._buffer.items()}
        except ValueError as exc:
            self._buffer, self._buffered = {}, 0
            raise StoreError(f"Steps of this episode have inconsistent shapes: {exc}") from exc
        self._buffer, self._buffered = {}, 0
        self._write(block)

    def commit(self, metadata: Mapping[str, Any] | None = None) -> int:
        """Write what is buffered, then the metadata, then the commit point. Returns the index."""
        self.flush()
        if self._steps == 0:
            raise StoreError("Cannot commit an empty episode; record at least one step or discard().")
        committed_before = self._h.n_episodes
        try:
            episode = commit(self._h, self._steps, metadata or {})
        except OSError as exc:
            self._abort()
            raise os_error(exc, "committing the episode") from exc
        except BaseException:
            if self._h.n_episodes == committed_before:  # failed before the commit point
                self._abort()
            else:
                self.active = False
                self._video.close()
            raise
        self.active = False
        self._video.close()
        return episode

    def discard(self) -> None:
        """Drop everything written for this episode; committed episodes are untouched.

        Never raises for I/O: on a full disk even the truncation can fail, and then the tail
        stays on disk, invisible to readers, until the next append open truncates it.
        """
        if not self.active:
            return
        self._buffer, self._buffered = {}, 0
        self.active = False
        self._video.close()
        restore_committed(self._h)

    def write_prepared(self, block: Mapping[str, np.ndarray], n: int) -> None:
        """Append an already validated block (data/editing copies whole episodes this way)."""
        self._require_active()
        try:
            append_block(self._h, block, n, self._video)
        except OSError as exc:
            self._abort()
            raise os_error(exc, "writing episode data") from exc

    def count_written(self, n: int) -> None:
        """Steps written to the tail by other means (raw chunk copies of data/editing)."""
        self._steps += int(n)

    def _write(self, block: Mapping[str, np.ndarray]) -> None:
        prepared, n = prepare_block(self._h, block)
        if n == 0:
            return
        self.write_prepared(prepared, n)
        self._steps += n

    def _abort(self) -> None:
        self.active = False
        self._buffer, self._buffered = {}, 0
        self._video.close()
        restore_committed(self._h)

    def _require_active(self) -> None:
        if not self.active:
            raise StoreError("This episode was already committed or discarded; begin a new one.")


# ---------------------------------------------------------------------- helpers
def os_error(exc: OSError, action: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StoreError(
            f"Disk full while {action} ({exc.strerror}). The episode being written was dropped; "
            "committed episodes are intact. Free space or record to another disk."
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return StoreError(f"Cannot finish {action}: {exc.filename} is a file where a folder is "
                          "needed. Pick another path for the store.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"Permission denied while {action}: {exc}. Check the store's location.")
    return StoreError(f"I/O error while {action}: {exc}")


def jsonable(value: Any) -> Any:
    """Plain JSON types only (numpy scalars/arrays, tuples, Paths, dataclasses converted)."""
    from tether.core.config import to_dict

    return json.loads(json.dumps(to_dict(value), default=str))
