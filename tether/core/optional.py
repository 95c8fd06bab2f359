"""Optional packages: which pip extra brings each one, and the one error that names it.

The core install is what a robot computer needs (numpy, pyzmq, msgpack, pyyaml, typer, rich:
drivers, safety, the policy client). Everything else comes with an extra (pyproject.toml):

    train  torch, safetensors (+ data)     twin  mujoco, gymnasium
    data   zarr, numcodecs, imagecodecs, av    viz   matplotlib, pillow, opencv, rerun-sdk
    calibrate  scipy (+ twin, data)    fast  openvino, onnxruntime (inference engines)
    hardware: opencv, realsense, dynamixel, feetech, ur, spacemouse

Three ways a part says what it needs, all raising MissingExtraError (a TetherError: the CLI
prints its one line and exits 2):

- a module that imports a heavy package at the top wraps that import::

      try:
          import torch
      except ImportError as exc:
          raise missing_extra(__name__, "torch") from exc

- a package whose every module needs an extra calls `require_extra("tether.data", "data")`
  in its `__init__` (or in the lazy accessors of a package that must stay importable);
- a driver imports its SDK with `require(...)` inside `connect()`, never at import time.

Anything else imported lazily inside a function (matplotlib for a plot) that escapes a CLI
command as a ModuleNotFoundError is mapped to the same message by `as_missing_extra`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from tether.core.errors import MissingExtraError

# Import name -> the extra that installs it. tests/test_slim_install.py checks that every
# third-party import in the tree is core or listed here, and that pyproject.toml agrees.
EXTRA_OF: dict[str, str] = {
    "torch": "train",
    "safetensors": "train",
    "mujoco": "twin",
    "gymnasium": "twin",
    "pygame": "twin",  # gymnasium classic-control rendering (eval on gymnasium envs with pixels)
    "OpenGL": "twin",  # PyOpenGL, a mujoco dependency (MUJOCO_GL=osmesa)
    "zarr": "data",
    "numcodecs": "data",
    "imagecodecs": "data",
    "scipy": "calibrate",  # twin system identification (least_squares)
    "pyarrow": "lerobot",  # LeRobotDataset parquet files
    "av": "data",  # PyAV: video camera arrays (data/video.py) and LeRobotDataset mp4 videos
    "matplotlib": "viz",
    "PIL": "viz",
    "rerun": "viz",  # rerun-sdk: live view (--view) and `tether view`
    "cv2": "opencv",  # also in viz (episode videos)
    "pyrealsense2": "realsense",
    "dynamixel_sdk": "dynamixel",
    "scservo_sdk": "feetech",
    "serial": "dynamixel",  # pyserial, a dependency of both servo SDKs
    "rtde_receive": "ur",
    "rtde_control": "ur",
    "pyspacemouse": "spacemouse",
    "openvino": "fast",  # inference engines (tether serve --engine openvino)
    "onnxruntime": "fast",  # tether serve --engine onnx
    "onnx": "fast",  # torch.onnx.export writes through it
    "ray": "cluster",  # tether eval --backend ray
    "s3fs": "cloud",  # stores at s3:// URLs (zarr FsspecStore)
    "moto": "dev",  # S3-protocol server for the object-storage tests
    "pytest": "dev",  # tether.robot.testing: the driver contract suite, for tests only
}

# Import names of the core install (pyproject.toml `dependencies`).
CORE: frozenset[str] = frozenset({"numpy", "zmq", "msgpack", "yaml", "typer", "rich"})

# The packages a part's extra must provide before any of its modules can import.
PART_PACKAGES: dict[str, tuple[str, ...]] = {
    "train": ("torch", "safetensors"),
    "twin": ("mujoco", "gymnasium"),
    "data": ("zarr", "numcodecs", "imagecodecs"),
    "viz": ("matplotlib", "PIL", "cv2"),
}

# Where the pip distribution name differs from the import name (for messages).
DISTRIBUTION: dict[str, str] = {
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "rerun": "rerun-sdk",
    "OpenGL": "PyOpenGL",
    "serial": "pyserial",
    "dynamixel_sdk": "dynamixel-sdk",
    "scservo_sdk": "feetech-servo-sdk",
    "rtde_receive": "ur-rtde",
    "rtde_control": "ur-rtde",
}


def missing_extra(module: str, package: str, extra: str | None = None) -> MissingExtraError:
    """The error for `module` failing to import `package`: one line naming the pip extra.

    `raise missing_extra(__name__, "torch") from exc` reads "tether.policies.act needs torch:
    pip install 'tether[train]'". `extra` defaults to the one that installs `package`.
    """
    top = package.split(".")[0]
    return MissingExtraError.needed_by(module, DISTRIBUTION.get(top, top), extra or EXTRA_OF[top])


def as_missing_extra(exc: BaseException) -> MissingExtraError | None:
    """The MissingExtraError for a ModuleNotFoundError of an optional package, else None.

    For imports done lazily inside a function (matplotlib in a report, cv2 in a video writer):
    the CLI turns those into the same one line as a guarded module import, naming the tether
    module that asked for the package (the innermost tether frame of the traceback).
    """
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    if top not in EXTRA_OF or EXTRA_OF[top] == "dev":
        return None
    module = "this command"
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if name == "tether" or name.startswith("tether."):
            module = name
        tb = tb.tb_next
    return missing_extra(module, top)


def is_installed(package: str) -> bool:
    """Whether `package` can be imported, without importing it (cheap: no torch load)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-removed module
        return False


def require_extra(part: str, extra: str) -> None:
    """Raise MissingExtraError naming `tether[extra]` unless every package it brings is present.

    For packages (tether.data) and lazy accessors (tether.robot.twin.make_env) that need a whole
    extra; `part` is the name shown in the message.
    """
    for package in PART_PACKAGES[extra]:
        if not is_installed(package):
            raise missing_extra(part, package, extra)


def require(module: str, extra: str, purpose: str = "", package: str | None = None) -> ModuleType:
    """Import `module` or raise MissingExtraError naming `tether[extra]`.

    Drivers call this inside `connect()`, never at import time, so `import tether.robot.drivers`
    works on a machine with no SDK installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(package or module, extra, purpose) from exc
