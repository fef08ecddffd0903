"""The ``jaxmir`` command: tag audio files, extract embeddings, describe a model.

    jaxmir tag song.mp3 other.wav --model mtt-musicnn --top 5
    jaxmir tag *.wav --format json --output tags.json
    jaxmir embed *.mp3 --output embeddings/ --layer penultimate
    jaxmir info msd-musicnn
    arecord -f S16_LE -r 44100 -c 2 | jaxmir stream --rate 44100 --channels 2
    jaxmir tag song.wav --plot taggram.png

Files are decoded block by block and go through the streaming engine
(:mod:`jaxmir.stream`): memory does not grow with a file's length unless
per-patch values are asked for (``--format json``, ``--plot``, ``embed``
without ``--average``).

A file that cannot be used (unreadable, a directory, too short, NaN samples,
...) is reported on stderr, naming it; the others are still processed, and the
exit status is 1. Compiled programs are kept in JAX's persistent cache
(``$JAXMIR_CACHE_DIR/jax``, default ``~/.cache/jaxmir/jax``; ``--no-cache`` or
``JAXMIR_NO_CACHE=1`` turns it off) so that the next run starts faster.
"""

from __future__ import annotations

import argparse
import csv
import errno
import io
import json
import math
import os
import signal
import stat
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from jaxmir import catalog, interrupts
from jaxmir.arguments import add_reading_options, whole_number
from jaxmir.atomic import deferred_interrupts
from jaxmir.audio_choices import RESAMPLERS, canonical_resampler
from jaxmir.console import (StandardOutputError, columns, printable, utf8_text, write_line,
                            write_whole_line)
from jaxmir.errors import (AudioError, InputError, JaxmirError, JaxmirWarning, OptionError,
                           ShortAudioError)

if TYPE_CHECKING:  # the module itself loads what a command needs when it runs
    from jaxmir.pcm import ByteReader

FORMATS = ("text", "json", "csv")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer its reader left
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM
EXIT_HUNG_UP = 129  # 128 + SIGHUP
_STOPPED = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED,
            signal.SIGHUP: EXIT_HUNG_UP}


# -- set-up ---------------------------------------------------------------------------------
def _enable_cache(disabled: bool) -> None:
    if disabled:
        return
    from jaxmir import cache

    cache.enable(cache.cache_dir(), _warn)


def _show_warnings_as_lines() -> None:
    """jaxmir's own warnings (a damaged file, a head on another backbone) as one ``jaxmir:
    warning:`` line, not Python's form."""


    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, JaxmirWarning):
            _warn(str(message))
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _warn(message: str) -> None:
    print(f"jaxmir: warning: {printable(message)}", file=sys.stderr)


def _error(message: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(f"jaxmir: error: {printable(message)}", file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(f"jaxmir: error: {printable(message)}", file=sys.stderr)
    except (OSError, ValueError):  # standard error gone (a closed terminal, /dev/full)
        pass


def _load_model(name: str | None, backbone: str | None = None, audio: bool = True,
                reading: tuple[str, str | None] | None = None):
    """``(model, backbone)``: the model to run, an embedding head joined to ``backbone`` or to the
    one its JSON names; and that backbone (``None`` for a model that runs on audio by itself).
    ``reading``: the run's resampler and decoder, of which a head (or a fine-tuned backbone)
    trained on audio read otherwise warns."""
    import jaxmir
    from jaxmir.loading import (backbone_name, backbone_of, on_backbone, shipped_as,
                                trained_on_file, trained_reading, warn_of_another_reading)

    if backbone == "":  # an unset $BACKBONE: it was ignored, or the head's own taken
        raise jaxmir.InputError("--backbone '' names no model; give a shipped name or the path "
                                "of a .pb or .npz file")
    model = jaxmir.load(catalog.default_name() if name is None else name)
    head = model.architecture == "head"
    if not head and backbone:
        raise jaxmir.InputError(f"--backbone is for embedding heads; {model.name} is a "
                                f"{model.architecture} model that runs on audio by itself")
    if head and backbone is None and audio:
        backbone = backbone_of(model)
        if backbone:  # the usual way to run a head: a note, not a warning
            print(f"jaxmir: {printable(str(model.source))} is an embedding head; using the "
                  f"backbone its metadata names: {printable(backbone)}", file=sys.stderr)
        elif (named := backbone_name(model)) is not None and trained_on_file(model):
            raise jaxmir.InputError(
                f"{model.source} is an embedding head trained on the backbone file "
                f"'{named[:200]}' (its sha256 in the metadata), which is not beside it "
                f"({named[:200]}.npz or .pb); put it there, or give it with --backbone PATH"
                + (" (the shipped model of that name is another file: its sha256 is not the "
                   "one recorded)" if shipped_as(named) else ""))
        elif named is not None:
            raise jaxmir.InputError(
                f"{model.source} is an embedding head whose metadata names the backbone "
                f"'{named[:200]}', which is neither beside it ({named[:200]}.npz or .pb) nor a "
                "shipped model; put it there, or give it with --backbone NAME|PATH")
    if reading is not None:
        warn_of_another_reading(model, *reading)
    if not backbone:
        return model, None
    trunk = jaxmir.load(backbone)
    if reading is not None and trained_reading(trunk) != trained_reading(model):
        warn_of_another_reading(trunk, *reading)  # a fine-tuned backbone given apart
    return on_backbone(model, trunk), backbone


# -- patch options ----------------------------------------------------------------------------
def patch_hop_of(model, overlap: float | None, patch_hop: int | None) -> int | None:
    """Frames between patches from ``--overlap`` seconds or ``--patch-hop`` frames (None: the
    default, 93 for MusiCNN); either refused here when it cannot make patches, not per file."""
    from jaxmir import pipeline

    frontend = pipeline.frontend_of(model)
    size, seconds = frontend.patch_size, frontend.frame_seconds
    if patch_hop is not None:
        if patch_hop > size:
            raise OptionError(f"--patch-hop {patch_hop}: patches last {size} frames, so the hop "
                              f"is at most {size} (0: a patch, as Essentia takes it)")
        return patch_hop
    if overlap is None:
        return None
    frames = overlap / seconds  # inf from ~1.8e306 s on, as for inf itself
    hop = size - int(round(frames)) if math.isfinite(frames) else 0
    if not 0 <= overlap or hop < 1:
        raise OptionError(f"--overlap {overlap:g} s: patches last {size * seconds:.3f} s "
                          f"({size} frames), so the overlap must be at least 0 and at most "
                          f"{(size - 1) * seconds:.3f} s (patches one frame apart)")
    return hop


def _process(files: Sequence[str], work: Callable[[str], object], progress: bool,
             show: Callable[[str, object], str] | None = None) -> tuple[list, int]:
    """``work(file)`` for each file; ``([(file, result or None, error or None)], n_failed)``.

    ``show(file, result)``, if given, is printed as soon as a file is done.
    """
    from tqdm import tqdm

    results, failed = [], 0
    bar = tqdm(files, unit="file", disable=not progress or len(files) < 2 or None,
               file=sys.stderr, dynamic_ncols=True)
    for path in bar:
        try:
            result = work(path)
        except JaxmirError as err:
            message = err.on_command_line if isinstance(err, ShortAudioError) else str(err)
        except MemoryError:
            message = "out of memory"
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
            message = f"unexpected {type(err).__name__}: {err}"
        else:
            results.append((path, result, None))
            if show is not None:
                write_line(show(path, result))
            continue
        if not message.startswith(path):
            message = f"{path}: {message}"
        _error(message)
        results.append((path, None, message))
        failed += 1
    return results, failed


def _check_output_file(output: str | None, overwrite: bool) -> None:
    """``--output`` of ``jaxmir tag`` without a table must name a file that may be written:
    checked before any work, and by :func:`_emit` before the write. ``-`` is standard output; a
    pipe or a character device (``/dev/stdout``) is written through, a link's target replaced."""
    from jaxmir.atomic import LINK_LOOP, check_replaceable
    from jaxmir.collection.outputs import check_writable

    if output is None or output == "-":
        return
    folder = (f"--output {output} is a folder; jaxmir tag writes its text, JSON or CSV to one "
              "file here (a table: OUT.parquet, OUT.jsonl or OUT.csv)")
    if not output:  # names that no file system holds: the command line's fault, exit 2
        raise OptionError("--output '' names no file; give a file name")
    if output.endswith(("/", os.sep)):
        raise OptionError(folder)
    try:
        mode = os.stat(output).st_mode  # through links
    except OSError as err:
        if err.errno == errno.ELOOP:  # a link to itself, or a chain of them
            raise InputError(f"--output {output} {LINK_LOOP}") from None
        mode = None
    if mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        return  # written to, not replaced (_written_through)
    if mode is not None and stat.S_ISDIR(mode):
        raise InputError(folder)
    if mode is not None and not stat.S_ISREG(mode):
        raise InputError(f"--output {output} is not a regular file, a pipe or a character device")
    if mode is not None and not overwrite:
        raise InputError(f"--output {output} exists; give another "
                         "path, or --overwrite to replace it")
    try:
        check_writable(Path(os.path.realpath(output)).parent)  # before the work, not after it
        check_replaceable(os.path.realpath(output))
    except InputError as err:
        raise InputError(f"--output {output}: {err}") from None
    except OSError as err:  # read-only: refused at the write, after every file's work
        raise InputError(f"--output {output} cannot be written ({err.strerror or err})") from None


def _written_through(output: str) -> bool:
    """Whether ``output`` is a pipe or a character device (a terminal, ``/dev/stdout``), which
    take the text as it is written rather than a file renamed over them."""
    try:
        mode = os.stat(output).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _check_plot_name(plot: str | None, output: str | None) -> None:
    """``--plot`` names a picture file: not nothing, not standard output, not a folder, not the
    ``--output`` file."""
    if plot is None:
        return
    if plot in ("", "-") or plot.endswith(("/", os.sep)):
        raise OptionError(f"--plot {plot!r}: give the picture's file name (.png)")
    if output and os.path.abspath(plot) == os.path.abspath(output):
        raise OptionError(f"--plot {plot} is also the --output; give each its own file")


def _check_plots(paths: Iterable[Path], overwrite: bool) -> None:
    """``--plot`` pictures replace no file unless ``--overwrite``: checked before any work."""
    from jaxmir.atomic import LINK_LOOP, check_replaceable, is_link_loop
    from jaxmir.collection.outputs import check_writable

    paths = list(paths)
    loop = next((path for path in paths if is_link_loop(path)), None)
    if loop is not None:  # a picture would replace the link, a chain's other links left looping
        raise InputError(f"--plot {loop} {LINK_LOOP}")
    folder = next((path for path in paths if os.path.isdir(path)), None)
    if folder is not None:
        raise InputError(f"--plot {folder} is a folder; give the picture's file name (.png)")
    for parent in sorted({Path(os.path.realpath(path)).parent for path in paths}):
        try:
            check_writable(parent)  # before the work: it failed as the audio file's failure
        except InputError as err:
            raise InputError(f"--plot: {err}") from None
    existing = [str(path) for path in paths  # a pipe or a device is written to, not replaced
                if os.path.lexists(path) and not _written_through(str(path))]
    if existing and not overwrite:
        raise InputError(f"--plot: {existing[0]} exists"
                         + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                         + "; give another path, or --overwrite to replace it")
    for path in existing:
        try:
            check_replaceable(os.path.realpath(path))
        except OSError as err:  # read-only: refused file by file, after each file's work
            raise InputError(f"--plot {path} cannot be written ({err.strerror or err})") from None


def _emit(text: str, output: str | None, overwrite: bool = False) -> None:
    """``text`` to standard output, or to ``output`` atomically (never over a file unless asked;
    a pipe or a device is written to, as :func:`jaxmir.atomic.write_atomically` does)."""
    if output is None or output == "-":
        write_line(text)
        return
    from jaxmir.atomic import write_atomically

    _check_output_file(output, overwrite)  # again: it may have appeared while the files ran
    target = Path(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # as a table's folder is made
        # a file name that is not UTF-8 as on standard output; strict, it was a traceback
        data = utf8_text(text).encode("utf-8")
        write_atomically(target, lambda handle: handle.write(data), durable=True)
    except BrokenPipeError:  # a pipe given as --output whose reader left, as `| head` does
        raise StandardOutputError("its reader left", reader_left=True) from None
    except OSError as err:
        raise InputError(f"--output {target} cannot be written ({err.strerror or err})") from None


# -- files through the streaming engine ----------------------------------------------------------
def stream_file(model, path: str, args, hop, output: str, keep: bool) -> dict:
    """Decode ``path`` block by block through :class:`jaxmir.stream.Stream`.

    Returns ``{"seconds", "n_patches", "mean" [dim...] float64, "problem", "starts" [n],
    "values" [n, ...]}``; ``problem`` is what was wrong with a file decoded in part (damaged or
    truncated; also warned), else ``None``; the per-patch ``starts``/``values`` only when
    ``keep`` (otherwise only the mean is accumulated, so memory does not grow with the file's
    length).
    """
    import numpy as np

    from jaxmir.decode import DamagedAudioWarning
    from jaxmir.stream import file_stream

    total, starts, values, damage = None, [], [], []
    with file_stream(model, path, output, decoder=args.decoder, strict=args.strict, damage=damage,
                     patch_hop=hop, last_patch=args.last_patch, pad=args.pad,
                     resampler=args.resampler, batch=args.batch) as (stream, found):
        for patches in found:
            part = patches.values[output]
            batch_sum = part.sum(axis=0, dtype=np.float64)
            total = batch_sum if total is None else total + batch_sum
            if keep:
                starts.append(patches.start)
                values.append(part)
    for problem in damage:
        warnings.warn(problem, DamagedAudioWarning, stacklevel=2)
    result = {"seconds": stream.seconds, "n_patches": stream.n_patches,
              "mean": total / stream.n_patches, "problem": damage[0] if damage else None}
    if keep:
        result["starts"] = np.concatenate(starts)
        result["values"] = np.concatenate(values)
    return result


# -- tag ----------------------------------------------------------------------------------------
def _plot_paths(files: Sequence[str], plot: str | None) -> dict[str, Path]:
    """``--plot PATH``: PATH for one file; ``PATH-stem<suffix>`` for each of several files."""
    if plot is None:
        return {}
    target = Path(plot)
    if len(files) == 1:
        return {files[0]: target}
    from jaxmir.collection.inputs import npy_names  # unique whatever the order of the files

    stems = npy_names(os.path.abspath(path) for path in files)  # a folder's files are absolute
    return {path: target.with_name(
        f"{target.stem}-{stems[os.path.abspath(path)][:-len('.npy')].replace(os.sep, '-')}"
        f"{target.suffix or '.png'}") for path in files}


def gives_values(model) -> bool:
    """Whether ``model`` gives values, not class scores (:func:`jaxmir.spec.gives_values`)."""
    from jaxmir import spec

    return spec.gives_values(model.spec.head)


def _tag_one(model, args, hop, plots: dict[str, Path]):
    import numpy as np

    from jaxmir.collection.rows import DAMAGED, OK, check_finite

    values = gives_values(model)

    def work(path: str) -> dict:
        keep = args.format == "json" or path in plots
        found = stream_file(model, path, args, hop, "predictions", keep)
        mean = found["mean"]
        check_finite(mean, "predictions")  # a NaN mean: some patch's
        # values all, in their own order (gives_values); class scores best first, --top of them
        order = np.arange(len(mean)) if values else \
            np.argsort(-mean, kind="stable")[:args.top or len(mean)]
        result = {"file": path, "status": OK if found["problem"] is None else DAMAGED,
                  "outputs": "values" if values else "scores",
                  "duration_s": round(found["seconds"], 4), "n_patches": int(found["n_patches"]),
                  "top": [{"label": model.labels[i], "score": float(mean[i])} for i in order],
                  "mean": [float(v) for v in mean]}
        if found["problem"] is not None:
            result["warning"] = found["problem"]
        if keep:
            taggram = found["values"]
            if path in plots:
                from jaxmir import pipeline
                from jaxmir.collection.rows import as_text
                from jaxmir.plot import save_taggram

                frontend = pipeline.frontend_of(model)
                try:
                    save_taggram(plots[path], taggram, found["starts"], model.labels,
                                 frontend.patch_size * frontend.frame_seconds,
                                 title=as_text(path))  # matplotlib refuses undecodable bytes
                except OSError as err:  # a full disk: "unexpected OSError", naming no picture
                    raise InputError(f"--plot {plots[path]} cannot be written "
                                     f"({err.strerror or err})") from None
            if args.format == "json":
                result["patch_starts_s"] = [round(float(s), 4) for s in found["starts"]]
                result["taggram"] = taggram.astype(np.float32).tolist()
        return result
    return work


def text_block(path: str, result: dict) -> str:
    """musicnn's ``[file] Top3 tags:`` then `` - tag`` lines, with the mean probability."""
    width = max(columns(t["label"]) for t in result["top"])
    n = result["n_patches"]
    patches = f"{n} patch{'' if n == 1 else 'es'}"
    path = printable(path)  # a newline in its name would start a line of its own
    lines = [f"[{path}] values, mean over {patches}:" if result.get("outputs") == "values"
             else f"[{path}] top {len(result['top'])} tag{'' if len(result['top']) == 1 else 's'} "
             f"({patches}):"]
    lines += [f" - {t['label']}{' ' * (width - columns(t['label']))}  {t['score']:.4f}"
              for t in result["top"]]
    return "\n".join(lines) + "\n"


def format_text(results: list) -> str:
    return "".join(text_block(path, result) for path, result, _ in results if result is not None)


def format_json(results: list, header: dict) -> str:
    """The header, then ``"files"``: each file's result with its ``status`` (``ok``, ``damaged``:
    decoded in part, with a ``warning``; ``error``, with the ``error``), as the tables have."""
    from jaxmir.collection.rows import ERROR, recorded_text

    files = [result if result is not None else {"file": path, "status": ERROR, "error": error}
             for path, result, error in results]
    # names as UTF-8 text, as JSONL tables hold them: JSON writes a lone surrogate as an escape
    # that strict readers (pandas, pyarrow) refuse
    files = [{key: recorded_text(value) if key in ("file", "error", "warning") else value
              for key, value in entry.items()} for entry in files]
    header = {key: recorded_text(value) if isinstance(value, str) else value
              for key, value in header.items()}
    return json.dumps({**header, "files": files}, indent=1) + "\n"


def format_csv(results: list) -> str:
    """``file,rank,label,score`` rows; a regression head's values, in their own order, have no
    rank."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "rank", "label", "score"])
    for path, result, _ in results:
        ranked = result is not None and result.get("outputs") != "values"
        for rank, tag in enumerate(result["top"] if result else [], start=1):
            writer.writerow([path, rank if ranked else "", tag["label"], f"{tag['score']:.6f}"])
    return buffer.getvalue()


def _expand_each(arguments: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Folders and @lists replaced by the audio files they name; files kept as given; a file
    named several times (links, a folder and a file in it) once, where it came first, by its
    name without links where it has one (as in collections).

    An argument that names no audio file (an empty folder, a bad list) stays, with the
    reason, to be reported with the files that fail: ``(files, {argument: reason})``.
    """
    from jaxmir.collection.inputs import expand, once_each

    files, problems = [], {}
    for argument in arguments:
        if not (os.path.isdir(argument) or argument.startswith("@")):
            files.append(argument)
            continue
        try:
            files.extend(expand([argument]))
        except JaxmirError as err:
            files.append(argument)
            problems[argument] = str(err)
    return once_each(files, names_only=problems), problems


def _unless_unexpanded(work: Callable[[str], object], problems: dict[str, str]):
    """``work``, but an argument :func:`_expand_each` could not expand fails with its reason."""
    def run(file: str):
        if file in problems:
            raise InputError(problems[file])
        return work(file)

    return run


_VALUES_UNRANKED = ("the model gives values, not class scores (no sigmoid or softmax ends it: a "
                    "regression head, an embedding): all listed, in their order, not ranked")


def _warn_ignored(args, table: bool, values: bool) -> None:
    """One line per ``jaxmir tag`` option that has no effect on this run: the per-file printing
    options with a table ``--output``, the table's options without one, ``--top`` for a model that
    gives ``values`` (all listed, in their order: :func:`gives_values`)."""
    if table:
        why = f"a table --output ({args.output}) holds every label's mean"
        ignored = {"--format": (args.format != "text", why), "--top": (args.top is not None, why),
                   "--plot": (args.plot is not None, why)}
    else:
        why = "it applies to a table --output (.parquet, .jsonl, or .csv without -f csv)"
        ignored = {"--top": (values and args.top is not None, _VALUES_UNRANKED),
                   "--per-patch": (args.per_patch, "it applies to a .parquet or .jsonl --output"),
                   "--jobs": (args.jobs is not None, why), "--processes": (args.processes, why),
                   "--engine": (args.engine != "local", why),
                   "--actors": (args.actors is not None, why),
                   "--flush-every": (args.flush_every != 256, why)}
    for option, (given, reason) in ignored.items():
        if given:
            _warn(f"{option} is ignored: {reason}")


def cmd_tag(args) -> int:
    from jaxmir import pipeline
    from jaxmir.collection import commands as collection
    from jaxmir.collection.arguments import is_collection

    if args.format is None:  # -o tags.json writes JSON
        json_file = str(args.output or "").lower().endswith(".json")
        args.format = "json" if json_file else "text"
    # a collection records (and Ray's actors load) the backbone found as if it were given
    model, args.backbone = _load_model(args.model, args.backbone,
                                       reading=(args.resampler, args.decoder))
    frontend = pipeline.frontend_of(model)  # a model that does not take audio fails here, once
    hop = patch_hop_of(model, args.overlap, args.patch_hop)
    _warn_ignored(args, is_collection(args, "tag"), gives_values(model))
    args.top = 3 if args.top is None else args.top
    if is_collection(args, "tag"):
        args.writes_rows = True
        return collection.run_tag(args, model, hop)  # --bf16 casts it through the options
    dtype = collection.dtype_of(args)
    model = model.astype(dtype)
    _check_output_file(args.output, args.overwrite)
    args.files, unexpanded = _expand_each(args.files)
    stream = args.format == "text" and args.output is None
    if args.plot is not None:
        from jaxmir.plot import check_available, check_format

        check_available()  # a missing matplotlib fails here, once
        _check_plot_name(args.plot, args.output)
        check_format(args.plot)
    plots = _plot_paths(args.files, args.plot)
    _check_plots(plots.values(), args.overwrite)
    results, failed = _process(args.files,
                               _unless_unexpanded(_tag_one(model, args, hop, plots), unexpanded),
                               not args.no_progress, show=text_block if stream else None)
    if stream:
        return EXIT_FAILED if failed else EXIT_OK
    if args.format == "text":
        text = format_text(results)
    elif args.format == "csv":
        text = format_csv(results)
    else:
        size, seconds = frontend.patch_size, frontend.frame_seconds
        resolved = (hop if hop is not None else frontend.patch_hop) or size
        header = {"model": args.model or catalog.default_name(), "source": str(model.source),
                  "labels": list(model.labels), "patch_frames": size, "patch_hop_frames": resolved,
                  "patch_s": round(size * seconds, 4), "patch_hop_s": round(resolved * seconds, 4),
                  "last_patch": args.last_patch, "pad": args.pad,
                  "dtype": dtype, "resampler": args.resampler, "decoder": args.decoder}
        text = format_json(results, header)
    _emit(text, args.output, args.overwrite)
    return EXIT_FAILED if failed else EXIT_OK


# -- embed ----------------------------------------------------------------------------------------
def cmd_embed(args) -> int:
    """A collection run: resumable, atomic, never overwriting without --overwrite."""
    from jaxmir import pipeline
    from jaxmir.collection import commands as collection

    model, args.backbone = _load_model(args.model, args.backbone,
                                       reading=(args.resampler, args.decoder))
    pipeline.frontend_of(model)
    hop = patch_hop_of(model, args.overlap, args.patch_hop)
    model.resolve_output(args.layer)  # an unknown name fails here, once, listing the names
    args.writes_rows = True
    return collection.run_embed(args, model, hop)


# -- stream ---------------------------------------------------------------------------------------
def cmd_stream(args) -> int:
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP, from the start: the patches complete so far are
    written, then the command ends (130, 143, 129). Only a wait (for input, or for a reader to
    take a line) is broken off; a model call finishes."""
    interrupted = {"now": 0, "waiting": False}  # the signal received; in a read or write now

    def on_signal(signum, frame):
        interrupted["now"] = signum
        if interrupted["waiting"]:
            raise KeyboardInterrupt

    kinds = [kind for kind in interrupts.STOPPING if interrupts.is_default(kind)]
    previous = {kind: signal.signal(kind, on_signal) for kind in kinds}
    try:
        return _stream_command(args, interrupted)
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)


def _stopped_by(interrupted: dict) -> int | None:
    """The exit status for the signal ``interrupted`` records, if any."""
    return _STOPPED.get(interrupted["now"]) if interrupted["now"] else None


def _stream_command(args, interrupted: dict) -> int:
    from jaxmir.collection.commands import dtype_of
    from jaxmir.resample import MAX_MIN_OUTPUTS

    if args.resample_step is not None and args.resampler != "essentia":
        raise OptionError("--resample-step applies to Essentia's converter (--resampler "
                          f"essentia); --resampler {args.resampler} runs at every read")
    if args.resample_step is not None and args.resample_step > MAX_MIN_OUTPUTS:
        raise OptionError(f"--resample-step {args.resample_step} is more than {MAX_MIN_OUTPUTS} "
                          "samples (65 s at 16 kHz): the stream would hold that much audio before "
                          "its patches")
    model = _load_model(args.model, args.backbone,
                        reading=(args.resampler, None))[0].astype(dtype_of(args))
    hop = patch_hop_of(model, args.overlap, args.patch_hop)
    output = args.layer
    model.resolve_output(output)
    if gives_values(model) and args.top is not None and not args.all and output == "predictions":
        _warn(f"--top is ignored: {_VALUES_UNRANKED}")
    elif args.top is not None and (args.all or output != "predictions"):
        _warn("--top is ignored: " + ("--all gives every value" if args.all else
                                      f"--layer {output} gives every value of the layer"))
    args.top = 5 if args.top is None else args.top
    _check_stream_options(args)
    if args.input != "-":
        raise OptionError(f"jaxmir stream reads standard input ('-'), not {args.input!r}; "
                          f"for files use: jaxmir tag {args.input}")
    if sys.stdin is None:
        raise InputError("standard input is closed; pipe audio into jaxmir stream")
    if sys.stdin.isatty():  # it would wait in silence for audio typed in
        _warn("standard input is the terminal; pipe audio into jaxmir stream (Ctrl-D ends)")
    if interrupted["now"]:  # while the model loaded: nothing read, nothing to write
        return _stopped_by(interrupted)
    from jaxmir.pcm import ByteReader

    return _stream_stdin(model, args, hop, output, ByteReader(sys.stdin.fileno()), interrupted)


def _check_stream_options(args) -> None:
    """What the stream would refuse at its first bytes (``--rate 0``), refused before waiting
    for them: a live source may take a while to send any (the hop is checked with the model)."""
    from jaxmir.stream import check_sample_rate

    if args.rate is not None:
        try:
            check_sample_rate(args.rate)
        except AudioError as err:
            raise OptionError(f"--rate: {err}") from None


_LATER_CHUNK_WAIT_S = 0.5  # for the next bytes after a WAV stream's declared data


def _stream_stdin(model, args, hop, output: str, source: ByteReader, interrupted: dict) -> int:
    """Read, push, write lines; ``interrupted["now"]`` is set by SIGINT or SIGTERM."""
    from jaxmir.audio import check_channels
    from jaxmir.checks import check_rate
    from jaxmir.pcm import (RAW_DTYPES, WIDE_HEADS, data_chunk_after, decode_pcm, encoded_format,
                            frame_bytes, joined_format, read_wav_header)
    from jaxmir.stream import Stream

    def reading(fn, *a):
        interrupted["waiting"] = True
        try:
            return fn(*a)
        except KeyboardInterrupt:
            return None
        finally:
            interrupted["waiting"] = False

    head = reading(source.peek, 4)
    if head is None:
        return _stopped_by(interrupted)
    encoded = reading(encoded_format, source.peek)
    if encoded is None and interrupted["now"]:
        return _stopped_by(interrupted)
    remaining = declared = None
    wav = head in (b"RIFF", *WIDE_HEADS)
    raw_options = {"--rate": args.rate, "--channels": args.channels, "--dtype": args.dtype}
    if not head:
        raise InputError("standard input is empty; send a WAV stream, or raw PCM with --rate")
    if wav:
        header = reading(read_wav_header, source.read)  # a header that never comes: Ctrl-C
        if header is None:
            return _stopped_by(interrupted)
        rate, channels, dtype, remaining = header
        declared = remaining
        check_channels(channels, "standard input")  # the stream's, not an array's, error
        check_rate(rate, "standard input: the WAV header's sample rate")  # not --rate's
        for option in (name for name, value in raw_options.items() if value is not None):
            _warn(f"{option} is ignored: standard input holds a WAV stream, whose header says "
                  f"{rate} Hz, {channels} channel(s)")
    elif head == b"RIFX":
        raise InputError("standard input holds a big-endian WAV stream (a RIFX header), which "
                         "jaxmir stream does not read; send a RIFF, RF64 or BW64 WAV stream, or "
                         "raw PCM with --rate (jaxmir tag reads such files)")
    elif encoded is not None:
        raise InputError(f"standard input holds {encoded}, not raw PCM: jaxmir stream reads "
                         "a WAV stream or raw PCM (jaxmir tag reads the file; or decode it first, "
                         "ffmpeg -i FILE -f wav -)")
    else:
        if args.rate is None:
            raise InputError("raw PCM on standard input needs --rate HZ (and --channels, --dtype); "
                             "or send a WAV stream")
        rate, channels = args.rate, args.channels or 1
        dtype = RAW_DTYPES[args.dtype or "s16le"]
        joined = reading(joined_format, source.peek)
        if joined is None and interrupted["now"]:
            return _stopped_by(interrupted)
        if joined is not None:
            kind, at = joined
            _warn(f"standard input looks like {kind} joined mid-way (its frames from byte {at}), "
                  "read here as raw PCM: if it is one, its tags are of noise; decode it first "
                  "(ffmpeg -i URL -f wav -)")
    width = frame_bytes(dtype, channels)
    stream = Stream(model, rate, output, patch_hop=hop, last_patch=args.last_patch,
                    resampler=args.resampler,
                    resample_step=args.resample_step)
    write = _line_writer(model, output, args, interrupted)
    stray = b""
    while not interrupted["now"]:
        data = reading(source.some)
        if data is None or not data:
            break
        if remaining is not None:
            source.unread(data[remaining:])  # the chunks after the data
            data = data[:remaining]
            remaining -= len(data)
        data = stray + data
        whole = len(data) - len(data) % width
        stray = data[whole:]
        if whole:
            frames = decode_pcm(data[:whole], dtype, channels)
            good = _frames_before_bad(frames)  # the patches before it, however the pipe cut it
            try:
                write(stream.push_patches(frames[:good]))
                if good < len(frames):
                    stream.push_patches(frames[good:])  # raises, naming the sample
            except AudioError as err:
                if not stream.n_patches:
                    raise
                raise AudioError(f"{err}; the patches above are complete and valid") from None
        if remaining == 0:
            break
    write(stream.close_patches())
    above = "; the patches above are complete and valid" if stream.n_patches else ""
    if remaining == 0 and not interrupted["now"]:
        # after the lines, and only what comes at once: a writer may keep the pipe open after
        # the data it declared
        later = reading(data_chunk_after, lambda n: source.read(n, wait_s=_LATER_CHUNK_WAIT_S),
                        declared % 2)
        if later is not None:
            _warn(f"standard input's WAV holds another data chunk ({later} bytes) after the one "
                  f"read ({declared} bytes), left out: jaxmir tag and Essentia's loader read a "
                  "file's last data chunk")
    if stray and wav:  # a partial frame FFmpeg's WAV reading drops too
        why = "declares a data size that ends" if remaining == 0 else "stream ended"
        _warn(f"the WAV {why} in the middle of a sample frame ({len(stray)} stray byte(s) of "
              f"{width}), left out as jaxmir tag leaves it")
    elif stray and not interrupted["now"]:  # Ctrl-C may come between the bytes of a frame
        raise AudioError("standard input ended in the middle of a sample frame "
                         f"({len(stray)} stray byte(s) of {width}){above}")
    if remaining and not interrupted["now"]:
        _warn(f"standard input ended {remaining} byte(s) before the end of the data its WAV header "
              f"declares{above}")
    if stream.n_patches == 0 and not interrupted["now"]:
        seconds = stream.n_samples / 16000
        hint = "; --last-patch repeat makes one of a shorter stream" \
            if args.last_patch == "discard" and seconds > 0 else ""
        _warn(f"{seconds:.2f} s of audio made no complete patch (a patch takes "
              f"{stream.patch_size * stream.frontend.frame_seconds:.2f} s{hint})")
    return _stopped_by(interrupted) or EXIT_OK


def _frames_before_bad(frames) -> int:
    """How many of ``frames`` ``[n, channels]`` come before the first that a stream refuses:
    NaN, infinity or a sample beyond :data:`jaxmir.audio.MAX_PEAK`."""
    from jaxmir.audio import first_bad_frame

    bad = first_bad_frame(frames)
    return len(frames) if bad is None else bad


WRITE_GRACE_S = 2.0  # after a signal, for a slow reader to take the lines of the patches done


def _line_writer(model, output: str, args, interrupted: dict) -> Callable:
    """Write one JSON line per patch: ``{"start", "top": [[label, p], ...]}`` or the full vector.

    Each line goes out whole (:func:`~jaxmir.console.write_whole_line`). After a signal, the
    lines of the patches done have :data:`WRITE_GRACE_S` to go out; a reader too slow for that
    ends the writing: standard output is then pointed at /dev/null, whose writes do not wait
    (the lines the reader did not take are dropped, a line begun perhaps cut)."""
    import numpy as np

    from jaxmir.collection.rows import check_finite

    full = args.all or output != "predictions"
    top = args.top or len(model.labels)
    in_order = gives_values(model)  # all, in their own order, as tag's

    def float32(value) -> float:
        """The float32's shortest decimal: all its precision (rounding to 6 places made 1.39e-6
        1e-06), no digits beyond it."""
        return float(str(np.float32(value)))

    def write(patches) -> None:
        values = patches.values[output]
        check_finite(values, output)
        for start, value in zip(patches.start, values):
            record = {"start": round(float(start), 4)}
            if full:
                record[output] = np.vectorize(float32, otypes=[float])(value).tolist()
            else:
                order = np.arange(len(value)) if in_order else \
                    np.argsort(-value, kind="stable")[:top]
                record["top"] = [[model.labels[i], float32(value[i])] for i in order]
            if not write_whole_line(json.dumps(record), give_up_at):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return

    def give_up_at() -> float | None:
        """After a signal, the lines of the patches complete have WRITE_GRACE_S to go out whole
        (a line cut by the signal was a JSON line no reader could parse)."""
        if not interrupted["now"]:
            return None
        return interrupted.setdefault("give_up_at", time.monotonic() + WRITE_GRACE_S)
    return write


# -- info ----------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    from jaxmir.loading import (backbone_name, backbone_of, reading_options, trained_on_file,
                                trained_reading)

    model = _load_model(args.model, args.backbone, audio=False)[0]
    text = model.describe()
    if model.architecture == "head" and (named := backbone_name(model)) is not None:
        found = backbone_of(model)
        text += (f"\nbackbone (its metadata's): {named}" + (
            f", found: {found} (jaxmir info --backbone {found} describes both)" if found
            else ", not found beside it" + ("" if trained_on_file(model) else " nor shipped")))
    if reading := trained_reading(model):
        text += f"\ntrained on audio read with {reading_options(reading)}"
    _emit(text + "\n", None)
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------
class _NotAnOption(argparse.Action):
    """An option a command does not take, named so that argparse, which matches a prefix of a
    one-dash option even without abbreviations, does not take it for another (``stream -o 0.5``
    ran with ``-ov 0.5``): a usage error, ``const`` its message."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.const}")


def _backbone_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-b", "--backbone", metavar="NAME|PATH", default=None,
                        help="for an embedding head (Essentia's TensorflowPredict2D models): the "
                             "model whose embeddings it takes (default: the one its JSON names)")


def _patch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", metavar="NAME|PATH", default=None,
                        help="a shipped model (msd-musicnn, mtt-musicnn, msd-vgg, mtt-vgg), or a "
                             "path to a .pb/.npz (default: msd-musicnn)")
    _backbone_option(parser)
    hop = parser.add_mutually_exclusive_group()
    hop.add_argument("-ov", "--overlap", metavar="S", type=float, default=None,
                     help="overlap of consecutive patches in seconds (patches last 3 s for "
                          "MusiCNN/VGG); default: Essentia's hop of 93 frames (1.5 s of overlap "
                          "for MusiCNN/VGG, 0.03 s for VGGish's 0.96-s patches). (musicnn's "
                          "--overlap is the hop between patches; use --patch-hop for that)")
    hop.add_argument("--patch-hop", metavar="FRAMES", type=whole_number(0), default=None,
                     help="frames between patch starts (default 93; 0 = patch size, no overlap)")
    parser.add_argument("--last-patch", choices=("discard", "repeat"), default="discard",
                        help="frames after the last full patch: drop them (Essentia's default) "
                             "or make one more patch of them, repeated")
    parser.add_argument("--pad", choices=("zero", "repeat"), default=None,
                        help="pad audio shorter than one patch (default: report it as too short)")
    add_reading_options(parser)
    parser.add_argument("--strict", action="store_true",
                        help="a damaged or truncated file is an error (default: a warning, and "
                             "'damaged' in table outputs)")
    parser.add_argument("--bf16", action="store_true",
                        help="compute the patches in bfloat16 (opt-in, for GPUs; ~1e-2 from "
                             "float32 on tags, so no longer Essentia's numbers)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not use the persistent compilation cache")


def build_parser() -> argparse.ArgumentParser:
    from jaxmir.collection.arguments import add_collection_options  # argparse only: no JAX
    from jaxmir.pcm import RAW_DTYPES

    parser = argparse.ArgumentParser(
        prog="jaxmir", description="Essentia's MusiCNN, VGG and VGGish models in JAX: tag music, "
                                   "extract embeddings.",
        epilog="Compiled programs are cached in $JAXMIR_CACHE_DIR/jax (default "
               "~/.cache/jaxmir/jax); JAXMIR_NO_CACHE=1, or a command's --no-cache, turns that "
               "off.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    tag = commands.add_parser("tag", help="the most likely tags of audio files",
                              description="Average the model's predictions over the "
                                          "patches of each file and print the top tags.")
    tag.add_argument("files", nargs="+", metavar="PATH",
                     help="audio files (wav, flac, ogg, mp3, ...), folders (walked recursively) "
                          "or @list.txt (one path per line, relative to the list's folder)")
    _patch_options(tag)
    tag.add_argument("-n", "--top", "--topN", metavar="N", type=whole_number(0), default=None,
                     help="how many tags to list (default 3; 0 = all)")
    tag.add_argument("-f", "--format", choices=FORMATS, default=None,
                     help="text (default; json for an --output ending in .json), json (with the "
                          "per-patch taggram) or csv (file,rank,label,score; no rank for a "
                          "regression head's values)")
    tag.add_argument("-o", "--output", "--save", metavar="PATH", default=None,
                     help="write to PATH instead of standard output (- is standard output); "
                          "OUT.parquet, OUT.jsonl or "
                          "OUT.csv (without -f csv) make a resumable table, one row per file")
    tag.add_argument("--plot", metavar="PNG", default=None,
                     help="draw the taggram (tags x time) to PNG (several files: PNG-<name>.png); "
                          "needs matplotlib (pip install 'jaxmir[plot]')")
    add_collection_options(tag, reports=True)
    tag.set_defaults(func=cmd_tag)

    embed = commands.add_parser("embed", help="embeddings of audio files: .npy files or a table",
                                description="Write the chosen layer for every patch of each file "
                                            "to OUTPUT/<path>.npy (the file's path below the "
                                            "common folder, its extension replaced), shaped "
                                            "[n_patches, ...] (with "
                                            "OUTPUT/index.jsonl), or one row per file to "
                                            "OUTPUT.parquet/.jsonl. A rerun resumes.")
    embed.add_argument("files", nargs="+", metavar="PATH",
                       help="audio files, folders (walked recursively) or @list.txt")
    embed.add_argument("-o", "--output", metavar="DIR|OUT.parquet|OUT.jsonl", required=True,
                       help="a folder for .npy files, or a .parquet/.jsonl table")
    embed.add_argument("-l", "--layer", metavar="NAME", default="embeddings",
                       help="output name (default embeddings: model/dense/BiasAdd for MusiCNN, "
                            "model/vggish/embeddings for VGGish, the 50 logits for VGG, which has "
                            "one dense layer); `jaxmir info MODEL` lists them")
    _patch_options(embed)
    embed.add_argument("--average", action="store_true",
                       help="write the mean over the patches ([...] without the patch axis); "
                            "per-patch values are then not kept, so long files need little memory")
    embed.add_argument("-q", "--quiet", action="store_true", help="do not list the files written")
    add_collection_options(embed)
    embed.set_defaults(func=cmd_embed)

    live = commands.add_parser("stream", help="tag live audio from standard input, patch by patch",
                               description="Read raw PCM (--rate, --channels, --dtype) or a WAV "
                                           "stream from standard input and write one JSON line per "
                                           "patch as soon as it is complete: {\"start\": seconds, "
                                           "\"top\": [[label, p], ...]}. Ends at the end of the "
                                           "input or on Ctrl-C, SIGTERM or SIGHUP (the patches "
                                           "complete so far are written, with --last-patch repeat "
                                           "the last, partial one too; exit 130, 143 and 129).")
    live.add_argument("input", nargs="?", default="-", metavar="-", help="standard input (default)")
    live.add_argument("-o", "--output", nargs="?", action=_NotAnOption, help=argparse.SUPPRESS,
                      const="stream writes its JSON lines to standard output: redirect it "
                            "(> tags.jsonl); -ov is the patches' overlap")
    live.add_argument("-m", "--model", metavar="NAME|PATH", default=None,
                      help="a shipped model or a .pb/.npz (default: msd-musicnn)")
    _backbone_option(live)
    live.add_argument("-r", "--rate", metavar="HZ", type=int, default=None,
                      help="sample rate of raw PCM (not needed for a WAV stream)")
    live.add_argument("-c", "--channels", metavar="N", type=whole_number(1, 2), default=None,
                      help="channels of raw PCM, interleaved (default 1)")
    live.add_argument("--dtype", choices=tuple(RAW_DTYPES), default=None,
                      help="sample format of raw PCM (default s16le)")
    live.add_argument("-n", "--top", metavar="N", type=whole_number(0), default=None,
                      help="tags per line (default 5; 0 = all; the values of a model that ends "
                           "in no sigmoid or softmax, a regression head's, come all, in their own "
                           "order)")
    live.add_argument("--all", action="store_true",
                      help="the full output vector instead of the top tags")
    live.add_argument("-l", "--layer", metavar="NAME", default="predictions",
                      help="output name (default predictions; any other is written in full)")
    hop = live.add_mutually_exclusive_group()
    hop.add_argument("-ov", "--overlap", metavar="S", type=float, default=None,
                     help="overlap of consecutive patches in seconds (default: Essentia's hop "
                          "of 93 frames, 1.5 s of overlap for MusiCNN)")
    hop.add_argument("--patch-hop", metavar="FRAMES", type=whole_number(0), default=None,
                     help="frames between patch starts (default 93)")
    live.add_argument("--last-patch", choices=("discard", "repeat"), default="discard",
                      help="at the end of the input: drop the frames after the last full patch, "
                           "or make one more patch of them, repeated")
    live.add_argument("--resampler", choices=RESAMPLERS, type=canonical_resampler,
                      default="essentia",
                      help="resampling to 16 kHz (default: Essentia's converter; see tag --help)")
    live.add_argument("--resample-step", metavar="SAMPLES", type=whole_number(0), default=None,
                      help="16-kHz samples Essentia's converter waits for before it runs: a patch "
                           "comes at most this much plus a read later than it could; 0 = at once, "
                           "for more CPU time, at most 1048576 (65 s; default 2048: 128 ms); "
                           "--resampler samplerate and soxr run at every read and refuse a step; "
                           "at rates its JAX kernels do not serve (8 kHz, say) Essentia's "
                           "converter is libsamplerate, which runs at every read too, and a step "
                           "has nothing to do")
    live.add_argument("--bf16", action="store_true",
                      help="compute the patches in bfloat16 (opt-in; see tag --help)")
    live.add_argument("--no-cache", action="store_true",
                      help="do not use the persistent compilation cache")
    live.set_defaults(func=cmd_stream)

    info = commands.add_parser("info", help="describe a model",
                               description="Architecture, input, outputs, labels and parameters.")
    info.add_argument("model", metavar="MODEL", help="a shipped name or a path to a .pb/.npz")
    info.add_argument("-b", "--backbone", metavar="NAME|PATH", default=None,
                      help="for an embedding head: describe it joined to this backbone (default: "
                           "the head alone, and the backbone its JSON names)")
    info.set_defaults(func=cmd_info, no_cache=True)

    from jaxmir.train import cli as train_cli  # argparse only: optax is imported when it runs

    train_cli.add_parser(commands)
    for command in commands.choices.values():  # a command's own mistakes show its own usage
        command.set_defaults(command_parser=command)
        # an option is named whole: `stream -o 0.5` ran with -ov 0.5, `stream -o out.jsonl`
        # was "an invalid float value" (stream writes no file)
        command.allow_abbrev = False
    parser.allow_abbrev = False
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's arguments; exits with status 2 and the command's usage when wrong
    (argparse alone shows jaxmir's, not the command's, for an unknown option of a command)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        words = list(sys.argv[1:] if argv is None else argv)
        ahead = words[:words.index(args.command)] if args.command in words else []  # jaxmir's
        command = args.command_parser
        if unknown[0] in ahead:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if args.command in ("tag", "embed"):  # paths after options: `tag a.wav -n 1 b.wav`
            return argparse.Namespace(**{**vars(args), **vars(
                command.parse_intermixed_args(words[len(ahead) + 1:]))})
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"jaxmir {version('jaxmir')}"
    except Exception:  # noqa: BLE001 -- running from a checkout
        return "jaxmir (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a file or model failed, 2 usage,
    141 the reader of standard output left, 130 interrupted, 143 terminated, 129 hung up)."""
    with interrupts.installed():  # SIGTERM (timeout, Slurm, docker stop) stops as Ctrl-C does
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = None
    if sys.stderr is None:  # `2>&-`: Python's prints would fall back to standard output
        sys.stderr = open(os.devnull, "w")
    try:
        # Starting up imports JAX (~1 s): a signal then waits for the end of it, rather than
        # breaking an import with a traceback, or vanishing in JAX's garbage-collection callback.
        with deferred_interrupts():
            args = _parse(argv)
            _show_warnings_as_lines()
            _enable_cache(getattr(args, "no_cache", False))
        _check_standard_output(args)
        status = args.func(args)
        interrupts.raise_if_received()  # one a library swallowed: the run did not end on its own
        return status
    except OptionError as err:
        _error(str(err))
        return EXIT_USAGE
    except JaxmirError as err:
        _error(str(err))
        return EXIT_FAILED
    except (BrokenPipeError, StandardOutputError) as err:
        if isinstance(err, StandardOutputError) and not err.reader_left:
            _error(str(err))  # a full disk behind `> file`, say
            return EXIT_FAILED
        # the reader went away (`jaxmir stream ... | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return EXIT_BROKEN_PIPE
    except OSError as err:  # e.g. --output in a folder that cannot be written
        _error(f"{err.filename}: {err.strerror or err}" if err.filename
               else str(err.strerror or err))
        return EXIT_FAILED
    except interrupts.Terminated as stop:
        _error(stop.what + _rows_kept(args))
        return _STOPPED[stop.signum]
    except KeyboardInterrupt:
        _error("interrupted" + _rows_kept(args))
        return EXIT_INTERRUPTED


def _check_standard_output(args: argparse.Namespace) -> None:
    """Refuse a closed standard output (``>&-``) where the results go there; elsewhere (an
    ``--output`` file) its lines go nowhere. Python leaves ``sys.stdout`` None then."""
    if sys.stdout is not None:
        return
    if getattr(args, "output", None) in (None, "", "-"):
        raise InputError("standard output is closed, and the results go there"
                         + ("; give --output FILE" if args.func is cmd_tag else ""))
    sys.stdout = open(os.devnull, "w")


def entry() -> None:
    """The ``jaxmir`` command: :func:`main`, then exit with its status. After Ctrl-C or SIGTERM
    the outputs are closed; a decoding worker still blocked in a read (a FIFO, a hung network
    mount) is not waited for, as Python's exit would wait, forever."""
    status = main()
    if status in _STOPPED.values() and _stuck_workers():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # workers of processes end with this one (PR_SET_PDEATHSIG)
    _exit_on_stop()
    sys.exit(status)


def _exit_on_stop() -> None:
    """After the command: a stopping signal ends the process at once (its status) rather
    than breaking JAX's clean-up at exit with a traceback; what was printed is flushed first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    for kind in interrupts.STOPPING:
        if interrupts.is_default(kind):
            signal.signal(kind, lambda signum, frame: os._exit(_STOPPED[signum]))


def _stuck_workers(grace_s: float = 0.5) -> bool:
    """Whether collection decoders (threads or processes) are still running after ``grace_s``."""
    import multiprocessing
    import threading
    import time

    deadline = time.monotonic() + grace_s
    threads = [t for t in threading.enumerate() if t.name.startswith("jaxmir-decode")
               and not t.daemon]
    for worker in threads + multiprocessing.active_children():
        worker.join(max(0.0, deadline - time.monotonic()))
    return any(t.is_alive() for t in threads) or bool(multiprocessing.active_children())


def _rows_kept(args: argparse.Namespace | None) -> str:
    """What a stopped collection run keeps, for its last line; nothing for other commands."""
    if not getattr(args, "writes_rows", False):
        return ""
    if not os.path.exists(args.output):  # not made yet (through a link: its target, the rows')
        return "; no output was written"
    return "; the rows of the files done are kept"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
