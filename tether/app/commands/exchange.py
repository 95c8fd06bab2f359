"""`tether export` and `tether import`: episode stores to and from other dataset formats (app layer).

Each format is one module path in `FORMATS`, imported only when that format is asked for (so
`tether --help` never imports pyarrow, PyAV or zarr). A format module defines

    export_store(store_path: Path, out: Path, **options) -> ExportReport
    import_dataset(src: Path, out: Path, **options) -> ImportReport

(reports in tether.data.exchange). Options come from explicit flags (--fps, --repo-id, ...; only
those given are passed) and from repeated `--option key=value`; the module refuses options it
does not know.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import typer

from tether.core.errors import ConfigError

# format name -> module defining export_store / import_dataset (imported lazily).
FORMATS: dict[str, str] = {
    "diffusion_policy": "tether.data.replay_buffer",  # diffusion_policy / UMI ReplayBuffer zarr
    "lerobot": "tether.data.lerobot",  # LeRobotDataset v3.0 (parquet + mp4)
}


def register(app: typer.Typer) -> None:
    """Add `tether export` and `tether import` to the `tether` app."""
    app.command(name="export")(export_command)
    app.command(name="import")(import_command)


def format_module(fmt: str, needs: str):
    """The module implementing `fmt`, or a ConfigError naming the known formats."""
    if fmt not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise ConfigError(f"Unknown format '{fmt}'. Known formats: {known}.")
    module = importlib.import_module(FORMATS[fmt])
    if not hasattr(module, needs):
        raise ConfigError(f"Format '{fmt}' cannot {needs.split('_')[0]} (no {needs} in {FORMATS[fmt]}).")
    return module


def parse_options(pairs: list[str] | None, **explicit: Any) -> dict[str, Any]:
    """`--option key=value` pairs (values parsed as YAML scalars: 30 -> int, true -> bool) merged
    with the explicit flags that were given (None means not given)."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--option needs key=value, got '{pair}' (e.g. --option fps=30).")
        try:
            options[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            options[key] = value
    for key, value in explicit.items():
        if value is not None:
            options[key] = value
    return options


_FORMAT_HELP = "Format: " + ", ".join(sorted(FORMATS)) + "."
_OPTION_HELP = "Extra format option key=value (repeatable), e.g. --option image_codec=blosc."


def export_command(
    store: str = typer.Argument(..., help="The episode store to export (a .zarr directory or URL)."),
    fmt: str = typer.Option(..., "--format", "-f", help=_FORMAT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the exported dataset."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    repo_id: str | None = typer.Option(None, "--repo-id", help="lerobot: dataset repo id (user/name)."),
    vcodec: str | None = typer.Option(None, "--vcodec", help="lerobot: video codec (h264, av1)."),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Write an episode store in another dataset format; lists what could not travel.

    Example: tether export data.zarr --format diffusion_policy --out replay.zarr
    """
    module = format_module(fmt, "export_store")
    options = parse_options(option, repo_id=repo_id, vcodec=vcodec, overwrite=overwrite or None)
    from tether.data.remote import local_copy

    with local_copy(store) as local:  # a URL is read into a temporary local store first
        report = module.export_store(local, Path(out), **options)
    report.source = Path(store) if local == Path(store) else store
    _print_report(report, as_json)


def import_command(
    src: Path = typer.Argument(..., help="The dataset to import (folder, .zarr or .zarr.zip)."),
    fmt: str = typer.Option(..., "--format", "-f", help=_FORMAT_HELP),
    out: str = typer.Option(..., "--out", "-o", help="The new episode store to create (.zarr or URL)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    fps: float | None = typer.Option(
        None, "--fps", help="Frame rate, for formats that do not record one (diffusion_policy)."
    ),
    image_codec: str | None = typer.Option(
        None, "--image-codec", help="Camera frames in the new store: h264 (default), av1, jpeg, "
        "avif, jxl, zstd (lossless), none; options as h264:crf=20 (docs/data.md, Image codecs)."),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Create an episode store from a dataset in another format; lists what could not travel.

    Example: tether import replay.zarr.zip --format diffusion_policy --out data.zarr --fps 10
    """
    module = format_module(fmt, "import_dataset")
    options = parse_options(option, fps=fps, overwrite=overwrite or None, image_codec=image_codec)
    from tether.data.remote import pushed_from_local

    with pushed_from_local(out) as local:  # a URL: imported locally, then pushed
        report = module.import_dataset(Path(src), local, **options)
    report.out = out
    _print_report(report, as_json)


def _print_report(report, as_json: bool) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    console = Console()
    fps = f", {report.fps:g} fps" if report.fps else ""
    console.print(
        f"[bold]{report.direction}[/bold] {report.format}: {report.source} -> {report.out} "
        f"({report.n_episodes} episodes, {report.n_steps} steps{fps})",
        soft_wrap=True,
    )
    if report.keys:
        table = Table("written", "from")
        for written, origin in report.keys.items():
            table.add_row(written, origin)
        console.print(table)
    for note in report.notes:
        console.print(f"  note: {note}", soft_wrap=True, markup=False)
    if report.not_carried:
        console.print("[yellow]not carried (the other format has no place for it):[/yellow]")
        for line in report.not_carried:
            console.print(f"  - {line}", soft_wrap=True, markup=False)
    else:
        console.print("everything carried.")
