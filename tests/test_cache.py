"""The compilation cache turns itself off when it cannot be written, and drops broken entries."""

from __future__ import annotations

import errno
import subprocess
import sys
import tempfile

from jaxmir import cache
import numpy as np
import soundfile

from conftest import ROOT
from test_cli import subprocess_env


def test_empty_and_unreadable_entries_are_dropped(tmp_path):
    (tmp_path / "jit_program-abc123").write_bytes(b"")          # left by a full disk
    (tmp_path / "jit_program-def456").write_bytes(b"compiled")  # a good entry
    (tmp_path / "subfolder").mkdir()
    assert cache.drop_broken_entries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jit_program-def456", "subfolder"]


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
