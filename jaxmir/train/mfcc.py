"""MFCCs in JAX (librosa's definition), and the two track summaries of label distribution learning.

``mfcc`` follows ``librosa.feature.mfcc`` with the same settings: centred
frames (zero padding), a periodic Hann window of ``win_length`` centred in
``n_fft``, the power spectrum, a Slaney-normalised Slaney-scale mel
filterbank, ``10 log10`` with a 1e-10 floor and an 80-dB range below the
maximum, then an orthonormal DCT-II.

The summaries (Buisson, Alonso-Jiménez and Bogdanov, ICASSP 2022):
``mfcc_summary`` (S_A, MFCC-S) = mean and std over time of 13 MFCCs;
``mfcc_pooled`` (S_B, MFCC-P) = 13 MFCCs averaged over non-overlapping 1-s
windows, stacked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.errors import InputError
from jaxmir.frontends import hann, slaney_mel
from jaxmir.promotion import PRECISION, standard_promotion

# The paper's analysis: 44.1-kHz audio, 1024-sample windows in 2048-point FFTs, 50 % overlap,
# one 15-s segment starting 5 s into each track, 1-s pooling windows (86 frames).
SAMPLE_RATE = 44100
N_MFCC = 13
N_FFT = 2048
WIN_LENGTH = 1024
HOP_LENGTH = 512
N_MELS = 128
SEGMENT_START = 5.0
SEGMENT_SECONDS = 15.0
POOL_FRAMES = 86
TOP_DB = 80.0
AMIN = 1e-10


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_in, n_out]`` orthonormal DCT-II basis (``x @ D`` = scipy's ``dct(x, norm="ortho")``)."""
    k = np.arange(n_out)[None, :]
    n = np.arange(n_in)[:, None]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2.0 * n_in)) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.astype(np.float32)


def _window(n_fft: int, win_length: int) -> np.ndarray:
    """A periodic Hann of ``win_length`` centred in ``n_fft`` samples (librosa's padding)."""
    left = (n_fft - win_length) // 2
    return np.pad(hann(win_length, periodic=True), (left, n_fft - win_length - left))


@standard_promotion
def mfcc(audio, sample_rate: int = SAMPLE_RATE, n_mfcc: int = N_MFCC, n_fft: int = N_FFT,
         win_length: int = WIN_LENGTH, hop_length: int = HOP_LENGTH,
         n_mels: int = N_MELS) -> jax.Array:
    """MFCCs of a mono signal: ``[n_samples] -> [frames, n_mfcc]`` (frames = 1 + n // hop)."""
    audio = jnp.asarray(audio, jnp.float32)
    if audio.ndim != 1 or audio.shape[0] == 0:
        raise InputError(f"mfcc takes a non-empty mono signal [n_samples], got {list(audio.shape)}")
    padded = jnp.pad(audio, (n_fft // 2, n_fft // 2))
    n_frames = 1 + audio.shape[0] // hop_length
    index = np.arange(n_fft)[None, :] + hop_length * np.arange(n_frames)[:, None]
    frames = padded[index] * _window(n_fft, win_length)
    spectrum = jnp.fft.rfft(frames, axis=-1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel = jnp.matmul(power, slaney_mel(n_mels, 0.0, sample_rate / 2.0, sample_rate, n_fft).T,
                     precision=PRECISION)
    db = 10.0 * jnp.log10(jnp.maximum(mel, AMIN))
    db = jnp.maximum(db, db.max() - TOP_DB)
    return jnp.matmul(db, dct_matrix(n_mels, n_mfcc), precision=PRECISION)


def segment(audio: np.ndarray, sample_rate: int, start: float = SEGMENT_START,
            seconds: float = SEGMENT_SECONDS) -> np.ndarray:
    """``seconds`` of audio from ``start``; earlier in a shorter track; tiled if shorter still."""
    length = int(round(seconds * sample_rate))
    audio = np.asarray(audio, np.float32)
    if len(audio) < length:
        return np.tile(audio, -(-length // max(len(audio), 1)))[:length]
    first = min(int(round(start * sample_rate)), len(audio) - length)
    return audio[first:first + length]


def mfcc_summary(coefficients) -> np.ndarray:
    """S_A: ``[frames, 13] -> [26]``: the mean, then the (population) std over time."""
    coefficients = np.asarray(coefficients, np.float64)
    return np.concatenate([coefficients.mean(axis=0), coefficients.std(axis=0)]).astype(np.float32)


def mfcc_pooled(coefficients, pool_frames: int = POOL_FRAMES) -> np.ndarray:
    """S_B: ``[frames, 13] -> [windows * 13]``: means over whole ``pool_frames`` windows,
    stacked."""
    coefficients = np.asarray(coefficients, np.float64)
    windows = len(coefficients) // pool_frames
    if windows == 0:
        raise InputError(f"{len(coefficients)} MFCC frames: fewer than one pooling window "
                         f"({pool_frames} frames)")
    pooled = coefficients[:windows * pool_frames].reshape(windows, pool_frames, -1).mean(axis=1)
    return pooled.reshape(-1).astype(np.float32)
