"""A robot computer's slim install: the core + one hardware extra runs the rollout client.

The core install (numpy, pyzmq, msgpack, pyyaml, typer, rich) plus `dynamixel` must run
`tether rollout --server ...` against a policy server on another machine, with no torch, MuJoCo
or Zarr. The end-to-end test builds the wheel, installs it that way into a fresh venv, serves a
policy from the full environment and drives an emulated Dynamixel arm (a pty bus emulator, the
vendor's own SDK on the client side) from the slim venv. The static tests keep it that way: every
third-party import in the tree is core or belongs to an extra that pyproject.toml declares, and
every module that needs an extra at import time says which one when it is missing.
"""

from __future__ import annotations

import ast
import json
import math
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tether.core.optional import CORE, DISTRIBUTION, EXTRA_OF, PART_PACKAGES
from tether.robot.safety import BAD_MEASUREMENT, ESTOP_HOLD, NON_FINITE, WRONG_SHAPE

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"tether": "tether", "robot": "tether.robot", "teleop": "tether.teleop",
           "policies": "tether.policies", "data": "tether.data", "calibration": "tether.calibration"}  # fmt: skip
HEAVY = ("torch", "mujoco", "zarr")
TRAIN_MESSAGE = "tether.policies.trainer needs torch: pip install 'tether[train]'"


# --- static: the tree and pyproject.toml agree ---------------------------------------------------


def source_modules() -> dict[str, Path]:
    """Module name -> file, for every .py file as it installs (robot/x.py -> tether.robot.x)."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def third_party(node: ast.Import | ast.ImportFrom) -> list[str]:
    """Top-level third-party package names an import statement imports."""
    if isinstance(node, ast.ImportFrom):
        names = [] if node.level else [node.module or ""]
    else:
        names = [alias.name for alias in node.names]
    tops = {name.split(".")[0] for name in names}
    return sorted(t for t in tops if t and t not in sys.stdlib_module_names and t not in ("tether", "__future__"))  # fmt: skip


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def extra_distributions(extras: dict[str, list[str]], extra: str) -> set[str]:
    """Distributions an extra installs, following `tether[a,b]` self-references."""
    out: set[str] = set()
    for requirement in extras[extra]:
        match = re.fullmatch(r"tether\[([\w,\s-]+)\]", requirement.strip())
        if match:
            for inner in match.group(1).split(","):
                out |= extra_distributions(extras, inner.strip())
        else:
            out |= requirement_names([requirement])
    return out


def test_every_third_party_import_is_core_or_an_extra():
    unknown = {}
    for name, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for package in third_party(node):
                    if package not in CORE and package not in EXTRA_OF:
                        unknown.setdefault(package, []).append(f"{name}:{node.lineno}")
    assert not unknown, (
        f"third-party imports that are neither core nor in an extra: {unknown}. Add the package "
        "to pyproject.toml (core only if a robot computer needs it) and to EXTRA_OF in "
        "tether/core/optional.py."
    )


def test_pyproject_declares_what_optional_py_promises():
    project = pyproject()
    extras = project["optional-dependencies"]
    aliases = {"pyzmq": "zmq", "pyyaml": "yaml"}
    core = {aliases.get(n, n) for n in requirement_names(project["dependencies"])}
    assert core == set(CORE), "core dependencies and tether.core.optional.CORE disagree"
    assert not core & set(HEAVY)
    for package, extra in EXTRA_OF.items():
        assert extra in extras, f"EXTRA_OF names tether[{extra}] for {package}; pyproject lacks it"
    for extra, packages in PART_PACKAGES.items():
        brought = extra_distributions(extras, extra)
        for package in packages:
            assert DISTRIBUTION.get(package, package).lower() in brought, (extra, package)
    everything = extra_distributions(extras, "all")
    for extra in PART_PACKAGES:
        assert extra_distributions(extras, extra) <= everything, f"tether[all] misses {extra}"
    # The README's commands (make demo / make test) install every part, the SDKs and dev tools.
    makefile = (ROOT / "Makefile").read_text()
    installed = re.search(r"^EXTRAS := (.+)$", makefile, re.M).group(1).split(",")
    assert {"all", "dev"} <= set(installed)
    brought = set().union(*(extra_distributions(extras, e) for e in installed))
    for extra in extras:
        missing = extra_distributions(extras, extra) - brought
        assert not missing, f"`make setup` (EXTRAS in the Makefile) does not install {missing}"


def test_modules_that_need_an_extra_at_import_time_name_it():
    """A module-level import of an extra's package sits in a `try` that raises
    `missing_extra(...)`, or the module's package checks the extra in its __init__."""
    modules = source_modules()
    guarded_packages = {
        name for name, path in modules.items()
        if path.name == "__init__.py" and _calls_at_module_level(path, "require_extra")
    }  # fmt: skip
    offenders = []
    for name, path in modules.items():
        if any(name == p or name.startswith(p + ".") for p in guarded_packages):
            continue
        for node, guarded in _module_level_imports(ast.parse(path.read_text(), str(path))):
            for package in third_party(node):
                if package in CORE or EXTRA_OF.get(package) == "dev" or guarded:
                    continue
                offenders.append(f"{name}:{node.lineno} imports {package}")
    assert not offenders, (
        f"{offenders}: on a slim install these fail with a bare ModuleNotFoundError. Wrap the "
        "import: try: import torch / except ImportError as exc: raise "
        "missing_extra(__name__, 'torch') from exc (tether.core.optional), or import it inside "
        "the function that needs it."
    )


def _calls_at_module_level(path: Path, function: str) -> bool:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            if getattr(func, "id", getattr(func, "attr", None)) == function:
                return True
    return False


def _module_level_imports(tree: ast.Module):
    """(import node, guarded) for imports that run when the module is imported."""

    def visit(body, guarded):
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node, guarded
            elif isinstance(node, ast.Try):
                catches = any(
                    "ImportError" in ast.unparse(h.type) for h in node.handlers if h.type is not None
                )
                yield from visit(node.body, guarded or catches)
                for handler in node.handlers:
                    yield from visit(handler.body, guarded)
                yield from visit(node.orelse + node.finalbody, guarded)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" in ast.unparse(node.test):
                    continue  # never executed
                yield from visit(node.body + node.orelse, guarded)

    yield from visit(tree.body, False)


def test_a_usb_camera_without_opencv_names_the_extra_at_connect(monkeypatch):
    """The opencv driver imports (the factory builds it) without cv2; connect() names the extra."""
    from tether.core.errors import MissingExtraError
    from tether.robot.config import CameraConfig
    from tether.robot.drivers.opencv_camera import OpenCVCamera

    camera = OpenCVCamera.from_config(CameraConfig("wrist", "opencv", params={"source": 0}))
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'tether\[opencv\]'"):
        camera.connect()


def test_a_package_imported_inside_a_command_names_its_extra(monkeypatch, tmp_path):
    """Lazy imports (pillow for `tether twin view --out`) fail like guarded ones: one line,
    naming the module that asked and the extra, exit 2."""
    from typer.testing import CliRunner

    from tether.cli import build_app

    monkeypatch.setitem(sys.modules, "PIL", None)  # as if pillow were not installed
    result = CliRunner().invoke(build_app(), ["twin", "view", "--task", "lift", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: tether.app.commands.twin needs pillow: pip install 'tether[viz]'"
    )


# --- the slim venv ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slim(tether_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and only the core + `dynamixel` extra; returns its bin/."""
    venv = tmp_path_factory.mktemp("slim") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The full environment's pip installs into the new venv (--python): no ensurepip, and the
    # small dependencies come from the package index (cached by pip after the first run).
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--disable-pip-version-check", "--no-compile", f"{tether_wheel}[dynamixel]"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"installing the slim wheel failed:\n{result.stderr[-3000:]}"
    return venv / "bin"


def run_slim(bin_dir: Path, args: list[str], cwd: Path, timeout: float = 120, **kwargs):
    """Run a program of the slim venv with none of the source tree or the full env in reach."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL, **kwargs,
    )  # fmt: skip


def test_slim_venv_has_no_heavy_packages_and_the_cli_still_helps(slim: Path, tmp_path: Path):
    probe = run_slim(
        slim, ["python", "-c",
               "import importlib.util as u, json, tether; "
               f"print(json.dumps([tether.__file__, [m for m in {HEAVY!r} if u.find_spec(m)]]))"],
        tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    where, present = json.loads(probe.stdout)
    assert where.startswith(str(slim.parent)), f"imported {where}, not the slim venv's wheel"
    assert present == [], f"the slim install pulled in {present}"
    for args in (["tether", "--help"], ["tether", "rollout", "--help"]):
        result = run_slim(slim, args, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Usage" in result.stdout


def test_training_in_a_slim_install_names_the_extra(slim: Path, tmp_path: Path):
    result = run_slim(slim, ["tether", "train", "--dataset", "d.zarr", "--out", "run"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    output = (result.stdout + result.stderr).strip()
    # one line, no traceback (which torch module the command reaches first is its own business)
    assert re.fullmatch(r"error: tether\.[\w.]+ needs torch: pip install 'tether\[train\]'", output), output
    imported = run_slim(slim, ["python", "-c", "import tether.policies.trainer"], tmp_path)
    assert imported.returncode == 1
    last = imported.stderr.strip().splitlines()[-1]
    assert last == f"tether.core.errors.MissingExtraError: {TRAIN_MESSAGE}"
    twin = run_slim(slim, ["python", "-c", "import tether.robot.twin"], tmp_path)
    assert twin.stderr.strip().splitlines()[-1].endswith(
        "tether.robot.twin needs mujoco: pip install 'tether[twin]'"
    )


# --- end to end: slim client, full-env server, emulated arm -----------------------------------------

HOME = [0.3, -0.3, 0.2, -0.2, 0.1, 0.25]  # rad; the emulated servos start at 0 rad
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def robot_config(port: str, path: Path) -> Path:
    motors = "\n".join(
        f"        - {{name: {n}, id: {i + 1}, model: xl330-m288, home: {h}}}"
        for i, (n, h) in enumerate(zip(JOINTS, HOME))
    )
    path.write_text(
        "name: slim-follower\nfps: 30\narms:\n  - name: follower\n    driver: dynamixel\n"
        f"    params:\n      port: {port}\n      packet_timeout_ms: 400\n      motors:\n{motors}\n"
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(stream) -> queue.Queue:
    """The lines of `stream`, read on a thread so the test can wait for one with a deadline."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in iter(stream.readline, "")], daemon=True).start()  # fmt: skip
    return lines


def wait_for_line(lines: queue.Queue, text: str, timeout: float, proc: subprocess.Popen) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        if proc.poll() is not None and lines.empty():
            pytest.fail(f"the server exited ({proc.returncode}) before printing {text!r}: {seen}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {text!r}: {seen}")
        try:
            seen += lines.get(timeout=0.2)
        except queue.Empty:
            pass
    return seen


def test_slim_rollout_client_drives_an_emulated_arm_through_a_served_policy(slim: Path, tmp_path: Path):
    from tether.robot.emulators import DynamixelBusEmulator

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    with DynamixelBusEmulator(list(range(1, 7))) as bus:
        config = robot_config(bus.port, tmp_path / "follower.yaml")
        servos = [bus.servo(i) for i in range(1, 7)]
        start = [s.get(s.layout.present_position) for s in servos]
        # The policy server runs from the full environment: a waypoint policy that walks the
        # observed state to the config's home pose (a known answer for the arm's motion).
        server = subprocess.Popen(
            [sys.executable, "-m", "tether.cli", "serve", "simple:waypoint", "--robot", str(config),
             "--bind", endpoint, "--chunk-size", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
        try:
            wait_for_line(_lines(server.stdout), "serving waypoint", 60, server)
            out = tmp_path / "rollout.json"
            result = run_slim(
                slim, ["tether", "rollout", "--robot", str(config), "--server", endpoint,
                       "--max-steps", "150", "--connect-timeout", "30", "--json", str(out)],
                tmp_path, timeout=180,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
            assert "Traceback" not in result.stdout + result.stderr
            end = np.array([s.get(s.layout.present_position) for s in servos], dtype=float)
            goals = np.array([s.get(s.layout.goal_position) for s in servos], dtype=float)
            server.send_signal(signal.SIGINT)
            server_output, _ = server.communicate(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
    assert server.returncode == 0, server_output
    (summary,) = json.loads(out.read_text())
    # (stalls and resent requests are how a loaded host shows; not what this test is about)
    assert 0 < summary["length"] <= 150 and summary["chunks"] >= 1, summary
    # clean: nothing the safety layer had to refuse (clamps and rate limits are its normal job)
    refused = {ESTOP_HOLD, NON_FINITE, WRONG_SHAPE, BAD_MEASUREMENT} & set(summary["safety"])
    assert not refused, summary
    # The arm started at 0 rad and ended at the policy's goal (0.6 s away at the waypoint
    # policy's 0.5 rad/s; the episode lasts 5 s): ticks -> rad (2048 = 0 rad).
    assert start == [2048] * 6
    rad = (end - 2048) * 2 * math.pi / 4096
    np.testing.assert_allclose(rad, HOME, atol=0.02, err_msg="the emulated arm did not reach home")
    np.testing.assert_allclose((goals - 2048) * 2 * math.pi / 4096, HOME, atol=0.02)
