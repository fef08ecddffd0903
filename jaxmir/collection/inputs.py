"""The files of a collection: paths, folders and ``@list.txt`` files expanded to audio files.

A folder is walked recursively; files with an audio extension are kept, hidden
files and folders (a name starting with ``.``) are skipped, and the result is
sorted. ``@list.txt`` names one path per line (blank lines and lines starting
with ``#`` are ignored; relative paths are relative to the list's folder).
A file named directly is always kept, whatever its extension.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import stat
import warnings
from pathlib import Path
from typing import Container, Iterable, Sequence

from jaxmir.decode import AUDIO_EXTENSIONS
from jaxmir.errors import InputError, JaxmirWarning

@dataclasses.dataclass(frozen=True)
class Source:
    """One input file: its absolute path and its state when the run started.

    ``size`` (bytes) and ``mtime_ns`` identify the version of the file: a row
    is reused on resume only when both still match. They are ``-1`` for a file
    that could not be examined (it is then reported as a failure).
    """

    path: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.path, self.size, self.mtime_ns)

    @property
    def reachable(self) -> bool:
        """Whether the file could be examined when the run started."""
        return self.size >= 0


def absolute(path: str) -> str:
    """``path`` made absolute as the file system reads it: ``os.path.abspath`` drops ``x/..``
    as text, which names another folder where ``x`` is a link (``m/..`` with ``m`` a link to
    ``music/rock`` is ``music``), so the folders up to the last ``..`` are resolved first."""
    path = os.path.join(os.getcwd(), path)
    parts = path.split(os.sep)
    if ".." not in parts:
        return os.path.normpath(path)
    last = len(parts) - 1 - parts[::-1].index("..")
    try:
        above = os.path.realpath(os.sep.join(parts[:last + 1]))
    except ValueError:  # a NUL in the name: no file, its row says so
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(above, *parts[last + 1:]))


def audio_files(folder: Path) -> list[str]:
    """The audio files below ``folder`` (:data:`AUDIO_EXTENSIONS`), sorted, hidden files and
    folders skipped, each real file once: linked folders followed, each real folder once (a link
    loop ends there), and a file reached both ways listed by its path without links where it has
    one (the real folders are all walked before any linked one); FIFOs, sockets and devices left
    out (reading one could wait forever). A folder that cannot be listed is listed itself: its
    row then says so (:func:`jaxmir.decode.folder_problem`), where its files would vanish."""
    met: list[tuple[bool, str, tuple[int, int] | str]] = []  # (is a link, path, identity)
    seen: set[tuple[int, int]] = set()
    roots = [str(folder)]

    def unlisted(err: OSError) -> None:
        met.append((False, err.filename, absolute(err.filename)))

    while roots:  # the folder, then each linked folder met, in the order met
        for root, dirs, files in os.walk(roots.pop(0), onerror=unlisted):
            state = os.stat(root)
            if (state.st_dev, state.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((state.st_dev, state.st_ino))
            dirs.sort()
            links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
            roots += [os.path.join(root, d) for d in links if not d.startswith(".")]
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in links]
            met += [file for file in (_audio_file(os.path.join(root, name))
                                      for name in sorted(files)
                                      if not name.startswith(".")
                                      and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS)
                    if file is not None]
    found: dict[tuple[int, int] | str, str] = {}
    for _, path, identity in sorted(met, key=lambda file: file[0]):  # files before links to them
        found.setdefault(identity, path)
    return sorted(found.values())


def _audio_file(path: str) -> tuple[bool, str, tuple[int, int] | str] | None:
    """``(is a link, path, identity)`` for a regular file or a name that cannot be followed (a
    broken link: its row says so); None for a FIFO, a socket or a device (reading one could
    wait forever)."""
    try:
        state = os.stat(path)
    except OSError:
        return True, path, absolute(path)
    if not stat.S_ISREG(state.st_mode):
        return None
    return os.path.islink(path), path, (state.st_dev, state.st_ino)


def file_key(path: str) -> tuple[int, int] | str:
    """What makes two names one file: its device and inode, or its absolute path when it
    cannot be examined (a broken link, a name that does not exist)."""
    try:
        state = os.stat(path)
    except (OSError, ValueError):
        return absolute(path)
    return (state.st_dev, state.st_ino)


def _read_list(list_file: str) -> list[str]:
    """The paths a list names, one per line (a byte-order mark allowed; names as the file system
    spells them, UTF-8 or not, as ``ls > list.txt`` writes them); blank lines and lines starting
    with ``#`` that name no file are skipped; relative paths are taken from the list's folder."""
    try:
        data = Path(list_file).read_bytes()
    except OSError as err:
        named = f"; a file named @{list_file} is ./@{list_file}" \
            if os.path.lexists(f"@{list_file}") else ""
        raise InputError(f"@{list_file}: cannot read the list of paths ({err}); expected a text "
                         f"file with one path per line{named}") from None
    if b"\0" in data:  # UTF-16 (as Windows Notepad saves) or not text: no path holds a NUL
        kind = "UTF-16 text" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else \
            "not text (it holds NUL bytes)"
        raise InputError(f"@{list_file}: {kind}; expected a UTF-8 (or plain) text file with one "
                         "path per line")
    lines = [os.fsdecode(line) for line in _lines(data.removeprefix(codecs.BOM_UTF8))]
    base = Path(list_file).parent
    return [_listed(base, line) for line in lines
            if line.strip() and not _comment(base, line)]


def _comment(base: Path, line: str) -> bool:
    """Whether a list's line is a comment: it starts with ``#`` and names no file (``ls >
    list.txt`` writes ``#1 take.wav`` as it is)."""
    return line.strip().startswith("#") and not os.path.lexists(_listed(base, line))


def _lines(data: bytes) -> list[bytes]:
    """A list's lines: ended by LF, by CR LF where every line is (Windows), or by CR where no
    LF is (classic Mac OS); a carriage return inside a name is part of it (splitlines() cut
    'a\rb.wav' in two)."""
    if b"\n" not in data:
        return data.split(b"\r")
    lines = data.split(b"\n")
    if all(line.endswith(b"\r") for line in lines[:-1]):
        lines = [line.removesuffix(b"\r") for line in lines]
    return lines


def _listed(base: Path, line: str) -> str:
    """The path a list's line names: as written where that exists (a name may begin or end
    with spaces), else without the spaces around it (as typed by hand)."""
    exact = os.path.join(base, line)  # "./@x.wav", not Path's "@x.wav": a path, not a list
    return exact if os.path.lexists(exact) else os.path.join(base, line.strip())


def expand(arguments: str | bytes | os.PathLike | Sequence[str | bytes | os.PathLike],
           output: str | os.PathLike | None = None, table: bool = True) -> list[str]:
    """Absolute paths of the audio files that ``arguments`` name, each file once (by its name
    without links where it has one, else by the name met first).

    Arguments are files, folders or ``@list.txt`` (one of them alone, or a
    sequence); a name that does not exist is kept (it becomes a failed row
    naming it), an empty folder is an error. A name that is the run's ``output`` (``in/*``
    once ``-o in/tags.csv`` is written) or lies in it is left out with a warning; but for
    a folder of arrays (not a ``table``), which may hold the audio it is written for, only
    the folder itself where it holds none.
    """
    if isinstance(arguments, (str, bytes, os.PathLike)):  # one name, not a sequence of characters
        arguments = [arguments]
    paths: list[str] = []
    real_output = None if output is None else os.path.realpath(output)
    for argument in map(os.fsdecode, arguments):
        if real_output is not None and _is_output(argument, real_output, table):
            warnings.warn(f"{argument}: the output of this run; left out of its inputs",
                          JaxmirWarning, stacklevel=2)
        elif argument.startswith("@") and len(argument) > 1:
            listed = _read_list(argument[1:])
            if not listed:  # as an empty folder: a run of nothing is a mistake
                raise InputError(f"{argument}: names no files (only blank lines and # comments)")
            paths += expand(listed, output, table)
        elif os.path.isdir(argument):
            files = audio_files(Path(argument))
            if not files:
                raise InputError(f"{argument}: no audio files in this folder (looked for "
                                 f"{', '.join(sorted(AUDIO_EXTENSIONS))})")
            paths += files
        else:
            paths.append(argument)
    return once_each([absolute(path) for path in paths])


def _is_output(path: str, real_output: str, table: bool) -> bool:
    """Whether ``path`` names the output whose real path is ``real_output`` (whatever the links
    on the way) as :func:`expand` leaves it out."""
    path = os.path.realpath(path)
    if table:
        return path == real_output or path.startswith(real_output.rstrip(os.sep) + os.sep)
    return path == real_output and not (os.path.isdir(path) and audio_files(Path(path)))


def folders_named(arguments: str | bytes | os.PathLike | Sequence[str | bytes | os.PathLike]
                  ) -> list[str]:
    """The absolute paths of the folders among ``arguments`` (as :func:`expand` takes them; not
    those of ``@list`` files)."""
    if isinstance(arguments, (str, bytes, os.PathLike)):
        arguments = [arguments]
    return [absolute(name) for name in map(os.fsdecode, arguments)
            if not name.startswith("@") and os.path.isdir(name)]


def once_each(paths: Iterable[str], names_only: Container[str] = ()) -> list[str]:
    """``paths`` with each file once (one file by two names: a link, a folder and a folder in
    it), where it came first, by its name without links where it has one; a path in
    ``names_only`` is compared by its name alone."""
    unique: dict[tuple[int, int] | str, str] = {}
    for path in paths:
        identity = path if path in names_only else file_key(path)
        if identity not in unique or (_through_links(unique[identity])
                                      and not _through_links(path)):
            unique[identity] = path
    return list(unique.values())


def _through_links(path: str) -> bool:
    """Whether ``path`` names its file through a symbolic link."""
    path = absolute(path)
    return os.path.realpath(path) != path


def examine(path: str) -> Source:
    """The file's size and modification time now (``-1, -1`` when it cannot be examined)."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return Source(path, -1, -1)
    return Source(path, int(stat.st_size), int(stat.st_mtime_ns))


def npy_names(paths: Iterable[str]) -> dict[str, str]:
    """A unique relative ``.npy`` name per absolute path, whatever the order of the paths.

    Names mirror the folders below the deepest folder common to all paths
    (``rock/a.wav`` -> ``rock/a.npy``); two files differing only by extension
    keep it (``a.wav.npy``, ``a.flac.npy``).
    """
    paths = sorted(set(paths))
    if not paths:
        return {}
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    relative = {p: os.path.relpath(p, root) for p in paths}
    stems: dict[str, int] = {}
    for rel in relative.values():
        stem = os.path.splitext(rel)[0]
        stems[stem] = stems.get(stem, 0) + 1
    full = {path for path, rel in relative.items() if stems[os.path.splitext(rel)[0]] > 1}
    while True:
        names = {path: (rel if path in full else os.path.splitext(rel)[0]) + ".npy"
                 for path, rel in relative.items()}
        holders: dict[str, list[str]] = {}
        for path, name in names.items():
            holders.setdefault(name, []).append(path)
        # a short name may be another file's full one (x.wav.flac -> x.wav.npy, beside x.wav's)
        clashing = {path for group in holders.values() if len(group) > 1 for path in group} - full
        if not clashing:
            return names
        full |= clashing
