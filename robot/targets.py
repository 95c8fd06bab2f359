"""The TeleopDevice interface: anything that produces robot targets from what it sees.

A human with a leader arm, a SpaceMouse, the keyboard, or the twin's scripted expert all plug
into the recorder the same way. Targets are full robot action vectors (all arms, robot order,
same layout as `Robot.act`), and they always go through the safety layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from tether.robot.interfaces import Observation


class TeleopDevice(ABC):
    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def connect(self) -> None:
        """Open the input device (no-op for devices without hardware)."""

    def close(self) -> None:
        """Release the input device."""

    def reset(self, seed: int | None = None) -> None:
        """Prepare for a new episode (a scripted expert re-plans here)."""

    @abstractmethod
    def next_target(self, observation: Observation) -> np.ndarray | None:
        """The target for this tick, or None to hold (no input)."""

    @property
    def episode_done(self) -> bool:
        """True when the device considers the episode finished (scripted experts do)."""
        return False
