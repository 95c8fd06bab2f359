"""`tether data verify` / `repair`: check every committed chunk against its manifest, fix what can be.

verify reads a store read-only (nothing on disk changes) and reports, per problem, the episode,
key, frame and chunk file: chunks the manifest lists that are gone (zarr would silently read them
as zeros / black frames), chunks whose bytes or rows differ from the checksum written at commit,
chunks that do not decode, and store-level damage found on open (lost commits, missing
metadata). Episodes recorded before manifests existed are decoded instead and listed as
unverified.

repair takes the writer lock and: finishes an interrupted compaction, drops lost commits that a
plain append open refuses to truncate, removes temp files of killed writers, writes manifests
for episodes without a readable one, and with `drop_damaged` deletes the episodes verify flags.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.data import manifest as _manifest
from tether.data.codecs import is_video_array
from tether.data.layout import array_path
from tether.data.store import EpisodeStore
from tether.data.video_store import VideoFrames
from tether.data.writer import describe_damage


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store. `frame` is relative to the episode."""

    kind: str  # missing | corrupt | manifest | metadata | damaged
    message: str
    episode: int | None = None
    key: str | None = None
    frame: int | None = None
    chunk: str | None = None  # chunk file, relative to the store


@dataclass
class VerifyReport:
    path: str
    episodes: int
    steps: int
    chunks_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    unverified: list[int] = field(default_factory=list)  # episodes without a manifest
    partial_steps: int = 0  # an uncommitted tail (harmless: hidden, truncated on append)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_episodes(self) -> list[int]:
        return sorted({p.episode for p in self.problems if p.episode is not None})

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["damaged_episodes"] = self.damaged_episodes
        return out


def verify_store(store: EpisodeStore) -> VerifyReport:
    """Check every committed episode of an open store; never writes."""
    report = VerifyReport(str(store.path), store.n_episodes, store.n_steps,
                          partial_steps=store.recovery.partial_steps)
    rec = store.recovery
    if rec.damaged and not rec.repaired:
        what = describe_damage(rec.lost_episodes, rec.missing_metadata, store.n_episodes,
                                rec.missing_keys)
        report.problems.append(Problem(
            "damaged", f"{what} `tether data repair {store.path}` makes the store consistent "
            "again (restore from a backup to get the data back).",
        ))
        for message in rec.metadata_errors:
            report.problems.append(Problem("metadata", message))
    for episode in range(store.n_episodes):
        try:
            man = store.manifest(episode)
        except StoreError as exc:
            report.problems.append(Problem("manifest", str(exc), episode))
            man = None
        if man is None:
            report.unverified.append(episode)
            report.chunks_checked += _decode_episode(store, episode, report.problems)
            continue
        report.chunks_checked += _check_episode(store, episode, man, report.problems)
    return report


def verify_path(path: str | Path) -> VerifyReport:
    with EpisodeStore.open(path, "r") as store:
        return verify_store(store)


@dataclass
class RepairReport:
    path: str
    actions: list[str]
    dropped_episodes: list[int]
    after: VerifyReport


def repair_store(path: str | Path, drop_damaged: bool = False) -> RepairReport:
    """Make a damaged store consistent again (see the module docstring); returns what it did."""
    path = Path(path)
    actions: list[str] = []
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        actions.append(f"finished the interrupted compaction ({old.name} was left beside it)")
    with EpisodeStore.open(path, "a", repair=True) as store:
        rec = store.recovery
        if rec.lost_episodes:
            actions.append(f"dropped {rec.lost_episodes} lost commit(s) whose data was missing")
        if rec.missing_metadata:
            actions.append(f"gave {rec.missing_metadata} episode(s) placeholder metadata "
                           "({'recovered': true})")
        if rec.partial_steps or rec.dropped_metadata:
            actions.append(f"truncated an uncommitted tail of {rec.partial_steps} steps")
        temps = _remove_temp_files(store.path)
        if temps:
            actions.append(f"removed {temps} temp file(s) left by killed writers")
        rebuilt = []
        for episode in range(store.n_episodes):
            try:
                if store.manifest(episode) is not None:
                    continue
            except StoreError:
                pass  # corrupt manifest: rebuilt below
            problems: list[Problem] = []
            _decode_episode(store, episode, problems)
            if problems:
                continue  # do not bless damaged data with a fresh manifest
            store.write_manifest(episode)
            rebuilt.append(episode)
        if rebuilt:
            actions.append(f"wrote chunk manifests from the data on disk for episode(s) {rebuilt}")
        dropped: list[int] = []
        if drop_damaged:
            dropped = verify_store(store).damaged_episodes
            if dropped:
                store.delete_episodes(dropped)
                actions.append(f"deleted damaged episode(s) {dropped} (later episodes renumbered)")
        after = verify_store(store)
    return RepairReport(str(path), actions, dropped, after)


# ---------------------------------------------------------------------- helpers
def _check_episode(store: EpisodeStore, episode: int, man: dict, problems: list[Problem]) -> int:
    start, stop = store.episode_range(episode)
    if (int(man["start"]), int(man["stop"])) != (start, stop):
        problems.append(Problem(
            "manifest", f"episode {episode}: its manifest covers steps {man['start']}:{man['stop']} "
            f"but the episode is {start}:{stop}; the manifest or meta/episode_ends is damaged.",
            episode))
        return 0
    for key in sorted(set(man["keys"]) - set(store.keys)):
        problems.append(Problem("missing", f"episode {episode}, key '{key}': the whole array "
                                f"{array_path(key)} is gone from the store.", episode, key))
    checked = 0
    for key in store.keys:
        entry = man["keys"].get(key)
        if entry is None:
            problems.append(Problem("manifest", f"episode {episode}, key '{key}': not in the "
                                    "episode's manifest (added after the commit?).", episode, key))
            continue
        arr = store.array(key)
        if "frames_crc32" in entry:
            for frame, crc in enumerate(entry["frames_crc32"]):
                checked += 1
                path = store.chunk_path(key, start + frame)
                rel = path.relative_to(store.path).as_posix()
                try:
                    payload = path.read_bytes()
                except FileNotFoundError:
                    if crc is not None:
                        problems.append(Problem(
                            "missing", f"episode {episode}, key '{key}', frame {frame}: chunk "
                            f"{rel} is missing (it would read back as a black frame).",
                            episode, key, frame, rel))
                    continue
                if crc is None or zlib.crc32(payload) != crc:
                    problems.append(Problem(
                        "corrupt", f"episode {episode}, key '{key}', frame {frame}: chunk {rel} "
                        "differs from what was committed (checksum mismatch).",
                        episode, key, frame, rel))
        else:
            rows = int(entry.get("chunk_rows", arr.chunks[0]))
            lost = False
            for chunk in entry.get("chunks", []):
                checked += 1
                path = store.chunk_path(key, chunk)
                if not path.is_file():
                    frame = max(start, chunk * rows) - start
                    rel = path.relative_to(store.path).as_posix()
                    problems.append(Problem(
                        "missing", f"episode {episode}, key '{key}', frames {frame}-"
                        f"{min(stop, (chunk + 1) * rows) - start - 1}: chunk {rel} is missing "
                        "(it would read back as zeros).", episode, key, frame, rel))
                    lost = True
            if lost:
                continue
            try:
                values = np.asarray(arr[start:stop])
            except Exception as exc:  # noqa: BLE001 - codec errors have no common base
                err = store.locate_decode_error(key, start, stop, exc)
                problems.append(Problem("corrupt", str(err), episode, key))
                continue
            if _manifest.rows_crc32(values) != entry["rows_crc32"]:
                problems.append(Problem(
                    "corrupt", f"episode {episode}, key '{key}', frames 0-{stop - start - 1}: the "
                    "rows differ from what was committed (checksum mismatch).", episode, key, 0))
    return checked


def _decode_episode(store: EpisodeStore, episode: int, problems: list[Problem]) -> int:
    """Without a manifest: at least every chunk must decode."""
    start, stop = store.episode_range(episode)
    checked = 0
    for key in store.keys:
        arr = store.array(key)
        if is_video_array(arr):  # frames decode only in their groups (data/video_store)
            checked += stop - start
            try:
                VideoFrames(store, key).read(start, stop)
            except StoreError as exc:
                problems.append(Problem("corrupt", str(exc), episode, key))
            continue
        rows = int(arr.chunks[0])
        for chunk_start in range(start - start % rows, stop, rows):
            step = max(start, chunk_start)
            checked += 1
            try:
                np.asarray(arr[step : min(stop, chunk_start + rows)])
            except Exception as exc:  # noqa: BLE001
                problems.append(Problem("corrupt", str(store.decode_error(key, step, exc)),
                                        episode, key, step - start))
    return checked


def _remove_temp_files(path: Path) -> int:
    """zarr's `<name>.<uuid>.partial` and the store's `.<name>.<pid>.tmp` of killed writers."""
    removed = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(".partial") or (name.startswith(".") and name.endswith(".tmp")):
                os.unlink(os.path.join(root, name))
                removed += 1
    return removed
