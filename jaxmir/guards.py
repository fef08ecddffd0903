"""Objects that carry state from call to call (a stream, a resampler) take one call at a time.

Their calls read and then update that state (samples held back, the next patch, a filter's
position) with the GIL released in between, while JAX or NumPy computes; two threads feeding
one object interleaved those steps, and samples were lost or made twice without a word. A
second call while one runs is refused instead: each thread gets its own object.
"""

from __future__ import annotations

import threading

from jaxmir.errors import InputError


class OneCallAtATime:
    """A context manager that raises :class:`~jaxmir.errors.InputError` when entered while it is
    held (by another thread, or by a call it is inside of); ``what`` names the object and how to
    get another one, for the message."""

    def __init__(self, what: str):
        self._lock = threading.Lock()
        self._what = what

    def __enter__(self) -> "OneCallAtATime":
        if not self._lock.acquire(blocking=False):
            raise InputError(f"{self._what} takes one call at a time, from one thread: another "
                             "call is running; give each thread its own")
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
