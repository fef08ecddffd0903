"""``jaxmir train-head``: train a head on a backbone's embeddings and export it.

    jaxmir train-head DATA --backbone msd-musicnn --output my_head --folds 5 --plot

``add_parser(subparsers)`` adds the subcommand to jaxmir's argument parser;
``run(args)`` carries it out and returns the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

from jaxmir.arguments import add_reading_options, whole_number
from jaxmir.train.smoothing import METHODS


def _folds(text: str) -> int:
    value = whole_number(0)(text)
    if value == 1:
        raise argparse.ArgumentTypeError("expected 0 (no cross-validation) or 2 or more, got 1")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train-head`` to an ``argparse`` subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "train-head", help="train a classifier/regressor head on embeddings and export it",
        description="Train a dense(100)-ReLU-dense head on per-patch embeddings (MTG's recipe) "
                    "and write NAME.pb + NAME.json (Essentia's TensorflowPredict2D) and NAME.npz.")
    parser.add_argument("data", metavar="DATA",
                        help="a folder with one subfolder per class, or a CSV/Parquet "
                             "with a 'path' column and a 'label' column (';' between "
                             "labels: multi-label) or numeric columns (regression)")
    parser.add_argument("-b", "--backbone", metavar="MODEL", default="msd-musicnn",
                        help="shipped name or .pb/.npz (default %(default)s)")
    parser.add_argument("-l", "--layer", metavar="NAME", default="embeddings",
                        help="the backbone output used as features (default: its embeddings, "
                             "MusiCNN's model/dense/BiasAdd, VGGish's 128-d layer)")
    parser.add_argument("-o", "--output", metavar="NAME", required=True,
                        help="writes NAME.pb, NAME.json, NAME.npz")
    parser.add_argument("--folds", metavar="K", type=_folds, default=0,
                        help="k-fold cross-validation first (k>=2)")
    parser.add_argument("--plot", action="store_true",
                        help="with --folds: NAME-confusion.png (needs matplotlib)")
    parser.add_argument("--label-smoothing", choices=METHODS, default="none",
                        help="label distribution learning: knn (MFCC summary) or lmnn (pooled "
                             "MFCCs + LMNN)")
    parser.add_argument("--smoothing-k", metavar="K", type=whole_number(1), default=None,
                        help="neighbours for label smoothing (default 10)")
    parser.add_argument("--epochs", metavar="N", type=whole_number(1), default=150,
                        help="(default %(default)s)")
    parser.add_argument("--patience", metavar="N", type=whole_number(1), default=75,
                        help="epochs since the last halving that did not improve on the best "
                             "validation cost before halving the rate (default %(default)s)")
    parser.add_argument("--learning-rate", metavar="RATE", type=_positive, default=1e-3,
                        help="Adam's (default %(default)s)")
    parser.add_argument("--batch-size", metavar="N", type=whole_number(1), default=32,
                        help="(default %(default)s)")
    parser.add_argument("--seed", metavar="N", type=whole_number(0, 2**32 - 1), default=0,
                        help="(default %(default)s)")
    parser.add_argument("--cache", metavar="FOLDER", default=None, help="embedding cache folder "
                        "(default $JAXMIR_CACHE_DIR/embeddings or ~/.cache/jaxmir/embeddings)")
    parser.add_argument("--no-embedding-cache", action="store_true",
                        help="compute every embedding, and keep none on disk")
    add_reading_options(parser)  # as the head will read audio where it is deployed
    parser.add_argument("--resume", metavar="HEAD", default=None,
                        help="a head (.pb/.npz) to start from")
    parser.add_argument("--finetune", action="store_true",
                        help="then train backbone and head together (writes NAME-backbone.npz)")
    parser.add_argument("--finetune-steps", metavar="N", type=whole_number(1), default=None,
                        help="steps of --finetune (default 100; batches of 8 patches, Adam at "
                             "1e-5 for the backbone and 1e-3 for the head, whatever "
                             "--learning-rate and --batch-size set for the head alone)")
    parser.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                        help="overwrite existing output files (tag's and embed's --overwrite; "
                             "--force is the same here)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not use the persistent compilation cache (of compiled "
                             "programs; the embeddings' is --no-embedding-cache)")
    parser.set_defaults(func=run)
    return parser


def _say(message: str) -> None:
    from jaxmir.console import printable

    print(printable(message), file=sys.stderr)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Every warning in the block, each time, as one ``jaxmir: warning:`` line."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest: _say(f"jaxmir: warning: {message}")
        yield


def table_column_clash(classes) -> list[str]:
    """The class names a collection's Parquet or CSV table already has as columns
    (``patches`` with ``--per-patch``)."""
    from jaxmir.collection.outputs import CSV_COLUMNS, PARQUET_COLUMNS

    return sorted(set(classes) & (set(CSV_COLUMNS) | set(PARQUET_COLUMNS) | {"patches"}))


def confusion_output(output: str) -> Path:
    """``NAME-confusion.png``, the picture ``--plot`` draws beside the head ``NAME``."""
    from jaxmir.train import export

    return export.beside(output, "-confusion.png")


def planned_outputs(args: argparse.Namespace) -> list[Path]:
    """The files a ``train-head`` run writes: the head's three, the fine-tuned backbone, the
    confusion picture."""
    from jaxmir.train import export
    from jaxmir.train.finetune import backbone_output

    planned = list(export.output_paths(args.output).values())
    if args.finetune:
        planned.append(backbone_output(args.output))
    if args.plot:
        planned.append(confusion_output(args.output))
    return planned


def _check_plot_has_a_matrix(data: str) -> None:
    """``--plot`` draws the confusion matrix of a single-label classifier: refused, before any
    audio is read, for multi-label and regression data (the table is read twice; it is small)."""
    from jaxmir.errors import InputError
    from jaxmir.train.data import load_dataset

    task = load_dataset(data).task
    if task != "single":
        raise InputError(f"--plot draws the confusion matrix of a classifier of one class per "
                         f"track; {data} is {'multi-label' if task == 'multi' else task} data, "
                         "whose head has none")


def run(args: argparse.Namespace) -> int:
    """Carry out ``train-head``; 0 on success, 1 on a jaxmir error (printed), 2 on an option's."""
    from jaxmir.console import write_line
    from jaxmir.errors import JaxmirError, OptionError
    from jaxmir.train import export, plot
    from jaxmir.train.fit import TrainConfig
    from jaxmir.train.recipe import fit_head
    from jaxmir.train.smoothing import SmoothingConfig

    smoothing = SmoothingConfig(args.label_smoothing)
    if args.smoothing_k is not None:
        smoothing = SmoothingConfig(args.label_smoothing, k=args.smoothing_k)
    for option, value in (("DATA", args.data), ("--cache", args.cache)):
        if value == "":  # Path("") is the current folder
            raise OptionError(f"{option} '' names no folder or file; give one")
    cache = False if args.no_embedding_cache else (args.cache or True)
    drafts: list[Path] = []  # folders of pictures drawn before the head's files landed
    try:
        config = TrainConfig(epochs=args.epochs, patience=args.patience,
                             learning_rate=args.learning_rate, batch_size=args.batch_size,
                             seed=args.seed)
        if args.plot and not args.folds:
            raise OptionError("--plot draws the cross-validation confusion matrix: add --folds")
        if args.finetune_steps is not None and not args.finetune:  # it was ignored, unsaid
            raise OptionError("--finetune-steps sets fine-tuning's steps: add --finetune")
        if args.smoothing_k is not None and args.label_smoothing == "none":
            raise OptionError("--smoothing-k sets label smoothing's neighbours: add "
                              "--label-smoothing knn or lmnn")
        if args.plot:
            plot.require_matplotlib()
        if not args.overwrite:  # every file this run would write, before any audio is read
            export.refuse_existing(planned_outputs(args))
        export.refuse_folders(planned_outputs(args))
        export.check_output_folder(args.output)
        if args.plot:
            _check_plot_has_a_matrix(args.data)

        def with_head(validation, classes) -> dict[Path, Path]:
            """The confusion picture, drawn before the head's files land and landing with them
            (drawn after, a signal between the two left a head without it, which a rerun then
            refused to replace)."""
            if not args.plot or validation is None:
                return {}
            picture = confusion_output(args.output)
            picture.parent.mkdir(parents=True, exist_ok=True)
            drafts.append(Path(tempfile.mkdtemp(dir=picture.parent, prefix=".tmp-picture-")))
            drawn = drafts[-1] / picture.name
            with _warnings_as_lines():  # matplotlib's too (a glyph its fonts lack)
                plot.confusion_picture(validation.confusion, classes, drawn)
            return {drawn: picture}

        with _warnings_as_lines():
            result = fit_head(args.data, args.backbone, args.layer,
                              None if args.finetune else args.output, folds=args.folds,
                              config=config, smoothing=smoothing, cache=cache,
                              resampler=args.resampler, decoder=args.decoder, resume=args.resume,
                              overwrite=args.overwrite, log=_say, progress=not args.no_progress,
                              with_head=None if args.finetune else with_head)
        if args.finetune:
            from jaxmir.train.finetune import FinetuneConfig, finetune_and_export
            from jaxmir.train.recipe import dataset_entry

            entry = dataset_entry(str(args.data), result.dataset, result.cross_validation,
                                  args.folds, result.smoothing, result.resampler, result.decoder)
            steps = FinetuneConfig.steps if args.finetune_steps is None else args.finetune_steps
            result.paths = finetune_and_export(
                result, args.backbone, args.layer, args.output, steps, args.seed, args.overwrite,
                entry, also=with_head(result.cross_validation, result.dataset.classes))
    except JaxmirError as err:
        _say(f"jaxmir: error: {err}")
        return 2 if isinstance(err, OptionError) else 1  # the command line's fault, or a file's
    finally:
        for draft in drafts:  # empty once its picture has landed
            shutil.rmtree(draft, ignore_errors=True)
    validation = result.cross_validation
    if validation is not None:
        for name, (mean, std) in validation.summary.items():
            write_line(f"{args.folds}-fold {name}: {mean:.3f} ± {std:.3f}" if mean == mean else
                       f"{args.folds}-fold {name}: undefined in every fold (too few tracks each)")
    clash = table_column_clash(result.dataset.classes)
    if clash:
        _say(f"jaxmir: warning: the classes {clash} are also columns of jaxmir's Parquet and CSV "
             "tables, which will refuse this head's tags (JSONL nests them); rename them to tag "
             "into those")
    write_line(f"{len(result.dataset)} tracks ({len(result.failures)} skipped), "
               f"{result.seconds_per_epoch * 1e3:.1f} ms per epoch")
    for path in (result.paths or {}).values():
        write_line(f"wrote {path}")
    if args.plot and validation is not None:
        write_line(f"wrote {confusion_output(args.output)}")
    return 0
