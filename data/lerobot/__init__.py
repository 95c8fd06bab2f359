"""LeRobotDataset v3.0: export an episode store to it, import one into a new store (data layer).

The format as lerobot 0.4.x writes and reads it (src/lerobot/datasets/lerobot_dataset.py,
utils.py, video_utils.py, compute_stats.py), laid out under one folder:

    meta/info.json                        codebase_version "v3.0", fps, features, path templates
    meta/stats.json                       per-feature min/max/mean/std/count/q01..q99
    meta/tasks.parquet                    task strings (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, where its rows
                                          and video segments are (dataset_from/to_index,
                                          videos/<key>/from/to_timestamp), per-episode stats
    data/chunk-000/file-000.parquet       one row per frame: observation.state, action,
                                          timestamp, frame_index, episode_index, index, task_index
    videos/observation.images.<cam>/chunk-000/file-000.mp4   episodes back to back

Names: `state` <-> `observation.state`, `state.<arm>` <-> `observation.state.<arm>`, `action`,
`image.<cam>` <-> `observation.images.<cam>`; other data keys keep their names. Needs the
`lerobot` extra (pyarrow, PyAV). The front end: `tether export --format lerobot`
and `tether import --format lerobot`.
"""

from tether.data.lerobot.exporter import export_store
from tether.data.lerobot.importer import import_dataset

__all__ = ["export_store", "import_dataset"]
