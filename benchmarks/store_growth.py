"""How the store's costs grow with the number of episodes (issue 18: flat from 100 to 10,000).

Builds stores of N short synthetic episodes (state + action + one small camera, a few steps
each) and measures, at each size:

- commit_ms        median wall time of one more `add_episode` (commit included), last 20
- open_ms          median read-only `EpisodeStore.open` (what train, inspect and eval do)
- open_append_ms   median append open (crash recovery included)
- record_append_ms median append open + `next_seed`: what `tether record --append` does before
                   its first take
- open_eager_ms    open + reading every episode's metadata file: what open cost before the
                   metadata became lazy (the `recovery` property still does this on demand)
- open_kib         Python memory allocated by a read-only open (tracemalloc peak)
- inspect_ms       `summarize` (the `tether inspect` table: reads every episode's metadata)
- index_ms         EpisodeDataset construction over every episode (state + action windows)

Prints one JSON object. Timings depend on the machine's load; the default-suite test
(tests/data/test_store_growth.py) asserts the behaviour instead (files touched per commit/open).

    .venv/bin/python benchmarks/store_growth.py --sizes 100,1000,10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from tether.data.inspect import summarize
from tether.data.store import EpisodeStore
from tether.data.synthetic import camera_frames

STEPS = 4  # per episode
IMAGE = (16, 16)


def episode(rng: np.random.Generator, frames: np.ndarray) -> dict[str, np.ndarray]:
    return {"state": rng.normal(size=(STEPS, 6)).astype(np.float32),
            "action": rng.normal(size=(STEPS, 6)).astype(np.float32),
            "image.cam": frames}


def _timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of fn(); CPU counts zarr's I/O thread too and is far less
    disturbed than wall time when other jobs share the cores."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1e3, 2)


def measure_interleaved(paths: list[Path], rng: np.random.Generator, frames: np.ndarray,
                        rounds: int) -> list[dict[str, float]]:
    """Commit and open, round-robin over the sizes, so load changes hit every size alike."""
    samples: dict[Path, dict[str, list[float]]] = {p: {} for p in paths}

    def add(path: Path, name: str, wall_cpu: tuple[float, float]) -> None:
        samples[path].setdefault(f"{name}_ms", []).append(wall_cpu[0])
        samples[path].setdefault(f"{name}_cpu_ms", []).append(wall_cpu[1])

    for i in range(rounds):
        for path in paths:
            with EpisodeStore.open(path, "a") as store:
                add(path, "commit", _timed(lambda st=store, seed=10**6 + i: st.add_episode(
                    episode(rng, frames), {"task": "grow", "seed": seed})))
            add(path, "open", _timed(lambda p=path: EpisodeStore.open(p).close()))
            add(path, "open_append", _timed(lambda p=path: EpisodeStore.open(p, "a").close()))
            add(path, "record_append", _timed(lambda p=path: _record_append_start(p)))
    rows = []
    for path in paths:
        with EpisodeStore.open(path) as store:
            row: dict[str, float] = {"episodes": store.n_episodes}
        row.update({k: _ms(v) for k, v in samples[path].items()})
        rows.append(row)
    return rows


def _record_append_start(path: Path) -> None:
    with EpisodeStore.open(path, "a") as store:
        store.next_seed  # noqa: B018 - where scripted recording continues


def measure_once(path: Path) -> dict[str, float]:
    """The costs that read every episode by nature (one run each)."""
    out: dict[str, float] = {}

    def eager() -> None:
        with EpisodeStore.open(path) as st:
            st.recovery  # noqa: B018 - reads every metadata file, as open did before

    out["open_eager_ms"] = round(_timed(eager)[0] * 1e3, 2)
    tracemalloc.start()
    st = EpisodeStore.open(path)
    out["open_kib"] = round(tracemalloc.get_traced_memory()[1] / 1024, 1)
    tracemalloc.stop()
    out["inspect_ms"] = round(_timed(lambda: summarize(st))[0] * 1e3, 2)
    st.close()
    try:
        from tether.data.dataset import EpisodeDataset
    except Exception:  # noqa: BLE001 - torch missing: skip the dataset column
        return out
    out["index_ms"] = round(_timed(lambda: EpisodeDataset(path, keys=["state"], action_horizon=8))[0] * 1e3, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000",
                        help="Episode counts to measure at, ascending (comma-separated).")
    parser.add_argument("--dir", default=None, help="Where to build the store (default: a temp "
                        "dir; /dev/shm takes the disk's fsync latency out of the commit column).")
    parser.add_argument("--measure", action="store_true", help="Only measure the stores an earlier "
                        "run left in --dir (growth-<N>.zarr; e.g. with another tether build). Each "
                        "gains --rounds episodes.")
    parser.add_argument("--rounds", type=int, default=15, help="Commits/opens per size (interleaved).")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rng = np.random.default_rng(0)
    frames = camera_frames(STEPS, *IMAGE, seed=0)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="tether-growth-"))
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "growth.zarr"
    t_build = time.perf_counter()
    paths = [tmp / f"growth-{size}.zarr" for size in sizes]
    try:
        if not args.measure:
            EpisodeStore.create(path, 10.0, overwrite=True).close()
            n = 0
            for size, copy in zip(sizes, paths, strict=True):
                with EpisodeStore.open(path, "a") as store:
                    while n < size:
                        store.add_episode(episode(rng, frames), {"task": "grow", "seed": n})
                        n += 1
                shutil.copytree(path, copy, dirs_exist_ok=True)
        build_s = time.perf_counter() - t_build
        rows = measure_interleaved(paths, rng, frames, args.rounds)
        for row, copy in zip(rows, paths, strict=True):
            row.update(measure_once(copy))
            print(json.dumps(row), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    first, last = rows[0], rows[-1]
    ratios = {k: round(last[k] / first[k], 2) for k in first if k != "episodes" and first[k]}
    print(json.dumps({
        "benchmark": "store_growth", "steps_per_episode": STEPS, "image": list(IMAGE),
        "rows": rows, f"ratio_{last['episodes']}_vs_{first['episodes']}": ratios,
        "build_s": round(build_s, 1), "rounds": args.rounds,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
