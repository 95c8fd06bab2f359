"""`tether inspect` and `tether data verify|repair|migrate|quality` (wired into `tether` by tether/cli.py).

Every store problem (missing or damaged files, a store in use, a full or read-only disk) ends as
one `error:` line naming the file and the fix, exit code 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(
    help="Check, repair and migrate episode stores.\n\nExample: tether data verify data.zarr",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    app.command(name="inspect")(inspect_command)
    from tether.app.commands.quality import quality_command

    data_app.command("quality")(quality_command)
    app.add_typer(data_app, name="data")


def inspect_command(
    store: str = typer.Argument(..., help="Episode store: a .zarr directory or an s3://... URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    episode: int | None = typer.Option(None, "--episode", "-e", help="Episode to render."),
    video: Path | None = typer.Option(
        None, "--video", help="Write the episode's cameras to this .mp4/.avi, or a .png contact sheet."
    ),
    verify: bool = typer.Option(
        False, "--verify", help="Also check every chunk against the manifests (as `tether data verify`)."
    ),
) -> None:
    """Show episodes, lengths, fps, streams, sizes, sync stats and success of a store.

    Example: tether inspect data.zarr --json ; tether inspect data.zarr --episode 0 --video ep0.mp4
    """
    import json

    from rich.console import Console

    from tether.core.errors import TetherError
    from tether.data.inspect import summarize, write_episode_media
    from tether.data.store import EpisodeStore
    from tether.data.verify import verify_store

    console = Console()
    report = None
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
        if verify:
            report = verify_store(st)
            summary["verify"] = report.as_dict()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(console, summary)
        if report is not None:
            _print_verify(console, report)
    if report is not None and not report.ok:
        raise typer.Exit(2)


@data_app.command("verify")
def verify_command(
    store: str = typer.Argument(..., help="Episode store: a .zarr directory or an s3://... URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every committed chunk against the manifest written at commit (read-only).

    Reports missing and corrupt chunks by episode, key, frame and file; exit code 2 when any.
    Example: tether data verify data.zarr
    """
    import json

    from rich.console import Console

    from tether.data.verify import verify_path

    console = Console()
    report = verify_path(store)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_verify(console, report)
    if not report.ok:
        raise typer.Exit(2)


@data_app.command("repair")
def repair_command(
    store: Path = typer.Argument(..., help="Path of the episode store (a .zarr directory)."),
    drop_damaged: bool = typer.Option(
        False, "--drop-damaged", help="Also delete every episode `tether data verify` flags."
    ),
) -> None:
    """Make a damaged or interrupted store consistent: finish a compaction, drop lost commits,
    remove temp files, write missing manifests; with --drop-damaged delete damaged episodes.

    Example: tether data repair data.zarr --drop-damaged
    """
    from rich.console import Console
    from rich.markup import escape

    from tether.data.verify import repair_store

    console = Console()
    result = repair_store(store, drop_damaged=drop_damaged)
    for action in result.actions or ["nothing needed repairing"]:
        console.print(f"repair: {escape(action)}", soft_wrap=True)
    _print_verify(console, result.after)
    if not result.after.ok:
        console.print(f"{len(result.after.damaged_episodes)} episode(s) are still damaged; restore "
                      f"them from a backup or run `tether data repair {escape(str(store))} "
                      "--drop-damaged`.", soft_wrap=True)
        raise typer.Exit(2)


@data_app.command("push")
def push_command(
    store: Path = typer.Argument(..., help="The local episode store to upload."),
    url: str = typer.Argument(..., help="Where: s3://bucket/name.zarr (or any fsspec URL)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Upload a store's committed episodes to object storage; resumes where the last push stopped.

    Episodes appear remotely one by one, each only once all of it is up (a killed push leaves
    no half-visible episode). Credentials: the standard AWS environment/config.
    Example: tether data push data.zarr s3://bucket/lift.zarr
    """
    import json

    from rich.console import Console

    from tether.data.remote import push

    report = push(store, url)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    Console().print(f"pushed {len(report.pushed)} episode(s) ({report.bytes / 1e6:.1f} MB) to "
                    f"{url}: it now has {report.remote_after}.", soft_wrap=True, highlight=False)


@data_app.command("merge")
def merge_command(
    out: Path = typer.Argument(..., help="The new local store to create."),
    sources: list[str] = typer.Argument(..., help="Stores to merge, in order (paths or URLs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    image_codec: str | None = typer.Option(
        None, "--image-codec", help="Camera frames in OUT (default: as the first source): h264, "
        "av1, jpeg, avif, jxl, zstd, none, with options as h264:crf=20 (docs/data.md, Image "
        "codecs). Converts a store: tether data merge new.zarr old.zarr --image-codec h264"),
) -> None:
    """Make one physical store of several (local or remote), episodes in order.

    Frames are copied as bytes when the source's codec and settings match OUT's (never
    re-encoded); otherwise decoded and encoded again. The stores must share fps and streams
    (cameras are matched by name).
    Example: tether data merge all.zarr a.zarr s3://bucket/b.zarr
    """
    from rich.console import Console

    from tether.data.store import EpisodeStore

    codec = {"image_codec": image_codec} if image_codec else {}
    with EpisodeStore.merge(out, sources, overwrite=overwrite, **codec) as merged:
        n = merged.n_episodes
    Console().print(f"merged {len(sources)} store(s) into {out}: {n} episodes.", soft_wrap=True,
                    highlight=False)


@data_app.command("migrate")
def migrate_command(
    store: Path = typer.Argument(..., help="Path of the episode store (a .zarr directory)."),
) -> None:
    """Upgrade a store written by an older tether to the current format, in place.

    Timing arrays move to their own group and episode metadata to one file per episode; frames
    are moved, never re-encoded. Crash-safe (built beside the store, then swapped in).
    Example: tether data migrate data.zarr
    """
    from rich.console import Console
    from rich.markup import escape

    from tether.data.store import migrate

    console = Console()
    result = migrate(store)
    if result["from_version"] == result["to_version"]:
        console.print(f"{escape(str(store))} is already format v{result['to_version']}; nothing "
                      "to do.", soft_wrap=True)
        return
    moved = ", ".join(f"{a} -> {b}" for a, b in result["moved"].items()) or "none"
    console.print(f"migrated {escape(str(store))} from format v{result['from_version']} to "
                  f"v{result['to_version']}: timing arrays moved ({escape(moved)}), "
                  f"{result['episode_metadata_files']} episode metadata file(s) written.",
                  soft_wrap=True)


def _print_verify(console, report) -> None:
    from rich.markup import escape

    for problem in report.problems:
        console.print(f"[red]{problem.kind}:[/red] {escape(problem.message)}", soft_wrap=True)
    note = (f"; {len(report.unverified)} episode(s) have no manifest (recorded before manifests: "
            "decoded only; `tether data repair` writes them)" if report.unverified else "")
    tail = f"; an uncommitted tail of {report.partial_steps} steps is hidden" if report.partial_steps else ""
    verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    console.print(
        f"verify {escape(report.path)}: {verdict}: {report.episodes} episodes, "
        f"{report.chunks_checked} chunks checked{note}{tail}.", soft_wrap=True,
    )


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
    if summary.get("lost_episodes"):
        console.print(f"[yellow]warning:[/yellow] {summary['lost_episodes']} committed episode(s) "
                      "lost their data and are hidden; run `tether data verify` and `tether data "
                      "repair`.", soft_wrap=True)
    streams = Table(title="streams")
    for col in ("key", "dtype", "shape", "codec", "MB raw", "MB disk"):
        streams.add_column(col)
    for s in summary["streams"]:
        streams.add_row(s["key"], s["dtype"], str(tuple(s["shape"])), s.get("codec_label", s["codec"]),
                        f"{s['raw_bytes'] / mb:.2f}", f"{s['disk_bytes'] / mb:.2f}")
    console.print(streams)
    episodes = Table(title="episodes")
    for col in ("#", "steps", "s", "success", "operator", "quality", "Hz", "overruns",
                "skew p50/p99 ms", "dropped", "dup"):
        episodes.add_column(col)
    for e in summary["per_episode"]:
        hz = f"{e['achieved_hz']:.1f}" if e["achieved_hz"] is not None else "-"
        skew = (f"{e['skew_p50_ms']:.1f}/{e['skew_p99_ms']:.1f}" if e["skew_p99_ms"] is not None else "-")
        episodes.add_row(
            str(e["episode"]), str(e["length"]), f"{e['duration_s']:.1f}",
            "-" if e["success"] is None else ("yes" if e["success"] else "no"),
            e.get("operator") or "-",
            "-" if e.get("quality") is None else f"{e['quality']:.3f}", hz,
            str(e["overruns"] if e["overruns"] is not None else "-"), skew,
            ",".join(f"{k}:{v}" for k, v in e["dropped"].items()) or "-",
            ",".join(f"{k}:{v}" for k, v in e["duplicated"].items()) or "-",
        )
    console.print(episodes)
