"""jaxmir on an accelerator: patches/s against batch size, files end to end, float32 vs bfloat16.

    python benchmarks/bench_gpu.py [--seconds 600] [--batches 1 8 64 256 1024]
                                   [--vggish FILE]

Runs on JAX's default device (a GPU where JAX finds one; on a CPU it runs too, slowly)
and prints, in one run:

1. the device and the precision policy, checked: the same patches through the default
   device and through JAX's CPU backend, both float32, and the largest difference of
   the tags (float32 everywhere, TF32 off: ~1e-6, not TF32's ~1e-3);
2. model only: warm patches/s of ``Model.apply`` for each batch size, float32 and
   the opt-in bfloat16 (``Model.astype("bfloat16")``) with its measured deviation
   from float32 on the same patches;
3. end to end: a music-like 44.1-kHz stereo WAV of ``--seconds`` (written here)
   through ``load_audio`` (decoding on the CPU, resampling on the device) and
   ``Model.predict``, warm: seconds per stage and x real time, MusiCNN and VGGish.

MusiCNN and VGG run with jaxmir's shipped weights. VGGish is the full-size AudioSet
VGGish (72 M parameters: Essentia's ``audioset-vggish-3.pb`` up to its 128-wide
embeddings) with seeded random weights, built from its architecture, so no file and
no TensorFlow are needed on the device; ``--vggish`` names a file ``jaxmir.load``
reads with that architecture instead (only its shapes are used).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from common import cpu_line, samples, spread



def device_line() -> str:
    """The default device, and the GPU's name and driver where ``nvidia-smi`` answers."""
    import jax

    device = jax.devices()[0]
    line = (f"{device.device_kind} ({jax.default_backend()}, "
            f"{jax.device_count()} device(s)), JAX {jax.__version__}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if smi.returncode == 0 and smi.stdout.strip():
            line += f"; nvidia-smi: {smi.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return line


def with_random_weights(model, seed: int = 0):
    """``model`` with seeded random weights of the same shapes (He-scaled kernels, small biases)."""
    import jax

    rng = np.random.default_rng(seed)

    def draw(path, value):
        shape = np.shape(value)
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(shape[:-1]))
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return (0.01 * rng.standard_normal(shape)).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(draw, model.variables)
    return dataclasses.replace(model,
                               variables=jax.tree_util.tree_map(jax.numpy.asarray, variables))


def full_size_vggish():
    """AudioSet VGGish as Essentia ships it (``audioset-vggish-3.pb``): six 3x3 convolutions,
    fc1 4096-4096 and a 128-wide ``embeddings`` layer, with zero weights (replaced by
    :func:`with_random_weights`)."""
    import jax
    import jaxmir
    from jaxmir.frontends import VGGISH
    from jaxmir.models import build_module
    from jaxmir.models.vgg import vggish_blocks
    from jaxmir.spec import Activation, Dense, ModelSpec

    relu = Activation("relu")
    config = {"blocks": vggish_blocks(), "input_bn_epsilon": None,
              "head": (Dense(4096), relu, Dense(4096), relu, Dense(128))}
    shapes = jax.eval_shape(build_module("vggish", config).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, VGGISH.patch_size, VGGISH.n_bands),
                                                 np.float32))
    variables = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, np.float32), shapes)
    aliases = {"conv1": "block_1/features", "pool1": "block_1_output", "conv2": "block_2/features",
               "pool2": "block_2_output", "conv3_1": "block_3_output",
               "conv3_2": "block_4/features", "pool3": "block_4_output",
               "conv4_1": "block_5_output", "conv4_2": "block_6/features",
               "pool4": "block_6_output", "fc1_1": "head/layer_0", "fc1_2": "head/layer_2",
               "embeddings": "head/layer_4", "predictions": "head/layer_4"}
    spec = ModelSpec("vggish", config, variables, "model/Placeholder",
                     (VGGISH.patch_size, VGGISH.n_bands), "model/vggish/embeddings", aliases, {},
                     VGGISH)
    return jaxmir.Model.from_spec(spec, source="full-size VGGish (random weights)")


def load_models(vggish: str | None) -> dict:
    import jaxmir

    models = {"msd-musicnn": jaxmir.load("msd-musicnn"), "msd-vgg": jaxmir.load("msd-vgg")}
    name = Path(vggish).stem if vggish else "audioset-vggish"  # rows name the file measured
    models[name] = with_random_weights(jaxmir.load(vggish) if vggish else full_size_vggish())
    return models


def patches_for(model, audio_16k: np.ndarray, count: int) -> np.ndarray:
    """``[count, *input_shape]``: the signal's log-mel patches, repeated up to ``count``."""
    frames = np.asarray(model.features(audio_16k, 16000))
    size, hop = model.input_shape[0], model.frontend.patch_hop
    cut = np.stack([frames[s:s + size] for s in range(0, frames.shape[0] - size + 1, hop)])
    return np.resize(cut, (count, *cut.shape[1:]))


def precision_check(models: dict, audio_16k: np.ndarray) -> list[str]:
    """Largest |default device - CPU| of the outputs on 16 patches, both float32."""
    import jax

    rows = []
    cpu = jax.devices("cpu")[0]
    for name, model in models.items():
        x = patches_for(model, audio_16k, 16)
        here = np.asarray(model.apply(x)["predictions"])
        with jax.default_device(cpu):
            on_cpu = dataclasses.replace(model, variables=jax.device_put(model.variables, cpu))
            there = np.asarray(on_cpu.apply(jax.device_put(x, cpu))["predictions"])
        scale = float(np.max(np.abs(there)))
        rows.append(f"| {name} | {float(np.max(np.abs(here - there))):.1e} | {scale:.2g} |")
    return rows


def model_rates(models: dict, audio_16k: np.ndarray, batches: list[int], repeats: int) -> list[str]:
    import jax

    rows = []
    for name, model in models.items():
        low = model.astype("bfloat16")
        largest = patches_for(model, audio_16k, max(batches))
        timed = []
        for batch in batches:
            x = jax.device_put(largest[:batch])
            rates = {}
            for label, which in (("float32", model), ("bfloat16", low)):
                start = time.perf_counter()
                jax.block_until_ready(which.apply(x)["predictions"])
                first = time.perf_counter() - start
                times = samples(lambda: jax.block_until_ready(which.apply(x)["predictions"]),
                                repeats=repeats, min_seconds=0.5, max_seconds=10.0)
                rates[label] = ([batch / t for t in times], first)
            timed.append((batch, rates))
        # after the timings: a call of 64 patches before them compiled batch 64's program, whose
        # first call then took no compile time
        full_out = np.asarray(model.apply(largest[:64])["predictions"])
        low_out = np.asarray(low.apply(largest[:64])["predictions"])
        deviation = float(np.max(np.abs(low_out - full_out)) / np.max(np.abs(full_out)))
        for batch, rates in timed:
            f32, bf16 = rates["float32"][0], rates["bfloat16"][0]
            rows.append(f"| {name} | {batch} | {spread(f32, digits=0)} | "
                        f"{spread(bf16, digits=0)} | {np.median(bf16) / np.median(f32):.2f}x "
                        f"| {deviation:.1e} | {rates['float32'][1]:.1f} |")
    return rows


def end_to_end(models: dict, seconds: float, repeats: int) -> list[str]:
    import jax
    import soundfile
    import jaxmir
    from bench_peers import NATIVE, synthetic_track

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "track.wav"
        soundfile.write(wav, synthetic_track(seconds), NATIVE, subtype="PCM_16")
        for name, model in models.items():
            if name == "msd-vgg":  # end to end: one MusiCNN and one VGGish
                continue

            def run():
                t0 = time.perf_counter()
                audio = jax.block_until_ready(jaxmir.load_audio(wav))
                t1 = time.perf_counter()
                model.predict(audio, 16000).mean(axis=0)
                return t1 - t0, time.perf_counter() - t1

            start = time.perf_counter()
            run()
            first = time.perf_counter() - start
            splits = [run() for _ in range(repeats)]
            load = [s[0] for s in splits]
            total = [s[0] + s[1] for s in splits]
            rows.append(f"| {name} | {spread(total)} | {spread(load)} | "
                        f"{spread([s[1] for s in splits])} | {seconds / np.median(total):.0f} | "
                        f"{first:.1f} |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="length of the end-to-end track")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vggish", default=None,
                        help="a VGGish graph or weights file (shapes only)")
    parser.add_argument("--only", nargs="*", default=["precision", "model", "files"],
                        choices=["precision", "model", "files"])
    args = parser.parse_args(argv)

    from bench_peers import NATIVE, synthetic_track
    from jaxmir.resample import resample

    print(f"device: {device_line()}")
    print(f"host CPU: {cpu_line()}\n")
    models = load_models(args.vggish)
    audio_16k = np.asarray(resample(synthetic_track(60.0).mean(axis=1), NATIVE, 16000), np.float32)
    if "precision" in args.only:
        print("#### float32 on the device vs JAX's CPU backend (16 patches; max abs difference)\n")
        print("| model | max abs difference | largest output |\n|---|---|---|")
        print("\n".join(precision_check(models, audio_16k)) + "\n", flush=True)
    if "model" in args.only:
        print("#### Model only: warm patches/s (median (min-max)), float32 and bfloat16\n")
        print("| model | batch | float32 | bfloat16 | bf16 / f32 | bf16 deviation "
              "(max abs / max) | first call s (f32) |\n|---|---|---|---|---|---|---|")
        print("\n".join(model_rates(models, audio_16k, args.batches, args.repeats)) + "\n",
              flush=True)
    if "files" in args.only:
        print(f"#### End to end: a {args.seconds:g}-s 44.1-kHz stereo WAV -> tags/embeddings "
              f"averaged over patches (warm seconds)\n")
        print("| model | total | load (decode + resample) | features + model | x real time | "
              "first call s |\n|---|---|---|---|---|---|")
        print("\n".join(end_to_end(models, args.seconds, args.repeats)) + "\n", flush=True)


if __name__ == "__main__":
    main()
