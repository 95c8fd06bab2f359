"""`make lint`'s layer check (tools/check_layers.py) passes on the tree and fails on a back-import.

Each failing case runs the checker on a copy of the source tree with one import injected
(`--source-root`), and asserts that it names the contract that broke and the offending import,
so a red `make lint` tells the author what to move.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "tools" / "check_layers.py"
FOLDERS = ["tether", "robot", "teleop", "policies", "data", "calibration"]
LAYERS = "Layers point down: app > parts (siblings) > data > robot > core"
SLIM = "Robot side runs without torch, MuJoCo or Zarr (slim install)"


def check(source_root: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECKER), "--source-root", str(source_root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the source tree (the .py files and pyproject.toml) to break on purpose."""
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=_not_python)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _not_python(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith(".py") and not (Path(directory) / n).is_dir()]


def inject(path: Path, line: str) -> None:
    """Add an import after the module's docstring and `from __future__` line (if any)."""
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text, f"{path} has no __future__ import to anchor the injection"
    path.write_text(text.replace(anchor, anchor + line + "\n", 1))


def test_the_tree_keeps_every_contract():
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{LAYERS} KEPT" in result.stdout
    assert f"{SLIM} KEPT" in result.stdout


def test_a_back_import_from_robot_to_policies_fails_naming_the_layers_contract(tree):
    inject(tree / "robot" / "safety.py", "from tether.policies.server import PolicyServer  # noqa")
    result = check(tree)
    assert result.returncode != 0
    assert f"{LAYERS} BROKEN" in result.stdout
    assert "tether.robot.safety -> tether.policies.server" in result.stdout


def test_torch_on_the_robot_side_fails_naming_the_slim_install_contract(tree):
    # protocol.py -> normalizer.py is allowed by the layers (same package) but pulls in torch:
    # only the forbidden contract, which follows indirect imports, catches it.
    inject(tree / "policies" / "protocol.py", "import tether.policies.normalizer  # noqa")
    result = check(tree)
    assert result.returncode != 0
    assert f"{LAYERS} KEPT" in result.stdout
    assert f"{SLIM} BROKEN" in result.stdout
    assert "tether.policies.protocol is not allowed to import torch" in result.stdout


def test_mujoco_in_a_driver_fails_naming_the_slim_install_contract(tree):
    inject(tree / "robot" / "drivers" / "servo_bus.py", "import mujoco  # noqa")
    result = check(tree)
    assert result.returncode != 0
    assert f"{SLIM} BROKEN" in result.stdout
    assert "tether.robot.drivers is not allowed to import mujoco" in result.stdout
    assert "tether.robot.drivers.servo_bus -> mujoco" in result.stdout


def test_a_new_robot_module_must_be_listed_in_the_slim_install_contract(tree):
    (tree / "robot" / "gripper_tool.py").write_text('"""A new robot-side module."""\n')
    result = check(tree)
    assert result.returncode != 0
    assert "tether.robot.gripper_tool" in result.stderr
    assert "source_modules" in result.stderr and "pyproject.toml" in result.stderr
