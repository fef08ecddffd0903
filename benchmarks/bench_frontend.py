"""Front-end speed: jaxmir's log-mel front-ends vs librosa, on 207 s of 16-kHz audio (CPU).

Run from the project root: ``python benchmarks/bench_frontend.py [--seconds 207] [--repeats 5]``.
Prints, per front-end, the compile time (first call, jit tracing + XLA
compilation) and the best warm time over the repeats for jaxmir, the warm
time of the librosa equivalent, and the ratio librosa / jaxmir.

librosa equivalents:
  musicnn: ``librosa.feature.melspectrogram(y, sr=16000, n_fft=512, hop_length=256,
           n_mels=96)`` -> ``.astype(float16)`` -> ``log10(10000 x + 1)`` (musicnn's own code).
  vggish:  ``librosa.feature.melspectrogram(y, sr=16000, n_fft=512, win_length=400,
           hop_length=160, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None,
           power=1)`` -> ``log(x + 0.01)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

from common import machine  # noqa: E402
from jaxmir import frontends  # noqa: E402


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def librosa_musicnn(librosa, y: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=256, n_mels=96)
    return np.log10(10000 * mel.T.astype(np.float16).astype(np.float32) + 1)


def librosa_vggish(librosa, y: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, win_length=400, hop_length=160,
                                         n_mels=64, fmin=125, fmax=7500, htk=True, norm=None,
                                         power=1)
    return np.log(mel.T + 0.01)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=207.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import librosa

    rng = np.random.default_rng(0)
    n = int(args.seconds * 16000)
    t = np.arange(n) / 16000
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    print(machine())
    print(f"signal: {args.seconds:g} s at 16 kHz ({n} samples); jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, librosa {librosa.__version__} (in this process, best "
          "of the repeats)")

    cases = [
        ("musicnn (essentia)", lambda: frontends.musicnn_logmel(y),
         lambda: librosa_musicnn(librosa, y)),
        ("musicnn (musicnn)", lambda: frontends.musicnn_logmel(y, compat="musicnn"),
         lambda: librosa_musicnn(librosa, y)),
        ("vggish (essentia)", lambda: frontends.vggish_logmel(y),
         lambda: librosa_vggish(librosa, y)),
    ]
    librosa_musicnn(librosa, y[:16000])  # warm librosa's caches (filterbank, numba)
    librosa_vggish(librosa, y[:16000])
    print(f"{'front-end':<20} {'compile s':>10} {'jaxmir s':>10} {'librosa s':>10} {'ratio':>7}")
    for name, ours, theirs in cases:
        start = time.perf_counter()
        ours().block_until_ready()
        compile_s = time.perf_counter() - start
        ours_s = best_time(lambda: ours().block_until_ready(), args.repeats)
        theirs_s = best_time(theirs, args.repeats)
        print(f"{name:<20} {compile_s:>10.3f} {ours_s:>10.4f} "
              f"{theirs_s:>10.4f} {theirs_s / ours_s:>6.1f}x")


if __name__ == "__main__":
    main()
