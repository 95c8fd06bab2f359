"""How the store's costs grow with the number of episodes (issue 18: flat from 100 to 10,000).

Builds stores of N short synthetic episodes (state + action + one small camera, a few steps
each) and measures, at each size:

- commit_ms        median wall time of one more `add_episode` (commit included), last 20
- open_ms          median read-only `EpisodeStore.open` (what train, inspect and eval do)
- open_append_ms   median append open (what `tether record --append` does)
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


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 2)


def measure(store_path: Path, rng: np.random.Generator, frames: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    with EpisodeStore.open(store_path, "a") as store:
        commits = []
        for i in range(20):
            t0 = time.perf_counter()
            store.add_episode(episode(rng, frames), {"task": "grow", "seed": i})
            commits.append(time.perf_counter() - t0)
        out["episodes"] = store.n_episodes
    out["commit_ms"] = round(statistics.median(commits) * 1e3, 2)
    out["open_ms"] = _median_ms(lambda: EpisodeStore.open(store_path).close(), 5)
    out["open_append_ms"] = _median_ms(lambda: EpisodeStore.open(store_path, "a").close(), 3)

    def eager() -> None:
        with EpisodeStore.open(store_path) as st:
            st.recovery  # noqa: B018 - reads every metadata file, as open did before

    out["open_eager_ms"] = _median_ms(eager, 3)
    tracemalloc.start()
    st = EpisodeStore.open(store_path)
    out["open_kib"] = round(tracemalloc.get_traced_memory()[1] / 1024, 1)
    tracemalloc.stop()
    t0 = time.perf_counter()
    summarize(st)
    out["inspect_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
    st.close()
    try:
        from tether.data.dataset import EpisodeDataset
    except Exception:  # noqa: BLE001 - torch missing: skip the dataset column
        return out
    t0 = time.perf_counter()
    EpisodeDataset(store_path, keys=["state"], action_horizon=8)
    out["index_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000",
                        help="Episode counts to measure at, ascending (comma-separated).")
    parser.add_argument("--dir", default=None, help="Where to build the store (default: a temp "
                        "dir; /dev/shm takes the disk's fsync latency out of the commit column).")
    parser.add_argument("--keep", action="store_true", help="Keep a copy of the store at each size "
                        "(growth-<N>.zarr in --dir), for --measure with another tether build.")
    parser.add_argument("--measure", action="store_true", help="Only measure the copies --keep left "
                        "in --dir (each gains 20 episodes).")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rng = np.random.default_rng(0)
    frames = camera_frames(STEPS, *IMAGE, seed=0)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="tether-growth-"))
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "growth.zarr"
    rows = []
    t_build = time.perf_counter()
    try:
        if not args.measure:
            EpisodeStore.create(path, 10.0, overwrite=True).close()
        n = 0
        for size in sizes:
            if args.measure:
                row = measure(tmp / f"growth-{size}.zarr", rng, frames)
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            with EpisodeStore.open(path, "a") as store:
                while n < size - 20:  # measure() adds the last 20
                    store.add_episode(episode(rng, frames), {"task": "grow", "seed": n})
                    n += 1
            if args.keep:
                shutil.copytree(path, tmp / f"growth-{size}.zarr", dirs_exist_ok=True)
            row = measure(path, rng, frames)
            n = int(row["episodes"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    first, last = rows[0], rows[-1]
    ratios = {k: round(last[k] / first[k], 2) for k in first if k != "episodes" and first[k]}
    print(json.dumps({
        "benchmark": "store_growth", "steps_per_episode": STEPS, "image": list(IMAGE),
        "rows": rows, f"ratio_{last['episodes']}_vs_{first['episodes']}": ratios,
        "build_s": round(time.perf_counter() - t_build, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
