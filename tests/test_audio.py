"""jaxmir.audio: Essentia's MonoLoader signal reproduced, librosa's for the soxr mode, and bad
input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

import jaxmir
from conftest import require, shared_fixture
from jaxmir.audio import MonoInput, load_audio, prepare_audio
from jaxmir.errors import AudioError, InputError

CHIRP = "essentia-reference/audio/chirp_44k1_stereo.wav"
SINES = "essentia-reference/audio/synth_sines_16k_mono.wav"


def reference(name: str) -> dict:
    with np.load(shared_fixture(f"essentia-reference/{name}.npz"), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def test_chirp_44k1_stereo_matches_essentia_monoloader():
    """Downmix + libsamplerate sinc-medium with Essentia's float32 ratio: sample-exact."""
    ref = reference("chirp_44k1_stereo")
    audio = load_audio(shared_fixture(CHIRP), resampler="samplerate")
    assert audio.dtype == np.float32 and audio.shape == ref["audio_16k"].shape
    assert np.max(np.abs(audio - ref["audio_16k"])) == 0.0


# 1e-6: the JAX resampler's parity bound (tests/test_resample.py), where a wrong tap or
# position moves samples by >= 1e-5.
JAX_TOL = 1e-6


def test_22k05_resampling_matches_essentia():
    """TRWJAZ... (22.05 kHz): Essentia's downmix resampled by libsamplerate gives its 16-kHz
    signal exactly; the default (the converter in JAX, its positions from the host's run of
    libsamplerate's rounding recurrence) within the JAX resampler's bound."""
    from jaxmir.audio import implementation

    ref = reference("TRWJAZW128F42760DD_test")
    assert implementation("essentia", 22050, 16000) == "jax"
    for resampler, tolerance in (("samplerate", 0.0), ("essentia", JAX_TOL)):
        audio = prepare_audio(ref["downmix_native"], int(ref["loader_native_sr"]),
                              resampler=resampler)
        assert audio.shape == ref["audio_16k"].shape
        assert np.max(np.abs(audio - ref["audio_16k"])) <= tolerance


def test_default_resampler_matches_essentia_at_44k1():
    """The default at 44.1 kHz is the converter in JAX (float64 matrix products) against
    Essentia's own 16-kHz signal."""
    from jaxmir.audio import implementation

    ref = reference("chirp_44k1_stereo")
    assert implementation("essentia", 44100, 16000) == "jax"
    audio = load_audio(shared_fixture(CHIRP))
    assert audio.dtype == np.float32 and audio.shape == ref["audio_16k"].shape
    assert np.max(np.abs(audio - ref["audio_16k"])) <= JAX_TOL


def test_jax_resampler_at_22k05_matches_essentia():
    """jaxmir.resample_jax at 22.05 kHz (float32 sums, the position recurrence run as a scan:
    the traceable path) against Essentia's own 16-kHz signal."""
    import jax.numpy as jnp

    from jaxmir.resample import resample_jax

    ref = reference("TRWJAZW128F42760DD_test")
    audio = np.asarray(resample_jax(jnp.asarray(ref["downmix_native"]),
                                    int(ref["loader_native_sr"]), 16000))
    assert audio.dtype == np.float32 and audio.shape == ref["audio_16k"].shape
    assert np.max(np.abs(audio - ref["audio_16k"])) <= JAX_TOL


def test_float32_ratio_is_what_makes_it_exact():
    """With the exact double ratio libsamplerate drifts away from Essentia (~3e-3 on the chirp)."""
    import samplerate
    ref = reference("chirp_44k1_stereo")
    drifting = samplerate.resample(ref["downmix_native"], 16000 / 44100, "sinc_medium")
    n = min(len(drifting), len(ref["audio_16k"]))
    assert np.max(np.abs(drifting[:n] - ref["audio_16k"][:n])) > 1e-3


def test_16k_file_is_not_resampled():
    ref = reference("synth_sines_16k_mono")
    np.testing.assert_array_equal(load_audio(shared_fixture(SINES)), ref["audio_16k"])


def test_stereo_downmix_is_essentias():
    ref = reference("chirp_44k1_stereo")
    stereo, rate = soundfile.read(shared_fixture(CHIRP), dtype="float32", always_2d=True)
    mono = prepare_audio(stereo, rate, target_rate=rate)
    np.testing.assert_array_equal(mono, ref["downmix_native"])


@pytest.mark.parametrize("path", [CHIRP, "audio/hiphop.mp3"])
def test_soxr_mode_is_librosa_load(path):
    librosa = require("librosa")
    file = shared_fixture(path)
    expected, _ = librosa.load(file, sr=16000)
    # librosa reads with libsndfile
    actual = load_audio(file, resampler="soxr", decoder="soundfile")
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) == 0.0


def test_soxr_mode_rounds_its_length_up_as_librosa_does():
    """librosa's length is ceil(n * 16000 / rate): 44101 samples at 44.1 kHz (16000.36) give
    16001, one more than rounding to the nearest; the fixtures' lengths round up either way."""
    librosa = require("librosa")
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(44101) / 44100)).astype(np.float32)
    expected = librosa.resample(tone, orig_sr=44100, target_sr=16000, res_type="soxr_hq")
    actual = prepare_audio(tone, 44100, resampler="soxr")
    assert actual.shape == expected.shape == (16001,)
    np.testing.assert_array_equal(actual, expected)


def test_mp3_reads():
    audio = load_audio(shared_fixture("audio/hiphop.mp3"))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] / 16000 - 5.28) < 0.02
    assert 0.01 < np.max(np.abs(audio)) <= 1.0


def test_silence_is_valid(tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros((22050, 2), np.int16), 44100)
    audio = load_audio(path)
    assert audio.shape == (8000,) and not audio.any()


def test_prepare_audio_scales_pcm():
    pcm = np.array([-32768, -16384, 0, 16384, 32767], np.int16)
    np.testing.assert_array_equal(prepare_audio(pcm, 16000), pcm / np.float32(32768))
    pcm32 = np.array([-2 ** 31, 0, 2 ** 30], np.int32)
    np.testing.assert_array_equal(prepare_audio(pcm32, 16000), [-1.0, 0.0, 0.5])
    unsigned = np.array([0, 128, 192], np.uint8)
    np.testing.assert_array_equal(prepare_audio(unsigned, 16000), [-1.0, 0.0, 0.5])
    stereo = np.array([[1000, -1000], [2000, 0]], np.int16)
    np.testing.assert_array_equal(prepare_audio(stereo, 16000), np.float32([0.0, 2000 / 32768 / 2]))
    assert prepare_audio(np.zeros(10, np.float64), 16000).dtype == np.float32
    # NumPy's default integer holding int16 values was read as 64-bit PCM: silence, silently
    for dtype in (np.int64, np.uint64):
        with pytest.raises(AudioError, match=f"dtype {np.dtype(dtype)}, which is no PCM format"):
            prepare_audio(pcm.astype(dtype), 16000)
    # chunk by chunk (predict, streams), the message named the audio twice ("the audio: audio has")
    for bad in (pcm.astype(np.int64), pcm > 0):
        with pytest.raises(AudioError, match=f"^the audio has dtype {bad.dtype}"):
            MonoInput(16000)(bad)


def test_integer_pcm_converts_in_float32_with_float64s_values():
    """The conversion ran through a float64 copy of the signal: a 10-min int16 array took 6x its
    size at the peak (4x now: the float32 signal and its mono mix); the same floats, bit for bit
    (libswresample's own conversions, which the file tests compare with Essentia)."""
    import tracemalloc

    rng = np.random.default_rng(1)
    for dtype in (np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, 100_000, dtype=np.int64, endpoint=True).astype(dtype)
        x[:2] = [info.min, info.max]
        half = float(2 ** (8 * np.dtype(dtype).itemsize - 1))
        offset = half if np.issubdtype(dtype, np.unsignedinteger) else 0.0
        want = ((x.astype(np.float64) - offset) / half).astype(np.float32)
        np.testing.assert_array_equal(prepare_audio(x, 16000), want, err_msg=np.dtype(dtype).name)
    stereo = (rng.uniform(-1, 1, (16000 * 60, 2)) * 32767).astype(np.int16)
    tracemalloc.start()
    try:
        prepare_audio(stereo, 16000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4.5 * stereo.nbytes, peak / stereo.nbytes


def test_prepare_audio_resamples_with_explicit_rate():
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for resampler in ("essentia", "soxr"):
        out = prepare_audio(tone, 44100, resampler=resampler)
        assert abs(out.shape[0] - 16000) <= 1
        expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(out.shape[0]) / 16000)
        # away from the edges both resamplers reproduce a 440 Hz tone closely
        assert np.max(np.abs(out[200:-200] - expected[200:-200])) < 1e-3


# ---------------------------------------------------------------------------
# bad input: AudioError (an InputError, a ValueError) naming the file and what is accepted
# ---------------------------------------------------------------------------
def write(tmp_path, name, data, rate, **kwargs):
    path = tmp_path / name
    soundfile.write(path, data, rate, **kwargs)
    return path


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="no such file") as err:
        load_audio(path)
    assert str(path) in str(err.value) and "WAV, FLAC" in str(err.value)


def test_an_open_file_is_not_a_path(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF")
    with open(path, "rb") as handle, pytest.raises(AudioError, match="takes a file's path; got "
                                                                      "BufferedReader"):
        load_audio(handle)


@pytest.mark.parametrize("decoder", ["essentia", "soundfile"])
def test_directory(tmp_path, decoder):
    with pytest.raises(AudioError, match="is a directory") as err:
        load_audio(tmp_path, decoder=decoder)
    assert str(tmp_path) in str(err.value)


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not a wave file\n" * 20)
    with pytest.raises(AudioError, match="cannot be read as audio") as err:
        load_audio(path)
    assert str(path) in str(err.value) and "expected" in str(err.value)


def test_truncated_file(tmp_path):
    good = write(tmp_path, "good.flac", np.zeros(16000, np.float32), 16000)
    path = tmp_path / "truncated.flac"
    path.write_bytes(good.read_bytes()[:20])
    with pytest.raises(AudioError, match="truncated.flac"):
        load_audio(path)


def test_empty_audio(tmp_path):
    path = write(tmp_path, "empty.wav", np.zeros((0, 1), np.int16), 16000)
    with pytest.raises(AudioError, match="no samples") as err:
        load_audio(path)
    assert "empty.wav" in str(err.value)
    with pytest.raises(AudioError, match="no samples"):
        prepare_audio(np.zeros(0, np.float32), 16000)
    # one sample at 44.1 kHz is none at 16 kHz: the file has a sample, so say what happened
    one = write(tmp_path, "one.wav", np.full((1, 1), 1000, np.int16), 44100)
    for decoder in ("essentia", "float", "soundfile"):  # libsndfile's returned an empty array
        with pytest.raises(AudioError, match="one.wav: its 1 sample.s. at 44100 Hz give none at "
                                             "16000 Hz"):
            load_audio(one, decoder=decoder)


def test_nan_and_inf(tmp_path):
    data = np.zeros(1000, np.float32)
    data[10], data[20] = np.nan, np.inf
    path = write(tmp_path, "nan.wav", data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="2 NaN or infinite") as err:
        load_audio(path)
    assert "nan.wav" in str(err.value)
    with pytest.raises(AudioError, match="NaN or infinite"):
        prepare_audio(data, 16000)
    # float16 (whose bound MAX_PEAK rounds to inf) is checked in float32: its first infinite
    # sample is named, not "the audio"
    half = np.zeros(1000, np.float16)
    half[30] = np.inf
    with pytest.raises(AudioError, match=r"^sample 30: contains 1 NaN or infinite"):
        MonoInput(16000)(half)


def test_a_peak_that_would_overflow_the_spectrum_is_refused(tmp_path):
    """Finite samples loud enough to overflow the float32 spectrum (a 1-kHz tone at 1e16: inf in
    the log-mel, NaN tags) are refused wherever audio enters, naming the peak; the bound itself,
    1e12, still gives finite tags."""
    import jax.numpy as jnp

    import jaxmir
    from jaxmir.audio import MAX_PEAK, MonoInput
    from jaxmir.frontends import logmel

    musicnn = jaxmir.load("msd-musicnn")
    tone = np.sin(2 * np.pi * 1000 * np.arange(4 * 16000) / 16000).astype(np.float32)
    assert not np.isfinite(np.asarray(logmel(tone * np.float32(1e16), musicnn.spec.frontend))).all()
    assert np.isfinite(musicnn.predict(tone * np.float32(MAX_PEAK), 16000)).all()
    loud = tone * np.float32(1e20)
    path = write(tmp_path, "loud.wav", loud, 16000, subtype="FLOAT")
    with pytest.raises(AudioError,
                       match=r"loud.wav: sample 1: a sample reaches 1e\+20, beyond 1e\+12"):
        load_audio(path)
    # not "infinite" after float32
    with pytest.raises(AudioError, match=r"a sample reaches 1e\+300"):
        prepare_audio(np.full(100, 1e300), 16000)
    for call in (lambda: prepare_audio(loud * np.float32(1e-7), 44100),
                 lambda: musicnn.predict(jnp.asarray(loud), 16000),
                 lambda: MonoInput(16000)(loud[:, None])):
        with pytest.raises(AudioError, match="beyond 1e\\+12: the float32 spectrum would overflow"):
            call()
    # MAX_PEAK is the loudest sample accepted (float64 is checked before float32 rounds it)
    at_bound = np.array([MAX_PEAK, -MAX_PEAK, 0.0])
    np.testing.assert_array_equal(prepare_audio(at_bound, 16000), at_bound.astype(np.float32))
    with pytest.raises(AudioError, match="beyond 1e\\+12"):
        prepare_audio(np.nextafter(at_bound, 2 * at_bound), 16000)
    spike = np.zeros(5 * 44100, np.float32)
    spike[44100] = 3e20  # named by its sample (it was "chunk 0 (from sample 0)")
    with pytest.raises(AudioError, match=r"^sample 44100: a sample reaches 3e\+20"):
        musicnn.predict(spike, 44100)


def test_load_audio_holds_little_more_than_its_result(tmp_path):
    """The whole file was decoded at its own rate first: 6 min of 44.1-kHz stereo took 265 MB
    of NumPy memory at the peak for a 22-MB result (12x); block by block, 53 MB (2.4x)."""
    import tracemalloc

    noise = (0.3 * np.random.default_rng(0).standard_normal((44100 * 360, 2))).astype(np.float32)
    long = write(tmp_path, "long.wav", noise, 44100, subtype="PCM_16")
    short = write(tmp_path, "short.wav", noise[:44100 * 8], 44100, subtype="PCM_16")
    del noise
    load_audio(short)  # the resampler's tables, before the measurement
    tracemalloc.start()  # NumPy's buffers are traced, not the RSS others in this process left
    try:
        result_mb = load_audio(long).nbytes / 2**20
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak_mb < 4 * result_mb + 8, (peak_mb, result_mb)


def test_more_than_two_channels(tmp_path):
    path = write(tmp_path, "surround.wav", np.zeros((1000, 3), np.int16), 16000)
    with pytest.raises(AudioError, match="3 channels; accepted: mono or stereo") as err:
        load_audio(path)
    assert "surround.wav" in str(err.value)
    with pytest.raises(AudioError, match="3 channels"):
        prepare_audio(np.zeros((1000, 3), np.float32), 16000)
    with pytest.raises(AudioError, match=r"1000 channels.*channels go last.*librosa's .* is y\.T"):
        prepare_audio(np.zeros((2, 1000), np.float32), 16000)  # channels-first by mistake
    # a stream (jaxmir tag FILE runs one) said "the audio: has 3 channels"
    with pytest.raises(AudioError, match="^the audio has 3 channels; accepted: mono or stereo"):
        jaxmir.load("msd-musicnn").stream(16000).push(np.zeros((1000, 3), np.float32))
    # a file's stream (jaxmir tag FILE) gave that array's message, with its hint on arrays
    from jaxmir.stream import file_stream

    with pytest.raises(AudioError, match=r"surround.wav: has 3 channels; accepted: mono or "
                                         r"stereo, as Essentia's loader$"):
        with file_stream(jaxmir.load("msd-musicnn"), path, "predictions"):
            pass


def test_file_rate_out_of_range(tmp_path):
    path = write(tmp_path, "rate400000.wav", np.zeros(1000, np.int16), 400000)
    with pytest.raises(AudioError, match="400000 Hz is out of range; accepted: 1-384000 Hz") as err:
        load_audio(path)
    assert "rate400000.wav" in str(err.value)


@pytest.mark.parametrize("rate", [1000, 6000, 200000, 384000])
def test_rates_essentia_loads_beyond_8_to_192_khz(tmp_path, rate):
    """MonoLoader loads a file at any rate libsamplerate converts to 16 kHz (1 and 384 kHz
    included; test_decode compares the samples at 6 and 384 kHz): so does load_audio."""
    path = write(tmp_path, f"rate{rate}.wav", np.full(3 * rate, 1000, np.int16), rate)
    assert load_audio(path).shape[0] in (47999, 48000)


@pytest.mark.parametrize("rate", [50, 62])
def test_rate_too_far_from_16_khz(tmp_path, rate):
    """Below 62.5 Hz the ratio to 16 kHz passes libsamplerate's 256, which Essentia refuses too."""
    path = write(tmp_path, f"rate{rate}.wav", np.zeros(1000, np.int16), rate)
    with pytest.raises(AudioError, match=rf"rate{rate}.wav: sample rate {rate} Hz is too far "
                                         r"from 16000 Hz \(a ratio of .*\); libsamplerate"):
        load_audio(path)
    with pytest.raises(AudioError, match=f"sample_rate {rate} Hz is too far from 16000 Hz"):
        prepare_audio(np.zeros(100, np.float32), rate)
    assert abs(prepare_audio(np.zeros(100, np.float32), 63).shape[0] - 100 * 16000 / 63) < 2


@pytest.mark.parametrize("rate", [0, 384001, 16000.5, -16000, float("nan"), "16000", None, True])
def test_array_rate_out_of_range(rate):
    with pytest.raises(AudioError, match="1-384000 Hz"):
        prepare_audio(np.zeros(100, np.float32), rate)


def test_target_rate_checked(tmp_path):
    with pytest.raises(AudioError, match="requested sample_rate 500000 Hz"):
        load_audio(shared_fixture(SINES), sample_rate=500000)
    with pytest.raises(AudioError, match="target_rate"):
        prepare_audio(np.zeros(100, np.float32), 16000, target_rate=500000)


def test_unknown_resampler():
    with pytest.raises(AudioError,
                       match="unknown resampler 'kaiser'; accepted: "
                             "'essentia', 'samplerate', 'soxr'"):
        load_audio(shared_fixture(SINES), resampler="kaiser")
    with pytest.raises(AudioError, match="unknown resampler"):
        prepare_audio(np.zeros(100, np.float32), 16000, resampler="librosa")


@pytest.mark.parametrize("audio, match", [
    (np.zeros((10, 2, 2), np.float32), r"shape \[10, 2, 2\]"),
    (np.float32(0.5), r"shape \[\]"),
    (np.array(["a", "b"]), "dtype"),
    (np.zeros(10, np.complex64), "dtype"),
    (np.zeros((10, 0), np.float32), "contains no samples"),  # samples, but no channel
])
def test_bad_arrays(audio, match):
    with pytest.raises(AudioError, match=match):
        prepare_audio(audio, 16000)


def test_two_samples_in_a_list_are_samples_not_a_pair():
    """Only an array and a scalar, librosa.load's ``(y, sr)``, is refused as a pair: two scalars
    are two samples (a stream's short chunk), at the same rate given back as they are."""
    for samples in ([0.25, -0.5], (0.25, -0.5)):
        np.testing.assert_array_equal(prepare_audio(samples, 16000), np.float32(samples))
        np.testing.assert_array_equal(MonoInput(16000)(samples), np.float32(samples))


def test_errors_are_value_errors():
    assert issubclass(AudioError, InputError) and issubclass(AudioError, ValueError)


def test_decoders_agree_on_pcm_and_old_calls_still_work():
    """WAV: FFmpeg (both modes) and libsndfile give the same samples; positional calls as before."""
    path = shared_fixture(CHIRP)
    default = load_audio(path, 16000, "essentia")
    for decoder in ("essentia", "float", "soundfile"):  # strict: FFmpeg's decoders report damage
        np.testing.assert_array_equal(
            load_audio(path, decoder=decoder, strict=decoder != "soundfile"), default)
    with pytest.raises(AudioError, match="unknown decoder"):
        load_audio(path, decoder="libsndfile")
