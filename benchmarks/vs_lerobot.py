"""tether vs LeRobot 0.4.4, side by side on this machine, in one run (issue 17).

Builds LeRobot 0.4.4 in its own venv once (benchmarks/vs_lerobot/lerobot_venv.py), then measures
both sides alternately: for each round and item, a tether process, then a LeRobot process, each
with the same threads (2), batch 1 for inference, the same architectures and parameter counts.
Every measuring process holds /tmp/tether-cpu.lock (other benchmarks that take it never overlap
ours), and one whose timed window shows contention (cpu/wall below --cpw-min while other processes
used more than --others-max cores; for the data items, those other processes alone) is run again,
up to --attempts times; the last attempt is kept and marked.

Prints one JSON line per measurement as it comes (stderr shows progress), then one JSON line
per figure: both sides, the ratio tether / LeRobot, the goal and whether it is met, cpu/wall and
the load of every round. `--write-docs` puts the table into docs/performance.md.

    make bench-lerobot                                     # the full run, writes the docs
    .venv/bin/python benchmarks/vs_lerobot.py --items act,train --rounds 1
    .venv/bin/python benchmarks/vs_lerobot.py --side tether --size tiny --runs 2 --cpw-min 0
    .venv/bin/python benchmarks/vs_lerobot.py --from-results RESULTS.jsonl --write-docs

Figures: ACT 240x320 and 480x640 (numpy uint8 -> action chunk; tether's served policy vs
LeRobot's pipeline); diffusion, one denoising step of the full U-Net, a 10-step DDIM chunk, and
a few-step chunk vs LeRobot's default 100-step DDPM; dataset write of 300 480x640 frames, image
bytes per frame and PSNR; DataLoader samples/s; training steps/s of ACT and diffusion.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from vs_lerobot import lerobot_venv, report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIDE_SCRIPTS = {"tether": HERE / "vs_lerobot" / "tether_side.py",
                "lerobot": HERE / "vs_lerobot" / "lerobot_side.py"}
ITEMS = ("act", "diffusion", "dataset", "train")
LOCK = Path("/tmp/tether-cpu.lock")
#: Benches whose timed window should keep 2 cores busy: contended when cpu/wall < --cpw-min.
COMPUTE_BENCHES = {"act", "diffusion_chunk", "diffusion_step", "diffusion_unet_eager", "train"}
#: Data benches (a writer, a loader) need not fill 2 cores: contended when others used CPU.
DATA_BENCHES = {"dataset_write", "dataset_read"}
#: Sizes per --size: ACT images, the dataset frames (NxHxW), training frames and images.
SIZES = {
    "full": {"act_hw": ["240x320", "480x640"], "frames": "300x480x640", "train_frames": 200,
             "train_hw": "240x320", "diffusion_hw": "96x96", "samples": 3200},
    "tiny": {"act_hw": ["48x64"], "frames": "20x48x64", "train_frames": 40, "train_hw": "48x64",
             "diffusion_hw": "48x64", "samples": 64},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example: .venv/bin/python benchmarks/vs_lerobot.py "
                                       "--write-docs   (what `make bench-lerobot` runs)")
    p.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated: {', '.join(ITEMS)}")
    p.add_argument("--rounds", type=int, default=2, help="tether/LeRobot alternations per item")
    p.add_argument("--runs", type=int, default=20, help="timed calls per latency figure")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before them")
    p.add_argument("--engine", default=None,
                   help="tether's inference engine (auto, eager, compile, onnx, ...; default: "
                        "what `tether serve` uses). Needs a tether with policies/engines.py")
    p.add_argument("--image-codec", default=None,
                   help="tether store image codec (default: the store's default for new stores)")
    p.add_argument("--few-steps", type=int, default=4,
                   help="tether's few-step diffusion chunk (vs LeRobot's 100-step default)")
    p.add_argument("--ddpm-runs", type=int, default=None,
                   help="timed LeRobot 100-step DDPM chunks (default: max(2, runs // 5))")
    p.add_argument("--samples", type=int, default=None, help="DataLoader samples (default 3200)")
    p.add_argument("--train-steps", type=int, default=8, help="timed training steps")
    p.add_argument("--train-warmup", type=int, default=2, help="training steps before them")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--side", choices=["both", "tether"], default="both",
                   help="tether: measure tether only (no LeRobot venv; for tests)")
    p.add_argument("--size", choices=sorted(SIZES), default="full",
                   help="tiny: small models and data (checks the harness, not figures)")
    p.add_argument("--cpw-min", type=float, default=1.9)
    p.add_argument("--others-max", type=float, default=0.15)
    p.add_argument("--attempts", type=int, default=3, help="tries per contended measurement")
    p.add_argument("--workdir", type=Path,
                   default=Path.home() / ".cache" / "tether" / "bench" / "vs_lerobot",
                   help="frames, checkpoints and datasets (cached between runs) and results")
    p.add_argument("--write-docs", nargs="?", const=ROOT / "docs" / "performance.md", type=Path,
                   default=None, metavar="PATH",
                   help="write the table into docs/performance.md (or PATH); only a full run")
    p.add_argument("--from-results", type=Path, default=None, metavar="JSONL",
                   help="summarize an earlier run's results file instead of measuring")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    items = [i.strip() for i in a.items.split(",") if i.strip()]
    unknown = sorted(set(items) - set(ITEMS))
    if unknown:
        sys.exit(f"unknown --items {unknown}; choose from {', '.join(ITEMS)}")
    size = SIZES[a.size]
    a.samples = a.samples or size["samples"]
    a.ddpm_runs = a.ddpm_runs or max(2, a.runs // 5)
    t_start = time.time()
    if a.from_results:
        rows = report.load_rows(a.from_results)
        meta = next((r for r in rows if r.get("bench") == "run"), {})
        meta.update(next((r for r in rows if r.get("bench") == "run_end"), {}))
    else:
        a.workdir.mkdir(parents=True, exist_ok=True)
        results = a.workdir / f"results-{dt.datetime.now():%Y%m%d-%H%M%S}.jsonl"
        meta = {"bench": "run", "side": "run", "argv": sys.argv[1:], "items": items,
                "rounds": a.rounds, "runs": a.runs, "engine": a.engine or "default",
                "image_codec": a.image_codec or "default", "few_steps": a.few_steps,
                "size": a.size, "threads": a.threads, "date": dt.date.today().isoformat(),
                "machine": machine(), "tether_commit": git_commit(), "cpw_min": a.cpw_min,
                "others_max": a.others_max, "train_batch": a.train_batch,
                "train_workers": a.train_workers, "train_steps": a.train_steps,
                "train_warmup": a.train_warmup, "train_hw": size["train_hw"]}
        rows = measure(a, items, size, results, meta)
        meta["duration_min"] = (time.time() - t_start) / 60
        with results.open("a") as out:
            out.write(json.dumps({"bench": "run_end", "side": "run",
                                  "duration_min": round(meta["duration_min"], 1)}) + "\n")
        say(f"results: {results}")
    act_hw = SIZES[meta.get("size", a.size)]["act_hw"]
    figs = [f for f in report.figures(meta.get("few_steps", a.few_steps), act_hw)
            if f.item in meta.get("items", items)]
    summaries = report.summarize(rows, figs)
    for s in summaries:
        print(json.dumps({"summary": s.as_json()}), flush=True)
    print(report.markdown_table(summaries), file=sys.stderr)
    if a.write_docs is not None:
        complete = (set(meta.get("items", [])) == set(ITEMS) and meta.get("size") == "full"
                    and all(s.tether is not None and s.lerobot is not None for s in summaries))
        if not complete:
            say(f"not writing {a.write_docs}: only a full run of every item on both sides "
                "(--size full, all --items) goes into the docs")
            return 0
        envs = {r["side"]: r for r in rows if r.get("bench") == "env"}
        context = {**meta, "tether_torch": envs["tether"]["torch"],
                   "lerobot_torch": envs["lerobot"]["torch"],
                   "lerobot_version": envs["lerobot"]["lerobot"],
                   "command": "make bench-lerobot" if meta.get("argv") == ["--write-docs"] else
                   "benchmarks/vs_lerobot.py " + shlex.join(meta.get("argv", [])),
                   "duration_min": meta.get("duration_min", 0.0),
                   # what actually ran (the defaults resolve inside tether)
                   "engine": _used(rows, ("act", "diffusion_chunk"), "engine", meta["engine"]),
                   "image_codec": _used(rows, ("dataset_write",), "image_codec",
                                        meta["image_codec"])}
        report.write_docs(a.write_docs, report.generated_section(summaries, context))
        say(f"wrote {a.write_docs}")
    return 0


# -- measuring -------------------------------------------------------------------------------------


def measure(a: argparse.Namespace, items: list[str], size: dict, results: Path,
            meta: dict) -> list[dict]:
    pythons = {"tether": Path(sys.executable)}
    if a.side == "both":
        say("checking the LeRobot 0.4.4 venv")
        pythons["lerobot"] = lerobot_venv.ensure(log=say)
    rows: list[dict] = []
    out = results.open("w")

    def keep(new: list[dict]) -> None:
        for row in new:
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        out.flush()

    keep([meta])
    common = ["--workdir", str(a.workdir), "--size", a.size, "--threads", str(a.threads)]
    diffusion_hw = size["diffusion_hw"]
    prep = [size["frames"], f"{size['train_frames']}x{size['train_hw']}",
            f"{size['train_frames']}x{diffusion_hw}"]
    run_side(pythons, "tether", ["--item", "prep", "--prep", ",".join(prep), *common], a, "prep",
             0, keep)
    for side in pythons:
        run_side(pythons, side, ["--item", "env", *common], a, "env", 0, keep)
    latency = ["--runs", str(a.runs), "--warmup", str(a.warmup)]
    tether_only = []
    if a.engine:
        tether_only += ["--engine", a.engine]
    if a.image_codec:
        tether_only += ["--image-codec", a.image_codec]
    train = ["--train-steps", str(a.train_steps), "--train-warmup", str(a.train_warmup),
             "--train-batch", str(a.train_batch), "--train-workers", str(a.train_workers),
             "--train-hw", size["train_hw"], "--train-frames", str(size["train_frames"])]
    plan: list[tuple[str, list[str], list[str]]] = []  # (label, args for both, LeRobot extras)
    if "act" in items:
        plan += [(f"act {hw}", ["--item", "act", "--hw", hw, *latency], [])
                 for hw in size["act_hw"]]
    if "diffusion" in items:
        plan.append(("diffusion", ["--item", "diffusion", "--few-steps", str(a.few_steps),
                                   *latency], ["--ddpm-runs", str(a.ddpm_runs)]))
    if "dataset" in items:
        plan.append(("dataset", ["--item", "dataset", "--frames", size["frames"], "--samples",
                                 str(a.samples), "--batch", "32", "--workers", "2"], []))
    if "train" in items:
        plan += [(f"train {policy}", ["--item", "train", "--policy", policy, *train], [])
                 for policy in ("act", "diffusion")]
    for rnd in range(1, a.rounds + 1):
        for label, args, lerobot_extra in plan:
            for side in pythons:
                extra = tether_only if side == "tether" else lerobot_extra
                run_side(pythons, side, [*args, *extra, *common], a, label, rnd, keep)
    out.close()
    return rows


def run_side(pythons: dict[str, Path], side: str, args: list[str], a: argparse.Namespace,
             label: str, rnd: int, keep) -> None:
    """Run one side's process (under the CPU lock), again while its window was contended."""
    cmd = [str(pythons[side]), str(SIDE_SCRIPTS[side]), *args]
    env = {**lerobot_venv.side_env(a.threads), "PYTHONPATH": ""}
    if side == "tether":
        env["MUJOCO_GL"] = env.get("MUJOCO_GL", "egl")
    for attempt in range(1, a.attempts + 1):
        t0 = time.perf_counter()
        with LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=a.workdir)
        took = time.perf_counter() - t0
        tag = {"item": label, "round": rnd, "attempt": attempt}
        new = [{**tag, **json.loads(line)} for line in done.stdout.splitlines()
               if line.startswith("{")]
        if done.returncode:
            keep([{**tag, "side": side, "error": f"exit code {done.returncode}",
                   "stderr": done.stderr[-3000:]}])
            say(f"[round {rnd}] {side} {label}: FAILED (exit {done.returncode}):\n"
                f"{done.stderr[-3000:]}")
            return
        reasons = contention(new, a)
        last = attempt == a.attempts
        for row in new:
            row["accepted"] = not reasons or last
            if reasons:
                row["contended"] = "; ".join(reasons)
        keep(new)
        state = "ok" if not reasons else ("kept, contended" if last else "contended, again")
        say(f"[round {rnd}] {side:7s} {label}: {took:.0f} s, {state}"
            + (f" ({'; '.join(reasons)})" if reasons else ""))
        if not reasons or last:
            return
        time.sleep(10)  # let whatever took the CPU pass


def contention(rows: list[dict], a: argparse.Namespace) -> list[str]:
    """Why a process's measurements were contended (empty: they were not).

    Compute figures: cpu/wall below --cpw-min while other processes used CPU (more than
    --others-max cores); a low cpu/wall with an idle rest of the machine is the process's own
    (a runtime whose threads sleep instead of spinning) and running it again would not change it.
    Data figures (a writer, a loader) need not fill two cores: other processes' CPU alone."""
    reasons = []
    for r in rows:
        cpw, others = r.get("cpu_per_wall"), r.get("others_cpu_per_wall")
        busy_elsewhere = others is None or others > a.others_max
        if (r.get("bench") in COMPUTE_BENCHES and cpw is not None and cpw < a.cpw_min
                and busy_elsewhere):
            reasons.append(f"{r['bench']} cpu/wall {cpw} < {a.cpw_min}, others used {others} cores")
        if r.get("bench") in DATA_BENCHES and others is not None and others > a.others_max:
            reasons.append(f"{r['bench']} others used {others} cores > {a.others_max}")
    return reasons


# -- context -----------------------------------------------------------------------------------


def _used(rows: list[dict], benches: tuple[str, ...], key: str, default: str) -> str:
    """The distinct values of `key` in tether's accepted rows of `benches` (e.g. the engines)."""
    seen = sorted({str(r[key]) for r in rows if r.get("side") == "tether" and r.get(key)
                   and r.get("bench") in benches and r.get("accepted", True)})
    return ", ".join(seen) or default


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores of {model}{mem}, Python {platform.python_version()}"


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + (" (with local changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
