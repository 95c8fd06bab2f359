"""Turn evaluation episodes into a report folder a lab can trust and share.

Layout of the folder:
    summary.json      success rate with 95% Wilson interval, lengths, latency, interventions
    episodes.csv      one row per episode
    plots/*.png       success by seed, latency histogram, joint trajectories
    videos/*.webm     some successes and some failures (VP8 WebM plays in any browser)
    report.html       everything above in one self-contained file (images and videos inlined)
"""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.app.eval.records import EpisodeRecord
from tether.app.eval.stats import percentiles, wilson_interval

SUMMARY_FIELDS = ("success_rate", "success_ci95", "episodes", "successes")


def summarize(records: Sequence[EpisodeRecord], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    n = len(records)
    successes = sum(r.success for r in records)
    low, high = wilson_interval(successes, n)
    lengths = [r.length for r in records]
    latency = [v for r in records for v in r.latency_ms]
    inference = [v for r in records for v in r.inference_ms]
    safety: dict[str, int] = {}
    for r in records:
        for reason, count in r.safety.items():
            safety[reason] = safety.get(reason, 0) + int(count)
    return {
        **(meta or {}),
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n if n else 0.0,
        "success_ci95": [low, high],
        "episode_length": percentiles(lengths, (50, 90)),
        "action_latency_ms": percentiles(latency),
        "inference_ms": percentiles(inference),
        "safety_interventions": safety,
        "stalls": int(sum(r.stalls for r in records)),
        **_returns(records),
        "seeds": [r.seed for r in records],
        "failed_seeds": [r.seed for r in records if not r.success],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _returns(records: Sequence[EpisodeRecord]) -> dict[str, Any]:
    """Episode returns, for targets that have rewards (gymnasium envs); nothing for the twin."""
    returns = [r.episode_return for r in records if r.episode_return is not None]
    return {"episode_return": percentiles(returns, (50,))} if returns else {}


def write_report(
    folder: Path, records: Sequence[EpisodeRecord], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write summary.json, episodes.csv, plots and report.html into `folder`; return the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, meta)
    (folder / "summary.json").write_text(json.dumps(_finite(summary), indent=2) + "\n")
    _write_csv(folder / "episodes.csv", records)
    plots = _write_plots(folder / "plots", records)
    _write_html(folder / "report.html", folder, summary, records, plots)
    return summary


def _write_csv(path: Path, records: Sequence[EpisodeRecord]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seed", "success", "length", "max_steps", "first_success_step", "wall_time_s",
                         "latency_p50_ms", "latency_max_ms", "stalls", "safety_interventions", "video",
                         "return"])
        for r in records:
            lat = percentiles(r.latency_ms, (50,))
            writer.writerow([r.seed, int(r.success), r.length, r.max_steps, r.first_success_step,
                             f"{r.wall_time_s:.3f}", f"{lat['p50']:.3f}", f"{lat['max']:.3f}", r.stalls,
                             sum(r.safety.values()), r.video or "",
                             "" if r.episode_return is None else f"{r.episode_return:.6g}"])


def _write_plots(folder: Path, records: Sequence[EpisodeRecord]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(7, 2.6))
    seeds = [r.seed for r in records]
    colors = ["#2a9d8f" if r.success else "#e76f51" for r in records]
    ax.bar(range(len(records)), [r.length for r in records], color=colors)
    ax.set_xticks(range(len(records)))
    ax.set_xticklabels([str(s) for s in seeds], rotation=90, fontsize=6)
    ax.set_xlabel("seed (green: success, red: failure)")
    ax.set_ylabel("episode length (ticks)")
    ax.set_title("Success by seed")
    paths["success_by_seed"] = _save(fig, folder / "success_by_seed.png")

    fig, ax = plt.subplots(figsize=(7, 2.6))
    latency = [v for r in records for v in r.latency_ms]
    if latency:
        ax.hist(latency, bins=40, color="#264653")
    ax.set_xlabel("action latency per chunk (ms)")
    ax.set_ylabel("chunks")
    ax.set_title("Latency histogram" + ("" if latency else " (no chunk requests recorded)"))
    paths["latency_histogram"] = _save(fig, folder / "latency_histogram.png")

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for r in records[:6]:
        if r.joints is not None and len(r.joints):
            style = "-" if r.success else "--"
            for j in range(r.joints.shape[1]):
                ax.plot(r.joints[:, j], style, linewidth=0.8, color=plt.cm.tab10(j % 10))
    ax.set_xlabel("tick")
    ax.set_ylabel("joint position (rad)")
    ax.set_title("Joint trajectories (first episodes; dashed: failures)")
    paths["joint_trajectories"] = _save(fig, folder / "joint_trajectories.png")
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _write_html(path: Path, folder: Path, summary: dict, records: Sequence[EpisodeRecord],
                plots: dict[str, Path]) -> None:
    low, high = summary["success_ci95"]
    lat = summary["action_latency_ms"]
    rows = "\n".join(
        f"<tr class='{'ok' if r.success else 'fail'}'><td>{r.seed}</td><td>{'yes' if r.success else 'no'}"
        f"</td><td>{r.length}</td><td>{r.stalls}</td><td>{sum(r.safety.values())}</td></tr>"
        for r in records
    )
    videos = []
    for r in records:
        if r.video and (folder / r.video).exists():
            label = f"seed {r.seed}: {'success' if r.success else 'failure'}"
            videos.append(
                f"<figure><video controls loop muted src='{_data_uri(folder / r.video, 'video/webm')}'>"
                f"</video><figcaption>{html.escape(label)}</figcaption></figure>"
            )
    images = "\n".join(
        f"<figure><img alt='{name}' src='{_data_uri(p, 'image/png')}'><figcaption>{name.replace('_', ' ')}"
        "</figcaption></figure>"
        for name, p in plots.items()
    )
    meta_rows = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in summary.items()
        if k not in ("seeds", "failed_seeds", "episode_length", "action_latency_ms", "inference_ms",
                     "episode_return")
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tether evaluation: {html.escape(str(summary.get('task', '')))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
.headline {{ font-size: 2em; margin: 0.2em 0; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
tr.ok td:nth-child(2) {{ color: #2a9d8f; }} tr.fail td:nth-child(2) {{ color: #e76f51; font-weight: bold; }}
figure {{ display: inline-block; margin: 0.5em; }} img, video {{ max-width: 520px; }}
</style></head><body>
<h1>tether evaluation report</h1>
<p class="headline" id="success-rate">Success {summary['successes']}/{summary['episodes']} =
{summary['success_rate']:.0%} <small>(95% CI {low:.0%} to {high:.0%})</small></p>
<p id="latency">Action latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms; stalls: {summary['stalls']};
safety interventions: {sum(summary['safety_interventions'].values())}</p>
<h2>Plots</h2>{images}
<h2>Videos</h2>{''.join(videos) or '<p>No videos were recorded.</p>'}
<h2>Episodes</h2><table id="episodes"><tr><th>seed</th><th>success</th><th>length</th><th>stalls</th><th>safety</th></tr>
{rows}</table>
<h2>Run</h2><table>{meta_rows}</table>
</body></html>
"""
    path.write_text(page)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead so every reader can parse the summary."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
