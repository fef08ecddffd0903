"""float32 (the default: full-precision products, never TF32) against opt-in bfloat16, per model.

    python benchmarks/bench_precision.py [--seconds 60] [--batches 8 64]
        [--models msd-musicnn msd-vgg]

For each shipped model, on the log-mel patches of a generated music-like signal
(``--seconds`` at 16 kHz, patches every 93 frames): warm patches/s of
``Model.apply`` in float32 and with ``Model.astype("bfloat16")``, and how far
bfloat16's outputs are from float32's: the largest absolute difference of the
tags (probabilities) and of the embeddings relative to their largest magnitude.
Prints the device: on CPUs without native bfloat16 arithmetic the bfloat16 mode
is expected to be slower; it is meant for GPUs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_line, samples, spread  # noqa: E402


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords changing every 2 s over noise bursts: ``[n]`` float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    root = 110.0 * 2 ** (rng.integers(0, 12, size=int(seconds // 2) + 1) / 12)[(t // 2).astype(int)]
    chord = sum(np.sin(2 * np.pi * root * ratio * t) for ratio in (1.0, 1.25, 1.5)) / 3
    return (0.3 * chord + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 64])
    parser.add_argument("--models", nargs="*", default=["msd-musicnn", "msd-vgg"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import jax
    import jaxmir

    print(f"## float32 vs bfloat16 — {cpu_line()}; JAX {jax.__version__} on "
          f"{jax.devices()[0].device_kind} ({jax.default_backend()})\n")
    print("| model | batch | float32 patches/s | bfloat16 patches/s | bf16 / f32 | "
          "max abs tag difference | max embedding difference / max embedding |")
    print("|---|---|---|---|---|---|---|")
    audio = signal(args.seconds)
    for name in args.models:
        full = jaxmir.load(name)
        low = full.astype("bfloat16")
        frames = np.asarray(full.features(audio, 16000))
        size, hop = full.input_shape[0], full.frontend.patch_hop
        if frames.shape[0] < size:
            raise SystemExit(f"--seconds {args.seconds:g} gives {frames.shape[0]} "
                             f"frames, fewer than one {name} patch of {size}: give more")
        patches = np.stack([frames[s:s + size] for s in range(0, frames.shape[0] - size + 1, hop)])
        want = {out: np.asarray(full.apply(patches, out)[out])
                for out in ("predictions", "embeddings")}
        got = {out: np.asarray(low.apply(patches, out)[out])
               for out in ("predictions", "embeddings")}
        tags = float(np.max(np.abs(got["predictions"] - want["predictions"])))
        embeddings = float(np.max(np.abs(got["embeddings"] - want["embeddings"]))
                           / np.max(np.abs(want["embeddings"])))
        for batch in args.batches:
            x = np.resize(patches, (batch, *patches.shape[1:]))
            rates = {}
            for label, model in (("float32", full), ("bfloat16", low)):
                times = samples(lambda: jax.block_until_ready(model.apply(x)["predictions"]),
                                repeats=args.repeats, min_seconds=1.0)
                rates[label] = [batch / t for t in times]
            ratio = np.median(rates["bfloat16"]) / np.median(rates["float32"])
            print(f"| {name} | {batch} | {spread(rates['float32'], digits=1)} | "
                  f"{spread(rates['bfloat16'], digits=1)} | {ratio:.2f}x | {tags:.1e} | "
                  f"{embeddings:.1e} |")
    if args.models:  # none given: no table, no patches
        print(f"\n{patches.shape[0]} patches of a {args.seconds:g}-s signal; differences over all "
              "of them")


if __name__ == "__main__":
    main()
