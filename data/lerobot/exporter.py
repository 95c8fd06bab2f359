"""Episode store -> LeRobotDataset v3.0 folder (`tether export --format lerobot`). Data layer.

Writes what lerobot 0.4.4's `LeRobotDataset.create` + `add_frame` + `save_episode` would for the
same episodes: the frame table with nominal timestamps (frame_index / fps), the episodes table
with row ranges and video segments, stats, tasks and info.json. Every camera becomes a video
feature encoded once over all episodes (see video.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.core.schema import ACTION, STATE, is_image_key
from tether.data.exchange import ExportReport, check_options
from tether.data.layout import TIMESTAMP
from tether.data.lerobot import format as fmt
from tether.data.lerobot.format import pa, pq
from tether.data.lerobot.video import VideoFileWriter, video_info
from tether.data.store import EpisodeStore

OPTIONS = ("repo_id", "vcodec", "crf", "gop", "overwrite", "robot_type")


def export_store(store_path: Path, out: Path, **options: Any) -> ExportReport:
    """Write the store at `store_path` as a LeRobotDataset v3.0 folder `out`.

    Options: repo_id (recorded in the report; LeRobot keeps it outside the folder), vcodec
    "h264" (default, decodes everywhere) or "av1" (lerobot's default, smaller), crf (30),
    gop (2), overwrite, robot_type (default: the store's robot name).
    """
    check_options("lerobot", "export", options, OPTIONS)
    out = Path(out)
    if out.exists():
        if not options.get("overwrite"):
            raise StoreError(f"{out} already exists; pass --overwrite to replace it or pick a new folder.")
        if not (out / fmt.INFO_PATH).is_file() and any(out.iterdir()):
            raise StoreError(f"{out} is not empty and not a LeRobotDataset; refusing to overwrite it.")
        shutil.rmtree(out)
    with EpisodeStore.open(store_path, "r") as store:
        report = ExportReport("lerobot", Path(store_path), out, fps=store.fps)
        if options.get("repo_id"):
            report.notes.append(f"repo id {options['repo_id']}: load with "
                                f"LeRobotDataset('{options['repo_id']}', root='{out}')")
        try:
            _write(store, out, options, report)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    return report


def _write(store: EpisodeStore, out: Path, options: dict[str, Any], report: ExportReport) -> None:
    fps = store.fps
    if store.n_episodes == 0:
        raise StoreError(f"{store.path} has no episodes to export.")
    keys = [k for k in store.data_keys if k != TIMESTAMP]
    cameras = [k for k in keys if is_image_key(k)]
    # lerobot's order: observation.state, other observations, then action
    lowdim = sorted((k for k in keys if not is_image_key(k)),
                    key=lambda k: (k != STATE, not k.startswith(STATE), k == ACTION, k))
    vcodec = str(options.get("vcodec") or "h264")
    crf, gop = int(options.get("crf", 30)), int(options.get("gop", 2))
    out.mkdir(parents=True)

    features: dict[str, dict[str, Any]] = {}
    for key in lowdim:
        arr = store.array(key)
        shape = list(arr.shape[1:]) or [1]
        dtype = np.dtype(arr.dtype).name
        names = [f"{key}_{i}" for i in range(shape[0])] if len(shape) == 1 else None
        features[fmt.feature_name(key)] = {"dtype": dtype, "shape": shape, "names": names}
        report.keys[fmt.feature_name(key)] = key
    for key in cameras:
        h, w, c = store.array(key).shape[1:]
        features[fmt.feature_name(key)] = {
            "dtype": "video", "shape": [int(h), int(w), int(c)], "names": ["height", "width", "channels"]}
        report.keys[fmt.feature_name(key)] = key
    features.update(json.loads(json.dumps(fmt.DEFAULT_FEATURES)))

    tasks: list[str] = []
    videos = {key: VideoFileWriter(out, fmt.feature_name(key), fps, vcodec, crf, gop,
                                   fmt.DEFAULT_VIDEO_FILE_SIZE_IN_MB, fmt.DEFAULT_CHUNK_SIZE,
                                   fmt.VIDEO_PATH) for key in cameras}
    data = _TableFiles(out, fmt.DATA_PATH, fmt.DEFAULT_DATA_FILE_SIZE_IN_MB)
    episode_rows: list[dict[str, Any]] = []
    all_stats = []
    dropped_meta: set[str] = set()
    index = 0
    try:
        for episode in range(store.n_episodes):
            meta = dict(store.episode_metadata(episode) or {})
            task = str(meta.get("task") or "")
            if task not in tasks:
                tasks.append(task)
            block = store.get_episode(episode, keys)
            n = len(next(iter(block.values())))
            frame_index = np.arange(n, dtype=np.int64)
            columns: dict[str, np.ndarray] = {fmt.feature_name(k): block[k] for k in lowdim}
            columns["timestamp"] = (frame_index / fps).astype(np.float32)
            columns["frame_index"] = frame_index
            columns["episode_index"] = np.full(n, episode, np.int64)
            columns["index"] = np.arange(index, index + n, dtype=np.int64)
            columns["task_index"] = np.full(n, tasks.index(task), np.int64)
            stats = {name: fmt.feature_stats(np.asarray(v)) for name, v in columns.items()}
            row: dict[str, Any] = {"episode_index": episode, "tasks": [task], "length": n}
            row.update({f"data/{k}": v for k, v in data.append(_arrow(columns, features)).items()})
            row["dataset_from_index"], row["dataset_to_index"] = index, index + n
            for key in cameras:
                row.update(videos[key].add_episode(block[key]))
                stats[fmt.feature_name(key)] = fmt.feature_stats(block[key], image=True)
            for name, item in stats.items():
                for stat, value in item.items():
                    row[f"stats/{name}/{stat}"] = np.asarray(value).tolist()
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            row[fmt.TETHER_METADATA] = json.dumps(meta, default=str)
            dropped_meta.update(k for k in meta if k not in ("task", "index", "length"))
            episode_rows.append(row)
            all_stats.append(stats)
            index += n
    finally:
        for writer in videos.values():
            writer.close()
        data.close()

    for key in cameras:  # lerobot's update_video_info: read back from the first file
        name = fmt.feature_name(key)
        features[name]["info"] = video_info(videos[key].first_path)
    path = out / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), path, compression="snappy")
    fmt.write_tasks(out, tasks)
    fmt.write_json(out / fmt.STATS_PATH, fmt.jsonable_stats(fmt.aggregate_stats(all_stats)))
    robot = options.get("robot_type") or (store.episode_metadata(0) or {}).get("robot")
    fps_out: int | float = int(fps) if float(fps).is_integer() else float(fps)
    info = {
        "codebase_version": fmt.CODEBASE_VERSION, "robot_type": robot,
        "total_episodes": store.n_episodes, "total_frames": index, "total_tasks": len(tasks),
        "chunks_size": fmt.DEFAULT_CHUNK_SIZE,
        "data_files_size_in_mb": fmt.DEFAULT_DATA_FILE_SIZE_IN_MB,
        "video_files_size_in_mb": fmt.DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        "fps": fps_out, "splits": {"train": f"0:{store.n_episodes}"},
        "data_path": fmt.DATA_PATH, "video_path": fmt.VIDEO_PATH if cameras else None,
        "features": features,
    }
    fmt.write_json(out / fmt.INFO_PATH, info)

    report.n_episodes, report.n_steps = store.n_episodes, index
    report.notes.append(f"cameras as {vcodec} video (yuv420p, crf {crf}, gop {gop}): lossy")
    if not float(fps).is_integer():
        report.notes.append(f"fps {fps} is not an integer; lerobot 0.4 expects integer fps")
    if TIMESTAMP in store.data_keys:
        report.not_carried.append(
            "timestamp (measured step times): LeRobot's timestamp is nominal, frame_index / fps")
    if store.timing_keys:
        report.not_carried.append(f"timing arrays ({len(store.timing_keys)}: per-stream host/device times)")
    if dropped_meta:
        report.not_carried.append(
            "episode metadata " + ", ".join(sorted(dropped_meta)) + ": LeRobot has no field for it "
            f"(kept as JSON in the episodes table's '{fmt.TETHER_METADATA}' column, which tether "
            "import reads back and lerobot ignores)")
    report.not_carried.append("store attributes (robot_config, calibration) except the robot name")


def _arrow(columns: dict[str, np.ndarray], features: dict[str, dict[str, Any]]) -> pa.Table:
    """One episode's frame rows typed as lerobot's hf features (fixed-size lists for vectors)."""
    arrays = {}
    for name, values in columns.items():
        values = np.asarray(values)
        if values.ndim == 1:
            arrays[name] = pa.array(values)
        elif values.ndim == 2:
            flat = pa.array(values.reshape(-1))
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            raise StoreError(f"{name}: {values.ndim - 1}-D per-step arrays cannot be exported to LeRobot.")
    order = [k for k in features if k in arrays]
    return pa.table({k: arrays[k] for k in order})


class _TableFiles:
    """Frame rows appended to numbered parquet files, a new one past the size limit."""

    def __init__(self, root: Path, template: str, max_mb: float) -> None:
        self.root, self.template, self.max_bytes = root, template, max_mb * 1024 * 1024
        self.counter, self.writer, self.written = -1, None, 0

    def append(self, table: pa.Table) -> dict[str, int]:
        if self.writer is None or self.written >= self.max_bytes:
            self.close()
            self.counter += 1
            path = self.root / self.template.format(**fmt.chunk_file(self.counter, fmt.DEFAULT_CHUNK_SIZE))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, table.schema, compression="snappy", use_dictionary=True)
            self.written = 0
        self.writer.write_table(table)
        self.written += table.nbytes
        return fmt.chunk_file(self.counter, fmt.DEFAULT_CHUNK_SIZE)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
