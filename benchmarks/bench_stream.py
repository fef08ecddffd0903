"""Streaming: peak memory of ``jaxmir tag``/``embed --average`` against file length; live latency.

    python benchmarks/bench_stream.py                      # 15 min, 1 h, 3 h files; latency
    python benchmarks/bench_stream.py --minutes 15 30 60   # other lengths
    python benchmarks/bench_stream.py --skip-memory        # latency only
    python benchmarks/bench_stream.py --skip-memory --resample-steps 2048 1024 0

Memory: a 44.1-kHz stereo 16-bit WAV of each length is written block by block
(soundfile) in a temporary folder, then ``jaxmir tag`` and ``jaxmir embed
--average`` run on it in a fresh process each; the peak resident set size is
the child's ``ru_maxrss`` (``os.wait4``). The files are deleted afterwards.

Latency (in this process, CPU): 44.1-kHz stereo int16 arrives in 10-ms chunks
(``Model.stream``). For each patch: the compute latency (from the call that
brings the patch's last sample to the return of its outputs), and the audio
that had to arrive after the patch's last sample (the resampler's look-ahead
and the chunking). The real-time factor is compute time / audio time of the
whole live run; the first patch's call (compilation included) is reported apart.
One stream per ``--resample-steps`` value (``Model.stream(resample_step=)``: the 16-kHz
samples the resampler waits for), in turn in the same process, the first one compiling.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, measured_process

RATE = 44100


def write_wav(path: Path, minutes: float, block_seconds: int = 60) -> None:
    """A stereo 44.1-kHz PCM_16 WAV of tones and noise, written one block at a time."""
    import soundfile

    rng = np.random.default_rng(0)
    total = int(minutes * 60 * RATE)
    with soundfile.SoundFile(path, "w", RATE, 2, subtype="PCM_16") as out:
        for start in range(0, total, block_seconds * RATE):
            n = min(block_seconds * RATE, total - start)
            t = (start + np.arange(n)) / RATE
            freq = 220.0 * (1 + (start // (block_seconds * RATE)) % 4)
            left = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)
            right = 0.2 * np.sign(np.sin(2 * np.pi * freq / 2 * t))
            out.write(np.stack([left, right], axis=1).astype(np.float32))


def peak_rss(args: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, exit status) of ``python -m jaxmir ARGS`` in a fresh process."""
    result = measured_process([sys.executable, "-m", "jaxmir", *args], {"JAXMIR_NO_CACHE": "1"})
    if result["exit_code"]:
        print(result["output"][-2000:], file=sys.stderr)
    return result["peak_mb"], result["wall_s"], result["exit_code"]


def memory(minutes_list: list[float], commands: tuple[str, ...] = ("tag", "embed")) -> None:
    print("\n| file (44.1 kHz stereo) | command | peak RSS | wall time | x real time |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="jaxmir-bench-") as folder:
        for minutes in minutes_list:
            path = Path(folder) / f"{minutes:g}min.wav"
            write_wav(path, minutes)
            runs = [("tag", ["tag", str(path), "--no-progress"]),
                    ("embed --average", ["embed", str(path), "-o", str(Path(folder) / "emb"),
                                         "--average", "--no-progress", "-q"])]
            for name, args in [(name, args) for name, args in runs if args[0] in commands]:
                rss, seconds, status = peak_rss(args)
                flag = "" if status == 0 else f" (exit {status})"
                print(f"| {minutes:g} min ({path.stat().st_size / 1e9:.2f} "
                      f"GB) | {name} | {rss:.0f} MB{flag} | {seconds:.0f} "
                      f"s | {minutes * 60 / seconds:.1f} |", flush=True)
            path.unlink()


def latency(model, resample_step: int, seconds: float = 60.0, chunk_ms: float = 10.0) -> None:
    frontend = model.frontend
    rng = np.random.default_rng(1)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n),
                      0.2 * np.sign(np.sin(2 * np.pi * 220 * t))], axis=1)
    audio = (audio * 32767).astype(np.int16)
    step = int(RATE * chunk_ms / 1000)
    stream = model.stream(RATE, resample_step=resample_step)
    compute, waits, busy, first_call = [], [], 0.0, None
    size, hop = frontend.patch_size, frontend.patch_hop
    for start in range(0, n, step):
        t0 = time.perf_counter()
        out = stream.push(audio[start:start + step])
        spent = time.perf_counter() - t0
        busy += spent
        if not out.shape[0]:
            continue
        arrived = min(n, start + step) / RATE
        for p in range(stream.n_patches - out.shape[0], stream.n_patches):
            # the patch's last frame is centred on sample (p * hop + size - 1) * 256 and reads
            # 256 more
            last_sample = ((p * hop + size - 1) * frontend.hop_size
                           + frontend.frame_size // 2) / 16000
            waits.append(arrived - last_sample)
        if first_call is None:
            first_call = spent
        else:
            compute.append(spent)
    stream.close()
    ms = np.array(compute) * 1000
    print(f"\nlive path, msd-musicnn, 44.1 kHz stereo int16 in {chunk_ms:g}-ms "
          f"chunks, {seconds:g} s, resample_step={resample_step}:")
    print(f"  first patch's call (warm-up; compiles 2 programs in a process's first stream): "
          f"{first_call:.2f} s")
    print(f"  compute latency per patch: median {statistics.median(ms):.1f} ms, "
          f"p99 {np.percentile(ms, 99):.1f} ms ({len(ms)} patches)")
    print(f"  audio after a patch's last sample before its call: median "
          f"{1000 * statistics.median(waits):.1f} ms, max {1000 * max(waits):.1f} ms "
          "(libsamplerate's look-ahead + chunking)")
    print(f"  real-time factor (compute / audio), first call excluded: "
          f"{(busy - first_call) / seconds:.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[15, 60, 180])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--resample-steps", type=int, nargs="+", default=[2048, 0],
                        help="the live streams' resample_step values, in turn")
    parser.add_argument("--commands", nargs="+", choices=("tag", "embed"), default=("tag", "embed"))
    args = parser.parse_args(argv)
    print(machine())
    # memory first: a child's peak (ru_maxrss) counts the parent's at its fork, and the latency
    # runs leave this process at ~450 MB
    if not args.skip_memory:
        memory(args.minutes, tuple(args.commands))
    if not args.skip_latency:
        import jaxmir

        model = jaxmir.load("msd-musicnn")
        for step in args.resample_steps:
            latency(model, step)


if __name__ == "__main__":
    main()
