"""libsamplerate's sinc converters in JAX: one-shot and streaming, equal to ``samplerate``.

This reproduces ``samplerate.resample(x, ratio, "sinc_medium")`` (and ``sinc_fastest``,
``sinc_best``) with Essentia's float32 ratio ``float32(out_rate) / float32(in_rate)``, the
converter Essentia's ``MonoLoader`` uses, by doing the same arithmetic as libsamplerate's
``src_sinc.c`` (``src_simple`` with ``end_of_input``, one call over the whole signal):

* Output positions: the C loop keeps a fractional input position ``x`` in a double and
  steps ``x = frac(x + 1/ratio)`` once per output, carrying the integer part into the
  buffer index. Only the addition can round, so :func:`_positions` computes the exact
  sequence in integers (units of 2^-60, closed form ``frac(x0 + k * (1/ratio))``) and checks
  in integers that every one of those additions is exact in double precision; when one
  is not (e.g. 22.05 kHz -> 16 kHz), it runs the same double-precision recurrence as a
  ``lax.scan`` in float64. The outputs therefore sit at libsamplerate's positions, not the
  ideal ``k / ratio``.
* Filter phase: the fixed-point filter index with ``SHIFT_BITS = 12``:
  ``increment = lrint(index_inc * min(ratio, 1) * 4096)`` and, per output,
  ``start = lrint(x * index_inc * min(ratio, 1) * 4096)`` (round half to even, as
  ``lrint``). Left taps ``v[c - m]`` use filter index ``start + m * increment`` (``<= max``);
  right taps ``v[c + 1 + m]`` use ``increment - start + m * increment`` (``> 0`` and
  ``<= max``), ``max = coeff_half_len << 12``; the coefficient is the table entry
  ``i = index >> 12`` linearly interpolated towards ``i + 1`` by ``(index & 4095) / 4096``.
* Gain ``(index_inc * min(ratio, 1)) / index_inc`` on the sum of both halves.
* Start-up: ``half = lrint((coeff_half_len + 2) / index_inc / min(ratio, 1)) + 1`` zeros
  before the first input sample; zeros after the last one.
* Length: ``ceil(n * ratio)`` (the output buffer python-samplerate allocates), cut where
  libsamplerate's termination test ``b_current + x + (1/ratio + 1e-20) > b_real_end``
  first holds (evaluated in double with absolute buffer positions; libsamplerate uses
  buffer-relative ones, which round differently only if the test is within ~1e-9 of a tie).

Three kernels compute the sums. NumPy input at the common rates (22.05, 24, 32, 44.1, 48,
96 kHz... to 16 kHz: downsampling with a short exact period) takes the matrix-product kernel
(:func:`_matmul_kernel`, see its section): positions in exact int64 (on the device where the
recurrence never rounds, from the host's recurrence where it does), value sums in float64 as
libsamplerate's, and a first-order expansion of the
coefficients in each output's drift from its group's anchor (error measured: 1.2e-7 and 4.2e-7 on
the music fixtures, 5.1e-7 on full-scale noise); 53-61% of its outputs equal libsamplerate's
bit for bit. Other periodic rates take the float32 polyphase
kernel, the rest the per-output kernel; :func:`resample_jax` (traceable, differentiable)
always takes one of those two.

The float32 kernels sum in float32 where libsamplerate sums in double: the coefficients are
float32 table entries interpolated with a 12-bit fraction, so each product carries a
relative error of a few float32 ulps and a sum of ~250 of them (|coefficient| sum ~2.5 for
the medium filter, |samples| <= 1) stays around 1e-7; the tests measure < 1e-6 against
``samplerate`` on real music.

Coefficient tables. The project must not ship numbers extracted from libsamplerate's
headers, and the headers only name the design tool (``make_src_filter(cycles, incr, atten)``,
whose window and rounding are not in the repository), so regenerating the tables to
float32 exactness is not possible. Instead the tables are *measured* from the installed
``samplerate`` library at first use (:func:`coefficients`): upsampling a unit impulse by
``index_inc / p`` (gain 1, filter indices landing on exact multiples of 4096) makes
output samples equal to single float32 table entries, which the exact position model
above attributes to their table index. Every entry is seen twice (left and right half)
and must agree; the result is then checked by resampling a random signal both up and
down and comparing with ``samplerate`` (in NumPy). The measurement takes ~0.2 s (medium) and is
kept in memory (per process); nothing is written to disk, so a changed ``samplerate``
install can never meet a stale cache. The integers ``index_inc`` and ``coeff_half_len``
of each converter are facts of libsamplerate 0.2.2 (the version python-samplerate
bundles) and are checked by the same verification.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.errors import AudioError

QUALITIES = ("sinc_best", "sinc_medium", "sinc_fastest")
MIN_RATE = 1
MAX_RATE = 384_000
MAX_TAPS = 16_384  # filter taps per half; more would need an unbounded window per output
_SHIFT = 12
_ONE = 1 << _SHIFT
_UNIT = 60  # positions are integers in units of 2**-60
_FRAC_MASK = (1 << _UNIT) - 1
_MAX_RATIO = 256.0  # libsamplerate's SRC_MAX_RATIO
# (index_inc, coeff_half_len) of libsamplerate 0.2.2's three sinc filters.
_FILTERS = {"sinc_fastest": (128, 2462), "sinc_medium": (491, 22436), "sinc_best": (2381, 340239)}
_BLOCK_ELEMENTS = 1 << 20  # outputs x taps per block of the kernel


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Plan:
    """Constants of one conversion, as ``sinc_mono_vari_process`` derives them."""

    quality: str
    ratio: float          # output rate / input rate (double, as passed to libsamplerate)
    step: float           # 1 / ratio: input samples per output sample
    increment: int        # fixed-point filter step per tap
    max_index: int        # coeff_half_len << 12
    half: int             # zeros libsamplerate puts before the first input sample
    taps: int             # largest tap count of one half
    gain: float
    float_increment: float
    period: int = 0       # outputs per row of the polyphase kernel: whole periods of the exact
                          # rate ratio (out_rate / gcd each), at least _MIN_PERIOD outputs
    advance: int = 0      # input samples per row (in_rate / gcd per period)


def essentia_ratio(in_rate: int, out_rate: int) -> float:
    """``out_rate / in_rate`` rounded as Essentia's ``Resample`` keeps it (float32)."""
    return float(np.float32(out_rate) / np.float32(in_rate))


def _check_rate(rate, what: str) -> int:
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, np.integer)):
        if isinstance(rate, (float, np.floating)) and float(rate).is_integer():
            rate = int(rate)
        else:
            raise AudioError(f"{what} is {rate!r}; expected a whole number of Hz")
    rate = int(rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{what} is {rate} Hz; accepted: {MIN_RATE}-{MAX_RATE} Hz")
    return rate


def _plan(in_rate: int, out_rate: int, quality: str) -> _Plan:
    in_rate = _check_rate(in_rate, "input sample rate")
    out_rate = _check_rate(out_rate, "output sample rate")
    if quality not in _FILTERS:
        raise AudioError(f"unknown resampling quality {quality!r}; accepted: {', '.join(QUALITIES)}")
    ratio = essentia_ratio(in_rate, out_rate)
    if not 1.0 / _MAX_RATIO <= ratio <= _MAX_RATIO:
        raise AudioError(f"{in_rate} Hz -> {out_rate} Hz is a ratio of {ratio:.6g}; libsamplerate "
                         f"accepts ratios from 1/256 to 256")
    index_inc, half_len = _FILTERS[quality]
    float_increment = index_inc * min(ratio, 1.0)
    increment = int(np.rint(float_increment * _ONE))
    max_index = half_len << _SHIFT
    count = (half_len + 2.0) / index_inc
    if ratio < 1.0:
        count /= ratio
    taps = max_index // increment + 1
    if taps > MAX_TAPS:
        raise AudioError(f"{in_rate} Hz -> {out_rate} Hz with {quality} needs {taps} filter taps per "
                         f"side; at most {MAX_TAPS} are allowed (use a lower quality or a ratio "
                         "closer to 1)")
    common = math.gcd(in_rate, out_rate)
    periods = -(-_MIN_PERIOD * common // out_rate)   # short periods taken several at a time
    return _Plan(quality, ratio, 1.0 / ratio, increment, max_index, int(np.rint(count)) + 1,
                 taps, float_increment / index_inc, float_increment,
                 periods * out_rate // common, periods * in_rate // common)


# ------------------------------------------------------------------------ positions


def _positions(step: float, x0: float, count: int) -> tuple[np.ndarray, np.ndarray, float]:
    """libsamplerate's output positions from a fractional start ``x0``.

    Returns ``(x [count] float64, advance [count] int64, x_next)``: output ``k`` sits at
    fraction ``x[k]`` past input sample ``sum(advance[:k])`` (relative to the start), and
    ``x_next`` is the fraction after the last step.
    """
    if count == 0:
        return np.zeros(0), np.zeros(0, np.int64), x0
    whole, frac = _split_step(step)
    start = int(np.ldexp(x0, _UNIT))
    k = np.arange(count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        units = (np.uint64(start) + k * np.uint64(frac)) & np.uint64(_FRAC_MASK)
    summed = units[:-1] + np.uint64(frac)                    # x_k + frac(step), < 2**61
    carry = (summed >> np.uint64(_UNIT)).astype(np.int64)
    if (_closed_form(step) and start % _ulp_units(step) == 0) or _additions_exact(summed, whole):
        x = np.ldexp(units[:-1].astype(np.float64), -_UNIT)
        return x, whole + carry, float(np.ldexp(float(units[-1]), -_UNIT))
    return _positions_sequential(step, x0, count)


def _ulp_units(step: float) -> int:
    """``step``'s ulp in units of 2**-60 (a whole number for ratios <= 256)."""
    return 1 << (math.frexp(step)[1] - 53 + _UNIT)


def _additions_exact(summed: np.ndarray, whole: int) -> bool:
    """Whether every double addition ``x_k + step`` is exact (so the closed form holds).

    The exact sum is ``whole + summed * 2**-60``; it is a double when its significant bits
    span at most 53. Bit lengths are over-estimated at worst (float conversion rounds up),
    which only sends a borderline case to the sequential path. Checked ``_SCAN_STEPS`` at a
    time: where the additions round (22.05 kHz -> 16 kHz), they do within the first.
    """
    return all(_exact_sums(summed[i:i + _SCAN_STEPS], whole)
               for i in range(0, summed.shape[0], _SCAN_STEPS))


def _exact_sums(summed: np.ndarray, whole: int) -> bool:
    high = whole + (summed >> np.uint64(_UNIT)).astype(np.int64)
    _, exponent = np.frexp(summed.astype(np.float64))
    _, high_exponent = np.frexp(high.astype(np.float64))
    bits = np.where(high > 0, _UNIT + high_exponent, exponent)
    need = np.maximum(bits - 53, 0).astype(np.uint64)
    low = summed & ((np.uint64(1) << need) - np.uint64(1))
    return bool(np.all((low == 0) | (summed == 0)))


_SCAN_STEPS = 1 << 16


@functools.lru_cache(maxsize=1)
def _sequential_scan():
    def body(x, step):
        y = x + step
        rem = y - jnp.round(y)                       # fmod_one: y - lrint(y), lrint rounds half to even
        rem = jnp.where(rem < 0.0, rem + 1.0, rem)
        return rem, (rem, jnp.round(y - rem).astype(jnp.int64))

    def run(x0, step):
        # four steps per loop iteration: 0.031 s instead of 0.044 for 207 s at 22.05 kHz (Zen 4),
        # the same positions bit for bit
        last, (xs, adv) = jax.lax.scan(lambda x, _: body(x, step), x0, None, length=_SCAN_STEPS,
                                       unroll=4)
        return last, xs, adv

    return jax.jit(run)


def _positions_sequential(step: float, x0: float, count: int):
    """The C recurrence in float64, ``_SCAN_STEPS`` outputs per compiled call."""
    xs, advances, x = [np.array([x0])], [], x0
    with jax.enable_x64(True):
        run = _sequential_scan()
        for _ in range(-(-count // _SCAN_STEPS)):
            x, xk, adv = run(jnp.asarray(x, jnp.float64), jnp.asarray(step, jnp.float64))
            xs.append(np.asarray(xk))
            advances.append(np.asarray(adv))
    x_all = np.concatenate(xs)
    return x_all[:count], np.concatenate(advances)[:count], float(x_all[count])


def _phases(plan: _Plan, x: np.ndarray) -> np.ndarray:
    """Fixed-point filter start ``lrint(x * float_increment * 4096)`` per output, int32."""
    return np.rint(x * plan.float_increment * float(_ONE)).astype(np.int32)


def _normalise(plan: _Plan, centre: np.ndarray, start: np.ndarray):
    """Map ``start == increment`` (``x`` within half a fixed-point step of 1) to ``(centre + 1, 0)``.

    libsamplerate's left loop then runs one tap further, onto ``centre + 1`` at filter
    index 0, and its right loop stops before it: the same taps as a window centred on
    the next input sample with start 0, which is what the kernel computes.
    """
    wrap = start == plan.increment
    return centre + wrap, np.where(wrap, 0, start).astype(np.int32)


def _terminated(plan: _Plan, centre: np.ndarray, x: np.ndarray, n_input: int) -> np.ndarray:
    """libsamplerate's end test per output (``centre`` counts the leading zeros)."""
    terminate = plan.step + 1e-20
    return (centre.astype(np.float64) + x) + terminate > float(plan.half + n_input)


def _output_count(plan: _Plan, n_input: int) -> int:
    """The buffer python-samplerate allocates: ``ceil(n * ratio)``."""
    return int(math.ceil(float(n_input) * plan.ratio))


# --------------------------------------------------------------------------- kernel


@functools.partial(jax.jit, static_argnames=("increment", "max_index", "taps", "block"))
def _kernel(signal, centre, start, table, slope, gain, *, increment, max_index, taps, block):
    """Outputs ``[k]`` from ``signal [n]`` (float32), window centres and filter starts ``[k]``.

    ``k`` must be a multiple of ``block``; ``centre - taps + 1 >= 0`` and
    ``centre + taps < n`` for every output (the caller pads).
    """
    m = jnp.arange(taps, dtype=jnp.int32)

    def coefficient(index, mask):
        position = jnp.clip(index >> _SHIFT, 0, table.shape[0] - 1)
        fraction = (index & (_ONE - 1)).astype(jnp.float32) * (1.0 / _ONE)
        value = table[position] + fraction * slope[position]
        return jnp.where(mask, value, 0.0)

    def one_block(args):
        c, s = args
        left_index = s[:, None] + m[None, :] * increment
        left = coefficient(left_index, left_index <= max_index)
        right_index = (increment - s)[:, None] + m[None, :] * increment
        right = coefficient(right_index, (right_index > 0) & (right_index <= max_index))
        # Contiguous windows (dynamic slices are much faster than an index gather on CPU).
        windows = jax.vmap(lambda ci: jax.lax.dynamic_slice(signal, (ci - taps + 1,), (2 * taps,)))(c)
        left_samples = windows[:, taps - 1::-1]
        right_samples = windows[:, taps:]
        total = jnp.sum(left * left_samples, axis=1) + jnp.sum(right * right_samples, axis=1)
        return gain * total

    blocks = (centre.reshape(-1, block), start.reshape(-1, block))
    return jax.lax.map(one_block, blocks).reshape(-1)


@functools.partial(jax.jit, static_argnames=("increment", "max_index", "taps", "advance", "rows",
                                             "chunk"))
def _polyphase_kernel(signal, centre, start, delta, table, slope, gain, *, increment, max_index,
                      taps, advance, rows, chunk):
    """Outputs in groups of ``rows`` periods, each group's coefficients derived once.

    Output ``j`` of period ``r`` of group ``g`` sits ``delta[g, r, j]`` fixed-point units
    (``|delta| < 4096``) past ``centre[g, j] + r * advance`` input samples plus
    ``start[g, j]`` units: its taps are the group's first period's taps moved by less than
    one coefficient-table step, so each tap's table entry is one of three known per
    group (no per-tap gather) and its 12-bit fraction comes from the integer distance.
    ``centre`` and ``start`` are ``[groups, period]``, ``delta`` ``[groups, rows, period]``;
    ``signal`` holds every window (the caller pads).
    """
    width = _polyphase_width(taps)
    slot = jnp.arange(width, dtype=jnp.int32)
    shifts = _rows_per_line(advance, taps)

    def group(args):
        first, begin, offsets = args           # [P], [P], [rows, P]
        distance = begin[:, None] + (taps + 1 - slot)[None, :] * increment      # [P, W] signed
        base = jnp.clip((jnp.abs(distance) >> _SHIFT) - 1, 0, table.shape[0] - 3)
        values = [table[base + k] for k in range(3)]
        slopes = [slope[base + k] for k in range(3)]
        low = jnp.min(first) - taps - 1
        at = first - taps - 1 - low                                              # [P]

        def periods(args):
            row, shift = args                  # first period of the step, [chunk, P]
            stretch = jax.lax.dynamic_slice(signal, (low + row * advance,),
                                            ((chunk + shifts) * advance,))
            tiles = stretch.reshape(chunk + shifts, advance)
            lines = jnp.concatenate([tiles[k:k + chunk] for k in range(shifts)], axis=1)
            windows = jax.vmap(lambda a: jax.lax.dynamic_slice(lines, (0, a), (chunk, width)))(at)
            index = jnp.abs(distance[:, None, :] + shift.T[:, :, None])         # [P, chunk, W]
            pick = (index >> _SHIFT) - base[:, None, :]
            value = jnp.where(pick == 0, values[0][:, None],
                              jnp.where(pick == 1, values[1][:, None], values[2][:, None]))
            rise = jnp.where(pick == 0, slopes[0][:, None],
                             jnp.where(pick == 1, slopes[1][:, None], slopes[2][:, None]))
            fraction = (index & (_ONE - 1)).astype(jnp.float32) * (1.0 / _ONE)
            coefficient = jnp.where(index <= max_index, value + fraction * rise, 0.0)
            return (gain * jnp.sum(coefficient * windows, axis=2)).T            # [chunk, P]

        steps = (jnp.arange(0, rows, chunk, dtype=jnp.int32),
                 offsets.reshape(rows // chunk, chunk, -1))
        return jax.lax.map(periods, steps).reshape(rows, -1)

    return jax.lax.map(group, (centre, start, delta)).reshape(-1)


def _polyphase_width(taps: int) -> int:
    """Input samples one polyphase output reads: both halves' taps, +-1 for the drift."""
    return 2 * taps + 3


def _rows_per_line(advance: int, taps: int) -> int:
    """Rows of ``advance`` input samples laid side by side so that every window of a row
    (starting within its first ``advance + 1`` samples) fits in the line."""
    return -(-(advance + _polyphase_width(taps) + 1) // advance)


_POLYPHASE_ELEMENTS = 1 << 20   # outputs x taps per step of the polyphase kernel
_MAX_PERIOD = 1024              # longer periods go through the per-output kernel
_MIN_PERIOD = 64                # outputs per step of the polyphase kernel's rows, at least


def _polyphase_layout(plan: _Plan, centre: np.ndarray, start: np.ndarray):
    """``(rows, chunk, centre, start, delta)`` for :func:`_polyphase_kernel`, or ``None``
    when the outputs drift too far from the exact period for its three-entry rule."""
    period, width = plan.period, _polyphase_width(plan.taps)
    if not 0 < period <= _MAX_PERIOD:
        return None
    count = centre.shape[0]
    chunk = max(1, _POLYPHASE_ELEMENTS // (period * width))
    chunk = min(1 << (chunk.bit_length() - 1), 1 << max(0, (-(-count // period) - 1).bit_length()))
    absolute = centre.astype(np.int64) * plan.increment + start.astype(np.int64)
    step = plan.advance * plan.increment   # units per exact period
    for rows in (chunk * 16, chunk * 4, chunk):
        groups = _bucket(-(-count // (rows * period)), 1)
        total = groups * rows * period
        # outputs past the end continue at the libsamplerate step; they are dropped
        extra = np.arange(1, total - count + 1, dtype=np.int64)
        tail = absolute[-1] + np.rint(extra * plan.step * plan.increment).astype(np.int64)
        grid = np.concatenate([absolute, tail]).reshape(groups, rows, period)
        first = grid[:, 0, :]
        delta = grid - first[:, None, :] - (np.arange(rows, dtype=np.int64) * step)[None, :, None]
        if np.abs(delta).max() < _ONE:
            whole = first // plan.increment
            return rows, chunk, whole, first - whole * plan.increment, delta.astype(np.int32)
    return None


def _bucket(n: int, minimum: int) -> int:
    """Round ``n`` up to ``a * 2**j`` (``8 <= a < 16``, at least ``minimum``): few compiled
    shapes, at most 12.5% padding."""
    n = max(n, minimum)
    shift = max(n.bit_length() - 4, 0)
    return -(-n >> shift) << shift if n > 16 else n


def _filter(plan: _Plan, signal: np.ndarray, centre: np.ndarray, start: np.ndarray,
            table: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Run a kernel on padded, bucketed shapes; ``signal`` already holds ``taps`` margins.

    The polyphase kernel when the rates have a short exact period (44.1 or 48 kHz
    to 16 kHz: 160 and 1 outputs, taken in rows of 160 and 64), the per-output kernel
    otherwise; both compute
    libsamplerate's coefficients from the same table entries and fractions.
    """
    layout = _polyphase_layout(plan, centre, start)
    if layout is not None:
        return _polyphase(plan, signal, centre.shape[0], layout, table)
    count = centre.shape[0]
    block = max(1, _BLOCK_ELEMENTS // (2 * plan.taps))
    block = 1 << (block.bit_length() - 1)
    if count <= block:
        block = size = max(16, 1 << (count - 1).bit_length())
    else:
        size = block * _bucket(-(-count // block), 1)
    length = _bucket(signal.shape[0], 1024)
    signal = jnp.pad(jnp.asarray(signal, jnp.float32), (0, length - signal.shape[0]))
    centre = np.pad(centre.astype(np.int32), (0, size - count), constant_values=plan.taps)
    start = np.pad(start.astype(np.int32), (0, size - count))
    out = _kernel(signal, centre, start, table[0], table[1], jnp.float32(plan.gain),
                  increment=plan.increment, max_index=plan.max_index, taps=plan.taps, block=block)
    return out[:count]


def _polyphase(plan: _Plan, signal, count: int, layout, table) -> jax.Array:
    rows, chunk, first, begin, delta = layout
    # A group's windows start taps + 1 samples before its lowest centre, which may be one
    # sample before the signal's taps-long margin; dynamic_slice would clamp that start.
    front = 2
    shifts = _rows_per_line(plan.advance, plan.taps)
    need = (int(first.max()) + front + (rows + shifts + 1) * plan.advance
            + _polyphase_width(plan.taps) + 1)
    length = _bucket(max(need, signal.shape[0] + front), 1024)
    signal = jnp.pad(jnp.asarray(signal, jnp.float32), (front, length - signal.shape[0] - front))
    out = _polyphase_kernel(signal, jnp.asarray(first + front, jnp.int32),
                            jnp.asarray(begin, jnp.int32), jnp.asarray(delta), table[0], table[1],
                            jnp.float32(plan.gain), increment=plan.increment,
                            max_index=plan.max_index, taps=plan.taps, advance=plan.advance,
                            rows=rows, chunk=chunk)
    return out[:count]


# ------------------------------------------------------------ matrix-product kernel
#
# The common conversions (44.1, 48, 32, 88.2, 96, 176.4, 192 kHz -> 16 kHz with the fastest or
# medium filter) take this path from NumPy input. Outputs come in groups of ``rows``
# periods of the exact rate ratio (period outputs, advance inputs each). Within a group,
# output j of row r sits ``delta`` fixed-point units past an anchor that is the same for
# every row (moved by r * advance input samples), with |delta| a few hundred units (one
# table step is 4096): the rows drift apart only because Essentia's float32 ratio is not
# the exact one. Each output is then
#     sum_t x[t] * h(t * increment - anchor - delta)
#       = sum_t x[t] * h(t * increment - anchor) - delta * sum_t x[t] * h'(t * increment - anchor),
# exact while no tap's filter index crosses a table entry between the anchor and the output,
# and off by |delta| / 4096 times the table's second difference (< 4e-5 of its peak) times
# the overshoot for the few that do. The error grows as delta squared: measured 1.2e-7 (music)
# and 5.1e-7 (full-scale noise) at |delta| <= 512, 1.5e-6 at 1400. For each block of a
# group's outputs, both sums are matrix products of the group's rows of samples with banded
# matrices whose columns are slices of a table of h and h' at anchors every _GRID units (no
# per-tap lookups): the value sums in float64 as libsamplerate sums in double, the slope sums
# (a correction of at most 1/8 table step) in float32.
#
# Groups are counted from output 0 and a call covers a fixed number of them (one compiled
# program per conversion, whatever the length); a stream's calls start on the same group
# boundaries as the one-shot call's, so its anchors and samples are the same bit for bit.

_GRID = 128              # fixed-point units between the anchors of the phase table
_DELTA_LIMIT = 512       # |delta| bound, units; sets the rows per group
_MAX_ROWS = 64           # periods per group, at most
_MAX_TABLE = 1 << 21     # entries (anchors x taps) of the phase table, at most (16 MB per half)
_SUBBLOCK = 32           # outputs per banded block, at most
_HALF_MASK = (1 << 30) - 1
_CALL_OUTPUTS = 1 << 16  # outputs per call, about: 4 s at 16 kHz (larger calls ran slower per output)


@dataclass(frozen=True)
class _Matmul:
    """Static shape of the matrix-product kernel for one plan."""

    rows: int        # periods per group
    block: int       # outputs per banded block (divides the period)
    span: int        # samples one block's row reads
    lines: int       # rows of ``advance`` samples laid side by side to hold ``span``
    groups: int      # groups per call, at most: one compiled program per plan


def _matmul_shape(plan: _Plan) -> _Matmul | None:
    """The kernel's shape, or ``None`` when the plan must take the per-output kernels.

    Downsampling only: upsampling's filter is not widened, so fewer, larger taps carry the
    first-order error (1.2-1.8e-6 on full-scale noise at 11.025 -> 16 and 16 -> 44.1 kHz).
    The same error grows with the ratio as ``sqrt(ratio)`` and with the drift squared, so
    plans above ratio 1/2 take groups of fewer rows (22.05 -> 16 kHz on full-scale noise:
    7.8e-7 with the drift of 44.1 kHz's groups, less with this).
    """
    if not 0 < plan.period <= _MAX_PERIOD or plan.ratio >= 1.0:
        return None
    width = 2 * plan.taps + 3
    if (plan.increment // _GRID + 2) * width > _MAX_TABLE:
        return None                                  # sinc_best: the table would be too large
    drift = abs(plan.period * plan.step - plan.advance) * plan.increment + 2   # units per period
    limit = _DELTA_LIMIT * min(1.0, math.sqrt(0.5 / plan.ratio))
    rows = _MAX_ROWS
    while rows > 1 and rows * drift / 2 + _GRID / 2 + 2 > limit:
        rows //= 2
    block = max(d for d in range(1, _SUBBLOCK + 1) if plan.period % d == 0)
    span = math.ceil((block - 1) * plan.step) + 4 + width
    if (span + width) * plan.increment >= 1 << 31:
        return None
    return _Matmul(rows, block, span, -(-span // plan.advance) + 1,
                   max(1, _CALL_OUTPUTS // (rows * plan.period)))


def accelerated(in_rate: int, out_rate: int, quality: str = "sinc_medium") -> bool:
    """Whether :func:`resample` takes the matrix-product kernel for ``in_rate -> out_rate`` Hz.

    It does for 22.05, 24, 32, 44.1, 48, 88.2, 96, 176.4 and 192 kHz -> 16 kHz (downsampling with
    a short exact period, not ``sinc_best``), where it runs 3-13x faster than libsamplerate
    (2-core EPYC; 22.05 kHz, whose positions come from the host, 3x); the per-output kernels
    elsewhere are about as fast as libsamplerate.
    """
    return _matmul_shape(_plan(in_rate, out_rate, quality)) is not None


def _closed_form(step: float) -> bool:
    """Whether every addition ``x + step`` of libsamplerate's position recurrence is exact for
    ``x`` on the sequence (multiples of step's ulp in [0, 1)): so when the sums cannot leave
    step's binade. Then output k's position is ``x0 + k * step`` split into whole and fraction."""
    _, exponent = math.frexp(step)
    return step >= 1.0 and step + 1.0 <= math.ldexp(1.0, exponent)


def _split_step(step: float) -> tuple[int, int]:
    """``step`` as its whole part and its fraction in units of 2**-60 (exact: step's ulp is
    >= 2**-60 for ratios <= 256)."""
    whole = math.floor(step)
    return whole, int(np.ldexp(step - whole, _UNIT))


def _walk(plan: _Plan, centre: int, units: int, k: int) -> tuple[int, int]:
    """Centre and fraction (units of 2**-60) of the output ``k`` steps after ``(centre, units)``,
    on the closed form (exact Python integers)."""
    whole, frac = _split_step(plan.step)
    total = units + k * frac
    return centre + k * whole + (total >> _UNIT), total & _FRAC_MASK


def _first(predicate, low: int, high: int) -> int:
    """The first ``k`` in ``[low, high)`` where a monotone ``predicate`` holds, else ``high``."""
    while low < high:
        middle = (low + high) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _ended(plan: _Plan, centre: int, units: int, n_input: int) -> bool:
    """libsamplerate's end test for the output centred on input sample ``centre``."""
    x = float(np.ldexp(float(units), -_UNIT))
    return bool(_terminated(plan, np.array([plan.half + centre]), np.array([x]), n_input)[0])


def _margin(plan: _Plan, shape: _Matmul) -> int:
    """Zeros either side of a phase-table row: a banded column (``span`` long) then is a slice."""
    return shape.span - (2 * plan.taps + 3)


@functools.lru_cache(maxsize=4)
def _phase_table(plan: _Plan, shape: _Matmul) -> tuple[jax.Array, jax.Array]:
    """h (float64) and h' (float32) at anchor phases ``0, _GRID, ...``, ``[anchors, width + 2 * margin]``
    each, ``width = 2 * taps + 3`` taps between ``margin = span - width`` zeros on either side
    (:func:`_margin`).

    Entry ``[i, margin + u]`` is for the sample ``u - taps - 1`` places from the anchor's centre,
    filter index ``d = (u - taps - 1) * increment - i * _GRID``: h(d) is libsamplerate's
    interpolated coefficient of ``|d|`` (zero past the table), h'(d) its slope per unit
    towards the output's side, ``-sign(d) * slope / 4096``. The zeros make a column of the
    kernel's banded matrix one contiguous slice of a row.
    """
    table = coefficients(plan.quality)
    slope = _slopes(table).astype(np.float64)
    table = table.astype(np.float64)
    # int32 indices and results written in place: a process's first build of these ~30 MB took
    # 0.08-0.33 s with int64 temporaries, 0.06-0.07 s so
    n_anchors, width, margin = plan.increment // _GRID + 2, 2 * plan.taps + 3, _margin(plan, shape)
    anchors = np.arange(n_anchors, dtype=np.int32) * _GRID
    offsets = np.arange(width, dtype=np.int32) - plan.taps - 1
    d = offsets[None, :] * np.int32(plan.increment) - anchors[:, None]      # |d| < 2**31 (_matmul_shape)
    distance = np.abs(d)
    entry = np.minimum(distance >> _SHIFT, table.shape[0] - 1)
    outside = distance > plan.max_index
    step = slope[entry]
    value = np.zeros((n_anchors, width + 2 * margin))
    value[:, margin:margin + width] = table[entry] + (distance & (_ONE - 1)) * (1.0 / _ONE) * step
    value[:, margin:margin + width][outside] = 0.0
    rise = np.zeros((n_anchors, width + 2 * margin), np.float32)
    step *= -np.sign(d) * (1.0 / _ONE)
    step[outside] = 0.0
    rise[:, margin:margin + width] = step
    with jax.enable_x64(True):
        return jnp.asarray(value), jnp.asarray(rise)


@functools.partial(jax.jit, static_argnames=("plan", "shape"))
def _matmul_kernel(signal, centre, units, groups, values, rises, positions=None, *, plan, shape):
    """Outputs ``[shape.groups * rows * period]`` (float32) from ``signal`` (float32; output 0's
    window centred on ``signal[centre]``, fraction ``units * 2**-60``), of which the first
    ``groups`` groups are computed (the rest are zeros), and whether all of those met the
    kernel's bounds (else the caller must not use them). Value sums in float64.

    The outputs' positions follow the closed form, or are ``positions`` ``[shape.groups * rows
    * period]`` (int64 fixed-point units from ``signal[0]``, :func:`_fixed_point`) where
    libsamplerate's recurrence rounds."""
    rows, period, advance, inc = shape.rows, plan.period, plan.advance, plan.increment
    block, span, width = shape.block, shape.span, 2 * plan.taps + 3
    size, blocks, reach = rows * period, period // block, (rows + shape.lines) * advance
    whole, frac = _split_step(plan.step)

    def closed_form(g):
        """libsamplerate's positions, exactly: centre + k * whole + carry, fraction in 2**-60
        units."""
        k = g.astype(jnp.int64) * size + jnp.arange(size, dtype=jnp.int64)
        high = k * (frac >> 30)
        total = units + k * (frac & _HALF_MASK) + ((high & _HALF_MASK) << 30)
        at = centre + k * whole + (high >> 30) + (total >> _UNIT)
        x = (total & _FRAC_MASK).astype(jnp.float64) * 2.0 ** -_UNIT
        phase = jnp.round(x * plan.float_increment * float(_ONE)).astype(jnp.int64)
        return at * inc + phase

    def layout(g):
        """Group ``g``'s block starts ``[blocks]``, output offsets in them ``[blocks, block]``,
        anchor rows ``[period]``, drifts ``[rows, period]`` (units) and whether all fit."""
        if positions is None:
            position = closed_form(g).reshape(rows, period)
        else:
            position = jax.lax.dynamic_slice(positions, (g * size,), (size,)).reshape(rows, period)
        position = position - (jnp.arange(rows, dtype=jnp.int64) * (advance * inc))[:, None]
        # anchors on the phase table's grid, near the group's middle row
        middle = position[rows // 2]
        whole_part = middle // inc
        anchor_row = (middle - whole_part * inc + _GRID // 2) // _GRID
        delta = position - (whole_part * inc + anchor_row * _GRID)[None, :]
        whole_part = whole_part.reshape(blocks, block)
        first = jnp.min(whole_part, axis=1)
        offset = whole_part - first[:, None]
        start = first - plan.taps - 1
        fits = ((jnp.max(jnp.abs(delta)) <= _DELTA_LIMIT) & (jnp.max(offset) + width <= span)
                & (jnp.min(start) >= 0) & (jnp.max(start) + reach <= signal.shape[0]))
        return (start.astype(jnp.int32), offset.astype(jnp.int32), anchor_row.astype(jnp.int32),
                delta.astype(jnp.int32), fits)

    margin = _margin(plan, shape)

    def block_sums(start, offset, anchors):
        """Value and slope sums ``[rows, block]`` of one block: rows of samples x banded matrix.

        Values in float64, as libsamplerate sums; slopes in float32: they carry a correction
        of at most |delta| / 4096 = 1/8 table step, and summing them in float32 moved the
        outputs by at most 6e-8 (a float32 step near 0.5) on music and on noise.
        """
        def columns(table):                                       # [block, span]: banded, transposed
            return jax.vmap(lambda a, o: jax.lax.dynamic_slice(table, (a, margin - o), (1, span))[0])(
                anchors, offset)

        tiles = jax.lax.dynamic_slice(signal, (start,), (reach,)).reshape(rows + shape.lines, advance)
        lines = jnp.concatenate([tiles[i:i + rows] for i in range(shape.lines)], axis=1)[:, :span]
        product = functools.partial(jax.lax.dot_general, dimension_numbers=(((1,), (1,)), ((), ())),
                                    precision=jax.lax.Precision.HIGHEST)
        value = product(lines.astype(jnp.float64), columns(values))
        rise = product(lines, columns(rises))
        return value, rise.astype(jnp.float64)

    # the layouts vectorised over the call's groups (inside the loop they ran ~3x slower)
    start, offset, anchor_row, delta, fits = jax.vmap(layout)(jnp.arange(shape.groups))

    def group(g, out):
        anchors = anchor_row[g].reshape(blocks, block)
        # one 2-D product per block: XLA's CPU batched products ran at half the rate
        parts = [block_sums(start[g, b], offset[g, b], anchors[b]) for b in range(blocks)]
        value = jnp.concatenate([v for v, _ in parts], axis=1)
        rise = jnp.concatenate([r for _, r in parts], axis=1)
        sums = (plan.gain * (value + delta[g].astype(jnp.float64) * rise)).astype(jnp.float32)
        return jax.lax.dynamic_update_slice(out, sums.reshape(-1), (g * size,))

    out = jax.lax.fori_loop(0, groups, group, jnp.zeros(shape.groups * size, jnp.float32))
    return out, jnp.all(fits | (jnp.arange(shape.groups) >= groups))


def _matmul(plan: _Plan, shape: _Matmul, x: np.ndarray, count: int,
            positions: np.ndarray | None = None, parallel: bool = False):
    """``count`` outputs from ``x`` (float32 ``[n]``) at libsamplerate's positions from its
    start (on the closed form), or at ``positions`` (int64, fixed-point units from ``x[0]``:
    :func:`_fixed_point`; of whole groups, :func:`_whole_groups`); ``None`` if an output fell
    outside the kernel's bounds.

    Calls of ``shape.groups`` groups, each on its stretch of ``x`` (zeros beyond its ends), all
    of one shape: one compiled program per plan, whatever the length; ``parallel``: on all
    cores (:func:`_pool`).
    """
    size = shape.rows * plan.period
    per_call = shape.groups * size
    front = plan.taps + 2
    length = front + math.ceil(per_call * plan.step) + (shape.lines + 2) * plan.advance \
        + shape.span + plan.taps + 2
    values, rises = _phase_table(plan, shape)  # outside float64 mode: it runs the other kernels
    calls = []
    for first in range(0, count, per_call):
        groups = -(-min(per_call, count - first) // size)
        if positions is None:
            at, first_units = _walk(plan, 0, 0, first)
            given = ()
        else:  # whole groups given; the groups past them are padding, not computed
            at, first_units = int(positions[first] // plan.increment), 0
            given = positions[first:first + groups * size] - (at - front) * plan.increment
            given = (np.pad(given, (0, per_call - given.shape[0]), mode="edge"),)
        calls.append((_stretch(x, at - front, length), np.int64(front), np.int64(first_units),
                      np.int32(groups), values, rises, *given))

    def launch(args):
        with jax.enable_x64(True):
            return _matmul_kernel(*args, plan=plan, shape=shape)

    def finish(result):
        return np.asarray(result[0]), bool(result[1])

    if parallel and len(calls) > 1 and _pool() is not None:
        done = list(_pool().map(lambda args: finish(launch(args)), calls))
    else:
        done = [finish(result) for result in [launch(args) for args in calls]]
    if not all(ok for _, ok in done):
        return None
    return np.concatenate([out for out, _ in done])[:count]


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor | None:
    """Threads that run a one-shot conversion's calls side by side, one per core this process
    may use (``None`` on one core): each call's loop over its groups runs on one core, its
    products being too small for XLA to split."""
    cores = len(os.sched_getaffinity(0))
    return ThreadPoolExecutor(cores, thread_name_prefix="jaxmir-resample") if cores > 1 else None


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the threads


def _fixed_point(plan: _Plan, centre: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Outputs' positions in fixed-point units, int64: ``centre * increment`` plus the filter
    start ``lrint(x * float_increment * 4096)`` (the closed-form kernel computes the same)."""
    return centre.astype(np.int64) * plan.increment + _phases(plan, x)


def _exact(plan: _Plan, centre: int, x0: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Window centres (input index from ``x[0]``) and fractions of ``count`` outputs from the
    one at ``(centre, x0)``, by libsamplerate's recurrence (:func:`_positions`)."""
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    frac, advance, _ = _positions(plan.step, x0, count)
    return centre + np.concatenate([[0], np.cumsum(advance)[:-1]]).astype(np.int64), frac


def _whole_groups(shape: _Matmul, plan: _Plan, count: int) -> int:
    """``count`` rounded up to whole groups of the matrix-product kernel: a group's anchors
    come from its middle row, so it takes the positions of all its outputs, used or not."""
    size = shape.rows * plan.period
    return -(-count // size) * size


def _stretch(x: np.ndarray, lo: int, length: int) -> np.ndarray:
    """``x[lo:lo + length]`` (float32), zeros where that reaches beyond ``x``."""
    out = np.zeros(length, np.float32)
    a, b = max(lo, 0), min(lo + length, x.shape[0])
    if b > a:
        out[a - lo:b - lo] = x[a:b]
    return out


# ------------------------------------------------------------------- coefficients


@functools.lru_cache(maxsize=None)
def coefficients(quality: str = "sinc_medium") -> np.ndarray:
    """libsamplerate's coefficient table for ``quality``, measured from ``samplerate``.

    Returns float32 ``[coeff_half_len + 2]``; the last entry (only ever weighted by zero)
    is 0. See the module docstring for the method. Raises :class:`AudioError` if
    ``samplerate`` is missing or behaves unlike libsamplerate 0.2.2.
    """
    if quality not in _FILTERS:
        raise AudioError(f"unknown resampling quality {quality!r}; accepted: {', '.join(QUALITIES)}")
    try:
        import samplerate
    except ImportError as error:  # pragma: no cover - a runtime dependency
        raise AudioError("the sinc resampler measures its filter from the `samplerate` package, "
                         "which is not installed") from error
    index_inc, half_len = _FILTERS[quality]
    p = math.ceil(index_inc / _MAX_RATIO)
    while math.gcd(p, index_inc) != 1:
        p += 1
    reach = half_len // index_inc + 2                   # input samples the filter spans per side
    n_input = 2 * reach + p + 2
    table = np.full(half_len + 2, np.nan, np.float64)
    table[-1] = 0.0
    # ratio index_inc / p puts outputs on every multiple of 1/index_inc between input
    # samples (p impulse positions cover all residues); ratio 1 adds the exact centre tap.
    for ratio, shifts in ((index_inc / p, range(p)), (1.0, range(1))):
        plan = _Plan(quality, ratio, 1.0 / ratio, index_inc * _ONE, half_len << _SHIFT,
                     0, 0, 1.0, float(index_inc))
        count = _output_count(plan, n_input)
        base, x = _exact(plan, 0, 0.0, count)
        start = _phases(plan, x).astype(np.int64)
        for shift in shifts:
            impulse = np.zeros(n_input, np.float32)
            where = reach + shift
            impulse[where] = 1.0
            out = np.asarray(samplerate.resample(impulse, ratio, quality), np.float64)
            k = np.arange(min(out.shape[0], count))
            left = where <= base[k]
            index = np.where(left, start[k] + (base[k] - where) * plan.increment,
                             plan.increment - start[k] + (where - base[k] - 1) * plan.increment)
            valid = (index >= 0) & (index <= plan.max_index) & (index % _ONE == 0)
            valid &= np.where(left, True, index > 0)
            slots, values = index[valid] >> _SHIFT, out[k][valid]
            seen = ~np.isnan(table[slots])
            if np.any(table[slots][seen] != values[seen]):
                raise AudioError(f"samplerate's {quality} filter is not libsamplerate 0.2.2's: its "
                                 "impulse response disagrees with itself")
            table[slots] = values
    if np.isnan(table).any():
        raise AudioError(f"could not measure samplerate's {quality} filter "
                         f"(table entries {np.flatnonzero(np.isnan(table))[:5]} unseen)")
    table = table.astype(np.float32)
    _verify(quality, table, samplerate)
    return table


def _verify(quality: str, table: np.ndarray, samplerate) -> None:
    """Resample noise up and down with the measured table; must match ``samplerate``.

    The sums run in NumPy (:func:`_reference`): compiling a JAX kernel here cost each process
    ~0.6 s before its first resampled sample.
    """
    noise = np.random.default_rng(0).uniform(-1, 1, 4000).astype(np.float32)
    for in_rate, out_rate in ((44100, 16000), (16000, 44100)):
        plan = _plan(in_rate, out_rate, quality)
        ours = _reference(plan, noise, table)
        theirs = np.asarray(samplerate.resample(noise, plan.ratio, quality))
        if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=0, atol=1e-5):
            raise AudioError(f"the {quality} filter measured from samplerate does not reproduce it "
                             f"({in_rate} -> {out_rate} Hz); is samplerate built on libsamplerate "
                             "0.2.2?")


def _reference(plan: _Plan, x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """libsamplerate's outputs for a short ``x`` ``[n]``, in NumPy float64 (``[k, taps]`` at once)."""
    centre, start = _output_taps(plan, x.shape[0])
    signal = np.pad(x.astype(np.float64), (plan.taps, plan.taps + 2))
    slope = _slopes(table).astype(np.float64)
    m = np.arange(plan.taps, dtype=np.int64)

    def coefficient(index, valid):
        entry = np.clip(index >> _SHIFT, 0, table.shape[0] - 1)
        value = table[entry].astype(np.float64) + (index & (_ONE - 1)) * (1.0 / _ONE) * slope[entry]
        return np.where(valid, value, 0.0)

    left_index = start[:, None].astype(np.int64) + m[None, :] * plan.increment
    right_index = (plan.increment - start)[:, None].astype(np.int64) + m[None, :] * plan.increment
    left = coefficient(left_index, left_index <= plan.max_index)
    right = coefficient(right_index, (right_index > 0) & (right_index <= plan.max_index))
    samples_left = signal[centre[:, None] - m[None, :]]
    samples_right = signal[centre[:, None] + 1 + m[None, :]]
    total = np.sum(left * samples_left, axis=1) + np.sum(right * samples_right, axis=1)
    return (plan.gain * total).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _device_table(quality: str) -> tuple[jax.Array, jax.Array]:
    table = coefficients(quality)
    return _as_device(table)


def _as_device(table: np.ndarray) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(table), jnp.asarray(_slopes(table))


def _slopes(table: np.ndarray) -> np.ndarray:
    """``table[i + 1] - table[i]`` in float32, as libsamplerate's C computes it (0 after the
    last entry), ``[len(table)]``: the interpolation's slope per table step."""
    return np.append(np.diff(table), np.float32(0))


# -------------------------------------------------------------------------- one-shot


def _check_signal(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise AudioError(f"audio has shape {x.shape}; expected mono samples [n]")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise AudioError(f"audio has dtype {x.dtype}; expected float32 samples")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise AudioError(f"audio contains {int(np.count_nonzero(~np.isfinite(x)))} NaN or infinite "
                         "sample(s); expected finite samples")
    return x


def _output_taps(plan: _Plan, n_input: int) -> tuple[np.ndarray, np.ndarray]:
    """Window centres (in a signal with ``taps`` leading zeros) and filter starts of the
    outputs libsamplerate makes from ``n_input`` samples in one call, ``[k]`` each."""
    count = _output_count(plan, n_input)
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    base, frac = _exact(plan, 0, 0.0, count)
    count = _until_end(plan, base, frac, n_input)
    return _normalise(plan, plan.taps + base[:count], _phases(plan, frac[:count]))


def _until_end(plan: _Plan, centre: np.ndarray, frac: np.ndarray, n_input: int) -> int:
    """How many of these outputs come before libsamplerate's end test first stops one."""
    ended = _terminated(plan, plan.half + centre, frac, n_input)
    return int(np.argmax(ended)) if ended.any() else centre.shape[0]


def _matmul_count(plan: _Plan, n_input: int) -> int:
    """How many outputs libsamplerate makes from ``n_input`` samples, on the closed form."""
    limit = _output_count(plan, n_input)
    return _first(lambda k: _ended(plan, *_walk(plan, 0, 0, k), n_input), 0, limit)


def _one_shot(plan: _Plan, x, table: np.ndarray | tuple) -> np.ndarray:
    shape = _matmul_shape(plan) if isinstance(x, np.ndarray) and isinstance(table, tuple) else None
    if shape is not None:
        if _closed_form(plan.step):
            count, positions = _matmul_count(plan, x.shape[0]), None
        else:
            limit = _output_count(plan, x.shape[0])
            centre, frac = _exact(plan, 0, 0.0, _whole_groups(shape, plan, limit))
            count = _until_end(plan, centre[:limit], frac[:limit], x.shape[0])
            positions = _fixed_point(plan, centre, frac)[:_whole_groups(shape, plan, count)]
        if count == 0:
            return np.zeros(0, np.float32)
        out = _matmul(plan, shape, x, count, positions, parallel=True)
        if out is not None:
            return out
    centre, start = _output_taps(plan, x.shape[0])
    if centre.shape[0] == 0:
        return np.zeros(0, np.float32)
    device = _as_device(table) if isinstance(table, np.ndarray) else table
    signal = jnp.pad(jnp.asarray(x, jnp.float32), (plan.taps, plan.taps + 2))
    return _filter(plan, signal, centre, start, device)


def resample(x, in_rate: int, out_rate: int, quality: str = "sinc_medium") -> np.ndarray:
    """Resample mono audio as ``samplerate.resample(x, essentia_ratio(...), quality)``.

    Args:
      x: samples ``[n]`` (float32; other real dtypes are cast), finite.
      in_rate, out_rate: sample rates in Hz, 1-384000, with a ratio within [1/256, 256].
      quality: ``"sinc_medium"`` (Essentia's default), ``"sinc_fastest"`` or ``"sinc_best"``.

    Returns:
      float32 ``[ceil(n * ratio)]`` (shorter by libsamplerate's end rule), empty for empty input.

    Raises:
      AudioError: bad rates, ratio, quality, shape or NaN/inf samples.
    """
    plan = _plan(in_rate, out_rate, quality)
    x = _check_signal(x)
    if x.shape[0] == 0:
        return np.zeros(0, np.float32)
    return np.asarray(_one_shot(plan, x, _device_table(quality)), np.float32)


def resample_jax(x: jax.Array, in_rate: int, out_rate: int, quality: str = "sinc_medium") -> jax.Array:
    """:func:`resample` on a JAX array, differentiable with respect to ``x`` ``[n]``.

    The positions depend only on ``n`` and the rates; the values are a linear map of ``x``.
    No NaN check (``x`` may be a tracer).
    """
    plan = _plan(in_rate, out_rate, quality)
    if x.ndim != 1:
        raise AudioError(f"audio has shape {x.shape}; expected mono samples [n]")
    if x.shape[0] == 0:
        return jnp.zeros(0, jnp.float32)
    return _one_shot(plan, jnp.asarray(x, jnp.float32), _device_table(quality))


# ------------------------------------------------------------------------- streaming


class SincResampler:
    """Streaming :func:`resample`: ``push`` chunks, then ``flush``; outputs concatenate to it.

    Keeps the last ``2 * taps + 2`` input samples and the fractional position between
    calls; each call's work and memory are bounded by its chunk (plus that history).
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "sinc_medium"):
        self._plan = _plan(in_rate, out_rate, quality)
        self._table = _device_table(quality)
        self._history = np.zeros(self._plan.taps, np.float32)  # the leading zeros
        self._origin = -self._plan.taps    # input index of _history[0]
        self._seen = 0                     # input samples pushed
        self._made = 0                     # outputs returned
        self._centre = 0                   # input index (from x[0]) of the next output
        self._frac = 0.0                   # its fractional position
        self._done = False
        self._matmul = _matmul_shape(self._plan)
        # (centres, fractions) of the outputs from the one at _group_start(): _track()
        self._tracked = (np.zeros(1, np.int64), np.zeros(1))

    def push(self, chunk) -> np.ndarray:
        """Take ``[n]`` float32 samples; return the outputs they complete (float32 ``[k]``)."""
        if self._done:
            raise AudioError("this SincResampler was flushed; create a new one")
        chunk = _check_signal(chunk)
        self._history = np.concatenate([self._history, chunk])
        self._seen += chunk.shape[0]
        # An output is final once its right-hand taps are all in.
        ready = self._seen - self._plan.taps - 1
        limit = _output_count(self._plan, self._seen)
        return self._emit(lambda centre: centre < ready, limit)

    def flush(self) -> np.ndarray:
        """Signal the end of input and return the remaining outputs."""
        if self._done:
            return np.zeros(0, np.float32)
        self._done = True
        self._history = np.concatenate([self._history, np.zeros(self._plan.taps + 2, np.float32)])
        limit = _output_count(self._plan, self._seen)
        return self._emit(None, limit)

    def _emit(self, ready, limit: int) -> np.ndarray:
        if self._matmul is not None:
            out = self._emit_groups(ready, limit)
            if out is not None:
                return out
            self._matmul = None  # the per-output kernel below does not keep the group's anchor
        plan = self._plan
        pieces = []
        while self._made < limit:
            want = min(limit - self._made, 1 << 16)
            centre, frac = _exact(plan, self._centre, self._frac, want + 1)  # and the next state
            keep = self._usable(ready, centre[:want], frac[:want])
            n = int(np.argmin(keep)) if not keep.all() else want
            if n == 0:
                if ready is None:
                    self._made = limit
                break
            lo = centre[0] - plan.taps + 1 - self._origin
            hi = centre[n - 1] + plan.taps + 2 - self._origin
            segment = self._history[lo:hi]
            out = _filter(plan, segment, *_normalise(plan, centre[:n] - self._origin - lo,
                                                     _phases(plan, frac[:n])), self._table)
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
        centre, frac = self._track(_whole_groups(self._matmul, plan, limit - first + 1))
        done = self._made - first
        usable = self._usable(ready, centre, frac)
        usable[:done] = True
        usable[limit - first:] = False
        n = int(np.argmin(usable)) - done
        out = np.zeros(0, np.float32)
        if n:
            origin = int(centre[0]) - plan.taps
            window = self._history[origin - self._origin:]
            positions = _fixed_point(plan, centre - origin, frac)
            positions = positions[:_whole_groups(self._matmul, plan, done + n)]
            out = _matmul(plan, self._matmul, window, done + n, positions)
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

    def _track(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres and fractions of ``count`` outputs from the one at :meth:`_group_start`,
        extending those kept from earlier calls (each push adds only its own outputs')."""
        centre, frac = self._tracked
        if centre.shape[0] < count:
            more_centre, more_frac = _exact(self._plan, int(centre[-1]), float(frac[-1]),
                                            count - centre.shape[0] + 1)
            self._tracked = centre, frac = (np.concatenate([centre, more_centre[1:]]),
                                            np.concatenate([frac, more_frac[1:]]))
        return centre[:count], frac[:count]

    def _usable(self, ready, centre: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Which of these outputs this call may give: the ready ones while pushing, those
        before libsamplerate's end test when flushing (``ready`` is ``None``)."""
        if ready is not None:
            return ready(centre)
        return np.arange(centre.shape[0]) < _until_end(self._plan, centre, frac, self._seen)

    def _group_start(self) -> int:
        """Index of the first output of the matrix-product kernel's group holding the next output."""
        group = self._matmul.rows * self._plan.period
        return self._made // group * group

    def _forget(self) -> None:
        """Drop the history no later output reads."""
        centre = (int(self._tracked[0][0]) if self._matmul is not None and not self._done
                  else self._centre)
        drop = centre - self._plan.taps - self._origin
        if drop > 0:
            self._history = self._history[drop:]
            self._origin += drop
