"""jaxmir.stream: chunk-by-chunk inference equal to offline predict; live input on the command line.

The reference is ``model.predict`` of the whole signal, and for the resampling
stage the one-shot resamplers (``samplerate.resample``, ``soxr.resample``
through :func:`jaxmir.audio.prepare_audio`).
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import wave

import jax
import numpy as np
import pytest
import soundfile

import jaxmir
from conftest import (BF16_STEP, BF16_TAGS_ATOL, ROOT, child_env, encoded_audio, on_cpu, require,
                      shared_fixture)
from jaxmir import pipeline
from jaxmir import decode
from jaxmir import models
from jaxmir import stream as streaming
from jaxmir.audio import Resampling, prepare_audio
from jaxmir.errors import AudioError, InputError
from jaxmir.models import runner

# Single-patch and batched (shared timbral) convolutions sum in other orders: ~1e-7 on
# probabilities (measured <= 1.2e-7); 1e-6 is the contract.
TOL = 1e-6


@pytest.fixture(autouse=True)
def cached(monkeypatch, cli_cache):
    """Every command-line subprocess here uses the session's compilation cache (the
    in-process tests never switch a cache on: only ``jaxmir.cli.main`` does)."""
    monkeypatch.setenv("JAXMIR_CACHE_DIR", str(cli_cache))
    monkeypatch.delenv("JAXMIR_NO_CACHE", raising=False)


@pytest.fixture(scope="module")
def musicnn():
    return jaxmir.load("msd-musicnn")


def signal_at(rate: int, seconds: float, channels: int = 1, seed: int = 0,
              dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    both = np.stack([left, 0.2 * np.sign(np.sin(2 * np.pi * 220 * t))], axis=1)[:, :channels]
    out = both if channels > 1 else both[:, 0]
    if np.issubdtype(dtype, np.integer):
        return (out * 32767).astype(dtype)
    return out.astype(dtype)


def random_chunks(audio: np.ndarray, rate: int, rng) -> list[np.ndarray]:
    """Chunks from 1 sample to 30 s, log-uniformly, a few single samples among them."""
    chunks, i = [], 0
    while i < audio.shape[0]:
        size = 1 if rng.random() < 0.15 else int(np.exp(rng.uniform(0, np.log(rate * 30))))
        chunks.append(audio[i:i + size])
        i += size
    return chunks


def run_stream(model, audio, rate, chunks, **options):
    stream = model.stream(rate, **options)
    parts = [stream.push(chunk) for chunk in chunks] + [stream.close()]
    return stream, parts


def joined(parts, name=None):
    if name is None:
        return np.concatenate(parts)
    return np.concatenate([part[name] for part in parts])


@pytest.mark.parametrize("rate,channels", [(16000, 1), (22050, 2), (44100, 1), (48000, 2)])
def test_random_chunks_equal_predict_musicnn(musicnn, rate, channels):
    audio = signal_at(rate, 7.3, channels, seed=rate)
    want = musicnn.predict(audio, rate)
    rng = np.random.default_rng(rate + channels)
    stream, parts = run_stream(musicnn, audio, rate, random_chunks(audio, rate, rng))
    got = joined(parts)
    assert got.shape == want.shape == (3, 50)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    np.testing.assert_allclose(stream.times, 93 * 0.016 * np.arange(3))
    assert all(p.shape[1:] == (50,) for p in parts)


def test_one_sample_at_a_time_and_int16(musicnn):
    audio = signal_at(16000, 3.1, 2, seed=1, dtype=np.int16)  # 1 patch
    want = musicnn.predict(audio, 16000)
    stream, parts = run_stream(musicnn, audio, 16000,
                               [audio[i:i + 1] for i in range(audio.shape[0])])
    np.testing.assert_allclose(joined(parts), want, rtol=0, atol=TOL)
    # the patch comes out with the chunk holding its last sample, not at close
    assert parts[-1].shape == (0, 50) and sum(p.shape[0] for p in parts[:-1]) == 1


@pytest.mark.parametrize("which", ["msd-vgg", "vggish"])
def test_random_chunks_equal_predict_vgg_and_vggish(which):
    model = jaxmir.load("msd-vgg") if which == "msd-vgg" else \
        jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    rate = 44100
    audio = signal_at(rate, 4.0 if which == "vggish" else 6.5, 2, seed=3)
    outputs = ["predictions", "embeddings"] if which == "vggish" else None
    want = model.predict(audio, rate, output=outputs)
    _, parts = run_stream(model, audio, rate, random_chunks(audio, rate, np.random.default_rng(4)),
                          output=outputs)
    if outputs is None:
        np.testing.assert_allclose(joined(parts), want, rtol=0, atol=TOL)
    else:
        for name in outputs:
            scale = max(1.0, float(np.abs(want[name]).max()))
            np.testing.assert_allclose(joined(parts, name), want[name], rtol=0, atol=TOL * scale)


@pytest.mark.parametrize("options", [dict(last_patch="repeat"), dict(patch_hop=0),
                                     dict(patch_hop=40, last_patch="repeat"),
                                     dict(resampler="soxr")])
def test_patch_rules_and_soxr(musicnn, options):
    rate = 22050
    audio = signal_at(rate, 5.2, 1, seed=5)
    want = pipeline.predict(musicnn, audio, rate, **options)  # Model.predict has no resampler
    stream, parts = run_stream(musicnn, audio, rate,
                               random_chunks(audio, rate, np.random.default_rng(6)),
                               **options)
    got = joined(parts)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    assert len(stream.times) == got.shape[0] == stream.n_patches


def test_calls_of_nine_patches_equal_predict(musicnn):
    """A call of 9 patches runs as a step of 8 then a step of 1: the single patch shares no rows
    with the step before, so the overlap rows that step held must not reach the next call (a
    stale carry moved tags by 0.039)."""
    audio = signal_at(16000, 30.0, seed=11)  # 19 patches: calls of 9, 9 and 1
    stream = streaming.Stream(musicnn, 16000, "predictions", batch=9, eager=False)
    parts = [stream.push(chunk) for chunk in np.array_split(audio, 3)] + [stream.close()]
    want = musicnn.predict(audio, 16000)
    assert want.shape[0] == 19
    np.testing.assert_allclose(np.concatenate(parts), want, rtol=0, atol=TOL)


@pytest.mark.parametrize("options", [{}, {"last_patch": "repeat", "patch_hop": 50}])
def test_patch_starts_are_those_returned_and_take_no_memory_per_patch(musicnn, options):
    """``stream.times`` was a list that grew by a float a patch for as long as a stream ran
    (~2 MB a day of a live stream, which the command line never read)."""
    audio = signal_at(16000, 9.1, seed=5)
    stream = musicnn.stream(16000, **options)
    parts = [stream.push_patches(chunk) for chunk in np.array_split(audio, 7)]
    parts.append(stream.close_patches())
    starts = np.concatenate([part.start for part in parts])
    assert list(stream.times) == starts.tolist() and len(stream.times) == stream.n_patches
    assert stream.times[-1] == starts[-1] and stream.times[1:3] == starts[1:3].tolist()
    held = [name for name, value in vars(stream).items()
            if isinstance(value, (list, tuple, np.ndarray)) and len(value) >= stream.n_patches]
    assert not held, held  # nothing kept a patch
    # read as the list it was: printed, copied, added, pickled (as a list, not the stream)
    import pickle

    want = starts.tolist()
    assert repr(stream.times) == repr(want) and stream.times.copy() == want
    assert stream.times + [1.0] == want + [1.0] and [1.0] + stream.times == [1.0] + want
    assert pickle.loads(pickle.dumps(stream.times)) == want
    assert len(pickle.dumps(stream.times)) < 100 + 10 * len(want)


def test_a_live_stream_holds_the_samples_of_one_patch_at_most(musicnn):
    """Memory bounded by a patch, not by the signal: after every push the stream holds no more
    samples than the window of one patch reads (48,128 for MusiCNN; a stream that kept the
    samples from the patch it had just run held a patch hop more, up to 71,936)."""
    audio = signal_at(16000, 31.0, seed=27)
    stream = musicnn.stream(16000)
    bound = streaming.Windowing.of(musicnn.frontend).length(musicnn.input_shape[0])
    held = []
    for i in range(0, audio.shape[0], 4000):
        stream.push(audio[i:i + 4000])
        arrays = [value for value in vars(stream).values() if isinstance(value, np.ndarray)]
        arrays += [item for value in vars(stream).values() if isinstance(value, list)
                   for item in value if isinstance(item, np.ndarray)]
        held.append(sum(array.size for array in arrays))
    assert stream.n_patches == 19 and max(held) <= bound == 48128, (max(held), bound)


def test_an_empty_chunk_neither_sets_nor_breaks_the_stream_s_format(musicnn):
    """``push(np.zeros(0))`` first fixed the stream at 1-D float64: stereo int16 chunks after it
    were refused ("the stream started with 1")."""
    audio = signal_at(22050, 4.0, 2, seed=8, dtype=np.int16)
    stream = musicnn.stream(22050)
    assert stream.push(np.zeros(0)).shape == (0, 50)
    parts = [stream.push(audio[:30000]), stream.push(np.zeros((0, 1), np.float32)),
             stream.push(audio[30000:]), stream.close()]
    np.testing.assert_allclose(np.concatenate(parts), musicnn.predict(audio, 22050), rtol=0,
                               atol=TOL)
    with pytest.raises(AudioError, match="has 3 channels; accepted: mono or stereo"):
        musicnn.stream(22050).push(np.zeros((0, 3)))


def test_a_zero_padded_patch_is_the_signal_s_frames_then_zero_rows():
    """A short signal's zero-padded patch against the model applied to make_patches of the whole
    signal's frames: its rows past the last frame are zeros, not frames of the silence after the
    signal (the same for MusiCNN, whose log-mel of silence is 0; not for VGGish's log(x + 0.01))."""
    from jaxmir.patches import make_patches

    model = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    audio = signal_at(16000, 0.5, seed=24)                          # 51 frames of 96
    frames = np.asarray(model.features(audio, 16000))
    patches = make_patches(frames, 96, model.frontend.patch_hop, pad="zero")
    want = np.asarray(model.apply(patches, "embeddings")["embeddings"])
    stream = model.stream(16000, "embeddings", pad="zero")
    got = np.concatenate([stream.push(audio[:3000]), stream.push(audio[3000:]), stream.close()])
    assert got.shape == want.shape == (1, 128)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL * max(1.0, float(np.abs(want).max())))


def test_no_patch_has_each_output_s_shape(musicnn):
    """The outputs of no patch, for several outputs of one model in turn: each its own shape
    (traced once per output, not once per model)."""
    audio = signal_at(16000, 3.0, seed=4)
    for name in ("predictions", "embeddings"):
        want = musicnn.predict(audio, 16000, output=name)
        assert musicnn.stream(16000, name).push(audio[:100]).shape == (0, *want.shape[1:])


def test_eager_takes_numpy_booleans_as_python_s(musicnn):
    """``eager=np.bool_(...)`` (a flag read from an array, a config) streams as the bool does:
    eagerly a patch as soon as it is complete, or not until a batch of 8 is."""
    audio = signal_at(16000, 4.0, seed=25)                          # 1 patch
    for flag in (True, False):
        want = musicnn.stream(16000, eager=flag).push(audio)
        assert want.shape == ((1, 50) if flag else (0, 50))
        np.testing.assert_array_equal(musicnn.stream(16000, eager=np.bool_(flag)).push(audio), want)


def test_short_signal_with_pad_and_without(musicnn):
    audio = signal_at(16000, 1.2, 1, seed=7)
    for pad in ("zero", "repeat"):
        stream = streaming.Stream(musicnn, 16000, pad=pad)
        parts = [stream.push(audio[:5000]), stream.push(audio[5000:]), stream.close()]
        np.testing.assert_allclose(joined(parts), musicnn.predict(audio, 16000, pad=pad), rtol=0,
                                   atol=TOL)
    # a live stream that ends too early returns nothing (predict raises, as Essentia returns
    # nothing)
    stream = musicnn.stream(16000)
    assert stream.push(audio).shape == (0, 50) and stream.close().shape == (0, 50)
    with pytest.raises(InputError, match="too short"):
        musicnn.predict(audio, 16000)


def test_the_last_patch_rule_at_its_edges(musicnn):
    """Against predict: a signal of exactly one patch's 187 frames gives that patch; pad applies
    to a signal shorter than a patch alone (a longer one gets no padded patch after its regular
    ones); ``"repeat"`` makes no last patch when no frame is left after the regular ones (374
    frames, patches 187 apart)."""
    cases = [(186 * 256, {}, 1), (64000, dict(pad="zero"), 1), (64000, dict(pad="repeat"), 1),
             (373 * 256, dict(patch_hop=0, last_patch="repeat"), 2)]
    for n_samples, options, n_patches in cases:
        audio = signal_at(16000, n_samples / 16000, seed=23)
        assert audio.shape[0] == n_samples
        stream = musicnn.stream(16000, **options)
        parts = [stream.push(audio[:7000]), stream.push(audio[7000:]), stream.close()]
        want = musicnn.predict(audio, 16000, **options)
        assert joined(parts).shape == want.shape == (n_patches, 50), (n_samples, options)
        np.testing.assert_allclose(joined(parts), want, rtol=0, atol=TOL)


@pytest.mark.parametrize("rate", [22050, 44100, 48000, 8000, 96000, 16000])
@pytest.mark.parametrize("resampler", ["essentia", "samplerate", "soxr", "essentia-q4"])
def test_resampling_stage_equals_one_shot(rate, resampler):
    # a sample short of 2.7 s: n * 16000 / rate is not whole when downsampling, where soxr's
    # stream ends a sample short of librosa's length, which close pads
    audio = signal_at(rate, 2.7, 1, seed=rate)[:-1]
    want = prepare_audio(audio, rate, resampler=resampler)
    stage = Resampling(rate, 16000, resampler)
    chunks = random_chunks(audio, rate, np.random.default_rng(rate))
    chunks.insert(1, audio[:0])  # an empty chunk
    buffer, pieces = np.empty(audio.shape, np.float32), []
    for chunk in chunks:  # one buffer reused for every chunk (at 16 kHz it was handed back)
        buffer[:len(chunk)] = chunk
        pieces.append(stage.push(buffer[:len(chunk)]))
        buffer[:] = 99.0
    got = np.concatenate(pieces + [stage.close()])
    # the same state machine as the one-shot call: identical samples and length
    np.testing.assert_array_equal(got, want)
    # a second close gave essentia-q4's last samples again, a push after it more samples
    assert stage.close().shape == (0,)
    with pytest.raises(AudioError, match="push after close: this Resampling is closed"):
        stage.push(audio[:100])


def _held_in(obj, method: str):
    """Make ``obj.method`` wait inside until released; ``(entered, release)`` events."""
    entered, release = threading.Event(), threading.Event()
    original = getattr(obj, method)

    def waiting(*args):
        entered.set()
        release.wait(60)
        return original(*args)
    setattr(obj, method, waiting)
    return entered, release


def test_a_stream_or_resampler_fed_from_two_threads_refuses_the_second_call(musicnn):
    """Two threads pushing one Stream interleaved its steps, the GIL released while a patch was
    computed: samples were lost or made twice (218,286 16-kHz samples for 192,000 pushed, a
    patch repeated and the next skipped), and a close during a push let that push give a patch
    after the last one, without a word. A second call while one runs is refused now."""
    from jaxmir.resample import SincResampler

    audio = signal_at(44100, 6.0, 1, seed=21)
    stream, given = musicnn.stream(44100), []
    entered, release = _held_in(stream, "_take")
    worker = threading.Thread(target=lambda: given.append(stream.push(audio)))
    worker.start()
    try:
        assert entered.wait(60)
        for call in (lambda: stream.push(audio[:100]), stream.close,
                     lambda: list(stream.run([audio]))):
            with pytest.raises(InputError, match="a Stream .* takes one call at a time"):
                call()
    finally:
        release.set()
        worker.join(60)
    # as if the first push alone had come
    np.testing.assert_allclose(np.concatenate([*given, stream.close()]),
                               musicnn.predict(audio, 44100), atol=1e-6, rtol=0)
    paused = musicnn.stream(44100)  # a run paused between its steps holds nothing
    steps = paused.run([audio[:50000], audio[50000:]])
    first = next(steps)
    rest = np.concatenate([first.values["predictions"], paused.close()])
    np.testing.assert_allclose(rest, musicnn.predict(audio, 44100), atol=1e-6, rtol=0)
    resampler = SincResampler(44100, 16000, min_outputs=0)
    entered, release = _held_in(resampler, "_emit")
    worker = threading.Thread(target=resampler.push, args=(audio,))
    worker.start()
    try:
        assert entered.wait(60)
        for call in (lambda: resampler.push(audio[:100]), resampler.flush):
            with pytest.raises(InputError, match="a SincResampler takes one call at a time"):
                call()
    finally:
        release.set()
        worker.join(60)
    resampler.push(audio[:100])  # free again


def test_resample_step_trades_a_patch_lag_for_resampler_runs(musicnn, monkeypatch):
    """10-ms chunks at 44.1 kHz: with ``resample_step=0`` each patch comes with the chunk that
    makes its last sample final (the resampler runs at every chunk); by default the resampler
    runs about once per ``MIN_OUTPUTS`` outputs and a patch comes at most that many samples
    plus a chunk later. The outputs agree with ``predict`` either way."""
    from jaxmir.resample import MAX_MIN_OUTPUTS, MIN_OUTPUTS, convert
    from jaxmir.resample.positions import plan_of

    rate, chunk = 44100, 441
    audio = signal_at(rate, 7.0, 2, seed=21, dtype=np.int16)
    want = musicnn.predict(audio, rate)
    runs, emit = [], convert.SincResampler._emit
    monkeypatch.setattr(convert.SincResampler, "_emit",
                        lambda self, *args: runs.append(self) or emit(self, *args))

    def lags(**options) -> tuple[np.ndarray, np.ndarray]:
        """Each patch's lag: 16-kHz samples pushed when it came, less those it reads; its
        outputs."""
        stream = musicnn.stream(rate, **options)
        fe, first = stream.frontend, stream.windowing.first
        parts, lag = [], []
        for i in range(0, audio.shape[0], chunk):
            parts.append(stream.push(audio[i:i + chunk]))
            pushed = min(i + chunk, audio.shape[0]) * 16000 / rate
            for start in stream.times[len(lag):]:
                last_frame = round(start * 16000) // fe.hop_size + stream.patch_size - 1
                lag.append(pushed - (first + last_frame * fe.hop_size + fe.frame_size))
        parts.append(stream.close())
        return np.array(lag), np.concatenate(parts)

    prompt, at_once = lags(resample_step=0)
    runs_at_once, runs[:] = len(runs), []
    held, stepped = lags()
    for got in (at_once, stepped):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    assert prompt.shape == held.shape == (want.shape[0],)
    # final once the filter's right-hand taps are in: plan.taps + 1 input samples
    reach = (chunk + plan_of(rate, 16000, "sinc_medium").taps + 2) * 16000 / rate
    assert 0 <= prompt.min() and prompt.max() <= reach, prompt
    assert held.max() <= MIN_OUTPUTS + reach and held.max() > reach, held
    assert len(runs) <= audio.shape[0] * 16000 / rate / MIN_OUTPUTS + 2 < runs_at_once / 10
    with pytest.raises(InputError, match="resample_step -1 must be a whole number"):
        musicnn.stream(rate, resample_step=-1)
    with pytest.raises(InputError, match="resample_step 0.5 must be a whole number"):
        musicnn.stream(rate, resample_step=0.5)
    with pytest.raises(InputError, match=f"from 0 to {MAX_MIN_OUTPUTS}"):  # held a whole recording
        musicnn.stream(rate, resample_step=MAX_MIN_OUTPUTS + 1)
    musicnn.stream(rate, resample_step=MAX_MIN_OUTPUTS)
    for eager in ("no", 0, None):  # "no" streamed eagerly
        with pytest.raises(InputError, match=f"eager={eager!r}: expected True or False"):
            musicnn.stream(rate, eager=eager)


@pytest.mark.parametrize("resampler", ["samplerate", "soxr"])
def test_a_resample_step_is_refused_where_nothing_would_wait(musicnn, resampler):
    """libsamplerate and soxr run at every chunk: a step given with them is a contradiction,
    refused rather than silently ignored; without one they stream as before."""
    with pytest.raises(InputError,
                       match=f"resample_step applies to Essentia's converter.*{resampler}"):
        musicnn.stream(44100, resampler=resampler, resample_step=0)
    with pytest.raises(InputError, match="min_outputs applies"):
        Resampling(44100, 16000, resampler, min_outputs=2048)
    audio = signal_at(44100, 1.0, 1, seed=3)
    stage = Resampling(44100, 16000, resampler)
    got = np.concatenate([stage.push(audio[:20000]), stage.push(audio[20000:]), stage.close()])
    np.testing.assert_array_equal(got, prepare_audio(audio, 44100, resampler=resampler))
    run = cli("stream", "--rate", "44100", "--resampler", resampler, "--resample-step", "0", "-",
              stdin=b"")
    assert run.returncode == 2  # the command line is wrong
    assert f"--resample-step applies to Essentia's converter (--resampler essentia); " \
           f"--resampler {resampler} runs at every read" in run.stderr.decode()
    if resampler == "soxr":  # once is enough: a step the stream would wait for without end
        run = cli("stream", "--rate", "44100", "--resample-step", str(10 ** 12), "-", stdin=b"")
        assert run.returncode == 2
        assert f"--resample-step {10 ** 12} is more than 1048576 samples" in run.stderr.decode()
        run = cli("stream", "--rate", "44100", "--resample-step", "1048576", "-", stdin=b"")
        assert run.returncode != 2 and "is more than" not in run.stderr.decode()  # the bound


def test_a_file_named_to_stream_is_a_command_line_mistake(tmp_path):
    run = cli("stream", str(tmp_path / "song.wav"), stdin=b"")
    assert run.returncode == 2  # the command line is wrong, as for every other option
    assert "jaxmir stream reads standard input ('-'), not" in run.stderr.decode()


def test_large_chunks_do_not_lose_samples():
    """python-samplerate drops input libsamplerate could not take: the stage feeds it in steps."""
    rate = 32000
    audio = signal_at(rate, 12.0, 1, seed=9)
    want = prepare_audio(audio, rate)
    stage = Resampling(rate, 16000)
    sizes = [243, 149, 131236, 15445, 137, 26630, 75, 269, 160, 72, 264, 271, 226, 68592, 200000]
    parts, i = [], 0
    for size in sizes:
        parts.append(stage.push(audio[i:i + size]))
        i += size
    np.testing.assert_array_equal(np.concatenate(parts + [stage.close()]), want)


def test_no_recompilation_after_the_first_patch(musicnn):
    rate = 44100
    audio = signal_at(rate, 20.0, 2, seed=11)  # 12 patches
    stream = musicnn.stream(rate, output="model/dense/BiasAdd")
    rng = np.random.default_rng(12)
    chunks = random_chunks(audio, rate, rng)
    first = None
    for chunk in chunks:
        out = stream.push(chunk)
        if first is None and out.shape[0]:
            first = runner.compiled_programs()
    if first is None:
        first = runner.compiled_programs()
    stream.close()
    assert runner.compiled_programs() == first
    # the whole signal at once (batches of 8) and in small chunks (one by one): still no new program
    musicnn.predict(audio, rate, output="model/dense/BiasAdd")
    small = musicnn.stream(rate, output="model/dense/BiasAdd")
    for i in range(0, audio.shape[0], 4410):
        small.push(audio[i:i + 4410])
    small.close()
    assert runner.compiled_programs() == first


def test_a_run_takes_the_rows_it_shares_from_the_run_before(musicnn, monkeypatch):
    """A run of 8 patches that starts where the stream's run before ended takes the timbral rows
    the two share from that run's carry; a run after a padded one (a live stream's partial
    batch) computes its own. Either way the outputs are those of patches run one by one."""
    audio = signal_at(16000, 31.0, seed=21)                          # 19 patches
    valid: list = []
    run = streaming.audio_to_outputs

    def recording(*args):
        flags = [bool(leaf) for leaf in jax.tree_util.tree_leaves(args[-1]) if leaf.dtype == bool]
        if flags:
            valid.append(all(flags))
        return run(*args)

    monkeypatch.setattr(streaming, "audio_to_outputs", recording)
    plain = pipeline.predict(musicnn, audio, 16000, share_overlap=False)
    assert valid == []
    np.testing.assert_allclose(musicnn.predict(audio, 16000), plain, rtol=0, atol=1e-6)
    assert valid == [False, True, True]          # runs at patches 0, 8 and the padded tail at 16
    valid.clear()
    stream = musicnn.stream(16000)
    block = 6 * 93 * 256                                             # 6 patch hops per push
    pushed = np.concatenate([stream.push(audio[i:i + block])
                             for i in range(0, audio.shape[0], block)] + [stream.close()])
    np.testing.assert_allclose(pushed, plain, rtol=0, atol=1e-6)
    assert valid and valid[0] is False and not all(valid[1:])


def _pushed_after(musicnn, last_patches) -> tuple[list, np.ndarray]:
    """The 19-patch signal pushed live in pieces, each ending 10 samples past the last frame of
    a patch of ``last_patches``, then the rest: the pushes' outputs (the close's last), and
    ``predict``'s without overlap sharing, computed after them (its calls come after theirs)."""
    audio = signal_at(16000, 31.0, seed=22)
    cuts = [0, *((patch * 93 + 186) * 256 + 256 + 10 for patch in last_patches), audio.shape[0]]
    stream = musicnn.stream(16000)
    parts = [stream.push(audio[a:b]) for a, b in zip(cuts, cuts[1:])] + [stream.close()]
    return parts, pipeline.predict(musicnn, audio, 16000, share_overlap=False)


def test_a_padded_run_leaves_no_carry_for_a_later_run(musicnn):
    """A live stream's padded run (5 patches in a call of 8) left a carry for the run that would
    start 8 patches on; three single patches brought the stream there, and that run took rows
    computed from the zeros past the signal: patch 8 was 0.38 off (a tester's chunks)."""
    parts, plain = _pushed_after(musicnn, (4, 5, 6, 7))             # 5, 1, 1, 1, then 11 patches
    assert [p.shape[0] for p in parts[:4]] == [5, 1, 1, 1]
    np.testing.assert_allclose(joined(parts), plain, rtol=0, atol=1e-6)


def test_a_live_stream_runs_up_to_single_limit_patches_one_by_one(musicnn, monkeypatch):
    """A push that completes SINGLE_LIMIT patches runs them one by one (the single-patch
    program), one more goes in one padded call of 8: the limit is inclusive, as the module
    says ("more than SINGLE_LIMIT patches goes in batches")."""
    calls: list = []
    run = streaming.Stream._run
    monkeypatch.setattr(streaming.Stream, "_run",
                        lambda self, first, index, shared, patch=None, used=None:
                        calls.append(index.shape[0])
                        or run(self, first, index, shared, patch, used))
    limit = streaming.SINGLE_LIMIT
    parts, plain = _pushed_after(musicnn, (limit - 1, 2 * limit))   # limit, limit + 1, the rest
    assert [p.shape[0] for p in parts[:2]] == [limit, limit + 1]
    assert calls[:limit + 1] == [1] * limit + [8], calls
    np.testing.assert_allclose(joined(parts), plain, rtol=0, atol=1e-6)


def test_only_a_module_that_shares_overlap_is_traced_for_its_first_carry(musicnn, monkeypatch):
    """A first call's carry comes from an abstract trace of the model (~0.15 s on a CPU); the
    modules that share no overlap (the single patches at a file's end, VGG, VGGish) carry
    nothing and are not traced for it."""
    from jaxmir.models import shares_overlap, with_overlap_hop

    traced = []
    empty = streaming.empty_carry
    monkeypatch.setattr(streaming, "empty_carry", lambda module, *rest: traced.append(module)
                        or empty(module, *rest))
    monkeypatch.setattr(streaming, "_CARRIES", {})
    shared = with_overlap_hop(musicnn.module, 93)
    assert shares_overlap(shared) and not shares_overlap(musicnn.module)
    assert streaming.initial_carry(musicnn, musicnn.module, 8) is None
    assert streaming.initial_carry(musicnn, musicnn.module, 1) is None
    assert traced == []
    carry = streaming.initial_carry(musicnn, shared, 8)
    assert sorted(carry) == ["timbral_0", "timbral_1"] and traced == [shared]
    vgg = jaxmir.load("msd-vgg")
    assert not shares_overlap(with_overlap_hop(vgg.module, 93))


def test_a_file_runs_in_whole_batches(musicnn, tmp_path, monkeypatch):
    """Blocks of ~1.5 s complete one patch each: a live stream runs them one by one, a file
    (eager=False) waits for batches of 8 and runs the rest at the end in one padded call (so one
    program serves the whole file), whatever its blocks; the outputs are the same. A file
    neither warms both programs up on silence nor traces the model for empty outputs."""
    rate = 44100
    audio = signal_at(rate, 31.0, 2, seed=16)                        # 19 patches
    path = tmp_path / "song.wav"
    soundfile.write(path, audio, rate, subtype="FLOAT")
    calls: list = []
    run, warm_up, shapes = (streaming.Stream._run, streaming.Stream._warm_up,
                            streaming._output_shapes)
    monkeypatch.setattr(streaming.Stream, "_run",
                        lambda self, first, index, shared, patch=None, used=None:
                        calls.append(index.shape[0])
                        or run(self, first, index, shared, patch, used))
    monkeypatch.setattr(streaming.Stream, "_warm_up", lambda self: calls.append("warm up")
                        or warm_up(self))
    monkeypatch.setattr(streaming, "_output_shapes", lambda *args: calls.append("shapes")
                        or shapes(*args))
    with streaming.file_stream(musicnn, path, "predictions") as (stream, found):
        got = np.concatenate([patches.values["predictions"] for patches in found])
    assert calls == [8, 8, 8]
    np.testing.assert_allclose(got, musicnn.predict(audio, rate), rtol=0, atol=1e-6)
    for eager, want_calls in ((True, ["warm up", 1] * 19), (False, [8, 8, 8])):
        calls.clear()
        stream = musicnn.stream(rate, eager=eager)
        block = 65536                                                # 1.49 s: a patch hop
        pushed = np.concatenate([stream.push(audio[i:i + block])
                                 for i in range(0, audio.shape[0], block)] + [stream.close()])
        assert [call for call in calls if call != "shapes"] == want_calls
        np.testing.assert_allclose(pushed, got, rtol=0, atol=1e-6)


def test_a_heavy_headed_model_runs_a_file_in_calls_of_32_with_its_body_in_steps(musicnn,
                                                                                monkeypatch):
    """A model whose dense layers hold more than HEAVY_DENSE_WEIGHTS (VGGish's 67 M, read at every
    call) runs a file in calls of 32 patches, on a CPU its body in steps of 8 and its head once per
    call; a partial batch goes in calls of 8, the last padded. The outputs are those of calls
    of 8."""
    model = on_cpu(jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb")))
    assert streaming.file_batch(musicnn) == streaming.file_batch(model) == 8
    monkeypatch.setattr(models, "HEAVY_DENSE_WEIGHTS", 1000)  # the fixture's 37,576 dense weights
    assert streaming.file_batch(model) == 32
    calls: list = []
    run = streaming.audio_to_outputs
    monkeypatch.setattr(streaming, "audio_to_outputs", lambda *args: calls.append(
        (args[7].shape[0], args[4])) or run(*args))
    # 50 patches of 96 frames, hop 93
    audio = signal_at(16000, 47.0, seed=5)
    got = model.predict(audio, 16000, output="embeddings")
    assert calls == [(32, 8), (8, 8), (8, 8), (8, 8)]
    calls.clear()
    want = pipeline.predict(model, audio, 16000, output="embeddings", chunk=8)
    assert calls == [(8, 8)] * 7
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL * max(1.0, float(np.abs(want).max())))
    live = model.stream(16000, "embeddings")
    assert live.batch == 8                                           # a live stream: calls of 8


def test_only_the_dense_layers_weights_make_a_head_heavy(musicnn, monkeypatch):
    """HEAVY_DENSE_WEIGHTS counts the 2-D kernels of the dense head alone: the convolutions,
    which run in steps with the rest of the body, do not count (MusiCNN's hold ~470 k weights,
    more than its dense layers' 311 k)."""
    kernels = {path: np.size(value) for path, value in models.leaves(musicnn.variables).items()
               if path.endswith("/kernel")}
    dense = sum(size for path, size in kernels.items() if path.startswith("params/head/"))
    assert sum(kernels.values()) - dense > dense
    monkeypatch.setattr(models, "HEAVY_DENSE_WEIGHTS", dense)
    assert not models.has_heavy_head(musicnn.variables) and streaming.file_batch(musicnn) == 8
    monkeypatch.setattr(models, "HEAVY_DENSE_WEIGHTS", dense - 1)
    assert models.has_heavy_head(musicnn.variables) and streaming.file_batch(musicnn) == 32


def _decode_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "jaxmir-decode"]


def test_the_read_ahead_waits_for_its_consumer():
    """Memory that does not grow with the file: the thread stops ``depth`` blocks ahead of a
    consumer that takes none (the test above cannot tell, its decoder being the slower side)."""
    made = []

    def blocks():
        for i in range(50):
            made.append(i)
            yield np.zeros(4, np.float32)

    with streaming._ahead(blocks(), depth=2) as ahead:
        next(ahead)
        time.sleep(0.5)                     # a model call, the thread free to run on
        # one taken, two queued, one made and waiting to be queued: it reads ahead, no further
        assert 3 <= len(made) <= 4
    assert len(made) <= 4  # and leaving stopped it: it did not go on through the blocks left


def test_a_file_for_calls_of_32_patches_is_read_further_ahead(musicnn, tmp_path, monkeypatch):
    """The decoding thread keeps AHEAD blocks per 8 patches of a call ahead of the model: a model
    that runs a file in calls of 32 (a heavy head) has 4 times as many waiting."""
    path = tmp_path / "song.wav"
    soundfile.write(path, signal_at(16000, 1.0, seed=26), 16000, subtype="FLOAT")
    depths: list = []
    ahead = streaming._ahead

    def recording_ahead(items, depth):
        depths.append(depth)
        return ahead(items, depth)

    monkeypatch.setattr(streaming, "_ahead", recording_ahead)
    for heavy_above, batch in ((10 ** 9, 8), (0, 32)):
        monkeypatch.setattr(models, "HEAVY_DENSE_WEIGHTS", heavy_above)
        assert streaming.file_batch(musicnn) == batch
        with streaming.file_stream(musicnn, path, "predictions"):
            pass                                                     # and leave
    assert depths == [streaming.AHEAD, 4 * streaming.AHEAD]


def test_a_file_is_decoded_ahead_in_a_thread_that_stops_with_the_stream(musicnn, tmp_path,
                                                                        monkeypatch):
    """file_stream decodes and resamples in a thread, at most AHEAD blocks ahead of the model
    (here a slow one), into the same outputs bit for bit as one thread pushing the file's
    blocks; the thread's errors are raised to the caller, and leaving early stops it."""
    rate = 44100
    path = tmp_path / "song.wav"
    soundfile.write(path, signal_at(rate, 40.0, 2, seed=17), rate, subtype="FLOAT")
    with decode.iter_blocks(path, streaming.BLOCK_FRAMES) as blocks:
        here = musicnn.stream(rate, eager=False)
        want = np.concatenate([patches.values["predictions"] for patches in here.run(blocks)])

    events: list = []
    push, run = Resampling.push, streaming.Stream._run

    def resampled(self, x):
        out = push(self, x)
        events.append(("decoded", threading.current_thread().name))
        return out

    def slow_run(self, *args, **kwargs):
        time.sleep(0.3)                         # the model, slower than the decoder
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Resampling, "push", resampled)
    monkeypatch.setattr(streaming.Stream, "_run", slow_run)
    take = streaming.Stream._take
    monkeypatch.setattr(streaming.Stream, "_take", lambda self, samples:
                        events.append(("pushed", None)) or take(self, samples))
    with streaming.file_stream(musicnn, path, "predictions") as (stream, found):
        got = np.concatenate([patches.values["predictions"] for patches in found])
    np.testing.assert_array_equal(got, want)
    decoded = [name for kind, name in events if kind == "decoded"]
    assert len(decoded) == 7 and set(decoded) == {"jaxmir-decode"}   # 40 s: 7 blocks of 5.9 s
    lead, leads = 0, []
    for kind, _ in events:
        lead += 1 if kind == "decoded" else -1
        leads.append(lead)
    # queued, waiting to be queued, and taken but not yet pushed: AHEAD + 2 at most
    assert 2 <= max(leads) <= streaming.AHEAD + 2
    assert not _decode_threads()

    with streaming.file_stream(musicnn, path, "predictions") as (stream, found):
        next(found)                                                  # and leave
    assert not _decode_threads()

    def failing(self, x):
        if len(events) > 3:
            raise AudioError("the disk went away")
        return resampled(self, x)

    events.clear()
    monkeypatch.setattr(Resampling, "push", failing)
    with pytest.raises(AudioError, match="the disk went away"):
        with streaming.file_stream(musicnn, path, "predictions") as (stream, found):
            list(found)
    assert not _decode_threads()


def test_bad_input(musicnn):
    audio = signal_at(16000, 4.0, 2, seed=13)
    stream = musicnn.stream(16000)
    kept = stream.push(audio[:40000])
    assert kept.shape == (0, 50)
    bad = audio[40000:41000].copy()
    bad[10, 1] = np.nan
    # the sample, counted from the stream's start (it named "chunk 1", a count of pushes)
    with pytest.raises(AudioError, match=r"sample 40010 \(in the chunk from sample 40000\): "
                                         "contains 1 NaN"):
        stream.push(bad)
    bad[10, 1] = np.inf
    with pytest.raises(AudioError, match="NaN or infinite"):
        stream.push(bad)
    bad[0, 0] = np.nan  # the chunk's first: "sample 40000 (in the chunk from sample 40000)"
    with pytest.raises(AudioError, match=r"^sample 40000: contains 2 NaN"):
        stream.push(bad)
    with pytest.raises(AudioError, match="1 channel.*started with 2"):
        stream.push(audio[40000:41000, 0])
    with pytest.raises(AudioError, match="dtype int16.*started with float32"):
        stream.push((audio[40000:41000] * 30000).astype(np.int16))
    with pytest.raises(AudioError, match="3 channel"):
        stream.push(np.zeros((10, 3), np.float32))
    # refused chunks changed nothing: the rest gives predict's answer
    rest = [stream.push(audio[40000:]), stream.close()]
    np.testing.assert_allclose(joined([kept] + rest), musicnn.predict(audio, 16000), rtol=0,
                               atol=TOL)
    with pytest.raises(InputError, match="push after close"):
        stream.push(audio[:10])
    with pytest.raises(InputError, match="already closed"):
        stream.close()
    with pytest.raises(InputError, match="this stream is closed"):  # run too, before a block
        next(stream.run([audio]))
    for rate in (0, -44100, 44100.5, "44100"):
        with pytest.raises(AudioError, match="sample rate"):
            musicnn.stream(rate)
    with pytest.raises(AudioError, match="out of range"):
        musicnn.stream(400000)
    with pytest.raises(AudioError, match="50 Hz is too far from 16000 Hz"):
        musicnn.stream(50)
    with pytest.raises(InputError, match="unknown pad 'bogus'"):  # not zeros at its close
        musicnn.stream(16000, pad="bogus")


# -- the command line --------------------------------------------------------------------------
def cli(*args: str, stdin: bytes = b"", timeout: float = 300) -> subprocess.CompletedProcess:
    env = child_env()
    return subprocess.run([sys.executable, "-m", "jaxmir", *args], input=stdin, capture_output=True,
                          env=env, timeout=timeout, cwd=ROOT)


def wav_bytes(audio: np.ndarray, rate: int, unknown_size: bool = False) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(audio.shape[1] if audio.ndim == 2 else 1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(audio.astype("<i2").tobytes())
    data = bytearray(buffer.getvalue())
    if unknown_size:  # what a live writer sends: sizes it cannot know
        data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
    return bytes(data)


def lines_of(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_stream_command_raw_and_wav(musicnn):
    rate = 22050
    audio = signal_at(rate, 6.0, 2, seed=14, dtype=np.int16)
    want = musicnn.predict(audio, rate)
    raw = cli("stream", "--rate", str(rate), "--channels", "2", "--dtype", "s16le", "--all",
              "--resample-step", "0", "-",
              stdin=audio.astype("<i2").tobytes())
    assert raw.returncode == 0, raw.stderr.decode()
    records = lines_of(raw)
    assert [r["start"] for r in records] == [0.0, 1.488, 2.976][:len(records)] and len(records) == 3
    np.testing.assert_allclose([r["predictions"] for r in records], want, rtol=0, atol=2e-6)
    # every value to float32 precision: small ones were rounded to 6 places (1.39e-6 -> 1e-06)
    assert np.min(want) < 1e-4  # rounded to 6 places, up to 1% off
    np.testing.assert_allclose([r["predictions"] for r in records], want, rtol=1e-4, atol=1e-9)
    # and no digits beyond it: each value is its float32's shortest decimal (the float64 of a
    # float32 has up to 17 digits: 0.10000000149011612 for 0.1)
    written = [value for r in records for value in r["predictions"]]
    assert all(float(str(np.float32(value))) == value for value in written)
    # raw options with a WAV stream were dropped silently; now said (the header wins)
    wav = cli("stream", "--top", "0", "--rate", "16000", "--channels", "1",
              stdin=wav_bytes(audio, rate, unknown_size=True))
    assert wav.returncode == 0, wav.stderr.decode()
    for option in ("--rate", "--channels"):
        assert f"{option} is ignored: standard input holds a WAV stream, whose header says " \
               f"{rate} Hz, 2 channel(s)" in wav.stderr.decode()
    records = lines_of(wav)
    assert len(records) == 3
    for record, row in zip(records, want):  # --top 0: all 50, best first
        assert [label for label, _ in record["top"]] == [musicnn.labels[i]
                                                          for i in np.argsort(-row)]
        np.testing.assert_allclose([p for _, p in record["top"]], np.sort(row)[::-1], atol=2e-6)


def test_stream_command_reads_an_rf64_stream(musicnn):
    """What `ffmpeg -i X -f wav -rf64 always -` sends (its sizes in a ds64 chunk of zeros, the
    data chunk's 0xFFFFFFFF) was refused; read to its end, it tags as the same samples in RIFF."""
    rate = 22050
    audio = signal_at(rate, 6.0, 2, seed=15, dtype=np.int16)
    riff = wav_bytes(audio, rate)
    fmt, pcm = riff[12:36], riff[44:]
    live = (b"RF64" + b"\xff" * 4 + b"WAVE" + b"ds64" + struct.pack("<I", 28) + bytes(28) + fmt
            + b"data" + b"\xff" * 4 + pcm)
    told = bytearray(live)
    told[28:36] = struct.pack("<Q", len(pcm) - 4 * rate)  # a ds64 size: 1 s fewer is read
    want = musicnn.predict(audio, rate)
    for stdin, patches in ((live, 3), (bytes(told), 2)):
        run = cli("stream", "--all", "-", stdin=stdin)
        assert run.returncode == 0, run.stderr.decode()
        records = lines_of(run)
        assert len(records) == patches
        np.testing.assert_allclose([r["predictions"] for r in records], want[:patches], atol=2e-6)


def test_stream_command_refuses_encoded_files_as_raw_pcm(tmp_path):
    """A FLAC file on standard input with --rate was read as raw PCM: tags of noise, exit 0."""
    path = tmp_path / "song.flac"
    soundfile.write(path, signal_at(22050, 4.0, 1, seed=3), 22050)
    result = cli("stream", "--rate", "22050", stdin=path.read_bytes())
    assert result.returncode == 1 and result.stdout == b""
    assert "standard input holds a FLAC file, not raw PCM" in result.stderr.decode()
    result = cli("stream", stdin=b"")  # it asked for --rate
    assert result.returncode == 1 and "standard input is empty" in result.stderr.decode()
    mp4 = b"\0\0\0\x20ftypM4A " + bytes(4000)  # an M4A's first box
    result = cli("stream", "--rate", "44100", stdin=mp4)
    assert result.returncode == 1 and "holds an MP4/M4A file, not raw PCM" in result.stderr.decode()
    # an MP3 with no ID3 tag opens on a frame header, no signature: it was read as raw PCM
    mp3 = encoded_audio("mp3", "libmp3lame", 22050, {"id3v2_version": "0"},
                        signal_at(22050, 2.0, 1, seed=4))
    assert mp3[:3] != b"ID3"
    result = cli("stream", "--rate", "22050", stdin=mp3)
    assert result.returncode == 1 and result.stdout == b""
    assert "standard input holds an MP3 file, not raw PCM" in result.stderr.decode()
    # an MP3 joined mid-frame, as a live radio's is: read as raw PCM, but said to look like one
    joined = encoded_audio("mp3", "libmp3lame", 22050, {"id3v2_version": "0"},
                           signal_at(22050, 4.0, 1, seed=4))[1001:]
    result = cli("stream", "--rate", "22050", stdin=joined[:len(joined) // 2 * 2])
    assert result.returncode == 0, result.stderr.decode()
    assert "jaxmir: warning: standard input looks like an MP3 file joined mid-way (its frames " \
        "from byte " in result.stderr.decode()
    # a test tone whose period divides a chance header's frame length was refused as MP2
    tone = np.round(0.1 * 32767 * np.sin(2 * np.pi * 100 * np.arange(4 * 48000) / 48000))
    result = cli("stream", "--rate", "48000", stdin=tone.astype("<i2").tobytes())
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    assert len(lines_of(result)) == 1
    assert len(lines_of(result)[0]["top"]) == 5  # the default --top (its help: "default 5")
    # a 3-channel WAV stream: the error was an array's ("for an array, channels go last")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((16000, 3), np.int16), 16000, format="WAV", subtype="PCM_16")
    result = cli("stream", stdin=buffer.getvalue())
    assert result.returncode == 1, result.stderr.decode()
    assert "standard input: has 3 channels; accepted: mono or stereo" in result.stderr.decode()
    assert "for an array" not in result.stderr.decode()


def test_stream_command_bf16_is_opt_in(musicnn):
    rate = 16000
    audio = signal_at(rate, 6.0, 1, seed=15, dtype=np.int16)
    run = cli("stream", "--rate", str(rate), "--all", "--bf16", stdin=audio.astype("<i2").tobytes())
    assert run.returncode == 0, run.stderr.decode()
    got = np.asarray([r["predictions"] for r in lines_of(run)])
    np.testing.assert_allclose(got, musicnn.astype("bfloat16").predict(audio, rate), rtol=0,
                               atol=BF16_STEP)
    deviation = np.max(np.abs(got - musicnn.predict(audio, rate)))
    assert 1e-4 < deviation < BF16_TAGS_ATOL, deviation


def test_stream_command_bad_input():
    audio = signal_at(16000, 4.0, 1, seed=15, dtype=np.int16)
    data = audio.astype("<i2").tobytes()
    cut = cli("stream", "--rate", "16000", stdin=data + b"\x01")
    assert cut.returncode == 1 and b"middle of a sample" in cut.stderr
    assert len(lines_of(cut)) == 1  # the complete patch was written before the error
    # every malformed header is tested in test_pcm.py; here: how the command reports one
    header = wav_bytes(audio, 16000)
    result = cli("stream", stdin=header[:20] + b"\x02\x00" + header[22:])
    assert result.returncode == 1 and b"unsupported WAV format" in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr
    for rate in (0, 500_000):  # it read as --rate's fault: "sample rate 0 Hz is out of range"
        wrong = header[:24] + struct.pack("<I", rate) + header[28:]
        result = cli("stream", stdin=wrong)
        assert result.returncode == 1 and ("standard input: the WAV header's "
                                           f"sample rate {rate} Hz is out of "
                                           "range").encode() in result.stderr, result.stderr
    result = cli("stream", "--rate", "-5", stdin=data)
    assert result.returncode == 2 and b"sample rate" in result.stderr \
        and b"Traceback" not in result.stderr
    missing = cli("stream", stdin=data)
    assert missing.returncode == 1 and b"--rate" in missing.stderr
    closed = subprocess.run(["sh", "-c", 'exec "$0" -m jaxmir stream --rate 16000 <&-',
                             sys.executable], capture_output=True, env=child_env(), timeout=300,
                            cwd=ROOT)  # standard input closed, as a service manager may start it
    assert closed.returncode == 1 and b"standard input is closed" in closed.stderr
    assert b"Traceback" not in closed.stderr
    floats = signal_at(16000, 10.0, 1, seed=15).astype("<f4")
    floats[150_000] = np.nan  # read well after the first patches' samples
    result = cli("stream", "--rate", "16000", "--dtype", "f32le", stdin=floats.tobytes())
    assert result.returncode == 1 and len(lines_of(result)) >= 1
    assert b"NaN" in result.stderr and b"the patches above are complete and valid" in result.stderr
    odd = bytearray(wav_bytes(audio, 16000))
    odd[40:44] = (len(data) // 2 + 1).to_bytes(4, "little")  # ends inside the frame after half
    result = cli("stream", stdin=bytes(odd))
    # a warning (exit 1 before), as `jaxmir tag` and FFmpeg read such a file without a word
    assert result.returncode == 0 and b"jaxmir: warning: the WAV declares a data size that ends " \
        b"in the middle of a sample frame (1 stray byte(s) of 2), left out as jaxmir tag leaves " \
        b"it" in result.stderr, result.stderr  # not "standard input ended"
    live = wav_bytes(audio, 16000, unknown_size=True) + b"\x01"  # a live WAV cut mid-frame
    result = cli("stream", stdin=live)
    assert result.returncode == 0 and b"jaxmir: warning: the WAV stream ended in the middle of " \
        b"a sample frame" in result.stderr, result.stderr


def test_stream_command_ends_after_a_wav_s_declared_data_while_its_writer_stays():
    """Looking for a second data chunk after the declared data, it waited for the writer to close
    its end (`(cat x.wav; sleep 25) | jaxmir stream` ended after 27.8 s instead of 3)."""
    audio = signal_at(16000, 4.0, 1, seed=18, dtype=np.int16)
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=child_env(), cwd=ROOT)
    try:
        process.stdin.write(wav_bytes(audio, 16000))
        process.stdin.flush()  # and left open
        status = process.wait(timeout=120)
        out, err = process.stdout.read(), process.stderr.read()
    finally:
        process.kill()
        process.stdin.close()
    assert status == 0 and len(out.decode().splitlines()) == 1, err


def test_stream_command_says_where_a_wav_holds_a_second_data_chunk():
    """It read the first data chunk and stopped without a word; `jaxmir tag` reads the last (as
    FFmpeg and Essentia's loader do): other tags."""
    first = signal_at(16000, 4.0, 1, seed=16, dtype=np.int16).astype("<i2").tobytes() + b"\x00"
    second = signal_at(16000, 7.0, 1, seed=17, dtype=np.int16).astype("<i2").tobytes()
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    body = (b"WAVE" + fmt + b"data" + struct.pack("<I", len(first)) + first + b"\x00"  # padded
            + b"LIST" + struct.pack("<I", 5) + b"INFOa\x00"  # padded too
            + b"data" + struct.pack("<I", len(second)) + second)
    result = cli("stream", stdin=b"RIFF" + struct.pack("<I", len(body)) + body)
    assert result.returncode == 0 and len(lines_of(result)) == 1
    assert ("jaxmir: warning: standard input's WAV holds another data chunk (224000 bytes) after "
            "the one read (128001 bytes), left out: jaxmir tag and Essentia's loader read a "
            "file's last data chunk") in result.stderr.decode()


@pytest.mark.parametrize("kind, status", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_stream_command_ends_cleanly_on_ctrl_c_and_sigterm(kind, status):
    """SIGTERM was taken for the end of the input (exit 0) while the command waited for it, and
    lost the patch being computed otherwise."""
    env = child_env()
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", "--rate", "16000"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, cwd=ROOT)
    audio = signal_at(16000, 4.5, 1, seed=16, dtype=np.int16)  # 2 complete patches, then silence
    process.stdin.write(audio.astype("<i2").tobytes() + b"\x01")  # and half a frame: Ctrl-C
    process.stdin.flush()                                        # may come between its bytes
    first = process.stdout.readline()  # the first patch arrives while the input is still open
    assert json.loads(first)["start"] == 0.0
    time.sleep(1.0)
    process.send_signal(getattr(signal, kind))
    out, err = process.communicate(timeout=120)
    process.stdin.close()
    assert process.returncode == status, err.decode()
    assert b"Traceback" not in err
    records = [json.loads(first)] + [json.loads(line) for line in out.decode().splitlines()]
    assert [r["start"] for r in records] == [0.0, 1.488]


@pytest.mark.parametrize("kind, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_in_the_stream_commands_first_second_ends_it_cleanly(kind, status):
    """Ctrl-C while the command imported JAX ended in a traceback; while it loaded the model, it
    could be lost in JAX's garbage-collection callback, and the stream went on."""
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", "--rate", "16000"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=child_env(), cwd=ROOT)
    time.sleep(0.6)  # python and the command line are up (~0.2 s), JAX and the model not yet
    process.send_signal(getattr(signal, kind))
    out, err = process.communicate(b"\0" * 64000, timeout=120)
    assert process.returncode == status, err.decode()
    assert b"Traceback" not in err and out == b""


def test_stream_command_gives_a_regression_head_s_values_in_their_order():
    """They were ranked as tags, their order changing from line to line, and -n 1 dropped one."""
    head = str(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    audio = signal_at(16000, 6.0, 1, seed=8, dtype=np.int16)
    result = cli("stream", "--rate", "16000", "-m", head, "-b", "msd-musicnn", "-n", "1",
                 stdin=audio.astype("<i2").tobytes())
    assert result.returncode == 0, result.stderr.decode()
    # said, as jaxmir tag says it (it was ignored without a word)
    assert "jaxmir: warning: --top is ignored: the model gives values, not class scores" \
        in result.stderr.decode()
    records = lines_of(result)
    model = jaxmir.load(head, backbone="msd-musicnn")
    expected = model.predict(audio.astype(np.float32) / 32768, 16000)
    assert len(records) == len(expected) == 3
    for record, values in zip(records, expected):
        assert [label for label, _ in record["top"]] == ["class_0", "class_1"]
        # the float32 values of the same patches (regression outputs of ~1-10: float32 rounding)
        np.testing.assert_allclose([v for _, v in record["top"]], values, rtol=1e-5)


@pytest.mark.parametrize("kind, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_the_wav_header_is_awaited_ends_the_stream(kind, status):
    """The header's reads were retried after the signal: the command waited for the rest of the
    header for as long as its writer kept the pipe open (under `timeout`, until SIGKILL)."""
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
                               cwd=ROOT)
    process.stdin.write(wav_bytes(signal_at(16000, 1.0, 1, seed=3, dtype=np.int16), 16000)[:20])
    process.stdin.flush()  # "RIFF", its size, "WAVE", "fmt " and its size: the header goes on
    time.sleep(6.0)  # started, and waiting in the header (a signal before is handled anyway)
    process.send_signal(getattr(signal, kind))
    try:
        assert process.wait(timeout=30) == status, process.stderr.read().decode()
    finally:
        process.kill()
        process.stdin.close()
    assert b"Traceback" not in process.stderr.read()


def test_tag_plot_and_embed_average(tmp_path, musicnn):
    require("matplotlib")  # the [plot] extra, a test dependency
    audio = signal_at(44100, 7.0, 2, seed=17)
    path = tmp_path / "song.wav"
    soundfile.write(path, audio, 44100, subtype="PCM_16")
    png = tmp_path / "taggram.png"
    result = cli("tag", str(path), "--plot", str(png), "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
    png.write_bytes(b"yesterday's picture")  # replaced without being asked before
    result = cli("tag", str(path), "--plot", str(png), "--no-progress")
    assert result.returncode == 1 and b"--overwrite to replace it" in result.stderr
    assert png.read_bytes() == b"yesterday's picture"
    result = cli("tag", str(path), "--plot", str(png), "--no-progress", "--overwrite")
    assert result.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a folder: "unexpected IsADirectoryError" at the rename, with --overwrite
    result = cli("tag", str(path), "--plot", str(tmp_path), "--no-progress", "--overwrite")
    assert result.returncode == 1 and b"is a folder; give the picture's file name" in result.stderr
    result = cli("embed", str(path), "-o", str(tmp_path / "emb"), "--average", "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().endswith("song.npy [200]\n")  # the array's shape, written
    mean = np.load(tmp_path / "emb" / "song.npy", allow_pickle=False)
    want = musicnn.predict(jaxmir.load_audio(path), 16000, output="embeddings").mean(axis=0)
    assert mean.shape == (200,)
    np.testing.assert_allclose(mean, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_plot_without_matplotlib_is_a_clear_error():
    script = ("import sys; sys.modules['matplotlib'] = None\n"
              "from jaxmir.errors import JaxmirError\n"
              "from jaxmir.plot import check_available\n"
              "try:\n    check_available()\nexcept JaxmirError as err:\n    print(err)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=child_env(), timeout=120, cwd=ROOT)
    assert "pip install 'jaxmir[plot]'" in result.stdout, result.stderr


def test_stream_command_bad_options_and_a_reader_that_leaves(tmp_path):
    """Nonsense options end in one line, no traceback; a reader that stops reading
    (``jaxmir stream ... | head -1``) ends the stream quietly with the shell's status for it."""
    for option, value, status, message in (("--channels", "0", 2,
                                            "expected a whole number >= 1, got 0"),
                                           ("--channels", "-2", 2,
                                            "expected a whole number >= 1, got -2"),
                                           ("--channels", "3", 2,
                                            "expected a whole number <= 2, got 3"),
                                           ("--overlap", "nan", 2, "--overlap nan s: patches last"),
                                           ("--overlap", "inf", 2, "--overlap inf s: patches last"),
                                           # finite, but not in frames: OverflowError's traceback
                                           ("--overlap", "1e308", 2, "--overlap 1e+308 s: patches"),
                                           # -o ran as -ov (the overlap): 0.5 s
                                           ("-o", "0.5", 2, "-o: stream writes its JSON lines to "
                                                            "standard output"),
                                           # options are named whole (it was --resample-step)
                                           ("--resample-s", "0", 2, "unrecognized arguments: "
                                                                    "--resample-s")):
        run = cli("stream", "--rate", "16000", option, value, "-", stdin=b"\0" * 64000)
        assert run.returncode == status and message in run.stderr.decode(), \
            (option, value, run.stderr)
        assert b"Traceback" not in run.stderr
    audio = signal_at(16000, 30.0, 1, seed=5, dtype=np.int16).astype("<i2").tobytes()
    env = child_env()
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", "--rate", "16000", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, cwd=ROOT)
    process.stdin.write(audio[:len(audio) // 4])
    process.stdin.flush()
    assert json.loads(process.stdout.readline())["start"] == 0.0
    process.stdout.close()  # the reader leaves; the next lines have nowhere to go
    try:
        process.stdin.write(audio[len(audio) // 4:])
        process.stdin.close()
    except BrokenPipeError:  # it may have stopped reading already
        pass
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""


def test_stream_command_says_what_an_input_lacked():
    """Exit 0 (the lines written are valid) but one line on standard error: input shorter than a
    patch, and a WAV stream that ends before the data its header declares."""
    rifx = cli("stream", "-", stdin=b"RIFX" + bytes(60))
    assert rifx.returncode == 1 and "holds a big-endian WAV stream (a RIFX header), which jaxmir " \
        "stream does not read" in rifx.stderr.decode()
    short = signal_at(16000, 1.0, 1, seed=6, dtype=np.int16).astype("<i2").tobytes()
    run = cli("stream", "--rate", "16000", "-", stdin=short)
    assert run.returncode == 0 and run.stdout == b""
    assert "jaxmir: warning: 1.00 s of audio made no complete patch (a patch takes 2.99 s; "\
        "--last-patch repeat makes one of a shorter stream)" in run.stderr.decode()
    # a WAV of no samples: --last-patch repeat would make no patch of it either
    run = cli("stream", "-", stdin=wav_bytes(np.zeros((0, 1), np.int16), 16000))
    assert run.returncode == 0 and run.stdout == b"", run.stderr
    assert "jaxmir: warning: 0.00 s of audio made no complete patch (a patch takes 2.99 s)\n" \
        in run.stderr.decode()
    audio = signal_at(16000, 8.0, 1, seed=7, dtype=np.int16)
    cut = wav_bytes(audio, 16000)[:-16000]  # the header declares 8 s; 7.5 s arrive: 4 patches
    run = cli("stream", "-", stdin=cut)
    assert run.returncode == 0 and len(lines_of(run)) == 4
    assert "ended 16000 byte(s) before the end of the data its WAV header declares" \
        in run.stderr.decode()


@pytest.mark.parametrize("bad", [np.nan, 1e13])
def test_stream_command_patches_before_a_nan_do_not_depend_on_the_pipe(bad):
    """A NaN refused the whole read it came in: the patch completed by the samples before it was
    written or not as the pipe cut the bytes (1 line at once, 2 in small pieces); a sample beyond
    1e12 still did."""
    audio = signal_at(16000, 8.0, 1, seed=21)
    audio[80000] = bad  # 5.0 s: patch 1 (1.488-4.48 s) is whole before it
    result = cli("stream", "--rate", "16000", "--dtype", "f32le",
                 stdin=audio.astype("<f4").tobytes())
    assert result.returncode == 1
    assert [r["start"] for r in lines_of(result)] == [0.0, 1.488]
    assert "sample 80000" in result.stderr.decode() \
        and "complete and valid" in result.stderr.decode()


def test_stream_command_with_standard_output_closed(tmp_path):
    """`jaxmir stream >&-` ended in a traceback (sys.stdout is None); a collection's --output is
    written whatever standard output is."""
    def closed_stdout(*args: str, stdin: bytes = b""):
        return subprocess.run([sys.executable, "-m", "jaxmir", *args], input=stdin,
                              stderr=subprocess.PIPE, env=child_env(), cwd=ROOT, timeout=300,
                              preexec_fn=lambda: os.close(1))
    result = closed_stdout("stream", "--rate", "16000",
                           stdin=signal_at(16000, 4.0, 1, seed=2, dtype=np.int16).tobytes())
    assert result.returncode == 1
    assert result.stderr.decode() == ("jaxmir: error: standard output is "
                                      "closed, and the results go there\n")
    path = tmp_path / "a.wav"
    soundfile.write(path, signal_at(16000, 4.0, 1, seed=2), 16000)
    result = closed_stdout("tag", str(path))
    assert result.returncode == 1 and "standard output is closed" in result.stderr.decode()
    result = closed_stdout("tag", str(path), "-o", "-")  # exited 0, its results nowhere
    assert result.returncode == 1 and "standard output is closed" in result.stderr.decode()
    result = closed_stdout("info", "msd-musicnn")  # which has no --output to give
    assert result.returncode == 1
    assert result.stderr.decode() == "jaxmir: error: standard output is closed, and the results " \
        "go there\n"
    # standard error closed: its lines went to standard output, among the results
    done = subprocess.run([sys.executable, "-m", "jaxmir", "tag", str(tmp_path / "nothere.wav"),
                           str(path), "-f", "csv"], stdout=subprocess.PIPE, env=child_env(),
                          cwd=ROOT, timeout=300, preexec_fn=lambda: os.close(2))
    assert done.returncode == 1 and done.stdout.decode().startswith("file,rank,label,score\n")
    assert b"jaxmir:" not in done.stdout
    result = closed_stdout("tag", str(path), "-o", str(tmp_path / "tags.csv"))
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "tags.csv").read_text().count("\n") == 2


def test_stream_command_to_a_full_disk_says_so_plainly():
    """Errors without a file name began with an empty one: "jaxmir: error: : No space left"."""
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-m", "jaxmir", "stream", "--rate", "16000"],
                                input=signal_at(16000, 4.0, 1, seed=2, dtype=np.int16).tobytes(),
                                stdout=full, stderr=subprocess.PIPE, env=child_env(), cwd=ROOT,
                                timeout=300)
    assert result.returncode == 1
    assert result.stderr.decode() == "jaxmir: error: cannot write standard output: No space left " \
        "on device\n"


def test_stream_command_reads_a_non_blocking_standard_input():
    """A pipe its writer made non-blocking (Node's child_process, asyncio) failed at once:
    'Resource temporarily unavailable', no patches."""
    audio = signal_at(16000, 4.0, 1, seed=3, dtype=np.int16)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", "--rate", "16000"],
                               stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=child_env(), cwd=ROOT)
    os.close(read_end)
    time.sleep(2.0)  # the command starts and finds no data yet
    with os.fdopen(write_end, "wb") as writer:
        writer.write(audio.tobytes())
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()
    assert len(stdout.decode().splitlines()) == 1


def feed_in_background(process: subprocess.Popen, data: bytes, close: bool) -> None:
    """``data`` to ``process``'s standard input from a thread (the command may stop reading it),
    which is then closed or left open."""
    def feed():
        try:
            process.stdin.write(data)
            process.stdin.close() if close else process.stdin.flush()
        except OSError:  # the command ended
            pass

    threading.Thread(target=feed, daemon=True).start()


def wait_for_a_full_pipe(process: subprocess.Popen, seconds: float, poll_s: float) -> None:
    """Until ``process``'s standard output pipe holds 32 KiB or more, unchanged for ``poll_s``:
    the command's writes wait for a reader."""
    import fcntl
    import termios

    waiting, before = np.zeros(1, np.int32), -1
    deadline = time.monotonic() + seconds
    while waiting[0] < 32_768 or waiting[0] != before:
        assert process.poll() is None and time.monotonic() < deadline, "the pipe never filled"
        before = int(waiting[0])
        time.sleep(poll_s)
        fcntl.ioctl(process.stdout.fileno(), termios.FIONREAD, waiting)


def test_stream_command_stops_on_sigterm_when_its_reader_stalls():
    """A SIGTERM while a write waited for a reader that stopped reading was held until the
    reader drained the pipe (docker stop and timeout would then SIGKILL it)."""
    raw = signal_at(16000, 300.0, 1, seed=4, dtype=np.int16).tobytes()
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", "--rate", "16000",
                                "--all"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=child_env(), cwd=ROOT)
    feed_in_background(process, raw, close=True)
    wait_for_a_full_pipe(process, seconds=240, poll_s=1.0)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, process.stderr.read().decode()



def test_a_signal_leaves_the_lines_whole_for_a_slow_reader():
    """Lines longer than a pipe holds (cnn3: ~90 KB) were cut by a signal while the reader held
    them back: the output ended in part of a JSON line, which no reader can parse."""
    raw = signal_at(16000, 30.0, 1, seed=4, dtype=np.int16).tobytes()
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", "--rate", "16000",
                                "--layer", "cnn3", "-"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
                               cwd=ROOT)
    feed_in_background(process, raw, close=False)  # the command waits for more: the signal ends it
    taken = process.stdout.read(100_000)  # into the second line
    wait_for_a_full_pipe(process, seconds=120, poll_s=0.5)  # a line's write waits
    process.send_signal(signal.SIGTERM)
    # the reader takes the lines again (not communicate(): its closing of stdin would wait for
    # the feeder's write, which the command no longer reads)
    rest = process.stdout.read()
    assert process.wait(timeout=60) == 143, process.stderr.read().decode()
    lines = (taken + rest).split(b"\n")
    assert lines[-1] == b"" and len(lines) > 3
    for line in lines[:-1]:
        assert np.asarray(json.loads(line)["cnn3"]).shape == (187, 64)


def test_a_line_the_reader_holds_back_past_the_deadline_is_given_up(monkeypatch):
    """``write_whole_line`` says False when it gave a line up, so that the command stops writing
    (a later write would wait on the full pipe); a reader that takes it gets it whole."""
    from jaxmir.console import write_whole_line

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with open(read_end, "rb") as reader, open(write_end, "w", closefd=True) as writer:
        monkeypatch.setattr(sys, "stdout", writer)
        assert write_whole_line("first\tline", lambda: None)
        assert os.read(read_end, 100) == b"first\tline\n"
        held = 0
        try:  # the reader takes nothing more: fill the pipe
            while True:
                held += os.write(write_end, b"x" * 4096)
        except BlockingIOError:
            pass
        deadline = time.monotonic() + 0.3  # a signal came; the line's wait ends then
        assert not write_whole_line("second", lambda: deadline)
        assert time.monotonic() >= deadline
        monkeypatch.undo()
        writer.close()
        assert len(reader.read()) == held  # nothing of the line given up went out


def test_a_line_is_given_up_from_the_deadline_itself(monkeypatch):
    """``give_up_at()`` is the time from which the line is given up: a deadline that is now gives
    the line up before any of it goes out, even to a pipe with room for it."""
    import types

    from jaxmir import console

    now = 1000.0  # a clock that stands still: the deadline is reached, not passed
    monkeypatch.setattr(console, "time", types.SimpleNamespace(monotonic=lambda: now))
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as reader, open(write_end, "w", closefd=True) as writer:
        monkeypatch.setattr(sys, "stdout", writer)
        assert not console.write_whole_line("given up", lambda: now)
        monkeypatch.undo()
        writer.close()
        assert reader.read() == b""


def test_a_file_streamed_without_a_damage_list_warns_of_its_damage_and_with_one_lists_it(
        musicnn, tmp_path):
    """``file_stream`` called alone warns of a file decoded in part, as ``load_audio`` does; the
    command line and collections pass a list, which gets the problem instead of a warning."""
    import warnings

    from jaxmir.decode import DamagedAudioWarning

    whole = tmp_path / "whole.wav"
    soundfile.write(whole, signal_at(16000, 8.0, 1, seed=2), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:-16000])  # its header still says 8 s
    with pytest.warns(DamagedAudioWarning, match="cut.wav: .*truncated audio"):
        with streaming.file_stream(musicnn, cut, "predictions") as (stream, found):
            assert sum(len(block) for block in found) == 4  # 7.5 s: patches as decoded
    # with a list (the command line's and collections'), the problem lands there, unwarned
    damage = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedAudioWarning)
        with streaming.file_stream(musicnn, cut, "predictions", damage=damage) as (_, found):
            assert sum(len(block) for block in found) == 4
    assert len(damage) == 1 and "truncated audio" in damage[0], damage


def test_stream_command_refuses_bad_options_before_any_input():
    """`--rate 0` or a hop past the patch was refused only once input came (a live source may
    send none for a while; with none at all it said "standard input is empty")."""
    for options, message in ((["--rate", "0"], "sample rate 0 Hz is out of range"),
                             (["--rate", "16000", "--patch-hop", "500"],
                              "--patch-hop 500: patches last 187 "
                              "frames, so the hop is at most 187")):
        process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", *options],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=child_env(), cwd=ROOT)
        try:  # standard input stays open and silent (communicate() would close it)
            process.wait(timeout=120)
            stderr = process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
        assert process.returncode == 2 and message in stderr.decode()  # the command line's fault


def test_stream_command_claims_no_patches_above_when_there_are_none():
    result = cli("stream", "--rate", "16000", stdin=b"\x01")
    assert result.returncode == 1
    assert result.stderr.decode() == ("jaxmir: error: standard input ended in the middle of a "
                                      "sample frame (1 stray byte(s) of 2)\n")


def test_stream_command_on_a_terminal_says_what_it_waits_for():
    """On a terminal it waited in silence, then said "standard input is empty" after Ctrl-D."""
    import pty
    import select

    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "stream", "--rate", "16000"],
                               stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=child_env(), cwd=ROOT)
    os.close(follower)
    try:
        ready, _, _ = select.select([process.stderr], [], [], 120)
        line = process.stderr.readline().decode() if ready else ""
    finally:
        process.kill()
        process.communicate()
        os.close(leader)
    assert line == ("jaxmir: warning: standard input is the terminal; pipe audio into jaxmir "
                    "stream (Ctrl-D ends)\n")


def test_stream_command_says_when_top_is_ignored():
    """`--all -n 3` and `--layer embeddings -n 2` gave every value without a word about -n."""
    audio = signal_at(16000, 4.0, 1, seed=9, dtype=np.int16).astype("<i2").tobytes()
    for flags, why in ((("--all",), "--all gives every value"),
                       (("-l", "embeddings"), "--layer embeddings gives every value of the layer")):
        result = cli("stream", "--rate", "16000", *flags, "-n", "3", stdin=audio)
        assert result.returncode == 0, result.stderr.decode()
        assert f"jaxmir: warning: --top is ignored: {why}" in result.stderr.decode()
        assert len(lines_of(result)) == 1
    result = cli("stream", "--rate", "16000", "--all", stdin=audio)
    assert result.returncode == 0 and b"warning" not in result.stderr
