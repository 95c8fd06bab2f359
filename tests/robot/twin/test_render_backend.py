"""The render backend is chosen in one place (tether.robot.twin.render), before mujoco loads."""

from __future__ import annotations

import os
import subprocess
import sys

from tether.robot.twin.render import DEFAULT_BACKEND, configure_backend


def test_default_is_egl_when_the_user_chose_nothing():
    env: dict[str, str] = {}
    assert configure_backend(env) == DEFAULT_BACKEND == "egl"
    assert env == {"MUJOCO_GL": "egl"}


def test_a_users_own_backend_wins():
    env = {"MUJOCO_GL": "osmesa"}
    assert configure_backend(env) == "osmesa"
    assert env["MUJOCO_GL"] == "osmesa"


def test_require_overrides_for_the_interactive_viewer():
    env = {"MUJOCO_GL": "egl"}
    assert configure_backend(env, require="glfw") == "glfw"
    assert env["MUJOCO_GL"] == "glfw"


def test_importing_the_twin_sets_the_backend_before_mujoco():
    """A fresh interpreter without MUJOCO_GL: importing the twin's sim gets EGL, and mujoco is
    only imported after the package chose it."""
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    code = (
        "import sys, os\n"
        "import tether.robot.twin\n"
        "assert 'mujoco' not in sys.modules, 'the twin package imported mujoco'\n"
        "assert os.environ['MUJOCO_GL'] == 'egl', os.environ.get('MUJOCO_GL')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
