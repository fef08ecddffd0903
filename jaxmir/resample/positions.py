"""Where libsamplerate's outputs sit: a conversion's constants (:class:`Plan`), the output
positions of its recurrence (exact integers, or float64 where it rounds), filter starts, its end
rule. See :mod:`jaxmir.resample` for the arithmetic."""

from __future__ import annotations

import fractions
import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.checks import check_rate
from jaxmir.errors import AudioError

QUALITIES = ("sinc_best", "sinc_medium", "sinc_fastest")
MAX_TAPS = 16_384  # filter taps per half; more would need an unbounded window per output
SHIFT = 12
ONE = 1 << SHIFT
UNIT = 60  # positions are integers in units of 2**-60
FRAC_MASK = (1 << UNIT) - 1
MAX_RATIO = 256.0  # libsamplerate's SRC_MAX_RATIO
# (index_inc, coeff_half_len) of libsamplerate 0.2.2's three sinc filters.
FILTERS = {"sinc_fastest": (128, 2462), "sinc_medium": (491, 22436), "sinc_best": (2381, 340239)}

# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
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


def converts(in_rate: int, out_rate: int) -> bool:
    """Whether libsamplerate converts ``in_rate`` to ``out_rate`` Hz: Essentia's float32 ratio
    within its 1/256 to 256."""
    return 1.0 / MAX_RATIO <= essentia_ratio(in_rate, out_rate) <= MAX_RATIO


def plan_of(in_rate: int, out_rate: int, quality: str) -> Plan:
    """libsamplerate's constants for ``in_rate -> out_rate`` Hz with the ``quality`` filter
    (``"sinc_medium"``, ``"sinc_fastest"``, ``"sinc_best"``; :class:`Plan`): Essentia's float32
    ratio, the filter's fixed-point increment and reach (``half`` zeros before the first input
    sample, ``taps`` per half), the exact period of the ratio where it has a short one.
    :class:`AudioError` for rates outside 1 Hz-384 kHz, a ratio beyond 1/256 to 256, or an
    unknown quality."""
    in_rate = check_rate(in_rate, "input sample rate")
    out_rate = check_rate(out_rate, "output sample rate")
    if quality not in FILTERS:
        raise AudioError(f"unknown resampling quality {quality!r}; "
                         f"accepted: {', '.join(QUALITIES)}")
    ratio = essentia_ratio(in_rate, out_rate)
    if not converts(in_rate, out_rate):
        raise AudioError(f"{in_rate} Hz -> {out_rate} Hz is a ratio of {ratio:.6g}; libsamplerate "
                         f"accepts ratios from 1/256 to 256")
    index_inc, half_len = FILTERS[quality]
    float_increment = index_inc * min(ratio, 1.0)
    increment = int(np.rint(float_increment * ONE))
    max_index = half_len << SHIFT
    count = (half_len + 2.0) / index_inc
    if ratio < 1.0:
        count /= ratio
    taps = max_index // increment + 1
    if taps > MAX_TAPS:
        raise AudioError(f"{in_rate} Hz -> {out_rate} Hz with {quality} needs "
                         f"{taps} filter taps per side; at most {MAX_TAPS} are "
                         "allowed (use a lower quality or a ratio closer to 1)")
    common = math.gcd(in_rate, out_rate)
    periods = -(-_MIN_PERIOD * common // out_rate)   # short periods taken several at a time
    return Plan(quality, ratio, 1.0 / ratio, increment, max_index, int(np.rint(count)) + 1,
                taps, float_increment / index_inc, float_increment,
                periods * out_rate // common, periods * in_rate // common)


MAX_PERIOD = 1024              # longer periods go through the per-output kernel
_MIN_PERIOD = 64                # outputs per step of the polyphase kernel's rows, at least

# ------------------------------------------------------------------------ positions


def _positions(step: float, x0: float, count: int) -> tuple[np.ndarray, np.ndarray, float]:
    """libsamplerate's output positions from a fractional start ``x0``.

    Returns ``(x [count] float64, advance [count] int64, x_next)``: output ``k`` sits at
    fraction ``x[k]`` past input sample ``sum(advance[:k])`` (relative to the start), and
    ``x_next`` is the fraction after the last step.
    """
    if count == 0:
        return np.zeros(0), np.zeros(0, np.int64), x0
    whole, frac = split_step(step)
    start = int(np.ldexp(x0, UNIT))
    closed = step_closed_form(step) and start % _ulp_units(step) == 0
    if not closed and not _additions_exact(_fractions(start, frac, min(count, _PROBE_STEPS))
                                           + np.uint64(frac), whole):
        return _positions_sequential(step, x0, count)   # the first steps' sums round already
    units = _fractions(start, frac, count + 1)
    summed = units[:-1] + np.uint64(frac)                    # x_k + frac(step), < 2**61
    carry = (summed >> np.uint64(UNIT)).astype(np.int64)
    if closed or _additions_exact(summed[_PROBE_STEPS:], whole):   # the first steps: checked above
        x = np.ldexp(units[:-1].astype(np.float64), -UNIT)
        return x, whole + carry, float(np.ldexp(float(units[-1]), -UNIT))
    return _positions_sequential(step, x0, count)


def positions(step: float, x0: float, count: int) -> tuple[np.ndarray, np.ndarray, float]:
    """libsamplerate's output positions from a fractional start ``x0``: ``(x [count] float64,
    advance [count] int64, x_next)`` (:func:`_positions`), for the converters that walk them
    (the sinc filters', the linear interpolator's)."""
    return _positions(step, x0, count)


def _fractions(start: int, frac: int, count: int) -> np.ndarray:
    """``frac(x0 + k * step)`` in units of 2**-60 for ``k < count``, uint64."""
    k = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (np.uint64(start) + k * np.uint64(frac)) & np.uint64(FRAC_MASK)


def _ulp_units(step: float) -> int:
    """``step``'s ulp in units of 2**-60 (a whole number for ratios <= 256)."""
    return 1 << (math.frexp(step)[1] - 53 + UNIT)


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
    high = whole + (summed >> np.uint64(UNIT)).astype(np.int64)
    _, exponent = np.frexp(summed.astype(np.float64))
    _, high_exponent = np.frexp(high.astype(np.float64))
    bits = np.where(high > 0, UNIT + high_exponent, exponent)
    need = np.maximum(bits - 53, 0).astype(np.uint64)
    low = summed & ((np.uint64(1) << need) - np.uint64(1))
    return bool(np.all((low == 0) | (summed == 0)))


_SCAN_STEPS = 1 << 16
# Steps checked before all the others: where the sums round from the start (22.05 kHz -> 16 kHz:
# ~1 step in 5), this saves each of a stream's pushes a check of _SCAN_STEPS steps (~1 ms)
_PROBE_STEPS = 1 << 10


@functools.lru_cache(maxsize=1)
def _sequential_scan():
    def body(x, step):
        y = x + step
        # fmod_one: y - lrint(y), lrint rounds half to even
        rem = y - jnp.round(y)
        rem = jnp.where(rem < 0.0, rem + 1.0, rem)
        return rem, (rem, jnp.round(y - rem).astype(jnp.int64))

    def run(x0, step):
        # four steps per loop iteration: 0.031 s instead of 0.044 for 207 s at 22.05 kHz (Zen 4),
        # the same positions bit for bit
        last, (xs, adv) = jax.lax.scan(lambda x, _: body(x, step), x0, None, length=_SCAN_STEPS,
                                       unroll=4)
        return last, xs, adv

    return jax.jit(run)


# The recurrence runs in Python (~0.6 ms per 1,000 steps) until a process has run this many
# steps so, then in the compiled scan (~1.2 ms a call of _SCAN_STEPS, ~0.2 s to compile): a
# short clip does not pay the compilation, a long stream of small pushes does once.
_PYTHON_STEPS = 1 << 15
_PYTHON_ALWAYS = 1 << 10  # steps that cost less in Python than one call of the scan
_python_steps_left = _PYTHON_STEPS  # shared by threads: a race only moves the switch a little


def _positions_sequential(step: float, x0: float, count: int):
    """The C recurrence in float64: ``_SCAN_STEPS`` outputs per compiled call, or in Python
    (whose floats are the same doubles) for short runs and a process's first
    ``_PYTHON_STEPS`` steps."""
    global _python_steps_left
    if count <= _PYTHON_ALWAYS:
        return _positions_python(step, x0, count)
    if count <= _python_steps_left:
        _python_steps_left -= count
        return _positions_python(step, x0, count)
    xs, advances, x = [np.array([x0])], [], x0
    # eagerly, also while resample_jax is traced: positions depend on the rates, not the samples
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        run = _sequential_scan()
        for _ in range(-(-count // _SCAN_STEPS)):
            # NumPy scalars: jnp.asarray would dispatch a conversion each (~0.2 ms)
            x, xk, adv = run(np.float64(x), np.float64(step))
            xs.append(np.asarray(xk))
            advances.append(np.asarray(adv))
    x_all = np.concatenate(xs)
    return x_all[:count], np.concatenate(advances)[:count], float(x_all[count])


def _positions_python(step: float, x0: float, count: int):
    """:func:`_positions_sequential`'s recurrence, one double operation at a time; ``round`` is
    ``lrint``'s round half to even."""
    xs, advances, x = [x0], [], x0
    for _ in range(count):
        y = x + step
        x = y - round(y)
        if x < 0.0:
            x += 1.0
        advances.append(round(y - x))
        xs.append(x)
    return np.array(xs[:count]), np.array(advances, np.int64), xs[count]


def filter_starts(plan: Plan, x: np.ndarray) -> np.ndarray:
    """Fixed-point filter start ``lrint(x * float_increment * 4096)`` per output, int32."""
    scaled = x * (plan.float_increment * float(ONE))   # a power of two: the same product
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int32)


def normalise(plan: Plan, centre: np.ndarray, start: np.ndarray):
    """Map ``start == increment`` (``x`` within half a fixed-point step of 1) to
    ``(centre + 1, 0)``.

    libsamplerate's left loop then runs one tap further, onto ``centre + 1`` at filter
    index 0, and its right loop stops before it: the same taps as a window centred on
    the next input sample with start 0, which is what the kernel computes.
    """
    wrap = start == plan.increment
    return centre + wrap, np.where(wrap, 0, start).astype(np.int32)


def _terminated(plan: Plan, centre: np.ndarray, x: np.ndarray, n_input: int) -> np.ndarray:
    """libsamplerate's end test per output (``centre`` counts the leading zeros), as Essentia
    2.1b6's build of it reads the test, ``>=``. libsamplerate 0.2 (python-samplerate's) reads
    ``>``, and makes one output more where the sum meets the end exactly (:func:`meets_end`)."""
    terminate = plan.step + 1e-20
    return (centre.astype(np.float64) + x) + terminate >= float(plan.half + n_input)


def unflushed_count(plan: Plan, n_input: int) -> int:
    """How many outputs libsamplerate gives from ``n_input`` samples before a call with
    ``end_of_input``: output ``k`` waits until more than ``half`` samples follow its window's
    centre ``c_k`` in the buffer, so those with ``c_k < n_input - half`` (the rest need the zeros
    the end brings). Essentia's streaming ``Resample`` never makes that call when its input
    comes in whole 4096-sample chunks (:func:`jaxmir.audio.monoloader_cut`)."""
    threshold = n_input - plan.half
    if threshold <= 0:
        return 0
    centres, _ = exact_positions(plan, 0, 0.0, output_count(plan, n_input))
    return int(np.searchsorted(centres, threshold, side="left"))


def meets_end(step: float, n_input: int) -> bool:
    """Whether ``n_input / step`` is whole: then libsamplerate's output ``n_input / step - 1``
    meets its end test with equality, and Essentia's build stops before it where
    python-samplerate's makes it, exactly: power-of-two ratios (8 kHz -> 16 kHz at every length,
    32 kHz -> 16 kHz at even ones) and whole steps. Others meet it through the rounding of the
    positions' sums (16 -> 48 kHz): :func:`essentia_count` tells them."""
    return (fractions.Fraction(n_input) / fractions.Fraction(step)).denominator == 1


def essentia_count(plan: Plan, n_input: int, made: int) -> int:
    """How many of the ``made`` outputs python-samplerate gives for ``n_input`` samples Essentia's
    build of libsamplerate gives: one fewer where the last meets the end test exactly.

    That needs ``n_input / step`` whole, up to the rounding of the positions' sums: exactly so
    at power-of-two ratios (:func:`meets_end`), and within it at ratios such as 3 (16 -> 48 kHz),
    whose step 1/3 is not exact but whose sums land on the end all the same; there the
    positions are walked as libsamplerate walks them (:func:`output_taps`, linear in the length,
    run only for such ratios and lengths)."""
    if made == 0:
        return 0
    if meets_end(plan.step, n_input):
        return made - 1
    quotient = n_input / plan.step
    if abs(quotient - round(quotient)) > 1e-6:
        return made
    return min(made, output_taps(plan, n_input)[0].shape[0])


def output_count(plan: Plan, n_input: int) -> int:
    """The buffer python-samplerate allocates: ``ceil(n * ratio)``."""
    return int(math.ceil(float(n_input) * plan.ratio))


def step_closed_form(step: float) -> bool:
    """Whether every addition ``x + step`` of libsamplerate's position recurrence is exact for
    ``x`` on the sequence (multiples of step's ulp in [0, 1)): so when the sums cannot leave
    step's binade. Then output k's position is ``x0 + k * step`` split into whole and fraction."""
    _, exponent = math.frexp(step)
    return step >= 1.0 and step + 1.0 <= math.ldexp(1.0, exponent)


def split_step(step: float) -> tuple[int, int]:
    """``step`` as its whole part and its fraction in units of 2**-60 (exact: step's ulp is
    >= 2**-60 for ratios <= 256)."""
    whole = math.floor(step)
    return whole, int(np.ldexp(step - whole, UNIT))


def walk(plan: Plan, centre: int, units: int, k: int) -> tuple[int, int]:
    """Centre and fraction (units of 2**-60) of the output ``k`` steps after ``(centre, units)``,
    on the closed form (exact Python integers)."""
    whole, frac = split_step(plan.step)
    total = units + k * frac
    return centre + k * whole + (total >> UNIT), total & FRAC_MASK


def first_true(predicate, low: int, high: int) -> int:
    """The first ``k`` in ``[low, high)`` where a monotone ``predicate`` holds, else ``high``."""
    while low < high:
        middle = (low + high) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle + 1
    return low


def end_test(plan: Plan, centre: int, units: int, n_input: int) -> bool:
    """libsamplerate's end test for the output centred on input sample ``centre``."""
    x = float(np.ldexp(float(units), -UNIT))
    return bool(_terminated(plan, np.array([plan.half + centre]), np.array([x]), n_input)[0])


def fixed_point(plan: Plan, centre: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Outputs' positions in fixed-point units, int64: ``centre * increment`` plus the filter
    start ``lrint(x * float_increment * 4096)`` (the closed-form kernel computes the same)."""
    positions = centre.astype(np.int64)       # a copy: in place from here (3.3 M outputs: 26 MB)
    positions *= plan.increment
    positions += filter_starts(plan, x)
    return positions


def exact_positions(plan: Plan, centre: int, x0: float,
                    count: int) -> tuple[np.ndarray, np.ndarray]:
    """Window centres (input index from ``x[0]``) and fractions of ``count`` outputs from the
    one at ``(centre, x0)``, by libsamplerate's recurrence (:func:`_positions`)."""
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    frac, advance, _ = _positions(plan.step, x0, count)
    centres = np.empty(count, np.int64)
    centres[0] = centre
    np.cumsum(advance[:-1], out=centres[1:])
    centres[1:] += centre
    return centres, frac


def output_taps(plan: Plan, n_input: int) -> tuple[np.ndarray, np.ndarray]:
    """Window centres (in a signal with ``taps`` leading zeros) and filter starts of the
    outputs libsamplerate makes from ``n_input`` samples in one call, ``[k]`` each."""
    count = output_count(plan, n_input)
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    base, frac = exact_positions(plan, 0, 0.0, count)
    count = until_end(plan, base, frac, n_input)
    return normalise(plan, plan.taps + base[:count], filter_starts(plan, frac[:count]))


def until_end(plan: Plan, centre: np.ndarray, frac: np.ndarray, n_input: int) -> int:
    """How many of these outputs come before libsamplerate's end test first stops one.

    Consecutive outputs' positions ``centre + frac`` grow by ``step`` (>= 1/256 input samples,
    far above the rounding of their float64 sum), so the test is monotone: a binary search
    reads ~22 of 3.3 M outputs (207 s at 16 kHz) instead of all.
    """
    def ended(k: int) -> bool:
        return bool(_terminated(plan, plan.half + centre[k:k + 1], frac[k:k + 1], n_input)[0])
    return first_true(ended, 0, centre.shape[0])
