"""The compilation cache turns itself off when it cannot be written, and drops broken entries."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from jaxmir import cache
import numpy as np
import soundfile

from conftest import ROOT, require
from test_cli import subprocess_env


def test_empty_and_unreadable_entries_are_dropped(tmp_path):
    (tmp_path / "jit_program-abc123").write_bytes(b"")          # left by a full disk
    (tmp_path / "jit_program-def456").write_bytes(b"compiled")  # a good entry
    (tmp_path / "subfolder").mkdir()
    assert cache.drop_broken_entries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.CHECKED, "jit_program-def456",
                                                         "subfolder"]


def test_entries_this_user_cannot_read_are_dropped(tmp_path, monkeypatch):
    """JAX fails to read such an entry and compiles again on every run. (As root every file is
    readable, so os.access answers by the mode bits, as for any other user.)"""
    locked, good = tmp_path / "jit_program-abc123", tmp_path / "jit_program-def456"
    for entry in (locked, good):
        entry.write_bytes(b"compiled")
    locked.chmod(0)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *args, **kwargs: access(
        path, mode, *args, **kwargs) and (mode != os.R_OK or bool(os.stat(path).st_mode & 0o444)))
    assert cache.drop_broken_entries(tmp_path) == 1
    assert not locked.exists() and good.exists()


def test_only_compiled_entries_are_read_for_a_cut_stream(tmp_path):
    """Beside each entry JAX keeps an -atime file of a timestamp: not a stream, never cut."""
    stream = zlib.compress(np.random.default_rng(0).bytes(10_000))[:-1]
    settled = time.time_ns() - 60 * 10**9
    for name in ("jit_x-0-atime", "jit_x-0-cache"):
        (tmp_path / name).write_bytes(stream)
        os.utime(tmp_path / name, ns=(settled, settled))
    assert cache.drop_broken_entries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.CHECKED, "jit_x-0-atime"]


def test_enabling_the_cache_drops_broken_entries_first(tmp_path, monkeypatch):
    """The command line's way in: entries a full disk left empty are gone before JAX reads."""
    directory = tmp_path / "jax"
    directory.mkdir()
    (directory / "jit_program-abc123").write_bytes(b"")
    used = []  # this test process's JAX left as it is; whether the entry was there at use()
    monkeypatch.setattr(cache, "use", lambda where: used.append(
        (where, (where / "jit_program-abc123").exists())))
    assert cache.enable(directory, print) is True
    assert used == [(directory, False)]


def test_no_cache_variable(monkeypatch):
    """JAXMIR_NO_CACHE=1 (or any word) turns the cache off; unset, empty or 0 leaves it on."""
    monkeypatch.setenv("JAXMIR_CACHE_DIR", "/somewhere")
    for value, on in (("1", False), ("yes", False), ("0", True), (" 0 ", True), ("", True)):
        monkeypatch.setenv("JAXMIR_NO_CACHE", value)
        assert (cache.cache_dir() is not None) is on, value
    monkeypatch.delenv("JAXMIR_NO_CACHE")
    assert cache.cache_dir() == Path("/somewhere") / "jax"


def test_the_cache_is_in_the_users_cache_folder_by_default(tmp_path, monkeypatch):
    """The README's default, ~/.cache/jaxmir/jax, also when JAXMIR_CACHE_DIR is set empty."""
    monkeypatch.delenv("JAXMIR_NO_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("JAXMIR_CACHE_DIR", raising=False)
    assert cache.cache_dir() == tmp_path / ".cache" / "jaxmir" / "jax"
    monkeypatch.setenv("JAXMIR_CACHE_DIR", "")
    assert cache.cache_dir() == tmp_path / ".cache" / "jaxmir" / "jax"


def test_entries_cut_short_are_dropped(tmp_path):
    """JAX writes an entry in place: a full disk or a file-size limit left part of one, which
    every later run failed to read and compiled again (12-14 s runs instead of 5)."""
    code = ("import sys, jax; jax.config.update('jax_compilation_cache_dir', sys.argv[1]); "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0); "
            "jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1); "
            "jax.jit(lambda x: x * 2 + 1)(jax.numpy.ones(3)).block_until_ready()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=300,
                   env=subprocess_env())
    (whole,) = [p for p in tmp_path.iterdir() if p.name.startswith("jit__lambda-")]
    data = whole.read_bytes()
    assert not cache._cut_short(data)
    stream = zlib.compress(np.random.default_rng(0).bytes(10_000))  # JAX's without zstd
    assert not cache._cut_short(stream) and cache._cut_short(stream[:-1])
    cut = tmp_path / ("jit_cut-" + whole.name.split("-", 1)[1])
    other = tmp_path / "jit_other-0-cache"
    other.write_bytes(b"\x00 no stream jaxmir reads")  # taken as whole
    settled = time.time_ns() - 60 * 10**9
    for path in (whole, other):
        os.utime(path, ns=(settled, settled))
    cut.write_bytes(data[:len(data) // 2])  # just now: maybe still being written, read later
    assert cache.drop_broken_entries(tmp_path) == 0 and cut.exists()
    stamp = tmp_path / cache.CHECKED
    since = stamp.stat().st_mtime_ns
    os.utime(cut, ns=(since, since))  # written after the last check, settled since
    assert cache.drop_broken_entries(tmp_path) == 1
    assert not cut.exists() and whole.exists() and other.exists()
    cut.write_bytes(data[:len(data) // 2])
    os.utime(cut, ns=(1, 1))  # written before the last check: not read again
    assert cache.drop_broken_entries(tmp_path) == 0 and cut.exists()
    # the stamp in the future (a clock set back): every entry again
    os.utime(stamp, ns=(time.time_ns() + 3600 * 10**9,) * 2)
    assert cache.drop_broken_entries(tmp_path) == 1 and not cut.exists()


def test_a_stamp_seconds_ahead_of_the_clock_reads_every_entry_again(tmp_path, monkeypatch):
    """A stamp just ahead of the clock (a clock set back, another machine's on a shared home):
    every entry is read again, not none until the clock has caught up."""
    now = time.time_ns()
    cut = tmp_path / "jit_x-0-cache"
    cut.write_bytes(zlib.compress(np.random.default_rng(0).bytes(10_000))[:-1])
    os.utime(cut, ns=(now - 60 * 10**9,) * 2)  # settled long ago
    stamp = tmp_path / cache.CHECKED
    stamp.touch()
    os.utime(stamp, ns=(now + 10**9,) * 2)
    monkeypatch.setattr(cache.time, "time_ns", lambda: now)  # the check starts at `now`
    assert cache.drop_broken_entries(tmp_path) == 1 and not cut.exists()


def test_zstd_entries_cut_short_are_dropped(tmp_path):
    """JAX compresses its entries with zstd where a module provides it (Python 3.14's
    compression.zstd, or zstandard): those cut short were taken as whole."""
    zstandard = require("zstandard")  # a test dependency: JAX then writes zstd entries
    data = zstandard.ZstdCompressor().compress(np.random.default_rng(0).bytes(100_000))
    assert not cache._cut_short(data)
    for cut in (data[:len(data) // 2], data[:-1]):
        assert cache._cut_short(cut)
    (tmp_path / "jit_a-0-cache").write_bytes(data)
    (tmp_path / "jit_b-0-cache").write_bytes(data[:-1])
    for entry in tmp_path.iterdir():
        os.utime(entry, ns=(1, 1))
    assert cache.drop_broken_entries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.CHECKED, "jit_a-0-cache"]


def test_an_unwritable_cache_turns_itself_off_with_one_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    lines = []
    assert cache.enable(blocker / "jax", lines.append) is False
    assert len(lines) == 1 and "compilation cache off" in lines[0] and str(blocker) in lines[0]


def test_a_full_disk_turns_the_cache_off(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    lines = []
    assert cache.enable(tmp_path / "jax", lines.append) is False
    assert lines == [f"compilation cache off: {tmp_path / 'jax'} cannot be written "
                     "(No space left on device)"]


def test_a_disk_that_takes_a_file_but_no_bytes_turns_the_cache_off(tmp_path, monkeypatch):
    """A full disk still makes empty files (an inode is all they take): the probe writes and
    syncs a block, or JAX would write cut-short entries there."""
    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "fsync", full)
    lines = []
    assert cache.enable(tmp_path / "jax", lines.append) is False
    assert lines == [f"compilation cache off: {tmp_path / 'jax'} cannot be written "
                     "(No space left on device)"]


def test_command_line_with_an_unwritable_cache(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    song = tmp_path / "song.wav"
    soundfile.write(song, np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 4), 16000)
    result = subprocess.run([sys.executable, "-m", "jaxmir", "tag", str(song), "--format", "csv"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=subprocess_env(JAXMIR_CACHE_DIR=str(blocker)))
    assert result.returncode == 0, result.stderr
    messages = [line for line in result.stderr.splitlines() if "cache" in line.lower()]
    assert len(messages) == 1 and "compilation cache off" in messages[0], result.stderr
    assert "Traceback" not in result.stderr and "UserWarning" not in result.stderr
