"""Joint conventions: how one arm's joint readings map onto the twin's (robot layer).

A policy trained on twin data speaks the twin's convention: joint zeros and directions of the
MJCF model, and a gripper normalized 0 (closed) .. 1 (fully open). A real servo arm reports
radians from its own zero and sign, and its gripper in servo radians. The map between them is
per joint and affine, so it is stored and applied as one vector pair (`base`, `scale`):

    twin  = (robot - base) * scale          robot = base + twin / scale

For a joint, `base` is the robot reading at the twin's zero (the offset) and `scale` is its
direction (+1 or -1). For the gripper, `base` is the reading fully closed and
`scale = 1 / (open - closed)`, fitted from the fully-open and fully-closed readings.

The map is a versioned YAML record in the robot's calibration folder (no pickle), in the
format of tether.calibration.store (which `tether calibrate show` lists; this module reads it
without importing the calibration layer): `configs/so101.yaml` ->
`configs/so101.calibration/joint_units.twin.yaml` (kind `joint_units`, named after the
convention it leads to):

    format_version: 1
    kind: joint_units
    name: twin                            # the convention the map leads to
    created: '2026-12-02T16:30:00.000000Z'
    tether_version: 0.3.0
    residuals: {follower: {second_pose_rad: {shoulder_pan: 0.001}}}
    data:
      robot: so101                        # the robot config it was measured on
      arms:
        follower:
          joints:
            - {name: shoulder_pan, offset: 0.12, direction: 1}
            - {name: shoulder_lift, offset: -1.5708, direction: -1}
          gripper: {name: gripper, closed: 0.21, open: 1.48}   # servo radians
    notes: {}

Datasets and policies carry the convention they were recorded in (`convention_for`): "twin"
for the twin, the robot config's name for a real robot (its drivers' own radians). Rollout
(app layer) compares the policy's convention with the robot's and maps through this file, or
refuses. This module is part of the slim robot-side install: numpy and YAML only.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tether.core.config import load_mapping
from tether.core.errors import ConfigError

__all__ = [
    "FORMAT",
    "KIND",
    "TWIN",
    "ConventionMap",
    "GripperMap",
    "JointConvention",
    "JointOffset",
    "UnitsCalibration",
    "calibration_folder",
    "convention_for",
    "dataset_convention",
    "robot_convention",
    "units_path",
]

FORMAT = 1  # format_version of calibration records (tether.calibration.store.FORMAT_VERSION)
KIND = "joint_units"
TWIN = "twin"  # the convention of every twin robot (MJCF zeros and signs, gripper 0..1 open)


def calibration_folder(robot_config: str | Path) -> Path:
    """The robot's calibration folder: `configs/x.yaml` -> `configs/x.calibration/` (as in
    tether.calibration.store.calibration_dir)."""
    path = Path(robot_config)
    return path.with_name(path.stem + ".calibration")


def units_path(robot_config: str | Path, convention: str = TWIN) -> Path:
    """Where the map from the robot at `robot_config` to `convention` lives."""
    return calibration_folder(robot_config) / f"{KIND}.{convention}.yaml"


def convention_for(robot_config: Any) -> str | None:
    """The convention data recorded with this robot config is in (a RobotConfig or its dict).

    The twin is "twin"; a real robot (a config with arms) is its config's name (its drivers'
    radians, whatever their zeros). None when nothing is known (no arms, e.g. synthetic data).
    """
    get = robot_config.get if isinstance(robot_config, Mapping) else (
        lambda key, default=None: getattr(robot_config, key, default)
    )
    if get("twin_task", None):
        return TWIN
    name = get("name", None)
    return str(name) if name and get("arms", None) else None


def dataset_convention(attrs: Mapping[str, Any]) -> str | None:
    """A dataset's convention from its store attributes: `convention`, else derived from its
    `robot_config` (stores written before the attribute existed). The trainer copies it into
    the policy's `spec.extra["convention"]`."""
    explicit = attrs.get("convention")
    if explicit:
        return str(explicit)
    return convention_for(attrs.get("robot_config") or {})


def robot_convention(robot) -> str:
    """The convention a live Robot reads and is commanded in ("twin" for simulated robots)."""
    explicit = getattr(robot, "convention", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    return TWIN if getattr(robot, "simulated_time", False) else str(robot.name)


@dataclass
class JointOffset:
    """One revolute joint: twin = direction * (robot - offset), in radians."""

    name: str
    offset: float = 0.0
    direction: int = 1

    def __post_init__(self) -> None:
        if self.direction not in (1, -1):
            raise ConfigError(
                f"joint '{self.name}' has direction {self.direction!r}; use 1 or -1."
            )


@dataclass
class GripperMap:
    """The gripper: servo radians fully closed / fully open <-> twin 0 (closed) .. 1 (open)."""

    name: str
    closed: float
    open: float

    def __post_init__(self) -> None:
        if not np.isfinite([self.closed, self.open]).all() or abs(self.open - self.closed) < 1e-6:
            raise ConfigError(
                f"gripper '{self.name}' has open {self.open!r} and closed {self.closed!r} rad: "
                "they must differ; re-run `tether calibrate units` with the gripper fully open, "
                "then fully closed."
            )


@dataclass
class JointConvention:
    """One arm's map to the twin: per-joint offset and direction, and the gripper map."""

    joints: list[JointOffset] = field(default_factory=list)
    gripper: GripperMap | None = None

    def names(self) -> list[str]:
        return [j.name for j in self.joints] + ([self.gripper.name] if self.gripper else [])

    def affine(self, joint_names: Sequence[str], arm: str = "arm") -> tuple[np.ndarray, np.ndarray]:
        """(base, scale) vectors in `joint_names` order; every joint must be covered once."""
        entries: dict[str, tuple[float, float]] = {}
        for j in self.joints:
            entries[j.name] = (float(j.offset), float(j.direction))
        if self.gripper is not None:
            g = self.gripper
            entries[g.name] = (float(g.closed), 1.0 / (float(g.open) - float(g.closed)))
        missing = [n for n in joint_names if n not in entries]
        unknown = [n for n in entries if n not in joint_names]
        if missing or unknown or len(entries) != len(self.names()):
            raise ConfigError(
                f"the units calibration of arm '{arm}' covers joints {self.names()} but the arm "
                f"has {list(joint_names)} (missing {missing}, unknown {unknown}); re-run "
                "`tether calibrate units` for this robot."
            )
        base = np.array([entries[n][0] for n in joint_names], dtype=np.float64)
        scale = np.array([entries[n][1] for n in joint_names], dtype=np.float64)
        return base, scale

    def to_twin(self, position: np.ndarray, joint_names: Sequence[str]) -> np.ndarray:
        base, scale = self.affine(joint_names)
        return (np.asarray(position, dtype=np.float64) - base) * scale

    def from_twin(self, position: np.ndarray, joint_names: Sequence[str]) -> np.ndarray:
        base, scale = self.affine(joint_names)
        return base + np.asarray(position, dtype=np.float64) / scale

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "joints": [
                {"name": j.name, "offset": round(float(j.offset), 6), "direction": int(j.direction)}
                for j in self.joints
            ]
        }
        if self.gripper is not None:
            g = self.gripper
            out["gripper"] = {"name": g.name, "closed": round(float(g.closed), 6),
                              "open": round(float(g.open), 6)}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arm: str = "arm") -> JointConvention:
        try:
            joints = [
                JointOffset(str(j["name"]), float(j.get("offset", 0.0)), int(j.get("direction", 1)))
                for j in data.get("joints", [])
            ]
            g = data.get("gripper")
            gripper = GripperMap(str(g["name"]), float(g["closed"]), float(g["open"])) if g else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"the units calibration of arm '{arm}' is malformed ({exc!r}); re-run "
                "`tether calibrate units`."
            ) from exc
        return cls(joints, gripper)


@dataclass
class ConventionMap:
    """A whole robot's map, compiled for its state/action vector (arms in robot order)."""

    source: str  # the robot's own convention
    target: str  # the convention the map leads to (the policy's)
    base: np.ndarray
    scale: np.ndarray

    def to_target(self, state: np.ndarray) -> np.ndarray:
        """A robot reading (or state vector) in the target convention."""
        return ((np.asarray(state, dtype=np.float64) - self.base) * self.scale).astype(np.float32)

    def from_target(self, actions: np.ndarray) -> np.ndarray:
        """Target-convention actions ((A,) or (n, A)) as robot commands."""
        return (self.base + np.asarray(actions, dtype=np.float64) / self.scale).astype(np.float32)


@dataclass
class UnitsCalibration:
    """The units file of one robot: per-arm JointConventions to `convention` (the twin's)."""

    arms: dict[str, JointConvention] = field(default_factory=dict)
    convention: str = TWIN
    robot: str = ""
    created: str = ""
    tool_version: str = ""
    residuals: dict[str, Any] = field(default_factory=dict)

    def compile(self, robot) -> ConventionMap:
        """The vector map for `robot` (its arms and joint names must match the file)."""
        bases, scales = [], []
        missing = [name for name in robot.raw_arms if name not in self.arms]
        if missing:
            raise ConfigError(
                f"the units calibration has no entry for arm(s) {missing} of robot "
                f"'{robot.name}' (it has {sorted(self.arms)}); re-run `tether calibrate units`."
            )
        for name, arm in robot.raw_arms.items():
            base, scale = self.arms[name].affine(list(arm.spec.joint_names), name)
            bases.append(base)
            scales.append(scale)
        return ConventionMap(robot_convention(robot), self.convention,
                             np.concatenate(bases), np.concatenate(scales))

    def as_dict(self) -> dict[str, Any]:
        """The calibration record (tether.calibration.store's format)."""
        return {
            "format_version": FORMAT,
            "kind": KIND,
            "name": self.convention,
            "created": self.created,
            "tether_version": self.tool_version,
            "residuals": dict(self.residuals),
            "data": {
                "robot": self.robot,
                "arms": {name: conv.as_dict() for name, conv in self.arms.items()},
            },
            "notes": {},
        }

    def save(self, path: str | Path) -> Path:
        """Write the record atomically (stamping date and tool version when unset); the record it
        replaces moves to the folder's `history/` like every calibration record's."""
        path = Path(path)
        if not self.created:
            self.created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if not self.tool_version:
            self.tool_version = _tool_version()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            history = path.parent / "history"
            history.mkdir(exist_ok=True)
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H-%M-%S.%fZ")
            path.replace(history / f"{path.stem}.{stamp}.yaml")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.as_dict(), sort_keys=False))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> UnitsCalibration:
        record = load_mapping(path)
        if record.get("kind") != KIND or record.get("format_version") != FORMAT:
            raise ConfigError(
                f"{path} is not a joint-units calibration (kind {record.get('kind')!r}, "
                f"format_version {record.get('format_version')!r}; expected {KIND!r}, {FORMAT}); "
                "write it with `tether calibrate units`."
            )
        data = record.get("data") or {}
        arms = data.get("arms") if isinstance(data, Mapping) else None
        if not isinstance(arms, Mapping):
            raise ConfigError(f"{path}: 'data.arms' must map arm names to joint maps; re-run "
                              "`tether calibrate units`.")
        return cls(
            arms={str(k): JointConvention.from_dict(v or {}, str(k)) for k, v in arms.items()},
            convention=str(record.get("name", TWIN)),
            robot=str(data.get("robot", "")),
            created=str(record.get("created", "")),
            tool_version=str(record.get("tether_version", "")),
            residuals=dict(record.get("residuals") or {}),
        )


def _tool_version() -> str:
    try:
        return version("tether")
    except PackageNotFoundError:
        return "0.0.0+unknown"
