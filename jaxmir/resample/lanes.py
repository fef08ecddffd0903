"""Where a one-shot conversion's kernel calls run side by side: lanes, one thread per core, held
to its core for life, each with a CPU device of its own XLA client whose intra-op pool is a single
thread.

XLA:CPU runs every program of a client on that client's one intra-op pool and splits each of
its operations (a gather of 32 phase-table columns, a 64 x 345 x 32 product) across all of the
pool's threads. Two threads each running the kernel's calls on the default client therefore
split tens of thousands of ~10-us operations between two contending programs: 207 s at
44.1 kHz took 43-51 ms of wall and ~85 ms of CPU on the two cores of a Zen 5, where one core
alone spends 63-67 ms. A client made in a thread held to one core sizes its pool to one
thread, and a synchronous client runs its programs in the calling thread, so each lane's calls
run whole on its core: 33-38 ms, as two processes held to one core each would run them.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import numpy as np
from jaxlib import xla_client

MAX_LANES = 8  # a client (and a compiled kernel) per lane: more would cost more than it gains


class Lanes(NamedTuple):
    """Threads, each held to its core from its start and calling its own device
    (:func:`lane_device`)."""

    threads: ThreadPoolExecutor
    count: int


_this_lane = threading.local()  # a lane thread's device
_made: list[Lanes | None] = []  # the process's lanes, once made
_making = threading.Lock()


def lanes() -> Lanes | None:
    """The process's lanes, made at the first call: one per core the calling thread may use (at
    most :data:`MAX_LANES`; Linux keeps an affinity per thread, so a first caller held to one
    core makes none); ``None`` on one core. Collections' decoding threads ask at once."""
    with _making:
        if not _made:
            _made.append(_new_lanes())
        return _made[0]


def forget_lanes() -> None:
    """Make new lanes at the next :func:`lanes` (those made stay with whoever holds them)."""
    with _making:
        _made.clear()


def _forget_in_child() -> None:
    """A forked child has none of the lanes' threads, and its copy of the lock may be held by a
    thread it does not have either."""
    global _making
    _making = threading.Lock()
    _made.clear()


def _new_lanes() -> Lanes | None:
    cores = sorted(os.sched_getaffinity(0))[:MAX_LANES]
    if len(cores) < 2:
        return None
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for core in cores:
        free.put(core)
    # the backend asked here: an initializer's error would break the lanes for good
    own_devices = jax.default_backend() == "cpu"
    threads = ThreadPoolExecutor(len(cores), thread_name_prefix="jaxmir-resample",
                                 initializer=_enter_lane, initargs=(free, own_devices))
    return Lanes(threads, len(cores))


def _enter_lane(free: queue.SimpleQueue[int], own_devices: bool) -> None:
    """A new lane thread: held to the next free core, with its device where ``own_devices`` (the
    default backend is the CPU; elsewhere, and where the core is no longer the process's, the
    default device)."""
    _this_lane.device = None
    try:
        os.sched_setaffinity(0, {free.get_nowait()})
    except OSError:
        return
    if own_devices:
        _this_lane.device = single_core_device()


def lane_device() -> jax.Device | None:
    """The calling lane thread's device; ``None`` (the default device) outside the lanes or where a
    lane has none of its own."""
    return getattr(_this_lane, "device", None)


def single_core_device() -> jax.Device | None:
    """The CPU device of a new synchronous XLA client, whose intra-op pool has as many threads as
    the calling thread has cores (one in a lane); ``None`` where jaxlib cannot make one or JAX
    will not run a program of this module's kind on it (a JAX whose ``jit`` takes devices of
    its own clients only): the default device then serves, with the same outputs."""
    try:
        device = xla_client.make_cpu_client(asynchronous=False).local_devices()[0]
        with jax.enable_x64(True):  # as the kernel runs: int64 operands, a committed table
            moved = _probe(jax.device_put(np.arange(3, dtype=np.int64), device))
            if moved.devices() != {device} or np.asarray(moved).tolist() != [1, 2, 3]:
                return None
        return device
    except Exception:  # noqa: BLE001  (a jaxlib without this API, a JAX refusing the device)
        return None


@jax.jit
def _probe(x):
    """A program that any device the lanes call must run (compiled once per device)."""
    return x + 1


os.register_at_fork(after_in_child=_forget_in_child)
