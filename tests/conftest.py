"""Shared test helpers: the ../shared fixtures, TensorFlow, and reference graphs built once per
session."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fixtures"
IN_CI = os.environ.get("CI") == "true"
SHIPPED = ("msd-musicnn", "mtt-musicnn", "msd-vgg", "mtt-vgg")

# The same model's outputs from another batching of its patches (a collection's packed calls, a
# stream's, against Model.predict's): the same arithmetic in another float32 summation order.
# Measured: 1.5e-7 on tags (probabilities in [0, 1]), 7e-7 of the largest embedding (~12). The
# bounds leave room for another CPU's rounding (AVX2 and AVX-512 sum in other orders) and stay
# far below any difference a wrong patch would make (~1e-2).
TAGS_ATOL = 1e-6
EMBEDDINGS_RTOL = 3e-6
# bfloat16 keeps 8 bits of mantissa (relative steps of 2**-8 ~ 4e-3); the README measures 7.4e-3
# at most on tags on a CPU and 2.6e-2 (of the largest output) on an H200, so 5e-2 bounds a working
# bf16 run while a run that stayed float32 (< 1e-6 away) or another model (differences ~1e-1)
# fails one side or the other.
BF16_TAGS_ATOL = 5e-2
# Two programs computing the same bfloat16 model may round its float32 outputs to bfloat16 or not:
# XLA on a GPU keeps excess precision inside a fusion (xla_allow_excess_precision), so where one
# program's fusion ends at the output and the other's does not, probabilities in [0, 1] differ by
# up to one bfloat16 step at 1.0 (2**-8; an H200 measured 8.6e-4). On a CPU they are equal.
BF16_STEP = 2.0 ** -8

# CPU flags as /proc/cpuinfo lists them, for jaxmir.models.compiler.cpu_flags in tests: a Zen 3's
# (AVX2, no AVX-512: ConvNets compile without YNNPACK, MusiCNN's 7x67 branch is a 1-D
# convolution) and a Zen 4's (XLA's defaults).
AVX2_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_FLAGS = AVX2_FLAGS | {"avx512f", "avx512bw", "avx512vl"}

# The suite runs in several worker processes (pytest-xdist); on a GPU, JAX's default of taking
# 75% of its memory in each process would leave the others none.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def child_env(**extra: str) -> dict:
    """The environment for a jaxmir subprocess: this repository first on ``PYTHONPATH``, then what
    this process was given (packages installed with ``pip --target``), and ``extra``."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def on_cpu(model):
    """``model`` with its variables on JAX's CPU device, where its programs run (the steps and
    options a CPU gets, on any machine)."""
    import jax  # after XLA_PYTHON_CLIENT_PREALLOCATE is set, above

    return dataclasses.replace(model,
                               variables=jax.device_put(model.variables, jax.devices("cpu")[0]))


def _missing(what: str):
    """Fail in CI (a missing prerequisite there is a defect), skip on a developer's machine."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: this must not be skipped)")
    pytest.skip(what)


def essentia_python() -> str:
    """The interpreter that imports essentia (this one, in a child process: it bundles its own
    TensorFlow); fails under CI=true when it cannot."""
    probe = subprocess.run([sys.executable, "-c", "import essentia.standard"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        _missing(f"essentia cannot be imported by {sys.executable}: {probe.stderr.strip()[-300:]}")
    return sys.executable


def shared_fixture(relative: str) -> Path:
    """A file under ../shared/fixtures; fails when CI=true and it is missing."""
    path = SHARED / relative
    if not path.exists():
        _missing(f"fixture {path} is missing")
    return path


def require(module: str):
    """Import a test-only dependency (tensorflow, librosa); fails when CI=true and absent."""
    try:
        return importlib.import_module(module)
    except ImportError:
        _missing(f"{module} is not installed")


def ffmpeg_frames(data: bytes) -> int | None:
    """The frames FFmpeg (through PyAV) decodes of an audio file's bytes; ``None`` where it finds
    no decoder for them."""
    import io

    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            return sum(frame.samples for frame in container.decode(audio=0))
    except av.error.DecoderNotFoundError:
        return None


def encoded_audio(container: str, codec: str, rate: int, options: dict | None = None,
                  samples: np.ndarray | None = None) -> bytes:
    """``samples`` (float32 mono; default two seconds of a 440-Hz tone) through FFmpeg's ``codec``
    in ``container``, in memory: the bytes of an encoded file."""
    import io

    import av

    if samples is None:
        samples = (0.3 * np.sin(np.arange(2 * rate) * 2 * np.pi * 440 / rate)).astype(np.float32)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container, options=options or {}) as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        for start in range(0, samples.shape[0], 1152):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1152], format="fltp",
                                               layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def run_tf(graph_path, feeds: dict, outputs: list[str], optimize: bool = True) -> list[np.ndarray]:
    """Run a frozen graph with TensorFlow, as Essentia runs it (only the given inputs fed);
    ``optimize=False``: without Grappler's rewriting (:func:`tools.tf_graphs.run_graph`)."""
    require("tensorflow")
    from tools.tf_graphs import run_graph
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(graph_path).read_bytes())
    return run_graph(graph_def, feeds, outputs, optimize)


def assert_parity(name: str, reference: np.ndarray, actual, probabilities: bool = False) -> float:
    """Probabilities within 1e-5 absolute; anything else within 1e-4 of its largest magnitude."""
    actual = np.asarray(actual)
    assert actual.shape == reference.shape, f"{name}: shape {actual.shape} != TF {reference.shape}"
    error = float(np.max(np.abs(actual - reference))) if reference.size else 0.0
    bound = 1e-5 if probabilities else 1e-4 * max(float(np.max(np.abs(reference))), 1e-12)
    assert error <= bound, f"{name}: max abs error {error:.3g} > {bound:.3g}"
    return error


def compiled_programs(caplog, run) -> tuple[object, list[str]]:
    """``run()``'s result and the programs JAX compiled while it ran (``jax.log_compiles``'
    "Compiling jit(name) ..." lines, one per program compiled)."""
    import logging

    import jax

    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        result = run()
    return result, [record.getMessage().split()[1] for record in caplog.records
                    if record.getMessage().startswith("Compiling ")]


def traced_peak(run) -> tuple[object, int]:
    """``(run(), bytes)``: its result and the peak of the memory Python and NumPy allocated
    meanwhile (tracemalloc's; Arrow's and XLA's buffers are not counted)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(params=["avx2", "avx512"])
def cpu(request, monkeypatch):
    """The CPU a model's programs are built for (:mod:`jaxmir.models.compiler`): a Zen 3's flags
    (ConvNets compile without YNNPACK, MusiCNN's 7x67 branch runs as a 1-D convolution) or a
    Zen 4's (XLA's defaults, the 2-D convolution)."""
    from jaxmir.models import compiler

    monkeypatch.setattr(compiler, "cpu_flags", lambda: AVX512_FLAGS if request.param == "avx512"
                        else AVX2_FLAGS)
    return request.param


@pytest.fixture(scope="session")
def cli_cache(tmp_path_factory) -> Path:
    """One persistent compilation cache for the session's ``python -m jaxmir`` subprocesses, so
    that a program they share compiles once rather than once per test (the cache's own
    behaviour, cold and warm, is tested with private folders in test_cache.py and test_cli.py).
    Only for subprocesses: ``jax.config`` is process-wide."""
    return tmp_path_factory.mktemp("compilation-cache")


@pytest.fixture(scope="session")
def musicnn_graphs(tmp_path_factory) -> Path:
    """Essentia-shaped and training graphs of the four musicnn checkpoints, built by the tool."""
    require("tensorflow")
    from tools import convert_musicnn  # fetches the musicnn wheel from PyPI if not installed

    out = tmp_path_factory.mktemp("graphs")
    convert_musicnn.main(["--graphs", str(out), "--training-graphs", "--models", *SHIPPED])
    return out


@pytest.fixture
def patches_187():
    return np.random.default_rng(0).standard_normal((7, 187, 96)).astype(np.float32)
