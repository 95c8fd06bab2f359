"""Plain progress lines for `tether eval` when stdout is not a terminal (pipes, nohup, CI).

A live progress bar draws nothing useful into a log file, so a long evaluation looked dead.
`PlainProgress` prints one line when episodes finish, at most one per `min_interval_s`, and a
heartbeat every `heartbeat_s` while nothing finishes; the clock is passed in so tests drive it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tether.core.progress import PlainLines


class PlainProgress:
    """`update(done, wins)` as often as you like; it decides when a line is worth printing."""

    def __init__(
        self,
        label: str,
        total: int,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = 2.0,
        heartbeat_s: float = 30.0,
    ) -> None:
        self.label = label
        self.total = total
        self.heartbeat_s = heartbeat_s
        self.lines = PlainLines(write or _print_flushed, min_interval_s, clock)
        self._t0 = clock()
        self._last_done = 0
        self.lines.line(f"{label}: 0/{total} episodes started")

    def update(self, done: int, wins: int) -> bool:
        """Print a line if an episode finished (rate-limited) or a heartbeat is due."""
        finished = done > self._last_done and self.lines.due()
        if finished or self.lines.since_last() >= self.heartbeat_s:
            return self._line(done, wins)
        return False

    def finish(self, done: int, wins: int) -> None:
        """The closing line, always printed."""
        self._line(done, wins, final=True)

    def _line(self, done: int, wins: int, final: bool = False) -> bool:
        rate = f"success {wins}/{done}" if done else "success -"
        end = " (done)" if final else ""
        elapsed = self.lines.clock() - self._t0
        self._last_done = done
        return self.lines.line(
            f"{self.label}: {done}/{self.total} episodes, {rate}, {elapsed:.0f} s{end}", force=True
        )


def _print_flushed(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
