"""`tether inspect`: look inside an episode store (wired into `tether` by tether/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    app.command(name="inspect")(inspect_command)


def inspect_command(
    store: Path = typer.Argument(..., help="Path of the episode store (a .zarr directory)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    episode: int | None = typer.Option(None, "--episode", "-e", help="Episode to render."),
    video: Path | None = typer.Option(
        None, "--video", help="Write the episode's cameras to this .mp4/.avi, or a .png contact sheet."
    ),
) -> None:
    """Show episodes, lengths, fps, streams, sizes, sync stats and success of a store.

    Example: tether inspect data.zarr --json ; tether inspect data.zarr --episode 0 --video ep0.mp4
    """
    import json

    from rich.console import Console

    from tether.data.inspect import summarize, write_episode_media
    from tether.data.store import EpisodeStore
    from tether.errors import TetherError

    console = Console()
    try:
        with EpisodeStore.open(store, "r") as st:
            if video is not None:
                if episode is None:
                    raise TetherError("--video needs --episode K (which episode to render).")
                out = write_episode_media(st, episode, video)
                console.print(f"wrote {out}")
                return
            summary = summarize(st)
            if episode is not None:
                st.episode_range(episode)  # raises a clear error for a missing episode
                summary["per_episode"] = [summary["per_episode"][episode]]
                summary["episode_metadata"] = st.episode_metadata(episode)
    except TetherError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_summary(console, summary)


def _print_summary(console, summary: dict) -> None:
    from rich.table import Table

    mb = 1e6
    console.print(
        f"[bold]{summary['path']}[/bold]  format v{summary['format_version']} (zarr "
        f"{summary['zarr_format']}), {summary['fps']:g} fps, {summary['episodes']} episodes, "
        f"{summary['steps']} steps ({summary['duration_s']:.1f} s), "
        f"{summary['disk_bytes'] / mb:.1f} MB on disk"
        + (f", {summary['compression_ratio']:.1f}x smaller than raw" if summary["compression_ratio"] else "")
        + (f", success {summary['success_rate']:.0%}" if summary["success_rate"] is not None else "")
    )
    streams = Table(title="streams")
    for col in ("key", "dtype", "shape", "codec", "MB raw", "MB disk"):
        streams.add_column(col)
    for s in summary["streams"]:
        streams.add_row(s["key"], s["dtype"], str(tuple(s["shape"])), s["codec"],
                        f"{s['raw_bytes'] / mb:.2f}", f"{s['disk_bytes'] / mb:.2f}")
    console.print(streams)
    episodes = Table(title="episodes")
    for col in ("#", "steps", "s", "success", "Hz", "overruns", "skew p50/p99 ms", "dropped", "dup"):
        episodes.add_column(col)
    for e in summary["per_episode"]:
        hz = f"{e['achieved_hz']:.1f}" if e["achieved_hz"] is not None else "-"
        skew = (f"{e['skew_p50_ms']:.1f}/{e['skew_p99_ms']:.1f}" if e["skew_p99_ms"] is not None else "-")
        episodes.add_row(
            str(e["episode"]), str(e["length"]), f"{e['duration_s']:.1f}", str(e["success"]), hz,
            str(e["overruns"] if e["overruns"] is not None else "-"), skew,
            ",".join(f"{k}:{v}" for k, v in e["dropped"].items()) or "-",
            ",".join(f"{k}:{v}" for k, v in e["duplicated"].items()) or "-",
        )
    console.print(episodes)
