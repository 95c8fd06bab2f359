"""Project exceptions.

Every user-facing error says what was wrong and what to do about it, so callers (the CLI, the
server, the recorder) can show `str(err)` as-is. Subclasses exist so code can catch one family
without string matching.
"""

from __future__ import annotations


class TetherError(Exception):
    """Base of every error tether raises on purpose."""


class ConfigError(TetherError, ValueError):
    """A config file, key or value is wrong (names the key and the expected type)."""


class DeviceError(TetherError, RuntimeError):
    """A camera, arm or bus could not be reached or misbehaved."""


class DeviceClosedError(DeviceError):
    """An operation was attempted on a device after `close()` (or before `connect()`)."""


class MissingExtraError(TetherError, ImportError):
    """An optional package (a hardware SDK, torch, MuJoCo, Zarr) is not installed.

    The message is one line naming the pip extra that brings it, so the CLI can show it as-is:
    a robot computer's slim install (`pip install tether[dynamixel]`) has no torch, and
    `tether train` there says which extra to add instead of printing a traceback.
    """

    def __init__(self, package: str, extra: str, purpose: str = "", message: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            message
            or f"The Python package '{package}' is needed{what} but is not installed. "
            f"Install it with: pip install 'tether[{extra}]'"
        )
        self.package = package
        self.extra = extra

    @classmethod
    def needed_by(cls, module: str, package: str, extra: str) -> MissingExtraError:
        """`<module> needs <package>: pip install 'tether[<extra>]'` (a part of tether whose
        extra is not installed, raised when that part is imported)."""
        return cls(package, extra, message=f"{module} needs {package}: pip install 'tether[{extra}]'")


class SafetyError(TetherError):
    """A command was refused by the safety layer (for example while the e-stop is latched)."""


class StoreError(TetherError):
    """A dataset store is missing, corrupt, read-only, or of an unsupported format version."""


class ProtocolError(TetherError):
    """A message on the inference protocol is malformed or does not match the spec."""


class PolicyError(TetherError):
    """A checkpoint or policy is inconsistent with what was asked of it."""
