"""jaxmir.resample vs samplerate (libsamplerate sinc_medium) and soxr (HQ), 44.1 -> 16 kHz.

Prints the CPU model and flags, each timing's range over repeats (warm), the speed ratio
against samplerate and soxr (libsamplerate and soxr use one thread; jaxmir's one-shot call
runs its kernel's calls on all cores, and is also timed with them one after another), and the
max abs difference against samplerate.

    python benchmarks/bench_resample.py [--seconds 207] [--repeats 3] [--rate 44100]
"""

from __future__ import annotations

import argparse

import numpy as np

from common import cpu_line, machine, samples  # noqa: E402  (puts the repo root on sys.path)


def show(name: str, times: list[float]) -> None:
    print(f"{name:28s} min {min(times):7.3f} s  median {np.median(times):7.3f} s  "
          f"max {max(times):7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=207.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=int, default=44100)
    args = parser.parse_args()

    import samplerate
    import soxr
    from jaxmir.resample import SincResampler, essentia_ratio, products, resample

    print(machine())
    print("CPU:", cpu_line())
    rng = np.random.default_rng(0)
    n = int(args.seconds * args.rate)
    # Music-like: a few drifting tones plus noise, peak ~0.9.
    t = np.arange(n) / args.rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.01 * np.sin(t))) + 0.2 * np.sin(2 * np.pi * 3100 * t)
         + 0.1 * rng.standard_normal(n)).astype(np.float32)
    ratio = essentia_ratio(args.rate, 16000)
    print(f"{args.seconds:g} s at {args.rate} Hz -> 16000 Hz, {args.repeats} warm repeats")

    reference = samplerate.resample(x, ratio, "sinc_medium")
    ours = resample(x, args.rate, 16000)  # warm-up: measures the table, compiles
    error = float(np.max(np.abs(ours - reference)))

    t_src = samples(lambda: samplerate.resample(x, ratio, "sinc_medium"), args.repeats, warmup=0)
    t_soxr = samples(lambda: soxr.resample(x, args.rate, 16000, quality="HQ"), args.repeats, warmup=0)
    t_ours = samples(lambda: resample(x, args.rate, 16000), args.repeats, warmup=0)
    threads = products._pool()._max_workers if products._pool() is not None else 1
    pool, products._pool = products._pool, lambda: None   # the kernel's calls one after another
    try:
        t_serial = samples(lambda: resample(x, args.rate, 16000), args.repeats, warmup=0)
    finally:
        products._pool = pool

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
    show(f"jaxmir resample ({threads} threads)", t_ours)
    show("jaxmir resample (1 thread)", t_serial)
    show("jaxmir SincResampler 30 s", t_stream)
    print(f"speed-up vs samplerate: {np.median(t_src) / np.median(t_ours):.2f}x "
          f"(target >= 20x; one thread: {np.median(t_src) / np.median(t_serial):.2f}x); "
          f"vs soxr: {np.median(t_soxr) / np.median(t_ours):.2f}x")
    print(f"max abs difference vs samplerate: {error:.3g} (target <= 1e-6)")


if __name__ == "__main__":
    main()
