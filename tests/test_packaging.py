"""Both install modes import every subpackage: the editable install and a built wheel."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["robot", "teleop", "policies", "data", "calibration"]


def all_subpackages() -> list[str]:
    names = []
    for folder in ["tether"] + PARTS:
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            prefix = "tether" if folder == "tether" else f"tether.{folder}"
            names.append(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    return names


IMPORT_ALL = (
    "import importlib, sys, json; names = json.loads(sys.argv[1]); "
    "mods = [importlib.import_module(n) for n in names]; "
    "print(mods[0].__file__)"
)


def test_editable_install_imports_every_subpackage():
    names = all_subpackages()
    assert "tether.robot" in names and "tether.data" in names
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, __import__("json").dumps(names)],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip().startswith(str(ROOT))


def test_built_wheel_imports_every_subpackage(tmp_path: Path, tether_wheel: Path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(tether_wheel)],
        check=True, capture_output=True,
    )
    assert not (site / "robot").exists(), "the wheel must not install a top-level 'robot' package"
    env = dict(os.environ, PYTHONPATH=str(site))
    names = all_subpackages()
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, __import__("json").dumps(names)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(site)), "imported the source tree, not the wheel"


def test_the_wheel_holds_exactly_the_source_modules(tether_wheel: Path):
    """No module the tree has moved or deleted ships in the wheel (a stale build/ folder would)."""
    import zipfile

    with zipfile.ZipFile(tether_wheel) as wheel:
        shipped = {n for n in wheel.namelist() if n.endswith(".py")}
    expected = set()
    for folder in ["tether"] + PARTS:
        prefix = "tether" if folder == "tether" else f"tether/{folder}"
        expected |= {f"{prefix}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.py")}
    assert shipped == expected, (
        f"only in the wheel: {sorted(shipped - expected)}; missing: {sorted(expected - shipped)}"
    )
