"""Shared test setup: headless MuJoCo rendering and small, bounded torch thread use."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TETHER_TEST", "1")
