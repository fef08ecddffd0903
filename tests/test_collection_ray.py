"""The Ray engine on a local Ray cluster: the same rows as the local engine; clear errors without
Ray."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxmir
from conftest import ROOT, child_env, require, shared_fixture
from jaxmir.collection import Options, collect, commands, ray_engine
from jaxmir.collection.rows import Layout
from jaxmir.errors import InputError


def _write(path: Path, seconds: float, rate: int, channels: int, seed: int) -> None:
    import soundfile

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path,
                    (0.1 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32),
                    rate)


@pytest.fixture
def cluster(monkeypatch):
    ray = require("ray")
    require("ray.data")
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def _table(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).sort_by("path")


def test_ray_equals_local(cluster, tmp_path, capsys):
    music = tmp_path / "music"
    _write(music / "a.wav", 3.5, 16000, 1, 0)
    _write(music / "sub" / "a.flac", 5.0, 44100, 2, 1)
    _write(music / "b.wav", 4.0, 22050, 1, 2)
    _write(music / "cut.wav", 6.0, 16000, 1, 3)
    whole = (music / "cut.wav").read_bytes()
    (music / "cut.wav").write_bytes(whole[:len(whole) * 2 // 3])  # its header declares 6 s
    (music / "broken.wav").write_bytes(b"not audio")
    model = jaxmir.load("msd-musicnn")
    local, remote = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    for engine, out in (("local", local), ("ray", remote)):
        capsys.readouterr()
        tally = collect(model, [str(music)], str(out), name="msd-musicnn", per_patch=True, jobs=1,
                        engine=engine, progress=False)
        assert (tally.ok, tally.damaged, tally.failed) == (4, 1, 1)
        assert "4 ok (1 damaged: decoded in part), 1 failed" in tally.summary()
        printed = capsys.readouterr().err.splitlines()  # the same lines from either engine
        assert sum(line.startswith("jaxmir: error: ") and "broken.wav" in line
                   for line in printed) == 1, (engine, printed)
        assert sum(line.startswith("jaxmir: warning: ") and "cut.wav: truncated audio" in line
                   for line in printed) == 1, (engine, printed)
    # The same packed programs on the same CPU; a patch may sit in another row of a pack (Ray's
    # batches hold other files), which may change the float32 summation order: 1e-6 on tags
    # (probabilities; tests/test_packing.py measures 1.5e-7), every other column equal.
    remote_table, local_table = _table(remote), _table(local)
    assert remote_table.schema == local_table.schema
    for name in local_table.column_names:
        want, got = local_table[name].to_pylist(), remote_table[name].to_pylist()
        if name not in model.labels and name != "patches":
            assert got == want, name
            continue
        for mine, theirs in zip(got, want):  # None for the broken file
            assert (mine is None) == (theirs is None), name
            if mine is not None:
                np.testing.assert_allclose(np.asarray(mine, np.float64),
                                           np.asarray(theirs, np.float64), rtol=0, atol=1e-6,
                                           err_msg=name)

    # The Python entry point: a Dataset of paths in, a Dataset of rows with the same schema out,
    # whatever mix of ok and failed files a batch holds (a batch's own types used to differ:
    # error null or string, pickled arrays; Ray could not write them as one Parquet table)
    import pyarrow.parquet as pq

    from jaxmir.collection.outputs import parquet_schema

    layout = Layout("embed", {"model": "msd-musicnn"}, per_patch=True)
    names = ["a.wav", "sub/a.flac", "broken.wav", "b.wav"]
    paths = cluster.data.from_items([{"path": str(music / name)} for name in names])
    rows = ray_engine.analyze_dataset(paths, "msd-musicnn", Options("embeddings"), layout,
                                      batch_size=2)
    rows.write_parquet(str(tmp_path / "python"))
    # rows without a 'path' failed inside Ray's workers, with their tracebacks, once consumed
    with pytest.raises(InputError, match="analyze_dataset takes a Dataset with a 'path' column "
                                         r"\(one audio file per row; .*\); its columns: item"):
        ray_engine.analyze_dataset(cluster.data.from_items([str(music / name) for name in names]),
                                   "msd-musicnn", Options("embeddings"), layout)
    # a number among the paths: Arrow's own type error, raised from Ray's schema, with its traceback
    with pytest.raises(InputError, match=r"the Dataset's blocks do not agree on their columns' "
                                         r"types \(.*\); give a 'path' column of text"):
        ray_engine.analyze_dataset(cluster.data.from_items([{"path": 7}, {"path": "a.wav"}]),
                                   "msd-musicnn", Options("embeddings"), layout)
    table = pq.read_table(tmp_path / "python").sort_by("path")
    assert table.schema.remove_metadata() == parquet_schema(layout).remove_metadata()
    found = {Path(path).relative_to(music).as_posix(): row for path, row in
             zip(table["path"].to_pylist(), table.to_pylist())}
    assert sorted(found) == sorted(names) and found["broken.wav"]["status"] == "error"
    want = model.predict(jaxmir.load_audio(music / "a.wav"), 16000, output="embeddings")
    assert found["a.wav"]["status"] == "ok" and found["a.wav"]["n_patches"] == want.shape[0]
    # a packed call against Model.predict's single patch: embeddings (~12) to 3e-6 of their size
    np.testing.assert_allclose(found["a.wav"]["embedding"],
                               np.asarray(want, np.float64).mean(0).astype(np.float32),
                               rtol=0, atol=3e-6 * float(np.abs(want).max()))
    # A layer of more than one dimension a patch as .npy files (cnn3: [patches, 187, 64]): the
    # same arrays from either engine, not Ray's flattened to [patches, 11968]
    arrays = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"cnn3-{engine}"
        collect(model, [str(music / "a.wav")], str(out), command="embed", options=Options("cnn3"),
                engine=engine, progress=False)
        arrays[engine] = {p.relative_to(out): np.load(p) for p in out.rglob("*.npy")}
    assert arrays["ray"].keys() == arrays["local"].keys() and len(arrays["local"]) == 1
    for name, local_values in arrays["local"].items():
        assert local_values.shape[1:] == (187, 64) == arrays["ray"][name].shape[1:]
        # as the tags above: one file, but a pack's other rows may change the summation order
        np.testing.assert_allclose(arrays["ray"][name], local_values, rtol=0,
                                   atol=3e-6 * float(np.abs(local_values).max()))


def test_the_check_of_the_actors_model_warns_nothing_again(tmp_path):
    """A head's warning (its classes' UTF-8 read as bytes) printed twice with --engine ray: the
    check that the actors load the same model loaded it again."""
    import json
    import warnings

    graph = tmp_path / "emo.pb"
    graph.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    graph.with_suffix(".json").write_text(json.dumps({"classes": ["m\udcc3\udcbasica", "b"]}))
    with pytest.warns(jaxmir.JaxmirWarning, match="classes hold UTF-8"):
        model = jaxmir.load(graph, backbone="msd-musicnn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ray_engine.check_reloadable(model, str(graph), "msd-musicnn")
    assert caught == []


@pytest.mark.parametrize("output", ["arrays", "tags.jsonl", "tags.csv"])
def test_a_read_only_output_is_refused_before_joining_a_cluster(monkeypatch, tmp_path, output):
    """A read-only output with files left to do was refused after a cluster was joined (a local
    one's start took 6-8 s, a remote one's join ~20 s), naming an array folder's index rather
    than the folder; only that index was checked up front, not a JSONL or CSV table."""
    require("ray")
    import tempfile

    import ray

    from jaxmir import atomic

    model, clips = jaxmir.load("msd-musicnn"), [tmp_path / "a.wav", tmp_path / "b.wav"]
    for seed, clip in enumerate(clips):
        _write(clip, 3.0, 16000, 1, seed)
    target, command = tmp_path / output, "embed" if output == "arrays" else "tag"
    collect(model, [str(clips[0])], str(target), command=command, name="msd-musicnn", jobs=0,
            progress=False)

    def joined():
        raise AssertionError("joined a cluster")

    monkeypatch.setattr(ray_engine, "connect", joined)
    access = os.access
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: mode != os.W_OK)  # root: chmod
    named = re.escape(f"{target} ({target / 'index.jsonl'})" if output == "arrays" else f"{target}")
    for overwrite in (False, True):  # the output is resumed, or replaced
        with pytest.raises(InputError, match=f"cannot write {named}: Permission denied"):
            collect(model, [str(c) for c in clips], str(target), command=command, engine="ray",
                    name="msd-musicnn", progress=False, overwrite=overwrite)
    if output == "arrays":
        monkeypatch.setattr(atomic.os, "access", access)

        def read_only(*args, dir=None, **kwargs):  # the folder, whose arrays --overwrite removes
            raise PermissionError(13, "Permission denied", str(dir))

        monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
        with pytest.raises(InputError, match=f"cannot write the output in {target}: Permission"):
            collect(model, [str(c) for c in clips], str(target), command=command, engine="ray",
                    name="msd-musicnn", progress=False, overwrite=True)
    assert not ray.is_initialized()


def test_ray_missing_or_unreachable(monkeypatch, tmp_path):
    """A clear error, in bounded time, before any output is made (an empty Parquet folder or
    index was left behind)."""
    require("ray.data")  # imported already, as after another test's run: ray alone is missing
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'jaxmir\[ray\]'"):
        ray_engine.connect()
    clip, model = tmp_path / "a.wav", jaxmir.load("msd-musicnn")
    _write(clip, 3.0, 16000, 1, 0)
    for output in ("tags.parquet", "embeddings"):
        with pytest.raises(InputError, match=r"pip install 'jaxmir\[ray\]'"):
            collect(model, [str(clip)], str(tmp_path / output), name="msd-musicnn", engine="ray",
                    command="tag" if output.endswith("parquet") else "embed",
                    options=Options("predictions" if output.endswith("parquet") else "embeddings"),
                    progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
    monkeypatch.undo()
    require("ray")
    import ray

    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # the discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(InputError, match="cannot reach the Ray cluster at 127.0.0.1:9"):
        ray_engine.connect()
    assert time.monotonic() - start < 60  # refused, where ray.init retried without end


def test_a_resume_that_cannot_reach_the_cluster_changes_no_output(monkeypatch, tmp_path):
    """Resuming dropped the rows of the files to redo (a failed one's error) before ray.init
    failed: a mistyped RAY_ADDRESS lost them. The output is read first, and left as it was."""
    require("ray")
    clip, missing = tmp_path / "a.wav", str(tmp_path / "gone.wav")
    _write(clip, 3.5, 16000, 1, 0)
    model = jaxmir.load("msd-musicnn")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # the discard port: nothing listens
    for output, command in (("tags.jsonl", "tag"), ("tags.parquet", "tag"), ("arrays", "embed")):
        out = tmp_path / output
        options = Options("predictions" if command == "tag" else "embeddings")
        collect(model, [str(clip), missing], str(out), name="msd-musicnn", command=command,
                options=options, jobs=0, progress=False)
        before = {p: p.read_bytes() for p in sorted(out.rglob("*") if out.is_dir() else [out])}
        with pytest.raises(InputError, match="cannot reach the Ray cluster at 127.0.0.1:9"):
            collect(model, [str(clip), missing], str(out), name="msd-musicnn", command=command,
                    options=options, engine="ray", progress=False)
        assert {p: p.read_bytes() for p in sorted(out.rglob("*") if out.is_dir() else [out])} \
            == before, output
        # nothing left to do: no cluster joined, so none unreachable
        tally = collect(model, [str(clip)], str(out), name="msd-musicnn", command=command,
                        options=options, engine="ray", progress=False)
        assert (tally.skipped, tally.ok) == (1, 0)


def test_a_dataset_row_of_a_path_like_path_is_read(tmp_path):
    clip = tmp_path / "a.wav"
    _write(clip, 3.5, 16000, 1, 0)
    for path in (clip, bytes(clip)):
        row = ray_engine._decode_row({"path": path}, Options())
        assert row["path"] == str(clip) and not row["error"] and row["audio"].size == 56000


@pytest.mark.parametrize("path", [None, 3, ""])
def test_a_dataset_row_without_a_path_is_that_rows_error(path):
    """None or a number aborted the whole Dataset with a TypeError's traceback; "" gave ": no such
    file". Each is its own row's error, the others go on."""
    row = ray_engine._decode_row({"path": path}, Options())
    assert row["error"] == f"{path!r} is no file's path (the 'path' column holds one audio " \
        "file's path per row)" and row["path"] == repr(path) and row["audio"].size == 0


@pytest.mark.parametrize("gpus, actors, expected", [
    (0, None, (1, {"num_cpus": 2.0})), (0, 3, (3, {"num_cpus": 2.0})),
    (2, None, (2, {"num_gpus": 1})), (2, 1, (1, {"num_gpus": 1}))])
def test_the_actor_pool_has_the_actors_asked_for_or_one_a_gpu(gpus, actors, expected):
    """``--actors N`` on a cluster without GPUs gave one actor whatever N."""
    import types

    cluster = {"CPU": 8.0, **({"GPU": float(gpus)} if gpus else {})}
    ray = types.SimpleNamespace(cluster_resources=lambda: cluster)
    assert ray_engine._pool(ray, actors, 2.0) == expected


SIGTERM_WHILE_RAY_STARTS = """
import os, signal, sys, time
import ray
from jaxmir import interrupts
from jaxmir.collection import ray_engine

shut = []

def starting(**kwargs):  # Ray's handler in place, and the signal comes
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)

ray.init, ray.is_initialized, ray.shutdown = starting, lambda: False, lambda: shut.append(1)
with interrupts.installed():
    try:
        ray_engine.connect("")
    except interrupts.Terminated:
        print("terminated", signal.getsignal(signal.SIGTERM) is interrupts._raise, shut)
"""


def test_sigterm_while_ray_starts_is_the_commands_stop():
    """ray.init puts in a handler of its own that exits with status 15: a SIGTERM then ended the
    command silently (not 143), and left the processes Ray was starting. (In a child process:
    signals reach only a main thread, which pytest's workers may not run tests in.)"""
    require("ray")
    run = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_RAY_STARTS], capture_output=True,
                         text=True, env=child_env(), timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "terminated True [1]", \
        (run.returncode, run.stdout, run.stderr[-2000:])


STOPS_WHILE_RAY_STARTS = """
import os, signal, sys, time
import ray
from jaxmir import interrupts
from jaxmir.collection import ray_engine
from jaxmir.collection.compute import Options
from jaxmir.collection.inputs import Source

started = []
rays_setter = ray._private.utils.set_sigterm_handler

def init(**kwargs):  # a local cluster's start, its processes running from the first moment
    ray._private.utils.set_sigterm_handler(lambda signum, frame: sys.exit(signum))  # as Ray's
    os.kill(os.getpid(), kind)
    time.sleep(0.5)
    started.append(kind)

ray.init, ray.is_initialized = init, lambda: False
for kind in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    with interrupts.installed():
        try:
            ray_engine.connect("")
        except (KeyboardInterrupt, interrupts.Terminated):
            print("stopped after", started)

def connect(address=None):  # JAX's callback swallowed the interrupt while Ray's modules loaded
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pass

ray_engine.connect = connect
with interrupts.installed():
    try:
        ray_engine.run("msd-musicnn", None, [Source("a.wav", 1, 1)], Options(), None, None, None)
    except KeyboardInterrupt:
        print("run stopped")
print("Ray's setter back:", ray._private.utils.set_sigterm_handler is rays_setter)
"""


def test_a_stop_while_ray_starts_or_swallowed_in_it_stops_the_run():
    """A Ctrl-C, SIGHUP or SIGTERM (Ray's own handler, which it sets as it starts, exits at once)
    broke ray.init's start of a local cluster off, with no node to shut down: its agents ran on
    for a minute. A Ctrl-C that JAX's garbage-collection callback
    swallowed while `import ray.data` ran was never raised again: the Ray run went through every
    file, then exited 130 (the local engine stops). Ray's set_sigterm_handler, kept out while
    its cluster starts, is Ray's again after."""
    require("ray")
    run = subprocess.run([sys.executable, "-c", STOPS_WHILE_RAY_STARTS], capture_output=True,
                         text=True, env=child_env(), timeout=120)
    assert run.returncode == 0 and run.stdout.split("\n")[:5] == [
        "stopped after [<Signals.SIGINT: 2>]",
        "stopped after [<Signals.SIGINT: 2>, <Signals.SIGHUP: 1>]",
        "stopped after [<Signals.SIGINT: 2>, <Signals.SIGHUP: 1>, <Signals.SIGTERM: 15>]",
        "run stopped", "Ray's setter back: True"], \
        (run.returncode, run.stdout, run.stderr[-2000:])


def test_a_cluster_that_answers_but_refuses_names_its_token(monkeypatch):
    """Ray 2.60's clusters ask for a token by default: jaxmir said only "Failed to connect to
    Ray cluster at HOST:6379" (the cause was in Ray's log lines)."""
    ray = require("ray")

    def refused(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379")

    monkeypatch.setattr(ray_engine, "_reachable", lambda address: None)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(InputError,
                       match=r"cannot connect to the Ray cluster 192.0.2.2:6379: Failed "
                             r".*; its host speaks HTTP/2, as gRPC does: give the head's "
                             r"own port .*not the Ray Client's 10001.*if the cluster asks "
                             r"for a token .*RAY_AUTH_TOKEN=\.\.\. \(`ray get-auth-token`"):
        ray_engine.connect("192.0.2.2:6379")
    with pytest.raises(InputError,
                       match=r"cannot connect to the Ray cluster \(local\): Failed [^;]*$"):
        ray_engine.connect("")


def test_ray_s_own_addresses_go_to_ray_unprobed(monkeypatch):
    """``auto`` (a cluster started on this machine, which Ray finds) and ``local`` are Ray's
    words, not a host:port to probe (the probe refuses them as "expected host:port")."""
    ray = require("ray")
    given = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: given.append(kwargs["address"]))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    for address in ("auto", "local"):
        ray_engine.connect(address)
    assert given == ["auto", "local"]


def test_a_token_refused_after_ray_was_imported_first_says_so(monkeypatch):
    """A program that imports ray before jaxmir (the README's analyze_dataset recipe) with
    RAY_AUTH_TOKEN set and no RAY_AUTH_MODE: Ray sent no token, and jaxmir's message only said
    to set RAY_AUTH_TOKEN, which was set."""
    ray = require("ray")

    def refused(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379")

    monkeypatch.setattr(ray_engine, "_reachable", lambda address: None)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(InputError, match=r"RAY_AUTH_TOKEN is set, but this program imported ray "
                                         r"before .*set RAY_AUTH_MODE=token in the environment"):
        ray_engine.connect("192.0.2.2:6379")
    # set in time (by the caller, or by jaxmir before Ray's import): no such clause
    with pytest.raises(InputError) as refusal:
        ray_engine.connect("192.0.2.2:6379")
    assert "imported ray before" not in str(refusal.value)


def _softmax_ended(model):
    """``model`` ending in a softmax where its head ends in a sigmoid: its weights and labels."""
    from jaxmir.model import Model
    from jaxmir.spec import Activation

    head = (*model.spec.head[:-1], Activation("softmax"))
    spec = dataclasses.replace(model.spec, config={**model.spec.config, "head": head})
    return Model.from_spec(spec).with_labels(list(model.labels))


def test_a_model_the_actors_would_load_otherwise_is_refused(tmp_path, monkeypatch):
    """The actors load jaxmir.load(name, backbone=...): a model loaded with output= ran there as
    its default output (9 genre probabilities written as the 200-d embeddings' rows, under the
    same identity), a head composed in Python failed in every actor (it is now named by its file
    and backbone, as the command line names it), and a model file named relative to the driver's
    folder was not found by the workers."""
    require("ray")
    graph = shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb")
    clip = tmp_path / "in" / "a.wav"
    _write(clip, 3.0, 16000, 1, 0)
    shipped = jaxmir.load("msd-musicnn")
    refused = [
        (jaxmir.load(graph, output="model/dense/BiasAdd"), str(graph), None, r"\(its output, "),
        (shipped.with_labels([f"t{i}" for i in range(50)]), "msd-musicnn", None, r"\(its labels\)"),
        (shipped, "no-such-model", None, "which fails: "),
        (dataclasses.replace(shipped, variables=jax.tree_util.tree_map(
            lambda v: v * 1.5, shipped.variables)), "msd-musicnn", None, r"\(its weights\)"),
        (_softmax_ended(shipped), "msd-musicnn", None, r"\(its layers\)"),  # the same weights
    ]
    for model, name, backbone, message in refused:
        with pytest.raises(InputError, match="the Ray engine's actors load the model as "
                                             rf"jaxmir.load\(.*{message}"):
            collect(model, [str(clip)], str(tmp_path / "out.parquet"), name=name, engine="ray",
                    progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing made
    ray_engine.check_reloadable(shipped, "msd-musicnn", None)  # the same model: taken
    # in bfloat16 (Options(dtype="bfloat16")): what the actors run, cast as given there
    ray_engine.check_reloadable(shipped.astype("bfloat16"), "msd-musicnn", None)
    # the same arrays in another tree (nested a level deeper): not what the actors load and run
    regrouped = dataclasses.replace(shipped, variables={"state": shipped.variables})
    with pytest.raises(InputError, match=r"\(its weights\)"):
        ray_engine.check_reloadable(regrouped, "msd-musicnn", None)
    # a head composed in Python: named, as the command line names it, by its file and backbone
    head = str(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    composed = jaxmir.load(head, backbone="msd-musicnn")
    assert commands._names_of(composed, None) == (head, "msd-musicnn")
    given = str(ROOT / "weights" / "msd-musicnn.npz")  # named by the caller: as named
    assert commands._names_of(composed, given) == (head, given)
    ray_engine.check_reloadable(composed, head, "msd-musicnn")
    monkeypatch.chdir(graph.parent)
    ray_engine.check_reloadable(jaxmir.load(graph), graph.name, None)
    absolute = ray_engine._for_workers(graph.name)  # as the workers can find it
    assert os.path.isabs(absolute) and os.path.samefile(absolute, graph)  # through any link
    assert ray_engine._for_workers("msd-musicnn") == "msd-musicnn"


def test_a_model_and_backbone_named_relative_here_reach_the_actors_whole(monkeypatch):
    """The actors run in other folders: a head and its backbone named relative to the driver's
    folder each go to them as an absolute path."""
    ray = require("ray")
    require("ray.data")
    head = os.path.relpath(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"), ROOT)
    backbone = os.path.join("weights", "msd-musicnn.npz")
    given = []

    class Paths:  # a Dataset of paths, as far as analyze_dataset reads it
        def schema(self, fetch_if_missing):
            return None

        def map_batches(self, actor, fn_constructor_args, **kwargs):
            given.extend(fn_constructor_args[:2])

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {})
    ray_engine.analyze_dataset(Paths(), head, Options(), backbone=backbone)
    assert all(os.path.isabs(path) for path in given), given
    assert os.path.samefile(given[0], head) and os.path.samefile(given[1], backbone)


def test_the_python_entry_points_layout_defaults_to_the_command_lines():
    """A tag Layout built without labels gave rows with no values at all, status ok."""
    require("ray")
    require("ray.data")
    layout = ray_engine.layout_for("msd-musicnn", None, Options())
    assert layout.command == "tag" and layout.labels == tuple(jaxmir.load("msd-musicnn").labels)
    assert ray_engine.layout_for(None, None, Options("embeddings")).value_columns == ("embedding",)
    with pytest.raises(InputError, match="unknown output 'cnn9'"):  # it failed in the actors
        ray_engine.layout_for(None, None, Options("cnn9"))
    with pytest.raises(InputError, match="a tag layout without the model's labels"):
        ray_engine.analyze_dataset(None, "msd-musicnn", Options(), Layout("tag", {"model": "x"}))
    # a layout of other columns: three labels took the first three tags, ok; a tag layout on
    # embeddings named embedding values as tags
    for labels, options, gives in ((("x", "y", "z"), Options(), "50 label columns"),
                                   (layout.labels, Options("embeddings"), "an embedding")):
        with pytest.raises(InputError, match=rf"the layout has {len(labels)} label columns, but "
                                             rf"msd-musicnn's '\w+' gives {gives}"):
            ray_engine.analyze_dataset(None, "msd-musicnn", options,
                                       dataclasses.replace(layout, labels=labels))


def test_a_ray_run_with_nothing_left_to_do_joins_no_cluster(monkeypatch, tmp_path):
    """Resuming a finished output with --engine ray started a cluster (~20 s) to say so; and the
    cluster was joined before the output's lock was taken."""
    require("ray")
    clip, model = tmp_path / "a.wav", jaxmir.load("msd-musicnn")
    _write(clip, 3.0, 16000, 1, 0)
    out = tmp_path / "tags.jsonl"
    collect(model, [str(clip)], str(out), name="msd-musicnn", jobs=0, progress=False)
    joined = []

    def connect(address=None):
        joined.append(any("fresh" in lock.name for lock in tmp_path.glob(".*.lock")))
        raise InputError("cannot reach the Ray cluster")

    monkeypatch.setattr(ray_engine, "connect", connect)
    tally = collect(model, [str(clip)], str(out), name="msd-musicnn", engine="ray", progress=False)
    assert (tally.skipped, joined) == (1, [])
    fresh = tmp_path / "fresh.jsonl"  # a new output: the cluster is joined before it is made
    with pytest.raises(InputError, match="cannot reach the Ray cluster"):
        collect(model, [str(clip)], str(fresh), name="msd-musicnn", engine="ray", progress=False)
    assert not fresh.exists() and joined == [True]  # with the output's lock held


def _listener(reply: bytes | None):
    """A local TCP server that sends ``reply`` to each connection (``None``: stays silent) and
    its ``(address, stop)``."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            if reply is not None:
                connection.sendall(reply)
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}", server.close


@pytest.mark.parametrize("flag", ["1", "true", "True"])  # as Ray reads it: lowercased
def test_a_cluster_with_tls_is_not_probed_in_plain_text(monkeypatch, flag):
    """A TLS port answers the plain HTTP/2 preface with a TLS alert, not SETTINGS: probed, a
    cluster with ``RAY_USE_TLS`` would be refused as one that is not Ray's."""
    address, stop = _listener(bytes([0x15, 3, 3, 0, 2, 2, 0x32]))  # TLS alert: decode error
    try:
        monkeypatch.setenv("RAY_USE_TLS", flag)
        ray_engine._reachable(address)
        monkeypatch.setenv("RAY_USE_TLS", "0")
        with pytest.raises(InputError, match="answers, but not as a Ray cluster"):
            ray_engine._reachable(address)
    finally:
        stop()


@pytest.mark.parametrize("reply", [b"HTTP/1.0 400 Bad Request\r\n\r\n", b"-ERR unknown\r\n", None])
def test_an_address_that_answers_but_not_as_ray_is_refused_in_bounded_time(reply):
    """A web server (or Redis) at RAY_ADDRESS: ray.init retried for over 10 minutes, deaf to
    Ctrl-C and SIGTERM."""
    address, stop = _listener(reply)
    try:
        start = time.monotonic()
        with pytest.raises(InputError, match=f"{address} \\(RAY_ADDRESS={address}\\) answers, but "
                                             "not as a Ray cluster"):
            ray_engine._reachable(address)
        assert time.monotonic() - start < 60  # refused, where ray.init retried without end
    finally:
        stop()
    # an HTTP/2 server's handshake (gRPC's, as Ray's head sends it) passes: its SETTINGS, then
    # an acknowledgement of the client's, with other frames between them as gRPC's C core sends
    # (SETTINGS of 4 values, WINDOW_UPDATE, ACK); SETTINGS alone, then silence, left ray.init
    # retrying for ever, deaf to Ctrl-C
    settings, acknowledged = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]), bytes([0, 0, 0, 4, 1, 0, 0, 0, 0])
    values = b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in
                      ((3, 100), (4, 4194304), (6, 16384), (0xfe03, 1)))
    grpc_core = (bytes([0, 0, 24, 4, 0, 0, 0, 0, 0]) + values          # SETTINGS, 4 values
                 + bytes([0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0x40, 0])     # WINDOW_UPDATE
                 + acknowledged)
    # a frame of 2**14 bytes, the largest a peer may send before SETTINGS raise it (RFC 9113
    # 4.2), is a frame like any other; one byte more is no HTTP/2 server's
    largest, over = (bytes([0, 0x40, 0, 0xfa, 0, 0, 0, 0, 0]) + bytes(1 << 14),
                     bytes([0, 0x40, 1, 0xfa, 0, 0, 0, 0, 0]) + bytes((1 << 14) + 1))
    for reply, passes in ((settings + acknowledged, True), (grpc_core, True), (settings, False),
                          (settings + largest + acknowledged, True),
                          (settings + over + acknowledged, False)):
        address, stop = _listener(reply)
        try:
            if passes:
                ray_engine._reachable(address)
            else:
                with pytest.raises(InputError, match="answers, but not as a Ray cluster"):
                    ray_engine._reachable(address)
        finally:
            stop()
    assert ray_engine._host_port("[::1]:6399") == ("::1", 6399)  # an IPv6 address, in brackets
    # Ray Client's: Ray Data failed under it with a 63-line traceback, an empty output left
    with pytest.raises(InputError, match="a Ray Client address, which Ray Data does not run under"):
        ray_engine._host_port("ray://head:10001")
    # ray.init failed on them; a port that is no number was a bare ValueError
    for address in ("10.0.0.1:6390/", "http://10.0.0.1:6390", "head:", "head:6379x"):
        with pytest.raises(InputError, match=r"expected host:port \(no scheme, no path\)"):
            ray_engine._host_port(address)


def test_connecting_keeps_the_command_lines_sigterm_handler_and_sends_the_token(monkeypatch):
    """ray.init installs a SIGTERM handler that exits with status 15: a terminated Ray run
    printed Ray's stack dump and exited 15, not 143 with jaxmir's line. And Ray sends a token
    to an explicit address only with RAY_AUTH_MODE=token: RAY_AUTH_TOKEN alone was refused."""
    import signal

    ray = require("ray")
    seen = {}

    def init(**kwargs):
        seen["mode"] = os.environ.get("RAY_AUTH_MODE")
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as Ray's does

    def ours(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_engine, "_reachable", lambda address: None)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        ray_engine.connect("192.0.2.2:6379")
        assert signal.getsignal(signal.SIGTERM) is ours and seen["mode"] == "token"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ray_init_s_other_exits_pass_and_its_value_errors_are_said(monkeypatch):
    """Only Ray's SIGTERM exit (15) becomes the caller's stop: another exit of ray.init passes on
    as it is, the caller's handler not called. A ValueError of ray.init (an address whose port
    Ray refuses, below 1024) is a jaxmir error naming the cluster, not a traceback."""
    import signal

    ray = require("ray")
    called = []
    monkeypatch.setattr(ray_engine, "_reachable", lambda address: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: sys.exit(1))
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: called.append(signum))
    try:
        with pytest.raises(SystemExit) as exited:
            ray_engine.connect("192.0.2.2:6379")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exited.value.code == 1 and called == []

    def refuses(**kwargs):
        raise ValueError("Invalid address port 80. Must be between 1024 and 65535")

    monkeypatch.setattr(ray, "init", refuses)
    with pytest.raises(InputError, match=r"cannot connect to the Ray cluster 192.0.2.2:80: "
                                         r"Invalid address port 80\. Must be between 1024"):
        ray_engine.connect("192.0.2.2:80")


def test_the_token_mode_is_set_before_ray_is_imported(tmp_path):
    """The command line imports Ray (to say early when it is missing) before it connects: the
    mode set at connect came after Ray had read it, and a head asking for a token refused."""
    fake = tmp_path / "fake" / "ray"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("import os\nMODE = os.environ.get('RAY_AUTH_MODE')\n")
    (fake / "data" / "__init__.py").write_text("")
    env = child_env(RAY_ADDRESS="192.0.2.2:6379", RAY_AUTH_TOKEN="secret")
    env.pop("RAY_AUTH_MODE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "fake"), env.get("PYTHONPATH", "")])
    code = ("from jaxmir.collection import ray_engine; "
            "ray_engine.import_ray(); import ray; print(ray.MODE)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "token", result.stderr


def test_the_command_line_ray_run_prints_jaxmir_lines_not_rays(tmp_path):
    """A local Ray run printed JAX's fork warning (Ray starts its processes after JAX's threads),
    Ray Data's INFO lines and its progress, interleaved with jaxmir's own bar and summary."""
    require("ray")
    require("ray.data")
    _write(tmp_path / "a.wav", 3.5, 16000, 1, 0)
    env = child_env(JAX_PLATFORMS="cpu", JAXMIR_NO_CACHE="1")
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "jaxmir", "tag", str(tmp_path / "a.wav"), "-o",
                             str(tmp_path / "tags.parquet"), "--engine", "ray", "--actors", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "1 ok, 0 failed" in result.stderr
    for noise in ("os.fork() was called", "streaming_executor", "logging_progress",
                  "Progress bars disabled", "Token authentication is",  # a note on starting Ray
                  "constructor arguments in the object store",  # of actors Ray would restart
                  "RayDeprecationWarning"):  # jaxmir's own call of map_batches, with its line
        assert noise not in result.stderr, result.stderr


_CRASHING_DECODER = """
import importlib.abc, importlib.util, os, sys

class Hook(importlib.abc.MetaPathFinder):  # jaxmir's decoder dies on files named *CRASH*
    def find_spec(self, name, path, target=None):
        if name != "jaxmir.collection.compute":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            real = module.decode

            def decode(path, *args, **kwargs):
                if "CRASH" in os.path.basename(str(path)):
                    os._exit(139)
                return real(path, *args, **kwargs)
            module.decode = decode
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Hook())
"""


def test_a_worker_that_dies_ends_the_run_and_says_what_to_do(tmp_path):
    """A file that kills its decoder (a crash, memory) kills the model actor it decodes in; Ray
    Data restarted it and retried the batch without end: the run looped, saying nothing. Ray
    Data's own traceback of it came before jaxmir's line."""
    require("ray")
    require("ray.data")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASHING_DECODER)
    _write(tmp_path / "in" / "a.wav", 3.5, 16000, 1, 0)
    _write(tmp_path / "in" / "b_CRASH.wav", 3.5, 16000, 1, 1)
    env = child_env(JAX_PLATFORMS="cpu", JAXMIR_NO_CACHE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "jaxmir", "tag", str(tmp_path / "in"), "-o",
                             str(tmp_path / "tags.parquet"), "--engine", "ray", "--actors", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 1, result.stderr
    assert "a Ray worker died (a crash, or out of memory) while it decoded or ran one of the " \
           "files to do; the rows done are kept" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr  # Ray Data's, ~30 lines, before it


def test_actors_that_hold_every_cpu_still_decode(tmp_path, monkeypatch):
    """On a cluster without GPUs whose CPUs the actors all take (one CPU and the default one
    actor, or --actors 2 on two), the decoding tasks waited for a CPU forever: no row, no word.
    The actors decode their own files now; a child process, so that a hang fails the test."""
    require("ray")
    require("ray.data")
    _write(tmp_path / "music" / "a.wav", 3.5, 16000, 1, 0)
    _write(tmp_path / "music" / "b.wav", 4.0, 22050, 1, 1)
    script = (
        "import sys, ray\n"
        "from jaxmir.collection import ray_engine\n"
        "from jaxmir.collection.compute import Options\n"
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, "
        "configure_logging=False)\n"
        "ray.data.DataContext.get_current().enable_progress_bars = False\n"
        "paths = ray.data.from_items([{'path': p} for p in sys.argv[1:]])\n"
        "rows = ray_engine.analyze_dataset(paths, 'msd-musicnn', Options('embeddings'))\n"
        "print(sorted((r['path'].rsplit('/', 1)[1], r['status'], r['n_patches']) "
        "for r in rows.take_all()))\n"
        "ray.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "music" / "a.wav"),
                           str(tmp_path / "music" / "b.wav")], capture_output=True, text=True,
                          env=child_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[('a.wav', 'ok', 1), ('b.wav', 'ok', 1)]"
