"""Model-only inference: jaxmir vs a TensorFlow session on the same frozen graph and patches.

    python benchmarks/bench_models.py [--batches 1 16 64]
        [--models msd-musicnn msd-vgg audioset-vggish]

Each framework runs in its own process (so peak memory is its own) on the same
graph and the same patches; the table gives warm patches per second, the ratio
jaxmir / TensorFlow, jaxmir's compile time, and each process's peak memory.
``audioset-vggish`` is a full-size replica of Essentia's audioset-vggish-3.pb
with random weights (tools/tf_graphs.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, graphs_dir, machine, peak_rss_mb, timed


def graph_path(name: str) -> Path:
    if name != "audioset-vggish":
        return graphs_dir() / f"{name}-1.pb"
    path = ROOT / "build" / "graphs" / "audioset-vggish-3-replica.pb"
    if not path.is_file():
        from tools import tf_graphs
        path.parent.mkdir(parents=True, exist_ok=True)
        tf_graphs.write_graph(tf_graphs.vggish_graph(tf_graphs.random_weights(0)), str(path))
    return path


def worker(framework: str, path: Path, batches: list[int]) -> dict:
    """Run in a child process: warm throughput per batch size, compile time, peak RSS."""
    results = {}
    if framework == "jaxmir":
        import jax
        import jaxmir
        model = jaxmir.load(path)
        output = model.spec.output_name
        shape = model.input_shape
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
            start = time.perf_counter()
            jax.block_until_ready(model.apply(x, [output]))
            compile_s = time.perf_counter() - start
            seconds = timed(lambda: jax.block_until_ready(model.apply(x, [output])))
            results[batch] = {"patches_per_s": batch / seconds, "compile_s": compile_s}
    else:
        import tensorflow as tf
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        output = [n.name for n in graph_def.node if n.name in (
            "model/Sigmoid", "model/Softmax", "model/vggish/embeddings")][0]
        shape = [d.size
                 for d in graph.get_tensor_by_name("model/Placeholder:0").shape.as_proto().dim][1:]
        with tf.compat.v1.Session(graph=graph) as session:
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                seconds = timed(lambda: session.run(f"{output}:0", {"model/Placeholder:0": x}))
                results[batch] = {"patches_per_s": batch / seconds}
    results["peak_mb"] = peak_rss_mb()  # ru_maxrss kept the parent's peak (its TF replica's)
    return results


def run_worker(framework: str, path: Path, batches: list[int]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", framework, "--graph", str(path),
                          "--batches", *map(str, batches)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--models", nargs="*",
                        default=["msd-musicnn", "msd-vgg", "audioset-vggish"])
    parser.add_argument("--worker", choices=["jaxmir", "tf"], help=argparse.SUPPRESS)
    parser.add_argument("--graph", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.graph), args.batches)))
        return
    print(f"machine: {machine()}")
    print(f"{'model':16s} {'batch':>5s} {'jaxmir patch/s':>15s} {'TF patch/s':>11s} {'ratio':>6s} "
          f"{'compile s':>9s} {'jaxmir MB':>9s} {'TF MB':>7s}")
    for name in args.models:
        path = graph_path(name)
        ours = run_worker("jaxmir", path, args.batches)
        theirs = run_worker("tf", path, args.batches)
        for batch in args.batches:
            a, b = ours[str(batch)], theirs[str(batch)]
            print(f"{name:16s} {batch:5d} {a['patches_per_s']:15.1f} {b['patches_per_s']:11.1f} "
                  f"{a['patches_per_s'] / b['patches_per_s']:6.2f} {a['compile_s']:9.2f} "
                  f"{ours['peak_mb']:9.0f} {theirs['peak_mb']:7.0f}")


if __name__ == "__main__":
    main()
