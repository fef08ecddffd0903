"""A collection end to end: jaxmir's collection engine vs Essentia's Python loop, in one run.

    python benchmarks/bench_corpus.py                  # 24 tracks of 1-4 min
    python benchmarks/bench_corpus.py --tracks 24 --min-s 20 --max-s 60 --jobs 2
    python benchmarks/bench_corpus.py --no-essentia --batch 64    # jaxmir alone, e.g. on a GPU
    python benchmarks/bench_corpus.py --no-essentia --resampler samplerate   # libsamplerate itself
    python benchmarks/bench_corpus.py --no-essentia --processes   # decoding in worker processes

The script generates the collection (MP3, FLAC and WAV; 22.05-48 kHz; mono and
stereo; tones, chords and noise bursts) with soundfile, then times, each as a
process of its own, whole (imports included): (1) ``jaxmir tag FOLDER -o
tags.parquet`` as a user types it (decoding in ``--jobs`` worker threads, or
processes with ``--processes``; MusiCNN in the main thread), twice: with an empty
persistent compilation cache (a first run) and with the programs it cached;
(2) Essentia's loop: ``MonoLoader(sampleRate=16000)`` + ``TensorflowPredictMusiCNN``
on the same msd-musicnn ``.pb`` (``common.graphs_dir()``), tag means per file. It
prints wall time, x real time (audio seconds per wall second), tracks per hour, the
peak resident memory of the largest process, and the largest difference of the mean
tags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, cpu_line, graphs_dir, measured_process  # noqa: E402

FORMATS = (("mp3", 44100, 2), ("flac", 48000, 1), ("wav", 22050, 2), ("mp3", 32000, 1),
           ("flac", 44100, 2), ("wav", 48000, 1))


def synth(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    """A few minutes of tones, chords and noise bursts, ``[n, channels]`` float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, np.float32)
    beat = int(rate * rng.uniform(0.35, 0.6))
    for start in range(0, n, beat * 4):
        stop = min(n, start + beat * 4)
        t = np.arange(stop - start, dtype=np.float32) / rate
        root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        for ratio in (1.0, 1.25, 1.5):
            out[start:stop] += 0.12 * np.sin(2 * np.pi * root * ratio * t) * np.exp(-t)
    for start in range(0, n, beat):
        burst = min(n - start, rate // 20)
        out[start:start + burst] += 0.2 * rng.standard_normal(burst) * np.linspace(1, 0, burst)
    stereo = np.stack([out, np.roll(out, rate // 100)], axis=1)[:, :channels]
    return np.clip(stereo, -1, 1).astype(np.float32)


def generate(folder: Path, tracks: int, min_s: float, max_s: float) -> float:
    """Write the collection once (kept between runs); returns its total duration in seconds."""
    import soundfile

    total = 0.0
    rng = np.random.default_rng(0)
    for i in range(tracks):
        kind, rate, channels = FORMATS[i % len(FORMATS)]
        seconds = float(rng.uniform(min_s, max_s))
        path = folder / f"album{i % 4}" / f"track{i:03d}.{kind}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, synth(seconds, rate, channels, i), rate,
                            format="MP3" if kind == "mp3" else None)
        total += soundfile.info(path).duration
    return total


ESSENTIA = """
import json, sys
from pathlib import Path
import numpy as np
import essentia
essentia.log.warningActive = False
import essentia.standard as es
folder, graph, output = sys.argv[1], sys.argv[2], sys.argv[3]
model = es.TensorflowPredictMusiCNN(graphFilename=graph, output="model/Sigmoid")
means, audio_s = {}, 0.0
for path in sorted(str(p) for p in Path(folder).rglob("*") if p.is_file()):
    audio = es.MonoLoader(filename=path, sampleRate=16000)()
    audio_s += len(audio) / 16000
    means[path] = np.asarray(model(audio), np.float64).mean(axis=0).tolist()
Path(output).write_text(json.dumps({"means": means, "audio_s": audio_s}))
"""


def timed_process(command: list[str], env: dict | None = None) -> dict:
    """:func:`common.measured_process`, stopping the benchmark when the command fails."""
    result = measured_process(command, env)
    if result["exit_code"] != 0:
        raise SystemExit(f"{' '.join(command[:5])} ... failed:\n{result['output'][-3000:]}")
    return result


def jaxmir_tag(folder: Path, output: Path, args, cache: Path) -> dict:
    """``jaxmir tag FOLDER -o OUTPUT.parquet`` as a user types it, with ``cache`` as its
    persistent compilation cache (empty on a first run)."""
    import pyarrow.parquet as pq

    command = [sys.executable, "-m", "jaxmir", "tag", str(folder), "-o", str(output), "--overwrite",
               "--no-progress", "--jobs", str(args.jobs), "--batch", str(args.batch),
               "--resampler", args.resampler] + (["--processes"] if args.processes else [])
    result = timed_process(command, {"JAXMIR_CACHE_DIR": str(cache)})
    table = pq.read_table(output, columns=["status", "duration_s"]).to_pydict()
    result["ok"] = sum(status == "ok" for status in table["status"])
    result["audio_s"] = sum(table["duration_s"])
    return result


def essentia_loop(folder: Path, output: Path) -> dict:
    graph = graphs_dir() / "msd-musicnn-1.pb"
    result = timed_process([sys.executable, "-c", ESSENTIA, str(folder), str(graph), str(output)])
    written = json.loads(output.read_text())
    result.update(ok=len(written["means"]), audio_s=written["audio_s"], means=written["means"])
    return result


def report(name: str, result: dict) -> None:
    wall = result["wall_s"]
    print(f"{name:58s} {wall:7.1f} s  {result['audio_s'] / wall:6.1f}x real time  "
          f"{result['ok'] * 3600 / wall:5.0f} tracks/h  CPU {result['cpu_s']:.1f} s  "
          f"peak {result['peak_mb']:.0f} MB  ({result['ok']} files)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--min-s", type=float, default=60.0)
    parser.add_argument("--max-s", type=float, default=240.0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=8, help="patches per model call")
    parser.add_argument("--resampler", choices=("essentia", "samplerate"), default="essentia",
                        help="jaxmir's resampler: Essentia's converter (default; "
                             "in JAX where faster) or libsamplerate itself")
    parser.add_argument("--processes", action="store_true",
                        help="jaxmir decodes in worker processes instead of threads")
    parser.add_argument("--folder", default=str(ROOT / "build" / "corpus"))
    parser.add_argument("--no-essentia", action="store_true",
                        help="jaxmir alone (where essentia-tensorflow "
                             "is not installed, e.g. a GPU machine)")
    args = parser.parse_args(argv)
    if not args.no_essentia:  # said now, not after the jaxmir runs
        probe = subprocess.run([sys.executable, "-c", "import essentia.standard"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            raise SystemExit("essentia cannot be imported (pip install 'jaxmir[bench]' on Linux "
                             "x86-64, CPython 3.11); or run jaxmir alone: --no-essentia\n"
                             + probe.stderr.strip().splitlines()[-1])
    # absolute: `jaxmir tag` runs in the checkout's root, not here
    folder = Path(args.folder).resolve() / f"{args.tracks}x{args.min_s:g}-{args.max_s:g}s"
    audio_s = generate(folder, args.tracks, args.min_s, args.max_s)
    print(f"CPU: {cpu_line()}")
    print(f"collection: {args.tracks} tracks (MP3/FLAC/WAV, 22.05-48 kHz, mono+stereo), "
          f"{audio_s / 60:.1f} min of audio")
    workers = "processes" if args.processes else "threads"
    name = f"jaxmir tag (--jobs {args.jobs} {workers}, --batch {args.batch}, {args.resampler})"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = jaxmir_tag(folder, tmp / "first.parquet", args, tmp / "cache")
        cached = jaxmir_tag(folder, tmp / "tags.parquet", args, tmp / "cache")
        report(name + ", first run", first)
        report(name + ", cached", cached)
        if args.no_essentia:
            return
        theirs = essentia_loop(folder, tmp / "essentia.json")
        report("Essentia loop", theirs)
        import pyarrow.parquet as pq
        import jaxmir

        table = pq.read_table(tmp / "tags.parquet").to_pandas().set_index("path")
        labels = list(jaxmir.load("msd-musicnn").labels)
        diff = max(float(np.max(np.abs(table.loc[p, labels].to_numpy(np.float64) - np.asarray(v))))
                   for p, v in theirs["means"].items())
    ratios = [theirs["wall_s"] / ours["wall_s"] for ours in (first, cached)]
    print(f"speed-up (whole processes, imports included): first run {ratios[0]:.2f}x, "
          f"cached {ratios[1]:.2f}x; max |mean tag difference| {diff:.2e}")


if __name__ == "__main__":
    main()
