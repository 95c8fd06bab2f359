"""Lazy imports of optional hardware SDKs with an error that names the pip extra to install."""

import importlib
from types import ModuleType

from tether.core.errors import MissingExtraError


def require(module: str, extra: str, purpose: str = "", package: str | None = None) -> ModuleType:
    """Import `module` or raise MissingExtraError naming `tether[extra]`.

    Drivers call this inside `connect()`, never at import time, so `import tether.robot.drivers`
    works on a machine with no SDK installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(package or module, extra, purpose) from exc
