"""Model-only inference: jaxmir vs a TensorFlow session on the same frozen graph and patches.

    python benchmarks/bench_models.py [--batches 1 16 64] [--models msd-musicnn msd-vgg]

Prints, per model and batch size, warm patches per second of both and their
ratio, and jaxmir's compile time separately.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import graphs_dir, machine, timed


def bench(name: str, path, batches: list[int]) -> list[tuple]:
    import jax
    import tensorflow as tf

    import jaxmir

    model = jaxmir.load(path)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=graph)
    rows = []
    for batch in batches:
        patches = np.random.default_rng(0).standard_normal((batch, *model.input_shape)).astype(np.float32)
        start = time.perf_counter()
        jax.block_until_ready(model.apply(patches)["predictions"])
        compile_s = time.perf_counter() - start
        ours = timed(lambda: jax.block_until_ready(model.apply(patches)["predictions"]))
        theirs = timed(lambda: session.run("model/Sigmoid:0", {"model/Placeholder:0": patches}))
        rows.append((name, batch, batch / ours, batch / theirs, theirs / ours, compile_s))
    session.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--models", nargs="*", default=["msd-musicnn", "msd-vgg"])
    args = parser.parse_args()
    graphs = graphs_dir()
    print(f"machine: {machine()}")
    print(f"{'model':14s} {'batch':>5s} {'jaxmir patch/s':>15s} {'TF patch/s':>11s} "
          f"{'ratio':>6s} {'compile s':>9s}")
    for name in args.models:
        for row in bench(name, graphs / f"{name}-1.pb", args.batches):
            print(f"{row[0]:14s} {row[1]:5d} {row[2]:15.1f} {row[3]:11.1f} {row[4]:6.2f} {row[5]:9.2f}")


if __name__ == "__main__":
    main()
