"""Helpers shared by the benchmarks: timing, the machine, graphs built by the tools."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    """The CPU (:func:`cpu_line`: name, family/model numbers, cores, vector flags) and JAX's
    version and devices, in one line."""
    import jax

    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return f"{cpu_line()}; JAX {jax.__version__} on {devices}"


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
    """Essentia-shaped graphs of the shipped models, built once by tools/convert_musicnn.py into
    build/graphs (from musicnn's checkpoints, which it fetches from PyPI the first time)."""
    out = ROOT / "build" / "graphs"
    if not (out / "msd-musicnn-1.pb").is_file() or not (out / "msd-vgg-1.pb").is_file():
        from tools import convert_musicnn
        convert_musicnn.main(["--graphs", str(out), "--models", "msd-musicnn", "msd-vgg"])
    return out


# -- the CPU every benchmark prints ----------------------------------------------------------------
def cpu_description() -> dict:
    """The CPU model, its family/model numbers, core count and the SIMD flags that change float32
    speed (from /proc/cpuinfo). The numbers tell apart CPUs that share a name: an "AMD EPYC" of
    family 25 is Zen 3 (no AVX-512) or Zen 4 (AVX-512 on 256-bit units), of family 26 Zen 5
    (512-bit units)."""
    name, flags, ids = platform.processor() or platform.machine(), set(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and name == (platform.processor() or platform.machine()):
                name = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key in ("cpu family", "model", "stepping", "cache size") and key not in ids:
                ids[key] = value.strip()
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile")
    return {"model": name, "cores": os.cpu_count(),
            "ids": ", ".join(f"{key} {value}" for key, value in ids.items()),
            "flags": [flag for flag in wanted if flag in flags]}


def _named(cpu: dict) -> str:
    """``model name (cpu family F, model M, ...)`` of a :func:`cpu_description`."""
    return f"{cpu['model']} ({cpu['ids']})" if cpu["ids"] else cpu["model"]


def cpu_line() -> str:
    cpu = cpu_description()
    return (f"{_named(cpu)}, {cpu['cores']} cores, "
            f"flags: {' '.join(cpu['flags']) or 'none of avx2/fma/avx512f'}")


def samples(fn: Callable[[], object], repeats: int = 5, min_seconds: float = 0.0,
            max_seconds: float = 30.0, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` (or more, up to ``min_seconds`` in all) warm calls of ``fn``.

    Stops early, after at least 2 calls, once ``max_seconds`` have passed.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200 or (len(times) >= 2 and time.perf_counter() - start > max_seconds):
            break
    return times


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``median (min-max)`` of ``values * scale``."""
    v = sorted(x * scale for x in values)
    return f"{statistics.median(v):.{digits}f} ({v[0]:.{digits}f}-{v[-1]:.{digits}f})"


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory of a process so far, MiB: ``VmHWM`` from /proc (reset at exec, unlike
    ``ru_maxrss``, which keeps the forking parent's peak), else ``ru_maxrss`` of this process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    import resource
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid == "self"
            else float("nan"))


def search_path() -> str:
    """``PYTHONPATH`` for a child process: the repository first, then what this one was given
    (packages installed with ``pip --target``, say)."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def measured_process(command: list[str], env: dict | None = None) -> dict:
    """Run ``command`` in the repository with ``env`` added: ``wall_s`` (imports included),
    ``cpu_s`` (user + system seconds of it and the worker processes it waited for), ``peak_mb``
    (``ru_maxrss`` from ``wait4``: the largest of those processes'; it starts from this
    process's peak, so keep the caller small), its ``output`` (stdout and stderr) and
    ``exit_code``."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": search_path(), **(env or {})})
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024, "output": output,
            "exit_code": os.waitstatus_to_exitcode(status)}
