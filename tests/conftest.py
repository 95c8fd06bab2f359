"""Shared test setup: headless MuJoCo rendering, the two timing helpers every test uses, and
a tiny diffusion checkpoint for tests of sampler options.

Tests check behaviour, never how fast this host is: instead of sleeping a fixed time and then
asserting, they poll for the condition with a generous deadline (`wait_until`), and instead of
asserting an achieved rate they check that executed plus skipped ticks account for the time
that passed (`check_tick_accounting`). Tests that must measure real time carry the `realtime`
marker and use margins that hold on a loaded 2-core machine.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TETHER_TEST", "1")

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 20.0  # generous: a loaded CI box may be 10x slower than a laptop


def wait_until(
    condition: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str = "the condition",
    interval: float = 0.005,
) -> T:
    """Poll `condition` until it returns something truthy (returned) or fail after `timeout` s.

    The failure names `what` did not happen, so a red run says which behaviour was missing
    rather than which sleep was too short.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def check_tick_accounting(loop: Mapping[str, Any], slack_ticks: float = 1.0) -> None:
    """Executed + skipped ticks account exactly for the time the loop ran (RateLoop stats).

    The loop's schedule is a fixed grid of periods from its start; every slot up to the last
    tick's either ran one tick (possibly late within its slot) or is counted as skipped, so
    `ticks + skipped_ticks == floor(last_start_s / period) + 1`, and the last step ended after
    it started (`duration_s >= last_start_s`). This holds on any machine: a slow host skips
    ticks, it never loses them from the accounting. `slack_ticks` only absorbs statistics
    rounded for display (a report's times rounded to the millisecond).
    """
    accounted = loop["ticks"] + loop["skipped_ticks"]
    if loop["ticks"] == 0:
        assert accounted == 0, f"no tick ran but {loop['skipped_ticks']} were counted as skipped"
        return
    period = 1.0 / loop["target_hz"]
    expected = math.floor(loop["last_start_s"] / period + 1e-6) + 1  # 1e-6: float rounding
    assert abs(accounted - expected) <= slack_ticks, (
        f"{loop['ticks']} ticks + {loop['skipped_ticks']} skipped do not account for "
        f"{loop['last_start_s']:.6f} s of schedule at {loop['target_hz']} Hz ({expected} periods "
        f"begun, {loop['overruns']} overruns)"
    )
    assert loop["duration_s"] >= loop["last_start_s"] - 1e-3


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """`wait_until(condition, timeout=20, what="...")`: poll with a deadline, fail naming `what`."""
    return wait_until


@pytest.fixture(name="check_tick_accounting")
def check_tick_accounting_fixture() -> Callable[..., None]:
    """`check_tick_accounting(loop_stats_dict)`: ticks + skipped account for the elapsed time."""
    return check_tick_accounting


def save_state_diffusion_checkpoint(root, streaming_fraction: float = 0.0):
    """A tiny state-only diffusion checkpoint for twin:lift (6 joints, random weights, horizon 8):
    for tests where which sampler or option ran is what counts, not what the policy does."""
    import numpy as np
    import torch

    from tether.policies.checkpoint import save_checkpoint
    from tether.policies.diffusion import DiffusionConfig, DiffusionModel
    from tether.policies.normalizer import Normalizer
    from tether.policies.torch_policy import make_spec

    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(state_dim=6, action_dim=6, cameras=[], horizon=8,
                                           n_action_steps=4, down_dims=[16, 32], n_groups=4,
                                           step_embed_dim=16, streaming_fraction=streaming_fraction))
    stats = {k: {"min": -np.ones(6), "max": np.ones(6), "mean": np.zeros(6), "std": np.ones(6)}
             for k in ("state", "action")}
    norm = Normalizer.from_stats(stats, {"state": "min_max", "action": "min_max"})
    spec = make_spec("diffusion", 6, {}, 6, 4, 30.0, norm)
    return save_checkpoint(root / "dp", model=model, normalizer=norm, policy_type="diffusion",
                           spec=spec, step=0)


@pytest.fixture(name="state_diffusion_checkpoint", scope="session")
def state_diffusion_checkpoint_fixture() -> Callable[..., Any]:
    """`state_diffusion_checkpoint(root, streaming_fraction=0.0) -> Path` (see above)."""
    pytest.importorskip("torch")
    return save_state_diffusion_checkpoint


@pytest.fixture(scope="session")
def tether_wheel(tmp_path_factory: pytest.TempPathFactory):
    """The wheel of this checkout, built once per session (no deps, no build isolation: offline).

    Shared by tests/test_packaging.py (the wheel imports every subpackage) and
    tests/test_slim_install.py (a robot-side venv installs it with only the core extras). Built
    from a copy of the sources: setuptools would otherwise reuse the checkout's build/ folder
    and ship modules that have since been moved or deleted.
    """
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = tmp_path_factory.mktemp("wheel-source")
    for name in ["pyproject.toml", "setup.py", "README.md"]:
        shutil.copy(root / name, source / name)
    for folder in ["tether", "robot", "teleop", "policies", "data", "calibration"]:
        shutil.copytree(root / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(source)],
        check=True, capture_output=True, cwd=out, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("tether-*.whl")
    return wheel
