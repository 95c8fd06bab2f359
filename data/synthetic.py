"""Camera-like test frames: a textured scene that moves, plus per-pixel sensor noise.

Flat renders compress 4-5x losslessly and flatter any codec; real camera frames carry sensor
noise that defeats lossless codecs (FACTS.md). Benchmarks and tests use these frames so that
codec numbers carry over to hardware. Deterministic under `seed`.
"""

from __future__ import annotations

import numpy as np


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A noise-free float32 scene (H, 2W, 3): gradients, shapes and texture, wider for panning."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0 : 2 * width].astype(np.float32)
    img = np.stack([
        80 + 60 * np.sin(x / 53.0 + y / 97.0),
        90 + 50 * np.cos(y / 41.0) * np.sin(x / 71.0),
        110 + 40 * np.sin((x + y) / 37.0),
    ], axis=-1)
    for _ in range(12):  # objects with edges (the part JPEG has to work for)
        cx, cy = rng.integers(0, 2 * width), rng.integers(0, height)
        r = rng.integers(height // 20, height // 6)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = rng.integers(20, 235, 3)
    texture = rng.normal(0, 6, (height // 8 + 1, width // 4 + 1, 3)).astype(np.float32)
    img += np.kron(texture, np.ones((8, 8, 1), np.float32))[:height, : 2 * width]
    return img


def camera_frames(n: int, height: int = 480, width: int = 640, noise: float = 3.0,
                  seed: int = 0) -> np.ndarray:
    """`n` frames (n, H, W, 3) uint8 of a slowly panning scene with Gaussian sensor noise."""
    base = scene(height, width, seed)
    rng = np.random.default_rng(seed + 1)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        shift = (i * 3) % width
        frame = base[:, shift : shift + width] + rng.normal(0, noise, (height, width, 3))
        out[i] = np.clip(frame, 0, 255)
    return out
