"""Checks of the numbers users pass: whole counts and sample rates, one rule each.

A whole number is a Python or NumPy integer, never a bool (``True`` is no count of
anything) nor a float that happens to be whole (``1.5`` and ``2.0`` alike are refused
where a count is asked for). A sample rate is more lenient: ``44100.0`` and a 0-d array
holding a whole number of Hz are the rate they hold, since audio libraries return rates
as floats and arrays.
"""

from __future__ import annotations

import decimal
import math
import numbers
from typing import Callable

import numpy as np

from jaxmir.errors import AudioError, InputError

# The rates jaxmir's converter takes, Hz (Essentia's MonoLoader loads files at any rate
# libsamplerate converts, 1 kHz and 768 kHz among them); a conversion also needs
# libsamplerate's ratio limits.
MIN_RATE = 1
MAX_RATE = 384_000


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_whole(value, least: int = 0, most: int | None = None) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) from ``least`` to ``most``
    (no upper bound when ``None``)."""
    return _is_integer(value) and value >= least and (most is None or value <= most)


def scalar_of(value):
    """``value``, or the NumPy scalar a 0-d NumPy array holds (``librosa.time_to_frames(1.0,
    ...)`` returns one): checked as a count then, as the number it is."""
    return value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value


def is_real(value) -> bool:
    """Whether ``value`` is a finite real number (Python or NumPy, not a bool)."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(value)
    except (OverflowError, TypeError):  # 10**400: no float holds it
        return False


def whole_fields(config, least: dict[str, int]) -> None:
    """Check each named field of the frozen dataclass ``config`` is a whole number of at least
    its bound, and store it as a Python ``int`` (a NumPy one wraps: ``np.uint8(255) + 1`` epochs
    is 0); :class:`InputError` naming the class and the field."""
    for name, bound in least.items():
        value = getattr(config, name)
        if not is_whole(value, bound):
            raise InputError(f"{type(config).__name__} {name} = {value!r}; expected a whole "
                             f"number >= {bound}")
        object.__setattr__(config, name, int(value))


def real_fields(config, rules: dict[str, tuple[Callable[[float], bool], str]]) -> None:
    """Check each named field of the frozen dataclass ``config`` is a finite real number that
    its rule's test accepts, and store it as a Python ``float``; :class:`InputError` naming the
    class, the field and the rule's words (``"a positive number"``)."""
    for name, (accepts, expected) in rules.items():
        value = getattr(config, name)
        if not (is_real(value) and accepts(value)):
            raise InputError(f"{type(config).__name__} {name} = {value!r}; expected {expected}")
        object.__setattr__(config, name, float(value))


def is_floating(dtype) -> bool:
    """Whether ``dtype`` holds floating-point numbers: NumPy's, and JAX's ``bfloat16``
    (ml_dtypes', which NumPy does not count among its floating types)."""
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def check_rate(rate, what: str) -> int:
    """``rate`` as an int of Hz, or :class:`AudioError` naming it ``what`` (a rate that is not a
    whole number of Hz, or outside :data:`MIN_RATE`-:data:`MAX_RATE`); a 0-d array (NumPy,
    JAX) counts as its value."""
    if getattr(rate, "ndim", None) == 0 and not isinstance(rate, np.generic):
        try:
            rate = rate.item()
        except Exception:  # noqa: BLE001 -- a traced value (under jax.jit)
            raise AudioError(f"{what} is traced (an argument of jax.jit or vmap); give it as a "
                             "Python number, a static argument") from None
    whole = _is_integer(rate) or (isinstance(rate, (float, np.floating)) and math.isfinite(rate)
                                  and rate == int(rate))
    if not whole:
        raise AudioError(f"{what} {rate!r} is not a whole number of Hz; accepted: "
                         f"{MIN_RATE}-{MAX_RATE} Hz")
    if not MIN_RATE <= rate <= MAX_RATE:
        # 1e300 Hz was written with its 301 digits; Decimal rounds where float would overflow
        rate = int(rate)  # np.int64(-2**63) has no abs in int64
        shown = str(rate) if abs(rate) < 10 ** 12 else \
            f"{decimal.Decimal(rate):.2e}".replace("e+", "e")
        raise AudioError(f"{what} {shown} Hz is out of range; accepted: {MIN_RATE}-{MAX_RATE} Hz")
    return int(rate)
