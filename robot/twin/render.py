"""Which OpenGL backend MuJoCo renders with, chosen in one place.

MuJoCo reads `MUJOCO_GL` once, when `mujoco` is first imported, so the choice has to be made
before that import: this package's `__init__` calls `configure_backend()`, which every submodule
import runs first. The default is EGL (headless offscreen rendering; Mesa's EGL works on CPU-only
machines); a user's own `MUJOCO_GL` (osmesa, glfw) wins. This module never imports mujoco.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULT_BACKEND = "egl"
BACKENDS = ("egl", "osmesa", "glfw")


def configure_backend(
    env: MutableMapping[str, str] | None = None, require: str | None = None
) -> str:
    """Set `MUJOCO_GL` in `env` (default: this process's environment) and return the backend.

    Without `require`, a backend the user already chose is kept and EGL is the default. With
    `require` (the interactive viewer needs "glfw", a window), that backend is set whatever the
    user chose. Pass a subprocess's environment dict to give a child process the same choice.
    """
    target = os.environ if env is None else env
    if require is not None:
        target["MUJOCO_GL"] = require
    else:
        target.setdefault("MUJOCO_GL", DEFAULT_BACKEND)
    return target["MUJOCO_GL"]


def current_backend() -> str:
    """The backend MuJoCo renders with in this process (lower case)."""
    return os.environ.get("MUJOCO_GL", DEFAULT_BACKEND).lower()
