"""selection.html: twin success (with 95% intervals) and losses against training step.

One self-contained page (inline SVG, no plotting library) written next to a run by
`tether train --eval-every` and next to a sweep by `tether eval --sweep`, so the question "did
the loss say anything about success?" is answered by looking at one picture.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.app.eval.selection import Choice, Scored, neighbour_spread

__all__ = ["write_selection_report"]

_COLORS = {"ema": "#1f77b4", "raw": "#ff7f0e", "val_loss": "#2ca02c", "train_loss": "#7f7f7f"}
W, H, PAD = 640, 260, 46


def write_selection_report(path: Path, candidates: Sequence[Scored], choice: Choice | None,
                           losses: dict[str, list[tuple[int, float]]] | None = None,
                           title: str = "checkpoint selection") -> Path:
    """Write the page; `losses` maps a name (val_loss, train_loss) to (step, value) points."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    losses = {k: v for k, v in (losses or {}).items() if v}
    steps = [c.step for c in candidates] + [s for pts in losses.values() for s, _ in pts]
    x_max = max(steps) if steps else 1
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if choice is not None:
        parts.append(f"<p><b>chosen:</b> {html.escape(choice.note)}</p>")
    parts.append(_success_svg(candidates, choice, x_max))
    if losses:
        parts.append(_loss_svg(losses, x_max))
    spreads = [neighbour_spread(candidates, w) for w in ("ema", "raw")]
    parts.append("<h2>neighbouring snapshots</h2><pre>" + html.escape(
        json.dumps([s for s in spreads if s.get("snapshots", 0) > 1], indent=1)) + "</pre>")
    parts.append(_table(candidates, choice))
    path.write_text("<!doctype html><meta charset='utf-8'><title>" + html.escape(title) +
                    "</title><body style='font-family:sans-serif'>" + "\n".join(parts) + "</body>\n")
    return path


def _sx(step: float, x_max: float) -> float:
    return PAD + (W - 2 * PAD) * step / max(x_max, 1)


def _sy(value: float, lo: float, hi: float) -> float:
    return H - PAD + (2 * PAD - H) * (value - lo) / max(hi - lo, 1e-12)


def _axes(x_max: float, y_lo: float, y_hi: float, y_label: str, y_fmt) -> list[str]:
    out = [f"<line x1='{PAD}' y1='{H - PAD}' x2='{W - PAD}' y2='{H - PAD}' stroke='black'/>",
           f"<line x1='{PAD}' y1='{PAD}' x2='{PAD}' y2='{H - PAD}' stroke='black'/>",
           f"<text x='{W / 2}' y='{H - 8}' text-anchor='middle'>training step</text>",
           f"<text x='12' y='{PAD - 14}'>{html.escape(y_label)}</text>"]
    for i in range(5):
        v = y_lo + (y_hi - y_lo) * i / 4
        y = _sy(v, y_lo, y_hi)
        out.append(f"<text x='{PAD - 4}' y='{y + 4:.1f}' text-anchor='end' font-size='11'>{y_fmt(v)}</text>")
        s = x_max * i / 4
        out.append(f"<text x='{_sx(s, x_max):.1f}' y='{H - PAD + 16}' text-anchor='middle' "
                   f"font-size='11'>{s:.0f}</text>")
    return out


def _success_svg(candidates: Sequence[Scored], choice: Choice | None, x_max: float) -> str:
    out = _axes(x_max, 0.0, 1.0, "twin success (95% Wilson interval)", lambda v: f"{v:.0%}")
    for weights, dx in (("ema", -3), ("raw", 3)):
        series = sorted((c for c in candidates if c.weights == weights), key=lambda c: c.step)
        if not series:
            continue
        color = _COLORS[weights]
        pts = " ".join(f"{_sx(c.step, x_max) + dx:.1f},{_sy(c.rate, 0, 1):.1f}" for c in series)
        out.append(f"<polyline points='{pts}' fill='none' stroke='{color}'/>")
        for c in series:
            low, high = c.ci95()
            x = _sx(c.step, x_max) + dx
            out.append(f"<line x1='{x:.1f}' y1='{_sy(low, 0, 1):.1f}' x2='{x:.1f}' "
                       f"y2='{_sy(high, 0, 1):.1f}' stroke='{color}' stroke-opacity='0.5'/>")
            out.append(f"<circle cx='{x:.1f}' cy='{_sy(c.rate, 0, 1):.1f}' r='3' fill='{color}'>"
                       f"<title>step {c.step} {weights}: {c.successes}/{c.episodes}</title></circle>")
        out.append(f"<text x='{W - PAD + 4}' y='{PAD + (0 if weights == 'ema' else 16)}' "
                   f"fill='{color}' font-size='12'>{weights}</text>")
    if choice is not None:
        c = candidates[choice.index]
        dx = -3 if c.weights == "ema" else 3
        out.append(f"<circle cx='{_sx(c.step, x_max) + dx:.1f}' cy='{_sy(c.rate, 0, 1):.1f}' r='7' "
                   "fill='none' stroke='red' stroke-width='2'><title>chosen</title></circle>")
    return f"<svg width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg'>{''.join(out)}</svg>"


def _loss_svg(losses: dict[str, list[tuple[int, float]]], x_max: float) -> str:
    values = [v for pts in losses.values() for _, v in pts]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    out = _axes(x_max, lo, hi, "loss", lambda v: f"{v:.3g}")
    for i, (name, pts) in enumerate(sorted(losses.items())):
        color = _COLORS.get(name, "#9467bd")
        line = " ".join(f"{_sx(s, x_max):.1f},{_sy(v, lo, hi):.1f}" for s, v in sorted(pts))
        out.append(f"<polyline points='{line}' fill='none' stroke='{color}'/>")
        out.append(f"<text x='{W - PAD + 4}' y='{PAD + 16 * i}' fill='{color}' font-size='12'>"
                   f"{html.escape(name)}</text>")
    return f"<svg width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg'>{''.join(out)}</svg>"


def _table(candidates: Sequence[Scored], choice: Choice | None) -> str:
    rows = ["<tr><th>step</th><th>weights</th><th>success</th><th>95% CI</th><th></th></tr>"]
    for i, c in sorted(enumerate(candidates), key=lambda ic: (ic[1].step, ic[1].weights)):
        low, high = c.ci95()
        mark = ""
        if choice is not None:
            mark = "chosen" if i == choice.index else ("tied" if i in choice.tied else "")
        extra: Any = c.extra.get("val_loss")
        rows.append(f"<tr><td>{c.step}</td><td>{c.weights}</td><td>{c.successes}/{c.episodes} "
                    f"({c.rate:.0%})</td><td>{low:.0%}-{high:.0%}</td><td>{mark}"
                    f"{'' if extra is None else f' val_loss {extra:.4f}'}</td></tr>")
    return "<h2>evaluations</h2><table border='1' cellpadding='3'>" + "".join(rows) + "</table>"
