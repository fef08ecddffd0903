"""The float32 kernels: per-output sums, and the polyphase kernel for rates with a short exact
period. Traceable and differentiable; :func:`float32_outputs` picks one."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.promotion import standard_promotion
from jaxmir.resample.positions import MAX_PERIOD, ONE, SHIFT, Plan

_POLYPHASE_ELEMENTS = 1 << 20   # outputs x taps per step of the polyphase kernel
_BLOCK_ELEMENTS = 1 << 20  # outputs x taps per block of the kernel


@functools.partial(jax.jit, static_argnames=("increment", "max_index", "taps", "block"))
@standard_promotion  # while tracing, in the thread that traces
def _kernel(signal, centre, start, table, slope, gain, *, increment, max_index, taps, block):
    """Outputs ``[k]`` from ``signal [n]`` (float32), window centres and filter starts ``[k]``.

    ``k`` must be a multiple of ``block``; ``centre - taps + 1 >= 0`` and
    ``centre + taps < n`` for every output (the caller pads).
    """
    m = jnp.arange(taps, dtype=jnp.int32)

    def coefficient(index, mask):
        position = jnp.clip(index >> SHIFT, 0, table.shape[0] - 1)
        fraction = (index & (ONE - 1)).astype(jnp.float32) * (1.0 / ONE)
        value = table[position] + fraction * slope[position]
        return jnp.where(mask, value, 0.0)

    def one_block(args):
        c, s = args
        left_index = s[:, None] + m[None, :] * increment
        left = coefficient(left_index, left_index <= max_index)
        right_index = (increment - s)[:, None] + m[None, :] * increment
        right = coefficient(right_index, (right_index > 0) & (right_index <= max_index))
        # Contiguous windows (dynamic slices are much faster than an index gather on CPU).
        windows = jax.vmap(lambda ci: jax.lax.dynamic_slice(signal, (ci - taps + 1,),
                                                            (2 * taps,)))(c)
        left_samples = windows[:, taps - 1::-1]
        right_samples = windows[:, taps:]
        total = jnp.sum(left * left_samples, axis=1) + jnp.sum(right * right_samples, axis=1)
        return gain * total

    blocks = (centre.reshape(-1, block), start.reshape(-1, block))
    return jax.lax.map(one_block, blocks).reshape(-1)


@functools.partial(jax.jit, static_argnames=("increment", "max_index", "taps", "advance", "rows",
                                             "chunk"))
@standard_promotion  # while tracing, in the thread that traces
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
        base = jnp.clip((jnp.abs(distance) >> SHIFT) - 1, 0, table.shape[0] - 3)
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
            windows = jax.vmap(lambda a: jax.lax.dynamic_slice(lines, (jnp.zeros_like(a), a),
                                                               (chunk, width)))(at)
            index = jnp.abs(distance[:, None, :] + shift.T[:, :, None])         # [P, chunk, W]
            pick = (index >> SHIFT) - base[:, None, :]
            value = jnp.where(pick == 0, values[0][:, None],
                              jnp.where(pick == 1, values[1][:, None], values[2][:, None]))
            rise = jnp.where(pick == 0, slopes[0][:, None],
                             jnp.where(pick == 1, slopes[1][:, None], slopes[2][:, None]))
            fraction = (index & (ONE - 1)).astype(jnp.float32) * (1.0 / ONE)
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


def _polyphase_layout(plan: Plan, centre: np.ndarray, start: np.ndarray):
    """``(rows, chunk, centre, start, delta)`` for :func:`_polyphase_kernel`, or ``None``
    when the outputs drift too far from the exact period for its three-entry rule."""
    period, width = plan.period, _polyphase_width(plan.taps)
    if not 0 < period <= MAX_PERIOD:
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
        if np.abs(delta).max() < ONE:
            whole = first // plan.increment
            return rows, chunk, whole, first - whole * plan.increment, delta.astype(np.int32)
    return None


def _bucket(n: int, minimum: int) -> int:
    """Round ``n`` up to ``a * 2**j`` (``8 <= a < 16``, at least ``minimum``): few compiled
    shapes, at most 12.5% padding."""
    n = max(n, minimum)
    shift = max(n.bit_length() - 4, 0)
    return -(-n >> shift) << shift if n > 16 else n


def float32_outputs(plan: Plan, signal: np.ndarray, centre: np.ndarray, start: np.ndarray,
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


def _polyphase(plan: Plan, signal, count: int, layout, table) -> jax.Array:
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
