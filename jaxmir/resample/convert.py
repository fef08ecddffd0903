"""Conversions: :func:`resample` (NumPy, the fastest kernel that applies), :func:`resample_jax`
(traceable, differentiable) and :class:`SincResampler` (streaming: the one-shot call's samples, bit
for bit where the matrix-product kernel runs, within float32 rounding elsewhere)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jaxmir.checks import is_whole
from jaxmir.errors import AudioError, InputError
from jaxmir.guards import OneCallAtATime
from jaxmir.resample.kernels import float32_outputs
from jaxmir.resample.positions import (UNIT, Plan, exact_positions, filter_starts,
                                       first_true, fixed_point, normalise, output_count,
                                       output_taps, plan_of, step_closed_form, walk,
                                       until_end)
from jaxmir.resample.products import matmul_count, matmul_outputs, matmul_shape, whole_groups
from jaxmir.resample.table import device_table

# -------------------------------------------------------------------------- one-shot


def _check_kind(x):
    """``x`` (a list made an array) if it is mono ``[n]`` of real numbers (not bool), else
    :class:`AudioError`; a JAX array or tracer stays one."""
    if not hasattr(x, "dtype") or not hasattr(x, "ndim"):
        x = np.asarray(x)
    if x.ndim != 1:
        raise AudioError(f"audio has shape {tuple(x.shape)}; expected mono samples [n]")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise AudioError(f"audio has dtype {x.dtype}; expected float32 samples")
    return x


def _check_signal(x) -> np.ndarray:
    x = np.asarray(_check_kind(x))
    if np.issubdtype(x.dtype, np.floating) and not _all_finite(x):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise AudioError(f"audio contains {bad} NaN or infinite sample(s); expected finite samples")
    if x.dtype != np.float32:
        with np.errstate(over="ignore"):  # said below, in words
            x = x.astype(np.float32)
        if not _all_finite(x):
            raise AudioError("audio holds samples beyond float32's range (~3.4e38); expected "
                             "samples in about [-1, 1]")
    return x


def _all_finite(x: np.ndarray) -> bool:
    """Whether every sample of ``x`` (floating ``[n]``) is finite. ``x . x`` is finite only if
    every sample is (its terms are never negative: no infinity cancels), so the per-sample test
    runs only where it is not (or for float16, which BLAS does not take). 207 s at 44.1 kHz:
    0.7 ms; 1.4 with the per-sample test alone (Zen 5)."""
    if x.dtype in (np.float32, np.float64):
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is an answer here
            if np.isfinite(np.dot(x, x)):
                return True
    return bool(np.isfinite(x).all())


def _one_shot(plan: Plan, x, table: tuple[jax.Array, jax.Array]):
    """The outputs of ``x`` (NumPy ``[n]``: the fastest kernel that applies; a JAX array or a
    tracer: the float32 kernels), ``table`` being :func:`device_table`'s."""
    shape = matmul_shape(plan) if isinstance(x, np.ndarray) else None
    if shape is not None:
        if step_closed_form(plan.step):
            count, positions = matmul_count(plan, x.shape[0]), None
        else:
            limit = output_count(plan, x.shape[0])
            centre, frac = exact_positions(plan, 0, 0.0, whole_groups(shape, plan, limit))
            count = until_end(plan, centre[:limit], frac[:limit], x.shape[0])
            positions = fixed_point(plan, centre, frac)[:whole_groups(shape, plan, count)]
        if count == 0:
            return np.zeros(0, np.float32)
        out = matmul_outputs(plan, shape, x, count, positions, parallel=True)
        if out is not None:
            return out
    centre, start = output_taps(plan, x.shape[0])
    if centre.shape[0] == 0:
        return jnp.zeros(0, jnp.float32)
    signal = jnp.pad(jnp.asarray(x, jnp.float32), (plan.taps, plan.taps + 2))
    return float32_outputs(plan, signal, centre, start, table)


def resample(x: ArrayLike, in_rate: int, out_rate: int, quality: str = "sinc_medium") -> np.ndarray:
    """Resample mono audio as ``samplerate.resample(x, essentia_ratio(...), quality)``.

    Args:
      x: samples ``[n]`` (float32; other real dtypes are cast), finite.
      in_rate, out_rate: sample rates in Hz, 1-384000, with a ratio within [1/256, 256].
      quality: ``"sinc_medium"`` (Essentia's default), ``"sinc_fastest"`` or ``"sinc_best"``.

    Returns:
      float32 ``[m]``, the outputs before libsamplerate's end test (the module docstring): as
      many as ``samplerate.resample`` gives, ``ceil(n * ratio) - 1`` at most ratios and lengths,
      one fewer where the last meets the test exactly (Essentia's build stops before it:
      power-of-two ratios); empty for empty input; at equal rates a copy of ``x``, as
      Essentia's ``Resample`` gives, which does not filter then.

    Raises:
      AudioError: bad rates, ratio, quality, shape or NaN/inf samples.
    """
    plan = plan_of(in_rate, out_rate, quality)
    x = _check_signal(x)
    if in_rate == out_rate:
        return x.copy()
    if x.shape[0] == 0:
        return np.zeros(0, np.float32)
    return np.asarray(_one_shot(plan, x, device_table(quality)), np.float32)


def resample_jax(x: jax.Array, in_rate: int, out_rate: int,
                 quality: str = "sinc_medium") -> jax.Array:
    """:func:`resample` on a JAX array, differentiable with respect to ``x`` ``[n]``.

    The positions depend only on ``n`` and the rates; the values are a linear map of ``x``.
    No NaN check (``x`` may be a tracer).
    """
    plan = plan_of(in_rate, out_rate, quality)
    x = _check_kind(x)
    if in_rate == out_rate:
        return jnp.asarray(x, jnp.float32)
    if x.shape[0] == 0:
        return jnp.zeros(0, jnp.float32)
    return _one_shot(plan, jnp.asarray(x, jnp.float32), device_table(quality))


# ------------------------------------------------------------------------- streaming


MIN_OUTPUTS = 2048  # outputs a push of a SincResampler waits for by default: 0.128 s at 16 kHz
# The most it may wait for: ~65 s at 16 kHz. A push holds the input of that many outputs, and a
# stream's patches wait for them (--resample-step 10**12 held a whole recording, giving nothing).
MAX_MIN_OUTPUTS = 1 << 20


def check_min_outputs(min_outputs: int, what: str = "min_outputs") -> int:
    """``min_outputs`` as an int, or :class:`~jaxmir.errors.InputError` (naming it ``what``)
    unless it is an int (or NumPy integer; not a float, not a bool) from 0 to
    :data:`MAX_MIN_OUTPUTS`."""
    if not is_whole(min_outputs, 0) or min_outputs > MAX_MIN_OUTPUTS:
        raise InputError(f"{what} {min_outputs!r} must be a whole number of output samples "
                         f"from 0 to {MAX_MIN_OUTPUTS} (0: outputs as soon as they are final; "
                         f"default {MIN_OUTPUTS})")
    return int(min_outputs)


class SincResampler:
    """Streaming :func:`resample`: ``push`` chunks, then ``flush`` (or ``close``); the outputs
    concatenate to :func:`resample`'s, bit for bit at the rates the matrix-product kernel takes
    (:func:`~jaxmir.resample.accelerated`), within float32 rounding at others (the float32
    kernels run on other shapes, whose sums XLA may order otherwise: up to 1.8e-7 seen at
    11.025-22.05 kHz).

    At equal rates each push returns its chunk, as :func:`resample` returns its input.

    Keeps the input from the first output not yet final (``2 * taps + 2`` samples, and up to
    one group of the matrix-product kernel), the chunks pushed since the last outputs, and
    the fractional position between calls.

    A push gives outputs once the input since the last ones makes at least ``min_outputs``
    of them (default :data:`MIN_OUTPUTS`, 0.128 s at 16 kHz; ``0``: as soon as they are final),
    and keeps smaller chunks until then. Why: a run of the kernels costs ~1 ms of CPU however
    few outputs it gives (the matrix-product kernel computes whole groups of 64 periods,
    10,240 outputs from 44.1 kHz), so 1024-sample pushes at 44.1 kHz, each run at once, took
    14 CPU-s per 207 s of audio, and take 2.7 with the default (one core of a Zen 3).
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "sinc_medium",
                 min_outputs: int = MIN_OUTPUTS, parallel: bool = False):
        """``in_rate``, ``out_rate`` and ``quality`` as :func:`resample` takes them (Hz;
        ``"sinc_medium"``, Essentia's, ``"sinc_fastest"`` or ``"sinc_best"``); ``min_outputs``:
        see the class docstring; ``parallel``: the matrix-product kernel's calls of a push run
        side by side on all cores, as :func:`resample`'s do (for one stream alone; threads of
        streams side by side already take the cores)."""
        self._parallel = bool(parallel)
        self._plan = plan_of(in_rate, out_rate, quality)
        self._identity = in_rate == out_rate
        self._table = device_table(quality)
        self._min_input = math.ceil(check_min_outputs(min_outputs) / self._plan.ratio)  # per run
        self._pending: list[np.ndarray] = []  # chunks pushed since the last run
        self._history = np.zeros(self._plan.taps, np.float32)  # the leading zeros
        self._origin = -self._plan.taps    # input index of _history[0]
        self._seen = 0                     # input samples pushed
        self._made = 0                     # outputs returned
        self._centre = 0                   # input index (from x[0]) of the next output
        self._frac = 0.0                   # its fractional position
        self._done = False
        self._matmul = matmul_shape(self._plan)
        self._closed = step_closed_form(self._plan.step)  # positions from walk(), none on the host
        # (centres, fractions) of the outputs from the one at _group_start(): _track()
        self._tracked = (np.zeros(1, np.int64), np.zeros(1))
        self._one_call = OneCallAtATime("a SincResampler")

    def push(self, chunk: ArrayLike) -> np.ndarray:
        """Take ``[n]`` float32 samples; return the outputs they complete (float32 ``[k]``)."""
        with self._one_call:
            return self._push(chunk)

    def flush(self) -> np.ndarray:
        """Signal the end of input and return the remaining outputs (later calls: none)."""
        with self._one_call:
            return self._flush()

    def _push(self, chunk: ArrayLike) -> np.ndarray:
        if self._done:
            raise AudioError("this SincResampler was flushed; create a new one")
        chunk = _check_signal(chunk)
        if self._identity:
            return chunk.copy()
        if chunk.shape[0] == 0:  # kept, an empty chunk of a poll took memory until the next run
            return np.zeros(0, np.float32)
        self._pending.append(chunk)
        self._seen += chunk.shape[0]
        if self._seen - self._origin - self._history.shape[0] < self._min_input:  # pending samples
            self._pending[-1] = chunk.copy()  # kept past this call: the caller may reuse its buffer
            return np.zeros(0, np.float32)
        self._take_pending()
        # An output is final once its right-hand taps are all in.
        ready = self._seen - self._plan.taps - 1
        limit = output_count(self._plan, self._seen)
        return self._emit(lambda centre: centre < ready, limit)

    def _flush(self) -> np.ndarray:
        if self._done:
            return np.zeros(0, np.float32)
        self._done = True
        if self._identity:
            return np.zeros(0, np.float32)
        self._take_pending(np.zeros(self._plan.taps + 2, np.float32))  # the trailing zeros
        limit = output_count(self._plan, self._seen)
        return self._emit(None, limit)

    def close(self) -> np.ndarray:
        """:meth:`flush`, by the name :class:`jaxmir.stream.Stream` and ``Resampling`` use."""
        return self.flush()

    def _take_pending(self, *more: np.ndarray) -> None:
        """Append the chunks pushed since the last run, then ``more``, to the history (one copy)."""
        self._history = np.concatenate([self._history, *self._pending, *more])
        self._pending = []

    def _emit(self, ready, limit: int) -> np.ndarray:
        if self._matmul is not None:
            emit = self._emit_closed if self._closed else self._emit_groups
            out = emit(ready, limit)
            if out is not None:
                return out
            self._matmul = None  # the per-output kernel below does not keep the group's anchor
        plan = self._plan
        pieces = []
        while self._made < limit:
            want = min(limit - self._made, 1 << 16)
            # and the state of the output after them
            centre, frac = exact_positions(plan, self._centre, self._frac, want + 1)
            keep = self._usable(ready, centre[:want], frac[:want])
            n = int(np.argmin(keep)) if not keep.all() else want
            if n == 0:
                if ready is None:
                    self._made = limit
                break
            lo = centre[0] - plan.taps + 1 - self._origin
            hi = centre[n - 1] + plan.taps + 2 - self._origin
            segment = self._history[lo:hi]
            out = float32_outputs(plan, segment, *normalise(plan, centre[:n] - self._origin - lo,
                                                            filter_starts(plan, frac[:n])),
                                  self._table)
            pieces.append(np.asarray(out, np.float32))
            self._made += n
            self._centre, self._frac = int(centre[n]), float(frac[n])
            if n < want:
                if ready is None:
                    self._made = limit
                break
        self._forget()
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def _emit_groups(self, ready, limit: int) -> np.ndarray | None:
        """The ready outputs through the matrix-product kernel (``None``: take the other path).

        The kernel's anchors depend on where its groups start, so every call starts at the
        group boundary before its first output (groups of ``rows * period`` outputs counted
        from output 0, as the one-shot call makes them), with the positions of libsamplerate's
        recurrence from that group's first output (:meth:`_track`), and drops what the previous
        call gave: streamed outputs equal :func:`resample`'s bit for bit, for up to one group
        recomputed.
        """
        plan, first = self._plan, self._group_start()
        # up to the next state after `limit`, in whole groups
        centre, frac = self._track(whole_groups(self._matmul, plan, limit - first + 1))
        done = self._made - first
        usable = self._usable(ready, centre, frac)
        usable[:done] = True
        usable[limit - first:] = False
        n = int(np.argmin(usable)) - done
        out = np.zeros(0, np.float32)
        if n:
            origin = int(centre[0]) - plan.taps
            window = self._history[origin - self._origin:]
            positions = fixed_point(plan, centre - origin, frac)
            positions = positions[:whole_groups(self._matmul, plan, done + n)]
            out = matmul_outputs(plan, self._matmul, window, done + n, positions,
                                 parallel=self._parallel)
            if out is None:
                return None
            out = out[done:]
            self._made += n
            self._centre, self._frac = int(centre[done + n]), float(frac[done + n])
            step = self._group_start() - first
            self._tracked = (self._tracked[0][step:], self._tracked[1][step:])
        if ready is None:
            self._made = limit
        self._forget()
        return out

    def _emit_closed(self, ready, limit: int) -> np.ndarray | None:
        """:meth:`_emit_groups` where the positions have a closed form (44.1, 48, 32 kHz...):
        the kernel computes them from the group's first output, and the ready outputs are
        counted by bisection on it; no per-output positions on the host."""
        plan, first = self._plan, self._group_start()
        if ready is None:  # flushing: up to libsamplerate's end test, as the one-shot call
            end = max(self._made, matmul_count(plan, self._seen))
        else:
            end = first_true(lambda k: not ready(walk(plan, 0, 0, k)[0]), self._made, limit)
        out = np.zeros(0, np.float32)
        if end > self._made:
            out = matmul_outputs(plan, self._matmul, self._history, end - first,
                                 first_output=first, x_origin=self._origin,
                                 parallel=self._parallel)
            if out is None:
                return None
            out = out[self._made - first:]
            self._made = end
        self._centre, units = walk(plan, 0, 0, self._made)
        self._frac = float(np.ldexp(float(units), -UNIT))
        if ready is None:
            self._made = limit
        self._forget()
        return out

    def _track(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres and fractions of ``count`` outputs from the one at :meth:`_group_start`,
        extending those kept from earlier calls (each push adds only its own outputs')."""
        centre, frac = self._tracked
        if centre.shape[0] < count:
            more_centre, more_frac = exact_positions(self._plan, int(centre[-1]), float(frac[-1]),
                                                     count - centre.shape[0] + 1)
            self._tracked = centre, frac = (np.concatenate([centre, more_centre[1:]]),
                                            np.concatenate([frac, more_frac[1:]]))
        return centre[:count], frac[:count]

    def _usable(self, ready, centre: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Which of these outputs this call may give: the ready ones while pushing, those
        before libsamplerate's end test when flushing (``ready`` is ``None``)."""
        if ready is not None:
            return ready(centre)
        return np.arange(centre.shape[0]) < until_end(self._plan, centre, frac, self._seen)

    def _group_start(self) -> int:
        """Index of the first output of the matrix-product kernel's group holding the next
        output."""
        group = self._matmul.rows * self._plan.period
        return self._made // group * group

    def _forget(self) -> None:
        """Drop the history no later output reads."""
        if self._matmul is None or self._done:
            centre = self._centre
        elif self._closed:
            centre = walk(self._plan, 0, 0, self._group_start())[0]
        else:
            centre = int(self._tracked[0][0])
        drop = centre - self._plan.taps - self._origin
        if drop > 0:
            self._history = self._history[drop:]
            self._origin += drop
