"""jaxmir.resample vs samplerate (libsamplerate sinc_medium) and soxr (HQ), 44.1 -> 16 kHz.

Prints the CPU model and flags, each timing's range over repeats (warm), the speed ratio
against samplerate and soxr (libsamplerate and soxr use one thread; jaxmir's one-shot call
runs its kernel's calls on all cores, and is also timed in a process held to one core), and the
max abs difference against samplerate.

    python benchmarks/bench_resample.py [--seconds 207] [--repeats 3] [--rate 44100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from common import machine, samples  # noqa: E402  (puts the repo root on sys.path)


def show(name: str, times: list[float]) -> None:
    print(f"{name:28s} min {min(times):7.3f} s  median {np.median(times):7.3f} s  "
          f"max {max(times):7.3f} s")


def music_like(seconds: float, rate: int) -> np.ndarray:
    """A few drifting tones plus noise, peak ~0.9: float32 ``[seconds * rate]``."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    noise = np.random.default_rng(0).standard_normal(n)
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.01 * np.sin(t)))
            + 0.2 * np.sin(2 * np.pi * 3100 * t)
            + 0.1 * noise).astype(np.float32)


def one_core(args) -> None:
    """Child process: ``jaxmir.resample`` held to one core (its kernel's calls then run one after
    another), its times printed as JSON."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before JAX starts its threads
    from jaxmir.resample import resample

    x = music_like(args.seconds, args.rate)
    resample(x, args.rate, 16000)
    print(json.dumps(samples(lambda: resample(x, args.rate, 16000), args.repeats, warmup=0)))


def time_one_core(args) -> list[float]:
    command = [sys.executable, __file__, "--one-core", "--seconds", str(args.seconds),
               "--repeats", str(args.repeats), "--rate", str(args.rate)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=207.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--one-core", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_core:
        return one_core(args)

    import samplerate
    import soxr
    from jaxmir.resample import SincResampler, essentia_ratio, resample

    print(machine())
    x = music_like(args.seconds, args.rate)
    n = x.shape[0]
    ratio = essentia_ratio(args.rate, 16000)
    print(f"{args.seconds:g} s at {args.rate} Hz -> 16000 Hz, {args.repeats} warm repeats")

    reference = samplerate.resample(x, ratio, "sinc_medium")
    ours = resample(x, args.rate, 16000)  # warm-up: measures the table, compiles
    # at power-of-two ratios (8 kHz, 32 kHz at even lengths) Essentia's libsamplerate, which
    # jaxmir follows, ends one sample before the samplerate package's
    common = min(ours.shape[0], reference.shape[0])
    error = float(np.max(np.abs(ours[:common] - reference[:common])))
    if ours.shape[0] != reference.shape[0]:
        print(f"lengths: jaxmir {ours.shape[0]}, samplerate {reference.shape[0]} (Essentia's end; "
              "README \"Resampling as Essentia does\")")

    t_src = samples(lambda: samplerate.resample(x, ratio, "sinc_medium"), args.repeats, warmup=0)
    t_soxr = samples(lambda: soxr.resample(x, args.rate, 16000, quality="HQ"), args.repeats,
                     warmup=0)
    t_ours = samples(lambda: resample(x, args.rate, 16000), args.repeats, warmup=0)
    cores = len(os.sched_getaffinity(0))
    t_serial = time_one_core(args)

    def stream():
        chunk = 30 * args.rate
        s = SincResampler(args.rate, 16000)
        for i in range(0, n, chunk):
            s.push(x[i:i + chunk])
        s.flush()

    stream()
    t_stream = samples(stream, args.repeats, warmup=0)
    show("samplerate sinc_medium", t_src)
    show("soxr HQ", t_soxr)
    show(f"jaxmir resample ({cores} cores)", t_ours)
    show("jaxmir resample (1 core)", t_serial)
    show("jaxmir SincResampler 30 s", t_stream)
    print(f"speed-up vs samplerate: {np.median(t_src) / np.median(t_ours):.2f}x "
          f"(target >= 20x; one core: {np.median(t_src) / np.median(t_serial):.2f}x); "
          f"vs soxr: {np.median(t_soxr) / np.median(t_ours):.2f}x")
    print(f"max abs difference vs samplerate: {error:.3g} (target <= 1e-6)")


if __name__ == "__main__":
    main()
