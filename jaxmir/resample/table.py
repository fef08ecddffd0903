"""libsamplerate's coefficient tables, measured from the installed ``samplerate`` package and
verified in NumPy (see :mod:`jaxmir.resample` for the method)."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from jaxmir.errors import AudioError
from jaxmir.resample.positions import (FILTERS, MAX_RATIO, ONE, QUALITIES, SHIFT, Plan,
                                       exact_positions, filter_starts, output_count, output_taps,
                                       plan_of)


@functools.lru_cache(maxsize=None)
def coefficients(quality: str = "sinc_medium") -> np.ndarray:
    """libsamplerate's coefficient table for ``quality``, measured from ``samplerate``.

    Returns float32 ``[coeff_half_len + 2]``; the last entry (only ever weighted by zero)
    is 0. See :mod:`jaxmir.resample` for the method. Raises :class:`AudioError` if
    ``samplerate`` is missing or behaves unlike libsamplerate 0.2.2.
    """
    if quality not in FILTERS:
        raise AudioError(f"unknown resampling quality {quality!r}; "
                         f"accepted: {', '.join(QUALITIES)}")
    try:
        import samplerate
    except ImportError as error:  # pragma: no cover - a runtime dependency
        raise AudioError("the sinc resampler measures its filter from the `samplerate` package, "
                         "which is not installed") from error
    index_inc, half_len = FILTERS[quality]
    p = math.ceil(index_inc / MAX_RATIO)
    while math.gcd(p, index_inc) != 1:
        p += 1
    reach = half_len // index_inc + 2                   # input samples the filter spans per side
    n_input = 2 * reach + p + 2
    table = np.full(half_len + 2, np.nan, np.float64)
    table[-1] = 0.0
    # ratio index_inc / p puts outputs on every multiple of 1/index_inc between input
    # samples (p impulse positions cover all residues); ratio 1 adds the exact centre tap.
    for ratio, shifts in ((index_inc / p, range(p)), (1.0, range(1))):
        plan = Plan(quality, ratio, 1.0 / ratio, index_inc * ONE, half_len << SHIFT,
                    0, 0, 1.0, float(index_inc))
        count = output_count(plan, n_input)
        base, x = exact_positions(plan, 0, 0.0, count)
        start = filter_starts(plan, x).astype(np.int64)
        for shift in shifts:
            impulse = np.zeros(n_input, np.float32)
            where = reach + shift
            impulse[where] = 1.0
            out = np.asarray(samplerate.resample(impulse, ratio, quality), np.float64)
            k = np.arange(min(out.shape[0], count))
            left = where <= base[k]
            index = np.where(left, start[k] + (base[k] - where) * plan.increment,
                             plan.increment - start[k] + (where - base[k] - 1) * plan.increment)
            valid = (index >= 0) & (index <= plan.max_index) & (index % ONE == 0)
            valid &= np.where(left, True, index > 0)
            slots, values = index[valid] >> SHIFT, out[k][valid]
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
        plan = plan_of(in_rate, out_rate, quality)
        ours = _reference(plan, noise, table)
        theirs = np.asarray(samplerate.resample(noise, plan.ratio, quality))
        if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=0, atol=1e-5):
            raise AudioError(f"the {quality} filter measured from samplerate does not reproduce it "
                             f"({in_rate} -> {out_rate} Hz); is samplerate built on libsamplerate "
                             "0.2.2?")


def _reference(plan: Plan, x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """libsamplerate's outputs for a short ``x`` ``[n]``, in NumPy float64 (``[k, taps]`` at
    once)."""
    centre, start = output_taps(plan, x.shape[0])
    signal = np.pad(x.astype(np.float64), (plan.taps, plan.taps + 2))
    slope = table_slopes(table).astype(np.float64)
    m = np.arange(plan.taps, dtype=np.int64)

    def coefficient(index, valid):
        entry = np.clip(index >> SHIFT, 0, table.shape[0] - 1)
        value = table[entry].astype(np.float64) + (index & (ONE - 1)) * (1.0 / ONE) * slope[entry]
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
def device_table(quality: str) -> tuple[jax.Array, jax.Array]:
    table = coefficients(quality)
    return _as_device(table)


def _as_device(table: np.ndarray) -> tuple[jax.Array, jax.Array]:
    # transfers compile nothing (jnp.asarray: a program per shape); the copy keeps the device
    # array from sharing the memory of `coefficients`' cached table. Made eagerly even when the
    # first call is traced (resample_jax under jit): a cached tracer would outlive its trace.
    with jax.ensure_compile_time_eval():
        return jax.device_put(table.copy()), jax.device_put(table_slopes(table))


def table_slopes(table: np.ndarray) -> np.ndarray:
    """``table[i + 1] - table[i]`` in float32, as libsamplerate's C computes it (0 after the
    last entry), ``[len(table)]``: the interpolation's slope per table step."""
    return np.append(np.diff(table), np.float32(0))
