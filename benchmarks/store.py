"""Image codecs for the episode store, measured on camera-like frames with sensor noise.

Writes the same frames (480x640, a panning textured scene + Gaussian noise sigma 3) through the
recorder's path (EpisodeWriter, one frame per append, one frame per chunk) with each codec, and
reports write MB/s (raw image bytes per second), size ratio vs raw, read (decode) frames/s, and
the error against the input and against the noise-free scene. Baseline in the same run: the
uncompressed store ("none"). Prints one JSON object.

    .venv/bin/python benchmarks/store.py [--frames 120]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tether.data.inspect import summarize
from tether.data.store import EpisodeStore
from tether.data.synthetic import camera_frames, scene

CODECS = [
    ("none", dict(image_codec="none")),
    ("zstd (lossless)", dict(image_codec="zstd")),
    ("jpeg q80", dict(image_codec="jpeg", image_quality=80)),
    ("jpeg q90 (default)", dict(image_codec="jpeg", image_quality=90)),
    ("jpeg q95", dict(image_codec="jpeg", image_quality=95)),
    ("jpeg q90, zarr format 2", dict(image_codec="jpeg", image_quality=90, zarr_format=2)),
]


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """dB; None for identical arrays (lossless), which strict JSON cannot call Infinity."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    n, h, w = args.frames, 480, 640
    frames = camera_frames(n, h, w, noise=3.0, seed=0)
    base = scene(h, w, 0)
    clean = np.stack([np.clip(base[:, (i * 3) % w : (i * 3) % w + w], 0, 255) for i in range(n)])
    raw_mb = frames.nbytes / 1e6
    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="tether-store-bench-"))
    try:
        for name, kwargs in CODECS:
            path = tmp / f"{len(results)}.zarr"
            store = EpisodeStore.create(path, 30.0, **kwargs)
            writer = store.begin_episode(flush_every=16)
            t0 = time.perf_counter()
            for i in range(n):
                writer.append({"image.cam": frames[i], "state": np.zeros(14, np.float32)})
            writer.commit()
            write_s = time.perf_counter() - t0
            image = next(s for s in summarize(store)["streams"] if s["key"] == "image.cam")
            store.close()
            reader = EpisodeStore.open(path)
            t0 = time.perf_counter()
            decoded = np.stack([np.asarray(reader.array("image.cam")[i]) for i in range(n)])
            read_s = time.perf_counter() - t0
            reader.close()
            results[name] = {
                "write_mb_per_s": round(raw_mb / write_s, 1),
                "write_frames_per_s": round(n / write_s, 1),
                "size_ratio_vs_raw": round(image["raw_bytes"] / image["disk_bytes"], 2),
                "kb_per_frame": round(image["disk_bytes"] / n / 1e3, 1),
                "read_frames_per_s": round(n / read_s, 1),
                "psnr_vs_input_db": psnr(decoded, frames),
                "psnr_vs_noise_free_scene_db": psnr(decoded, clean),
                "mean_abs_error": round(float(np.abs(decoded.astype(int) - frames).mean()), 2),
                "p999_abs_error": int(np.percentile(np.abs(decoded.astype(int) - frames), 99.9)),
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    baseline = results["none"]
    for r in results.values():
        r["write_speed_vs_uncompressed"] = round(r["write_mb_per_s"] / baseline["write_mb_per_s"], 2)
    print(json.dumps({
        "benchmark": "store",
        "frames": n, "resolution": [h, w], "sensor_noise_sigma": 3.0,
        "input_psnr_vs_noise_free_scene_db": psnr(frames, clean),
        "codecs": results,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
