"""From audio to tags: jaxmir's pipeline vs librosa + a TensorFlow session on the same graph.

    python benchmarks/bench_pipeline.py [--seconds 207] [--folder 20] [--skip-cli]

(a) end to end, warm, one process: a 16-kHz array -> tags averaged over patches.
    jaxmir: ``Model.predict`` (Essentia's front-end, patches 187 hop 93, one
    compiled program). Baseline: musicnn's front-end (librosa melspectrogram,
    n_fft 512, hop 256, 96 mels, float16, log10(10000 x + 1)), the same
    patches, and a TensorFlow session on msd-musicnn-1.pb (batches of 64, as
    Essentia feeds them).
(b) cold start: the ``jaxmir tag`` command as a new process, first (empty
    persistent compilation cache) and second invocation, vs the baseline as a
    new process (import, load the graph, read the file, tag).
(c) a folder of tracks of varying lengths (about 30 s each), as new processes.

The track is synthetic (tones, a beat and noise) with the requested length.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, graphs_dir, machine

SR = 16000
PATCH, HOP, TF_BATCH = 187, 93, 64


def synthetic_track(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords, a kick every 0.5 s and some noise: float32 [seconds * 16000] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    chord = sum(np.sin(2 * np.pi * f * t * (1 + 0.01 * np.sin(0.3 * t)))
                for f in (220, 277.2, 329.6))
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-30 * (t % 0.5))
    audio = 0.15 * chord + 0.4 * kick + 0.02 * rng.standard_normal(t.size)
    return (audio / np.abs(audio).max() * 0.9).astype(np.float32)


# -- the baseline: librosa + TensorFlow --------------------------------------------------------
def tf_session(graph: Path):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph.read_bytes())
    tf_graph = tf.Graph()
    with tf_graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return tf.compat.v1.Session(graph=tf_graph)


def librosa_logmel(audio: np.ndarray) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(y=audio, sr=SR, hop_length=256, n_fft=512, n_mels=96).T
    return np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1)


def tf_tags(session, audio: np.ndarray) -> np.ndarray:
    """Baseline end to end: mean of the sigmoid over patches, [50]."""
    frames = librosa_logmel(audio)
    starts = range(0, frames.shape[0] - PATCH + 1, HOP)
    patches = np.stack([frames[s:s + PATCH] for s in starts])
    outputs = [session.run("model/Sigmoid:0", {"model/Placeholder:0": patches[i:i + TF_BATCH]})
               for i in range(0, len(patches), TF_BATCH)]
    return np.concatenate(outputs).mean(axis=0)


def tf_main(graph: str, files: list[str]) -> int:
    """``bench_pipeline.py --tf-tag GRAPH FILE...``: the baseline as a command (for (b), (c))."""
    import librosa

    session = tf_session(Path(graph))
    for path in files:
        audio, _ = librosa.load(path, sr=SR)
        mean = tf_tags(session, audio)
        print(path, np.argsort(-mean)[:3].tolist())
    return 0


# -- measurements -------------------------------------------------------------------------------
def best_of(functions: dict, rounds: int = 5) -> dict[str, float]:
    """Fastest of ``rounds`` warm calls of each function, taken in turn (load drifts hit all
    alike)."""
    for fn in functions.values():
        fn()
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def run_seconds(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds


def row(name: str, seconds: float, baseline: float | None = None, note: str = "") -> str:
    ratio = f"{baseline / seconds:6.2f}x" if baseline else "       "
    return f"  {name:<48} {seconds:8.3f} s  {ratio}  {note}"


def bench_end_to_end(seconds: float, graph: Path) -> tuple[list[str], float, float]:
    import jax

    import jaxmir
    from jaxmir import frontends, pipeline

    audio = synthetic_track(seconds)
    model = jaxmir.load("msd-musicnn")
    session = tf_session(graph)
    plan = pipeline.plan(model, audio.size)

    def jaxmir_tags():
        return np.asarray(model.predict(audio, SR)).mean(axis=0)

    start = time.perf_counter()
    jaxmir_tags()
    first = time.perf_counter() - start
    agree = (np.argsort(-jaxmir_tags())[:3].tolist()
             == np.argsort(-tf_tags(session, audio))[:3].tolist())
    patches = np.random.default_rng(0).standard_normal(
        (plan.n_patches, PATCH, 96)).astype(np.float32)

    def unshared():
        return np.asarray(pipeline.predict(model, audio, SR, share_overlap=False)).mean(axis=0)

    best = best_of({
        "tf": lambda: tf_tags(session, audio),
        "jaxmir": jaxmir_tags,
        "jaxmir_unshared": unshared,
        "librosa": lambda: librosa_logmel(audio),
        "frontend": lambda: jax.block_until_ready(frontends.musicnn_logmel(audio)),
        "model_tf": lambda: [session.run("model/Sigmoid:0",
                                         {"model/Placeholder:0": patches[i:i + TF_BATCH]})
                             for i in range(0, len(patches), TF_BATCH)],
        "model": lambda: jax.block_until_ready(model.apply(patches)),
    })
    theirs, ours = best["tf"], best["jaxmir"]
    lines = ["(a) end to end, warm (best of 5, taken in turn): "
             f"{seconds:g}-s track, {plan.n_patches} patches (computed "
             f"as {plan.bucket_patches}); ratio = baseline / this",
             row("librosa + TensorFlow session (batches of 64)", theirs),
             row("jaxmir Model.predict", ours, theirs, f"(first call with compile {first:.2f} s)"),
             row("jaxmir Model.predict, timbral not shared", best["jaxmir_unshared"], theirs),
             row("  front-end only: librosa", best["librosa"]),
             row("  front-end only: jaxmir", best["frontend"], best["librosa"]),
             row(f"  model only, {plan.n_patches} patches: TensorFlow", best["model_tf"]),
             row(f"  model only, {plan.n_patches} patches: jaxmir Model.apply (one batch)",
                 best["model"], best["model_tf"]),
             f"  same top-3 tags: {agree}"]
    return lines, ours, theirs


def bench_cli(track: Path, graph: Path, warm: float, baseline: float) -> list[str]:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, JAXMIR_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        env.pop("JAXMIR_NO_CACHE", None)
        command = [sys.executable, "-m", "jaxmir", "tag", str(track), "--no-progress"]
        first = run_seconds(command, env)
        second = min(run_seconds(command, env) for _ in range(2))
    tf = min(run_seconds([sys.executable, __file__, "--tf-tag", str(graph), str(track)], env)
             for _ in range(2))
    return ["(b) cold start, new processes (import, load, "
            "read the file, tag; best of 2 but the first)",
            row("baseline (librosa + TensorFlow) as a command", tf),
            row("jaxmir tag, first run (empty compilation cache)", first, tf),
            row("jaxmir tag, later runs (cached programs)", second, tf,
                f"= {second / warm:.2f}x jaxmir's warm end-to-end time")]


def bench_folder(folder: Path, count: int, graph: Path) -> list[str]:
    files = []
    for i in range(count):
        path = folder / f"track_{i:02d}.wav"
        import soundfile

        soundfile.write(path, synthetic_track(24 + (i * 7) % 13, seed=i), SR, subtype="PCM_16")
        files.append(str(path))
    total = sum(24 + (i * 7) % 13 for i in range(count))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, JAXMIR_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        env.pop("JAXMIR_NO_CACHE", None)
        command = [sys.executable, "-m", "jaxmir", "tag", *files, "--no-progress"]
        first = run_seconds(command, env)
        second = min(run_seconds(command, env) for _ in range(2))
    tf = min(run_seconds([sys.executable, __file__, "--tf-tag", str(graph), *files], env)
             for _ in range(2))
    return [f"(c) a folder of {count} tracks, 24-36 s each "
            f"({total} s of audio), one process each run",
            row("baseline (librosa + TensorFlow)", tf),
            row("jaxmir tag, empty compilation cache", first, tf),
            row("jaxmir tag, cached programs", second, tf)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=207.0)
    parser.add_argument("--folder", type=int, default=20, help="tracks in (c); 0 skips it")
    parser.add_argument("--skip-cli", action="store_true", help="only (a)")
    parser.add_argument("--tf-tag", nargs="+", metavar=("GRAPH", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tf_tag:
        return tf_main(args.tf_tag[0], args.tf_tag[1:])

    graph = graphs_dir() / "msd-musicnn-1.pb"
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    lines, warm, baseline = bench_end_to_end(args.seconds, graph)
    print("\n".join(lines), flush=True)
    if args.skip_cli:
        return 0
    with tempfile.TemporaryDirectory() as folder:
        import soundfile

        track = Path(folder) / "track.wav"
        soundfile.write(track, synthetic_track(args.seconds), SR, subtype="PCM_16")
        print("\n".join(bench_cli(track, graph, warm, baseline)), flush=True)
        if args.folder:
            print("\n".join(bench_folder(Path(folder), args.folder, graph)), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
