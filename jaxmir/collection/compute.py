"""The compute interface of a collection run: decoded audio in, per-patch arrays out.

Two functions, the same for every engine (local processes, Ray):

* :func:`decode` runs in a worker (process, thread or Ray task): read a file
  and resample it to 16-kHz mono. It needs no model.
* :func:`analyze_stream` runs where the model lives: it takes
  :class:`Decoded` items, packs their patches into fixed-size calls
  (:mod:`jaxmir.collection.packing`) run on every local device, and yields
  ``(item, outputs or error)`` as files complete, in any order.
"""

from __future__ import annotations

import dataclasses
import os
import queue
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from typing import Iterable, Iterator

import numpy as np

from jaxmir.audio import read_mono
from jaxmir.audio_choices import DECODE_MODES, RESAMPLERS, canonical_resampler
from jaxmir.checks import is_whole, scalar_of
from jaxmir.collection.inputs import Source, examine
from jaxmir.collection.packing import Call, Packer
from jaxmir.collection.rows import Result, check_finite
from jaxmir.errors import (AudioError, DeviceMemoryError, InputError, JaxmirError,
                           NonFiniteOutputError, ShortAudioError, damage_note)
from jaxmir.frontends import SAMPLE_RATE
from jaxmir.model import Model, check_dtype
from jaxmir.models.runner import call_step
from jaxmir.patches import LAST_PATCH_MODES, PAD_MODES
from jaxmir.stream import (audio_to_outputs, check_batch, file_batch, file_stream,
                           initial_carry)


@dataclasses.dataclass(frozen=True)
class Options:
    """What to compute for each file (the patch options of ``Model.predict``), and how.

    ``output`` is a name ``Model.apply`` accepts (``"predictions"`` for tags,
    ``"embeddings"`` or a layer for embeddings); ``None``, the default, is the
    command's own (:meth:`for_command`): the predictions for ``tag``, the
    embeddings for ``embed``. ``dtype`` ``"bfloat16"`` runs
    the model in bfloat16 (``Model.astype``; opt-in, ~1e-2 from float32 on tags).
    ``batch`` is the patches per model call (``None``: the model's,
    :func:`jaxmir.stream.file_batch`): larger calls keep a GPU busy; the
    outputs differ only by float32 summation order (~1e-7 on tags), so a resumed
    run may change it.
    """

    output: str | None = None
    patch_hop: int | None = None
    last_patch: str = "discard"
    pad: str | None = None
    resampler: str = "essentia"
    decoder: str = "essentia"
    strict: bool = False
    dtype: str = "float32"
    batch: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "dtype", check_dtype(self.dtype))  # a name, as outputs record
        object.__setattr__(self, "patch_hop", scalar_of(self.patch_hop))
        object.__setattr__(self, "resampler", canonical_resampler(self.resampler))
        if self.batch is not None:
            check_batch(self.batch)
        # refused here, once, rather than by every file of a run (and again by every rerun)
        for name, value, accepted in (("last_patch", self.last_patch, LAST_PATCH_MODES),
                                      ("pad", self.pad, PAD_MODES),
                                      ("resampler", self.resampler, RESAMPLERS),
                                      ("decoder", self.decoder, DECODE_MODES)):
            if value not in accepted:
                raise InputError(f"Options({name}={value!r}): accepted: "
                                 + ", ".join(map(repr, accepted)))
        if self.patch_hop is not None and not is_whole(self.patch_hop, 0):
            raise InputError(f"Options(patch_hop={self.patch_hop!r}): a whole number of frames "
                             ">= 0 (0: a patch)")
        if self.patch_hop is not None:  # as outputs record it (JSON takes no NumPy integer)
            object.__setattr__(self, "patch_hop", int(self.patch_hop))

    def for_command(self, command: str) -> "Options":
        """These options with ``output`` named: ``None`` becomes ``command``'s default."""
        if self.output is not None:
            return self
        default = "embeddings" if command == "embed" else "predictions"
        return dataclasses.replace(self, output=default)

    def cast(self, model: Model) -> Model:
        """``model`` in ``dtype`` (the model itself when it is already). A bfloat16 model is not
        made float32: its rounded values would be recorded as float32's."""
        if model.dtype == "bfloat16" and self.dtype != "bfloat16":
            raise InputError(f"the model's variables are bfloat16 (Model.astype), and "
                             f"Options(dtype={self.dtype!r}) would record its rows as "
                             f"{self.dtype}'s; pass Options(dtype='bfloat16'), or the {self.dtype} "
                             "model")
        return model.astype(self.dtype)


@dataclasses.dataclass
class Decoded:
    """A file after decoding: ``audio`` float32 ``[n_samples]`` at 16 kHz, or the error that stopped
    it.

    ``source`` is the file's state before it was read (what a resumed run compares).
    """

    source: Source
    audio: np.ndarray | None = None
    error: str | None = None
    warning: str | None = None  # decoded in part (damaged or truncated): what was wrong
    seconds: float | None = None  # the duration, when the audio was streamed and not kept

    @property
    def duration_s(self) -> float:
        if self.seconds is not None:
            return self.seconds
        return 0.0 if self.audio is None else self.audio.shape[0] / SAMPLE_RATE


def error_message(path: str, err: BaseException) -> str:
    """One line naming the file: jaxmir's message, or the foreign exception's type and text."""
    if isinstance(err, JaxmirError):
        message = str(err)
    elif isinstance(err, MemoryError):
        message = "out of memory"
    else:
        message = f"unexpected {type(err).__name__}: {err}"
    return message if message.startswith(path) else f"{path}: {message}"


def result_of(item: Decoded, outcome: dict | str, output: str) -> Result:
    """A file's row from what the analyzer gave: its error, or the model's ``output`` (an error
    where those hold NaN or infinity, :func:`~jaxmir.collection.rows.check_finite`)."""
    if isinstance(outcome, str):
        return Result(item.source, item.duration_s, None, outcome)
    values = outcome[output]
    try:
        check_finite(values, output)
    except NonFiniteOutputError as err:
        message = error_message(item.source.path, err)
        if item.warning:  # what was wrong with the audio is not lost with its row
            message += damage_note(item.warning, item.source.path)
        return Result(item.source, item.duration_s, None, message)
    return Result(item.source, item.duration_s, values, warning=item.warning)


def _check_unchanged(path: str, before: Source) -> None:
    """Raise when ``path`` changed or vanished since ``before`` was taken."""
    if examine(path) != before:
        raise AudioError(f"{path}: changed while it was being read (size or modification "
                         "time); it will be read again on the next run")


def decode(path: str, resampler: str = "essentia", decoder: str = "essentia",
           strict: bool = False) -> Decoded:
    """Read ``path`` as 16-kHz mono; a file that changes or vanishes while it is read is an error.

    A damaged or truncated file is decoded as far as it goes and its problem
    kept as ``warning`` (with ``strict``, it is an error instead). Safe to call
    from several threads at once: no warning filters are touched.
    """
    before = examine(path)
    damage: list[str] = []
    try:
        audio = read_mono(path, SAMPLE_RATE, resampler, decoder, strict, damage)
        _check_unchanged(path, before)
    except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
        return Decoded(before, None, error_message(path, err))
    return Decoded(before, audio, warning=" ".join(damage) or None)


def replicas(model) -> list:
    """The model with its variables on each local device (one replica when there is one device)."""
    import jax

    devices = jax.local_devices()
    if len(devices) == 1:
        return [model]
    return [dataclasses.replace(model, variables=jax.device_put(model.variables, device))
            for device in devices]


def run_call(model, packer: Packer, call: Call, taps: tuple, carry: dict | None = None
             ) -> tuple[np.ndarray, dict | None]:
    """The outputs ``[batch, ...]`` of one packed call, on the device of ``model``'s variables,
    and the carry for a run that continues it (``carry``: the one the run before left, when
    ``call`` continues it; see :func:`jaxmir.stream.audio_to_outputs`)."""
    module = packer.module(call)
    if carry is None:
        carry = initial_carry(model, module, packer.batch)
    (values,), carry = audio_to_outputs(module, taps, packer.windowing.frontend, packer.compat,
                                        call_step(model.variables, packer.batch), model.variables,
                                        call.audio, call.index, carry)
    return np.asarray(values), carry or None


# Finished calls: each with its outputs [batch, ...], or the exception that stopped it.
Finished = list[tuple[Call, "np.ndarray | Exception"]]


class _Devices:
    """Runs calls on the local devices: here with one, else each on the next idle replica.

    With one device, a run that continues the file's run before takes over the
    timbral rows that run computed for it (the carry); with several, runs of
    one file may run at once on different devices, so each computes its own.
    """

    def __init__(self, model, packer: Packer, taps: tuple):
        self.packer, self.taps = packer, taps
        self.models = replicas(model)
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        for replica in self.models:
            self.idle.put(replica)
        self.pool = ThreadPoolExecutor(len(self.models)) if len(self.models) > 1 else None
        self.running: set = set()
        self.carry: tuple[tuple, dict] | None = None  # (the owner it serves, the carry)

    def _run(self, call: Call) -> tuple[Call, np.ndarray | Exception]:
        replica = self.idle.get()
        chained = call.run and self.pool is None
        carry = None
        if chained and self.carry is not None and self.carry[0] == call.owners[0]:
            carry = self.carry[1]
        try:
            values, carry = run_call(replica, self.packer, call, self.taps, carry)
        except DeviceMemoryError:
            raise  # every call of this size would fail alike: the run stops, its rows are kept
        except Exception as err:  # noqa: BLE001 -- the call's files fail, the others go on
            return call, err
        finally:
            self.idle.put(replica)
        if chained:
            key, first = call.owners[0]
            self.carry = ((key, first + self.packer.batch), carry)
        return call, values

    def submit(self, call: Call) -> Finished:
        """Start ``call``; the calls finished meanwhile (all of them with one device)."""
        if self.pool is None:
            return [self._run(call)]
        self.running.add(self.pool.submit(self._run, call))
        if len(self.running) < len(self.models):
            return []
        done, self.running = wait(self.running, return_when=FIRST_COMPLETED)
        return [future.result() for future in done]

    def drain(self) -> Finished:
        """Every call still running, once finished."""
        done, self.running = [future.result() for future in as_completed(self.running)], set()
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass
class _File:
    """A file whose patches are being computed: its ``[n_patches, ...]`` outputs as they come."""

    item: Decoded
    n_patches: int
    values: np.ndarray | None = None
    done: int = 0


def _collect(files: dict, finished: Finished, output: str
             ) -> Iterator[tuple[Decoded, dict[str, np.ndarray] | str]]:
    """Put the rows of finished calls into their files; yield each file complete or failed."""
    for call, outcome in finished:
        for row, (key, patch) in enumerate(call.owners):
            file = files.get(key)
            if file is None:  # failed already
                continue
            if isinstance(outcome, Exception):
                del files[key]
                yield file.item, error_message(file.item.source.path, outcome)
                continue
            if file.values is None:
                file.values = np.empty((file.n_patches, *outcome.shape[1:]), outcome.dtype)
            file.values[patch] = outcome[row]
            file.done += 1
            if file.done == file.n_patches:
                del files[key]
                yield file.item, {output: file.values}


def analyze_stream(model, items: Iterable[Decoded], options: Options
                   ) -> Iterator[tuple[Decoded, dict[str, np.ndarray] | str]]:
    """``(item, outputs)`` or ``(item, error message)`` for each decoded item, as each completes.

    Patches of all the items go to the model packed in calls of ``options.batch``
    patches (default :func:`jaxmir.stream.file_batch`: 8, 32 for VGGish;
    :mod:`jaxmir.collection.packing`): two compiled programs for a whole
    collection. Each item's samples are dropped once it is cut; a file waits
    for its last patches until a pack is full, so at most ``batch`` files are
    in flight. With several local devices (GPUs, or
    ``--xla_force_host_platform_device_count``) each device holds a replica of
    the model and takes the next call as soon as it is free.
    """
    options = options.for_command("tag")
    packer = Packer(model, patch_hop=options.patch_hop, last_patch=options.last_patch,
                    pad=options.pad, batch=options.batch or file_batch(model))
    _, taps = model.resolve_outputs(options.output)
    files: dict[int, _File] = {}
    devices = _Devices(model, packer, taps)
    try:
        for key, item in enumerate(items):
            if item.error is not None:
                yield item, item.error
                continue
            try:
                n_patches, calls = packer.cut(key, item.audio)
            except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
                if isinstance(err, ShortAudioError) and item.warning:  # maybe why it is short
                    err = err.with_damage(item.warning, item.source.path)
                yield item, error_message(item.source.path, err)
                continue
            item.seconds, item.audio = item.duration_s, None  # its samples are in the calls now
            files[key] = _File(item, n_patches)
            for call in calls:
                yield from _collect(files, devices.submit(call), options.output)
        for call in packer.flush():
            yield from _collect(files, devices.submit(call), options.output)
        yield from _collect(files, devices.drain(), options.output)
    finally:
        devices.close()


def stream_files(model, sources: Iterable[Source], options: Options
                 ) -> Iterator[tuple[Decoded, dict[str, np.ndarray] | str]]:
    """Each file decoded block by block straight into the streaming engine, in this process.

    Memory holds a few seconds of audio and the per-patch outputs, whatever the
    file's length (a recording of hours); the outputs are :func:`analyze`'s.
    """
    options = options.for_command("tag")

    for source in sources:
        path = source.path
        # the version read, as a decoding worker takes it: changed since the run began, it is
        # no less whole
        source = examine(path)
        damage: list[str] = []
        stream = None
        try:
            with file_stream(model, path, options.output, decoder=options.decoder,
                             strict=options.strict, damage=damage, patch_hop=options.patch_hop,
                             last_patch=options.last_patch, pad=options.pad,
                             resampler=options.resampler, batch=options.batch
                             ) as (stream, found):
                parts = [patches.values[options.output] for patches in found]
            _check_unchanged(path, source)
        except DeviceMemoryError:
            raise  # the next file's calls would fail alike: the run stops, its rows are kept
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
            # all of it read (too short for a patch, say): its duration, as decoding workers give it
            seconds = stream.seconds if stream is not None and stream.closed else None
            message = error_message(path, err)
            yield Decoded(source, error=message, seconds=seconds), message
            continue
        item = Decoded(source, warning=" ".join(damage) or None, seconds=stream.seconds)
        yield item, {options.output: np.concatenate(parts)}


def default_jobs(n_files: int | None = None) -> int:
    """Decoding workers by default: one per core; none for a single file (it streams instead)."""
    if n_files is not None and n_files <= 1:
        return 0
    return min(os.cpu_count() or 1, n_files or os.cpu_count() or 1)
