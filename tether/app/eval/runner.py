"""Batch evaluation on the twin: N seeded episodes over W worker processes, then a report.

Workers are plain subprocesses (`python -m tether.app.eval.worker spec.json`) that write each
episode as JSON + npz into the report folder; nothing is pickled between processes, a crashed
worker loses only its own unfinished episode, and the same worker command could be launched by
a cluster scheduler. The parent only watches the folder for progress and writes the report.

A worker that fails writes `logs/worker_<i>.error.json` (seed, exception type and message);
the parent raises that, so `tether eval` shows the policy's own error rather than "no result".
On a terminal progress is a live bar; otherwise (pipes, nohup, CI) plain, rate-limited lines.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tether.app.eval.config import EvalConfig
from tether.app.eval.records import load_records
from tether.app.eval.report import write_report
from tether.core.config import save_config
from tether.core.errors import TetherError
from tether.robot.twin.render import configure_backend

log = logging.getLogger(__name__)


def evaluate(config: EvalConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run the evaluation and write the report; returns the summary dict."""
    config.policy_source()  # validate before starting anything
    config.check_backend()
    if config.obs_map and not config.env:  # a gymnasium target named by its obs-map file
        from tether.app.eval.gym_target import load_obs_map

        config.env = load_obs_map(config.obs_map).env
    out = Path(config.out)
    episodes_dir = out / "episodes"
    if episodes_dir.exists():
        for stale in episodes_dir.glob("episode_*"):
            stale.unlink()
    episodes_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "eval_config.yaml")
    seeds = config.seeds()
    t0 = time.monotonic()
    if config.backend == "ray":
        from tether.app.eval.ray_backend import run_on_ray

        run_on_ray(config, seeds, out, show_progress)
    elif config.workers <= 0:
        from tether.app.eval.worker import EpisodeFailed, run_worker

        try:
            run_worker(_worker_spec(config, seeds, out))
        except EpisodeFailed:
            raise
        except Exception as exc:  # loading the policy or the twin: the error as itself
            raise EpisodeFailed(None, exc) from exc
    else:
        _run_subprocesses(config, seeds, out, show_progress)
    records = load_records(episodes_dir)
    missing = sorted(set(seeds) - {r.seed for r in records})
    if missing:
        failures = _worker_failures(out / "logs")
        if failures:
            w, failure = failures[0]
            more = len(failures) - 1
            others = f" ({more} more worker(s) failed too)" if more else ""
            raise TetherError(
                f"evaluation failed at {failure.get('text', failure)}{others}; the full log is "
                f"{out / 'logs' / f'worker_{w}.log'}"
            )
        raise TetherError(
            f"{len(missing)} of {len(seeds)} evaluation episodes produced no result (seeds {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}); see {out / 'logs'} for the worker output."
        )
    meta = {
        "task": config.env or config.task,
        "policy": " ".join(f"{k}={v}" for k, v in config.policy_source().items()),
        "workers": config.workers,
        "backend": config.backend,
        "eval_wall_time_s": round(time.monotonic() - t0, 2),
    }
    return write_report(out, records, meta)


def _worker_spec(config: EvalConfig, seeds: list[int], out: Path,
                 error_file: Path | None = None) -> dict[str, Any]:  # fmt: skip
    spec = {"config": asdict(config), "seeds": seeds, "out": str(out)}
    if error_file is not None:
        spec["error_file"] = str(error_file)
    return spec


def _worker_failures(logs: Path) -> list[tuple[int, dict[str, Any]]]:
    """(worker index, failure) for every worker that wrote an error file."""
    failures = []
    for path in sorted(logs.glob("worker_*.error.json")):
        try:
            index = int(path.name.split("_")[1].split(".")[0])
            failures.append((index, json.loads(path.read_text())))
        except (ValueError, OSError):
            continue
    return failures


def _run_subprocesses(config: EvalConfig, seeds: list[int], out: Path, show_progress: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    workers = min(config.workers, len(seeds))
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ)
    configure_backend(env)  # the workers render with the same backend as this process
    # Split the cores between workers so torch does not oversubscribe them.
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    procs = []
    for stale in logs.glob("worker_*.error.json"):
        stale.unlink()
    for w in range(workers):
        spec_path = logs / f"worker_{w}.json"
        error_file = logs / f"worker_{w}.error.json"
        spec_path.write_text(json.dumps(_worker_spec(config, seeds[w::workers], out, error_file)))
        log_file = (logs / f"worker_{w}.log").open("w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "tether.app.eval.worker", str(spec_path)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        ), log_file))
    deadline = time.monotonic() + config.timeout_s
    plain = None
    if show_progress and not sys.stdout.isatty():
        from tether.app.eval.progress import PlainProgress

        plain = PlainProgress(f"eval {config.env or config.task}", len(seeds))
    with Progress(TextColumn("[bold]eval {task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("success {task.fields[rate]}"), TimeElapsedColumn(),
                  disable=not show_progress or plain is not None, transient=False) as progress:
        bar = progress.add_task("eval", total=len(seeds), name=config.env or config.task, rate="-")
        try:
            while any(p.poll() is None for p, _ in procs):
                if time.monotonic() > deadline:
                    raise TetherError(f"Evaluation exceeded its {config.timeout_s:.0f} s time limit.")
                _update(progress, bar, out / "episodes", plain)
                time.sleep(0.25)
            done, wins = _update(progress, bar, out / "episodes")
            if plain is not None:
                plain.finish(done, wins)
        finally:
            for proc, log_file in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log_file.close()
    failed = [(w, p.returncode) for w, (p, _) in enumerate(procs) if p.returncode != 0]
    for w, code in failed:
        if (logs / f"worker_{w}.error.json").exists():
            continue  # evaluate() raises the worker's own error; the full log stays on disk
        tail = (logs / f"worker_{w}.log").read_text()[-2000:]
        log.error("evaluation worker %d exited with %s:\n%s", w, code, tail)


def _update(progress, bar, episodes_dir: Path, plain=None) -> tuple[int, int]:
    done = list(episodes_dir.glob("episode_*.json"))
    wins = sum(bool(json.loads(p.read_text())["success"]) for p in done)
    progress.update(bar, completed=len(done), rate=f"{wins}/{len(done)}" if done else "-")
    if plain is not None:
        plain.update(len(done), wins)
    return len(done), wins
