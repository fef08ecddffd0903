"""The local engine: decoding in worker threads (or processes), the model in this process,
bounded queues.

Files are decoded (read + resampled to 16 kHz) by ``jobs`` workers while the
model runs here on the files already decoded. At most ``prefetch`` decoded
files wait at any time, so memory does not grow with the collection; results
come back as files are done (a file that fails at once comes before the ones still decoding).

Workers are threads by default: FFmpeg and the resampler's compiled programs
release the GIL, and threads share this process's JAX, its compiled resampler
and its filter tables. Worker processes (``processes=True``) each import JAX
and compile for themselves (~600 MB each); what they buy is isolation: a
decoder that crashes on a file ends the run naming it (among the files being
decoded then) instead of taking the process down. They are started with
``spawn`` (forking a process that runs JAX's threads is unsafe).

Workers run at a lower scheduling priority than the model (:data:`DECODE_NICENESS`):
on a CPU the model's threads and the decoders share the cores, and the model is
the bound.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from jaxmir import interrupts
from jaxmir.atomic import deferred_interrupts
from jaxmir.collection import compute
from jaxmir.collection.compute import Decoded, Options
from jaxmir.collection.inputs import Source
from jaxmir.collection.progress import Progress
from jaxmir.collection.rows import Result
from jaxmir.errors import JaxmirError


# Niceness added to decoding workers (Linux). With equal priorities, on 2 cores, the decoders
# preempted XLA's threads in the middle of the model's matrix products, whose halves then waited
# for each other: a 59-min collection took 10% longer (Zen 5, five alternated pairs). Decoding
# still gets the cores whenever the model waits, and the prefetch queue keeps it ahead.
DECODE_NICENESS = 10


def _lower_priority() -> None:
    """Worker initializer: this thread (a process's first thread) yields to the model's threads."""
    if sys.platform.startswith("linux"):
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread,
                           os.getpriority(os.PRIO_PROCESS, thread) + DECODE_NICENESS)
        except OSError:  # pragma: no cover -- a sandbox that forbids it: same results, slower
            pass


class CollectionError(JaxmirError):
    """A run that cannot go on (a decoding worker died); what was written is kept."""


def _die_with_parent() -> None:
    """Worker initializer: on Linux, end this worker when the main process dies (even by
    SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover -- another libc
            pass
        if os.getppid() == 1:  # the parent died before prctl
            os._exit(1)


def _start_worker(cache_directory: str | None) -> None:
    """Worker initializer: die with the parent, yield to the model; compile into the parent's
    persistent cache (the resampler's programs then compile once per collection, not once per
    worker and run)."""
    _die_with_parent()
    # Ctrl-C, SIGTERM and SIGHUP reach the whole process group (a terminal, GNU timeout): the
    # main process stops the run, and ends its workers itself (:func:`_abandon`). They were
    # blocked while this process started (:func:`_starting_processes`): one that came then is
    # dropped.
    for kind in interrupts.STOPPING:
        signal.signal(kind, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupts.STOPPING)
    _lower_priority()
    if cache_directory is not None:
        from jaxmir import cache

        cache.use(Path(cache_directory))


def _died(pending: Iterable[tuple[Future, Source]], jobs: int) -> CollectionError:
    """The error of a worker process that died: it was reading one of the first ``jobs`` files of
    ``pending`` (in the order given) that did not finish, since workers take files in that order
    and hold one each; a pool fails all its unfinished files at once."""
    pending = list(pending)
    wait([future for future, _ in pending], timeout=5)  # the pool fails them one by one
    unfinished = [source.path for future, source in pending
                  if future.done() and isinstance(future.exception(), BrokenProcessPool)]
    reading = unfinished[:jobs]
    which = ("while starting" if not reading else f"while reading {reading[0]}"
             if len(reading) == 1 else
             "while reading one of " + ", ".join(reading) + " (the files being decoded then)")
    return CollectionError(f"a decoding worker died {which} (killed, out of "
                           "memory, or a script calling jaxmir.collection.collect without `if "
                           "__name__ == '__main__':`); the rows written are kept: run again to "
                           "resume, maybe with fewer --jobs")


def _decoded(future: Future, source: Source, pending: Iterable[tuple[Future, Source]],
             jobs: int) -> Decoded:
    """The file ``future`` decoded; ``pending``: the files after it, for the error of a worker
    that died (:func:`_died`)."""
    try:
        return future.result()
    except BrokenProcessPool:
        interrupts.raise_if_received()  # the workers were stopped with the run
        raise _died([(future, source), *pending], jobs) from None
    except Exception as err:  # noqa: BLE001 -- e.g. the file's result could not be sent back
        return Decoded(source, None, compute.error_message(source.path, err))


def _workers(jobs: int, processes: bool) -> Executor:
    if not processes:
        return ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="jaxmir-decode",
                                  initializer=_lower_priority)
    from jaxmir import cache

    shared = cache.in_use()
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker,
                               initargs=(None if shared is None else str(shared),))


def decode_all(sources: Sequence[Source], jobs: int, options: Options = Options(),
               prefetch: int | None = None, processes: bool = False) -> Iterator[Decoded]:
    """Decoded files in order; ``jobs`` worker threads, or processes with ``processes`` (0: decode
    here), ``prefetch`` in flight.

    ``prefetch`` defaults to ``2 * jobs``: enough to keep every worker busy while
    the consumer is slower, few enough that memory stays bounded.
    """
    if jobs <= 0:
        for source in sources:
            yield compute.decode(source.path, options.resampler, options.decoder, options.strict)
        return
    prefetch = max(prefetch or 2 * jobs, 1)
    pending: collections.deque = collections.deque()
    with _starting_processes(processes):
        pool = _workers(jobs, processes)
    try:
        for source in sources:
            try:
                with _starting_processes(processes):
                    future = pool.submit(compute.decode, source.path, options.resampler,
                                         options.decoder, options.strict)
                pending.append((future, source))
            except BrokenProcessPool:  # a worker died reading a file submitted before
                interrupts.raise_if_received()
                raise _died(pending, jobs) from None
            if len(pending) >= prefetch:
                yield _decoded(*pending.popleft(), pending, jobs)
        while pending:
            yield _decoded(*pending.popleft(), pending, jobs)
        pool.shutdown(wait=True)  # a stop in it abandons the pool (leaked semaphores, else)
    except BaseException:
        _abandon(pool)
        raise


@contextlib.contextmanager
def _starting_processes(processes: bool) -> Iterator[None]:
    """Where a process pool may start processes (made, and at a submit): a stop waits for the
    end of the block (a Ctrl-C inside the pool's start broke its shutdown with a traceback), and
    the processes started in it (workers, multiprocessing's resource tracker) begin with the
    stopping signals blocked (:func:`_start_worker` ignores them; the tracker ignores Ctrl-C
    and SIGTERM and keeps SIGHUP blocked, which ended it, with tracebacks, on a closed
    terminal)."""
    if not processes:
        yield
        return
    with deferred_interrupts():
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.STOPPING)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _abandon(pool: Executor) -> None:
    """Stop ``pool`` without waiting for the files in its workers: one may be blocked for good
    in a read (a FIFO, a hung network mount) and would hold Ctrl-C's or SIGTERM's stop."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=5)  # one stuck in the kernel (a hung network mount) stays
    # A worker killed while sending a decoded file left the pool's manager thread reading the
    # rest of it for ever (and the shutdown below waiting on that thread): with the workers'
    # ends of the results pipe gone, closing this process's end too lets that read end.
    results = getattr(getattr(pool, "_result_queue", None), "_writer", None)
    if processes and results is not None:
        results.close()
    # with its processes gone, a process pool's shutdown is quick; a thread can only be left
    pool.shutdown(wait=bool(processes), cancel_futures=True)


Analyzer = Callable[[object, Iterable[Decoded], Options], Iterator[tuple[Decoded, object]]]


def run(model, sources: Sequence[Source], options: Options, write: Callable[[Result], None],
        progress: Progress, jobs: int, analyzer: Analyzer = compute.analyze_stream,
        processes: bool = False) -> None:
    """Decode ``sources`` (``jobs`` worker threads, or processes), run ``analyzer`` (default:
    patches packed across files) and ``write`` each file's result.

    Without workers (``jobs=0``) and with the default analyzer, each file streams from disk
    through the engine (:func:`compute.stream_files`): memory does not grow with its length.
    """
    options = options.for_command("tag")
    decoded = None
    if jobs == 0 and analyzer is compute.analyze_stream:
        outcomes = compute.stream_files(model, sources, options)
    else:
        decoded = decode_all(sources, jobs, options, processes=processes)
        outcomes = analyzer(model, decoded, options)
    try:
        for item, outcome in outcomes:
            interrupts.raise_if_received()  # lost in a read it broke: not that file's failure
            result = compute.result_of(item, outcome, options.output)
            write(result)
            progress.update(result)
    finally:
        if decoded is not None:
            decoded.close()  # an interrupt in the model: the workers stop now, not when collected
