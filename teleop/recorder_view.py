"""How a recording session shows itself: a rich live status on a terminal, plain lines elsewhere.

StatusView is the live display (episode n of N, elapsed, fps, drops, skew, e-stop, and after
each take its quality score, via `note`). On a pipe,
under nohup or in CI a live display prints nothing until the end, so PlainProgress writes one
line per finished episode and at most one progress line every `interval_s` meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tether.core.progress import PlainLines


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
        self.done.append(episode_line(result))

    def note(self, line: str, alert: bool = False) -> None:
        """A line under the finished episodes (the take's quality score; red when `alert`)."""
        self.done.append(Text(line, style="red" if alert else "cyan"))

    def __rich__(self):
        table = Table.grid(padding=(0, 2))
        line = status_line(self.status)
        if line:
            s = self.status
            style = "yellow" if s.get("phase") == "reset" else "green"
            if s.get("stalled") or s.get("estop"):
                style = "red"
            table.add_row(Text(line, style=style))
        return Group(*(line if isinstance(line, Text) else Text(line) for line in self.done[-10:]), table)


class PlainProgress:
    """Rate-limited plain progress lines for a session whose output is not a terminal.

    An e-stop latching or releasing is always shown; `clock` is injectable so tests can drive
    the rate limit without sleeping.
    """

    def __init__(
        self,
        total: int,
        write: Callable[[str], None] = print,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.lines = PlainLines(write, interval_s, clock)
        self._estop = False

    def update(self, status: dict[str, Any]) -> None:
        estop = bool(status.get("estop"))
        changed, self._estop = estop != self._estop, estop
        self.lines.line(lambda: status_line(status), force=changed)

    def finished(self, result) -> None:
        self.lines.line(episode_line(result), force=True)

    def note(self, line: str, alert: bool = False) -> None:
        """A line that is always shown (the take's quality score)."""
        self.lines.line(line, force=True)


def status_line(s: dict[str, Any]) -> str:
    """One line for the session's current status ('' before anything happened)."""
    if s.get("phase") == "reset":
        return f"reset: next episode {s['episode']} in {s['remaining_s']:.1f} s"
    if not s:
        return ""
    stalled = f"  STALLED: {', '.join(s['stalled'])}" if s.get("stalled") else ""
    estop = "  E-STOP latched (x releases)" if s.get("estop") else ""
    return (
        f"recording episode {s['episode']}  {s['elapsed_s']:6.1f} s  {s['steps']} steps  "
        f"{s['fps']:5.1f} fps  skew {s['skew_ms']:5.1f} ms  drops {s['dropped']}  "
        f"writer backlog {s['backlog']}{stalled}{estop}"
    )


def episode_line(result) -> str:
    sync = result.stats.get("sync", {})
    drops = {k: v["dropped"] for k, v in sync.get("cameras", {}).items()}
    return (
        f"episode {result.episode if result.episode is not None else '-'}: {result.outcome}, "
        f"{result.steps} steps, {result.stats['loop']['achieved_hz']:.1f} Hz, "
        f"skew p99 {sync.get('skew_p99_ms', 0):.1f} ms, drops {drops}, success {result.success}"
    )
