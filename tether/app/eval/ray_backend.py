"""`tether eval --backend ray`: every seeded episode is one Ray task, on one machine or a cluster.

Ray does the scheduling (no home-made one here). Each task runs the very function the local
worker processes run (`tether.app.eval.worker.run_worker`) on one seed: it builds its own twin,
loads the policy itself (a checkpoint path every node can read, e.g. on a shared filesystem, or
a policy server's tcp:// address) and writes the episode into a temporary folder on its node.
The task returns those files as plain bytes (record JSON, joints/actions `.npz`, video `.webm`)
through Ray's object store, and this process writes them into the report folder, so a cluster
needs no shared output folder and no policy weights ever travel as pickled objects. Same seeds,
same per-episode results as the local backend: evaluation is lockstep and each episode is seeded.

Videos: `--videos N` keeps the first N successes and N failures in seed order (per evaluation,
not per worker as locally: a task sees only its own episode).

Ray: `address=None` starts a local Ray instance for this evaluation (or uses the one this
process already joined, as tests do) and stops what it started; `--address auto` joins the
cluster `ray start` runs on this machine; `ray://head:10001` goes through Ray Client.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tether.app.eval.config import EvalConfig
from tether.core.errors import TetherError
from tether.core.optional import require

log = logging.getLogger(__name__)

CPUS_PER_EPISODE = 1.0  # one twin + one policy thread per task; Ray packs tasks onto the cores


def run_on_ray(config: EvalConfig, seeds: list[int], out: Path, show_progress: bool = True) -> None:
    """Run one Ray task per seed and write every episode's files into `out`."""
    ray = require("ray", "cluster", "for tether eval --backend ray")
    config = _portable(config)
    started = _connect(ray, config.address)
    try:
        task = ray.remote(num_cpus=CPUS_PER_EPISODE, max_retries=0)(run_episode_task)
        spec = asdict(config)
        pending = {task.remote(spec, seed): seed for seed in seeds}
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + config.timeout_s
        with _Progress(config, len(seeds), show_progress) as progress:
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    raise TetherError(f"Evaluation exceeded its {config.timeout_s:.0f} s time limit "
                                      f"({len(pending)} of {len(seeds)} episodes unfinished).")
                done, _ = ray.wait(list(pending), num_returns=1, timeout=min(left, 1.0))
                for ref in done:
                    seed = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the task's process died (OOM, node lost)
                        for other in pending:
                            ray.cancel(other, force=True)
                        raise TetherError(f"the Ray task for seed {seed} died before returning: "
                                          f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
                    if "error" in result:
                        for other in pending:
                            ray.cancel(other, force=True)
                        raise TetherError(f"evaluation failed at {result['error']['text']} (Ray task "
                                          f"on {result.get('node', '?')})")
                    results[seed] = result
                    progress.update(results)
        _write(results, seeds, out, config.videos)
    finally:
        if started:
            ray.shutdown()


def run_episode_task(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """One episode inside a Ray task: the local worker's function on one seed, in a temp folder.

    Returns plain data only: {"seed", "node", "files": {relative path: bytes}} or, when the
    episode (or loading the policy or the twin) failed, {"seed", "node", "error": {...}}."""
    import platform

    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import torch

        torch.set_num_threads(max(1, int(CPUS_PER_EPISODE)))
    except ImportError:
        pass
    from tether.app.eval.worker import EpisodeFailed, run_worker

    node = platform.node()
    with tempfile.TemporaryDirectory(prefix="tether-eval-") as tmp:
        try:
            run_worker({"config": spec, "seeds": [seed], "out": tmp})
        except Exception as exc:  # as itself, named with its seed, back to the driver as data
            failure = exc if isinstance(exc, EpisodeFailed) else EpisodeFailed(seed, exc)
            return {"seed": seed, "node": node, "error": failure.as_dict()}
        files = {p.relative_to(tmp).as_posix(): p.read_bytes()
                 for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return {"seed": seed, "node": node, "files": files}


# ----------------------------------------------------------------------------------------------


def _portable(config: EvalConfig) -> EvalConfig:
    """Paths every Ray worker can use: a checkpoint that exists here is given absolute (workers
    may start in another directory); one that does not may exist on the cluster's filesystem."""
    if config.checkpoint and Path(config.checkpoint).exists():
        config = replace(config, checkpoint=str(Path(config.checkpoint).resolve()))
    return config


def _connect(ray, address: str | None) -> bool:
    """Join or start Ray; True when this call started a local instance (and must stop it)."""
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise TetherError(f"cannot reach the Ray cluster at '{address}' ({exc}); start one with "
                              "`ray start --head` or check --address (auto, host:6379, "
                              "ray://head:10001)") from exc
        return False
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             _node_ip_address="127.0.0.1")  # a private single-machine instance, loopback only
    return True


def _write(results: dict[int, dict[str, Any]], seeds: list[int], out: Path, videos: int) -> None:
    """Write each episode's files; keep the first `videos` success and failure videos by seed."""
    kept = {True: 0, False: 0}
    for seed in seeds:
        files = dict(results[seed]["files"])
        name = next((n for n in files if n.startswith("episodes/") and n.endswith(".json")), None)
        if name is None:
            raise TetherError(f"the Ray task for seed {seed} returned no episode record")
        record = json.loads(files[name])
        video = record.get("video")
        if video:
            if kept[bool(record["success"])] < videos:
                kept[bool(record["success"])] += 1
            else:
                files.pop(video, None)
                record["video"] = None
                files[name] = json.dumps(record).encode()
        for rel, data in files.items():
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


class _Progress:
    """A live bar on a terminal, plain rate-limited lines otherwise, nothing when disabled."""

    def __init__(self, config: EvalConfig, total: int, enabled: bool) -> None:
        self.name, self.total, self.enabled = config.env or config.task, total, enabled
        self._bar = self._task = self._plain = None
        self._done = self._wins = 0

    def __enter__(self) -> _Progress:
        if not self.enabled:
            return self
        if not sys.stdout.isatty():
            from tether.app.eval.progress import PlainProgress

            self._plain = PlainProgress(f"eval {self.name} (ray)", self.total)
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(TextColumn("[bold]eval {task.fields[name]} (ray)"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("success {task.fields[rate]}"),
                             TimeElapsedColumn())
        self._bar.__enter__()
        self._task = self._bar.add_task("eval", total=self.total, name=self.name, rate="-")
        return self

    def update(self, results: dict[int, dict[str, Any]]) -> None:
        done = self._done = len(results)
        wins = self._wins = sum(_success(r) for r in results.values())
        if self._bar is not None:
            self._bar.update(self._task, completed=done, rate=f"{wins}/{done}")
        elif self._plain is not None:
            self._plain.update(done, wins)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self._plain is not None and exc[0] is None:
            self._plain.finish(self._done, self._wins)


def _success(result: dict[str, Any]) -> bool:
    name = next((n for n in result["files"] if n.startswith("episodes/") and n.endswith(".json")), None)
    return bool(name and json.loads(result["files"][name])["success"])
