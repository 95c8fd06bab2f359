"""tether: real-robot imitation learning, from teleop recording to on-robot rollout.

The design card's folders install as subpackages: `tether.robot`, `tether.teleop`,
`tether.policies`, `tether.data`, `tether.calibration`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tether")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
