"""JAX's persistent compilation cache for the command line: where it lives, and keeping it healthy.

Compiled programs are kept in ``$JAXMIR_CACHE_DIR/jax`` (default
``~/.cache/jaxmir/jax``) so that a later run starts faster. A cache that
cannot be written (read-only, full disk) turns itself off with one line on
stderr; entries left empty, unreadable or cut short by an earlier failure (JAX
writes an entry in place, so a full disk or a file-size limit leaves a part of
it, which JAX fails to read, recompiles, and never writes again) are removed
before use.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable


def cache_dir() -> Path | None:
    """Where compiled programs are cached, or ``None`` when ``JAXMIR_NO_CACHE`` is set."""
    if os.environ.get("JAXMIR_NO_CACHE", "").strip() not in ("", "0"):
        return None
    root = os.environ.get("JAXMIR_CACHE_DIR") or Path.home() / ".cache" / "jaxmir"
    return Path(root) / "jax"


CHECKED = ".checked"  # a file in the cache whose time is that of the last check of its entries
# Entries written this recently may be another process's, still being written: read next time.
_SETTLE_NS = 10 * 10**9


def drop_broken_entries(directory: Path) -> int:
    """Remove empty or unreadable cache entries, and those written since the last check
    (:data:`CHECKED`) that are cut short; returns how many were removed."""
    stamp = directory / CHECKED
    started, removed = time.time_ns(), 0
    try:
        since = stamp.stat().st_mtime_ns
    except OSError:
        since = 0  # every entry, once
    if since > started:  # a clock set back, or another machine's: every entry again
        since = 0
    settled = started - _SETTLE_NS
    for entry in directory.iterdir():
        if entry.name == CHECKED or not entry.is_file():
            continue
        try:
            status = entry.stat()
            broken = status.st_size == 0 or not os.access(entry, os.R_OK) or (
                since <= status.st_mtime_ns < settled and entry.name.endswith("-cache")
                and _cut_short(entry.read_bytes()))
            if broken:
                entry.unlink()
                removed += 1
        except OSError:
            continue
    try:
        stamp.touch()
        os.utime(stamp, ns=(settled, settled))  # what is written from then on: next time
    except OSError:
        pass
    return removed


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _cut_short(entry: bytes) -> bool:
    """Whether a cache entry is a compressed stream that stops before its end or is damaged:
    zstd where JAX uses it (Python 3.14's ``compression.zstd``, or ``zstandard`` installed),
    zlib elsewhere; an entry this process cannot read is taken as whole."""
    if entry[:4] == _ZSTD_MAGIC:
        reader = _zstd_reader()
    elif entry[:1] == b"\x78":  # zlib's first byte at the default window
        reader = zlib.decompressobj()
    else:
        reader = None
    if reader is None:
        return False
    try:
        reader.decompress(entry)
    except Exception:  # noqa: BLE001 -- each module's own error for a damaged stream
        return True
    return not reader.eof


def _zstd_reader():
    """A zstd stream reader with an ``eof`` attribute, where a module provides one."""
    try:
        from compression import zstd  # Python 3.14

        return zstd.ZstdDecompressor()
    except ImportError:
        pass
    try:
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    except ImportError:
        return None


def _writable(directory: Path) -> str | None:
    """Why ``directory`` cannot take a cache entry, or ``None`` when it can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        return err.strerror or str(err)
    return None


def enable(directory: Path | None, warn: Callable[[str], None]) -> bool:
    """Turn JAX's persistent cache on in ``directory`` (every program, however small).

    Returns whether it is on. ``warn`` receives the one line explaining why not.
    """
    if directory is None:
        return False
    problem = _writable(directory)
    if problem is not None:
        warn(f"compilation cache off: {directory} cannot be written ({problem})")
        return False
    drop_broken_entries(directory)
    use(directory)
    return True


def use(directory: Path) -> None:
    """Point JAX's persistent cache at ``directory``, already checked by :func:`enable` (worker
    processes share their parent's cache this way)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    # A cache that fails later (disk full mid-run) must not print JAX's raw warnings per program.
    warnings.filterwarnings("ignore", message=".*[Cc]ache.*", category=UserWarning,
                            module=r"jax\..*")


def in_use() -> Path | None:
    """The directory JAX's persistent cache is using in this process, if any."""
    import jax

    directory = jax.config.jax_compilation_cache_dir
    return Path(directory) if directory else None
