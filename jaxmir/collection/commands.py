"""``jaxmir tag|embed PATH... --output OUT``: the collection commands and their Python API.

:func:`run_tag` / :func:`run_embed` run a parsed command with a loaded model (its options:
:mod:`jaxmir.collection.arguments`); :func:`collect` is the same from Python.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from jaxmir import catalog
from jaxmir.atomic import check_replaceable
from jaxmir.checks import is_whole
from jaxmir.collection import compute, inputs, local, resume
from jaxmir.collection.compute import Options, default_jobs
from jaxmir.collection.outputs import (INDEX, check_csv, check_writable, exclusive, followed,
                                      kind_of, open_output)
from jaxmir.collection.progress import Progress, Tally
from jaxmir.collection.rows import (OVERWRITE, Layout, Result, identity, model_fields,
                                    same_outputs)
from jaxmir.console import printable
from jaxmir.errors import InputError, JaxmirWarning

if TYPE_CHECKING:  # loading a model imports JAX; the command line's parser does not
    from jaxmir.model import Model

EXIT_OK, EXIT_FAILED = 0, 1


class IgnoredSettingWarning(JaxmirWarning):
    """A setting of :func:`collect` that has no effect with its output or engine."""


def model_name(args: argparse.Namespace) -> str:
    """The ``--model`` given, or the default model's name."""
    return args.model or catalog.default_name()


def collect(model: Model, paths: str | bytes | os.PathLike | Sequence[str | bytes | os.PathLike],
            output: str | os.PathLike, *, command: str = "tag", options: Options | None = None,
            name: str | None = None, backbone: str | None = None, jobs: int | None = None,
            processes: bool = False, engine: str = "local", actors: int | None = None,
            per_patch: bool = False, overwrite: bool = False,
            flush_rows: int = 256, progress: bool = True,
            analyzer: local.Analyzer | None = None,
            on_result: Callable[[Result, str | None], None] | None = None,
            average: bool = False) -> Tally:
    """Analyse the audio files ``paths`` name (a file, folder or ``@list``, or a sequence of them)
    into ``output``.

    Args:
      model: a loaded :class:`jaxmir.Model` (the Ray engine loads ``name`` in its actors).
      paths: audio files, folders (walked recursively) and ``@list.txt`` files; a file named
        several times is analysed once.
      output: ``.parquet`` (a folder of parts), ``.jsonl``, ``.csv`` or a folder of ``.npy``;
        resumed when it exists (the files done are skipped, the failed ones retried).
      command: ``"tag"`` (a column per label) or ``"embed"`` (an ``embedding`` column).
      options: the output name and patch options of ``Model.predict``, the dtype
        (``"bfloat16"`` casts ``model``) and the patches per call (default: ``Options()``;
        an ``output`` left unnamed is the predictions for ``tag``, the embeddings for
        ``embed``).
      name, backbone: the model's name (default: ``model.name``, a shipped model's name as the
        command line records it, else its file) and backbone, recorded
        in the output; the Ray engine's actors load ``jaxmir.load(name, backbone=backbone)``.
      jobs: decoding workers (default one per core; 0 = in this thread).
      processes: the workers are processes, not threads (see :mod:`jaxmir.collection.local`);
        they are spawned, so a script calling ``collect`` with it needs
        ``if __name__ == "__main__":`` around its top level.
      engine: ``"local"`` or ``"ray"`` (the cluster ``$RAY_ADDRESS`` names, a local one
        when unset; :mod:`jaxmir.collection.ray_engine`); ``actors``: its model actors.
      per_patch: rows also hold every patch's values (``patches``).
      overwrite: start ``output`` over instead of resuming it.
      flush_rows: Parquet rows per part file (at least 1; a part is also written every 60 s).
      progress: a progress bar on standard error. A failed or damaged file's line
        (``jaxmir: error: ...``, ``jaxmir: warning: ...``) goes there in either case; the
        rows hold the same messages (``status``, ``error``).
      analyzer: replaces :func:`jaxmir.collection.compute.analyze_stream`.
      on_result: ``on_result(result, where)`` after each file's row is written
        (``where``: the ``.npy`` written, else None).
      average: a folder of ``.npy`` holds each file's mean over patches instead of every patch.

    Returns:
      the :class:`Tally` (files ok, failed, skipped, audio seconds, wall time).

    Raises:
      InputError: an output that cannot be written or holds another model's
        results; a write that fails midway (e.g. a full disk) says so, and
        every row written before it is kept.

    Warns:
      IgnoredSettingWarning: a setting that has no effect with this output or engine.
      JaxmirWarning: a file done in an earlier run that cannot be read now (its row is kept).
    """
    if not hasattr(model, "resolve_outputs"):  # a name or path: the Ray engine's own is name=
        raise InputError(f"collect takes a loaded model (jaxmir.load({model!r})), not "
                         f"{type(model).__name__} {model!r}; the model's name goes to name=")
    if name is None:
        name, backbone = _names_of(model, backbone)
    output = os.fspath(output)
    if jobs is not None and not is_whole(jobs, 0):
        raise InputError(f"jobs={jobs!r}: expected a whole number >= 0 (0: decode in this thread)")
    if not is_whole(flush_rows, 1):  # it was clamped to 1 without a word (0, -5, 2.5)
        raise InputError(f"flush_rows={flush_rows!r}: expected a whole number >= 1 (Parquet "
                         "rows per part file)")
    if actors is not None and not is_whole(actors, 1):
        raise InputError(f"actors={actors!r}: expected a whole number >= 1 (the Ray engine's "
                         "model actors; None: one per GPU, or one on a cluster without GPUs)")
    if command not in ("tag", "embed"):
        raise InputError(f"unknown command {command!r}; expected 'tag' or 'embed'")
    options = (options or Options()).for_command(command)
    if command == "tag" and options.output != "predictions":  # a column per label
        raise InputError(f"command='tag' writes the predictions, a column per label; "
                         f"Options({options.output!r}) goes with command='embed'")
    if options.patch_hop is not None:  # refused once, not by every file (and every rerun)
        from jaxmir import pipeline
        from jaxmir.patches import patch_starts

        patch_starts(0, pipeline.frontend_of(model).patch_size, options.patch_hop)
    if engine == "ray":  # the actors load the model by its name
        from jaxmir.collection import ray_engine

        ray_engine.import_ray()  # Ray missing: said before any output is made
        ray_engine.check_reloadable(model, name, backbone)
    model = options.cast(model)
    kind = kind_of(output, command)  # of the name given: a link's target may be named otherwise
    output = followed(output)
    fields = identity(model_fields(name, backbone), model, command, options)
    if command == "embed" and kind == "npy":  # a table holds the mean anyway
        fields["average"] = bool(average)
    layout = Layout(command, fields, tuple(model.labels) if command == "tag" else (), per_patch,
                    average, options.strict, same_outputs(model, options.output))
    if engine not in ("local", "ray"):
        raise InputError(f"unknown engine {engine!r}; expected local or ray")
    for line in ignored_settings(kind, _KEYWORDS, engine=engine, average=average,
                                 per_patch=per_patch, flush_rows=flush_rows, actors=actors,
                                 processes=processes, jobs=jobs):
        warnings.warn(line, IgnoredSettingWarning, stacklevel=2)
    if kind == "csv":  # before the lock and the output's folder are made
        check_csv(output, layout)
    sources = [inputs.examine(p) for p in inputs.expand(paths, output, kind != "npy")]
    with exclusive(output):
        try:  # a read-only table: refused before Ray's cluster is joined
            work = engine == "ray" and _has_work(output, layout, sources, kind, overwrite)
        except OSError as err:
            raise _unwritable(output, err) from None
        if work:
            ray_engine.connect()
        try:
            writer = open_output(output, layout, sources, overwrite=overwrite,
                                 flush_rows=flush_rows, kind=kind)
        except OSError as err:  # a read-only table; a Parquet part over a file-size limit
            raise _unwritable(output, err) from None
        todo = resume.to_do(sources, writer.done)
        tally = Tally(total=len(sources), skipped=len(sources) - len(todo))
        bar = Progress(tally, progress)
        for source in resume.unreachable_done(sources, writer.done):
            warnings.warn(f"{source.path}: cannot be read now; its row from an earlier run is "
                          "kept", JaxmirWarning, stacklevel=2)
        gone = resume.gone_from_folders([path for path, _, _ in writer.done] + [*writer.failed],
                                        inputs.folders_named(paths), {s.path: s for s in sources})
        if gone:
            which = (f"{gone[0]}, done or failed in an earlier run, is no longer in the folders "
                     "named; its row is kept" if len(gone) == 1 else
                     f"{len(gone)} files done or failed in an earlier run, e.g. {gone[0]}, are no "
                     "longer in the folders named; their rows are kept")
            warnings.warn(f"{which}: {OVERWRITE} starts the output over", JaxmirWarning,
                          stacklevel=2)

        def write(result: Result) -> None:
            try:
                where = writer.write(result)
            except OSError as err:
                raise _OutputFailed(err) from None
            if on_result is not None:
                on_result(result, where)

        try:
            if engine == "ray":
                ray_engine.run(name, backbone, todo, options, layout, write, bar, actors)
            else:
                workers = default_jobs(len(todo)) if jobs is None else jobs
                local.run(model, todo, options, write, bar, workers,
                          analyzer or compute.analyze_stream, processes=processes)
            try:
                writer.close()
            except OSError as err:
                raise _OutputFailed(err) from None
        except _OutputFailed as failed:
            # the output's own write failed (a full disk): what it held unwritten is lost; any
            # other OSError (standard error's reader left, a callback's) keeps the rows done
            writer.abandon()
            err = failed.error
            # NumPy reports a short write with neither errno nor strerror: "N requested and
            # M written"
            reason = err.strerror or (f"{err} (a short write: is the disk full?)"
                                      if err.errno is None
                                      else str(err))
            if err.errno in (errno.EACCES, errno.EPERM):  # a read-only array: again, it fails
                raise _unwritable(output, err) from None
            raise InputError(f"cannot write {output}{_which(output, err)}: {reason}; every row "
                             f"written before is kept ({writer.rows_written} by this run): run "
                             "the same command again to resume") from None
        except BaseException:
            writer.close()  # e.g. Ctrl-C: the rows of the files done are kept
            raise
        finally:
            tally.end()
            bar.close()
    return tally


class _OutputFailed(Exception):
    """An ``OSError`` of the output's writer, told apart from the others a run may meet."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _names_of(model: Model, backbone: str | None) -> tuple[str, str | None]:
    """How the command line names ``model`` (and its backbone): a shipped model by its name, a
    file by its path; a head loaded on a backbone as its head's file and the backbone."""
    head, under = model.metadata.get("head"), model.metadata.get("backbone")
    if not (head and under):
        return str(model.name), backbone
    return str(head), backbone or catalog.name_of(str(under)) or str(under)


def _unwritable(output: str, err: OSError) -> InputError:
    """The error of an output that cannot be written, naming the file in it that failed."""
    return InputError(f"cannot write {output}{_which(output, err)}: {err.strerror or err}")


def _which(output: str, err: OSError) -> str:
    """`` (FILE)``: the file in ``output`` (a folder) that ``err`` is about, if another."""
    named = err.filename and os.path.abspath(os.fsdecode(err.filename)) != os.path.abspath(output)
    return f" ({err.filename})" if named else ""


def _has_work(output: str, layout: Layout, sources: list, kind: str, overwrite: bool) -> bool:
    """Whether a run has files to analyse into ``output``, known before anything is written: Ray's
    cluster unreachable is said before an output is made or resumed (which drops the rows of the
    files to redo), and a run with nothing left to do joins no cluster (~20 s)."""
    if not os.path.exists(output):
        return True
    if overwrite:  # what it will replace or remove, read-only: refused now
        if os.path.isdir(output):  # its arrays or parts are removed from it
            check_writable(Path(output), own_table=kind == "parquet")
        index = os.path.join(output, INDEX) if kind == "npy" else output
        if kind != "parquet" and os.path.isfile(index):
            check_replaceable(os.path.realpath(index))
        return True
    probe = open_output(output, layout, sources, kind=kind, dry=True)
    return bool(resume.to_do(sources, probe.done))


def dtype_of(args: argparse.Namespace) -> str:
    """The model's dtype a command asks for: ``--bf16`` or float32."""
    return "bfloat16" if getattr(args, "bf16", False) else "float32"


def _options(args: argparse.Namespace, output: str, hop: int | None) -> Options:
    return Options(output=output, patch_hop=hop, last_patch=args.last_patch, pad=args.pad,
                   resampler=args.resampler, decoder=getattr(args, "decoder", "essentia"),
                   strict=getattr(args, "strict", False),
                   dtype=dtype_of(args),
                   batch=getattr(args, "batch", None))


# How each setting that may go unused is spelt on the command line and in Python.
_FLAGS = {"average": "--average", "per_patch": "--per-patch", "flush_rows": "--flush-every",
          "actors": "--actors", "processes": "--processes", "jobs": "--jobs",
          "jobs 0": "--jobs 0", "ray": "--engine ray"}
_KEYWORDS = {"average": "average=True", "per_patch": "per_patch=True", "flush_rows": "flush_rows",
             "actors": "actors", "processes": "processes=True", "jobs": "jobs",
             "jobs 0": "jobs=0", "ray": "engine='ray'"}


def ignored_settings(kind: str, spelling: dict[str, str], *, engine: str, average: bool,
                     per_patch: bool, flush_rows: int, actors: int | None, processes: bool,
                     jobs: int | None) -> list[str]:
    """One sentence per collection setting that has no effect with this kind of output
    (``"parquet"``, ``"jsonl"``, ``"csv"``, ``"npy"``) and engine, each named as ``spelling``
    (:data:`_FLAGS` or :data:`_KEYWORDS`) spells it."""
    say = spelling
    ignored = {
        "average": average and kind != "npy"
        and "a table holds the mean over patches already",
        "per_patch": per_patch and kind == "npy"
        and f"a folder of .npy keeps every patch (without {say['average']})",
        "flush_rows": flush_rows != 256 and kind != "parquet"
        and "lines and arrays are written one file at a time",
        "actors": actors is not None and engine != "ray"
        and f"it sizes the model pool of {say['ray']}",
        "processes": processes and (f"{say['ray']} decodes in Ray's CPU tasks" if engine == "ray"
                                    else jobs == 0 and f"{say['jobs 0']} decodes in this process"),
        "jobs": jobs is not None and engine == "ray"
        and f"{say['ray']} decodes in Ray's CPU tasks, as many as the cluster runs",
    }
    return [f"{say[setting]} is ignored: {why}" for setting, why in ignored.items() if why]


def _warn_ignored(args: argparse.Namespace, kind: str) -> None:
    """One line per collection option that has no effect with this kind of output."""
    for line in ignored_settings(kind, _FLAGS, engine=args.engine,
                                 average=getattr(args, "average", False),
                                 per_patch=args.per_patch, flush_rows=args.flush_every,
                                 actors=args.actors, processes=args.processes, jobs=args.jobs):
        print(f"jaxmir: warning: {line}", file=sys.stderr)


def _run(args: argparse.Namespace, model, command: str, output: str, hop: int | None,
         on_result=None) -> int:
    kind = kind_of(args.output, command)
    _warn_ignored(args, kind)
    try:
        with warnings.catch_warnings():  # said above in the command line's own spelling
            warnings.simplefilter("ignore", IgnoredSettingWarning)
            tally = collect(model, args.files, args.output, command=command,
                            options=_options(args, output, hop), name=model_name(args),
                            backbone=args.backbone, jobs=args.jobs, processes=args.processes,
                            engine=args.engine, actors=args.actors, per_patch=args.per_patch,
                            overwrite=args.overwrite, flush_rows=args.flush_every,
                            progress=not args.no_progress, on_result=on_result,
                            average=getattr(args, "average", False))
    finally:
        _shut_ray_down()
    try:
        print(f"jaxmir: {printable(args.output)}: {tally.summary()}", file=sys.stderr)
    except (OSError, ValueError):  # standard error gone (/dev/full, a closed terminal): the
        pass  # rows are written, and the exit status says how the files went
    return EXIT_FAILED if tally.failed else EXIT_OK


def _shut_ray_down() -> None:
    """End the command's Ray session here, Ctrl-C held until it is done: left to Ray's exit
    handler, a Ctrl-C in its 1-3 s printed a traceback and left Ray's agents running."""
    ray = sys.modules.get("ray")
    if ray is not None and hasattr(ray, "is_initialized") and ray.is_initialized():
        from jaxmir.atomic import deferred_interrupts

        with deferred_interrupts():
            ray.shutdown()


def run_tag(args: argparse.Namespace, model: Model, hop: int | None) -> int:
    """``jaxmir tag PATH... -o OUT.parquet|.jsonl|.csv``: one row of mean tag scores per file."""
    return _run(args, model, "tag", "predictions", hop)


def run_embed(args: argparse.Namespace, model: Model, hop: int | None) -> int:
    """``jaxmir embed PATH... -o DIR|OUT.parquet|OUT.jsonl``: embeddings of every file."""
    def show(result: Result, where: str | None) -> None:
        if where is not None:
            from jaxmir.console import write_line

            shape = result.values.shape[1:] if getattr(args, "average", False) \
                else result.values.shape
            write_line(f"{printable(result.source.path)} -> {printable(str(where))} "
                       f"{list(shape)}")

    announce = kind_of(args.output, "embed") == "npy" and not args.quiet
    return _run(args, model, "embed", args.layer, hop, on_result=show if announce else None)

