"""The ``jaxmir`` command: tag, embed, info; formats; one bad file among good ones."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import jaxmir
from conftest import BF16_TAGS_ATOL, ROOT, child_env, require, shared_fixture
from jaxmir import catalog, cli

SR = 44100


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch):
    # jax.config is process-wide: in-process runs must not switch the cache on for later tests
    monkeypatch.setenv("JAXMIR_NO_CACHE", "1")


@pytest.fixture(scope="module")
def musicnn():
    return jaxmir.load("msd-musicnn")


def tone(seconds: float, rate: int = SR, channels: int = 2, freq: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(2 * np.pi * 3 * freq * t)
    right = 0.3 * np.sign(np.sin(2 * np.pi * freq / 2 * t))
    both = np.stack([left, right], axis=1)
    return both[:, :channels] if channels > 1 else left


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    """Generated files: stereo 44.1 kHz in every PCM width and float, mono 22.05 kHz, and bad
    ones."""
    folder = tmp_path_factory.mktemp("audio")
    files = {}
    for subtype in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"):
        files[subtype] = folder / f"stereo_{subtype.lower()}.wav"
        soundfile.write(files[subtype], tone(4.0), SR, subtype=subtype)
    files["mono_22k"] = folder / "mono_22k.flac"
    soundfile.write(files["mono_22k"], tone(4.5, 22050, channels=1, freq=220.0), 22050)
    files["short"] = folder / "short.wav"
    soundfile.write(files["short"], tone(1.0), SR)
    files["empty"] = folder / "empty.wav"
    soundfile.write(files["empty"], np.zeros((0, 2)), SR)
    files["nan"] = folder / "nan.wav"
    bad = tone(4.0).astype(np.float32)
    bad[1000:1010] = np.nan
    soundfile.write(files["nan"], bad, SR, subtype="FLOAT")
    files["garbage"] = folder / "garbage.wav"
    files["garbage"].write_bytes(b"RIFF\x00\x01not really a wave file" * 10)
    files["folder"] = folder / "a_folder.mp3"
    files["folder"].mkdir()
    return files


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main([*argv, "--no-progress"] if argv[0] in ("tag", "embed") else list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_tag_fixture_audio_text(capsys, musicnn):
    vignesh, hiphop = shared_fixture("audio/vignesh.wav"), shared_fixture("audio/hiphop.mp3")
    status, out, err = run(capsys, "tag", str(vignesh), str(hiphop))
    assert status == 0, err
    blocks = out.strip().split("\n[")
    assert len(blocks) == 2
    for path, block in zip((vignesh, hiphop), blocks):
        lines = block.splitlines()
        assert str(path) in lines[0] and "top 3 tags" in lines[0]
        mean = np.asarray(musicnn.predict(jaxmir.load_audio(path), 16000)).mean(axis=0)
        expected = [musicnn.labels[i] for i in np.argsort(-mean)[:3]]
        shown = [line[3:].rsplit(maxsplit=1) for line in lines[1:]]
        assert [label.strip() for label, _ in shown] == expected
        np.testing.assert_allclose([float(score) for _, score in shown], np.sort(mean)[::-1][:3],
                                   atol=1e-4)


def test_tag_json_on_every_pcm_width(capsys, wavs, musicnn):
    names = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "mono_22k"]
    status, out, err = run(capsys, "tag", *(str(wavs[n]) for n in names), "--format", "json",
                           "--top", "5")
    assert status == 0, err
    report = json.loads(out)
    assert report["labels"] == list(musicnn.labels) and report["patch_hop_frames"] == 93
    assert report["model"] == "msd-musicnn"  # the default, named (it was null)
    # the settings the tables record: two reports with other resamplers looked alike (0.088 apart)
    assert (report["resampler"], report["decoder"], report["dtype"]) == ("essentia", "essentia",
                                                                         "float32")
    assert [f["file"] for f in report["files"]] == [str(wavs[n]) for n in names]
    means = {}
    for name, entry in zip(names, report["files"]):
        taggram = np.asarray(entry["taggram"])
        assert taggram.shape == (entry["n_patches"], 50) and entry["n_patches"] >= 1
        np.testing.assert_allclose(entry["mean"], taggram.mean(axis=0), atol=1e-6)
        scores = [t["score"] for t in entry["top"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        means[name] = np.asarray(entry["mean"])
    # the same signal in 16/24/32-bit and float gives the same tags; 8-bit is close
    for name in ("PCM_24", "PCM_32", "FLOAT"):
        np.testing.assert_allclose(means[name], means["PCM_16"], atol=2e-3)
    np.testing.assert_allclose(means["PCM_U8"], means["PCM_16"], atol=5e-2)
    # and what the API gives for the file
    audio = jaxmir.load_audio(wavs["PCM_16"])
    direct = musicnn.predict(audio, 16000)
    np.testing.assert_allclose(report["files"][1]["taggram"], direct, atol=1e-6)
    assert report["files"][1]["duration_s"] == round(audio.size / 16000, 4)


def test_tag_reads_a_file_to_where_essentia_s_monoloader_ends(capsys, tmp_path):
    """A 44.1-kHz file of a whole number of MonoLoader's 4096-sample chunks: its resampled
    length, so its duration, is MonoLoader's (the stream ran on 45 samples, 2.8 ms, past it)."""
    path = tmp_path / "chunks.wav"
    soundfile.write(path, 0.3 * np.sin(np.arange(4096 * 40) / 7.0), 44100)
    status, out, err = run(capsys, "tag", str(path), "--format", "json")
    assert status == 0, err
    samples = jaxmir.load_audio(path).size  # MonoLoader's, in test_decode
    assert json.loads(out)["files"][0]["duration_s"] == round(samples / 16000, 4)


def test_json_gives_each_file_its_status_as_the_tables_do(capsys, wavs, tmp_path):
    """A truncated file is tagged from what it holds; its entry says so (it said nothing)."""
    whole = wavs["PCM_16"].read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[:len(whole) * 3 // 4])
    paths = [str(wavs["PCM_16"]), str(cut), "/no/such.wav"]
    status, out, err = run(capsys, "tag", *paths, "--format", "json")
    assert status == 1
    ok, damaged, failed = json.loads(out)["files"]
    assert ok["status"] == "ok" and "warning" not in ok and "error" not in ok
    assert damaged["status"] == "damaged" and "truncated audio" in damaged["warning"]
    assert damaged["n_patches"] >= 1 and "error" not in damaged
    assert failed["status"] == "error" and "no such file" in failed["error"]
    assert sum(line.startswith("jaxmir: warning: ") and "truncated audio" in line
               for line in err.splitlines()) == 1


def test_batch_sets_a_single_files_calls_too(capsys, wavs, monkeypatch):
    """--batch was taken by tables only and ignored, without a word, for a file's own output."""
    from jaxmir import stream

    seen, check = [], stream.check_batch
    monkeypatch.setattr(stream, "check_batch", lambda batch: seen.append(batch) or check(batch))
    outputs = {}
    for batch in ("3", None):  # a hop of 20 frames: 4 patches, two calls of 3 and 1
        status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--format", "json",
                               "--patch-hop", "20", *(("--batch", batch) if batch else ()))
        assert status == 0 and "ignored" not in err, err
        report = json.loads(out)["files"][0]
        outputs[batch] = np.asarray(report["taggram"])
        assert outputs[batch].shape[0] == report["n_patches"] == 4
        # the mean over every call's patches (a sum of the last call's alone passed every test),
        # summed in float64: a float32 sum was ~1e-8 off here, and drifts with a file's length
        np.testing.assert_allclose(report["mean"], outputs[batch].mean(axis=0), rtol=1e-12,
                                   atol=0)
    assert seen == [3, stream.BATCH]  # the default: MusiCNN has no heavy head
    np.testing.assert_allclose(outputs["3"], outputs[None], atol=1e-6)  # float32 rounding only


def test_output_makes_its_folder_as_a_table_does(capsys, wavs, tmp_path):
    target = tmp_path / "new" / "folder" / "tags.json"
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--format", "json", "-o",
                           str(target))
    assert status == 0, err
    assert json.loads(target.read_text())["files"][0]["status"] == "ok"


def test_a_file_named_several_times_is_tagged_once(capsys, wavs, tmp_path, monkeypatch):
    """As in collections: by a link, by a folder, by an @list and by its name, in text, CSV and
    JSON alike, where it came first and by its name without links."""
    folder = tmp_path / "music"
    folder.mkdir()
    (folder / "song.wav").write_bytes(wavs["PCM_16"].read_bytes())
    (tmp_path / "link.wav").symlink_to(folder / "song.wav")
    monkeypatch.chdir(tmp_path)
    names = ["link.wav", "music/song.wav", "music", "music/song.wav"]
    status, out, err = run(capsys, "tag", *names, "-n", "1")
    assert status == 0, err
    assert out.count("[music/song.wav]") == 1 and "link.wav" not in out, out
    status, out, err = run(capsys, "tag", *names, "-n", "1", "-f", "csv")
    assert status == 0 and out.splitlines()[1:] == [out.splitlines()[1]], out
    status, out, err = run(capsys, "tag", *names, "-f", "json")
    assert status == 0 and [f["file"] for f in json.loads(out)["files"]] == ["music/song.wav"]
    (tmp_path / "list.txt").write_text("music/song.wav\n")  # an @list names it too
    status, out, err = run(capsys, "tag", "@list.txt", "music/song.wav", "-n", "1")
    assert status == 0 and out.count(" top 1 tag") == 1, out
    assert f"[{tmp_path}/music/song.wav]" in out  # by the list's name, which came first


@pytest.mark.parametrize("command", ["tag", "embed", "stream", "info", "train-head"])
def test_an_unknown_option_of_a_command_shows_the_commands_usage(capsys, command):
    required = ["-o", "out"] if command in ("embed", "train-head") else []
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "x.wav", *required, "--bogus"])
    err = capsys.readouterr().err
    assert stop.value.code == 2  # the command line is wrong
    assert err.startswith(f"usage: jaxmir {command} ")  # not jaxmir's own, which names no option
    assert f"jaxmir {command}: error: unrecognized arguments: --bogus" in err, err
    with pytest.raises(SystemExit) as stop:  # one of jaxmir's own, before the command
        cli.main(["--bogus", command, "x.wav", *required])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("usage: jaxmir [")
    assert "jaxmir: error: unrecognized arguments: --bogus" in err, err


def test_only_tag_s_overwrite_says_it_replaces_reports_and_pictures(capsys):
    """embed writes neither a report nor a --plot picture: its --overwrite names tables alone."""
    for command, reports in (("tag", True), ("embed", False)):
        with pytest.raises(SystemExit) as stop:
            cli.main([command, "--help"])
        said = " ".join(capsys.readouterr().out.split())  # argparse's line breaks aside
        assert stop.value.code == 0 and "--overwrite start a table or folder --output" in said
        assert ("replace an existing report or --plot picture" in said) == reports, command


def test_a_damaged_file_too_short_for_a_patch_says_it_is_damaged(capsys, tmp_path):
    """A 4-s FLAC cut at half its bytes decodes to 2 s: too short, and the reason why was lost."""
    whole = tmp_path / "whole.flac"
    soundfile.write(whole, tone(4.0), SR)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    status, out, err = run(capsys, "tag", str(cut))
    assert status == 1
    assert f"{cut}: " in err and "is too short for one patch" in err
    assert "give longer audio (damaged audio: " in err \
        and "of the 4.00 s its header declares)" in err
    assert err.count(str(cut)) == 1, err  # the path is named once
    # the ways to pad it as the command line spells them, not as Python's keywords
    assert "with --last-patch discard (Essentia would return no predictions); pass --last-patch " \
        "repeat, --pad zero or --pad repeat to get one padded patch" in err, err
    assert "pad='zero'" not in err
    # in a collection too, its files decoded in threads (the model cuts them, apart)
    for jobs in ("0", "2"):
        rows = tmp_path / f"rows{jobs}.jsonl"
        status, out, err = run(capsys, "tag", str(cut), "-o", str(rows), "-j", jobs)
        error = json.loads(rows.read_text())["error"]
        assert status == 1 and "is too short for one patch" in error, error
        assert "longer audio (damaged audio: " in error and error.count(str(cut)) == 1, error


def test_a_file_is_tagged_beside_an_at_list_of_its_name_that_fails(capsys, wavs, tmp_path,
                                                                    monkeypatch):
    """``@at.wav`` (a list, unreadable) and ``./@at.wav``, as its error advises: the failed
    argument is one by its name alone, not by the file its name also spells, which went
    untagged as a second name of it."""
    shutil.copy(wavs["PCM_16"], tmp_path / "@at.wav")
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "tag", "@at.wav", "./@at.wav", "-f", "json", "-n", "1")
    assert status == 1 and "cannot read the list of paths" in err, err
    files = json.loads(out)["files"]
    assert [(f["file"], "error" in f) for f in files] == [("@at.wav", True), ("./@at.wav", False)]


def test_bf16_is_opt_in(capsys, wavs, musicnn):
    path = str(wavs["PCM_16"])
    taggrams = {}
    for flag in ((), ("--bf16",)):
        status, out, err = run(capsys, "tag", path, "--format", "json", *flag)
        assert status == 0, err
        report = json.loads(out)
        assert report["dtype"] == ("bfloat16" if flag else "float32")
        taggrams[bool(flag)] = np.asarray(report["files"][0]["taggram"])
    audio = jaxmir.load_audio(path, 16000)
    np.testing.assert_allclose(taggrams[True], musicnn.astype("bfloat16").predict(audio, 16000),
                               atol=1e-6)
    deviation = np.max(np.abs(taggrams[True] - taggrams[False]))
    assert 1e-4 < deviation < BF16_TAGS_ATOL, deviation


def test_bad_files_are_reported_and_the_others_go_on(capsys, wavs):
    bad = ["garbage", "folder", "short", "empty", "nan"]
    paths = ([str(wavs["PCM_16"])] + [str(wavs[b]) for b in bad]
             + [str(wavs["FLOAT"]), "/no/such.wav"])
    status, out, err = run(capsys, "tag", *paths, "--format", "json")
    assert status == 1
    assert "Traceback" not in err
    errors = {line for line in err.splitlines() if line.startswith("jaxmir: error: ")}
    assert len(errors) == len(bad) + 1
    problems = {"garbage": "cannot be read", "folder": "no audio files in this folder",
                "short": "too short", "empty": "no samples", "nan": "NaN"}
    for name, problem in problems.items():
        assert any(str(wavs[name]) in line and problem in line for line in errors), (name, err)
    assert any("/no/such.wav" in line and "no such file" in line for line in errors)
    # each line names its file once, at its start
    named = {line: [p for p in paths if line.startswith(f"jaxmir: error: {p}: ")]
             for line in errors}
    assert all(names and line.count(names[0]) == 1 for line, names in named.items()), err
    # the way out, in this command's own flags (test_short_file_with_pad takes it)
    assert any(str(wavs["short"]) in line and "--pad zero" in line for line in errors)
    report = json.loads(out)
    ok = [f for f in report["files"] if "error" not in f]
    assert [f["file"] for f in ok] == [str(wavs["PCM_16"]), str(wavs["FLOAT"])]
    assert len(report["files"]) == len(paths)


def test_options_without_effect_are_named(capsys, wavs, tmp_path):
    """Per-file printing options with a table output, and the table's options without one, are
    each named in one line on standard error; the run goes on."""
    table = tmp_path / "tags.jsonl"
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "-o", str(table), "-f", "json",
                           "--top", "5")
    assert status == 0 and table.is_file(), err
    warned = [line for line in err.splitlines() if line.startswith("jaxmir: warning: ")]
    assert [line.split()[2] for line in warned] == ["--format", "--top"], err
    assert all("holds every label's mean" in line for line in warned)
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--per-patch", "--jobs", "2",
                           "--processes", "--engine", "ray", "--actors", "2", "--flush-every", "5")
    assert status == 0 and "top 3 tags" in out, err
    warned = [line for line in err.splitlines() if line.startswith("jaxmir: warning: ")]
    assert [line.split()[2] for line in warned] == ["--per-patch", "--jobs", "--processes",
                                                    "--engine", "--actors", "--flush-every"], err
    # --per-patch named a CSV among its tables, where a CSV --output refuses it
    assert warned[0].endswith("--per-patch is ignored: it applies to a .parquet or .jsonl --output")
    assert warned[1].endswith("applies to a table --output (.parquet, "
                              ".jsonl, or .csv without -f csv)")
    # embed: --average means nothing to a table (and is no part of its identity: a rerun with it
    # finds the file done); --per-patch means nothing to a folder of arrays
    table = tmp_path / "emb.jsonl"
    for extra in ([], ["--average", "--flush-every", "5"]):
        status, out, err = run(capsys, "embed", str(wavs["PCM_16"]), "-o", str(table), *extra)
        assert status == 0, err
    warned = [line for line in err.splitlines() if line.startswith("jaxmir: warning: ")]
    assert [line.split()[2] for line in warned] == ["--average", "--flush-every"], err
    assert "0 ok, 0 failed, 1 already done; nothing to do" in err  # not "0.000 h in 0.0 s (0.0x)"
    status, out, err = run(capsys, "embed", str(wavs["PCM_16"]), "-o", str(tmp_path / "arrays"),
                           "--per-patch")
    assert status == 0 and "jaxmir: warning: --per-patch is ignored: a folder of .npy" in err, err


def test_decoding_options_ray_does_not_use_are_named(capsys):
    """--jobs and --processes were ignored by --engine ray without a word; --flush-every 0 was
    taken as 1."""
    from types import SimpleNamespace

    from jaxmir.collection import commands

    args = SimpleNamespace(per_patch=False, flush_every=256, actors=None, engine="ray", jobs=4,
                           processes=True)
    commands._warn_ignored(args, "parquet")
    warned = capsys.readouterr().err.splitlines()
    assert [line.split()[2] for line in warned] == ["--processes", "--jobs"]
    assert all("--engine ray decodes in Ray's CPU tasks" in line for line in warned)
    with pytest.raises(SystemExit):
        run(capsys, "tag", "a.wav", "-o", "tags.parquet", "--flush-every", "0")
    assert "argument --flush-every: expected" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # taken as the default pool before
        run(capsys, "tag", "a.wav", "-o", "tags.parquet", "--engine", "ray", "--actors", "0")
    assert "argument --actors: expected a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["2.5", "1e3", "0.9"])
def test_a_whole_number_option_refuses_other_numbers(capsys, value):
    """Not rounded to a number nobody gave (--flush-every 0.9 would say "got 0")."""
    with pytest.raises(SystemExit) as stop:
        run(capsys, "tag", "a.wav", "-o", "tags.parquet", "--jobs", value)
    assert stop.value.code == 2
    said = capsys.readouterr().err
    assert f"argument -j/--jobs: expected a whole number, got '{value}'" in said


def test_a_ray_run_ends_its_ray_session_with_interrupts_held(monkeypatch, capsys):
    """Left to Ray's exit handler, a Ctrl-C during its shutdown printed a traceback, and Ray's
    agents outlived the command."""
    import signal
    import types
    from types import SimpleNamespace

    from jaxmir.collection import commands
    from jaxmir.collection.progress import Tally

    calls = []

    def shutdown():
        calls.append(signal.getsignal(signal.SIGINT) is not signal.default_int_handler)
        state["up"] = False

    state = {"up": True}
    fake = types.SimpleNamespace(is_initialized=lambda: state["up"], shutdown=shutdown)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(commands, "collect", lambda *a, **k: Tally(total=0))
    args = SimpleNamespace(output="tags.jsonl", files=[], model=None, backbone=None, jobs=None,
                           processes=False, engine="ray", actors=None, per_patch=False,
                           overwrite=False, flush_every=256, no_progress=True, last_patch="discard",
                           pad=None, resampler="essentia")
    assert commands.run_tag(args, jaxmir.load("msd-musicnn"), None) == 0
    assert calls == [True]  # once, with Ctrl-C held


def test_short_file_with_pad(capsys, wavs):
    status, out, err = run(capsys, "tag", str(wavs["short"]), "--pad", "zero", "--format", "json")
    assert status == 0, err
    assert json.loads(out)["files"][0]["n_patches"] == 1


def test_csv_and_output_file(capsys, wavs, tmp_path):
    target = tmp_path / "tags.csv"
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), str(wavs["mono_22k"]), "--format",
                           "csv", "--top", "0", "--output", str(target))
    assert status == 0 and out == "", err
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert list(rows[0]) == ["file", "rank", "label", "score"]
    assert len(rows) == 100  # --top 0: all 50 tags of both files
    first = [r for r in rows if r["file"] == str(wavs["PCM_16"])]
    assert [int(r["rank"]) for r in first] == list(range(1, 51))
    scores = [float(r["score"]) for r in first]
    assert scores == sorted(scores, reverse=True)
    # to 6 decimals: the same file's mean tags (3 decimals left them 5e-4 apart)
    mean = jaxmir.load("msd-musicnn").predict(jaxmir.load_audio(wavs["PCM_16"]), 16000).mean(0)
    np.testing.assert_allclose(scores, np.sort(mean)[::-1], rtol=0, atol=1e-6)


def test_output_file_is_never_overwritten_unasked(capsys, wavs, tmp_path):
    target = tmp_path / "tags.json"
    target.write_text("results of yesterday")
    args = ["tag", str(wavs["PCM_16"]), "--format", "json", "-o", str(target)]
    status, out, err = run(capsys, *args)
    assert status == 1 and "--overwrite" in err and target.read_text() == "results of yesterday"
    status, out, err = run(capsys, *args, "--overwrite")
    assert status == 0, err
    assert json.loads(target.read_text())["files"][0]["file"] == str(wavs["PCM_16"])
    # a folder is refused before any file is read (a plain file named like it was written)
    for folder, code in ((f"{tmp_path / 'out'}/", 2), (str(tmp_path), 1)):  # 2: by its name
        status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "-o", folder)
        assert status == code and "is a folder; jaxmir tag writes" in err \
            and "top 3" not in out, err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tags.json"]  # no temporary file left


class FailingOutput(io.StringIO):
    """A standard output whose writes fail with ``error`` once it holds ``lines`` lines."""

    def __init__(self, error: OSError, lines: int, fileno: int):
        super().__init__()
        self.error, self.lines, self._fileno = error, lines, fileno

    def write(self, text: str) -> int:
        if text and self.getvalue().count("\n") >= self.lines:
            raise self.error
        return super().write(text)

    def fileno(self) -> int:
        return self._fileno


@pytest.mark.parametrize("command", ["tag", "embed"])
def test_standard_output_that_cannot_be_written_stops_the_run(capsys, wavs, tmp_path, monkeypatch,
                                                              command):
    """`jaxmir tag A B C | head -1` said "B: unexpected BrokenPipeError" and "C: ..." and went on
    through every file (exit 1); `> /dev/full` blamed the audio file (tag) or the output folder
    (embed, whose "file -> .npy" lines go to standard output)."""
    import errno

    from jaxmir import audio, decode, stream

    files = [str(wavs[kind]) for kind in ("PCM_16", "PCM_24", "PCM_32")]
    read = []
    for module in (audio, stream):  # a file's decoding starts there
        monkeypatch.setattr(module, "iter_blocks", lambda path, *a, **k: (
            read.append(str(path)), decode.iter_blocks(path, *a, **k))[1])
    with open(tmp_path / "stdout", "w") as sink:
        for error, status, message in (
                (BrokenPipeError(errno.EPIPE, "Broken pipe"), 141, ""),
                (OSError(errno.ENOSPC, "No space left on device"), 1,
                 "jaxmir: error: cannot write standard output: No space left on device\n")):
            read.clear()
            output = tmp_path / f"npy{status}"  # in-process decoding: the files read in order
            extra = ["-o", str(output), "--jobs", "0"] if command == "embed" else ["--top", "1"]
            monkeypatch.setattr(sys, "stdout", FailingOutput(error, 1, sink.fileno()))
            assert run(capsys, command, *files, *extra) == (status, "", message)
            assert read == files[:2]  # the run stopped at the second file's line
            if command == "embed":  # what was written is kept
                assert sorted(p.suffix for p in output.iterdir()) == [".jsonl", ".npy", ".npy"]


def test_one_tag_is_one_tag(capsys, wavs):
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--top", "1")
    assert status == 0 and f"[{wavs['PCM_16']}] top 1 tag (1 patch):\n" in out, err


def test_an_output_named_json_holds_json(capsys, wavs, tmp_path):
    """`-o tags.json` held the text report; -f still decides where it is given."""
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "-o", str(tmp_path / "tags.JSON"))
    assert status == 0 and err == "", err
    assert json.loads((tmp_path / "tags.JSON").read_text())["files"][0]["file"] \
        == str(wavs["PCM_16"])
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "-o", str(tmp_path / "x.json"),
                           "-f", "text")
    assert status == 0 and (tmp_path / "x.json").read_text().startswith("[")


def test_output_through_links_pipes_devices_and_dash(capsys, wavs, tmp_path):
    """`-o link.txt --overwrite` replaced the link by a file (its target kept the old text), a
    FIFO became a file its reader never saw, `-o /dev/stdout --overwrite` (as root) made
    /dev/stdout a file, and `-o -` wrote a file named '-'."""
    import stat
    import threading

    args = ["tag", str(wavs["PCM_16"]), "--top", "1", "--format", "csv"]
    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    target.write_text("yesterday")
    link.symlink_to(target.name)
    assert run(capsys, *args, "-o", str(link))[0] == 1  # the target exists: --overwrite
    status, out, err = run(capsys, *args, "-o", str(link), "--overwrite")
    assert status == 0 and out == "", err
    assert link.is_symlink() and target.read_text().startswith("file,rank,label,score\n")
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    status, out, err = run(capsys, *args, "-o", str(fifo))
    reader.join(timeout=60)
    assert status == 0 and stat.S_ISFIFO(fifo.stat().st_mode), err
    assert received == [target.read_text()]
    assert run(capsys, *args, "-o", os.devnull) == (0, "", "")  # a character device: no --overwrite
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    status, out, err = run(capsys, *args, "-o", "-")
    assert status == 0 and out == target.read_text() and not Path("-").exists(), err
    # outputs no run could write: the command line is wrong (exit 2; they exited 1)
    for output, message in (("-", "--output -: jaxmir embed writes a table or a folder here"),
                            ("x.csv", "CSV holds tag means only"),
                            ("x.json", "unknown kind '.json'")):
        status, out, err = run(capsys, "embed", str(wavs["PCM_16"]), "-o", str(tmp_path / output)
                               if output != "-" else output)
        assert status == 2 and message in err, (output, err)


def test_an_output_that_cannot_be_written_is_refused_before_the_work(capsys, wavs, monkeypatch,
                                                                     tmp_path):
    """`-o t.txt` in a read-only folder failed after every file was tagged, its results lost;
    `--plot` there failed as the audio file's failure ("unexpected PermissionError"); `-o ''`
    ran the model first; a link to itself was replaced by a file (a picture with --overwrite)."""
    from jaxmir import stream

    monkeypatch.setattr(stream, "iter_blocks", lambda *a, **k: pytest.fail("a file was read"))
    (tmp_path / "loop").symlink_to("loop")
    for option, message, code in ((["-o", "/proc/tags.txt"],
                                   "--output /proc/tags.txt: cannot write the output in /proc", 1),
                                  (["--plot", "/proc/taggram.png"],
                                   "--plot: cannot write the output in /proc", 1),
                                  # the command line's
                                  (["-o", ""], "--output '' names no file", 2),
                                  (["-o", f"{tmp_path}/x/"], "x/ is a folder", 2),
                                  (["-o", str(tmp_path / "loop")],
                                   "is a link that leads to no file (a loop)", 1),
                                  # "exists", and --overwrite replaced the link by a picture
                                  (["--plot", str(tmp_path / "loop"), "--overwrite"],
                                   f"--plot {tmp_path / 'loop'} is a link that leads to no file "
                                   "(a loop)", 1)):
        status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), *option)
        assert status == code and message in err, (option, err)
    assert (tmp_path / "loop").is_symlink()


def test_text_longer_than_a_pipe_holds_is_written_whole_or_not_at_all():
    """`jaxmir tag A B C -f json | head -1` (180 KB of JSON) exited 0: Python's buffered writer
    took a write longer than the pipe held as done once the pipe had taken its first 64 KiB.
    200 KB (as that JSON) and 5 MB: any text past a pipe's 64 KiB, not only a very long one."""
    for lines in (20_000, 500_000):
        child = ("import sys\n"
                 "from jaxmir.console import StandardOutputError, write_line\n"
                 "try:\n"
                 f"    write_line(''.join(f'{{i:>9}}\\n' for i in range({lines})))\n"
                 "except StandardOutputError as err:\n"
                 "    sys.exit(141 if err.reader_left else 1)\n")
        for reader, status in (("head -c 100 > /dev/null", "141"), ("wc -c", "0")):
            done = subprocess.run(["bash", "-c",
                                   f'"$0" -c "$1" | {reader}; echo "${{PIPESTATUS[0]}}"',
                                   sys.executable, child], capture_output=True, text=True,
                                  env=subprocess_env(), cwd=ROOT, timeout=120)
            assert done.stdout.split()[-1] == status, (lines, reader, done.stdout, done.stderr)
            if reader.startswith("wc"):
                assert int(done.stdout.split()[0]) == 10 * lines  # all of it


def test_a_picture_goes_through_a_pipe_and_names_are_checked(capsys, wavs, tmp_path):
    """`--plot FIFO --overwrite` replaced the pipe by a file its reader never saw (a character
    device too: /dev/null as root); `--plot -`, `--plot ''` and `--plot dir/` wrote files named
    '-', '.' and 'dir'; `--plot P -o P` tagged, drew, then refused the output."""
    import stat
    import threading

    require("matplotlib")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--plot", str(fifo), "--overwrite")
    reader.join(timeout=120)
    assert status == 0 and stat.S_ISFIFO(fifo.stat().st_mode), err
    assert received and received[0].startswith(b"\x89PNG")
    for plot, extra, message in (("-", [], "--plot '-': give the picture's file name"),
                                 ("", [], "--plot '': give the picture's file name"),
                                 (f"{tmp_path}/pictures/", [], "give the picture's file name"),
                                 (str(tmp_path / "same"), ["-o", str(tmp_path / "same")],
                                  "is also the --output"),
                                 (f"{tmp_path}/./same", ["-o", str(tmp_path / "same")],
                                  "is also the --output"),
                                 # failed file by file, after the model ran
                                 (str(tmp_path / "p.txt"), [], "matplotlib writes no '.txt'")):
        status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--plot", plot, *extra)
        assert status == 2 and message in err, (plot, err)  # the command line is wrong
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.png"]
    # an extension in capitals is the format all the same (--plot T.PNG was refused)
    from jaxmir.plot import check_format

    for name in ("t.PNG", "t.Svg", "t.png", "t"):
        check_format(tmp_path / name)


def test_scores_line_up_under_wide_and_combining_labels():
    """Labels were padded by their length in characters: a CJK label's scores stood two columns
    right of the others' for each character, a combining accent's one left."""
    from jaxmir.console import columns

    # and an invisible format character (a zero-width joiner) takes no column either; a soft
    # hyphen, which terminals draw, takes one (glibc's wcwidth: 1); fullwidth Latin (Unicode's
    # East Asian Width F, not W) takes two, as glibc's wcwidth says, and halfwidth katakana one
    labels = ["日本", "rock", "cafe\u0301", "ü", "कु", "สั้น", "\u1100\u1161", "a\u200db",
              "pop\u00ad", "ＲＯ", "ｱｲ"]
    block = cli.text_block("a.wav", {"n_patches": 1, "top": [
        {"label": label, "score": 0.5} for label in labels]})
    rows = block.splitlines()[1:]
    assert [columns(row[:row.index("0.5000")]) for row in rows] == [9] * 11, rows
    assert [columns(label) for label in labels] == [4, 4, 4, 1, 1, 2, 2, 2, 4, 4, 2]


def test_pictures_already_there_are_refused_before_any_work_counting_the_others(capsys, wavs,
                                                                                tmp_path):
    """Three files, two of whose pictures are there: the first named, then how many more."""
    files = [str(wavs[name]) for name in ("PCM_16", "PCM_24", "FLOAT")]
    target = tmp_path / "p.png"
    pictures = {file: tmp_path / f"p-{Path(file).stem}.png" for file in files}  # PATH-stem.png
    for file in files[1:]:
        pictures[file].write_bytes(b"yesterday's picture")
    status, out, err = run(capsys, "tag", *files, "--plot", str(target))
    assert status == 1 and out == "", err
    assert err == f"jaxmir: error: --plot: {pictures[files[1]]} exists (and 1 more); give " \
        "another path, or --overwrite to replace it\n"
    assert all(pictures[file].read_bytes() == b"yesterday's picture" for file in files[1:])
    # a --plot without a suffix names them .png all the same (PATH-stem.png), as its help says
    status, out, err = run(capsys, "tag", *files, "--plot", str(tmp_path / "p"))
    assert status == 1 and f"--plot: {pictures[files[1]]} exists (and 1 more)" in err, err
    # one picture there is named alone: no "(and 0 more)"
    status, out, err = run(capsys, "tag", files[1], "--plot", str(pictures[files[1]]))
    assert status == 1 and err == f"jaxmir: error: --plot: {pictures[files[1]]} exists; give " \
        "another path, or --overwrite to replace it\n", err


def test_a_taggram_with_more_starts_than_patches_is_refused(tmp_path):
    """It was matplotlib's TypeError about the mesh's dimensions."""
    from jaxmir.errors import JaxmirError
    from jaxmir.plot import save_taggram

    require("matplotlib")
    with pytest.raises(JaxmirError, match=r"taggram \[3, 2\] does not match 4 patch starts"):
        save_taggram(tmp_path / "u.png", np.full((3, 2), 0.5), np.arange(4) * 1.5, ["a", "b"], 3.0)
    # labels for more rows than the taggram's are refused as well (not matplotlib's TypeError)
    with pytest.raises(JaxmirError, match=r"taggram \[3, 2\] does not match 3 patch starts and 3 "):
        save_taggram(tmp_path / "u.png", np.full((3, 2), 0.5), np.arange(3) * 1.5, ["a", "b", "c"],
                     3.0)
    # a taggram of one dimension too (it was an IndexError)
    with pytest.raises(JaxmirError, match=r"taggram \[3\] does not match 3 patch starts and 3 "):
        save_taggram(tmp_path / "u.png", np.full(3, 0.5), np.arange(3) * 1.5, ["a", "b", "c"], 3.0)
    assert not (tmp_path / "u.png").exists()


def test_glyphs_a_picture_s_fonts_lack_are_one_warning(tmp_path):
    """matplotlib warns once a glyph and layout (8 lines a picture for two CJK characters, in
    Python's two-line form on the command line); a taggram's picture says it in one warning."""
    import warnings

    from jaxmir.errors import JaxmirWarning
    from jaxmir.plot import save_taggram

    require("matplotlib")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_taggram(tmp_path / "t.png", np.full((3, 2), 0.5), np.arange(3) * 1.5,
                     ["日本", "música"], 3.0, title="日本")
    assert [(w.category, str(w.message)) for w in caught] == [
        (JaxmirWarning, f"{tmp_path / 't.png'}: matplotlib's fonts lack 日 本 (of the labels or "
                        "the title), drawn as boxes")]
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    from jaxmir import plot  # matplotlib's other warnings: as the caller's filters say

    def drawing(*args):
        draw(*args)
        warnings.warn("another warning", UserWarning)

    draw = plot._draw
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(plot, "_draw", drawing)
        for ignored in (False, True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if ignored:  # by the module that raised it, as a filter of matplotlib's would
                    warnings.filterwarnings("ignore", module=__name__)
                save_taggram(tmp_path / "u.png", np.full((1, 1), 0.5), np.zeros(1), ["rock"], 3.0)
            assert [str(w.message) for w in caught] == ([] if ignored else ["another warning"])


def test_a_taggram_s_columns_span_their_patches(tmp_path, monkeypatch):
    """Each column runs from its patch's start to the next one's, the last for a patch: the last
    ended where it began, unseen (a one-patch taggram was blank)."""
    require("matplotlib")
    from jaxmir import plot

    spans, draw = [], plot._draw

    def drawing(figure, axes, *args):
        draw(figure, axes, *args)
        spans.append(axes.get_xlim())

    monkeypatch.setattr(plot, "_draw", drawing)
    plot.save_taggram(tmp_path / "t.png", np.full((3, 2), 0.9), np.arange(3) * 1.5, ["a", "b"], 3.0)
    plot.save_taggram(tmp_path / "u.png", np.full((1, 2), 0.9), np.zeros(1), ["a", "b"], 3.0)
    assert spans == [(0.0, 6.0), (0.0, 3.0)]


def test_a_taggram_s_rows_colours_format_and_figure(tmp_path, monkeypatch):
    """The first label is the top row, each tick at its row's middle; the colours run from 0 (a
    taggram of low scores is dark) to its highest score; the suffix picks the format (none: PNG);
    pyplot's figure is closed, drawn or not (pyplot keeps each open figure)."""
    require("matplotlib")
    import matplotlib.pyplot as plt

    from jaxmir import plot

    drawn, draw = [], plot._draw

    def drawing(figure, axes, *args):
        draw(figure, axes, *args)
        drawn.append((axes.get_ylim(), list(axes.get_yticks()),
                      [tick.get_text() for tick in axes.get_yticklabels()],
                      axes.collections[0].get_clim()))

    monkeypatch.setattr(plot, "_draw", drawing)
    open_figures = plt.get_fignums()
    taggram = np.array([[0.125, 0.375, 0.25], [0.5, 0.25, 0.0625]])  # exact in float32
    starts, labels = np.arange(2) * 1.5, ["a", "b", "c"]
    plot.save_taggram(tmp_path / "t.svg", taggram, starts, labels, 3.0)
    assert drawn == [((3.0, 0.0), [0.5, 1.5, 2.5], labels, (0.0, 0.5))]
    for name, magic in (("t.svg", b"<?xml"), ("t.pdf", b"%PDF"), ("t", b"\x89PNG")):
        plot.save_taggram(tmp_path / name, taggram, starts, labels, 3.0)
        assert (tmp_path / name).read_bytes().startswith(magic), name
    assert plt.get_fignums() == open_figures

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot, "write_atomically", full)
    with pytest.raises(OSError):
        plot.save_taggram(tmp_path / "u.png", taggram, starts, labels, 3.0)
    assert plt.get_fignums() == open_figures


def test_read_only_outputs_are_refused_before_the_work(capsys, wavs, tmp_path, monkeypatch):
    """A read-only --output or --plot was refused at the write, after every file's work: the
    results were printed nowhere. Root may write any file: simulated."""
    from jaxmir import atomic

    require("matplotlib")
    report, picture = tmp_path / "r.json", tmp_path / "p.png"
    for path in (report, picture):
        path.write_text("kept")
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: mode != os.W_OK)
    for option, path in (("-o", report), ("--plot", picture)):
        status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "-f", "json", option,
                               str(path), "--overwrite")
        assert status == 1 and out == "", out
        assert f"{option.replace('-o', '--output')} {path} cannot be written (Permission " \
            "denied)" in err and err.count("\n") == 1, err
        assert path.read_text() == "kept"


def test_a_picture_that_cannot_be_written_is_named(capsys, wavs, tmp_path, monkeypatch):
    """A full disk under --plot said "f.wav: unexpected OSError: [Errno 28] No space left on
    device", naming the audio file, not the picture."""
    import errno

    from jaxmir import plot

    require("matplotlib")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plot, "write_atomically", full)
    picture = tmp_path / "t.png"
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--plot", str(picture))
    assert status == 1 and "unexpected" not in err, err
    assert f"--plot {picture} cannot be written (No space left on device)" in err


def test_pictures_of_a_folder_and_a_relative_path_and_of_undecodable_names(capsys, wavs, tmp_path,
                                                                           monkeypatch):
    """A folder (its files absolute) with a relative path ended in a traceback ("Can't mix
    absolute and relative paths"); a file name that is not UTF-8 failed the file, its tags lost
    (matplotlib refused the title)."""
    import shutil

    require("matplotlib")
    folder = tmp_path / "set"
    folder.mkdir()
    shutil.copy(wavs["PCM_16"], folder / "a.wav")
    shutil.copy(wavs["PCM_16"], os.fsencode(folder) + b"/bad\xff\xfename.wav")
    shutil.copy(wavs["mono_22k"], tmp_path / "b.flac")
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "tag", "set", "b.flac", "--plot", "pics/t.png")
    assert status == 0, err
    # a strict UTF-8 stream (a UTF-8 locale's; the capture's here) took no such name: a traceback
    assert "set/bad\\udcff\\udcfename.wav] top 3 tags" in out
    for kind in ("text", "csv"):  # and -o wrote the text strictly: a traceback, no file
        status, out, err = run(capsys, "tag", "set", "-f", kind, "-o", f"tags.{kind}")
        assert status == 0 and "bad\\udcff\\udcfename.wav" in Path(f"tags.{kind}").read_text(), err
    assert sorted(os.listdir(os.fsencode(tmp_path / "pics"))) == [
        b"t-b.png", b"t-set-a.png", b"t-set-bad\xff\xfename.png"]


def test_a_link_to_a_pipe_is_written_through():
    """/dev/stdout to a pipe: its real path (/proc/<pid>/fd/pipe:[...]) names no file, so
    following the link first failed ("No such file or directory": `--plot /dev/stdout`, and
    `-o /dev/stdout` once -o wrote through the same function)."""
    child = ("from jaxmir.atomic import write_atomically\n"
             "write_atomically('/dev/stdout', lambda handle: handle.write(b'through'))\n")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True,
                          env=subprocess_env(), cwd=ROOT, timeout=120)
    assert (done.returncode, done.stdout) == (0, b"through"), done.stderr


def test_a_pipe_whose_reader_left_ends_quietly(capsys, wavs, monkeypatch, tmp_path):
    """`-o FIFO` (or /dev/stdout) whose reader left, as `| head -c 10` does, said "--output ...
    cannot be written (Broken pipe)" and exited 1, where standard output's reader leaving ends
    the command with the shell's status for it."""
    class LeftPipe:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    from jaxmir import atomic

    os.mkfifo(tmp_path / "pipe.json")
    monkeypatch.setattr(atomic, "open", LeftPipe, raising=False)  # the FIFO's reader has left
    with open(tmp_path / "stdout", "w") as sink:  # main points standard output at /dev/null
        monkeypatch.setattr(sys, "stdout", FailingOutput(OSError(), 100, sink.fileno()))
        assert run(capsys, "tag", str(wavs["PCM_16"]), "-o", str(tmp_path / "pipe.json")) \
            == (141, "", "")


def test_unwritable_output(capsys, wavs, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    target = tmp_path / "a_file" / "tags.json"
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--format", "json", "-o",
                           str(target))
    assert status == 1 and "Traceback" not in err and str(target) in err


def test_overlap_and_patch_hop(capsys, wavs, tmp_path):
    long = wavs["mono_22k"]  # 4.5 s: 283 frames
    hops, starts = {}, {}
    for option in (["--overlap", "1.5"], ["--overlap", "0"], ["--patch-hop", "40"],
                   ["--patch-hop", "187"], ["--patch-hop", "0"], []):
        status, out, err = run(capsys, "tag", str(long), "--format", "json", *option)
        assert status == 0, err
        report = json.loads(out)
        hops[" ".join(option)] = (report["patch_hop_frames"], report["patch_hop_s"],
                                  report["files"][0]["n_patches"])
        starts[" ".join(option)] = report["files"][0]["patch_starts_s"]
    # frames of 256 samples at 16 kHz: 16 ms; --patch-hop 0 is a patch, as Essentia takes it
    assert hops == {"--overlap 1.5": (93, 1.488, 2), "--overlap 0": (187, 2.992, 1),
                    "--patch-hop 40": (40, 0.64, 3), "--patch-hop 187": (187, 2.992, 1),
                    "--patch-hop 0": (187, 2.992, 1), "": (93, 1.488, 2)}
    assert starts["--patch-hop 40"] == [0.0, 0.64, 1.28] and starts[""] == [0.0, 1.488]
    # the header says how the patches were cut
    status, out, err = run(capsys, "tag", str(long), "--format", "json", "--last-patch", "repeat",
                           "--pad", "zero")
    assert status == 0, err
    report = json.loads(out)
    assert (report["last_patch"], report["pad"], report["files"][0]["n_patches"]) == (
        "repeat", "zero", 3)
    status, _, err = run(capsys, "tag", str(long), "--overlap", "3")
    assert status == 2 and "--overlap 3" in err  # the command line is wrong (it was 1)
    status, _, err = run(capsys, "tag", str(long), "--overlap", "-1")  # a hop past the patch
    assert status == 2 and "--overlap -1 s: " in err and "must be at least 0" in err
    # 2.99 s is less than a patch (2.992 s) but rounds to a hop of 0 frames: the bound is given
    status, _, err = run(capsys, "tag", str(long), "--overlap", "2.99")
    assert status == 2 and "at most 2.976 s (patches one frame apart)" in err, err
    status, _, err = run(capsys, "tag", str(long), "--overlap", "2.976")
    assert status == 0, err
    # a hop past the patch: refused once, not by each file (then retried by every rerun)
    for command in (["tag", str(long)], ["embed", str(long), "-o", str(tmp_path / "x.jsonl")]):
        status, _, err = run(capsys, *command, "--patch-hop", "200")
        assert status == 2 and err == "jaxmir: error: --patch-hop 200: patches last 187 frames, " \
            "so the hop is at most 187 (0: a patch, as Essentia takes it)\n"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tag", str(long), "--overlap", "1", "--patch-hop", "40"])
    assert exit_.value.code == 2
    capsys.readouterr()


def test_embed(capsys, wavs, tmp_path, musicnn):
    out_dir = tmp_path / "embeddings"
    other = tmp_path / "other"
    other.mkdir()
    same_stem = other / wavs["PCM_16"].name
    same_stem.write_bytes(wavs["PCM_16"].read_bytes())
    files = [str(wavs["PCM_16"]), str(wavs["mono_22k"]), str(wavs["nan"]), str(same_stem)]
    status, out, err = run(capsys, "embed", *files, "--output", str(out_dir), "--jobs", "0")
    assert status == 1 and str(wavs["nan"]) in err
    written = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*.npy"))
    assert len(written) == 3 and (out_dir / "index.jsonl").is_file()
    assert out.count(" -> ") == 3
    # the same stem in two folders: two files, named from their paths, whatever the order given
    reordered = tmp_path / "reordered"
    assert run(capsys, "embed", *reversed(files), "-o", str(reordered), "--jobs", "0")[0] == 1
    assert sorted(str(p.relative_to(reordered)) for p in reordered.rglob("*.npy")) == written
    pcm16 = [name for name in written if name.endswith("stereo_pcm_16.npy")]
    assert len(pcm16) == 2
    emb = np.load(out_dir / pcm16[0])
    want = musicnn.predict(jaxmir.load_audio(wavs["PCM_16"]), 16000, output="model/dense/BiasAdd")
    assert emb.shape == (1, 200) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, want, atol=1e-5)
    np.testing.assert_array_equal(np.load(out_dir / pcm16[1]), emb)
    # other settings into the same folder: refused, nothing overwritten, unless --overwrite
    mono = next(name for name in written if name.endswith("mono_22k.npy"))
    before = (out_dir / mono).read_bytes()
    again = ["embed", str(wavs["mono_22k"]), "-o", str(out_dir), "--layer", "penultimate",
             "--patch-hop", "40", "--jobs", "0"]
    status, _, err = run(capsys, *again)
    assert status == 1 and "penultimate" in err and (out_dir / mono).read_bytes() == before
    status, _, err = run(capsys, *again, "--overwrite")
    assert status == 0, err
    rows = [json.loads(line) for line in (out_dir / "index.jsonl").read_text().splitlines()]
    assert [row["path"] for row in rows] == [str(wavs["mono_22k"])]
    assert np.load(out_dir / rows[0]["npy"]).shape == (3, 200)


def test_embed_average_prints_the_shape_of_the_mean_it_writes(capsys, wavs, tmp_path, musicnn):
    """``embed --average`` into a folder writes each file's mean over patches; its ``-> FILE
    [SHAPE]`` line gives that array's shape, not the patches' it was taken over."""
    out_dir = tmp_path / "means"
    status, out, err = run(capsys, "embed", str(wavs["mono_22k"]), "-o", str(out_dir),
                           "--average", "--patch-hop", "40", "--jobs", "0")
    assert status == 0, err
    (line,) = out.splitlines()
    where = line.split(" -> ")[1].rsplit(" [", 1)[0]
    mean = np.load(where)
    assert line.endswith(f" {list(mean.shape)}"), line
    audio, rate = jaxmir.load_audio(wavs["mono_22k"]), 16000
    patches = musicnn.predict(audio, rate, output="model/dense/BiasAdd", patch_hop=40)
    assert patches.shape[0] > 1  # a mean over several patches: the two shapes differ
    np.testing.assert_allclose(mean, patches.mean(axis=0), atol=1e-5)


def test_embed_unknown_layer(capsys, wavs, tmp_path):
    status, _, err = run(capsys, "embed", str(wavs["PCM_16"]), "-o", str(tmp_path), "--layer",
                         "nope")
    assert status == 1 and "unknown output 'nope'" in err and "model/dense/BiasAdd" in err


def test_info(capsys, wavs, tmp_path):
    status, out, err = run(capsys, "info", "msd-musicnn")
    assert status == 0, err
    assert "architecture: musicnn" in out and "parameters: 792,079" in out
    assert "model/dense/BiasAdd" in out and "penultimate" in out and "rock" in out
    assert "patches: 187 frames (2.99 s), default hop 93 frames (1.49 s)\n" in out
    assert "a frame every 16 ms at 16 kHz\n" in out
    status, out, err = run(capsys, "info",
                           str(shared_fixture("essentia-models/small_vggish_init.pb")))
    assert status == 0, err
    assert "vggish" in out and "patches: 96 frames (0.96 s)" in out
    assert "pool2x2," in out and "stride" not in out  # windows and strides alike
    assert "\n  conv3x3 1 relu pool2x2," in out
    # musicnn's VGG: its first pool, 4x1, moves 2x2 (it read "pool4x1", as if it moved 4x1)
    status, out, err = run(capsys, "info", "msd-vgg")
    assert status == 0 and "BN pool4x1 (stride 2x2), conv3x3 128" in out \
        and out.count("stride") == 1
    assert "\n  BN, conv3x3 128 relu BN pool4x1" in out  # an input batch norm, as VGGish has not
    head = str(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    status, out, err = run(capsys, "tag", str(shared_fixture("audio/vignesh.wav")), "--model", head)
    assert status == 1 and out == "" and f"{head}: this is an embedding head" in err
    # info said what they are, and nothing of audio: it says why they take none, as tag does
    status, out, err = run(capsys, "info", head)
    assert status == 0 and "audio: none; this is an embedding head: it takes [200] embeddings" \
        in out and "--backbone, e.g. 'msd-musicnn'" in out and "patches:" not in out
    # its input, flatten_in_input, is no output: it was listed as one
    outputs = next(line for line in out.splitlines() if line.startswith("outputs by name: "))
    assert "predictions" in outputs and "flatten_in_input" not in outputs
    status, out, err = run(capsys, "info", str(shared_fixture("essentia-models/vgg4.pb")))
    assert status == 0 and "audio: none; this vgg model takes [128, 128] inputs" in out
    status, out, err = run(capsys, "info", "no-such-model")
    assert status == 1 and out == "" and "neither a file nor a shipped model" in err
    # a regression head's values, in their own order: not ranked (CSV ranked them 1, 2); noise's
    # second value is the larger (about 5.9 against 4.5)
    noise = tmp_path / "noise.wav"
    soundfile.write(noise, 0.3 * np.random.default_rng(0).standard_normal((4 * SR, 2)), SR)
    status, out, err = run(capsys, "tag", str(noise), "--model", head, "--backbone",
                           "msd-musicnn", "--format", "csv")
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["rank"], row["label"]) for row in rows] == [("", "class_0"), ("", "class_1")]
    assert float(rows[1]["score"]) > float(rows[0]["score"]) + 0.5  # sorted, they would swap
    # and --top, which keeps the best scores, has none to keep: it was ignored without a word
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--model", head, "--backbone",
                           "msd-musicnn", "--top", "1")
    assert status == 0 and "class_0" in out and "class_1" in out, err
    assert "jaxmir: warning: --top is ignored: the model gives values, not class scores" in err
    # given as its default's value it was ignored without a word, and so was "-n 3" for a table
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--model", head, "--backbone",
                           "msd-musicnn", "-n", "3")
    assert status == 0 and "jaxmir: warning: --top is ignored: the model gives values" in err
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "-n", "3", "-o",
                           str(tmp_path / "tags.csv"))
    assert status == 0 and "jaxmir: warning: --top is ignored: a table --output" in err, err
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--model", head, "--backbone",
                           "msd-musicnn")
    assert status == 0 and "ignored" not in err, err


def test_a_head_runs_on_the_backbone_its_metadata_names_in_every_engine(capsys, wavs, tmp_path,
                                                                        monkeypatch):
    """``--model head.pb`` without ``--backbone`` is recorded as with ``--backbone msd-musicnn`` (a
    rerun with it resumes), and Ray's actors are given that backbone: they loaded the head alone
    and failed ("this is an embedding head")."""
    import jax

    from jaxmir.collection import ray_engine
    from jaxmir.train import export, fit

    params = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 200, 100, 2))
    head = export.export_head(params, "softmax", ("a", "b"), tmp_path / "head", "msd-musicnn",
                              (187, 96), "model/dense/BiasAdd")[".pb"]
    out = str(tmp_path / "tags.jsonl")
    tag = ("tag", str(wavs["PCM_16"]), "-o", out, "--model", str(head))
    status, _, err = run(capsys, *tag)
    assert status == 0 and "using the backbone its metadata names: msd-musicnn" in err, err
    assert "warning" not in err  # the usual way to run a head: said, not warned of
    status, _, err = run(capsys, *tag, "--backbone", "msd-musicnn")
    assert status == 0 and "1 already done" in err, err
    given = []
    monkeypatch.setattr(ray_engine, "run", lambda name, backbone, *rest: given.append(backbone))
    status, _, err = run(capsys, *tag, "--engine", "ray", "--overwrite")
    assert status == 0 and given == ["msd-musicnn"], err


def test_a_head_trained_on_a_backbone_file_does_not_run_on_a_shipped_model_of_its_name(
        capsys, wavs, tmp_path):
    """A head trained on `msd-musicnn-3.pb` (any weights: here Dortmund's genre model) ran, its
    file gone from beside it, on the shipped msd-musicnn, with a warning of 'other bytes' that
    a head trained on Essentia's own msd-musicnn-1.pb gave too (a .pb's digest against an .npz's):
    wrong outputs, exit status 0. The file is asked for; beside the head it is taken."""
    import jax

    from jaxmir.train import export, fit

    graph = tmp_path / "graphs" / "msd-musicnn-3.pb"
    graph.parent.mkdir()
    shutil.copy(shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb"), graph)
    params = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 200, 100, 2))
    head = export.export_head(params, "softmax", ("a", "b"), tmp_path / "head", str(graph),
                              (187, 96), "model/dense/BiasAdd")[".pb"]
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--model", str(head))
    assert status == 1 and out == "", err
    assert f"{head} is an embedding head trained on the backbone file 'msd-musicnn-3' (its " \
        "sha256 in the metadata), which is not beside it (msd-musicnn-3.npz or .pb); put it " \
        "there, or give it with --backbone PATH (the shipped model of that name is another " \
        "file: its sha256 is not the one recorded)" in err, err
    status, out, err = run(capsys, "info", str(head))
    assert status == 0 and "backbone (its metadata's): msd-musicnn-3, not found beside it\n" in out
    shutil.copy(graph, tmp_path / "msd-musicnn-3.pb")
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--model", str(head))
    assert status == 0 and "warning" not in err, err
    assert f"using the backbone its metadata names: {tmp_path / 'msd-musicnn-3.pb'}" in err
    # trained on the shipped model's own file: that model has its bytes
    own = export.export_head(params, "softmax", ("a", "b"), tmp_path / "own",
                             str(catalog.path_of("msd-musicnn")), (187, 96),
                             "model/dense/BiasAdd")[".pb"]
    status, out, err = run(capsys, "tag", str(wavs["PCM_16"]), "--model", str(own))
    assert status == 0 and "using the backbone its metadata names: msd-musicnn" in err, err
    assert "warning" not in err


def test_vggish_model_from_the_command_line(capsys):
    graph = shared_fixture("essentia-models/small_vggish_init.pb")
    status, out, err = run(capsys, "tag", str(shared_fixture("audio/hiphop.mp3")), "--model",
                           str(graph), "--patch-hop", "0", "--format", "json", "--top", "2")
    assert status == 0, err
    entry = json.loads(out)["files"][0]
    assert entry["n_patches"] == 5
    np.testing.assert_allclose(entry["mean"], [0.49044114, 0.50241125], rtol=1e-2)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = child_env(**extra)
    env.pop("JAXMIR_NO_CACHE", None)
    return env


def test_a_name_that_is_not_utf8_is_printed_as_the_tables_write_it(tmp_path):
    """In a C or POSIX locale Python's standard output writes a name's non-UTF-8 byte back as
    it is: `jaxmir tag ... -f csv > out.csv` was no UTF-8 (the csv module failed on it), and
    under a UTF-8 locale the same name printed as \\udcff. Both now print the tables' escape."""
    name = os.fsdecode(bytes(tmp_path) + b"/caf\xe9_\xff.wav")
    soundfile.write(tmp_path / "plain.wav", tone(4.0), SR)
    os.rename(tmp_path / "plain.wav", name)
    utf8 = tmp_path / "música.wav"  # an ASCII locale's \udcc3\udcba: read again as ú
    soundfile.write(utf8, tone(4.0), SR)
    for locale, shown in (("C.UTF-8", "música"), ("POSIX", "m\\xfasica")):  # ASCII's escape
        run = subprocess.run([sys.executable, "-m", "jaxmir", "tag", name, str(utf8), "-f", "csv"],
                             capture_output=True, env=subprocess_env(LC_ALL=locale, LANG=locale,
                                                                     PYTHONUTF8="0"),
                             timeout=300, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        rows = list(csv.reader(io.StringIO(run.stdout.decode("utf-8"))))
        assert rows[1][0].endswith("/caf\\udce9_\\udcff.wav"), (locale, rows[1])
        assert any(row[0].endswith(f"/{shown}.wav") for row in rows[1:]), (locale, rows)
        report = tmp_path / f"{locale}.csv"  # a file: UTF-8 whatever the locale
        run = subprocess.run([sys.executable, "-m", "jaxmir", "tag", name, str(utf8), "-f", "csv",
                              "-o", str(report)], capture_output=True, env=subprocess_env(
                                 LC_ALL=locale, LANG=locale, PYTHONUTF8="0"), timeout=300, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        paths = dict.fromkeys(row[0] for row in list(csv.reader(io.StringIO(
            report.read_text("utf-8"))))[1:])  # a row a tag
        run = subprocess.run([sys.executable, "-m", "jaxmir", "tag", name, str(utf8), "-f", "json"],
                             capture_output=True, env=subprocess_env(
                                 LC_ALL=locale, LANG=locale, PYTHONUTF8="0"), timeout=300, cwd=ROOT)
        files = [entry["file"].rsplit("/", 1)[1] for entry in json.loads(run.stdout)["files"]]
        assert files == ["caf\\udce9_\\udcff.wav", "música.wav"], (locale, files)  # as JSONL's
        assert [path.rsplit("/", 1)[1] for path in paths] == ["caf\\udce9_\\udcff.wav",
                                                             "música.wav"], (locale, paths)


def test_python_m_jaxmir_help():
    result = subprocess.run([sys.executable, "-m", "jaxmir", "--help"], capture_output=True,
                            text=True, env=subprocess_env(), timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for command in ("tag", "embed", "info"):
        assert command in result.stdout


def test_second_run_reuses_the_compilation_cache(tmp_path, wavs):
    env = subprocess_env(JAXMIR_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "jaxmir", "tag", str(wavs["PCM_16"]), "--format", "csv"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in (tmp_path / "cache" / "jax").iterdir())
    assert any("audio_to_outputs" in name for name in entries)
    env["JAX_LOG_COMPILES"] = "1"  # logs persistent-cache hits as warnings
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert "Persistent compilation cache hit for 'jit__audio_to_outputs'" in second.stderr
    assert sorted(p.name for p in (tmp_path / "cache" / "jax").iterdir()) == entries


def test_no_cache_writes_no_cache(tmp_path, wavs):
    """--no-cache and JAXMIR_NO_CACHE=1 (the README's ways to do without the compilation cache)
    had no test: a run with either must leave the cache folder unmade."""
    for extra, flag in (({}, ["--no-cache"]), ({"JAXMIR_NO_CACHE": "1"}, [])):
        cache = tmp_path / f"cache{len(flag)}"
        env = {**subprocess_env(JAXMIR_CACHE_DIR=str(cache)), **extra}
        run = subprocess.run([sys.executable, "-m", "jaxmir", "tag", str(wavs["PCM_16"]), *flag],
                             capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        assert not cache.exists(), sorted(cache.rglob("*"))


def test_the_command_line_parses_without_loading_jax():
    """`jaxmir --help` took 0.7-1.5 s: building the parser imported the collection engine and
    label smoothing, and with them JAX and Flax. A Ctrl-C in that second ended in a traceback."""
    script = ("import sys\nimport jaxmir\nfrom jaxmir.cli import build_parser\n"
              "print('numpy' in sys.modules)\n"  # main() installs its handlers 25 ms in, not 0.2 s
              "build_parser().parse_args(['tag', 'x.wav'])\n"
              "print(sorted(m for m in ('jax', 'flax', 'optax', 'pyarrow') if m in sys.modules))\n"
              "print(sorted(set(dir(jaxmir)) - set(jaxmir.__all__)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, env=child_env(), timeout=120)
    assert result.stdout.splitlines() == ["False", "[]", "['__version__']"], result.stderr
    with pytest.raises(AttributeError, match="module 'jaxmir' has no attribute 'tfgraph.walk'"):
        getattr(jaxmir, "tfgraph.walk")


def test_a_signal_repeat_s_after_the_first_stops_again(monkeypatch):
    """Signals within REPEAT_S of the first are not raised again (timeout's SIGTERM to the command
    then to its group); one later is, measured from the first: signals three quarters of
    REPEAT_S apart still stop a stop that hangs."""
    import signal
    import types

    from jaxmir import interrupts

    repeat = interrupts.REPEAT_S
    clock = iter([0.0, 0.75 * repeat, 1.5 * repeat, 1.75 * repeat])
    monkeypatch.setattr(interrupts, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(interrupts, "_received", [])
    raised = []
    for _ in range(4):
        try:
            interrupts._raise(signal.SIGTERM, None)
            raised.append(False)
        except interrupts.Terminated:
            raised.append(True)
    assert raised == [True, False, True, True]


def test_main_leaves_the_signal_handlers_as_it_found_them():
    """The command line handles SIGINT and SIGTERM while it runs (a clean stop, noticed where a
    library swallowed it); run inside another program (tests, a notebook) it left its handlers
    installed for good."""
    import signal

    from jaxmir import cli

    found = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(["info", "msd-musicnn"]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == found


def test_a_host_s_own_handlers_and_nohup_s_ignored_hangup_are_left_alone(monkeypatch):
    """The command takes over only Python's default handlers: ``nohup`` ignores SIGHUP (a run
    would stop with the terminal), a host program has its own; both stay, during and after."""
    import signal

    from jaxmir import cli

    def host(signum, frame):
        pass

    def handlers() -> dict:
        return {kind: signal.getsignal(kind) for kind in (signal.SIGTERM, signal.SIGHUP)}

    during = {}
    info = cli.cmd_info

    def seen(args):
        during.update(handlers())
        return info(args)

    monkeypatch.setattr(cli, "cmd_info", seen)
    found = handlers()
    try:
        signal.signal(signal.SIGTERM, host)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        assert cli.main(["info", "msd-musicnn"]) == 0
        after = handlers()
    finally:
        for kind, handler in found.items():
            signal.signal(kind, handler)
    assert during == after == {signal.SIGTERM: host, signal.SIGHUP: signal.SIG_IGN}


def test_the_exit_s_own_handlers_leave_a_host_s_and_nohup_s_alone():
    """After the command, a stopping signal ends the process at once (:func:`cli.entry`), but
    only where Python's default handling was: nohup's ignored SIGHUP and a host's SIGTERM
    handler stay."""
    import signal

    def host(signum, frame):
        pass

    kinds = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    found = {kind: signal.getsignal(kind) for kind in kinds}
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, host)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        cli._exit_on_stop()
        after = {kind: signal.getsignal(kind) for kind in kinds}
    finally:
        for kind, handler in found.items():
            signal.signal(kind, handler)
    assert after[signal.SIGTERM] is host and after[signal.SIGHUP] == signal.SIG_IGN
    assert after[signal.SIGINT] not in (signal.default_int_handler, host, signal.SIG_IGN)


def test_only_decoder_threads_python_s_exit_would_wait_for_count_as_stuck():
    """After a stop, :func:`cli.entry` skips Python's exit only for a decoder thread it would
    wait for (not a daemon), still blocked after the grace; a daemon thread holds no exit."""
    import threading

    release = threading.Event()
    daemon = threading.Thread(target=release.wait, name="jaxmir-decode", daemon=True)
    waited_for = threading.Thread(target=release.wait, name="jaxmir-decode-1")
    daemon.start()
    try:
        alone = cli._stuck_workers(grace_s=0.05)
        waited_for.start()
        both = cli._stuck_workers(grace_s=0.05)
    finally:
        release.set()
    daemon.join(5)
    waited_for.join(5)
    assert (alone, both, cli._stuck_workers(grace_s=0.05)) == (False, True, False)


def test_a_single_file_shows_no_progress_bar_on_a_terminal(wavs, monkeypatch, capsys):
    """The bar counts files: shown on a terminal for several, not for one (a bar at 1/1)."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bars = []
    for files in ([wavs["PCM_16"]], [wavs["PCM_16"], wavs["FLOAT"]]):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert cli.main(["tag", *map(str, files)]) == 0, terminal.getvalue()
        bars.append(f"{len(files)}/{len(files)}" in terminal.getvalue())
    assert "top 3 tags" in capsys.readouterr().out
    assert bars == [False, True]


def test_a_signal_a_library_swallowed_still_ends_the_command_as_interrupted(monkeypatch, capsys):
    """Ctrl-C caught inside JAX's garbage-collection callback ('Exception ignored in ...') was
    lost: the command went on to its end and exited 0."""
    import signal
    import time

    from jaxmir import cli, interrupts

    def swallowed(args):  # the handler ran, and its exception went nowhere
        interrupts._received.append((signal.SIGTERM, time.monotonic()))
        return 0

    monkeypatch.setattr(cli, "cmd_info", swallowed)
    assert cli.main(["info", "msd-musicnn"]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert not interrupts._received  # forgotten once main returns: code after it is not stopped

    def swallowed_then_ctrl_c(args):  # the first signal names the stop, as its handler raised it
        interrupts._received.extend([(signal.SIGTERM, time.monotonic()),
                                     (signal.SIGINT, time.monotonic())])
        return 0

    monkeypatch.setattr(cli, "cmd_info", swallowed_then_ctrl_c)
    assert cli.main(["info", "msd-musicnn"]) == 143


def test_a_signal_received_before_a_block_is_forgotten_in_it(monkeypatch):
    """installed() forgets the signals received before it, as its docstring says: a command run
    inside a block that was stopped (a library swallowed the stop) starts unstopped, and ends
    with nothing left to raise."""
    import signal

    from jaxmir import interrupts

    def stopped() -> bool:  # asked, not raised: a stray KeyboardInterrupt ends pytest's whole run
        try:
            interrupts.raise_if_received()
        except KeyboardInterrupt:
            return True
        return False

    monkeypatch.setattr(interrupts, "_received", [])
    with interrupts.installed():
        with pytest.raises(interrupts.Terminated):  # the handler, as SIGTERM runs it
            interrupts._raise(signal.SIGTERM, None)
        assert stopped()
        with interrupts.installed():
            assert not stopped()  # received before this block
        assert not stopped()  # nor after it: what it forgot stays forgotten


def test_after_a_signal_other_unraisable_errors_are_still_reported(monkeypatch):
    """Dropped are the interrupts the handler raised where Python can only report them (a
    finalizer, a garbage-collection callback); any other error there is still reported."""
    import signal
    import time
    import types

    from jaxmir import interrupts

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with interrupts.installed():
        # before any signal, an interrupt there is no stop of ours (a host's own handler raised
        # it, or a finalizer did): reported, as nothing would raise it again
        sys.unraisablehook(types.SimpleNamespace(exc_value=KeyboardInterrupt()))
        interrupts._received.append((signal.SIGINT, time.monotonic()))
        for error in (KeyboardInterrupt(), ValueError("a finalizer's own")):
            sys.unraisablehook(types.SimpleNamespace(exc_value=error))
    assert [type(unraisable.exc_value) for unraisable in reported] == [KeyboardInterrupt,
                                                                         ValueError]


def test_a_command_run_in_a_thread_leaves_the_main_thread_s_signal_alone(monkeypatch, capsys):
    """main() in a worker thread cleared the record of a Ctrl-C the main thread's run had
    received and a library swallowed: that run then went on to its end."""
    import signal
    import threading
    import time

    from jaxmir import cli, interrupts

    def in_a_thread():
        with interrupts.installed():  # as main() runs there
            pass

    def swallowed_then_a_thread_runs(args):
        interrupts._received.append((signal.SIGINT, time.monotonic()))
        worker = threading.Thread(target=in_a_thread)
        worker.start()
        worker.join()
        return 0

    monkeypatch.setattr(cli, "cmd_info", swallowed_then_a_thread_runs)
    assert cli.main(["info", "msd-musicnn"]) == 130


def test_a_signal_inside_a_gc_callback_prints_no_traceback():
    """SIGINT or SIGTERM while JAX loads landed in JAX's garbage-collection callback: the run
    stopped (130, 143) but printed "Exception ignored in: <function _xla_gc_callback>" and a
    traceback first. Here the signal lands in a finalizer, as Python runs those callbacks."""
    script = """
import gc, os, signal, sys
from jaxmir import cli

class Finalized:
    def __del__(self):  # where Python can only report an exception: a finalizer, gc's callbacks
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10 ** 6):  # the handler runs between two bytecodes of this loop
            pass

def info(args):
    Finalized()  # collected at once: the signal lands in its finalizer
    gc.collect()
    return 0

cli.cmd_info = info
status = cli.main(["info", "msd-musicnn"])
print("status", status, "hook", sys.unraisablehook is sys.__unraisablehook__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, env=child_env(), timeout=120)
    assert result.stdout.split() == ["status", "143", "hook", "True"], result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, \
        result.stderr
    assert "terminated (SIGTERM)" in result.stderr


def test_a_signal_after_the_command_while_python_exits_ends_it_quietly():
    """Ctrl-C after the results were printed, while JAX cleaned up at exit (~0.3 s), printed
    "Exception ignored in atexit callback" and a traceback, and the process exited 0: now it
    ends at once with 130, the output flushed first. The signal lands in an exit handler."""
    script = """
import atexit, os, signal, time
from jaxmir import cli

def cleanup():  # registered first, so run last, as JAX's is, after the command
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)

atexit.register(cleanup)
cli.cmd_info = lambda args: print("done") or 0
cli.entry()
"""
    result = subprocess.run([sys.executable, "-c", script, "info", "msd-musicnn"],
                            capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=120)
    assert result.returncode == 130 and result.stdout == "done\n", result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, \
        result.stderr


def test_each_control_character_but_tab_is_escaped_and_newline_where_asked():
    """Every line written goes through ``printable(text, newlines=True)``, the last guard of a
    line no other check escaped: the range's ends, 0x0b (just past newline) and 0x1f, too."""
    from jaxmir.console import printable

    text = "\x00\x08\t\n\x0b\x1f\x7f\x9f end"
    assert printable(text) == "\\x00\\x08\t\\x0a\\x0b\\x1f\\x7f\\x9f end"
    assert printable(text, newlines=True) == "\\x00\\x08\t\n\\x0b\\x1f\\x7f\\x9f end"


def test_control_characters_in_file_names_are_shown_not_obeyed(capsys, tmp_path):
    """A file named with ESC [ 31 m (or an OSC title sequence) reached the terminal as it was in
    errors, warnings and summaries, and drove it."""
    evil = tmp_path / "evil\x1b[31mred\x1b]0;title\x07.wav"
    evil.write_bytes(b"RIFF not really a wave file")
    status, out, err = run(capsys, "tag", str(evil))
    assert status == 1 and "\x1b" not in err and "\x07" not in err, err
    assert "evil\\x1b[31mred\\x1b]0;title\\x07.wav" in err
    table = tmp_path / "rows\x1b[2J.jsonl"
    status, out, err = run(capsys, "tag", str(evil), "-o", str(table), "--no-progress")
    assert status == 1 and "\x1b" not in err and "\x07" not in err, err
    assert "rows\\x1b[2J.jsonl: 0 ok, 1 failed" in err
    row = json.loads(table.read_text())
    assert row["path"] == str(evil)  # the table keeps the name as it is
    # a newline would forge a line of its own; a byte that is not UTF-8, 0x9b, is a C1 CSI
    forged = tmp_path / "a\njaxmir: error: forged.wav"
    soundfile.write(forged, tone(4.0), SR)
    c1 = os.fsencode(tmp_path) + b"/c1_\x9b31m.wav"
    soundfile.write(tmp_path / "plain.wav", tone(4.0), SR)
    os.rename(tmp_path / "plain.wav", c1)
    status, out, err = run(capsys, "tag", str(forged), os.fsdecode(c1))
    assert status == 0 and "\njaxmir: error: forged" not in out and "\x9b" not in out, out
    assert "a\\x0ajaxmir: error: forged.wav] top 3 tags" in out
    assert "c1_\\udc9b31m.wav] top 3 tags" in out  # as the tables write it
    broken = tmp_path / "b\njaxmir: warning: forged.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    status, out, err = run(capsys, "tag", str(broken))
    assert status == 1 and "\njaxmir: warning: forged" not in err, err
    assert "b\\x0ajaxmir: warning: forged.wav" in err


def test_paths_after_options_and_names_that_are_no_model(capsys, wavs, tmp_path):
    """`tag a.wav -n 1 b.wav` was refused ("unrecognized arguments: b.wav"); `-m ""` (an unset
    $MODEL) ran msd-musicnn without a word; `jaxmir info song.wav` called it a damaged GraphDef;
    `tag -` said "no such file"; a CSV refused for embeddings left its folder and lock behind."""
    first, second = str(wavs["PCM_16"]), str(wavs["FLOAT"])
    status, out, err = run(capsys, "tag", first, "-n", "1", second)
    assert status == 0 and out.count("top 1 tag") == 2, err
    status, out, err = run(capsys, "embed", first, "-o", str(tmp_path / "e"), second, "-q")
    assert status == 0 and sorted(p.suffix for p in (tmp_path / "e").iterdir()) == \
        [".jsonl", ".npy", ".npy"], err
    assert out == ""  # -q: the arrays written are not listed
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "tag", first, "-n", "1", second, "--bogus")
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    for argv in (("tag", first, "-m", ""), ("info", "")):
        status, out, err = run(capsys, *argv)
        assert status == 1 and "'' is neither a file nor a shipped model" in err and not out
    for argv in (("tag", first, "-b", ""), ("info", "msd-musicnn", "-b", "")):  # was ignored
        status, out, err = run(capsys, *argv)
        assert status == 1 and "--backbone '' names no model" in err and not out
    status, out, err = run(capsys, "embed", "-", "-o", str(tmp_path / "dash.jsonl"))
    assert status == 1 and "-: no such file (standard input is /dev/stdin" in err
    for made in ("dash.jsonl", ".dash.jsonl.lock"):
        (tmp_path / made).unlink()
    status, out, err = run(capsys, "info", first)
    assert status == 1 and f"{first} is an audio file, not a model" in err
    status, out, err = run(capsys, "tag", "-")
    assert status == 1 and "-: no such file (standard input is /dev/stdin" in err
    for argv in (("embed", first, "-o", str(tmp_path / "np1" / "sub" / "e.csv")),
                 ("tag", first, "--per-patch", "-o", str(tmp_path / "np2" / "t.csv"))):
        status, out, err = run(capsys, *argv)
        assert status == 2 and "CSV holds tag means only" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".e.lock", "e"]  # the embed's


def test_a_stop_before_the_output_was_made_says_so(tmp_path):
    """A collection run stopped while it started said "the rows of the files done are kept" of an
    output that did not exist."""
    import argparse

    args = argparse.Namespace(writes_rows=True, output=str(tmp_path / "tags.parquet"))
    assert cli._rows_kept(args) == "; no output was written"
    # a link whose target is not made yet (the rows go to the target): it said they were kept
    linked = argparse.Namespace(writes_rows=True, output=str(tmp_path / "link.parquet"))
    os.symlink(tmp_path / "tags.parquet", linked.output)
    assert cli._rows_kept(linked) == "; no output was written"
    (tmp_path / "tags.parquet").mkdir()
    assert cli._rows_kept(linked) == "; the rows of the files done are kept"
    assert cli._rows_kept(args) == "; the rows of the files done are kept"
    assert cli._rows_kept(argparse.Namespace(output="x")) == ""
