"""Writers of a collection's rows, chosen by the output's extension; incremental, kill-safe, resumable.

* ``.parquet``: a *folder* of part files (``OUT.parquet/part-000000.parquet``,
  ...), read as one table by ``pyarrow.parquet.read_table(OUT)`` and
  ``pandas.read_parquet(OUT)``. A part is written under a hidden temporary
  name (``.part-....tmp``, which readers ignore), synced, then renamed: a
  part is either complete or absent. Every part carries the run's identity
  (model, output, labels, patch options) in its schema metadata.
* ``.jsonl`` / ``.csv``: one line per file, appended, flushed and synced
  line by line; a kill can only leave a torn last line, which the next run
  drops (by rewriting the file atomically) before appending.
* a folder (``embed``; or a name with no extension): one ``.npy`` per file,
  ``[n_patches, ...]`` float32, written atomically, then its row appended to
  ``index.jsonl`` there: a ``.npy`` without a row is simply done again.

On resume, kept rows are those :func:`jaxmir.collection.resume.keep` keeps;
when anything is dropped the part or file holding it is rewritten atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from jaxmir.atomic import write_atomically
from jaxmir.collection import resume
from jaxmir.collection.inputs import Source, npy_names
from jaxmir.collection.rows import BASE_COLUMNS, DONE, Layout, Result, summary
from jaxmir.errors import InputError

KINDS = ("parquet", "jsonl", "csv", "npy")
INDEX = "index.jsonl"
_PART = re.compile(r"^part-(\d{6,})\.parquet$")


def kind_of(output: str, command: str) -> str:
    """``parquet``, ``jsonl``, ``csv`` or ``npy`` (a folder) from the output's name."""
    suffix = Path(output).suffix.lower()
    if suffix in (".parquet", ".jsonl", ".csv"):
        return suffix[1:]
    if suffix in ("", ".npy") or os.path.isdir(output):
        return "npy"
    expected = ".parquet, .jsonl or .csv" if command == "tag" else ".parquet, .jsonl or a folder"
    raise InputError(f"--output {output}: unknown kind {suffix!r}; expected {expected}")


# -- atomic file operations ---------------------------------------------------------------------


def check_writable(folder: Path) -> None:
    """Fail now, with a clear message, when nothing can be written in ``folder``."""
    probe = folder / f".jaxmir-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"cannot write the output in {folder}: {err.strerror or err}") from None


def _append(handle, data: bytes) -> None:
    """Append whole lines and make them durable (one call per row)."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


# -- writers ---------------------------------------------------------------------------------------
class Writer:
    """Base: ``done`` (keys of kept rows), ``write(result)``, ``flush()``, ``close()``."""

    def __init__(self, path: Path, layout: Layout):
        self.path, self.layout = path, layout
        self.done: set[tuple[str, int, int]] = set()
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
    """``.jsonl`` or ``.csv``: whole lines appended and synced one row at a time."""

    def __init__(self, path: Path, layout: Layout, current: Mapping[str, Source], overwrite: bool):
        super().__init__(path, layout)
        self.csv = path.suffix.lower() == ".csv"
        if self.csv and (layout.command != "tag" or layout.per_patch):
            raise InputError(f"--output {path}: CSV holds tag means only; use .parquet or .jsonl "
                             "for embeddings and --per-patch")
        self.header = list(BASE_COLUMNS) + ["model"] + list(layout.labels)
        check_writable(path.parent)
        if path.is_dir():
            raise InputError(f"--output {path} is a folder; expected a {path.suffix} file")
        if overwrite or not path.exists():
            write_atomically(path, lambda f: f.write(self._header_bytes()), durable=True)
        else:
            self._resume(current)
        self.handle = open(path, "ab")

    def _header_bytes(self) -> bytes:
        return self._line(self.header) if self.csv else b""

    def _line(self, values: list) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue().encode("utf-8")

    def _parse(self, lines: list[bytes]) -> list[dict]:
        if self.csv:
            reader = csv.reader(io.StringIO(b"".join(lines).decode("utf-8")))
            header = next(reader, None)
            if header is None:
                return []
            rows = [dict(zip(header, values)) for values in reader]
            found = rows[0]["model"] if rows and "model" in rows[0] else "unknown"
            if header != self.header:
                labels = [h for h in header or [] if h not in BASE_COLUMNS and h != "model"]
                resume.check_identity(str(self.path), {"model": found, "labels": labels},
                                      {"model": self.layout.model, "labels": list(self.layout.labels)})
            for row in rows:
                row["size_bytes"], row["mtime_ns"] = int(row["size_bytes"]), int(row["mtime_ns"])
            return rows
        rows = [json.loads(line) for line in lines]
        if rows:
            expected = self._settings()
            found = dict(rows[0].get("settings") or {"model": rows[0].get("model")})
            if "settings" not in rows[0]:  # written without them: the model is what can be checked
                expected = {"model": expected["model"]}
            tagged = [row["tags"] for row in rows if row.get("tags")]
            if self.layout.command == "tag" and tagged:
                found["labels"], expected["labels"] = list(tagged[0]), list(self.layout.labels)
            resume.check_identity(str(self.path), found, expected)
        return rows

    def _settings(self) -> dict:
        """The run's identity but the labels (each row holds them as its keys)."""
        return {k: v for k, v in self.layout.identity.items() if k != "labels"}

    def _resume(self, current: Mapping[str, Source]) -> None:
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]  # a kill can only tear the last line
        lines = complete.splitlines(keepends=True)
        body = lines[1:] if self.csv and lines else lines
        try:
            rows = self._parse(lines)
        except InputError:  # another model's or other settings' output: already said so
            raise
        except (ValueError, KeyError, UnicodeDecodeError) as err:
            raise InputError(f"{self.path}: not an output of jaxmir ({err}); give another --output, "
                             "or --overwrite to start it over") from None
        kept = [line for line, row in zip(body, rows)
                if resume.keep(row["path"], row["size_bytes"], row["mtime_ns"], row["status"],
                               current)]
        self.done = {(r["path"], r["size_bytes"], r["mtime_ns"]) for r in rows if r["status"] in DONE}
        if len(kept) != len(body) or len(complete) != len(data) or (self.csv and not lines):
            write_atomically(self.path, lambda f: f.write(self._header_bytes() + b"".join(kept)),
                             durable=True)

    def encode(self, result: Result, extra: dict | None = None) -> bytes:
        row = summary(self.layout, result)
        if self.csv:
            values = [row[c] for c in BASE_COLUMNS] + [self.layout.model]
            values += [repr(row[label]) if row[label] is not None else "" for label in self.layout.labels]
            return self._line(["" if v is None else v for v in values])
        record = {c: row[c] for c in BASE_COLUMNS}
        record["model"] = self.layout.model
        record["settings"] = self._settings()
        if self.layout.command == "tag":
            record["tags"] = {label: row[label] for label in self.layout.labels} if result.ok else None
        elif "embedding" in row:
            record["embedding"] = None if row["embedding"] is None else row["embedding"].tolist()
        if self.layout.per_patch:
            record["patches"] = None if row["patches"] is None else row["patches"].tolist()
        record.update(extra or {})
        return (json.dumps(record, allow_nan=True) + "\n").encode("utf-8")

    def write(self, result: Result) -> None:
        _append(self.handle, self.encode(result))
        self.rows_written += 1

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()


class NpyWriter(Writer):
    """A folder of ``<name>.npy`` (per-patch arrays) plus ``index.jsonl`` (one row per file)."""

    def __init__(self, path: Path, layout: Layout, current: Mapping[str, Source], overwrite: bool,
                 names: Mapping[str, str]):
        super().__init__(path, layout)
        if path.exists() and not path.is_dir():
            raise InputError(f"--output {path} is a file; give a folder for the .npy files")
        check_writable(path)
        index = path / INDEX
        if not index.exists() and not overwrite and any(path.rglob("*.npy")):
            raise InputError(f"--output {path} already holds .npy files but no {INDEX} (not a "
                             "jaxmir collection); give another folder, or --overwrite to write "
                             "over files of the same names")
        summary_only = Layout(layout.command, layout.identity, layout.labels, per_patch=False)
        self.index = LinesWriter(index, summary_only, current, overwrite)
        self.done, self.names = self.index.done, dict(names)

    def write(self, result: Result) -> None:
        name = self.names.get(result.source.path) or Path(result.source.path).stem + ".npy"
        if result.ok:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            values = result.values.mean(axis=0, dtype=np.float64) if self.layout.average \
                else result.values
            values = np.ascontiguousarray(values, np.float32)
            write_atomically(target, lambda f: np.save(f, values, allow_pickle=False), durable=True)
        _append(self.index.handle, self.index.encode(result, {"npy": name if result.ok else None}))
        self.rows_written += 1
        return str(self.path / name) if result.ok else None

    def close(self) -> None:
        self.index.close()


class ParquetWriter(Writer):
    """A folder of Parquet parts, one per ``flush_rows`` rows (or ``flush_seconds``)."""

    def __init__(self, path: Path, layout: Layout, current: Mapping[str, Source], overwrite: bool,
                 flush_rows: int = 256, flush_seconds: float = 60.0):
        super().__init__(path, layout)
        import pyarrow as pa

        self.pa = pa
        self.flush_rows, self.flush_seconds = max(1, flush_rows), flush_seconds
        if path.exists() and not path.is_dir():
            if not overwrite:
                raise InputError(f"--output {path} is a file, not a jaxmir Parquet folder; give "
                                 "another --output, or --overwrite to replace it")
            path.unlink()
        check_writable(path)
        self.schema = self._schema()
        for stale in path.glob(".part-*.tmp"):
            stale.unlink()
        parts = sorted(p for p in path.iterdir() if _PART.match(p.name))
        if overwrite:
            for part in parts:
                part.unlink()
            parts = []
        self._resume(parts, current)
        numbers = [int(_PART.match(p.name).group(1)) for p in path.iterdir() if _PART.match(p.name)]
        self.next_part = max(numbers, default=-1) + 1
        self.buffer: list[dict] = []
        self.last_flush = time.monotonic()

    def _schema(self):
        pa = self.pa
        fields = [pa.field("path", pa.string()), pa.field("size_bytes", pa.int64()),
                  pa.field("mtime_ns", pa.int64()), pa.field("duration_s", pa.float64()),
                  pa.field("n_patches", pa.int64()), pa.field("status", pa.string()),
                  pa.field("error", pa.string())]
        if self.layout.command == "tag":
            fields += [pa.field(label, pa.float64()) for label in self.layout.labels]
        else:
            fields.append(pa.field("embedding", pa.list_(pa.float32())))
        if self.layout.per_patch:
            fields.append(pa.field("patches", pa.list_(pa.list_(pa.float32()))))
        return pa.schema(fields, metadata={"jaxmir": self.layout.identity_json()})

    def _resume(self, parts: list[Path], current: Mapping[str, Source]) -> None:
        import pyarrow.parquet as pq

        for part in parts:
            try:
                found = pq.read_schema(part)
                table = pq.read_table(part)
            except Exception as err:  # noqa: BLE001 -- pyarrow raises several kinds
                raise InputError(f"{part}: unreadable Parquet part ({err}); move it away, or "
                                 "--overwrite to start over") from None
            identity = json.loads((found.metadata or {}).get(b"jaxmir", b"{}"))
            resume.check_identity(str(self.path), identity, self.layout.identity)
            columns = {c: table.column(c).to_pylist() for c in ("path", "size_bytes", "mtime_ns", "status")}
            rows = list(zip(columns["path"], columns["size_bytes"], columns["mtime_ns"], columns["status"]))
            mask = [resume.keep(*row, current) for row in rows]
            self.done |= {row[:3] for row, kept in zip(rows, mask) if kept and row[3] in DONE}
            if all(mask):
                continue
            if not any(mask):
                part.unlink()
            else:
                kept = table.filter(self.pa.array(mask))
                write_atomically(part, lambda f: pq.write_table(kept, f), durable=True)

    def _columns(self, results: list[Result]) -> dict:
        rows = [summary(self.layout, r) for r in results]
        columns = {name: [row[name] for row in rows] for name in self.schema.names}
        for name in ("embedding", "patches"):
            if name in columns:
                columns[name] = [None if v is None else v.tolist() for v in columns[name]]
        return columns

    def write(self, result: Result) -> None:
        self.buffer.append(result)
        if (len(self.buffer) >= self.flush_rows
                or time.monotonic() - self.last_flush >= self.flush_seconds):
            self.flush()

    def abandon(self) -> None:
        self.buffer = []

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        table = self.pa.Table.from_pydict(self._columns(self.buffer), schema=self.schema)
        target = self.path / f"part-{self.next_part:06d}.parquet"
        write_atomically(target, lambda f: pq.write_table(table, f), durable=True)
        self.rows_written += len(self.buffer)
        self.next_part += 1
        self.buffer = []
        self.last_flush = time.monotonic()


def open_output(output: str, layout: Layout, sources: list[Source], overwrite: bool = False,
                flush_rows: int = 256, flush_seconds: float = 60.0) -> Writer:
    """The writer for ``output`` (kind from its extension), resumed unless ``overwrite``.

    Raises:
      InputError: an unknown kind, an output that cannot be written, or one
        that holds another model's results (unless ``overwrite``).
    """
    current = {s.path: s for s in sources}
    path = Path(output)
    kind = kind_of(output, layout.command)
    if kind == "parquet":
        return ParquetWriter(path, layout, current, overwrite, flush_rows, flush_seconds)
    if kind == "npy":
        return NpyWriter(path, layout, current, overwrite, npy_names(current))
    return LinesWriter(path, layout, current, overwrite)
