"""jaxmir.frontends against Essentia's own front-end outputs, float64 references and librosa.

Parity with Essentia (``../shared/fixtures/essentia-reference``) is limited by
Essentia itself: it computes its FFT in float32, and its spectrum differs from
the exact one by ~1 float32 ulp of the frame's largest bin (4e-6 on the chirp).
In bands far below a loud peak that noise floor is a large relative error,
which ``ln(x + 0.01)`` (VGGish) and ``log10(1 + 1e4 x)`` amplify. An exact
(float64) computation on Essentia's own float32 windowed frames and filterbank
is itself off Essentia's bands by up to 1.9e-4 (MusiCNN) and 3.1e-4 (VGGish)
on the chirp, so the tolerances below are per input and stated with what was
measured when they were set.

Frames Essentia judged silent (``*_silent``: mean power < 1e-10) got unseeded
uniform noise of amplitude 1e-10 added before the analysis. That moves a
spectrum bin by at most sum(window) * 1e-10 (2.0e-8 for VGGish's window), a
VGGish band by at most 8.9 * 2.0e-8 (its largest mel row sum) = 1.8e-7, i.e.
at most 1.8e-5 in ``ln(x + 0.01)``, and MusiCNN's bands far less (its rows sum
to < 0.034); those frames are compared separately within ``SILENT_TOL``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require, shared_fixture
from jaxmir import frontends
from jaxmir.errors import InputError

REFERENCES = ["synth_sines_16k_mono", "chirp_44k1_stereo",
              "joram-moments_of_clarity-08-solipsism-59-88", "TRWJAZW128F42760DD_test"]

# Error (abs, log domain) on non-silent frames, measured when set (x86-64 CPU, jax 0.10.2):
#                          max: musicnn  vggish    99.9th pct: musicnn  vggish
#   synth_sines_16k_mono        1.40e-5  2.84e-5               1.24e-5  8.7e-6
#   chirp_44k1_stereo           1.89e-4  4.37e-4               1.62e-5  2.23e-4
#   joram-...                   1.53e-5  1.56e-4               9.3e-6   2.77e-5
#   TRWJAZW128F42760DD          4.18e-5  5.08e-5               1.10e-5  8.8e-6
# float64 maths on Essentia's float32 frames and filterbanks: chirp 1.89e-4 / 3.13e-4, joram 1.53e-5
# / 1.64e-4.
# On an H200 (JAX 0.11.2, cuFFT) the musicnn column was the CPU's, and the vggish one 1.8-2.4x
# it: synth 5.84e-5 max / 2.12e-5 p99.9, chirp 7.77e-4 / 4.15e-4 (joram and TRW not run there).
# float32 FFT rounding is ~1e-7 of a frame's energy, and ln(mel + 0.01) multiplies it by up to
# 100 in near-empty bands (the chirp's frames hold nearly all their energy in a band or two);
# the FFT's order of sums differs by device. So the vggish column allows 4x the CPU's figures;
# a wrong window, filterbank or log is off by 1e-2 or more.
ESSENTIA_TOL = {  # (max musicnn, max vggish, p99.9 musicnn, p99.9 vggish)
    "synth_sines_16k_mono": (3e-5, 1.2e-4, 2e-5, 4e-5),
    "chirp_44k1_stereo": (3e-4, 1.8e-3, 3e-5, 9e-4),
    "joram-moments_of_clarity-08-solipsism-59-88": (3e-5, 6.4e-4, 2e-5, 1.2e-4),
    "TRWJAZW128F42760DD_test": (8e-5, 2.1e-4, 2e-5, 4e-5),
}
SILENT_TOL = 2e-5  # measured 4.8e-7


def reference(name: str) -> dict:
    with np.load(shared_fixture(f"essentia-reference/{name}.npz"), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module", params=REFERENCES)
def ref(request):
    return reference(request.param) | {"name": request.param}


# ---------------------------------------------------------------------------
# float64 references, written from the published formulas (independent of jaxmir's code)
# ---------------------------------------------------------------------------
def ref_frames(x: np.ndarray, size: int, hop: int, first: int, count: int) -> np.ndarray:
    out = np.zeros((count, size))
    for k in range(count):
        start = first + k * hop
        lo, hi = max(start, 0), min(start + size, len(x))
        if hi > lo:
            out[k, lo - start:hi - start] = x[lo:hi]
    return out


def slaney_mel(hz):
    hz = np.asarray(hz, np.float64)
    return np.where(hz < 1000, 3 * hz / 200,
                    15 + np.log(np.maximum(hz, 1e-9) / 1000) / (np.log(6.4) / 27))


def slaney_hz(mel):
    mel = np.asarray(mel, np.float64)
    return np.where(mel < 15, 200 * mel / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))


def htk_mel(hz):
    return 2595 * np.log10(1 + np.asarray(hz, np.float64) / 700)


def htk_hz(mel):
    return 700 * (10 ** (np.asarray(mel, np.float64) / 2595) - 1)


def ref_essentia_filterbank(n_bands, low, high, to_mel, to_hz, mel_weighting: bool, unit_tri: bool):
    """Essentia MelBands + TriangularBands, float64 (edges by repeated addition, as MelBands
    does)."""
    step = (to_mel(high) - to_mel(low)) / (n_bands + 1)
    mels = [to_mel(low)]
    for _ in range(n_bands + 1):
        mels.append(mels[-1] + step)
    edges = to_hz(np.array(mels))
    warp = to_mel if mel_weighting else (lambda f: np.asarray(f, np.float64))
    weights = np.zeros((n_bands, 257))
    for i in range(n_bands):
        s1 = warp(edges[i + 1]) - warp(edges[i])
        s2 = warp(edges[i + 2]) - warp(edges[i + 1])
        for j in range(math.ceil(edges[i] / 31.25), math.floor(edges[i + 2] / 31.25) + 1):
            f = j * 31.25
            weights[i, j] = ((warp(f) - warp(edges[i])) / s1 if f < edges[i + 1]
                             else (warp(edges[i + 2]) - warp(f)) / s2)
        if unit_tri:
            weights[i] /= (s1 + s2) / 2
    return weights


def ref_essentia_musicnn(x, weights=None):
    n = len(x)
    frames = ref_frames(x.astype(np.float64), 512, 256, -256, -(-n // 256) + 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 511)
    power = np.abs(np.fft.rfft(frames * window)) ** 2
    if weights is None:
        weights = ref_essentia_filterbank(96, 0.0, 8000.0, slaney_mel, slaney_hz, False, True)
    return np.log10(1 + 10000 * power @ np.asarray(weights, np.float64).T)


def ref_essentia_vggish(x, weights=None):
    n = len(x)
    frames = ref_frames(x.astype(np.float64), 400, 160, -200, -(-n // 160) + 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)
    magnitude = np.abs(np.fft.rfft(frames * window, 512))
    if weights is None:
        weights = ref_essentia_filterbank(64, 125.0, 7500.0, htk_mel, htk_hz, True, False)
    return np.log(0.01 + magnitude @ np.asarray(weights, np.float64).T)


def ref_google_vggish(x):
    """VGGish's mel_features.py: periodic Hann, no padding, HTK mel (1127 ln), DC row zeroed."""
    n = len(x)
    count = 1 + (n - 400) // 160 if n >= 400 else 0
    frames = ref_frames(x.astype(np.float64), 400, 160, 0, count)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    magnitude = np.abs(np.fft.rfft(frames * window, 512))

    def mel(f):
        return 1127.0 * np.log(1 + f / 700.0)
    bins = mel(np.linspace(0, 8000, 257))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    matrix = np.zeros((257, 64))
    for i in range(64):
        lo, mid, hi = edges[i:i + 3]
        matrix[:, i] = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
    matrix[0, :] = 0
    return np.log(magnitude @ matrix + 0.01)


def librosa_musicnn(librosa, x):
    """musicnn's batch_data, with the log evaluated as NumPy 1.x did (float32)."""
    mel = librosa.feature.melspectrogram(y=x, sr=16000, hop_length=256, n_fft=512, n_mels=96).T
    mel16 = mel.astype(np.float16)
    return mel16, np.log10(10000 * mel16.astype(np.float32) + 1)


def sines(n=48000, seed=0):
    t = np.arange(n) / 16000
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1000 * t)
            + 0.01 * noise).astype(np.float32)


def max_error(a, b, mask=None) -> float:
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if mask is not None:
        diff = diff[mask]
    return float(diff.max()) if diff.size else 0.0


# ---------------------------------------------------------------------------
# filterbanks, windows, framing: Essentia's own arrays
# ---------------------------------------------------------------------------
def test_filterbanks_match_essentia(ref):
    musicnn = frontends.mel_filterbank("musicnn")
    assert musicnn.dtype == np.float32 and musicnn.shape == (96, 257)
    np.testing.assert_array_equal(musicnn != 0, ref["musicnn_filterbank"] != 0)
    # measured 9.9e-8: 98% of the entries are bit-equal, the others 1-3 ulp of a band edge away
    assert max_error(musicnn, ref["musicnn_filterbank"]) <= 2e-7
    # Essentia's VGGish filterbank is reproduced bit for bit
    np.testing.assert_array_equal(frontends.mel_filterbank("vggish"), ref["vggish_filterbank"])


@pytest.mark.parametrize("table", [frontends.mel_filterbank, frontends.analysis_window])
def test_the_shared_tables_are_read_only(table):
    """One array serves every caller (cached): written to in place, it would change every later
    front-end's numbers."""
    assert not table("musicnn").flags.writeable  # not written to here: the tests after share it


def test_windows_match_essentia(ref):
    # TensorflowInputMusiCNN leaves Windowing's zeroPhase on: its recorded window is rotated by N/2
    np.testing.assert_array_equal(frontends.analysis_window("musicnn"),
                                  np.roll(ref["musicnn_window"], 256))
    # TensorflowInputVGGish: zeroPhase off, 112 zeros appended
    np.testing.assert_array_equal(frontends.analysis_window("vggish"), ref["vggish_window"][:400])
    assert not ref["vggish_window"][400:].any()


def test_frame_positions_match_essentia(ref):
    n = len(ref["audio_16k"])
    np.testing.assert_array_equal(frontends.frame_starts("musicnn", n), ref["musicnn_frame_starts"])
    np.testing.assert_array_equal(frontends.frame_starts("vggish", n), ref["vggish_frame_starts"])
    assert frontends.musicnn_num_frames(n) == ref["musicnn_bands"].shape[0]
    assert frontends.vggish_num_frames(n) == ref["vggish_bands"].shape[0]


def test_frame_count_formulas():
    for n in [1, 159, 160, 161, 255, 256, 257, 399, 400, 401, 511, 512, 513, 16000]:
        assert frontends.musicnn_num_frames(n) == math.ceil(n / 256) + 1
        assert frontends.vggish_num_frames(n) == math.ceil(n / 160) + 1
        assert frontends.musicnn_num_frames(n, "musicnn") == 1 + n // 256
        assert frontends.vggish_num_frames(n, "google") == (1 + (n - 400) // 160 if n >= 400 else 0)
        x = np.zeros(n, np.float32)
        assert frontends.musicnn_logmel(x).shape == (math.ceil(n / 256) + 1, 96)
        assert frontends.vggish_logmel(x, compat="google").shape \
            == (frontends.vggish_num_frames(n, "google"), 64)
    assert frontends.musicnn_num_frames(0) == frontends.vggish_num_frames(0) == 0
    assert frontends.musicnn_logmel(np.zeros(0, np.float32)).shape == (0, 96)


# ---------------------------------------------------------------------------
# bands: Essentia's own outputs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("frontend", ["musicnn", "vggish"])
def test_bands_match_essentia(ref, frontend):
    fn = frontends.musicnn_logmel if frontend == "musicnn" else frontends.vggish_logmel
    actual = np.asarray(fn(ref["audio_16k"]))
    expected = ref[f"{frontend}_bands"]
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    silent = ref[f"{frontend}_silent"]
    column = 0 if frontend == "musicnn" else 1
    error = max_error(actual, expected, ~silent)
    p999 = float(np.quantile(np.abs(actual - expected)[~silent], 0.999))
    print(f"{ref['name']} {frontend}: max abs error {error:.3g}, 99.9th percentile {p999:.3g} "
          f"over {int((~silent).sum())} frames")
    assert error <= ESSENTIA_TOL[ref["name"]][column]
    assert p999 <= ESSENTIA_TOL[ref["name"]][2 + column]
    assert max_error(actual, expected, silent) <= SILENT_TOL


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["synth_sines_16k_mono", "TRWJAZW128F42760DD_test"])
def test_essentia_signal_path_matches_float64(name):
    """Framing, window, FFT, mel and log in float64 on Essentia's own filterbanks."""
    ref = reference(name)
    x = ref["audio_16k"]
    # measured: synth 1.4e-5 / 2.9e-5, TRW 4.2e-5 / 5.1e-5
    assert max_error(frontends.musicnn_logmel(x),
                     ref_essentia_musicnn(x, ref["musicnn_filterbank"])) <= 1e-4
    assert max_error(frontends.vggish_logmel(x),
                     ref_essentia_vggish(x, ref["vggish_filterbank"])) <= 1e-4


@pytest.mark.parametrize("name", ["synth_sines_16k_mono", "TRWJAZW128F42760DD_test"])
def test_essentia_modes_match_float64_formulas(name):
    """Everything in float64, band edges included: the edges' float32 rounding is the main
    difference."""
    x = reference(name)["audio_16k"]
    # measured: synth 4.1e-5 / 6.1e-5, TRW 3.7e-4 / 2.7e-4
    assert max_error(frontends.musicnn_logmel(x), ref_essentia_musicnn(x)) <= 5e-4
    assert max_error(frontends.vggish_logmel(x), ref_essentia_vggish(x)) <= 5e-4


def test_float32_band_edges_are_what_essentia_uses():
    """On the chirp, float64 band edges miss Essentia's MusiCNN bands by 1.8e-3; its float32 edges
    by 1.9e-4."""
    ref = reference("chirp_44k1_stereo")
    x, expected, loud = ref["audio_16k"], ref["musicnn_bands"], ~ref["musicnn_silent"]
    float64_edges = max_error(ref_essentia_musicnn(x), expected, loud)
    jaxmir = max_error(frontends.musicnn_logmel(x), expected, loud)
    assert float64_edges > 1e-3 and jaxmir < float64_edges / 5


def test_float64_reference_filterbanks_agree():
    """The float64 transcription and jaxmir's float32 one differ only by float32 rounding."""
    musicnn = ref_essentia_filterbank(96, 0.0, 8000.0, slaney_mel, slaney_hz, False, True)
    vggish = ref_essentia_filterbank(64, 125.0, 7500.0, htk_mel, htk_hz, True, False)
    assert max_error(frontends.mel_filterbank("musicnn"), musicnn) <= 1e-6  # measured 3.0e-7
    # measured 4.9e-5 (mel-domain slopes)
    assert max_error(frontends.mel_filterbank("vggish"), vggish) <= 1e-4


def test_google_mode_matches_mel_features():
    x = sines()
    actual = frontends.vggish_logmel(x, compat="google")
    expected = ref_google_vggish(x)
    assert actual.shape == expected.shape == (1 + (48000 - 400) // 160, 64)
    assert max_error(actual, expected) <= 1e-4  # measured 2.9e-5
    real = reference("TRWJAZW128F42760DD_test")["audio_16k"]
    # 4.9e-5
    assert max_error(frontends.vggish_logmel(real, compat="google"),
                     ref_google_vggish(real)) <= 1e-4
    assert max_error(frontends.mel_filterbank("vggish", "google")[:, 0], 0) == 0


# ---------------------------------------------------------------------------
# musicnn mode: librosa + float16, as the musicnn package computes it
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name",
                         ["synth_sines_16k_mono", "joram-moments_of_clarity-08-solipsism-59-88"])
def test_musicnn_mode_matches_librosa(name):
    librosa = require("librosa")
    x = reference(name)["audio_16k"]
    mel16, expected = librosa_musicnn(librosa, x)
    actual = np.asarray(frontends.musicnn_logmel(x, compat="musicnn"))
    assert actual.shape == expected.shape
    # jaxmir's float32 STFT and librosa's float64 one can round a mel value to
    # neighbouring float16 values: at most one float16 step (2^-10 relative at
    # worst, 2^-24 in the subnormal range), i.e. up to 0.434 * 2^-10 = 4.2e-4
    # in the log domain; measured 3.7e-4 and 4.0e-4.
    ours16 = (10 ** actual.astype(np.float64) - 1) / 10000
    step = np.maximum(np.abs(mel16.astype(np.float64)) * 2.0 ** -10, 2.0 ** -24)
    assert np.all(np.abs(ours16 - mel16) <= 1.01 * step + 1e-12)
    assert max_error(actual, expected) <= 4.5e-4
    assert np.mean(np.abs(actual - expected) <= 1e-6) > 0.99  # same float16 value almost everywhere


def test_musicnn_mode_does_not_overflow_like_numpy2():
    """musicnn's `np.log10(10000 * x + 1)` on float16 gives inf under NumPy >= 2; jaxmir stays
    finite."""
    librosa = require("librosa")
    x = sines()
    mel16, expected = librosa_musicnn(librosa, x)
    assert mel16.max() > 6.56
    with np.errstate(over="ignore"):
        numpy2 = np.log10(10000 * mel16 + 1)
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert numpy2.dtype == np.float16 and np.isinf(numpy2).any()
    actual = np.asarray(frontends.musicnn_logmel(x, compat="musicnn"))
    assert np.isfinite(actual).all()
    assert max_error(actual, expected) <= 4.5e-4


def test_musicnn_mode_saturates_float16():
    loud = 100 * sines()  # far outside [-1, 1]: mel beyond float16's range
    actual = np.asarray(frontends.musicnn_logmel(loud, compat="musicnn"))
    assert np.isfinite(actual).all()
    assert actual.max() == pytest.approx(np.log10(1 + 10000 * 65504.0), abs=1e-5)


# ---------------------------------------------------------------------------
# silence, jit, batching, gradients
# ---------------------------------------------------------------------------
def test_silence():
    zeros = np.zeros(16000, np.float32)
    for compat in frontends.MUSICNN_COMPAT:
        assert not np.asarray(frontends.musicnn_logmel(zeros, compat=compat)).any()
    for compat in frontends.VGGISH_COMPAT:
        np.testing.assert_allclose(frontends.vggish_logmel(zeros, compat=compat), np.log(0.01),
                                   rtol=1e-7)


def test_jit_and_batching():
    x = np.stack([sines(20000, 1), sines(20000, 2), np.zeros(20000, np.float32)])
    batch = x.reshape(3, 1, 20000)
    for fn, compat in [(frontends.musicnn_logmel, "essentia"),
                       (frontends.musicnn_logmel, "musicnn"), (frontends.vggish_logmel, "essentia"),
                       (frontends.vggish_logmel, "google")]:
        batched = np.asarray(fn(batch, compat=compat))
        assert batched.shape[:2] == (3, 1)
        jitted = jax.jit(lambda a: fn(a, compat=compat))
        for i in range(3):
            single = np.asarray(fn(x[i], compat=compat))
            np.testing.assert_allclose(batched[i, 0], single, atol=2e-6, rtol=0)
            np.testing.assert_allclose(np.asarray(jitted(x[i])), single, atol=2e-6, rtol=0)
        vmapped = np.asarray(jax.vmap(lambda a: fn(a, compat=compat))(x))
        np.testing.assert_allclose(vmapped, batched[:, 0], atol=2e-6, rtol=0)


def test_batched_long_inputs_match_per_item():
    """Long batched inputs run the frame loop over several steps; each item must not see the
    others."""
    x = np.stack([sines(200000, 4), sines(200000, 5)[::-1].copy()])
    for fn in (frontends.musicnn_logmel, frontends.vggish_logmel):
        batched = np.asarray(fn(x))
        for i in range(2):
            np.testing.assert_allclose(batched[i], np.asarray(fn(x[i])), atol=2e-6, rtol=0)


@pytest.mark.parametrize("fn, compat", [(frontends.musicnn_logmel, "essentia"),
                                        (frontends.vggish_logmel, "essentia"),
                                        (frontends.vggish_logmel, "google")])
def test_gradient_matches_finite_difference(fn, compat):
    """d(sum of bands)/d(waveform), checked along random directions in float64 (x64 on locally)."""
    x = sines(4000)
    x[1000:1400] = 0.0  # exact zeros inside frames: the VGGish magnitude must not give NaN
    grad32 = jax.grad(lambda a: fn(a, compat=compat).sum())(jnp.asarray(x))
    assert grad32.dtype == jnp.float32 and np.isfinite(np.asarray(grad32)).all()
    with jax.enable_x64(True):
        def loss(a):
            return fn(a, compat=compat).sum()
        x64 = jnp.asarray(x, jnp.float64)
        grad = jax.grad(loss)(x64)
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(grad), np.asarray(grad32), rtol=0,
                                   atol=1e-3 * float(jnp.max(jnp.abs(grad))))
        rng = np.random.default_rng(3)
        for _ in range(3):
            v = jnp.asarray(rng.standard_normal(x.shape))
            # the magnitudes of near-zero bins curve sharply: a small step (truncation
            # error ~eps^2) is needed; measured 2e-9 to 6e-8 relative at eps = 1e-7
            eps = 1e-7
            numeric = (loss(x64 + eps * v) - loss(x64 - eps * v)) / (2 * eps)
            analytic = jnp.vdot(grad, v)
            assert float(abs(numeric - analytic)) <= 1e-6 * float(abs(analytic))


def test_float32_audio_stays_float32_under_x64():
    """Only float64 audio is computed in float64 under x64: float32 audio gives the same float32
    frames as without x64."""
    x = sines(4000)
    for fn in (frontends.musicnn_logmel, frontends.vggish_logmel):
        expected = np.asarray(fn(x))
        with jax.enable_x64(True):
            found, wide = fn(x), fn(x.astype(np.float64))
        assert found.dtype == jnp.float32 and wide.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(found), expected)


def test_empty_batches_and_signals_keep_their_shape_and_dtype():
    """A batch of no signals (a leading axis of 0) has its frames' shape (the frames per step
    are not divided by its size, 0); an empty float64 signal under x64 is float64, as a non-empty
    one is."""
    for fn, frontend in ((frontends.musicnn_logmel, frontends.MUSICNN),
                         (frontends.vggish_logmel, frontends.VGGISH)):
        assert fn(np.zeros((0, 16000), np.float32)).shape == \
            (0, frontends.num_frames(frontend, 16000), frontend.n_bands)
        with jax.enable_x64(True):
            assert fn(np.zeros(0, np.float64)).dtype == jnp.float64
            assert fn(np.zeros(1000, np.float64)).dtype == jnp.float64


def test_gradient_of_all_zero_audio_is_finite():
    zeros = jnp.zeros(2000, jnp.float32)
    for fn in (frontends.musicnn_logmel, frontends.vggish_logmel):
        grad = jax.grad(lambda a: fn(a).sum())(zeros)
        assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("compat", ["essentia", "google"])
def test_nan_audio_gives_nan_features_not_silence(compat):
    """The VGGish front-end took NaN power for silence (log 0.01 everywhere): the traced
    front-ends cannot raise, so NaN must at least show (Model.features raises before them)."""
    audio = np.full(16000, np.nan, np.float32)
    for fn in (frontends.vggish_logmel, frontends.musicnn_logmel):
        if fn is frontends.musicnn_logmel and compat == "google":
            continue
        assert np.isnan(np.asarray(fn(audio, compat=compat))).all()


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_unknown_compat():
    x = np.zeros(1000, np.float32)
    with pytest.raises(InputError,
                       match="unknown compat 'google'; accepted: 'essentia', 'musicnn'"):
        frontends.musicnn_logmel(x, compat="google")
    with pytest.raises(InputError,
                       match="unknown compat 'musicnn'; accepted: 'essentia', 'google'"):
        frontends.vggish_logmel(x, compat="musicnn")
    with pytest.raises(InputError, match="compat"):
        frontends.musicnn_num_frames(100, compat="librosa")
    with pytest.raises(InputError, match="front-end"):
        frontends.mel_filterbank("yamnet")
    # every function that takes a compat checks it: the other front-end's mode would otherwise
    # count, place or window its frames as that one does (google's frames for musicnn, say)
    for frontend, other in ((frontends.MUSICNN, "google"), (frontends.VGGISH, "musicnn")):
        for fn, *args in ((frontends.num_frames, frontend, 1000),
                          (frontends.frame_starts, frontend, 1000),
                          (frontends.analysis_window, frontend),
                          (frontends.mel_filterbank, frontend),
                          (frontends.logmel, x, frontend)):
            with pytest.raises(InputError, match=f"unknown compat '{other}'"):
                fn(*args, other)


@pytest.mark.parametrize("audio, match", [
    (np.zeros(1000, np.int16), "prepare_audio"),
    (np.zeros(1000, np.uint8), "prepare_audio"),  # 8-bit WAV's PCM is unsigned
    (np.zeros(1000, np.complex64), "dtype complex64"),
    (np.float32(1.0), "scalar"),
])
def test_bad_audio(audio, match):
    with pytest.raises(InputError, match=match):
        frontends.musicnn_logmel(audio)
    with pytest.raises(InputError, match=match):
        frontends.vggish_logmel(audio)


@pytest.mark.parametrize("n", [-1, 1.5, True, "100"])
def test_bad_sample_counts(n):
    with pytest.raises(InputError, match="non-negative integer"):
        frontends.musicnn_num_frames(n)


def test_every_function_takes_a_front_end_by_name_or_as_its_frontend():
    """logmel and num_frames took only a Frontend (a name: AttributeError), frame_starts,
    analysis_window and mel_filterbank only a name (a Frontend: "unknown front-end")."""
    audio = np.sin(np.arange(20000) / 10).astype(np.float32)
    for frontend in (frontends.MUSICNN, frontends.VGGISH):
        name = frontend.name
        np.testing.assert_array_equal(frontends.logmel(audio, name),
                                      frontends.logmel(audio, frontend))
        assert frontends.num_frames(name, 20000) == frontends.num_frames(frontend, 20000) == \
            frontends.frame_starts(frontend, 20000).shape[0]
        np.testing.assert_array_equal(frontends.mel_filterbank(frontend),
                                      frontends.mel_filterbank(name))
        np.testing.assert_array_equal(frontends.analysis_window(frontend),
                                      frontends.analysis_window(name))
    for call in (lambda: frontends.logmel(audio, "yamnet"), lambda: frontends.num_frames(3, 10)):
        with pytest.raises(InputError, match="unknown front-end"):
            call()
