"""`tether data quality`: rank every episode of a store by its quality score, and write the list of
episodes worth training on (registered under `tether data` by tether/app/commands/data.py).

The score and its parts are tether.data.quality (smoothness, coverage, consistency) and, with
--base-policy, tether.app.quality (compatibility with that policy). Here every episode is
judged against all the other episodes of the store; `tether record` scores each take against
the takes before it, right after it is saved.
"""

from __future__ import annotations

from pathlib import Path

import typer


def quality_command(
    store: Path = typer.Argument(..., help="Path of the episode store (a .zarr directory)."),
    base_policy: Path | None = typer.Option(
        None, "--base-policy", help="Checkpoint or run directory: also score compatibility with it."),
    keep_out: Path | None = typer.Option(
        None, "--keep-out", help="Write the kept episodes (no flag, score >= --min-score) to this "
                                 "file, for `tether train --episodes-from`."),
    min_score: float = typer.Option(0.0, "--min-score", min=0.0, max=1.0,
                                    help="Also drop episodes scoring below this (0..1)."),
    save: bool = typer.Option(False, "--save", help="Store each score in its episode's metadata "
                                                    "(key `quality`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Rank the episodes of a store by quality (score 0..1, higher is better) and flag bad takes.

    Parts: smoothness (jerk, pauses, gripper chatter), consistency (acts like the other takes
    in the states they share), coverage (new states); with --base-policy, compatibility (the
    policy's action error in the states it knows). Flagged episodes say why.

    Example: tether data quality data.zarr --keep-out keep.txt ; tether train --dataset data.zarr --episodes-from keep.txt
    """
    import json

    from rich.console import Console

    from tether.app.quality import keep_episodes, rank_store
    from tether.data.quality import QUALITY_KEY, write_episode_list
    from tether.data.store import EpisodeStore

    console = Console()
    with EpisodeStore.open(store, "a" if save else "r") as st:
        if st.n_episodes == 0:
            console.print(f"{store} has no episodes to score.")
            raise typer.Exit(1)
        reports = rank_store(st, base_policy=base_policy)
        meta = [st.episode_metadata(e) for e in range(st.n_episodes)]
        lengths = st.episode_lengths.tolist()
        if save:
            for e, q in enumerate(reports):
                st.update_episode_metadata(e, **{QUALITY_KEY: q})
    keep = keep_episodes(reports, min_score)
    if keep_out is not None:
        header = (f"episodes of {store} kept by `tether data quality` (no flag, score >= "
                  f"{min_score:g}{', base policy ' + str(base_policy) if base_policy else ''}): "
                  f"{len(keep)} of {len(reports)}")
        write_episode_list(keep_out, keep, header)
    if as_json:
        typer.echo(json.dumps({"episodes": [{"episode": e, **q} for e, q in enumerate(reports)],
                               "kept": keep}, indent=2))
        return
    _print_ranking(console, reports, meta, lengths)
    flagged = len(reports) - sum(1 for q in reports if not q["flags"])
    note = f"; kept {len(keep)} -> {keep_out}" if keep_out is not None else ""
    console.print(f"{len(reports)} episodes, {flagged} flagged{note}", soft_wrap=True, highlight=False)


def _print_ranking(console, reports, meta, lengths) -> None:
    from rich.markup import escape
    from rich.table import Table

    has_compat = any(q.get("compatibility") is not None for q in reports)
    table = Table(title="episodes by quality (best first)")
    columns = ["rank", "#", "score", "smooth", "consist"] + (["compat"] if has_compat else [])
    for col in [*columns, "coverage", "steps", "success", "operator", "flags"]:
        table.add_column(col, overflow="fold")
    order = sorted(range(len(reports)), key=lambda e: (-reports[e]["score"], e))
    for rank, e in enumerate(order, 1):
        q = reports[e]

        def num(v):
            return "-" if v is None else f"{v:.2f}"

        style = "red" if q["flags"] else None
        cells = [str(rank), str(e), num(q["score"]), num(q["smoothness"]), num(q["consistency"])]
        if has_compat:
            cells.append(num(q.get("compatibility")))
        cells += [num(q["coverage"]), str(lengths[e]), str(meta[e].get("success")),
                  escape(str(meta[e].get("operator") or "-")),
                  escape(", ".join(q["flags"])) if q["flags"] else "-"]
        table.add_row(*cells, style=style)
    console.print(table)
    for e, q in enumerate(reports):  # the why, in full, under the table
        for reason in q["reasons"]:
            console.print(f"[red]episode {e}:[/red] {escape(reason)}", soft_wrap=True, highlight=False)
