"""The public Model API: outputs by name, input checks, pure functions, weights files."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

import jaxmir
from jaxmir import catalog, cli
from jaxmir.errors import InputError, JaxmirWarning, WeightsError
from jaxmir.weights import FORMAT_VERSION, save_weights
from conftest import child_env, compiled_programs, on_cpu, shared_fixture


@pytest.fixture(scope="module")
def musicnn():
    return jaxmir.load("msd-musicnn")


@pytest.fixture(scope="module")
def vgg():
    return jaxmir.load("mtt-vgg")


def test_musicnn_feature_names_have_musicnn_shapes(musicnn, patches_187):
    names = ["timbral", "temporal", "cnn1", "cnn2", "cnn3", "mean_pool", "max_pool", "penultimate",
             "embeddings", "logits", "predictions", "model/dense/BiasAdd", "model/transpose",
             "model/batch_normalization_10/batchnorm/add_1", "model/Sigmoid:0"]
    out = musicnn.apply(patches_187[:2], names)
    shapes = {k: v.shape for k, v in out.items()}
    assert shapes == {
        "timbral": (2, 187, 408), "temporal": (2, 187, 153), "cnn1": (2, 187, 64),
        "cnn2": (2, 187, 64), "cnn3": (2, 187, 64), "mean_pool": (2, 753), "max_pool": (2, 753),
        "penultimate": (2, 200), "embeddings": (2, 200), "logits": (2, 50), "predictions": (2, 50),
        "model/dense/BiasAdd": (2, 200), "model/transpose": (2, 187, 64, 1),
        "model/batch_normalization_10/batchnorm/add_1": (2, 200), "model/Sigmoid:0": (2, 50)}
    np.testing.assert_array_equal(out["penultimate"],
                                  out["model/batch_normalization_10/batchnorm/add_1"])
    np.testing.assert_array_equal(out["embeddings"], out["model/dense/BiasAdd"])
    np.testing.assert_allclose(out["predictions"], jax.nn.sigmoid(out["logits"]), atol=1e-6)
    # cnn2 = cnn1 + conv(cnn1): the residual makes them differ
    assert not np.allclose(out["cnn1"], out["cnn2"])


def test_a_node_s_name_is_its_own_where_nodes_share_values(musicnn, vgg):
    """Dropout's Identity gives the batch norm's values: a head's JSON written for the Identity
    named the batch norm, the first node of those values, instead of the node asked for."""
    assert musicnn.node_name("model/dropout/Identity") == "model/dropout/Identity"
    assert musicnn.node_name("embeddings") == "model/dense/BiasAdd"
    assert vgg.node_name("pool1") == "pool1"  # a node of the graph; so is its MaxPool


def test_vgg_pool_names(vgg, patches_187):
    out = vgg.apply(patches_187[:1], ["pool1", "pool2", "pool3", "pool4", "pool5", "predictions"])
    assert {k: v.shape for k, v in out.items()} == {
        "pool1": (1, 92, 48, 128), "pool2": (1, 46, 24, 128), "pool3": (1, 23, 12, 128),
        "pool4": (1, 11, 6, 128), "pool5": (1, 2, 128), "predictions": (1, 50)}


def test_labels_and_info(musicnn, vgg):
    assert musicnn.labels[:3] == ("rock", "pop", "alternative")
    assert vgg.labels[:3] == ("guitar", "classical", "slow")
    assert musicnn.num_params() == 792_079 and vgg.num_params() == 607_030
    assert "penultimate" in musicnn.output_names and "model/dense/BiasAdd" in musicnn.output_names
    vggish = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    names = vggish.output_names  # its graph has nodes named pool1..pool4, as its aliases
    assert len(names) == len(set(names)) and {"pool1", "model/vggish/pool1/MaxPool"} <= set(names)


def test_unknown_output_lists_what_exists(musicnn, patches_187):
    with pytest.raises(InputError, match="unknown output 'model/nope'.*penultimate"):
        musicnn.apply(patches_187, ["model/nope"])
    # a node's first output is 'node' or 'node:0'; jaxmir computes no other port of it
    assert musicnn.apply(patches_187, "model/dense/BiasAdd:0")["model/dense/BiasAdd:0"].ndim == 2
    with pytest.raises(InputError, match="unknown output 'model/dense/BiasAdd:1'"):
        musicnn.apply(patches_187, "model/dense/BiasAdd:1")


def test_arguments_of_the_wrong_kind_are_named(musicnn, patches_187, tmp_path):
    for output in (3, [3], []):  # apply's argument is outputs= (it was called output=)
        with pytest.raises(InputError, match=r"^outputs=.*: expected an output name or a list"):
            musicnn.apply(patches_187, output)
    for source in (None, 3):
        with pytest.raises(InputError, match="expected a shipped model's name or the path"):
            jaxmir.load(source)
    for labels in ("abcdefghi", 5, ["a", 2]):  # the last two: raw TypeErrors, or names "2"
        with pytest.raises(InputError, match=r"labels=.*: expected a list of class names"):
            jaxmir.load("msd-musicnn", labels=labels)
    assert jaxmir.load("msd-musicnn",
                       labels=np.array([f"t{i}" for i in range(50)])).labels[0] == "t0"
    for keyword in ("output", "embedding"):  # raw AttributeErrors before
        with pytest.raises(InputError, match=f"{keyword}=5: expected the name of an output"):
            jaxmir.load("msd-musicnn", **{keyword: 5})
    with pytest.raises(InputError, match="a path holds no NUL character"):  # a raw ValueError
        jaxmir.load("head\0.pb")
    # a head's backbone output, without a backbone: ignored without a word
    with pytest.raises(InputError, match=r"embedding='cnn3' names the backbone output a head "
                                         r"reads; it goes with backbone="):
        jaxmir.load("msd-musicnn", embedding="cnn3")


def test_patches_with_axes_of_one_are_squeezed_as_essentia_feeds_a_graph(musicnn):
    """``[batch, 187, 96, 1]`` (a channel axis) or ``[batch, 1, 187, 96]``: Essentia squeezes
    every axis of one but the batch's before feeding the graph; the same tags."""
    x = np.random.default_rng(0).standard_normal((2, 187, 96)).astype(np.float32)
    want = np.asarray(musicnn.apply(x)["predictions"])
    for shaped in (x[..., None], x[:, None]):
        np.testing.assert_array_equal(np.asarray(musicnn.apply(shaped)["predictions"]), want)


@pytest.mark.parametrize("patches, message", [
    (np.zeros((2, 100, 96), np.float32), r"shape \[2, 100, 96\]"),
    (np.zeros((187, 96), np.float32), r"shape \[187, 96\]"),
    (np.zeros((2, 187, 96), np.int16), "dtype int16"),
    (np.zeros((2, 187, 96), np.complex64), "dtype complex64"),
    (np.zeros((0, 187, 96), np.float32), "empty batch"),
    ([["a"]], "dtype <U1"),
])
def test_bad_patches(musicnn, patches, message):
    with pytest.raises(InputError, match=message):
        musicnn.apply(patches)


def test_float64_patches_are_accepted(musicnn, patches_187):
    a = musicnn.apply(patches_187[:2].astype(np.float64))["predictions"]
    np.testing.assert_array_equal(a, musicnn.apply(patches_187[:2])["predictions"])


def test_module_apply_is_a_pure_function_for_jit_vmap_grad(musicnn, patches_187):
    module, variables = musicnn.module, musicnn.variables
    x = jnp.asarray(patches_187[:4])
    direct = jax.jit(module.apply)(variables, x)
    np.testing.assert_allclose(direct, musicnn.apply(x)["predictions"], atol=1e-6)
    grouped = jax.jit(jax.vmap(lambda group: module.apply(variables, group)))(
        x.reshape(2, 2, 187, 96))
    np.testing.assert_allclose(grouped.reshape(4, 50), direct, atol=1e-6)

    @jax.jit  # compiled: op-by-op dispatch of the model and its gradient takes tens of seconds
    def rock(patch, variables=variables):
        return module.apply(variables, patch[None])[0, 0]

    grad = jax.jit(jax.grad(rock))(x[0])
    assert grad.shape == (187, 96) and bool(jnp.all(jnp.isfinite(grad)))
    # Model.apply itself differentiates too
    grad_api = jax.grad(lambda p: musicnn.apply(p[None])["predictions"][0, 0])(x[0])
    np.testing.assert_allclose(grad_api, grad, atol=1e-6)

    # A central difference along a random direction, in float64 so that rounding does not hide it.
    with jax.enable_x64(True):
        variables64 = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), variables)
        patch = jnp.asarray(patches_187[0], jnp.float64)
        direction = jnp.asarray(np.random.default_rng(3).standard_normal((187, 96)))
        step = 1e-6
        numeric = (rock(patch + step * direction, variables64)
                   - rock(patch - step * direction, variables64)) / (2 * step)
        analytic = jnp.vdot(jax.jit(jax.grad(rock))(patch, variables64), direction)
        assert abs(float(numeric - analytic)) <= 1e-4 * abs(float(analytic)) + 1e-9
        np.testing.assert_allclose(jnp.vdot(grad, direction), analytic, rtol=1e-3)


def _consecutive(n: int, hop: int = 93, seed: int = 4) -> np.ndarray:
    """``n`` patches [187, 96] cut every ``hop`` frames from one random log-mel."""
    frames = np.random.default_rng(seed).standard_normal(
        ((n - 1) * hop + 187, 96)).astype(np.float32)
    return np.stack([frames[p * hop:p * hop + 187] for p in range(n)])


# one patch, two, one short step, a step of 8 and a padded one
@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_apply_shares_the_frames_of_overlapping_patches(musicnn, vgg, monkeypatch, n):
    from jaxmir import model as model_module

    modules, batches = [], []
    run = model_module.run_patches_jit

    def recording(module, variables, taps, patches, *rest):
        modules.append(module)
        batches.append(len(patches))
        return run(module, variables, taps, patches, *rest)

    monkeypatch.setattr(model_module, "run_patches_jit", recording)
    x = _consecutive(n)
    shared = musicnn.apply(x, ["timbral", "predictions", "embeddings"], overlap_hop=93)
    assert modules[-1].overlap_hop == 93  # the timbral convolutions run once over the stretch
    # steps of up to 8 patches: fewer run as one step of their own, not padded to 8
    assert batches[-1] == {1: 1, 2: 2, 5: 5, 13: 16}[n]
    plain = musicnn.apply(x, ["timbral", "predictions", "embeddings"])
    # every row, those whose window reads a patch's zero padding included (1e-6 to 2.3e-5 on ~50)
    scale = float(np.abs(plain["timbral"]).max())
    np.testing.assert_allclose(shared["timbral"], plain["timbral"], rtol=0, atol=2e-6 * scale)
    # float32 summation order only: 1.3e-7 measured on tags (probabilities), embeddings ~12
    np.testing.assert_allclose(shared["predictions"], plain["predictions"], rtol=0, atol=1e-6)
    scale = float(np.abs(plain["embeddings"]).max())
    np.testing.assert_allclose(shared["embeddings"], plain["embeddings"], rtol=0, atol=3e-6 * scale)
    # a model that cannot share runs as usual
    vgg_x = x[:, :vgg.input_shape[0], :vgg.input_shape[1]]
    np.testing.assert_array_equal(vgg.apply(vgg_x, overlap_hop=93)["predictions"],
                                  vgg.apply(vgg_x)["predictions"])


def test_a_model_that_cannot_share_frames_runs_in_apply_s_steps(vgg, monkeypatch):
    """VGG given overlap_hop runs as apply runs it without: in the steps apply picks on a CPU
    (the same bits), not the batch at once."""
    from jaxmir import model as model_module

    chunks, run = [], model_module.run_patches_jit

    def recording(module, variables, taps, patches, chunk):
        chunks.append(chunk)
        return run(module, variables, taps, patches, chunk)

    monkeypatch.setattr(model_module, "run_patches_jit", recording)
    cpu_vgg, x = on_cpu(vgg), _consecutive(2)
    cpu_vgg.apply(x, overlap_hop=93)
    cpu_vgg.apply(x)
    assert len(chunks) == 2 and chunks[0] is not None and chunks[0] == chunks[1], chunks


def test_a_call_takes_the_timbral_rows_it_shares_with_the_call_before(musicnn):
    """Two calls on 8 consecutive patches each: the second takes the timbral rows of the frames
    both stretches cover (frames 3-90 of its own) from the first's carry instead of computing
    them. Patch by patch gives the same numbers; a carry marked invalid is recomputed."""
    from jaxmir.models import with_overlap_hop
    from jaxmir.models.runner import empty_carry, run_patches_carrying

    x = _consecutive(16)
    names, taps = musicnn.resolve_outputs(["timbral", "predictions"])
    module = with_overlap_hop(musicnn.module, 93)
    run = jax.jit(lambda p, c: run_patches_carrying(module, musicnn.variables, taps, p, c))
    none = empty_carry(module, musicnn.variables, musicnn.input_shape, 8)
    valid = lambda carry: [bool(leaf) for leaf in jax.tree_util.tree_leaves(carry)
                           if leaf.dtype == bool]
    assert valid(none) == [False, False]  # both timbral branches
    (timbral_0, tags_0), carry = run(x[:8], none)
    (timbral_1, tags_1), _ = run(x[8:], carry)
    assert valid(carry) == [True, True]
    plain = musicnn.apply(x, names)
    scale = float(np.abs(plain["timbral"]).max())
    np.testing.assert_allclose(np.concatenate([timbral_0, timbral_1]), plain["timbral"], rtol=0,
                               atol=2e-6 * scale)
    np.testing.assert_allclose(np.concatenate([tags_0, tags_1]), plain["predictions"], rtol=0,
                               atol=1e-6)
    # the carried rows are the second call's first patch's rows 3-90, and only those (the
    # same program on the same input: equal but for a GPU's reduction order)
    moved = jax.tree_util.tree_map(lambda a: a if a.dtype == bool else a + 1, carry)
    (timbral_moved, _), _ = run(x[8:], moved)
    same = dict(rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(timbral_moved[0, 3:91], np.asarray(timbral_1[0, 3:91]) + 1, **same)
    np.testing.assert_allclose(np.delete(timbral_moved[0], np.s_[3:91], 0),
                               np.delete(timbral_1[0], np.s_[3:91], 0), **same)
    np.testing.assert_allclose(timbral_moved[1:], timbral_1[1:], **same)
    stale = jax.tree_util.tree_map(lambda a: jnp.zeros_like(a) if a.dtype == bool else a + 1,
                                   carry)
    (timbral_stale, tags_stale), _ = run(x[8:], stale)
    np.testing.assert_allclose(timbral_stale, plain["timbral"][8:], rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(tags_stale, plain["predictions"][8:], rtol=0, atol=1e-6)


def test_apply_refuses_patches_that_do_not_overlap_so(musicnn):
    with pytest.raises(InputError, match="not consecutive patches 93 frames apart"):
        musicnn.apply(_consecutive(3, hop=90), overlap_hop=93)
    for hop in (187, -1, True, 1.5):
        with pytest.raises(InputError, match="overlap_hop must be"):
            musicnn.apply(_consecutive(3), overlap_hop=hop)


def test_apply_refuses_nan_or_infinite_patches(musicnn, patches_187):
    """As predict refuses NaN audio: NaN outputs were returned without a word (NumPy input)."""
    for bad in (np.nan, np.inf):
        patches = np.array(patches_187[:2])
        patches[1, 5, 7] = bad
        with pytest.raises(InputError, match="patches hold NaN or infinite values"):
            musicnn.apply(patches)
    # checked as the model reads them: float64 1e39 is infinite in float32, and a finite
    # float32 3e38 overflows the sums (both gave NaN outputs with at most a cast warning)
    with pytest.raises(InputError, match=r"patches hold NaN or infinite values \(in float32\)"):
        musicnn.apply(np.full((1, 187, 96), 1e39))
    patches = np.array(patches_187[:1])
    patches[0, 5, 7] = 3e38
    with pytest.raises(InputError, match="patches reach 3e[+]38, beyond 1e[+]12: expected log-mel"):
        musicnn.apply(patches)
    patches[0, 5, 7] = -3e38  # as far below: the sums overflow as well
    with pytest.raises(InputError, match="beyond 1e[+]12: expected log-mel"):
        musicnn.apply(patches)
    assert np.isfinite(np.asarray(musicnn.apply(np.full((1, 187, 96), 1e12, np.float32))
                                  ["predictions"])).all()
    head = jaxmir.load(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    with pytest.raises(InputError, match=r"^embeddings reach 1e[+]13, beyond 1e[+]12: expected "
                                         r"embeddings; such values"):
        head.apply(np.full((1, 200), 1e13, np.float32))
    with pytest.raises(InputError, match=r"^embeddings hold NaN"):  # a head's inputs by name
        head.apply(np.full((1, 200), np.nan, np.float32))
    with pytest.raises(InputError, match=r"^embeddings have dtype int32; expected floating point "
                                         r"\(float32\) embeddings of shape \[batch, 200\]"):
        head.apply(np.zeros((1, 200), np.int32))


def test_apply_takes_bfloat16_patches(musicnn, patches_187):
    """bfloat16 patches were refused as "dtype bfloat16; expected floating point"."""
    rounded = np.asarray(patches_187[:2]).astype(jnp.bfloat16)
    want = np.asarray(musicnn.apply(rounded.astype(np.float32))["predictions"])
    for patches in (rounded, jnp.asarray(rounded)):  # the same values, exactly, in float32
        np.testing.assert_array_equal(np.asarray(musicnn.apply(patches)["predictions"]), want)


def test_weights_and_metadata_by_any_case_of_their_suffix(musicnn, tmp_path, patches_187):
    """'W.NPZ' was read as a GraphDef ("not a readable GraphDef ... corrupt"), and so was
    Essentia's metadata JSON passed for its model."""
    save_weights(musicnn, tmp_path / "w.NPZ")
    np.testing.assert_array_equal(
        jaxmir.load(tmp_path / "w.NPZ").apply(patches_187[:1])["predictions"],
        musicnn.apply(patches_187[:1])["predictions"])
    (tmp_path / "head.json").write_text("{}")
    with pytest.raises(InputError, match=r"head.json is a model's metadata \(Essentia's JSON\), "
                                         r"not a model: load its .pb instead"):
        jaxmir.load(tmp_path / "head.json")
    (tmp_path / "head.JSON").write_text("{}")
    (tmp_path / "head.pb").write_bytes(b"")
    with pytest.raises(InputError, match=r"load .*head.pb, beside it, instead"):
        jaxmir.load(str(tmp_path / "head.JSON"))
    with pytest.raises(InputError, match="'nothere.json' is neither a file nor a shipped model"):
        jaxmir.load("nothere.json")


def test_a_graph_output_that_is_no_node_says_where_names_go():
    with pytest.raises(InputError, match=r"no node named 'embeddings'; output= names the graph's "
                                         r"output node .* go to their own output="):
        jaxmir.load(shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb"),
                    output="embeddings")


def test_weights_round_trip(musicnn, tmp_path, patches_187):
    path = tmp_path / "copy.npz"
    save_weights(musicnn, path, {"note": "test"})
    again = jaxmir.load(path)
    assert again.labels == musicnn.labels and again.metadata["provenance"] == {"note": "test"}
    np.testing.assert_array_equal(again.apply(patches_187[:2])["predictions"],
                                  musicnn.apply(patches_187[:2])["predictions"])
    save_weights(musicnn, tmp_path / "again.npz", {"note": "test"})
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()  # reproducible files
    save_weights(musicnn, tmp_path / "plain.npz")  # no provenance given: an empty one, not None
    assert jaxmir.load(tmp_path / "plain.npz").metadata["provenance"] == {}
    relabelled = jaxmir.load(path, labels=[f"t{i}" for i in range(50)])
    assert relabelled.labels[0] == "t0"
    with pytest.raises(InputError, match="3 labels given for a model with 50 outputs"):
        jaxmir.load(path, labels=["a", "b", "c"])
    with pytest.raises(InputError, match="51 labels given for a model with 50 outputs"):
        jaxmir.load(path, labels=[f"t{i}" for i in range(51)])  # one too many, as too few


def test_bad_weights_files(musicnn, tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        jaxmir.load(tmp_path / "missing.npz")
    (tmp_path / "loop.npz").symlink_to("loop.npz")  # said "no such weights file"
    with pytest.raises(WeightsError, match=r"loop.npz: is a link that leads to no file \(a loop\)"):
        jaxmir.load(tmp_path / "loop.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(WeightsError, match="not a readable jaxmir weights file"):
        jaxmir.load(tmp_path / "text.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(WeightsError, match="without jaxmir's description"):
        jaxmir.load(tmp_path / "plain.npz")
    np.savez(tmp_path / "pickled.npz", __jaxmir__=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(WeightsError, match="'__jaxmir__' holds object values; jaxmir writes uint8"):
        jaxmir.load(tmp_path / "pickled.npz")

    good = tmp_path / "good.npz"
    save_weights(musicnn, good)
    with np.load(good) as data:
        arrays = dict(data)
    arrays["variables/params/head/dense_1/kernel"] = np.zeros((3, 3), np.float32)
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(WeightsError, match="do not fit.*head/dense_1/kernel"):
        jaxmir.load(tmp_path / "tampered.npz")
    meta = json.loads(arrays["__jaxmir__"].tobytes())
    # the next version as well as a far one; another format at a version jaxmir reads
    for form, version in (("jaxmir-weights", FORMAT_VERSION + 1), ("jaxmir-weights", 99),
                          ("other", FORMAT_VERSION)):
        meta["format"], meta["version"] = form, version
        arrays["__jaxmir__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(tmp_path / "future.npz", **arrays)
        readable = ", ".join(f"v{known}" for known in range(1, FORMAT_VERSION + 1))
        with pytest.raises(WeightsError, match=rf"format {form} v{version}; this jaxmir reads "
                                               rf"jaxmir-weights {readable}$"):
            jaxmir.load(tmp_path / "future.npz")


@pytest.mark.parametrize("name", ["msd-vgg", "msd-musicnn", "essentia-models/small_vggish_init.pb",
                                  "essentia-models/emomusic-msd-musicnn-1.pb"])
def test_a_version_1_weights_file_takes_its_architecture_s_front_end(tmp_path, name):
    """Version 1 files recorded no front-end: musicnn's for MusiCNN and musicnn's VGG (as
    Essentia computes their patches), VGGish's for VGGish, the backbone's for a head composed
    with one."""
    model = jaxmir.load(shared_fixture(name) if name.endswith(".pb") else name,
                        **({"backbone": "msd-musicnn"} if "emomusic" in name else {}))
    save_weights(model, tmp_path / "v2.npz")
    with np.load(tmp_path / "v2.npz") as data:
        arrays = dict(data)
    meta = json.loads(arrays["__jaxmir__"].tobytes())
    del meta["frontend"]
    meta["version"] = 1
    arrays["__jaxmir__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "v1.npz", **arrays)
    assert model.frontend is not None
    assert jaxmir.load(tmp_path / "v1.npz").frontend == model.frontend


def test_a_bfloat16_model_is_saved_as_float32_and_loads(tmp_path):
    """The file jaxmir writes is one it reads: a bfloat16 model's variables go in as the
    float32 numbers they are (kept as bfloat16, the file was refused on loading)."""
    low = jaxmir.load("msd-musicnn").astype("bfloat16")
    save_weights(low, tmp_path / "low.npz")
    again = jaxmir.load(tmp_path / "low.npz")
    structure = jax.tree_util.tree_structure
    assert structure(again.variables) == structure(low.variables)
    for saved, held in zip(jax.tree_util.tree_leaves(again.variables),
                           jax.tree_util.tree_leaves(low.variables)):
        assert saved.dtype == np.float32
        np.testing.assert_array_equal(saved, np.asarray(held, np.float32))


def _edited(musicnn, tmp_path, name: str, edit) -> Path:
    """A copy of ``musicnn``'s weights file after ``edit(arrays, meta)``."""
    good = tmp_path / "good.npz"
    save_weights(musicnn, good)
    with np.load(good) as data:
        arrays = dict(data)
    meta = json.loads(arrays["__jaxmir__"].tobytes())
    meta = edit(arrays, meta)
    if meta is not None:
        text = meta if isinstance(meta, str) else json.dumps(meta)
        arrays["__jaxmir__"] = np.frombuffer(text.encode(), np.uint8)
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return path


KERNEL = "variables/params/head/dense_1/kernel"


def _set(key, value):
    def edit(arrays, meta):
        meta[key] = value
        return meta
    return edit


def _drop(*keys):
    def edit(arrays, meta):
        for key in keys:
            del arrays[key]
    return edit


def _array(key, convert):
    def edit(arrays, meta):
        arrays[key] = convert(arrays[key])
    return edit


@pytest.mark.parametrize("name, edit, message", [  # each a raw Python error (or no error) before
    ("extra_key", lambda a, m: a.update(foo=np.zeros(2, np.float32)),
     "holds 'foo.npy', which is no part"),
    ("nested_key", lambda a, m: a.update({KERNEL + "/sub": np.zeros(2, np.float32)}),
     "incomplete description"),
    ("meta_a_list", lambda a, m: [1, 2], "the description is a JSON list; expected an object"),
    ("meta_nested", lambda a, m: "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("meta_huge_int", lambda a, m: '{"version": ' + "9" * 5000 + "}", "not valid JSON"),
    ("patches_of_1e12_frames", _set("input_shape", [10 ** 12, 96]),  # predict: a NumPy MemoryError
     r"input_shape \[1000000000000, 96\] does not fit the musicnn front-end's patches of 187 "
     "frames of 96 bands"),
    ("patches_of_200_frames", _set("input_shape", [200, 96]), "does not fit the musicnn front-end"),
    ("patches_of_64_bands", _set("input_shape", [187, 64]),  # its frames right, its bands not
     r"input_shape \[187, 64\] does not fit the musicnn front-end"),
    # the file's own errors name it (they did not)
    ("frontend_of_another_hop", lambda a, m: {**m, "frontend": {**m["frontend"], "patch_hop": 50}},
     "front-end .*'patch_hop': 50.* is not one jaxmir computes"),  # 3 patches in 5 s, not 2
    ("unknown_architecture", _set("architecture", "../../etc"),
     r"unknown_architecture.npz: unknown architecture '../../etc'"),
    ("labels_too_few", _set("labels", ["one"]),
     "labels_too_few.npz: 1 labels given for a model with 50 outputs"),
    ("config_null", _set("config", None), "incomplete description"),
    ("config_a_list", _set("config", []), "incomplete description"),
    ("node_map_a_list", _set("node_map", []), "incomplete description"),
    ("input_shape_of_names", _set("input_shape", ["a"]),
     "input_shape \\['a'\\] is not a list of sizes"),
    ("input_shape_of_0_frames", _set("input_shape", [0, 96]),  # "cannot run ... zero-size array"
     r"input_shape \[0, 96\] is not a list of sizes"),
    ("input_shape_of_bools", _set("input_shape", [True, 96]),  # JSON's true is no size (an int)
     r"input_shape \[True, 96\] is not a list of sizes"),
    ("labels_numbers", _set("labels", list(range(50))), r"labels are \[0, 1, 2"),
    # each named on its side: the file's missing and unexpected variables, its shapes, the model's
    ("variable_missing", _drop(KERNEL),
     r"\(missing: params/head/dense_1/kernel; unexpected: none; shapes that differ: none\)"),
    ("variables_missing", _drop(*(f"variables/params/head/{layer}/{kind}" for layer in
                                  ("dense_1", "dense_4") for kind in ("kernel", "bias"))),
     r"\(missing: params/head/dense_1/bias, params/head/dense_1/kernel, params/head/dense_4/bias "
     r"and 1 more; unexpected: none;"),
    ("three_variables_missing", _drop(*(f"variables/params/head/{name}" for name in
                                        ("dense_1/kernel", "dense_1/bias", "dense_4/kernel"))),
     r"\(missing: params/head/dense_1/bias, params/head/dense_1/kernel, "
     r"params/head/dense_4/kernel; unexpected: none;"),  # all three shown, no "and 0 more"
    ("variable_unexpected", lambda a, m: a.update({
        "variables/params/head/extra/kernel": np.zeros((2, 2), np.float32)}),
     r"\(missing: none; unexpected: params/head/extra/kernel; shapes that differ: none\)"),
    ("variable_of_another_shape", lambda a, m: a.update({KERNEL: np.zeros((200, 7), np.float32)}),
     r"shapes that differ: params/head/dense_1/kernel \[200, 7\] in the file, \[1506, 200\] "
     r"in the model\)"),
    ("output_name_a_dict", _set("output_name", {"a": 1}),  # loaded; info showed the dict
     r"output_name is \{'a': 1\}; expected a graph node's name"),
    ("input_name_a_number", _set("input_name", 3), "input_name is 3; expected a graph node"),
    ("labels_a_number", _set("labels", 5), "incomplete description.*labels are 5"),
    ("another_architecture", _set("architecture", "vggish"), "incomplete description|cannot run"),
    ("alias_to_nothing", _set("aliases", {"predictions": "nonexist"}),
     r"outputs read nonexist, which the musicnn model does not compute"),
    ("alias_a_number", _set("aliases", {"predictions": 3}),  # no tap's name: not an alias
     r"its description gives no 'predictions' output \(its 'aliases'\)"),
    ("bool_weights", _array(KERNEL, lambda k: k > 0), f"'{KERNEL}' holds bool values"),
    ("float16_weights", _array(KERNEL, lambda k: k.astype(np.float16)), "holds float16 values"),
    ("nan_weights", _array(KERNEL, lambda k: np.where(k > 0, np.nan, k).astype(np.float32)),
     f"'{KERNEL}' holds NaN or infinite values"),
    ("huge_weights", _array(KERNEL, lambda k: np.where(k > 0, np.float32(3e36), k)),
     f"'{KERNEL}' holds a value of size 3e\\+36, beyond any trained weight's"),
])
def test_a_weights_file_jaxmir_did_not_write_is_a_weights_error(musicnn, tmp_path, name, edit,
                                                               message):
    with pytest.raises(WeightsError, match=message):
        jaxmir.load(_edited(musicnn, tmp_path, name, edit))


def test_a_fortran_ordered_array_in_a_weights_file_is_read_in_its_order(musicnn, tmp_path):
    """np.savez writes a Fortran-ordered kernel as such: read in C order, its values were
    scrambled (tags off by 0.29)."""
    path = _edited(musicnn, tmp_path, "fortran",
                   lambda a, m: a.update({KERNEL: np.asfortranarray(a[KERNEL])}))
    with zipfile.ZipFile(path) as archive:
        assert b"'fortran_order': True" in archive.read(KERNEL + ".npy")[:128]
    patches = np.random.default_rng(0).standard_normal((2, 187, 96)).astype(np.float32)
    np.testing.assert_array_equal(jaxmir.load(path).apply(patches)["predictions"],
                                  musicnn.apply(patches)["predictions"])


@pytest.mark.parametrize("flag_offset, method", [((6, 8), None), (None, 9)])
def test_a_zip_member_zipfile_cannot_read_is_a_weights_error(musicnn, tmp_path, flag_offset,
                                                              method):
    """A member marked encrypted (RuntimeError) or deflate64-compressed (NotImplementedError)
    ended in a traceback."""
    import struct

    good = tmp_path / "good.npz"
    save_weights(musicnn, good)
    data = bytearray(good.read_bytes())
    for signature, flags, compression in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(signature)
        while at != -1:
            if flag_offset:
                data[at + flags] |= 1
            else:
                data[at + compression:at + compression + 2] = struct.pack("<H", method)
            at = data.find(signature, at + 4)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="bad.npz: not a readable jaxmir weights file"):
        jaxmir.load(bad)


def test_a_zip_members_array_is_read_in_chunks(tmp_path):
    """A zip member's readinto reads the whole member into a new object, then copies it: a
    4.5-MB file declaring a 1.5-GB array took 4.9 GB. Measured in a child on a 256-MB array."""
    path = tmp_path / "zeros.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("__jaxmir__.npy", "w") as member:
            np.lib.format.write_array(member, np.frombuffer(b'{"format": "x"}', np.uint8))
        with archive.open("variables/params/big.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f4", "fortran_order": False, "shape": (64 << 20,)})
            zeros = bytes(1 << 24)
            for _ in range(16):
                member.write(zeros)
    script = ("import resource, sys\nfrom jaxmir import errors, weights\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    weights.load_weights(sys.argv[1])\nexcept errors.WeightsError:\n    pass\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)")
    grown = float(subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                                 text=True, check=True, env=child_env()).stdout)
    assert grown < 1.5 * 256, grown  # the array once, not three times


def _with_member(source: Path, target: Path, name: str, write) -> Path:
    """A copy of the weights file ``source`` whose member ``name`` is what ``write(handle)``
    writes (deflated), the others as they are."""
    with zipfile.ZipFile(source) as original, \
            zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copy:
        for member in original.infolist():
            if member.filename != name:
                copy.writestr(member, original.read(member))
        with copy.open(name, "w", force_zip64=True) as handle:
            write(handle)
    return target


def _npy_header(shape: tuple[int, ...]) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    return header.getvalue()


def test_a_weights_file_is_checked_for_size_before_it_is_read(musicnn, tmp_path, monkeypatch):
    """A 1.7-KB file declaring a 64-GB array asked NumPy to allocate it (a raw MemoryError)."""
    from jaxmir import weights

    good = tmp_path / "good.npz"
    save_weights(musicnn, good)
    bomb = _with_member(good, tmp_path / "bomb.npz", KERNEL + ".npy",
                        lambda handle: handle.write(_npy_header((1 << 34,)) + b"\0" * 64))
    with pytest.raises(WeightsError, match=r"declares a \[17179869184\] array, more than its"):
        jaxmir.load(bomb)
    with np.load(good) as data:
        shape = data[KERNEL].shape
    # within the member's size with its header, but 64 bytes short of the array declared
    short = _with_member(good, tmp_path / "short.npz", KERNEL + ".npy", lambda handle: handle.write(
        _npy_header(shape) + bytes(4 * math.prod(shape) - 64)))
    with pytest.raises(WeightsError, match=rf"ends before the \[{shape[0]}, {shape[1]}\] array it"):
        jaxmir.load(short)
    monkeypatch.setattr(weights, "MAX_BYTES", 1000)
    with pytest.raises(WeightsError, match="more than the 1000 jaxmir reads from a weights file"):
        jaxmir.load(good)
    with zipfile.ZipFile(good) as archive:  # its arrays' bytes, as zipfile counts them
        total = sum(member.file_size for member in archive.infolist())
    monkeypatch.setattr(weights, "MAX_BYTES", total)  # at most MAX_BYTES: exactly that is read
    jaxmir.load(good)
    monkeypatch.setattr(weights, "MAX_BYTES", total - 1)
    with pytest.raises(WeightsError, match=f"holds {total} bytes of arrays, more than the "
                                           f"{total - 1} jaxmir reads"):
        jaxmir.load(good)
    monkeypatch.setattr(weights, "MAX_BYTES", 2 << 30)
    monkeypatch.setattr(weights, "MAX_DESCRIPTION_BYTES", 1000)
    with pytest.raises(WeightsError, match="its description takes .* bytes, more than the 1000"):
        jaxmir.load(good)
    with zipfile.ZipFile(good) as archive:  # the bytes read, not those the zip stores (deflated)
        described = archive.getinfo("__jaxmir__.npy").file_size
        assert archive.getinfo("__jaxmir__.npy").compress_size < described - 1
    monkeypatch.setattr(weights, "MAX_DESCRIPTION_BYTES", described)  # at most: exactly is read
    jaxmir.load(good)
    monkeypatch.setattr(weights, "MAX_DESCRIPTION_BYTES", described - 1)
    with pytest.raises(WeightsError, match=f"its description takes {described} bytes, more than "
                                           f"the {described - 1} jaxmir reads"):
        jaxmir.load(good)
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(WeightsError, match="folder.npz: is a directory"):
        jaxmir.load(tmp_path / "folder.npz")
    os.mkfifo(tmp_path / "fifo.npz")  # opening it would wait for a writer
    with pytest.raises(WeightsError, match="fifo.npz: is not a regular file"):
        jaxmir.load(tmp_path / "fifo.npz")


def test_a_member_declaring_twice_its_bytes_is_refused_by_its_header(musicnn, tmp_path):
    """The header check compares what a member declares with the member's own size: twice
    its bytes is refused there, before any of its data is read, not found short afterwards."""
    good = tmp_path / "good.npz"
    save_weights(musicnn, good)
    n = 4096  # float32: 4 * n bytes declared in a member of 2 * n bytes, its header included
    header = _npy_header((n,))
    double = _with_member(good, tmp_path / "double.npz", KERNEL + ".npy",
                          lambda handle: handle.write(header + bytes(2 * n - len(header))))
    with pytest.raises(WeightsError, match=rf"'{KERNEL}' declares a \[{n}\] array, more than "
                                           rf"its {2 * n} bytes hold; the file is corrupt"):
        jaxmir.load(double)


def test_a_member_without_the_npy_suffix_is_no_part_of_a_weights_file(musicnn, tmp_path):
    """A variable stored as ``<name>``, not ``<name>.npy`` as np.savez and save_weights name
    it, is refused, not read as the variable its name would give."""
    good = tmp_path / "good.npz"
    save_weights(musicnn, good)
    renamed = tmp_path / "renamed.npz"
    with zipfile.ZipFile(good) as original, zipfile.ZipFile(renamed, "w") as copy:
        for member in original.infolist():
            name = KERNEL if member.filename == KERNEL + ".npy" else member.filename
            copy.writestr(name, original.read(member))
    with pytest.raises(WeightsError, match=f"holds '{KERNEL}', which is no part of a jaxmir "
                                           "weights file"):
        jaxmir.load(renamed)


def test_a_variable_of_the_wrong_shape_is_refused_before_its_data_is_read(musicnn, tmp_path):
    """A 256-KB file whose kernel declares 256 MB of (deflated) zeros: all of it was read, then
    its shape compared with the model's. Measured in a child: the growth of its peak memory."""
    good = tmp_path / "good.npz"
    save_weights(musicnn, good)

    def zeros(handle):
        handle.write(_npy_header((64 << 20,)))
        for _ in range(16):
            handle.write(bytes(1 << 24))

    bomb = _with_member(good, tmp_path / "bomb.npz", KERNEL + ".npy", zeros)
    with zipfile.ZipFile(bomb) as archive:
        assert archive.getinfo(KERNEL + ".npy").compress_size < 1 << 20
    script = ("import resource, sys\nfrom jaxmir import errors, weights\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    weights.load_weights(sys.argv[1])\nexcept errors.WeightsError as err:\n"
              "    print(err)\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)")
    result = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True,
                            text=True, check=True, env=child_env()).stdout.splitlines()
    assert re.search(r"bomb.npz: variables do not fit the musicnn model .*head/dense_1/kernel",
                     result[0]), result
    assert float(result[1]) < 128, result  # MB: the model's trace (~50), not the 256 declared


def test_labels_that_do_not_fit_are_refused_before_the_data_is_read(musicnn, tmp_path,
                                                                   monkeypatch):
    """A 2-MB file of deflated zeros declaring a 260-M-output head with no labels: its 2 GB were
    read (28-39 s, 2.3 GB) before the labels were counted."""
    import json

    from jaxmir import weights

    good = tmp_path / "good.npz"
    save_weights(musicnn, good)
    with zipfile.ZipFile(good) as archive:
        meta = json.loads(np.load(io.BytesIO(archive.read("__jaxmir__.npy"))).tobytes())
    meta["labels"] = meta["labels"][:3]
    few = _with_member(good, tmp_path / "few.npz", "__jaxmir__.npy", lambda handle: np.save(
        handle, np.frombuffer(json.dumps(meta).encode(), np.uint8)))
    read, real = [], weights._read_array
    monkeypatch.setattr(weights, "_read_array", lambda path, name, *rest: (
        read.append(name), real(path, name, *rest))[1])
    with pytest.raises(WeightsError, match="few.npz: 3 labels given for a model with 50 outputs"):
        jaxmir.load(few)
    assert read == ["__jaxmir__"]  # the description alone
    assert jaxmir.load(few, labels=[f"tag{i}" for i in range(50)]).labels[-1] == "tag49"


def test_labels_holding_control_characters_are_refused(musicnn, tmp_path):
    """``jaxmir info`` and ``jaxmir tag`` printed them as they were: a line break made a line of
    its own, an escape sequence was obeyed by the terminal."""
    bad = list(musicnn.labels)
    bad[4] = "rock\nfake: 1.0"
    with pytest.raises(InputError, match=r"the label 'rock\\nfake: 1.0' holds a control character"):
        musicnn.with_labels(bad)
    with pytest.raises(InputError, match="holds a control character"):
        jaxmir.load("msd-musicnn", labels=bad[:4] + ["\x1b[31mred"] + bad[5:])
    renamed = tmp_path / "renamed.npz"
    save_weights(musicnn, renamed)
    with zipfile.ZipFile(renamed) as archive:
        meta = json.loads(np.load(io.BytesIO(archive.read("__jaxmir__.npy"))).tobytes())
    meta["labels"][4] = "\x9bcontrol"  # a C1 control: CSI
    edited = _with_member(renamed, tmp_path / "edited.npz", "__jaxmir__.npy",
                          lambda handle: np.save(handle, np.frombuffer(json.dumps(meta).encode(),
                                                                       np.uint8)))
    with pytest.raises(WeightsError, match=r"edited.npz: the label '\\x9bcontrol' holds a control"):
        jaxmir.load(edited)
    for odd in ("right\u202eleft", "one\u2028two", "", " ", "zero\u200bwidth", "\ufeffbom"):
        with pytest.raises(InputError, match="holds a control character|a label is empty"):
            musicnn.with_labels(bad[:4] + [odd] + bad[5:])
    # the embeddings, overrides and isolates of Unicode's bidirectional algorithm, its marks
    for control in "\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u2029":
        with pytest.raises(InputError, match="holds a control character"):
            musicnn.with_labels(bad[:4] + [f"a{control}b"] + bad[5:])
    assert musicnn.with_labels(["Électro · café ü"] + bad[1:4] + ["tab-free"] + bad[5:]).labels[0] \
        == "Électro · café ü"


def test_labels_of_utf8_read_under_an_ascii_locale_are_read_as_text(musicnn, tmp_path, capsys):
    """A head trained under an ASCII locale (PYTHONUTF8=0) recorded música as m\\udcc3\\udcbasica:
    refused once labels holding lone surrogates were (they broke Parquet tables), its labels are
    the bytes' UTF-8 text. Bytes that are no UTF-8 stay refused."""
    graph = tmp_path / "emo.pb"
    graph.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    for classes, expected in ((["m\udcc3\udcbasica", "\udce6\udc97\udca5"], ["música", "日"]),
                              (["caf\udce9", "rock"], None),
                              (["\ud83c", "rock"], None)):  # a lone surrogate of another kind
        graph.with_suffix(".json").write_text(json.dumps({"classes": classes}))
        if expected is None:
            with pytest.raises(InputError, match="holds bytes that are not UTF-8 text"):
                jaxmir.load(graph)
            continue
        with pytest.warns(JaxmirWarning, match=r"classes hold UTF-8 read as single bytes .* read "
                                               r"as \['música', '日'\]"):
            assert jaxmir.load(graph).labels == tuple(expected)
        clip = tmp_path / "a.wav"  # the command line loaded the head twice: two warnings
        soundfile.write(clip, np.zeros(16000 * 4, np.float32), 16000)
        assert cli.main(["tag", str(clip), "-m", str(graph), "-b", "msd-musicnn"]) == 0
        assert capsys.readouterr().err.count("classes hold UTF-8") == 1
    weights = tmp_path / "plain.npz"
    save_weights(musicnn, weights)
    with zipfile.ZipFile(weights) as archive:
        meta = json.loads(np.load(io.BytesIO(archive.read("__jaxmir__.npy"))).tobytes())
    meta["labels"][0] = "m\udcc3\udcbasica"
    edited = _with_member(weights, tmp_path / "ascii.npz", "__jaxmir__.npy", lambda handle: np.save(
        handle, np.frombuffer(json.dumps(meta).encode(), np.uint8)))
    assert jaxmir.load(edited).labels[0] == "música"


def test_output_names_the_output_of_a_converted_model_or_is_refused(musicnn, tmp_path):
    """``output=`` picks a .pb's output node at import; for shipped names and .npz files it was
    ignored, any name at all giving the predictions."""
    path = tmp_path / "weights.npz"
    save_weights(musicnn, path)
    for source in ("msd-musicnn", path):
        for same in ("predictions", "model/Sigmoid"):
            assert jaxmir.load(source, output=same).spec.output_name == "model/Sigmoid"
        with pytest.raises(InputError, match="unknown output 'garbage'"):
            jaxmir.load(source, output="garbage")
        with pytest.raises(InputError,
                           match=r"converted model.*predict\(\.\.\., output='embeddings'\)"):
            jaxmir.load(source, output="embeddings")


def test_shipped_file_checked_against_sha256(monkeypatch):
    entry = dict(catalog.catalog()["models"]["msd-vgg"], sha256="0" * 64)
    models = dict(catalog.catalog()["models"], **{"msd-vgg": entry})
    monkeypatch.setattr(catalog, "catalog", lambda: {"models": models, "default": "msd-musicnn"})
    with pytest.raises(WeightsError, match="does not match its sha256"):
        jaxmir.load("msd-vgg")


def test_a_shipped_model_whose_file_is_gone_says_so(monkeypatch):
    """A FileNotFoundError from deep inside the loading before."""
    entry = dict(catalog.catalog()["models"]["msd-vgg"], file="gone.npz")
    models = dict(catalog.catalog()["models"], **{"msd-vgg": entry})
    monkeypatch.setattr(catalog, "catalog", lambda: {"models": models, "default": "msd-musicnn"})
    with pytest.raises(WeightsError, match=r"shipped model 'msd-vgg': .*gone\.npz is missing; "
                                           r"reinstall jaxmir"):
        jaxmir.load("msd-vgg")


def test_a_graph_of_one_s_own_loads_without_the_shipped_weights(monkeypatch):
    """They are only needed by name: without them a .pb named like a shipped model failed with
    "the shipped weights are missing" where it should just take no shipped labels."""
    def missing():
        raise WeightsError("the shipped weights are missing")

    monkeypatch.setattr(catalog, "weights_dir", missing)
    catalog.catalog.cache_clear()
    try:
        assert catalog.names() == []
        model = jaxmir.load(shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb"))
        assert model.architecture == "musicnn" and len(model.labels) == 9
    finally:
        catalog.catalog.cache_clear()


def test_shipped_weights_are_small_and_pickle_free():
    for name in catalog.names():
        path = catalog.path_of(name)
        assert path.stat().st_size < 8_000_000
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                header = archive.read(info.filename)[:10]
                assert header.startswith(b"\x93NUMPY")
        with np.load(path, allow_pickle=False) as data:
            assert all(data[k].dtype != object for k in data.files)


# -- precision ----------------------------------------------------------------------------------
def _products(model, x) -> list[str]:
    """The StableHLO lines of every matrix product and convolution of ``model`` on ``x``."""
    text = jax.jit(model.module.apply).lower(model.variables, x).as_text()
    return [line for line in text.splitlines()
            if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]


def test_every_product_runs_at_full_float32_precision(musicnn, vgg):
    """GPUs run float32 products in TF32 unless told otherwise: every model says HIGHEST."""
    from conftest import shared_fixture

    vggish = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    for model in (musicnn, vgg, vggish):
        x = np.zeros((2, *model.input_shape), np.float32)
        products = _products(model, x)
        assert products and all("HIGHEST" in line for line in products), model.architecture


def test_a_convnet_s_head_is_compiled_apart_from_its_convolutions(vgg):
    """The flattened features of VGG and VGGish pass a fusion boundary (a bit-exact
    ``reduce_precision``) before the dense head: fused with the convolutions, XLA's CPU
    backend ran VGGish ~6x slower at batch 8."""
    from conftest import shared_fixture

    vggish = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    for model in (vgg, vggish):
        x = np.zeros((2, *model.input_shape), np.float32)
        text = jax.jit(model.module.apply).lower(model.variables, x).as_text()
        boundaries = [line for line in text.splitlines() if "stablehlo.reduce_precision" in line]
        # the only [batch, features] tensor that passes one: the flattened features
        assert any(re.search(r"tensor<2x\d+xf32>", line) for line in boundaries), model.architecture


def _dots_outside_loops(jaxpr) -> list[tuple[int, ...]]:
    """Left-operand shapes of the matrix products a jaxpr runs outside any ``scan``."""
    from jax.extend.core import jaxprs_in_params

    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.append(tuple(eqn.invars[0].aval.shape))
        elif eqn.primitive.name != "scan":
            for sub in jaxprs_in_params(eqn.params):
                shapes += _dots_outside_loops(sub)
    return shapes


def test_a_backbone_runs_its_body_in_steps_and_its_dense_head_once_per_batch(musicnn):
    """Steps of a few patches keep the convolutions' activations in cache; the dense head then
    multiplies all the batch's features at once (VGGish's head reads its 67 M weights at every
    call). Same outputs as one call."""
    from jaxmir.models.runner import run_patches

    x = jnp.asarray(np.random.default_rng(3).standard_normal((16, 187, 96)), jnp.float32)
    taps = (("head/layer_5", None),)
    jaxpr = jax.make_jaxpr(lambda p: run_patches(musicnn.module, musicnn.variables, taps, p,
                                                 chunk=4))(x)
    assert any(eqn.primitive.name == "scan" for eqn in jaxpr.jaxpr.eqns)
    # both dense layers of the head, on all 16 patches' pooled features, outside the loop
    assert {(16, 1506), (16, 200)} <= set(_dots_outside_loops(jaxpr.jaxpr))
    stepped = np.asarray(musicnn.apply(x, chunk=4)["predictions"])
    whole = np.asarray(musicnn.apply(x, chunk=None)["predictions"])
    np.testing.assert_allclose(stepped, whole, rtol=0, atol=1e-6)  # sigmoids in [0, 1]
    # a NumPy count as a Python one (np.uint8 overflowed in the padding's arithmetic); -1.0 is no
    # count, nor the model's size
    np.testing.assert_array_equal(musicnn.apply(x, chunk=np.uint8(4))["predictions"], stepped)
    with pytest.raises(InputError, match="chunk -1.0: a whole number of patches"):
        musicnn.apply(x, chunk=-1.0)


def test_apply_steps_hold_four_musicnn_patches_worth_of_input(musicnn, vgg, monkeypatch):
    """On a CPU, MusiCNN and VGG ([187, 96] patches) step by 4 patches, VGGish ([96, 64]) by 8; a
    module that is not staged and holds large dense layers runs whole batches (each step would
    read them)."""
    from conftest import shared_fixture
    from jaxmir.model import default_chunk
    from jaxmir.models.heads import EmbeddingHead
    from jaxmir.spec import Dense

    vggish = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    steps = {m.architecture: default_chunk(m.module, m.input_shape, on_cpu(m).variables)
             for m in (musicnn, vgg, vggish)}
    assert steps == {"musicnn": 4, "vgg": 4, "vggish": 8}
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # for variables that are shapes
    wide = {"params": {"head": {"dense_0": {
        "kernel": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}}}}
    assert default_chunk(EmbeddingHead((Dense(4096),)), (4096,), wide) is None
    assert default_chunk(EmbeddingHead((Dense(8),)), (200,), {}) == 256
    # a patch of more values than a step holds: steps of one patch
    assert default_chunk(EmbeddingHead((Dense(8),)), (100_000,), {}) == 1


def test_apply_runs_whole_batches_on_an_accelerator(musicnn, monkeypatch):
    """Steps of a few patches are for a CPU's caches; a GPU needs whole batches to fill it."""
    from jaxmir import model as model_module

    assert model_module.default_chunk(musicnn.module, musicnn.input_shape,
                                      on_cpu(musicnn).variables) == 4
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                    musicnn.variables)
    assert model_module.default_chunk(musicnn.module, musicnn.input_shape, shapes) is None


def _failing_programs(message: str):
    """A stand-in for a compiled-programs cache whose programs raise XLA's ``message``."""
    def program(*args):
        raise RuntimeError(message)
    return lambda options: program


def test_a_device_out_of_memory_says_to_run_fewer_patches_per_call(musicnn, patches_187,
                                                                   monkeypatch):
    """XLA's RESOURCE_EXHAUSTED (a GPU holds a whole call's activations: 112 GB for 1024 MusiCNN
    patches on an H200) becomes a jaxmir error naming the call's size and what to lower, from
    ``apply`` and ``predict`` alike; other runtime errors pass unchanged."""
    from jaxmir import stream
    from jaxmir.errors import DeviceMemoryError
    from jaxmir.models import runner

    oom = ("RESOURCE_EXHAUSTED: Out of memory while trying "
           "to allocate 120640206288 bytes.\nBuffers: ...")
    monkeypatch.setattr(runner, "_run_patches_compiled", _failing_programs(oom))
    monkeypatch.setattr(stream, "_audio_to_outputs_compiled", _failing_programs(oom))
    hint = (r"ran out of memory in a call of {} patches \(RESOURCE_EXHAUSTED: Out of memory while "
            r"trying to allocate 120640206288 bytes.\); run fewer patches per call: --batch")
    with pytest.raises(DeviceMemoryError, match=hint.format(7)):
        musicnn.apply(patches_187, chunk=None)
    audio = np.random.default_rng(2).uniform(-0.5, 0.5, 16000 * 20).astype(np.float32)
    with pytest.raises(DeviceMemoryError, match=hint.format(8)):
        musicnn.predict(audio, 16000)
    monkeypatch.setattr(runner, "_run_patches_compiled", _failing_programs("INTERNAL: no"))
    with pytest.raises(RuntimeError, match="^INTERNAL: no$") as caught:
        musicnn.apply(patches_187)
    assert not isinstance(caught.value, DeviceMemoryError)


def test_bfloat16_is_opt_in_and_measured(musicnn, patches_187):
    low = musicnn.astype("bfloat16")
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(low.variables)} \
        == {jnp.dtype(jnp.bfloat16)}
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(musicnn.variables)} \
        == {jnp.dtype(jnp.float32)}
    x = patches_187[:4]
    want = np.asarray(musicnn.apply(x)["predictions"])
    got = low.apply(x)["predictions"]
    assert got.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (a rounding moves a value by 2^-8 = 3.9e-3 of it at most):
    # the tags move, by ~1e-2 at most on these patches; more than 0.05 would mean something other
    # than rounding.
    deviation = float(np.max(np.abs(np.asarray(got) - want)))
    assert 1e-5 < deviation < 0.05, deviation
    np.testing.assert_array_equal(musicnn.astype("float32").apply(x)["predictions"], want)
    assert musicnn.astype("float32") is musicnn and low.astype("bfloat16") is low  # nothing to cast
    back = low.astype("float32")
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(back.variables)} \
        == {jnp.dtype(jnp.float32)}
    # the patches the bfloat16 model computes on are rounded to bfloat16 (its arithmetic's)
    given = low.apply(x, ["model/Placeholder"])["model/Placeholder"]
    np.testing.assert_array_equal(given, jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    with pytest.raises(InputError, match="unknown dtype"):
        musicnn.astype("float16")


def test_astype_casts_every_weight_of_a_model_whose_weights_mix_dtypes(musicnn):
    """A model is left as it is only when every floating-point weight has the dtype already:
    one whose variables mix float32 and bfloat16 (edited by hand) is cast whole, either way."""
    leaves, tree = jax.tree_util.tree_flatten(musicnn.variables)
    mixed = dataclasses.replace(musicnn, variables=jax.tree_util.tree_unflatten(
        tree, [leaves[0].astype(jnp.bfloat16)] + leaves[1:]))
    for dtype in ("float32", "bfloat16"):
        cast = mixed.astype(dtype).variables
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(cast)} == {jnp.dtype(dtype)}
    # one weight rounded to bfloat16 rounds the outputs: the model is called bfloat16 (what
    # Options.cast reads, not to record its rows as float32's)
    assert mixed.dtype == "bfloat16" and musicnn.dtype == "float32"


def test_loading_a_model_compiles_nothing(musicnn, caplog):
    """Variables reach the device as transfers: ``jnp.asarray`` of a NumPy array would compile
    a program per shape (19 for MusiCNN, ~0.15 s of every command's start)."""
    # programs compiled earlier in this process must not hide any (last in the file: the
    # tests after it in this process compile their programs again)
    jax.clear_caches()
    model, programs = compiled_programs(
        caplog, lambda: jaxmir.Model.from_spec(musicnn.spec, musicnn.labels))
    assert programs == []
    leaves = jax.tree_util.tree_leaves(model.variables)
    assert leaves and all(isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32
                          for leaf in leaves)
    _, control = compiled_programs(caplog, lambda: jnp.asarray(np.zeros(13, np.float32)))
    assert control                     # the log does show such a program
    before = [np.asarray(leaf).copy() for leaf in leaves]
    variables = jax.tree_util.tree_map(np.array, dict(musicnn.spec.variables))
    loaded = jaxmir.Model.from_spec(dataclasses.replace(musicnn.spec, variables=variables),
                                    musicnn.labels)
    for array in jax.tree_util.tree_leaves(variables):
        array[...] = 0.0                # the caller's arrays change after loading
    assert all(np.array_equal(np.asarray(leaf), kept)
               for leaf, kept in zip(jax.tree_util.tree_leaves(loaded.variables), before))


def test_messages_name_a_shipped_model_by_its_name(tmp_path):
    """Messages named a shipped model by its weights' path inside the package
    (".../weights/msd-musicnn.npz"), which users never gave."""
    from jaxmir.compose import embedding_layer

    shipped = jaxmir.load("msd-musicnn")
    assert shipped.name == "msd-musicnn" and shipped.source.endswith(".npz")
    with pytest.raises(InputError) as refused:
        embedding_layer(shipped, "cnn3")
    assert str(refused.value).startswith("'cnn3' of msd-musicnn is not a layer of its dense head")
    path = tmp_path / "mine.npz"
    save_weights(shipped, path)
    assert jaxmir.load(path).name == str(path)  # a user's file: its path, as given


def test_a_copy_of_a_shipped_file_elsewhere_is_named_by_its_path(tmp_path):
    """Only the file inside the package is the shipped model: a copy of the same file name in
    another folder (which its user may have edited) is named by its path."""
    shipped = catalog.path_of("msd-musicnn")
    copy = tmp_path / shipped.name
    copy.write_bytes(shipped.read_bytes())
    assert catalog.name_of(shipped) == "msd-musicnn"
    assert catalog.name_of(copy) is None
    assert jaxmir.load(copy).name == str(copy)


def test_what_librosa_and_numpy_users_pass_is_taken_or_refused_plainly(musicnn):
    """A (y, sr) tuple ended in NumPy's "inhomogeneous shape"; apply(chunk=0) in a division by
    zero, chunk=-5 and 1.5 deep in JAX; np.array(16000) as the rate was "not a whole number";
    astype(jnp.bfloat16) was refused; ShortAudioError was not at the top level."""
    y = (0.3 * np.sin(2 * np.pi * 440 * np.arange(4 * 16000) / 16000)).astype(np.float32)
    for pair in ((y, 16000), [y, 16000]):
        with pytest.raises(jaxmir.AudioError, match=r"a pair, as librosa.load returns \(y, sr\)"):
            musicnn.predict(pair, 16000)
    with pytest.raises(jaxmir.AudioError, match="not an array of samples"):
        musicnn.predict([[0.1, 0.2], [0.3]], 16000)
    patches = np.zeros((2, 187, 96), np.float32)
    for chunk in (0, -5, 1.5, True, "4"):
        with pytest.raises(InputError, match=f"chunk {re.escape(repr(chunk))}: a whole number"):
            musicnn.apply(patches, chunk=chunk)
    expected = musicnn.predict(y, 16000)
    for rate in (np.array(16000), jnp.int32(16000), np.array(16000.0), np.float32(16000)):
        np.testing.assert_array_equal(musicnn.predict(y, rate), expected)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(
        musicnn.astype(jnp.bfloat16).variables)} == {jnp.dtype(jnp.bfloat16)}
    assert musicnn.astype(np.float32) is musicnn
    from jaxmir.collection import Options

    assert Options(dtype=jnp.bfloat16).dtype == "bfloat16"  # recorded by name in outputs
    with pytest.raises(jaxmir.ShortAudioError):
        musicnn.predict(y[:1000], 16000)


def test_graphs_load_and_run_under_x64():
    """Under jax_enable_x64 a MusiCNN .pb was refused as "cannot run": the load-time check's
    initializers made float64 kernels, which float32 inputs do not convolve with."""
    from conftest import shared_fixture

    path = shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb")
    patches = np.random.default_rng(4).standard_normal((2, 187, 96)).astype(np.float32)
    expected = np.asarray(jaxmir.load(path).apply(patches)["predictions"])
    with jax.enable_x64(True):
        found = np.asarray(jaxmir.load(path).apply(patches)["predictions"])
    np.testing.assert_array_equal(found, expected)  # float32 weights and patches either way


def test_a_spec_s_repr_leaves_its_weights_out(musicnn):
    """repr(model.spec) printed every weight array: 114,000 characters for MusiCNN."""
    text = repr(musicnn.spec)
    assert len(text) < 5000 and "array(" not in text and text.startswith("ModelSpec(architecture=")


def test_with_labels_refuses_text_as_load_does(musicnn):
    """with_labels("ab") took a string as a label per character, where load(labels="ab")
    refuses it."""
    names = "".join(chr(ord("a") + i % 26) + str(i) for i in range(50))
    for refused in (names[:50], [1] * 50, set(names.split()), np.array("rock")):
        with pytest.raises(InputError, match="expected a list of class names"):
            musicnn.with_labels(refused)
    width = musicnn.output_width()
    for count in (width - 1, width + 1):  # a name short or over: refused, as load(labels=) does
        miscounted = [f"tag{i}" for i in range(count)]
        with pytest.raises(InputError, match=f"{count} labels given for a model with {width} "):
            musicnn.with_labels(miscounted)
    labels = musicnn.with_labels(np.array(list(musicnn.labels))).labels  # NumPy's str_ as str
    assert labels == musicnn.labels and all(type(label) is str for label in labels)
    import enum

    Genre = enum.Enum("Genre", {f"g{i}": label for i, label in enumerate(musicnn.labels)},
                      type=str)
    assert musicnn.with_labels(list(Genre)).labels == musicnn.labels  # values, not 'Genre.g0'


def _everyday_calls(musicnn, dortmund_pb: Path) -> dict[str, np.ndarray]:
    """What a JAX program calls jaxmir for: audio at 44.1 and 16 kHz, features, the Flax
    module under jit, a stream, an Essentia graph, a head trained and applied, LMNN, MFCCs."""
    from jaxmir.resample import resample, resample_jax
    from jaxmir.train import fit, lmnn, mfcc

    rng = np.random.default_rng(8)
    x44 = (0.3 * rng.standard_normal(44100 * 4)).astype(np.float32)
    x16 = resample(x44, 44100, 16000)
    stream = musicnn.stream(44100)
    streamed = [stream.push(x44[i:i + 10000]) for i in range(0, x44.shape[0], 10000)]
    tracks = [rng.standard_normal((3, 20)).astype(np.float32) + (i % 2) for i in range(12)]
    targets = np.eye(2, dtype=np.float32)[[i % 2 for i in range(12)]]
    head = fit.train_head(tracks, targets, "single", ["a", "b"], config=fit.TrainConfig(epochs=2))
    points = rng.standard_normal((12, 5))
    metric = lmnn.fit_lmnn(points, np.arange(12) % 2, 3, k=2, max_iter=5)
    patches = jnp.asarray(musicnn.features(x16, 16000)[None, :187])
    return {"resample": x16,
            "resample_jax": resample_jax(jnp.asarray(x44[:20000]), 44100, 16000),
            "predict_44k": musicnn.predict(x44, 44100),
            "module_jit": jax.jit(musicnn.module.apply)(musicnn.variables, patches),
            "stream": np.concatenate([*streamed, stream.close()]),
            "essentia_graph": jaxmir.load(dortmund_pb).predict(x16, 16000),
            "head": head.predict(tracks[0]),
            "lmnn": metric.transform(points),
            "mfcc": mfcc.mfcc(x44[:20000], 44100)}


def test_callers_strict_array_rules_are_their_own(musicnn):
    """jax_numpy_rank_promotion="raise" and jax_numpy_dtype_promotion="strict", which JAX
    programs set for their own code, made jaxmir's models, front-ends, resampler and trainer
    fail inside (a bias [C] added to [batch, C]; an int32 compared with an int64; a .pb refused as
    an unsupported graph). jaxmir's code runs under JAX's default rules: the same results."""
    pb = shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb")
    default = _everyday_calls(musicnn, pb)
    for setting in (jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict")):
        with setting:
            strict = _everyday_calls(musicnn, pb)
        for name, value in default.items():
            np.testing.assert_array_equal(np.asarray(strict[name]), np.asarray(value), name)


def test_training_products_are_full_float32():
    """The head, LMNN and MFCC products asked for no precision, so a GPU's TF32 or a program's
    jax_default_matmul_precision="bfloat16" applied to them; the README promises float32
    products on every device: each asks for Precision.HIGHEST, as the models do."""
    from jaxmir.train import fit, lmnn, mfcc

    params = fit.init_head(jax.random.key(0), 6, 4, 3)
    programs = {"head": jax.make_jaxpr(fit.head_logits)(params, jnp.zeros((2, 6))),
                "lmnn": jax.make_jaxpr(lmnn.objective)(jnp.zeros((2, 6)), jnp.zeros((5, 6)),
                                                       jnp.zeros(5, jnp.int32),
                                                       jnp.zeros((5, 2), jnp.int32)),
                "mfcc": jax.make_jaxpr(mfcc.mfcc)(jnp.zeros(4096))}
    for name, program in programs.items():
        products = [eqn for eqn in program.jaxpr.eqns if eqn.primitive.name == "dot_general"]
        assert products, name
        for eqn in products:
            assert eqn.params["precision"] in ((jax.lax.Precision.HIGHEST,) * 2,
                                               jax.lax.Precision.HIGHEST), (name, eqn.params)
