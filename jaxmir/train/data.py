"""Labelled audio for training heads: a folder of class folders, or a CSV/Parquet table.

* ``DATA/<class>/<file>``: one class per file (single-label, softmax).
* a table with a ``path`` column and a ``label`` column: one class per row (numbers too:
  class ids), or
  a ``;``-separated list of classes (multi-label, sigmoid); in Parquet, a
  ``list<string>`` label column is multi-label too, its items taken as they are.
* a table with a ``path`` column and numeric columns: regression (identity),
  one output per numeric column.

Relative paths in a table are relative to the table's folder; each file may be
listed once (a repeated file could land in both the training and the test folds).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmir import lazy
from jaxmir.collection.inputs import audio_files, file_key
from jaxmir.decode import AUDIO_EXTENSIONS
from jaxmir.errors import InputError, JaxmirWarning
from jaxmir.labels import check_label_text

TASKS = ("single", "multi", "regression")
ACTIVATION = {"single": "softmax", "multi": "sigmoid", "regression": "identity"}
MIN_FILES_PER_CLASS = 2
# How far a single-label target row may sum from 1. float32 rounding of a row of C
# probabilities is below C * 2**-24 (under 1e-3 up to ~16,000 classes), and distributions
# written to 4 decimals are off by at most 5e-5 per class; scaled or shifted one-hot rows
# (x3, -0.5), the mistakes this catches, are off by 0.5 or more.
DISTRIBUTION_TOLERANCE = 1e-3


def check_task(task: str) -> None:
    """``task`` is one of :data:`TASKS`."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def check_targets(targets, task: str, classes, what: str = "targets") -> np.ndarray:
    """``targets`` as float32 ``[tracks, C]``, if they suit ``task`` and the ``C`` ``classes``.

    ``single``: one-hot rows or label distributions (non-negative, summing to 1
    within :data:`DISTRIBUTION_TOLERANCE`); ``multi``: values in [0, 1];
    ``regression``: any finite values.
    """
    check_task(task)
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 2 or targets.shape[1] == 0:
        raise InputError(f"{what} of shape {targets.shape}; expected [tracks, outputs] with at "
                         "least one output (one row per track)")
    if isinstance(classes, (str, bytes)):
        raise InputError(f"classes={classes!r}: expected a sequence of names, one per target "
                         "column (a string would give one class per character)")
    classes = tuple(classes)
    if len(classes) != targets.shape[1]:
        raise InputError(f"{len(classes)} class name(s) for {targets.shape[1]} target "
                         "column(s); give one name per column")
    if len(set(classes)) != len(classes):
        raise InputError(f"repeated class names in {classes}; each output needs its own name")
    check_label_text(classes)
    if not np.all(np.isfinite(targets)):
        raise InputError(f"{what} contain NaN or infinity")
    if task == "single":
        sums = targets.sum(axis=1, dtype=np.float64)
        bad = np.nonzero((targets < 0).any(axis=1)
                         | (np.abs(sums - 1) > DISTRIBUTION_TOLERANCE))[0]
        if bad.size:
            raise InputError(f"single-label {what} must be one-hot rows or label distributions "
                             f"(non-negative, summing to 1); row {bad[0]} is "
                             f"{targets[bad[0]].tolist()}")
    elif task == "multi" and ((targets < 0) | (targets > 1)).any():
        raise InputError(f"multi-label {what} must lie in [0, 1] (multi-hot rows or "
                         f"probabilities); found values from {targets.min()} to {targets.max()}")
    return targets


def names_preview(names: Sequence[str], shown: int = 4) -> str:
    """``names`` for a repr: the first few, and how many more."""
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return "[" + ", ".join(map(repr, names[:shown])) + more + "]"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Audio files and their targets.

    Attributes:
      paths: one audio file per track.
      targets: ``[tracks, outputs]`` float32: one-hot rows (``single``),
        multi-hot rows (``multi``) or values (``regression``).
      task: ``"single"``, ``"multi"`` or ``"regression"``.
      classes: one name per output column.
    """

    paths: tuple[str, ...]
    targets: np.ndarray
    task: str
    classes: tuple[str, ...]

    def __repr__(self) -> str:  # not every path and target
        return f"Dataset({len(self.paths)} tracks, {self.task}, {names_preview(self.classes)})"

    def __post_init__(self):
        paths = tuple(self.paths)
        targets = check_targets(self.targets, self.task, self.classes, "the dataset's targets")
        if len(targets) != len(paths):
            raise InputError(f"{len(paths)} paths but {len(targets)} target rows; give one row "
                             "per path")
        # a fold could train and test on one track; by absolute name (a table's rows are also
        # compared through links, a stat a path: too slow for the Datasets of every fold)
        named = collections.Counter(os.path.abspath(os.fspath(p)) for p in paths)
        repeated = sorted(p for p, n in named.items() if n > 1)
        if repeated:
            raise InputError(f"{len(repeated)} path(s) given more than once, e.g. "
                             + ", ".join(repr(p) for p in repeated[:3])
                             + "; give each track once (several labels as multi-label targets)")
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> "Dataset":
        """The tracks at the indices ``keep``, in that order, with their targets."""
        keep = list(keep)
        return Dataset(tuple(self.paths[i] for i in keep), self.targets[keep], self.task,
                       self.classes)

    def class_index(self) -> np.ndarray:
        """``[tracks]`` int: the class of each track (single-label), for stratification."""
        if self.task != "single":
            raise InputError(f"a {self.task} dataset has no single class per track")
        return np.argmax(self.targets, axis=1)

    def tracks_per_class(self) -> np.ndarray:
        """``[classes]`` int: how many tracks each class has (soft single-label targets count a
        track for its largest class, multi-label ones for each class of 0.5 or more)."""
        if self.task == "single":
            return np.bincount(self.class_index(), minlength=len(self.classes))
        if self.task == "multi":
            return (self.targets >= 0.5).sum(axis=0)
        raise InputError("a regression dataset has no classes")


def check_varying(values: np.ndarray, names: Sequence[str], what: str) -> None:
    """Regression ``values`` ``[tracks, outputs]`` that vary in every output: a constant one
    leaves a regressor nothing to learn, and its r² undefined."""
    constant = [repr(str(name)) for name, column in zip(names, values.T)
                if len(column) > 1 and np.all(column == column[0])]
    if constant:
        raise InputError(f"{what} {', '.join(constant)}: one value for every track; a regressor "
                         "has nothing to learn from it (and r² is undefined)")


def check_classes(dataset: Dataset, where: str) -> None:
    """At least two classes, and at least two files in each (a multi-label class that every
    file has is warned of); regression values that vary."""
    if dataset.task == "regression":
        if len(dataset) < MIN_FILES_PER_CLASS:
            raise InputError(f"{where}: {len(dataset)} file(s); regression needs at least 2")
        check_varying(dataset.targets, dataset.classes, f"{where}: column(s)")
        return
    if len(dataset.classes) < 2:
        raise InputError(f"{where}: only one class ({', '.join(dataset.classes) or 'none'}); "
                         "a classifier needs at least two")
    counts = dataset.tracks_per_class()  # soft targets' mass (0.6 x 3 tracks "1") misled
    few = [f"{name} ({int(n)})" for name, n in zip(dataset.classes, counts)
           if n < MIN_FILES_PER_CLASS]
    if few:
        raise InputError(f"{where}: class(es) with fewer than {MIN_FILES_PER_CLASS} audio "
                         "files: " + ", ".join(few))
    if dataset.task == "multi":
        everywhere = [name for name, column in zip(dataset.classes, dataset.targets.T)
                      if (column >= 1).all()]
        if everywhere:  # nothing to learn; ROC-AUC undefined, and dropped from the mean unsaid
            warnings.warn(f"{where}: class(es) that every file has: {', '.join(everywhere)}; the "
                          "head learns only that they are always there, and cross-validation "
                          "has no ROC-AUC for them (left out of its mean)", JaxmirWarning,
                          stacklevel=3)


def load_dataset(source: str | os.PathLike) -> Dataset:
    """Read a class-folder tree or a ``.csv``/``.parquet`` table of ``path,label`` rows (a
    Parquet table may be a folder of part files, as jaxmir and Spark write them)."""
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"the data is {type(source).__name__} {str(source)[:80]}; expected a "
                         "class-folder tree's or a path,label table's path, or a Dataset (files "
                         "and their targets: jaxmir.train.Dataset)")
    source = Path(source)
    table = source.suffix.lower() in (".csv", ".parquet", ".pq")
    parts = source.suffix.lower() in (".parquet", ".pq") and source.is_dir() and any(
        part.suffix.lower() in (".parquet", ".pq") for part in source.iterdir())
    if source.is_dir() and not parts:
        dataset = _from_folders(source)
    elif table and (source.is_file() or parts):
        dataset = _from_table(source)
    else:
        there = "" if os.path.lexists(source) else "no such file or folder; "
        raise InputError(f"{source}: {there}expected a folder with one subfolder per class, or "
                         "a .csv or .parquet table with a 'path' column")
    check_classes(dataset, str(source))
    return dataset


def _from_folders(root: Path) -> Dataset:
    folders: dict[str, str] = {}
    for folder in sorted(p.name for p in root.iterdir()
                         if p.is_dir() and not p.name.startswith(".")):
        name = _class_name(root, folder)
        if name in folders:  # one name in two encodings (UTF-8 and the locale's Latin-1)
            raise InputError(f"{root}: the class folders {folders[name]!r} and {folder!r} both "
                             f"name the class {name!r}; merge them")
        folders[name] = folder
    classes = ordered_classes(folders, f"{root}: the class folders")
    if not classes:
        raise InputError(f"{root}: no class folders; expected DATA/<class>/<audio files>")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in AUDIO_EXTENSIONS)
    if loose:
        warnings.warn(f"{root}: {len(loose)} audio file(s) beside the class folders, in none of "
                      f"them, left out (e.g. {loose[0]!r}); move each into its class's folder",
                      JaxmirWarning, stacklevel=3)
    paths, rows = [], []
    for index, name in enumerate(classes):
        files = audio_files(root / folders[name])  # what ``jaxmir tag FOLDER`` reads
        paths.extend(files)
        rows.extend([index] * len(files))
    _check_unique(root, paths, "in more than one place (the same file by its real path: a link)",
                  "keep each file in one class folder (a table with 'a;b' labels for several)")
    targets = np.eye(len(classes), dtype=np.float32)[np.asarray(rows, int)].reshape(
        len(rows), len(classes))
    return Dataset(tuple(paths), targets, "single", tuple(classes))


def _cell(value) -> str | list[str]:
    """A Parquet value as text; a list (a ``list<...>`` column) as a list of texts."""
    if isinstance(value, list):
        return [text for text in ("" if v is None else str(v).strip() for v in value) if text]
    return "" if value is None else str(value).strip()


def _read_table(path: Path) -> dict[str, list[str | list[str]]]:
    """The table's columns; every cell a stripped string, or a list of them (Parquet lists)."""
    if path.suffix.lower() == ".csv":
        try:
            # utf-8-sig: a byte-order mark, as spreadsheets write, is not part of the first name
            with open(path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
                names = list(reader.fieldnames or [])
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise InputError(f"{path}: not a readable CSV table ({err})") from None
        _check_distinct_columns(path, [name.strip() for name in names])
        return {name.strip(): [str(row.get(name) or "").strip() for row in rows] for name in names}
    pq = lazy.optional("pyarrow.parquet", f"{path}: reading Parquet", "pip install pyarrow",
                       InputError)
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{path}: not a readable Parquet table ({err})") from None
    return {name: [_cell(v) for v in table.column(name).to_pylist()]
            for name in table.column_names}


def _check_distinct_columns(path: Path, names: list[str]) -> None:
    """Each column named once: of two 'label' columns, one was read and the other ignored."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"{path}: the columns {twice} are named more than once; name each once")


def _floats(values: list[str | list[str]]) -> np.ndarray | None:
    try:
        return np.asarray([float(v) for v in values], np.float64)
    except (TypeError, ValueError):  # TypeError: a list
        return None


def _check_unique(path: Path, files: list[str], repeated_where: str = "listed more than once",
                  remedy: str = "list each file once (several labels as 'a;b')") -> None:
    """Each file once (by its device and inode: through links and hard links): a repeated file
    could be trained on and tested on in the same fold."""
    seen, repeated = set(), []
    for file in files:
        real = file_key(file)  # a link or a hard link is the same file
        if real in seen and file not in repeated:
            repeated.append(file)
        seen.add(real)
    if repeated:
        raise InputError(f"{path}: {len(repeated)} file(s) {repeated_where}, e.g. "
                         + ", ".join(repr(r) for r in repeated[:3]) + f"; {remedy}")


def _from_table(path: Path) -> Dataset:
    columns = _read_table(path)
    if "path" not in columns:
        joined = next((sep for sep in ("\t", ";", "|") if len(columns) == 1
                       and sep in next(iter(columns))), None)
        if joined is not None:  # a tab-, semicolon- or bar-separated file read as one column
            raise InputError(f"{path}: its header is one column, {next(iter(columns))!r}: the "
                             f"columns are separated by {joined!r}, and a .csv is read with "
                             "commas; write it with commas (path,label)")
        raise InputError(f"{path}: no 'path' column; columns: {', '.join(columns) or 'none'}")
    raw_paths = columns.pop("path")
    if not raw_paths:
        raise InputError(f"{path}: no rows")
    if any(isinstance(p, list) for p in raw_paths):
        raise InputError(f"{path}: the 'path' column holds lists; expected one file per row")
    files = [str(Path(p) if Path(p).is_absolute() else path.parent / p) for p in raw_paths]
    missing = [raw for raw, full in zip(raw_paths, files) if not raw or not os.path.isfile(full)]
    if missing:
        folders = [raw for raw, full in zip(raw_paths, files) if raw and os.path.isdir(full)]
        what = "name folders, not audio files" if len(folders) == len(missing) else \
            "name files that do not exist" if not folders else \
            f"name files that do not exist or folders ({len(folders)})"
        raise InputError(f"{path}: {len(missing)} row(s) {what}, e.g. "
                         + ", ".join(repr(m) for m in missing[:3]))
    _check_unique(path, files)
    label = columns.get("label")
    if label is not None:  # classes, also when they are numbers (class ids 0, 1, 2)
        return _classification(path, files, label)
    numeric = {name: _floats(values) for name, values in columns.items()}
    bad = [name for name, values in numeric.items() if values is None]
    for name in bad:
        blank = [file for file, value in zip(files, columns[name]) if value == ""]
        if blank and _floats([v for v in columns[name] if v != ""]) is not None:
            raise InputError(f"{path}: column {name!r} has {len(blank)} empty cell(s), e.g. for "
                             f"{blank[0]}; regression needs a value for every file")
    if bad or not numeric:
        raise InputError(f"{path}: expected a 'label' column (classes) or numeric columns "
                         f"(regression); non-numeric: {', '.join(bad) or 'no other columns'}")
    with np.errstate(over="ignore"):  # beyond float32: infinity, refused in words just below
        values = np.stack(list(numeric.values()), axis=1).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: regression targets contain NaN or infinity (or values beyond "
                         "float32's ~3.4e38)")
    return Dataset(tuple(files), values, "regression", tuple(numeric))


def _class_name(root: Path, folder: str) -> str:
    """The class a folder names: its name's bytes as UTF-8 (``música``, whatever the locale's
    encoding: under an ASCII one Python reads it as ``m\\udcc3\\udcbasica``), or as the locale
    reads them where they are its text and not UTF-8 (Latin-1's ``m\\xfasica``), else
    :class:`InputError`."""
    try:
        return os.fsencode(folder).decode("utf-8")
    except UnicodeDecodeError:
        if not any("\udc80" <= char <= "\udcff" for char in folder):
            return folder
        raise InputError(f"{root}: the class folder {folder!r} is not named in UTF-8 text; "
                         "rename it: its name is the class's label") from None


def ordered_classes(names, what: str) -> list[str]:
    """``names`` in order of :func:`_class_order`; :class:`InputError` for two that are one
    number written two ways (``1`` and ``01``, ``what`` naming them), which would be two classes."""
    classes = sorted(names, key=_class_order)
    numbers = [_class_order(name)[:2] for name in classes]
    twins = [(a, b) for a, b, x, y in zip(classes, classes[1:], numbers, numbers[1:])
             if x[0] == 0 and x == y]
    if twins:
        raise InputError(f"{what} {twins[0][0]!r} and {twins[0][1]!r} are one number written two "
                         "ways, which would make two classes; write each class id one way")
    return classes


def _class_order(name: str) -> tuple:
    """Classes in order of name, class ids (finite numbers) in order of value: 2 before 10."""
    try:
        value = float(name)
    except ValueError:
        return (1, 0.0, name)
    return (0, value, name) if math.isfinite(value) else (1, 0.0, name)  # "nan" is a name


def _classification(path: Path, files: list[str], label: list[str | list[str]]) -> Dataset:
    if any(isinstance(value, list) for value in label):  # a Parquet list column: multi-label
        multi, per_row = True, label
    else:
        multi = any(";" in value for value in label)
        stray = [(files[i], value) for i, value in enumerate(label)
                 if multi and value and not all(part.strip() for part in value.split(";"))]
        if stray:
            raise InputError(f"{path}: {len(stray)} row(s) with an empty label beside a ';', e.g. "
                             f"{stray[0][1]!r} for {stray[0][0]}; a ';' anywhere makes the table "
                             "multi-label: remove the stray ';', or name a label on each side")
        per_row = [[part.strip() for part in value.split(";")] if multi else [value]
                   for value in label]
    empty = [files[i] for i, parts in enumerate(per_row) if not parts or parts == [""]]
    if empty:
        raise InputError(f"{path}: {len(empty)} row(s) without a label, e.g. {empty[0]}")
    classes = ordered_classes({c for parts in per_row for c in parts}, f"{path}: the labels")
    index = {name: i for i, name in enumerate(classes)}
    targets = np.zeros((len(files), len(classes)), np.float32)
    for row, parts in enumerate(per_row):
        targets[row, [index[c] for c in parts]] = 1.0
    return Dataset(tuple(files), targets, "multi" if multi else "single", tuple(classes))
