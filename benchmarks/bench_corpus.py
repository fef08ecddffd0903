"""A collection end to end: jaxmir's collection engine vs Essentia's Python loop, in one run.

    python benchmarks/bench_corpus.py                  # 24 tracks of 1-4 min
    python benchmarks/bench_corpus.py --tracks 24 --min-s 20 --max-s 60 --jobs 2
    python benchmarks/bench_corpus.py --no-essentia --batch 64    # jaxmir alone, e.g. on a GPU
    python benchmarks/bench_corpus.py --no-essentia --resampler samplerate   # libsamplerate itself
    python benchmarks/bench_corpus.py --no-essentia --processes   # decoding in worker processes

The script generates the collection (MP3, FLAC and WAV; 22.05-48 kHz; mono and
stereo; tones, chords and noise bursts) with soundfile, then times, each in its
own process, (1) ``jaxmir.collection.collect`` (decoding in ``--jobs`` worker
threads, or processes with ``--processes``; MusiCNN in the main thread) into a
Parquet folder, and (2) Essentia's loop: ``MonoLoader(sampleRate=16000)`` +
``TensorflowPredictMusiCNN`` on the same msd-musicnn ``.pb`` (``common.graphs_dir()``),
tag means per file. It prints wall time, x real time (audio seconds per wall second),
the peak resident memory of the main process and of its workers, and the largest
difference of the mean tags.
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
from common import ROOT, cpu_line, graphs_dir  # noqa: E402

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


JAXMIR = """
import json, resource, sys, time
import jax
import jaxmir
from jaxmir.collection import Options, collect
if __name__ == "__main__":
    folder, output, jobs, batch, resampler = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    processes = sys.argv[6] == "processes"
    start = time.perf_counter()
    model = jaxmir.load("msd-musicnn")
    tally = collect(model, [folder], output, name="msd-musicnn", jobs=jobs, processes=processes,
                    overwrite=True, options=Options(batch=batch, resampler=resampler), progress=False)
    print(json.dumps({"wall_s": time.perf_counter() - start, "ok": tally.ok, "failed": tally.failed,
                      "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
                      "audio_s": tally.audio_s,
                      "peak_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

ESSENTIA = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
import essentia
essentia.log.warningActive = False
import essentia.standard as es
folder, graph, output = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
model = es.TensorflowPredictMusiCNN(graphFilename=graph, output="model/Sigmoid")
means, audio_s = {}, 0.0
for path in sorted(str(p) for p in Path(folder).rglob("*") if p.is_file()):
    audio = es.MonoLoader(filename=path, sampleRate=16000)()
    audio_s += len(audio) / 16000
    means[path] = np.asarray(model(audio), np.float64).mean(axis=0).tolist()
Path(output).write_text(json.dumps(means))
print(json.dumps({"wall_s": time.perf_counter() - start, "ok": len(means), "audio_s": audio_s,
                  "peak_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(name: str, result: dict) -> None:
    device = f" on {result['device']}" if "device" in result else ""
    workers = (f", workers {result['peak_worker_mb']:.0f} MB each at most"
               if result.get("peak_worker_mb") else "")
    print(f"{name:52s} {result['wall_s']:7.1f} s  {result['audio_s'] / result['wall_s']:6.1f}x real "
          f"time  peak {result['peak_main_mb']:.0f} MB{workers}  ({result['ok']} files){device}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--min-s", type=float, default=60.0)
    parser.add_argument("--max-s", type=float, default=240.0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=8, help="patches per model call")
    parser.add_argument("--resampler", choices=("essentia", "samplerate"), default="essentia",
                        help="jaxmir's resampler: Essentia's converter (default; in JAX where faster) "
                             "or libsamplerate itself")
    parser.add_argument("--processes", action="store_true",
                        help="jaxmir decodes in worker processes instead of threads")
    parser.add_argument("--folder", default=str(ROOT / "build" / "corpus"))
    parser.add_argument("--no-essentia", action="store_true",
                        help="jaxmir alone (where essentia-tensorflow is not installed, e.g. a GPU machine)")
    args = parser.parse_args(argv)
    folder = Path(args.folder) / f"{args.tracks}x{args.min_s:g}-{args.max_s:g}s"
    audio_s = generate(folder, args.tracks, args.min_s, args.max_s)
    print(f"CPU: {cpu_line()}")
    print(f"collection: {args.tracks} tracks (MP3/FLAC/WAV, 22.05-48 kHz, mono+stereo), "
          f"{audio_s / 60:.1f} min of audio")
    with tempfile.TemporaryDirectory() as tmp:
        workers = "processes" if args.processes else "threads"
        ours = run(JAXMIR, str(folder), str(Path(tmp) / "tags.parquet"), str(args.jobs),
                   str(args.batch), args.resampler, workers)
        name = f"jaxmir collect (--jobs {args.jobs} {workers}, --batch {args.batch}, {args.resampler})"
        if args.no_essentia:
            report(name, ours)
            print(f"{ours['ok'] * 3600 / ours['wall_s']:.0f} tracks per hour")
            return
        graph = graphs_dir() / "msd-musicnn-1.pb"
        theirs = run(ESSENTIA, str(folder), str(graph), str(Path(tmp) / "essentia.json"))
        import pyarrow.parquet as pq
        import jaxmir

        table = pq.read_table(Path(tmp) / "tags.parquet").to_pandas().set_index("path")
        labels = list(jaxmir.load("msd-musicnn").labels)
        reference = json.loads((Path(tmp) / "essentia.json").read_text())
        diff = max(float(np.max(np.abs(table.loc[p, labels].to_numpy(np.float64) - np.asarray(v))))
                   for p, v in reference.items())
    report(name, ours)
    report("Essentia loop", theirs)
    print(f"speed-up {theirs['wall_s'] / ours['wall_s']:.2f}x; max |mean tag difference| {diff:.2e}")


if __name__ == "__main__":
    main()
