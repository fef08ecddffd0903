"""The array rules jaxmir's code is written for, whatever a caller sets for its own.

jaxmir broadcasts as NumPy does (a bias ``[C]`` added to ``[batch, ..., C]``) and promotes
dtypes by JAX's standard lattice. A program that sets ``jax_numpy_rank_promotion="raise"`` or
``jax_numpy_dtype_promotion="strict"`` for its own code would otherwise see jaxmir's models,
front-ends, resampler and trainer fail inside. :func:`standard_promotion` runs a function
under JAX's defaults for both; they are trace-time settings, so compiled programs are unchanged.
Every float32 product asks for :data:`PRECISION`, so that neither a GPU's TF32 nor a
program's ``jax_default_matmul_precision`` rounds it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import jax

Function = TypeVar("Function", bound=Callable)
# Every matrix product and convolution at full float32 precision: on GPUs JAX's default lets
# float32 products run in TF32 (10-bit mantissas), far from TensorFlow's numbers. (On CPU it is
# what runs anyway.) bfloat16 is opt-in, through the dtype of the variables (Model.astype).
PRECISION = jax.lax.Precision.HIGHEST


@contextlib.contextmanager
def default_rules() -> Iterator[None]:
    """JAX's default rank and dtype promotion while the block runs (this thread only)."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


def standard_promotion(function: Function) -> Function:
    """``function`` run under :func:`default_rules`."""
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with default_rules():
            return function(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
