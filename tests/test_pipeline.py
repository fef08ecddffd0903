"""jaxmir.pipeline: waveform -> per-patch outputs in one program, bucketed, differentiable.

The reference for every pipeline result is the same computation done step by
step on the true signal: ``frontends.*_logmel`` -> ``patches.make_patches`` ->
``Model.apply``.
"""

from __future__ import annotations

import subprocess
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmir
from conftest import child_env, essentia_python, shared_fixture, traced_peak
from jaxmir import frontends, pipeline
from jaxmir.models import runner
from jaxmir.audio import prepare_audio
from jaxmir.errors import InputError, NoSamplesError
from jaxmir.patches import make_patches

SR = 16000
# Batch size changes the order of float32 sums in XLA's convolutions: ~1e-7.
SAME = 2e-6


@pytest.fixture(scope="module")
def musicnn():
    return jaxmir.load("msd-musicnn")


def noise(n_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tone = np.sin(2 * np.pi * 440 * np.arange(n_samples) / SR)
    return (0.3 * tone + 0.05 * rng.standard_normal(n_samples)).astype(np.float32)


def stepwise(model, audio, output="predictions", hop=93, last_patch="discard", pad=None):
    """The unbucketed reference: front-end, patches and model, one after the other."""
    frames = frontends.musicnn_logmel(audio) if model.input_shape == (187, 96) \
        else frontends.vggish_logmel(audio)
    patches = make_patches(np.asarray(frames), model.input_shape[0], hop, last_patch, pad)
    return np.asarray(model.apply(patches, output)[output])


def essentia_patch_count(n_samples: int, size: int = 187, hop: int = 93,
                         frame_hop: int = 256) -> int:
    """TensorflowPredictMusiCNN: ceil(N / 256) + 1 frames, then floor((F - 187) / 93) + 1
    patches."""
    frames = -(-n_samples // frame_hop) + 1
    return (frames - size) // hop + 1 if frames >= size else 0


def test_a_plan_refuses_audio_of_another_length(musicnn):
    """Six seconds run through a plan for ten gave 5 patches where 3 were due, two of padding."""
    plan = pipeline.plan(musicnn, 10 * SR)
    with pytest.raises(InputError, match=r"audio has shape \[96000\]; the plan is for \[160000\]"):
        pipeline.run_plan(musicnn, noise(6 * SR), plan)


def test_a_plan_refuses_samples_that_are_not_float(musicnn):
    """``run_plan`` takes float samples at 16 kHz (``predict`` converts PCM first): int16 PCM,
    32767 times a float signal's scale, is refused, not read as samples."""
    plan = pipeline.plan(musicnn, 4 * SR)
    pcm = (noise(4 * SR) * 32767).astype(np.int16)
    for audio in (pcm, jnp.asarray(pcm)):
        with pytest.raises(InputError,
                           match="audio has dtype int16; expected float samples at 16 kHz"):
            pipeline.run_plan(musicnn, audio, plan)


def test_a_stereo_jax_array_at_16_khz_is_downmixed_as_a_numpy_one(musicnn):
    """Only a mono float JAX array at 16 kHz is used as it is; a stereo one (channels last) is
    downmixed by prepare_audio as a NumPy one is, for predict and features alike."""
    stereo = np.stack([noise(4 * SR, seed=14), noise(4 * SR, seed=15)], axis=1)
    np.testing.assert_allclose(musicnn.predict(jnp.asarray(stereo), SR),
                               musicnn.predict(stereo, SR), rtol=0, atol=SAME)
    # the same downmix on the host, then the same program on the same samples: equal
    np.testing.assert_array_equal(musicnn.features(jnp.asarray(stereo), SR),
                                  musicnn.features(stereo, SR))


def test_integer_pcm_in_a_jax_array_at_16_khz_is_converted_as_in_a_numpy_one(musicnn):
    """It was refused ("audio has dtype int16") where NumPy's int16 is read as PCM."""
    pcm = (noise(3 * SR) * 32767).astype(np.int16)
    # converted by prepare_audio as NumPy's, then a program compiled for each call's arrays
    np.testing.assert_allclose(musicnn.predict(jnp.asarray(pcm), SR), musicnn.predict(pcm, SR),
                               rtol=0, atol=SAME)


@pytest.mark.parametrize("n_samples", [48017, 16000 * 4, 16000 * 7 + 5, 16000 * 30 + 123])
def test_bucketed_equals_unpadded(musicnn, n_samples):
    audio = noise(n_samples, seed=n_samples)
    plan = pipeline.plan(musicnn, n_samples)
    assert plan.bucket_samples >= n_samples and plan.bucket_patches >= plan.n_patches
    got = np.asarray(musicnn.predict(audio, SR))
    want = stepwise(musicnn, audio)
    assert got.shape == want.shape == (essentia_patch_count(n_samples), 50)
    np.testing.assert_allclose(got, want, rtol=0, atol=SAME)


@pytest.mark.parametrize("n_samples, hop", [(95_600, 187), (95_300, 187), (16000 * 4, 93),
                                            (30_000, 93)])
def test_last_patch_repeat_is_essentias(tmp_path, n_samples, hop):
    """``lastPatchMode="repeat"``: one more patch of the frames left after the last full
    patch's hop, repeated, if any are left (95,600 samples, 375 frames, non-overlapping
    patches: one frame is left; 95,300: none; fewer frames than a patch: one patch). Measured
    against Essentia's ``TensorflowPredictMusiCNN`` on the same graph and samples: float32
    sums in another order, ~1e-7 on probabilities."""
    graph = shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb")
    audio = noise(n_samples, seed=n_samples)
    np.save(tmp_path / "audio.npy", audio)
    script = ("import sys, numpy as np, essentia.standard as es\n"
              "predict = es.TensorflowPredictMusiCNN(graphFilename=sys.argv[1], "
              "output='model/Sigmoid', patchHopSize=int(sys.argv[3]), lastPatchMode='repeat')\n"
              "np.save(sys.argv[2] + '.out.npy', predict(np.load(sys.argv[2] + '.npy')))\n")
    subprocess.run([essentia_python(), "-c", script, str(graph), str(tmp_path / "audio"), str(hop)],
                   check=True, capture_output=True, env=child_env())
    theirs = np.load(tmp_path / "audio.out.npy")
    model = jaxmir.load(graph)
    for given in (audio, jnp.asarray(audio)):  # the stream engine; the patches of a JAX array
        ours = np.asarray(model.predict(given, SR, patch_hop=hop, last_patch="repeat"))
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_a_repeated_last_patch_of_a_jax_array_reads_no_padding_patch(musicnn):
    """3 patches, the last one repeated, in a bucket of 4: not consecutive, so no patch shares
    its neighbour's timbral rows (sharing, the last two read the padding's: 0.018 and 0.091 off
    the stream engine's)."""
    audio = noise(76_544, seed=4)
    plan = pipeline.plan(musicnn, audio.size, last_patch="repeat")
    assert (plan.n_patches, plan.bucket_patches, plan.regular) == (3, 4, False)
    np.testing.assert_allclose(musicnn.predict(jnp.asarray(audio), SR, last_patch="repeat"),
                               musicnn.predict(audio, SR, last_patch="repeat"), rtol=0, atol=SAME)


def test_traced_predict_and_features_give_the_signal_s_patches_and_frames(musicnn):
    """Under ``jax.jit`` (as under ``grad`` or ``vmap``) a signal's patches and frames are its
    own, not its bucket's: 5 patches in a bucket of 8, its frames in a block of 1024."""
    audio = noise(16000 * 9 + 11, seed=5)
    frames = jax.jit(lambda signal: musicnn.features(signal, SR))(jnp.asarray(audio))
    want = musicnn.features(audio, SR)
    assert frames.shape == want.shape == (pipeline.plan(musicnn, audio.size).n_frames, 96)
    # log10(1 + 10^4 x), ~0.1 to ~4 here: float32 rounding apart, on other programs' sums
    np.testing.assert_allclose(frames, want, rtol=0, atol=1e-5)
    tags = jax.jit(lambda signal: musicnn.predict(signal, SR))(jnp.asarray(audio))
    assert tags.shape == (essentia_patch_count(audio.size), 50) == (5, 50)
    np.testing.assert_allclose(tags, musicnn.predict(audio, SR), rtol=0, atol=SAME)


def test_bucket_padding_is_really_there(musicnn):
    # 30 s: 19 patches, computed as 3 chunks of 8 in a signal of 24 patches' length
    plan = pipeline.plan(musicnn, 16000 * 30 + 123)
    assert (plan.n_patches, plan.bucket_patches) == (19, 24)
    assert plan.bucket_samples > 16000 * 37
    exact = pipeline.plan(musicnn, 16000 * 30 + 123, bucket=False)
    assert (exact.bucket_patches, exact.bucket_samples) == (19, 16000 * 30 + 123)
    np.testing.assert_array_equal(plan.index[:19], exact.index)


def test_embeddings_and_several_outputs(musicnn):
    audio = noise(16000 * 5, seed=3)
    out = musicnn.predict(audio, SR, output=["model/dense/BiasAdd", "penultimate", "timbral"])
    assert {k: v.shape for k, v in out.items()} == {
        "model/dense/BiasAdd": (2, 200), "penultimate": (2, 200), "timbral": (2, 187, 408)}
    want = stepwise(musicnn, audio, "model/dense/BiasAdd")
    np.testing.assert_allclose(out["model/dense/BiasAdd"], want, rtol=0,
                               atol=1e-6 * np.abs(want).max())
    with pytest.raises(InputError, match="unknown output 'nope'"):
        musicnn.predict(audio, SR, output="nope")


def timbral_rounding_bound(model, frames: np.ndarray) -> float:
    """How far two summation orders of the timbral convolutions can differ, after their batch norm.

    Each output sums n = 7 x width float32 products of size at most m = max|input| x max|kernel|;
    two orders of summation differ by about n * m * 6e-8 (the float32 unit roundoff); the
    batch norm that follows scales that by at most max|gamma / sqrt(var + eps)|. The shared and
    per-patch convolutions run on differently shaped inputs, so XLA may pick other orders (it
    does on AVX2 vs AVX-512 CPUs).
    """
    params, stats = model.variables["params"], model.variables["batch_stats"]
    bn, bn_stats = params["input_bn"], stats["input_bn"]
    eps = model.spec.config["bn_epsilon"]
    x = (frames - bn_stats["mean"]) * bn["scale"] / np.sqrt(bn_stats["var"] + eps) + bn["bias"]
    bound = 0.0
    for i in range(len(model.spec.config["timbral_widths"])):
        block = params[f"timbral_{i}"]["block"]
        kernel = np.asarray(block["conv"]["kernel"])
        gain = np.abs(block["batch_norm"]["scale"]) / np.sqrt(
            stats[f"timbral_{i}"]["block"]["batch_norm"]["var"] + eps)
        n = kernel.shape[0] * kernel.shape[1]
        bound = max(bound,
                    n * float(np.abs(x).max() * np.abs(kernel).max()) * 6e-8 * float(gain.max()))
    return bound


def test_shared_timbral_equals_patch_by_patch(musicnn):
    """Overlapping patches share the timbral convolutions; the numbers stay those of each patch."""
    audio = noise(16000 * 12 + 77, seed=12)  # 7 patches, bucket of 8: one chunk, shared
    assert pipeline.plan(musicnn, audio.size).regular
    names = ["predictions", "timbral", "model/Squeeze", "cnn3"]
    shared = musicnn.predict(audio, SR, output=names)
    direct = pipeline.predict(musicnn, audio, SR, names, share_overlap=False)
    timbral_bound = timbral_rounding_bound(musicnn, np.asarray(frontends.musicnn_logmel(audio)))
    for name in names:
        assert shared[name].shape == direct[name].shape
        scale = float(jnp.abs(direct[name]).max())
        # the timbral features carry the summation-order difference itself; what follows averages
        # and saturates it (measured <= 1e-7 x max on AVX2 and AVX-512)
        bound = max(timbral_bound, 1e-6 * scale) if name == "timbral" else 1e-6 * scale
        np.testing.assert_allclose(shared[name], direct[name], rtol=0, atol=bound, err_msg=name)
    # and the patch ends, where the convolution reads zeros, are not taken from the neighbours
    assert shared["timbral"].shape == (7, 187, 408)
    ends = np.asarray(shared["timbral"])[:, [0, 1, 2, 184, 185, 186]]
    reference = np.asarray(musicnn.apply(
        make_patches(np.asarray(frontends.musicnn_logmel(audio)), 187, 93),
        "timbral")["timbral"])[:, [0, 1, 2, 184, 185, 186]]
    np.testing.assert_allclose(ends, reference, rtol=0, atol=1e-6 * np.abs(reference).max())


def test_no_recompilation_within_a_bucket(musicnn):
    # JAX arrays take the bucketed one-program path (NumPy input streams: see test_stream.py)
    first, second = jnp.asarray(noise(16000 * 9 + 11, 1)), jnp.asarray(noise(16000 * 11 + 8000, 2))
    # 5 to 8 patches, a bucket of 8: one length of samples (the bound reached 8 patches of
    # 14 s less than it should, so each length of those compiled its own program)
    assert len({pipeline.plan(musicnn, n).bucket_samples
                for n in (first.size, second.size, 16000 * 14, 16000 * 14 + 8000)}) == 1
    musicnn.predict(first, SR)
    before = runner.compiled_programs()
    out = musicnn.predict(second, SR)
    assert runner.compiled_programs() == before
    assert out.shape[0] == essentia_patch_count(second.size) == 6
    # a song in another bucket (12 patches) compiles one more program
    musicnn.predict(jnp.asarray(noise(16000 * 20, 3)), SR)
    assert runner.compiled_programs() == before + 1


def test_buckets_are_few_and_tight():
    sizes = [pipeline.bucket_patches(n) for n in range(1, 2001)]
    assert all(s >= n for n, s in zip(range(1, 2001), sizes))
    assert len(set(sizes)) < 60  # few programs for songs up to ~50 minutes
    # padding: less than one chunk of patches, or at most 12.5% of the work
    assert all(s - n < pipeline.CHUNK or s <= 1.125 * n for n, s in zip(range(1, 2001), sizes))


def test_a_bucket_is_the_longest_signal_of_its_patches(musicnn):
    """``bucket_samples`` has exactly ``bucket_patches`` patches by Essentia's count, and one
    sample more has one more: a bucket a frame short gave the longest signals of its patches a
    program of their own; a frame long, padding for nothing."""
    for n_samples in (16000 * 9 + 11, 16000 * 30 + 123):
        plan = pipeline.plan(musicnn, n_samples)
        assert essentia_patch_count(plan.bucket_samples) == plan.bucket_patches
        assert essentia_patch_count(plan.bucket_samples + 1) == plan.bucket_patches + 1
        assert pipeline.plan(musicnn, plan.bucket_samples).bucket_samples == plan.bucket_samples


@pytest.mark.parametrize("n_samples", [0, 1, 47000, 47360, 47361, 47617, 71168, 71169, 123456,
                                       16000 * 207])
def test_patch_counts_follow_essentia(musicnn, n_samples):
    if essentia_patch_count(n_samples) == 0:
        with pytest.raises(InputError, match="too short"):
            pipeline.plan(musicnn, n_samples)
        return
    plan = pipeline.plan(musicnn, n_samples)
    assert plan.n_patches == essentia_patch_count(n_samples)
    np.testing.assert_array_equal(plan.patch_starts, 93 * np.arange(plan.n_patches))
    assert plan.index[:plan.n_patches].max() <= plan.n_frames  # only frames of the true signal


@pytest.mark.parametrize("name", ["synth_sines_16k_mono", "TRWJAZW128F42760DD_test"])
def test_patch_positions_equal_essentias(musicnn, name):
    ref = np.load(shared_fixture(f"essentia-reference/{name}.npz"))
    plan = pipeline.plan(musicnn, ref["audio_16k"].shape[0])
    assert plan.n_frames == ref["musicnn_bands"].shape[0]
    np.testing.assert_array_equal(plan.patch_starts, ref["musicnn_patch_starts"])


def test_last_patch_repeat(musicnn):
    audio = noise(16000 * 5, seed=5)  # 314 frames: 2 full patches, 128 frames left
    discard = musicnn.predict(audio, SR)
    repeat = musicnn.predict(audio, SR, last_patch="repeat")
    assert discard.shape == (2, 50) and repeat.shape == (3, 50)
    np.testing.assert_allclose(repeat, stepwise(musicnn, audio, last_patch="repeat"), rtol=0,
                               atol=SAME)
    np.testing.assert_allclose(repeat[:2], discard, rtol=0, atol=SAME)


def test_hop_zero_means_patch_size(musicnn):
    audio = noise(16000 * 9, seed=6)  # 564 frames: 3 patches of 187 without overlap
    got = musicnn.predict(audio, SR, patch_hop=0)
    assert got.shape == (3, 50)
    np.testing.assert_allclose(got, stepwise(musicnn, audio, hop=187), rtol=0, atol=SAME)


def test_a_plan_of_hop_zero_is_the_plan_of_hop_patch_size(musicnn):
    """``patch_hop=0`` resolves to the patch size in the plan too (its ``patch_hop``, never 0,
    and ``regular``: the overlap sharing of the timbral rows stays on), not just in the
    patches it cuts."""
    size = musicnn.input_shape[0]  # 187 frames
    for n_samples in (16000 * 9, 16000 * 30 + 123):
        zero = pipeline.plan(musicnn, n_samples, patch_hop=0)
        whole = pipeline.plan(musicnn, n_samples, patch_hop=size)
        assert zero.patch_hop == size and zero.regular
        assert zero == whole
        np.testing.assert_array_equal(zero.index, whole.index)


def test_too_short_is_an_error_unless_padded(musicnn):
    audio = noise(16000 * 2, seed=7)  # 126 frames < 187
    with pytest.raises(InputError, match="too short for one patch.*pad='zero'"):
        musicnn.predict(audio, SR)
    for pad in ("zero", "repeat"):
        got = musicnn.predict(audio, SR, pad=pad)
        assert got.shape == (1, 50)
        np.testing.assert_allclose(got, stepwise(musicnn, audio, pad=pad), rtol=0, atol=SAME)
    assert not np.allclose(musicnn.predict(audio, SR, pad="zero"),
                           musicnn.predict(audio, SR, pad="repeat"))


def test_a_zero_padded_plan_starts_its_patch_at_frame_0(musicnn):
    """``pad="zero"`` makes one patch even of no samples (0 frames, as ``make_patches`` does of
    no frames): its index is then all row 0, the zero frame, and its patch starts at frame 0,
    not at -1 (row 0 less one, unclipped); a padded patch of some frames starts at 0 too."""
    for n_samples in (0, 1, 30_000):  # 0, 2 and 119 frames, fewer than a patch's 187
        plan = pipeline.plan(musicnn, n_samples, pad="zero")
        assert plan.n_patches == 1
        np.testing.assert_array_equal(plan.patch_starts, [0])


def test_features_resample_and_shapes(musicnn):
    rng = np.random.default_rng(8)
    stereo = (0.1 * rng.standard_normal((44100 * 2, 2))).astype(np.float32)
    frames = np.asarray(musicnn.features(stereo, 44100))
    want = np.asarray(frontends.musicnn_logmel(prepare_audio(stereo, 44100)))
    assert frames.shape == want.shape == (frontends.musicnn_num_frames(32000), 96)
    np.testing.assert_allclose(frames, want, rtol=0, atol=1e-6)
    short = noise(100)
    np.testing.assert_allclose(musicnn.features(short, SR), frontends.musicnn_logmel(short),
                               atol=1e-6)


def test_features_of_lengths_in_one_block_run_one_length(musicnn, monkeypatch):
    """``features`` pads a signal to the longest of its block of 1024 frames (ceil(N / 256) + 1
    frames, as Essentia frames it: 1023 * 256 samples), so 9 s and 11 s share one program;
    rounding the block count down ran each length unpadded, a program per length."""
    lengths = []

    def recording_logmel(audio, frontend, compat):
        lengths.append(int(audio.shape[0]))
        return frontends.logmel(audio, frontend, compat)

    monkeypatch.setattr(pipeline, "logmel", recording_logmel)
    for n_samples in (16000 * 9 + 11, 16000 * 11):
        audio = noise(n_samples, seed=9)
        frames = musicnn.features(audio, SR)
        assert frames.shape == (-(-n_samples // 256) + 1, 96)  # Essentia's frames
    assert lengths == [1023 * 256] * 2


def test_predict_and_features_take_the_resampler(musicnn):
    """``Model.predict``/``features`` resample 44.1-kHz audio with the resampler asked for, as
    :func:`prepare_audio` does; soxr's signal differs from Essentia's (~1e-2), so the tags do."""
    rng = np.random.default_rng(9)
    t = np.arange(44100 * 4) / 44100
    audio = (0.3 * np.sin(2 * np.pi * 7000 * t)
             + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    by_resampler = {}
    for resampler in ("essentia", "samplerate", "soxr"):
        at_16k = prepare_audio(audio, 44100, resampler=resampler)
        by_resampler[resampler] = got = musicnn.predict(audio, 44100, resampler=resampler)
        np.testing.assert_allclose(got, musicnn.predict(at_16k, SR), rtol=0, atol=SAME)
        np.testing.assert_allclose(musicnn.features(audio, 44100, resampler=resampler),
                                   musicnn.features(at_16k, SR), rtol=0, atol=1e-6)
    assert np.max(np.abs(by_resampler["soxr"] - by_resampler["essentia"])) > 1e-4


def test_bad_audio_is_refused(musicnn):
    from pathlib import Path

    for path in ("song.mp3", Path("song.mp3")):
        with pytest.raises(InputError,
                           match="got the path 'song.mp3'; read it with jaxmir.load_audio"):
            musicnn.predict(path, SR)
        with pytest.raises(InputError,
                           match="got the path 'song.mp3'; read it with jaxmir.load_audio"):
            musicnn.features(path, SR)
    with pytest.raises(InputError, match="NaN"):
        musicnn.predict(np.full(16000 * 4, np.nan, np.float32), SR)
    with pytest.raises(InputError, match="NaN"):
        musicnn.predict(jnp.full(16000 * 4, jnp.nan), SR)
    # a JAX array takes its own path: an empty one is refused as a NumPy one is (int16 PCM in
    # JAX was an AudioError "audio: contains...", float32 an InputError)
    for empty in (np.zeros(0, np.float32), jnp.zeros(0, jnp.float32), np.zeros(0, np.int16),
                  jnp.zeros(0, jnp.int16), jnp.zeros((0, 2), jnp.float32)):
        for run in (lambda a: musicnn.predict(a, SR), lambda a: musicnn.features(a, SR),
                    lambda a: musicnn.predict(a, SR, pad="zero")):
            with pytest.raises(NoSamplesError, match="^audio contains no samples; expected at "
                                                     "least one sample$"):
                run(empty)
    # two samples at 44.1 kHz resample to none at 16 kHz (three give one): say so, padded or not
    with pytest.raises(InputError, match="2 sample.s. at 44100 Hz gives no sample at 16 kHz"):
        musicnn.predict(np.full(2, 0.5, np.float32), 44100, pad="zero")
    assert musicnn.predict(np.full(3, 0.5, np.float32), 44100, pad="zero").shape == (1, 50)
    with pytest.raises(TypeError):
        musicnn.predict(noise(16000 * 4))  # the sample rate is never guessed


def test_a_jax_signal_is_checked_as_a_numpy_one(musicnn):
    """A JAX array took shortcuts a NumPy one did not: 1-2 samples at 44.1 kHz (no 16-kHz
    sample) gave the tags of a silent patch with pad=; at 16 kHz neither the resampler's name
    nor the rate's type was checked."""
    for audio in (np.full(2, 0.5, np.float32), jnp.full(2, 0.5, jnp.float32)):
        with pytest.raises(InputError, match="2 sample.s. at 44100 Hz gives no sample at 16 kHz"):
            musicnn.predict(audio, 44100, pad="zero")
        with pytest.raises(InputError, match="2 sample.s. at 44100 Hz gives no sample at 16 kHz"):
            musicnn.features(audio, 44100)
    signal = noise(16000 * 4)
    for audio in (signal, jnp.asarray(signal)):
        with pytest.raises(InputError, match="unknown resampler 'x'"):
            musicnn.predict(audio, SR, resampler="x")
        with pytest.raises(InputError, match="unknown resampler 'x'"):
            musicnn.features(audio, SR, resampler="x")
        with pytest.raises(InputError,
                           match=r"sample.rate array\(\[16000\]\) is not a whole number of Hz"):
            musicnn.predict(audio, np.array([SR]))
    # a NaN is named by its sample in a JAX signal too, bfloat16 without NumPy's RuntimeWarning
    signal[20000], signal[30000] = np.nan, np.inf
    stereo = np.stack([signal, signal], axis=1)
    for audio, rate in ((signal, SR), (jnp.asarray(signal), SR), (jnp.asarray(signal), 44100),
                        (jnp.asarray(signal, jnp.bfloat16), SR), (jnp.asarray(stereo), SR)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(InputError, match="^sample 20000: contains [24] NaN or infinite"):
                musicnn.predict(audio, rate)
    # channels first: refused for the layout (it was "sample 0: contains 2 NaN" for JAX arrays)
    for audio in (stereo.T, jnp.asarray(stereo.T)):
        with pytest.raises(InputError, match="channels go last"):
            musicnn.predict(audio, 44100)


def test_features_and_jax_predict_check_what_predict_checks(musicnn):
    """features() was handed np.asarray(audio): a generator was "a ndarray", a ragged list and a
    (y, sr) pair raised NumPy's own ValueError; predict's chunk= on a JAX signal went unchecked
    (-1 raised inside JAX, True and 0 ran)."""
    signal = noise(16000 * 4)
    with pytest.raises(InputError, match="the audio is a generator|audio is a generator"):
        musicnn.features((x for x in signal), SR)
    with pytest.raises(InputError, match="audio is a pair, as librosa.load returns"):
        musicnn.features((signal, SR), SR)
    with pytest.raises(InputError, match="audio is not an array of samples"):
        musicnn.features([[0.1], [0.1, 0.2]], SR)
    for chunk in (-1, 0, True, 1.5):
        with pytest.raises(InputError, match=f"batch must be a positive integer .*got {chunk!r}"):
            pipeline.predict(musicnn, jnp.asarray(signal), SR, chunk=chunk)


@pytest.mark.parametrize("chunk", [9, 12])
def test_calls_of_any_size_equal_predict(musicnn, chunk):
    """A call of more patches than a CPU step (8) but not a multiple of it padded its last step
    with zero patches: MusiCNN, which computes a step's consecutive patches as one stretch, was
    off by up to 0.3 on the patches beside the padding and on the next call's first."""
    signal = noise(16000 * 30)  # 19 patches: calls of 9 (8 + 1) or 12 (8 + 4)
    want = musicnn.predict(signal, SR)
    np.testing.assert_allclose(pipeline.predict(musicnn, signal, SR, chunk=chunk), want, rtol=0,
                               atol=1e-6)  # another float32 summation order (sigmoids in [0, 1])


def test_rates_are_named_whatever_they_hold():
    """A rate of 1e300 Hz was written out in its 301 digits; a rate traced under jax.jit was "not
    a whole number"."""
    from jaxmir.checks import check_rate

    with pytest.raises(InputError, match=r"^rate 1.00e300 Hz is out of range; accepted"):
        check_rate(1e300, "rate")
    for rate, shown in ((1.999e15, "2.00e15"), (-10 ** 400 + 1, "-1.00e400"),
                        (999_999_999_999, "999999999999"), (np.int64(-2 ** 63), "-9.22e18")):
        # 1.99e15 was cut
        with pytest.raises(InputError, match=rf"^rate {shown} Hz is out of range"):
            check_rate(rate, "rate")
    with pytest.raises(InputError, match=r"^rate -5 Hz is out of range"):
        check_rate(-5, "rate")
    with pytest.raises(InputError, match="rate is traced .* give it as a Python number"):
        jax.jit(lambda rate: check_rate(rate, "rate"))(16000)


def test_the_bounds_of_the_accepted_rates_are_accepted():
    """1 Hz and 384 kHz, the ends of the range Essentia's MonoLoader (libsamplerate) loads and the
    refusal names ("accepted: 1-384000 Hz"), are rates; the whole numbers next to them are not."""
    from jaxmir.checks import MAX_RATE, MIN_RATE, check_rate

    assert (MIN_RATE, MAX_RATE) == (1, 384_000)
    for rate in (1, 1.0, np.int64(1), 384_000, 384_000.0, np.float32(384_000)):
        assert check_rate(rate, "rate") == int(rate) and type(check_rate(rate, "rate")) is int
    for rate in (0, 384_001):
        with pytest.raises(InputError, match=rf"^rate {rate} Hz is out of range; accepted: "
                                             r"1-384000 Hz$"):
            check_rate(rate, "rate")


def test_raw_bytes_generators_and_bfloat16(musicnn):
    """Raw bytes were taken for a path, the whole buffer echoed in the message (880,000
    characters for 4 s); a generator had "shape []"; bfloat16, a floating-point type, was
    refused as none."""
    signal = noise(16000 * 4)
    pcm = (signal * 32767).astype(np.int16).tobytes()
    with pytest.raises(InputError,
                       match=r"got 128000 bytes \(bytes\): decode raw PCM first \(np.frombuffer") \
            as refusal:
        musicnn.predict(pcm, SR)
    assert len(str(refusal.value)) < 300
    # NumPy reads other byte buffers as uint8 samples: 8-bit PCM tags of noise, twice as long
    import ctypes

    samples = np.frombuffer(pcm, np.int16)
    for buffer in (bytearray(pcm), memoryview(pcm), memoryview(bytearray(pcm)),
                   memoryview(samples).cast("B"),  # an int16 array's bytes
                   memoryview((ctypes.c_ubyte * len(pcm)).from_buffer_copy(pcm))):  # format "<B"
        kind = type(buffer).__name__
        for call in (lambda: musicnn.predict(buffer, SR), lambda: musicnn.features(buffer, SR),
                     lambda: musicnn.stream(SR).push(buffer)):
            with pytest.raises(InputError, match=rf"got 128000 bytes \({kind}\): decode raw PCM"):
                call()
    with pytest.raises(InputError, match="got the path 'song.wav'; read it with jaxmir.load_audio"):
        musicnn.stream(SR).push("song.wav")
    # a buffer of samples is samples, 8-bit ones a NumPy array's view holds included
    as_uint8 = (signal * 127 + 128).astype(np.uint8)
    np.testing.assert_array_equal(musicnn.predict(memoryview(as_uint8), SR),
                                  musicnn.predict(as_uint8, SR))
    as_int16 = memoryview(pcm).cast("h")
    np.testing.assert_array_equal(musicnn.predict(as_int16, SR),
                                  musicnn.predict(np.frombuffer(pcm, np.int16), SR))
    with pytest.raises(InputError, match="audio is a generator, which holds no array of samples"):
        musicnn.predict((x for x in signal), SR)
    rounded = signal.astype(jnp.bfloat16)
    want = musicnn.predict(rounded.astype(np.float32), SR)
    for audio in (rounded, jnp.asarray(rounded)):  # the bfloat16 values, exactly, in float32
        np.testing.assert_allclose(np.asarray(musicnn.predict(audio, SR)), want, rtol=0, atol=SAME)


def test_vggish_pipeline_matches_stepwise():
    model = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    audio = noise(16000 * 3, seed=9)  # 301 frames: 3 patches of 96, hop 93
    frames = np.asarray(model.features(audio, SR))
    assert frames.shape == (301, 64)
    got = np.asarray(model.predict(audio, SR))
    want = stepwise(model, audio)
    assert got.shape == want.shape == (3, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=SAME)


@pytest.mark.parametrize("which", ["mtt-vgg", "head on msd-musicnn"])
def test_vgg_and_composed_models(which):
    model = jaxmir.load("mtt-vgg") if which == "mtt-vgg" else jaxmir.load(
        shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"), backbone="msd-musicnn")
    audio = noise(16000 * 6, seed=13)  # 3 patches
    got = np.asarray(model.predict(audio, SR))
    want = stepwise(model, audio)
    assert got.shape == want.shape == (3, 50 if which == "mtt-vgg" else 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, np.abs(want).max()))


def test_models_without_patches_are_refused(tmp_path):
    head = jaxmir.load(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    with pytest.raises(InputError, match="embedding head.*--backbone, e.g. 'msd-musicnn'"):
        head.predict(noise(16000 * 4), SR)
    from jaxmir.train import export, fit

    params = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 128, 100, 2))  # on VGGish's 128-d
    path = export.export_head(params, "softmax", ("a", "b"), tmp_path / "vggish-head",
                              "audioset-vggish-3", (96, 64), "model/vggish/embeddings")[".pb"]
    with pytest.raises(InputError, match="e.g. a VGGish .pb"):
        jaxmir.load(path).predict(noise(16000 * 4), SR)
    toy = jaxmir.load(shared_fixture("essentia-models/vgg4.pb"))  # takes [128, 128] inputs
    with pytest.raises(InputError, match=r"takes \[128, 128\] inputs, not log-mel patches"):
        toy.features(noise(16000 * 4), SR)


def test_gradient_matches_finite_differences(musicnn):
    """d tag / d waveform: finite, and equal to a central difference in float64."""
    audio = noise(16000 * 4 + 8000, seed=10).astype(np.float64)  # 2 patches: shared timbral path
    direction = np.random.default_rng(11).standard_normal(audio.shape)
    with jax.enable_x64(True):
        x = jnp.asarray(audio)

        def rock(signal):
            return musicnn.predict(signal, SR)[:, 0].mean()

        assert rock(x).dtype == jnp.float64
        grad = jax.grad(rock)(x)
        assert grad.dtype == jnp.float64 and bool(jnp.isfinite(grad).all())
        assert float(jnp.abs(grad).max()) > 0
        analytic = float(grad @ direction)
        # ReLU and max kinks lie within 1e-6 of this signal along the direction (a step of
        # 1e-6 is off by 1e-3); 1e-8 stays on one linear piece, float64 keeps it exact enough
        eps = 1e-8
        numeric = float((rock(x + eps * direction) - rock(x - eps * direction)) / (2 * eps))
    assert numeric == pytest.approx(analytic, rel=1e-5)
    grad32 = jax.grad(lambda s: musicnn.predict(s, SR)[:, 0].mean())(
        jnp.asarray(audio, jnp.float32))
    assert grad32.dtype == jnp.float32 and bool(jnp.isfinite(grad32).all())
    assert np.corrcoef(np.asarray(grad32), np.asarray(grad))[0, 1] > 0.99


@pytest.mark.parametrize("rate, channels", [(16000, 1), (44100, 2)])
def test_predict_reads_an_array_in_blocks_as_a_file_is_read(musicnn, rate, channels):
    """A long signal went to the engine whole: it held a converted copy and a buffer of it, 2.2
    times the signal's bytes again (a 30-min recording: 261 MB more). In blocks it holds a
    block's, and the values are those of the whole signal pushed at once, bit for bit."""
    from jaxmir.audio import BLOCK_FRAMES
    from jaxmir.stream import Stream, concat_patches

    seconds = 8 * BLOCK_FRAMES / rate
    signal = (0.1 * np.random.default_rng(3).standard_normal((int(rate * seconds), channels))
              ).astype(np.float32).squeeze()
    musicnn.predict(signal[:rate * 4], rate)  # compiled before memory is traced
    found, peak = traced_peak(lambda: musicnn.predict(signal, rate))
    assert peak < 0.8 * signal.nbytes, (peak, signal.nbytes)
    whole = Stream(musicnn, rate, "predictions", require_patch=True, eager=False)
    np.testing.assert_array_equal(
        found, concat_patches(whole.run([signal]), whole.empty).values["predictions"])


def test_a_long_signal_s_bad_sample_is_named_in_the_whole_and_at_once(musicnn):
    """Read in blocks, a NaN past the first block was named 'in the chunk from sample 262144'
    (one array was given, no chunks), after the blocks before it had gone through the model."""
    from jaxmir.audio import BLOCK_FRAMES
    from jaxmir.errors import AudioError

    signal = np.zeros(3 * BLOCK_FRAMES, np.float32)
    signal[BLOCK_FRAMES + 4990] = np.nan
    with pytest.raises(AudioError, match=rf"^sample {BLOCK_FRAMES + 4990}: contains 1 NaN"):
        musicnn.predict(signal, 16000)
    # in float16 too, where the bound on peaks is itself infinite (an infinity passed it), and
    # in bfloat16, which NumPy does not count among its floating types (it went in blocks)
    for dtype in (np.float16, jnp.bfloat16):
        signal = np.zeros(3 * BLOCK_FRAMES, dtype)
        signal[2 * BLOCK_FRAMES + 7] = np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # "overflow encountered in cast"
            with pytest.raises(AudioError, match=rf"^sample {2 * BLOCK_FRAMES + 7}: contains 1 "):
                musicnn.predict(signal, 16000)
