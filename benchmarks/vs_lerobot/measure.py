"""Timing and accounting shared by both sides of the tether-vs-LeRobot benchmark.

Imported by `tether_side.py` (tether's venv) and `lerobot_side.py` (LeRobot's venv), so it uses
only the standard library and numpy, and Linux's /proc.

Every measurement reports, besides its figure, whether it had the machine to itself:
- `cpu_per_wall`: CPU seconds of this process and all its descendants (DataLoader workers,
  encoder threads/processes) per wall second over the timed window; ~2.0 means two busy cores;
- `others_cpu_per_wall`: CPU the rest of the machine used in the same window (from /proc/stat),
  in cores; it says "contended" even for work that is not meant to fill two cores (a writer);
- the 1-minute load average before and after.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

_TICK = os.sysconf("SC_CLK_TCK")


def emit(**fields: Any) -> None:
    """One JSON line on stdout: the only channel from a side process to the orchestrator."""
    print(json.dumps(fields), flush=True)


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user+system CPU seconds) for every process we may read."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = raw[raw.rfind(")") + 2:].split()  # after "pid (comm) "
        table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return table


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds used so far by process `root` (default: this one) and its live descendants,
    plus the children it has already reaped (their CPU lands in RUSAGE_CHILDREN)."""
    import resource

    root = os.getpid() if root is None else root
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
        todo += kids.get(pid, [])
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + reaped.ru_utime + reaped.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


class Window:
    """Wall time, CPU of this process tree and CPU of everything else over a block.

        with Window() as w:
            work()
        w.info()  # wall_s, cpu_s, cpu_per_wall, others_cpu_per_wall, loadavg
    """

    def __enter__(self) -> Window:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.load0 = os.getloadavg()
        self.busy0, self.cpu0 = machine_busy_seconds(), tree_cpu_seconds()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = tree_cpu_seconds() - self.cpu0
        self.busy = machine_busy_seconds() - self.busy0
        self.load1 = os.getloadavg()

    def info(self) -> dict[str, Any]:
        wall = max(self.wall, 1e-9)
        return {
            "wall_s": round(self.wall, 3),
            "cpu_s": round(self.cpu, 3),
            "cpu_per_wall": round(self.cpu / wall, 2),
            # clock ticks make both sides coarse (10 ms): never report a negative load
            "others_cpu_per_wall": round(max(0.0, self.busy - self.cpu) / wall, 2),
            "loadavg_before": [round(x, 2) for x in self.load0],
            "loadavg_after": [round(x, 2) for x in self.load1],
        }


def latency(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, Any]:
    """Latency of `fn()` in ms (p50, p90, min, mean over `runs` calls after `warmup` calls),
    with the window's CPU accounting (see `Window`)."""
    for _ in range(warmup):
        fn()
    times = []
    with Window() as window:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": round(statistics.median(times), 2),
            "p90_ms": round(float(np.percentile(times, 90)), 2),
            "min_ms": round(min(times), 2), "mean_ms": round(statistics.fmean(times), 2),
            "runs": runs, "warmup": warmup, **window.info()}


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB of uint8-range frames `a` against `b` (same shape), over all frames."""
    if a.shape != b.shape:
        raise ValueError(f"PSNR of arrays of different shapes {a.shape} and {b.shape}")
    squared = 0.0
    for i in range(0, len(a), 16):  # 16 frames at a time: bounded memory at 480x640
        d = a[i:i + 16].astype(np.float64) - b[i:i + 16].astype(np.float64)
        squared += float(np.sum(d * d))
    mse = squared / a.size
    return None if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def dir_bytes(root: str, suffix: str = "") -> int:
    """Bytes of the files under `root` (whose names end with `suffix`)."""
    total = 0
    for folder, _, files in os.walk(root):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files if f.endswith(suffix))
    return total


def nparams(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def python_version() -> str:
    return sys.version.split()[0]
