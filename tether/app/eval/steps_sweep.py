"""The sampling-speed frontier: one diffusion policy evaluated at several sampler step counts.

`tether eval --checkpoint runs/dp --sweep-steps 1,2,3,5,10,20,100 --sampler ddim,dpmpp` runs
the same held-out seeds once per (sampler, steps) setting, each a normal evaluation with its
own report folder, then writes beside them:

    steps_sweep.json     one row per setting: success rate + 95% Wilson interval, inference
                         latency per request (p50/p90) and per control tick (mean)
    plots/frontier.png   success vs steps (with intervals) and latency vs steps per sampler
    report.html          the table and the plot, linking every setting's own report

Success rates do not depend on the machine (evaluation is lockstep: the twin waits for every
chunk); latencies do, so they are labelled with the machine's load when measured. The
`streaming` sampler has no step count (one network call per control step): it is one row.
"""

from __future__ import annotations

import html
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tether.app.eval.config import EvalConfig
from tether.core.errors import ConfigError

STREAMING = "streaming"  # the samplers' names live in tether.policies.samplers (a torch module)
KNOWN_SAMPLERS = ("ddim", "dpmpp", STREAMING)


def parse_steps(text: str) -> list[int]:
    """'1,2,3,10' -> [1, 2, 3, 10]; ConfigError naming the bad entry."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"--sweep-steps takes step counts >= 1 separated by commas "
                              f"(e.g. 1,3,10), got '{part}' in '{text}'")
        out.append(int(part))
    if not out:
        raise ConfigError("--sweep-steps needs at least one step count, e.g. --sweep-steps 1,3,10")
    return sorted(set(out))


def parse_samplers(text: str | None) -> list[str]:
    """'ddim,dpmpp' -> ['ddim', 'dpmpp'] (default: ddim)."""
    names = [p.strip() for p in (text or "ddim").split(",") if p.strip()]
    bad = [n for n in names if n not in KNOWN_SAMPLERS]
    if bad or not names:
        raise ConfigError(f"--sampler takes {', '.join(KNOWN_SAMPLERS)}, got '{text}'")
    return list(dict.fromkeys(names))


def parse_sampler(text: str, list_hint: str = "") -> str:
    """One sampler name, for a run that is not a sweep (`tether eval` without --sweep-steps,
    `tether rollout`); `list_hint` tells where a comma-separated list would go instead."""
    names = parse_samplers(text)
    if len(names) != 1:
        raise ConfigError(f"--sampler takes one name ({', '.join(KNOWN_SAMPLERS)}){list_hint}")
    return names[0]


def check_stream_lookahead(stream_lookahead: int | None, samplers: list[str] | None) -> None:
    """Refuse --stream-lookahead up front when no chosen sampler streams (`tether eval`,
    `tether rollout`): only the streaming sampler appends next-action estimates, a chunk sampler
    would silently ignore it. None (no --sampler) leaves the choice to the checkpoint, and in a
    sweep the chunk rows simply run without it."""
    if stream_lookahead is None or samplers is None or STREAMING in samplers:
        return
    raise ConfigError(f"--stream-lookahead applies to the streaming sampler; --sampler "
                      f"{','.join(samplers)} returns whole chunks (add streaming, or drop "
                      "--stream-lookahead)")


def settings(steps: list[int], samplers: list[str]) -> list[tuple[str, int | None]]:
    """(sampler, steps) pairs to evaluate; streaming appears once, without steps."""
    return [(s, None) if s == STREAMING else (s, n) for s in samplers
            for n in ([None] if s == STREAMING else steps)]


def sweep_steps(base: EvalConfig, steps: list[int], samplers: list[str],
                show_progress: bool = True) -> dict[str, Any]:
    """Evaluate `base`'s policy at every setting; write steps_sweep.json, the plot and report."""
    from tether.app.eval.runner import evaluate

    if base.policy:
        raise ConfigError("--sweep-steps evaluates a diffusion policy: give --checkpoint or --server")
    out_root = Path(base.out)
    rows = []
    for sampler, n in settings(steps, samplers):
        name = f"{sampler}" if n is None else f"{sampler}_{n}"
        rollout = dict(base.rollout)
        if sampler != STREAMING:  # the streaming row's --stream-lookahead; chunks have no tail
            rollout.pop("stream_lookahead", None)
        config = replace(base, steps=n, sampler=sampler, out=str(out_root / name), rollout=rollout)
        summary = evaluate(config, show_progress=show_progress)
        rows.append(_row(sampler, n, summary, out_root / name))
    data = {
        "task": base.env or base.task,
        "policy": base.checkpoint or base.server,
        "episodes": base.episodes,
        "first_seed": base.seed,
        "blend": base.rollout.get("blend", "ensemble"),
        "machine": machine(),
        "settings": rows,
        "note": "success rates are load-independent (lockstep evaluation); latencies are "
                "indicative: rerun on a quiet machine for figures",
    }
    out_root.mkdir(parents=True, exist_ok=True)
    plot = write_frontier_plot(out_root / "plots" / "frontier.png", rows)
    (out_root / "steps_sweep.json").write_text(json.dumps(data, indent=2) + "\n")
    write_sweep_html(out_root / "report.html", data, plot)
    return data


def machine() -> dict[str, Any]:
    """What the latencies were measured on (they mean little without it)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1min": None if load is None else round(load, 2)}


def _row(sampler: str, steps: int | None, summary: dict[str, Any], report: Path) -> dict[str, Any]:
    from tether.app.eval.records import load_records

    records = load_records(report / "episodes")
    ticks = sum(r.length for r in records)
    infer_total = sum(sum(r.inference_ms) for r in records)
    requests = sum(len(r.inference_ms) for r in records)
    inf = summary["inference_ms"]
    return {
        "sampler": sampler,
        "steps": steps,
        "success_rate": summary["success_rate"],
        "successes": summary["successes"],
        "episodes": summary["episodes"],
        "success_ci95": summary["success_ci95"],
        "inference_ms_p50": inf["p50"],
        "inference_ms_p90": inf["p90"],
        "inference_ms_per_tick": infer_total / ticks if ticks else None,
        "requests_per_tick": requests / ticks if ticks else None,
        "report": str(report / "report.html"),
    }


def write_frontier_plot(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Success (with 95% intervals) and inference latency against steps, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, sampler in enumerate(dict.fromkeys(r["sampler"] for r in rows)):
        mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["steps"] or 0)
        color = plt.cm.tab10(i)
        if sampler == STREAMING:  # no step count: a horizontal band at its success
            r = mine[0]
            low, high = r["success_ci95"]
            left.axhspan(low, high, color=color, alpha=0.15)
            left.axhline(r["success_rate"], color=color, linestyle="--", label="streaming (1 call/step)")
            right.axhline(r["inference_ms_p50"], color=color, linestyle="--", label="streaming")
            continue
        xs = [r["steps"] for r in mine]
        rate = [r["success_rate"] for r in mine]
        err = [[r["success_rate"] - r["success_ci95"][0] for r in mine],
               [r["success_ci95"][1] - r["success_rate"] for r in mine]]
        left.errorbar(xs, rate, yerr=err, marker="o", capsize=3, color=color, label=sampler)
        right.plot(xs, [r["inference_ms_p50"] for r in mine], marker="o", color=color, label=sampler)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("denoising steps per chunk")
        ax.legend(fontsize=8)
    left.set_ylabel("success rate (95% CI)")
    left.set_ylim(-0.02, 1.02)
    left.set_title("Success vs steps")
    right.set_ylabel("inference ms per request (p50)")
    right.set_title("Latency vs steps (indicative)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_sweep_html(path: Path, data: dict[str, Any], plot: Path) -> None:
    from tether.app.eval.report import _data_uri

    def ms(v: float | None) -> str:
        return "-" if v is None or v != v else f"{v:.1f}"

    rows = "\n".join(
        f"<tr><td>{html.escape(r['sampler'])}</td><td>{r['steps'] if r['steps'] is not None else '1/step'}"
        f"</td><td>{r['successes']}/{r['episodes']} = {r['success_rate']:.0%}</td>"
        f"<td>{r['success_ci95'][0]:.0%} to {r['success_ci95'][1]:.0%}</td>"
        f"<td>{ms(r['inference_ms_p50'])}</td><td>{ms(r['inference_ms_p90'])}</td>"
        f"<td>{ms(r['inference_ms_per_tick'])}</td>"
        f"<td><a href='{html.escape(os.path.relpath(r['report'], path.parent))}'>report</a></td></tr>"
        for r in data["settings"])
    m = data["machine"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tether: sampling-speed frontier</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Sampling-speed frontier: {html.escape(str(data['task']))}</h1>
<p>{html.escape(str(data['policy']))}: {data['episodes']} held-out seeds from {data['first_seed']} per
setting, blend {html.escape(str(data['blend']))}. Measured {m['date']} on {html.escape(str(m['host']))}
({m['cpus']} CPUs, load {m['load_average_1min']}). Success rates do not depend on machine load
(lockstep evaluation); latencies are indicative.</p>
<table id="frontier"><tr><th>sampler</th><th>steps</th><th>success</th><th>95% CI</th>
<th>inference ms p50</th><th>p90</th><th>ms per tick</th><th></th></tr>
{rows}</table>
<figure><img alt="frontier" src="{_data_uri(plot, 'image/png')}"><figcaption>success and latency
vs denoising steps</figcaption></figure>
</body></html>
"""
    path.write_text(page)
