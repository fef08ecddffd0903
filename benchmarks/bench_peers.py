"""jaxmir against its honest peers: Essentia, ONNX Runtime and TensorFlow, each in its own process.

    python benchmarks/bench_peers.py [--seconds 207] [--repeats 3] [--only model frontend tags cli]
                                     [--markdown results.md]

Everything runs on the same graphs and inputs, made here (but for musicnn's checkpoints,
fetched once from PyPI, ``pip download musicnn==0.1.0``, when no graph is built yet):

* graphs: ``msd-musicnn-1.pb`` (Essentia-shaped, built by tools/convert_musicnn.py
  through ``common.graphs_dir()``) and a full-size replica of
  ``audioset-vggish-3.pb`` with random weights (tools/tf_graphs.py); both are
  converted to ONNX with tf2onnx here (kept in build/onnx, keyed by the
  graph's size and mtime; the conversion time is printed);
* the track: a synthetic, music-like 44.1-kHz stereo WAV (chords that change
  every 2 s, a bass line, kick, hi-hat noise, panning) of ``--seconds``, and
  the same as an MP3 encoded with PyAV.

Tables (each cell: median (min-max) over the repeats; ratio = how many times
faster jaxmir is, from the medians; peak RSS is the process's own, from
``wait4``):

1. model only: patches/s at batch 1/16/64. jaxmir ``Model.apply``; ONNX
   Runtime ``InferenceSession.run``; TensorFlow 2 ``Session.run`` on the
   frozen graph; Essentia ``TensorflowPredict`` on a Pool holding the batch
   as a tensor ``[batch, 1, time, mel]`` (Essentia's own TensorFlow 1.x
   runtime; the time includes Essentia's copy of the pool into and out of TF).
   Two inputs: random patches, and (MusiCNN) consecutive patches cut every 93
   frames from one log-mel, as Essentia cuts a track; the peers compute each
   patch on its own, jaxmir is told the hop (``Model.apply(..., overlap_hop=93)``)
   and shares the overlapping frames' timbral convolutions. The max abs
   difference between jaxmir's outputs with and without sharing is printed.
2. front-end on 16-kHz audio of the track: jaxmir ``frontends.musicnn_logmel``;
   librosa (musicnn's settings: n_fft 512, hop 256, 96 mels, float16, log10(10000x+1));
   Essentia's ``FrameGenerator(512, 256)`` + ``TensorflowInputMusiCNN`` per frame.
3. file -> tags averaged over patches, warm, one process per pipeline:
   Essentia (``MonoLoader(sampleRate=16000)`` + ``TensorflowPredictMusiCNN``);
   libsamplerate ``sinc_medium`` with Essentia's float32 ratio + librosa
   front-end + ONNX Runtime (batches of 64, patches 187 hop 93); the same with
   TensorFlow; jaxmir (``load_audio`` + ``Model.predict``) with its default resampler
   (Essentia's converter, in JAX at 44.1 kHz) and with libsamplerate itself
   (``resampler="samplerate"``); and ``jaxmir stream``, the path ``jaxmir tag FILE``
   takes (:func:`jaxmir.stream.file_stream`: decoding and resampling in a thread
   while the model runs, so its load and model times are not apart). Beside each: the
   max abs difference of its averaged tags vs Essentia's.
4. cold start: ``python -m jaxmir tag track.wav`` (the ``jaxmir`` command) as a
   new process, with an empty compilation cache (``JAXMIR_CACHE_DIR`` in a
   temp folder) and again with it filled, vs Essentia doing the same as a
   Python script run as a command.

Never is essentia imported in a process that imports tensorflow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, cpu_description, cpu_line, graphs_dir, peak_rss_mb, samples, spread

# Benchmark-only dependencies (the ``[bench]`` extra).
BENCH_DEPS = ("onnxruntime", "tf2onnx", "tensorflow-cpu", "essentia-tensorflow", "librosa",
              "samplerate", "soundfile", "av")

SR, NATIVE = 16000, 44100
PATCH, HOP, BATCH = 187, 93, 64
MODELS = {  # name -> (input, output, patch shape)
    "msd-musicnn": ("model/Placeholder", "model/Sigmoid", (187, 96)),
    "audioset-vggish": ("model/Placeholder", "model/vggish/embeddings", (96, 64)),
}
FRAMEWORKS = ("jaxmir", "onnxruntime", "tensorflow", "essentia")
PIPELINES = ("essentia", "librosa+onnxruntime", "librosa+tensorflow", "jaxmir",
             "jaxmir stream", "jaxmir --resampler samplerate")
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


# -- inputs -----------------------------------------------------------------------------------
def synthetic_track(seconds: float, rate: int = NATIVE, seed: int = 0) -> np.ndarray:
    """Music-like stereo float32 ``[n, 2]`` in [-1, 1]: chords, bass, kick, hi-hat, panning."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    roots = np.array([220.0, 196.0, 174.6, 246.9])[(t // 2).astype(int) % 4]   # a chord every 2 s
    phase = 2 * np.pi * np.cumsum(roots) / rate
    chord = sum(np.sin(phase * ratio) / (i + 1) for i, ratio in enumerate((1, 1.26, 1.5, 2)))
    bass = np.sin(phase / 2) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    beat = t % 0.5
    kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-40 * beat)) * beat) * np.exp(-12 * beat)
    hat = rng.standard_normal(t.size) * np.exp(-60 * ((t + 0.25) % 0.5))
    hat = np.diff(hat, prepend=0.0)                                           # brighter noise
    mono = (0.12 * chord + 0.25 * bass + 0.5 * kick + 0.05 * hat
            + 0.003 * rng.standard_normal(t.size))
    pan = 0.5 + 0.3 * np.sin(2 * np.pi * t / 11)
    stereo = np.stack([mono * (1.2 - pan) + 0.1 * chord, mono * (0.2 + pan)], axis=1)
    return (stereo / np.abs(stereo).max() * 0.9).astype(np.float32)


def write_track(folder: Path, seconds: float) -> tuple[Path, Path]:
    """The track as 16-bit WAV and as a 192-kbit/s MP3 (PyAV's libmp3lame)."""
    import av
    import soundfile

    stereo = synthetic_track(seconds)
    wav, mp3 = folder / "track.wav", folder / "track.mp3"
    soundfile.write(wav, stereo, NATIVE, subtype="PCM_16")
    with av.open(str(mp3), "w") as container:
        stream = container.add_stream("mp3", rate=NATIVE)
        stream.bit_rate = 192_000
        stream.layout = "stereo"
        pcm = (stereo * 32767).astype(np.int16)
        for start in range(0, len(pcm), 1152 * 64):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[start:start + 1152 * 64].reshape(1, -1)),
                format="s16", layout="stereo")
            frame.sample_rate = NATIVE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return wav, mp3


def vggish_graph() -> Path:
    path = ROOT / "build" / "graphs" / "audioset-vggish-3-replica.pb"
    if not path.is_file():
        # imports tensorflow; only in the parent, before any essentia child
        from tools import tf_graphs
        path.parent.mkdir(parents=True, exist_ok=True)
        tf_graphs.write_graph(tf_graphs.vggish_graph(tf_graphs.random_weights(0)), str(path))
    return path


def onnx_of(graph: Path, input_name: str, output_name: str) -> tuple[Path, float | None]:
    """The graph converted by tf2onnx (in a child process); seconds it took, or None if cached."""
    stat = graph.stat()
    out = ROOT / "build" / "onnx" / f"{graph.stem}-{stat.st_size}-{int(stat.st_mtime)}.onnx"
    if out.is_file():
        return out, None
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--graphdef", str(graph),
                             "--inputs", f"{input_name}:0", "--outputs", f"{output_name}:0",
                             "--opset", "17", "--output", str(out) + ".tmp"],
                            capture_output=True, text=True, env=dict(os.environ, **QUIET))
    if result.returncode != 0:
        raise RuntimeError(f"tf2onnx failed on {graph}:\n{result.stderr[-3000:]}")
    os.replace(str(out) + ".tmp", out)
    return out, time.perf_counter() - start


# -- shared pipeline pieces (run inside workers) ----------------------------------------------
def patches_of(frames: np.ndarray) -> np.ndarray:
    """Essentia's patches (187 frames, hop 93, the last incomplete one discarded)."""
    starts = range(0, frames.shape[0] - PATCH + 1, HOP)
    return np.stack([frames[s:s + PATCH] for s in starts])


def librosa_logmel(audio: np.ndarray) -> np.ndarray:
    """musicnn's own front-end: ``[frames, 96]``."""
    import librosa

    mel = librosa.feature.melspectrogram(y=audio, sr=SR, hop_length=256, n_fft=512, n_mels=96).T
    return np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1)


def samplerate_load(path: str) -> np.ndarray:
    """Decode, average the channels, libsamplerate ``sinc_medium`` at Essentia's float32 ratio."""
    import samplerate
    import soundfile

    data, native = soundfile.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    ratio = float(np.float32(SR) / np.float32(native))
    return samplerate.resample(mono, ratio, "sinc_medium").astype(np.float32)


def runner(framework: str, graph: str, onnx: str, input_name: str, output_name: str,
           overlap_hop: int = 0):
    """``run(x [b, t, mel]) -> [b, out]`` for one framework, as its users call it
    (jaxmir told that the patches are ``overlap_hop`` frames apart, when > 0)."""
    if framework == "jaxmir":
        import jax
        import jaxmir

        model = jaxmir.load(graph)
        name = model.spec.output_name
        return lambda x: np.asarray(jax.block_until_ready(
            model.apply(x, [name], overlap_hop=overlap_hop)[name]))
    if framework == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        return lambda x: session.run(None, {feed: x})[0]
    if framework == "tensorflow":
        import tensorflow as tf

        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(Path(graph).read_bytes())
        tf_graph = tf.Graph()
        with tf_graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        session = tf.compat.v1.Session(graph=tf_graph)
        return lambda x: session.run(f"{output_name}:0", {f"{input_name}:0": x})
    if framework == "essentia":
        import essentia
        import essentia.standard as es

        predict = es.TensorflowPredict(graphFilename=graph, inputs=[input_name],
                                       outputs=[output_name])

        def run(x):
            pool = essentia.Pool()
            pool.set(input_name, x[:, None])
            return predict(pool)[output_name].reshape(len(x), -1)
        return run
    raise ValueError(framework)


# -- workers: each prints one JSON line -------------------------------------------------------
def model_input(cfg: dict, batch: int) -> np.ndarray:
    """``[batch, *shape]`` float32: random patches, or the first ``batch`` consecutive ones."""
    if cfg.get("frames"):
        frames = np.load(cfg["frames"], allow_pickle=False)
        return np.stack([frames[p * HOP:p * HOP + PATCH] for p in range(batch)])
    return np.random.default_rng(batch).standard_normal((batch, *cfg["shape"])).astype(np.float32)


def work_model(framework: str, cfg: dict) -> dict:
    hop = HOP if cfg.get("frames") and framework == "jaxmir" else 0
    run = runner(framework, cfg["graph"], cfg["onnx"], cfg["input"], cfg["output"], hop)
    # the same patches without sharing: what sharing changes in the outputs
    unshared = runner(framework, cfg["graph"], cfg["onnx"], cfg["input"], cfg["output"]) if hop \
        else None
    result = {}
    for batch in cfg["batches"]:
        x = model_input(cfg, batch)
        start = time.perf_counter()
        out = run(x)
        first = time.perf_counter() - start
        times = samples(lambda: run(x), repeats=cfg["repeats"], min_seconds=1.0,
                        max_seconds=cfg["max_s"], warmup=1)
        result[str(batch)] = {"patches_per_s": [batch / t for t in times], "first_s": first}
        if unshared is not None:
            result[str(batch)]["vs_unshared"] = float(np.max(np.abs(out - unshared(x))))
    return result


def work_frontend(framework: str, cfg: dict) -> dict:
    audio = np.load(cfg["audio"], allow_pickle=False)
    if framework == "jaxmir":
        from jaxmir import frontends

        fn = lambda: np.asarray(frontends.musicnn_logmel(audio))  # noqa: E731
    elif framework == "librosa":
        fn = lambda: librosa_logmel(audio)  # noqa: E731
    else:
        import essentia.standard as es

        mel = es.TensorflowInputMusiCNN()

        def fn():
            return np.array([mel(frame)
                             for frame in es.FrameGenerator(audio, frameSize=512, hopSize=256)])
    start = time.perf_counter()
    frames = fn()
    first = time.perf_counter() - start
    # calls of 0.02-0.2 s: at least 2 s of them, so that a median is not one scheduling hiccup
    times = samples(fn, repeats=cfg["repeats"], min_seconds=2.0, max_seconds=cfg["max_s"], warmup=1)
    np.save(cfg["out"], frames.astype(np.float32))
    return {"seconds": times, "first_s": first, "frames": int(frames.shape[0])}


def tags_function(pipeline: str, cfg: dict):
    """``tag(path) -> (mean tags [50], {stage: seconds})`` for one pipeline."""
    if pipeline == "essentia":
        import essentia.standard as es

        predict = es.TensorflowPredictMusiCNN(graphFilename=cfg["graph"], output="model/Sigmoid")

        def tag(path):
            t0 = time.perf_counter()
            audio = es.MonoLoader(filename=path, sampleRate=SR)()
            t1 = time.perf_counter()
            tags = predict(audio).mean(axis=0)
            return tags, {"load": t1 - t0, "features+model": time.perf_counter() - t1}
        return tag
    if pipeline == "jaxmir stream":
        import jaxmir
        from jaxmir.stream import file_stream

        model = jaxmir.load(cfg["graph"])

        def tag(path):
            t0 = time.perf_counter()
            with file_stream(model, path, "predictions") as (_, found):
                tags = np.concatenate([patches.values["predictions"] for patches in found]).mean(0)
            return tags, {"load": math.nan, "features+model": time.perf_counter() - t0}
        return tag
    if pipeline.startswith("jaxmir"):
        import jaxmir

        model = jaxmir.load(cfg["graph"])
        resampler = "samplerate" if pipeline.endswith("samplerate") else "essentia"

        def tag(path):
            t0 = time.perf_counter()
            audio = jaxmir.load_audio(path, resampler=resampler)
            t1 = time.perf_counter()
            tags = np.asarray(model.predict(audio, SR)).mean(axis=0)
            return tags, {"load": t1 - t0, "features+model": time.perf_counter() - t1}
        return tag
    run = runner(pipeline.split("+")[1], cfg["graph"], cfg["onnx"], "model/Placeholder",
                 "model/Sigmoid")

    def tag(path):
        t0 = time.perf_counter()
        audio = samplerate_load(path)
        t1 = time.perf_counter()
        patches = patches_of(librosa_logmel(audio))
        t2 = time.perf_counter()
        tags = np.concatenate([run(patches[i:i + BATCH])
                               for i in range(0, len(patches), BATCH)]).mean(0)
        t3 = time.perf_counter()
        return tags, {"load": t1 - t0, "features+model": t3 - t1, "front-end": t2 - t1,
                      "model": t3 - t2}
    return tag


def work_tags(pipeline: str, cfg: dict) -> dict:
    tag = tags_function(pipeline, cfg)
    start = time.perf_counter()
    tags, _ = tag(cfg["track"])
    first = time.perf_counter() - start
    runs = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        _, stages = tag(cfg["track"])
        runs.append(dict(stages, total=time.perf_counter() - t0))
    np.save(cfg["out"], np.asarray(tags, np.float32))
    return {"first_s": first, "runs": runs}


def essentia_tag_command(graph: str, files: list[str]) -> int:
    """Essentia's way of tagging as a script (cold start row): load, predict, average, print top
    3."""
    import essentia.standard as es

    predict = es.TensorflowPredictMusiCNN(graphFilename=graph, output="model/Sigmoid")
    for path in files:
        tags = predict(es.MonoLoader(filename=path, sampleRate=SR)()).mean(axis=0)
        print(path, np.argsort(-tags)[:3].tolist())
    return 0


WORKERS = {"model": work_model, "frontend": work_frontend, "tags": work_tags}


# -- the parent: spawn, time, tabulate --------------------------------------------------------
def spawn(command: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run a command; (stdout, wall seconds, the child's own peak RSS in MiB).

    The peak is the child's VmHWM, polled every 20 ms until it exits (ru_maxrss from wait4
    would report the parent's peak when that is larger: Linux carries it across fork + exec).
    """
    env = dict(os.environ, **QUIET, **(env or {}))
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=ROOT)
        peak = 0.0
        while True:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, peak_rss_mb(child.pid) or 0.0)
            time.sleep(0.02)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{stderr[-3000:]}")
    return stdout, wall, peak


def check_peers() -> None:
    """Exit with a clear message, before anything is timed, when a peer is missing: each table
    row needs its peer, and the report is printed at the end."""
    import importlib.metadata as md

    missing = []
    for package in BENCH_DEPS:
        try:
            md.version(package)
        except md.PackageNotFoundError:
            missing.append(package)
    for module in ("essentia.standard", "tensorflow", "onnxruntime"):  # each in its own process
        if subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True).returncode:
            missing.append(f"{module} (installed, but its import fails)")
    if missing:
        raise SystemExit(f"bench_peers.py runs every peer; missing: {', '.join(missing)} "
                         "(pip install 'jaxmir[bench]': essentia-tensorflow installs on Linux "
                         "x86-64, CPython 3.11)")


def worker(kind: str, name: str, cfg: dict) -> dict:
    stdout, wall, rss = spawn([sys.executable, __file__, "--worker", kind, name, json.dumps(cfg)])
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(peak_mb=max(rss, result.get("peak_self_mb", 0.0)), wall_s=wall)
    return result


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x"


def med(values: list[float]) -> float:
    return statistics.median(values)


def table_models(args, folder: Path, log) -> list[str]:
    lines = ["### Model only (warm patches/s; batch = patches per call)", "",
             "| model | patches | batch | " + " | ".join(FRAMEWORKS)
             + " | jaxmir vs ORT | vs TF | vs Essentia |",
             "|---|---|---|" + "---|" * (len(FRAMEWORKS) + 3)]
    extra = []
    # one log-mel-sized array the consecutive patches share
    frames = folder / "consecutive-frames.npy"
    longest = (max(args.batches) - 1) * HOP + PATCH
    np.save(frames, np.random.default_rng(7).standard_normal((longest, 96)).astype(np.float32))
    for name in args.models:
        input_name, output_name, shape = MODELS[name]
        graph = graphs_dir() / "msd-musicnn-1.pb" if name == "msd-musicnn" else vggish_graph()
        onnx, took = onnx_of(graph, input_name, output_name)
        if took is not None:
            extra.append(f"tf2onnx converted {graph.name} in {took:.1f} s")
        inputs = {"random": ""}
        if name == "msd-musicnn" and "consecutive" in args.inputs:
            inputs["consecutive, hop 93"] = str(frames)
        if "random" not in args.inputs:
            del inputs["random"]
        for kind, frames_path in inputs.items():
            cfg = dict(graph=str(graph), onnx=str(onnx), input=input_name, output=output_name,
                       shape=shape, batches=args.batches, repeats=args.repeats, max_s=args.max_s,
                       frames=frames_path)
            results = {}
            for framework in FRAMEWORKS:
                results[framework] = worker("model", framework, cfg)
                log(f"  model {name} ({kind}) {framework}: peak "
                    f"{results[framework]['peak_mb']:.0f} MiB, "
                    f"{results[framework]['wall_s']:.0f} s in all")
            for batch in args.batches:
                cells = [spread(results[f][str(batch)]["patches_per_s"], digits=1)
                         for f in FRAMEWORKS]
                ours = med(results["jaxmir"][str(batch)]["patches_per_s"])
                ratios = [ratio(ours, med(results[f][str(batch)]["patches_per_s"]))
                          for f in FRAMEWORKS[1:]]
                lines.append(f"| {name} | {kind} | {batch} | " + " | ".join(cells) + " | "
                             + " | ".join(ratios) + " |")
            extra.append(f"{name} ({kind}) peak RSS MiB: " + ", ".join(
                f"{f} {results[f]['peak_mb']:.0f}" for f in FRAMEWORKS)
                + "; jaxmir first call (compile) s: "
                + ", ".join(f"b{b} {results['jaxmir'][str(b)]['first_s']:.1f}"
                            for b in args.batches))
            if frames_path:
                extra.append(f"{name} ({kind}): jaxmir's outputs with sharing vs without, max abs "
                             "difference: " + ", ".join(
                                 f"b{b} {results['jaxmir'][str(b)]['vs_unshared']:.1e}"
                                 for b in args.batches))
    return lines + [""] + [f"- {line}" for line in extra]


def table_frontend(args, folder: Path, wav: Path, log) -> list[str]:
    audio = samplerate_load(str(wav))
    np.save(folder / "audio16k.npy", audio)
    results = {}
    for framework in ("jaxmir", "librosa", "essentia"):
        cfg = dict(audio=str(folder / "audio16k.npy"), repeats=args.repeats, max_s=args.max_s,
                   out=str(folder / f"frontend-{framework}.npy"))
        results[framework] = worker("frontend", framework, cfg)
        log(f"  front-end {framework}: {spread(results[framework]['seconds'], digits=3)} s")
    reference = np.load(folder / "frontend-essentia.npy")
    lines = [f"### Front-end: {len(audio) / SR:.0f} s of 16-kHz "
             "audio -> log-mel [frames, 96] (warm seconds)",
             "",
             "| front-end | seconds | jaxmir faster by | frames "
             "| max abs diff vs Essentia | peak RSS MiB |", "|---|---|---|---|---|---|"]
    ours = med(results["jaxmir"]["seconds"])
    for framework, label in (("jaxmir", "jaxmir frontends.musicnn_logmel"),
                             ("librosa", "librosa (musicnn's settings)"),
                             ("essentia", "Essentia TensorflowInputMusiCNN, per frame")):
        frames = np.load(folder / f"frontend-{framework}.npy")
        n = min(len(frames), len(reference))
        diff = float(np.abs(frames[:n] - reference[:n]).max())
        lines.append(f"| {label} | {spread(results[framework]['seconds'], digits=3)} "
                     f"| {ratio(med(results[framework]['seconds']), ours)} | "
                     f"{len(frames)} | {diff:.2g} | {results[framework]['peak_mb']:.0f} |")
    lines.append("")
    lines.append("- librosa centres its frames differently from Essentia and rounds to float16, so "
                 "its diff is a different front-end, not an error; first-call (compile) seconds: " +
                 ", ".join(f"{f} {r['first_s']:.2f}" for f, r in results.items()))
    return lines


def table_tags(args, folder: Path, tracks: dict[str, Path], log) -> tuple[list[str], float]:
    graph = graphs_dir() / "msd-musicnn-1.pb"
    onnx, _ = onnx_of(graph, "model/Placeholder", "model/Sigmoid")
    jaxmir_warm = 0.0
    results = {}
    for kind, track in tracks.items():
        pipelines = PIPELINES if kind == "wav" else ("essentia", "jaxmir", "jaxmir stream")
        for pipeline in pipelines:
            out = folder / f"tags-{pipeline.replace(' ', '_')}-{kind}.npy"
            cfg = dict(graph=str(graph), onnx=str(onnx), track=str(track), repeats=args.repeats,
                       out=str(out))
            results[pipeline, kind] = r = worker("tags", pipeline, cfg)
            r["tags"] = np.load(out)
            log(f"  tags {pipeline} {kind}: {spread([x['total'] for x in r['runs']])} s")
    lines = [f"### File -> tags averaged over patches ({args.seconds:g}-s "
             "44.1-kHz stereo track, warm, seconds)", "",
             "| pipeline | file | total | load (decode+resample) | features+model | "
             "jaxmir faster by | max abs diff vs Essentia | first call s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (pipeline, kind), r in results.items():
        totals = [x["total"] for x in r["runs"]]
        ours = med([x["total"] for x in results["jaxmir", kind]["runs"]])
        if pipeline == "jaxmir" and kind == "wav":
            jaxmir_warm = med(totals)
        diff = float(np.abs(r["tags"] - results["essentia", kind]["tags"]).max())
        load = [x["load"] for x in r["runs"]]
        stages = ("overlapped", spread(totals)) if math.isnan(load[0]) else \
            (spread(load), spread([x["features+model"] for x in r["runs"]]))
        lines.append(f"| {pipeline} | {kind} | {spread(totals)} | {stages[0]} | {stages[1]} | "
                     f"{ratio(med(totals), ours)} | "
                     f"{diff:.2g} | {r['first_s']:.2f} | {r['peak_mb']:.0f} |")
    split = [f"{p}: front-end {spread([x['front-end'] for x in results[p, 'wav']['runs']])}, model "
             f"{spread([x['model'] for x in results[p, 'wav']['runs']])}"
             for p in PIPELINES if "+" in p]
    lines += ["", "- librosa pipelines split: " + "; ".join(split)]
    def total(pipeline: str, kind: str) -> float:
        return med([x["total"] for x in results[pipeline, kind]["runs"]])

    lines += ["- Essentia's time over jaxmir stream's (`jaxmir tag FILE`): " + ", ".join(
        f"{kind} {ratio(total('essentia', kind), total('jaxmir stream', kind))}"
        for kind in tracks)]
    return lines, jaxmir_warm


def table_cli(args, wav: Path, warm: float, log) -> list[str]:
    graph = graphs_dir() / "msd-musicnn-1.pb"
    jaxmir_cmd = [sys.executable, "-m", "jaxmir", "tag", str(wav), "--no-progress"]
    essentia_cmd = [sys.executable, __file__, "--essentia-tag", str(graph), str(wav)]
    with tempfile.TemporaryDirectory() as cache:
        env = {"JAXMIR_CACHE_DIR": cache, "JAXMIR_NO_CACHE": "0"}
        _, first, first_mb = spawn(jaxmir_cmd, env)
        later = [spawn(jaxmir_cmd, env) for _ in range(args.cli_repeats)]
    theirs = [spawn(essentia_cmd) for _ in range(args.cli_repeats)]
    log(f"  cli: jaxmir first {first:.1f} s, later {spread([x[1] for x in later])}, "
        f"essentia {spread([x[1] for x in theirs])}")
    essentia_s = med([x[1] for x in theirs])
    lines = [f"### Cold start: one command tags the {args.seconds:g}-s WAV (new process; seconds)",
             "", "| command | seconds | jaxmir faster by | peak RSS MiB |", "|---|---|---|---|",
             "| Essentia script (import, MonoLoader, TensorflowPredictMusiCNN, mean) | "
             f"{spread([x[1] for x in theirs])} | | {max(x[2] for x in theirs):.0f} |",
             "| `jaxmir tag`, first run (empty JAXMIR_CACHE_DIR) | "
             f"{first:.2f} | {ratio(essentia_s, first)} | {first_mb:.0f} |",
             f"| `jaxmir tag`, later runs (cached programs) | {spread([x[1] for x in later])} | "
             f"{ratio(essentia_s, med([x[1] for x in later]))} | {max(x[2] for x in later):.0f} |"]
    if warm:
        lines += ["",
                  f"- later runs = {med([x[1] for x in later]) / warm:.2f}x "
                  "jaxmir's warm file -> tags time"]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=207.0, help="length of the test track")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell")
    parser.add_argument("--cli-repeats", type=int, default=2)
    parser.add_argument("--max-s", type=float, default=5.0, help="time cap per cell, seconds")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--inputs", nargs="*", default=["random", "consecutive"],
                        choices=["random", "consecutive"], help="model-only inputs")
    parser.add_argument("--only", nargs="*", default=["model", "frontend", "tags", "cli"],
                        choices=["model", "frontend", "tags", "cli"])
    parser.add_argument("--no-mp3", action="store_true", help="skip the MP3 rows of the tags table")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--essentia-tag", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, name, cfg = args.worker
        result = WORKERS[kind](name, json.loads(cfg))
        print(json.dumps(dict(result, peak_self_mb=peak_rss_mb())))
        return 0
    if args.essentia_tag:
        return essentia_tag_command(args.essentia_tag[0], args.essentia_tag[1:])

    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    import importlib.metadata as md

    check_peers()  # every peer, before any is timed: a missing one lost the whole report
    versions = ", ".join(f"{p} {md.version(p)}"
                         for p in ("jax", "onnxruntime", "tensorflow-cpu", "essentia-tensorflow",
                                   "librosa", "samplerate"))
    cpu = cpu_description()
    out = [f"## jaxmir vs peers — {cpu_line()}", "",
           f"- {versions}; load average at start {os.getloadavg()[0]:.2f}",
           "- cells: median (min-max) of the repeats; 'jaxmir faster by' = peer time / jaxmir time "
           "(or jaxmir rate / peer rate), below 1 means the peer is faster", ""]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        graphs_dir()
        if "audioset-vggish" in args.models and "model" in args.only:
            vggish_graph()
        wav, mp3 = write_track(folder, args.seconds)
        log(f"track written: {wav.stat().st_size / 1e6:.0f} "
            f"MB WAV, {mp3.stat().st_size / 1e6:.1f} MB MP3")
        warm = 0.0
        sections = []
        if "model" in args.only:
            sections.append(table_models(args, folder, log))
        if "frontend" in args.only:
            sections.append(table_frontend(args, folder, wav, log))
        if "tags" in args.only:
            tracks = {"wav": wav} if args.no_mp3 else {"wav": wav, "mp3": mp3}
            lines, warm = table_tags(args, folder, tracks, log)
            sections.append(lines)
        if "cli" in args.only:
            sections.append(table_cli(args, wav, warm, log))
    for lines in sections:
        out += lines + [""]
    out.append(f"- whole run {time.perf_counter() - started:.0f} s; load average at the end "
               f"{os.getloadavg()[0]:.2f}; CPU flags {cpu['flags']}")
    text = "\n".join(out)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
