"""Which moments of a song make the model hear a tag? Gradient saliency on the waveform.

    python examples/saliency.py song.mp3                  # the song's top tag
    python examples/saliency.py song.mp3 --tag guitar --model mtt-musicnn --save saliency.npy

The whole pipeline (front-end, patches, model) is one differentiable JAX
function of the 16-kHz waveform, so ``jax.grad`` of the tag's probability,
averaged over patches, gives d(probability)/d(sample) for every sample. Its
energy in 0.5-s windows shows where the evidence for the tag lies.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

import jaxmir

SR = 16000


def tag_probability(model: jaxmir.Model, tag: int):
    """waveform [n_samples] -> mean probability of ``tag`` over the song's patches (a scalar)."""
    def probability(waveform: jax.Array) -> jax.Array:
        return model.predict(waveform, SR, pad="zero")[:, tag].mean()
    return probability


def windowed_energy(gradient: np.ndarray, window: int) -> np.ndarray:
    """Root-mean-square of the gradient in consecutive windows of ``window`` samples."""
    n = len(gradient) // window * window
    blocks = gradient[:n].reshape(-1, window)
    return np.sqrt(np.mean(blocks ** 2, axis=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio")
    parser.add_argument("--model", default="msd-musicnn")
    parser.add_argument("--tag", default=None, help="a label of the model (default: its top tag)")
    parser.add_argument("--window", type=float, default=0.5, help="seconds per saliency value")
    parser.add_argument("--save", default=None, help="write the per-sample gradient here (.npy)")
    args = parser.parse_args(argv)

    model = jaxmir.load(args.model)
    audio = jax.numpy.asarray(jaxmir.load_audio(args.audio, SR))
    mean = np.asarray(model.predict(audio, SR, pad="zero")).mean(axis=0)
    if args.tag is None:
        tag = int(np.argmax(mean))
    elif args.tag in model.labels:
        tag = model.labels.index(args.tag)
    else:
        parser.error(f"unknown tag {args.tag!r}; this model knows: {', '.join(model.labels)}")

    probability, gradient = jax.value_and_grad(tag_probability(model, tag))(audio)
    gradient = np.asarray(gradient)
    window = int(args.window * SR)
    energy = windowed_energy(gradient, window)
    print(f"{args.audio}: P({model.labels[tag]}) = {float(probability):.3f}; "
          f"|d P / d sample| max {np.abs(gradient).max():.3g}")
    print(f"most salient {args.window:g}-s windows for '{model.labels[tag]}':")
    for index in np.argsort(-energy)[:5]:
        start = index * window / SR
        bar = "#" * int(round(40 * energy[index] / energy.max()))
        print(f"  {start:7.2f}-{start + args.window:.2f} s  {energy[index]:.3g}  {bar}")
    if args.save:
        np.save(args.save, gradient)
        print(f"gradient [{gradient.shape[0]}] written to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
