"""What one evaluation episode produces, and how it is stored between processes.

Workers are separate processes; they hand results back as JSON plus `.npz` arrays on disk (never
pickle), which also leaves every episode inspectable after the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class EpisodeRecord:
    seed: int
    success: bool
    length: int  # control ticks executed
    max_steps: int
    wall_time_s: float
    first_success_step: int | None = None
    latency_ms: list[float] = field(default_factory=list)  # per chunk: request -> usable chunk
    inference_ms: list[float] = field(default_factory=list)  # per chunk: model time alone
    safety: dict[str, int] = field(default_factory=dict)  # safety-layer interventions by reason
    stalls: int = 0  # watchdog holds because no chunk arrived in time
    video: str | None = None  # path relative to the report folder
    episode_return: float | None = None  # sum of rewards (gymnasium env targets; None on the twin)
    joints: np.ndarray | None = None  # (T, D) measured joint positions
    actions: np.ndarray | None = None  # (T, A) commands that reached the arms

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        scalars = {k: v for k, v in asdict(self).items() if k not in ("joints", "actions")}
        arrays = {k: getattr(self, k) for k in ("joints", "actions") if getattr(self, k) is not None}
        if arrays:
            np.savez_compressed(folder / f"episode_{self.seed:06d}.npz", **arrays)
        # The JSON is the episode's commit point, written last and renamed into place: the parent
        # polls the folder for progress and must never read a half-written file.
        tmp = folder / f".episode_{self.seed:06d}.json.tmp"
        tmp.write_text(json.dumps(scalars))
        tmp.replace(folder / f"episode_{self.seed:06d}.json")

    @classmethod
    def load(cls, json_path: Path) -> EpisodeRecord:
        data = json.loads(json_path.read_text())
        record = cls(**data)
        npz = json_path.with_suffix(".npz")
        if npz.exists():
            with np.load(npz) as arrays:
                record.joints = arrays["joints"] if "joints" in arrays else None
                record.actions = arrays["actions"] if "actions" in arrays else None
        return record


def load_records(folder: Path) -> list[EpisodeRecord]:
    return sorted((EpisodeRecord.load(p) for p in folder.glob("episode_*.json")), key=lambda r: r.seed)
