"""The matrix-product kernel: libsamplerate's sums as products of rows of samples with banded
matrices, values in float64, for downsampling at rates with a short exact period."""

from __future__ import annotations

import functools
import math
import os
import threading
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.promotion import standard_promotion
from jaxmir.resample.lanes import lane_device, lanes
from jaxmir.resample.positions import (FRAC_MASK, MAX_PERIOD, ONE, SHIFT, UNIT, Plan, end_test,
                                       first_true, output_count, plan_of, split_step, walk)
from jaxmir.resample.table import coefficients, table_slopes

# The common conversions (44.1, 48, 32, 88.2, 96, 176.4, 192 kHz -> 16 kHz with Essentia's
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
_SUBBLOCK = 32           # outputs per banded block, at most
_HALF_MASK = (1 << 30) - 1
# outputs per call, about: 4 s at 16 kHz (larger calls ran slower per output)
_CALL_OUTPUTS = 1 << 16


@dataclass(frozen=True)
class _Matmul:
    """Static shape of the matrix-product kernel for one plan."""

    rows: int        # periods per group
    block: int       # outputs per banded block (divides the period)
    span: int        # samples one block's row reads
    lines: int       # rows of ``advance`` samples laid side by side to hold ``span``
    groups: int      # groups per call, at most: one compiled program per plan


def matmul_shape(plan: Plan) -> _Matmul | None:
    """The kernel's shape, or ``None`` when the plan must take the per-output kernels.

    Downsampling with the medium filter only: the fastest filter's coarser table carries the
    first-order error past 1e-6 (4.4e-6 on full-scale noise at 22.05 -> 16 kHz, 1.3e-6 at 44.1),
    and upsampling's filter is not widened, so fewer, larger taps carry it (1.2-1.8e-6 on full-scale
    noise at 11.025 -> 16 and 16 -> 44.1 kHz).
    The same error grows with the ratio as ``sqrt(ratio)`` and with the drift squared, so
    plans above ratio 1/2 take groups of fewer rows (22.05 -> 16 kHz on full-scale noise:
    7.8e-7 with the drift of 44.1 kHz's groups, less with this).
    """
    if not 0 < plan.period <= MAX_PERIOD or plan.ratio >= 1.0:
        return None
    if plan.quality != "sinc_medium":  # fastest: up to 4.4e-6 on full-scale noise (22.05 kHz)
        return None
    # no bound on the phase table's size here: its anchors x taps, (increment / _GRID) x
    # (2 * taps), is about the medium filter's 2 * coeff_half_len * (4096 / _GRID) at any ratio
    # (1.44-1.50 M from 22.05 to 384 kHz, and at ratios down to 1/256)
    width = 2 * plan.taps + 3
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
    """Whether :func:`jaxmir.resample.resample` takes the matrix-product kernel for
    ``in_rate -> out_rate`` Hz.

    It does where downsampling to 16 kHz has a short exact period, with ``sinc_medium``,
    Essentia's filter: 22.05, 24, 32, 44.1, 48, 88.2, 96, 176.4 and 192 kHz, and others such as
    17, 20, 50 or 384 kHz (not 44.056 or 47.999 kHz), where it runs 21-25x faster than
    libsamplerate on a 2-core Zen 5 EPYC (32, 44.1, 48, 96 kHz; 22.05 kHz, whose positions come
    from the host, 5.7x); the per-output kernels elsewhere are about as fast as libsamplerate.
    """
    return matmul_shape(plan_of(in_rate, out_rate, quality)) is not None


def _margin(plan: Plan, shape: _Matmul) -> int:
    """Zeros either side of a phase-table row: a banded column (``span`` long) then is a slice."""
    return shape.span - (2 * plan.taps + 3)


_building = threading.Lock()  # held while a host phase table is built


def _unlock_in_child() -> None:
    """A forked child's copy of the lock may be held by a thread it does not have."""
    global _building
    _building = threading.Lock()


os.register_at_fork(after_in_child=_unlock_in_child)


@functools.lru_cache(maxsize=16)
def _phase_table(plan: Plan, shape: _Matmul,
                 device: jax.Device | None = None) -> tuple[jax.Array, jax.Array]:
    """:func:`_host_phase_table` on ``device`` (the default device if ``None``): on the CPU,
    the same memory for every device, the host arrays being aligned as XLA's buffers are."""
    with _building:  # a conversion's lanes ask at once: each built (and kept) a table of its own
        host = _host_phase_table(plan, shape)
    # device_put: a transfer; jnp.asarray would compile a program
    return tuple(jax.device_put(part, device) for part in host)


@functools.lru_cache(maxsize=4)
def _host_phase_table(plan: Plan, shape: _Matmul) -> tuple[np.ndarray, np.ndarray]:
    """h and h' (float32) at anchor phases ``0, _GRID, ...``, ``[anchors, width + 2 * margin]``
    each, ``width = 2 * taps + 3`` taps between ``margin = span - width`` zeros on either side
    (:func:`_margin`).

    Entry ``[i, margin + u]`` is for the sample ``u - taps - 1`` places from the anchor's centre,
    filter index ``d = (u - taps - 1) * increment - i * _GRID``: h(d) is libsamplerate's
    interpolated coefficient of ``|d|`` (zero past the table), h'(d) its slope per unit
    towards the output's side, ``-sign(d) * slope / 4096``. The zeros make a column of the
    kernel's banded matrix one contiguous slice of a row.

    h is libsamplerate's double coefficient rounded to float32 (the kernel sums in float64), for
    half the bytes each column's gather reads: a relative 2**-24 per tap moves an output by at
    most 2**-24 * sum |x h|, ~1e-7 at full scale; against samplerate the measured maxima moved
    by one float32 step at most (207 s of music and of full-scale noise: 44.1 and 22.05 kHz
    unchanged, 48 kHz's noise 2.6e-7 -> 2.7e-7, 96 kHz's 1.3e-7 -> 1.5e-7, 32 kHz 0 -> 1.2e-7).
    """
    table = coefficients(plan.quality)
    slope = table_slopes(table).astype(np.float64)
    table = table.astype(np.float64)
    # int32 indices and results written in place: a process's first build of these ~20 MB took
    # 0.08-0.33 s with int64 temporaries, 0.06-0.07 s so
    n_anchors, width, margin = plan.increment // _GRID + 2, 2 * plan.taps + 3, _margin(plan, shape)
    anchors = np.arange(n_anchors, dtype=np.int32) * _GRID
    offsets = np.arange(width, dtype=np.int32) - plan.taps - 1
    # |d| < 2**31 (matmul_shape)
    d = offsets[None, :] * np.int32(plan.increment) - anchors[:, None]
    distance = np.abs(d)
    entry = np.minimum(distance >> SHIFT, table.shape[0] - 1)
    outside = distance > plan.max_index
    step = slope[entry]
    value = _aligned_zeros((n_anchors, width + 2 * margin))
    inside = table[entry] + (distance & (ONE - 1)) * (1.0 / ONE) * step
    inside[outside] = 0.0
    value[:, margin:margin + width] = inside
    rise = _aligned_zeros((n_anchors, width + 2 * margin))
    step *= -np.sign(d) * (1.0 / ONE)
    step[outside] = 0.0
    rise[:, margin:margin + width] = step
    value.flags.writeable = rise.flags.writeable = False  # shared with the devices
    return value, rise


def _aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros starting on a 64-byte boundary, which XLA:CPU takes without a copy."""
    size = math.prod(shape)
    raw = np.zeros(size + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + size].reshape(shape)


@functools.partial(jax.jit, static_argnames=("plan", "shape"))
@standard_promotion  # while tracing, in the thread that traces
def _matmul_kernel(signal, centre, units, groups, values, rises, positions=None, *, plan, shape):
    """Outputs ``[shape.groups * rows * period]`` (float32) from ``signal`` (float32; output 0's
    window centred on ``signal[centre]``, fraction ``units * 2**-60``), of which the first
    ``groups`` groups are computed (the rest are zeros), and whether all of those met the
    kernel's bounds (else the caller must not use them). Value sums in float64.

    The outputs' positions follow the closed form, or are ``positions`` ``[shape.groups * rows
    * period]`` (int64 fixed-point units from ``signal[0]``,
    :func:`~jaxmir.resample.positions.fixed_point`) where libsamplerate's recurrence rounds."""
    rows, period, advance, inc = shape.rows, plan.period, plan.advance, plan.increment
    block, span, width = shape.block, shape.span, 2 * plan.taps + 3
    size, blocks, reach = rows * period, period // block, (rows + shape.lines) * advance
    whole, frac = split_step(plan.step)

    def closed_form(g):
        """libsamplerate's positions, exactly: centre + k * whole + carry, fraction in 2**-60
        units."""
        k = g.astype(jnp.int64) * size + jnp.arange(size, dtype=jnp.int64)
        high = k * (frac >> 30)
        total = units + k * (frac & _HALF_MASK) + ((high & _HALF_MASK) << 30)
        at = centre + k * whole + (high >> 30) + (total >> UNIT)
        x = (total & FRAC_MASK).astype(jnp.float64) * 2.0 ** -UNIT
        phase = jnp.round(x * plan.float_increment * float(ONE)).astype(jnp.int64)
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
        # clipped to one past the bound (a drift beyond it still fails the check) and read as
        # int32 before the check: XLA's CPU reductions over int64 took ~0.1 ms of a 44.1-kHz
        # call's ~1.3 (Zen 5)
        delta = jnp.clip(position - (whole_part * inc + anchor_row * _GRID)[None, :],
                         -_DELTA_LIMIT - 1, _DELTA_LIMIT + 1).astype(jnp.int32)
        whole_part = whole_part.reshape(blocks, block)
        first = jnp.min(whole_part, axis=1)
        offset = whole_part - first[:, None]
        start = first - plan.taps - 1
        fits = ((jnp.max(delta) <= _DELTA_LIMIT) & (jnp.min(delta) >= -_DELTA_LIMIT)
                & (jnp.max(offset) + width <= span)
                & (jnp.min(start) >= 0) & (jnp.max(start) + reach <= signal.shape[0]))
        return (start.astype(jnp.int32), offset.astype(jnp.int32), anchor_row.astype(jnp.int32),
                delta, fits)

    margin = _margin(plan, shape)

    def block_sums(start, offset, anchors):
        """Value and slope sums ``[rows, block]`` of one block: rows of samples x banded matrix.

        Values in float64, as libsamplerate sums; slopes in float32: they carry a correction
        of at most |delta| / 4096 = 1/8 table step, and summing them in float32 moved the
        outputs by at most 6e-8 (a float32 step near 0.5) on music and on noise.
        """
        # [block, span]: banded, transposed
        def columns(table):
            return jax.vmap(
                lambda a, o: jax.lax.dynamic_slice(table, (a, margin - o), (1, span))[0])(
                anchors, offset)

        tiles = jax.lax.dynamic_slice(signal, (start,),
                                      (reach,)).reshape(rows + shape.lines, advance)
        lines = jnp.concatenate([tiles[i:i + rows] for i in range(shape.lines)], axis=1)[:, :span]
        product = functools.partial(jax.lax.dot_general, dimension_numbers=(((1,), (1,)), ((), ())),
                                    precision=jax.lax.Precision.HIGHEST)
        value = product(lines.astype(jnp.float64), columns(values).astype(jnp.float64))
        rise = product(lines, columns(rises))
        return value, rise.astype(jnp.float64)

    # the layouts vectorised over the call's groups (inside the loop they ran ~3x slower)
    start, offset, anchor_row, delta, fits = jax.vmap(layout)(jnp.arange(shape.groups))

    def group(g, out):
        anchors = anchor_row[g].reshape(blocks, block)

        # one 2-D product per block (XLA's CPU batched products ran at half the rate), in a
        # loop rather than unrolled: the same outputs bit for bit, and a first call at
        # 22.05 kHz (ten blocks) compiled in ~0.6 s instead of ~1.0 (Zen 5)
        def one_block(b, sums):
            value, rise = block_sums(start[g, b], offset[g, b], anchors[b])
            return (jax.lax.dynamic_update_slice(sums[0], value, (0, b * block)),
                    jax.lax.dynamic_update_slice(sums[1], rise, (0, b * block)))

        value, rise = jax.lax.fori_loop(
            0, blocks, one_block,
            (jnp.zeros((rows, period), jnp.float64), jnp.zeros((rows, period), jnp.float64)))
        sums = (plan.gain * (value + delta[g].astype(jnp.float64) * rise)).astype(jnp.float32)
        return jax.lax.dynamic_update_slice(out, sums.reshape(-1), (g * size,))

    out = jax.lax.fori_loop(0, groups, group, jnp.zeros(shape.groups * size, jnp.float32))
    return out, jnp.all(fits | (jnp.arange(shape.groups) >= groups))


def matmul_outputs(plan: Plan, shape: _Matmul, x: np.ndarray, count: int,
                   positions: np.ndarray | None = None, parallel: bool = False,
                   first_output: int = 0, x_origin: int = 0):
    """``count`` outputs from ``x`` (float32 ``[n]``) at libsamplerate's positions (on the closed
    form), or at ``positions`` (int64, fixed-point units from ``x[0]``:
    :func:`~jaxmir.resample.positions.fixed_point`; of whole groups, :func:`whole_groups`);
    ``None`` if an output fell outside the kernel's bounds.

    On the closed form the outputs are the signal's from output ``first_output`` (a group
    boundary), ``x[0]`` being the signal's input sample ``x_origin``: a stream's window.
    Calls of ``shape.groups`` groups, each on its stretch of ``x`` (zeros beyond its ends), all
    of one shape: one compiled program per plan, whatever the length; ``parallel``: on all
    cores (:func:`~jaxmir.resample.lanes.lanes`).
    """
    size = shape.rows * plan.period
    per_call = shape.groups * size
    front = plan.taps + 2
    length = front + math.ceil(per_call * plan.step) + (shape.lines + 2) * plan.advance \
        + shape.span + plan.taps + 2
    calls = []  # (first input sample, first output's fraction, groups computed, positions)
    for first in range(0, count, per_call):
        groups = -(-min(per_call, count - first) // size)
        if positions is None:
            at, first_units = walk(plan, 0, 0, first_output + first)
            at -= x_origin
            given = ()
        else:  # whole groups given; the groups past them are padding, not computed
            at, first_units = int(positions[first] // plan.increment), 0
            given = positions[first:first + groups * size] - (at - front) * plan.increment
            given = (np.pad(given, (0, per_call - given.shape[0]), mode="edge"),)
        calls.append((at - front, first_units, groups, given))

    def run(some):
        """The outputs of consecutive calls and whether all kept to the bounds, on the calling
        lane's device (:func:`~jaxmir.resample.lanes.lane_device`). Each call's stretch of ``x``
        is cut in the thread that runs it, and its outputs taken before the next call starts:
        launching all 54 calls of 207 s at 44.1 kHz first (their stretches, ~0.7 MB each, all
        alive) took 76-78 ms on one core of a Zen 5, this 66-69."""
        # outside float64 mode: the table's build runs the other kernels
        values, rises = _phase_table(plan, shape, lane_device())
        outs, fits = [], True
        for lo, first_units, groups, given in some:
            with jax.enable_x64(True):
                out, ok = _matmul_kernel(_stretch(x, lo, length), np.int64(front),
                                         np.int64(first_units), np.int32(groups), values, rises,
                                         *given, plan=plan, shape=shape)
            outs.append(np.asarray(out))
            fits = fits and bool(ok)
        return outs, fits

    side_by_side = lanes() if parallel and len(calls) > 1 else None
    if side_by_side is not None:
        # one run of consecutive calls per lane: with each call a task of its own (and the
        # stretches cut, the calls launched, beforehand; h in float64) 207 s at 44.1 kHz took
        # 56-61 ms on two cores of a Zen 5, this 49-57 (both on the default device)
        share = -(-len(calls) // side_by_side.count)
        done = list(side_by_side.threads.map(
            run, [calls[i:i + share] for i in range(0, len(calls), share)]))
    else:
        done = [run(calls)]
    if not all(ok for _, ok in done):
        return None
    return np.concatenate([out for outs, _ in done for out in outs])[:count]


def whole_groups(shape: _Matmul, plan: Plan, count: int) -> int:
    """``count`` rounded up to whole groups of the matrix-product kernel: a group's anchors
    come from its middle row, so it takes the positions of all its outputs, used or not."""
    size = shape.rows * plan.period
    return -(-count // size) * size


def _stretch(x: np.ndarray, lo: int, length: int) -> np.ndarray:
    """``x[lo:lo + length]`` (float32), zeros where that reaches beyond ``x``; aligned, so that
    a call takes it without a copy (207 s at 44.1 kHz: 35-37 ms -> 34-36, Zen 5)."""
    out = _aligned_zeros((length,))
    a, b = max(lo, 0), min(lo + length, x.shape[0])
    if b > a:
        out[a - lo:b - lo] = x[a:b]
    return out


def matmul_count(plan: Plan, n_input: int) -> int:
    """How many outputs libsamplerate makes from ``n_input`` samples, on the closed form."""
    limit = output_count(plan, n_input)
    return first_true(lambda k: end_test(plan, *walk(plan, 0, 0, k), n_input), 0, limit)
