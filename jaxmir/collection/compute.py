"""The compute interface of a collection run: decoded audio in, per-patch arrays out.

Two functions, kept narrow so that another engine (patches of many files
packed into fixed-size batches, sharded over ``jax.devices()``) can replace
:func:`analyze_stream` without touching inputs, outputs or the engines:

* :func:`decode` runs in a worker (process, thread or Ray task): read a file
  and resample it to 16-kHz mono. It needs no model.
* :func:`analyze_stream` runs where the model lives: it takes
  :class:`Decoded` items and yields ``(item, outputs or error)`` as results
  are ready, in any order; it may hold several items in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from typing import Iterable, Iterator

import numpy as np

from jaxmir.collection.inputs import Source, examine
from jaxmir.errors import AudioError, JaxmirError
from jaxmir.frontends import SAMPLE_RATE



@dataclasses.dataclass(frozen=True)
class Options:
    """What to compute for each file (the patch options of ``Model.predict``).

    ``output`` is a name ``Model.apply`` accepts (``"predictions"`` for tags,
    ``"embeddings"`` or a layer for embeddings).
    """

    output: str = "predictions"
    patch_hop: int | None = None
    last_patch: str = "discard"
    pad: str | None = None
    resampler: str = "essentia"
    decoder: str = "essentia"
    strict: bool = False


@dataclasses.dataclass
class Decoded:
    """A file after decoding: ``audio`` float32 ``[n_samples]`` at 16 kHz, or the error that stopped it.

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


@contextlib.contextmanager
def _reading(path: str, before: Source) -> Iterator[list[str]]:
    """Around reading ``path``: collects damaged-audio warnings (the list yielded) and, after,
    raises when the file changed or vanished while it was being read."""
    from jaxmir.decode import DamagedAudioWarning

    damage: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DamagedAudioWarning)
        yield damage
    damage.extend(str(w.message) for w in caught if issubclass(w.category, DamagedAudioWarning))
    if examine(path) != before:
        raise AudioError(f"{path}: changed while it was being read (size or modification "
                         "time); it will be read again on the next run")


def decode(path: str, resampler: str = "essentia", decoder: str = "essentia",
           strict: bool = False) -> Decoded:
    """Read ``path`` as 16-kHz mono; a file that changes or vanishes while it is read is an error.

    A damaged or truncated file is decoded as far as it goes and its problem
    kept as ``warning`` (with ``strict``, it is an error instead).
    """
    before = examine(path)
    try:
        with _reading(path, before) as damage:
            audio = read_16k(path, resampler, decoder, strict)
    except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
        return Decoded(before, None, error_message(path, err))
    return Decoded(before, audio, warning=" ".join(damage) or None)


def read_16k(path: str, resampler: str = "essentia", decoder: str = "essentia",
             strict: bool = False) -> np.ndarray:
    """A file as float32 mono at 16 kHz, ``[n_samples]``, decoded and resampled block by block.

    Only the 16-kHz signal is ever whole in memory (a 2-hour file: 460 MB),
    never the file's samples at their own rate; the numbers are those of
    :func:`jaxmir.load_audio` (the resamplers keep their state between blocks).
    """
    from jaxmir.audio import load_audio
    from jaxmir.decode import MODES, iter_blocks
    from jaxmir.stream import BLOCK_FRAMES, MonoInput, Resampling

    if decoder not in MODES:  # soundfile: whole-file reads, as load_audio does them
        return load_audio(path, SAMPLE_RATE, resampler=resampler, decoder=decoder, strict=strict)
    pieces = []
    with iter_blocks(path, BLOCK_FRAMES, decoder, strict) as blocks:
        downmix = MonoInput(blocks.sample_rate)
        resampling = Resampling(blocks.sample_rate, SAMPLE_RATE, resampler)
        pieces = [resampling.push(downmix(block)) for block in blocks]
        pieces.append(resampling.close())
    audio = np.concatenate(pieces)
    if audio.size == 0:
        raise AudioError(f"{path}: contains no samples; expected at least one sample")
    return audio


def analyze(model, audio_16k: np.ndarray, options: Options) -> dict[str, np.ndarray]:
    """``{options.output: [n_patches, ...]}`` for one 16-kHz mono signal (``Model.predict``)."""
    values = model.predict(audio_16k, SAMPLE_RATE, output=options.output,
                           patch_hop=options.patch_hop, last_patch=options.last_patch,
                           pad=options.pad)
    return {options.output: np.asarray(values)}


def replicas(model) -> list:
    """The model with its variables on each local device (one replica when there is one device)."""
    import jax

    devices = jax.local_devices()
    if len(devices) == 1:
        return [model]
    return [dataclasses.replace(model, variables=jax.device_put(model.variables, device))
            for device in devices]


def _outcome(model, item: Decoded, options: Options) -> dict[str, np.ndarray] | str:
    if item.error is not None:
        return item.error
    try:
        return analyze(model, item.audio, options)
    except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
        return error_message(item.source.path, err)


def analyze_stream(model, items: Iterable[Decoded], options: Options
                   ) -> Iterator[tuple[Decoded, dict[str, np.ndarray] | str]]:
    """``(item, outputs)`` or ``(item, error message)`` for each decoded item.

    With several local devices (GPUs, or ``--xla_force_host_platform_device_count``),
    each device holds a replica of the model and takes the next file as soon as it
    is free (results then come in the order they finish); with one, file by file.
    """
    models = replicas(model)
    if len(models) == 1:
        for item in items:
            yield item, _outcome(model, item, options)
        return
    idle: queue.SimpleQueue = queue.SimpleQueue()
    for replica in models:
        idle.put(replica)

    def run(item: Decoded):
        replica = idle.get()
        try:
            return item, _outcome(replica, item, options)
        finally:
            idle.put(replica)

    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        pending: set = set()
        for item in items:
            pending.add(pool.submit(run, item))
            if len(pending) >= len(models):
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        for future in as_completed(pending):
            yield future.result()


def stream_files(model, sources: Iterable[Source], options: Options
                 ) -> Iterator[tuple[Decoded, dict[str, np.ndarray] | str]]:
    """Each file decoded block by block straight into the streaming engine, in this process.

    Memory holds a few seconds of audio and the per-patch outputs, whatever the
    file's length (a recording of hours); the outputs are :func:`analyze`'s.
    """
    from jaxmir.stream import file_stream

    for source in sources:
        path = source.path
        try:
            with _reading(path, source) as damage:
                with file_stream(model, path, options.output, decoder=options.decoder,
                                 strict=options.strict, patch_hop=options.patch_hop,
                                 last_patch=options.last_patch, pad=options.pad,
                                 resampler=options.resampler) as (stream, found):
                    parts = [patches.values[options.output] for patches in found]
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
            yield Decoded(source, error=error_message(path, err)), error_message(path, err)
            continue
        item = Decoded(source, warning=" ".join(damage) or None, seconds=stream.seconds)
        yield item, {options.output: np.concatenate(parts)}


def default_jobs(n_files: int | None = None) -> int:
    """Decoding workers by default: one per core; none for a single file (it streams instead)."""
    if n_files is not None and n_files <= 1:
        return 0
    return min(os.cpu_count() or 1, n_files or os.cpu_count() or 1)
