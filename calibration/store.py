"""One calibration folder per robot: versioned YAML records with date, tool version and residuals.

Layer: calibration (a part; imports core only). Every procedure (camera intrinsics, hand-eye,
latency, joint units, twin fit) saves a `CalibrationRecord` here; `tether calibrate show`, the
recorder and the rollout read them back from this one place (no constants copied into scripts).

Layout, next to the robot config `configs/so101.yaml`:

    configs/so101.calibration/
        camera_intrinsics.wrist.yaml      # <kind>.<name>.yaml, the current record
        history/camera_intrinsics.wrist.2026-12-02T16-10-56Z.yaml   # the ones it replaced

Records are plain YAML (JSON is read too), never pickle: `format_version`, `kind`, `name`,
`created` (UTC, ISO 8601), `tether_version`, `data`, `residuals` and `robot_config_sha256`. A
record is *stale* when its robot config's content changed after it was made (the cameras or arms
it describes may have moved). Content, not modification time: a fresh `git clone` or a copy
touches every file's mtime without changing the robot. Records without the hash (written before
it existed) fall back to comparing the config's mtime with `created`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tether.core.errors import ConfigError

FORMAT_VERSION = 1
SUFFIX = ".calibration"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

# What each kind of record describes, and the command that makes it (shown for missing ones).
KINDS: dict[str, str] = {
    "camera_intrinsics": "tether calibrate camera --robot {robot} --camera {name}",
    "hand_eye": "tether calibrate hand-eye --robot {robot} --camera {name}",
    "latency": "tether calibrate latency --robot {robot}",
    "joint_units": "tether calibrate units --robot {robot}",
    "twin_params": "tether calibrate twin --robot {robot}",
}


def _tether_version() -> str:
    from tether import __version__

    return __version__


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class CalibrationRecord:
    """One calibration result: what it is (`kind`, `name`), its numbers and how good they are."""

    kind: str
    name: str
    data: dict[str, Any]
    residuals: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    tether_version: str = field(default_factory=_tether_version)
    format_version: int = FORMAT_VERSION
    notes: dict[str, Any] = field(default_factory=dict)
    robot_config_sha256: str | None = None  # the robot config it was made for (set by save)

    def __post_init__(self) -> None:
        for label, value in (("kind", self.kind), ("name", self.name)):
            if not _NAME.match(value):
                raise ConfigError(
                    f"Calibration {label} '{value}' must use letters, digits, '_' or '-' only "
                    "(it becomes part of a file name)."
                )

    @property
    def filename(self) -> str:
        return f"{self.kind}.{self.name}.yaml"

    @property
    def created_at(self) -> datetime:
        return _parse_time(self.created)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "kind": self.kind,
            "name": self.name,
            "created": self.created,
            "tether_version": self.tether_version,
            "residuals": _plain(self.residuals),
            "data": _plain(self.data),
            "notes": _plain(self.notes),
            "robot_config_sha256": self.robot_config_sha256,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "record") -> CalibrationRecord:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source} is not a calibration record (expected a mapping); delete it or re-run the calibration.")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"{source} has format_version {version!r}; this tether reads version {FORMAT_VERSION}. "
                "Re-run the calibration, or use the tether version named in the file."
            )
        missing = [key for key in ("kind", "name", "created", "data") if key not in raw]
        if missing:
            raise ConfigError(f"{source} lacks {missing}; re-run the calibration that wrote it.")
        return cls(
            kind=str(raw["kind"]), name=str(raw["name"]), data=dict(raw["data"] or {}),
            residuals=dict(raw.get("residuals") or {}), created=str(raw["created"]),
            tether_version=str(raw.get("tether_version", "unknown")), format_version=version,
            notes=dict(raw.get("notes") or {}),
            robot_config_sha256=raw.get("robot_config_sha256"),
        )


@dataclass(frozen=True)
class Status:
    """Whether a calibration a robot needs is there and current."""

    kind: str
    name: str
    state: str  # "ok", "stale" (made for an earlier robot config) or "missing"
    record: CalibrationRecord | None


def calibration_dir(robot: str | Path) -> Path:
    """The calibration folder of a robot config path, or of a `twin:<task>` spec (in the cwd)."""
    text = str(robot)
    if text.startswith("twin:"):
        return Path(f"twin-{text.split(':', 1)[1]}{SUFFIX}")
    path = Path(text)
    return path.with_name(path.stem + SUFFIX)


class CalibrationStore:
    """Load, save and list the records of one robot; `config_path` decides staleness."""

    def __init__(self, root: str | Path, config_path: str | Path | None = None) -> None:
        self.root = Path(root)
        self.config_path = Path(config_path) if config_path is not None else None

    @classmethod
    def for_robot(cls, robot: str | Path) -> CalibrationStore:
        """The store next to a robot config (`configs/x.yaml` -> `configs/x.calibration/`)."""
        text = str(robot)
        config = None if text.startswith("twin:") else Path(text)
        return cls(calibration_dir(robot), config)

    def path_of(self, kind: str, name: str) -> Path:
        return self.root / f"{kind}.{name}.yaml"

    def save(self, record: CalibrationRecord) -> Path:
        """Write `record` atomically; the record it replaces moves to `history/`."""
        self.root.mkdir(parents=True, exist_ok=True)
        if record.robot_config_sha256 is None:
            record.robot_config_sha256 = self._config_sha256()
        path = self.root / record.filename
        if path.exists():
            history = self.root / "history"
            history.mkdir(exist_ok=True)
            try:
                old = self._read(path).created
            except ConfigError:
                old = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            stamp = old.replace(":", "-")
            os.replace(path, history / f"{record.kind}.{record.name}.{stamp}.yaml")
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(record.to_dict(), sort_keys=False))
        os.replace(tmp, path)
        return path

    def get(self, kind: str, name: str) -> CalibrationRecord | None:
        for suffix in (".yaml", ".json"):
            path = self.root / f"{kind}.{name}{suffix}"
            if path.exists():
                return self._read(path)
        return None

    def load(self, kind: str, name: str) -> CalibrationRecord:
        record = self.get(kind, name)
        if record is None:
            fix = KINDS.get(kind, "the calibration command").format(robot=self._robot_label(), name=name)
            raise ConfigError(f"No {kind} calibration for '{name}' in {self.root}; run: {fix}")
        return record

    def records(self) -> list[CalibrationRecord]:
        """Every current record (history excluded), sorted by kind and name."""
        if not self.root.is_dir():
            return []
        found = [self._read(p) for p in sorted(self.root.iterdir())
                 if p.is_file() and p.suffix in (".yaml", ".json")]
        return sorted(found, key=lambda r: (r.kind, r.name))

    def history(self, kind: str, name: str) -> list[Path]:
        folder = self.root / "history"
        return sorted(folder.glob(f"{kind}.{name}.*")) if folder.is_dir() else []

    def is_stale(self, record: CalibrationRecord) -> bool:
        """True when the robot config's content changed after `record` was made."""
        current = self._config_sha256()
        if current is None:
            return False
        if record.robot_config_sha256 is not None:
            return record.robot_config_sha256 != current
        assert self.config_path is not None
        changed = datetime.fromtimestamp(self.config_path.stat().st_mtime, UTC)
        return record.created_at < changed

    def _config_sha256(self) -> str | None:
        if self.config_path is None or not self.config_path.is_file():
            return None
        return hashlib.sha256(self.config_path.read_bytes()).hexdigest()

    def status(self, expected: Iterable[tuple[str, str]]) -> list[Status]:
        """One Status per expected (kind, name), then every other record found."""
        expected = list(dict.fromkeys(expected))
        present = {(r.kind, r.name): r for r in self.records()}
        out = []
        for key in expected + sorted(set(present) - set(expected)):
            record = present.get(key)
            state = "missing" if record is None else ("stale" if self.is_stale(record) else "ok")
            out.append(Status(key[0], key[1], state, record))
        return out

    def warnings(self, needs: Iterable[tuple[str, str]]) -> list[str]:
        """One message per needed calibration that is missing or made for an earlier robot config.

        For the recorder and the rollout: they log these and carry on (a missing calibration
        degrades a feature, it does not stop a robot).
        """
        needs = list(needs)
        messages = []
        for status in self.status(needs):
            if status.state == "ok" or (status.kind, status.name) not in set(needs):
                continue
            fix = KINDS.get(status.kind, "the calibration command").format(
                robot=self._robot_label(), name=status.name)
            if status.state == "missing":
                messages.append(f"No {status.kind} calibration for '{status.name}' in {self.root}; run: {fix}")
            else:
                messages.append(
                    f"The {status.kind} calibration for '{status.name}' ({status.record.created}) was made "
                    f"for an earlier version of {self.config_path}; if the hardware moved, re-run: {fix}")
        return messages

    def _robot_label(self) -> str:
        return str(self.config_path) if self.config_path is not None else "CFG"

    def _read(self, path: Path) -> CalibrationRecord:
        try:
            text = path.read_text()
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ConfigError(f"Cannot read calibration {path}: {exc}. Fix or delete the file and re-run the calibration.") from exc
        return CalibrationRecord.from_dict(raw, source=str(path))


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"Calibration date '{text}' is not ISO 8601 (e.g. 2026-12-02T16:10:56Z).") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples to YAML-safe builtins (safe_dump refuses numpy)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    raise ConfigError(f"Calibration value {value!r} ({type(value).__name__}) is not plain data; convert it to numbers/lists.")
