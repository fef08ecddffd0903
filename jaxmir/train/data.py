"""Labelled audio for training heads: a folder of class folders, or a CSV/Parquet table.

* ``DATA/<class>/<file>``: one class per file (single-label, softmax).
* a table with a ``path`` column and a ``label`` column: one class per row, or
  a ``;``-separated list of classes (multi-label, sigmoid).
* a table with a ``path`` column and numeric columns: regression (identity),
  one output per numeric column.

Relative paths in a table are relative to the table's folder.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmir.errors import InputError

TASKS = ("single", "multi", "regression")
ACTIVATION = {"single": "softmax", "multi": "sigmoid", "regression": "identity"}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".m4a", ".opus")
MIN_FILES_PER_CLASS = 2


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

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> "Dataset":
        keep = list(keep)
        return Dataset(tuple(self.paths[i] for i in keep), self.targets[keep], self.task,
                       self.classes)

    def class_index(self) -> np.ndarray:
        """``[tracks]`` int: the class of each track (single-label), for stratification."""
        if self.task != "single":
            raise InputError(f"a {self.task} dataset has no single class per track")
        return np.argmax(self.targets, axis=1)


def check_classes(dataset: Dataset, where: str) -> None:
    """At least two classes, and at least two files in each (single-label data)."""
    if dataset.task == "regression":
        if len(dataset) < MIN_FILES_PER_CLASS:
            raise InputError(f"{where}: {len(dataset)} file(s); regression needs at least 2")
        return
    if len(dataset.classes) < 2:
        raise InputError(f"{where}: only one class ({', '.join(dataset.classes) or 'none'}); "
                         "a classifier needs at least two")
    counts = dataset.targets.sum(axis=0)
    few = [f"{name} ({int(n)})" for name, n in zip(dataset.classes, counts)
           if n < MIN_FILES_PER_CLASS]
    if few:
        raise InputError(f"{where}: class(es) with fewer than {MIN_FILES_PER_CLASS} files: "
                         + ", ".join(few))


def load_dataset(source: str | os.PathLike) -> Dataset:
    """Read a class-folder tree or a ``.csv``/``.parquet`` table of ``path,label`` rows."""
    source = Path(source)
    if source.is_dir():
        dataset = _from_folders(source)
    elif source.is_file() and source.suffix.lower() in (".csv", ".parquet", ".pq"):
        dataset = _from_table(source)
    else:
        raise InputError(f"{source}: expected a folder with one subfolder per class, or a .csv or "
                         ".parquet table with a 'path' column")
    check_classes(dataset, str(source))
    return dataset


def _is_audio(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and \
        path.suffix.lower() in AUDIO_SUFFIXES


def _from_folders(root: Path) -> Dataset:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: no class folders; expected DATA/<class>/<audio files>")
    paths, rows = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if _is_audio(p))
        paths.extend(str(p) for p in files)
        rows.extend([index] * len(files))
    targets = np.eye(len(classes), dtype=np.float32)[np.asarray(rows, int)].reshape(
        len(rows), len(classes))
    return Dataset(tuple(paths), targets, "single", tuple(classes))


def _read_table(path: Path) -> dict[str, list[str]]:
    if path.suffix.lower() == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
                names = list(reader.fieldnames or [])
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise InputError(f"{path}: not a readable CSV table ({err})") from None
        return {name.strip(): [str(row.get(name) or "").strip() for row in rows] for name in names}
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{path}: not a readable Parquet table ({err})") from None
    return {name: ["" if v is None else str(v).strip() for v in table.column(name).to_pylist()]
            for name in table.column_names}


def _floats(values: list[str]) -> np.ndarray | None:
    try:
        return np.asarray([float(v) for v in values], np.float64)
    except ValueError:
        return None


def _from_table(path: Path) -> Dataset:
    columns = _read_table(path)
    if "path" not in columns:
        raise InputError(f"{path}: no 'path' column; columns: {', '.join(columns) or 'none'}")
    raw_paths = columns.pop("path")
    if not raw_paths:
        raise InputError(f"{path}: no rows")
    files = [str(Path(p) if Path(p).is_absolute() else path.parent / p) for p in raw_paths]
    missing = [raw for raw, full in zip(raw_paths, files) if not raw or not os.path.isfile(full)]
    if missing:
        raise InputError(f"{path}: {len(missing)} row(s) name files that do not exist, e.g. "
                         + ", ".join(repr(m) for m in missing[:3]))
    label = columns.get("label")
    if label is not None and _floats(label) is None:
        return _classification(path, files, label)
    numeric = {name: _floats(values) for name, values in columns.items()}
    bad = [name for name, values in numeric.items() if values is None]
    if bad or not numeric:
        raise InputError(f"{path}: expected a 'label' column (classes) or numeric columns "
                         f"(regression); non-numeric: {', '.join(bad) or 'no other columns'}")
    values = np.stack(list(numeric.values()), axis=1).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: regression targets contain NaN or infinity")
    return Dataset(tuple(files), values, "regression", tuple(numeric))


def _classification(path: Path, files: list[str], label: list[str]) -> Dataset:
    multi = any(";" in value for value in label)
    per_row = [[part.strip() for part in value.split(";") if part.strip()] if multi else [value]
               for value in label]
    empty = [files[i] for i, parts in enumerate(per_row) if not parts or parts == [""]]
    if empty:
        raise InputError(f"{path}: {len(empty)} row(s) without a label, e.g. {empty[0]}")
    classes = sorted({c for parts in per_row for c in parts})
    index = {name: i for i, name in enumerate(classes)}
    targets = np.zeros((len(files), len(classes)), np.float32)
    for row, parts in enumerate(per_row):
        targets[row, [index[c] for c in parts]] = 1.0
    return Dataset(tuple(files), targets, "multi" if multi else "single", tuple(classes))
