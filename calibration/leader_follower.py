"""Leader/follower calibration procedure: offsets from one pose where both arms are placed alike.

The file format and the mapping it compiles to live in `tether.robot.joint_map` (teleop applies
them, this module produces them).
"""

from __future__ import annotations

import numpy as np


def offsets_from_poses(
    leader_position: np.ndarray,
    follower_position: np.ndarray,
    direction: np.ndarray,
    snap: float | None = None,
) -> np.ndarray:
    """Offsets that make the mapped leader pose equal the follower pose.

    With `snap` (e.g. pi/2), offsets are rounded to the nearest multiple: the pose then only
    needs to be matched to within a quarter turn, as in GELLO's calibration.
    """
    leader_position = np.asarray(leader_position, dtype=np.float64)
    follower_position = np.asarray(follower_position, dtype=np.float64)
    offset = follower_position - np.asarray(direction) * leader_position
    if snap:
        offset = np.round(offset / snap) * snap
    return offset
