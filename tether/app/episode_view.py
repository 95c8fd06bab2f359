"""`tether view`: recorded episodes in rerun, laid out like the live view.

Each episode is its own rerun recording (the viewer lists them side by side), with the same
entity paths as `--view` (tether.app.live_view): `cameras/<name>`, `joints/position` (the
recorded state), `joints/command` (the action that reached the arms), `timing/skew_ms` (spread of
the streams' capture times at each row), `events` (intervention spans) and a static
`episode/info` text (task, operator, success, quality). Rows are placed on the `step` timeline
(row index) and the `time` timeline (the row's tick time since the episode began), so every
camera, joint and action of a row shares one instant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.app.live_view import (
    CAMERAS,
    EVENTS,
    JOINT_COMMAND,
    JOINT_POSITION,
    STEP,
    TIME,
    TIMING,
    jpeg_encoder,
    log_series_names,
    open_recording,
    parse_view,
)
from tether.core.errors import ConfigError
from tether.core.schema import camera_of

EPISODE_INFO = "episode/info"


def select_episodes(n_episodes: int, episode: int | None) -> list[int]:
    """All episodes, or the one asked for (ConfigError naming the valid range)."""
    if episode is None:
        return list(range(n_episodes))
    if not 0 <= episode < n_episodes:
        raise ConfigError(f"episode {episode} does not exist: the store has {n_episodes} "
                          f"(0..{n_episodes - 1}); pass --episode within that range.")
    return [episode]


def rrd_paths(out: Path, store_name: str, episodes: Sequence[int]) -> list[Path]:
    """Where `--rrd OUT` writes each episode: OUT itself for one episode given as FILE.rrd, else
    OUT/<store>_episode_NNNN.rrd (a folder)."""
    if out.suffix == ".rrd":
        if len(episodes) != 1:
            raise ConfigError(f"--rrd {out} is one file but {len(episodes)} episodes are selected; "
                              "pass --episode N, or a folder for one .rrd per episode.")
        return [out]
    return [out / f"{store_name}_episode_{e:04d}.rrd" for e in episodes]


def view_episodes(store, episodes: Iterable[int], spec: str | Sequence[str]):
    """Log each episode into its own recording sent to `spec` (one spec, or one per episode).

    Served targets (tcp://, web) hold one episode, and its recording is returned still open:
    the server lives as long as it does (disconnect() it to stop serving). Otherwise None.
    """
    episodes = list(episodes)
    specs = [spec] * len(episodes) if isinstance(spec, str) else list(spec)
    served = [s for s in specs if parse_view(s).kind in ("serve", "web")]
    if served and len(episodes) != 1:
        raise ConfigError(f"serving ({served[0]}) shows one episode at a time: pass --episode N.")
    name = Path(store.path).name
    for episode, target in zip(episodes, specs, strict=True):
        rec = open_recording(target, f"{name} episode {episode}",
                             recording_id=f"{name}-episode-{episode}")
        try:
            log_episode(rec, store, episode)
        finally:
            rec.flush()
            if not served:
                rec.disconnect()
        if served:
            return rec
    return None


def log_episode(rec, store, episode: int, jpeg_quality: int = 85) -> int:
    """Send one stored episode to a rerun RecordingStream; returns its number of rows."""
    import rerun as rr

    data = store.get_episode(episode, store.data_keys)
    meta = store.episode_metadata(episode)
    n = int(store.episode_lengths[episode])
    t = _row_times(data, n, store.fps)
    log_series_names(rec, joint_names_of(store))
    rec.log(EPISODE_INFO, rr.TextDocument(episode_info_markdown(episode, meta, n, store.fps),
                                          media_type="text/markdown"), static=True)
    skew = _skew_ms(store.timing(episode), n)
    encode = jpeg_encoder(jpeg_quality)
    cameras = {key: camera_of(key) for key in store.image_keys}
    indexes = [rr.TimeColumn(STEP, sequence=np.arange(n)), rr.TimeColumn(TIME, duration=t)]
    columns = {JOINT_POSITION: data.get("state"), JOINT_COMMAND: data.get("action"),
               f"{TIMING}/skew_ms": skew}
    for entity, values in columns.items():  # one call per entity: all rows at once
        if values is not None:
            rec.send_columns(entity, indexes=indexes,
                             columns=rr.Scalars.columns(scalars=np.asarray(values, np.float64)))
    for i in range(n):
        rec.set_time(STEP, sequence=i)
        rec.set_time(TIME, duration=float(t[i]))
        for key, camera in cameras.items():
            rec.log(f"{CAMERAS}/{camera}", encode(data[key][i]))
    for start, stop in meta.get("intervention_spans") or []:
        for step, text in ((start, "intervention: the human takes over"),
                           (stop, "intervention ends: back to the policy")):
            if 0 <= step < n:
                rec.set_time(STEP, sequence=int(step))
                rec.set_time(TIME, duration=float(t[step]))
                rec.log(EVENTS, rr.TextLog(text, level="INFO"))
    return n


def joint_names_of(store) -> list[str]:
    """Joint names from the store's robot config when it lists them (else the viewer numbers them)."""
    arms = (store.attrs.get("robot_config") or {}).get("arms") or []
    names: list[str] = []
    for arm in arms:
        joints = arm.get("joint_names") if isinstance(arm, dict) else None
        if not joints:
            return []
        names += [j if len(arms) == 1 else f"{arm.get('name', 'arm')}/{j}" for j in joints]
    return names


def quality_score(meta: dict[str, Any]) -> float | None:
    """The episode's quality score when one was stored (`quality: {"score": ...}`), else None."""
    quality = meta.get("quality")
    if isinstance(quality, dict):
        quality = quality.get("score")
    return float(quality) if isinstance(quality, (int, float)) and not isinstance(quality, bool) else None


def episode_info_markdown(episode: int, meta: dict[str, Any], length: int, fps: float) -> str:
    score = quality_score(meta)
    rows = [
        ("episode", str(episode)),
        ("length", f"{length} steps ({length / fps:.1f} s at {fps:g} fps)"),
        ("success", _flag(meta.get("success"))),
        ("task", meta.get("task") or "-"),
        ("operator", meta.get("operator") or "-"),
        ("quality", "-" if score is None else f"{score:.3f}"),
        ("seed", str(meta.get("seed", "-"))),
        ("recorded", str(meta.get("t_start_utc", "-"))),
    ]
    flags = (meta.get("quality") or {}).get("flags") if isinstance(meta.get("quality"), dict) else None
    if flags:
        rows.append(("quality flags", json.dumps(flags)))
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _flag(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _row_times(data: dict[str, np.ndarray], n: int, fps: float) -> np.ndarray:
    """Seconds since the episode's first row: the recorded tick times, else index / fps."""
    ts = data.get("timestamp")
    if ts is None or len(ts) != n or not np.all(np.isfinite(ts)):
        return np.arange(n) / fps
    t = np.asarray(ts, dtype=np.float64) - float(ts[0])
    return t if np.all(np.diff(t) >= 0) else np.arange(n) / fps


def _skew_ms(timing: dict[str, dict[str, np.ndarray]], n: int) -> np.ndarray | None:
    """Per row, the spread of the streams' capture times (t_host), in ms; None with < 2 streams."""
    stamps = [np.asarray(f["t_host"], dtype=np.float64) for f in timing.values()
              if "t_host" in f and len(f["t_host"]) == n]
    if len(stamps) < 2:
        return None
    stacked = np.stack(stamps)
    return (stacked.max(axis=0) - stacked.min(axis=0)) * 1e3


__all__ = ["episode_info_markdown", "log_episode", "quality_score", "rrd_paths",
           "select_episodes", "view_episodes"]
