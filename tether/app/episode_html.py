"""`tether view --html OUT/`: one self-contained HTML page per episode, for machines without
a viewer (a lab PC, an email attachment, a CI artifact).

Each page carries everything inline, nothing to fetch: the cameras side by side as a VP8 WebM
(base64 `data:` URI, it plays in any browser), one SVG plot per joint with the recorded
position (solid) and the commanded action (dashed), a cursor on every plot that follows the
video, and the episode's metadata (length, success, task, operator, quality score). `index.html`
lists the episodes with links.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.app.episode_view import joint_names_of, quality_score

PLOT_W, PLOT_H = 360, 120
MAX_VIDEO_WIDTH = 960  # cameras side by side are scaled down to this, to keep pages small


def write_episode_pages(store, episodes: Sequence[int], out: Path) -> list[Path]:
    """Write OUT/episode_NNNN.html for each episode and OUT/index.html; returns the pages."""
    out.mkdir(parents=True, exist_ok=True)
    pages = [write_episode_page(store, e, out / f"episode_{e:04d}.html") for e in episodes]
    rows = []
    for e, page in zip(episodes, pages, strict=True):
        meta = store.episode_metadata(e)
        rows.append(_index_row(e, page.name, meta, int(store.episode_lengths[e]), store.fps))
    title = html.escape(Path(store.path).name)
    (out / "index.html").write_text(_INDEX.format(title=title, rows="\n".join(rows)), encoding="utf-8")
    return pages


def write_episode_page(store, episode: int, path: Path) -> Path:
    meta = store.episode_metadata(episode)
    n = int(store.episode_lengths[episode])
    keys = [k for k in ("state", "action") if k in store.data_keys] + list(store.image_keys)
    data = store.get_episode(episode, keys)
    video = _video_uri(data, store.image_keys, store.fps)
    names = joint_names_of(store)
    state = data.get("state")
    action = data.get("action")
    dims = max(a.shape[1] for a in (state, action) if a is not None) if (
        state is not None or action is not None) else 0
    plots = []
    for j in range(dims):
        label = names[j] if j < len(names) else f"joint {j}"
        plots.append(_joint_svg(label, _column(state, j), _column(action, j), n))
    title = f"{Path(store.path).name} episode {episode}"
    video_html = (f"<video id='video' controls loop muted autoplay src='{video}'></video>" if video
                  else "<p>This store has no cameras.</p>")
    page = _PAGE.format(
        title=html.escape(title), info=_info_table(episode, meta, n, store.fps), video=video_html,
        plots="\n".join(plots), fps=float(store.fps), n=n,
    )
    path.write_text(page, encoding="utf-8")
    return path


def _column(values: np.ndarray | None, j: int) -> np.ndarray | None:
    if values is None or j >= values.shape[1]:
        return None
    return np.asarray(values[:, j], dtype=np.float64)


def _video_uri(data: dict[str, np.ndarray], image_keys: Sequence[str], fps: float) -> str | None:
    """The cameras side by side as an inline WebM data URI (None without cameras)."""
    if not image_keys:
        return None
    import cv2

    from tether.app.eval.video import write_webm

    frames = np.concatenate([data[k] for k in image_keys], axis=2)
    h, w = frames.shape[1:3]
    if w > MAX_VIDEO_WIDTH:
        size = (MAX_VIDEO_WIDTH, int(round(h * MAX_VIDEO_WIDTH / w)) // 2 * 2)
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_webm(list(frames), Path(tmp) / "episode.webm", fps)
        return "data:video/webm;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _joint_svg(label: str, position: np.ndarray | None, action: np.ndarray | None, n: int) -> str:
    """One joint's position (solid) and action (dashed) over the episode, as inline SVG."""
    series = [s for s in (position, action) if s is not None and len(s)]
    lo = min(float(np.nanmin(s)) for s in series)
    hi = max(float(np.nanmax(s)) for s in series)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 6

    def points(values: np.ndarray) -> str:
        x = pad + np.arange(len(values)) * (PLOT_W - 2 * pad) / max(1, n - 1)
        y = pad + (hi - values) * (PLOT_H - 2 * pad) / (hi - lo)
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True) if np.isfinite(b))

    lines = []
    if position is not None:
        lines.append(f"<polyline class='position' points='{points(position)}'/>")
    if action is not None:
        lines.append(f"<polyline class='action' points='{points(action)}'/>")
    return (
        f"<figure class='plot'><figcaption>{html.escape(label)} "
        f"<span class='range'>[{lo:.2f}, {hi:.2f}]</span></figcaption>"
        f"<svg viewBox='0 0 {PLOT_W} {PLOT_H}' width='{PLOT_W}' height='{PLOT_H}' "
        f"xmlns='http://www.w3.org/2000/svg'><rect class='frame' x='0.5' y='0.5' "
        f"width='{PLOT_W - 1}' height='{PLOT_H - 1}'/>{''.join(lines)}"
        f"<line class='cursor' x1='{pad}' x2='{pad}' y1='0' y2='{PLOT_H}' "
        f"data-x0='{pad}' data-x1='{PLOT_W - pad}'/></svg></figure>"
    )


def _info_table(episode: int, meta: dict[str, Any], n: int, fps: float) -> str:
    score = quality_score(meta)
    success = meta.get("success")
    rows = [
        ("episode", str(episode)),
        ("length", f"{n} steps ({n / fps:.1f} s at {fps:g} fps)"),
        ("success", "-" if success is None else ("yes" if success else "no")),
        ("task", meta.get("task") or "-"),
        ("operator", meta.get("operator") or "-"),
        ("quality", "-" if score is None else f"{score:.3f}"),
        ("seed", str(meta.get("seed", "-"))),
        ("recorded", str(meta.get("t_start_utc", "-"))),
        ("interventions", str(len(meta.get("intervention_spans") or []))),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td id='info-{html.escape(k)}'>"
                   f"{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table class='info'>{body}</table>"


def _index_row(episode: int, href: str, meta: dict[str, Any], n: int, fps: float) -> str:
    score = quality_score(meta)
    success = meta.get("success")
    cells = [f"<a href='{html.escape(href)}'>{episode}</a>", str(n), f"{n / fps:.1f}",
             "-" if success is None else ("yes" if success else "no"),
             html.escape(meta.get("operator") or "-"), "-" if score is None else f"{score:.3f}"]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
video { width: min(100%, 480px); border: 1px solid #ccc; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; }
.plot { margin: 0; } figcaption { font-size: 0.85em; } .range { color: #888; }
.frame { fill: #fafafa; stroke: #ccc; }
.position { fill: none; stroke: #1f77b4; stroke-width: 1.5; }
.action { fill: none; stroke: #d62728; stroke-width: 1.2; stroke-dasharray: 4 3; }
.cursor { stroke: #444; stroke-width: 1; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { text-align: left; padding: 2px 10px; border-bottom: 1px solid #eee; }
.legend span { margin-right: 1em; }
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>""" + _STYLE.replace("{", "{{").replace("}", "}}") + """</style></head>
<body>
<h1 id="title">{title}</h1>
{info}
{video}
<p class="legend"><span style="color:#1f77b4">&#9473; joint position (recorded state)</span>
<span style="color:#d62728">&#9476; action (command that reached the arm)</span></p>
<div class="plots">
{plots}
</div>
<script>
// The cursor on every plot follows the video: row = time * fps.
(function () {{
  var video = document.getElementById("video");
  if (!video) return;
  var fps = {fps}, n = {n};
  video.addEventListener("timeupdate", function () {{
    var row = Math.min(n - 1, Math.floor(video.currentTime * fps));
    var frac = n > 1 ? row / (n - 1) : 0;
    document.querySelectorAll(".cursor").forEach(function (line) {{
      var x0 = parseFloat(line.dataset.x0), x1 = parseFloat(line.dataset.x1);
      var x = x0 + frac * (x1 - x0);
      line.setAttribute("x1", x); line.setAttribute("x2", x);
    }});
  }});
}})();
</script>
</body></html>
"""

_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>""" + _STYLE.replace("{", "{{").replace("}", "}}") + """</style></head>
<body><h1>{title}</h1>
<table id="episodes"><tr><th>episode</th><th>steps</th><th>s</th><th>success</th><th>operator</th>
<th>quality</th></tr>
{rows}
</table></body></html>
"""

__all__ = ["write_episode_page", "write_episode_pages"]
