"""runner -> worker is the only import between the eval parent and its workers (issue 13).

Both read EvalConfig, which lives in tether.app.eval.config; a worker never imports the
runner (it is started as `python -m tether.app.eval.worker` and needs none of the parent's code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import tether.app.eval as eval_pkg

EVAL_DIR = Path(eval_pkg.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_worker_does_not_import_the_runner():
    assert "tether.app.eval.runner" not in _imported_modules(EVAL_DIR / "worker.py")


def test_the_config_module_imports_neither():
    imported = _imported_modules(EVAL_DIR / "config.py")
    assert not imported & {"tether.app.eval.runner", "tether.app.eval.worker"}


def test_eval_config_is_one_class_under_both_names():
    from tether.app.eval.config import EvalConfig
    from tether.app.eval.runner import EvalConfig as FromRunner

    assert FromRunner is EvalConfig
