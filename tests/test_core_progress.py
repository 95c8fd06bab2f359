"""tether.core.progress.PlainLines: the one rate limit behind every command's plain progress."""

from __future__ import annotations

from tether.core.progress import PlainLines


def _lines(**kwargs):
    now = [0.0]
    out: list[str] = []
    return now, out, PlainLines(out.append, 5.0, clock=lambda: now[0], **kwargs)


def test_first_line_at_once_then_one_per_interval():
    now, out, lines = _lines()
    assert lines.line("a") and not lines.line("b")
    now[0] = 4.9
    assert not lines.due() and not lines.line("c")
    now[0] = 5.0
    assert lines.due() and lines.line("d")
    assert out == ["a", "d"]


def test_quiet_start_waits_a_full_interval():
    now, out, lines = _lines(quiet_start=True)
    assert not lines.line("a")
    now[0] = 5.0
    assert lines.line("b") and out == ["b"]


def test_forced_lines_always_show_and_restart_the_interval():
    now, out, lines = _lines()
    lines.line("a")
    now[0] = 1.0
    assert lines.line("done", force=True)
    now[0] = 5.5
    assert not lines.line("c")  # 4.5 s after the forced line
    assert out == ["a", "done"] and lines.since_last() == 4.5


def test_a_line_not_due_is_never_formatted_and_empty_lines_are_skipped():
    now, out, lines = _lines()
    calls = []
    assert not lines.line(lambda: calls.append(1) or "")  # empty: nothing written, still due
    assert lines.due()
    lines.line("a")
    assert not lines.line(lambda: calls.append(2) or "x")
    assert calls == [1] and out == ["a"]
