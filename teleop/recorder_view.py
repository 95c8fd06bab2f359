"""The rich live status of a recording session: episode n of N, elapsed, fps, drops, skew."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


class StatusView:
    """A renderable fed by `Recorder.on_status`; `rich.live.Live` redraws it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.status: dict[str, Any] = {}
        self.done: list[str] = []
        self.live = None

    def update(self, status: dict[str, Any]) -> None:
        self.status = status

    def finished(self, result) -> None:
        sync = result.stats.get("sync", {})
        drops = {k: v["dropped"] for k, v in sync.get("cameras", {}).items()}
        self.done.append(
            f"episode {result.episode if result.episode is not None else '-'}: {result.outcome}, "
            f"{result.steps} steps, {result.stats['loop']['achieved_hz']:.1f} Hz, "
            f"skew p99 {sync.get('skew_p99_ms', 0):.1f} ms, drops {drops}, success {result.success}"
        )

    def __rich__(self):
        s = self.status
        table = Table.grid(padding=(0, 2))
        if s.get("phase") == "reset":
            table.add_row(Text(f"reset: next episode {s['episode']} in {s['remaining_s']:.1f} s",
                               style="yellow"))
        elif s:
            stalled = f"  STALLED: {', '.join(s['stalled'])}" if s.get("stalled") else ""
            table.add_row(Text(
                f"recording episode {s['episode']}  {s['elapsed_s']:6.1f} s  {s['steps']} steps  "
                f"{s['fps']:5.1f} fps  skew {s['skew_ms']:5.1f} ms  drops {s['dropped']}  "
                f"writer backlog {s['backlog']}{stalled}",
                style="red" if stalled else "green",
            ))
        return Group(*(Text(line) for line in self.done[-10:]), table)
