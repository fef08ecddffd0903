"""Writers of a collection's rows, chosen by the output's extension; incremental, kill-safe,
resumable.

* ``.parquet``: a *folder* of part files (``OUT.parquet/part-000000.parquet``,
  ...), read as one table by ``pyarrow.parquet.read_table(OUT)`` and
  ``pandas.read_parquet(OUT)``. A part is written under a hidden temporary
  name (``.part-....tmp``, which readers ignore), synced, then renamed: a
  part is either complete or absent. Every part carries the run's identity
  (model, output, labels, patch options) in its schema metadata; with
  ``--per-patch`` its schema also has a ``patches`` column.
* ``.jsonl`` / ``.csv``: one row per file, appended, flushed and synced
  row by row; a kill can only leave a torn last row, which the next run
  drops (by rewriting the file atomically) before appending. A write that
  fails (a full disk) cuts the file back to its last whole row. Each JSONL
  row holds the run's identity but the labels (``settings``), each CSV row
  the same as JSON text in its ``settings`` column.
* a folder (``embed``; or a name with no extension): one ``.npy`` per file,
  ``[n_patches, ...]`` float32, written atomically, then its row appended to
  ``index.jsonl`` there: a ``.npy`` without a row is simply done again. A
  name that a row of the index (or another file of the run) already holds
  gets ``-2``, ``-3``, ... before ``.npy``. The temporary arrays a killed run leaves are
  removed by the next.

On resume, kept rows are those :func:`jaxmir.collection.resume.keep` keeps;
when anything is dropped the part or file holding it is rewritten atomically.
One run at a time writes an output (:func:`exclusive`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

try:
    import fcntl
except ImportError:  # pragma: no cover -- Windows: outputs are not locked
    fcntl = None

import numpy as np

from jaxmir.atomic import (LINK_LOOP, check_replaceable, is_link_loop, is_temporary,
                           is_temporary_of, make_folder_atomically, name_prefix, unwritable,
                           write_atomically)
from jaxmir.collection import resume
from jaxmir.collection.inputs import Source, file_key, npy_names
from jaxmir.collection.rows import (ANOTHER_OUTPUT, BASE_COLUMNS, DONE, ERROR, OVERWRITE, Layout,
                                   Result, as_text, base, embedding_mean, from_text, patches,
                                   settings_before_recorded, summary, tag_means)
from jaxmir.errors import InputError, OptionError

INDEX = "index.jsonl"
FOLDER_LOCK = ".jaxmir.lock"
CSV_COLUMNS = list(BASE_COLUMNS) + ["model", "settings"]  # then one column per label
PARQUET_COLUMNS = list(BASE_COLUMNS)  # then one per label (tag) or "embedding"; "patches"
_CSV_COLUMNS_BEFORE_SETTINGS = list(BASE_COLUMNS) + ["model"]  # CSVs written before, still resumed
_PART = re.compile(r"^part-(\d{6,})\.parquet$")


def followed(output: str) -> str:
    """The file or folder ``output`` names through a symbolic link, else ``output``: two runs
    through two names then share one lock, and a resumed run rewrites the link's target instead
    of replacing the link by a file."""
    bare = output.rstrip("/" + os.sep) or output
    if is_link_loop(bare):
        raise InputError(f"--output {output} {LINK_LOOP}")
    return os.path.realpath(bare) if os.path.islink(bare) else output


def kind_of(output: str, command: str) -> str:
    """``parquet``, ``jsonl``, ``csv`` or ``npy`` (a folder: no or another extension, or a
    trailing ``/``) from the output's name."""
    if not output:
        raise OptionError("--output is empty; give a file or folder name")
    if output == "-":
        raise OptionError(f"--output -: jaxmir {command} writes a table or a folder here, which "
                          "standard output cannot take; give a file name (.parquet, .jsonl"
                          + (", .csv)" if command == "tag" else ") or a folder"))
    suffix = Path(output).suffix.lower()
    if suffix in (".parquet", ".jsonl", ".csv"):
        return suffix[1:]
    if suffix == "" or os.path.isdir(output) or output.endswith(("/", os.sep)):
        return "npy"
    if suffix == ".npy":  # one file expected, a folder made
        raise OptionError(f"--output {output}: jaxmir {command} writes one .npy per file, into a "
                          f"folder: give the folder's name ({output[:-4]}/), or a table "
                          "(.parquet, .jsonl)")
    expected = ".parquet, .jsonl or .csv" if command == "tag" else \
        ".parquet, .jsonl or a folder (a name ending in '/')"
    raise OptionError(f"--output {output}: unknown kind {suffix!r}; expected {expected}")


def check_csv(output: str | os.PathLike, layout: Layout) -> None:
    """:class:`OptionError` unless a CSV output can hold the run's rows (tag means only)."""
    if layout.command != "tag" or layout.per_patch:
        raise OptionError(f"--output {output}: CSV holds tag means only; use .parquet or .jsonl "
                          "for embeddings and --per-patch (per_patch=True in Python)")


# -- atomic file operations ---------------------------------------------------------------------


def check_writable(folder: Path, own_table: bool = False) -> None:
    """Fail now, with a clear message, when nothing can be written in ``folder`` (made if need be),
    or when ``folder`` lies in a jaxmir Parquet folder (``own_table``: ``folder`` is the Parquet
    output being written, whose parts go in it)."""
    table = _table_among(folder.parent if own_table else folder)
    if table is not None:
        raise InputError(f"cannot write the output in {folder}: {table} is a jaxmir Parquet "
                         "folder, whose readers (pyarrow, pandas) take what is in it as part "
                         f"of its table; {ANOTHER_OUTPUT} outside it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or str(err)
        blocking = _file_among(folder)
        if blocking is not None:  # mkdir said only "File exists" or "Not a directory"
            reason = f"{blocking} is a file, not a folder"
    else:
        reason = unwritable(folder)
    if reason is not None:
        raise InputError(f"cannot write the output in {folder}: {reason}")


def _table_among(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that is a Parquet folder of parts (a name ending
    in ``.parquet``, holding ``part-NNNNNN.parquet`` files: what jaxmir writes)."""
    # as named (a link named x.parquet to a table's folder) and through links (a link to it)
    named, real = Path(os.path.abspath(folder)), Path(os.path.realpath(folder))
    chains = [*reversed((named, *named.parents)), *reversed((real, *real.parents))]
    for path in dict.fromkeys(chains):  # each folder once
        if path.name.lower().endswith(".parquet") and os.path.isdir(path):  # an error: False
            try:
                if any(_PART.match(name) for name in os.listdir(path)):
                    return path
            except OSError:
                pass
    return None


def _file_among(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that exists as something other than a folder."""
    for path in reversed((folder, *folder.parents)):
        if os.path.exists(path) and not os.path.isdir(path):
            return path
    return None


def _lock_name(name: str) -> str:
    """``.<name>.lock``; for a name too long to take the suffix, its first bytes and a digest of
    all of it (two long names with the same first 200 bytes shared one lock)."""
    prefix = name_prefix(name)
    if prefix == name:
        return f".{name}.lock"
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".{name_prefix(name[:len(prefix) - 20])}-{digest}.lock"


@contextlib.contextmanager
def exclusive(output: str | os.PathLike) -> Iterator[None]:
    """Hold the output for one run: ``.<name>.lock`` beside it (in it, :data:`FOLDER_LOCK`, for
    a folder whose parent this user cannot write), locked exclusively.

    A second run on the same output stops at once instead of writing beside the
    first (both would number the same Parquet parts and replace each other's, or
    interleave rows). The lock goes with the process, killed or not; the empty
    file stays, so that no run ever locks a file another has just removed.
    """
    path = Path(os.path.realpath(output))  # `-o .` and `-o $PWD`, through a link or not: one lock
    try:
        check_writable(path.parent)
        lock = path.parent / _lock_name(path.name)
    except InputError:
        if not path.is_dir():
            raise
        lock = path / FOLDER_LOCK
    try:
        descriptor = _open_lock(lock)
    except (IsADirectoryError, OSError) as err:
        if isinstance(err, IsADirectoryError) or err.errno == errno.ENXIO:  # ENXIO: a socket
            raise InputError(f"{lock}, the output's lock, is not a regular file (a pipe, a "
                             "device, a folder, a socket); remove it") from None
        if os.path.lexists(lock):
            raise InputError(f"{lock}, the output's lock, cannot be opened ({err.strerror or err})"
                             f"{_whose(lock)}; have it removed, or {ANOTHER_OUTPUT}") from None
        raise InputError(f"cannot write the output in {lock.parent}: "
                         f"{err.strerror or err} (its lock, {lock.name})") from None
    with os.fdopen(descriptor, "rb") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(f"--output {output} is being written by another jaxmir run "
                                 "(or another collect() call of this program); wait for it to "
                                 f"end, or {ANOTHER_OUTPUT}") from None
            except OSError as err:  # NFS: EBADF for a lock opened read-only; ENOLCK, EOPNOTSUPP
                why = (": this file system locks only files this user may write"
                       if err.errno == errno.EBADF else "")
                raise InputError(f"{lock}, the output's lock, cannot be locked "
                                 f"({err.strerror or err}){why}{_whose(lock)}; "
                                 f"{ANOTHER_OUTPUT}") from None
        yield


def _whose(lock: Path) -> str:
    """``": <owner>'s, mode 0600"`` for ``lock``, or ``""`` where it cannot be read."""
    try:
        state = os.lstat(lock)
    except OSError:
        return ""
    try:
        import pwd

        owner = pwd.getpwuid(state.st_uid).pw_name
    except (ImportError, KeyError):
        owner = f"user {state.st_uid}"
    return f": {owner}'s, mode {stat.S_IMODE(state.st_mode):04o}"


def _open_lock(lock: Path) -> int:
    """``lock`` opened (made if need be) for :func:`exclusive`: for writing where it may be (NFS
    emulates flock with locks that need it), else read-only, which a local flock takes (another
    user's 0644 lock refused every other user's run); not waiting on a FIFO, and refused if it
    is no regular file (on a read-only file system, an existing lock opens read-only)."""
    flags = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | flags, 0o666)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ETXTBSY):
            raise
        try:  # an existing lock: without O_CREAT, which fs.protected_regular refuses on another
            descriptor = os.open(lock, os.O_RDONLY | flags)  # user's file in a sticky folder
        except FileNotFoundError:
            raise err from None  # none to open: why it could not be made
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise InputError(f"{lock}, the output's lock, is not a regular file (a pipe, a device, a "
                         "folder, a socket); remove it")
    return descriptor


def _check_linked(handle) -> os.stat_result:
    """The open output's state, or :class:`InputError` when it was deleted during the run (the
    rows would go nowhere while the run reported them written)."""
    state = os.fstat(handle.fileno())
    if state.st_nlink == 0:
        raise InputError(f"{handle.name} was deleted while this run wrote to it; the rows written "
                         "since it was opened are gone: run the same command again")
    return state


def _append(handle, data: bytes) -> None:
    """Append whole lines to the unbuffered ``handle`` and make them durable (one call per row).

    When a write fails (a full disk, a file-size limit), the file is cut back
    to its length before, as far as that can be done: it holds whole rows only.
    """
    start = _check_linked(handle).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[handle.write(view):]  # a write may take only part of the data
        os.fsync(handle.fileno())
    except OSError:
        try:
            os.ftruncate(handle.fileno(), start)
        except OSError:
            pass  # the torn row is dropped by the next run
        raise


def _csv_records(text: str) -> Iterator[tuple[str, list[str]]]:
    """Each record of the CSV ``text``: the text it spans (a quoted field may span lines), its
    values."""
    spanned: list[str] = []

    def lines():
        for line in io.StringIO(text, newline="\n"):
            spanned.append(line)
            yield line
    for values in csv.reader(lines()):  # takes lines only until its record is whole
        yield "".join(spanned), values
        spanned.clear()


def _unique_names(names: Mapping[str, str], taken: Mapping[str, str]) -> dict[str, str]:
    """``names`` (path -> relative ``.npy`` name) made unique among themselves and against
    ``taken`` (name -> the path whose row holds it): in the order of the paths, a name held
    already gets ``-2``, ``-3``, ... before ``.npy``."""
    owners = dict(taken)
    unique, clashing = {}, []
    for path in sorted(names):
        name = within_name_max(names[path])  # as the rows of earlier runs hold it
        if owners.setdefault(name, path) == path:
            unique[path] = name
        else:
            clashing.append(path)
    for path in clashing:
        stem, number = names[path][:-len(".npy")], 2
        while within_name_max(f"{stem}-{number}.npy") in owners:
            number += 1
        unique[path] = within_name_max(f"{stem}-{number}.npy")
        owners[unique[path]] = path
    return unique


NAME_MAX = 255  # bytes of a file name on Linux's and macOS's file systems
_DIGEST_CHARACTERS = 16


def within_name_max(name: str) -> str:
    """The relative ``.npy`` name ``name`` with its file name cut to :data:`NAME_MAX` bytes where
    it is longer (a 251-byte ``x.flac`` kept its extension in ``x.flac.npy``, and the run stopped
    at it, every run): the first characters, ``~`` and the whole name's sha256 (16 hex
    digits), so that names that differ stay apart and a rerun finds the same name."""
    folder, base = os.path.split(name)
    if len(os.fsencode(base)) <= NAME_MAX:
        return name
    digest = hashlib.sha256(os.fsencode(base)).hexdigest()[:_DIGEST_CHARACTERS]
    room = NAME_MAX - len(f"~{digest}.npy")
    stem = base[:room]  # characters take 1-4 bytes: cut on their boundaries
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return os.path.join(folder, f"{stem}~{digest}.npy")


# -- writers ---------------------------------------------------------------------------------------
class Writer:
    """Base: ``done`` (keys of kept rows), ``write(result)``, ``flush()``, ``close()``.

    ``dry``: an existing output is only read (its ``done``), nothing written or removed; such
    a writer writes no row.
    """

    def __init__(self, path: Path, layout: Layout, dry: bool = False):
        self.path, self.layout, self.dry = path, layout, dry
        self.done: set[tuple[str, int, int]] = set()
        self.failed: set[str] = set()  # paths of the failed rows kept
        self.rows_written = 0

    def write(self, result: Result) -> str | None:
        """Write one file's row (maybe buffered); returns the ``.npy`` written, if any."""
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()

    def abandon(self) -> None:
        """Close after a failed write, without writing what is buffered (it is redone on resume)."""
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LinesWriter(Writer):
    """``.jsonl`` or ``.csv``: whole rows appended and synced one at a time.

    A CSV row holds the base columns, ``model``, ``settings`` (the run's
    identity but the labels, as JSON text) and one column per label, its
    text as :func:`rows.as_text` writes it. ``rows``: those kept from an
    existing output; ``lost(row)``: whether a kept row goes anyway (its file is done again).
    ``kind``: ``"jsonl"`` or ``"csv"``, as the output was named (a link's target may be
    named otherwise); by default, ``path``'s extension.
    """

    def __init__(self, path: Path, layout: Layout, current: Mapping[str, Source], overwrite: bool,
                 lost: Callable[[dict], bool] | None = None, dry: bool = False,
                 kind: str | None = None):
        super().__init__(path, layout, dry)
        self.lost = lost
        kind = kind or path.suffix.lower().lstrip(".")
        self.csv = kind == "csv"
        if self.csv:
            check_csv(path, layout)
            layout.check_label_columns(CSV_COLUMNS, "CSV")
        self.header = CSV_COLUMNS + list(layout.labels)
        self.rows: list[dict] = []
        self.dropped: list[dict] = []  # an existing output's rows that this run does again
        check_writable(path.parent)
        if path.is_dir():
            raise InputError(f"--output {path} is a folder; a .{kind} output is one file")
        if path.exists() and not path.is_file():  # reading a FIFO to resume it waited for ever
            raise InputError(f"--output {path} is not a regular file (a pipe, a device or a "
                             f"socket); a table is appended to, resumed and replaced")
        check_replaceable(path)  # read-only: refused before the work (and Ray's start)
        if not dry:  # what a run killed while rewriting it left (this run holds its lock)
            for stale in path.parent.iterdir():
                if is_temporary_of(stale.name, path.name) and stale.is_file():
                    stale.unlink(missing_ok=True)
        if overwrite or not path.exists():
            if not dry:
                write_atomically(path, lambda f: f.write(self._header_bytes()), durable=True)
        else:
            self._resume(current)
        self.handle = None if dry else open(path, "ab", buffering=0)  # see _append

    def _header_bytes(self) -> bytes:
        return self._line(self.header) if self.csv else b""

    def _line(self, values: list) -> bytes:
        """One CSV record, ending in a newline."""
        buffer = io.StringIO()
        # the writer quotes a field holding "\r" only when its line terminator holds one: with
        # "\n" alone such a path goes unquoted, and readers end the row there
        csv.writer(buffer, lineterminator="\r\n").writerow(values)
        return as_text(buffer.getvalue()[:-2] + "\n").encode("utf-8")

    def _csv_entries(self, data: bytes, current: Mapping[str, Source]) -> list[tuple[bytes, dict]]:
        """The CSV's rows, each with its bytes; checks the identity the file records."""
        records = list(_csv_records(data.decode("utf-8")))
        if not records:
            return []
        (_, header), body = records[0], records[1:]
        if body and len(body[-1][1]) != len(header):
            body.pop()  # torn by a kill within a quoted field spanning lines
        before = header[len(BASE_COLUMNS) + 1:len(BASE_COLUMNS) + 2] != ["settings"]
        columns = _CSV_COLUMNS_BEFORE_SETTINGS if before else CSV_COLUMNS
        if header[:len(columns)] != columns:
            raise ValueError(f"its columns start {header[:len(columns)]}")
        rows, line = [], 1 + records[0][0].count("\n")  # the line the next record starts on
        for text, values in body:
            if len(values) != len(header):
                raise ValueError(f"line {line}: a row of {len(values)} values under "
                                 f"{len(header)} columns")
            rows.append(dict(zip(header, values)))
            line += text.count("\n")
        if not rows:  # nothing to check or keep: the header is written again
            return []
        expected = self._settings()
        # a line's text went through as_text whole (_line): its cells' back through from_text
        found = settings_before_recorded(expected, from_text(rows[0]["model"])) if before \
            else json.loads(from_text(rows[0]["settings"]))
        found["labels"] = [from_text(label) for label in header[len(columns):]]
        expected["labels"] = list(self.layout.labels)
        resume.check_identity(str(self.path), found, expected, self.layout.same_outputs,
                              recorded=not before)
        if before:
            self.header = header  # the rows appended keep its columns
        paths = resume.real_paths([row["path"] for row in rows], current)
        for row, path in zip(rows, paths):
            row.update(path=path, size_bytes=int(row["size_bytes"]), mtime_ns=int(row["mtime_ns"]))
        return [(text.encode("utf-8"), row) for (text, _), row in zip(body, rows)]

    def _jsonl_entries(self, data: bytes,
                       current: Mapping[str, Source]) -> list[tuple[bytes, dict]]:
        """The JSONL's rows, each with its line; checks the identity they record."""
        lines = data.splitlines(keepends=True)
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except ValueError as err:  # its own "line 1": each line is parsed alone
                raise ValueError(f"line {number} is not JSON ({getattr(err, 'msg', err)})"
                                 if line.strip() else f"line {number} is blank") from None
            if not isinstance(rows[-1], dict):
                raise ValueError(f"line {number} is not a JSON object")
        for row, path in zip(rows, resume.real_paths([row["path"] for row in rows], current)):
            row["path"] = path
        if rows:
            expected = self._settings()
            recorded = "settings" in rows[0]
            found = dict(rows[0]["settings"]) if recorded else \
                settings_before_recorded(expected, rows[0].get("model"))
            tagged = [row["tags"] for row in rows if row.get("tags")]
            if self.layout.command == "tag" and tagged:
                found["labels"], expected["labels"] = list(tagged[0]), list(self.layout.labels)
            # as in Parquet: rows kept without patches would be skipped, never given them
            found["per_patch"], expected["per_patch"] = "patches" in rows[0], self.layout.per_patch
            resume.check_identity(str(self.path), found, expected, self.layout.same_outputs,
                                  recorded)
        return list(zip(lines, rows))

    def _settings(self) -> dict:
        """The run's identity but the labels (each row holds them as its keys)."""
        return {k: v for k, v in self.layout.identity.items() if k != "labels"}

    def _resume(self, current: Mapping[str, Source]) -> None:
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]  # a kill can only tear the last row
        try:
            entries = self._csv_entries(complete, current) if self.csv \
                else self._jsonl_entries(complete, current)
            kept = [(line, row) for line, row in entries
                    if resume.keep(row["path"], row["size_bytes"], row["mtime_ns"], row["status"],
                                   current, self.layout.strict)
                    and not (self.lost and self.lost(row))]
        except InputError:  # another model's or other settings' output: already said so
            raise
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as err:
            reason = f"a row without {err}" if isinstance(err, KeyError) else str(err)
            raise InputError(f"{self.path}: not an output of jaxmir ({reason}); {ANOTHER_OUTPUT}, "
                             f"or {OVERWRITE} to start it over") from None
        self.rows = [row for _, row in kept]
        kept_rows = {id(row) for row in self.rows}
        self.dropped = [row for _, row in entries if id(row) not in kept_rows]
        self.done = {(r["path"], r["size_bytes"], r["mtime_ns"]) for r in self.rows
                     if r["status"] in DONE}
        self.failed = {r["path"] for r in self.rows if r["status"] == ERROR}
        whole = self._header_bytes() + b"".join(line for line, _ in kept)
        if whole != data and not self.dry:
            write_atomically(self.path, lambda f: f.write(whole), durable=True)

    def encode(self, result: Result, extra: dict | None = None) -> bytes:
        if self.csv:
            row = summary(self.layout, result)
            values = [row[c] for c in BASE_COLUMNS] + [self.layout.model]
            if "settings" in self.header:
                values.append(json.dumps(self._settings(), sort_keys=True))
            values += [repr(row[label]) if row[label] is not None else ""
                       for label in self.layout.labels]
            return self._line(["" if v is None else v for v in values])
        record = base(result)  # not row's: a label may be named like a base column
        # UTF-8 text, as in Parquet and CSV: JSON would write a non-UTF-8 name's lone surrogates
        # as escapes that strict readers (pandas 3's Arrow strings) refuse
        record.update({key: as_text(record[key]) for key in ("path", "error") if record[key]})
        record["model"] = self.layout.model
        record["settings"] = self._settings()
        # the values from the result, not from a row: labels may be named like any other field
        if self.layout.command == "tag":
            record["tags"] = tag_means(self.layout, result) if result.ok else None
        else:
            record["embedding"] = None if not result.ok else embedding_mean(result).tolist()
        if self.layout.per_patch:
            record["patches"] = patches(result.values).tolist() if result.ok else None
        record.update(extra or {})
        return (json.dumps(record, allow_nan=True) + "\n").encode("utf-8")

    def write(self, result: Result) -> None:
        _append(self.handle, self.encode(result))
        self.rows_written += 1

    def close(self) -> None:
        if self.handle is not None and not self.handle.closed:
            self.handle.close()


def _listed_arrays(folder: Path, index: Path) -> list[Path]:
    """The arrays a ``.npy`` folder's index lists (jaxmir's own, inside the folder): what
    ``--overwrite`` removes, so that none is left without a row; anything else stays."""
    root, listed = folder.resolve(), []
    for line in index.read_bytes().splitlines():
        try:
            name = json.loads(line).get("npy")
        except (ValueError, AttributeError):
            continue  # a torn or foreign line names nothing to remove
        if not isinstance(name, str) or not name.endswith(".npy"):
            continue
        target = (folder / from_text(name)).resolve()
        if target.is_relative_to(root) and target.is_file():
            listed.append(target)
    return listed


def _remove_empty_folders(folder: Path, top: Path) -> None:
    """``folder`` and the folders above it, up to ``top`` (kept), that removing arrays emptied."""
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()  # only an empty folder goes
        except OSError:
            return
        folder = folder.parent


def _remove_array_temporaries(path: Path) -> None:
    """Remove the arrays a killed run was writing (``.<name>.npy.<random>.tmp``, as large as the
    arrays): no other run writes here (:func:`exclusive`), so none of them is being written.
    A folder holding an index of its own is another collection, which another run may be
    writing: its arrays are left alone."""
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = [name for name in subfolders
                         if not os.path.exists(os.path.join(folder, name, INDEX))]
        for name in names:
            if is_temporary(name, ".npy"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


class NpyWriter(Writer):
    """A folder of ``<name>.npy`` (per-patch arrays) plus ``index.jsonl`` (one row per file)."""

    def __init__(self, path: Path, layout: Layout, current: Mapping[str, Source], overwrite: bool,
                 names: Mapping[str, str], dry: bool = False):
        super().__init__(path, layout, dry)
        if path.exists() and not path.is_dir():
            raise InputError(f"--output {path} is a file; give a folder for the .npy files")
        check_writable(path)
        index = path / INDEX
        if not index.exists() and not overwrite and any(path.rglob("*.npy")):
            raise InputError(f"--output {path} already holds .npy files but no {INDEX} (not a "
                             f"jaxmir collection); {ANOTHER_OUTPUT}, or {OVERWRITE} to write "
                             "over files of the same names")
        if not dry:
            _remove_array_temporaries(path)
        listed = _listed_arrays(path, index) if overwrite and index.is_file() and not dry else []
        # no same_outputs: an array keeps the shape of the output name it was written under
        summary_only = Layout(layout.command, layout.identity, layout.labels, per_patch=False,
                              strict=layout.strict)

        def lost(row: dict) -> bool:  # a file of this run whose array was deleted: done again
            return bool(row.get("npy")) and row["path"] in current and \
                not (path / from_text(str(row["npy"]))).is_file()

        self.index = LinesWriter(index, summary_only, current, overwrite, lost, dry)
        # only once the index no longer lists them: a removal cut short leaves arrays without
        # rows (written again as needed), never rows without arrays
        for array in listed:
            try:
                array.unlink(missing_ok=True)
            except OSError:
                pass  # an array without a row is harmless; the run writes over it if it must
            _remove_empty_folders(array.parent, path)
        self.done, self.failed = self.index.done, self.index.failed
        taken = {from_text(str(row["npy"])): row["path"]
                 for row in self.index.rows if row.get("npy")}
        # a file done again keeps its array's name, though this run's folders would name it
        # otherwise: its new array replaces the old one, which no row would list any more
        earlier = {row["path"]: from_text(str(row["npy"])) for row in self.index.dropped
                   if row.get("npy") and row["path"] in names}
        taken.update({name: path for path, name in earlier.items() if name not in taken})
        self.names = _unique_names({**names, **earlier}, taken)

    def write(self, result: Result) -> str | None:
        name = self.names[result.source.path]
        _check_linked(self.index.handle)  # before an array goes into a folder made anew
        if result.ok:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            values = result.values.mean(axis=0, dtype=np.float64) if self.layout.average \
                else result.values
            values = np.ascontiguousarray(values, np.float32)
            write_atomically(target, lambda f: np.save(f, values, allow_pickle=False), durable=True)
        _append(self.index.handle,
                self.index.encode(result, {"npy": as_text(name) if result.ok else None}))
        self.rows_written += 1
        return str(self.path / name) if result.ok else None

    def close(self) -> None:
        self.index.close()


def parquet_schema(layout: Layout):
    """The Parquet schema of ``layout``'s rows, its identity in the metadata (``b"jaxmir"``)."""
    import pyarrow as pa

    layout.check_label_columns(PARQUET_COLUMNS + ["patches"] * layout.per_patch, "Parquet")
    fields = [pa.field("path", pa.string()), pa.field("size_bytes", pa.int64()),
              pa.field("mtime_ns", pa.int64()), pa.field("duration_s", pa.float64()),
              pa.field("n_patches", pa.int64()), pa.field("status", pa.string()),
              pa.field("error", pa.string())]
    if layout.command == "tag":
        fields += [pa.field(label, pa.float64()) for label in layout.labels]
    else:
        fields.append(pa.field("embedding", pa.list_(pa.float32())))
    if layout.per_patch:
        fields.append(pa.field("patches", pa.list_(pa.list_(pa.float32()))))
    return pa.schema(fields, metadata={"jaxmir": layout.identity_json()})


def parquet_table(layout: Layout, results: list[Result], schema=None):
    """``results`` as a ``pyarrow.Table`` of :func:`parquet_schema` (the same column types
    whatever mix of ok and failed files it holds)."""
    import pyarrow as pa

    schema = parquet_schema(layout) if schema is None else schema
    rows = [summary(layout, r) for r in results]
    columns = {name: [row[name] for row in rows] for name in schema.names}
    for name in ("path", "error"):
        columns[name] = [None if v is None else as_text(v) for v in columns[name]]
    arrays = (["embedding"] if layout.command == "embed" else []) + ["patches"] * layout.per_patch
    for name in arrays:  # not a label named so, in a tag table without patches
        columns[name] = pa.chunked_array([_list_row(v, schema.field(name).type)
                                          for v in columns[name]], schema.field(name).type)
    return pa.Table.from_pydict(columns, schema=schema)


def _list_row(values: np.ndarray | None, kind):
    """One row of a list column of ``kind`` from ``values`` (``[dim]``, or ``[n, dim]`` for a
    list of lists) as Arrow views of its float32 buffer: ``tolist()`` made a Python float of
    every value (a 30-min recording's cnn3 patches, 58 MB, took 1.5 GB on their way)."""
    import pyarrow as pa

    if values is None:
        return pa.nulls(1, kind)
    flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1))
    if values.ndim == 2:
        rows, width = values.shape
        flat = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * width),
                                        flat)
    return pa.ListArray.from_arrays(pa.array(np.array([0, len(flat)], np.int32)), flat)


_STATE_COLUMNS = ("path", "size_bytes", "mtime_ns", "status")  # what a resumed run compares


class ParquetWriter(Writer):
    """A folder of Parquet parts, one per ``flush_rows`` rows (or ``flush_seconds``)."""

    def __init__(self, path: Path, layout: Layout, current: Mapping[str, Source], overwrite: bool,
                 flush_rows: int = 256, flush_seconds: float = 60.0, dry: bool = False):
        super().__init__(path, layout, dry)
        import pyarrow as pa

        self.pa = pa
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        if path.exists() and not path.is_dir():
            if not path.is_file():  # --overwrite removed a FIFO or a device node (/dev/full)
                raise InputError(f"--output {path} is not a regular file (a pipe, a device or "
                                 f"a socket), nor a jaxmir Parquet folder; {ANOTHER_OUTPUT}")
            if not overwrite:
                raise InputError(f"--output {path} is a file, not a jaxmir Parquet folder; "
                                 f"{ANOTHER_OUTPUT}, or {OVERWRITE} to replace it")
            path.unlink()
        self.schema = parquet_schema(layout)
        if dry and not path.is_dir():
            return  # nothing there to read
        if not path.exists():
            # made with an empty part, which gives the table's columns (and identity) before
            # its first row: killed before it, a run left a folder read as a table of no columns
            check_writable(path.parent)
            for stale in path.parent.iterdir():  # a folder a killed run was making
                if stale.is_dir() and is_temporary_of(stale.name, path.name):
                    shutil.rmtree(stale, ignore_errors=True)
            make_folder_atomically(path, self._empty_part)
        check_writable(path, own_table=True)
        # readers take every name not starting with '.' or '_' as part of the table
        foreign = sorted(p.name for p in path.iterdir()
                         if not _PART.match(p.name) and not p.name.startswith((".", "_")))
        if foreign:
            which = "which is no part" if len(foreign) == 1 else "which are no part"
            raise InputError(f"--output {path} holds {', '.join(foreign[:3])}"
                             f"{' and more' if len(foreign) > 3 else ''}, {which} of a "
                             "jaxmir Parquet folder (pyarrow and pandas would fail to read it "
                             f"as one table); {ANOTHER_OUTPUT}")
        parts = sorted(p for p in path.iterdir() if _PART.match(p.name))
        if dry:
            self._resume([] if overwrite else parts, current)
            return
        for stale in path.iterdir():
            if is_temporary(stale.name, ".parquet"):  # a part a killed run was writing
                stale.unlink()
        if overwrite:
            for part in parts:
                part.unlink()
            parts = []
        self._resume(parts, current)
        numbers = [int(_PART.match(p.name).group(1)) for p in path.iterdir() if _PART.match(p.name)]
        if not numbers:  # --overwrite, or every row of the run before redone
            self._empty_part(path)
            numbers = [0]
        self.next_part = max(numbers) + 1
        self.buffer: list[dict] = []
        self.last_flush = time.monotonic()
        self._folder = file_key(str(path))  # a folder made anew under the name has another
        self._parts_written: list[Path] = []

    def _check_kept(self) -> None:
        """:class:`InputError` when the folder was deleted (or made anew) or a part this run
        wrote was removed during the run: "every row written before is kept", it said of them."""
        gone = [part.name for part in self._parts_written if not part.is_file()]
        same_folder = file_key(str(self.path)) == self._folder
        if not same_folder or gone:
            what = f"lost {gone[0]}" if same_folder else "was deleted"
            raise InputError(f"{self.path} {what} while this run wrote to it; the rows written "
                             "there are gone: run the same command again")

    def _empty_part(self, folder: Path) -> None:
        """``part-000000.parquet`` in ``folder``: no row, the table's columns and identity."""
        import pyarrow.parquet as pq

        empty = parquet_table(self.layout, [], self.schema)
        write_atomically(folder / f"part-{0:06d}.parquet", lambda f: pq.write_table(empty, f),
                         durable=True)

    def _resume(self, parts: list[Path], current: Mapping[str, Source]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        def unreadable(part: Path, err: Exception) -> InputError:
            return InputError(f"{part}: unreadable Parquet part ({err}); move it away, or "
                              f"{OVERWRITE} to start over")

        for part in parts:
            try:
                found = pq.read_schema(part)
            except Exception as err:  # noqa: BLE001 -- pyarrow raises several kinds
                raise unreadable(part, err) from None
            if b"jaxmir" not in (found.metadata or {}):
                raise InputError(f"{part}: not a part jaxmir wrote (it records no model or "
                                 f"settings); {ANOTHER_OUTPUT}, or {OVERWRITE} to start over")
            identity = json.loads(found.metadata[b"jaxmir"])
            # a list column; a label may be named so (a float column) in a table without them
            identity["per_patch"] = ("patches" in found.names
                                     and pa.types.is_list(found.field("patches").type))
            resume.check_identity(str(self.path), identity,
                                  {**self.layout.identity, "per_patch": self.layout.per_patch},
                                  self.layout.same_outputs)
            _check_columns(part, found, self.schema)
            try:  # what a row's state is, not its arrays (a collection's whole per-patch table)
                table = pq.read_table(part, columns=list(_STATE_COLUMNS))
            except Exception as err:  # noqa: BLE001
                raise unreadable(part, err) from None
            columns = {c: table.column(c).to_pylist() for c in _STATE_COLUMNS}
            columns["path"] = resume.real_paths(columns["path"], current)
            rows = list(zip(columns["path"], columns["size_bytes"], columns["mtime_ns"],
                            columns["status"]))
            mask = [resume.keep(*row, current, self.layout.strict) for row in rows]
            self.done |= {row[:3] for row, kept in zip(rows, mask) if kept and row[3] in DONE}
            self.failed |= {row[0] for row, kept in zip(rows, mask) if kept and row[3] == ERROR}
            if all(mask) or self.dry:
                continue
            if not any(mask):
                part.unlink()
            else:
                kept = pq.read_table(part).filter(self.pa.array(mask))
                write_atomically(part, lambda f: pq.write_table(kept, f), durable=True)

    def write(self, result: Result) -> None:
        self.buffer.append(result)
        if (len(self.buffer) >= self.flush_rows
                or time.monotonic() - self.last_flush >= self.flush_seconds):
            self.flush()

    def abandon(self) -> None:
        self.buffer = []

    def close(self) -> None:
        self.flush()
        if not self.dry:  # the last part written, the parts before it may have gone since
            self._check_kept()

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        self._check_kept()
        table = parquet_table(self.layout, self.buffer, self.schema)
        target = self.path / f"part-{self.next_part:06d}.parquet"
        write_atomically(target, lambda f: pq.write_table(table, f), durable=True)
        self._parts_written.append(target)
        self.rows_written += len(self.buffer)
        self.next_part += 1
        self.buffer = []
        self.last_flush = time.monotonic()


def _check_columns(part: Path, found, expected) -> None:
    """:class:`InputError` unless the part's columns are the run's, of its types: a column
    dropped or added by a user's edit was read as nulls, or vanished, from the whole table."""
    theirs = {field.name: field.type for field in found}
    ours = {field.name: field.type for field in expected}
    differences = [f"no column {name!r}" for name in ours if name not in theirs] + \
        [f"a column {name!r} it should not hold" for name in theirs if name not in ours] + \
        [f"column {name!r} of type {theirs[name]}, not {kind}" for name, kind in ours.items()
         if name in theirs and theirs[name] != kind]
    if differences:
        raise InputError(f"{part}: {', '.join(differences[:3])}"
                         f"{' and more' if len(differences) > 3 else ''} (edited since jaxmir "
                         f"wrote it?); move it away to do its files again, or {OVERWRITE} to "
                         "start over")


def open_output(output: str, layout: Layout, sources: list[Source], overwrite: bool = False,
                flush_rows: int = 256, flush_seconds: float = 60.0,
                kind: str | None = None, dry: bool = False) -> Writer:
    """The writer for ``output`` (``kind``: :func:`kind_of` the name given, by default this
    one's; a link's target may be named otherwise), resumed unless ``overwrite``; ``dry``:
    only read, to learn what is ``done`` (see :class:`Writer`).

    Raises:
      InputError: an unknown kind, an output that cannot be written, or one
        that holds another model's results (unless ``overwrite``).
    """
    current = {s.path: s for s in sources}
    path = Path(output)
    kind = kind or kind_of(output, layout.command)
    if kind == "parquet":
        return ParquetWriter(path, layout, current, overwrite, flush_rows, flush_seconds, dry)
    if kind == "npy":
        return NpyWriter(path, layout, current, overwrite, npy_names(current), dry)
    return LinesWriter(path, layout, current, overwrite, dry=dry, kind=kind)
