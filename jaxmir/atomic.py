"""Writing a file so that its readers see the old content or the new one, never a part.

The content goes into a hidden temporary file in the target's folder, which
then replaces the target by a rename (atomic within one file system). Used for
every file jaxmir writes whole: arrays, weights, pictures, command output, a Parquet
table's parts (JSONL and CSV tables are appended to, row by row).
:func:`deferred_interrupts` keeps Ctrl-C out of a few renames that belong together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from jaxmir.interrupts import STOPPING


def fsync_dir(folder: str | os.PathLike) -> None:
    """Sync ``folder`` itself, so that a rename in it survives a power cut."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover -- platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_NAME_PREFIX_BYTES = 200  # of a name in one made from it (a temporary, a lock): 255 allowed


def name_prefix(name: str) -> str:
    """The first 200 bytes of a file's ``name``: room for what a name made from it adds
    (``.<name>.<random>.tmp`` takes 214 bytes), when ``name`` takes all 255 a file system allows."""
    return os.fsdecode(os.fsencode(name)[:_NAME_PREFIX_BYTES])


def is_temporary(name: str, suffix: str = "") -> bool:
    """Whether ``name`` is one :func:`write_atomically` writes a file whose name ends in ``suffix``
    under (``.<name>.<8 random characters>.tmp``): where no writer runs, one a killed run left.
    A name cut to its first 200 bytes (:func:`name_prefix`) may have lost ``suffix``: it counts."""
    match = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]{8}\.tmp", name)
    return match is not None and (match.group(1).endswith(suffix)
                                  or len(os.fsencode(match.group(1))) == _NAME_PREFIX_BYTES)


def is_temporary_of(name: str, target: str) -> bool:
    """Whether ``name`` is a temporary :func:`write_atomically` or :func:`make_folder_atomically`
    makes for ``target`` itself (``.x.parquet.<random>.tmp`` is ``x.parquet``'s, and not
    ``x.parquet.parquet``'s, which ``.x.parquet.`` also begins)."""
    return re.fullmatch(rf"\.{re.escape(name_prefix(target))}\.[A-Za-z0-9_]{{8}}\.tmp",
                        name) is not None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open`` gives a new file (``0o666`` less the umask); ``mkstemp``'s are 0600."""
    return 0o666 & ~_umask()


LINK_LOOP = "is a link that leads to no file (a loop)"  # an output's, in every refusal of one


def is_link_loop(path: str | os.PathLike) -> bool:
    """Whether following ``path``'s links (its own, or a folder's on the way) goes round."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def through_link(target: str | os.PathLike) -> Path:
    """The file a write to ``target`` replaces: the one a symbolic link names (the link stays),
    else ``target`` itself."""
    return Path(os.path.realpath(target) if os.path.islink(target) else target)


def _special_kind(path: Path) -> int | None:
    """The file type (``stat.S_IFIFO``, ...) of an existing ``path`` that is neither a regular
    file nor a folder, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else stat.S_IFMT(mode)


def write_atomically(target: str | os.PathLike, write: Callable[[BinaryIO], object], *,
                     durable: bool = False) -> Path:
    """``write(handle)`` into ``.<name>.<random>.tmp`` beside ``target``, then rename it over
    ``target``.

    The file keeps what a plain ``open`` would keep: an existing file's mode, owner and group
    (it was given 0644 whatever they were; :func:`_keep_owner_and_mode`); a new file gets
    ``0o666`` less the umask (``mkstemp``'s are 0600). An existing file this process may not
    write is a :class:`PermissionError`, as ``open`` would raise, not replaced
    (:func:`check_replaceable`). With ``durable``, the file is synced before the rename and
    its folder after it. On any error, the temporary file is removed and
    ``target`` is as it was. A symbolic link keeps pointing at the file written: the file it
    names is replaced. A pipe or a character device (``/dev/null``, a terminal) is written to,
    not replaced; another kind of file (a block device, a socket) is an :class:`OSError`.
    Returns the file written as a :class:`~pathlib.Path`.
    """
    kind = _special_kind(Path(target))  # through links, as open takes them: a link's real path
    if kind in (stat.S_IFIFO, stat.S_IFCHR):  # may name no file (/dev/stdout to a pipe)
        with open(target, "wb") as file:
            write(file)
        return Path(target)
    if kind is not None:
        raise OSError(errno.EINVAL, "not a regular file, a pipe or a character device", str(target))
    target = through_link(target)
    existing = check_replaceable(target)
    handle, temporary = tempfile.mkstemp(prefix=f".{name_prefix(target.name)}.", suffix=".tmp",
                                         dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            _keep_owner_and_mode(file.fileno(), existing)
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)
    return target


def check_replaceable(target: str | os.PathLike) -> os.stat_result | None:
    """``target``'s state where it exists (``None`` where it does not), or
    :class:`PermissionError` where this process may not write it (a read-only output, kept so
    by its owner): what :func:`write_atomically` checks, for a check before the work."""
    try:
        status = os.stat(target)
    except FileNotFoundError:
        return None
    if not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
    return status


def _keep_owner_and_mode(handle: int, existing: os.stat_result | None) -> None:
    """Give ``handle``'s file the owner, group and mode of the file it replaces (a 0600 file of
    another owner, made this process's, would lock its owner out): where the owner cannot be
    given (not root), the group and mode (a shared folder's group keeps its access), where
    neither can, the mode no wider than a new file's (a 0600 file stays 0600: 0644 would show
    it to all), with what the old group and others both had for the new group and others (who
    now hold its old group); never a set-user-ID for another owner; a new file's mode without
    ``existing``."""
    if existing is None:
        os.fchmod(handle, new_file_mode())
        return
    made = os.fstat(handle)  # this process's, or a setgid folder's group
    mode = stat.S_IMODE(existing.st_mode)
    if (existing.st_uid, existing.st_gid) != (made.st_uid, made.st_gid):
        try:
            os.fchown(handle, existing.st_uid, existing.st_gid)
        except OSError:
            mode &= ~stat.S_ISUID  # another owner: not its set-user-ID
            try:
                os.fchown(handle, -1, existing.st_gid)
            except OSError:
                mode &= new_file_mode()
                if made.st_gid != existing.st_gid:  # another group: what both had, for both
                    shared = (mode >> 3) & mode & 0o7
                    mode = (mode & 0o700) | shared << 3 | shared
    os.fchmod(handle, mode)


def make_folder_atomically(target: str | os.PathLike, fill: Callable[[Path], object]) -> Path:
    """``fill(folder)`` in ``.<name>.<random>.tmp`` beside ``target``, then rename it to
    ``target`` (which must not exist): no reader ever sees the folder without what ``fill``
    puts in it. A killed run's temporary folder is one :func:`is_temporary` names."""
    target = Path(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{name_prefix(target.name)}.", suffix=".tmp",
                                      dir=target.parent))
    try:
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's own are 0700
        fill(temporary)
        os.rename(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return target


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why no file can be made in the existing ``folder`` (read-only, no permission, full), or
    ``None``: a probe file is made there and removed."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".jaxmir-probe-"):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT), SIGTERM and SIGHUP until the block is done, then deliver them to the
    handlers they would have met: for a few renames that must all happen or none (SIGKILL still
    stops anything). Outside the main thread, where Python runs signal handlers, it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {kind: signal.signal(kind, lambda signum, frame: held.append(signum))
                for kind in STOPPING}
    try:
        yield
    finally:
        for kind, handler in previous.items():  # None: a handler set outside Python
            signal.signal(kind, signal.SIG_DFL if handler is None else handler)
        for kind in dict.fromkeys(held):
            signal.raise_signal(kind)
