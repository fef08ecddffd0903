"""Chunk-by-chunk inference: audio in, each patch's outputs out as soon as the patch is complete.

Audio arrives in chunks of any size at its own rate (``[n]`` or ``[n, channels]``,
float in [-1, 1] or integer PCM). Four stateful stages turn it into per-patch
outputs, and give the numbers offline :func:`jaxmir.pipeline.predict` gives:

1. **mono**: PCM to float32 and Essentia's downmix ``(left + right) * 0.5``
   (:func:`jaxmir.audio.prepare_audio`, chunk by chunk: it is sample-wise).
2. **resample** to 16 kHz (:class:`jaxmir.audio.Resampling`), the same samples as
   :func:`jaxmir.audio.prepare_audio` with the same ``resampler``: for ``"essentia"``,
   :class:`jaxmir.resample.SincResampler` at the rates its matrix-product kernel serves
   (equal to the one-shot call bit for bit) and elsewhere, as ``"samplerate"`` always,
   libsamplerate's ``SINC_MEDIUM`` state machine driven with Essentia's float32 ratio (the
   converter ``samplerate.resample`` runs in one call); ``"soxr"`` is
   ``soxr.ResampleStream`` with librosa's output length ``ceil(n * 16000 / rate)``
   applied at the end.
3. **frames and patches**: frame ``k`` reads samples ``[first + k * hop,
   first + k * hop + size)`` (Essentia's centred framing: ``first = -size / 2``,
   zeros before the start and after the end). A regular patch ``p`` (frames
   ``[p * patch_hop, p * patch_hop + patch_size)``) is complete once its last
   frame's samples have all arrived; the samples of the patches still to come
   are kept, nothing else. At :meth:`Stream.close` the signal's length is
   known: the last frames read the zeros after the end, and ``last_patch``
   (``"discard"``/``"repeat"``) and ``pad`` apply as in
   :func:`jaxmir.patches.make_patches`.
4. **model**: complete patches go through one jit-compiled program per batch
   shape, :func:`audio_to_outputs` (the samples under the patches -> log-mel ->
   patches -> the model, :func:`jaxmir.models.runner.run_patches`). A run of
   more than :data:`SINGLE_LIMIT` patches goes in batches of ``batch`` (8;
   :func:`file_batch` for a file; a partial batch goes in calls of 8, the last
   padded with the patches that follow, whose outputs are dropped) where
   MusiCNN shares its timbral convolutions between consecutive patches
   (:func:`jaxmir.models.with_overlap_hop`), and a batch that starts
   where the batch before ended takes the rows the two share from that one
   (its carry, :func:`jaxmir.models.runner.run_patches_carrying`); fewer go
   one by one in a live stream, and in one padded call of 8 in a file's: its
   last patches then need no program of their own. So a live stream uses two
   programs (three for a batch above 8), a file one (two), plus the single-patch
   one for a ``"repeat"`` last patch or a padded short signal, and no other: chunk
   sizes never change a shape. On a CPU a call's body runs in
   steps of 8 patches and its dense head once (:func:`~jaxmir.models.runner.call_step`).
   A live stream runs each patch as soon as it is complete and compiles both
   programs at its first patch; a file's (``eager=False``, :func:`file_stream`,
   ``predict``) waits for whole batches, so small blocks (~1.5 s: one patch
   each) still run 8 at a time, and compiles a program when it first needs it.
   :func:`file_stream` decodes ``BLOCK_FRAMES`` (~6 s) at a time: each block is a
   call of the resampler, whose cost per call matters at 1.5 s (0.17 s against
   0.11 s for a 207-s file at 44.1 kHz). It decodes, downmixes and resamples in a
   thread, a few blocks ahead of the model (:data:`AHEAD`).

Every frame a patch uses is computed from the same samples whatever the
chunking; only the float32 summation order of batched versus single-patch
convolutions differs (~1e-7 on predictions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
import queue
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jaxmir.audio import (BLOCK_FRAMES, MonoInput, Resampling, check_channels, check_conversion,
                          no_sample_error)
from jaxmir.batches import BATCH, HEAVY_HEAD_BATCH, MAX_BATCH, SINGLE_LIMIT
from jaxmir.checks import check_rate, is_whole
from jaxmir.decode import DamagedAudioWarning, iter_blocks
from jaxmir.describe import without_audio
from jaxmir.errors import InputError, NoSamplesError, ShortAudioError
from jaxmir.frontends import SAMPLE_RATE as TARGET_RATE
from jaxmir.frontends import frame_starts, logmel, num_frames
from jaxmir.guards import OneCallAtATime
from jaxmir.models import has_heavy_head, is_bfloat16, shares_overlap, with_overlap_hop
from jaxmir.models.compiler import compiled, tuned
from jaxmir.models.runner import (call_step, device_memory, empty_carry, platform_of,
                                  run_patches_carrying, tapped_outputs)
from jaxmir.patches import PAD_MODES, make_patches, patch_starts, regular_rows
from jaxmir.spec import Frontend

if TYPE_CHECKING:
    from jaxmir.model import Model

def file_batch(model: "Model") -> int:
    """Patches per model call for audio that is all there (a file, ``predict``): :data:`BATCH`,
    or :data:`HEAVY_HEAD_BATCH` for a model with a heavy head
    (:func:`~jaxmir.models.has_heavy_head`)."""
    return HEAVY_HEAD_BATCH if has_heavy_head(model.variables) else BATCH


def check_batch(batch) -> int:
    """``batch`` (patches per model call) as an int; one that is not a whole number from 1 to
    :data:`MAX_BATCH` raises."""
    if not is_whole(batch, 1, MAX_BATCH):
        raise InputError(f"batch must be a positive integer up to {MAX_BATCH} (patches per model "
                         f"call), got {batch!r}")
    return int(batch)


def frontend_of(model: "Model") -> Frontend:
    """The front-end of a model that runs on audio; a clear error for a head on embeddings."""
    if model.frontend is not None:
        return model.frontend
    raise InputError(f"{model.name}: {without_audio(model.architecture, model.input_shape)}")


@dataclasses.dataclass(frozen=True)
class Windowing:
    """Where a run of patches lies in the 16-kHz samples one model call reads (its *window*).

    Frame ``k`` of a signal reads samples ``[first + k * hop, first + k * hop +
    frame_size)`` (zeros outside the signal). A window for frames from
    ``first_frame`` starts at sample ``(first_frame - lead) * hop`` of the
    signal, so that its frame ``lead + k`` is the signal's frame ``first_frame + k``
    and reads the same samples: ``lead`` frames are skipped so that no used
    frame reads the window's own zero padding.

    Attributes:
      frontend, compat: the front-end and its mode.
      first: sample offset of frame 0's first sample (``<= 0``; Essentia centres frames).
      lead: frames of a window before its first used one.
    """

    frontend: Frontend
    compat: str
    first: int
    lead: int

    @classmethod
    def of(cls, frontend: Frontend, compat: str = "essentia") -> "Windowing":
        # checks compat
        first = int(frame_starts(frontend.name, 4 * frontend.frame_size, compat)[0])
        return cls(frontend, compat, first, -(-(-first) // frontend.hop_size))

    def start(self, first_frame: int) -> int:
        """The signal's sample where the window for frames from ``first_frame`` starts."""
        return (first_frame - self.lead) * self.frontend.hop_size

    def length(self, span: int) -> int:
        """Samples a window needs for ``span`` frames after its ``lead`` frames."""
        fe = self.frontend
        length = self.first + (self.lead + span - 1) * fe.hop_size + fe.frame_size
        assert num_frames(fe, length, self.compat) >= self.lead + span
        return length

    def regular_index(self, n: int, patch_hop: int, patch_size: int) -> np.ndarray:
        """``[n, patch_size]`` frame-table rows (``k + 1`` is frame ``k``) of ``n`` patches
        every ``patch_hop`` frames from the window's first used frame."""
        return regular_rows(0, n, patch_hop, patch_size) + np.int32(self.lead)


def cut_samples(samples: np.ndarray, offset: int, start: int, length: int) -> np.ndarray:
    """``[length]`` float32: samples ``start ..`` of a signal of which ``samples`` holds those
    from ``offset`` on, zeros wherever ``samples`` has none (before the signal, after its end)."""
    out = np.zeros(length, np.float32)
    lo, hi = max(start, offset), min(start + length, offset + samples.shape[0])
    if hi > lo:
        out[lo - start:hi - start] = samples[lo - offset:hi - offset]
    return out


# -- the one program: samples -> log-mel -> patches -> model ---------------------------------
def _audio_to_outputs(module, taps: tuple, frontend: Frontend, compat: str, chunk: int,
                      variables: dict, audio: jax.Array, index: jax.Array, carry: dict | None
                      ) -> tuple[tuple[jax.Array, ...], dict]:
    frames = logmel(audio, frontend, compat)
    table = jnp.concatenate([jnp.zeros_like(frames[:1]), frames])  # row 0: a frame of zeros
    return run_patches_carrying(module, variables, taps, index, carry, chunk, frames=table)


_audio_to_outputs_compiled = compiled(_audio_to_outputs,
                                      static_argnames=("module", "taps", "frontend", "compat",
                                                       "chunk"))


def audio_to_outputs(module: nn.Module, taps: tuple, frontend: Frontend, compat: str, chunk: int,
                     variables: dict, audio: jax.Array, index: jax.Array,
                     carry: dict | None = None
                     ) -> tuple[tuple[jax.Array, ...], dict]:
    """Tapped outputs of the patches ``index`` cuts from the log-mel frames of ``audio``.

    Args:
      module, variables, taps: as :func:`jaxmir.models.runner.run_patches`.
      frontend, compat: the front-end (:func:`jaxmir.frontends.logmel`).
      chunk: patches per step of the model.
      audio: ``[n_samples]`` float at 16 kHz (padded by the caller to a fixed
        length: one program per length).
      index: ``[n_patches, patch_size]`` int32 rows into the frame table: 0 is
        a frame of zeros, ``k + 1`` is frame ``k`` of ``audio``.
      carry: what the call on the consecutive patches just before returned,
        or :func:`initial_carry` (:func:`jaxmir.models.runner.run_patches_carrying`).

    Returns:
      ``(outputs, carry)``: one ``[n_patches, ...]`` array per tap, and the
      carry for the call on the patches that follow. Jit-compiled once per
      module, taps, front-end, chunk and shapes; traceable (``jax.grad``).
    """
    platform = platform_of(variables)
    module, options = tuned(module, platform, (variables, audio, index, carry))
    program = _audio_to_outputs_compiled(options)
    with device_memory(platform, np.shape(index)[0]):
        return program(module, taps, frontend, compat, chunk, variables, audio, index, carry)


def initial_carry(model: "Model", module: nn.Module, batch: int) -> dict | None:
    """The carry of a first call of ``batch`` patches (:func:`~jaxmir.models.runner.empty_carry`),
    or ``None`` when ``module`` carries nothing (traced abstractly once per module and batch;
    not at all for a module that shares no overlap: ~0.15 s of a process's start)."""
    if not shares_overlap(module):
        return None
    key = (module, batch, model.input_shape, is_bfloat16(model.variables))
    if key not in _CARRIES:
        _CARRIES[key] = empty_carry(module, model.variables, model.input_shape, batch) or None
    return _CARRIES[key]


@dataclasses.dataclass(frozen=True)
class Patches:
    """Outputs of consecutive patches.

    Attributes:
      start: ``[k]`` float64, each patch's start in seconds (its first frame's
        centre: ``frame * hop / 16000``).
      values: ``{output name: [k, ...]}`` float32 NumPy arrays.
    """

    start: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.start.shape[0])


def concat_patches(parts: Iterable[Patches], empty: Callable[[], Patches]) -> Patches:
    """Several :class:`Patches` end to end; ``empty()`` when there are none (made only then:
    a stream's empty outputs cost a trace of the model for their shapes)."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return empty()
    if len(parts) == 1:
        return parts[0]
    return Patches(np.concatenate([p.start for p in parts]),
                   {name: np.concatenate([p.values[name] for p in parts])
                    for name in parts[0].values})


def check_sample_rate(sample_rate: float) -> int:
    """A whole number of Hz within 1 Hz-384 kHz that converts to 16 kHz, else
    :class:`AudioError`."""
    rate = check_rate(sample_rate, "sample rate")
    check_conversion(rate, TARGET_RATE, "sample rate")
    return rate


_SHAPES: dict = {}
_CARRIES: dict = {}
_WARM: set = set()


def _output_shapes(model: "Model", module, taps: tuple) -> tuple[tuple[int, ...], ...]:
    """Per-patch shape of each tap (traced abstractly once per module and taps)."""
    key = (module, taps, model.input_shape)
    if key not in _SHAPES:
        dummy = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
        shapes = jax.eval_shape(lambda p: tapped_outputs(module, model.variables, taps, p), dummy)
        _SHAPES[key] = tuple(tuple(s.shape[1:]) for s in shapes)
    return _SHAPES[key]


# -- stages 3 and 4: frames, patches, the model ------------------------------------------------
class PatchStarts(Sequence):
    """The start in seconds of every patch a :class:`Stream` has returned, in order: a read-only
    sequence computed from the count (patch ``k`` starts at ``k`` hops), not a list kept, which
    grew for as long as a live stream ran. It prints, copies, adds and pickles as the list it
    was; ``list(stream.times)`` where a list itself is needed (``json.dumps``)."""

    def __init__(self, stream: "Stream"):
        self._stream = stream

    def __len__(self) -> int:
        return self._stream.n_patches

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        k = operator.index(index)
        k += len(self) if k < 0 else 0
        if not 0 <= k < len(self):
            raise IndexError(f"patch {index} of {len(self)}")
        return float(self._stream._starts(k, 1)[0])

    def __eq__(self, other) -> bool:
        return list(self) == other if isinstance(other, list) else \
            list(self) == list(other) if isinstance(other, PatchStarts) else NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))

    def copy(self) -> list[float]:
        return list(self)

    def __add__(self, other: list) -> list[float]:
        return list(self) + other

    def __radd__(self, other: list) -> list[float]:
        return other + list(self)

    def __reduce__(self):  # the list, not the stream and its model
        return list, (list(self),)


# What a stream's push and close return: one output's array, or a dict of several outputs'.
Outputs = TypeVar("Outputs", np.ndarray, dict[str, np.ndarray])


class Stream(Generic[Outputs]):
    """A model run on audio that arrives chunk by chunk (see the module docstring).

    Make one with :meth:`jaxmir.Model.stream`. ``push(chunk)`` returns the
    outputs of the patches the chunk completed, ``close()`` those of the rest;
    everything they return, concatenated, is ``model.predict(audio,
    sample_rate, ...)`` of the whole signal (within 1e-6 on predictions).

    Attributes:
      times: start in seconds of every patch returned so far, in order (a
        :class:`PatchStarts`, read like a list; computed, so memory does not grow).
      n_patches: patches returned so far.
      closed: whether :meth:`close` was called.
    """

    def __init__(self, model: "Model", sample_rate: int,
                 output: str | Iterable[str] | None = None, *, patch_hop: int | None = None,
                 last_patch: str = "discard", pad: str | None = None,
                 compat: str = "essentia", resampler: str = "essentia", batch: int | None = None,
                 share_overlap: bool = True, require_patch: bool = False, eager: bool = True,
                 resample_step: int | None = None, monoloader: bool = False):
        """See :meth:`jaxmir.Model.stream`; ``batch``: patches per model call for runs of
        patches (default :data:`BATCH`, or :func:`file_batch` when not ``eager``);
        ``require_patch``: :meth:`close` raises (as ``predict`` does) when the whole
        signal gave no patch: no samples, or too short without ``pad``; ``eager``: run the
        patches a chunk completes at once (live input), or, when ``False``, only whole
        batches of ``batch`` until :meth:`close` (a file: the same outputs, fewer and fuller
        model calls, a few seconds more audio held); ``resample_step``: see
        :meth:`jaxmir.Model.stream`; ``monoloader``: a file's samples, which end where
        Essentia's MonoLoader ends them (:class:`jaxmir.audio.Resampling`)."""
        self.frontend = frontend_of(model)
        self.sample_rate = check_sample_rate(sample_rate)
        self.model = model
        self._single = output is None or isinstance(output, str)
        self.names, self.taps = model.resolve_outputs(output)
        size = int(model.input_shape[0])
        hop = self.frontend.patch_hop if patch_hop is None else patch_hop
        patch_starts(0, size, hop, last_patch)  # checks hop and last_patch
        if pad not in PAD_MODES:
            raise InputError(f"unknown pad {pad!r}; accepted: None, 'zero', 'repeat'")
        if not isinstance(eager, (bool, np.bool_)):  # eager="no" was eager
            raise InputError(f"eager={eager!r}: expected True or False")
        batch = check_batch(batch if batch is not None else BATCH if eager else file_batch(model))
        self.patch_size, self.patch_hop = size, int(hop) or size
        self.last_patch, self.pad, self.compat = last_patch, pad, compat
        self.batch, self.require_patch, self.eager = batch, require_patch, eager
        self._small = min(batch, BATCH)  # the calls of a partial batch
        self.windowing = Windowing.of(self.frontend, compat)
        self._plain = model.module
        self._shared = (with_overlap_hop(model.module, self.patch_hop) if share_overlap
                        else model.module)
        self._mono = MonoInput(self.sample_rate)
        self._resampling = Resampling(self.sample_rate, TARGET_RATE, resampler,
                                     min_outputs=resample_step, what="resample_step",
                                     monoloader=monoloader)
        self._pieces: list[np.ndarray] = []
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # 16-kHz index of _buffer[0]
        self.n_samples = 0  # 16-kHz samples received
        self._next = 0  # the next regular patch
        # what the last run of `batch` patches left for a run starting at patch _carry_at
        self._carry, self._carry_at = None, None
        self._warm = False
        self.times = PatchStarts(self)
        self.n_patches = 0
        self.closed = False
        self._one_call = OneCallAtATime("a Stream (model.stream(...))")

    # -- public -----------------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        """Duration received so far and resampled (16-kHz samples / 16000): a few samples
        behind what was pushed, until ``close`` (the resampler holds its filter's reach, and the
        JAX one gives its samples in steps of at least 2048)."""
        return self.n_samples / TARGET_RATE

    def push(self, chunk: ArrayLike) -> Outputs:
        """Outputs ``[k, ...]`` (k >= 0) of the patches ``chunk`` (``[n_samples]`` or ``[n_samples,
        channels]`` at the stream's rate) completed; a dict for several outputs."""
        return self._unwrap(self.push_patches(chunk))

    def close(self) -> Outputs:
        """Outputs of the remaining patches (the last frames, ``last_patch``, ``pad``)."""
        return self._unwrap(self.close_patches())

    def push_patches(self, chunk: ArrayLike) -> Patches:
        """:meth:`push` with the patches' start times (:class:`Patches`).

        Raises :class:`AudioError` for a chunk with NaN/Inf samples, more than
        two channels, or another channel count or dtype than the first chunk,
        and :class:`InputError` after :meth:`close`; a refused chunk changes nothing.
        """
        with self._one_call:
            return concat_patches(self._push(chunk), self.empty)

    def close_patches(self) -> Patches:
        """:meth:`close` with the patches' start times (:class:`Patches`)."""
        with self._one_call:
            return concat_patches(self._close(), self.empty)

    def run(self, blocks: Iterable) -> Iterator[Patches]:
        """Push every block, then close; yields the non-empty :class:`Patches` as they come."""
        return self._run_resampled(self._resampled(block) for block in blocks)

    def empty(self) -> Patches:
        """The outputs of no patch, ``[0, ...]`` each (shapes traced once per model and outputs)."""
        shapes = _output_shapes(self.model, self._plain, self.taps)
        return Patches(np.zeros(0), {name: np.zeros((0, *shape), np.float32)
                                     for name, shape in zip(self.names, shapes)})

    # -- internals ----------------------------------------------------------------------------
    def _push(self, chunk) -> list[Patches]:
        self._refuse_if_closed()
        return self._take(self._resampled(chunk))

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise InputError("push after close: this stream is closed; start a new one with "
                             "model.stream(...)")

    def _resampled(self, chunk) -> np.ndarray:
        """Stages 1 and 2: the 16-kHz samples ``chunk`` completes (they touch only the mono and
        resampling state, so :func:`file_stream` runs them in its decoding thread)."""
        return self._resampling.push(self._mono(chunk))

    def _take(self, samples: np.ndarray) -> list[Patches]:
        """Stages 3 and 4 on 16-kHz samples from :meth:`_resampled`: the patches they complete."""
        self._append(samples)
        return self._emit(self._ready(closed=False))

    def _run_resampled(self, samples: Iterable[np.ndarray]) -> Iterator[Patches]:
        """:meth:`run` on the blocks' :meth:`_resampled` samples, then close."""
        with self._one_call:  # each step, not across a yield: a paused run holds nothing
            self._refuse_if_closed()
        for part in samples:
            with self._one_call:
                parts = self._take(part)
            if parts:
                yield concat_patches(parts, self.empty)
        with self._one_call:
            parts = self._close()
        if parts:
            yield concat_patches(parts, self.empty)

    def _close(self) -> list[Patches]:
        if self.closed:
            raise InputError("close after close: this stream is already closed")
        self._append(self._resampling.close())
        self.closed = True
        n_frames = num_frames(self.frontend, self.n_samples, self.compat)
        regular = self._emit(self._ready(closed=True))
        last = self._last_patch(n_frames)
        if self.require_patch and self.n_patches == 0:
            if self.n_samples == 0:  # none, or all of it under one 16-kHz sample
                raise no_sample_error(self._resampling.n_in, self.sample_rate)
            make_patches(np.zeros((n_frames, 1), np.float32), self.patch_size, self.patch_hop,
                         self.last_patch, self.pad, self.frontend.frames_per_second)  # raises
        self._pieces, self._buffer = [], np.zeros(0, np.float32)
        return regular + last

    def _unwrap(self, patches: Patches) -> Outputs:
        values = patches.values[self.names[0]] if self._single else patches.values
        return values  # type: ignore[return-value]  # the output names chose which

    def _append(self, samples: np.ndarray) -> None:
        if samples.shape[0]:
            self._pieces.append(samples)
            self.n_samples += int(samples.shape[0])

    def _ready(self, closed: bool) -> int:
        """Regular patches to run now (counted from the first): all those complete, or, before
        :meth:`close` when not ``eager``, the whole batches of them."""
        size, hop, fe = self.patch_size, self.patch_hop, self.frontend
        if closed:
            frames = num_frames(fe, self.n_samples, self.compat)
        else:  # frames whose samples have all arrived
            frames = max(0,
                         (self.n_samples - fe.frame_size - self.windowing.first) // fe.hop_size + 1)
        complete = max(self._next, (frames - size) // hop + 1 if frames >= size else 0)
        if closed or self.eager:
            return complete
        return self._next + (complete - self._next) // self.batch * self.batch

    def _window(self, first_frame: int, span: int) -> np.ndarray:
        """The 16-kHz samples of the window for ``span`` frames from ``first_frame``."""
        if self._pieces:
            self._buffer = np.concatenate([self._buffer, *self._pieces])
            self._pieces = []
        return cut_samples(self._buffer, self._buffer_start, self.windowing.start(first_frame),
                           self.windowing.length(span))

    def _forget_before(self, first_frame: int) -> None:
        keep = max(0, self.windowing.start(first_frame))
        drop = min(max(0, keep - self._buffer_start), self._buffer.shape[0])
        if drop:
            self._buffer = self._buffer[drop:].copy()
            self._buffer_start += drop

    def _run(self, first_frame: int, index: np.ndarray, shared: bool, patch: int | None = None,
             used: int | None = None) -> tuple[np.ndarray, ...]:
        """Outputs of ``index`` (rows into the window's frames) for a window from ``first_frame``;
        a shared run of regular patches from ``patch`` takes over the overlap the run before
        left when it ended just there. A run padded beyond the signal (``used`` of its patches
        kept) leaves none: its last rows read zeros where samples were still to come."""
        n, size = index.shape
        span = (n - 1) * self.patch_hop + size
        module = self._shared if shared and n > 1 else self._plain
        carry = initial_carry(self.model, module, n)
        if carry is not None and patch is not None and patch == self._carry_at:
            carry = self._carry
        values, carry = audio_to_outputs(module, self.taps, self.frontend, self.compat,
                                         call_step(self.model.variables, n), self.model.variables,
                                         self._window(first_frame, span), index, carry)
        if carry:
            whole = used is None or used == n
            self._carry, self._carry_at = (carry, patch + n) if whole else (None, None)
        return tuple(np.asarray(v) for v in values)

    def _regular_index(self, n: int) -> np.ndarray:
        return self.windowing.regular_index(n, self.patch_hop, self.patch_size)

    def _warm_up(self) -> None:
        """Compile the programs at the first patch (two; three for a batch above :data:`BATCH`),
        so that no chunk size compiles another (a live stream's; a file's compiles each when it
        first needs it).

        A program is run once on silence the first time this process needs it.
        """
        if self._warm:
            return
        self._warm = True
        for n in sorted({1, self._small, self.batch}):
            module = self._shared if n > 1 else self._plain
            length = self.windowing.length((n - 1) * self.patch_hop + self.patch_size)
            step = call_step(self.model.variables, n)
            key = (module, self.taps, self.frontend, self.compat, n, step, length)
            if key not in _WARM:
                audio_to_outputs(module, self.taps, self.frontend, self.compat, step,
                                 self.model.variables, np.zeros(length, np.float32),
                                 self._regular_index(n), initial_carry(self.model, module, n))
                _WARM.add(key)

    def _emit(self, stop: int) -> list[Patches]:
        """Run regular patches ``_next .. stop - 1``."""
        parts = []
        while self._next < stop:
            if self.eager:
                self._warm_up()
            count = min(stop - self._next, self.batch)
            # a whole batch; a partial one in calls of BATCH (padded), or live, patch by patch
            n = self.batch if count == self.batch else \
                self._small if count > SINGLE_LIMIT or not self.eager else 1
            count = min(count, n)
            first = self._next * self.patch_hop
            values = self._run(first, self._regular_index(n), shared=True, patch=self._next,
                               used=count)
            parts.append(self._record([v[:count] for v in values], count))
            self._next += count
        if parts:
            self._forget_before(self._next * self.patch_hop)
        return parts

    def _starts(self, first: int, count: int) -> np.ndarray:
        """``[count]`` float64: the start in seconds of patches ``first``, ``first + 1``, ...
        (patch ``k`` starts ``k`` hops in, the repeated or padded last one too)."""
        return (first + np.arange(count)) * self.patch_hop * self.frontend.frame_seconds

    def _record(self, values: list[np.ndarray], count: int) -> Patches:
        """The next ``count`` patches' outputs, with their starts, counted as returned."""
        starts = self._starts(self.n_patches, count)
        self.n_patches += count
        return Patches(starts, dict(zip(self.names, values)))

    def _last_patch(self, n_frames: int) -> list[Patches]:
        """The ``"repeat"`` last patch, or the one padded patch of a short signal, if any."""
        size, start = self.patch_size, self._next * self.patch_hop
        remaining = n_frames - start
        rows = np.arange(size)
        if self.last_patch == "repeat" and remaining > 0:
            frames = rows % remaining
        elif self._next == 0 and self.pad is not None and n_frames > 0:
            frames = (rows % n_frames if self.pad == "repeat"
                      else np.where(rows < n_frames, rows, -1))
        else:
            return []
        if self.eager:
            self._warm_up()
        index = np.where(frames >= 0, frames + self.windowing.lead + 1, 0).astype(np.int32)[None, :]
        values = self._run(start, index, shared=False)
        return [self._record(list(values), 1)]


@contextlib.contextmanager
def file_stream(model: "Model", path: str | os.PathLike, output: str | Iterable[str] | None, *,
                decoder: str = "essentia", strict: bool = False, damage: list[str] | None = None,
                **options: Any
                ) -> Iterator[tuple[Stream, Iterator[Patches]]]:
    """A file decoded block by block (:func:`jaxmir.decode.iter_blocks`) into a :class:`Stream`.

    A context manager: ``with file_stream(model, path, "predictions") as (stream, patches):``
    iterate ``patches`` for the non-empty :class:`Patches` as they complete;
    ``stream.seconds`` and ``stream.n_patches`` are final once it is exhausted. Leaving
    the block stops the decoding thread. ``options`` are :class:`Stream`'s (``patch_hop``,
    ``last_patch``, ``pad``, ``resampler``, ...); a file that gives no patch raises.
    With a ``damage`` list, a damaged file's problem is appended to it instead of
    warned (:class:`jaxmir.decode.DamagedAudioWarning`).

    A thread decodes, downmixes and resamples up to :data:`AHEAD` blocks (per 8
    patches of a call) ahead of the model, which runs in the caller's thread: the
    same samples as in one thread, in ~10% less time on 2 cores.
    """
    with iter_blocks(path, BLOCK_FRAMES, decoder, strict, warn=False) as blocks:
        check_channels(blocks.channels, os.fspath(path))  # the file's error, not an array's
        stream = Stream(model, blocks.sample_rate, output, require_patch=True, eager=False,
                        monoloader=True, **options)
        depth = AHEAD * max(1, stream.batch // BATCH)  # a call of 32 VGGish patches reads ~30 s
        try:
            with _ahead((stream._resampled(block) for block in blocks), depth) as samples:
                yield stream, stream._run_resampled(samples)
        except (ShortAudioError, NoSamplesError) as err:  # a damaged file's problem may be why
            if blocks.problem is None:
                raise
            raise err.with_damage(blocks.problem, os.fspath(path)) from None
    if blocks.problem is not None:
        if damage is None:
            warnings.warn(blocks.problem, DamagedAudioWarning, stacklevel=3)
        else:
            damage.append(blocks.problem)


# Resampled blocks file_stream's thread may have waiting for the model (~6 s of audio each at
# 44.1 kHz), per BATCH patches of a call: enough to cover a model call, few enough that memory
# stays flat.
AHEAD = 2
_END = object()


@contextlib.contextmanager
def _ahead(items: Iterator[np.ndarray], depth: int = AHEAD) -> Iterator[Iterator[np.ndarray]]:
    """``items``, computed in a thread at most ``depth`` ahead of the consumer; an
    exception there is raised here, and leaving the context stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as err:  # noqa: BLE001 -- handed to the consumer, raised there
            put((None, err))

    def consume() -> Iterator[np.ndarray]:
        while True:
            item, err = ready.get()
            if err is not None:
                raise err
            if item is _END:
                return
            yield item

    worker = threading.Thread(target=produce, name="jaxmir-decode", daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        worker.join()


__all__ = ["Stream", "file_stream", "AHEAD", "BLOCK_FRAMES", "Patches", "Windowing", "cut_samples",
           "audio_to_outputs", "initial_carry", "frontend_of", "check_sample_rate",
           "concat_patches", "BATCH", "SINGLE_LIMIT", "TARGET_RATE", "file_batch"]
