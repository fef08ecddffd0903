"""Fine-tuning's step time: jaxmir's gradients against reverse mode for every parameter.

    python benchmarks/bench_finetune.py [--models msd-musicnn msd-vgg] [--steps 6] [--rounds 2]

Each model is fine-tuned (``jaxmir.train.finetune.finetune``, batches of 8 random log-mel
patches, a 100-unit head) for ``--steps`` steps, in a process of its own, once as jaxmir runs
it (on a CPU, a MusiCNN's input batch norm in forward mode:
``jaxmir.models.compiler.forward_mode_gradients``) and once with every gradient in reverse
mode; the two alternate for ``--rounds`` rounds. Prints the seconds of a step after the first
(which compiles), the ratio, and the final losses, which must agree. No peer fine-tunes these
graphs: Essentia and ONNX Runtime run frozen graphs only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, spread  # noqa: E402


def child(model_name: str, mode: str, steps: int) -> dict:
    """Fine-tune in this process; the seconds between consecutive steps' ends."""
    import jax
    import numpy as np

    import jaxmir
    from jaxmir import interrupts
    from jaxmir.train import finetune as tuning
    from jaxmir.train import fit

    if mode == "reverse":
        tuning.forward_mode_gradients = lambda module, platform: (lambda path: False)
    ends = []
    checked = interrupts.raise_if_received

    def timestamped() -> None:  # finetune calls it after each step, then waits for its loss
        ends.append(time.perf_counter())
        checked()

    interrupts.raise_if_received = timestamped
    backbone = jaxmir.load(model_name)
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((32, *backbone.input_shape)).astype(np.float32)
    targets = np.eye(2, dtype=np.float32)[rng.integers(0, 2, len(patches))]
    width = tuning.embed_fn(backbone, "embeddings")(backbone.variables, patches[:1]).shape[1]
    head = fit.init_head(jax.random.PRNGKey(0), width, 100, 2)
    _, _, losses = tuning.finetune(backbone, "embeddings", patches, targets, "single", head,
                                   tuning.FinetuneConfig(steps=steps, batch_size=8))
    return {"steps": list(np.diff(ends)), "loss": losses[-1]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["msd-musicnn", "msd-vgg"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.steps)))
        return
    print(machine())
    for name in args.models:
        found = {"jaxmir": [], "reverse": []}
        losses = {}
        for _ in range(args.rounds):
            for mode in found:
                run = subprocess.run([sys.executable, __file__, "--steps", str(args.steps),
                                      "--child", name, mode], capture_output=True, text=True,
                                     check=True)
                result = json.loads(run.stdout.splitlines()[-1])
                found[mode] += result["steps"]
                losses[mode] = result["loss"]
        ratio = statistics.median(found["reverse"]) / statistics.median(found["jaxmir"])
        print(f"{name}: a step {spread(found['jaxmir'])} s as jaxmir runs it, "
              f"{spread(found['reverse'])} s in reverse mode alone ({ratio:.2f}x); "
              f"final loss {losses['jaxmir']:.6f} and {losses['reverse']:.6f}")


if __name__ == "__main__":
    main()
