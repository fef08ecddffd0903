"""jaxmir.train: datasets, embedding cache, MTG's head recipe, cross-validation, export, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import traceback
import warnings
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmir
from conftest import assert_parity, child_env, require, run_tf, shared_fixture
from jaxmir.errors import InputError, JaxmirError, JaxmirWarning, OptionError
from jaxmir import catalog
from jaxmir import cli as jaxmir_cli
from jaxmir.train import data, embeddings, export, fit, metrics, synthetic
from jaxmir.train.recipe import fit_head
from jaxmir.train.smoothing import SmoothingConfig
from jaxmir.weights import save_weights

FAST = fit.TrainConfig(epochs=8, patience=75)
AB, ABC = ("a", "b"), ("a", "b", "c")  # class names


def blobs(n_per_class=12, classes=3, dim=20, patches=3, seed=0):
    """Separable per-patch embeddings: ``[tracks]`` of ``[patches, dim]`` and one-hot targets."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 3
    tracks, labels = [], []
    for c in range(classes):
        for _ in range(n_per_class):
            tracks.append((centres[c] + rng.standard_normal((patches, dim))).astype(np.float32))
            labels.append(c)
    return tracks, np.eye(classes, dtype=np.float32)[labels]


@pytest.fixture(scope="module")
def audio_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.write_dataset(root / "data", classes=("pads", "drums"), per_class=4,
                                   seconds=3.5)


# -- datasets ------------------------------------------------------------------------------
def test_folder_dataset(audio_set):
    ds = data.load_dataset(audio_set)
    assert ds.task == "single" and ds.classes == ("drums", "pads") and len(ds) == 8
    assert np.array_equal(ds.targets.sum(axis=0), [4, 4])


def test_data_that_is_no_path_nor_dataset_is_an_input_error(tmp_path):
    """fit_head(["a.wav"]) raised Python's TypeError ("expected str, bytes or os.PathLike")."""
    from jaxmir.train import fit_head

    for given in (["a.wav"], 3, None):
        with pytest.raises(InputError, match="expected a class-folder tree's or a path,label "
                                             "table's path, or a Dataset"):
            fit_head(given, backbone="msd-musicnn", output=str(tmp_path / "head"))


def test_folder_dataset_reads_what_tag_reads(tmp_path, audio_set):
    """Class folders took ten extensions (a class of .caf/.w64/.WAVE files was "empty") and the
    files in hidden folders (a class's .trash/ was trained on), unlike ``jaxmir tag FOLDER``."""
    from jaxmir.collection.inputs import expand

    copy = tmp_path / "data"
    shutil.copytree(audio_set, copy)
    drums = sorted((copy / "drums").iterdir())
    for source, name in zip(drums, ("a.caf", "b.w64", "c.WAVE")):
        source.rename(copy / "drums" / name)
    (copy / "pads" / ".trash").mkdir()
    shutil.copy(drums[3], copy / "pads" / ".trash" / "deleted.wav")
    ds = data.load_dataset(copy)
    assert [Path(p).name for p in ds.paths if "drums" in p] == ["a.caf", "b.w64", "c.WAVE",
                                                                 drums[3].name]
    assert not any(".trash" in p for p in ds.paths) and len(ds) == 8
    for name in ("drums", "pads"):
        tagged = [os.path.abspath(p) for p in expand([str(copy / name)])]
        assert [os.path.abspath(p) for p in ds.paths if f"/{name}/" in p] == tagged


def test_bad_datasets(tmp_path, audio_set):
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    (one / "b").mkdir()
    for name in ("a/x.wav", "a/y.wav", "b/z.wav"):
        (one / name).write_bytes(b"")
    with pytest.raises(InputError, match="fewer than 2 audio files: b"):
        data.load_dataset(one)
    (one / "b" / "w.wav").write_bytes(b"")
    (one / "c").mkdir()  # an empty class folder, the last: counted as 0, not left out
    with pytest.raises(InputError, match=r"fewer than 2 audio files: c \(0\)"):
        data.load_dataset(one)
    (one / "c").rmdir()
    (one / "b" / "w.wav").unlink()
    (one / "b" / "z.wav").unlink()
    (one / "b").rmdir()
    with pytest.raises(InputError, match="only one class"):
        data.load_dataset(one)
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nnot_there.wav,a\n" + f"{audio_set}/pads/pads_00.wav,b\n")
    with pytest.raises(InputError, match="do not exist.*not_there.wav"):
        data.load_dataset(table)


def test_a_missing_dataset_a_row_naming_a_folder_and_a_folder_of_parquet_parts(tmp_path,
                                                                               audio_set):
    """A DATA that does not exist was not said to be missing; a row naming a folder was said to
    name a file that does not exist; a Parquet table written as a folder of parts, as jaxmir's
    own tables are, was refused as having no class folders."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(InputError, match=r"nothere: no such file or folder; expected a folder"):
        data.load_dataset(tmp_path / "nothere")
    table = tmp_path / "folders.csv"
    table.write_text(f"path,label\n{audio_set}/pads,a\n{audio_set}/pads/pads_00.wav,b\n")
    with pytest.raises(InputError, match=r"1 row\(s\) name folders, not audio files, e.g. "):
        data.load_dataset(table)
    table.write_text(f"path,label\n{audio_set}/pads,a\n{audio_set}/gone.wav,b\n")
    with pytest.raises(InputError, match=r"2 row\(s\) name files that do not exist or folders "
                                         r"\(1\), e.g. "):
        data.load_dataset(table)
    paths = sorted(str(p) for p in audio_set.rglob("*.wav"))[:6]
    labels = ["a", "b"] * 3
    parts = tmp_path / "labels.parquet"
    parts.mkdir()
    for k in range(2):
        pq.write_table(pa.table({"path": paths[k::2], "label": labels[k::2]}),
                       parts / f"part-{k}.parquet")
    dataset = data.load_dataset(parts)
    assert sorted(dataset.paths) == sorted(paths) and list(dataset.classes) == ["a", "b"]
    classes = tmp_path / "classes.parquet"  # class folders, whatever the name: still those
    for k, path in enumerate(paths):
        (classes / labels[k]).mkdir(parents=True, exist_ok=True)
        (classes / labels[k] / Path(path).name).symlink_to(path)
    assert list(data.load_dataset(classes).classes) == ["a", "b"]


def test_class_folders_are_ordered_as_a_table_s_class_ids(tmp_path, audio_set):
    """Folders 2 and 10 made outputs in the order of text, 10 first, where a table's label column
    holding the same ids gave 2 first."""
    numbered = tmp_path / "numbered"
    shutil.copytree(audio_set / "pads", numbered / "10")
    shutil.copytree(audio_set / "drums", numbered / "2")
    ds = data.load_dataset(numbered)
    assert ds.classes == ("2", "10")
    assert [ds.classes[i] for i in ds.targets.argmax(axis=1)] == [Path(p).parent.name
                                                                  for p in ds.paths]
    table = tmp_path / "ids.csv"
    table.write_text("path,label\n" + "".join(f"{p},{Path(p).parent.name}\n" for p in ds.paths))
    assert data.load_dataset(table).classes == ds.classes


def test_class_folders_of_one_number_written_two_ways_are_refused(tmp_path, audio_set):
    """Folders 1 and 01 made two classes, where a table's label column refused them."""
    twins = tmp_path / "twins"
    shutil.copytree(audio_set / "pads", twins / "1")
    shutil.copytree(audio_set / "drums", twins / "01")
    with pytest.raises(InputError, match=r"the class folders '01' and '1' are one number written "
                                         "two ways"):
        data.load_dataset(twins)


def test_class_folders_are_named_by_their_utf8_bytes(tmp_path, audio_set):
    """A folder named in bytes that are not UTF-8 (or in UTF-8, read under an ASCII locale with
    PYTHONUTF8=0) became a label holding lone surrogates, which a head exported, and a Parquet
    table of its tags then failed on with a traceback (UnicodeEncodeError)."""
    from jaxmir.labels import check_label_text

    named = tmp_path / "named"
    shutil.copytree(audio_set / "pads", named / "música")
    shutil.copytree(audio_set / "drums", named / "日本")
    code = ("import sys, json; from jaxmir.train import data; "
            "print(json.dumps([sys.getfilesystemencoding(), "
            "data.load_dataset(sys.argv[1]).classes]))")
    env = {**child_env(), "LC_ALL": "POSIX", "LANG": "POSIX", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0"}
    run = subprocess.run([sys.executable, "-c", code, str(named)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["ascii", ["música", "日本"]]
    folder = named / "música"
    for byte in (b"\xe9", b"\x80", b"\xff"):  # 0x80 and 0xff: the ends of what is not UTF-8
        renamed = os.fsdecode(bytes(named / "caf") + byte)
        os.rename(folder, renamed)
        folder = renamed
        with pytest.raises(InputError, match=rf"the class folder 'caf\\udc{byte.hex()}' is not "
                                             "named in UTF-8"):
            data.load_dataset(named)
    with pytest.raises(InputError, match="holds bytes that are not UTF-8 text"):
        check_label_text(["caf\udce9"])  # a head's JSON may hold it too


def test_two_class_folders_of_one_name_are_refused(tmp_path, audio_set, monkeypatch):
    """Under a Latin-1 locale a folder named música in UTF-8 and one named so in Latin-1 are both
    the class música: one folder's files were left out without a word. Simulated here by
    reading names as a Latin-1 locale does (os.fsencode)."""
    twins = tmp_path / "twins"
    shutil.copytree(audio_set / "pads", twins / "mÃºsica")  # UTF-8 bytes read as Latin-1
    shutil.copytree(audio_set / "drums", twins / "música")
    shutil.copytree(audio_set / "drums", twins / "rock")
    monkeypatch.setattr(os, "fsencode", lambda name: os.fspath(name).encode("latin-1",
                                                                           "surrogateescape"))
    with pytest.raises(InputError, match="the class folders 'mÃºsica' and 'música' both name "
                                         "the class 'música'; merge them"):
        data.load_dataset(twins)


def test_a_class_named_with_a_control_character_is_refused(tmp_path, audio_set):
    odd = tmp_path / "odd"
    shutil.copytree(audio_set / "pads", odd / "pads")
    shutil.copytree(audio_set / "drums", odd / "drums\nfake")
    with pytest.raises(InputError, match=r"the label 'drums\\nfake' holds a control character"):
        data.load_dataset(odd)


def test_a_file_linked_into_two_class_folders_is_refused(tmp_path, audio_set):
    copy = tmp_path / "data"
    shutil.copytree(audio_set, copy)
    first = sorted((copy / "pads").iterdir())[0]
    (copy / "drums" / "also.wav").symlink_to(first)
    with pytest.raises(InputError,
                       match=r"1 file\(s\) in more than one place .*e\.g\. '.*\.wav'; keep "
                                         "each file in one class folder"):
        data.load_dataset(copy)
    (copy / "drums" / "also.wav").unlink()  # a hard link, one file in two classes, was taken
    os.link(first, copy / "drums" / "also.wav")
    with pytest.raises(InputError, match=r"1 file\(s\) in more than one place"):
        data.load_dataset(copy)


def test_table_tasks(tmp_path, audio_set):
    files = sorted(str(p) for p in audio_set.rglob("*.wav"))
    multi = tmp_path / "multi.csv"
    multi.write_text("path,label\n" + "".join(f"{f},{'a;b' if i % 2 else 'b;c'}\n"
                                              for i, f in enumerate(files)))
    with pytest.warns(JaxmirWarning, match=r"multi.csv: class\(es\) that every file has: b; the "
                                            "head learns only that they are always there"):
        ds = data.load_dataset(multi)  # unsaid, and its ROC-AUC was NaN, left out of the mean
    assert ds.task == "multi" and ds.classes == ABC
    assert np.array_equal(ds.targets.sum(axis=1), np.full(len(files), 2))
    regression = tmp_path / "reg.csv"
    regression.write_text("path,valence,arousal\n" + "".join(f"{f},{i * 0.5},{-i}\n"
                                                            for i, f in enumerate(files)))
    ds = data.load_dataset(regression)
    assert ds.task == "regression" and ds.classes == ("valence", "arousal")
    assert ds.targets[3].tolist() == [1.5, -3.0]
    regression.write_text("path,valence,arousal\n" + "".join(f"{f},0.5,{-i}\n"
                                                             for i, f in enumerate(files)))
    with pytest.raises(InputError, match="column\\(s\\) 'valence': one value for every track"):
        data.load_dataset(regression)  # refused before decoding; cross-validation's r² was NaN
    regression.write_text(f"path,valence\n{files[0]},0.5\n{files[1]},0.5\n")  # two are enough
    with pytest.raises(InputError, match="column\\(s\\) 'valence': one value for every track"):
        data.load_dataset(regression)
    regression.write_text(f"path,valence\n{files[0]},0.5\n")
    with pytest.raises(InputError, match=r"reg.csv: 1 file\(s\); regression needs at least 2"):
        data.load_dataset(regression)
    regression.write_text("path,valence\n" + "".join(f"{f},{1e39 if i == 2 else i}\n"
                                                       for i, f in enumerate(files)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "overflow encountered in cast" came first
        with pytest.raises(InputError, match="regression targets contain NaN or infinity \\(or "
                                             "values beyond float32"):
            data.load_dataset(regression)


def test_a_table_s_relative_paths_are_relative_to_its_folder(tmp_path, audio_set, monkeypatch):
    """As the module says, and as a table moved with its audio needs: not to the current
    folder."""
    files = sorted(audio_set.rglob("*.wav"))
    table = tmp_path / "lists" / "set.csv"
    table.parent.mkdir()
    table.write_text("path,label\n" + "".join(
        f"{os.path.relpath(f, table.parent)},{f.parent.name}\n" for f in files))
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)  # where ../ leads elsewhere
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")
    found = data.load_dataset(table)
    assert [os.path.realpath(p) for p in found.paths] == [os.path.realpath(f) for f in files]


def test_a_label_column_of_numbers_holds_classes_and_a_bom_is_no_name(tmp_path, audio_set):
    """Class ids (0/1) in the label column trained a regressor of one output named 'label'; a
    spreadsheet's UTF-8 byte-order mark hid the 'path' column ("no 'path' column; columns:
    \\ufeffpath, label")."""
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    files = sorted(str(p) for p in audio_set.rglob("*.wav"))
    ids = [i % 2 for i in range(len(files))]
    table = tmp_path / "ids.csv"
    table.write_text("path,label\n" + "".join(f"{f},{i}\n" for f, i in zip(files, ids)),
                     encoding="utf-8-sig")
    parquet = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"path": files, "label": pa.array(ids, pa.int64())}), parquet)
    for source in (table, parquet):
        ds = data.load_dataset(source)
        assert ds.task == "single" and ds.classes == ("0", "1")
        assert ds.targets.argmax(axis=1).tolist() == ids
    # ids in order of value (they came in order of text: 10 before 2, so id 10 was output 0)
    table.write_text("path,label\n" + "".join(f"{f},{10 if i else 2}\n"
                                              for f, i in zip(files, ids)))
    assert data.load_dataset(table).classes == ("2", "10")
    table.write_text("path,label\n" + "".join(f"{f},{'nan' if i else 2}\n"
                                              for f, i in zip(files, ids)))
    assert data.load_dataset(table).classes == ("2", "nan")  # a name, though float() reads it
    # separated by tabs, semicolons or bars: "no 'path' column; columns: path<TAB>label"
    for separator in ("\t", ";", "|"):
        table.write_text(f"path{separator}label\n" + "".join(
            f"{f}{separator}{i}\n" for f, i in zip(files, ids)))
        header = re.escape(repr(f"path{separator}label"))
        with pytest.raises(InputError, match=f"its header is one column, {header}"
                                             r".*a \.csv is read with commas"):
            data.load_dataset(table)
    table.write_text("path,label\n" + "".join(f"{f},{'1.0' if n % 4 == 1 else i}\n"
                                              for n, (f, i) in enumerate(zip(files, ids))))
    with pytest.raises(InputError,
                       match="the labels '1' and '1.0' are one number written two ways"):
        data.load_dataset(table)


def test_table_cells_that_would_train_the_wrong_head_are_refused(tmp_path, audio_set):
    """One stray ';' ("low;") made a whole single-label table multi-label; an empty regression
    cell was called "non-numeric"."""
    files = sorted(str(p) for p in audio_set.rglob("*.wav"))
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "".join(f"{f},{'low;' if n == 3 else 'lh'[n % 2]}\n"
                                              for n, f in enumerate(files)))
    with pytest.raises(InputError, match=r"1 row\(s\) with an empty label beside a ';', e\.g\. "
                                         r"'low;' for .*remove the stray ';'"):
        data.load_dataset(table)
    table.write_text("path,valence\n" + "".join(f"{f},{'' if n == 5 else n}\n"
                                                for n, f in enumerate(files)))
    with pytest.raises(InputError, match=f"column 'valence' has 1 empty cell\\(s\\), e.g. for "
                                         f"{files[5]}; regression needs a value for every file"):
        data.load_dataset(table)
    table.write_text("path,mood\n" + "".join(f"{f},{'' if n == 5 else 'calm'}\n"
                                           for n, f in enumerate(files)))
    with pytest.raises(InputError, match=r"expected a 'label' column \(classes\) or numeric "
                                         r"columns \(regression\); non-numeric: mood$"):
        data.load_dataset(table)  # a blank is not the trouble with a column of words


def test_dataset_entry_counts_tracks_of_soft_targets():
    """Soft rows (0.8/0.1/0.1) summed to 5.9999 per class and were cut to "5/5/6 per class"."""
    from jaxmir.train.recipe import dataset_entry

    soft = np.full((18, 3), 0.1, np.float32)
    soft[np.arange(18), np.arange(18) % 3] = 0.8
    dataset = data.Dataset(tuple(f"{i}.wav" for i in range(18)), soft, "single", ABC)
    assert dataset_entry("DATA", dataset, None, 0)["size"] == "18 tracks, 6/6/6 per class"
    multi = data.Dataset(dataset.paths, (soft > 0.5) * 0.9 + 0.05, "multi", ABC)
    assert dataset_entry("DATA", multi, None, 0)["size"] == "18 tracks, 6/6/6 per class"


def test_numpy_counts_train_and_export_as_python_ones():
    """TrainConfig(epochs=np.uint8(255)) trained no epoch (255 + 1 wrapped to 0) and exported the
    untrained head; batch_size=np.uint8(32) overflowed; a smoothing k of np.int64(3) failed the
    export ("int64 is not JSON serializable") after training."""
    from jaxmir.train.finetune import FinetuneConfig
    from jaxmir.train.recipe import dataset_entry
    from jaxmir.train.smoothing import SmoothingConfig

    config = fit.TrainConfig(epochs=np.uint8(255), batch_size=np.uint8(32),
                             learning_rate=np.float32(1e-3))
    assert type(config.epochs) is int and config.epochs + 1 == 256
    tracks, onehot = blobs(n_per_class=6, classes=2)
    head = fit.train_head(tracks, onehot, "single", AB, dataclasses.replace(
        FAST, epochs=np.uint8(2), batch_size=np.uint8(4)))
    assert len(head.history) == 2
    tune = FinetuneConfig(steps=np.int16(3), batch_size=np.uint8(2), seed=np.int64(1))
    assert {type(tune.steps), type(tune.batch_size), type(tune.seed)} == {int}
    with pytest.raises(InputError, match="FinetuneConfig weight_decay = -1"):
        FinetuneConfig(weight_decay=-1)
    # any real number, checked without a raw TypeError (a Fraction; an int no float holds)
    assert FinetuneConfig(backbone_learning_rate=Fraction(1, 10 ** 5)).backbone_learning_rate \
        == 1e-5
    for config, name in ((FinetuneConfig, "weight_decay"), (fit.TrainConfig, "learning_rate")):
        with pytest.raises(InputError, match=f"{config.__name__} {name} = 1000"):
            config(**{name: 10 ** 400})
    dataset = data.Dataset(tuple(f"{i}.wav" for i in range(12)), onehot, "single", AB)
    for settings in (SmoothingConfig("knn", k=np.int64(3)),
                     SmoothingConfig("lmnn", k=np.int32(3), lmnn_k=np.uint8(2),
                                     lmnn_components=np.int64(4), lmnn_push=np.float32(0.25))):
        entry = json.loads(json.dumps(dataset_entry("DATA", dataset, None, 0, settings)))
        assert entry["label_smoothing"]["k"] == 3


def test_classes_of_soft_targets_are_counted_by_tracks():
    """Soft targets were counted by their mass: three tracks of [0.6, 0.4] made "drums (1)",
    refused as a class of fewer than 2 files."""
    targets = np.array([[0.6, 0.4]] * 3 + [[0.0, 1.0]] * 3, np.float32)
    dataset = data.Dataset(tuple(f"{i}.wav" for i in range(6)), targets, "single",
                           ("drums", "pads"))
    data.check_classes(dataset, "DATA")
    assert dataset.tracks_per_class().tolist() == [3, 3]
    one = data.Dataset(dataset.paths, np.array([[0.6, 0.4]] + [[0.4, 0.6]] * 5, np.float32),
                       "single", ("drums", "pads"))
    with pytest.raises(InputError, match=r"fewer than 2 audio files: drums \(1\)"):
        data.check_classes(one, "DATA")


def test_a_multilabel_class_counts_its_tracks_of_probability_one_half():
    """A multi-label track of probability 0.5 counts for its class, as the metrics count it
    positive (``soft >= 0.5`` in test_metrics_match_scikit_learn); counted from above 0.5, this
    dataset's classes had no track and were refused."""
    targets = np.array([[0.5, 0.2]] * 2 + [[0.1, 0.5]] * 2, np.float32)
    dataset = data.Dataset(tuple(f"{i}.wav" for i in range(4)), targets, "multi", AB)
    assert dataset.tracks_per_class().tolist() == [2, 2]
    data.check_classes(dataset, "DATA")  # two files per class: accepted


def test_parquet_list_label_column_is_multilabel(tmp_path, audio_set):
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    files = sorted(str(p) for p in audio_set.rglob("*.wav"))
    table = tmp_path / "lists.parquet"
    # items kept whole (not split at ';'), and stripped as a CSV's labels are: " x" is "x"
    labels = [["tone"]] * 4 + [["noise ", " x"]] * 2 + [["x; y", None, " "]] * 2
    pq.write_table(pa.table({"path": files, "label": labels}), table)
    ds = data.load_dataset(table)
    assert ds.task == "multi" and ds.classes == ("noise", "tone", "x", "x; y")
    assert ds.targets.tolist()[4] == [1, 0, 1, 0] and ds.targets.tolist()[7] == [0, 0, 0, 1]
    pq.write_table(pa.table({"path": files, "label": [["tone"]] * 7 + [[]]}), table)
    with pytest.raises(InputError, match="1 row.*without a label"):
        data.load_dataset(table)


def test_a_row_without_a_label_is_named(tmp_path, audio_set):
    """A single-label table's empty cells were refused as "a label is empty ('')": neither how
    many rows nor which file."""
    files = sorted(str(p) for p in audio_set.rglob("*.wav"))
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "".join(f"{f},{'' if i in (2, 5) else 'a'}\n"
                                              for i, f in enumerate(files)))
    with pytest.raises(InputError, match=rf"2 row\(s\) without a label, e.g. {files[2]}$"):
        data.load_dataset(table)


def test_file_listed_twice_in_a_table_refused(tmp_path, audio_set):
    files = sorted(str(p) for p in audio_set.rglob("*.wav"))
    table = tmp_path / "labels.csv"
    # the same file spelled another way is the same file
    twice = os.path.join(os.path.dirname(files[0]), ".", os.path.basename(files[0]))
    thrice = os.path.join(os.path.dirname(files[0]), ".", ".", os.path.basename(files[0]))
    # listed three times, it is still one file named once
    table.write_text("path,label\n" + "".join(f"{f},{'ab'[i % 2]}\n"
                                              for i, f in enumerate(files + [twice, thrice])))
    with pytest.raises(InputError, match="1 file.*more than once.*" + os.path.basename(files[0])):
        data.load_dataset(table)


def test_a_table_naming_a_column_twice_is_refused(tmp_path, audio_set):
    """Of two 'label' columns csv.DictReader kept the last, and the first was never read
    (pyarrow refuses such a Parquet table itself)."""
    rows = [["path", "label", " label"]] + [[str(f), "a", "b"] for f in audio_set.rglob("*.wav")]
    table = tmp_path / "labels.csv"
    table.write_text("".join(",".join(row) + "\n" for row in rows))
    with pytest.raises(InputError, match=r"labels.csv: the columns \['label'\] are named more "
                                         "than once"):
        data.load_dataset(table)


def test_audio_beside_the_class_folders_is_named_as_left_out(tmp_path, audio_set):
    """It was left out without a word."""
    import warnings

    root = tmp_path / "data"
    shutil.copytree(audio_set, root)
    shutil.copy(next(root.rglob("*.wav")), root / "stray.wav")
    shutil.copy(next(root.rglob("*.wav")), root / "take2.WAV")  # read as the folders' files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load_dataset(root)
    assert len(ds) == 8 and [str(w.message) for w in caught] == [
        f"{root}: 2 audio file(s) beside the class folders, in none of them, left out (e.g. "
        "'stray.wav'); move each into its class's folder"]


def test_dataset_targets_must_fit_paths_task_and_classes():
    onehot = np.eye(2, dtype=np.float32)[[0, 1, 0]]
    with pytest.raises(InputError, match="3 paths but 2 target rows"):
        data.Dataset(ABC, onehot[:2], "single", ("x", "y"))
    with pytest.raises(InputError, match=r"shape \(3,\); expected \[tracks, outputs\]"):
        data.Dataset(ABC, onehot[:, 0], "single", ("x", "y"))
    with pytest.raises(InputError, match="unknown task 'binary'; expected one of single, multi"):
        data.Dataset(ABC, onehot, "binary", ("x", "y"))
    with pytest.raises(InputError, match="3 class name.*2 target column"):
        data.Dataset(ABC, onehot, "single", ("x", "y", "z"))
    with pytest.raises(InputError, match="one-hot rows or label distributions"):
        data.Dataset(ABC, onehot * 3, "single", ("x", "y"))
    ds = data.Dataset(["a", "b", "c"], onehot.tolist(), "single", ["x", "y"])
    assert ds.subset([2]).paths == ("c",) and ds.targets.dtype == np.float32
    # as a table's rows are: a fold could train and test on one track
    with pytest.raises(InputError, match=r"1 path\(s\) given more than once, e.g. '.*a'; give "):
        data.Dataset(["a", "b", "a"], onehot, "single", ("x", "y"))
    with pytest.raises(InputError, match="given more than once"):  # spelt two ways
        data.Dataset(["a", "b", Path("./a")], onehot, "single", ("x", "y"))


def test_a_dataset_s_repr_shows_four_classes_and_counts_a_fifth():
    """Up to four class names are shown whole; from five, the first four and how many."""
    def repr_of(classes):
        return repr(data.Dataset(tuple(f"{c}.wav" for c in classes),
                                 np.eye(len(classes), dtype=np.float32), "single", classes))

    assert repr_of(tuple("abcd")) == "Dataset(4 tracks, single, ['a', 'b', 'c', 'd'])"
    assert repr_of(tuple("abcde")) == ("Dataset(5 tracks, single, ['a', 'b', 'c', 'd', ... "
                                       "(5 in all)])")


# -- embedding cache -----------------------------------------------------------------------
def test_cache_reused_keyed_and_safe(tmp_path, audio_set, monkeypatch):
    paths = sorted(str(p) for p in audio_set.rglob("*.wav"))[:3]
    calls = []

    def compute(path):
        calls.append(path)
        return np.full((2, 4), len(calls), np.float32)

    key = lambda p: embeddings.cache_key("bb", "layer", p)
    first, failures = embeddings.cached(compute, paths, key, tmp_path / "cache")
    second, _ = embeddings.cached(compute, paths, key, tmp_path / "cache")
    assert failures == [] and len(calls) == 3
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    stored = sorted((tmp_path / "cache").iterdir())
    assert len(stored) == 3 and all(p.suffix == ".npy" for p in stored)
    np.load(stored[0], allow_pickle=False)
    assert embeddings.cache_key("bb", "other", paths[0]) != key(paths[0])
    os.utime(paths[0], ns=(1, 1))  # a changed file is recomputed
    embeddings.cached(compute, paths, key, tmp_path / "cache")
    assert len(calls) == 4
    # so is every file for another jaxmir: its version stays 0.1.0 through fixes, its code not
    monkeypatch.setattr(embeddings, "computed_by", lambda: "jaxmir 0123456789abcdef, jax 9")
    embeddings.cached(compute, paths, key, tmp_path / "cache")
    assert len(calls) == 7
    # a stored array cut short or emptied (a full disk, another tool) is computed again
    entries = [tmp_path / "cache" / f"{key(path)}.npy" for path in paths[:2]]
    entries[0].write_bytes(entries[0].read_bytes()[:-4])  # its last value lost
    entries[1].write_bytes(b"")
    again, failures = embeddings.cached(compute, paths, key, tmp_path / "cache")
    assert failures == [] and len(calls) == 9 and all(a.shape == (2, 4) for a in again)
    package = tmp_path / "package"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "decode.py").write_text("TRIM = 1024\n")
    before = embeddings.source_digest(package)
    (package / "sub" / "decode.py").write_text("TRIM = 1105\n")
    assert embeddings.source_digest(package) != before
    # a module renamed, its bytes kept, is other code too (what imports it finds it no more)
    before = embeddings.source_digest(package)
    (package / "sub" / "decode.py").rename(package / "sub" / "decoding.py")
    assert embeddings.source_digest(package) != before


def test_the_cache_key_changes_with_the_decoding_libraries(monkeypatch):
    """Another FFmpeg under the same jaxmir and JAX decodes differently (codec delays, edit
    lists): its features were reused when only jaxmir's source and JAX's version were keyed."""
    import av

    embeddings.computed_by.cache_clear()
    before = embeddings.computed_by()
    versions = dict(av.library_versions, libavcodec=(58, 91, 100))
    monkeypatch.setattr(av, "library_versions", versions)
    embeddings.computed_by.cache_clear()
    try:
        assert embeddings.computed_by() != before
        assert "libavcodec 58.91.100" in embeddings.computed_by()
    finally:
        embeddings.computed_by.cache_clear()


def test_the_cache_key_changes_with_the_decoder_and_the_resampler(tmp_path):
    """Features of audio decoded another way (``--decoder float``, ``soundfile``) or resampled
    another way are other features: a key blind to the decoder reused the first decoder's."""
    from jaxmir.audio import DECODERS
    from jaxmir.audio_choices import RESAMPLERS, canonical_resampler

    path = tmp_path / "a.wav"
    path.write_bytes(b"audio")
    keys = {decoder: embeddings.cache_key("bb", "layer", path, decoder=decoder)
            for decoder in DECODERS}
    assert len(set(keys.values())) == len(DECODERS) >= 3
    assert keys["essentia"] == embeddings.cache_key("bb", "layer", path)  # the default
    resampled = {embeddings.cache_key("bb", "layer", path, resampler=name) for name in RESAMPLERS}
    assert len(resampled) == len({canonical_resampler(name) for name in RESAMPLERS}) >= 3


def test_one_relative_name_in_two_folders_is_two_cache_entries(tmp_path, monkeypatch):
    """``a.wav`` run from two folders, the files of one size and mtime (copied with ``cp -p``):
    keyed by the name as given, the second would take the first's embeddings."""
    keys = set()
    for folder, content in (("x", b"one"), ("y", b"two")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.wav").write_bytes(content)
        os.utime(tmp_path / folder / "a.wav", ns=(1, 1))
        monkeypatch.chdir(tmp_path / folder)
        keys.add(embeddings.cache_key("bb", "layer", "a.wav"))
    assert len(keys) == 2


def test_a_file_of_another_size_under_its_old_mtime_is_another_cache_entry(tmp_path):
    """A file re-encoded and copied back with its times kept (``cp -p``, ``rsync -t``): its
    mtime is the old one, its size is not, and it must not take the old file's features."""
    path = tmp_path / "a.wav"
    path.write_bytes(b"first encoding")
    os.utime(path, ns=(1, 1))
    before = embeddings.cache_key("bb", "layer", path)
    path.write_bytes(b"second, longer encoding")
    os.utime(path, ns=(1, 1))
    assert embeddings.cache_key("bb", "layer", path) != before


def test_a_backbone_file_rewritten_in_place_is_another_backbone(tmp_path):
    """A backbone named by its path (a .pb retrained and written over the old one) is keyed by
    the file's size and mtime: keyed by the path alone, the old weights' embeddings came back."""
    path = tmp_path / "backbone.pb"
    path.write_bytes(b"weights")
    before = embeddings.backbone_id(str(path))
    path.write_bytes(b"retrained weights")
    assert embeddings.backbone_id(str(path)) != before


def test_a_missing_file_is_skipped_with_the_cache_on(tmp_path):
    """The cache key reads the file's size and mtime: a file gone by then is one skipped file,
    as without the cache, not a traceback."""
    gone = str(tmp_path / "gone.wav")
    key = lambda p: embeddings.cache_key("bb", "layer", p)
    with pytest.warns(JaxmirWarning, match="skipped .*gone.wav: No such file or directory"):
        values, failures = embeddings.cached(lambda p: np.zeros((1, 2), np.float32), [gone],
                                             key, tmp_path / "cache")
    assert values == [None] and failures == [f"{gone}: No such file or directory"]


@pytest.mark.parametrize("problem", ["a file", "a full disk"])
def test_a_cache_that_cannot_be_written_is_turned_off_with_one_warning(tmp_path, audio_set,
                                                                      monkeypatch, problem):
    """train-head stopped ("cachefile: File exists", or a hidden temporary's name and
    "Operation not permitted"), where the compilation cache turns itself off."""
    import errno

    paths = sorted(str(p) for p in audio_set.rglob("*.wav"))[:3]
    root = tmp_path / "cache"
    writes = []  # one try a call: turned off, the cache is not tried again for each file
    if problem == "a file":
        root.write_bytes(b"not a folder")
        save_array = embeddings.save_array
    else:
        def save_array(path, array):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(embeddings, "save_array",
                        lambda path, array: writes.append(path) or save_array(path, array))
    key = lambda p: embeddings.cache_key("bb", "layer", p)
    with pytest.warns(JaxmirWarning) as caught:
        values, failures = embeddings.cached(lambda p: np.ones((2, 4), np.float32), paths, key,
                                             root)
        # smoothing's MFCCs go through the cache too: said once in all
        embeddings.cached(lambda p: np.ones((2, 4), np.float32), paths,
                          lambda p: embeddings.cache_key("bb", "mfcc", p), root)
    assert failures == [] and all(v.shape == (2, 4) for v in values)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and said[0].startswith(f"embedding cache off: {root} cannot be written")
    assert len(writes) == 2
    if problem == "a file":
        assert "(a file is in its place)" in said[0]


def test_features_computed_in_float64_are_cached_and_returned_as_float32(tmp_path, audio_set):
    """The cache holds float32 arrays, whatever type ``compute`` returns, as the module says: a
    float64 one was stored (twice the disk) and handed back as float64."""
    paths = sorted(str(p) for p in audio_set.rglob("*.wav"))[:2]
    key = lambda p: embeddings.cache_key("bb", "layer", p)
    computed = np.random.default_rng(0).standard_normal((2, 4))  # float64
    for _ in range(2):  # computed, then read back from the cache
        values, _ = embeddings.cached(lambda p: computed, paths, key, tmp_path / "cache")
        assert all(v.dtype == np.float32 for v in values)
        np.testing.assert_array_equal(values[0], computed.astype(np.float32))
    stored = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(stored) == 2 and all(np.load(p).dtype == np.float32 for p in stored)


def test_undecodable_file_is_reported_skipped_counted(tmp_path, audio_set):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    model = jaxmir.load("msd-musicnn")
    with pytest.warns(UserWarning, match="bad.wav"):
        values, failures = embeddings.extract_embeddings(
            model, "msd-musicnn", [str(bad), str(next(audio_set.rglob("*.wav")))],
            "model/dense/BiasAdd", tmp_path / "cache")
    assert values[0] is None and values[1].shape[1] == 200 and len(failures) == 1
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert failures[0].count(str(bad)) == 1  # it read "skipped X: X: cannot be read"


def test_a_file_whose_embeddings_are_not_finite_is_skipped_and_not_cached(tmp_path):
    """Its NaN embeddings were returned and cached: every later run read them back, and training
    then failed as a whole instead of leaving out the one file."""
    import soundfile

    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.zeros(16000 * 4, np.float32), 16000)

    class NaNModel:
        def resolve_output(self, layer):
            return layer, None

        def predict(self, audio, sr, output=None):
            values = np.ones((2, 200), np.float32)
            values[1, 7] = np.nan  # one value of 400: the file is skipped all the same
            return values

    with pytest.warns(UserWarning, match="not finite"):
        values, failures = embeddings.extract_embeddings(NaNModel(), "stub", [str(wav)], "emb",
                                                         tmp_path / "cache")
    assert values == [None]
    assert failures == [f"{wav}: the emb embeddings are not finite"]
    assert not list((tmp_path / "cache").glob("*.npy"))


def test_a_layer_and_its_alias_are_one_cache_entry(tmp_path, audio_set):
    """`--layer logits` and `--layer model/dense_1/BiasAdd` (the same output) were computed and
    stored twice."""
    model = jaxmir.load("msd-musicnn")
    path = str(next(audio_set.rglob("*.wav")))
    first, _ = embeddings.extract_embeddings(model, "msd-musicnn", [path], "logits",
                                             tmp_path / "cache")
    again, _ = embeddings.extract_embeddings(model, "msd-musicnn", [path],
                                             "model/dense_1/BiasAdd", tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    np.testing.assert_array_equal(first[0], again[0])
    embeddings.extract_embeddings(model, "msd-musicnn", [path], "penultimate", tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # another layer, another entry
    # a convolution's output is [patches, features] as documented, its values in their order
    cnn3, _ = embeddings.extract_embeddings(model, "msd-musicnn", [path], "cnn3", False)
    want = model.predict(jaxmir.load_audio(path), 16000, output="cnn3")
    np.testing.assert_array_equal(cnn3[0], np.asarray(want).reshape(want.shape[0], -1))


# -- training --------------------------------------------------------------------------------
def test_training_reproducible_and_learns():
    tracks, targets = blobs()
    a = fit.train_head(tracks, targets, "single", ABC, FAST)
    b = fit.train_head(tracks, targets, "single", ABC, FAST)
    c = fit.train_head(tracks, targets, "single", ABC, dataclasses.replace(FAST, seed=1))
    same = jax.tree_util.tree_map(np.array_equal, a.params, b.params)
    assert all(jax.tree_util.tree_leaves(same))
    assert not np.array_equal(a.params["dense"]["kernel"], c.params["dense"]["kernel"])
    tests, truth = blobs(n_per_class=5, seed=0)
    assert metrics.evaluate("single", truth, a.predict_tracks(tests))["normalized_accuracy"] > 0.9
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]


def test_plateau_halves_learning_rate_and_best_checkpoint_kept():
    tracks, targets = blobs(n_per_class=6)
    head = fit.train_head(tracks, targets, "single", ABC,
                          fit.TrainConfig(epochs=30, patience=2, learning_rate=0.5))
    rates = [h["learning_rate"] for h in head.history]
    assert rates[-1] < rates[0] and all(r in (0.5 / 2 ** i for i in range(30)) for r in rates)
    assert len(head.history) == 30


def test_nan_loss_stops_naming_the_step():
    tracks, targets = blobs(n_per_class=4)
    tracks = [t * 1e37 for t in tracks]  # finite, but the products overflow: inf, then NaN
    # in the first epoch the global step is the epoch's step
    with pytest.raises(fit.TrainingError, match=r"epoch 1, step (\d+) of \d+ \(global step \1\)"):
        fit.train_head(tracks, targets, "single", ABC, FAST)


def test_weights_that_diverge_with_a_finite_loss_stop_the_training():
    """They went on to the export, which called the file it wrote damaged (naming a staging
    folder already removed). Without weight decay: its term in the validation cost keeps such
    weights from being the best (the next test)."""
    tracks, targets = blobs(n_per_class=6)
    with pytest.raises(fit.TrainingError,
                       match=r"the head's weights diverged \('dense.*' holds a value of size "
                             r".*\) though the loss stayed finite"):
        fit.train_head(tracks, targets, "single", ABC,
                       fit.TrainConfig(epochs=20, learning_rate=1e12, weight_decay=0.0))


def test_a_training_that_never_beats_the_untrained_head_names_its_lowest_cost(monkeypatch):
    """The refusal names the lowest of the epochs' costs, the one that came closest."""
    scripted = iter([5.0, 9.0, 7.0, 8.0])  # the untrained head's, then each epoch's
    monkeypatch.setattr(fit, "validation_cost", lambda *args: next(scripted))
    tracks, targets = blobs(n_per_class=4)
    with pytest.raises(fit.TrainingError, match=r"\(the lowest 7\) came below the untrained "
                                                r"head's \(5\)"):
        fit.train_head(tracks, targets, "single", ABC, fit.TrainConfig(epochs=3))


@pytest.mark.parametrize("rate", [1e3, 1e6])
def test_a_training_that_never_beats_the_untrained_head_stops(rate):
    """--learning-rate 1e6 exported a head whose best validation loss was ~1e15 (the untrained
    one's 6.7) with exit status 0: the untrained weights were never a candidate, as they are in
    MTG's loop, whose first epoch only validates."""
    tracks, targets = blobs(n_per_class=6)
    with pytest.raises(fit.TrainingError, match=r"no epoch's validation cost \(the lowest .*\) "
                                                r"came below the untrained head's \(.*\); lower"):
        fit.train_head(tracks, targets, "single", ABC,
                       fit.TrainConfig(epochs=5, learning_rate=rate))


def test_a_resumed_head_that_no_epoch_improves_is_kept_with_a_warning(monkeypatch):
    """A resumed head already at its best was refused ("lower the learning rate"), nothing
    written, where MTG's loop keeps its first, validation-only epoch's weights; the messages
    also called them the untrained head's."""
    tracks, targets = blobs(n_per_class=4)
    scripted = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(fit, "validation_cost", lambda *args: next(scripted))
    resumed, lines = fit.init_head(jax.random.PRNGKey(5), 20, 100, 3), []
    with pytest.warns(JaxmirWarning, match=r"came below the resumed head's \(1\): the resumed "
                                           r"head is kept as it was"):
        head = fit.train_head(tracks, targets, "single", ABC, fit.TrainConfig(epochs=2),
                              initial=resumed, log=lines.append)
    assert lines[0] == "epoch 0 (resumed): validation 1.0000" and head.kept_epoch == 0
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        np.array_equal, head.params, jax.device_get(resumed))))


def test_a_resumed_head_of_float64_arrays_is_kept_in_float32(monkeypatch):
    """Weights to resume from given as float64 NumPy arrays are the head's float32 weights, the
    ones exported, also when no epoch improves on them and they are kept as given."""
    tracks, targets = blobs(n_per_class=4)
    scripted = iter([1.0, 2.0])
    monkeypatch.setattr(fit, "validation_cost", lambda *args: next(scripted))
    resumed = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64),
                                     fit.init_head(jax.random.PRNGKey(5), 20, 100, 3))
    with pytest.warns(JaxmirWarning, match="the resumed head is kept as it was"):
        head = fit.train_head(tracks, targets, "single", ABC, fit.TrainConfig(epochs=1),
                              initial=resumed)
    assert head.kept_epoch == 0
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(head.params)} == {np.dtype(np.float32)}
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: np.array_equal(a, np.float32(b)), head.params, resumed)))


def test_a_fold_that_never_beats_its_untrained_head_is_scored_with_it(monkeypatch):
    """One such fold failed a whole --folds run (nothing written, no fold named) where MTG's
    loop keeps the untrained weights and the fold scores at chance."""
    tracks, targets = blobs(n_per_class=5)
    real, calls = fit.validation_cost, []

    def first_fold_never_improves(*args):
        calls.append(1)
        return 1e9 - len(calls) if len(calls) == 1 else (1e10 if len(calls) <= 3 else real(*args))

    monkeypatch.setattr(fit, "validation_cost", first_fold_never_improves)
    with pytest.warns(JaxmirWarning, match=r"fold 1/2: no epoch's validation cost "
                                           r"came below the untrained head's; the "
                                           r"fold is scored with the untrained"):
        result = fit.cross_validate(tracks, targets, "single", ABC, folds=2,
                                    config=fit.TrainConfig(epochs=2))
    assert len(result.folds) == 2


def _mtg_schedule(costs: list[float], patience: int, rate: float) -> tuple[list[float], int]:
    """The bookkeeping of ``src/train.py`` (palonso/musicnn-training, mtgdb-models) over the
    validation costs of its epochs (``costs[0]``: its first epoch, which trains nothing): the
    rate each later epoch trained with, and the epoch whose weights it keeps."""
    k_patience, cost_best_model, kept, rates = 0, np.inf, None, []
    for i, val_cost in enumerate(costs):
        if i != 0:
            rates.append(rate)
        if patience and k_patience >= patience:
            rate, k_patience = rate / 2, 0
        if val_cost >= cost_best_model:
            k_patience += 1
        else:
            cost_best_model, kept = val_cost, i
    return rates, kept


@pytest.mark.parametrize("costs", [
    [10, 5, 6, 4, 7, 3, 8, 9, 9, 9, 2, 9],  # an improvement does not restart the count
    [10, 5, 6, 6, 6, 6, 6, 6, 6],
    [10, 9, 8, 7, 6, 5],
    [10, 5, 5, 5, 5, 5],  # a cost equal to the best is no improvement
])
def test_the_learning_rate_halves_and_the_kept_epoch_as_in_mtgs_loop(monkeypatch, costs):
    """The count of epochs without improvement restarted at each improvement, and the rate
    halved in the epoch the count reached the patience, not the epoch after: from [10, 5, 6, 4,
    7, 3, ...] with patience 2, MTG halves after the sixth epoch's validation and jaxmir did
    after the eighth."""
    tracks, targets = blobs(n_per_class=4)
    scripted = iter(costs)
    monkeypatch.setattr(fit, "validation_cost", lambda *args: float(next(scripted)))
    params, used = [], []
    step = fit.train_step

    def recorded(task, decay, weights, state, *rest):
        used.append(float(state.hyperparams["learning_rate"]))  # the rate Adam steps with
        result = step(task, decay, weights, state, *rest)
        params.append(result[0])
        return result

    monkeypatch.setattr(fit, "train_step", recorded)
    head = fit.train_head(tracks, targets, "single", ABC,
                          fit.TrainConfig(epochs=len(costs) - 1, patience=2, learning_rate=0.1))
    rates, kept = _mtg_schedule(costs, 2, 0.1)
    assert [record["learning_rate"] for record in head.history] == rates
    steps = len(params) // (len(costs) - 1)
    # the optimiser's own rate (float32), not only the history's: it kept the first rate
    assert used[::steps] == pytest.approx(rates, rel=1e-7)
    kept_params = params[kept * steps - 1]
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        np.array_equal, head.params, jax.device_get(kept_params))))


def _head_outputs_float64(params: dict, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """MTG's head (dense, ReLU, dense) in float64 NumPy: its outputs before the final
    activation, and its weights in float64."""
    w = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()} for k, layer in params.items()}
    hidden = np.maximum(x @ w["dense"]["kernel"] + w["dense"]["bias"], 0)
    return hidden @ w["dense_1"]["kernel"] + w["dense_1"]["bias"], w


def _softmax_losses_float64(params: dict, x: np.ndarray,
                            y: np.ndarray) -> tuple[np.ndarray, float]:
    """Each patch's softmax cross-entropy through MTG's head in float64, and the weights' L2
    term (half their sum of squares), which the weight decay scales."""
    logits, w = _head_outputs_float64(params, x)
    logits -= logits.max(axis=1, keepdims=True)
    losses = -(y * (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))).sum(axis=1)
    return losses, sum(0.5 * np.sum(v ** 2) for layer in w.values() for v in layer.values())


def _mean_of_batch_means(losses: np.ndarray, batch_size: int) -> float:
    """MTG's validation loss: the mean of each batch's mean loss, the last batch shorter."""
    return np.mean([losses[i:i + batch_size].mean() for i in range(0, len(losses), batch_size)])


def test_the_validation_cost_is_mtgs():
    """MTG's loop compares the mean over validation batches (the last one shorter) of each
    batch's mean loss plus the weight decay's term; the loss alone, averaged over all patches,
    was compared before."""
    rng = np.random.default_rng(3)
    params = fit.init_head(jax.random.PRNGKey(1), 6, 5, 3)
    x = rng.standard_normal((70, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 70)]
    losses, l2 = _softmax_losses_float64(params, x, y)
    expected = _mean_of_batch_means(losses, 32) + 1e-2 * l2
    got = fit.validation_cost("single", 1e-2, params, x, y, 32)
    assert abs(got - expected) < 1e-5 * expected  # float32 products against float64 ones
    assert abs(losses.mean() + 1e-2 * l2 - expected) > 1e-3  # the batches' weights matter here


def test_an_epoch_s_validation_cost_takes_batches_of_the_configured_size():
    """Fewer training patches (18) than ``batch_size`` (32) shrink the training batches, not the
    validation ones: an epoch's cost is MTG's over batches of 32 of the 48 validation patches."""
    tracks, targets = blobs(n_per_class=2, patches=3)
    val_tracks, val_targets = blobs(n_per_class=4, patches=4, seed=1)
    config = fit.TrainConfig(epochs=1, learning_rate=1e-2)
    head = fit.train_head(tracks, targets, "single", ABC, config, (val_tracks, val_targets))
    assert head.kept_epoch == 1  # its weights are the epoch's
    x = np.concatenate(val_tracks)
    y = np.repeat(val_targets, 4, axis=0)
    losses, l2 = _softmax_losses_float64(head.params, x, y)
    expected = _mean_of_batch_means(losses, config.batch_size) + config.weight_decay * l2
    in_18s = _mean_of_batch_means(losses, 18) + config.weight_decay * l2
    assert abs(in_18s - expected) > 1e-4 * expected  # the batches' sizes matter here
    got = head.history[0]["val_loss"]
    assert abs(got - expected) < 1e-5 * expected  # float32 products against float64 ones


def test_the_untrained_head_s_validation_cost_takes_batches_of_the_configured_size():
    """The cost every epoch must beat, as each epoch's (above): 18 training patches must not
    shrink the batches the untrained head is validated in. Its cost is read from the refusal
    (6 digits) of a training whose epochs never beat it."""
    tracks, targets = blobs(n_per_class=2, patches=3)
    val_tracks, val_targets = blobs(n_per_class=4, patches=4, seed=1)
    config = fit.TrainConfig(epochs=1, learning_rate=1e6)
    with pytest.raises(fit.TrainingError, match="untrained head's") as refusal:
        fit.train_head(tracks, targets, "single", ABC, config, (val_tracks, val_targets))
    got = float(re.search(r"untrained head's \((\S+)\)", str(refusal.value)).group(1))
    untrained = fit.init_head(jax.random.PRNGKey(config.seed), 20, config.hidden, 3)
    losses, l2 = _softmax_losses_float64(untrained, np.concatenate(val_tracks),
                                         np.repeat(val_targets, 4, axis=0))
    expected = _mean_of_batch_means(losses, config.batch_size) + config.weight_decay * l2
    in_18s = _mean_of_batch_means(losses, 18) + config.weight_decay * l2
    assert abs(in_18s - expected) > 1e-4 * expected  # the batches' sizes matter here
    assert abs(got - expected) < 1e-5 * expected  # 6 digits, float32 products against float64


def test_a_regression_cost_is_the_mean_squared_error_over_every_output():
    """Two outputs (valence, arousal): MTG's mean squared error averages over both, where one
    output, as every regression tested had, cannot tell a mean from a sum."""
    rng = np.random.default_rng(4)
    params = fit.init_head(jax.random.PRNGKey(2), 6, 5, 2)
    x = rng.standard_normal((10, 6)).astype(np.float32)
    y = rng.standard_normal((10, 2)).astype(np.float32)
    values, _ = _head_outputs_float64(params, x)
    expected = np.mean((values - y) ** 2)
    got = fit.validation_cost("regression", 0.0, params, x, y, 32)
    assert abs(got - expected) < 1e-5 * expected  # float32 products against float64 ones


def test_a_batch_larger_than_the_patches_is_not_padded(monkeypatch):
    """--batch-size 10000000 on 60 patches allocated 7.45 GiB of padding rows, and every step
    computed them."""
    tracks, targets = blobs(n_per_class=4)
    sizes = []
    step = fit.train_step

    def recorded(task, decay, params, state, x, *rest):
        sizes.append(x.shape[0])
        return step(task, decay, params, state, x, *rest)

    monkeypatch.setattr(fit, "train_step", recorded)
    fit.train_head(tracks, targets, "single", ABC, fit.TrainConfig(epochs=2, batch_size=10 ** 6))
    patches = sum(len(t) for t in tracks)
    assert sizes and max(sizes) < patches  # the training part of them, in one batch


def test_an_epoch_s_last_batch_trains_on_its_patches_alone(monkeypatch):
    """The last batch of an epoch is padded to the batch's shape (one compiled step); MTG's
    loop trains it shorter. Each padded step must equal the step on its real patches alone."""
    tracks, targets = blobs(n_per_class=4)
    step, padded = fit.train_step, []

    def compared(task, decay, params, state, x, y, w):
        got = step(task, decay, params, state, x, y, w)
        if not np.all(w):
            padded.append(w.size)
            real = w > 0
            alone = step(task, decay, params, state, x[real], y[real], w[real])
            np.testing.assert_allclose(got[2], alone[2], rtol=1e-6)  # the cost
            for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(alone[0])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # the step taken
        return got

    monkeypatch.setattr(fit, "train_step", compared)
    fit.train_head(tracks, targets, "single", ABC, fit.TrainConfig(epochs=2, batch_size=7))
    assert padded  # the case was met


def test_an_interrupt_that_a_library_swallowed_stops_after_the_epoch():
    """Ctrl-C landing in JAX's garbage-collection callback was printed as 'Exception ignored'
    and lost: train-head ran all its epochs, wrote the head and exited 0."""
    import signal
    import time

    from jaxmir import interrupts

    tracks, targets = blobs(n_per_class=4)
    epochs = []
    with interrupts.installed():
        interrupts._received.append((signal.SIGINT, time.monotonic()))  # raised, then lost
        with pytest.raises(KeyboardInterrupt):
            fit.train_head(tracks, targets, "single", ABC, fit.TrainConfig(epochs=500),
                           log=epochs.append)
    assert [line.split(":")[0] for line in epochs] == ["epoch 0 (untrained)", "epoch 1"]


def test_resumed_head_width_must_match():
    tracks, targets = blobs(dim=20)
    other = fit.init_head(jax.random.PRNGKey(0), 128, 100, 3)
    with pytest.raises(InputError, match="128-d embeddings.*20-d"):
        fit.train_head(tracks, targets, "single", ABC, FAST, initial=other)


def test_a_resumed_head_of_other_outputs_is_refused():
    """In Python (the command line checks earlier): a broadcasting TypeError from inside JAX."""
    tracks, targets = blobs(classes=2)
    other = fit.init_head(jax.random.PRNGKey(0), 20, 100, 3)
    with pytest.raises(InputError, match="the resumed head has 3 outputs, the data 2 classes"):
        fit.train_head(tracks, targets, "single", ("a", "b"), FAST, initial=other)


def test_the_seconds_per_epoch_leave_out_the_first_which_compiles():
    """train-head's "ms per epoch": the first epoch's compilation would count as training."""
    epochs = [{"seconds": 9.0}, {"seconds": 1.0}, {"seconds": 2.0}]
    assert fit.steady_seconds(epochs) == [1.0, 2.0] and fit.steady_seconds(epochs[:1]) == [9.0]


def test_only_a_dense_relu_dense_head_gives_weights_to_resume_from():
    """MusiCNN's own head has two dense layers beside batch norms: resuming from those two alone
    would drop the rest, unsaid."""
    with pytest.raises(InputError, match=r"a head with layers \['batch_norm_0', 'batch_norm_3', "
                                         r"'dense_1', 'dense_4'\]; resuming needs dense -> ReLU"):
        export.params_from_model(jaxmir.load("msd-musicnn"))


def test_a_resumed_head_s_dense_layers_are_taken_in_order_of_their_number():
    """dense_9 comes before dense_10 (in order of text, dense_10 would be the first layer)."""
    from types import SimpleNamespace

    first = {"kernel": np.zeros((200, 100)), "bias": np.zeros(100)}
    second = {"kernel": np.ones((100, 3)), "bias": np.ones(3)}
    model = SimpleNamespace(source="head.pb",
                            variables={"params": {"head": {"dense_10": second, "dense_9": first}}})
    params = export.params_from_model(model)
    assert {layer: {k: v.shape for k, v in params[layer].items()} for layer in params} == {
        "dense": {"kernel": (200, 100), "bias": (100,)},
        "dense_1": {"kernel": (100, 3), "bias": (3,)}}


def _export_abc_head(output: Path, overwrite: bool = False, activation: str = "softmax") -> dict:
    """A fresh 3-output head (softmax: classes a, b, c) on msd-musicnn's 200-d embeddings,
    exported to ``output``."""
    params = fit.init_head(jax.random.PRNGKey(0), 200, 100, 3)
    return export.export_head(params, activation, ABC, output, "msd-musicnn", (187, 96),
                              "model/dense/BiasAdd", overwrite=overwrite)


def test_a_resumed_head_is_checked_before_any_decoding(tmp_path):
    """A 3-class head resumed on 2-class data, or on 50-d embeddings, was refused only after
    every file was decoded and the cross-validation had run; a softmax head resumed for
    regression data gave an identity head, unsaid. The files here do not exist: a check that
    came after decoding would end in "none of the files could be used"."""
    _export_abc_head(tmp_path / "abc")
    missing = tuple(str(tmp_path / f"missing{i}.wav") for i in range(6))
    two = data.Dataset(missing, np.eye(2, dtype=np.float32)[[0, 1] * 3], "single", AB)
    with pytest.raises(InputError, match=r"abc.pb has 3 outputs, the data 2 classes"):
        fit_head(two, config=FAST, cache=False, folds=3, resume=tmp_path / "abc.pb")
    three = data.Dataset(missing, np.eye(3, dtype=np.float32)[[0, 1, 2] * 2], "single", ABC)
    with pytest.raises(InputError, match="takes 200-d embeddings, but the backbone and layer "
                                         "give 50-d"), pytest.warns(JaxmirWarning):
        fit_head(three, layer="model/dense_1/BiasAdd", config=FAST, cache=False,
                 resume=tmp_path / "abc.pb")
    # before the dense head's first dense layer: its input's width (it was "a head without a
    # dense layer")
    with pytest.raises(InputError, match="takes 200-d embeddings, but the backbone and layer "
                                         "give 1506-d"), pytest.warns(JaxmirWarning):
        fit_head(three, layer="model/dropout/Identity", config=FAST, cache=False,
                 resume=tmp_path / "abc.pb")
    # a head trained there resumes there: past the checks, on to decoding the missing files
    wide = fit.init_head(jax.random.PRNGKey(0), 1506, 100, 3)
    export.export_head(wide, "softmax", ABC, tmp_path / "wide", "msd-musicnn", (187, 96),
                       "model/dropout/Identity")
    with pytest.raises(InputError, match="none of the 6 files could be used"), \
            pytest.warns(JaxmirWarning) as warned:
        fit_head(three, layer="model/dropout/Identity", config=FAST, cache=False,
                 resume=tmp_path / "wide.pb")
    assert all("skipped" in str(w.message) for w in warned)  # nothing of another layer
    values = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    regression = data.Dataset(missing, values, "regression", ABC)
    with pytest.warns(JaxmirWarning, match="abc.pb has softmax outputs; resumed for regression "
                                           "data, whose head has identity outputs"), \
            pytest.raises(InputError, match="none of the 6 files could be used"):
        fit_head(regression, config=FAST, cache=False, resume=tmp_path / "abc.pb")
    # a regression head's outputs are the data's columns; a multi-label one's, its classes
    for task, targets, named in (("regression", values[:, :2], "columns"),
                                 ("multi", np.eye(2, dtype=np.float32)[[0, 1] * 3], "classes")):
        with pytest.raises(InputError, match=f"abc.pb has 3 outputs, the data 2 {named}"):
            fit_head(data.Dataset(missing, targets, task, AB), config=FAST, cache=False,
                     resume=tmp_path / "abc.pb")
    # a regression head's outputs are linear (no activation layer): resumed for regression data
    # without a word of its activation, for single-label data said to be identity outputs
    _export_abc_head(tmp_path / "linear", activation="identity")
    with pytest.raises(InputError, match="none of the 6 files could be used"), \
            pytest.warns(JaxmirWarning) as warned:
        fit_head(regression, config=FAST, cache=False, resume=tmp_path / "linear.pb")
    assert all("skipped" in str(w.message) for w in warned), [str(w.message) for w in warned]
    with pytest.warns(JaxmirWarning, match="linear.pb has identity outputs; resumed for single "
                                           "data, whose head has softmax outputs"), \
            pytest.raises(InputError, match="none of the 6 files could be used"):
        fit_head(three, config=FAST, cache=False, resume=tmp_path / "linear.pb")


@pytest.mark.parametrize("field, value", [("epochs", 0), ("epochs", -1), ("batch_size", 0),
                                          ("batch_size", -4), ("patience", 0), ("hidden", 0),
                                          ("epochs", 2.5), ("learning_rate", 0.0),
                                          ("learning_rate", -1e-3), ("learning_rate", np.nan),
                                          ("weight_decay", -1e-5),
                                          ("validation_fraction", 1.0)])
def test_train_config_refuses_out_of_range_values(field, value):
    with pytest.raises(InputError, match=f"TrainConfig {field} = "):
        fit.TrainConfig(**{field: value})
    with pytest.raises(InputError, match=f"TrainConfig {field} = "):
        dataclasses.replace(FAST, **{field: value})


@pytest.mark.parametrize("field, value", [("steps", 0), ("steps", -1), ("batch_size", 0),
                                          ("head_learning_rate", 0.0),
                                          ("backbone_learning_rate", float("inf")),
                                          ("seed", 1.5), ("seed", True)])  # seeds went unchecked
def test_finetune_config_refuses_out_of_range_values(field, value):
    from jaxmir.train.finetune import FinetuneConfig

    with pytest.raises(InputError, match=f"FinetuneConfig {field} = "):
        FinetuneConfig(**{field: value})


ONE_EPOCH = fit.TrainConfig(epochs=1)


@pytest.mark.parametrize("bad", ["scaled", "shifted", "negative", "beyond_rounding",
                                 "a_hundredth_over"])
def test_single_label_targets_must_be_one_hot_or_distributions(bad):
    tracks, onehot = blobs(n_per_class=6, classes=2)
    wrong = {"scaled": onehot * 3, "shifted": onehot - 0.5,
             "negative": onehot * 1.5 - np.roll(onehot, 1, axis=1) * 0.5,  # rows sum to 1
             "beyond_rounding": onehot * (1 + 2 * data.DISTRIBUTION_TOLERANCE),
             "a_hundredth_over": onehot * 1.01}[bad]  # no rounding makes a row sum to 1.01
    with pytest.raises(InputError, match="single-label targets must be one-hot rows or label "
                                         r"distributions.*row 0 is \["):
        fit.train_head(tracks, wrong, "single", AB, ONE_EPOCH)
    with pytest.raises(InputError, match="single-label targets"):
        fit.cross_validate(tracks, wrong, "single", AB, 2, ONE_EPOCH)


def test_label_distributions_train_within_float_rounding():
    """Label distribution learning's targets (means of k one-hot rows) pass; so does rounding."""
    from jaxmir.train.smoothing import knn_smooth

    tracks, onehot = blobs(n_per_class=6)
    smoothed = knn_smooth(np.stack([t.mean(axis=0) for t in tracks]), onehot, 7)
    rounded = 0.5 * onehot + np.float32(0.5 * 0.3333)  # written to 4 decimals: rows sum to 0.99995
    assert 0 < np.abs(rounded.sum(axis=1) - 1).min() < data.DISTRIBUTION_TOLERANCE
    for targets in (smoothed, rounded):
        assert len(fit.train_head(tracks, targets, "single", ABC, ONE_EPOCH).history) == 1


def test_multilabel_targets_must_lie_in_unit_interval():
    tracks, onehot = blobs(n_per_class=6)
    for wrong in (onehot * 2, onehot - 0.5):
        with pytest.raises(InputError, match=r"multi-label targets must lie in \[0, 1\]"):
            fit.train_head(tracks, wrong, "multi", ABC, ONE_EPOCH)
    fit.train_head(tracks, onehot * 0.8, "multi", ABC, ONE_EPOCH)  # probabilities are fine


@pytest.mark.parametrize("task", ["binary", "bogus"])
def test_unknown_task_refused_naming_the_accepted_ones(task):
    tracks, targets = blobs(n_per_class=4)
    expected = f"unknown task '{task}'; expected one of single, multi, regression"
    with pytest.raises(InputError, match=expected):
        fit.train_head(tracks, targets, task, ABC, ONE_EPOCH)
    with pytest.raises(InputError, match=expected):
        fit.cross_validate(tracks, targets, task, ABC, 2, ONE_EPOCH)
    with pytest.raises(InputError, match=expected):
        fit.Head(fit.init_head(jax.random.PRNGKey(0), 20, 100, 3), task, tuple("abc"))


def test_class_names_must_match_target_columns_and_single_label_needs_two():
    tracks, targets = blobs(n_per_class=4, classes=2)
    with pytest.raises(InputError, match="3 class name.*2 target column"):
        fit.train_head(tracks, targets, "single", ABC, ONE_EPOCH)
    with pytest.raises(InputError, match="repeated class names"):
        fit.train_head(tracks, targets, "single", ("a", "a"), ONE_EPOCH)
    with pytest.raises(InputError, match="only one class.*at least two"):
        fit.train_head(tracks, np.ones((len(tracks), 1)), "single", ("a",), ONE_EPOCH)


def test_malformed_arrays_raise_input_errors():
    tracks, targets = blobs(n_per_class=4, classes=2)
    with pytest.raises(InputError, match=r"targets of shape \(8,\)"):
        fit.train_head(tracks, targets[:, 0], "single", AB, ONE_EPOCH)
    with pytest.raises(InputError, match=r"track 0 has embeddings of shape \(20,\)"):
        fit.train_head([t[0] for t in tracks], targets, "single", AB, ONE_EPOCH)
    with pytest.raises(InputError, match=r"track 3 has embeddings of shape \(0, 20\)"):
        fit.train_head(tracks[:3] + [tracks[3][:0]] + tracks[4:], targets, "single", AB,
                       ONE_EPOCH)
    with pytest.raises(InputError, match="track 7 has 5-d embeddings, track 0 20-d"):
        fit.train_head(tracks[:7] + [tracks[7][:, :5]], targets, "single", AB, ONE_EPOCH)
    with pytest.raises(InputError, match="validation embeddings are 5-d, training embeddings 20-d"):
        fit.train_head(tracks, targets, "single", AB, ONE_EPOCH,
                       validation=([t[:, :5] for t in tracks], targets))
    with pytest.raises(InputError, match="too few to split off a validation set"):
        fit.train_head(tracks[3:5], targets[3:5], "single", AB, ONE_EPOCH)
    with pytest.raises(InputError, match="classes='ab': expected a sequence of names"):
        fit.train_head(tracks, targets, "single", "ab", ONE_EPOCH)  # took classes 'a' and 'b'
    poisoned = [t.copy() for t in tracks]
    poisoned[2][1, 4] = np.nan
    with pytest.raises(InputError,
                       match=r"track 2 has NaN or infinite embeddings \(patch 1 first\)"):
        fit.train_head(poisoned, targets, "single", AB, ONE_EPOCH)  # was "loss became nan"
    with pytest.raises(InputError, match="every track is in one class \\('a'\\)"):
        fit.train_head(tracks, np.eye(2)[[0] * 8], "single", AB, ONE_EPOCH)
    with pytest.raises(InputError, match="targets 'v': one value for every track"):
        # r² was NaN
        fit.cross_validate(tracks, np.full((8, 1), 0.5), "regression", ["v"], 2, ONE_EPOCH)
    for folds in ("3", 2.0, True):
        with pytest.raises(InputError, match=f"folds = {folds!r}; expected a whole number >= 2"):
            fit.cross_validate(tracks, targets, "single", AB, folds, ONE_EPOCH)  # was a TypeError
    head = fit.train_head(tracks, targets, "single", AB, ONE_EPOCH)
    with pytest.raises(InputError, match=r"this head takes \[patches, 20\]"):
        head.predict(np.zeros((2, 5)))


def test_tracks_are_averaged_over_their_own_patches():
    """A track's prediction is the mean of its own patches' (tracks of 1 and 3 patches)."""
    tracks, targets = blobs(n_per_class=2)
    head = fit.train_head(tracks, targets, "single", ABC, ONE_EPOCH)
    uneven = [tracks[0][:1], tracks[1]]
    np.testing.assert_allclose(head.predict_tracks(uneven),
                               [head.predict(track).mean(axis=0) for track in uneven],
                               rtol=1e-6, atol=1e-7)


def test_labels_of_another_shape_than_one_per_track_are_refused():
    """They stratify the validation split: one class index per track, or a refusal."""
    tracks, targets = blobs(n_per_class=4)
    for labels in (np.zeros(3, int), np.zeros((len(tracks), 1), int)):
        with pytest.raises(InputError, match=rf"labels have shape .*; expected \[{len(tracks)}\]"):
            fit.train_head(tracks, targets, "single", ABC, fit.TrainConfig(epochs=1),
                           labels=labels)


def test_a_single_label_validation_split_rounds_each_class_s_share():
    """15% of each class's 10 tracks is 1.5: two of each (rounded, as the multi-label split
    rounds its share), not one."""
    targets = np.eye(2, dtype=np.float32)[np.repeat([0, 1], 10)]
    _, validation = fit.split_validation(targets, "single", 0.15, np.random.default_rng(0))
    assert np.bincount(targets[validation].argmax(axis=1)).tolist() == [2, 2]


def test_a_multi_label_validation_split_leaves_a_track_to_train_on():
    """85% of 3 tracks rounds to all 3: none was left to train on."""
    targets = np.float32([[1, 0], [0, 1], [1, 1]])
    train, validation = fit.split_validation(targets, "multi", 0.85, np.random.default_rng(0))
    assert (len(train), len(validation)) == (1, 2)


def test_each_cross_validation_fold_trains_from_its_own_seed(monkeypatch):
    """Fold f trains from seed + f: its own initial weights and order of batches."""
    tracks, targets = blobs(n_per_class=4)
    seeds = []
    train = fit.train_head

    def recorded(*args, **kwargs):
        seeds.append(args[4].seed)
        return train(*args, **kwargs)

    monkeypatch.setattr(fit, "train_head", recorded)
    fit.cross_validate(tracks, targets, "single", ABC, 3, dataclasses.replace(ONE_EPOCH, seed=5))
    assert seeds == [5, 6, 7]
    # past the last seed JAX takes (TrainConfig's bound), the next is 0
    fit.cross_validate(tracks, targets, "single", ABC, 2,
                       dataclasses.replace(ONE_EPOCH, seed=fit.MAX_SEED))
    assert seeds[3:] == [fit.MAX_SEED, 0]


def test_the_confusion_picture_s_colours_are_fractions_of_the_true_class(monkeypatch, tmp_path):
    """Each row (a true class) sums to 1, as the colour bar says; columns do not."""
    require("matplotlib")
    from jaxmir.train import plot

    shown = []
    plt = plot.require_matplotlib()
    real = plt.Axes.imshow
    monkeypatch.setattr(plt.Axes, "imshow", lambda axes, image, **kw: shown.append(image)
                        or real(axes, image, **kw))
    plot.confusion_picture(np.array([[3, 1], [0, 4]]), AB, tmp_path / "c.png")
    np.testing.assert_allclose(shown[0], [[0.75, 0.25], [0.0, 1.0]])
    # a true class with no track (its row all 0) is drawn as 0, not 0 / 0's nan
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "invalid value in divide"
        plot.confusion_picture(np.array([[3, 1], [0, 0]]), AB, tmp_path / "d.png")
    np.testing.assert_array_equal(shown[1], [[0.75, 0.25], [0.0, 0.0]])


def test_the_confusion_picture_prints_each_count_in_its_cell_and_closes(monkeypatch, tmp_path):
    """imshow draws matrix[true, predicted] at x = predicted, y = true: each count is printed
    there (not transposed); the figure is closed once written (a CV run draws one per head)."""
    require("matplotlib")
    from jaxmir.train import plot

    plt = plot.require_matplotlib()
    printed, colours, drawn_on, real = {}, {}, [], plt.Axes.text

    def text(axes, x, y, words, **kw):
        printed[x, y], colours[x, y] = words, kw["color"]
        drawn_on.append(axes)
        return real(axes, x, y, words, **kw)

    monkeypatch.setattr(plt.Axes, "text", text)
    open_before = plt.get_fignums()
    matrix = np.array([[5, 1, 0], [2, 7, 3], [0, 4, 9]])
    plot.confusion_picture(matrix, ABC, tmp_path / "c.png")
    assert printed == {(predicted, true): str(matrix[true, predicted])
                       for true, predicted in np.ndindex(matrix.shape)}
    # white on the cells darker than half the colour bar (over half of the true class's tracks)
    assert {cell for cell, colour in colours.items() if colour == "white"} == {
        (0, 0), (1, 1), (2, 2)}  # 5/6, 7/12, 9/13; 4/13 and 3/12 stay black
    assert (drawn_on[0].get_xlabel(), drawn_on[0].get_ylabel()) == ("predicted", "true")
    assert plt.get_fignums() == open_before


def test_multilabel_and_regression_train():
    tracks, onehot = blobs()
    multi = np.clip(onehot + np.roll(onehot, 1, axis=1), 0, 1)
    head = fit.train_head(tracks, multi, "multi", ABC, FAST)
    assert metrics.evaluate("multi", multi, head.predict_tracks(tracks))["roc_auc"] > 0.9
    values = onehot @ np.array([[1.0], [2.0], [3.0]], np.float32)
    head = fit.train_head(tracks, values, "regression", ["v"],
                          fit.TrainConfig(epochs=40, learning_rate=1e-2))
    assert metrics.evaluate("regression", values, head.predict_tracks(tracks))["r2"] > 0.8


def test_metrics_match_scikit_learn():
    sk = require("sklearn.metrics")
    sk_exceptions = require("sklearn.exceptions")
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    cm = metrics.confusion_matrix(truth, pred, 4)
    assert metrics.balanced_accuracy(cm) == pytest.approx(sk.balanced_accuracy_score(truth, pred))
    # plain accuracy beside it, on a fold of 9 to 1 where the two differ (0.9 and 0.5)
    found = metrics.evaluate("single", np.eye(2)[[0] * 9 + [1]], np.eye(2)[[0] * 10])
    assert found == pytest.approx({"accuracy": sk.accuracy_score([0] * 9 + [1], [0] * 10),
                                   "normalized_accuracy": 0.5})
    # a test fold without a class (or predicting one it lacks): the classes it has, as
    # scikit-learn (it warns of the class predicted and absent)
    truth, pred = np.array([0, 0, 1, 1, 1]), np.array([0, 2, 1, 1, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        want = sk.balanced_accuracy_score(truth, pred)
    assert metrics.balanced_accuracy(metrics.confusion_matrix(truth, pred, 4)) == pytest.approx(
        want)
    labels = rng.integers(0, 2, 50)
    scores = np.round(rng.random(50), 1)  # ties on purpose
    assert metrics.roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores))
    assert metrics.average_precision(labels, scores) == pytest.approx(
        sk.average_precision_score(labels, scores))
    y, p = rng.standard_normal((30, 2)), rng.standard_normal((30, 2))
    assert metrics.evaluate("regression", y, p)["r2"] == pytest.approx(sk.r2_score(y, p))
    # an output constant in a test fold: its r² undefined, left out of the mean, not -inf (where
    # scikit-learn scores it 0, or 1 when predicted exactly: README says so)
    constant = np.c_[np.full(30, 3.0), y[:, 1]]
    assert metrics.evaluate("regression", constant, p)["r2"] == pytest.approx(
        sk.r2_score(y[:, 1], p[:, 1]))
    # outputs of other scales (a tempo, a 0-1 value): RMSE was pooled over them
    y, p = y * [[40.0, 0.2]] + [[100.0, 0.5]], p * [[40.0, 0.2]] + [[100.0, 0.5]]
    assert metrics.evaluate("regression", y, p)["rmse"] == pytest.approx(
        sk.root_mean_squared_error(y, p))
    # multi-label soft targets (probabilities): positive from 0.5 on (0.3 was counted as one)
    soft, scores = rng.choice([0.0, 0.3, 0.5, 0.7, 1.0], (40, 3)), rng.random((40, 3))
    found = metrics.evaluate("multi", soft, scores)
    assert found["roc_auc"] == pytest.approx(sk.roc_auc_score(soft >= 0.5, scores, average="macro"))
    assert found["pr_auc"] == pytest.approx(
        sk.average_precision_score(soft >= 0.5, scores, average="macro"))
    # a class every test track has: its PR-AUC is 1 whatever the scores (scikit-learn's too),
    # and it lifted the mean; undefined, as its ROC-AUC
    truth = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 0]], np.float32)
    wrong = 1.0 - truth
    # its ROC-AUC NaN as scikit-learn's (which warns "Only one class is present"), without
    # NumPy's warning of a 0 / 0 on the way
    with pytest.warns(sk_exceptions.UndefinedMetricWarning, match="Only one class"):
        assert np.isnan(sk.roc_auc_score(truth[:, 0], wrong[:, 0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.average_precision(truth[:, 0], wrong[:, 0]))
        assert np.isnan(metrics.roc_auc(truth[:, 0], wrong[:, 0]))
        assert np.isnan(metrics.roc_auc(1.0 - truth[:, 0], wrong[:, 0]))
    assert metrics.evaluate("multi", truth, wrong)["pr_auc"] == pytest.approx(
        sk.average_precision_score(truth[:, 1:], wrong[:, 1:], average="macro"))
    assert metrics.evaluate("multi", truth, wrong)["roc_auc"] == pytest.approx(
        sk.roc_auc_score(truth[:, 1:], wrong[:, 1:], average="macro"))
    assert np.isnan(metrics.evaluate("multi", truth[:1], wrong[:1])["pr_auc"])


def test_folds_partition_and_stratify():
    _, targets = blobs(n_per_class=10)
    folds = fit.fold_indices(targets, "single", 5, seed=0)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(30))
    assert all(np.array_equal(targets[f].sum(axis=0), [2, 2, 2]) for f in folds)
    tracks, targets = blobs(n_per_class=10)
    result = fit.cross_validate(tracks, targets, "single", ABC, 5, FAST)
    assert len(result.folds) == 5 and result.confusion.sum() == 30
    mean, std = result.summary["normalized_accuracy"]
    assert mean > 0.9 and std >= 0


def test_as_many_folds_as_tracks_leave_one_out_as_scikit_learn_does():
    """folds may be the number of tracks (its docstring's bound): each fold tests one track, as
    scikit-learn's LeaveOneOut splits; single-label classes of 3 tracks leave 2 to train on."""
    model_selection = require("sklearn.model_selection")
    _, targets = blobs(n_per_class=3)
    fit.check_folds(targets, "single", ABC, len(targets))  # accepted
    for task in ("single", "multi"):
        folds = fit.fold_indices(targets, task, len(targets), seed=0)
        want = [test for _, test in model_selection.LeaveOneOut().split(targets)]
        assert sorted(fold.tolist() for fold in folds) == sorted(t.tolist() for t in want)


def test_folds_of_uneven_classes_differ_by_one_track_at_most():
    """Each class's tracks dealt to the folds from where the class before left off: 3 classes of
    7 tracks in 5 folds made folds of 6, 6, 3, 3 and 3 tracks when each class began at fold 1."""
    _, targets = blobs(n_per_class=7)
    sizes = [len(fold) for fold in fit.fold_indices(targets, "single", 5, seed=0)]
    assert sum(sizes) == 21 and max(sizes) - min(sizes) <= 1


def test_the_confusion_matrix_s_rows_are_the_true_classes():
    """Rows true classes, columns predictions (scikit-learn's order, the --plot picture's): with
    training targets that teach every track the first class, each row still sums to its class's
    5 tracks and the predictions gather in column 0."""
    tracks, targets = blobs(n_per_class=5)
    first = np.array([[0.8, 0.1, 0.1]], np.float32)
    result = fit.cross_validate(tracks, targets, "single", ABC, 5, FAST,
                                smooth=lambda train: np.repeat(first, len(train), axis=0))
    assert result.confusion.sum(axis=1).tolist() == [5, 5, 5]
    assert result.confusion[:, 0].sum() > 10


def test_cross_validation_reports_the_median_seconds_per_epoch(monkeypatch):
    """As train-head's (test_fit_head_reports_the_median_seconds_per_epoch): the folds' epochs'
    median, which one epoch slowed by other work on the machine does not move."""
    folds_seconds = iter([[0.01, 0.02], [0.01, 5.0]])
    monkeypatch.setattr(fit, "steady_seconds", lambda history: next(folds_seconds))
    tracks, targets = blobs(n_per_class=4)
    result = fit.cross_validate(tracks, targets, "single", ABC, 2, ONE_EPOCH)
    assert result.seconds_per_epoch == np.median([0.01, 0.02, 0.01, 5.0])


def test_one_epoch_still_times_an_epoch():
    tracks, targets = blobs(n_per_class=4)
    result = fit.cross_validate(tracks, targets, "single", ABC, 2, fit.TrainConfig(epochs=1))
    assert np.isfinite(result.seconds_per_epoch) and result.seconds_per_epoch > 0


def test_an_exported_graph_is_the_same_bytes_in_every_process(tmp_path):
    """A head's NodeDef attribute maps were written in the order of Python's string hashing, so
    the same head gave other .pb bytes in each process (PYTHONHASHSEED)."""
    script = ("import jax; from jaxmir.train import export, fit; "
              "params = jax.device_get(fit.init_head(jax.random.PRNGKey(3), 200, 100, 3)); "
              "export.export_head(params, 'softmax', ('a', 'b', 'c'), __import__('sys').argv[1], "
              "'msd-musicnn', (187, 96), 'model/dense/BiasAdd')")
    written = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"head{seed}"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=300,
                       env=child_env(PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu"))
        written.append(out.with_suffix(".pb").read_bytes())
    assert written[0] == written[1] == written[2]


# -- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["single", "multi", "regression"])
def test_export_loads_in_jaxmir_and_tensorflow(tmp_path, task):
    params = jax.device_get(fit.init_head(jax.random.PRNGKey(3), 200, 100, 3))
    head = fit.Head(params, task, ABC)
    paths = export.export_head(params, head.activation, head.classes, tmp_path / "mine",
                               "msd-musicnn", (187, 96), "model/dense/BiasAdd")
    x = np.random.default_rng(0).standard_normal((6, 200)).astype(np.float32)
    ours = head.predict(x)
    model = jaxmir.load(paths[".pb"])
    assert model.labels == ABC
    assert jaxmir.loading.backbone_of(model) == "msd-musicnn"
    meta = json.loads(paths[".json"].read_text())
    assert meta["inference"]["embedding_model"]["model_name"] == "msd-musicnn-1"
    assert meta["inference"]["sample_rate"] == jaxmir.load("msd-musicnn").frontend.sample_rate
    # Essentia's metadata keys and words (regression heads were "regressor", emomusic's
    # "regression model"; no author, email, release date, citation)
    essentia_keys = ["name", "type", "link", "version", "description", "author", "email",
                     "release_date", "framework", "framework_version", "classes", "model_types",
                     "dataset", "schema", "citation", "inference"]
    assert [key for key in meta if key in essentia_keys] == essentia_keys
    assert meta["type"] == {"single": "multi-class classifier", "multi": "multi-label classifier",
                            "regression": "regression model"}[task]
    assert meta["framework_version"] == "1.15.0"
    output = export.OUTPUT_NODE[head.activation]
    # the same float32 products in another order: ~200 terms of size ~1 -> 1e-5 is ample
    np.testing.assert_allclose(np.asarray(model.apply(x)["predictions"]), ours, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jaxmir.load(paths[".npz"]).apply(x)["predictions"]),
                               ours, atol=1e-5)
    # the JSON's schema names the graph's tensors, of its shapes
    schema = meta["schema"]
    assert [o["name"] for o in schema["outputs"]] == [output, "model/dense/BiasAdd"]
    tf_out, tf_emb = run_tf(paths[".pb"], {f"{schema['inputs'][0]['name']}:0": x},
                            [f"{o['name']}:0" for o in schema["outputs"]])
    assert [list(tensor.shape[1:]) for tensor in (x, tf_out, tf_emb)] == \
        [entry["shape"] for entry in schema["inputs"] + schema["outputs"]]
    assert_parity(output, tf_out, ours, probabilities=task != "regression")
    assert_parity("embeddings", tf_emb, np.asarray(model.apply(x, "model/dense/BiasAdd")
                                                  ["model/dense/BiasAdd"]))
    with pytest.raises(InputError, match="already exist"):
        export.export_head(params, head.activation, head.classes, tmp_path / "mine",
                           "msd-musicnn", (187, 96), "model/dense/BiasAdd")


# -- end to end ----------------------------------------------------------------------------------
def test_cli_train_head_end_to_end(tmp_path, audio_set, capsys, monkeypatch):
    require("matplotlib")
    monkeypatch.setenv("JAXMIR_NO_CACHE", "1")  # the persistent cache is process-wide
    monkeypatch.setenv("JAXMIR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "heads" / "timbre"
    argv = ["train-head", str(audio_set), "-o", str(out), "-b", "msd-musicnn", "--folds", "2",
            "--epochs", "5", "--plot"]
    assert jaxmir_cli.main(argv) == 0  # through jaxmir's own command line
    # the embeddings cached where --help says: $JAXMIR_CACHE_DIR/embeddings
    assert len(list((tmp_path / "cache" / "embeddings").rglob("*.npy"))) == 8
    printed = capsys.readouterr()
    assert "2-fold normalized_accuracy" in printed.out
    assert "features" not in printed.err  # its progress bar went to logs too (not a terminal)
    for suffix in (".pb", ".json", ".npz"):
        assert out.with_suffix(suffix).is_file()
    picture = (tmp_path / "heads" / "timbre-confusion.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 1000
    model = jaxmir.load(out.with_suffix(".pb"), backbone="msd-musicnn")
    assert model.labels == ("drums", "pads")
    # again: refused without --overwrite, nothing written; the cache makes it quick
    assert jaxmir_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "timbre-confusion.png already exist; choose another --output or overwrite them " \
           "(--overwrite)" in err and " and " in err
    # matplotlib's warnings (a glyph its fonts lack, for a class named in another script) came
    # raw, with their file and line, after jaxmir's own warning lines had ended
    from jaxmir.train import plot

    real = plot.confusion_picture

    def glyphless(*args):
        warnings.warn("Glyph 40723 missing from font(s) DejaVu Sans.", UserWarning)
        return real(*args)

    monkeypatch.setattr(plot, "confusion_picture", glyphless)
    assert jaxmir_cli.main(argv + ["--overwrite"]) == 0
    captured = capsys.readouterr()
    assert "jaxmir: warning: Glyph 40723 missing from font(s) DejaVu Sans." in captured.err
    assert "UserWarning" not in captured.err
    printed = captured.out.splitlines()  # the head's files, then its picture
    assert printed[-1].endswith("timbre-confusion.png") and printed[-2].endswith("timbre.npz")
    # Ctrl-C as the picture was drawn, once the head had been written, left the head without
    # it: the rerun then refused the head's files. It is drawn first now, and lands with them.
    import signal

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args)

    monkeypatch.setattr(plot, "confusion_picture", interrupted)
    before = {p.name: p.read_bytes() for p in (tmp_path / "heads").iterdir()}
    assert jaxmir_cli.main(argv + ["--overwrite"]) == 130
    assert {p.name: p.read_bytes() for p in (tmp_path / "heads").iterdir()} == before


@pytest.mark.parametrize("existing, flags", [
    ("h-confusion.png", ["--folds", "2", "--plot"]), ("h.pb", ["--finetune"]),
    ("h-backbone.npz", ["--finetune"])], ids=["picture", "finetuned-head", "finetuned-backbone"])
def test_cli_refuses_every_file_it_would_overwrite_before_reading_audio(tmp_path, capsys, existing,
                                                                        flags):
    """--plot overwrote NAME-confusion.png without --overwrite; --finetune found NAME.pb taken only
    after fine-tuning (72 s in a tester's run)."""
    if "--plot" in flags:
        require("matplotlib")
    (tmp_path / existing).write_text("precious")
    argv = ["train-head", str(tmp_path / "no-data-here"), "--output", str(tmp_path / "h"), *flags]
    assert jaxmir_cli.main(argv) == 1
    assert f"{existing} already exists; choose another --output or overwrite it (--overwrite)" \
        in capsys.readouterr().err
    assert (tmp_path / existing).read_text() == "precious"
    parser = jaxmir_cli.build_parser()  # --overwrite as tag and embed spell it; --force kept
    for flag in ("--overwrite", "--force"):
        assert parser.parse_args(["train-head", "D", "--output", "h", flag]).overwrite
    assert not parser.parse_args(["train-head", "D", "--output", "h"]).overwrite
    quiet = parser.parse_args(["train-head", "D", "-o", "h", "--no-progress", "--no-cache"])
    assert quiet.no_progress and quiet.no_cache  # as tag and embed take them
    # --folds 0 (no cross-validation, the default) may be said; 1 alone is refused
    assert [parser.parse_args(["train-head", "D", "-o", "h", "--folds", folds]).folds
            for folds in ("0", "2")] == [0, 2]


@pytest.mark.parametrize("folder", ["h.pb", "h.json", "h-backbone.npz"])
def test_cli_refuses_a_folder_in_an_output_s_place_before_reading_audio(tmp_path, capsys, folder):
    """With --overwrite, a folder NAME.pb was found only at the export, after the training."""
    (tmp_path / folder).mkdir()
    argv = ["train-head", str(tmp_path / "no-data-here"), "--output", str(tmp_path / "h"),
            "--overwrite", "--finetune"]
    assert jaxmir_cli.main(argv) == 1
    assert f"{tmp_path / folder} is a folder; give the head another --output " \
        "name" in capsys.readouterr().err


def test_two_folders_in_outputs_places_are_named_in_one_sentence(tmp_path):
    from jaxmir.train.export import refuse_folders

    for name in ("h.pb", "h.json"):
        (tmp_path / name).mkdir()
    with pytest.raises(InputError, match=r"h\.pb, .*h\.json are folders; give the head"):
        refuse_folders([tmp_path / "h.pb", tmp_path / "h.json", tmp_path / "h.npz"])


def test_a_link_into_no_folder_replaces_none_of_the_head_s_files(tmp_path, capsys):
    """`--overwrite` with NAME.json a link into a missing folder: the new .pb replaced the old,
    then the .json's rename failed, naming a staging file already gone; the old .npz stayed."""
    (tmp_path / "h.json").symlink_to(tmp_path / "gone" / "h.json")
    argv = ["train-head", str(tmp_path / "no-data-here"), "--output", str(tmp_path / "h"),
            "--overwrite"]
    assert jaxmir_cli.main(argv) == 1  # before any audio is read
    assert f"h.json leads to {tmp_path / 'gone' / 'h.json'}, which cannot be written (no such " \
        "folder)" in capsys.readouterr().err
    old = {suffix: f"old {suffix}" for suffix in (".pb", ".npz")}
    for suffix, text in old.items():
        (tmp_path / f"h{suffix}").write_text(text)
    with pytest.raises(InputError, match=r"h.json leads to .*gone/h.json, which cannot be written "
                                         r"\(No such file or directory\); no file of the head"):
        _export_abc_head(tmp_path / "h", overwrite=True)
    assert {suffix: (tmp_path / f"h{suffix}").read_text() for suffix in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json", "h.npz", "h.pb"]


def test_a_head_that_cannot_be_written_is_named_and_the_old_one_kept(tmp_path, monkeypatch):
    """A full disk while the head's files were written said only "No space left on device"."""
    import errno

    from jaxmir import weights

    old = {suffix: f"old {suffix}" for suffix in (".pb", ".json", ".npz")}
    for suffix, text in old.items():
        (tmp_path / f"h{suffix}").write_text(text)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(weights, "write_atomically", full)
    with pytest.raises(InputError, match=re.escape(f"cannot write the head {tmp_path / 'h'} (No "
                                                   "space left on device); no file of the head "
                                                   "was replaced")):
        _export_abc_head(tmp_path / "h", overwrite=True)
    assert {suffix: (tmp_path / f"h{suffix}").read_text() for suffix in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json", "h.npz", "h.pb"]


def test_cli_counts_a_link_as_a_file_it_would_overwrite(tmp_path, capsys):
    """A link to no file (yet) was not refused, then replaced by the head's file; its target was
    never written. With --overwrite the head goes where the link leads, the link kept."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "h.pb").symlink_to(tmp_path / "elsewhere" / "real.pb")
    argv = ["train-head", str(tmp_path / "no-data-here"), "--output", str(tmp_path / "h")]
    assert jaxmir_cli.main(argv) == 1
    assert "h.pb already exists" in capsys.readouterr().err
    assert (tmp_path / "h.pb").is_symlink()
    _export_abc_head(tmp_path / "h", overwrite=True)
    assert (tmp_path / "h.pb").is_symlink() and (tmp_path / "elsewhere" / "real.pb").is_file()
    os.mkfifo(tmp_path / "f.json")  # --overwrite replaced the pipe by the head's JSON
    with pytest.raises(InputError, match="f.json is not a regular file"):
        _export_abc_head(tmp_path / "f", overwrite=True)
    assert stat.S_ISFIFO((tmp_path / "f.json").stat().st_mode)


def test_a_rename_failing_after_others_names_the_files_replaced(tmp_path, monkeypatch):
    """The head's JSON place taken by a folder between the checks and the renames: the real
    rename fails, and the error says the .pb was replaced and the head is incomplete (it was a
    bare IsADirectoryError)."""
    replace = os.replace

    def racing_replace(source, target):
        if Path(target).name == "h.pb":
            (tmp_path / "h.json").mkdir()
        replace(source, target)

    monkeypatch.setattr(export.os, "replace", racing_replace)
    with pytest.raises(InputError, match=re.escape(f"cannot move {tmp_path / 'h.json'} into place "
                                                   "(Is a directory); h.pb replaced, the others "
                                                   "not: the head is incomplete")):
        _export_abc_head(tmp_path / "h")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json", "h.pb"]


def test_every_file_in_an_output_s_place_is_named(tmp_path):
    """Three of the head's files there: each one named, the last after "and"."""
    paths = [tmp_path / name for name in ("h.pb", "h.json", "h.npz")]
    for path in paths:
        path.write_text("old")
    with pytest.raises(InputError) as refused:
        export.refuse_existing(paths)
    assert str(refused.value) == f"{paths[0]}, {paths[1]} and {paths[2]} already exist; choose " \
        "another --output or overwrite them (--overwrite)"


def test_a_failed_rename_leaves_no_copy_beside_a_link_s_target(tmp_path, monkeypatch):
    """NAME.npz a link into another folder: the new .npz is copied there first. A rename that
    failed must remove that copy, not leave a hidden file in the other folder."""
    import errno

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.npz").write_text("old .npz")
    (tmp_path / "h.npz").symlink_to(elsewhere / "real.npz")

    replace = os.replace

    def failing_replace(source, target):  # the renames into the head's places fail
        if Path(target).parent in (tmp_path, elsewhere):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        replace(source, target)

    monkeypatch.setattr(export.os, "replace", failing_replace)
    with pytest.raises(InputError, match=re.escape(f"cannot move {tmp_path / 'h.pb'} into place "
                                                   "(Input/output error); no file of the head "
                                                   "was replaced")):
        _export_abc_head(tmp_path / "h", overwrite=True)
    assert os.listdir(elsewhere) == ["real.npz"]
    assert (elsewhere / "real.npz").read_text() == "old .npz"
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "h.npz"]


@pytest.mark.parametrize("flags", [[], ["--finetune"], ["--folds", "2", "--plot"]])
def test_cli_refuses_an_output_folder_it_cannot_write_before_reading_audio(tmp_path, capsys, flags):
    """A head under a file (or in a read-only folder) failed after embeddings, cross-validation
    and training, naming a hidden staging folder."""
    (tmp_path / "notes").write_text("a file")
    argv = ["train-head", str(tmp_path / "no-data-here"), "--output",
            str(tmp_path / "notes" / "deeper" / "h"), *flags]
    assert jaxmir_cli.main(argv) == 1
    assert f"cannot write the head in {tmp_path / 'notes' / 'deeper'}: {tmp_path / 'notes'} is a " \
        "file" in capsys.readouterr().err


def test_a_head_s_existing_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    """The head's own folder is probed where it exists, not the folder above it (writable here).
    Read-only simulated (root writes anywhere): the probe in heads/ says Permission denied."""
    heads = tmp_path / "heads"
    heads.mkdir()
    monkeypatch.setattr(export, "unwritable",
                        lambda folder: "Permission denied" if Path(folder) == heads else None)
    for output in (heads / "h", heads / "new" / "h"):  # heads/new: made in heads, refused too
        with pytest.raises(InputError, match=re.escape(f"cannot write the head in "
                                                       f"{output.parent}: Permission denied")):
            export.check_output_folder(output)
    export.check_output_folder(tmp_path / "h")


def test_cli_refuses_finetune_steps_without_finetune(tmp_path, capsys):
    """--finetune-steps without --finetune was ignored without a word."""
    from jaxmir.train.finetune import FinetuneConfig

    argv = ["train-head", str(tmp_path / "no-data-here"), "--output", str(tmp_path / "h"),
            "--finetune-steps", "3"]
    assert jaxmir_cli.main(argv) == 2
    assert "--finetune-steps sets fine-tuning's steps: add --finetune" in capsys.readouterr().err
    help_text = jaxmir_cli.build_parser()._subparsers._group_actions[0].choices[
        "train-head"].format_help()
    assert f"(default {FinetuneConfig.steps};" in " ".join(help_text.split())


def test_cli_refuses_plot_without_folds(tmp_path, capsys):
    """--plot draws the cross-validation's confusion matrix: without --folds there is none, and
    the head would be trained and written with no picture, unsaid."""
    argv = ["train-head", str(tmp_path / "no-data-here"), "--output", str(tmp_path / "h"),
            "--plot"]
    assert jaxmir_cli.main(argv) == 2  # the command line is wrong
    assert "--plot draws the cross-validation confusion matrix: add --folds" in \
        capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_refuses_smoothing_k_without_smoothing(tmp_path, capsys):
    """--smoothing-k without --label-smoothing was ignored without a word."""
    argv = ["train-head", str(tmp_path / "no-data-here"), "--output", str(tmp_path / "h"),
            "--smoothing-k", "3"]
    assert jaxmir_cli.main(argv) == 2  # the command line is wrong
    assert "--smoothing-k sets label smoothing's neighbours: add --label-smoothing knn or lmnn" in \
        capsys.readouterr().err


def test_ctrl_c_between_the_renames_of_a_forced_export_leaves_one_head(tmp_path, monkeypatch):
    """Ctrl-C after the new .pb replaced the old left it beside the old head's .json and .npz
    (three classes in the graph, two in the JSON): the renames now finish first."""
    import signal

    key = jax.random.PRNGKey(0)
    old = {"dense": {"kernel": np.ones((4, 3), np.float32), "bias": np.zeros(3, np.float32)},
           "dense_1": {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros(2, np.float32)}}
    new = fit.init_head(key, 4, 3, 3)
    out = tmp_path / "h"
    export.export_head(old, "softmax", AB, out, "msd-musicnn", (187, 96), "model/dense/BiasAdd")
    renames, replace = [], os.replace

    def interrupted_replace(source, target):
        replace(source, target)
        if Path(target).parent == tmp_path:  # the head's files (not the staging folder's)
            renames.append(target)
            if len(renames) == 1:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C once the first file is in place

    monkeypatch.setattr(export.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        export.export_head(jax.device_get(new), "softmax", ABC, out, "msd-musicnn", (187, 96),
                           "model/dense/BiasAdd", overwrite=True)
    assert len(renames) == 3
    assert json.loads(out.with_suffix(".json").read_text())["classes"] == list(ABC)
    assert jaxmir.load(out.with_suffix(".pb")).labels == ABC
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_cli_without_the_embedding_cache_writes_none_and_counts_the_files_skipped(
        tmp_path, audio_set, capsys, monkeypatch):
    """--no-embedding-cache writes no embeddings anywhere; the summary line counts the files
    that could not be used."""
    monkeypatch.setenv("JAXMIR_NO_CACHE", "1")  # compiled programs: a process-wide cache
    monkeypatch.setenv("JAXMIR_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(audio_set, data)
    (data / "drums" / "broken.wav").write_bytes(b"RIFF, and nothing else")
    argv = ["train-head", str(data), "-o", str(tmp_path / "h"), "--epochs", "1",
            "--no-embedding-cache"]
    assert jaxmir_cli.main(argv) == 0
    assert "8 tracks (1 skipped)" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()


def test_cli_finetune_writes_the_head_its_backbone_and_the_dataset_entry(tmp_path, audio_set,
                                                                       monkeypatch):
    """The fine-tuned head's JSON kept only {"name": "fine-tuned"}: its dataset's name, size and
    cross-validation figures were dropped."""
    monkeypatch.setenv("JAXMIR_NO_CACHE", "1")
    out = tmp_path / "heads" / "tuned"  # a folder made for it (the backbone's save failed there)
    argv = ["train-head", str(audio_set), "--output", str(out), "--folds", "2", "--epochs", "3",
            "--finetune", "--finetune-steps", "1", "--cache", str(tmp_path / "cache")]
    assert jaxmir_cli.main(argv) == 0
    dataset = json.loads(out.with_suffix(".json").read_text())["dataset"]
    assert dataset["name"] == audio_set.name and dataset["size"] == "8 tracks, 4/4 per class"
    assert "2-fold_cross_validation_normalized_accuracy" in dataset["metrics"]
    assert "before fine-tuning" in dataset["fine_tuned"]
    assert sorted(p.name for p in out.parent.iterdir()) == [  # no picture without --plot
        "tuned-backbone.npz", "tuned.json", "tuned.npz", "tuned.pb"]
    entry = json.loads(out.with_suffix(".json").read_text())["inference"]["embedding_model"]
    assert entry["sha256"] == catalog.sha256(out.parent / "tuned-backbone.npz")  # as moved there
    assert entry["output"] == "model/dense/BiasAdd"  # the graph's node, as Essentia reads it
    with warnings.catch_warnings():
        warnings.simplefilter("error", JaxmirWarning)
        model = jaxmir.load(out.with_suffix(".pb"), backbone=str(out.parent / "tuned-backbone.npz"))
    assert model.labels == ("drums", "pads")
    tuned = jaxmir.load(out.parent / "tuned-backbone.npz")  # says what it was tuned from
    assert tuned.metadata["provenance"]["fine_tuned_from"] == "msd-musicnn"


def test_cli_reads_the_audio_as_the_head_will_be_deployed(tmp_path, monkeypatch):
    """train-head and its fine-tuning read every file with the default converter and decoder:
    a head for Essentia's model pages (``MonoLoader(resampleQuality=4)``) learnt from other
    embeddings than it is given there."""
    import soundfile

    from jaxmir import audio

    monkeypatch.setenv("JAXMIR_NO_CACHE", "1")
    rng = np.random.default_rng(3)
    t = np.arange(int(3.5 * 44100)) / 44100
    for kind, i in [(k, i) for k in ("tones", "noise") for i in range(2)]:
        signal = np.sin(2 * np.pi * (220 + 110 * i) * t) if kind == "tones" else \
            rng.standard_normal(t.size) * 0.3
        (tmp_path / "data" / kind).mkdir(parents=True, exist_ok=True)
        soundfile.write(tmp_path / "data" / kind / f"{i}.wav", 0.5 * signal, 44100)
    read = []
    load_audio = audio.load_audio

    def spy(path, *args, **kwargs):
        read.append((kwargs.get("resampler"), kwargs.get("decoder")))
        return load_audio(path, *args, **kwargs)

    monkeypatch.setattr(audio, "load_audio", spy)
    argv = ["train-head", str(tmp_path / "data"), "--output", str(tmp_path / "h"),
            "--epochs", "2", "--finetune", "--finetune-steps", "1", "--cache",
            str(tmp_path / "cache"), "--resampler", "essentia-q4", "--decoder", "float"]
    assert jaxmir_cli.main(argv) == 0
    assert len(read) == 8 and set(read) == {("essentia-q4", "float")}  # embeddings, fine-tuning
    dataset = json.loads((tmp_path / "h.json").read_text())["dataset"]
    assert dataset["audio"] == {"resampler": "essentia-q4", "decoder": "float"}  # to deploy so
    from jaxmir.loading import trained_reading

    reading = {"resampler": "essentia-q4", "decoder": "float"}
    for written in ("h.pb", "h.npz", "h-backbone.npz"):  # what a run then warns of otherwise
        assert trained_reading(jaxmir.load(tmp_path / written)) == reading
    model = jaxmir.load("msd-musicnn")
    with pytest.raises(JaxmirError, match="'essentia-q2' .* is not reproduced"):
        fit_head(tmp_path / "data", resampler="essentia-q2")
    with pytest.raises(JaxmirError, match="unknown decoder 'x'"):  # not one failure a file
        embeddings.extract_embeddings(model, "msd-musicnn", [str(next(
            (tmp_path / "data").rglob("*.wav")))], "embeddings", False, decoder="x")
    assert len(read) == 8  # refused before any file was read
    tap, _ = model.resolve_output("embeddings")
    for path in sorted(str(p) for p in (tmp_path / "data").rglob("*.wav")):
        key = embeddings.cache_key(embeddings.backbone_id("msd-musicnn"), tap, path,
                                   resampler="essentia-q4", decoder="float")
        cached = np.load(tmp_path / "cache" / f"{key}.npy")
        q4 = load_audio(path, resampler="essentia-q4", decoder="float")
        np.testing.assert_array_equal(cached, model.predict(q4, 16000, output="embeddings"))
        default = model.predict(load_audio(path), 16000, output="embeddings")
        assert np.max(np.abs(default - cached)) > 1e-3  # the converters' embeddings differ
        assert key != embeddings.cache_key(embeddings.backbone_id("msd-musicnn"), tap, path)
    # MonoLoader's default quality under its two names: one converter, one cache entry
    assert embeddings.cache_key("bb", "layer", path, resampler="essentia-q1") == \
        embeddings.cache_key("bb", "layer", path)


def test_a_run_reading_otherwise_than_the_head_s_training_is_warned_of(tmp_path, capsys,
                                                                       audio_set):
    """A head trained on embeddings of audio read otherwise (its JSON's dataset.audio) ran
    without a word: a tester's essentia-q4 head gave tags up to 0.2 off."""
    import soundfile

    song = tmp_path / "song.wav"
    soundfile.write(song, np.random.default_rng(0).standard_normal(44100 * 4) * 0.1, 44100)
    params = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 200, 100, 2))

    def head(name, audio):
        export.export_head(params, "softmax", AB, tmp_path / name, "msd-musicnn", (187, 96),
                           "model/dense/BiasAdd", {"name": "d", "audio": audio})
        return str(tmp_path / f"{name}.pb")

    def warned(*argv) -> list[str]:
        capsys.readouterr()
        assert jaxmir_cli.main(list(argv)) == 0  # a warning, the run done all the same
        return [line for line in capsys.readouterr().err.splitlines() if "dataset.audio" in line]

    q4 = head("q4", {"resampler": "essentia-q4", "decoder": "float"})
    said = warned("tag", str(song), "--model", q4)
    # the options as a command line takes them, as `jaxmir info` shows them
    assert len(said) == 1 and "trained on audio read with --resampler essentia-q4 --decoder " \
        "float (its metadata's dataset.audio), this run reads with --resampler essentia " \
        "--decoder essentia" in said[0] and said[0].endswith("; pass --resampler essentia-q4 "
                                                             "--decoder float")
    assert warned("embed", str(song), "--model", q4, "-o", str(tmp_path / "e.parquet"),
                  "--resampler", "essentia-q4", "--decoder", "float") == []
    said = warned("tag", str(song), "--model", q4, "--resampler", "essentia-q4")
    assert len(said) == 1 and "--decoder float" in said[0] and "--resampler" not in said[0]
    assert warned("tag", str(song), "--model", head("q1", {"resampler": "essentia-q1"})) == []
    odd = warned("tag", str(song), "--model", head("odd", {"decoder": "float",
                                                           "resampler": "mystery"}))
    assert len(odd) == 1 and "--resampler mystery --decoder float" in odd[0] \
        and "pass" not in odd[0]  # an option the command line does not take is no advice
    capsys.readouterr()  # a name on two lines, in colour, is shown as one word, as it is
    assert jaxmir_cli.main(["info", head("colour", {"resampler": "my sinc\n\x1b[31m"})]) == 0
    assert "trained on audio read with --resampler 'my sinc\\x0a\\x1b[31m'\n" in \
        capsys.readouterr().out
    assert warned("tag", str(song), "--model", head("no_name", {"resampler": ["a", "list"]})) \
        == []
    from jaxmir.loading import warn_of_another_reading

    with warnings.catch_warnings():  # a stream decodes nothing: its decoder is never other
        warnings.simplefilter("error")
        warn_of_another_reading(jaxmir.load(q4), "essentia-q4", None)
        # one converter under two names: a head trained with essentia-q1 read with essentia,
        # or one trained with essentia resumed by fit_head(resampler="essentia-q1"), is no other
        for trained, now in (("essentia-q1", "essentia"), ("essentia", "essentia-q1")):
            warn_of_another_reading(jaxmir.load(head(f"as-{trained}", {"resampler": trained})),
                                    now, "essentia")
    essentias = shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb")  # says nothing
    assert warned("tag", str(song), "--model", str(essentias), "--backbone", "msd-musicnn",
                  "--resampler", "soxr") == []
    for name, audio in (("soxr", {"resampler": "soxr"}),
                        ("q4", {"resampler": "essentia-q4", "decoder": "float"})):
        save_weights(jaxmir.load("msd-musicnn"), tmp_path / f"{name}-backbone.npz",
                     provenance={"dataset": {"audio": audio}})  # as fine-tuning writes it
    said = warned("tag", str(song), "--model", str(essentias), "--backbone",
                  str(tmp_path / "soxr-backbone.npz"))  # given apart, it says its own
    assert len(said) == 1 and "soxr-backbone.npz was trained on audio read with --resampler " \
        "soxr" in said[0]
    said = warned("tag", str(song), "--model", q4, "--backbone", str(tmp_path / "q4-backbone.npz"))
    assert len(said) == 1 and "q4.pb" in said[0]  # a backbone read as its head: said once
    capsys.readouterr()
    assert jaxmir_cli.main(["info", q4]) == 0
    assert "trained on audio read with --resampler essentia-q4 --decoder float" in \
        capsys.readouterr().out
    with pytest.warns(JaxmirWarning, match="read with --resampler essentia-q4 --decoder float "):
        fit_head(audio_set, resume=q4, config=FAST, cache=False)  # trained on, otherwise read


def test_cli_refuses_plot_for_data_without_a_confusion_matrix(tmp_path, audio_set, capsys):
    """Multi-label and regression heads have no confusion matrix: --plot wrote nothing, silently,
    then with a warning after all the training."""
    require("matplotlib")
    files = sorted(audio_set.rglob("*.wav"))
    table = tmp_path / "multi.csv"
    table.write_text("path,label\n" + "".join(f"{f},{'a;b' if i % 2 else 'b'}\n"
                                              for i, f in enumerate(files)))
    argv = ["train-head", str(table), "--output", str(tmp_path / "h"), "--folds", "2", "--plot"]
    assert jaxmir_cli.main(argv) == 1
    assert f"--plot draws the confusion matrix of a classifier of one class per track; {table} " \
        "is multi-label data, whose head has none" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi.csv"]
    values = tmp_path / "values.csv"
    values.write_text("path,arousal\n" + "".join(f"{f},{i / 10}\n" for i, f in enumerate(files)))
    argv = ["train-head", str(values), "--output", str(tmp_path / "h"), "--folds", "2", "--plot"]
    assert jaxmir_cli.main(argv) == 1
    assert f"{values} is regression data, whose head has none" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi.csv", "values.csv"]


def test_cli_warns_of_classes_named_like_columns(tmp_path, capsys, monkeypatch):
    """A class named like a table's column made a head the tables refuse, without a word."""
    from types import SimpleNamespace

    from jaxmir.train import recipe

    validation = SimpleNamespace(summary={"roc_auc": (0.9, 0.01), "r2": (np.nan, np.nan)},
                                 confusion=None)
    tracks = type("Dataset", (list,), {"classes": ("path", "patches", "rock")})(["a", "b"])
    result = SimpleNamespace(cross_validation=validation, dataset=tracks, failures=[],
                             seconds_per_epoch=0.001, paths={})
    monkeypatch.setattr(recipe, "fit_head", lambda *args, **kwargs: result)
    argv = ["train-head", str(tmp_path), "--output", str(tmp_path / "h"), "--folds", "2"]
    assert jaxmir_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "2-fold roc_auc: 0.900" in captured.out
    assert "2-fold r2: undefined in every fold (too few tracks each)" in captured.out  # not nan
    # a class named like a table's column (or --per-patch's): the tables will refuse the head
    assert "the classes ['patches', 'path'] are also columns of jaxmir's Parquet and CSV " \
        "tables" in captured.err


def test_cli_finetune_lands_the_confusion_picture_with_the_head(tmp_path, capsys, monkeypatch,
                                                                audio_set):
    """With --finetune the head is written after fine-tuning: the picture --plot drew was not
    handed to it, and the run said it wrote a file that was not there."""
    require("matplotlib")
    from types import SimpleNamespace

    from jaxmir.train import finetune, recipe

    validation = SimpleNamespace(summary={"accuracy": (0.5, 0.1)},
                                 confusion=np.array([[2, 1], [1, 2]]))
    result = SimpleNamespace(cross_validation=validation, dataset=data.load_dataset(audio_set),
                             failures=[], seconds_per_epoch=0.001, paths={}, smoothing=None,
                             resampler="essentia", decoder="essentia")
    monkeypatch.setattr(recipe, "fit_head", lambda *args, **kwargs: result)
    monkeypatch.setattr(recipe, "dataset_entry", lambda *args: {})

    given = []

    def landing(*args, also):  # the head's files written, and what lands with them
        given.append(args)
        for drawn, picture in also.items():
            os.replace(drawn, picture)
        return {}

    monkeypatch.setattr(finetune, "finetune_and_export", landing)
    argv = ["train-head", str(audio_set), "--output", str(tmp_path / "h"), "--folds", "2",
            "--plot", "--finetune", "--finetune-steps", "3", "--seed", "5"]
    assert jaxmir_cli.main(argv) == 0
    assert given[0][4:6] == (3, 5)  # the steps and the seed given, not FinetuneConfig's
    assert f"wrote {tmp_path / 'h-confusion.png'}" in capsys.readouterr().out
    assert (tmp_path / "h-confusion.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h-confusion.png"]  # no draft folder


@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--epochs", "-1"),
                                           ("--batch-size", "0"), ("--batch-size", "-4"),
                                           ("--finetune-steps", "0"), ("--patience", "0"),
                                           ("--learning-rate", "0"), ("--learning-rate", "-1e-3"),
                                           ("--learning-rate", "inf"),
                                           ("--smoothing-k", "-2"), ("--folds", "1")])
def test_cli_refuses_out_of_range_options(tmp_path, capsys, option, value):
    argv = ["train-head", str(tmp_path / "no-data"), "--output", str(tmp_path / "h"),
            f"{option}={value}"]
    with pytest.raises(SystemExit) as stop:
        jaxmir_cli.main(argv)
    assert stop.value.code == 2
    assert f"argument {option}: expected" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_defaults_train_with_mtgs_recipe(tmp_path, monkeypatch):
    """``train-head``'s defaults are typed into its parser apart from TrainConfig: --patience 50
    or --batch-size 64 there passed every test. The defaults must give TrainConfig(), and
    TrainConfig() MTG's recipe (research/training.md §1: Dense(100), Adam 1e-3, batch 32, L2
    1e-5, the rate halved after 75 epochs without improvement, 150 epochs)."""
    from jaxmir.train import recipe

    given = []

    def spy(data, *args, config, **kwargs):
        given.append(config)
        raise InputError("stop before reading audio")

    monkeypatch.setattr(recipe, "fit_head", spy)
    assert jaxmir_cli.main(["train-head", str(tmp_path / "D"), "-o", str(tmp_path / "h")]) == 1
    assert given == [fit.TrainConfig()]
    mtg = {"hidden": 100, "learning_rate": 1e-3, "batch_size": 32, "weight_decay": 1e-5,
           "patience": 75, "epochs": 150}
    assert {name: getattr(given[0], name) for name in mtg} == mtg


def test_finetune_defaults_are_the_ones_its_help_states(capsys):
    """--finetune's rates are FinetuneConfig's (no option sets them), stated in --finetune-steps'
    help and the README: a backbone rate of 1e-3 instead of 1e-5 passed every test. The head's
    rate and L2 are MTG's (research/training.md §1: Adam 1e-3, L2 1e-5)."""
    from jaxmir.train.finetune import FinetuneConfig

    with pytest.raises(SystemExit):
        jaxmir_cli.main(["train-head", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    stated = re.search(r"\(default (\d+); batches of (\d+) patches, Adam at (\S+) for the "
                       r"backbone and (\S+) for the head", help_text)
    config = FinetuneConfig()
    assert stated is not None
    assert (int(stated[1]), int(stated[2]), float(stated[3]), float(stated[4])) == (
        config.steps, config.batch_size, config.backbone_learning_rate, config.head_learning_rate)
    assert (config.head_learning_rate, config.weight_decay) == (1e-3, 1e-5)


@pytest.mark.parametrize("options, message", [
    ({"smoothing": SmoothingConfig("knn", k=-2)}, "smoothing k = -2; expected a whole number"),
    ({"smoothing": SmoothingConfig("lmnn", lmnn_k=0)}, "lmnn_k = 0"),
    ({"smoothing": SmoothingConfig("fancy")}, "unknown label smoothing 'fancy'"),
    # a negative push inverted LMNN unsaid; 2 or NaN failed after decoding, blaming the features
    ({"smoothing": SmoothingConfig("lmnn", lmnn_push=-1.0)}, r"lmnn_push = -1.0; expected a "
                                                             r"weight in \[0, 1\]"),
    ({"smoothing": SmoothingConfig("lmnn", lmnn_push=float("nan"))}, "lmnn_push = nan"),
    ({"smoothing": SmoothingConfig("lmnn", lmnn_push=1.5)}, r"lmnn_push = 1.5; expected"),
    # a bool is no weight, as folds=False is no count (True passed as a push of 1)
    ({"smoothing": SmoothingConfig("lmnn", lmnn_push=True)}, r"lmnn_push = True; expected"),
    ({"folds": 1}, "folds = 1; expected 0"), ({"folds": -3}, "folds = -3"),
    # False and 0.0 passed as "0, no cross-validation", where True and 3.0 were refused
    ({"folds": False}, "folds = False; expected 0"), ({"folds": 0.0}, "folds = 0.0; expected 0")])
def test_fit_head_checks_options_before_reading_audio(options, message):
    # files that do not exist and a backbone that cannot load: the options must be refused first
    dataset = data.Dataset(("nowhere/a.wav", "nowhere/b.wav"), np.eye(2), "single", AB)
    with pytest.raises(InputError, match=message):
        fit_head(dataset, backbone="no-such-backbone", cache=False, **options)


def test_lmnn_push_takes_both_ends_of_its_range():
    """push weighs LMNN's impostor term and 1 - push its pull: 0 and 1 are weights in [0, 1], as
    the refusal of others says, not refused."""
    from jaxmir.train.recipe import check_options

    for push in (0, 0.0, 1, 1.0):
        check_options(0, SmoothingConfig("lmnn", lmnn_push=push))


@pytest.mark.parametrize("task", ["multi", "regression"])
def test_label_smoothing_is_refused_for_other_than_single_label_data(task):
    """Smoothing spreads a track's one class over its neighbours' classes, which multi-label and
    regression targets do not have: on multi-label data it would keep each track's first label
    alone (an argmax), a head trained on other targets unsaid."""
    paths = tuple(f"nowhere/{i}.wav" for i in range(30))
    targets = np.zeros((30, 2), np.float32)
    targets[:15, 0], targets[15:, 1], targets[::3] = 1, 1, 1  # every third track holds both
    dataset = data.Dataset(paths, targets, task, AB)
    with pytest.raises(InputError, match=f"label smoothing \\(knn\\) applies to single-label "
                                         f"data; the dataset is {task}"):
        fit_head(dataset, backbone="no-such-backbone", cache=False,
                 smoothing=SmoothingConfig("knn", k=3))


@pytest.mark.parametrize("method", ["knn", "lmnn"])
def test_smoothing_refuses_classes_of_k_tracks_or_fewer_before_reading_audio(method):
    """With 4 tracks a class, a track's own class holds at most 3 of its 10 neighbours: the
    smoothed targets would make every track's own class the smallest share (a tester's 12-track
    set trained a head that was wrong on every track)."""
    paths = tuple(f"nowhere/{i}.wav" for i in range(15))
    targets = np.eye(2)[[0] * 11 + [1] * 4]
    dataset = data.Dataset(paths, targets, "single", ("big", "small"))
    with pytest.raises(InputError, match=r"needs more than 10 tracks in every class: with 4, at "
                                         r"least 7 of a track's 10 neighbours are other classes', "
                                         r"whatever its features; class 'small' has 4 \(give more "
                                         r"tracks, or a smaller k"):
        fit_head(dataset, backbone="no-such-backbone", cache=False,
                 smoothing=SmoothingConfig(method))
    with pytest.raises(JaxmirError, match="no-such-backbone"):  # k = 3 passes on to the backbone
        fit_head(dataset, backbone="no-such-backbone", cache=False,
                 smoothing=SmoothingConfig(method, k=3))
    # cross-validation smooths within each fold's training split: 2 folds leave 'small' 2 tracks
    # (a tester's folds all scored chance, their targets outweighed by the other classes)
    with pytest.raises(InputError, match=r"over k = 3 neighbours needs more than 3 tracks.*class "
                                         r"'small' has 2 in some fold's training split \(2 folds\) "
                                         r"\(give more tracks, more folds \(each tests fewer "
                                         r"tracks\), or a smaller k"):
        fit_head(dataset, backbone="no-such-backbone", cache=False, folds=2,
                 smoothing=SmoothingConfig(method, k=3))
    if method == "lmnn":  # LMNN's own neighbours (3 by default) too: it failed after decoding
        # LMNN's neighbours are the track's own class's: "other classes' neighbours" misled
        with pytest.raises(InputError, match=r"from each track's 3 nearest tracks of its own "
                                             r"class \(LMNN's k = 3\), so every class needs more "
                                             r"than 3 tracks; class 'small' has 3 .*"
                                             r"SmoothingConfig\(lmnn_k=\) in Python\)"):
            fit_head(dataset, backbone="no-such-backbone", cache=False, folds=4,
                     smoothing=SmoothingConfig(method, k=2))


@pytest.mark.parametrize("output", ["", ".", "..", "/", "heads/"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_names_a_folder_is_refused_before_reading_audio(output, overwrite):
    """'' '.' '/' ended in a ValueError traceback, '..' wrote '...pb' here, 'heads/' wrote
    heads.pb beside the folder."""
    dataset = data.Dataset(("nowhere/a.wav", "nowhere/b.wav"), np.eye(2), "single", AB)
    with pytest.raises(OptionError,
                       match=f"--output {output!r} names a folder; give the head's name"):
        fit_head(dataset, backbone="no-such-backbone", cache=False, output=output,
                 overwrite=overwrite)


@pytest.mark.parametrize("given", ["heads/C", "heads/C.pb", "heads/C.PB", "heads/C.Json",
                                   "heads/C.NPZ"])
def test_a_head_s_files_are_named_whatever_the_case_of_the_suffix_given(given):
    """--output heads/C.PB wrote C.PB.pb, C.PB.json and C.PB.npz."""
    assert {suffix: str(path) for suffix, path in export.output_paths(given).items()} == {
        ".pb": "heads/C.pb", ".json": "heads/C.json", ".npz": "heads/C.npz"}


def test_cli_exits_2_for_an_output_that_names_a_folder(tmp_path, capsys):
    """The command line was wrong, and it exited 1 (tag -o DIR/ exits 2)."""
    for output in ("", f"{tmp_path}/heads/"):
        argv = ["train-head", str(tmp_path / "no-data-here"), "--output", output]
        assert jaxmir_cli.main(argv) == 2
        assert "names a folder; give the head's name" in capsys.readouterr().err


@pytest.mark.parametrize("counts, folds, message", [
    ((2, 2), 2, "2 folds leave class 'a' \\(2 tracks\\) 1 to train on in some fold, and training "
                "needs two per class \\(one to validate on\\); give more tracks$"),
    # more folds leave more to train on (the advice said fewer)
    ((3, 3), 2, "2 folds leave class 'a' \\(3 tracks\\) 1 to train on .*; use more folds \\(from 3 "
                "on, 2 train\\), or give more tracks"),
    ((6, 6), 13, "13 folds for 12 tracks")])
def test_folds_that_leave_too_few_to_train_on_are_refused_before_reading_audio(counts, folds,
                                                                               message):
    """2 tracks a class in 2 folds failed after decoding with '2 tracks are too few to split off a
    validation set; give more tracks (at least two per class)', which the user had given; more
    folds than tracks were refused only after decoding."""
    labels = [c for c, count in enumerate(counts) for _ in range(count)]
    paths = tuple(f"nowhere/{i}.wav" for i in range(len(labels)))
    dataset = data.Dataset(paths, np.eye(2)[labels], "single", AB)
    with pytest.raises(InputError, match=message):
        fit_head(dataset, backbone="no-such-backbone", cache=False, folds=folds)
    tracks, targets = blobs(n_per_class=counts[0], classes=2)
    with pytest.raises(InputError, match=message):
        fit.cross_validate(tracks, targets, "single", AB, folds, ONE_EPOCH)
    if "use more folds" in message:  # the advice holds: the folds pass, the backbone is next
        with pytest.raises(JaxmirError, match="no-such-backbone"):
            fit_head(dataset, backbone="no-such-backbone", cache=False, folds=counts[0])


def test_fit_head_checks_the_backbone_and_layer_before_reading_audio(tmp_path):
    dataset = data.Dataset(("nowhere/a.wav", "nowhere/b.wav"), np.eye(2), "single", AB)
    with pytest.raises(InputError, match="unknown output 'nope'"):
        fit_head(dataset, layer="nope", cache=False)
    # outputs outside the dense head, where no head can join in jaxmir or Essentia
    for layer, backbone in (("mean_pool", "msd-musicnn"), ("cnn3", "msd-musicnn"),
                            ("pool5", "msd-vgg")):
        with pytest.raises(InputError, match=f"'{layer}' of {backbone} is not a layer "
                                             "of its dense head, where a head joins its "
                                             "backbone; heads take one of: embeddings, "):
            fit_head(dataset, backbone=backbone, layer=layer, cache=False)
    params = jax.device_get(fit.init_head(jax.random.PRNGKey(3), 200, 100, 2))
    head = export.export_head(params, "softmax", AB, tmp_path / "head", "msd-musicnn",
                              (187, 96), "model/dense/BiasAdd")[".pb"]
    with pytest.raises(InputError, match="is an embedding head; the backbone is a model"):
        fit_head(dataset, backbone=str(head), cache=False)
    # a model on other inputs: every file failed alike, one warning each, then "none could be used"
    vgg4 = shared_fixture("essentia-models/vgg4.pb")
    with pytest.raises(InputError, match=r"vgg4.pb takes \[128, 128\] inputs, not the log-mel "
                                         "patches of a front-end"):
        fit_head(dataset, backbone=str(vgg4), cache=False)


def test_a_head_on_another_backbone_than_its_metadata_names_warns(tmp_path, capsys):
    """Only a different embedding width failed; a head trained on msd-musicnn's embeddings run on
    mtt-musicnn's (200-d too) gave confident, wrong tags without a word."""
    import warnings

    import soundfile

    params = jax.device_get(fit.init_head(jax.random.PRNGKey(3), 200, 100, 2))
    head = export.export_head(params, "softmax", AB, tmp_path / "head", "msd-musicnn",
                              (187, 96), "model/dense/BiasAdd")[".pb"]
    with pytest.warns(JaxmirWarning,
                      match=r"head.pb was trained on msd-musicnn(-1)? \(its metadata's "
                            r"embedding_model.model_name\), not on .*mtt-musicnn"):
        jaxmir.load(head, backbone="mtt-musicnn")
    save_weights(jaxmir.load("msd-musicnn"), tmp_path / "msd-musicnn-1.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxmir.load(head, backbone="msd-musicnn")
        jaxmir.load(head, backbone=jaxmir.load("msd-musicnn"))
        with pytest.MonkeyPatch.context() as patched:  # a file named bare, as typed by hand
            patched.chdir(tmp_path)
            jaxmir.load(head, backbone="msd-musicnn-1.npz")
    song = tmp_path / "song.wav"
    soundfile.write(song, np.zeros(16000 * 4, np.float32), 16000)
    assert jaxmir_cli.main(["tag", str(song), "--model", str(head), "--backbone", "mtt-musicnn",
                            "--no-progress"]) == 0
    assert "jaxmir: warning: " in capsys.readouterr().err


def test_tag_shows_a_regressors_values_in_their_order(tmp_path, capsys):
    """A regression head's values were shown as the "top 2 tags", ranked by value."""
    import soundfile

    params = jax.device_get(fit.init_head(jax.random.PRNGKey(3), 200, 100, 2))
    head = export.export_head(params, "identity", ("valence", "arousal"), tmp_path / "mood",
                              "msd-musicnn", (187, 96), "model/dense/BiasAdd")[".pb"]
    song = tmp_path / "song.wav"
    soundfile.write(song, np.random.default_rng(0).uniform(-0.3, 0.3, 16000 * 4).astype(np.float32),
                    16000)
    assert jaxmir_cli.main(["tag", str(song), "--model", str(head), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("values, mean over 1 patch:")
    assert [line.split()[1] for line in lines[1:]] == ["valence", "arousal"]


def test_a_file_too_short_for_a_patch_is_skipped_without_padding_advice(tmp_path, audio_set):
    """The skip named --last-patch and --pad, which train-head does not have."""
    import soundfile

    copy = tmp_path / "data"
    shutil.copytree(audio_set, copy)
    soundfile.write(copy / "pads" / "short.wav", np.zeros(16000, np.float32), 16000)
    with pytest.warns(JaxmirWarning) as caught:
        result = fit_head(copy, config=FAST, cache=False)
    skipped = [str(w.message) for w in caught if "short.wav" in str(w.message)]
    assert len(skipped) == 1 and skipped[0].endswith(
        "short.wav: 64 frames (1.02 s) is too short for one patch of 187 frames (2.99 s)")
    assert len(result.dataset) == 8


def test_the_default_layer_is_each_backbone_s_embeddings(tmp_path, audio_set):
    """The default was the node name model/dense/BiasAdd, which a VGGish backbone lacks: its
    training failed ("unknown output 'model/dense/BiasAdd'"), though --help said "its
    'embeddings'"."""
    vggish = shared_fixture("essentia-models/small_vggish_init.pb")
    result = fit_head(audio_set, str(vggish), output=tmp_path / "v",
                      config=fit.TrainConfig(epochs=2), cache=False)
    assert result.head.in_dim == 128
    entry = json.loads((tmp_path / "v.json").read_text())["inference"]["embedding_model"]
    assert entry == {"algorithm": "TensorflowPredictVGGish", "model_name": "small_vggish_init",
                     "output": "model/vggish/fc2/Relu",  # the graph's node, for Essentia
                     "sha256": catalog.sha256(vggish)}
    renamed = tmp_path / "renamed.pb"  # the same bytes by another name: the same backbone
    shutil.copy(vggish, renamed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JaxmirWarning)
        jaxmir.load(tmp_path / "v.pb", backbone=str(vggish))
        jaxmir.load(tmp_path / "v.pb", backbone=str(renamed))
    # another file of the name: a head was tied to its backbone by the name alone
    other = tmp_path / "other" / "small_vggish_init.npz"
    other.parent.mkdir()
    save_weights(jaxmir.load(vggish), other)
    with pytest.warns(JaxmirWarning,
                      match=r"v.pb was trained on a backbone file of other bytes "
                            rf"than {other} \(sha256 {entry['sha256'][:12]}\.\.\. "
                            r"in its metadata, \w{12}\.\.\. now\)"):
        jaxmir.load(tmp_path / "v.pb", backbone=str(other))


def test_cross_validation_prints_its_figures_not_its_matrices():
    validation = fit.CrossValidation([{"accuracy": 0.8}, {"accuracy": 1.0}],
                                     {"accuracy": (0.9, 0.1)}, np.eye(2), 0.01)
    assert repr(validation) == "CrossValidation(2 folds: accuracy 0.9 ± 0.1)"


def test_fit_head_skips_bad_file_and_resumes(tmp_path, audio_set):
    copy = tmp_path / "data"
    shutil.copytree(audio_set, copy)
    (copy / "pads" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.warns(UserWarning):
        result = fit_head(copy, output=tmp_path / "h", config=FAST, cache=tmp_path / "cache")
    assert len(result.failures) == 1 and "broken.wav" in result.failures[0]
    assert len(result.dataset) == 8
    # printed, it was every weight and epoch (thousands of lines); now one line
    text = repr(result)
    assert len(text) < 400 and "\n" not in text, text
    assert text.startswith("TrainResult(Head(single, 200 inputs -> ['drums', 'pads'], ")
    assert "Dataset(8 tracks, single, ['drums', 'pads'])" in text and "1 file(s) skipped" in text
    resumed = fit_head(audio_set, config=FAST, cache=tmp_path / "cache",
                       resume=tmp_path / "h.pb")
    assert resumed.head.in_dim == 200
    (copy / "pads" / "broken.wav").unlink()
    (copy / "pads").rename(copy / "strings")  # resumed for other classes: said, not silent
    with pytest.warns(JaxmirWarning, match=r"h.pb was trained for the classes \['drums', 'pads'\]; "
                                           r"resumed for \['drums', 'strings'\]"):
        fit_head(copy, config=FAST, cache=tmp_path / "cache", resume=tmp_path / "h.pb")
    with pytest.raises(InputError, match="200-d embeddings.*50-d"), \
            pytest.warns(JaxmirWarning, match="resumed on 'model/dense_1/BiasAdd'"):  # the logits
        fit_head(audio_set, layer="model/dense_1/BiasAdd", config=FAST, cache=False,
                 resume=tmp_path / "h.pb")
    # another layer of the same width: accepted silently before
    with pytest.warns(JaxmirWarning, match=r"h.pb was trained on the backbone's "
                                           r"'model/dense/BiasAdd' .*resumed on 'penultimate'"):
        fit_head(audio_set, layer="penultimate", config=FAST, cache=tmp_path / "cache",
                 resume=tmp_path / "h.pb")
    with warnings.catch_warnings():
        warnings.simplefilter("error", JaxmirWarning)  # its own layer, by its other name: silent
        fit_head(audio_set, layer="embeddings", config=FAST, cache=tmp_path / "cache",
                 resume=tmp_path / "h.pb")
        # a head without its JSON: "trained for the classes ['class_0', 'class_1']", which it
        # was not (they are the names of unnamed outputs)
        shutil.copy(tmp_path / "h.pb", tmp_path / "bare.pb")
        fit_head(audio_set, config=FAST, cache=tmp_path / "cache", resume=tmp_path / "bare.pb")


@pytest.mark.parametrize("backbone", ["msd-musicnn", "essentia-models/small_vggish_init.pb"])
def test_finetune_trains_on_the_patches_the_backbone_predicts_on(backbone):
    """Fine-tuning's patches are Model.predict's (Essentia's hop of 93 frames, VGGish included)."""
    from conftest import shared_fixture
    from jaxmir.train.finetune import audio_patches

    model = jaxmir.load(backbone if backbone.startswith("msd") else shared_fixture(backbone))
    audio = (0.1 * np.random.default_rng(5).standard_normal(16000 * 12)).astype(np.float32)
    for hop in ({}, {"patch_hop": 0}):  # Essentia's hop; 0, the patch size, as in Model.predict
        patches = audio_patches(model, audio, 16000, **hop)
        want = model.predict(audio, 16000, **hop)
        assert patches.shape == (want.shape[0], *model.input_shape)
        # the same patches through Model.apply instead of the engine: float32 summation order
        np.testing.assert_allclose(np.asarray(model.apply(patches)["predictions"]), want,
                                   rtol=0, atol=1e-6)


def test_finetune_moves_backbone_and_lowers_loss():
    from jaxmir.train.finetune import FinetuneConfig, finetune

    backbone = jaxmir.load("msd-musicnn")
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((2, 187, 96)).astype(np.float32)
    patches[1:] += 1.0
    targets = np.eye(2, dtype=np.float32)[[0, 1]]
    head = fit.init_head(jax.random.PRNGKey(0), 200, 100, 2)
    variables, _, losses = finetune(backbone, "model/dense/BiasAdd", patches, targets, "single",
                                    head, FinetuneConfig(steps=3, batch_size=2,
                                                         backbone_learning_rate=1e-4))
    before = jax.tree_util.tree_leaves(backbone.variables["params"])
    after = jax.tree_util.tree_leaves(variables["params"])
    moved = sum(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(before, after))
    assert moved > len(before) // 2
    assert losses[-1] < losses[0]


def test_gradients_taken_in_forward_mode_equal_reverse_mode_s():
    """Fine-tuning MusiCNN on a CPU takes its input batch norm's gradient in forward mode (one
    derivative per number) and the rest in reverse mode with it held: the same value and
    gradient as ``jax.value_and_grad``, each leaf in its place and dtype, whatever its shape."""
    from jaxmir.train.finetune import mixed_value_and_grad

    rng = np.random.default_rng(0)
    params = {"input_bn": {"bias": np.float32([0.3]), "scale": jnp.bfloat16([1.7])},
              "layer": {"kernel": rng.standard_normal((3, 4)).astype(np.float32),
                        "input_bn": rng.standard_normal((2, 3)).astype(np.float32)}}
    x = rng.standard_normal((5, 3)).astype(np.float32)

    def loss(params, x):
        normed = params["input_bn"]["scale"] * x + params["input_bn"]["bias"]
        hidden = jnp.tanh(normed @ params["layer"]["kernel"])
        out = jnp.sum(hidden ** 2) + jnp.sum(jnp.sin(params["layer"]["input_bn"]) * normed[:2])
        return out, hidden

    chosen = []
    mixed = mixed_value_and_grad(loss, lambda path: chosen.append(jax.tree_util.keystr(path))
                                 or "input_bn" in jax.tree_util.keystr(path))
    (value, aux), grads = jax.jit(mixed)(params, x)
    (want_value, want_aux), want = jax.value_and_grad(loss, has_aux=True)(params, x)
    assert set(chosen) == {"['input_bn']['bias']", "['input_bn']['scale']",
                           "['layer']['input_bn']", "['layer']['kernel']"}
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(want)
    # one program compiled against operations run one by one: float32 rounding of values
    # ~10 (the loss), ~1 (tanh's) and ~10 (the gradients); bfloat16's step for the scale's
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(aux, want_aux, rtol=0, atol=1e-6)
    for got, expected in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want)):
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(np.float32(got), np.float32(expected),
                                   rtol=1e-2 if got.dtype == jnp.bfloat16 else 1e-5, atol=1e-6)


def test_only_musicnn_s_input_batch_norm_takes_its_gradient_in_forward_mode():
    """Two numbers, a MusiCNN's input batch norm's (a head composed with it too), on a CPU only:
    VGG's first convolution's input gradient is cheap (3x3) and its forward pass dear; every
    parameter in forward mode would take a derivative per number (792,079 for msd-musicnn)."""
    from jaxmir.models.compiler import forward_mode_gradients

    def chosen(model, platform="cpu"):
        tree = {"backbone": model.variables["params"], "head": {"dense": {"kernel": 0.0}}}
        choose = forward_mode_gradients(model.module, platform)
        return {jax.tree_util.keystr(path)
                for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0] if choose(path)}

    musicnn = jaxmir.load("msd-musicnn")
    assert chosen(musicnn) == {"['backbone']['input_bn']['bias']",
                               "['backbone']['input_bn']['scale']"}
    composed = jaxmir.load(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"),
                           backbone="msd-musicnn")
    assert chosen(composed) == {"['backbone']['backbone']['input_bn']['bias']",
                                "['backbone']['backbone']['input_bn']['scale']"}
    assert chosen(musicnn, "gpu") == set() and chosen(jaxmir.load("msd-vgg")) == set()


def test_a_fine_tuning_whose_loss_is_not_finite_stops_naming_the_step():
    """It went on, and returned NaN weights for the backbone and the head."""
    from jaxmir.train.finetune import FinetuneConfig, finetune
    from jaxmir.train.fit import TrainingError

    backbone = jaxmir.load("msd-musicnn")
    patches = np.random.default_rng(0).standard_normal((2, 187, 96)).astype(np.float32)
    head = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 200, 100, 2))
    head["dense"]["kernel"] = head["dense"]["kernel"] * np.float32(1e38)  # logits overflow
    with pytest.raises(TrainingError, match=r"the fine-tuning loss became (nan|-?inf) at step 1"):
        finetune(backbone, "model/dense/BiasAdd", patches, np.eye(2, dtype=np.float32), "single",
                 head, FinetuneConfig(steps=2, batch_size=2))


def test_finetuning_s_loss_includes_the_head_s_l2_weight_decay():
    """The fine-tuning loss is the data loss plus ``weight_decay`` times the head's L2 (as MTG's
    head training: research/training.md §1, L2 on all variables); without it fine-tuning trained
    unseen. With a decay whose gradient dwarfs the data's (500x at the least), Adam's first step
    moves each weight of the head's kernels by the learning rate towards zero (its step is the
    rate times the sign of the gradient). The loss reported is the data loss alone, here of all
    the patches (fewer than a batch, each drawn once)."""
    from jaxmir.train.finetune import FinetuneConfig, finetune

    backbone = jaxmir.load("msd-musicnn")
    patches = np.random.default_rng(0).standard_normal((3, 187, 96)).astype(np.float32)
    targets = np.eye(2, dtype=np.float32)[[0, 1, 1]]
    head = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 200, 100, 2))
    config = FinetuneConfig(steps=1, weight_decay=1e8)
    variables, tuned, losses = finetune(backbone, "model/dense/BiasAdd", patches, targets,
                                        "single", head, config)
    # the backbone and head before training, through Model.apply: float32 summation order on ~10
    features = backbone.apply(patches, ["model/dense/BiasAdd"])["model/dense/BiasAdd"]
    data_loss = np.mean(fit.sample_losses("single", fit.head_logits(head, features), targets))
    np.testing.assert_allclose(losses, [data_loss], rtol=1e-5)
    before, after = jax.tree_util.tree_leaves(head), jax.tree_util.tree_leaves(tuned)
    kernels = [(np.asarray(b), np.asarray(a)) for b, a in zip(before, after) if np.ndim(b) == 2]
    assert len(kernels) == 2
    for b, a in kernels:
        # float32 rounding of the sum (weights below 1): 6e-8; without the decay, 2e-3 off
        np.testing.assert_allclose(a, b - config.head_learning_rate * np.sign(b), rtol=0,
                                   atol=1e-7)
    # the decay is the head's alone: the backbone takes the step it takes without any (decayed
    # too, every weight steps by its rate towards zero: up to 2e-5 off); one program against
    # another: a float32 step of the largest weights (10), 1e-6 (measured: equal)
    undecayed, _, _ = finetune(backbone, "model/dense/BiasAdd", patches, targets, "single", head,
                               dataclasses.replace(config, weight_decay=0.0))
    for got, want in zip(jax.tree_util.tree_leaves(variables["params"]),
                         jax.tree_util.tree_leaves(undecayed["params"])):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def _trained_result(train_targets=None):
    """What fit_head gives finetune_and_export: a 2-class head on msd-musicnn's embeddings, its
    dataset of two tracks (never decoded here) and the targets it learnt."""
    import types

    params = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 200, 100, 2))
    dataset = data.Dataset(("a.wav", "b.wav"), np.eye(2, dtype=np.float32), "single", AB)
    head = types.SimpleNamespace(task="single", params=params, activation="softmax")
    return types.SimpleNamespace(dataset=dataset, train_targets=train_targets, head=head,
                                 resampler="essentia", decoder="essentia")


def _without_fine_tuning(monkeypatch, model, result) -> None:
    """finetune_and_export on silence, its training step returning the backbone and head as
    they came: what is left is how the files land."""
    from jaxmir.train import finetune

    monkeypatch.setattr("jaxmir.audio.load_audio",
                        lambda path, **_: np.zeros(16000 * 4, np.float32))
    monkeypatch.setattr(finetune, "finetune",
                        lambda *args, **kwargs: (model.variables, result.head.params, None))


def test_ctrl_c_as_a_finetuned_head_is_written_keeps_it_with_its_backbone(tmp_path, monkeypatch):
    """The fine-tuned backbone was moved into place after the head's files, outside the held
    interrupts: Ctrl-C between the two left a head whose backbone file was missing."""
    import signal

    from jaxmir.train import finetune

    model = jaxmir.load("msd-musicnn")
    result = _trained_result()
    _without_fine_tuning(monkeypatch, model, result)
    real_export = export.export_head

    def interrupted_export(*args, **kwargs):
        paths = real_export(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C once the head's files are in place
        return paths

    monkeypatch.setattr(export, "export_head", interrupted_export)
    with pytest.raises(KeyboardInterrupt):
        finetune.finetune_and_export(result, "msd-musicnn", "model/dense/BiasAdd",
                                     str(tmp_path / "h"), 1, 0, False)
    assert (tmp_path / "h.pb").is_file() and (tmp_path / "h-backbone.npz").is_file()
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_failed_export_of_a_finetuned_head_leaves_no_staged_backbone(tmp_path, monkeypatch):
    """The fine-tuned backbone is saved to a hidden file beside the head, then moved with the
    head's files: an export that fails must remove it, not leave it in the user's folder."""
    from jaxmir.train import finetune

    model = jaxmir.load("msd-musicnn")
    result = _trained_result()
    _without_fine_tuning(monkeypatch, model, result)

    def failing_export(*args, **kwargs):
        raise InputError("cannot write the head")

    monkeypatch.setattr(export, "export_head", failing_export)
    with pytest.raises(InputError, match="cannot write the head"):
        finetune.finetune_and_export(result, "msd-musicnn", "model/dense/BiasAdd",
                                     str(tmp_path / "h"), 1, 0, False)
    assert list(tmp_path.iterdir()) == []


def test_finetuning_refuses_patches_and_targets_of_other_lengths():
    """Three patches with five target rows trained on targets that did not line up with them."""
    from jaxmir.train import finetune

    model = jaxmir.load("msd-musicnn")
    patches = np.zeros((3, *model.input_shape), np.float32)
    targets = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 1]]
    head = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 200, 100, 2))
    with pytest.raises(InputError, match="^3 patches but 5 target rows$"):
        finetune.finetune(model, "model/dense/BiasAdd", patches, targets, "single", head,
                          finetune.FinetuneConfig(steps=1, batch_size=2))
    # none at all: refused before training (JAX's reshape of the empty batch raised a bare
    # ZeroDivisionError)
    with pytest.raises(InputError, match="^0 patches but 0 target rows$"):
        finetune.finetune(model, "model/dense/BiasAdd", patches[:0], targets[:0], "single", head,
                          finetune.FinetuneConfig(steps=1, batch_size=2))


def test_finetuning_reads_its_patches_from_disk(tmp_path, monkeypatch):
    """The log-mel patches of the whole dataset were held in memory (72 KB each for MusiCNN:
    14 GB for 10,000 tracks of 20 patches); they are spilled to a file beside the head. With
    label smoothing it trained on the one-hot labels, not the distributions the head learnt."""
    from jaxmir.train import finetune

    model = jaxmir.load("msd-musicnn")
    smoothed = np.asarray([[0.8, 0.2], [0.3, 0.7]], np.float32)  # what LDL gave the head
    result = _trained_result(smoothed)
    dataset, params = result.dataset, result.head.params
    signals = {"a.wav": np.sin(np.arange(16000 * 5) / 7.0).astype(np.float32) * 0.3,
               "b.wav": np.cos(np.arange(16000 * 4) / 3.0).astype(np.float32) * 0.2}
    monkeypatch.setattr("jaxmir.audio.load_audio", lambda path, **_: signals[path])
    seen = {}

    def recorded(backbone, layer, patches, targets, *args, **kwargs):
        seen.update(memmap=isinstance(patches, np.memmap), patches=np.array(patches),
                    targets=np.array(targets), config=args[-1])
        return model.variables, params, None

    monkeypatch.setattr(finetune, "finetune", recorded)
    finetune.finetune_and_export(result, "msd-musicnn", "model/dense/BiasAdd",
                                 str(tmp_path / "h"), 3, 7, False)
    cuts = [finetune.audio_patches(model, signals[p], 16000) for p in dataset.paths]
    assert seen["memmap"]
    assert seen["config"] == finetune.FinetuneConfig(steps=3, seed=7)  # as given, not defaults
    np.testing.assert_array_equal(seen["patches"], np.concatenate(cuts))
    np.testing.assert_array_equal(seen["targets"],
                                  smoothed[[0] * len(cuts[0]) + [1] * len(cuts[1])])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h-backbone.npz", "h.json", "h.npz",
                                                          "h.pb"]


def test_a_head_refuses_nan_embeddings_as_training_does():
    """Head.predict gave NaN for NaN embeddings, unsaid; training refuses them."""
    tracks, targets = blobs(n_per_class=4)
    head = fit.train_head(tracks, targets, "single", ABC, FAST)
    embeddings = np.ones((3, 20), np.float32)
    assert np.isfinite(head.predict(embeddings)).all()
    embeddings[1, 4] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite embeddings \(patch 1 first\)"):
        head.predict(embeddings)


def test_a_shipped_backbones_cached_embeddings_are_keyed_by_its_weights(monkeypatch):
    """The cache knew a shipped backbone by its name alone: a jaxmir shipping other weights under
    it would have reused the old weights' embeddings."""
    from jaxmir import catalog

    now = embeddings.backbone_id("msd-musicnn")
    assert now != "msd-musicnn" and now == embeddings.backbone_id("msd-musicnn")
    entries = catalog.catalog()
    other = {**entries, "models": {**entries["models"], "msd-musicnn": {
        **entries["models"]["msd-musicnn"], "sha256": "0" * 64}}}
    monkeypatch.setattr(catalog, "catalog", lambda: other)
    assert embeddings.backbone_id("msd-musicnn") != now


def test_figures_undefined_in_every_fold_are_null_in_the_head_s_json():
    """Leave-one-out regression (R² of one track) wrote "r2": NaN, which strict JSON parsers
    refuse, after NumPy's "Mean of empty slice" warnings."""
    import types

    from jaxmir.train import recipe

    nan = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = metrics.summarize([{"r2": nan, "rmse": 1.0}, {"r2": nan, "rmse": 3.0}])
    assert np.isnan(summary["r2"]).all() and summary["rmse"] == (2.0, 1.0)
    # a fold where it is undefined leaves the others' mean (it was NaN, so "undefined")
    assert metrics.summarize([{"r2": nan}, {"r2": 0.8}])["r2"] == (0.8, 0.0)
    dataset = data.Dataset(("a.wav", "b.wav", "c.wav"), [[1.0], [2.0], [4.0]], "regression", ("v",))
    entry = recipe.dataset_entry("set", dataset, types.SimpleNamespace(summary=summary), 2)
    assert entry["metrics"] == {"2-fold_cross_validation_r2": None,
                                "2-fold_cross_validation_rmse": 2.0}
    json.dumps(entry, allow_nan=False)


def test_the_head_s_json_keeps_cross_validation_figures_to_four_decimals():
    """The JSON keeps the folds' means to 4 decimals (the command line prints 3; Essentia's own
    heads' files show 2): fewer went unseen."""
    import types

    from jaxmir.train import recipe

    folds = [{"normalized_accuracy": 0.123456}, {"normalized_accuracy": 0.123458}]
    summary = metrics.summarize(folds)
    mean = summary["normalized_accuracy"][0]  # 0.123457: 0.1235 to 4 decimals, 0.12346 to 5
    dataset = data.Dataset(("a.wav", "b.wav"), np.eye(2, dtype=np.float32), "single", AB)
    entry = recipe.dataset_entry("set", dataset, types.SimpleNamespace(summary=summary), 2)
    written = json.loads(json.dumps(entry))["metrics"][
        "2-fold_cross_validation_normalized_accuracy"]
    assert written == round(mean, 4) == 0.1235
    assert written not in (round(mean, 3), round(mean, 5))


def _random_embeddings(monkeypatch, unreadable: str | None = None) -> None:
    """fit_head's backbone embeddings random (no file decoded); ``unreadable`` skipped."""
    from jaxmir.train import recipe

    rng = np.random.default_rng(0)

    def extract_embeddings(model, backbone, files, *rest, **options):
        values = [None if path == unreadable else rng.standard_normal((2, 200)).astype(np.float32)
                  for path in files]
        return values, [f"{unreadable}: cannot be read"] if unreadable in files else []

    monkeypatch.setattr(recipe, "extract_embeddings", extract_embeddings)


def _random_mfccs(monkeypatch, seed: int, unreadable: str | None = None) -> None:
    """fit_head's MFCC features (for label smoothing) random, drawn from ``seed`` (no file
    decoded); ``unreadable`` has none."""
    from jaxmir.train import recipe

    rng = np.random.default_rng(seed)

    def mfcc_features(files, kind, cache):
        values = [None if path == unreadable else rng.standard_normal(26).astype(np.float32)
                  for path in files]
        return values, [f"{unreadable}: no MFCCs"] if unreadable in files else []

    monkeypatch.setattr(recipe, "mfcc_features", mfcc_features)


def test_a_class_left_with_one_file_after_skipping_is_refused(monkeypatch, tmp_path):
    """A table's class of two files, one undecodable: a head was trained on its one track."""
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "".join(f"{c}{i}.wav,{c}\n" for c, n in (("a", 3), ("b", 2))
                                              for i in range(n)))
    for name in ("a0", "a1", "a2", "b0", "b1"):
        (tmp_path / f"{name}.wav").write_bytes(b"")
    _random_embeddings(monkeypatch, unreadable=str(tmp_path / "b1.wav"))
    with pytest.warns(JaxmirWarning, match=r"1 of 5 file\(s\) skipped"), \
            pytest.raises(InputError, match=r"after skipping 1 file\(s\)\): class\(es\) with fewer "
                                            r"than 2 audio files: b \(1\)"):
        fit_head(table, config=FAST, cache=False)


def test_a_file_whose_mfccs_fail_is_skipped(monkeypatch, tmp_path):
    """Its embeddings were kept and its features were not there: np.stack met a None."""
    paths = tuple(f"{c}{i}.wav" for c in "ab" for i in range(4))
    dataset = data.Dataset(paths, np.eye(2, dtype=np.float32)[[0] * 4 + [1] * 4], "single", AB)
    _random_embeddings(monkeypatch)
    _random_mfccs(monkeypatch, seed=0, unreadable="b3.wav")
    with pytest.warns(JaxmirWarning, match=r"1 of 8 file\(s\) skipped"):
        result = fit_head(dataset, config=FAST, cache=False, smoothing=SmoothingConfig("knn", k=2))
    assert result.failures == ["b3.wav: no MFCCs"] and result.train_targets.shape == (7, 2)


def test_a_file_skipped_for_its_embeddings_gets_no_mfccs(monkeypatch, tmp_path):
    """With label smoothing a file that failed was decoded again for its MFCCs, and named twice
    ("skipped X" for the embeddings, again for the MFCCs)."""
    from jaxmir.train import recipe

    paths = tuple(f"{c}{i}.wav" for c in "ab" for i in range(4))
    dataset = data.Dataset(paths, np.eye(2, dtype=np.float32)[[0] * 4 + [1] * 4], "single", AB)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(recipe, "extract_embeddings", lambda model, backbone, files, *rest, **_: (
        [None if p == "a0.wav" else rng.standard_normal((2, 200)).astype(np.float32)
         for p in files], ["a0.wav: cannot be read"]))
    asked = []

    def mfccs(files, kind, cache):
        asked.extend(files)
        return [rng.standard_normal(26).astype(np.float32) for _ in files], []

    monkeypatch.setattr(recipe, "mfcc_features", mfccs)
    with pytest.warns(JaxmirWarning, match=r"1 of 8 file\(s\) skipped"):
        result = fit_head(dataset, config=FAST, cache=False, output=tmp_path / "h",
                          smoothing=SmoothingConfig("knn", k=2))
    assert asked == list(paths[1:]) and result.failures == ["a0.wav: cannot be read"]
    assert result.train_targets.shape == (7, 2)  # the distributions the head learnt
    # the head's JSON says it learnt smoothed targets (it said nothing of them)
    written = json.loads((tmp_path / "h.json").read_text())["dataset"]
    assert written["label_smoothing"] == {"method": "knn", "k": 2}
    assert recipe.dataset_entry("d", dataset, None, 0, SmoothingConfig("lmnn"))[
        "label_smoothing"] == {"method": "lmnn", "k": 10, "lmnn_k": 3, "lmnn_components": 32,
                               "lmnn_push": 0.5, "lmnn_max_iter": 10000}
    # LMNN learns at most n - 1 dimensions: the JSON said 32 where 7 tracks gave it 6
    with pytest.warns(JaxmirWarning, match=r"1 of 8 file\(s\) skipped"):
        fit_head(dataset, config=FAST, cache=False, output=tmp_path / "l",
                 smoothing=SmoothingConfig("lmnn", k=2, lmnn_k=2, lmnn_max_iter=20))
    written = json.loads((tmp_path / "l.json").read_text())["dataset"]["label_smoothing"]
    assert written["lmnn_components"] == 6


def test_mfcc_summaries_and_pooled_mfccs_are_two_cache_entries(monkeypatch, tmp_path):
    """knn's S_A and lmnn's S_B of one file go through one cache: keyed alike, the second kind
    would read the first's [26] summary back as its pooled MFCCs."""
    from jaxmir.train import recipe

    path = tmp_path / "a.wav"
    path.write_bytes(b"audio")  # never decoded: the noise below is its audio
    noise = (0.1 * np.random.default_rng(0).standard_normal(44100)).astype(np.float32)
    monkeypatch.setattr("jaxmir.audio.load_audio", lambda path, rate: noise)
    for kind in ("summary", "pooled"):
        through_cache, _ = recipe.mfcc_features([str(path)], kind, tmp_path / "cache")
        computed, _ = recipe.mfcc_features([str(path)], kind, False)
        np.testing.assert_array_equal(through_cache[0], computed[0])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_a_dataset_given_as_such_is_checked_as_a_table_is(monkeypatch):
    """A Dataset handed to fit_head has not been through load_dataset's checks: its class of one
    track is refused as a folder's or a table's is, not trained on."""
    _random_embeddings(monkeypatch)
    paths = ("a0.wav", "a1.wav", "a2.wav", "b0.wav")
    dataset = data.Dataset(paths, np.eye(2, dtype=np.float32)[[0, 0, 0, 1]], "single", AB)
    with pytest.raises(InputError, match=r"^the dataset: class\(es\) with fewer than 2 audio "
                                         r"files: b \(1\)$"):
        fit_head(dataset, config=FAST, cache=False)


def test_smoothing_is_refused_when_skipped_files_leave_a_class_k_tracks(monkeypatch):
    """Six tracks a class take k = 5 neighbours; one file skipped leaves its class five, whose
    tracks' neighbours then hold another class whatever their features: checked again."""
    _random_embeddings(monkeypatch, unreadable="b5.wav")
    _random_mfccs(monkeypatch, seed=1)
    paths = tuple(f"{c}{i}.wav" for c in "ab" for i in range(6))
    dataset = data.Dataset(paths, np.eye(2, dtype=np.float32)[[0] * 6 + [1] * 6], "single", AB)
    with pytest.warns(JaxmirWarning, match=r"1 of 12 file\(s\) skipped"), \
            pytest.raises(InputError, match=r"over k = 5 neighbours needs more than 5 tracks in "
                                            r"every class: with 5, .*; class 'b' has 5 "):
        fit_head(dataset, config=FAST, cache=False, smoothing=SmoothingConfig("knn", k=5))


def test_fit_head_reports_the_median_seconds_per_epoch(monkeypatch):
    """train-head's "ms per epoch" is the epochs' median, as cross-validation's: one epoch slowed
    by other work on the machine would move a mean (here from 15 ms to 1.26 s)."""
    from jaxmir.train import recipe

    seconds = [0.01, 0.01, 0.02, 5.0]
    monkeypatch.setattr(recipe, "steady_seconds", lambda history: seconds)
    _random_embeddings(monkeypatch)
    paths = tuple(f"{c}{i}.wav" for c in "ab" for i in range(2))
    dataset = data.Dataset(paths, np.eye(2, dtype=np.float32)[[0, 0, 1, 1]], "single", AB)
    assert fit_head(dataset, config=FAST, cache=False).seconds_per_epoch == np.median(seconds)


def test_links_into_another_folder_are_written_through_with_a_new_file_s_mode(tmp_path,
                                                                            monkeypatch):
    """NAME-backbone.npz, a link, was replaced by a file; files written through a link into
    another folder were left 0600 (mkstemp's mode), the others 0644."""
    import stat

    from jaxmir.train import finetune

    other = tmp_path / "other"
    other.mkdir()
    for name in ("h.json", "h-backbone.npz"):
        (tmp_path / name).symlink_to(other / name)
    model = jaxmir.load("msd-musicnn")
    result = _trained_result()
    _without_fine_tuning(monkeypatch, model, result)
    finetune.finetune_and_export(result, "msd-musicnn", "model/dense/BiasAdd", str(tmp_path / "h"),
                                 1, 0, True)
    assert (tmp_path / "h-backbone.npz").is_symlink() and (tmp_path / "h.json").is_symlink()
    assert jaxmir.load(other / "h-backbone.npz").labels == model.labels
    mask = os.umask(0)
    os.umask(mask)
    for path in (other / "h.json", other / "h-backbone.npz", tmp_path / "h.pb"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert sorted(p.name for p in other.iterdir()) == ["h-backbone.npz", "h.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h-backbone.npz", "h.json", "h.npz",
                                                          "h.pb", "other"]


def test_a_smaller_synthetic_set_written_over_a_larger_one_leaves_no_clips_behind(tmp_path):
    """examples/train_head.py --per-class 6 after a run of 8 still trained on 8 clips a class;
    the clips written peak at 0.5, as documented."""
    import soundfile

    synthetic.write_dataset(tmp_path, classes=("pads",), per_class=12, seconds=0.1)  # pads_11
    synthetic.write_dataset(tmp_path, classes=("pads",), per_class=2, seconds=0.1)
    (tmp_path / "pads" / "mine.wav").write_bytes(b"")  # not a name it writes: kept
    synthetic.write_dataset(tmp_path, classes=("pads",), per_class=1, seconds=0.1)
    assert sorted(p.name for p in (tmp_path / "pads").iterdir()) == ["mine.wav", "pads_00.wav"]
    clip, _ = soundfile.read(tmp_path / "pads" / "pads_00.wav")
    assert abs(np.max(np.abs(clip)) - 0.5) < 1e-4  # its documented peak, to 16-bit rounding
    assert len(clip) == 1600  # seconds * 16000 samples, as documented


def test_synthetic_classes_differ_in_onsets_and_a_seed_gives_the_same_set(tmp_path):
    """pads are sustained (no onsets), drums and plucks notes on a pulse, as the module says:
    measured by librosa's onset strength (spectral flux); a seed writes the same clips again."""
    librosa = require("librosa")
    rng = np.random.default_rng(3)
    peaks = {kind: float(librosa.onset.onset_strength(y=synthetic.synth(kind, 4.0, rng),
                                                      sr=16000).max())
             for kind in synthetic.CLASSES}
    # seeds 0-7 gave peaks of 1.0-1.8 (pads), 9.9-12 (plucks) and 19-22 (drums)
    assert peaks["pads"] < 3 and min(peaks["plucks"], peaks["drums"]) > 6, peaks
    clips = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        synthetic.write_dataset(tmp_path / name, classes=("drums",), per_class=1, seconds=0.1,
                                seed=seed)
        clips[name] = (tmp_path / name / "drums" / "drums_00.wav").read_bytes()
    assert clips["a"] == clips["b"] != clips["c"]


def _watch_validation_splits(monkeypatch) -> list:
    """Each validation split made from now on, as ``(the targets' largest class, the labels it
    was given)``."""
    seen = []
    split = fit.split_validation

    def spy(targets, task, fraction, rng, labels=None):
        seen.append((np.argmax(targets, axis=1), labels))
        return split(targets, task, fraction, rng, labels)

    monkeypatch.setattr(fit, "split_validation", spy)
    return seen


def test_the_validation_split_is_stratified_by_labels_not_by_smoothed_targets(monkeypatch):
    """With label smoothing, each fold's (and the final head's) validation split was stratified
    by the smoothed targets' largest class, not by the tracks' own."""
    seen = _watch_validation_splits(monkeypatch)
    rng = np.random.default_rng(0)
    tracks = [rng.standard_normal((2, 8)).astype(np.float32) for _ in range(12)]
    targets = np.eye(2, dtype=np.float32)[[0] * 6 + [1] * 6]
    swapped = lambda train: np.where(targets[train] == 1, 0.4, 0.6).astype(np.float32)
    fit.cross_validate(tracks, targets, "single", AB, folds=2, config=FAST, smooth=swapped)
    assert len(seen) == 2
    for smoothed_class, labels in seen:  # the tracks' own classes: the smoothed ones swapped
        assert labels is not None and np.array_equal(labels, 1 - smoothed_class)


def _fit_with_smoothing(monkeypatch, method: str) -> data.Dataset:
    """fit_head on 10 tracks (never decoded for the backbone: random embeddings) with ``method``
    label smoothing, the MFCCs computed from noise in place of each file's audio."""
    paths = tuple(f"{c}{i}.wav" for c in "ab" for i in range(5))
    dataset = data.Dataset(paths, np.eye(2, dtype=np.float32)[[0] * 5 + [1] * 5], "single", AB)
    _random_embeddings(monkeypatch)
    rng = np.random.default_rng(0)
    monkeypatch.setattr("jaxmir.audio.load_audio", lambda path, rate: (
        0.1 * rng.standard_normal(rate // 2)).astype(np.float32))
    fit_head(dataset, config=FAST, cache=False, output=None,
             smoothing=SmoothingConfig(method, k=2, lmnn_k=2, lmnn_max_iter=20)
             if method == "lmnn" else SmoothingConfig(method, k=2))
    return dataset


@pytest.mark.parametrize("method, summarised", [("knn", "mfcc_summary"), ("lmnn", "mfcc_pooled")])
def test_knn_smooths_in_mfcc_summaries_and_lmnn_in_pooled_mfccs(monkeypatch, method, summarised):
    """S_A (knn) smooths in the MFCC summary, the mean and standard deviation of 13 MFCCs; S_B
    (lmnn) learns LMNN on MFCCs pooled over 1-s windows (research/training.md §3): the two
    swapped passed every test."""
    from jaxmir.train import mfcc, recipe

    called, smoothed_in = [], []
    for name in ("mfcc_summary", "mfcc_pooled"):
        def spy(coefficients, *args, _real=getattr(mfcc, name), _name=name, **kwargs):
            called.append((_name, _real(coefficients, *args, **kwargs)))
            return called[-1][1]
        monkeypatch.setattr(mfcc, name, spy)
    smoother = recipe.smoother
    monkeypatch.setattr(recipe, "smoother", lambda features, targets, config: (
        smoothed_in.append(features), smoother(features, targets, config))[1])
    _fit_with_smoothing(monkeypatch, method)
    assert [name for name, _ in called] == [summarised] * 10
    np.testing.assert_array_equal(smoothed_in[0], np.stack([value for _, value in called]))
    if method == "knn":  # the mean and the standard deviation of each of 13 MFCCs
        assert smoothed_in[0].shape == (10, 2 * 13)


def test_the_final_head_s_validation_split_is_stratified_by_labels(monkeypatch):
    """With label smoothing the final head's validation split (as each fold's) is stratified by
    the tracks' own classes, not by the smoothed targets' largest one: fit_head's passing of
    the labels to train_head could go unseen, the folds' split alone being tested."""
    from jaxmir.train import recipe

    seen = _watch_validation_splits(monkeypatch)
    monkeypatch.setattr(recipe, "mfcc_features", lambda files, kind, cache: (
        [np.full(26, i, np.float32) for i, _ in enumerate(files)], []))
    monkeypatch.setattr(recipe, "smoother", lambda features, targets, config: lambda rows: np.where(
        targets[rows] == 1, 0.4, 0.6).astype(np.float32))  # every track's largest class swapped
    dataset = _fit_with_smoothing(monkeypatch, "knn")
    assert len(seen) == 1
    smoothed_class, labels = seen[0]
    assert labels is not None and np.array_equal(labels, np.argmax(dataset.targets, axis=1))
    assert np.array_equal(labels, 1 - smoothed_class)


def test_the_class_size_refusal_counts_in_words():
    """"at least 1 of a track's 2 neighbours are": one neighbour is."""
    from jaxmir.train.smoothing import check_class_sizes

    targets = np.eye(2)[[0] * 5 + [1] * 2]
    with pytest.raises(InputError, match=r"with 2, at least 1 of a track's 2 neighbours is other "
                                         r"classes'"):
        check_class_sizes(targets, AB, SmoothingConfig("knn", k=2))
    # a class of one track has none in a training split of 2 folds: all of its track's 2
    # neighbours are other classes'
    targets = np.eye(2)[[0] * 5 + [1]]
    with pytest.raises(InputError, match=r"with 0, at least 2 of a track's 2 neighbours are other "
                                         r"classes'.*'b' has 0 in some fold's training split"):
        check_class_sizes(targets, AB, SmoothingConfig("knn", k=2), folds=2)


def test_the_class_size_refusal_counts_a_class_without_tracks():
    """A class named but given no track (the last of three here) has 0 tracks to smooth with:
    counted only up to the last class that has tracks, it passed unrefused."""
    from jaxmir.train.smoothing import check_class_sizes

    targets = np.eye(3)[[0] * 5 + [1] * 5]
    with pytest.raises(InputError, match=r"with 0, at least 2 .*class 'c' has 0 \("):
        check_class_sizes(targets, ("a", "b", "c"), SmoothingConfig("knn", k=2))


@pytest.mark.parametrize("count, folds", [(13, 3), (12, 3), (10, 4), (7, 2)])
def test_the_class_size_refusal_counts_the_smallest_training_split_the_folds_make(count, folds):
    """With folds the refusal counts the class's tracks in a fold's training split: the
    smallest one fold_indices makes (13 tracks in 3 folds: one fold tests 5, leaving 8)."""
    from jaxmir.train.smoothing import check_class_sizes

    targets = np.eye(2)[[0] * count + [1] * 40]
    smallest = min(count - np.sum(test < count) for seed in range(5)
                   for test in fit.fold_indices(targets, "single", folds, seed))
    with pytest.raises(InputError, match=f"has {smallest} in some fold's training split"):
        check_class_sizes(targets, AB, SmoothingConfig("knn", k=smallest), folds)
    check_class_sizes(targets, AB, SmoothingConfig("knn", k=smallest - 1), folds)


def test_a_stop_during_fine_tuning_waits_for_the_step_in_flight(monkeypatch):
    """A Ctrl-C between fine-tuning steps left the step JAX had dispatched running while the
    command unwound and freed its program: a segmentation fault (exit 139, not 130) in 7 of 8
    tries. The step's arrays are ready when the stop leaves ``finetune``."""
    from jaxmir.train import fit
    from jaxmir.train import finetune as tuning

    class StopAtTheSecondStep:
        calls = 0

        @classmethod
        def raise_if_received(cls):
            cls.calls += 1
            if cls.calls == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(tuning, "interrupts", StopAtTheSecondStep)
    backbone = jaxmir.load("msd-musicnn")
    rng = np.random.default_rng(1)
    patches = rng.standard_normal((8, 187, 96)).astype(np.float32)
    targets = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    head = fit.init_head(jax.random.PRNGKey(0), 200, 100, 2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        tuning.finetune(backbone, "model/dense/BiasAdd", patches, targets, "single", head,
                        tuning.FinetuneConfig(steps=10, batch_size=8))
    in_flight = next(frame.f_locals["trainable"] for frame, _ in traceback.walk_tb(stopped.tb)
                     if frame.f_code.co_name == "finetune")  # finetune's own
    assert all(leaf.is_ready() for leaf in jax.tree_util.tree_leaves(in_flight))


def test_cli_refuses_empty_names_and_seeds_beyond_jax_s(tmp_path, capsys):
    """`train-head ""` trained on the current folder (Path("") is "."), `--cache ""` used the
    default cache, and a seed of 2**63 crashed in jax.random.PRNGKey with a traceback after every
    embedding was computed."""
    for argv in (["", "-o", str(tmp_path / "h")],
                 [str(tmp_path), "-o", str(tmp_path / "h"), "--cache", ""]):
        assert jaxmir_cli.main(["train-head", *argv]) == 2
        assert "'' names no folder or file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        jaxmir_cli.main(["train-head", str(tmp_path), "-o", str(tmp_path / "h"), "--seed",
                         str(2**63)])
    assert exit_.value.code == 2 and "<= 4294967295" in capsys.readouterr().err
    with pytest.raises(InputError, match="seed = 4294967296; expected a whole number <= "):
        fit.TrainConfig(seed=2**32)
    assert not list(tmp_path.iterdir())
    tracks, targets = blobs(n_per_class=4)  # each fold's seed is the next: past the last, 0
    result = fit.cross_validate(tracks, targets, "single", ABC, 2,
                                fit.TrainConfig(epochs=1, seed=fit.MAX_SEED))
    assert len(result.folds) == 2
