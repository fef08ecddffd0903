"""Helpers shared by the benchmarks: timing, the machine, graphs built by the tools."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    import jax
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return f"{cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on {devices}"


def timed(fn: Callable[[], object], repeats: int = 10, min_seconds: float = 1.0) -> float:
    """Median seconds of one warm call (at least ``repeats`` calls and ``min_seconds`` in all)."""
    fn()
    samples, start = [], time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 200:
            break
    return statistics.median(samples)


def graphs_dir() -> Path:
    """Essentia-shaped graphs of the shipped models, built once by tools/convert_musicnn.py."""
    out = ROOT / "build" / "graphs"
    if not (out / "msd-musicnn-1.pb").is_file() or not (out / "msd-vgg-1.pb").is_file():
        from tools import convert_musicnn
        convert_musicnn.main(["--graphs", str(out), "--models", "msd-musicnn", "msd-vgg"])
    return out
