"""Twin dynamics files: per-joint actuator gain, damping, armature, friction loss and the command
latency of a twin fitted to a real arm (`tether calibrate twin`), applied to a MuJoCo model.

The file is a calibration record (the format of tether.calibration.store, read here without
importing the calibration layer, as tether.robot.convention does), kind `twin_params`:

    format_version: 1
    kind: twin_params
    name: dynamics
    created: '2026-12-02T19:10:00.000000Z'
    tether_version: 0.3.0
    residuals: {fit_rms_rad: 0.0004, ...}
    data:
      command_latency_s: 0.03          # command -> actuator delay (optional)
      arms:
        arm:                            # the robot's arm name (`arm`, or `left`/`right`)
          shoulder_pan: {kp: 52.0, damping: 0.071, armature: 0.027, frictionloss: 0.02}
          elbow_flex: {kp: 31.0}        # any subset of fields; the rest keep the model's value

A robot config uses it through `twin_params.dynamics: path/to/twin_params.dynamics.yaml` (a
relative path is taken from the working directory). What each field sets in the model:

| field        | unit              | MuJoCo                                                   |
|--------------|-------------------|----------------------------------------------------------|
| kp           | N m/rad (N/m)     | position actuator gain: gainprm[0] = kp, biasprm[1] = -kp |
| kv           | N m s/rad         | position actuator damping: biasprm[2] = -kv              |
| damping      | N m s/rad         | dof_damping of the joint                                 |
| armature     | kg m^2            | dof_armature of the joint (reflected rotor inertia)      |
| frictionloss | N m               | dof_frictionloss of the joint (dry friction)             |

The gripper is the joint `gripper` (its actuator and the left finger's slide joint, SI units of
the slide: N/m, N s/m, kg, N).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from tether.core.config import load_mapping
from tether.core.errors import ConfigError
from tether.robot.twin.sim import Delay, TwinSim

__all__ = [
    "FIELDS", "KIND", "TwinDynamics", "apply_dynamics", "apply_to_sim", "load_dynamics",
    "read_joint_values",
]

KIND = "twin_params"
NAME = "dynamics"
FORMAT = 1  # format_version of calibration records (tether.calibration.store.FORMAT_VERSION)
FIELDS = ("kp", "kv", "damping", "armature", "frictionloss")


@dataclass
class TwinDynamics:
    """Per-arm, per-joint parameter values (only those set) and an optional command latency."""

    arms: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    command_latency_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.command_latency_s is not None:
            out["command_latency_s"] = float(self.command_latency_s)
        out["arms"] = {
            arm: {joint: {k: float(v) for k, v in values.items()} for joint, values in joints.items()}
            for arm, joints in self.arms.items()
        }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "twin dynamics") -> TwinDynamics:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping with 'arms', got {type(data).__name__}.")
        unknown = sorted(set(data) - {"arms", "command_latency_s"})
        if unknown:
            raise ConfigError(f"{source}: unknown keys {unknown}; known: arms, command_latency_s.")
        latency = data.get("command_latency_s")
        if latency is not None:
            if isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 <= latency < 5:
                raise ConfigError(f"{source}: command_latency_s must be seconds in [0, 5), got {latency!r}.")
            latency = float(latency)
        arms: dict[str, dict[str, dict[str, float]]] = {}
        for arm, joints in dict(data.get("arms") or {}).items():
            if not isinstance(joints, Mapping):
                raise ConfigError(f"{source}: arms.{arm} must map joint names to parameters.")
            arms[str(arm)] = {}
            for joint, values in joints.items():
                where = f"{source}: arms.{arm}.{joint}"
                if not isinstance(values, Mapping):
                    raise ConfigError(f"{where} must be a mapping like {{kp: 40.0, damping: 0.05}}.")
                bad = sorted(set(values) - set(FIELDS))
                if bad:
                    raise ConfigError(f"{where}: unknown fields {bad}; known: {', '.join(FIELDS)}.")
                parsed = {}
                for key, value in values.items():
                    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) \
                            or value < 0 or (key == "kp" and value == 0):
                        raise ConfigError(f"{where}.{key} must be a non-negative number (kp > 0), got {value!r}.")
                    parsed[str(key)] = float(value)
                arms[str(arm)][str(joint)] = parsed
        return cls(arms, latency)


def load_dynamics(path: str | Path) -> TwinDynamics:
    """Read a twin dynamics file (a `twin_params` calibration record, or just its `data`)."""
    raw = load_mapping(path)
    if "format_version" in raw or "kind" in raw:
        if raw.get("format_version") != FORMAT:
            raise ConfigError(
                f"{path} has format_version {raw.get('format_version')!r}; this tether reads "
                f"{FORMAT}. Re-run `tether calibrate twin`."
            )
        if raw.get("kind") != KIND:
            raise ConfigError(f"{path} is a '{raw.get('kind')}' calibration, not {KIND}; "
                              "point twin_params.dynamics at the file `tether calibrate twin` wrote.")
        raw = raw.get("data") or {}
    return TwinDynamics.from_dict(raw, source=str(path))


def apply_to_sim(sim: TwinSim, path: str | Path, latency_set: bool = False) -> TwinDynamics:
    """Load the file at `path` into a TwinSim's model; its command latency replaces the sim's
    unless the robot config set one itself (`latency_set`). Returns what was applied."""
    dynamics = load_dynamics(path)
    apply_dynamics(sim.model, sim_layout(sim), dynamics)
    if dynamics.command_latency_s is not None and not latency_set:
        sim.command_delay = Delay(dynamics.command_latency_s, sim.command_delay.jitter_s)
    return dynamics


def sim_layout(sim: TwinSim) -> list[tuple[str, str, tuple[str, ...]]]:
    """`(arm name, MJCF prefix, joint names)` of every arm of a TwinSim (for apply_dynamics)."""
    return [(b.name, b.prefix, tuple(b.model.joint_names)) for b in sim.arms]


def apply_dynamics(
    model: mujoco.MjModel, arms: Iterable[tuple[str, str, tuple[str, ...]]], dynamics: TwinDynamics
) -> None:
    """Write `dynamics` into `model` in place.

    `arms` are `(arm name, MJCF prefix, joint names)` of the model's arms (the gripper last, as
    `gripper`). Changing these fields after compilation is exact for MuJoCo: every one of them
    is read at each step (the actuator's kv keeps its compiled value unless `kv` is given).
    """
    layout = {name: (prefix, tuple(joints)) for name, prefix, joints in arms}
    for arm, joints in dynamics.arms.items():
        if arm not in layout:
            raise ConfigError(f"Twin dynamics name arm '{arm}'; this twin's arms: {', '.join(layout)}.")
        prefix, names = layout[arm]
        for joint, values in joints.items():
            if joint not in names:
                raise ConfigError(
                    f"Twin dynamics name joint '{joint}' of arm '{arm}'; its joints: {', '.join(names)}."
                )
            dof, actuator = _ids(model, prefix, joint)
            for key, value in values.items():
                _SETTERS[key](model, dof, actuator, value)


def read_joint_values(
    model: mujoco.MjModel, prefix: str, joint: str, fields: Iterable[str] = FIELDS
) -> dict[str, float]:
    """The model's current value of each field for one joint (what a fit starts from)."""
    dof, actuator = _ids(model, prefix, joint)
    return {key: float(_GETTERS[key](model, dof, actuator)) for key in fields}


def _ids(model: mujoco.MjModel, prefix: str, joint: str) -> tuple[int, int]:
    joint_name = prefix + ("finger_left" if joint == "gripper" else joint)
    jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, joint_name)
    aid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, prefix + joint)
    if jid < 0 or aid < 0:
        raise ConfigError(f"The twin model has no joint/actuator '{prefix + joint}'.")
    return int(model.jnt_dofadr[jid]), aid


def _set_kp(model: mujoco.MjModel, dof: int, actuator: int, value: float) -> None:
    model.actuator_gainprm[actuator, 0] = value
    model.actuator_biasprm[actuator, 1] = -value


def _set_kv(model: mujoco.MjModel, dof: int, actuator: int, value: float) -> None:
    model.actuator_biasprm[actuator, 2] = -value


def _set_dof(attribute: str):
    def setter(model: mujoco.MjModel, dof: int, actuator: int, value: float) -> None:
        getattr(model, attribute)[dof] = value

    return setter


_SETTERS = {
    "kp": _set_kp,
    "kv": _set_kv,
    "damping": _set_dof("dof_damping"),
    "armature": _set_dof("dof_armature"),
    "frictionloss": _set_dof("dof_frictionloss"),
}

_GETTERS = {
    "kp": lambda m, dof, act: m.actuator_gainprm[act, 0],
    "kv": lambda m, dof, act: -m.actuator_biasprm[act, 2],
    "damping": lambda m, dof, act: m.dof_damping[dof],
    "armature": lambda m, dof, act: m.dof_armature[dof],
    "frictionloss": lambda m, dof, act: m.dof_frictionloss[dof],
}
