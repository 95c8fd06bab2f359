"""Units calibration procedure: fit one arm's joint map to the twin's convention (calibration layer).

The arm is posed by hand (torque off) at up to two poses whose twin values are known, and its
gripper is opened and closed fully:

1. the reference pose (default: the twin's zero pose): per joint,
   `offset = reading - direction * twin_value`;
2. optionally a second known pose (e.g. the twin's home): for every joint that moves by more than
   `min_move` rad in the twin, the direction is the sign of reading change over twin change, and
   `| |reading change| - |twin change| |` is that joint's residual (a joint map is a rotation:
   anything but ~0 means the pose was not matched, or the joint has a gear ratio);
3. gripper fully open, then fully closed: the linear map servo radians <-> 0 (closed) .. 1 (open).

The result is a `tether.robot.convention.JointConvention` (the file format lives in the robot
layer: rollout applies it, this module produces it). `range_report` says where the twin's joint
range, mapped to the arm, leaves the arm's configured limits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.convention import GripperMap, JointConvention, JointOffset

__all__ = [
    "UnitsFit",
    "fit_gripper",
    "fit_joints",
    "measure_units",
    "range_report",
]


@dataclass
class UnitsFit:
    """A fitted JointConvention and what the fit could check."""

    convention: JointConvention
    residuals: dict[str, float] = field(default_factory=dict)  # rad, per joint (second pose)
    inferred_directions: list[str] = field(default_factory=list)  # joints signed from the poses


def fit_gripper(name: str, open_reading: float, closed_reading: float) -> GripperMap:
    """The gripper map from its fully-open and fully-closed readings (servo radians)."""
    return GripperMap(name, closed=float(closed_reading), open=float(open_reading))


def fit_joints(
    joint_names: Sequence[str],
    reference_reading: np.ndarray,
    reference_twin: np.ndarray,
    directions: Mapping[str, int] | None = None,
    second_reading: np.ndarray | None = None,
    second_twin: np.ndarray | None = None,
    min_move: float = 0.2,
) -> tuple[list[JointOffset], dict[str, float], list[str]]:
    """Offsets (and, from a second pose, directions and residuals) for the revolute joints.

    `directions` gives a joint's sign explicitly; otherwise a joint that moves by at least
    `min_move` rad in the twin between the two poses is signed from the readings, else +1.
    """
    ref = np.asarray(reference_reading, dtype=np.float64)
    ref_twin = np.asarray(reference_twin, dtype=np.float64)
    directions = dict(directions or {})
    unknown = sorted(set(directions) - set(joint_names))
    if unknown:
        raise ConfigError(f"--direction names unknown joints {unknown}; joints: {list(joint_names)}.")
    joints, residuals, inferred = [], {}, []
    for i, name in enumerate(joint_names):
        direction = int(directions.get(name, 0))
        if second_reading is not None and second_twin is not None:
            d_twin = float(second_twin[i] - ref_twin[i])
            d_robot = float(second_reading[i] - ref[i])
            if abs(d_twin) >= min_move:
                sign = 1 if d_robot * d_twin > 0 else -1
                if direction and direction != sign:
                    raise ConfigError(
                        f"joint '{name}': --direction {direction} but the two poses say {sign}; "
                        "check the poses or drop the --direction."
                    )
                if not direction:
                    inferred.append(name)
                direction = sign
                residuals[name] = round(abs(abs(d_robot) - abs(d_twin)), 6)
        direction = direction or 1
        offset = ref[i] - direction * ref_twin[i]
        joints.append(JointOffset(name, float(offset), direction))
    return joints, residuals, inferred


def measure_units(
    read: Callable[[], np.ndarray],
    joint_names: Sequence[str],
    prompt: Callable[[str], None],
    reference_twin: np.ndarray | None = None,
    second_twin: np.ndarray | None = None,
    directions: Mapping[str, int] | None = None,
    gripper: str | None = "gripper",
) -> UnitsFit:
    """Run the procedure on one arm: `read()` returns its positions (radians, `joint_names`
    order), `prompt(message)` returns once the operator has done what it says.

    `reference_twin`/`second_twin` are full twin poses in `joint_names` order (the gripper entry
    is ignored); the reference defaults to all zeros.
    """
    names = list(joint_names)
    if gripper is not None and gripper not in names:
        raise ConfigError(f"the arm has no joint '{gripper}' (joints: {names}); pass --gripper NAME "
                          "or --no-gripper.")
    revolute = [i for i, n in enumerate(names) if n != gripper]
    ref_twin = np.zeros(len(names)) if reference_twin is None else np.asarray(reference_twin, float)
    prompt("Pose the arm at the twin's reference pose "
           f"({_pose_text(names, ref_twin, revolute)}), then press Enter.")
    ref = np.asarray(read(), dtype=np.float64)
    second = None
    if second_twin is not None:
        second_twin = np.asarray(second_twin, dtype=np.float64)
        prompt("Pose the arm at the twin's second pose "
               f"({_pose_text(names, second_twin, revolute)}), then press Enter.")
        second = np.asarray(read(), dtype=np.float64)
    joints, residuals, inferred = fit_joints(
        [names[i] for i in revolute], ref[revolute], ref_twin[revolute], directions,
        None if second is None else second[revolute],
        None if second_twin is None else second_twin[revolute],
    )
    gripper_map = None
    if gripper is not None:
        g = names.index(gripper)
        prompt("Open the gripper fully, then press Enter.")
        opened = float(np.asarray(read(), dtype=np.float64)[g])
        prompt("Close the gripper fully, then press Enter.")
        closed = float(np.asarray(read(), dtype=np.float64)[g])
        gripper_map = fit_gripper(gripper, opened, closed)
    return UnitsFit(JointConvention(joints, gripper_map), residuals, inferred)


def range_report(
    convention: JointConvention,
    joint_names: Sequence[str],
    twin_lower: np.ndarray,
    twin_upper: np.ndarray,
    arm_lower: np.ndarray,
    arm_upper: np.ndarray,
    tolerance: float = 1e-3,
) -> list[str]:
    """Joints whose twin range, mapped onto the arm, leaves the arm's configured limits.

    Such a joint can be commanded (by a twin-trained policy) where the arm's safety layer will
    clip it: worth knowing before a rollout, not an error.
    """
    lo = convention.from_twin(np.asarray(twin_lower, float), joint_names)
    hi = convention.from_twin(np.asarray(twin_upper, float), joint_names)
    mapped_lo, mapped_hi = np.minimum(lo, hi), np.maximum(lo, hi)
    problems = []
    for i, name in enumerate(joint_names):
        if mapped_lo[i] < arm_lower[i] - tolerance or mapped_hi[i] > arm_upper[i] + tolerance:
            problems.append(
                f"{name}: the twin's range maps to [{mapped_lo[i]:+.3f}, {mapped_hi[i]:+.3f}] rad "
                f"on the arm, beyond its limits [{arm_lower[i]:+.3f}, {arm_upper[i]:+.3f}]"
            )
    return problems


def _pose_text(names: list[str], pose: np.ndarray, indices: list[int]) -> str:
    return ", ".join(f"{names[i]} {pose[i]:+.2f}" for i in indices)
