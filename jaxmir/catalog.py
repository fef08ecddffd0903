"""The shipped models: ``weights/catalog.json`` and the files it lists."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path

from jaxmir.errors import WeightsError

CATALOG_FILE = "catalog.json"


def weights_dir() -> Path:
    """Where the shipped weights live: inside the installed package, or the checkout's
    ``weights/``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "weights", package.parent / "weights"):
        if (candidate / CATALOG_FILE).is_file():
            return candidate
    raise WeightsError(f"the shipped weights are missing (no {CATALOG_FILE} in "
                       f"{package / 'weights'} or {package.parent / 'weights'}); reinstall jaxmir")


@functools.lru_cache(maxsize=1)
def catalog() -> dict:
    """The shipped models' catalogue (``catalog.json``): ``{"default": name, "models": {name:
    {"file": ..., ...}}}``."""
    with open(weights_dir() / CATALOG_FILE, encoding="utf-8") as handle:
        return json.load(handle)


def names() -> list[str]:
    """The shipped models' names, sorted; none when the weights are missing."""
    try:
        return sorted(catalog()["models"])
    except WeightsError:
        return []


def default_name() -> str:
    """The model ``jaxmir tag`` runs without ``--model``."""
    return catalog()["default"]


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read 1 MiB at a time.

    A run asks for a backbone's digest up to three times (finding it beside a head, checking
    it, recording it); a file whose device, inode, size and change time are as at the last
    reading is not read again (any write changes its ctime, which no user can set back). A
    file changed in the last seconds is always read: a filesystem's clock ticks coarsely, and
    a second write in the same tick would keep the ctime of the first.
    """
    with open(path, "rb") as handle:
        state = os.fstat(handle.fileno())
        key = (state.st_dev, state.st_ino, state.st_size, state.st_mtime_ns, state.st_ctime_ns)
        known = _DIGESTS.get(key)  # one lookup: another thread may clear the memo meanwhile
        if known is not None:
            return known
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    text = digest.hexdigest()
    if time.time_ns() - state.st_ctime_ns >= _SETTLED_NS:
        if len(_DIGESTS) >= 64:
            _DIGESTS.clear()
        _DIGESTS[key] = text
    return text


_DIGESTS: dict[tuple[int, ...], str] = {}  # a file's state when read -> its digest
_SETTLED_NS = 2_000_000_000  # a file unchanged this long has a ctime no later write can repeat


def name_of(path: str | os.PathLike) -> str | None:
    """The shipped model whose weights file ``path`` is, or ``None``."""
    try:
        models, folder = catalog()["models"], weights_dir()
    except WeightsError:
        return None
    where = Path(path)
    return next((name for name, entry in models.items() if where == folder / entry["file"]), None)


def path_of(name: str) -> Path:
    """The weights file of a shipped model, checked against its recorded sha256."""
    entry = catalog()["models"][name]
    path = weights_dir() / entry["file"]
    if not path.is_file():
        raise WeightsError(f"shipped model '{name}': {path} is missing; reinstall jaxmir")
    if sha256(path) != entry["sha256"]:
        raise WeightsError(f"shipped model '{name}': {path} does not match its sha256 in "
                           f"{CATALOG_FILE}; the file is corrupt, reinstall jaxmir")
    return path


def labels_for_graph(path: str | os.PathLike, spec) -> list[str] | None:
    """Labels for a `.pb` whose file name starts with a shipped model's name (``msd-musicnn-1.pb``).

    The graph does not hold its labels; Essentia keeps them in a JSON file
    beside it. Without one, a graph named like a shipped model of the same
    architecture and width gets that model's labels; any other gets ``None``.
    """
    stem = Path(path).name
    width = spec.output_width
    for name in names():
        entry = catalog()["models"][name]
        if stem.startswith(name) and entry["architecture"] == spec.architecture \
                and len(entry["labels"]) == width:
            return list(entry["labels"])
    return None
