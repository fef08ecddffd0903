"""Log-mel front-ends of Essentia's MusiCNN/VGG and VGGish models, in JAX.

Both functions take 16-kHz mono audio ``[..., n_samples]`` (float, nominally in
[-1, 1]) and return log-mel frames ``[..., n_frames, n_bands]`` (float32). They
are jit-compiled (once per input shape and ``compat``), batched over any
leading axes and differentiable with respect to the waveform.

``compat`` selects whose front-end is reproduced:

* ``"essentia"`` (default for both) -- Essentia's ``TensorflowInputMusiCNN`` /
  ``TensorflowInputVGGish`` on the frames ``TensorflowPredictMusiCNN`` /
  ``TensorflowPredictVGGish`` cut: FrameCutter framing (frame ``k`` centred on
  sample ``k * hop``, zeros outside the signal, ``ceil(N / hop) + 1`` frames),
  symmetric Hann window, and Essentia's float32 mel filterbank (band edges
  accumulated in float32, exactly as ``MelBands`` does).
* ``"musicnn"`` (:func:`musicnn_logmel` only) -- the original musicnn package:
  ``librosa.feature.melspectrogram`` defaults (centred frames with zero
  padding, ``1 + N // 256`` frames, periodic Hann, Slaney mel with Slaney
  norm), the mel rounded to float16, then ``log10(10000 * x + 1)``.
* ``"google"`` (:func:`vggish_logmel` only) -- Google's ``mel_features.py``:
  periodic Hann, frames from sample 0 without padding
  (``1 + (N - 400) // 160`` frames), HTK mel matrix with its DC row zeroed.

The STFT and the mel matmul run in float32 (``Precision.HIGHEST``); float64
audio is computed in float64 when JAX's x64 mode is on. Filterbanks and
windows are built once with NumPy (see :func:`mel_filterbank`,
:func:`analysis_window`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxmir.checks import is_floating, is_whole
from jaxmir.errors import InputError
from jaxmir.promotion import standard_promotion
from jaxmir.spec import Frontend

__all__ = [
    "FRONTENDS", "Frontend", "MUSICNN", "MUSICNN_COMPAT", "MUSICNN_FRAME_SIZE", "MUSICNN_HOP_SIZE",
    "MUSICNN_N_BANDS", "MUSICNN_PATCH_HOP", "MUSICNN_PATCH_SIZE", "N_BINS", "N_FFT", "SAMPLE_RATE",
    "VGGISH", "VGGISH_COMPAT", "VGGISH_FRAME_SIZE", "VGGISH_HOP_SIZE", "VGGISH_LOG_OFFSET",
    "VGGISH_N_BANDS", "VGGISH_PATCH_HOP", "VGGISH_PATCH_SIZE", "analysis_window", "frame_starts",
    "hann", "logmel", "mel_filterbank", "musicnn_logmel", "musicnn_num_frames", "num_frames",
    "slaney_mel", "vggish_logmel", "vggish_num_frames",
]

SAMPLE_RATE = 16000
N_FFT = 512
N_BINS = N_FFT // 2 + 1

MUSICNN_FRAME_SIZE = 512
MUSICNN_HOP_SIZE = 256
MUSICNN_N_BANDS = 96
VGGISH_FRAME_SIZE = 400
VGGISH_HOP_SIZE = 160
VGGISH_N_BANDS = 64
VGGISH_LOG_OFFSET = 0.01

# Essentia's patch settings (TensorflowPredictMusiCNN / TensorflowPredictVGGish defaults).
MUSICNN_PATCH_SIZE = 187  # also musicnn's VGG
MUSICNN_PATCH_HOP = 93
VGGISH_PATCH_SIZE = 96
VGGISH_PATCH_HOP = 93

MUSICNN = Frontend("musicnn", SAMPLE_RATE, MUSICNN_FRAME_SIZE, MUSICNN_HOP_SIZE, MUSICNN_N_BANDS,
                   MUSICNN_PATCH_SIZE, MUSICNN_PATCH_HOP, "log10(1 + 10000 mel)")
VGGISH = Frontend("vggish", SAMPLE_RATE, VGGISH_FRAME_SIZE, VGGISH_HOP_SIZE, VGGISH_N_BANDS,
                  VGGISH_PATCH_SIZE, VGGISH_PATCH_HOP, "ln(mel + 0.01)")
FRONTENDS = {frontend.name: frontend for frontend in (MUSICNN, VGGISH)}

MUSICNN_COMPAT = ("essentia", "musicnn")
VGGISH_COMPAT = ("essentia", "google")

_FLOAT16_MAX = float(np.finfo(np.float16).max)
_F32 = np.float32


# ---------------------------------------------------------------------------
# Mel scales, evaluated in float64 and rounded to float32 on return, as
# Essentia's `Real f(Real)` helpers in essentiamath.h do.
# ---------------------------------------------------------------------------
_SLANEY_LOG_STEP = math.log(6.4) / 27.0  # 1000 Hz -> 6400 Hz in 27 mel steps


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, np.float64)
    safe = np.maximum(hz, 1e-12)  # keeps log() quiet on the linear branch
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, 15.0 + np.log(safe / 1000.0) / _SLANEY_LOG_STEP)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp(_SLANEY_LOG_STEP * (mel - 15.0)))


def _hz_to_mel_htk(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz_htk(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def _as_real(fn):
    """Essentia's ``Real fn(Real)``: float32 in, double arithmetic, float32 out."""
    return lambda x: fn(np.asarray(x, _F32)).astype(_F32)


# ---------------------------------------------------------------------------
# Filterbanks [n_bands, 257] and windows, built once.
# ---------------------------------------------------------------------------
def _essentia_band_edges(low_hz: float, high_hz: float, n_bands: int, warp, unwarp) -> np.ndarray:
    """MelBands::calculateFilterFrequencies: ``n_bands + 2`` edges in Hz, float32.

    The mel position is advanced by repeated float32 addition of the increment
    (not linspace); the rounding this accumulates is part of Essentia's filters.
    """
    low = warp(low_hz)
    high = warp(high_hz)
    increment = _F32((high - low) / _F32(n_bands + 1))
    mel = low
    mels = []
    for _ in range(n_bands + 2):
        mels.append(mel)
        mel = _F32(mel + increment)
    return unwarp(np.array(mels, _F32))


def _essentia_triangles(edges: np.ndarray, weighting, unit_tri: bool) -> np.ndarray:
    """TriangularBands::createFilters in float32 for a 512-point spectrum at 16 kHz.

    Band ``i`` covers bins ``ceil(f[i] / df) .. floor(f[i+2] / df)``; its rising
    edge is used while the bin frequency is below ``f[i+1]``. Slopes are taken
    in the ``weighting`` domain (identity for "linear", HTK mel for "warping").
    ``unit_tri`` divides by the theoretical triangle area ``(step1 + step2) / 2``.
    """
    df = _F32((SAMPLE_RATE / 2.0) / (N_BINS - 1))
    bins = np.arange(N_BINS)
    bin_hz = (bins.astype(_F32) * df).astype(_F32)
    w_bins = weighting(bin_hz)
    w_edges = weighting(edges)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    w_lo, w_mid, w_hi = w_edges[:-2, None], w_edges[1:-1, None], w_edges[2:, None]
    step1 = w_mid - w_lo
    step2 = w_hi - w_mid
    first = np.ceil(lo / df)
    last = np.floor(hi / df)
    inside = (bins[None, :] >= first) & (bins[None, :] <= last)
    rising = (w_bins[None, :] - w_lo) / step1
    falling = (w_hi - w_bins[None, :]) / step2
    weights = np.where(bin_hz[None, :] < mid, rising, falling)
    weights = np.where(inside, weights, _F32(0)).astype(_F32)
    if unit_tri:
        weights = (weights / ((step1 + step2) / _F32(2))).astype(_F32)
    return weights


def slaney_mel(n_bands: int, fmin: float, fmax: float, sample_rate: int = SAMPLE_RATE,
               n_fft: int = N_FFT) -> np.ndarray:
    """``[n_bands, n_fft // 2 + 1]``: librosa.filters.mel(htk=False, norm='slaney'),
    float64 maths, float32 result (musicnn's bands; the MFCCs of label smoothing)."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax),
                                          n_bands + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz[None, :] - lo) / (mid - lo)
    falling = (hi - fft_hz[None, :]) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= 2.0 / (hi - lo)  # Slaney norm: constant energy per band
    return weights.astype(_F32)


def _google_htk_mel(n_bands: int, fmin: float, fmax: float) -> np.ndarray:
    """mel_features.spectrogram_to_mel_matrix (transposed): triangles in HTK mel, peak 1."""
    def to_mel(hz):  # mel_features' 1127 ln, not _hz_to_mel_htk's 2595 log10 (1126.9941 ln)
        return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)
    bin_mel = to_mel(np.linspace(0.0, SAMPLE_RATE / 2.0, N_BINS))
    edges = np.linspace(to_mel(fmin), to_mel(fmax), n_bands + 2)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_mel[None, :] - lo) / (mid - lo)
    falling = (hi - bin_mel[None, :]) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[:, 0] = 0.0  # "HTK excludes the spectrogram DC bin"
    return weights.astype(_F32)


@functools.cache
def _filterbank(frontend: str, compat: str) -> np.ndarray:
    if frontend == "musicnn" and compat == "essentia":
        edges = _essentia_band_edges(0.0, 8000.0, MUSICNN_N_BANDS,
                                     _as_real(_hz_to_mel_slaney), _as_real(_mel_to_hz_slaney))
        weights = _essentia_triangles(edges, lambda hz: hz, unit_tri=True)
    elif frontend == "musicnn" and compat == "musicnn":
        weights = slaney_mel(MUSICNN_N_BANDS, 0.0, 8000.0)
    elif frontend == "vggish" and compat == "essentia":
        htk = _as_real(_hz_to_mel_htk)
        edges = _essentia_band_edges(125.0, 7500.0, VGGISH_N_BANDS, htk, _as_real(_mel_to_hz_htk))
        weights = _essentia_triangles(edges, htk, unit_tri=False)
    elif frontend == "vggish" and compat == "google":
        weights = _google_htk_mel(VGGISH_N_BANDS, 125.0, 7500.0)
    else:  # pragma: no cover - guarded by _check_compat
        raise AssertionError((frontend, compat))
    weights.setflags(write=False)
    return weights


def hann(size: int, periodic: bool) -> np.ndarray:
    """Hann window in float64, rounded to float32 (Essentia's Windowing; scipy's for periodic)."""
    i = np.arange(size, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * i / (size if periodic else size - 1))).astype(_F32)


@functools.cache
def _window(frontend: str, compat: str) -> np.ndarray:
    size = MUSICNN_FRAME_SIZE if frontend == "musicnn" else VGGISH_FRAME_SIZE
    window = hann(size, periodic=compat in ("musicnn", "google"))
    window.setflags(write=False)
    return window


def _check_compat(frontend: str, compat: str) -> None:
    accepted = MUSICNN_COMPAT if frontend == "musicnn" else VGGISH_COMPAT
    if compat not in accepted:
        raise InputError(f"{frontend} front-end: unknown compat {compat!r}; accepted: "
                         + ", ".join(repr(c) for c in accepted))


def mel_filterbank(frontend: str | Frontend, compat: str = "essentia") -> np.ndarray:
    """The mel filterbank a front-end applies, ``[n_bands, 257]`` float32 (read-only).

    Args:
      frontend: ``"musicnn"`` (96 bands) or ``"vggish"`` (64 bands), or its :class:`Frontend`.
      compat: as in :func:`musicnn_logmel` / :func:`vggish_logmel`.

    Rows weight the bins of a 512-point spectrum at 16 kHz (31.25 Hz apart);
    musicnn's weight power (|X|^2), VGGish's weight magnitude (|X|).
    """
    frontend = _named(frontend)
    _check_compat(frontend, compat)
    return _filterbank(frontend, compat)


def analysis_window(frontend: str | Frontend, compat: str = "essentia") -> np.ndarray:
    """The analysis window, ``[frame_size]`` float32 (512 musicnn, 400 VGGish; read-only).

    Essentia's is the symmetric Hann ``0.5 - 0.5 cos(2 pi i / (L - 1))``; the
    ``musicnn`` and ``google`` modes use the periodic one (``/ L``).
    """
    frontend = _named(frontend)
    _check_compat(frontend, compat)
    return _window(frontend, compat)


def _named(frontend: str | Frontend) -> str:
    """A front-end's name, given it or its :class:`Frontend` (every function here takes both)."""
    name = frontend.name if isinstance(frontend, Frontend) else frontend
    if name not in FRONTENDS:
        raise InputError(f"unknown front-end {frontend!r}; accepted: 'musicnn', 'vggish' or "
                         "their Frontend (frontends.MUSICNN, VGGISH, Model.frontend)")
    return name


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------
def _check_n_samples(n_samples) -> int:
    if not is_whole(n_samples, 0):
        raise InputError(f"n_samples must be a non-negative integer, got {n_samples!r}")
    return int(n_samples)


def _framing(frontend: str, compat: str, n_samples: int) -> tuple[int, int, int, int]:
    """(frame_size, hop, first frame start in samples, number of frames)."""
    if frontend == "musicnn":
        size, hop = MUSICNN_FRAME_SIZE, MUSICNN_HOP_SIZE
    else:
        size, hop = VGGISH_FRAME_SIZE, VGGISH_HOP_SIZE
    if n_samples == 0:
        return size, hop, 0, 0
    if compat == "essentia":
        # FrameCutter(startFromZero=False): frame k starts at k*hop - (size+1)//2
        # and the last frame is the first whose centre reaches the end.
        return size, hop, -((size + 1) // 2), -(-n_samples // hop) + 1
    if compat == "musicnn":  # librosa center=True
        return size, hop, -(N_FFT // 2), 1 + n_samples // hop
    # google: complete frames only, from sample 0
    return size, hop, 0, max(0, 1 + (n_samples - size) // hop)


def musicnn_num_frames(n_samples: int, compat: str = "essentia") -> int:
    """Frames :func:`musicnn_logmel` returns for ``n_samples`` samples (0 for empty audio).

    ``essentia``: ``ceil(N / 256) + 1``; ``musicnn``: ``1 + N // 256``.
    """
    _check_compat("musicnn", compat)
    return _framing("musicnn", compat, _check_n_samples(n_samples))[3]


def vggish_num_frames(n_samples: int, compat: str = "essentia") -> int:
    """Frames :func:`vggish_logmel` returns for ``n_samples`` samples (0 for empty audio).

    ``essentia``: ``ceil(N / 160) + 1``; ``google``: ``1 + (N - 400) // 160``, 0 below 400.
    """
    _check_compat("vggish", compat)
    return _framing("vggish", compat, _check_n_samples(n_samples))[3]


def frame_starts(frontend: str | Frontend, n_samples: int, compat: str = "essentia") -> np.ndarray:
    """Index of each frame's first sample, ``[n_frames]`` int64 (negative: zero padding)."""
    frontend = _named(frontend)
    _check_compat(frontend, compat)
    _, hop, first, count = _framing(frontend, compat, _check_n_samples(n_samples))
    return first + hop * np.arange(count, dtype=np.int64)


# Frames per step of the loop over the signal: big enough to keep the FFT and
# the matmul efficient, small enough that a step's intermediates (frames,
# spectrum, power) stay in cache instead of streaming the whole signal's
# through memory; about 2.5x faster on CPU than one pass over all frames.
_FRAMES_PER_STEP = 1024


def _blocks(audio: jax.Array, size: int, hop: int, first: int,
            count: int) -> tuple[jax.Array, int, int]:
    """Zero-pad ``[..., N]`` and split it into blocks of ``g = gcd(size, hop)`` samples.

    Frame k (starting at sample ``first + k * hop``) is then the ``size // g``
    consecutive blocks from block ``k * hop // g``: frames are cut with
    reshapes and strided slices, no gather. Returns ``(blocks [..., n_blocks, g],
    hop // g, size // g)``.
    """
    g = math.gcd(size, hop)
    step, width = hop // g, size // g
    n_blocks = (count - 1) * step + width
    total = n_blocks * g
    left = -first
    right = max(0, total - left - audio.shape[-1])
    padded = jnp.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(left, right)])[..., :total]
    return padded.reshape(*audio.shape[:-1], n_blocks, g), step, width


def _frames_from_blocks(blocks: jax.Array, step: int, width: int, count: int) -> jax.Array:
    """``count`` frames from the start of ``blocks``: ``[..., count, width * g]``."""
    span = (count - 1) * step + 1
    return jnp.concatenate([blocks[..., i:i + span:step, :] for i in range(width)], axis=-1)


def _stft_bands(audio: jax.Array, frontend: str, compat: str, bands_of_power) -> jax.Array:
    """Frame, window and ``|rfft|^2`` ``[..., N]``, then ``bands_of_power``:
    ``[..., n_frames, n_bands]``.

    The frames are processed ``_FRAMES_PER_STEP`` at a time in a ``lax.map``
    loop (the last step padded with frames past the end, then dropped).
    """
    size, hop, first, count = _framing(frontend, compat, audio.shape[-1])
    lead = audio.shape[:-1]
    n_bands = MUSICNN_N_BANDS if frontend == "musicnn" else VGGISH_N_BANDS
    if count == 0:
        return jnp.zeros((*lead, 0, n_bands), audio.dtype)
    window = jnp.asarray(_window(frontend, compat), audio.dtype)
    per_step = max(1, _FRAMES_PER_STEP // max(1, math.prod(lead)))
    n_steps = -(-count // per_step)
    per_step = -(-count // n_steps)  # spread the frames evenly over the steps
    blocks, step, width = _blocks(audio, size, hop, first, n_steps * per_step)

    def bands(start_block):
        span = (per_step - 1) * step + width
        chunk = jax.lax.dynamic_slice_in_dim(blocks, start_block, span, axis=-2)
        frames = _frames_from_blocks(chunk, step, width, per_step) * window
        return bands_of_power(_power_spectrum(frames))

    if n_steps == 1:
        return bands(0)[..., :count, :]
    # [n_steps, ..., per_step, n_bands]
    out = jax.lax.map(bands, jnp.arange(n_steps) * (per_step * step))
    out = jnp.moveaxis(out, 0, -3).reshape(*lead, n_steps * per_step, n_bands)
    return out[..., :count, :]


def _power_spectrum(frames: jax.Array) -> jax.Array:
    """``|rfft(frames, 512)|^2``, ``[..., n_frames, 257]``."""
    spectrum = jnp.fft.rfft(frames, n=N_FFT, axis=-1)
    return jnp.square(spectrum.real) + jnp.square(spectrum.imag)


def _magnitude(power: jax.Array) -> jax.Array:
    """``sqrt(power)`` with a zero (not NaN) gradient where the power is exactly 0; NaN stays NaN
    (``power > 0`` would have made it silence)."""
    zero = power == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, power)))


def _apply_mel(spectrum: jax.Array, weights: np.ndarray) -> jax.Array:
    return jnp.matmul(spectrum, jnp.asarray(weights.T, spectrum.dtype),
                      precision=jax.lax.Precision.HIGHEST)


def _as_audio(audio: ArrayLike, name: str) -> jax.Array:
    dtype = getattr(audio, "dtype", None)
    if dtype is None:
        audio = np.asarray(audio)
        dtype = audio.dtype
    dtype = np.dtype(dtype)
    if not is_floating(dtype):
        hint = (" (convert PCM with jaxmir.audio.prepare_audio)"
                if np.issubdtype(dtype, np.integer) else "")
        raise InputError(f"{name}: audio has dtype {dtype}; expected floating-point samples "
                         f"[..., n_samples] at 16 kHz{hint}")
    if len(np.shape(audio)) == 0:
        raise InputError(f"{name}: audio is a scalar; expected samples [..., n_samples] at 16 kHz")
    compute = jnp.float64 if dtype == np.float64 and jax.config.jax_enable_x64 else jnp.float32
    return jnp.asarray(audio, compute)


@functools.partial(jax.jit, static_argnames=("compat",))
def _musicnn_logmel(audio: jax.Array, compat: str) -> jax.Array:
    weights = _filterbank("musicnn", compat)

    def log_mel(power):
        mel = _apply_mel(power, weights)
        if compat == "musicnn":
            # musicnn stores the mel as float16 (values above float16's max, which
            # audio within [-1, 1] cannot reach, saturate instead of becoming inf).
            mel = jnp.minimum(mel, _FLOAT16_MAX).astype(jnp.float16).astype(power.dtype)
        return jnp.log10(1.0 + 10000.0 * mel)  # Essentia: x * 10000 + 1, then log10

    return _stft_bands(audio, "musicnn", compat, log_mel)


@functools.partial(jax.jit, static_argnames=("compat",))
def _vggish_logmel(audio: jax.Array, compat: str) -> jax.Array:
    weights = _filterbank("vggish", compat)
    return _stft_bands(audio, "vggish", compat,
                       lambda power: jnp.log(_apply_mel(_magnitude(power), weights)
                                             + VGGISH_LOG_OFFSET))


@standard_promotion
def musicnn_logmel(audio_16k: ArrayLike, compat: str = "essentia") -> jax.Array:
    """MusiCNN/VGG input features: ``log10(1 + 10000 * mel)``, ``[..., n_frames, 96]``.

    Args:
      audio_16k: mono audio at 16 kHz, ``[..., n_samples]`` floating point
        (use :func:`jaxmir.audio.prepare_audio` for PCM or other rates).
      compat:
        ``"essentia"`` (default): Essentia's ``TensorflowInputMusiCNN`` on the
        frames ``TensorflowPredictMusiCNN`` cuts. Frames of 512 samples every
        256, frame ``k`` centred on sample ``256 k`` (zeros outside the
        signal), ``ceil(N / 256) + 1`` frames; symmetric Hann; ``|rfft|^2``;
        96 Slaney-mel bands 0-8000 Hz, linear-Hz triangles normalised to unit
        area (``unit_tri``) on Essentia's float32 band edges.

        ``"musicnn"``: the musicnn package (``librosa.feature.melspectrogram``
        with ``n_fft=512, hop_length=256, n_mels=96``): ``1 + N // 256`` frames
        centred with zero padding (librosa >= 0.10; older librosa padded by
        reflection, which changes the first and last frame only), periodic
        Hann, librosa's Slaney mel with Slaney norm; the mel is rounded to
        float16 and the log taken in float32. musicnn's
        ``np.log10(10000 * x + 1)`` on its float16 array ran in float32 under
        NumPy 1.x (value-based casting); under NumPy >= 2 the product stays
        float16 and overflows to ``inf`` for any mel above 6.55. jaxmir follows
        the NumPy 1.x result: finite everywhere. The float16 rounding is a
        straight-through step for gradients.

    Returns:
      float32 ``[..., n_frames, 96]`` (float64 for float64 input under x64);
      ``n_frames`` is :func:`musicnn_num_frames` of ``n_samples``.
      Silence gives exactly 0.
    """
    _check_compat("musicnn", compat)
    return _musicnn_logmel(_as_audio(audio_16k, "musicnn_logmel"), compat)


@standard_promotion
def vggish_logmel(audio_16k: ArrayLike, compat: str = "essentia") -> jax.Array:
    """VGGish input features: ``ln(mel + 0.01)``, ``[..., n_frames, 64]``.

    Args:
      audio_16k: mono audio at 16 kHz, ``[..., n_samples]`` floating point.
      compat:
        ``"essentia"`` (default): Essentia's ``TensorflowInputVGGish`` on the
        frames ``TensorflowPredictVGGish`` cuts. Frames of 400 samples every
        160, frame ``k`` centred on sample ``160 k``, ``ceil(N / 160) + 1``
        frames; symmetric Hann, 112 zeros appended to 512; ``|rfft|``
        (magnitude); 64 HTK-mel bands 125-7500 Hz, triangles in the mel
        domain with apex 1, on Essentia's float32 band edges.

        ``"google"``: Google's VGGish ``mel_features.py``: periodic Hann,
        frames from sample 0 without padding, ``1 + (N - 400) // 160`` frames
        (none below 400 samples), HTK mel matrix with the DC row zeroed.

    Returns:
      float32 ``[..., n_frames, 64]``; ``n_frames`` is :func:`vggish_num_frames`.
      Silence gives ``ln(0.01)``.
    """
    _check_compat("vggish", compat)
    return _vggish_logmel(_as_audio(audio_16k, "vggish_logmel"), compat)


@standard_promotion
def logmel(audio_16k: ArrayLike, frontend: str | Frontend, compat: str = "essentia") -> jax.Array:
    """The log-mel frames ``[..., n_frames, n_bands]`` of a front-end (``"musicnn"``: 96 bands,
    ``"vggish"``: 64, or its :class:`Frontend`) from 16-kHz samples ``[..., n_samples]``."""
    if _named(frontend) == "musicnn":
        return musicnn_logmel(audio_16k, compat)
    return vggish_logmel(audio_16k, compat)


def num_frames(frontend: str | Frontend, n_samples: int, compat: str = "essentia") -> int:
    """Frames :func:`logmel` makes from ``n_samples`` samples."""
    frontend = _named(frontend)
    _check_compat(frontend, compat)
    return _framing(frontend, compat, _check_n_samples(n_samples))[3]
