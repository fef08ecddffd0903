"""From a waveform to per-patch model outputs: ``predict``, ``features``, and the bucketed jitted
path.

:func:`predict` runs NumPy input through the streaming engine
(:mod:`jaxmir.stream`), and JAX arrays (traced under ``jax.grad``, or float64
under x64) through :func:`plan` / :func:`run_plan`, described here.

waveform ``[n_samples]`` -> log-mel frames (:mod:`jaxmir.frontends`) -> patches
(Essentia's rules, :mod:`jaxmir.patches`) -> the model -> ``[n_patches, ...]``.

Compilation happens once per model, output set and *bucket*: the waveform is
zero-padded to the bucket's length and the patches are cut by an index table
(a runtime argument, not a constant), so songs of different lengths share one
compiled program. Padding never changes a result:

* frame ``k`` only reads samples ``[k * hop - 256, k * hop + 256)`` (MusiCNN;
  likewise for VGGish) with zeros outside the signal, so the frames of the
  true signal are the same numbers whether the zeros come from the framing or
  from the padding;
* the index table only names frames of the true signal (row 0 of the frame
  table is a frame of zeros, for ``pad="zero"``), and the outputs of the
  bucket's extra patches are sliced off.

The patches go through the model in chunks of ``chunk`` patches (``lax.scan``
in :func:`jaxmir.models.runner.run_patches`), so memory does not grow with the
length of a song. Everything is differentiable
with respect to the waveform.

Overlapping patches share work: MusiCNN's timbral convolutions (7 frames tall,
~2/3 of the model's arithmetic) are computed once on the stretch of frames a
chunk of consecutive patches covers, and each patch takes its rows from it;
a chunk takes the rows its first patches share with the chunk before from
that chunk (the loop's carry). Only the 3 rows at each end of a patch, whose
convolution reads the patch's zero padding, are computed per patch. The
numbers are those of patch-by-patch evaluation up to float32 summation
order; MusiCNN does this itself when its ``overlap_hop`` is set
(:func:`jaxmir.models.with_overlap_hop`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jaxmir import frontends
from jaxmir.audio import (BLOCK_FRAMES, check_peak, check_resampler, check_samples,
                          first_bad_frame, no_sample_error, prepare_audio)
from jaxmir.batches import BATCH
from jaxmir.checks import check_rate
from jaxmir.errors import InputError
from jaxmir.frontends import logmel, num_frames
from jaxmir.models import with_overlap_hop
from jaxmir.patches import make_patches, regular_rows
from jaxmir.stream import Stream, audio_to_outputs, check_batch, concat_patches, frontend_of
from jaxmir.spec import Frontend

if TYPE_CHECKING:
    from jaxmir.model import Model

CHUNK = BATCH  # patches per model call on a traced or JAX signal, as the engines' (jaxmir.batches)


def _coarse_ceil(n: int, per_octave_bits: int) -> int:
    """``n`` rounded up so that each octave holds at most ``2 ** per_octave_bits`` values."""
    step = 1 << max(0, n.bit_length() - per_octave_bits - 1)
    return -(-n // step) * step


def bucket_patches(n_patches: int, chunk: int | None = None) -> int:
    """The number of patches a bucket holds: ``>= n_patches``.

    Up to ``chunk``: the next power of two; above: whole chunks, exactly up to
    15 chunks, then rounded so that each octave has 8 buckets (at most 12.5%
    of the work is padding).
    """
    chunk = chunk or CHUNK
    if n_patches <= chunk:
        return 1 << max(0, (n_patches - 1).bit_length())
    return _coarse_ceil(-(-n_patches // chunk), 3) * chunk


def _max_samples(frontend: Frontend, compat: str, max_frames: int) -> int:
    """The longest signal whose front-end gives at most ``max_frames`` frames."""
    hop = frontend.hop_size
    low, high = 0, (max_frames + 4) * hop + 1024  # num_frames(high) > max_frames
    while high - low > 1:
        mid = (low + high) // 2
        if num_frames(frontend, mid, compat) <= max_frames:
            low = mid
        else:
            high = mid
    return low


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one signal is cut into patches, and the bucket it is computed in.

    Attributes:
      frontend: the model's :class:`~jaxmir.spec.Frontend`.
      compat: the front-end's ``compat`` mode.
      n_samples: samples of the true signal (16 kHz).
      n_frames: log-mel frames of the true signal.
      patch_size, patch_hop: in frames (``patch_hop`` resolved: never 0).
      n_patches: patches of the true signal (Essentia's count).
      bucket_samples: the padded signal length the program is compiled for.
      index: ``[bucket_patches, patch_size]`` int32 rows into the frame table:
        0 is a frame of zeros, ``k + 1`` is frame ``k``; rows past
        ``n_patches`` are padding (for regular plans they continue the
        sequence of patches into the padded frames).
      regular: every patch ``p`` is frames ``[p * hop, p * hop + patch_size)``
        (not so for a ``"repeat"`` last patch or a padded short signal).
    """

    frontend: Frontend
    compat: str
    n_samples: int
    n_frames: int
    patch_size: int
    patch_hop: int
    n_patches: int
    bucket_samples: int
    index: np.ndarray = dataclasses.field(repr=False, compare=False)
    regular: bool = False

    @property
    def bucket_patches(self) -> int:
        return int(self.index.shape[0])

    @property
    def patch_starts(self) -> np.ndarray:
        """First frame of each patch, ``[n_patches]``."""
        return (self.index[:self.n_patches, 0].astype(np.int64) - 1).clip(0)


def plan(model: "Model", n_samples: int, *, patch_hop: int | None = None,
         last_patch: str = "discard", pad: str | None = None, compat: str = "essentia",
         bucket: bool = True) -> Plan:
    """Cut a signal of ``n_samples`` samples (16 kHz) into the model's patches.

    Args:
      model: a model with a front-end (MusiCNN, VGG, VGGish, or one with a head).
      n_samples: length of the 16-kHz signal.
      patch_hop: frames between patch starts; ``None``: Essentia's default
        (93); ``0``: the patch size (no overlap).
      last_patch, pad: as :func:`jaxmir.patches.make_patches`; a signal shorter than a
        patch raises :class:`~jaxmir.errors.ShortAudioError` unless ``pad`` is given or
        ``last_patch="repeat"``.
      compat: the front-end mode (:func:`jaxmir.frontends.musicnn_logmel`).
      bucket: pad to a bucket length (compile once for many lengths); ``False``
        computes exactly the true length.
    """
    frontend = frontend_of(model)
    n_frames = num_frames(frontend, n_samples, compat)  # checks n_samples
    size = int(model.input_shape[0])
    hop = frontend.patch_hop if patch_hop is None else patch_hop
    # Cut a column of frame numbers (k + 1) with Essentia's rules; zero padding gives 0.
    numbers = np.arange(1, n_frames + 1, dtype=np.int32)[:, None]
    index = make_patches(numbers, size, hop, last_patch=last_patch, pad=pad,
                         frames_per_second=frontend.frames_per_second)[..., 0]
    hop = int(hop) or size
    n_patches = index.shape[0]
    if bucket:
        n_bucket = bucket_patches(n_patches)
        # Any signal with at most n_bucket patches has fewer than n_bucket * hop + size frames.
        bucket_samples = max(int(n_samples),
                             _max_samples(frontend, compat, n_bucket * hop + size - 1))
    else:
        n_bucket, bucket_samples = n_patches, int(n_samples)
    regular = bool(np.array_equal(index, regular_rows(0, n_patches, hop, size)))
    if regular:  # the bucket's extra patches continue the sequence into the padding frames
        padding = regular_rows(n_patches, n_bucket, hop, size)
    else:
        padding = np.zeros((n_bucket - n_patches, size), np.int32)
    index = np.concatenate([index, padding])
    return Plan(frontend, compat, int(n_samples), n_frames, size, hop, n_patches, bucket_samples,
                np.ascontiguousarray(index, np.int32), regular)


def _pad_to(audio, length: int):
    """Zeros appended up to ``length``: on the host for concrete arrays (no per-length program)."""
    if isinstance(audio, jax.core.Tracer):
        return jnp.pad(audio, (0, length - audio.shape[0]))
    audio = np.asarray(audio)
    return np.pad(audio, (0, length - audio.shape[0]))


def run_plan(model: "Model", audio_16k: ArrayLike, plan_: Plan,
             outputs: Iterable[str] | str | None = None, *, chunk: int = CHUNK,
             share_overlap: bool = True) -> dict:
    """Per-patch outputs of a planned signal: ``{name: [n_patches, ...]}``.

    ``audio_16k`` is ``[plan_.n_samples]`` float: a NumPy or JAX array (the
    outputs are NumPy arrays) or a tracer (under ``jax.grad``/``jit``; the
    outputs are JAX arrays, differentiable with respect to the audio).
    ``chunk`` patches go through the model per step (a multiple of it divides
    the bucket); ``share_overlap`` lets MusiCNN compute its timbral
    convolutions once for overlapping patches.
    """
    names, taps = model.resolve_outputs(outputs)
    if tuple(np.shape(audio_16k)) != (plan_.n_samples,):
        raise InputError(f"audio has shape {list(np.shape(audio_16k))}; the plan is for "
                         f"[{plan_.n_samples}] samples")
    if not jnp.issubdtype(audio_16k.dtype, jnp.floating):
        raise InputError(f"audio has dtype {audio_16k.dtype}; expected float samples at 16 kHz")
    module = model.module
    if share_overlap and plan_.regular:
        module = with_overlap_hop(module, plan_.patch_hop)
    values, _ = audio_to_outputs(module, taps, plan_.frontend, plan_.compat, chunk,
                                 model.variables, _pad_to(audio_16k, plan_.bucket_samples),
                                 plan_.index)
    if isinstance(audio_16k, jax.core.Tracer):
        return {name: value[:plan_.n_patches] for name, value in zip(names, values)}
    # slicing on the host: a device slice would compile a program per number of patches
    return {name: np.asarray(value)[:plan_.n_patches] for name, value in zip(names, values)}


def _check_named(samples: np.ndarray) -> None:
    """:func:`check_peak` naming the first bad sample, as a NumPy signal's check names it."""
    bad = first_bad_frame(samples)
    if bad is not None:
        check_peak(samples, f"sample {bad}")


def _as_16k(audio, sample_rate: int, resampler: str) -> "np.ndarray | jax.Array":
    """Checked mono 16-kHz audio.

    NumPy input goes through :func:`prepare_audio` (float32, downmixed, resampled).
    A JAX float array ``[n_samples]`` at 16 kHz is kept as it is, dtype included
    (float64 under x64), so that gradients and float64 checks see the same
    function; a traced one cannot be checked for NaN.
    """
    check_samples(audio)
    check_resampler(resampler)
    if isinstance(audio, (np.ndarray, jax.Array)) and audio.ndim and audio.shape[0] == 0:
        raise no_sample_error(0, sample_rate)
    if isinstance(audio, jax.Array) and check_rate(sample_rate, "sample_rate") \
            == frontends.SAMPLE_RATE and audio.ndim == 1 \
            and jnp.issubdtype(audio.dtype, jnp.floating):
        if not isinstance(audio, jax.core.Tracer):
            _check_named(np.asarray(audio))
        return audio
    if isinstance(audio, jax.core.Tracer):
        raise InputError("traced audio (under jax.grad/jit/vmap) must be float mono [n_samples] "
                         f"at 16000 Hz; got {audio.dtype} {list(audio.shape)} at {sample_rate} Hz")
    if isinstance(audio, jax.Array) and (audio.ndim == 1 or (audio.ndim == 2
                                                             and audio.shape[1] <= 2)):
        _check_named(np.asarray(audio))  # channels last: others are refused for their layout
    samples = prepare_audio(audio, sample_rate, frontends.SAMPLE_RATE, resampler=resampler)
    if samples.shape[0] == 0:  # resampled to nothing (empty input is refused above)
        raise no_sample_error(np.shape(audio)[0], check_rate(sample_rate, "sample_rate"))
    return samples


def predict(model: "Model", audio: ArrayLike, sample_rate: int,
            output: str | Iterable[str] | None = None, *, patch_hop: int | None = None,
            last_patch: str = "discard", pad: str | None = None, compat: str = "essentia",
            resampler: str = "essentia", bucket: bool = True, chunk: int | None = None,
            share_overlap: bool = True
            ) -> np.ndarray | jax.Array | dict[str, np.ndarray | jax.Array]:
    """The model's output for every patch of a signal, as Essentia's TensorflowPredict* gives it.

    NumPy (or list) input runs through the streaming engine
    (:class:`jaxmir.stream.Stream`, in blocks of :data:`~jaxmir.audio.BLOCK_FRAMES`
    frames, its samples checked whole first): the one
    path the command line, files read block by block and live input take. A
    JAX array (16 kHz, mono, float) takes the bucketed one-program path
    (:func:`plan`, :func:`run_plan`) instead: it keeps its dtype (float64
    under x64) and, traced under ``jax.grad``, is differentiable with respect
    to the waveform, which the engine (host-side buffers and resampling) is not.

    Args:
      model: a patch model.
      audio: ``[n_samples]`` or ``[n_samples, channels]`` at ``sample_rate``
        (float in [-1, 1] or integer PCM); resampled to 16 kHz when needed.
        A traced 16-kHz ``[n_samples]`` array (inside ``jax.grad``) is used as is.
      sample_rate: the rate of ``audio`` in Hz; required, never guessed.
      output: a name :meth:`Model.apply` accepts (default ``"predictions"``),
        or several names (then a dict is returned).
      patch_hop, last_patch, pad, compat: see :func:`plan`.
      resampler: one of :data:`jaxmir.audio.RESAMPLERS` (:func:`jaxmir.audio.prepare_audio`).
      bucket: see :func:`plan` (JAX arrays only; the engine computes exact lengths).
      chunk: patches per model call (default :func:`jaxmir.stream.file_batch`; :data:`CHUNK`
        for a JAX array); share_overlap: see :func:`run_plan`.

    Returns:
      ``[n_patches, ...]``, or ``{name: array}`` for several outputs: NumPy
      arrays, or JAX arrays when ``audio`` is traced.
    """
    if isinstance(audio, jax.Array):
        audio = _as_16k(audio, sample_rate, resampler)
        plan_ = plan(model, int(audio.shape[0]), patch_hop=patch_hop, last_patch=last_patch,
                     pad=pad, compat=compat, bucket=bucket)
        values = run_plan(model, audio, plan_, output,
                          chunk=CHUNK if chunk is None else check_batch(chunk),
                          share_overlap=share_overlap)
    else:
        stream = Stream(model, sample_rate, output, patch_hop=patch_hop, last_patch=last_patch,
                        pad=pad, compat=compat, resampler=resampler, batch=chunk,
                        share_overlap=share_overlap, require_patch=True, eager=False)
        values = concat_patches(stream.run(_blocks(audio)), stream.empty).values
    if output is None or isinstance(output, str):
        return next(iter(values.values()))
    return values


def _blocks(audio: ArrayLike) -> Iterable[ArrayLike]:
    """A NumPy signal in :data:`~jaxmir.audio.BLOCK_FRAMES` slices, as a file is read (the
    engine then holds a block's copies, not the whole signal's: a 30-min recording took 2.3
    times its bytes again); anything else whole, as given, and so is a signal holding a NaN,
    an infinity or a peak beyond the bound: refused at once, its sample named in the whole."""
    if not isinstance(audio, np.ndarray) or audio.ndim == 0 or len(audio) <= BLOCK_FRAMES:
        return [audio]
    starts = range(0, len(audio), BLOCK_FRAMES)
    if any(first_bad_frame(audio[start:start + BLOCK_FRAMES]) is not None for start in starts):
        return [audio]
    return (audio[start:start + BLOCK_FRAMES] for start in starts)


def features(model: "Model", audio: ArrayLike, sample_rate: int, compat: str = "essentia",
             resampler: str = "essentia") -> np.ndarray | jax.Array:
    """The model's log-mel input frames for a signal, ``[n_frames, n_bands]`` float32.

    A NumPy array (a JAX array when ``audio`` is traced).

    ``n_bands`` is 96 for MusiCNN/VGG (frames every 256 samples, 16 ms) and
    64 for VGGish (every 160 samples, 10 ms).
    """
    frontend = frontend_of(model)
    audio = _as_16k(audio, sample_rate, resampler)
    n = int(audio.shape[0])
    n_frames = num_frames(frontend, n, compat)
    # Bucket the length (multiples of 1024 frames, coarser for long signals): one program per
    # bucket.
    blocks = _coarse_ceil(-(-n_frames // 1024), 4)
    padded = max(n, _max_samples(frontend, compat, blocks * 1024))
    frames = logmel(_pad_to(audio, padded), frontend, compat)
    if isinstance(audio, jax.core.Tracer):
        return frames[:n_frames]
    return np.asarray(frames)[:n_frames]


__all__ = ["CHUNK", "Plan", "plan", "run_plan", "predict", "features", "bucket_patches",
           "frontend_of"]
