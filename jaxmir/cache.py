"""JAX's persistent compilation cache for the command line: where it lives, and keeping it healthy.

Compiled programs are kept in ``$JAXMIR_CACHE_DIR/jax`` (default
``~/.cache/jaxmir/jax``) so that a later run starts faster. A cache that
cannot be written (read-only, full disk) turns itself off with one line on
stderr; entries left empty or unreadable by an earlier failure (a full disk
leaves zero-byte files that JAX would otherwise keep missing on) are removed
before use.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable


def cache_dir() -> Path | None:
    """Where compiled programs are cached, or ``None`` when ``JAXMIR_NO_CACHE`` is set."""
    if os.environ.get("JAXMIR_NO_CACHE", "").strip() not in ("", "0"):
        return None
    root = os.environ.get("JAXMIR_CACHE_DIR") or Path.home() / ".cache" / "jaxmir"
    return Path(root) / "jax"


def drop_broken_entries(directory: Path) -> int:
    """Remove empty or unreadable cache entries; returns how many were removed."""
    removed = 0
    for entry in directory.iterdir():
        if not entry.is_file():
            continue
        try:
            broken = entry.stat().st_size == 0 or not os.access(entry, os.R_OK)
            if broken:
                entry.unlink()
                removed += 1
        except OSError:
            continue
    return removed


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
