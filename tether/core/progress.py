"""Plain progress lines for output that is not a terminal (pipes, nohup, CI logs).

A live rich display draws nothing useful into a log file, so a long job looks dead; printing on
every step floods the log. `PlainLines` is the one rate limit every command uses (record,
rollout, eval, train): at most one line per `interval_s`, lines that must always show (an
episode finished, the last step) forced through. What a line says stays with each command.
The clock is passed in so tests drive the rate limit without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class PlainLines:
    """Write progress lines through `write`, at most one per `interval_s` unless forced."""

    def __init__(
        self,
        write: Callable[[str], None],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        quiet_start: bool = False,
    ) -> None:
        """`quiet_start`: the first unforced line waits a full interval (else it shows at once)."""
        self.write = write
        self.interval_s = float(interval_s)
        self.clock = clock
        self._last: float | None = clock() if quiet_start else None

    def due(self) -> bool:
        """Whether an unforced line would be written now."""
        return self._last is None or self.clock() - self._last >= self.interval_s

    def since_last(self) -> float:
        """Seconds since the last line (infinite before the first)."""
        return float("inf") if self._last is None else self.clock() - self._last

    def line(self, text: str | Callable[[], str], force: bool = False) -> bool:
        """Write `text` if forced or due; True if written. An empty text writes nothing.

        `text` may be a callable, so a line that is not due costs no formatting."""
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.interval_s:
            return False
        message = text() if callable(text) else text
        if not message:
            return False
        self._last = now
        self.write(message)
        return True
