"""Check tether's layers with import-linter, on the source tree as it installs.

The design card's folders (robot/, data/, ...) install as `tether.robot`, `tether.data`, ...
(see setup.py), so on disk there is no single `tether/` folder for import-linter to walk. This
script assembles one (a temporary copy of every .py file at its installed module path) and runs
`lint-imports` on it with the contracts in pyproject.toml. A back-import anywhere fails it.

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
from pathlib import Path

PARTS = ["robot", "teleop", "policies", "data", "calibration"]


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
        return subprocess.call(command, cwd=tmp, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
