"""Image codecs for the episode store: bytes/frame, PSNR, write and loader speed (issue 17).

Every option goes through the store as tether uses it: `EpisodeStore.create(image_codec=...)`,
frames appended one at a time with the recorder's flush (16), and read back through
`EpisodeDataset` in a torch DataLoader (batch 32, 2 workers, obs 2 + 16 actions, random windows
with replacement, `collate_windows`): the project's own loader path.

- Sizes and PSNR do not depend on the machine's load: measured once per option, on
  `--frames` camera-like 480x640 frames (tether.data.synthetic.camera_frames: a panning
  textured scene with sensor noise sigma 3) against the input and against the noise-free scene,
  and on noise-free renders of the MuJoCo twin (`--twin-frames`, the lift task's scripted
  expert) against the render.
- Speeds depend on the load: write frames/s and loader samples/s are measured for every option
  in each of `--rounds` rounds (options in a rotated order per round, so load drifts hit all
  alike), with CPU seconds per frame/sample (process + loader workers) and the 1-minute load
  average. They are indicative; compare options within one run, and against LeRobot only
  through the same run's JPEG q90 baseline (tether JPEG loader / LeRobot = 5.80 measured side
  by side on 2026-12-02, FACTS.md).

Prints JSON lines: `codec_size` per option and frame set, `codec_speed` per option and round,
then `codec_summary` per option (medians, ratios to LeRobot's 2026-12-02 AV1 store and to the
same-run JPEG baseline). On a quiet machine:

    .venv/bin/python benchmarks/codecs.py > codecs.jsonl            # ~15-25 min on 2 cores
    .venv/bin/python benchmarks/codecs.py --quick                    # ~1 min: does it run
    .venv/bin/python benchmarks/codecs.py --codecs h264,jpeg --rounds 5
    .venv/bin/python benchmarks/codecs.py --codecs none --spec h264:crf=22,gop=12 --rounds 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# Measured 2026-12-02 side by side (FACTS.md, ../shared/bench/lerobot): LeRobot 0.4.4's AV1
# store on the same camera-like frames, and the same run's loader ratio tether JPEG / LeRobot.
LEROBOT = {"bytes_per_frame": 9528, "psnr_input_db": 33.95, "psnr_clean_db": 35.38,
           "loader_samples_per_s": 117.0, "tether_jpeg_loader_ratio": 5.80}

# label -> store spec. The first is the baseline (the old default).
OPTIONS = {
    "jpeg q90 (old default)": "jpeg:quality=90",
    "jpeg q70": "jpeg:quality=70",
    "jpeg q50 4:4:4": "jpeg:quality=50,chroma=444",
    "avif q50 s8": "avif:quality=50,speed=8",
    "avif q60 s8": "avif:quality=60,speed=8",
    "jxl d2 e3": "jxl:distance=2,effort=3",
    "jxl d3 e3": "jxl:distance=3,effort=3",
    "h264 crf20 gop8": "h264:crf=20,gop=8",
    "h264 crf23 gop8 (new default)": "h264:crf=23,gop=8",
    "h264 crf23 gop4": "h264:crf=23,gop=4",
    "h264 crf23 gop16": "h264:crf=23,gop=16",
    "h264 crf26 gop8": "h264:crf=26,gop=8",
    "av1 crf35 gop8": "av1:crf=35,gop=8",
    "av1 crf40 gop8": "av1:crf=40,gop=8",
}
QUICK = ("jpeg q90 (old default)", "h264 crf23 gop8 (new default)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="camera-like frames (480x640)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes the frames split into")
    parser.add_argument("--twin-frames", type=int, default=150, help="twin renders (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds per option")
    parser.add_argument("--samples", type=int, default=1600, help="loader samples per measurement")
    parser.add_argument("--codecs", default="", help="comma-separated substrings of option labels")
    parser.add_argument("--spec", action="append", default=[],
                        help="also measure this codec spec (repeatable), e.g. h264:crf=22,gop=16")
    parser.add_argument("--quick", action="store_true", help="tiny settings: check that it runs")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    if args.quick:
        args.frames, args.episodes, args.twin_frames, args.rounds, args.samples = 64, 2, 0, 1, 128
    options = {k: v for k, v in OPTIONS.items()
               if (not args.codecs and (not args.quick or k in QUICK))
               or any(c.strip() and c.strip() in k for c in args.codecs.split(","))}
    options.update({spec: spec for spec in args.spec})
    import torch

    torch.set_num_threads(1)
    from tether.data.synthetic import camera_frames, scene

    h, w = args.height, args.width
    frames = camera_frames(args.frames, h, w, noise=3.0, seed=0)
    base = scene(h, w, 0)
    clean = np.stack([np.clip(base[:, (i * 3) % w: (i * 3) % w + w], 0, 255) for i in range(args.frames)])
    sets = {"camera": (frames, clean)}
    if args.twin_frames:
        renders = twin_frames(args.twin_frames, h, w)
        sets["twin"] = (renders, None)
    emit(bench="codec_frames", frames=args.frames, image=[h, w, 3], episodes=args.episodes,
         input_psnr_vs_noise_free_db=psnr(frames, clean), twin_frames=args.twin_frames,
         lerobot_reference=LEROBOT)
    tmp = Path(tempfile.mkdtemp(prefix="tether-codecs-"))
    try:
        sizes = {}
        for label, spec in options.items():
            for name, (data, reference) in sets.items():
                path = tmp / f"size-{name}.zarr"
                write_store(path, data, args.episodes, spec)
                sizes[(label, name)] = fidelity(path, data, reference)
                emit(bench="codec_size", codec=label, spec=spec, frames_set=name, **sizes[(label, name)])
                shutil.rmtree(path)
        speeds: dict[str, list[dict]] = {label: [] for label in options}
        labels = list(options)
        for label in labels:  # warm-up: imports, codec libraries, zarr's first store
            write_store(tmp / "warm.zarr", frames[:16], 1, options[label])
            shutil.rmtree(tmp / "warm.zarr")
        for r in range(args.rounds):
            order = labels[r % len(labels):] + labels[: r % len(labels)]
            for label in order:
                path = tmp / "speed.zarr"
                write = write_store(path, frames, args.episodes, options[label])
                loader = loader_rate(path, args.samples)
                row = {"round": r, **write, **loader}
                speeds[label].append(row)
                emit(bench="codec_speed", codec=label, spec=options[label], indicative=True, **row)
                shutil.rmtree(path)
        baseline = next(iter(options))
        base_rate = _median(speeds[baseline], "loader_samples_per_s")
        base_cpu = _median(speeds[baseline], "loader_cpu_ms_per_sample")
        for label in options:
            size = sizes[(label, "camera")]
            rate = _median(speeds[label], "loader_samples_per_s")
            cpu = _median(speeds[label], "loader_cpu_ms_per_sample")
            rel = rate / base_rate if base_rate else None
            rel_cpu = base_cpu / cpu if cpu else None
            emit(bench="codec_summary", codec=label, spec=options[label], baseline=baseline,
                 bytes_per_frame=size["bytes_per_frame"],
                 bytes_vs_lerobot=round(size["bytes_per_frame"] / LEROBOT["bytes_per_frame"], 3),
                 psnr_input_db=size["psnr_input_db"], psnr_clean_db=size["psnr_clean_db"],
                 psnr_at_least_lerobot=bool(size["psnr_input_db"] >= LEROBOT["psnr_input_db"]
                                            and size["psnr_clean_db"] >= LEROBOT["psnr_clean_db"]),
                 twin_bytes_per_frame=sizes.get((label, "twin"), {}).get("bytes_per_frame"),
                 twin_psnr_db=sizes.get((label, "twin"), {}).get("psnr_input_db"),
                 write_frames_per_s=_median(speeds[label], "write_frames_per_s"),
                 write_cpu_ms_per_frame=_median(speeds[label], "write_cpu_ms_per_frame"),
                 loader_samples_per_s=rate, loader_cpu_ms_per_sample=cpu,
                 loader_vs_baseline=None if rel is None else round(rel, 3),
                 loader_vs_lerobot_via_baseline=None if rel is None else
                 round(rel * LEROBOT["tether_jpeg_loader_ratio"], 2),
                 loader_vs_lerobot_via_baseline_cpu=None if rel_cpu is None else
                 round(rel_cpu * LEROBOT["tether_jpeg_loader_ratio"], 2),
                 indicative_speeds=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_store(path: Path, frames: np.ndarray, episodes: int, spec: str) -> dict:
    """Record `frames` into a new store one step at a time, as the recorder does; timings."""
    from tether.data.store import EpisodeStore

    n = len(frames)
    rng = np.random.default_rng(0)
    state = rng.standard_normal((n, 14)).astype(np.float32)
    action = rng.standard_normal((n, 14)).astype(np.float32)
    bounds = np.linspace(0, n, episodes + 1).astype(int)
    cpu0, wall0, load = time.process_time(), time.perf_counter(), os.getloadavg()[0]
    with EpisodeStore.create(path, 30.0, image_codec=spec, overwrite=True) as store:
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            writer = store.begin_episode(flush_every=16)  # the recorder's setting
            for i in range(a, b):
                writer.append({"image.top": frames[i], "state": state[i], "action": action[i]})
            writer.commit()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"write_frames_per_s": round(n / wall, 1), "write_cpu_ms_per_frame": round(cpu / n * 1e3, 2),
            "write_load1": round(load, 2)}


def fidelity(path: Path, frames: np.ndarray, clean: np.ndarray | None) -> dict:
    """Bytes per frame of the image array on disk, PSNR of what reads back."""
    from tether.data.inspect import summarize
    from tether.data.store import EpisodeStore

    with EpisodeStore.open(path) as store:
        decoded = store.read_steps(0, store.n_steps, ["image.top"])["image.top"]
        stream = next(s for s in summarize(store)["streams"] if s["key"] == "image.top")
        label = stream.get("codec_label", stream["codec"])
    return {"bytes_per_frame": round(stream["disk_bytes"] / len(frames)), "stored_as": label,
            "psnr_input_db": psnr(decoded, frames),
            "psnr_clean_db": None if clean is None else psnr(decoded, clean)}


def loader_rate(path: Path, samples: int) -> dict:
    """Steady-state samples/s of the training loader, and CPU ms per sample (all processes)."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from tether.data.dataset import EpisodeDataset, collate_windows

    ds = EpisodeDataset(path, obs_horizon=2, action_horizon=16)
    sampler = RandomSampler(ds, replacement=True, num_samples=samples,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=32, num_workers=2, sampler=sampler, collate_fn=collate_windows)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    it = iter(loader)
    first = len(next(it)["action"])  # workers started
    t0 = time.perf_counter()
    count = sum(len(batch["action"]) for batch in it)
    wall = time.perf_counter() - t0
    del it  # workers joined: their CPU is in RUSAGE_CHILDREN
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(b, f) - getattr(a, f) for a, b in ((self0, self1), (kids0, kids1))
              for f in ("ru_utime", "ru_stime"))
    return {"loader_samples_per_s": round(count / wall, 1) if wall > 0 else None,
            "loader_cpu_ms_per_sample": round(cpu / (count + first) * 1e3, 2),
            "loader_idle_2core_samples_per_s": round(2.0 * (count + first) / cpu, 1) if cpu else None,
            "loader_load1": round(load, 2)}


def twin_frames(n: int, height: int, width: int) -> np.ndarray:
    """`n` noise-free 480x640 renders of the twin's lift task under its scripted expert."""
    from tether.robot.twin.render import configure_backend

    configure_backend()
    from tether.robot.config import RobotConfig
    from tether.robot.twin import make_twin_robot
    from tether.robot.twin.expert import ScriptedExpert

    robot = make_twin_robot(RobotConfig(twin_task="lift", fps=30,
                                        twin_params={"width": width, "height": height}))
    out = []
    with robot:
        expert = ScriptedExpert(robot)
        seed = 0
        robot.reset(seed)
        expert.reset(seed)
        while len(out) < n:
            if expert.episode_done:
                seed += 1
                robot.reset(seed)
                expert.reset(seed)
            robot.act(expert.next_target(None))
            image = next(iter(robot.observe().frames.values())).image
            out.append(np.array(image, dtype=np.uint8))
    return np.stack(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB over all frames (16 frames at a time to bound memory)."""
    se = 0.0
    for i in range(0, len(a), 16):
        se += float(np.sum((a[i:i + 16].astype(np.float64) - b[i:i + 16].astype(np.float64)) ** 2))
    mse = se / a.size
    return None if mse == 0 else round(10 * np.log10(255.0 ** 2 / mse), 2)


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


if __name__ == "__main__":
    main()
