"""Audio in: read a file or take an array, downmix to mono, resample to 16 kHz; in one call, or
chunk by chunk (:class:`MonoInput`, :class:`Resampling`: the same samples).

Files are decoded by :mod:`jaxmir.decode` (FFmpeg through PyAV):
``decoder="essentia"`` gives the samples of the ``essentia`` wheels' ``AudioLoader``
(FFmpeg's fixed-point MP3 decoder: int16 samples, clipped at full scale),
``decoder="float"`` FFmpeg's float decoding (an Essentia built from source),
``decoder="soundfile"`` libsndfile's (what ``librosa.load`` reads).

``resampler="essentia"`` (the default) is Essentia's ``MonoLoader`` converter (default
``resampleQuality=1``): libsamplerate's ``SINC_MEDIUM_QUALITY`` with the ratio
``out_rate / in_rate`` computed in float32, as Essentia's ``Resample`` keeps it. Where
:func:`jaxmir.resample.accelerated` holds (22.05, 24, 32, 44.1, 48, 88.2, 96, 176.4, 192 kHz
-> 16 kHz) it is computed by :mod:`jaxmir.resample`'s matrix-product kernel, 3-13x faster than
libsamplerate and within 1e-6 of its samples (1.2e-7 measured on music, most samples
identical); at the other rates (upsampling among them), where the JAX kernels are no faster,
by libsamplerate itself. ``resampler="samplerate"``
always runs libsamplerate (the ``samplerate`` package): Essentia's 16-kHz signal sample for
sample, on its reference inputs at 44.1 and 22.05 kHz. ``resampler="soxr"`` is soxr's HQ
converter as ``librosa.load(sr=16000)`` uses it (musicnn's own pipeline), with librosa's
output length ``ceil(n * out_rate / in_rate)``.

``resampler="essentia-q4"`` is ``MonoLoader(resampleQuality=4)``, as Essentia's model pages
load audio: libsamplerate's linear interpolator with its arithmetic and Essentia's calls and
float32 ratio (:class:`jaxmir.resample.linear.LinearInterpolator`), Essentia's samples and
length; ``"essentia-q1"`` is ``"essentia"``. Qualities 0, 2 (sinc filters) and 3 (zero-order
hold) are not reproduced: their ends differ by a sample from Essentia's build of libsamplerate
at some rates and lengths.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from numpy.typing import ArrayLike

from jaxmir.audio_choices import (DECODE_MODES, QUALITY_CONVERTERS, RESAMPLERS,
                                  canonical_resampler)
from jaxmir.checks import MAX_RATE, MIN_RATE, check_rate, is_floating
from jaxmir.decode import DamagedAudioWarning, iter_blocks, missing_reason
from jaxmir.errors import AudioError, InputError, NoSamplesError
from jaxmir.resample import (MIN_OUTPUTS, SincResampler, accelerated,
                             check_min_outputs, converts, essentia_count, essentia_ratio, plan_of,
                             resample, unflushed_count)
from jaxmir.resample.linear import LinearInterpolator
# The loudest sample accepted. The float32 power spectra of the front-ends overflow from a peak
# of ~1e16 (MusiCNN and VGG, full-scale tones; 1e17 for noise) and the tags turn NaN; 1e12 leaves
# a margin of 1e4 and still takes integer PCM values given as floats (int32: 2.1e9).
MAX_PEAK = 1e12
DECODERS = (*DECODE_MODES, "soundfile")
_ACCEPTED = ("WAV, FLAC, OGG/Vorbis or MP3 (anything FFmpeg decodes), mono or stereo, "
             f"{MIN_RATE}-{MAX_RATE} Hz")


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, resampler: str = "essentia",
               decoder: str = "essentia", strict: bool = False) -> np.ndarray:
    """Read an audio file as float32 mono at ``sample_rate``, ``[n_samples]``.

    Channels are averaged (mono or stereo; Essentia's loader takes no more than
    two). See the module docstring for the decoders and resamplers; the
    defaults give Essentia's ``MonoLoader(sampleRate=16000)`` signal.

    Args:
      path: the audio file.
      sample_rate: the rate wanted in Hz, 16000 for every jaxmir model.
      resampler: ``"essentia"``, ``"samplerate"``, ``"soxr"`` or ``"essentia-q4"``.
      decoder: ``"essentia"``, ``"float"`` or ``"soundfile"``.
      strict: raise on a damaged or truncated file instead of warning
        (:class:`jaxmir.decode.DamagedAudioWarning`; FFmpeg decoders only).

    Raises:
      AudioError: missing, unreadable or non-audio file, a directory, empty
        audio, NaN/Inf samples, more than two channels, a sample rate outside
        1 Hz-384 kHz or too far from ``sample_rate`` (a ratio beyond 1/256 to 256),
        an unknown resampler or decoder, or (``strict=True``) a
        damaged or truncated file; the message names the file.
      InputError: ``strict=True`` with ``decoder="soundfile"``, which reports no damage.
    """
    check_reading(resampler, decoder)
    if strict and decoder not in DECODE_MODES:  # libsndfile reports no damage to be strict about
        raise InputError(f"strict=True applies to FFmpeg's decoders "
                         f"({', '.join(DECODE_MODES)}), not to decoder={decoder!r}")
    target = check_rate(sample_rate, "requested sample_rate")
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise AudioError(f"load_audio takes a file's path; got {type(path).__name__} (samples "
                         "already in memory go to predict(y, sr) as they are)")
    damage: list[str] = []
    audio = read_mono(os.fspath(path), target, resampler, decoder, strict, damage, parallel=True)
    for problem in damage:  # at the caller's line, not at jaxmir's
        warnings.warn(problem, DamagedAudioWarning, stacklevel=2)
    return audio


BLOCK_FRAMES = 1 << 18  # frames a file is decoded at a time: ~6 s at 44.1 kHz, 2 MB in stereo


def read_mono(path: str, target: int = 16000, resampler: str = "essentia",
              decoder: str = "essentia", strict: bool = False,
              damage: list[str] | None = None, parallel: bool = False) -> np.ndarray:
    """:func:`load_audio`'s samples, decoded, downmixed and resampled :data:`BLOCK_FRAMES` at a
    time (the resamplers keep their state between blocks: the same samples as in one call).

    The file's samples at their own rate are never whole in memory (whole, a 40-min 44.1-kHz
    stereo file took 2.2 GB to give 150 MB); the result's blocks are, and are joined at the
    end: the peak is about twice the result. ``decoder="soundfile"`` reads the whole file.
    ``parallel``: Essentia's converter in JAX runs each block's calls on all cores
    (:func:`load_audio`, one file; a collection's threads take the cores file by file). With a
    ``damage`` list, a damaged file's problem is appended to it instead of warned
    (:class:`jaxmir.decode.DamagedAudioWarning`): threads cannot record warnings apart.
    """
    problem = None
    if decoder not in DECODE_MODES:
        data, native = _read_soundfile(path)
        decoded, audio = data.shape[0], _to_mono_16k(data, native, target, resampler, path)
    else:
        with iter_blocks(path, BLOCK_FRAMES, decoder, strict, warn=damage is None) as blocks:
            native = check_rate(blocks.sample_rate, f"{path}: sample rate")
            check_conversion(native, target, f"{path}: sample rate")
            check_channels(blocks.channels, path)
            downmix, pieces, decoded = MonoInput(native), [], 0
            resampling = Resampling(native, target, resampler, parallel=parallel, monoloader=True)
            for block in blocks:
                try:
                    mono = downmix(block)
                except AudioError as err:
                    raise AudioError(f"{path}: {err}") from None
                decoded += mono.shape[0]
                pieces.append(resampling.push(mono))
            pieces.append(resampling.close())
        problem = blocks.problem
        if damage is not None and problem is not None:
            damage.append(problem)
        audio = np.concatenate(pieces)
    if audio.size == 0:
        error = NoSamplesError(
            f"{path}: its {decoded} sample(s) at {native} Hz give none at {target} Hz; expected "
            "a longer signal" if decoded else
            f"{path}: contains no samples; expected at least one sample")
        raise error if problem is None else error.with_damage(problem, path)  # a header alone
    return audio


def _read_soundfile(name: str) -> tuple[np.ndarray, int]:
    """libsndfile's decoding, ``[n, channels]`` float32 and the rate (jaxmir's reader before
    FFmpeg)."""
    if not os.path.exists(name):
        raise AudioError(f"{name}: {missing_reason(name)}; expected an audio file ({_ACCEPTED})")
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a directory; expected an audio file ({_ACCEPTED})")
    import soundfile

    try:
        data, native = soundfile.read(name, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise AudioError(f"{name}: cannot be read as audio ({err}); expected {_ACCEPTED}") from None
    return data, native


def prepare_audio(audio: ArrayLike, sample_rate: int, target_rate: int = 16000,
                  resampler: str = "essentia") -> np.ndarray:
    """Make an in-memory signal ready for the front-ends: float32 mono at ``target_rate``.

    Args:
      audio: ``[n_samples]`` or ``[n_samples, channels]`` (1 or 2 channels),
        floating point in [-1, 1] or integer PCM of 8 to 32 bits (scaled to [-1, 1) by its
        dtype: ``int16 / 32768`` etc.; unsigned PCM is centred first; 64-bit integers, no
        PCM format, raise :class:`AudioError`).
      sample_rate: the rate of ``audio`` in Hz (1-384000, within a ratio of 256 of
        ``target_rate``); never guessed.
      target_rate: the rate wanted, 16000 for every jaxmir model.
      resampler: one of :data:`RESAMPLERS` (see the module docstring).

    Returns:
      float32 ``[n_samples']``, a new array.
    """
    check_resampler(resampler)
    native = check_rate(sample_rate, "sample_rate")
    target = check_rate(target_rate, "target_rate")
    check_conversion(native, target, "sample_rate")
    data = _pcm_to_float(_sample_array(audio, "audio"))
    if data.ndim == 1:
        data = data[:, None]
    return _to_mono_16k(data, native, target, resampler, "audio")


_BYTE_FORMATS = ("B", "b", "c")  # a memoryview of these holds raw bytes, not samples


def _samples_view(view: memoryview) -> bool:
    """Whether ``view`` is a NumPy array's samples as they are (a view of 8-bit samples), not
    its bytes (``memoryview(int16_array).cast("B")``)."""
    return isinstance(view.obj, np.ndarray) and view.itemsize == view.obj.itemsize


def check_samples(audio) -> None:
    """An :class:`InputError` for a path (``predict("song.mp3", sr)``) or a raw byte buffer
    (``bytes``, ``bytearray``, a ``memoryview`` of bytes but of a NumPy array's) where samples are
    expected: NumPy reads a buffer as unsigned 8-bit samples, twice as many as an int16 buffer
    holds."""
    if isinstance(audio, (bytes, bytearray)) or (
            isinstance(audio, memoryview) and audio.format.lstrip("<>=@!") in _BYTE_FORMATS
            and not _samples_view(audio)):
        # a socket's or a capture API's buffer more often than a path
        raise InputError(f"expected samples [n_samples] or [n_samples, channels], got "
                         f"{audio.nbytes if isinstance(audio, memoryview) else len(audio)} bytes "
                         f"({type(audio).__name__}): decode raw PCM first (np.frombuffer(data, "
                         "np.int16), its channels .reshape(-1, channels)), or read a file with "
                         "jaxmir.load_audio(path)")
    if isinstance(audio, (str, os.PathLike)):
        raise InputError(f"expected samples [n_samples] or [n_samples, channels], got the path "
                         f"{os.fsdecode(audio)!r}; read it with jaxmir.load_audio(path) first")


def _sample_array(audio, where: str) -> np.ndarray:
    """``audio`` as a NumPy array ``[n_samples]`` or ``[n_samples, channels]``, or an
    :class:`AudioError` naming it ``where`` (:class:`InputError` for a path or raw bytes:
    :func:`check_samples`)."""
    check_samples(audio)
    if isinstance(audio, (tuple, list)) and len(audio) == 2 and np.ndim(audio[1]) == 0 \
            and np.ndim(audio[0]) >= 1:
        raise AudioError(f"{where} is a pair, as librosa.load returns (y, sr); give the "
                         "samples and the rate apart: model.predict(y, sr)")
    try:
        array = np.asarray(audio)
    except ValueError as err:  # ragged lists
        raise AudioError(f"{where} is not an array of samples ({err})") from None
    if array.ndim == 0 and array.dtype == object:  # a generator, an object NumPy cannot read
        raise AudioError(f"{where} is a {type(audio).__name__}, which holds no array of samples; "
                         "expected [n_samples] or [n_samples, channels] (a NumPy array, a list)")
    if array.ndim not in (1, 2):
        raise AudioError(f"{where} has shape {list(array.shape)}; expected [n_samples] or "
                         "[n_samples, channels] with 1 or 2 channels")
    return array


def check_resampler(resampler) -> None:
    """:class:`AudioError` unless ``resampler`` is one of :data:`RESAMPLERS`."""
    if resampler in ("essentia-q0", "essentia-q2", "essentia-q3"):
        raise AudioError(f"resampler {resampler!r} (MonoLoader's resampleQuality="
                         f"{resampler[-1]}) is not reproduced: its ends differ by a sample from "
                         "Essentia's at some rates and lengths; accepted: "
                         + ", ".join(repr(r) for r in RESAMPLERS))
    if resampler not in RESAMPLERS:
        raise AudioError(f"unknown resampler {resampler!r}; accepted: "
                         + ", ".join(repr(r) for r in RESAMPLERS))


def check_reading(resampler: str, decoder: str) -> None:
    """:class:`AudioError` unless ``resampler`` is one of :data:`RESAMPLERS` and ``decoder`` one
    of :data:`DECODERS`: for a check before any file is read."""
    check_resampler(resampler)
    if decoder not in DECODERS:
        raise AudioError(f"unknown decoder {decoder!r}; accepted: "
                         + ", ".join(repr(d) for d in DECODERS))


def converter_of(resampler: str) -> str:
    """libsamplerate's converter behind ``resampler`` (``"sinc_medium"`` for ``"essentia"`` and
    ``"samplerate"``; ``"soxr"`` for soxr's)."""
    if resampler.startswith("essentia-q"):
        return QUALITY_CONVERTERS[int(resampler[len("essentia-q"):])]
    return "soxr" if resampler == "soxr" else "sinc_medium"


def is_essentia_default(resampler: str) -> bool:
    """Whether ``resampler`` is MonoLoader's default converter (the one JAX computes)."""
    return canonical_resampler(resampler) == "essentia"


def check_conversion(in_rate: int, out_rate: int, what: str) -> None:
    """:class:`AudioError` naming ``what`` (the input rate) when libsamplerate, and so Essentia,
    cannot convert ``in_rate`` Hz to ``out_rate`` Hz: a ratio beyond 1/256 to 256."""
    if not converts(in_rate, out_rate):
        raise AudioError(f"{what} {in_rate} Hz is too far from {out_rate} Hz (a ratio of "
                         f"{essentia_ratio(in_rate, out_rate):.6g}); libsamplerate, Essentia's "
                         "resampler, converts ratios from 1/256 to 256")


def _pcm_to_float(array: np.ndarray) -> np.ndarray:
    dtype = array.dtype
    if is_floating(dtype):
        if dtype.itemsize > 4 and array.size:  # checked before float32 makes 1e300 infinite
            check_peak(array)
        return array.astype(np.float32)
    if np.issubdtype(dtype, np.integer) and dtype.itemsize > 4:
        # NumPy's default integer: int16 values made so (astype(int)) were scaled by 2**-63 to
        # silence, and tagged as such; no audio reader gives 64-bit PCM
        raise AudioError(f"audio has dtype {dtype}, which is no PCM format (read as 64-bit PCM, "
                         "16-bit values would be silence); give int16 or int32 PCM "
                         "(x.astype(np.int16)) or floating-point samples in [-1, 1]")
    half = float(2 ** (8 * dtype.itemsize - 1))
    if np.issubdtype(dtype, np.signedinteger) or (np.issubdtype(dtype, np.unsignedinteger)
                                                  and dtype.itemsize <= 2):
        # in float32, in place: the same floats as through float64 (a power of two scales a
        # rounded value exactly; 16-bit values and their offsets are exact), without a float64
        # copy of the signal (a 10-min int16 array took 6x its size at the peak, now 4x)
        out = array.astype(np.float32)
        if np.issubdtype(dtype, np.unsignedinteger):
            out -= np.float32(half)
        out *= np.float32(1.0 / half)
        return out
    if np.issubdtype(dtype, np.unsignedinteger):  # 32-bit: x - 2**31 is exact in float64 only
        return ((array.astype(np.float64) - half) / half).astype(np.float32)
    raise AudioError(f"audio has dtype {dtype}; expected floating-point samples in [-1, 1] "
                     "or integer PCM")


def no_sample_error(n_input: int, sample_rate: int) -> NoSamplesError:
    """The error for ``n_input`` samples at ``sample_rate`` Hz that give no 16-kHz sample: none
    at all, or too few to resample to one (one or two at 44.1 kHz)."""
    if n_input == 0:
        return NoSamplesError("audio contains no samples; expected at least one sample")
    return NoSamplesError(f"audio of {n_input} sample(s) at {sample_rate} Hz gives no sample at "
                      "16 kHz; expected at least one")


def check_peak(samples: np.ndarray, name: str = "audio") -> None:
    """Raise :class:`AudioError` for NaN or infinite samples, or for a peak beyond
    :data:`MAX_PEAK`."""
    if samples.dtype.itemsize < 4:  # float16, bfloat16: NumPy warns of their NaN in a reduction
        samples = samples.astype(np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0   # NaN if any sample is
    if not math.isfinite(peak):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise AudioError(f"{name}: contains {bad} NaN or infinite "
                         "sample(s); expected finite samples")
    if peak > MAX_PEAK:
        raise AudioError(f"{name}: a sample reaches {peak:.3g}, beyond {MAX_PEAK:.0e}: the float32 "
                         "spectrum would overflow (from ~1e16) and the outputs turn NaN; expected "
                         "samples in about [-1, 1]")


def check_channels(channels: int, name: str) -> None:
    """:class:`AudioError` for more than two channels, naming ``name`` (a file, or "audio": an
    array, with a hint on its axes)."""
    if channels > 2:
        hint = (" (for an array, channels go last: [n_samples, channels]; librosa's "
                "[channels, n_samples] is y.T)") if name == "audio" else ""
        raise AudioError(f"{name}: has {channels} channels; accepted: mono or stereo, as "
                         f"Essentia's loader{hint}")


def _to_mono_16k(data: np.ndarray, native: int, target: int, resampler: str,
                 name: str) -> np.ndarray:
    """``[n, channels]`` float32 -> checked float32 mono resampled to ``target``."""
    native = check_rate(native, f"{name}: sample rate")
    n, channels = data.shape
    check_channels(channels, name)
    if n == 0 or channels == 0:
        raise AudioError(f"{name}: contains no samples; expected at least one sample")
    check_peak(data, name)
    # Essentia's MonoMixer "mix": (left + right) / 2 in float32.
    mono = data[:, 0] if channels == 1 else (data[:, 0] + data[:, 1]) * np.float32(0.5)
    return _resample(np.ascontiguousarray(mono, np.float32), native, target, resampler)


def implementation(resampler: str, in_rate: int, out_rate: int) -> str:
    """What computes ``resampler``'s samples for ``in_rate -> out_rate`` Hz: ``"jax"``
    (:mod:`jaxmir.resample`), ``"linear"`` (:mod:`jaxmir.resample.linear`), ``"samplerate"``
    or ``"soxr"``; see the module docstring."""
    if is_essentia_default(resampler):
        return "jax" if accelerated(in_rate, out_rate) else "samplerate"
    if resampler.startswith("essentia-q"):
        return "linear" if converter_of(resampler) == "linear" else "samplerate"
    return resampler


def _resample(mono: np.ndarray, native: int, target: int, resampler: str) -> np.ndarray:
    if native == target:
        return mono.copy()
    kind = implementation(resampler, native, target)
    if kind == "jax":
        out = resample(mono, native, target)
    elif kind == "linear":  # one call, as Resample on an array makes it
        stream = Resampling(native, target, resampler)
        return np.concatenate([stream.push(mono), stream.close()])
    elif kind == "samplerate":
        import samplerate

        # Essentia's Resample keeps the ratio in a float32 `Real`; with the
        # exact double ratio the output drifts by ~3e-3 after a few seconds.
        ratio = essentia_ratio(native, target)
        converter = converter_of(resampler)
        out = samplerate.resample(mono, ratio, converter)
        out = out[:essentia_length(out.shape[0], native, target, mono.shape[0], converter)]
    else:
        import soxr

        out = soxr.resample(mono, native, target, quality="HQ")
        size = int(math.ceil(mono.shape[0] * (target / native)))  # librosa's fix_length
        out = out[:size] if out.shape[0] >= size else np.pad(out, (0, size - out.shape[0]))
    return np.asarray(out, np.float32)


def essentia_length(made: int, in_rate: int, out_rate: int, n_input: int,
                    converter: str = "sinc_medium") -> int:
    """How many of the ``made`` outputs python-samplerate gives for ``n_input`` samples Essentia's
    ``Resample`` gives: one fewer where the last meets libsamplerate's end test exactly
    (:func:`jaxmir.resample.essentia_count`: 8 kHz -> 16 kHz, 32 kHz -> 16 kHz at even lengths,
    16 -> 48 kHz...)."""
    return essentia_count(plan_of(in_rate, out_rate, converter), n_input, made)


# Essentia's MonoLoader resamples a file with the streaming Resample, which takes its input 4096
# samples at a time and passes the last, shorter chunk with libsamplerate's end of input. A file
# of whole chunks leaves no last chunk: Resample returns before that call (resample.cpp, "if
# (available == 0) return NO_INPUT"), and the outputs libsamplerate still holds are never given
# (45 at 44.1 kHz, 93 at 8 kHz), while the standard Resample (one call) gives them.
MONOLOADER_CHUNK = 4096


def monoloader_cut(in_rate: int, out_rate: int, n_input: int,
                   converter: str = "sinc_medium") -> int | None:
    """Where MonoLoader's 16-kHz signal of ``n_input`` samples ends, when it ends before one
    libsamplerate call over all of them would (an input of whole chunks, whose sinc filter is
    never flushed); else ``None``."""
    if n_input == 0 or n_input % MONOLOADER_CHUNK or in_rate == out_rate:
        return None
    return unflushed_count(plan_of(in_rate, out_rate, converter), n_input)


# -- chunk by chunk (streams, collections) --------------------------------------------------
def first_bad_frame(array: np.ndarray) -> int | None:
    """The index of the first frame of floating-point ``array`` ``[n]`` or ``[n, channels]``
    that is NaN, infinite or beyond :data:`MAX_PEAK`, if any."""
    if not is_floating(array.dtype):
        return None
    if array.dtype.itemsize < 4:  # float16, bfloat16: the bound itself would be infinite
        array = array.astype(np.float32)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(array) <= MAX_PEAK)
    frames = np.flatnonzero(bad if array.ndim == 1 else bad.any(axis=1))
    return int(frames[0]) if frames.size else None


class MonoInput:
    """Checks chunks against the first one (channels, dtype) and downmixes them to float32 mono."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.channels: int | None = None
        self.dtype: np.dtype | None = None
        self.samples = 0

    def __call__(self, chunk) -> np.ndarray:
        """``[n]`` or ``[n, channels]`` -> float32 ``[n]``; the stream's state is unchanged on
        error."""
        where = "the audio" if self.samples == 0 else f"the chunk from sample {self.samples}"
        array = _sample_array(chunk, where)
        channels = 1 if array.ndim == 1 else int(array.shape[1])
        if array.shape[0] == 0:  # no samples: it neither sets nor breaks the stream's format
            if channels > 2:     # (np.zeros(0) is 1-D float64, whatever the stream's)
                raise AudioError(f"{where} has {channels} channels; accepted: mono or stereo")
            return np.zeros(0, np.float32)
        if self.channels is not None and channels != self.channels:
            raise AudioError(f"{where} has {channels} channel(s); the stream started with "
                             f"{self.channels}: every chunk must have the same channels")
        if self.dtype is not None and array.dtype != self.dtype:
            raise AudioError(f"{where} has dtype {array.dtype}; the stream started with "
                             f"{self.dtype}: every chunk must have the same dtype")
        try:
            mono = prepare_audio(array, self.sample_rate, self.sample_rate)
        except AudioError as err:
            bad = first_bad_frame(array)
            at = where if bad is None else f"sample {self.samples + bad}" + (
                f" (in {where})" if self.samples and bad else "")
            reason = str(err).removeprefix("audio: ").removeprefix("audio ")
            raise AudioError(f"{at} {reason}" if reason.startswith("has ") else
                             f"{at}: {reason}") from None
        self.channels, self.dtype = channels, array.dtype
        self.samples += int(array.shape[0])
        return mono


class Resampling:
    """Float32 mono at ``in_rate`` -> ``out_rate``, chunk by chunk, equal to the one-shot
    resamplers.

    ``push(x)`` returns the samples it can give now, ``close()`` the rest:
    concatenated, they are exactly :func:`jaxmir.audio.prepare_audio`'s samples; with
    ``monoloader`` (a file's samples) the first of them, as many as Essentia's MonoLoader gives
    (:func:`monoloader_cut`), the last few (:attr:`held`, ~3-6 ms at 16 kHz) held back until
    ``close`` to that end.

    ``min_outputs``: for the ``"jax"`` kind (:class:`~jaxmir.resample.SincResampler`), the
    outputs a push waits for before the kernels run (0: as soon as they are final; ``None``:
    :data:`~jaxmir.resample.MIN_OUTPUTS`). libsamplerate and soxr run at every push, so a
    ``min_outputs`` given with ``resampler="samplerate"`` or ``"soxr"`` is refused
    (:class:`~jaxmir.errors.InputError`) rather than ignored. ``closed``: whether :meth:`close`
    was called (a push after it is refused).
    """

    # libsamplerate copies a call's input into its own buffer as far as its output
    # buffer (sized by python-samplerate to ceil(n * ratio)) allows, and the wrapper
    # drops the rest: steps of 4096 samples always fit.
    STEP = 4096

    def __init__(self, in_rate: int, out_rate: int = 16000, resampler: str = "essentia",
                 min_outputs: int | None = None, what: str = "min_outputs", parallel: bool = False,
                 monoloader: bool = False):
        """``what``: the name ``min_outputs`` has for the caller (``Model.stream``'s
        ``resample_step``), in errors; ``parallel``: see :class:`~jaxmir.resample.SincResampler`."""
        check_resampler(resampler)
        if min_outputs is not None:
            check_min_outputs(min_outputs, what)
            if not is_essentia_default(resampler):
                raise InputError(f"{what} applies to Essentia's converter "
                                 f"(resampler='essentia'); {resampler!r} runs at every push")
        self.in_rate, self.out_rate = in_rate, out_rate
        self.n_in = self.n_out = 0
        self._surplus = np.zeros(0, np.float32)  # soxr's beyond librosa's length so far
        self.kind = implementation(resampler, in_rate, out_rate)
        self.converter = converter_of(resampler)
        # MonoLoader's end (the sinc converters only): at most `held` outputs, those a
        # file of whole chunks does not get, wait for close (see _hold_back)
        self.held = 0
        if monoloader and self.kind in ("jax", "samplerate") and in_rate != out_rate:
            half = plan_of(in_rate, out_rate, self.converter).half
            self.held = math.ceil(out_rate / in_rate * (half + 1)) + 2
        self._withheld = np.zeros(0, np.float32)
        self._given = 0
        self.closed = False
        if in_rate == out_rate:
            self._state = None
        elif self.kind == "jax":
            self._state = SincResampler(in_rate, out_rate, min_outputs=(
                MIN_OUTPUTS if min_outputs is None else min_outputs), parallel=parallel)
        elif self.kind == "linear":
            self._state = LinearInterpolator(essentia_ratio(in_rate, out_rate),
                                             MONOLOADER_CHUNK if monoloader else None)
        elif self.kind == "samplerate":
            import samplerate

            self._ratio = essentia_ratio(in_rate, out_rate)
            self._state = samplerate.Resampler(self.converter, channels=1)
        else:
            import soxr

            self._state = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def _sinc(self, x: np.ndarray, end: bool) -> np.ndarray:
        steps = range(0, x.shape[0], self.STEP)
        parts = [self._state.process(x[i:i + self.STEP], self._ratio,
                                     end and i + self.STEP >= x.shape[0])
                 for i in steps]
        return (np.concatenate(parts).astype(np.float32, copy=False) if parts
                else np.zeros(0, np.float32))

    def _release(self, out: np.ndarray, allowed: int) -> np.ndarray:
        """At most ``allowed`` samples in all; the surplus is held back (soxr)."""
        out = np.concatenate([self._surplus, out]) if self._surplus.size else out
        take = max(0, min(out.shape[0], allowed - self.n_out))
        self._surplus = out[take:]
        self.n_out += take
        return out[:take]

    def _hold_back(self, out: np.ndarray) -> np.ndarray:
        """``out`` but its last ``held`` samples (with those held before in front)."""
        if not self.held:
            return out
        out = np.concatenate([self._withheld, out])
        give = max(0, out.shape[0] - self.held)
        self._withheld = out[give:]
        self._given += give
        return out[:give]

    def _monoloader_end(self, tail: np.ndarray) -> np.ndarray:
        """The samples held back, then ``tail``, up to where MonoLoader ends the file: no sample
        given before lies past it, since more than its shortfall was held."""
        if not self.held:
            return tail
        out = np.concatenate([self._withheld, tail])
        self._withheld = out[:0]
        cut = monoloader_cut(self.in_rate, self.out_rate, self.n_in, self.converter)
        return out if cut is None else out[:max(0, cut - self._given)]

    def push(self, x: np.ndarray) -> np.ndarray:
        """The output samples that ``x`` (``[n]`` float32 at the input rate) completes; some are
        held back until the next push or :meth:`close`."""
        if self.closed:  # the converters' states are spent: a push would give wrong samples
            raise AudioError("push after close: this Resampling is closed; create a new one")
        self.n_in += x.shape[0]
        if self._state is None:  # a copy: the caller may reuse its buffer for the next chunk
            self.n_out += x.shape[0]
            return x.copy()
        if self.kind == "samplerate":
            out = self._sinc(x, False)
            self.n_out += out.shape[0]
            return self._hold_back(out)
        if self.kind in ("jax", "linear"):
            out = self._state.push(x)
            self.n_out += out.shape[0]
            return self._hold_back(out)
        out = self._state.resample_chunk(x, last=False)
        return self._release(np.asarray(out, np.float32),
                             math.ceil(self.n_in * (self.out_rate / self.in_rate)))

    def close(self) -> np.ndarray:
        """The output samples left at the end of the input (float32 ``[n]``; none after the
        first call)."""
        if self.closed:
            return np.zeros(0, np.float32)
        self.closed = True
        if self._state is None:
            return np.zeros(0, np.float32)
        if self.kind == "linear":  # it holds back no sample: its calls end the signal
            tail = self._state.close()
            self.n_out += tail.shape[0]
            return tail
        if self.kind == "samplerate":
            # libsamplerate's end of input pads with zeros: explicit zeros give the same samples,
            # and samplerate.resample returns floor(n * ratio) of them; as many as its filter's
            # half reaches (46 samples upsampling, 7360 outputs from 100 Hz), and as a step gives
            half = plan_of(self.in_rate, self.out_rate, self.converter).half
            zeros = np.zeros(math.ceil(4096 / self._ratio) + half + 2, np.float32)
            tail = self._sinc(zeros, True)
            want = essentia_length(math.floor(self.n_in * self._ratio), self.in_rate, self.out_rate,
                                   self.n_in, self.converter)
            tail = tail[:max(0, want - self.n_out)]
            self.n_out += tail.shape[0]
            return self._monoloader_end(tail)
        if self.kind == "jax":
            tail = self._state.flush()
            self.n_out += tail.shape[0]
            return self._monoloader_end(tail)
        size = math.ceil(self.n_in * (self.out_rate / self.in_rate))  # librosa's fix_length
        out = self._release(
            np.asarray(self._state.resample_chunk(np.zeros(0, np.float32), last=True),
                       np.float32), size)
        short = size - self.n_out
        self.n_out += short
        return np.concatenate([out, np.zeros(short, np.float32)]) if short > 0 else out
