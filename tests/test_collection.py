"""Collections: inputs, the four outputs against Model.predict, resume, kill-safety, bad input."""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import jaxmir
from conftest import (BF16_STEP, EMBEDDINGS_RTOL, ROOT, TAGS_ATOL, child_env, require,
                      shared_fixture, traced_peak)
from jaxmir.collection import Options, arguments, collect, commands, compute, inputs, local, outputs
from jaxmir.collection.rows import as_text, from_text, same_outputs
from jaxmir.decode import DamagedAudioWarning
from jaxmir.errors import AudioError, InputError, JaxmirWarning


def _write(path: Path, seconds: float, rate: int, channels: int, seed: int) -> Path:
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)[:, None]
    audio = tone + 0.05 * rng.standard_normal((t.size, channels))
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio.astype(np.float32), rate)
    return path


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    """rock/a.wav, rock/b.flac, jazz/a.wav (same stem), jazz/deep/c.wav, a hidden file, a text
    file."""
    root = tmp_path_factory.mktemp("music")
    _write(root / "rock" / "a.wav", 3.5, 16000, 1, 0)
    _write(root / "rock" / "b.flac", 5.0, 22050, 2, 1)
    _write(root / "jazz" / "a.wav", 4.2, 44100, 2, 2)
    _write(root / "jazz" / "deep" / "c.wav", 6.0, 48000, 1, 3)
    _write(root / "jazz" / ".hidden.wav", 3.0, 16000, 1, 4)
    (root / "jazz" / "notes.txt").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def model():
    return jaxmir.load("msd-musicnn")


@pytest.fixture(scope="module")
def expected(music, model):
    """Direct Model.predict of every file: the per-patch tags and embeddings."""
    found = {}
    for path in inputs.expand([str(music)]):
        audio = jaxmir.load_audio(path, 16000)
        found[path] = {"predictions": model.predict(audio, 16000),
                       "embeddings": model.predict(audio, 16000, output="embeddings"),
                       "duration_s": audio.shape[0] / 16000}
    return found


def _bad(folder: Path) -> Path:
    path = folder / "broken.wav"
    path.write_bytes(b"RIFF not really a wave file")
    return path


def _counting():
    """An analyzer that counts the files it is given (the work a run does)."""
    seen = []

    def analyzer(model, items, options):
        for item in items:
            seen.append(item.source.path)
            yield from compute.analyze_stream(model, [item], options)
    return analyzer, seen


def _read_parquet(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas().sort_values("path").reset_index(drop=True)


# -- inputs -------------------------------------------------------------------------------------
def test_a_walk_follows_linked_folders_once_and_leaves_out_fifos(tmp_path):
    """A linked folder's files were left out without a word; a FIFO stalled the whole run (a
    decoding thread waited on it forever); a link loop is walked once."""
    folder, elsewhere = tmp_path / "music", tmp_path / "elsewhere"
    for path in (folder / "a.wav", elsewhere / "r.mp3"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "gone.flac").symlink_to(tmp_path / "nowhere.flac")  # its row will say so
    os.mkfifo(folder / "fifo.wav")
    found = [os.path.relpath(p, folder) for p in inputs.expand([str(folder)])]
    assert found == ["a.wav", "gone.flac", "linked/r.mp3"]


def test_a_folder_that_cannot_be_listed_gets_a_failed_row(music, model, tmp_path, monkeypatch):
    """A folder without read permission was passed over by the walk: its files vanished from
    the table, without a line or a failed exit status (and named alone, it had "no audio
    files"). Permissions are simulated: root lists any folder."""
    from jaxmir import decode

    folder = tmp_path / "music"
    shutil.copytree(music / "rock", folder / "rock")
    locked = folder / "locked"
    shutil.copytree(music / "rock", locked)
    real_scandir, real_access = os.scandir, os.access

    def scandir(path="."):
        if os.path.abspath(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(decode.os, "access", lambda path, mode: path != str(locked)
                        and real_access(path, mode))
    assert inputs.expand([str(folder)]) == [str(locked), str(folder / "rock" / "a.wav"),
                                            str(folder / "rock" / "b.flac")]
    assert inputs.expand([str(locked)]) == [str(locked)]
    out = tmp_path / "tags.jsonl"
    tally = collect(model, [str(folder)], str(out), name="msd-musicnn", jobs=0, progress=False)
    assert (tally.ok, tally.failed) == (2, 1)
    rows = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows[str(locked)]["error"] == f"{locked}: a folder that cannot be listed (permission " \
                                         "denied): its audio files are left out"


def test_a_file_named_through_a_link_and_by_its_own_path_is_listed_by_its_own(tmp_path):
    """Across arguments the first name met was kept: `tag linkdir real` and `tag real linkdir`
    named the same files differently, and a resumed run redid them all (12 rows for 6 files)."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.wav").write_bytes(b"")
    (tmp_path / "linkdir").symlink_to(real, target_is_directory=True)
    (tmp_path / "link.wav").symlink_to(real / "a.wav")
    for names in ([tmp_path / "linkdir", real], [real, tmp_path / "linkdir"],
                  [tmp_path / "link.wav", real / "a.wav"], [tmp_path / "link.wav", real]):
        assert inputs.expand([str(a) for a in names]) == [str(real / "a.wav")], names
    assert inputs.expand([str(tmp_path / "link.wav")]) == [str(tmp_path / "link.wav")]


def test_in_process_decoding_takes_the_version_it_reads(music, model, tmp_path):
    """With --jobs 0 a file replaced after the run began, before its turn, failed as "changed
    while it was being read" (its state was compared with the run's start); decoding workers
    take the state just before reading, and analysed it."""
    path = shutil.copy(music / "rock" / "a.wav", tmp_path / "a.wav")
    stale = inputs.Source(str(path), os.path.getsize(path) + 1, 0)  # as examined at the start
    (item, outputs), = compute.stream_files(model, [stale], Options())
    assert isinstance(outputs, dict), outputs
    assert item.source == inputs.examine(str(path))


def test_a_folder_linked_beside_itself_is_listed_by_its_own_path(tmp_path):
    """Whichever the folder listing gave first was kept: often a link's path."""
    folder = tmp_path / "music"
    (folder / "real").mkdir(parents=True)
    (folder / "real" / "v.wav").write_bytes(b"")
    for name in ("0first", *(f"link{i}" for i in range(12)), "zlast"):  # listed in any order
        (folder / name).symlink_to(folder / "real", target_is_directory=True)
    assert inputs.expand([str(folder)]) == [str(folder / "real" / "v.wav")]


def test_each_real_file_is_listed_once_by_its_own_path(tmp_path):
    """A link in an earlier folder (a/link -> b/real) listed b's files by the link's path; a
    folder and a folder in it that links back up listed each file twice (two rows, analysed
    twice); so did a file named by a link beside it."""
    folder = tmp_path / "music"
    (folder / "b" / "real").mkdir(parents=True)
    (folder / "a").mkdir()
    (folder / "b" / "real" / "s.wav").write_bytes(b"")
    (folder / "a" / "link").symlink_to(folder / "b" / "real", target_is_directory=True)
    assert inputs.expand([str(folder)]) == [str(folder / "b" / "real" / "s.wav")]
    (folder / "b" / "real" / "back").symlink_to(folder, target_is_directory=True)
    (folder / "a" / "same.wav").symlink_to(folder / "b" / "real" / "s.wav")
    assert inputs.expand([str(folder), str(folder / "b" / "real"),
                          str(folder / "a" / "same.wav")]) \
        == [str(folder / "b" / "real" / "s.wav")]


def test_expand_folders_lists_and_names(music, tmp_path):
    found = inputs.expand([str(music)])
    names = [os.path.relpath(p, music) for p in found]
    assert names == ["jazz/a.wav", "jazz/deep/c.wav", "rock/a.wav", "rock/b.flac"]
    beside = tmp_path / "beside"  # a link beside its file: the file once, by its own name
    beside.mkdir()
    shutil.copy(music / "rock" / "a.wav", beside / "z.wav")
    (beside / "a.wav").symlink_to("z.wav")
    assert inputs.expand([str(beside)]) == [str(beside / "z.wav")]
    shutil.rmtree(beside)
    # hidden folders (.git, .cache, an export being written) are not walked, as hidden files
    hidden = tmp_path / "walked"
    _write(hidden / ".cache" / "x.wav", 3.0, 16000, 1, 0)
    _write(hidden / "y.wav", 3.0, 16000, 1, 1)
    (hidden / ".snapshot").symlink_to(music)  # a hidden link to a folder is not walked either
    assert inputs.expand([str(hidden)]) == [str(hidden / "y.wav")]
    shutil.rmtree(hidden)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{music / 'rock' / 'b.flac'}\n\n{music / 'jazz'}\n")
    assert inputs.expand([f"@{listing}", str(music / "rock" / "b.flac")]) == [
        str(music / "rock" / "b.flac"), str(music / "jazz" / "a.wav"),
        str(music / "jazz" / "deep" / "c.wav")]
    assert inputs.npy_names(found) == inputs.npy_names(found[::-1])
    assert sorted(inputs.npy_names(found).values()) == [
        "jazz/a.npy", "jazz/deep/c.npy", "rock/a.npy", "rock/b.npy"]
    assert set(inputs.npy_names(["/x/a.wav", "/x/a.flac"]).values()) == {"a.wav.npy", "a.flac.npy"}
    # a short name that is another file's full one
    assert inputs.npy_names(["/x/a.wav", "/x/a.flac", "/x/a.wav.flac"]) == {
        "/x/a.wav": "a.wav.npy", "/x/a.flac": "a.flac.npy", "/x/a.wav.flac": "a.wav.flac.npy"}
    with pytest.raises(InputError, match="no audio files"):
        inputs.expand([str(tmp_path)])
    with pytest.raises(InputError, match="cannot read the list"):
        inputs.expand([f"@{tmp_path / 'missing.txt'}"])
    # a list with a byte-order mark (Windows editors), indented comments, relative paths
    listing.write_bytes("\ufeff  # music\n rock/b.flac \n".encode("utf-8"))
    (tmp_path / "rock").mkdir()
    (tmp_path / "rock" / "b.flac").write_bytes(b"")
    assert inputs.expand([f"@{listing}"]) == [str(tmp_path / "rock" / "b.flac")]
    # names as the file system spells them, UTF-8 or not (`ls > list.txt`)
    odd = os.fsencode(tmp_path / "rock") + b"/bad\xff.flac"
    open(odd, "wb").close()
    listing.write_bytes(odd + b"\n")
    assert [os.fsencode(p) for p in inputs.expand([f"@{listing}"])] == [odd]
    # names that begin or end with spaces (`ls > list.txt`) were stripped: another file's name
    for name in (" lead.wav", "trail.wav "):
        (tmp_path / "rock" / name).write_bytes(b"")
    listing.write_text("rock/ lead.wav\nrock/trail.wav \n")
    assert inputs.expand([f"@{listing}"]) == [str(tmp_path / "rock" / " lead.wav"),
                                              str(tmp_path / "rock" / "trail.wav ")]
    # a carriage return inside a name cut it in two (splitlines); a CRLF list still reads
    (tmp_path / "rock" / "r\rq.wav").write_bytes(b"")
    listing.write_bytes(b"rock/r\rq.wav\n")
    assert inputs.expand([f"@{listing}"]) == [str(tmp_path / "rock" / "r\rq.wav")]
    listing.write_bytes(b"rock/b.flac\r\nrock/r\rq.wav\r\nrock/ lead.wav\r\n"
                        b"rock/trail.wav \r\n\r\n")
    assert inputs.expand([f"@{listing}"]) == [str(tmp_path / "rock" / "b.flac"),
                                              str(tmp_path / "rock" / "r\rq.wav"),
                                              str(tmp_path / "rock" / " lead.wav"),
                                              str(tmp_path / "rock" / "trail.wav ")]
    assert inputs.expand(["@"]) == [os.path.abspath("@")]  # a file's name, not a list's
    # LF lines with one CRLF (two editors): its CR is the name's, as LF lists' CRs are
    (tmp_path / "rock" / "end\r").write_bytes(b"")
    listing.write_bytes(b"rock/b.flac\nrock/end\r\n")
    assert inputs.expand([f"@{listing}"]) == [str(tmp_path / "rock" / "b.flac"),
                                              str(tmp_path / "rock" / "end\r")]
    listing.write_bytes(b"rock/b.flac\rrock/trail.wav \r")  # classic Mac OS line ends
    assert inputs.expand([f"@{listing}"]) == [str(tmp_path / "rock" / "b.flac"),
                                              str(tmp_path / "rock" / "trail.wav ")]
    # exited 0, "nothing to do": an empty folder is an error
    listing.write_text("# nothing yet\n\n  \n")  # a line of spaces is blank, not the folder
    with pytest.raises(InputError, match=r"list.txt: names no files \(only blank lines and # "):
        inputs.expand([f"@{listing}"])
    # a list saved as UTF-16 (Windows Notepad) ended in a traceback: "embedded null byte"
    listing.write_text("rock/b.flac\n", encoding="utf-16")
    with pytest.raises(InputError,
                       match=r"list.txt: UTF-16 text; expected a UTF-8 \(or plain\) text"):
        inputs.expand([f"@{listing}"])
    listing.write_bytes("\ufeffrock/b.flac\n".encode("utf-16-be"))  # its big-endian spelling
    with pytest.raises(InputError, match=r"list.txt: UTF-16 text; expected"):
        inputs.expand([f"@{listing}"])
    listing.write_bytes(b"rock/b.flac\x00\n")
    with pytest.raises(InputError, match=r"list.txt: not text \(it holds NUL bytes\)"):
        inputs.expand([f"@{listing}"])
    assert inputs.examine("a\0b.wav") == inputs.Source("a\0b.wav", -1, -1)


# -- outputs against Model.predict ------------------------------------------------------------
# The collection packs patches of several files into its calls, where Model.predict runs each
# file's own: the same model in another float32 summation order (TAGS_ATOL, EMBEDDINGS_RTOL).
def assert_same_tags(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=TAGS_ATOL)


def assert_same_embeddings(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0,
                               atol=EMBEDDINGS_RTOL * float(np.abs(want).max()))


def test_a_parquet_folder_appears_with_its_columns(music, model, tmp_path, monkeypatch):
    """Stopped between making the folder and writing its empty first part (~0.1 s), a run left an
    empty folder, which pyarrow reads as a table of no columns (no 'path')."""
    from jaxmir.collection import outputs

    import pyarrow.parquet as pq

    out = tmp_path / "tags.parquet"
    stale = tmp_path / ".tags.parquet.abcd1234.tmp"  # what a run killed there leaves
    stale.mkdir()
    # another output's, tags.parquet.parquet, being made now: its name begins as stale's does
    neighbour = tmp_path / ".tags.parquet.parquet.ab12cd34.tmp"
    neighbour.mkdir()

    def stopped(self, folder):
        raise KeyboardInterrupt

    clip = str(music / "rock" / "a.wav")
    with monkeypatch.context() as patch:
        patch.setattr(outputs.ParquetWriter, "_empty_part", stopped)
        with pytest.raises(KeyboardInterrupt):
            collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
    # no folder, and no temporary one: this run's removed, the killed run's cleared; the other
    # output's kept (it was removed, and that run failed at its rename)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [neighbour.name]
    umask = os.umask(0o022)
    try:
        tally = collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
    finally:
        os.umask(umask)
    assert (tally.ok, tally.failed) == (1, 0)
    # a folder as the umask makes one, not mkdtemp's 0700: others could not read the table
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    first = pq.read_table(out / "part-000000.parquet")  # empty, with the columns
    assert first.num_rows == 0 and first.column_names[:3] == ["path", "size_bytes", "mtime_ns"]
    assert "rock" in first.column_names  # a label's column


def test_a_parquet_table_started_over_has_its_columns_before_its_first_row(tmp_path):
    """--overwrite removes a table's parts: a run stopped before its first row then left a folder
    of no part, which pyarrow reads as a table of no columns; an empty first part gives them."""
    import pyarrow.parquet as pq

    from jaxmir.collection.rows import Layout, Result

    layout, source = Layout("embed", {"model": "msd-musicnn"}), inputs.Source("/a.wav", 1, 1)
    out = tmp_path / "emb.parquet"
    with outputs.open_output(str(out), layout, [source]) as writer:
        writer.write(Result(source, 3.0, np.ones((2, 4), np.float32)))
    assert pq.read_table(out).num_rows == 1
    outputs.open_output(str(out), layout, [source], overwrite=True).abandon()  # stopped
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema == outputs.parquet_schema(layout)


def test_a_parquet_part_is_written_a_minute_after_the_last_even_of_few_rows(model, tmp_path,
                                                                          monkeypatch):
    """A slow collection killed before its 256th row lost every row since its last part; a part
    is also written once 60 s have passed (here a clock that moves a minute a reading)."""
    clips = [str(_write(tmp_path / "in" / f"{name}.wav", 3.0, 16000, 1, seed))
             for seed, name in enumerate("ab")]
    out, seen = tmp_path / "tags.parquet", []
    minutes = iter(range(10**6))
    monkeypatch.setattr(outputs.time, "monotonic", lambda: 61.0 * next(minutes))
    collect(model, clips, str(out), name="msd-musicnn", jobs=0, progress=False,
            on_result=lambda result, where: seen.append(len(list(out.glob("part-*.parquet")))))
    assert seen[0] == 2  # the empty part 0, and the first row's, before the run's end


def test_a_parquet_part_written_on_time_starts_the_next_minute(model, tmp_path, monkeypatch):
    """Four files, the clock a minute on from the first row written: the second row's part
    holds the first two rows; the next part waits another minute (here the run's end), not
    one part a row from then on."""
    pq = require("pyarrow.parquet")
    clips = [str(_write(tmp_path / "in" / f"{name}.wav", 3.0, 16000, 1, seed))
             for seed, name in enumerate("abcd")]
    out, seen = tmp_path / "tags.parquet", []
    monkeypatch.setattr(outputs.time, "monotonic", lambda: 61.0 if seen else 0.0)
    collect(model, clips, str(out), name="msd-musicnn", jobs=0, progress=False,
            on_result=lambda result, where: seen.append(result))
    rows = [pq.read_metadata(part).num_rows for part in sorted(out.glob("part-*.parquet"))]
    assert rows == [0, 2, 2]


def test_parquet_tags_and_patches(music, model, expected, tmp_path):
    import pandas

    out = tmp_path / "tags.parquet"
    tally = collect(model, [str(music)], str(out), name="msd-musicnn", per_patch=True, jobs=0,
                    progress=False, flush_rows=3)
    assert (tally.ok, tally.failed, tally.skipped) == (4, 0, 0)
    # part 0 is empty, written at the start: before its first row the folder read as a table
    # of no columns at all
    assert sorted(p.name for p in out.iterdir()) == ["part-000000.parquet", "part-000001.parquet",
                                                     "part-000002.parquet"]
    import pyarrow.parquet as pq

    assert pq.read_table(out / "part-000000.parquet").num_rows == 0
    identity = json.loads(pq.read_schema(out / "part-000001.parquet").metadata[b"jaxmir"])
    assert identity["labels"] == list(model.labels)  # what a resume checks its columns against
    table = _read_parquet(out)
    assert len(pandas.read_parquet(out)) == 4
    assert list(table.columns[:7]) == ["path", "size_bytes", "mtime_ns", "duration_s", "n_patches",
                                       "status", "error"]
    for _, row in table.iterrows():
        want = expected[row["path"]]
        assert row["status"] == "ok" and pandas.isna(row["error"])
        assert row["duration_s"] == want["duration_s"]
        assert row["n_patches"] == want["predictions"].shape[0]
        status = os.stat(row["path"])  # to the nanosecond: a rewrite within a second is seen
        assert (row["size_bytes"], row["mtime_ns"]) == (status.st_size, status.st_mtime_ns)
        means = np.asarray(want["predictions"], np.float64).mean(axis=0)
        assert_same_tags(row[list(model.labels)].to_numpy(np.float64), means)
        assert_same_tags(np.stack(row["patches"]), want["predictions"])
        # the float64 mean of the row's own patches, exactly (rows.mean): not a float32 one
        np.testing.assert_array_equal(row[list(model.labels)].to_numpy(np.float64),
                                      np.stack(row["patches"]).astype(np.float64).mean(axis=0))


def test_jsonl_csv_npy_embed(music, model, expected, tmp_path):
    import pandas

    bad = _bad(tmp_path)
    paths = [str(music), str(bad)]
    lines = tmp_path / "tags.jsonl"
    table = tmp_path / "tags.csv"
    folder = tmp_path / "embeddings"
    embed = tmp_path / "embeddings.parquet"
    for output, command, output_name in ((lines, "tag", "predictions"),
                                         (table, "tag", "predictions"),
                                         (folder, "embed", "embeddings"), (embed, "embed", None)):
        # embed's own default: the embeddings (it was Options(): the predictions)
        options = None if output_name is None else Options(output_name)
        tally = collect(model, paths, str(output), command=command, options=options,
                        name="msd-musicnn", jobs=0, progress=False)
        assert (tally.ok, tally.failed) == (4, 1)
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["path"] for r in rows] == inputs.expand(paths)
    frame = pandas.read_csv(table)
    for row, (_, csv_row) in zip(rows, frame.iterrows()):
        if row["path"] == str(bad):
            assert row["status"] == csv_row["status"] == "error" and str(bad) in row["error"]
            assert row["tags"] is None and str(bad) in csv_row["error"]
            continue
        means = np.asarray(expected[row["path"]]["predictions"], np.float64).mean(axis=0)
        assert_same_tags([row["tags"][label] for label in model.labels], means)
        # the CSV holds the row's float64 means as JSONL does, every digit (not to 6 places)
        np.testing.assert_array_equal(csv_row[list(model.labels)].to_numpy(np.float64),
                                      [row["tags"][label] for label in model.labels])
    index = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    # names below the folder common to every input (here music's parent: broken.wav is elsewhere)
    assert sorted(r["npy"] for r in index if r["npy"]) == [
        f"{music.name}/{name}" for name in ("jazz/a.npy", "jazz/deep/c.npy", "rock/a.npy",
                                            "rock/b.npy")]
    vectors = _read_parquet(embed)
    for r in index:
        if r["npy"] is None:
            continue
        want = expected[r["path"]]["embeddings"]
        assert_same_embeddings(np.load(folder / r["npy"], allow_pickle=False), want)
        got = vectors.loc[vectors["path"] == r["path"], "embedding"].iloc[0]
        assert_same_embeddings(got, np.asarray(want, np.float64).mean(0))


# -- resume ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_resume_retry_overwrite(music, model, tmp_path, suffix):
    import soundfile

    import shutil

    bad = _bad(tmp_path)
    rock = shutil.copytree(music / "rock", tmp_path / "rock")
    out = str(tmp_path / f"tags{suffix}")
    paths = [str(rock), str(bad)]
    run = lambda **kw: collect(model, paths, out, name="msd-musicnn", jobs=0, progress=False,
                               flush_rows=1, analyzer=analyzer, **kw)
    analyzer, seen = _counting()
    assert run().failed == 1 and len(seen) == 3
    seen.clear()
    tally = run()
    assert seen == [str(bad)] and (tally.total, tally.skipped, tally.failed) == (3, 2, 1)
    _write(bad, 3.2, 16000, 1, 7)  # the broken file is fixed: retried, its error row replaced
    seen.clear()
    assert run().failed == 0 and seen == [str(bad)]
    os.utime(rock / "a.wav", ns=(1, 1))  # a changed file is done again
    seen.clear()
    assert run().failed == 0 and seen == [str(rock / "a.wav")]
    seen.clear()
    assert run(overwrite=True).ok == 3 and len(seen) == 3
    if suffix == ".parquet":
        rows = _read_parquet(out)
    else:
        import pandas

        rows = pandas.read_json(out, lines=True) if suffix == ".jsonl" else pandas.read_csv(out)
    assert sorted(rows["path"]) == sorted(inputs.expand(paths)) and set(rows["status"]) == {"ok"}
    assert soundfile.info(bad).duration == pytest.approx(3.2)


def test_a_file_emptied_since_its_row_is_read_again(music, model, tmp_path):
    """A file of 0 bytes now, done before, was taken for one that cannot be read now: its row
    was kept, and the run said it could not read the file."""
    clip = tmp_path / "a.wav"
    clip.write_bytes((music / "rock" / "a.wav").read_bytes())
    out = str(tmp_path / "tags.jsonl")
    assert collect(model, [str(clip)], out, jobs=0, progress=False).ok == 1
    clip.write_bytes(b"")
    assert collect(model, [str(clip)], out, jobs=0, progress=False).failed == 1
    rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [(row["status"], row["size_bytes"]) for row in rows] == [("error", 0)]


def test_refuses_another_models_output(music, model, tmp_path):
    other = jaxmir.load("mtt-musicnn")
    for suffix in (".parquet", ".jsonl", ".csv"):
        out = str(tmp_path / f"tags{suffix}")
        collect(model, [str(music / "rock" / "a.wav")], out, name="msd-musicnn", jobs=0,
                progress=False)
        with pytest.raises(InputError, match="msd-musicnn.*mtt-musicnn.*--overwrite"):
            collect(other, [str(music / "rock" / "a.wav")], out, name="mtt-musicnn", jobs=0,
                    progress=False)
        tally = collect(other, [str(music / "rock" / "a.wav")], out, name="mtt-musicnn", jobs=0,
                        progress=False, overwrite=True)
        assert tally.ok == 1
    with pytest.raises(InputError, match="patch_hop"):
        collect(other, [str(music / "rock" / "a.wav")], str(tmp_path / "tags.parquet"),
                name="mtt-musicnn", options=Options(patch_hop=40), jobs=0, progress=False)


def test_a_patch_hop_of_0_is_recorded_as_the_patch_size_it_means(music, model, tmp_path):
    """``--patch-hop 0`` (a hop of one patch) was recorded as 0: the same run with
    ``--patch-hop 187`` was refused as one of other settings."""
    out = str(tmp_path / "tags.jsonl")
    clip = [str(music / "rock" / "a.wav")]
    collect(model, clip, out, name="msd-musicnn", options=Options(patch_hop=0), jobs=0,
            progress=False)
    assert json.loads(Path(out).read_text().splitlines()[0])["settings"]["patch_hop"] == 187
    tally = collect(model, clip, out, name="msd-musicnn", options=Options(patch_hop=187), jobs=0,
                    progress=False)
    assert (tally.ok, tally.skipped) == (0, 1)


def test_bfloat16_rows_are_the_bfloat16_models_and_never_mix_with_float32(music, model, tmp_path):
    """Options(dtype="bfloat16") runs the model cast by Model.astype: the rows are the bf16
    model's means (within a bfloat16 step: another batching of its patches), not float32's."""
    path = str(music / "rock" / "b.flac")
    out = str(tmp_path / "tags.jsonl")
    collect(model, [path], out, name="msd-musicnn", options=Options(dtype="bfloat16"), jobs=0,
            progress=False)
    row = json.loads(Path(out).read_text().splitlines()[-1])
    low = model.astype("bfloat16")
    audio = jaxmir.load_audio(path, 16000)
    means = np.asarray(low.predict(audio, 16000), np.float64).mean(axis=0)
    assert row["settings"]["dtype"] == "bfloat16"
    # another batching may round an activation to the other bfloat16 neighbour
    np.testing.assert_allclose([row["tags"][label] for label in model.labels], means, rtol=0,
                               atol=BF16_STEP)
    full = np.asarray(model.predict(audio, 16000), np.float64).mean(axis=0)
    assert np.max(np.abs(means - full)) > 1e-4  # bfloat16 did run
    # the same model: "of another 'msd-musicnn', or other settings" said it might be another
    with pytest.raises(InputError, match=r"holds results of 'msd-musicnn' with other settings "
                                         r"\(dtype: 'bfloat16' there, 'float32' now\)") as err:
        collect(model, [path], out, name="msd-musicnn", jobs=0, progress=False)
    assert "not an output of jaxmir" not in str(err.value) \
        and str(err.value).count("--overwrite") == 1
    # collect()'s arguments named beside the options (it named --output and --overwrite only)
    assert str(err.value).endswith("; give another output (--output), or --overwrite "
                                   "(overwrite=True in Python) to start it over")
    with pytest.raises(InputError, match="unknown dtype"):
        Options(dtype="float16")


def test_a_model_file_s_name_is_recorded_as_utf8_text(tmp_path):
    """A head named música.pb, run under an ASCII locale (PYTHONUTF8=0), was recorded as
    m\\udcc3\\udcbasica.pb: JSON wrote lone surrogates that pandas and pyarrow refuse, and the
    table was 'another model' under a UTF-8 locale; a name that is no UTF-8 too."""
    from jaxmir.collection.rows import model_fields

    graph = shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes()
    (tmp_path / "música.pb").write_bytes(graph)
    (tmp_path / os.fsdecode(b"caf\xe9.pb")).write_bytes(graph)
    as_ascii_read = os.fsdecode(bytes(tmp_path)) + "/m\udcc3\udcbasica.pb"  # the same file
    assert os.path.isfile(as_ascii_read)
    for path, name in ((as_ascii_read, "música.pb"), (str(tmp_path / "música.pb"), "música.pb"),
                       (os.fsdecode(bytes(tmp_path) + b"/caf\xe9.pb"), "caf\\udce9.pb")):
        fields = model_fields(path, "msd-musicnn")
        assert fields["model"] == f"{name}+msd-musicnn", fields
        json.loads(json.dumps(fields))["model"].encode("utf-8")  # as strict readers read it


def test_a_model_file_is_recorded_by_its_digest_and_any_other_name_as_given(tmp_path):
    """A model file by its file name and the sha256 of its bytes; a name that is no file (a
    model built in Python, named by its user) as given, with no digest."""
    from jaxmir.collection.rows import model_fields

    head = tmp_path / "head.pb"
    head.write_bytes(b"not really a graph")
    assert model_fields(str(head), "msd-musicnn") == {
        "model": "head.pb+msd-musicnn",
        "model_sha256": hashlib.sha256(b"not really a graph").hexdigest()}
    assert model_fields("my-tagger") == {"model": "my-tagger"}
    assert model_fields(str(tmp_path / "gone.pb")) == {"model": str(tmp_path / "gone.pb")}


def test_tables_of_a_model_named_in_bytes_that_are_no_utf8_resume(music, tmp_path):
    """A CSV of a model named caf\\xe9.pb never resumed (its cells went through as_text, and
    were read back raw), and tables written before names were recorded as UTF-8 text (a lone
    surrogate in JSON) were another model's."""
    graph = tmp_path / os.fsdecode(b"caf\xe9.pb")
    graph.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    head, clip = jaxmir.load(graph, backbone="msd-musicnn"), str(music / "rock" / "a.wav")
    for output in ("t.csv", "t.jsonl"):
        run = lambda: collect(head, [clip], str(tmp_path / output), name=str(graph),
                              backbone="msd-musicnn", jobs=0, progress=False)
        assert run().ok == 1 and run().skipped == 1
    table = tmp_path / "t.jsonl"  # as written before: the name as Python read it
    text = table.read_text()
    assert text.count("caf\\\\udce9.pb") == 2  # the model, and the settings' model
    table.write_text(text.replace("caf\\\\udce9.pb", "caf\\udce9.pb"))
    assert collect(head, [clip], str(table), name=str(graph), backbone="msd-musicnn", jobs=0,
                   progress=False).skipped == 1
    literal = tmp_path / "m\\udcc3.pb"  # a name holding the text \udcc3, not the byte
    literal.write_bytes(graph.read_bytes())
    head = jaxmir.load(literal, backbone="msd-musicnn")
    for output in ("l.csv", "l.jsonl"):
        run = lambda: collect(head, [clip], str(tmp_path / output), name=str(literal),
                              backbone="msd-musicnn", jobs=0, progress=False)
        assert run().ok == 1 and run().skipped == 1
    table = tmp_path / "l.jsonl"  # as written before, the text as it was: resumed, not misread
    assert table.read_text().count("m\\\\\\\\udcc3.pb") == 2
    table.write_text(table.read_text().replace("m\\\\\\\\udcc3.pb", "m\\\\udcc3.pb"))
    assert collect(head, [clip], str(table), name=str(literal), backbone="msd-musicnn", jobs=0,
                   progress=False).skipped == 1


def test_collect_names_a_shipped_model_as_the_command_line_does(music, model, tmp_path):
    """Without name= it recorded the weights' file and sha256, so that it could not resume the
    command line's output (nor one written with name="msd-musicnn"), and the message told a
    Python caller of --overwrite. A model's name or path, a Path output."""
    path = str(music / "rock" / "a.wav")
    out = tmp_path / "tags.jsonl"  # a Path, as paths may be
    assert collect(model, path, out, jobs=0, progress=False).ok == 1
    assert json.loads(out.read_text())["model"] == "msd-musicnn"
    assert collect(model, path, str(out), name="msd-musicnn", jobs=0, progress=False).skipped == 1
    with pytest.raises(InputError, match=r"collect takes a loaded model \(jaxmir.load\("
                                         r"'msd-musicnn'\)\), not str"):
        collect("msd-musicnn", path, str(tmp_path / "other.jsonl"), progress=False)
    # a head loaded on a backbone: its file and the backbone, as `jaxmir tag --model H --backbone B`
    head = str(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    composed = jaxmir.load(head, backbone="msd-musicnn")
    heads = tmp_path / "head.jsonl"
    assert collect(composed, path, str(heads), jobs=0, progress=False).ok == 1
    assert json.loads(heads.read_text())["model"] == "emomusic-msd-musicnn-1.pb+msd-musicnn"
    assert collect(composed, path, str(heads), name=head, backbone="msd-musicnn", jobs=0,
                   progress=False).skipped == 1
    # backbone= without name= is recorded over the backbone the head's metadata names
    renamed = tmp_path / "renamed.jsonl"
    assert collect(composed, path, str(renamed), backbone="my-backbone", jobs=0,
                   progress=False).ok == 1
    assert json.loads(renamed.read_text())["model"] == "emomusic-msd-musicnn-1.pb+my-backbone"
    for jobs in (-1, 1.5, True):  # -1 ran, where the command line refuses --jobs -1
        with pytest.raises(InputError, match=rf"jobs={jobs!r}: expected a whole number >= 0"):
            collect(model, path, str(tmp_path / "other.jsonl"), jobs=jobs, progress=False)


def test_a_table_resumes_under_another_name_of_its_output(music, model, tmp_path):
    """'embeddings' and 'model/dense/BiasAdd' are one output of MusiCNN: a table written under
    one is resumed under the other (its rows are the same values); not so another output, nor a
    folder of .npy, whose arrays keep the shape of the name they were written under."""
    path = str(music / "rock" / "a.wav")
    assert {"embeddings", "model/dense/BiasAdd"} <= same_outputs(model, "embeddings")
    for out in (tmp_path / "e.parquet", tmp_path / "e.jsonl"):
        first = collect(model, [path], str(out), command="embed", name="msd-musicnn", jobs=0,
                        progress=False, options=Options(output="embeddings"))
        again = collect(model, [path], str(out), command="embed", name="msd-musicnn", jobs=0,
                        progress=False, options=Options(output="model/dense/BiasAdd"))
        assert (first.ok, again.skipped, again.ok) == (1, 1, 0)
        with pytest.raises(InputError, match="output: 'embeddings' there, 'cnn3' now"):
            collect(model, [path], str(out), command="embed", name="msd-musicnn", jobs=0,
                    progress=False, options=Options(output="cnn3"))
    folder = tmp_path / "arrays"
    collect(model, [path], str(folder), command="embed", name="msd-musicnn", jobs=0,
            progress=False, options=Options(output="embeddings"))
    with pytest.raises(InputError, match="'model/dense/BiasAdd' now"):
        collect(model, [path], str(folder), command="embed", name="msd-musicnn", jobs=0,
                progress=False, options=Options(output="model/dense/BiasAdd"))


def test_torn_last_line_is_dropped(music, model, tmp_path):
    out = tmp_path / "tags.jsonl"
    collect(model, [str(music / "rock")], str(out), name="msd-musicnn", jobs=0, progress=False,
            analyzer=_counting()[0])  # file by file, as the resumed run redoes the torn one
    whole = out.read_bytes()
    first_line = whole[:whole.index(b"\n") + 1]
    out.write_bytes(first_line + whole[len(first_line):len(first_line) + 40])  # a kill mid-line
    # a run killed while rewriting it left its temporary, for good (kept: another output's)
    stale, other = tmp_path / ".tags.jsonl.Ab12cd34.tmp", tmp_path / ".tags.jsonl.x.Ab12cd34.tmp"
    stale.write_bytes(b"{}\n")
    other.write_bytes(b"{}\n")
    folder = tmp_path / ".tags.jsonl.Zz98yx76.tmp"  # named so, but no file: left alone
    folder.mkdir()
    analyzer, seen = _counting()
    collect(model, [str(music / "rock")], str(out), name="msd-musicnn", jobs=0, progress=False,
            analyzer=analyzer)
    assert len(seen) == 1 and out.read_bytes() == whole
    assert not stale.exists() and other.exists() and folder.is_dir()


def test_a_csv_holding_only_its_header_resumes(music, model, tmp_path):
    """A run killed before its first row leaves the CSV's header only: the next run resumes it
    as an output of no rows."""
    clip = str(music / "rock" / "a.wav")
    out = tmp_path / "tags.csv"
    collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
    whole = out.read_bytes()
    out.write_bytes(whole[:whole.index(b"\n") + 1])
    assert collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False).ok == 1
    assert out.read_bytes() == whole


def test_a_csv_edited_or_torn_mid_file_says_where(music, model, tmp_path):
    """A column added after the labels said only "the labels differ", and a row cut short
    mid-file named no line."""
    clip, other = str(music / "rock" / "a.wav"), str(music / "rock" / "b.flac")
    out = tmp_path / "tags.csv"
    collect(model, [clip, other], str(out), name="msd-musicnn", jobs=0, progress=False)
    header, first, second = out.read_text().splitlines()
    for text, why in (
            ("\n".join([header + ",extra,more", first + ",1,1", second + ",1,1"]) + "\n",
             "the labels differ: 52 there, 50 now, from 'extra' on only there"),
            ("\n".join([header.replace(",rock,", ",Rock,", 1), first, second]) + "\n",
             "the labels differ: label 1 is 'Rock' there, 'rock' now"),
            ("\n".join([header, first[:40], second]) + "\n",
             "line 2: a row of 1 values under 59 columns"),  # its path, cut
            ("\n".join([header.replace("size_bytes,mtime_ns", "mtime_ns,size_bytes", 1), first,
                        second]) + "\n", "its columns start ['path', 'mtime_ns', 'size_bytes'")):
        out.write_text(text)
        with pytest.raises(InputError, match=re.escape(why)):
            collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
        assert out.read_text() == text
    lines = tmp_path / "tags.jsonl"  # JSON lines: the labels are every row's keys, checked too
    tally = collect(model, [clip, other], str(lines), name="msd-musicnn", jobs=0, progress=False)
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert tally.audio_s == pytest.approx(sum(row["duration_s"] for row in rows))  # both files'
    edited = lines.read_text().replace('"rock":', '"Rock":')
    lines.write_text(edited)
    with pytest.raises(InputError, match=re.escape("the labels differ: label 1 is 'Rock' there, "
                                                   "'rock' now")):
        collect(model, [clip], str(lines), name="msd-musicnn", jobs=0, progress=False)
    assert lines.read_text() == edited


def test_csv_refuses_another_models_or_settings_output(music, model, tmp_path):
    """A CSV records the run's identity as JSONL does (column "settings"): another model of the
    same labels, another backbone or other patch options are refused, naming them; a CSV
    written before that column is still resumed, and its model checked."""
    import csv

    import pandas

    out = tmp_path / "tags.csv"
    run = lambda path="a.wav", name="msd-musicnn", **kw: collect(
        model, [str(music / "rock" / path)], str(out), name=name, jobs=0, progress=False, **kw)
    run()
    for kw, difference in (({"name": "msd-vgg"}, "model: 'msd-musicnn' there, 'msd-vgg' now"),
                           ({"backbone": "msd-vgg"}, "'msd-musicnn' there, 'msd-musicnn+msd-vgg'"),
                           ({"options": Options(patch_hop=40)}, "patch_hop: 93 there, 40 now"),
                           ({"options": Options(pad="zero")}, "pad: None there, 'zero' now"),
                           ({"options": Options(dtype="bfloat16")},
                            "dtype: 'float32' there, 'bfloat16'")):
        with pytest.raises(InputError, match=re.escape(difference) + ".*--overwrite"):
            run(**kw)
    frame = pandas.read_csv(out)
    assert len(frame) == 1 and json.loads(frame["settings"][0])["patch_hop"] == 93
    with open(out, newline="") as file:
        before = [row[:8] + row[9:] for row in csv.reader(file)]  # as written without "settings"
    with open(out, "w", newline="") as file:
        csv.writer(file, lineterminator="\n").writerows(before)
    with pytest.warns(JaxmirWarning, match="records no settings"):
        assert run("b.flac").ok == 1
    assert list(pandas.read_csv(out)["model"]) == ["msd-musicnn"] * 2
    with pytest.raises(InputError, match="model: 'msd-musicnn' there, 'msd-vgg' now"):
        run(name="msd-vgg")
    # rows written without settings were the defaults': other settings appended to them silently
    for kw, difference in (({"options": Options(patch_hop=40)},
                            "patch_hop: not recorded there (written before jaxmir recorded "
                            "settings: taken as the default, 93), 40 now"),
                           ({"options": Options(dtype="bfloat16")}, "dtype: 'float32' there")):
        with pytest.raises(InputError, match=re.escape(difference)):
            run("../jazz/a.wav", **kw)
    with pytest.raises(InputError, match=r"CSV holds tag means only; .* --per-patch "
                                         r"\(per_patch=True in Python\)"):  # named the option only
        collect(model, [str(music)], str(tmp_path / "p.csv"), per_patch=True, progress=False)


def test_a_layer_of_two_axes_is_flattened_in_tables_and_kept_in_arrays(model, tmp_path):
    """The README: cnn3 ([187, 64] a patch) is flattened in row-major order in a table's
    embedding and patches, and keeps its shape in the .npy folder; untested before."""
    clip = _write(tmp_path / "in" / "a.wav", 7.0, 16000, 1, 3)
    audio = jaxmir.load_audio(clip, 16000)
    want = np.asarray(model.predict(audio, 16000, output="cnn3"))
    assert want.shape == (3, 187, 64)
    table, folder = tmp_path / "e.parquet", tmp_path / "emb"
    for out in (table, folder):
        tally = collect(model, [str(clip)], str(out), command="embed", options=Options("cnn3"),
                        name="msd-musicnn", per_patch=True, jobs=0, progress=False)
        assert tally.ok == 1
    row = _read_parquet(table).iloc[0]
    assert_same_embeddings(row["embedding"], np.asarray(want, np.float64).mean(0).reshape(-1))
    assert_same_embeddings(np.stack(row["patches"]), want.reshape(3, -1))
    assert_same_embeddings(np.load(folder / "a.npy", allow_pickle=False), want)


def test_a_deleted_array_is_done_again(model, tmp_path):
    """A row whose .npy was deleted stayed done: the rerun said "nothing to do" and the array
    stayed missing."""
    clips = [_write(tmp_path / "in" / f"{name}.wav", 3.0, 16000, 1, seed)
             for seed, name in enumerate("ab")]
    out = tmp_path / "emb"
    embed = lambda: collect(model, [str(c) for c in clips], str(out), command="embed",
                            options=Options("embeddings"), name="msd-musicnn", jobs=0,
                            progress=False)
    assert embed().ok == 2
    whole = np.load(out / "a.npy")
    (out / "a.npy").unlink()
    tally = embed()
    assert (tally.ok, tally.skipped) == (1, 1)
    assert_same_embeddings(np.load(out / "a.npy"), whole)  # packed with b's patches, then alone
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(row["npy"] for row in index) == ["a.npy", "b.npy"]  # one row each
    # an array deleted of a file this run does not hold: its row is not this run's to drop
    (out / "b.npy").unlink()
    assert collect(model, [str(clips[0])], str(out), command="embed",
                   options=Options("embeddings"), name="msd-musicnn", jobs=0,
                   progress=False).skipped == 1
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(row["npy"] for row in index) == ["a.npy", "b.npy"]


def test_an_overwrite_never_leaves_rows_without_arrays(model, tmp_path, monkeypatch):
    """--overwrite empties the index before it removes the arrays it listed: a removal that
    fails (or a kill between the two) leaves arrays without rows, never rows without arrays.
    A file name of 242 bytes (a temporary name beside it would pass 255) is written too."""
    clips = [_write(tmp_path / "in" / name, 3.0, 16000, 1, seed)
             for seed, name in enumerate(("a.wav", "b.wav", "x" * 238 + ".wav"))]
    out = tmp_path / "emb"
    embed = lambda paths, **kw: collect(model, [str(p) for p in paths], str(out), command="embed",
                                        options=Options("embeddings"), name="msd-musicnn",
                                        jobs=0, progress=False, **kw)
    assert embed(clips).ok == 3
    unlink = Path.unlink

    def refuse_b(self, *args, **kwargs):
        if self.name == "b.npy":
            raise PermissionError(1, "Operation not permitted", str(self))
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse_b)
    assert embed(clips[:1], overwrite=True).ok == 1
    monkeypatch.undo()
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [row["npy"] for row in index] == ["a.npy"]
    assert sorted(p.name for p in out.glob("*.npy")) == ["a.npy", "b.npy"]  # b's: no row, harmless
    tally = embed(clips)  # b and the long name are done again
    assert (tally.ok, tally.skipped) == (2, 1)
    assert all((out / json.loads(line)["npy"]).is_file()
               for line in (out / "index.jsonl").read_text().splitlines())


def test_an_overwrite_removes_the_folders_it_empties(music, model, tmp_path):
    out = tmp_path / "emb"
    embed = lambda paths, **kw: collect(model, paths, str(out), command="embed",
                                        options=Options("embeddings"), name="msd-musicnn",
                                        jobs=0, progress=False, **kw)
    assert embed([str(music)]).ok == 4
    (out / "mine").mkdir()  # a folder of the user's, empty: kept
    # arrays an index names outside the folder, by a path or through a link, are not jaxmir's
    outside, linked = tmp_path / "outside.npy", tmp_path / "linked.npy"
    for keep in (outside, linked):
        np.save(keep, np.zeros(3))
    (out / "link.npy").symlink_to(linked)
    with open(out / "index.jsonl", "a", encoding="utf-8") as index:
        index.write(json.dumps({"npy": "../outside.npy"}) + "\n")
        index.write(json.dumps({"npy": "link.npy"}) + "\n")
    assert embed([str(music / "rock" / "a.wav")], overwrite=True).ok == 1
    folders = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir())
    assert folders == ["mine"]  # jazz/deep, jazz and rock went with their arrays
    assert outside.is_file() and linked.is_file()


@pytest.mark.parametrize("how", ["made anew", "a part removed"])
def test_a_parquet_folder_changed_under_the_run_stops_it(model, tmp_path, how):
    """A Parquet folder deleted and made anew, or a part of this run's removed, during the run:
    it ended '2 ok' where the table held fewer rows."""
    clips = [_write(tmp_path / "in" / f"{name}.wav", 3.0, 16000, 1, seed)
             for seed, name in enumerate("abc")]
    out = tmp_path / "tags.parquet"

    def change(result, where):
        parts = sorted(out.glob("part-*.parquet"))
        if how == "made anew" and len(parts) == 2:
            shutil.rmtree(out)
            out.mkdir()
        elif how == "a part removed" and len(parts) == 3:
            parts[1].unlink()  # the first row's part (part 0 is the empty one)

    # a folder made anew may take the old one's inode: then only its lost parts tell
    message = "(was deleted|lost part-000001.parquet)" if how == "made anew" else \
        "lost part-000001.parquet"
    with pytest.raises(InputError, match=f"tags.parquet {message} while this run wrote to it"):
        collect(model, [str(c) for c in clips], str(out), name="msd-musicnn", jobs=0,
                progress=False, on_result=change, flush_rows=1)


@pytest.mark.parametrize("kind", ["tags.jsonl", "emb", "tags.parquet"])
def test_an_output_deleted_during_the_run_stops_it(model, tmp_path, kind):
    """Rows appended to a deleted file (or arrays into a folder made anew) would be reported
    written and be nowhere: the run stops, naming the output, and makes nothing anew."""
    import shutil

    clips = [_write(tmp_path / "in" / f"{name}.wav", 3.0, 16000, 1, seed)
             for seed, name in enumerate("ab")]
    out = tmp_path / kind

    def delete(result, where):
        shutil.rmtree(out) if out.is_dir() else out.unlink()

    command = "embed" if kind == "emb" else "tag"
    with pytest.raises(InputError, match="was deleted while this run wrote to it"):
        collect(model, [str(c) for c in clips], str(out), command=command,
                options=Options("embeddings" if kind == "emb" else "predictions"),
                name="msd-musicnn", jobs=0, progress=False, on_result=delete,
                **({"flush_rows": 1} if kind.endswith(".parquet") else {}))
    assert not out.exists()


@pytest.mark.parametrize("kind", ["tags.parquet", "tags.jsonl"])
def test_a_second_run_on_an_output_stops_at_once(model, tmp_path, kind):
    """Two runs on one output numbered the same Parquet parts (each replacing the other's: rows
    lost, both exiting 0) or interleaved rows: while one holds it, another stops, writing nothing;
    the first's lock goes with it, even killed."""
    clip = _write(tmp_path / "in" / "a.wav", 3.0, 16000, 1, 0)
    out = tmp_path / kind
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom jaxmir.collection.outputs import exclusive\n"
         f"with exclusive({str(out)!r}):\n print('held', flush=True)\n sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(InputError, match="is being written by another jaxmir run"):
            collect(model, [str(clip)], str(out), name="msd-musicnn", jobs=0, progress=False)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert collect(model, [str(clip)], str(out), name="msd-musicnn", jobs=0, progress=False).ok == 1
    # through a link to it, too: each name had its own lock (both runs wrote part-000000)
    link = tmp_path / f"link-{kind}"
    link.symlink_to(out)
    with outputs.exclusive(str(out)):
        with pytest.raises(InputError, match="is being written by another jaxmir run"):
            collect(model, [str(clip)], str(link), name="msd-musicnn", jobs=0, progress=False)


def test_an_output_spelt_another_way_is_held_by_the_same_lock(model, tmp_path, monkeypatch):
    """The lock was named from the output as typed: `-o .`, `-o sub/..` or `-o link/.` each took
    another lock than `-o $PWD`, so two runs wrote one .npy folder at once (30 of 60 rows named
    the other run's array)."""
    clip = _write(tmp_path / "in" / "a.wav", 3.0, 16000, 1, 0)
    out = tmp_path / "arrays"
    (out / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(out)
    monkeypatch.chdir(out)
    for spelt in (".", "./", "sub/..", str(tmp_path / "link" / "."), str(tmp_path / "link")):
        with outputs.exclusive(str(out)):
            with pytest.raises(InputError, match="is being written by another jaxmir run"):
                collect(model, [str(clip)], spelt, command="embed", name="msd-musicnn", jobs=0,
                        progress=False)


@pytest.mark.parametrize("kind", ["tags.parquet", "tags.csv", "arrays"])
def test_an_output_that_is_a_loop_of_links_says_so(model, tmp_path, kind):
    """'Not a directory' or 'File exists' for a Parquet or .npy output, and a CSV's loop was
    replaced by a file without a word; `jaxmir tag FILE -o loop` said what it is."""
    clip = _write(tmp_path / "in" / "a.wav", 3.0, 16000, 1, 0)
    loop = tmp_path / kind
    loop.symlink_to(loop)
    with pytest.raises(InputError, match=r"is a link that leads to no file \(a loop\)"):
        collect(model, [str(clip)], str(loop), command="embed" if kind == "arrays" else "tag",
                name="msd-musicnn", jobs=0, progress=False)
    assert loop.is_symlink()


def test_a_folder_whose_parent_cannot_be_written_holds_its_own_lock(model, tmp_path,
                                                                     monkeypatch):
    """`-o .` took its lock in the parent folder once the lock was named from the real path: a
    user who may write the folder but not its parent could no longer write it."""
    clip = _write(tmp_path / "in" / "a.wav", 3.0, 16000, 1, 0)
    out = tmp_path / "home" / "arrays"
    out.mkdir(parents=True)
    monkeypatch.setattr(outputs, "unwritable",
                        lambda folder: "Permission denied" if Path(folder) == out.parent else None)
    monkeypatch.chdir(out)
    run = lambda: collect(model, [str(clip)], ".", command="embed", name="msd-musicnn", jobs=0,
                          progress=False)
    with outputs.exclusive(str(out)):
        with pytest.raises(InputError, match="is being written by another jaxmir run"):
            run()
    assert run().ok == 1
    assert sorted(os.listdir(out)) == [outputs.FOLDER_LOCK, "a.npy", "index.jsonl"]
    assert not (out.parent / ".arrays.lock").exists()


def test_a_run_leaves_the_temporaries_of_a_collection_inside_its_output_alone(tmp_path):
    """A run removed every array temporary below its folder, a nested collection's too, which
    another run was writing (that run then failed: 'cannot write nest/inner/')."""
    nest = tmp_path / "nest"
    (nest / "inner").mkdir(parents=True)
    (nest / "inner" / outputs.INDEX).write_text("")
    theirs = nest / "inner" / ".f03.npy.a1b2c3d4.tmp"
    ours = nest / ".f03.npy.a1b2c3d4.tmp"
    for temporary in (theirs, ours):
        temporary.write_bytes(b"half an array")
    outputs._remove_array_temporaries(nest)
    assert theirs.exists() and not ours.exists()


@pytest.mark.parametrize("kind", ["tags.csv", "tags.parquet", "tags.jsonl"])
def test_a_table_among_the_inputs_is_left_out_of_them(model, tmp_path, kind):
    """`jaxmir tag in/* -o in/tags.parquet`, run again, named its own output among its inputs:
    a Parquet folder was refused ('no audio files in this folder'), a CSV decoded as audio (an
    error row and exit status 1 on every run); so did an @list naming the output."""
    clip = _write(tmp_path / "in" / "a.wav", 3.0, 16000, 1, 0)
    out = tmp_path / "in" / kind
    listing = tmp_path / "list.txt"
    listing.write_text(f"{clip}\n{out}\n")
    run = lambda paths: collect(model, paths, str(out), name="msd-musicnn", jobs=0,
                                progress=False)
    assert run([str(clip)]).ok == 1
    for paths in ([str(clip), str(out)], [f"@{listing}"]):
        with pytest.warns(JaxmirWarning, match=f"{re.escape(str(out))}: the output of this run; "
                                                "left out of its inputs"):
            summary = run(paths)
        assert summary.ok == 0 and summary.failed == 0 and summary.skipped == 1


def test_a_file_beside_the_output_whose_name_begins_with_it_is_an_input(tmp_path):
    """Only the output and what lies in it are left out of the inputs: not a file or folder
    beside it whose name begins with the output's (`tags.csv.wav`, `tags.parquet-old/`)."""
    beside = tmp_path / "tags.csv.wav"
    beside.write_bytes(b"")
    (tmp_path / "tags.parquet-old").mkdir()
    inside = tmp_path / "tags.parquet-old" / "a.wav"
    inside.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error", JaxmirWarning)
        assert inputs.expand([str(beside)], tmp_path / "tags.csv") == [str(beside)]
        assert inputs.expand([str(inside.parent)], tmp_path / "tags.parquet") == [str(inside)]


def test_an_output_named_through_a_linked_folder_is_known_by_its_real_path(tmp_path):
    """`-o linked/tags.csv` with `linked` a link to `real`: `real/tags.csv` (and a part of
    `real/tags.parquet`) named as an input is the run's output, left out."""
    (tmp_path / "real" / "tags.parquet").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    for output, named in (("tags.csv", "tags.csv"), ("tags.parquet", "tags.parquet/part-0.wav")):
        with pytest.warns(JaxmirWarning, match="the output of this run; left out of its inputs"):
            assert inputs.expand([str(tmp_path / "real" / named)],
                                 tmp_path / "linked" / output) == []


def test_a_part_of_the_parquet_output_named_as_an_input_is_left_out(model, tmp_path):
    """`jaxmir tag out.parquet/* -o out.parquet`: a part inside the output is no audio of the run
    (decoded, it was an error row and exit status 1)."""
    clip = _write(tmp_path / "a.wav", 3.0, 16000, 1, 0)
    out = tmp_path / "tags.parquet"
    run = lambda paths: collect(model, paths, str(out), name="msd-musicnn", jobs=0,
                                progress=False)
    assert run([str(clip)]).ok == 1
    part = str(out / "part-000001.parquet")
    with pytest.warns(JaxmirWarning, match="left out of its inputs"):
        summary = run([str(clip), part])
    assert (summary.ok, summary.failed, summary.skipped) == (0, 0, 1)


def test_a_parquet_output_holding_underscored_files_is_resumed(model, tmp_path):
    """Spark's _SUCCESS (or _metadata) beside the parts, which pyarrow and pandas skip, is no
    reason to refuse the output as another program's folder."""
    clip = _write(tmp_path / "a.wav", 3.0, 16000, 1, 0)
    out = tmp_path / "tags.parquet"
    run = lambda: collect(model, [str(clip)], str(out), name="msd-musicnn", jobs=0,
                          progress=False)
    assert run().ok == 1
    (out / "_SUCCESS").write_bytes(b"")
    assert run().skipped == 1


def test_a_resume_that_drops_a_middle_part_loses_no_later_one(model, tmp_path):
    """A part whose rows are all done again is removed: the parts left are numbered with a gap
    (0, 1, 3, 4), and the next one written must come after the last, not replace it."""
    clips = [_write(tmp_path / "in" / f"{name}.wav", 3.0, 16000, 1, seed)
             for seed, name in enumerate("abcd")]
    out = tmp_path / "tags.parquet"
    run = lambda: collect(model, [str(c) for c in clips], str(out), name="msd-musicnn", jobs=0,
                          progress=False, flush_rows=1)
    assert run().ok == 4
    assert len(list(out.glob("part-*.parquet"))) == 5  # the empty first part, a row each
    os.utime(clips[1], ns=(1, 1))  # changed: its part's only row goes, the file is done again
    assert run().ok == 1
    table = _read_parquet(out)
    assert list(table["path"]) == [str(c) for c in clips] and set(table["status"]) == {"ok"}


def test_a_folder_of_arrays_may_hold_the_audio_it_is_written_for(model, tmp_path, monkeypatch):
    """`jaxmir embed e1/*.wav -o e1` and `cd e1; jaxmir embed . -o .` write the arrays beside the
    audio (the folder is walked for audio alone); leaving out every input inside the output
    made them do nothing."""
    folder = tmp_path / "e1"
    clips = [_write(folder / f"{name}.wav", 3.0, 16000, 1, seed) for seed, name in enumerate("ab")]
    run = lambda paths, out: collect(model, paths, out, command="embed", name="msd-musicnn",
                                     jobs=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JaxmirWarning)
        assert run([str(clip) for clip in clips], str(folder)).ok == 2
        monkeypatch.chdir(folder)
        assert run(["."], ".").skipped == 2  # the same files, done
    # the folder named among the inputs (`in/*` once `-o in/emb` is written): no audio in it
    inner = folder / "emb"
    assert run([str(clips[0]), str(clips[1])], str(inner)).ok == 2
    with pytest.warns(JaxmirWarning, match="emb: the output of this run; left out of its inputs"):
        assert run([str(clips[0]), str(clips[1]), str(inner)], str(inner)).skipped == 2
    assert sorted(os.listdir(folder)) == [".emb.lock", "a.npy", "a.wav", "b.npy", "b.wav", "emb",
                                          "index.jsonl"]


def test_another_user_s_lock_is_taken_read_only(model, tmp_path, monkeypatch):
    """A lock left by another user (0644) was opened for appending: every other user's run was
    refused, "Permission denied". A lock needs it read only. Root opens any file: simulated."""
    clip, out = tmp_path / "a.wav", tmp_path / "t.jsonl"
    _write(clip, 3.0, 16000, 1, 0)
    lock = tmp_path / ".t.jsonl.lock"
    lock.write_bytes(b"")
    lock.chmod(0o644)

    real_open, modes = os.open, []

    def opened(path, flags, *args, **kwargs):
        if os.fspath(path) == str(lock):
            modes.append(flags & os.O_ACCMODE)
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(outputs.os, "open", opened)
        assert collect(model, [str(clip)], str(out), name="msd-musicnn", jobs=0,
                       progress=False).ok == 1
    # for writing first where it may be (NFS's flock needs it), then read only
    assert modes == [os.O_RDWR, os.O_RDONLY]
    lock.unlink()  # a FIFO in its place: the run waited on it for ever
    os.mkfifo(lock)
    with pytest.raises(InputError, match="the output's lock, is not a regular file"):
        collect(model, [str(clip)], str(out), name="msd-musicnn", jobs=0, progress=False)


@pytest.mark.parametrize("refusal", [errno.EROFS, errno.EPERM])
def test_a_lock_that_cannot_be_opened_for_writing_is_opened_read_only(tmp_path, monkeypatch,
                                                                      refusal):
    """Only "Permission denied" fell back to a read-only open: on a read-only file system
    (EROFS) an existing lock, which the run before made, refused the resume (root too). The
    read-only open asks for no O_CREAT, which fs.protected_regular refuses on another user's
    file in a sticky folder."""
    out, lock = tmp_path / "t.jsonl", tmp_path / ".t.jsonl.lock"
    lock.write_bytes(b"")
    real_open, modes, created = os.open, [], []

    def opened(path, flags, *args, **kwargs):
        if os.fspath(path) == str(lock):
            modes.append(flags & os.O_ACCMODE)
            created.append(bool(flags & os.O_CREAT))
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(refusal, os.strerror(refusal), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(outputs.os, "open", opened)
    with outputs.exclusive(str(out)):
        pass
    assert modes == [os.O_RDWR, os.O_RDONLY] and created == [True, False]


def test_a_lock_that_cannot_be_made_names_the_output_s_folder(tmp_path, monkeypatch):
    """A folder output on a read-only file system, with no lock yet, ended in
    ".../.jaxmir.lock: Read-only file system", naming a hidden file instead of the output."""
    out = tmp_path / "arr"  # an existing folder output: its lock goes in it (parent refused)
    out.mkdir()

    def refused(path, flags, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    monkeypatch.setattr(outputs.os, "open", refused)
    with pytest.raises(InputError, match=rf"cannot write the output in {re.escape(str(out))}: "
                                         r"Read-only file system \(its lock, \.jaxmir\.lock\)"):
        with outputs.exclusive(str(out)):
            pass


def test_another_user_s_lock_that_cannot_be_opened_is_named_with_its_owner(tmp_path,
                                                                          monkeypatch):
    """A 0600 lock left by another user in a folder all may write was refused with "cannot write
    the output in FOLDER: Permission denied", blaming a writable folder."""
    out, lock = tmp_path / "t.jsonl", tmp_path / ".t.jsonl.lock"
    lock.write_bytes(b"")
    lock.chmod(0o600)
    real_open = os.open

    def refused(path, flags, *args, **kwargs):
        if os.fspath(path) == str(lock):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(outputs.os, "open", refused)
    with pytest.raises(InputError, match=rf"{re.escape(str(lock))}, the output's lock, cannot be "
                                         r"opened \(Permission denied\): .*'s, mode 0600; have it "
                                         r"removed, or give another output"):
        with outputs.exclusive(str(out)):
            pass


@pytest.mark.parametrize("error", [errno.EBADF, errno.ENOLCK])
def test_a_lock_the_file_system_refuses_to_take_is_named(tmp_path, monkeypatch, error):
    """NFS's flock emulation refuses a lock opened read-only (EBADF) or has none (ENOLCK): the
    run ended in "jaxmir: error: Bad file descriptor", naming no file."""
    def refused(descriptor, operation):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(outputs.fcntl, "flock", refused)
    with pytest.raises(InputError, match=r"\.t\.jsonl\.lock, the output's lock, cannot be locked "
                                         rf"\({re.escape(os.strerror(error))}\)"):
        with outputs.exclusive(str(tmp_path / "t.jsonl")):
            pass


@pytest.mark.parametrize("kind", ["folder", "socket"])
def test_a_lock_that_is_a_folder_or_a_socket_is_said_to_be_no_file(tmp_path, kind):
    """They ended in ".t.jsonl.lock: Is a directory" and "No such device or address"."""
    import socket

    out, lock = tmp_path / "t.jsonl", tmp_path / ".t.jsonl.lock"
    if kind == "folder":
        lock.mkdir()
        held = contextlib.nullcontext()
    else:
        held = socket.socket(socket.AF_UNIX)
        held.bind(str(lock))
    with held, pytest.raises(InputError, match="the output's lock, is not a regular file"):
        with outputs.exclusive(str(out)):
            pass


def test_outputs_are_held_where_os_has_no_nonblocking_flag(tmp_path, monkeypatch):
    """Windows' os has no O_NONBLOCK: every table output ended in an AttributeError there,
    where the outputs are meant to go unlocked (no fcntl)."""
    monkeypatch.delattr(outputs.os, "O_NONBLOCK")
    with outputs.exclusive(str(tmp_path / "t.jsonl")):
        pass
    assert (tmp_path / ".t.jsonl.lock").is_file()


def test_long_output_names_sharing_their_first_bytes_have_their_own_locks(tmp_path):
    """Locks were named from an output name's first 200 bytes: two runs on two outputs whose
    long names began alike refused each other."""
    same = "é" * 110  # 220 bytes
    first, second = tmp_path / f"{same}-1.jsonl", tmp_path / f"{same}-2.jsonl"
    with outputs.exclusive(str(first)):
        with outputs.exclusive(str(second)):
            pass
        with pytest.raises(InputError, match="is being written by another jaxmir run"):
            with outputs.exclusive(str(first)):
                pass
    assert all(len(os.fsencode(p.name)) <= 255 for p in tmp_path.iterdir())


def test_an_output_named_through_a_link_is_written_through_it(model, tmp_path):
    """A resume that dropped a row replaced the link by a file, leaving its target stale; a
    dotted folder named with a trailing '/' was an unknown kind."""
    clips = [_write(tmp_path / "in" / f"{name}.wav", 3.0, 16000, 1, seed)
             for seed, name in enumerate("ab")]
    out, link = tmp_path / "tags.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(out)
    run = lambda: collect(model, [str(c) for c in clips], str(link), name="msd-musicnn", jobs=0,
                          progress=False)
    assert run().ok == 2
    os.utime(clips[0], ns=(1, 1))  # changed: its row goes, the file is done again
    assert run().ok == 1 and link.is_symlink()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["path"] for row in rows) == [str(c) for c in clips]
    assert sorted(os.listdir(tmp_path)) == [".tags.jsonl.lock", "in", "link.jsonl", "tags.jsonl"]
    folder = tmp_path / "vectors.v2"
    assert collect(model, [str(clips[0])], f"{folder}/", command="embed",
                   options=Options("embeddings"), name="msd-musicnn", jobs=0,
                   progress=False).ok == 1
    assert sorted(os.listdir(folder)) == ["a.npy", "index.jsonl"]
    # a name ending in .npy asks for one file: it made a folder of that name
    with pytest.raises(InputError, match=r"--output .*emb.npy: jaxmir embed writes one .npy per "
                                         r"file, into a folder: give the folder's name \(.*emb/\)"):
        collect(model, [str(clips[0])], str(tmp_path / "emb.npy"), command="embed",
                name="msd-musicnn", jobs=0, progress=False)
    assert not (tmp_path / "emb.npy").exists()
    (tmp_path / "old.npy").mkdir()  # a folder an earlier run made is still resumed
    assert collect(model, [str(clips[0])], str(tmp_path / "old.npy"), command="embed",
                   name="msd-musicnn", jobs=0, progress=False).ok == 1
    # the kind is the name's given, not its target's: a link 'rows.jsonl' to 'store' made a
    # folder of .npy there (tag's rows as arrays)
    (tmp_path / "rows.jsonl").symlink_to("store")
    assert collect(model, [str(clips[0])], str(tmp_path / "rows.jsonl"), name="msd-musicnn",
                   jobs=0, progress=False).ok == 1
    assert json.loads((tmp_path / "store").read_text())["tags"]["rock"] > 0
    # a pipe named as a table: reading it to resume waited for ever; an empty name
    os.mkfifo(tmp_path / "pipe.jsonl")
    for output, message in ((tmp_path / "pipe.jsonl", "is not a regular file"),
                            ("", "--output is empty")):
        with pytest.raises(InputError, match=message):
            collect(model, [str(clips[0])], str(output), name="msd-musicnn", jobs=0,
                    progress=False)
    # a pipe, or a link to one, as a Parquet output: --overwrite removed it (as root, a link
    # to /dev/full would have removed the device)
    os.mkfifo(tmp_path / "pipe.parquet")
    (tmp_path / "link.parquet").symlink_to("pipe.parquet")
    for output in ("pipe.parquet", "link.parquet"):
        with pytest.raises(InputError, match="is not a regular file .*, nor a jaxmir Parquet"):
            collect(model, [str(clips[0])], str(tmp_path / output), name="msd-musicnn", jobs=0,
                    progress=False, overwrite=True)
        assert stat.S_ISFIFO(os.stat(tmp_path / output).st_mode)


def test_options_and_commands_that_cannot_run_are_refused_once(model, tmp_path):
    """Each failed file by file (and again on every rerun), or ran: Options("embeddings") under
    command='tag' wrote 50 of the 200 embedding values under the tags' names; command='bogus' was
    recorded as it came."""
    clip = _write(tmp_path / "a.wav", 3.0, 16000, 1, 0)
    for options, message in ((dict(last_patch="bogus"), "Options\\(last_patch='bogus'\\)"),
                             (dict(resampler="sox"), "Options\\(resampler='sox'\\)"),
                             (dict(decoder="x"), "Options\\(decoder='x'\\)"),
                             (dict(pad="bogus"), "Options\\(pad='bogus'\\)"),
                             (dict(patch_hop=-3), "Options\\(patch_hop=-3\\)")):
        with pytest.raises(InputError, match=message):
            Options(**options)
    for kwargs, message in ((dict(options=Options(patch_hop=188)), "patch_hop 188 is larger"),
                            (dict(options=Options("embeddings")), "command='tag' writes the "
                                                                  "predictions"),
                            (dict(command="bogus"), "unknown command 'bogus'")):
        with pytest.raises(InputError, match=message):
            collect(model, [str(clip)], str(tmp_path / "out.jsonl"), name="msd-musicnn", jobs=0,
                    progress=False, **kwargs)
    assert not (tmp_path / "out.jsonl").exists()


def test_one_path_is_one_path(music, model, tmp_path):
    """A string was taken as a sequence of paths, one per character: error rows '/…/c',
    '/…/o'."""
    rock = music / "rock"
    for paths in (str(rock), rock, os.fsencode(rock)):
        output = tmp_path / f"{type(paths).__name__}.jsonl"
        assert collect(model, paths, str(output), name="msd-musicnn", jobs=0,
                       progress=False).ok == 2
        assert [json.loads(line)["path"] for line in output.read_text().splitlines()] == [
            str(rock / "a.wav"), str(rock / "b.flac")]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_file_done_by_another_name_is_not_done_again(music, model, tmp_path, suffix):
    """A run given a link, then one given the file's own name: two rows for one file."""
    import pandas

    link = tmp_path / "link.wav"
    link.symlink_to(music / "rock" / "a.wav")
    output = tmp_path / f"tags{suffix}"
    runs = [collect(model, [str(path)], str(output), name="msd-musicnn", jobs=0, progress=False)
            for path in (link, music / "rock" / "a.wav", link)]
    assert [(run.ok, run.skipped) for run in runs] == [(1, 0), (0, 1), (0, 1)]
    table = pandas.read_json(output, lines=True) if suffix == ".jsonl" else \
        pandas.read_csv(output) if suffix == ".csv" else pandas.read_parquet(output)
    assert list(table["path"]) == [str(link)]


def test_options_without_an_output_take_the_command_s(model, tmp_path):
    """Options(batch=4) under command='embed' wrote the 50 predictions as the embedding."""
    import pyarrow.parquet as pq
    import soundfile

    clip = _write(tmp_path / "a.wav", 6.0, 16000, 1, 0)
    out = tmp_path / "emb.parquet"
    collect(model, [str(clip)], str(out), command="embed", options=Options(batch=4),
            name="msd-musicnn", jobs=0, progress=False)
    row, = pq.read_table(out).to_pylist()
    audio, _ = soundfile.read(clip, dtype="float32")
    expected = model.predict(audio, 16000, output="embeddings").mean(axis=0)
    assert len(row["embedding"]) == expected.size == 200
    # calls of 4 patches against predict's: float32 summation order alone
    np.testing.assert_allclose(row["embedding"], expected, rtol=1e-5, atol=1e-6)
    assert Options(batch=4).for_command("tag").output == "predictions"
    assert Options("penultimate").for_command("tag").output == "penultimate"


def test_a_short_write_is_named_as_one(model, tmp_path, monkeypatch):
    """NumPy reports a short write (a full disk) as "N requested and M written", with no errno."""
    def short_write(*args, **kwargs):
        raise OSError("305184 requested and 179168 written")

    monkeypatch.setattr(np, "save", short_write)
    clip = _write(tmp_path / "a.wav", 3.0, 16000, 1, 0)
    with pytest.raises(InputError,
                       match=r"written \(a short write: is the disk full\?\); "
                             r"every row written before is kept \(0 by this run\)"):
        collect(model, [str(clip)], str(tmp_path / "emb"), command="embed",
                options=Options("embeddings"), name="msd-musicnn", jobs=0, progress=False)


@pytest.mark.parametrize("refusal", [errno.EACCES, errno.EPERM])
def test_an_array_refused_midway_is_named_as_unwritable_not_to_resume(model, tmp_path,
                                                                      monkeypatch, refusal):
    """A write refused (EACCES, or EPERM: a file system or ACL that forbids it) fails again on
    a rerun: the error names the array, with no "run the same command again to resume"."""
    where = tmp_path / "emb" / "a.npy"

    def refused(*args, **kwargs):
        raise PermissionError(refusal, os.strerror(refusal), str(where))

    monkeypatch.setattr(np, "save", refused)
    clip = _write(tmp_path / "a.wav", 3.0, 16000, 1, 0)
    with pytest.raises(InputError) as failed:
        collect(model, [str(clip)], str(tmp_path / "emb"), command="embed",
                options=Options("embeddings"), name="msd-musicnn", jobs=0, progress=False)
    assert str(failed.value) == f"cannot write {tmp_path / 'emb'} ({where}): " \
        f"{os.strerror(refusal)}"


def test_a_file_too_short_for_a_patch_has_its_duration_in_every_mode(model, tmp_path):
    """Streamed in this process (--jobs 0) or decoded by workers: the error row holds the
    duration that was read (1.0 s), not 0."""
    short = _write(tmp_path / "short.wav", 1.0, 16000, 1, 0)
    for jobs in (0, 1):
        out = tmp_path / f"tags-{jobs}.jsonl"
        collect(model, [str(short)], str(out), name="msd-musicnn", jobs=jobs, progress=False)
        row = json.loads(out.read_text())
        assert row["status"] == "error" and "too short" in row["error"], row
        assert row["duration_s"] == 1.0, (jobs, row)


def test_the_decoder_is_part_of_an_outputs_identity(music, model, tmp_path):
    """The float decoder's samples differ from Essentia's (~1e-5 on MP3): its rows are not mixed
    with the default's, in either order."""
    for first, then in (("essentia", "float"), ("float", "essentia")):
        out = str(tmp_path / f"tags-{first}.jsonl")
        run = lambda decoder: collect(model, [str(music / "rock" / "a.wav")], out,
                                      options=Options(decoder=decoder), name="msd-musicnn",
                                      jobs=0, progress=False)
        assert run(first).ok == 1
        with pytest.raises(InputError, match=f"decoder: {first!r} there, {then!r} now"):
            run(then)
        assert run(first).skipped == 1


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_outputs_never_mix_rows_with_and_without_patches(music, model, tmp_path, suffix):
    """--per-patch adds a column the first Parquet part's schema would hide, and JSONL rows kept
    without patches would never get them: refused both ways."""
    for first in (False, True):
        out = str(tmp_path / f"tags-{first}.{suffix}")
        run = lambda per_patch: collect(model, [str(music / "rock" / "a.wav")], out,
                                        name="msd-musicnn", jobs=0, progress=False,
                                        per_patch=per_patch)
        assert run(first).ok == 1
        with pytest.raises(InputError, match=f"per_patch: {first} there, {not first} now"):
            run(not first)
        assert run(first).skipped == 1


def test_names_through_a_linked_folder_and_dotdot_and_lists_written_by_ls(tmp_path, monkeypatch):
    """``m/..`` with ``m`` a link names the link's parent folder, as the file system reads it
    (abspath made it the folder holding ``m``: every file "no such file"); a list in the current
    folder naming ``@x.wav`` or ``#1.wav`` (as ``ls > list.txt`` writes them) names those files,
    not a nested list or a comment."""
    music = tmp_path / "music"
    (music / "rock").mkdir(parents=True)
    for name in ("a.wav", "@at.wav", "#1 take.wav"):
        (music / name).write_bytes(b"")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m").symlink_to(music / "rock")
    through = str(tmp_path / "lists" / "m" / "..")
    assert inputs.expand([through]) == [str(music / name)
                                        for name in ("#1 take.wav", "@at.wav", "a.wav")]
    assert inputs.expand([through + "/a.wav"]) == [str(music / "a.wav")]
    # a link between two '..': each '..' resolved as the file system does, after the link
    # before it (the text after the first gave .../lists/rock/a.wav, no such file)
    (tmp_path / "lists" / "pop").symlink_to(music / "rock")
    twice = str(tmp_path / "lists" / "x" / ".." / "pop" / ".." / "a.wav")
    (tmp_path / "lists" / "x").mkdir()
    assert inputs.expand([twice]) == [str(music / "a.wav")]
    monkeypatch.chdir(music)
    Path("list.txt").write_text("#1 take.wav\n@at.wav\n# a comment\nm/../a.wav\n")
    (music / "m").symlink_to(music / "rock")
    assert inputs.expand(["@list.txt"]) == [str(music / name)
                                            for name in ("#1 take.wav", "@at.wav", "a.wav")]
    Path("list.txt").write_text("#1 take.wav \n")  # padded, as a line typed by hand
    assert inputs.expand(["@list.txt"]) == [str(music / "#1 take.wav")]
    with pytest.raises(InputError, match="is ./@at.wav"):
        inputs.expand(["@at.wav"])


def test_an_error_names_its_file_as_spelled(model, tmp_path):
    """The error column made every run of spaces and tabs one space: a missing file named
    "mis  sing\ttab.wav" was named "mis sing tab.wav" there; line breaks alone become spaces."""
    missing, broken = str(tmp_path / "mis  sing\ttab.wav"), str(tmp_path / "line\nbreak.wav")
    out = tmp_path / "tags.jsonl"
    collect(model, [missing, broken], str(out), name="msd-musicnn", jobs=0, progress=False)
    errors = {row["path"]: row["error"] for row in map(json.loads, out.read_text().splitlines())}
    assert errors[missing].startswith(f"{missing}: ")
    assert errors[broken].startswith(f"{tmp_path}/line break.wav: ")


def test_a_message_s_line_breaks_at_its_ends_leave_no_space_there():
    """A message that ends (or begins) with a line break, as a library's often does, is written
    without a space there: its line breaks become spaces, then its ends are trimmed."""
    from jaxmir.collection.rows import Layout, Result, summary

    layout, source = Layout("embed", {"model": "msd-musicnn"}), inputs.Source("/a.wav", 1, 1)
    failed = Result(source, error="\nbad header:\r\n 3 channels\n")
    damaged = Result(source, 3.0, np.zeros((1, 4), np.float32), warning="truncated audio\n")
    assert summary(layout, failed)["error"] == "bad header: 3 channels"
    assert summary(layout, damaged)["error"] == "truncated audio"


def test_paths_as_text_read_back_as_the_same_names():
    """A name holding ``\\udcff`` as text and one holding the byte 0xff were both written
    ``\\udcff``: their rows could not be told apart, and a rerun did one of them again every
    time. Backslashes before ``udcXX`` text or a stray byte are doubled; both read back exactly,
    and every other name is written as it is."""
    names = ["x\udcff.wav", "x\\udcff.wav", "x\\\udcff.wav", "x\\u.wav", "C:\\users\\a.wav",
             "a\\b.wav", "\\", "u\\", "x\\\\udcff\udcfe.wav"]
    texts = [as_text(name) for name in names]
    assert len(set(texts)) == len(names)
    assert [from_text(text) for text in texts] == names
    assert texts[0] == "x\\udcff.wav" and texts[1] == "x\\\\udcff.wav"
    assert texts[3:8] == names[3:8]  # as before for these: "x\\u.wav", "C:\\users\\a.wav", ...
    for text in texts:
        text.encode("utf-8")


def test_a_file_done_again_keeps_its_array_s_name(model, tmp_path):
    """sub1 and sub2 embedded into one folder (sub2/same.npy), then sub2 alone after its file
    changed: the new array replaced sub2/same.npy; it was written as same.npy, the old one left
    behind without a row."""
    first = _write(tmp_path / "in" / "sub1" / "same.wav", 3.0, 16000, 1, 0)
    second = _write(tmp_path / "in" / "sub2" / "same.wav", 3.0, 16000, 1, 1)
    out = tmp_path / "emb"
    embed = lambda paths: collect(model, [str(p) for p in paths], str(out), command="embed",
                                  options=Options("embeddings"), name="msd-musicnn", jobs=0,
                                  progress=False)
    assert embed([first.parent, second.parent]).ok == 2
    _write(second, 4.0, 16000, 1, 2)
    assert embed([second.parent]).ok == 1
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(row["npy"] for row in index) == ["sub1/same.npy", "sub2/same.npy"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.npy")) == ["sub1/same.npy",
                                                                           "sub2/same.npy"]
    audio = jaxmir.load_audio(str(second), 16000)
    assert_same_embeddings(np.load(out / "sub2" / "same.npy", allow_pickle=False),
                           model.predict(audio, 16000, output="embeddings"))
    # a name another file took meanwhile: the file done again still gets its own back
    other = tmp_path / "other"
    lone = _write(tmp_path / "in" / "same.wav", 3.0, 16000, 1, 3)
    for paths in ([first.parent], [lone], [first.parent, lone]):
        if paths[-1] == lone and len(paths) == 2:
            _write(first, 4.0, 16000, 1, 4)  # changed: done again
        collect(model, [str(p) for p in paths], str(other), command="embed",
                options=Options("embeddings"), name="msd-musicnn", jobs=0, progress=False)
    index = [json.loads(line) for line in (other / "index.jsonl").read_text().splitlines()]
    assert sorted((os.path.basename(os.path.dirname(row["path"])), row["npy"]) for row in index) \
        == [("in", "same-2.npy"), ("sub1", "same.npy")]
    assert sorted(p.name for p in other.rglob("*.npy")) == ["same-2.npy", "same.npy"]


def test_npy_names_never_overwrite_another_rows_array(model, tmp_path):
    """a/s1.wav, b/s1.wav, c/s1.wav and d/s1.wav, each run alone into one folder (each named
    s1.npy below its own folder), and x.wav, x.flac, x.wav.flac in one run (x.wav.npy twice
    before): every row gets its own .npy, which holds its own file's embeddings."""
    first, second, third, fourth = (_write(tmp_path / "in" / folder / "s1.wav", 3.0, 16000, 1,
                                           seed) for seed, folder in enumerate("abcd"))
    same = [_write(tmp_path / "same" / name, 3.0, 16000, 1, seed)
            for seed, name in enumerate(("x.wav", "x.flac", "x.wav.flac"), 5)]
    out = tmp_path / "emb"
    for paths in ([first], [second], [third], [fourth], same):
        collect(model, [str(p) for p in paths], str(out), command="embed",
                options=Options("embeddings"), name="msd-musicnn", jobs=0, progress=False)
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(row["npy"] for row in index) == [
        "s1-2.npy", "s1-3.npy", "s1-4.npy", "s1.npy", "x.flac.npy", "x.wav.flac.npy", "x.wav.npy"]
    for row in index:
        audio = jaxmir.load_audio(row["path"], 16000)
        assert_same_embeddings(np.load(out / row["npy"], allow_pickle=False),
                                      model.predict(audio, 16000, output="embeddings"))
    # --overwrite starts over: the arrays the old index listed go, a file of the user's stays
    (out / "notes.npy").write_bytes(b"mine")
    collect(model, [str(first)], str(out), command="embed", options=Options("embeddings"),
            name="msd-musicnn", jobs=0, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["index.jsonl", "notes.npy", "s1.npy"]


def test_csv_paths_holding_line_breaks_resume(model, tmp_path):
    """Paths holding "\\r" or "\\n" are quoted (pandas reads them back); a rerun keeps every row,
    and a row torn by a kill inside such a path is dropped and done again."""
    import pandas

    files = [_write(tmp_path / "in" / name, 3.0, 16000, 1, seed)
             for seed, name in enumerate(("a\rb.wav", "c\nd.wav"))]
    out = tmp_path / "tags.csv"
    analyzer, seen = _counting()
    run = lambda: collect(model, [str(tmp_path / "in")], str(out), name="msd-musicnn", jobs=0,
                          progress=False, analyzer=analyzer)
    run()
    whole = out.read_bytes()
    assert list(pandas.read_csv(out)["path"]) == [str(path) for path in files]
    seen.clear()
    assert run().skipped == 2 and seen == [] and out.read_bytes() == whole
    out.write_bytes(whole[:whole.rindex(b"c\nd.wav") + 2])  # killed just after the path's "\n"
    assert run().skipped == 1 and seen == [str(files[1])] and out.read_bytes() == whole


def test_file_names_that_are_not_utf8_round_trip(model, tmp_path):
    """A name whose bytes are not UTF-8: every table holds its path with the escapes JSON writes
    ("\\udcff") as text, so pyarrow and pandas read them (JSONL held lone surrogates, which
    pandas 3 refused); a rerun finds every file done, also in a JSONL written the old way."""
    import pandas

    good = _write(tmp_path / "in" / "good.wav", 3.0, 16000, 1, 0)
    bad = os.fsdecode(os.fsencode(tmp_path / "in") + b"/bad\xff\xfename.wav")
    os.rename(_write(tmp_path / "bad.wav", 3.0, 16000, 1, 1), bad)
    for suffix in (".parquet", ".csv", ".jsonl"):
        out = str(tmp_path / f"tags{suffix}")
        analyzer, seen = _counting()
        run = lambda: collect(model, [str(tmp_path / "in")], out, name="msd-musicnn", jobs=0,
                              progress=False, analyzer=analyzer)
        assert run().ok == 2 and seen == [bad, str(good)]
        seen.clear()
        assert run().skipped == 2 and seen == []
    stored = rf"{tmp_path / 'in'}/bad\udcff\udcfename.wav"
    assert list(_read_parquet(tmp_path / "tags.parquet")["path"]) == [stored, str(good)]
    assert list(pandas.read_csv(tmp_path / "tags.csv")["path"]) == [stored, str(good)]
    jsonl = tmp_path / "tags.jsonl"
    assert [row["path"] for row in map(json.loads, jsonl.read_text().splitlines())] == \
        [stored, str(good)]
    assert list(pandas.read_json(jsonl, lines=True)["path"]) == [stored, str(good)]
    jsonl.write_bytes(jsonl.read_bytes().replace(b"\\\\udc", b"\\udc"))  # lone surrogates
    assert [row["path"] for row in map(json.loads, jsonl.read_text().splitlines())] \
        == [bad, str(good)]
    assert collect(model, [str(tmp_path / "in")], str(jsonl), name="msd-musicnn", jobs=0,
                   progress=False).skipped == 2
    # a .npy folder's index names the arrays as text too (it held lone surrogates)
    folder = tmp_path / "vectors"
    embed = lambda paths, **kw: collect(model, paths, str(folder), command="embed",
                                        options=Options("embeddings"), name="msd-musicnn", jobs=0,
                                        progress=False, **kw)
    assert embed([str(tmp_path / "in")]).ok == 2
    index = folder / "index.jsonl"
    assert list(pandas.read_json(index, lines=True)["npy"]) \
        == [r"bad\udcff\udcfename.npy", "good.npy"]
    assert sorted(os.listdir(folder)) == [os.fsdecode(b"bad\xff\xfename.npy"), "good.npy",
                                          "index.jsonl"]
    assert embed([str(tmp_path / "in")]).skipped == 2
    # --overwrite removes the arrays its index lists, the one named as text included
    assert embed([str(good)], overwrite=True).ok == 1
    assert sorted(os.listdir(folder)) == ["good.npy", "index.jsonl"]


# -- kill-safety and bad input --------------------------------------------------------------------
KILLED_RUN = """
import sys
import jaxmir
from jaxmir.collection import collect
if __name__ == "__main__":
    collect(jaxmir.load("msd-musicnn"), sys.argv[1:-1], sys.argv[-1], name="msd-musicnn", jobs=1,
            processes=True, progress=False, flush_rows=1)
"""


def test_sigkill_mid_run_then_resume(music, model, tmp_path):
    many = tmp_path / "many"
    for i in range(8):
        # 3 patches: packs end mid-file
        _write(many / f"t{i}.wav", 6.0 + 0.5 * (i % 3), 16000, 1, i)
    out = tmp_path / "killed.parquet"
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    env = child_env(JAX_PLATFORMS="cpu")
    log_file = open(tmp_path / "log.txt", "wb")
    process = subprocess.Popen([sys.executable, str(script), str(many), str(out)], env=env,
                               stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_dir() and len(list(out.glob("part-*.parquet"))) >= 3:  # the empty one, then 2
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # the main process only: its decoding worker must follow
    process.wait(timeout=30)
    log_file.close()
    log = (tmp_path / "log.txt").read_text()
    table = _read_parquet(out)  # reads cleanly: only complete parts
    assert 2 <= len(table) < 8, log
    assert set(table["status"]) == {"ok"} and table["path"].is_unique
    analyzer, seen = _counting()
    tally = collect(model, [str(many)], str(out), name="msd-musicnn", jobs=0, progress=False,
                    analyzer=analyzer)
    assert tally.skipped == len(table) and len(seen) == 8 - len(table)
    assert sorted(_read_parquet(out)["path"]) == inputs.expand([str(many)])


@pytest.mark.parametrize("rate", [1, 705600])
def test_a_rate_out_of_range_is_refused_in_the_words_of_a_single_file(model, tmp_path, rate):
    """The folder's rows named the resampler's bounds (1/256 to 256, 1-384000 Hz) instead."""
    import soundfile

    path = tmp_path / "in" / f"at_{rate}.wav"
    path.parent.mkdir()
    soundfile.write(path, np.zeros(4 * rate, np.float32), rate, subtype="PCM_16")
    with pytest.raises(AudioError) as single:
        jaxmir.load_audio(path)
    out = tmp_path / "tags.jsonl"
    tally = collect(model, [str(path.parent)], str(out), name="msd-musicnn", jobs=1, progress=False)
    assert tally.failed == 1  # jobs=1: a decoding thread, the path of the command line's folders
    error = json.loads(out.read_text())["error"]
    reason = "is too far from 16000 Hz" if rate == 1 else "is out of range"
    assert error == str(single.value) and f"sample rate {rate} Hz {reason}" in error


def test_a_model_file_is_known_by_its_bytes_not_by_the_path_that_names_it(music, tmp_path,
                                                                          monkeypatch):
    """The same file by another path was refused; other bytes at the same path were resumed,
    mixing two models' rows in one table."""
    from jaxmir import catalog

    here = tmp_path / "models" / "mine.npz"
    here.parent.mkdir()
    shutil.copyfile(catalog.path_of("msd-musicnn"), here)
    out = tmp_path / "embeddings.parquet"
    rock = [str(music / "rock")]

    def run(name: str, paths=rock):
        return collect(jaxmir.load(name), paths, str(out), command="embed",
                       options=Options("embeddings"), name=name, jobs=0, progress=False)

    assert run(str(here)).ok == 2
    monkeypatch.chdir(tmp_path)
    again = run("models/mine.npz", rock + [str(music / "jazz")])  # the same file, spelled anew
    assert (again.skipped, again.ok) == (2, 2)
    shutil.copyfile(catalog.path_of("mtt-musicnn"), here)  # another model's 200-d embeddings
    # the same name both sides: it said "of model 'mine.npz', not of 'mine.npz'"
    with pytest.raises(InputError, match=r"holds results of another 'mine.npz' \(the model files' "
                                         "bytes differ"):
        run(str(here))
    # a shipped model against a file: no bytes were compared, though the message said so
    with pytest.raises(InputError, match=r"model: 'mine.npz' there, 'msd-musicnn' now; a model "
                                         r"file there, a shipped model now\)"):
        run("msd-musicnn")


def _workers_of(parent: int) -> dict[int, str]:
    """The spawned worker processes of ``parent``, each with its kernel wait channel."""
    found = {}
    for process in Path("/proc").iterdir():
        try:
            if process.name.isdigit() and int((process / "stat").read_text().split()[3]) == parent \
                    and b"spawn_main" in (process / "cmdline").read_bytes():
                found[int(process.name)] = (process / "wchan").read_text()
        except OSError:
            continue
    return found


def _holds(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_a_dead_worker_is_said_to_read_one_of_the_first_files_unfinished():
    """Workers take files in order and hold one each: of five files a pool of two failed at once,
    only the first two can have been being read; the others waited in the queue."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool
    from types import SimpleNamespace

    from jaxmir.collection import local

    pending = []
    for name in ("done.wav", "b.wav", "c.wav", "d.wav", "e.wav"):
        future = Future()
        if name == "done.wav":
            future.set_result(None)
        else:
            future.set_exception(BrokenProcessPool("a worker died"))
        pending.append((future, SimpleNamespace(path=name)))
    said = str(local._died(pending, jobs=2))
    assert "while reading one of b.wav, c.wav (the files" in said
    assert "d.wav" not in said and "e.wav" not in said and "done.wav" not in said
    assert "while reading b.wav (killed" not in said
    assert "while reading b.wav" in str(local._died(pending[:2], jobs=2))
    # no file unfinished by the break (only done.wav, which finished): it died starting
    assert "a decoding worker died while starting (killed" in str(local._died(pending[:1], jobs=2))


def test_a_worker_process_that_dies_is_named_by_the_file_it_could_be_reading(music, model,
                                                                             tmp_path):
    """With --processes, a worker that died was said to be reading the oldest file not yet
    taken back, often another worker's (here one blocked reading a FIFO), and nothing tested
    it. One worker reads blocked.wav (a FIFO this test holds open and never writes); the other
    decodes a.wav, then waits to open killed.wav (a FIFO nobody opens), and is killed there."""
    import contextlib
    import signal
    import threading
    import time

    from jaxmir.collection.local import CollectionError

    blocked, killed = tmp_path / "blocked.wav", tmp_path / "killed.wav"
    os.mkfifo(blocked)
    os.mkfifo(killed)
    files = [str(blocked), str(music / "rock" / "a.wav"), str(killed)]
    said = {}

    def run():
        try:
            collect(model, files, str(tmp_path / "t.jsonl"), name="msd-musicnn", jobs=2,
                    processes=True, progress=False)
        except CollectionError as err:
            said["error"] = str(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    writer = os.open(blocked, os.O_WRONLY)  # waits for a worker to open it for reading
    try:
        victim, deadline = None, time.monotonic() + 180
        while victim is None and time.monotonic() < deadline:
            workers = _workers_of(os.getpid())
            waiting = [pid for pid, wchan in workers.items()
                       if wchan == "wait_for_partner" and not _holds(pid, blocked)]
            if len(workers) == 2 and any(_holds(pid, blocked) for pid in workers) and waiting:
                victim = waiting[0]
            time.sleep(0.1)
        assert victim is not None, _workers_of(os.getpid())
        os.kill(victim, signal.SIGKILL)
        thread.join(120)
    finally:
        os.close(writer)
        for pid in _workers_of(os.getpid()):  # whatever went wrong: no worker left blocked
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not thread.is_alive()
    message = said["error"]
    assert f"died while reading one of {blocked}, {killed} (the files being decoded" in message
    assert "a.wav" not in message  # decoded by the worker before it died: not a candidate


def test_standard_errors_reader_leaving_is_not_the_outputs_failure(music, model, tmp_path,
                                                                     monkeypatch):
    """A failed file's line to a standard error whose reader had left (`2>&1 | head -1`) was
    reported as "cannot write OUT.parquet: Broken pipe", and the Parquet rows done were dropped."""
    import pyarrow.parquet as pq

    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    files = [str(music / "rock" / "a.wav"), str(_bad(tmp_path)), str(music / "rock" / "b.flac")]
    out = tmp_path / "tags.parquet"
    monkeypatch.setattr(sys, "stderr", Gone())
    with pytest.raises(BrokenPipeError):
        collect(model, files, str(out), name="msd-musicnn", jobs=0, progress=False)
    monkeypatch.undo()
    # the rows done are kept: the good file's, and the failed one's, written before its line
    assert pq.read_table(out).column("path").to_pylist() == files[:2]


def test_labels_named_like_a_tables_columns_go_to_jsonl_only(music, model, tmp_path):
    """JSONL nests the labels under 'tags': it was refused with the tables all the same."""
    import pyarrow.parquet as pq

    labels = ["path", "status"] + list(model.labels[2:])
    renamed = jaxmir.load("msd-musicnn", labels=labels)
    rock = [str(music / "rock")]
    lines = tmp_path / "tags.jsonl"
    assert collect(renamed, rock, str(lines), name="msd-musicnn", jobs=0, progress=False).ok == 2
    row = json.loads(lines.read_text().splitlines()[0])
    assert row["path"].endswith("a.wav") and set(row["tags"]) == set(labels)
    for suffix, table in ((".csv", "CSV"), (".parquet", "Parquet")):
        with pytest.raises(InputError, match=rf"labels \['path', 'status'\] clash with the {table} "
                                             "table's own columns; write JSONL"):
            collect(renamed, rock, str(tmp_path / f"tags{suffix}"), name="msd-musicnn", jobs=0,
                    progress=False)
    # 'patches' is a Parquet column with --per-patch only: refused there, and only there (the
    # first label's values, named 'path' above)
    patches = jaxmir.load("msd-musicnn", labels=["patches"] + list(model.labels[1:]))
    assert collect(patches, rock, str(tmp_path / "plain.parquet"), name="msd-musicnn", jobs=0,
                   progress=False).ok == 2
    assert pq.read_table(tmp_path / "plain.parquet").column("patches").to_pylist() == [
        json.loads(line)["tags"]["path"] for line in lines.read_text().splitlines()]
    rerun = collect(patches, rock, str(tmp_path / "plain.parquet"), name="msd-musicnn", jobs=0,
                    progress=False)  # its label column is not taken for per-patch arrays
    assert (rerun.skipped, rerun.ok) == (2, 0)
    with pytest.raises(InputError, match=r"labels \['patches'\] clash with the Parquet"):
        collect(patches, rock, str(tmp_path / "per-patch.parquet"), name="msd-musicnn", jobs=0,
                progress=False, per_patch=True)
    # JSONL with --per-patch: the label's mean in 'tags', the arrays in 'patches' (the label's
    # float went into 'patches' and the arrays into 'tags': a TypeError, no row written)
    per_patch = tmp_path / "per-patch.jsonl"
    assert collect(patches, rock, str(per_patch), name="msd-musicnn", jobs=0, progress=False,
                   per_patch=True).ok == 2
    for line, plain in zip(per_patch.read_text().splitlines(), lines.read_text().splitlines()):
        row, before = json.loads(line), json.loads(plain)
        assert row["tags"]["patches"] == before["tags"]["path"]
        assert np.shape(row["patches"]) == (row["n_patches"], len(labels))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_labels_named_twice_are_refused_by_every_table(music, model, tmp_path, suffix):
    """Parquet wrote two columns 'rock' that pyarrow.parquet.read_table refused to read ("Can't
    unify schema with duplicate field names"); JSONL kept one of the two values."""
    twice = jaxmir.load("msd-musicnn", labels=["rock"] + list(model.labels[1:3]) + ["rock"]
                        + list(model.labels[4:]))
    output = tmp_path / f"tags{suffix}"
    with pytest.raises(InputError, match=r"the model's labels name \['rock'\] more than once; a "
                                         "table has one column"):
        collect(twice, [str(music / "rock")], str(output), name="msd-musicnn", jobs=0,
                progress=False)
    assert not output.exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_parquet_folder_holding_other_files_is_refused(music, model, tmp_path, overwrite):
    """Parts were added beside them, and the folder no longer read as one table."""
    out = tmp_path / "mine.parquet"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="mine.parquet holds notes.txt, which is no part of a "
                                         "jaxmir Parquet folder"):
        collect(model, [str(music / "rock")], str(out), name="msd-musicnn", jobs=0,
                progress=False, overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "keep.parquet").write_text("theirs")
    with pytest.raises(InputError, match="holds keep.parquet, notes.txt, which are no part of a "):
        collect(model, [str(music / "rock")], str(out), name="msd-musicnn", jobs=0,
                progress=False, overwrite=overwrite)
    for name, listed in (("x.csv", "keep.parquet, notes.txt, x.csv,"),
                         ("y.csv", "keep.parquet, notes.txt, x.csv and more,")):
        (out / name).write_text("theirs")  # the first three named, then "and more"
        with pytest.raises(InputError, match=f"holds {re.escape(listed)} which are no part "):
            collect(model, [str(music / "rock")], str(out), name="msd-musicnn", jobs=0,
                    progress=False, overwrite=overwrite)


def test_a_parquet_part_jaxmir_did_not_write_is_named_so(music, model, tmp_path):
    """It read "holds results of model None, not of 'msd-musicnn' (command: None there...)"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "mine.parquet"
    out.mkdir()
    pq.write_table(pa.table({"path": ["x.wav"], "score": [0.5]}), out / "part-000000.parquet")
    with pytest.raises(InputError, match=r"part-000000.parquet: not a part jaxmir wrote \(it "
                                         r"records no model or settings\)") as err:
        collect(model, [str(music / "rock")], str(out), name="msd-musicnn", jobs=0, progress=False)
    assert "None" not in str(err.value)


def test_a_rerun_removes_the_parts_a_killed_run_was_writing(music, model, tmp_path):
    out = tmp_path / "tags.parquet"
    assert collect(model, [str(music / "rock")], str(out), name="msd-musicnn", jobs=0,
                   progress=False).ok == 2
    left, kept = out / ".part-000001.parquet.x1_b2c3d.tmp", out / ".my-notes.tmp"
    for path in (left, kept):
        path.write_bytes(b"PAR1")
    again = collect(model, [str(music / "rock")], str(out), name="msd-musicnn", jobs=0,
                    progress=False)
    assert again.skipped == 2 and not left.exists() and kept.exists()


def test_a_rerun_removes_the_arrays_a_killed_run_was_writing(music, model, tmp_path):
    """A kill between an array's temporary and its rename left the temporary for good."""
    out = tmp_path / "embeddings"
    first = collect(model, [str(music / "rock")], str(out), command="embed",
                    options=Options("embeddings"), name="msd-musicnn", jobs=0, progress=False)
    assert first.ok == 2
    left = [out / ".c.npy.k3_9zQab.tmp", out / "deep" / ".d.npy.Ab12cd34.tmp"]
    kept = [out / ".notes.tmp", out / "mine.npy.tmp", out / "deep" / "e.npy"]
    for path in left + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\x93NUMPY")
    again = collect(model, [str(music / "rock")], str(out), command="embed",
                    options=Options("embeddings"), name="msd-musicnn", jobs=0, progress=False)
    assert again.skipped == 2
    assert not any(path.exists() for path in left) and all(path.exists() for path in kept)


def test_a_name_of_exactly_255_bytes_is_kept():
    """NAME_MAX bytes is a legal name: only a longer one is cut (a cut renames the array)."""
    kept = "sub/" + "a" * 251 + ".npy"
    assert outputs.within_name_max(kept) == kept
    cut = outputs.within_name_max("sub/" + "a" * 252 + ".npy")
    assert cut.startswith("sub/a") and "~" in cut and len(os.fsencode(cut[4:])) <= 255
    # as many first characters as fit in 255 bytes with "~", the first 16 hex digits of the
    # whole name's sha256 and ".npy" (21 bytes): 234 one-byte ones; "a" and 116 two-byte ones
    for long, size in (("a" * 300 + ".wav.npy", 255), ("a" + "é" * 200 + ".wav.npy", 254)):
        digest = hashlib.sha256(long.encode()).hexdigest()[:16]
        cut = outputs.within_name_max("sub/" + long)
        assert cut.endswith(f"~{digest}.npy") and long.startswith(cut[4:-len(digest) - 5])
        assert len(os.fsencode(cut[4:])) == size


def test_a_file_named_before_in_a_folder_named_now_is_not_said_to_be_gone(model, tmp_path):
    """A hidden file named itself in one run, its folder (which skips it) in the next: its row is
    kept, and it is not "no longer in the folders named": it is there."""
    folder = tmp_path / "disk"
    hidden = _write(folder / ".take.wav", 3.0, 16000, 1, 0)
    _write(folder / "b.wav", 3.0, 16000, 1, 1)
    out = tmp_path / "tags.jsonl"
    assert collect(model, [str(hidden)], out, name="msd-musicnn", jobs=0, progress=False).ok == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", JaxmirWarning)
        assert collect(model, [str(folder)], out, name="msd-musicnn", jobs=0,
                       progress=False).ok == 1
    assert len(out.read_text().splitlines()) == 2


def test_names_longer_than_a_file_system_takes_are_cut(model, tmp_path):
    """Two legal 251-byte names differing only by extension made x.flac.npy, 256 bytes: the
    run stopped there ("File name too long"), and every rerun with it; the temporary of an
    array of a long name (cut to 200 bytes, its .npy with it) outlived a killed run."""
    from jaxmir.atomic import name_prefix

    folder = tmp_path / "in"
    long = "é" * 60 + "X" * 127  # 247 bytes
    paths = [_write(folder / f"{long}.wav", 3.5, 16000, 1, 0),
             _write(folder / f"{long}.flac", 3.5, 16000, 1, 1),
             _write(folder / "zzz.wav", 3.5, 16000, 1, 2)]
    out = tmp_path / "embeddings"

    def run():
        return collect(model, [str(folder)], str(out), command="embed", jobs=0, progress=False)

    assert run().ok == 3
    index = {row["path"]: row["npy"] for row in map(json.loads, (out / "index.jsonl").open())}
    names = [index[str(path)] for path in paths]
    assert len(set(names)) == 3 and names[2] == "zzz.npy"
    assert all(len(os.fsencode(n)) <= 255 and n.startswith("é" * 60) for n in names[:2])
    for path, name in zip(paths, names):
        assert_same_embeddings(np.load(out / name),
                               model.predict(jaxmir.load_audio(path), 16000, "embeddings"))
    stale = out / f".{name_prefix(names[0])}.Ab12cd34.tmp"  # as write_atomically names it
    stale.write_bytes(b"\x93NUMPY")
    assert run().skipped == 3 and not stale.exists()
    # another folder's files of the same names, into the same output: they took the first
    # run's cut names, clashes being looked for among the names before their cut
    other = [_write(tmp_path / "more" / path.name, 3.5, 16000, 1, 7 + i)
             for i, path in enumerate(paths)]
    assert collect(model, [str(tmp_path / "more")], str(out), command="embed", jobs=0,
                   progress=False).ok == 3
    index = {row["path"]: row["npy"] for row in map(json.loads, (out / "index.jsonl").open())}
    assert len(set(index.values())) == 6
    for path in paths + other:
        assert_same_embeddings(np.load(out / index[str(path)]),
                               model.predict(jaxmir.load_audio(path), 16000, "embeddings"))


def test_a_failed_file_whose_name_is_not_utf8_gets_its_parquet_row(model, tmp_path):
    """Its error names it: pyarrow refused the error text's lone surrogate, and the run ended
    without the row (its path was escaped, its error not)."""
    bad = os.fsdecode(bytes(tmp_path) + b"/bad\xff.wav")
    Path(bad).write_bytes(b"not audio at all")
    out = tmp_path / "tags.parquet"
    assert collect(model, [bad], str(out), name="msd-musicnn", jobs=0, progress=False).failed == 1
    (row,) = _read_parquet(out).to_dict("records")
    assert row["status"] == "error" and row["path"] == as_text(bad) and as_text(bad) in row["error"]


def test_a_temporary_a_killed_run_left_beside_a_long_named_table_is_removed(model, tmp_path):
    """A table's name over 200 bytes: its temporary is named from the first 200, and was not
    known as that table's, so it outlived every rerun."""
    clip = _write(tmp_path / "a.wav", 3.5, 16000, 1, 0)
    table = tmp_path / ("t" * 246 + ".csv")
    stale = tmp_path / f".{'t' * 200}.Ab12cd34.tmp"  # a 250-byte name's first 200, as written
    stale.write_text("path,status\n")
    assert collect(model, [str(clip)], str(table), jobs=0, progress=False).ok == 1
    assert not stale.exists()


def test_full_disk_keeps_rows(music, model, tmp_path, monkeypatch):
    out = tmp_path / "tags.jsonl"
    real = outputs._append
    calls = []

    def full(handle, data):
        calls.append(1)
        if len(calls) == 3:
            handle.write(data[:25])  # part of a line reached the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(handle, data)

    monkeypatch.setattr(outputs, "_append", full)
    with pytest.raises(InputError, match=r"No space left on device.*every row written before is "
                                         r"kept \(2 by this run\)"):
        collect(model, [str(music)], str(out), name="msd-musicnn", jobs=0, progress=False)
    monkeypatch.setattr(outputs, "_append", real)
    analyzer, seen = _counting()
    assert collect(model, [str(music)], str(out), name="msd-musicnn", jobs=0, progress=False,
                   analyzer=analyzer).skipped == 2
    assert len(seen) == 2 and len(out.read_text().splitlines()) == 4


def test_full_disk_at_a_parquet_part_counts_the_rows_of_the_parts_before(music, model, tmp_path,
                                                                         monkeypatch):
    """Parts of two rows (``flush_rows=2``): the second part cannot be written; the first's two
    rows are kept, and said."""
    real = outputs.write_atomically

    def full(target, *args, **kwargs):
        if Path(target).name == "part-000002.parquet":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_atomically", full)
    with pytest.raises(InputError, match=r"No space left on device.*every row written before is "
                                         r"kept \(2 by this run\)"):
        collect(model, [str(music)], str(tmp_path / "tags.parquet"), name="msd-musicnn", jobs=0,
                progress=False, flush_rows=2)


def test_a_file_whose_worker_result_fails_fails_alone_named(music, model, tmp_path, monkeypatch):
    """An exception other than a dead pool's from a decoding worker's result (a process's that
    could not be sent back, say; a thread's here) fails that file's row, naming it; the other
    files go on."""
    decode = compute.decode

    def fails_for_a(path, *args, **kwargs):
        if path.endswith(os.path.join("rock", "a.wav")):
            raise RuntimeError("its result could not be sent back")
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(compute, "decode", fails_for_a)
    out = tmp_path / "t.jsonl"
    tally = collect(model, [str(music / "rock")], str(out), jobs=1, progress=False)
    rows = {Path(row["path"]).name: row for row in map(json.loads, out.read_text().splitlines())}
    assert (tally.ok, tally.failed) == (1, 1) and rows["b.flac"]["status"] == "ok"
    assert rows["a.wav"]["error"] == (f"{music / 'rock' / 'a.wav'}: unexpected RuntimeError: its "
                                      "result could not be sent back")


def test_a_users_file_at_a_parquet_output_is_refused_and_kept(music, model, tmp_path):
    """A Parquet output is a folder of parts: a file of that name is not jaxmir's to replace."""
    out = tmp_path / "mine.parquet"
    out.write_bytes(b"my own data\n")
    with pytest.raises(InputError, match="is a file, not a jaxmir Parquet folder"):
        collect(model, [str(music / "rock" / "a.wav")], str(out), jobs=0, progress=False)
    assert out.read_bytes() == b"my own data\n"


def test_averaged_embeddings_are_float32_arrays(music, model, tmp_path):
    """The mean over patches is taken in float64; the array written is float32, as the others."""
    collect(model, [str(music / "rock" / "a.wav")], str(tmp_path / "arrays"), command="embed",
            average=True, jobs=0, progress=False)
    (written,) = (tmp_path / "arrays").glob("*.npy")
    found = np.load(written)
    assert found.dtype == np.float32 and found.shape == (200,)


def test_a_jsonl_embedding_is_the_float64_mean_stored_as_float32(music, model, tmp_path):
    """A JSONL row's embedding holds float32 values, as Parquet's column and the arrays do (not
    the float64 mean's every digit), within the embeddings' tolerance of the mean of
    Model.predict's."""
    clip = str(music / "jazz" / "deep" / "c.wav")
    out = tmp_path / "embeddings.jsonl"
    collect(model, [clip], str(out), command="embed", name="msd-musicnn", jobs=0,
            progress=False)
    (row,) = map(json.loads, out.read_text().splitlines())
    assert row["n_patches"] > 1  # a mean of one patch is its float32 values anyway
    stored = np.asarray(row["embedding"], np.float64)
    np.testing.assert_array_equal(stored.astype(np.float32).astype(np.float64), stored)
    want = model.predict(jaxmir.load_audio(clip, 16000), 16000, output="embeddings")
    assert_same_embeddings(stored, np.asarray(want, np.float64).mean(axis=0))


def test_a_failed_write_leaves_only_whole_rows(model, tmp_path):
    """A row written past the file-size limit (as on a full disk) is cut back off: the file reads
    as it is, with no rerun; the rerun does the file that failed."""
    import resource

    import pandas

    files = [str(_write(tmp_path / "in" / f"{i}.wav", 3.0, 16000, 1, i)) for i in range(2)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    for suffix in (".jsonl", ".csv"):
        out = tmp_path / f"tags{suffix}"

        def limit(result, where):  # after the first row: the second would pass the limit
            resource.setrlimit(resource.RLIMIT_FSIZE, (out.stat().st_size + 100, hard))
        try:
            with pytest.raises(InputError, match=r"File too large.*every row written before is "
                                                 r"kept \(1 by this run\)"):
                collect(model, files, str(out), name="msd-musicnn", jobs=0, progress=False,
                        on_result=limit)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        rows = pandas.read_json(out, lines=True) if suffix == ".jsonl" else pandas.read_csv(out)
        assert list(rows["path"]) == files[:1] and out.read_bytes().endswith(b"\n")
        tally = collect(model, files, str(out), name="msd-musicnn", jobs=0, progress=False)
        assert (tally.skipped, tally.ok) == (1, 1)


def test_a_file_that_is_not_a_jaxmir_output_is_refused(music, model, tmp_path):
    """JSON lines that are not objects, a CSV of other columns: refused, saying so."""
    for name, text, why in (("arrays.jsonl", "[1, 2]\n", ""), ("null.jsonl", "null\n", ""),
                            ("other.csv", "a,b\n1,2\n", ""),
                            ("rows.jsonl", '{"file": "a.wav"}\n', r"\(a row without 'path'\); ")):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=f"not an output of jaxmir {why}.*--overwrite"):
            collect(model, [str(music / "rock" / "a.wav")], str(tmp_path / name), jobs=0,
                    progress=False)
        assert (tmp_path / name).read_text() == text


def test_no_output_goes_inside_a_parquet_folder(music, model, tmp_path):
    """An output inside a jaxmir Parquet folder was written there: its readers then read the
    rows of both (a path twice) or failed on the files (`.npy`, `.csv`), and the table's own
    next run refused it."""
    import pyarrow.parquet as pq

    clip, table = str(music / "rock" / "a.wav"), tmp_path / "tags.parquet"
    collect(model, [clip], str(table), jobs=0, progress=False)
    before = sorted(os.listdir(table))
    for output, command in (("more.parquet", "tag"), ("x.csv", "tag"), ("sub/x.jsonl", "tag"),
                            ("arrays/", "embed")):
        with pytest.raises(InputError, match=f"{re.escape(str(table))} is a jaxmir Parquet "
                                             "folder, whose readers"):
            collect(model, [clip], str(table / output), command=command, jobs=0,
                    progress=False)
    assert sorted(os.listdir(table)) == before and pq.read_table(table).num_rows == 1
    assert collect(model, [clip], str(table), jobs=0, progress=False).skipped == 1
    with pytest.raises(InputError, match="is a jaxmir Parquet folder"):
        outputs.check_writable(table / "deeper")  # what the report and --plot writers ask
    outputs.check_writable(tmp_path / "beside.parquet")  # a table beside it is another
    (tmp_path / "link").symlink_to(table)
    with pytest.raises(InputError, match="is a jaxmir Parquet folder"):
        outputs.check_writable(tmp_path / "link" / "sub")
    assert sorted(os.listdir(table)) == before
    store = tmp_path / "store"  # a table's folder of another name, reached by a link named so
    table.rename(store)
    (tmp_path / "named.parquet").symlink_to(store)
    with pytest.raises(InputError, match="named.parquet is a jaxmir Parquet folder"):
        outputs.check_writable(tmp_path / "named.parquet" / "sub")
    assert sorted(os.listdir(store)) == before


def test_a_parquet_folder_named_in_capitals_holds_no_other_output(tmp_path):
    """``T.PARQUET`` is a Parquet output as ``t.parquet`` is (:func:`outputs.kind_of`): an output
    inside it must be refused as inside the other."""
    from jaxmir.collection.rows import Layout

    table = tmp_path / "T.PARQUET"
    outputs.open_output(str(table), Layout("embed", {"model": "msd-musicnn"}), []).close()
    assert [p.name for p in table.iterdir()] == ["part-000000.parquet"]
    with pytest.raises(InputError, match=f"{re.escape(str(table))} is a jaxmir Parquet folder"):
        outputs.check_writable(table / "sub")


def test_an_output_under_a_folder_that_cannot_be_searched_says_so(tmp_path, monkeypatch):
    """The checks for a file or a table among an output's folders raised PermissionError (Path's
    tests raise it on Python 3.11) where "cannot write the output in ...: Permission denied"
    was said. Root searches any folder: simulated."""
    import pathlib

    locked = tmp_path / "locked"

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(locked)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_stat(path, *args, **kwargs)

    real_stat = pathlib.Path.stat
    monkeypatch.setattr(pathlib.Path, "stat", denied)
    monkeypatch.setattr(pathlib.Path, "mkdir", denied)
    for folder in (locked / "sub", locked / "x.parquet" / "sub"):
        with pytest.raises(InputError, match=f"cannot write the output in {re.escape(str(folder))}"
                                             ": Permission denied"):
            outputs.check_writable(folder)


def test_a_table_rewritten_on_resume_keeps_its_permissions(music, model, tmp_path, monkeypatch):
    """Dropping a failed row rewrites a CSV or JSONL: the new file was 0644 whatever the old one's
    mode (0600: readable by all), and a read-only one was replaced where appending is refused."""
    from jaxmir import atomic

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + bytes(60))
    files = [str(music / "rock" / "a.wav"), str(bad)]
    for name in ("tags.csv", "tags.jsonl"):
        out = tmp_path / name
        assert collect(model, files, str(out), jobs=0, progress=False).failed == 1
        out.chmod(0o600)
        assert collect(model, files, str(out), jobs=0, progress=False).failed == 1  # rewritten
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        # another owner's 0600 file, made this process's, would lock its owner out (as root;
        # elsewhere a process may give a file its own owner only)
        owner = (65534, 65534) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
        os.chown(out, *owner)
        assert collect(model, files, str(out), jobs=0, progress=False).failed == 1
        status = out.stat()
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (*owner, 0o600)
        before = out.read_bytes()
        with monkeypatch.context() as patched:  # read-only (root ignores chmod: simulated)
            patched.setattr(atomic.os, "access", lambda path, mode: mode != os.W_OK)
            with pytest.raises(InputError, match="Permission denied"):
                collect(model, files, str(out), jobs=0, progress=False)
        assert out.read_bytes() == before
    arrays = tmp_path / "arrays"  # the file refused is named where the output is a folder
    collect(model, files, str(arrays), command="embed", jobs=0, progress=False)
    with monkeypatch.context() as patched:
        patched.setattr(atomic.os, "access", lambda path, mode: mode != os.W_OK)
        with pytest.raises(InputError, match=re.escape(f"cannot write {arrays} "
                                                       f"({arrays / 'index.jsonl'}): Permission")):
            collect(model, files, str(arrays), command="embed", jobs=0, progress=False)
    clip, arrays = tmp_path / "c.wav", tmp_path / "more"  # a read-only array of a file redone:
    shutil.copy(files[0], clip)                          # named, and not said to resume
    collect(model, [str(clip)], str(arrays), command="embed", jobs=0, progress=False)
    os.utime(clip, ns=(1, 1))
    with monkeypatch.context() as patched:
        patched.setattr(atomic.os, "access", lambda path, mode: not (
            mode == os.W_OK and str(path).endswith(".npy")))
        with pytest.raises(InputError, match=re.escape(f"cannot write {arrays} ({arrays / 'c.npy'})"
                                                       ": Permission denied")) as refused:
            collect(model, [str(clip)], str(arrays), command="embed", jobs=0, progress=False)
        assert "run the same command again" not in str(refused.value)


def test_a_file_written_whole_has_open_s_mode_and_a_failed_write_leaves_no_temporary(tmp_path):
    """mkstemp makes its files 0600: a new output gets the mode open() gives (0666 less the
    umask). A write that fails (a full disk, Ctrl-C) leaves the target as it was and no
    temporary file beside it."""
    from jaxmir import atomic

    umask = os.umask(0o027)
    try:
        atomic.write_atomically(tmp_path / "new.csv", lambda handle: handle.write(b"whole"))
        (tmp_path / "opened.csv").write_bytes(b"whole")
    finally:
        os.umask(umask)
    modes = {stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("new.csv", "opened.csv")}
    assert modes == {0o640}

    def fails(handle):
        handle.write(b"part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left"):
        atomic.write_atomically(tmp_path / "new.csv", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv", "opened.csv"]
    assert (tmp_path / "new.csv").read_bytes() == b"whole"


def test_a_socket_is_refused_and_left_as_it_was(tmp_path, monkeypatch):
    """A pipe or a character device is written to; another kind of file, a socket here, is an
    OSError, not replaced by a regular file."""
    import socket

    from jaxmir import atomic

    monkeypatch.chdir(tmp_path)  # a socket's path is at most 107 bytes
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind("rows.csv")
        with pytest.raises(OSError, match="not a regular file, a pipe or a character device"):
            atomic.write_atomically(tmp_path / "rows.csv", lambda handle: handle.write(b"rows"))
        assert stat.S_ISSOCK((tmp_path / "rows.csv").lstat().st_mode)
    assert os.listdir(tmp_path) == ["rows.csv"]


def test_a_durable_write_syncs_the_whole_file_before_its_rename_then_its_folder(tmp_path,
                                                                               monkeypatch):
    """With durable=True the temporary file is flushed and synced (all its bytes, before the rename
    makes it the target), then its folder (the rename); without, nothing is synced."""
    from jaxmir import atomic

    target = tmp_path / "rows.csv"
    synced = []

    def fsync(handle):  # what each sync met: a folder, or a file's size and the target's state
        status = os.fstat(handle)
        synced.append("folder" if stat.S_ISDIR(status.st_mode) else
                      (status.st_size, target.exists()))

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic.write_atomically(target, lambda handle: handle.write(b"rows"), durable=True)
    assert synced == [(4, False), "folder"] and target.read_bytes() == b"rows"
    atomic.write_atomically(target, lambda handle: handle.write(b"more rows"))
    assert len(synced) == 2 and target.read_bytes() == b"more rows"


def test_why_no_file_can_be_made_in_a_folder_is_said_in_the_system_s_words(tmp_path):
    """unwritable names the reason as strerror words ("Not a directory"), not the exception's
    text, which names the hidden probe file; a folder that can be written gives None."""
    from jaxmir import atomic

    (tmp_path / "notes").write_text("a file")
    assert atomic.unwritable(tmp_path) is None
    assert atomic.unwritable(tmp_path / "notes") == os.strerror(errno.ENOTDIR)
    assert atomic.unwritable(tmp_path / "gone") == os.strerror(errno.ENOENT)
    assert os.listdir(tmp_path) == ["notes"]  # no probe left behind


def test_a_file_rewritten_by_another_user_keeps_its_group(tmp_path, monkeypatch):
    """Where the owner could not be given back (not root), the group went too, with the mode:
    a shared folder's 0664 table, rewritten by another member of its group, became 0644 and
    that user's group's, and the others could no longer resume it. Simulated: this process
    is taken for another user, who may give a file its group only."""
    from jaxmir import atomic

    target = tmp_path / "tags.csv"
    target.write_text("old")
    target.chmod(0o664)
    calls, real = [], os.fchown

    def fchown(handle, uid, gid):
        calls.append((uid, gid))
        if uid != -1 or refused:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        real(handle, uid, gid)

    real_fstat = os.fstat

    def fstat(handle):  # the new file: another user's, of another group
        made = real_fstat(handle)
        return os.stat_result((*tuple(made)[:4], made.st_uid + 1, made.st_gid + 1,
                               *tuple(made)[6:]))

    monkeypatch.setattr(atomic.os, "fstat", fstat)
    monkeypatch.setattr(atomic.os, "fchown", fchown)
    # not wider than a new file's (0644 under the umask 022 set here: 0666 was kept); the
    # group it gets instead (a setgid folder's) and others have what both had (0606: the old
    # group, now others, could read it); no set-user-ID for another owner
    umask = os.umask(0o022)
    try:
        for refused, before, mode in ((False, 0o4664, 0o664), (True, 0o640, 0o600),
                                      (True, 0o644, 0o644), (True, 0o666, 0o644),
                                      (True, 0o606, 0o600)):
            target.chmod(before)
            atomic.write_atomically(target, lambda handle: handle.write(b"new"))
            assert stat.S_IMODE(target.stat().st_mode) == mode and target.read_text() == "new"
    finally:
        os.umask(umask)
    gid = target.stat().st_gid
    assert calls == [(os.getuid(), gid), (-1, gid)] * 5
    monkeypatch.undo()
    if os.geteuid() == 0:  # a setgid folder gives the new file its group: given back (as root)
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chown(shared, -1, 65534)
        shared.chmod(0o2770)
        private = shared / "own.csv"
        private.write_text("old")
        os.chown(private, 0, 0)
        private.chmod(0o640)
        atomic.write_atomically(private, lambda handle: handle.write(b"new"))
        status = private.stat()
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (0, 0, 0o640)


def test_unwritable_output_and_vanishing_files(music, model, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for output in (blocker / "tags.parquet", blocker / "deeper" / "tags.csv"):  # "File exists"
        why = f"{re.escape(str(blocker))} is a file, not a folder"
        with pytest.raises(InputError, match=f"cannot write the output in .*: {why}"):
            collect(model, [str(music)], str(output), jobs=0, progress=False)
    def read_only(*args, dir=None, **kwargs):  # the writability probe's file
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
    with monkeypatch.context() as patched:
        patched.setattr(tempfile, "TemporaryFile", read_only)  # root ignores chmod: simulate it
        with pytest.raises(InputError, match="Permission denied"):
            collect(model, [str(music)], str(tmp_path / "ro" / "tags.jsonl"), jobs=0,
                    progress=False)

    files = tmp_path / "vanishing"
    first = _write(files / "1.wav", 3.0, 16000, 1, 0)
    gone = _write(files / "2.wav", 3.0, 16000, 1, 1)

    def remove_next(result, where):
        if result.source.path == str(first):
            gone.unlink()
    tally = collect(model, [str(files)], str(tmp_path / "v.jsonl"), jobs=0, progress=False,
                    on_result=remove_next)
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert (tally.ok, tally.failed) == (1, 1) and "no such file" in rows[1]["error"]

    changing = _write(files / "3.wav", 3.0, 16000, 1, 2)
    read = compute.read_mono

    def read_and_touch(path, *args, **kwargs):
        audio = read(path, *args, **kwargs)
        os.utime(path, ns=(5, 5))
        return audio
    monkeypatch.setattr(compute, "read_mono", read_and_touch)
    assert "changed while it was being read" in compute.decode(str(changing)).error
    monkeypatch.setattr(compute, "read_mono", read)
    stream = compute.file_stream  # streamed in this process (jobs=0), not decoded by a worker

    @contextlib.contextmanager
    def stream_and_touch(model, path, *args, **kwargs):
        with stream(model, path, *args, **kwargs) as found:
            yield found
        os.utime(path, ns=(6, 6))

    monkeypatch.setattr(compute, "file_stream", stream_and_touch)
    tally = collect(model, [str(changing)], str(tmp_path / "c.jsonl"), jobs=0, progress=False)
    row = json.loads((tmp_path / "c.jsonl").read_text())
    assert tally.failed == 1 and "changed while it was being read" in row["error"]


# -- the command-line drop-in ----------------------------------------------------------------------
def test_run_tag_and_embed_commands(music, model, tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("-o", "--output")
    parser.add_argument("-f", "--format", default="text")
    parser.add_argument("-l", "--layer", default="embeddings")
    for name, default in (("model", None), ("backbone", None), ("pad", None),
                          ("last_patch", "discard"), ("resampler", "essentia")):
        parser.add_argument(f"--{name.replace('_', '-')}", default=default)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    arguments.add_collection_options(parser)
    bad = _bad(tmp_path)
    args = parser.parse_args([str(music / "rock"), str(bad), "-o", str(tmp_path / "t.parquet"),
                              "--jobs", "0", "--no-progress"])
    assert arguments.is_collection(args, "tag")
    assert commands.run_tag(args, model, None) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "2 ok, 1 failed" in err and "x real time" in err
    assert not arguments.is_collection(parser.parse_args(["x", "-o", "t.csv", "-f", "csv"]), "tag")
    # embed writes nothing but collections (its --output is a table or a folder of .npy)
    for argv in (["x"], ["x", "-o", "t.csv", "-f", "csv"]):
        assert arguments.is_collection(parser.parse_args(argv), "embed"), argv
    for table in ("T.PARQUET", "T.JsonL", "T.CSV"):  # a text listing was written under the name
        assert arguments.is_collection(parser.parse_args(["x", "-o", table]), "tag"), table
        assert outputs.kind_of(table, "tag") == table.rsplit(".", 1)[1].lower()  # its writer's
    batches, stream_files = [], compute.stream_files

    def recording_stream_files(model, sources, options):
        batches.append(options.batch)
        return stream_files(model, sources, options)

    monkeypatch.setattr(compute, "stream_files", recording_stream_files)
    args = parser.parse_args([str(music / "rock"), "-o", str(tmp_path / "emb"), "-j", "0",
                              "--batch", "3", "--no-progress"])
    assert commands.run_embed(args, model, None) == 0
    assert batches == [3]
    assert capsys.readouterr().out.count(" -> ") == 2
    # each line's shape is that of the array written: a patch's with --average, else every patch's
    parser.add_argument("--average", action="store_true")
    for average in ([], ["--average"]):
        out = tmp_path / f"emb{len(average)}"
        args = parser.parse_args([str(music / "rock"), "-o", str(out), "-j", "0", "--no-progress",
                                  *average])
        assert commands.run_embed(args, model, None) == 0
        announced = re.findall(r" -> (.+) (\[[\d, ]+\])$", capsys.readouterr().out, re.MULTILINE)
        assert len(announced) == 2, announced
        for where, shape in announced:
            assert json.loads(shape) == list(np.load(where).shape), (average, where, shape)


def _truncated(folder: Path) -> Path:
    """A 16-bit WAV cut to 4 of the 6 s its header declares."""
    import soundfile

    full = _write(folder.parent / f"{folder.name}-full.wav", 6.0, 16000, 1, 5)
    pcm = (soundfile.read(full, dtype="float32")[0] * 32767).astype(np.int16)
    soundfile.write(full, pcm, 16000, subtype="PCM_16")
    cut = folder / "cut.wav"
    cut.parent.mkdir(parents=True, exist_ok=True)
    cut.write_bytes(full.read_bytes()[:44 + 2 * 16000 * 4])
    return cut


def test_a_truncated_file_gets_a_damaged_row_and_is_not_redone(model, tmp_path, capsys):
    """Decoded in part: its tags from what was there, status "damaged", the problem in "error"
    and in a line of its own on standard error."""
    import pandas

    cut = _truncated(tmp_path / "music")
    out = str(tmp_path / "tags.jsonl")
    analyzer, seen = _counting()
    tally = collect(model, [str(cut.parent)], out, name="msd-musicnn", jobs=0, progress=False,
                    analyzer=analyzer)
    assert tally.failed == 0 and seen == [str(cut)]
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("jaxmir:")]
    assert len(said) == 1 and said[0].startswith(f"jaxmir: warning: {cut}: "), said
    assert "truncated audio" in said[0]
    assert tally.summary().startswith("1 ok (1 damaged: decoded in part), 0 failed;")
    row = json.loads(Path(out).read_text().splitlines()[0])
    assert row["status"] == "damaged" and "truncated audio" in row["error"]
    with pytest.warns(DamagedAudioWarning, match="truncated audio"):
        audio = jaxmir.load_audio(cut, 16000)  # what was there, as a plain load decodes it
    assert row["n_patches"] == model.predict(audio, 16000).shape[0]
    seen.clear()
    collect(model, [str(cut.parent)], out, name="msd-musicnn", jobs=0, progress=False,
            analyzer=analyzer)
    assert seen == []  # damaged again on a rerun: kept, not redone
    # streamed here, decoded by a worker (--strict reached no worker unseen), or decoded here
    # whole for an analyzer of the caller's
    for jobs, given in ((0, None), (1, None), (0, analyzer)):
        strict = collect(model, [str(cut)], str(tmp_path / f"strict-{jobs}-{bool(given)}.jsonl"),
                         name="msd-musicnn", jobs=jobs, progress=False,
                         options=Options(strict=True), analyzer=given)
        assert strict.failed == 1, (jobs, given)
    # a strict rerun on the same output fails it as a strict run does (it kept the damaged row)
    for suffix in ("jsonl", "parquet"):
        both = str(tmp_path / f"both.{suffix}")
        collect(model, [str(cut)], both, name="msd-musicnn", jobs=0, progress=False)
        rerun = collect(model, [str(cut)], both, name="msd-musicnn", jobs=0, progress=False,
                        options=Options(strict=True))
        assert (rerun.failed, rerun.skipped) == (1, 0)
        rows = _read_parquet(both) if suffix == "parquet" else pandas.read_json(both, lines=True)
        assert list(rows["status"]) == ["error"]
    # streamed from disk (no workers, the default analyzer): the same row, and no warning escapes
    streamed = tmp_path / "streamed.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedAudioWarning)
        collect(model, [str(cut)], str(streamed), name="msd-musicnn", jobs=0, progress=False)
    again = json.loads(streamed.read_text().splitlines()[0])
    assert again["status"] == "damaged" and again["error"] == row["error"]
    assert again["n_patches"] == row["n_patches"]


def test_a_damaged_file_whose_outputs_are_not_finite_keeps_its_damage_in_its_error():
    """A file decoded in part whose outputs then hold NaN: its failed row keeps the decoder's
    words (maybe why), as a file too short for a patch does."""
    path = "/music/cut.wav"
    cut = compute.Decoded(inputs.Source(path, 1, 1), np.zeros(16000 * 4, np.float32),
                          warning=f"{path}: truncated audio")
    row = compute.result_of(cut, {"predictions": np.full((1, 50), np.nan, np.float32)},
                            "predictions")
    assert row.values is None and row.error.startswith(f"{path}: the model's predictions hold NaN")
    assert row.error.endswith(" (truncated audio)"), row.error


def test_a_file_failing_midway_has_the_same_duration_streamed_or_decoded(model, tmp_path):
    """A file whose samples turn NaN in its third decoding block fails with the duration a
    decoding worker's row gives (jobs=1) when it streams (jobs=0): not the seconds the stream
    had taken in before the bad block."""
    import soundfile

    from jaxmir.audio import BLOCK_FRAMES

    rate = 22050
    audio = 0.3 * np.sin(2 * np.pi * 440 * np.arange(30 * rate) / rate)
    audio[2 * BLOCK_FRAMES + rate:][:10] = np.nan  # two whole blocks (~24 s) stream before it
    path = tmp_path / "nan.wav"
    soundfile.write(path, audio.astype(np.float32), rate, subtype="FLOAT")
    rows = {}
    for jobs in (0, 1):
        out = tmp_path / f"tags-{jobs}.jsonl"
        assert collect(model, [str(path)], str(out), jobs=jobs, progress=False).failed == 1
        rows[jobs] = json.loads(out.read_text())
    assert rows[0]["status"] == rows[1]["status"] == "error" and "NaN" in rows[0]["error"]
    assert rows[0]["error"] == rows[1]["error"]
    assert rows[0]["duration_s"] == rows[1]["duration_s"], rows


def test_decoding_threads_by_default_and_processes_on_request(model, tmp_path, monkeypatch):
    """--jobs N decodes in threads of this process, which record no warnings (a damaged file's
    problem still reaches its row) and run at a lower priority than the model (Linux);
    --processes gives the same rows from worker processes."""
    import threading

    folder = tmp_path / "in"
    _write(folder / "a.wav", 4.2, 44100, 2, 2)
    _write(folder / "b.flac", 5.0, 22050, 2, 1)
    cut = _truncated(folder)
    callers = []
    decode = compute.decode

    def spying(*args, **kwargs):
        niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        callers.append((os.getpid(), threading.current_thread().name, niceness))
        return decode(*args, **kwargs)
    monkeypatch.setattr(compute, "decode", spying)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threaded = collect(model, [str(folder)], str(tmp_path / "threads.jsonl"),
                           name="msd-musicnn", jobs=2, progress=False)
    monkeypatch.setattr(compute, "decode", decode)  # a worker process must be able to import it
    assert not [w for w in caught if issubclass(w.category, DamagedAudioWarning)]
    assert len(callers) == 3
    assert all(pid == os.getpid() and name.startswith("jaxmir-decode") for pid, name, _ in callers)
    if sys.platform.startswith("linux"):
        ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert {nice for *_, nice in callers} == {min(19, ours + local.DECODE_NICENESS)}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ours
    separate = collect(model, [str(folder)], str(tmp_path / "processes.jsonl"), name="msd-musicnn",
                       jobs=2, processes=True, progress=False)
    assert (threaded.ok, threaded.failed) == (separate.ok, separate.failed) == (3, 0)
    rows = {kind: [json.loads(line)
                   for line in (tmp_path / f"{kind}.jsonl").read_text().splitlines()]
            for kind in ("threads", "processes")}
    assert rows["threads"] == rows["processes"]  # the same programs on the same samples
    for row in rows["threads"]:  # decoded apart from the model, durations came back as 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DamagedAudioWarning)  # cut.wav's, said above
            audio = jaxmir.load_audio(row["path"], 16000)
        assert row["duration_s"] == pytest.approx(audio.shape[0] / 16000, abs=1e-4), row["path"]
    damaged = [row for row in rows["threads"] if row["path"] == str(cut)]
    assert damaged[0]["status"] == "damaged" and "truncated audio" in damaged[0]["error"]


def test_a_decoding_worker_s_niceness_is_added_to_the_one_it_had(monkeypatch):
    """Under `nice -n 5 jaxmir ...` the workers yield to the model as in a run at 0: their
    niceness is DECODE_NICENESS more than the thread that starts them had, not DECODE_NICENESS
    (Linux: a thread's own niceness, which the threads it starts inherit)."""
    import threading

    found = []
    monkeypatch.setattr(compute, "decode", lambda path, *args: os.getpriority(
        os.PRIO_PROCESS, threading.get_native_id()))

    def model_s_thread():  # its own: raising a niceness cannot be undone without root
        thread = threading.get_native_id()
        started = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, started + 3))
        found.append(os.getpriority(os.PRIO_PROCESS, thread))
        found.extend(local.decode_all([inputs.Source("a.wav", 0, 0)], jobs=1))

    thread = threading.Thread(target=model_s_thread)
    thread.start()
    thread.join()
    assert found[1] == min(19, found[0] + local.DECODE_NICENESS), found


def test_two_devices_give_the_results_of_one(music, model, tmp_path):
    """With two local devices each takes packed calls as it is free; the rows equal this process's
    run on its one device, per-patch values in their order though a file's later run finishes
    before its first (held back until then)."""
    long = _write(tmp_path / "long.wav", 40.0, 22050, 1, 6)  # 3 runs of 8 patches: calls for both
    script = """
import json, sys, threading
import jax
import jaxmir
from jaxmir.collection import collect, compute
used, waits = set(), []
later_run_done = threading.Event()
run_call = compute.run_call
def spying(model, packer, call, taps, carry=None):
    used.update(d.id for d in jax.tree_util.tree_leaves(model.variables)[0].devices())
    first_patch = call.owners[0][1]
    if call.run and first_patch == 0:  # long.wav's first run waits for its second to finish
        waits.append(later_run_done.wait(60))  # False: the later run never came first
    found = run_call(model, packer, call, taps, carry)
    if call.run and first_patch > 0:
        later_run_done.set()
    return found
compute.run_call = spying
if __name__ == "__main__":
    model = jaxmir.load("msd-musicnn")
    tally = collect(model, sys.argv[1:-1], sys.argv[-1], name="msd-musicnn", jobs=1, progress=False,
                    per_patch=True)
    print(json.dumps({"devices": sorted(used), "ok": tally.ok, "waits": waits}))
"""
    one = tmp_path / "tags-1.jsonl"                          # this process: one CPU device
    assert collect(model, [str(music), str(long)], str(one), name="msd-musicnn", jobs=1,
                   progress=False, per_patch=True).ok == 5
    two = tmp_path / "tags-2.jsonl"
    env = child_env(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAXMIR_NO_CACHE="1")
    result = subprocess.run([sys.executable, "-c", script, str(music), str(long), str(two)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # both devices took calls, and long.wav's first run was held until a later one finished
    assert report == {"devices": [0, 1], "ok": 5, "waits": [True]}, report
    runs = {n: {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
            for n, out in ((1, one), (2, two))}
    assert runs[1].keys() == runs[2].keys()
    for path, row in runs[1].items():
        other = runs[2][path]
        for key, value in row.items():
            if isinstance(value, float):  # the same program on another device: the same numbers
                assert abs(value - other[key]) <= 1e-6 * max(1.0, abs(value)), (path, key)
            else:
                assert value == other[key], (path, key)


def test_a_collection_compiles_two_programs(music, tmp_path):
    """Files of 3.5-40 s at 16-48 kHz: runs of 8 patches and packs of left-over patches, nothing
    per length (the streaming engine's single-patch program is never needed); and in the
    model's thread no other program (a first carry of JAX zeros compiled two or three, 0.05-0.6 s
    of a first run on a busy 2-core machine; the decoding threads' resampler kernels are not
    logged here, ``log_compiles`` being per thread)."""
    _write(tmp_path / "long.wav", 40.0, 44100, 2, 5)  # 25 patches: 3 runs of 8, one left over
    script = """
import json, logging, sys
import jax
import jaxmir
from jaxmir.collection import collect
from jaxmir.models import runner
names = []
class Compiles(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("Compiling "):
            names.append(record.getMessage().split()[1])
if __name__ == "__main__":
    logging.getLogger("jax").addHandler(Compiles())
    model = jaxmir.load("msd-musicnn")
    with jax.log_compiles(True):
        tally = collect(model, sys.argv[1:-1], sys.argv[-1], name="msd-musicnn", jobs=1,
                        progress=False)
    print(json.dumps({"ok": tally.ok, "programs": runner.compiled_programs(), "all": names}))
"""
    env = child_env(JAXMIR_NO_CACHE="1")
    result = subprocess.run([sys.executable, "-c", script, str(music), str(tmp_path / "long.wav"),
                             str(tmp_path / "t.jsonl")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {key: report[key] for key in ("ok", "programs")} == {"ok": 5, "programs": 2}, report
    assert sorted(set(report["all"]) - {"jit(_matmul_kernel)", "jit(run)"}) \
        == ["jit(_audio_to_outputs)"], report["all"]

@pytest.mark.parametrize("jobs", [0, 1], ids=["streamed", "decoded-and-packed"])
def test_a_device_out_of_memory_stops_the_run_and_keeps_the_rows_done(music, model, tmp_path,
                                                                      monkeypatch, jobs):
    """Every call of the same size would run out of memory alike: the run stops with the hint
    instead of giving each file the device's error, and the rows done before are kept."""
    from jaxmir import stream
    from jaxmir.errors import DeviceMemoryError

    real, calls = stream._audio_to_outputs_compiled, []

    def second_call_fails(options):
        program = real(options)

        def run(*args):
            calls.append(args[5])
            if len(calls) > 1:
                raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory "
                                   "while trying to allocate 1 bytes.")
            return program(*args)
        return run

    monkeypatch.setattr(stream, "_audio_to_outputs_compiled", second_call_fails)
    out = tmp_path / "tags.jsonl"
    with pytest.raises(DeviceMemoryError, match="in a call of 1 patches"):
        collect(model, [str(music)], str(out), name="msd-musicnn", options=Options(batch=1),
                jobs=jobs, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(Path(row["path"]).relative_to(music).as_posix(), row["status"]) for row in rows] == \
        [("jazz/a.wav", "ok")]


SIGTERM_AFTER_TWO_ROWS = """
import os, signal, sys
from jaxmir import cli
from jaxmir.collection import commands

real = commands.collect

def collect(*args, **kwargs):
    done = []

    def on_result(result, where):
        done.append(result)
        if len(done) == 2:
            os.kill(os.getpid(), getattr(signal, os.environ["STOP_WITH"]))
    return real(*args, **{**kwargs, "on_result": on_result})

commands.collect = collect
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("kind, status, what", [("SIGTERM", 143, "terminated (SIGTERM)"),
                                               ("SIGHUP", 129, "hung up (SIGHUP)")])
def test_sigterm_stops_a_run_as_ctrl_c_does_and_keeps_the_rows_done(music, tmp_path, kind, status,
                                                                     what):
    """timeout, Slurm, docker stop and systemd send SIGTERM, a closed terminal or ssh session
    SIGHUP: each killed the process with the rows a Parquet output held in memory (up to
    --flush-every), an empty table where Ctrl-C kept every row done."""
    pq = require("pyarrow.parquet")
    out = tmp_path / "tags.parquet"
    result = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_TWO_ROWS, "tag", str(music), "-o",
                             str(out), "--jobs", "0", "--no-progress"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env=child_env(JAX_PLATFORMS="cpu", JAXMIR_NO_CACHE="1", STOP_WITH=kind))
    assert result.returncode == status, result.stderr
    assert f"jaxmir: error: {what}; the rows of the files done are kept" in result.stderr
    assert pq.read_table(out).num_rows == 2


def _signal_state() -> tuple:
    """A worker process's handling of the stopping signals: handlers, and those it blocks."""
    from jaxmir import interrupts

    return (tuple(signal.getsignal(kind) for kind in interrupts.STOPPING),
            sorted(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) & set(interrupts.STOPPING)))


def test_ctrl_c_while_worker_processes_start_stops_the_run_cleanly(music, monkeypatch):
    """A Ctrl-C inside a process pool's start (its manager thread not yet started) broke the
    pool's shutdown: "RuntimeError: cannot join thread before it is started" and a traceback;
    the workers ignore every stopping signal (SIGHUP ended them), and block none."""
    import concurrent.futures.process as process_pool

    pool = local._workers(1, processes=True)
    try:
        with local._starting_processes(True):
            state = pool.submit(_signal_state)
        assert state.result(timeout=300) == ((signal.SIG_IGN,) * 3, [])
    finally:
        pool.shutdown()
    start = process_pool._ExecutorManagerThread.start

    def interrupted(thread):
        os.kill(os.getpid(), signal.SIGINT)
        start(thread)
    monkeypatch.setattr(process_pool._ExecutorManagerThread, "start", interrupted)
    sources = [inputs.examine(path) for path in inputs.expand([str(music)])]
    with pytest.raises(KeyboardInterrupt):
        list(local.decode_all(sources, 2, processes=True))


def test_decoding_runs_at_most_prefetch_files_ahead(monkeypatch):
    """Memory is bounded by the decoded files waiting for the model: ``2 * jobs`` of them."""
    submitted, workers = [], local._workers

    def counting_workers(jobs, processes):
        pool = workers(jobs, processes)
        submit = pool.submit
        pool.submit = lambda fn, *args, **kwargs: (submitted.append(args[0]),
                                                   submit(fn, *args, **kwargs))[1]
        return pool

    monkeypatch.setattr(local, "_workers", counting_workers)
    monkeypatch.setattr(compute, "decode", lambda path, *args: path)
    files = local.decode_all([inputs.Source(f"{n}.wav", 0, 0) for n in range(10)], jobs=2)
    assert next(files) == "0.wav" and len(submitted) == 4     # 2 * jobs, then one a file
    assert next(files) == "1.wav" and len(submitted) == 5
    assert list(files) == [f"{n}.wav" for n in range(2, 10)] and len(submitted) == 10


def test_a_run_stopped_in_the_model_stops_its_workers_at_once(monkeypatch):
    """An interrupt in the analyzer ends the decoding (its pool abandoned) before ``run``
    raises, not when the traceback that holds the file generator is collected."""
    abandoned = []
    abandon = local._abandon
    monkeypatch.setattr(local, "_abandon", lambda pool: (abandoned.append(pool), abandon(pool)))
    monkeypatch.setattr(compute, "decode", lambda path, *args: path)

    def stopped_analyzer(model, decoded, options):
        next(iter(decoded))
        raise KeyboardInterrupt
        yield  # a generator, as analyzers are

    sources = [inputs.Source(f"{n}.wav", 0, 0) for n in range(10)]
    with pytest.raises(KeyboardInterrupt):
        try:
            local.run(None, sources, Options(), write=print, progress=None, jobs=2,
                      analyzer=stopped_analyzer)
        finally:  # the exception, whose traceback holds the generator, is still alive here
            abandoned_as_run_raised = len(abandoned)
    assert abandoned_as_run_raised == 1


def test_a_stopped_decoding_drops_the_files_queued_behind_its_workers(monkeypatch):
    """A stop (Ctrl-C in the model) abandons the decoding: the files waiting for a worker are
    never decoded, only the one a worker holds finishes."""
    import threading

    pools, decoded, taken, release = [], [], threading.Event(), threading.Event()
    workers = local._workers

    def kept_workers(*args):  # to join the worker once released: no thread outlives the test
        pools.append(workers(*args))
        return pools[-1]

    monkeypatch.setattr(local, "_workers", kept_workers)

    def decode(path, *args):
        decoded.append(path)
        if path != "0.wav":
            taken.set()
            release.wait(10)  # held by its worker until the stop
        return path

    monkeypatch.setattr(compute, "decode", decode)
    files = local.decode_all([inputs.Source(f"{n}.wav", 0, 0) for n in range(6)], jobs=1,
                             prefetch=4)
    assert next(files) == "0.wav"
    assert taken.wait(10)  # 1.wav is held by the worker, 2.wav and 3.wav queued
    files.close()
    release.set()
    pools[0].shutdown(wait=True)
    assert decoded == ["0.wav", "1.wav"]


HALF_A_RESULT = """
import gc, multiprocessing.queues, os, struct, sys, threading, time
from jaxmir.collection import local


def half_a_result():  # a worker killed halfway through sending a decoded file's samples
    queue = next(o for o in gc.get_objects() if isinstance(o, multiprocessing.queues.SimpleQueue))
    os.write(queue._writer.fileno(), struct.pack("!i", 1 << 30) + bytes(1000))
    time.sleep(600)


if __name__ == "__main__":
    pool = local._workers(1, processes=True)
    pool.submit(half_a_result)
    time.sleep(3)  # the manager thread now waits for the rest of the 1 GB
    local._abandon(pool)
    print("abandoned")
"""


def test_a_stop_while_a_worker_sends_a_result_does_not_hang(tmp_path):
    """A worker killed (by the stop) while it wrote a decoded file to the results pipe left the
    pool's manager thread reading the rest for ever, and the stop waiting on it: SIGTERM or
    SIGHUP never ended the run (2 of 45 runs), its Parquet rows lost to the SIGKILL after."""
    script = tmp_path / "half.py"
    script.write_text(HALF_A_RESULT)
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=child_env(JAX_PLATFORMS="cpu"))
    assert result.returncode == 0 and result.stdout == "abandoned\n", result.stderr


def test_a_run_whose_standard_error_is_gone_keeps_its_status(music, tmp_path):
    """`2>/dev/full`: the summary line could not be written, and a run that wrote every row
    ended with status 1, as if a file had failed."""
    out = tmp_path / "tags.csv"
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "jaxmir", "tag", str(music / "rock"), "-o",
                                 str(out), "--jobs", "0"], cwd=ROOT, stderr=full, timeout=600,
                                env=child_env(JAX_PLATFORMS="cpu", JAXMIR_NO_CACHE="1"))
    assert result.returncode == 0
    assert out.read_text().count("\n") == 3  # the header and two rows


def _blocked_in_a_fifo_open(pid: int) -> bool:
    """Whether a thread of process ``pid`` or of its children waits in the open of a FIFO."""
    pids, seen = [pid], set()
    while pids:
        current = pids.pop()
        seen.add(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                if (task / "wchan").read_text().strip() == "wait_for_partner":
                    return True
                pids += [int(c) for c in (task / "children").read_text().split()
                         if int(c) not in seen]
            except OSError:  # the task ended meanwhile
                continue
    return False


@pytest.mark.parametrize("workers",
                         [["--jobs", "0"], ["--jobs", "1"], ["--jobs", "1", "--processes"]],
                         ids=["in-process", "threads", "processes"])
def test_sigterm_stops_a_run_whose_decoder_is_blocked(music, tmp_path, workers):
    """A FIFO named on the command line blocks its reader in open() until a writer comes (so
    would a hung network mount). SIGTERM then went unheard with decoding workers (the run waited
    for them, forever), and in-process it broke FFmpeg's open: an 'Interrupted system call' row
    for the file, and the run went on. Now the run stops as Ctrl-C does: 143, rows kept, no row
    for the interrupted file."""
    fifo = tmp_path / "stream.wav"
    os.mkfifo(fifo)
    out = tmp_path / "tags.csv"
    process = subprocess.Popen([sys.executable, "-m", "jaxmir", "tag", str(fifo),
                                str(music / "rock" / "a.wav"), "-o", str(out), "--no-progress",
                                *workers], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=child_env(JAX_PLATFORMS="cpu", JAXMIR_NO_CACHE="1"))
    try:
        deadline = time.monotonic() + 120
        while not _blocked_in_a_fifo_open(process.pid):
            assert process.poll() is None and time.monotonic() < deadline, "never opened the FIFO"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, stderr
    assert "jaxmir: error: terminated (SIGTERM); the rows of the files done are kept" in stderr
    assert "Interrupted system call" not in stderr and "Traceback" not in stderr
    assert out.read_text().count("\n") == 1  # the header: the FIFO is first, nothing done


def test_a_run_that_analysed_nothing_gives_no_hours_or_speed():
    """A rerun that only retried failed files ended "0.000 h of audio in 2.1 s (0.0x real time)"."""
    from jaxmir.collection.progress import Tally

    summary = Tally(total=4, skipped=3, failed=1).summary()
    assert summary.startswith("0 ok, 1 failed, 3 already done in ") and summary.endswith(" s")
    assert "h of audio" not in summary and "real time" not in summary
    done = Tally(total=2, ok=1, failed=1, audio_s=7200.0).summary()
    assert "1 ok, 1 failed; 2.000 h of audio in " in done and "x real time)" in done


def test_collect_warns_of_settings_its_output_or_engine_does_not_use(music, model, tmp_path):
    """average= with a table, actors= without Ray and processes= with jobs=0 were dropped
    without a word, where the command line warns of each."""
    with pytest.warns(commands.IgnoredSettingWarning) as caught:
        collect(model, music / "rock" / "a.wav", tmp_path / "t.jsonl", command="embed",
                average=True, actors=2, processes=True, jobs=0, flush_rows=5, progress=False)
    said = [str(w.message) for w in caught]
    assert said == [
        "average=True is ignored: a table holds the mean over patches already",
        "flush_rows is ignored: lines and arrays are written one file at a time",
        "actors is ignored: it sizes the model pool of engine='ray'",
        "processes=True is ignored: jobs=0 decodes in this process"], said
    with warnings.catch_warnings():
        warnings.simplefilter("error", commands.IgnoredSettingWarning)
        collect(model, music / "rock" / "a.wav", tmp_path / "arrays", command="embed", average=True,
                jobs=0, progress=False)


def test_a_resumed_run_s_bar_counts_the_files_left():
    """The bar's total is the files to do, not those an earlier run did: else it stops short of
    100 % and its ETA counts files that will not be read."""
    from jaxmir.collection.progress import Progress, Tally

    progress = Progress(Tally(total=10, skipped=3), enabled=False)
    assert progress.bar.total == 7
    progress.close()


def test_the_bar_stays_off_where_standard_error_is_no_terminal(capsys):
    """Standard error sent to a file or a pipe (a log, a batch job's output) gets the lines of
    the files' problems, not a bar redrawn at every file."""
    from jaxmir.collection.inputs import Source
    from jaxmir.collection.progress import Progress, Tally
    from jaxmir.collection.rows import Result

    progress = Progress(Tally(total=2), enabled=True)
    progress.update(Result(Source("/a.wav", 1, 1), 60.0, np.zeros((1, 4), np.float32)))
    progress.update(Result(Source("/b.wav", 1, 1), 2.0, error="/b.wav: too short"))
    progress.close()
    assert capsys.readouterr().err.splitlines() == ["jaxmir: error: /b.wav: too short"]


def test_a_folder_whose_name_starts_another_s_holds_none_of_its_files(tmp_path):
    """Rows gone from the folders named are those below them: not a sibling's whose name starts
    the same (disk2 beside disk)."""
    from jaxmir.collection.resume import gone_from_folders

    rows = [str(tmp_path / "disk2" / "a.wav"), str(tmp_path / "disk" / "b.wav")]
    assert gone_from_folders(rows, [str(tmp_path / "disk")], {}) == [rows[1]]


def test_a_name_left_in_a_folder_as_a_broken_link_is_not_said_gone(tmp_path):
    """A row's name still in the folder as a link to nothing (its file on a drive not mounted)
    is not "no longer in the folders named"; a name deleted is. The name is hidden, which the
    walk skips (a run that named it alone did it), so it is no file of this run either."""
    from jaxmir.collection.resume import gone_from_folders

    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / ".hidden.wav").symlink_to(tmp_path / "unmounted" / "a.wav")
    rows = [str(disk / ".hidden.wav"), str(disk / "deleted.wav")]
    assert gone_from_folders(rows, [str(disk)], {}) == [rows[1]]


def _disk_of_two(music: Path, tmp_path: Path) -> Path:
    """``disk/a.wav`` and ``disk/b.wav`` (rock's and jazz's a.wav) in ``tmp_path``: a folder."""
    disk = tmp_path / "disk"
    disk.mkdir()
    shutil.copy(music / "rock" / "a.wav", disk / "a.wav")
    shutil.copy(music / "jazz" / "a.wav", disk / "b.wav")
    return disk


def test_a_listed_file_of_a_folder_named_that_cannot_be_read_is_said_once(music, model,
                                                                         tmp_path):
    """A file of a folder named, named by a list too, deleted since its row: it is a file of
    this run that cannot be read now (its row kept, said so), not also one "no longer in the
    folders named"."""
    disk = _disk_of_two(music, tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("disk/b.wav\n")
    output = tmp_path / "tags.jsonl"
    paths = [str(disk), f"@{listing}"]
    assert collect(model, paths, output, jobs=0, progress=False).ok == 2
    (disk / "b.wav").unlink()
    with pytest.warns(jaxmir.JaxmirWarning) as caught:
        tally = collect(model, paths, output, jobs=0, progress=False)
    assert (tally.ok, tally.failed, tally.skipped) == (0, 0, 2)
    assert [str(w.message) for w in caught] == [
        f"{disk / 'b.wav'}: cannot be read now; its row from an earlier run is kept"]


def test_the_summary_says_hours_of_audio_per_hour():
    """Two hours of audio in one hour of wall time is 2.0x real time, not 0.5x."""
    from jaxmir.collection.progress import Tally

    tally = Tally(total=3, ok=2, failed=1, audio_s=7200.0, started=100.0)
    tally.ended = 100.0 + 3600.0
    assert tally.summary() == "2 ok, 1 failed; 2.000 h of audio in 3600.0 s (2.0x real time)"


def test_a_failed_file_counts_as_failed_and_its_audio_as_not_analysed(capsys):
    """A file decoded but then failed (too short for a patch, the model out of memory) has a
    duration: it is not audio analysed (the summary's hours, the bar's audio h/h), and the bar's
    count of failures is of the files failed."""
    from jaxmir.collection.inputs import Source
    from jaxmir.collection.progress import Progress, Tally
    from jaxmir.collection.rows import Result

    tally = Tally(total=3)
    progress = Progress(tally, enabled=False)
    values = np.zeros((1, 4), np.float32)
    progress.update(Result(Source("/a.wav", 1, 1), 60.0, values))
    progress.update(Result(Source("/b.wav", 1, 1), 2.0, error="/b.wav: too short"))
    progress.update(Result(Source("/c.wav", 1, 1), 30.0, values, warning="truncated audio"))
    progress.close()
    assert (tally.ok, tally.damaged, tally.failed, tally.audio_s) == (2, 1, 1, 90.0)
    assert progress.bar.postfix.endswith(" audio h/h, 1 failed"), progress.bar.postfix
    assert capsys.readouterr().err.splitlines() == [
        "jaxmir: error: /b.wav: too short", "jaxmir: warning: truncated audio"]


def test_the_bar_moves_on_a_file_at_each_result(monkeypatch):
    """Where standard error is a terminal, the bar counts the files done: ``2/3`` after two."""
    from jaxmir.collection.inputs import Source
    from jaxmir.collection.progress import Progress, Tally
    from jaxmir.collection.rows import Result

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    progress = Progress(Tally(total=3), enabled=True)
    progress.update(Result(Source("/a.wav", 1, 1), 60.0, np.zeros((1, 4), np.float32)))
    progress.update(Result(Source("/b.wav", 1, 1), 2.0, error="/b.wav: too short"))
    assert progress.bar.n == 2
    progress.close()
    assert " 2/3 [" in sys.stderr.getvalue().splitlines()[-1]


def test_an_unknown_engine_is_refused_before_any_output(music, model, tmp_path):
    """A misspelt engine ran the local one without a word."""
    output = tmp_path / "t.parquet"
    with pytest.raises(InputError, match="unknown engine 'rey'; expected local or ray"):
        collect(model, music / "rock" / "a.wav", output, engine="rey", progress=False)
    assert not output.exists()


def _ignored(kind: str = "parquet", **changed) -> list[str]:
    """What :func:`commands.ignored_settings` says of collect()'s defaults with ``changed``."""
    settings = dict(engine="local", average=False, per_patch=False, flush_rows=256, actors=None,
                    processes=False, jobs=None)
    return commands.ignored_settings(kind, commands._KEYWORDS, **{**settings, **changed})


def test_jobs_with_the_ray_engine_are_ignored_even_zero():
    """Ray decodes in its own CPU tasks: jobs=0 (decode in this process) is as ignored as 4."""
    for jobs in (0, 4):
        said = _ignored(engine="ray", jobs=jobs)
        assert said == ["jobs is ignored: engine='ray' decodes in Ray's CPU tasks, as many as "
                        "the cluster runs"], said


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv", "npy"])
def test_flush_rows_is_ignored_by_every_output_but_parquet(kind):
    """Only Parquet writes parts of flush_rows rows: a CSV table or a folder of .npy ignores it
    as a JSONL table does."""
    said = _ignored(kind, flush_rows=5)
    assert said == ([] if kind == "parquet" else
                    ["flush_rows is ignored: lines and arrays are written one file at a time"])


@pytest.mark.parametrize("jobs", [None, 2])
def test_processes_are_used_by_the_local_engine_s_workers(jobs):
    """processes=True is ignored with jobs=0 only: jobs left unset (a worker per core) or a
    count decodes in worker processes."""
    assert _ignored(processes=True, jobs=jobs) == []


def test_one_file_is_decoded_as_it_streams_more_by_a_worker_a_core(monkeypatch):
    """Decoding workers by default: none for one file (it streams in this process), one per
    core, never more than the files."""
    from jaxmir.collection.compute import default_jobs

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_jobs(0) == default_jobs(1) == 0
    assert default_jobs(2) == 2 and default_jobs(None) == default_jobs(10**6) == 8
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one
    assert default_jobs(None) == default_jobs(5) == 1


def test_a_resumed_run_with_one_file_left_streams_it(music, model, tmp_path, monkeypatch):
    """Workers are sized by the files left to do: the one left of two streams in this process
    (a worker would decode it whole, holding a long recording in memory)."""
    done, left = str(music / "rock" / "a.wav"), str(music / "jazz" / "a.wav")
    output = tmp_path / "tags.jsonl"
    collect(model, [done], output, progress=False)
    workers = []
    monkeypatch.setattr(local, "run", lambda model, todo, options, write, bar, jobs, *args,
                        **kwargs: workers.append((len(todo), jobs)))
    collect(model, [done, left], output, progress=False)
    assert workers == [(1, 0)]


def test_the_command_line_names_an_unused_option_once_in_its_own_spelling(music, tmp_path,
                                                                            capsys):
    from jaxmir import cli

    status = cli.main(["embed", str(music / "rock" / "a.wav"), "-o", str(tmp_path / "t.jsonl"),
                       "--average", "--actors", "2", "--no-progress", "-j", "0"])
    err = capsys.readouterr().err
    assert status == 0, err
    warned = [line for line in err.splitlines() if "is ignored" in line]
    assert warned == [
        "jaxmir: warning: --average is ignored: a table holds the mean over "
        "patches already",
        "jaxmir: warning: --actors is ignored: it sizes the model pool of --engine ray"], err


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_a_file_that_cannot_be_read_on_a_rerun_keeps_its_row(music, model, tmp_path, capsys,
                                                             suffix):
    """A folder renamed (a drive not mounted) between two runs: the rerun replaced the rows
    done with error rows ("no such file"), losing their tags."""
    disk = _disk_of_two(music, tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("disk/a.wav\ndisk/b.wav\n")
    output = tmp_path / f"tags{suffix}"
    assert collect(model, f"@{listing}", output, progress=False).ok == 2
    before = _read_rows(output)
    (disk / "b.wav").rename(tmp_path / "b.wav")
    analyzer, seen = _counting()
    with pytest.warns(jaxmir.JaxmirWarning) as caught:
        tally = collect(model, f"@{listing}", output, progress=False, analyzer=analyzer, jobs=0)
    assert (tally.ok, tally.failed, tally.skipped, seen) == (0, 0, 2, [])
    assert [str(w.message) for w in caught] == [
        f"{disk / 'b.wav'}: cannot be read now; its row from an earlier run is kept"]
    assert _read_rows(output) == before
    (tmp_path / "b.wav").rename(disk / "b.wav")  # back: done, as it was
    assert collect(model, f"@{listing}", output, progress=False).skipped == 2
    (disk / "b.wav").unlink()  # still kept; a file never done that cannot be read fails
    listing.write_text("disk/a.wav\ndisk/b.wav\ndisk/gone.wav\n")
    tally = collect(model, f"@{listing}", output, progress=False)
    assert (tally.failed, tally.skipped) == (1, 2)
    # and on the next rerun its error row goes as it fails again: one row, not one a run
    tally = collect(model, f"@{listing}", output, progress=False)
    assert (tally.failed, tally.skipped) == (1, 2)
    assert [row[1] for row in _read_rows(output) if row[0].endswith("gone.wav")] == ["error"]


def test_a_damaged_file_that_cannot_be_read_on_a_rerun_keeps_its_row(model, tmp_path):
    """A file decoded in part (its row "damaged", done: not redone) that cannot be read on a
    rerun keeps its row as a file done whole does: taken for a row to redo, it became an error
    row ("no such file") and its tags were lost."""
    cut = _truncated(tmp_path / "disk")
    listing = tmp_path / "list.txt"
    listing.write_text("disk/cut.wav\n")
    output = tmp_path / "tags.jsonl"
    assert collect(model, f"@{listing}", output, jobs=0, progress=False).ok == 1
    before = output.read_text()
    assert json.loads(before)["status"] == "damaged"
    cut.rename(tmp_path / "cut.wav")
    analyzer, seen = _counting()
    with pytest.warns(jaxmir.JaxmirWarning, match="cannot be read now; its row from an earlier"):
        tally = collect(model, f"@{listing}", output, jobs=0, progress=False, analyzer=analyzer)
    assert (tally.ok, tally.failed, tally.skipped, seen) == (0, 0, 1, [])
    assert output.read_text() == before


def _read_rows(output: Path) -> list:
    """The rows of a table, as sorted (path, status, duration) triples."""
    if output.suffix == ".parquet":
        table = _read_parquet(output)
        return sorted(zip(table["path"], table["status"], table["duration_s"]))
    if output.suffix == ".csv":
        import csv

        rows = list(csv.DictReader(output.open(newline="")))
        return sorted((r["path"], r["status"], float(r["duration_s"])) for r in rows)
    index = output / "index.jsonl" if output.is_dir() else output  # a folder of .npy
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    return sorted((r["path"], r["status"], r["duration_s"]) for r in rows)


def test_a_link_named_as_a_table_to_a_parquet_folder_says_what_it_expected(music, model,
                                                                           tmp_path):
    """``lnk.jsonl`` -> ``t.parquet`` said "t.parquet is a folder; expected a .parquet file"."""
    (tmp_path / "t.parquet").mkdir()
    (tmp_path / "lnk.jsonl").symlink_to(tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t\.parquet is a folder; a \.jsonl output is one file"):
        collect(model, music / "rock" / "a.wav", tmp_path / "lnk.jsonl", progress=False)
    (tmp_path / "rows.jsonl").write_text("")  # a link named .csv writes CSV, as named
    (tmp_path / "lnk.csv").symlink_to(tmp_path / "rows.jsonl")
    collect(model, music / "rock" / "a.wav", tmp_path / "lnk.csv", progress=False, jobs=0)
    assert (tmp_path / "rows.jsonl").read_text().startswith("path,size_bytes,")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_a_folder_s_failed_row_goes_once_it_can_be_listed(music, model, tmp_path, suffix):
    """A folder named that was gone for a run got an error row, which stayed for good after the
    folder came back (its files' rows done and kept): the table showed a failure no run had."""
    folder = tmp_path / "disk"
    shutil.copytree(music / "rock", folder)
    output = tmp_path / f"tags{suffix}"
    assert collect(model, folder, output, progress=False).ok == 2
    folder.rename(tmp_path / "away")
    assert collect(model, folder, output, progress=False).failed == 1
    assert sorted(status for _, status, _ in _read_rows(output)) == ["error", "ok", "ok"]
    (tmp_path / "away").rename(folder)
    tally = collect(model, folder, output, progress=False)
    assert (tally.ok, tally.failed, tally.skipped) == (0, 0, 2)
    assert [status for _, status, _ in _read_rows(output)] == ["ok", "ok"]


def test_another_run_s_failed_row_of_a_path_no_folder_can_have_is_kept():
    """A path holding a NUL byte, given to collect(), gets a failed row (inputs.examine); a
    later run of other files keeps that row as another run's, no folder that can be listed:
    os.scandir raises ValueError for such a path, not OSError, which stopped the resume."""
    from jaxmir.collection.resume import keep
    from jaxmir.collection.rows import ERROR

    assert keep("/disk/a\0b", 10, 1, ERROR, {})


@pytest.mark.parametrize("actors", [0, -1, 2.5, "two", True])
def test_collect_refuses_actors_that_are_no_count_before_making_an_output(model, tmp_path,
                                                                         actors):
    """actors=0 ran one actor, the others failed inside Ray after an empty output was made."""
    with pytest.raises(InputError, match=rf"actors={actors!r}: expected a whole number >= 1"):
        collect(model, tmp_path, tmp_path / "t.jsonl", engine="ray", actors=actors)
    assert not (tmp_path / "t.jsonl").exists()


@pytest.mark.parametrize("rows", [0, -5, 2.5, "3"])
def test_collect_refuses_flush_rows_that_are_no_count(model, tmp_path, rows):
    """0, -5 and 2.5 were taken as 1 without a word, "3" ended in a bare TypeError."""
    with pytest.raises(InputError, match=rf"flush_rows={rows!r}: expected a whole number >= 1"):
        collect(model, tmp_path, tmp_path / "t.parquet", flush_rows=rows)
    assert not (tmp_path / "t.parquet").exists()


def test_collect_takes_numpy_counts_as_every_other_count(model, music, tmp_path):
    """jobs=np.int64(1) (a count read from an array or a config) was refused as "not a whole
    number >= 0", where batch=, patch_hop= and the array API take NumPy integers."""
    import numpy as np

    tally = collect(model, [str(music / "rock")], tmp_path / "t.jsonl", name="msd-musicnn",
                    jobs=np.int64(1), progress=False)
    assert tally.failed == 0 and tally.ok > 0
    with pytest.raises(InputError, match=r"jobs=np.True_: expected a whole number >= 0"):
        collect(model, tmp_path, tmp_path / "u.jsonl", jobs=np.bool_(True))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_tags_refused_to_embed_are_the_same_model_s_other_settings(music, model, tmp_path,
                                                                    suffix):
    """A tag table's labels, where embed records none, made it "results of another
    'msd-musicnn'"."""
    out = tmp_path / f"rows{suffix}"
    collect(model, music / "rock" / "a.wav", out, jobs=0, progress=False)
    with pytest.raises(InputError, match=r"holds results of 'msd-musicnn' with other settings "
                                         r"\(command: 'tag' there, 'embed' now"):
        collect(model, music / "rock" / "a.wav", out, command="embed", jobs=0, progress=False)


@pytest.mark.parametrize("output_name", ["tags.jsonl", "tags.parquet", "embeddings"])
def test_rows_of_files_gone_from_a_folder_named_are_kept_and_said(music, model, tmp_path,
                                                                   output_name):
    """A file deleted from a folder kept its row without a word: the summary ("2 already
    done") and the table (3 rows) disagreed; a failed one's row too, after that fix."""
    folder = tmp_path / "disk"
    shutil.copytree(music / "rock", folder)
    shutil.copy(music / "jazz" / "a.wav", folder / "c.wav")
    (folder / "bad.wav").write_bytes(b"not audio")
    output = tmp_path / output_name
    command = "embed" if output_name == "embeddings" else "tag"
    first = collect(model, folder, output, command=command, progress=False)
    assert (first.ok, first.failed) == (3, 1)
    for name in ("c.wav", "bad.wav"):
        (folder / name).rename(tmp_path / name)
    with pytest.warns(jaxmir.JaxmirWarning) as caught:
        tally = collect(model, folder, output, command=command, progress=False)
    assert tally.skipped == 2 and len(_read_rows(output)) == 4
    assert [str(w.message) for w in caught] == [
        f"2 files done or failed in an earlier run, e.g. {folder / 'bad.wav'}, are no longer in "
        "the folders named; their rows are kept: --overwrite (overwrite=True in Python) starts "
        "the output over"]
    for name in ("c.wav", "bad.wav"):
        (tmp_path / name).rename(folder / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxmir.JaxmirWarning)
        again = collect(model, folder, output, command=command, progress=False)
    assert (again.skipped, again.failed) == (3, 1)
    (folder / "c.wav").unlink()  # one alone is said too
    with pytest.warns(jaxmir.JaxmirWarning, match="^" + re.escape(str(folder / "c.wav"))
                      + ", done or failed in an earlier run, is no longer in the folders named; "
                      "its row is kept"):
        collect(model, folder, output, command=command, progress=False)


def test_a_parquet_table_holds_arrays_without_a_python_float_per_value():
    """Per-patch arrays went through tolist() (a Python float per value, 8 times their bytes):
    `embed --per-patch --layer cnn3` of a 30-min recording took 2.1 GB for 58 MB of patches.
    The table is the same, its values as Arrow views of the arrays' buffers."""
    import pyarrow as pa

    from jaxmir.collection.inputs import Source
    from jaxmir.collection.rows import Layout, Result

    layout = Layout("embed", {"model": "msd-musicnn"}, per_patch=True)
    patches = np.random.default_rng(0).standard_normal((200, 12_000)).astype(np.float32)
    results = [Result(Source("/a.wav", 1, 1), 60.0, patches),
               Result(Source("/b.wav", 1, 1), error="b.wav: cannot be read as audio"),
               Result(Source("/c.wav", 1, 1), 3.0, patches[:1, :3])]
    table, peak = traced_peak(lambda: outputs.parquet_table(layout, results))
    assert peak < 3 * patches.nbytes, peak  # the mean's float64 copy: 2 times
    expected = {"patches": [patches.tolist(), None, patches[:1, :3].tolist()],
                "embedding": [patches.mean(axis=0, dtype=np.float64).astype(np.float32).tolist(),
                              None, patches[:1, :3].mean(axis=0).tolist()]}
    for name, rows in expected.items():
        assert table[name].type == outputs.parquet_schema(layout).field(name).type
        assert table[name].to_pylist() == rows, name
    assert isinstance(table, pa.Table) and table.num_rows == 3


def test_a_parquet_table_resumes_without_reading_its_arrays(model, tmp_path, monkeypatch):
    """A resumed run read every part whole, per-patch arrays and all (a collection's), to learn
    each row's path, size, time and status; it reads a part whole only to rewrite it."""
    import pyarrow.parquet as pq

    out = tmp_path / "emb.parquet"
    paths = [str(_write(tmp_path / "in" / f"{name}.wav", 3.0, 16000, 1, seed))
             for seed, name in enumerate("ab")]
    run = lambda: collect(model, paths, str(out), command="embed", options=Options("embeddings"),
                          per_patch=True, name="msd-musicnn", jobs=0, progress=False)
    assert run().ok == 2
    read, whole = [], pq.read_table

    def reading(source, *args, columns=None, **kwargs):
        read.append(columns)
        return whole(source, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", reading)
    assert run().skipped == 2
    assert read and all(columns is not None and "patches" not in columns for columns in read)
    os.utime(paths[0], ns=(1, 1))  # changed: its row goes, the part is rewritten from the whole
    read.clear()
    assert run().ok == 1 and None in read
    monkeypatch.undo()
    table = pq.read_table(out)
    assert sorted(table["path"].to_pylist()) == sorted(paths) and table["patches"].null_count == 0


def test_a_run_s_figures_stop_with_the_run(model, tmp_path):
    """The Tally collect returns went on counting time after the run: its summary read 1.0 s,
    then 6.0 s five seconds later (and 5.1x real time, then 0.8x)."""
    clip = _write(tmp_path / "a.wav", 3.0, 16000, 1, 0)
    tally = collect(model, [str(clip)], str(tmp_path / "t.jsonl"), name="msd-musicnn", jobs=0,
                    progress=False)
    before = (tally.summary(), tally.wall_s, tally.realtime)
    time.sleep(0.3)
    assert (tally.summary(), tally.wall_s, tally.realtime) == before


def test_what_a_run_computes_with_is_in_its_identity(model, music, tmp_path):
    """Rows mixed silently: a graph's output node chosen by output= (or its JSON) was not
    recorded (probabilities and logits in one table); a bfloat16 Model under the default
    Options was cast back to float32 and recorded as float32's, its values still rounded; a JSONL
    written without settings took rows of any settings."""
    graph = str(shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb"))
    clip = str(music / "rock" / "a.wav")
    out = tmp_path / "tags.parquet"
    collect(jaxmir.load(graph), [clip], str(out), name=graph, jobs=0, progress=False)
    logits = jaxmir.load(graph, output="model/dense_2/BiasAdd")
    with pytest.raises(InputError, match=r"output_node: the graph's own there .*, "
                                         r"'model/dense_2/BiasAdd' now"):
        collect(logits, [clip, str(music / "rock" / "b.flac")], str(out), name=graph, jobs=0,
                progress=False)
    embedded = tmp_path / "embeddings.parquet"  # they do not depend on the output node
    for chosen, files in ((jaxmir.load(graph), [clip]), (logits, [clip, str(music / "jazz")])):
        collect(chosen, files, str(embedded), command="embed", name=graph, jobs=0, progress=False)
    arrays = tmp_path / "arrays"  # a folder written before settings were recorded: per patch
    collect(model, [clip], str(arrays), command="embed", name="msd-musicnn", jobs=0,
            progress=False)
    index = arrays / "index.jsonl"
    index.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items()
                                         if k != "settings"}) + "\n"
                             for line in index.read_text().splitlines()))
    with pytest.raises(InputError, match=r"average: False there, True now"):
        collect(model, [clip, str(music / "rock" / "b.flac")], str(arrays), command="embed",
                name="msd-musicnn", average=True, jobs=0, progress=False)
    from jaxmir.collection import ray_engine  # its actors cast the model they load as given

    ray_engine.check_reloadable(model.astype("bfloat16"), "msd-musicnn", None)
    with pytest.raises(InputError, match=r"the model's variables are bfloat16 .*"
                                         r"Options\(dtype='bfloat16'\)"):
        collect(model.astype("bfloat16"), [clip], str(tmp_path / "b.parquet"), jobs=0,
                progress=False)
    assert not (tmp_path / "b.parquet").exists()
    lines = tmp_path / "tags.jsonl"
    collect(model, [clip], str(lines), name="msd-musicnn", jobs=0, progress=False)
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    lines.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "settings"}) + "\n"
                             for row in rows))  # as written before settings were recorded
    # it cannot tell its settings: a run with other ones is refused, and one with the defaults
    # warned that its rows are taken to be the defaults' (a hop of 50 there would mix), not the
    # run refused
    with pytest.raises(InputError, match=r"patch_hop: not recorded there \(written before "
                                         r"jaxmir recorded settings: taken as the default, 93\), "
                                         r"50 now"):
        collect(model, [clip, str(music / "rock" / "b.flac")], str(lines), name="msd-musicnn",
                options=Options(patch_hop=50), jobs=0, progress=False)
    with pytest.warns(JaxmirWarning, match=f"{re.escape(str(lines))} records no settings "
                                           r"\(written before jaxmir recorded them\): taken to "
                                           r"hold the defaults'"):
        assert collect(model, [clip, str(music / "rock" / "b.flac")], str(lines),
                       name="msd-musicnn", jobs=0, progress=False).ok == 1
    text = lines.read_text()  # each line parsed alone: its errors said "line 1" of any line
    for edited, what in ((text + "{oops\n", "line 3 is not JSON (Expecting property name"),
                         (text.replace("\n", "\n\n", 1), "line 2 is blank"),
                         (text + "[1, 2]\n", "line 3 is not a JSON object")):
        lines.write_text(edited)
        with pytest.raises(InputError, match=re.escape(what)):
            collect(model, [clip], str(lines), name="msd-musicnn", jobs=0, progress=False)


def test_a_folder_of_other_npy_files_is_refused_as_arrays_output(music, model, tmp_path):
    """A folder holding .npy files and no index is no jaxmir output: its files could be
    written over by the arrays' names."""
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "a.npy", np.arange(3))
    with pytest.raises(InputError, match="already holds .npy files but no"):
        collect(model, [str(music / "rock" / "a.wav")], str(folder), name="msd-musicnn",
                command="embed", jobs=0, progress=False)
    np.testing.assert_array_equal(np.load(folder / "a.npy"), np.arange(3))
    # the way out the message offers: --overwrite writes the arrays there, and their index
    collect(model, [str(music / "rock" / "a.wav")], str(folder), name="msd-musicnn",
            command="embed", jobs=0, progress=False, overwrite=True)
    [row] = [json.loads(line) for line in (folder / outputs.INDEX).read_text().splitlines()]
    assert row["status"] == "ok" and np.load(folder / row["npy"]).shape[1:] == (200,)


def test_outputs_of_earlier_versions_resume(music, model, tmp_path):
    """Outputs written before jaxmir recorded a model file by its name and bytes (its path then),
    and embedding tables written when they recorded --average (their column is the mean either
    way), were refused for the same command: "a shipped model there, a model file now",
    "average: False there, None now"; --overwrite, the way out offered, recomputed them."""
    graph = str(shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb"))
    clip = str(music / "rock" / "a.wav")
    for command, loaded, name, edit in (
            ("tag", jaxmir.load(graph), graph,
             lambda settings: {**{k: v for k, v in settings.items() if k != "model_sha256"},
                               "model": graph}),
            ("embed", model, "msd-musicnn", lambda settings: {**settings, "average": False})):
        out = tmp_path / f"{command}.jsonl"
        collect(loaded, [clip], str(out), command=command, name=name, jobs=0, progress=False)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        out.write_text("".join(json.dumps({**row, "settings": edit(row["settings"])}) + "\n"
                               for row in rows))
        again = collect(loaded, [clip, str(music / "rock" / "b.flac")], str(out),
                        command=command, name=name, jobs=0, progress=False)
        assert (again.ok, again.skipped) == (1, 1), command
    out = tmp_path / "typed.jsonl"  # before settings were recorded: the model as typed, no bytes
    collect(jaxmir.load(graph), [clip], str(out), name=graph, jobs=0, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    out.write_text("".join(json.dumps({**{k: v for k, v in row.items() if k != "settings"},
                                       "model": graph}) + "\n" for row in rows))
    with pytest.warns(JaxmirWarning, match="records no settings"):
        again = collect(jaxmir.load(graph), [clip, str(music / "rock" / "b.flac")], str(out),
                        name=graph, jobs=0, progress=False)
    assert (again.ok, again.skipped) == (1, 1)
    from jaxmir.collection.rows import model_by_path  # a folder with '+' in it, Windows' paths

    assert model_by_path("/data/a+b/head.pb+msd-musicnn", "head.pb+msd-musicnn")
    assert model_by_path(r"C:\models\genre.pb", "genre.pb")
    assert not model_by_path("/data/other.pb", "genre.pb") and not model_by_path("msd-vgg", None)
    assert not model_by_path("/data/mygenre.pb", "genre.pb")  # the whole file name, not its end
    assert model_by_path("genre.npz", "genre.npz")  # a weights file named without a folder
    assert model_by_path("/data/a\nb/genre.pb", "genre.pb")  # a line break in a folder's name
    out = tmp_path / "moved.jsonl"  # another file by its path: named, not called a shipped model
    collect(jaxmir.load(graph), [clip], str(out), name=graph, jobs=0, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    out.write_text("".join(json.dumps({**row, "settings": {
        **{k: v for k, v in row["settings"].items() if k != "model_sha256"},
        "model": "/elsewhere/other.pb"}}) + "\n" for row in rows))
    with pytest.raises(InputError, match=r"of model '/elsewhere/other.pb', not of "
                                         r"'genre_dortmund_musicnn_msd.pb' .*a model file by its "
                                         r"path there, its bytes not recorded"):
        collect(jaxmir.load(graph), [clip], str(out), name=graph, jobs=0, progress=False)
    out.write_text("".join(json.dumps({**row, "settings": {
        **{k: v for k, v in row["settings"].items() if k != "model_sha256"},
        "model": ["edited"]}}) + "\n" for row in rows))  # not called a shipped model either
    with pytest.raises(InputError, match=r"no model name there \(\['edited'\]\), a model file now"):
        collect(jaxmir.load(graph), [clip], str(out), name=graph, jobs=0, progress=False)


def test_a_graph_s_own_output_node_is_read_once_at_its_load(music, tmp_path, monkeypatch):
    """Each collect() parsed the model's .pb again to learn the node its graph gives by itself
    (~0.5 s and the file's size in memory again for a 290-MB VGGish); the load knows it."""
    import dataclasses

    from jaxmir.collection.rows import default_output_node
    from jaxmir.tfgraph import graphdef

    graph = str(shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb"))
    own, logits = jaxmir.load(graph), jaxmir.load(graph, output="model/dense_2/BiasAdd")
    assert own.graph_output == logits.graph_output == own.spec.output_name
    assert logits.spec.output_name == "model/dense_2/BiasAdd"
    assert jaxmir.load("msd-musicnn").graph_output is None  # weights: their bytes fix the node

    def parsed_again(*args, **kwargs):
        raise AssertionError("the .pb was parsed again")

    monkeypatch.setattr(graphdef.Graph, "from_file", parsed_again)
    # a Model built in Python from a .pb since gone: its spec's node, no file read
    built = dataclasses.replace(own, source=str(tmp_path / "gone.pb"), graph_output=None)
    assert default_output_node(built) == own.spec.output_name
    clip, out = str(music / "rock" / "a.wav"), tmp_path / "tags.parquet"
    collect(own, [clip], str(out), name=graph, jobs=0, progress=False)
    with pytest.raises(InputError, match=r"output_node: the graph's own there .*, "
                                         r"'model/dense_2/BiasAdd' now"):
        collect(logits, [clip], str(out), name=graph, jobs=0, progress=False)


def test_a_parquet_part_whose_columns_were_edited_is_refused(model, music, tmp_path):
    """A label column dropped from a part with pyarrow (its metadata kept): "nothing to do", and
    the table read its rows' scores as nulls."""
    pq = require("pyarrow.parquet")
    clip = str(music / "rock" / "a.wav")
    out = tmp_path / "tags.parquet"
    collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
    part = max(out.iterdir())
    table = pq.read_table(part)
    pq.write_table(table.drop(["rock"]).replace_schema_metadata(table.schema.metadata), part)
    with pytest.raises(InputError, match=rf"{part.name}: no column 'rock' \(edited since"):
        collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
    # recast: resumed, it left parts whose columns no reader of the folder could join
    pa = require("pyarrow")
    rock = table.schema.get_field_index("rock")
    pq.write_table(table.set_column(rock, pa.field("rock", pa.string()),
                                    table.column("rock").cast(pa.string()))
                   .replace_schema_metadata(table.schema.metadata), part)
    with pytest.raises(InputError, match=rf"{part.name}: column 'rock' of type string, not double"):
        collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
    # a column added (a note of the user's): resumed, the parts written after it lacked it
    pq.write_table(table.append_column("note", pa.array(["mine"] * table.num_rows))
                   .replace_schema_metadata(table.schema.metadata), part)
    with pytest.raises(InputError, match=rf"{part.name}: a column 'note' it should not hold"):
        collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
    # three differences are all named, with nothing left to add; past three, "and more"
    labels = list(model.labels[:4])
    for dropped, rest in ((labels[:3], " (edited since"), (labels, " and more (edited since")):
        pq.write_table(table.drop(dropped).replace_schema_metadata(table.schema.metadata), part)
        named = ", ".join(f"no column {label!r}" for label in dropped[:3])
        with pytest.raises(InputError, match=re.escape(f"{part.name}: {named}{rest}")):
            collect(model, [clip], str(out), name="msd-musicnn", jobs=0, progress=False)
