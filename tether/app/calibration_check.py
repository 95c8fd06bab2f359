"""Warn when a robot's calibrations are missing or were made for an earlier robot config.

Layer: app. Reads the robot's calibration folder (tether.calibration.store) and turns what is
missing or stale into warnings; it never stops a robot: an uncalibrated camera degrades a
feature (datasets without intrinsics), it does not make recording unsafe. The twin needs no
calibration (its truth is exact), so twin robots get no warnings.
"""

from __future__ import annotations

import logging

from tether.robot.config import RobotConfig

log = logging.getLogger(__name__)


def needed_calibrations(config: RobotConfig) -> list[tuple[str, str]]:
    """(kind, name) pairs a hardware robot should have: intrinsics for every camera."""
    names = [c.name for c in config.cameras] or list(config.twin_params.get("cameras", []))
    return [("camera_intrinsics", name) for name in names]


def calibration_warnings(robot_spec: str, config: RobotConfig) -> list[str]:
    """Messages for needed calibrations that are missing, and for any record that is stale."""
    if str(robot_spec).startswith("twin:") or config.twin_task:
        return []
    from tether.calibration.store import CalibrationStore

    store = CalibrationStore.for_robot(robot_spec)
    needs = needed_calibrations(config)
    present = [(r.kind, r.name) for r in store.records()]
    return store.warnings(needs + present)


def warn_calibrations(robot_spec: str, config: RobotConfig, say=None) -> list[str]:
    """Log (and with `say`, e.g. a rich console's print, show) each calibration warning."""
    from tether.core.errors import ConfigError

    try:
        messages = calibration_warnings(robot_spec, config)
    except ConfigError as exc:  # an unreadable record: say so, keep the robot usable
        messages = [str(exc)]
    for message in messages:
        log.warning(message)
        if say is not None:
            say(f"[yellow]calibration:[/yellow] {message}")
    return messages
