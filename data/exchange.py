"""What an export to, or import from, another dataset format did (data layer).

Every format module behind `tether export` / `tether import` (registered in
`tether.app.commands.exchange.FORMATS`) defines

    export_store(store_path: Path, out: Path, **options) -> ExportReport
    import_dataset(src: Path, out: Path, **options) -> ImportReport

and returns one of these reports. Besides what was written, a report lists what could not
travel (metadata the other format has no place for), so the command can say so instead of
dropping it silently. Plain dataclasses: no zarr, no format libraries, cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.core.errors import ConfigError


@dataclass
class ExchangeReport:
    """Common part of export and import reports.

    `keys` maps each name on the written side to where it came from (e.g.
    {"data/camera_top": "image.top"}), `not_carried` lists what the other format cannot hold,
    one human-readable line each, and `notes` anything else the user should know (codec, PSNR
    tolerance, chunking).
    """

    format: str
    source: Path
    out: Path
    n_episodes: int = 0
    n_steps: int = 0
    fps: float | None = None
    keys: dict[str, str] = field(default_factory=dict)
    not_carried: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "direction": self.direction,
            "source": str(self.source),
            "out": str(self.out),
            "n_episodes": self.n_episodes,
            "n_steps": self.n_steps,
            "fps": self.fps,
            "keys": dict(self.keys),
            "not_carried": list(self.not_carried),
            "notes": list(self.notes),
        }

    direction = "exchange"


@dataclass
class ExportReport(ExchangeReport):
    """What `export_store` wrote: a tether store -> another format."""

    direction = "export"


@dataclass
class ImportReport(ExchangeReport):
    """What `import_dataset` wrote: another format -> a new tether store."""

    direction = "import"


def check_options(fmt: str, direction: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse options a format does not understand (a typo must not be silently ignored)."""
    known = sorted(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        allowed = ", ".join(known) if known else "none"
        raise ConfigError(
            f"{direction} --format {fmt} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {allowed}."
        )
