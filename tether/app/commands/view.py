"""`tether view`: look at recorded episodes in rerun, or as self-contained HTML pages.

Wired into `tether` by tether/cli.py. rerun-sdk and OpenCV come with `tether[viz]`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    app.command(name="view")(view_command)


def view_command(
    store: Path = typer.Argument(..., help="Path of the episode store (a .zarr directory)."),
    episode: int | None = typer.Option(None, "--episode", "-e", help="Only this episode (default: all)."),
    rrd: Path | None = typer.Option(
        None, "--rrd",
        help="Save instead of opening a viewer: FILE.rrd (one episode) or a folder (one .rrd each).",
    ),
    html_out: Path | None = typer.Option(
        None, "--html",
        help="Write one self-contained HTML page per episode (video + joint plots) into this folder.",
    ),
    to: str = typer.Option(
        "spawn", "--to",
        help="Where to open the episodes without --rrd/--html: spawn (a viewer here), "
             "tcp://HOST:PORT, web[:PORT] or rerun+http://HOST:PORT/proxy (as --view).",
    ),
) -> None:
    """Open recorded episodes in rerun: time-aligned cameras, joint positions and actions.

    Each episode is one rerun recording. --rrd saves them instead; --html writes pages that
    open in any browser (for machines without a viewer).

    Example: tether view data.zarr --episode 0 --html pages/
    """
    from rich.console import Console

    from tether.core.errors import ConfigError
    from tether.data.store import EpisodeStore

    console = Console(stderr=True)
    if rrd is not None and html_out is not None:
        raise ConfigError("Use either --rrd or --html, not both (run the command twice for both).")
    with EpisodeStore.open(store, "r") as st:
        from tether.app.episode_view import rrd_paths, select_episodes, view_episodes

        episodes = select_episodes(st.n_episodes, episode)
        if not episodes:
            raise ConfigError(f"{store} has no episodes to view; record some with `tether record`.")
        if html_out is not None:
            from tether.app.episode_html import write_episode_pages

            pages = write_episode_pages(st, episodes, html_out)
            console.print(f"wrote {len(pages)} page(s) and {html_out / 'index.html'}")
            return
        if rrd is not None:
            paths = rrd_paths(rrd, Path(st.path).stem, episodes)
            view_episodes(st, episodes, [str(p) for p in paths])
            console.print(f"wrote {', '.join(str(p) for p in paths)} (open with `rerun FILE.rrd`)")
            return
        served = view_episodes(st, episodes, to)
    console.print(f"sent {len(episodes)} episode(s) to the viewer ({to})")
    if served is not None:  # the server lives as long as the recording: serve until Ctrl-C
        import time

        console.print("serving; Ctrl-C stops")
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            served.disconnect()
