"""How close MusiCNN runs to the machine's float32 peak, layer by layer.

    python benchmarks/bench_peak.py [--batch 8] [--rounds 5] [--variants] [--dump build/hlo]

1. Peak: the best float32 matrix product rate (2 n^3 FLOP per n x n product)
   measured with jax (XLA's CPU dot) and NumPy (its BLAS), all cores.
2. MusiCNN's arithmetic per patch [187, 96], per layer (MACs; FLOPs = 2 MACs;
   bias, ReLU, batch norm and pooling not counted).
3. Timed: each front-end branch alone as the model runs it (``FrequencyMaxBlock``:
   conv + ReLU + max over frequency; XLA's convolution for the timbral branches,
   1-D along frequency where the CPU calls for it (``compiler.formulated``), time in
   blocks along channels for the temporal ones; identity batch norm), the
   whole model (``Model.apply`` on a batch of random patches), and
   ``Model.predict`` on a 207-s track, whose patches overlap by half and share
   the timbral work (its rate counts the FLOPs of patch-by-patch evaluation,
   so it is an *effective* rate and may exceed what the arithmetic does).
   Every case runs ``--rounds`` times, in turn with the others (so the load of
   a shared machine falls on all alike); the median is reported with the range.
4. ``--variants``: other formulations of the same layers, tried as speed-ups,
   with their max abs difference from the reference (in the units of the
   layer's output).

``--dump DIR`` sets ``XLA_FLAGS=--xla_dump_to=DIR`` so XLA writes the HLO it
compiles (after optimisation: ``*after_optimizations.txt``), to read the
fusions and the convolution kernels it chose.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from common import cpu_line

TIME, MEL = 187, 96
TIMBRAL = {"timbral 7x38": (7, 38, 204), "timbral 7x67": (7, 67, 204)}   # (frames, bands, filters)
TEMPORAL = {"temporal 128x1": (128, 1, 51), "temporal 64x1": (64, 1, 51),
            "temporal 32x1": (32, 1, 51)}


def musicnn_macs(midend: int = 64, backend: int = 200, labels: int = 50) -> dict[str, int]:
    """Multiply-accumulates per patch of each MusiCNN layer (msd/mtt-musicnn sizes by default)."""
    layers = {}
    for name, (frames, bands, filters) in {**TIMBRAL, **TEMPORAL}.items():
        layers[name] = TIME * (MEL - bands + 1) * filters * frames * bands
    frontend = 2 * 204 + 3 * 51
    layers["midend conv 1 (7x561)"] = TIME * midend * 7 * frontend
    layers["midend conv 2, 3 (7x64)"] = 2 * TIME * midend * 7 * midend
    layers["dense 1506x200, 200x50"] = 2 * (frontend + 3 * midend) * backend + backend * labels
    return layers


CLOCK = {"wall": (time.perf_counter, "GFLOP/s"), "cpu": (time.process_time, "GFLOP per CPU-s")}
clock_name = "wall"


def interleaved(cases: dict, rounds: int, clock=None) -> dict[str, list[float]]:
    """Seconds of each case over ``rounds`` rounds, the cases taken in turn; one warm-up each.

    ``clock=time.process_time`` counts the CPU seconds of all this process's
    threads instead of wall time: on a machine shared with other work, rate per
    CPU second is what the arithmetic achieves while it runs (XLA's and BLAS's
    worker threads block rather than spin, so waiting adds little).
    """
    clock = clock or CLOCK[clock_name][0]
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def peak(rounds: int) -> tuple[float, list[str]]:
    import jax
    import jax.numpy as jnp

    cases = {}
    for n in (1024, 2048, 3072):
        a = np.random.default_rng(n).standard_normal((n, n)).astype(np.float32)
        device = jnp.asarray(a)
        dot = jax.jit(lambda m: m @ m)
        cases[f"jax {n}"] = (n, lambda dot=dot, d=device: jax.block_until_ready(dot(d)))
        cases[f"numpy {n}"] = (n, lambda a=a: a @ a)
    times = interleaved({k: fn for k, (_, fn) in cases.items()}, rounds)
    rates = {k: [2 * cases[k][0] ** 3 / t / 1e9 for t in v] for k, v in times.items()}
    best = max(statistics.median(v) for v in rates.values())
    lines = [f"| matmul n x n | {CLOCK[clock_name][1]} median (min-max) |", "|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f}) |"
              for k, v in rates.items()]
    return best, lines


def branch(x, kernel, padding):
    """One front-end branch as the model computes it: conv, ReLU, max over frequency."""
    import jax
    from jax import lax

    y = lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.numpy.max(jax.nn.relu(y), axis=2)


def model_branch(name: str, kernel: np.ndarray):
    """``[b, t, mel] -> [b, t, filters]``: the branch as the model runs it (``FrequencyMaxBlock``)
    with ``kernel``, zero bias and an identity batch norm, so it equals :func:`branch`."""
    import jax
    import jax.numpy as jnp

    from jaxmir.models import compiler
    from jaxmir.models.layers import conv_variables, nest
    from jaxmir.models.musicnn import FrequencyMaxBlock, MusiCNN

    frames, bands, _, filters = kernel.shape
    # as the model runs it on this CPU: some timbral widths as 1-D convolutions (compiler.tuned)
    as_1d = bands in compiler.formulated(MusiCNN(), "cpu").timbral_rows_as_channels
    block = FrequencyMaxBlock(filters, (frames, bands), padding_of(name), bn_epsilon=0.0,
                              rows_as_channels=as_1d)
    identity = ({"scale": np.ones(filters, np.float32), "bias": np.zeros(filters, np.float32)},
                {"mean": np.zeros(filters, np.float32), "var": np.ones(filters, np.float32)})
    variables: dict = {}
    nest(variables, ("block",), conv_variables(jnp.asarray(kernel), jnp.zeros(filters), identity))
    return jax.jit(lambda v: block.apply(variables, v[..., None]))


def kernels(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # He-like scale, so outputs are O(1) as in the trained model.
    return {name: (rng.standard_normal((f, b, 1, c)) / np.sqrt(f * b)).astype(np.float32)
            for name, (f, b, c) in {**TIMBRAL, **TEMPORAL}.items()}


def padding_of(name: str):
    return ((3, 3), (0, 0)) if name.startswith("timbral") else "SAME"


def time_layers(batch: int, rounds: int, seconds: float, peak_gflops: float) -> list[str]:
    import jax

    import jaxmir

    macs = musicnn_macs()
    x = np.random.default_rng(0).standard_normal((batch, TIME, MEL)).astype(np.float32)
    weights = kernels()
    cases, flops = {}, {}
    for name, w in weights.items():
        fn = model_branch(name, w)
        cases[name] = lambda fn=fn: jax.block_until_ready(fn(x))
        flops[name] = 2 * macs[name] * batch
    branches = {n: model_branch(n, weights[n]) for n in TIMBRAL}
    timbral = jax.jit(lambda v: [branches[n](v) for n in TIMBRAL])
    cases["timbral, both"] = lambda: jax.block_until_ready(timbral(x))
    flops["timbral, both"] = 2 * batch * sum(macs[n] for n in TIMBRAL)
    model = jaxmir.load("msd-musicnn")
    cases[f"whole model, Model.apply batch {batch}"] = lambda: jax.block_until_ready(model.apply(x))
    per_patch = 2 * sum(macs.values())
    flops[f"whole model, Model.apply batch {batch}"] = per_patch * batch
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 0.5 * t)
             + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    n_patches = model.predict(audio, 16000).shape[0]
    name = f"Model.predict, {seconds:g} s ({n_patches} patches, effective)"
    cases[name] = lambda: np.asarray(model.predict(audio, 16000))
    flops[name] = per_patch * n_patches
    times = interleaved(cases, rounds)
    lines = [f"| case (batch {batch}) | ms per patch ({clock_name}) | "
             f"{CLOCK[clock_name][1]} median (min-max) | % of peak |", "|---|---|---|---|"]
    for case, values in times.items():
        rates = [flops[case] / s / 1e9 for s in values]
        patches = n_patches if case.startswith("Model.predict") else batch
        lines.append(f"| {case} | {statistics.median(values) / patches * 1e3:.2f} | "
                     f"{statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) | "
                     f"{100 * statistics.median(rates) / peak_gflops:.0f}% |")
    return lines


# -- formulations tried as speed-ups ---------------------------------------------------------------
def timbral_toeplitz(x, w):
    """The timbral conv as one matrix product per frame: 7 stacked rows [b, t, 7*96] times a
    banded [7*96, bands_out*filters] matrix (zeros outside each filter's band window)."""
    import jax.numpy as jnp

    frames, bands, filters = w.shape[0], w.shape[1], w.shape[3]
    out = MEL - bands + 1
    big = np.zeros((frames, MEL, out, filters), np.float32)
    for f in range(out):
        big[:, f:f + bands, f, :] = w[:, :, 0, :]
    padded = jnp.pad(x, ((0, 0), (3, 3), (0, 0)))
    rows = jnp.concatenate([padded[:, i:i + TIME] for i in range(frames)], axis=-1)
    y = (rows @ big.reshape(frames * MEL, out * filters)).reshape(x.shape[0], TIME, out, filters)
    return jnp.max(jnp.maximum(y, 0), axis=2)


def temporal_merged(x, weights: list[np.ndarray]):
    """The three temporal convs (SAME, lengths 128/64/32, nested windows) as one conv of length
    128 with 153 filters: each shorter kernel zero-padded where its window sits in the longest."""
    import jax.numpy as jnp

    longest = max(w.shape[0] for w in weights)
    merged = []
    for w in weights:
        offset = (longest - 1) // 2 - (w.shape[0] - 1) // 2
        merged.append(np.pad(w, ((offset, longest - w.shape[0] - offset), (0, 0), (0, 0), (0, 0))))
    return branch(x[..., None], jnp.asarray(np.concatenate(merged, axis=-1)), "SAME")


def time_variants(batch: int, rounds: int, peak_gflops: float) -> list[str]:
    import jax

    macs = musicnn_macs()
    x = np.random.default_rng(0).standard_normal((batch, TIME, MEL)).astype(np.float32)
    weights = kernels()
    cases, flops, outputs = {}, {}, {}
    for name, w in weights.items():
        reference = jax.jit(lambda v, w=w, p=padding_of(name): branch(v[..., None], w, p))
        other = (jax.jit(lambda v, w=w: timbral_toeplitz(v, w)) if name.startswith("timbral")
                 else model_branch(name, w))   # the temporal blocks along channels are the model's
        formulation = "banded matmul" if name.startswith("timbral") else "time blocks as channels"
        for label, fn in ((f"{name}: XLA conv", reference), (f"{name}: {formulation}", other)):
            cases[label] = lambda fn=fn: jax.block_until_ready(fn(x))
            flops[label] = 2 * macs[name] * batch
            outputs[label] = np.asarray(fn(x))
    temporal = [weights[n] for n in TEMPORAL]
    separate = jax.jit(lambda v: jax.numpy.concatenate(
        [branch(v[..., None], w, "SAME") for w in temporal], axis=-1))
    merged = jax.jit(lambda v: temporal_merged(v, temporal))
    for label, fn in (("temporal, all three: XLA conv", separate),
                      ("temporal, all three: one merged conv 128x1x153", merged)):
        cases[label] = lambda fn=fn: jax.block_until_ready(fn(x))
        flops[label] = 2 * batch * sum(macs[n] for n in TEMPORAL)
        outputs[label] = np.asarray(fn(x))
    times = interleaved(cases, rounds)
    lines = [f"| formulation (batch {batch}) | ms per patch "
             f"({clock_name}) | useful {CLOCK[clock_name][1]} | % of "
             "peak | max abs diff vs XLA conv |", "|---|---|---|---|---|"]
    for case, values in times.items():
        rate = flops[case] / statistics.median(values) / 1e9
        reference = outputs[case.split(":")[0] + ": XLA conv"]
        diff = float(np.abs(outputs[case] - reference).max())
        lines.append(f"| {case} | {statistics.median(values) / batch * 1e3:.2f} "
                     f"| {rate:.1f} | {100 * rate / peak_gflops:.0f}% | "
                     f"{diff:.1e} (of max {np.abs(reference).max():.1f}) |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8,
                        help="patches per call; 8, the streaming engine's batch, is the most the "
                             "model's branches see (Model.apply steps 8 at a time)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=207.0,
                        help="track length for Model.predict")
    parser.add_argument("--variants", action="store_true", help="also time the formulations tried")
    parser.add_argument("--dump", help="write XLA's HLO to this folder")
    parser.add_argument("--clock", choices=list(CLOCK), default="wall",
                        help="wall time, or CPU seconds of the "
                             "process (robust on a shared machine)")
    args = parser.parse_args(argv)
    global clock_name
    clock_name = args.clock
    if args.dump:
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                                   f"--xla_dump_to={args.dump}").strip()
    import jax

    print(f"## MusiCNN vs the float32 peak — {cpu_line()}; JAX {jax.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    best, lines = peak(args.rounds)
    print(f"### Peak (measured): {best:.1f} {CLOCK[clock_name][1]}\n")
    print("\n".join(lines) + "\n")
    macs = musicnn_macs()
    total = sum(macs.values())
    print(f"### MusiCNN arithmetic per patch: {2 * total / 1e9:.3f} GFLOP\n")
    print("| layer | MMAC | GFLOP | share |\n|---|---|---|---|")
    for name, m in macs.items():
        print(f"| {name} | {m / 1e6:.1f} | {2 * m / 1e9:.4f} | {100 * m / total:.1f}% |")
    print("\n### Timed (median of rounds, taken in turn)\n")
    print("\n".join(time_layers(args.batch, args.rounds, args.seconds, best)))
    if args.variants:
        print("\n### Formulations tried\n")
        print("\n".join(time_variants(args.batch, args.rounds, best)))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
