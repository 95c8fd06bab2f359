"""Check tether's layers with import-linter, on the source tree as it installs.

The design card's folders (robot/, data/, ...) install as `tether.robot`, `tether.data`, ...
(see setup.py), so on disk there is no single `tether/` folder for import-linter to walk. This
script assembles one (a temporary copy of every .py file at its installed module path) and runs
`lint-imports` on it with the contracts in pyproject.toml. A back-import anywhere fails it, and
so does a module of the robot side that imports torch, mujoco or zarr, even indirectly.

The robot-side contract lists tether.robot's modules one by one (the twin, which needs MuJoCo,
lives in the same package), so this script also fails when a module of robot/ other than the
twin is missing from that list: a new driver cannot slip past the check by being new.

    python tools/check_layers.py                  # the repository it sits in
    python tools/check_layers.py --source-root DIR  # another checkout (tests inject a violation)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

PARTS = ["robot", "teleop", "policies", "data", "calibration"]
# Folders of robot/ that are not robot-side code: the twin needs MuJoCo (tether[twin]).
ROBOT_EXEMPT = {"twin"}


def assemble(source_root: Path, target: Path) -> Path:
    """Copy the package's .py files to `target/tether/...` at their installed module paths."""
    package = target / "tether"
    _copy_python(source_root / "tether", package)
    for part in PARTS:
        _copy_python(source_root / part, package / part)
    return target


def _copy_python(source: Path, destination: Path) -> None:
    for path in source.rglob("*.py"):
        out = destination / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)


def uncovered_robot_modules(source_root: Path) -> list[str]:
    """Modules of robot/ (except the twin) that no robot-side `forbidden` contract lists.

    The robot-side contract is the `forbidden` contract whose sources include `tether.robot.*`
    modules; every module and subpackage directly in robot/ must be one of its sources.
    """
    config = tomllib.loads((source_root / "pyproject.toml").read_text())
    contracts = config.get("tool", {}).get("importlinter", {}).get("contracts", [])
    listed: set[str] = set()
    for contract in contracts:
        sources = contract.get("source_modules", [])
        if contract.get("type") == "forbidden" and any(
            s.startswith("tether.robot.") for s in sources
        ):
            listed |= set(sources)
    children = sorted(
        f"tether.robot.{path.stem}"
        for path in (source_root / "robot").iterdir()
        if path.stem not in ROBOT_EXEMPT
        and not path.name.startswith(("_", "."))
        and (path.suffix == ".py" or (path / "__init__.py").is_file())
    )
    return [name for name in children if name not in listed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    source_root = args.source_root.resolve()
    lint_imports = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="tether-layers-") as tmp:
        assemble(source_root, Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        # --no-cache: the assembled tree is new each time.
        command = [str(lint_imports), str(source_root / "pyproject.toml"), "--no-cache"]
        status = subprocess.call(command, cwd=tmp, env=env)
    uncovered = uncovered_robot_modules(source_root)
    if uncovered:
        print(
            f"Robot-side modules missing from the slim-install contract: {', '.join(uncovered)}. "
            "Add them to source_modules of the 'Robot side runs without torch, MuJoCo or Zarr' "
            "contract in pyproject.toml (or move them under robot/twin/ if they need MuJoCo).",
            file=sys.stderr,
        )
        return status or 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
