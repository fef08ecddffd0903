"""Ctrl-C, SIGTERM and SIGHUP on the command line: the same clean stop, noticed even where a
library swallowed it.

Python raises a signal handler's exception in whatever the main thread is running; where that is
inside FFmpeg's open of a file that blocks (a FIFO, a hung network mount), PyAV turns it into
an "Interrupted system call" error, and the stop would be taken for one file's failure.
:func:`raise_if_received` raises it again where the run can stop cleanly (between files).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import Callable, Iterator

_received: list[tuple[int, float]] = []  # (signal, time.monotonic() it came)
# A signal this soon after the first is not raised again: GNU timeout sends SIGTERM to the
# command and then to its process group, and a second raise would break the first's clean stop
# (the rows being written); one later still stops a stop that hangs.
REPEAT_S = 2.0


# The signals that stop a command cleanly: Ctrl-C; SIGTERM (timeout, Slurm, docker stop); SIGHUP
# (a closed terminal or ssh session: a run that is not under nohup, which ignores it).
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL,
             signal.SIGHUP: signal.SIG_DFL}
_NAMES = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``signum``), raised where Ctrl-C's KeyboardInterrupt would be: the same
    clean stop."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum

    @property
    def what(self) -> str:
        """What stopped the run, in words: ``"terminated (SIGTERM)"``."""
        return _NAMES.get(self.signum, f"stopped by signal {self.signum}")


def _stop(signum: int) -> KeyboardInterrupt:
    """The exception a stopping signal raises."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def is_default(kind: int) -> bool:
    """Whether signal ``kind`` meets Python's default handling, or :func:`_raise`, now: a command
    takes over only those (``nohup`` leaves SIGHUP ignored, a host program its own handlers)."""
    return signal.getsignal(kind) in (_DEFAULTS[kind], _raise)


def _raise(signum: int, frame) -> None:
    now = time.monotonic()
    repeated = bool(_received) and now - _received[0][1] < REPEAT_S
    _received.append((signum, now))
    if not repeated:
        raise _stop(signum)


def _quiet(hook: Callable) -> Callable:
    """``sys.unraisablehook`` that drops the interrupts :func:`_raise` raised where Python can only
    report them (a garbage-collection callback, JAX's among them: a signal while JAX loads
    printed "Exception ignored in: <function _xla_gc_callback>" and a traceback), since
    :func:`raise_if_received` raises them again; it passes anything else to ``hook``."""
    def report(unraisable) -> None:
        if not (_received and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            hook(unraisable)
    return report


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """The :data:`STOPPING` signals handled by :func:`_raise` where Python's defaults would be (in
    the main thread), for the block; signals received before it, or in it once it is left, are
    forgotten, and the handlers found are put back after it (a command run inside another
    program leaves its handlers as they were)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # the main thread's signals are its own: a collect() in a thread leaves them
        return
    _received.clear()
    found = {kind: signal.getsignal(kind) for kind in STOPPING}
    for kind in STOPPING:
        if is_default(kind):
            signal.signal(kind, _raise)
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet(hook)
    try:
        yield
    finally:
        for kind, handler in found.items():  # None: a handler set outside Python
            signal.signal(kind, signal.SIG_DFL if handler is None else handler)
        sys.unraisablehook = hook
        _received.clear()  # library code after the block (a training run) is not stopped by it


def raise_if_received() -> None:
    """Raise the interrupt of a signal received inside :func:`installed`, if any (its first raise
    may have been lost inside a library)."""
    if _received:
        raise _stop(_received[0][0])
