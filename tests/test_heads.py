"""Embedding-input heads (TensorflowPredict2D's models), their metadata, and heads joined to
backbones."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

import jaxmir
from conftest import assert_parity, require, run_tf, shared_fixture
from jaxmir.errors import InputError, WeightsError
from jaxmir.spec import Activation, BatchNorm, Dense, gives_values, layer_from_text, layer_to_text


def write_head(tmp_path, name, metadata=None, **kwargs):
    require("tensorflow")
    from tools import tf_graphs
    path = tmp_path / f"{name}.pb"
    tf_graphs.write_graph(tf_graphs.embedding_head_graph(tf_graphs.random_weights(5), **kwargs),
                          str(path))
    if metadata is not None:
        (tmp_path / f"{name}.json").write_text(json.dumps(metadata))
    return path


def embeddings(batch, width, seed=0):
    return np.random.default_rng(seed).normal(0, 3, (batch, width)).astype(np.float32)


@pytest.mark.parametrize("output", ["Softmax", "Sigmoid", "Identity"])
@pytest.mark.parametrize("width", [200, 128])
def test_embedding_heads_match_tensorflow(tmp_path, output, width):
    path = write_head(tmp_path, "head", features=width, classes=3, output=output)
    model = jaxmir.load(path)
    assert model.architecture == "head" and model.input_shape == (width,)
    for batch in (1, 7):
        x = embeddings(batch, width)
        names = [f"model/{output}", "model/dense/BiasAdd", "model/dense/Relu"]
        reference = run_tf(path, {"model/Placeholder": x}, names)
        ours = model.apply(x, names)
        for name, expected in zip(names, reference):
            assert_parity(name, expected, ours[name],
                          name != "model/Identity" and "dense" not in name)
    assert model.spec.aliases["embeddings"] == model.spec.node_map["model/dense/BiasAdd"][0]


def test_class_scores_are_ranked_other_outputs_are_values():
    """A head ending in a sigmoid or a softmax gives class scores (``tag`` ranks them, --top
    picks); any other end gives values in their own order (a regression head, an embedding)."""
    for end, values in (("sigmoid", False), ("softmax", False), ("identity", True),
                        ("relu", True), (None, True)):
        layers = [Dense(8), Activation("relu"), Dense(3)] + ([Activation(end)] if end else [])
        assert gives_values(layers) is values, end


def test_a_head_of_one_dense_layer_has_nothing_before_it(tmp_path):
    """A linear classifier listed a 'penultimate' output of layer -1: a KeyError when asked for,
    and its weights file did not load."""
    from jaxmir.weights import save_weights

    path = write_head(tmp_path, "linear", hidden=None, classes=3)
    model = jaxmir.load(path)
    assert "penultimate" not in model.output_names and "logits" in model.output_names
    x = embeddings(4, 200)
    (reference,) = run_tf(path, {"model/Placeholder": x}, ["model/Softmax"])
    assert_parity("linear head", reference, model.apply(x)["predictions"], probabilities=True)
    save_weights(model, tmp_path / "linear.npz")
    again = jaxmir.load(tmp_path / "linear.npz")
    assert again.output_names == model.output_names
    # the head read from its graph has the variables its file holds: no empty batch_stats more
    assert jax.tree_util.tree_structure(dict(again.variables)) == \
        jax.tree_util.tree_structure(dict(model.variables))
    np.testing.assert_array_equal(again.apply(x)["predictions"], model.apply(x)["predictions"])


def test_a_layer_s_text_takes_an_argument_only_where_it_has_one():
    """A weights file's ``relu:5`` (damaged, or another tool's) was read as a ReLU; ``dense:5_0``
    as 50 units, ``batch_norm:nan`` as a NaN epsilon; ``dense:-3`` and ``dense:0`` were refused
    only by the model's trace (a TypeError, a ZeroDivisionError)."""
    assert layer_from_text("dense:100") == Dense(100) and layer_from_text("relu") == Activation(
        "relu")
    assert layer_from_text("batch_norm:0.001") == BatchNorm(0.001)
    # Keras' default; TF's 1e-3 as float32; none at all (the docstring's EPS >= 0 admits it)
    for epsilon in (1.001e-5, 0.0010000000474974513, 0.0):
        assert layer_from_text(layer_to_text(BatchNorm(epsilon))) == BatchNorm(epsilon)
    for text in ("relu:5", "sigmoid:x", "dense:", "dense:x", "gelu", "dense:2.5", "dense:1e2",
                 "dense:5_0", "dense: 7", "dense:-3", "dense:0", "dense:" + "1" * 5000,
                 "batch_norm:nan", "batch_norm:-1e-3", "batch_norm:inf", "batch_norm:0.00_1",
                 "batch_norm: 0.001", "batch_norm:\u0661e-3"):
        with pytest.raises(WeightsError, match=f"^layer {re.escape(repr(text[:60]))} is not one "
                                               "jaxmir reads"):
            layer_from_text(text)


def test_partitioned_call_head(tmp_path):
    path = write_head(tmp_path, "moods_mirex", classes=5, partitioned=True)
    model = jaxmir.load(path)
    assert model.spec.input_name == "serving_default_model_Placeholder"
    x = embeddings(7, 200)
    reference = run_tf(path, {"serving_default_model_Placeholder": x}, ["PartitionedCall"])[0]
    assert_parity("PartitionedCall", reference,
                  model.apply(x, ["PartitionedCall"])["PartitionedCall"],
                  probabilities=True)


def test_squeezed_input_like_essentia(tmp_path):
    path = write_head(tmp_path, "head3d", input_shape=[None, 1, 200])
    model = jaxmir.load(path)
    x = embeddings(4, 200)
    reference = run_tf(path, {"model/Placeholder": x[:, None, :]}, ["model/Softmax"])[0]
    for fed in (x, x[:, None, :]):
        assert_parity("model/Softmax", reference, model.apply(fed)["predictions"], True)


def test_an_input_of_unknown_width_takes_the_first_dense_layer_s(tmp_path):
    """A placeholder ``[None, 1, None]`` (a graph frozen without the embedding width) is read
    as the first dense layer's width, as TensorFlow runs it."""
    path = write_head(tmp_path, "unknown_width", input_shape=[None, 1, None])
    model = jaxmir.load(path)
    assert model.input_shape == (200,)
    x = embeddings(4, 200)
    reference = run_tf(path, {"model/Placeholder": x[:, None, :]}, ["model/Softmax"])[0]
    assert_parity("model/Softmax", reference, model.apply(x)["predictions"], True)


def test_essentia_emomusic_regression_head():
    path = shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb")
    model = jaxmir.load(path)
    assert model.architecture == "head" and model.input_shape == (200,)
    assert isinstance(model.spec.config["head"][0], BatchNorm)
    x = embeddings(7, 200)
    reference = run_tf(path, {"flatten_in_input": x[:, None, :]}, ["dense_out"])[0]
    assert_parity("dense_out", reference, model.apply(x, ["dense_out"])["dense_out"])


def test_metadata_json_gives_classes_and_output(tmp_path):
    from tools.tf_graphs import essentia_metadata
    meta = essentia_metadata(["happy", "non_happy"], "model/Softmax", "msd-musicnn-1")
    model = jaxmir.load(write_head(tmp_path, "mood_happy-msd-musicnn-1", meta))
    assert model.labels == ("happy", "non_happy")
    assert jaxmir.loading.backbone_of(model) == "msd-musicnn"
    plain = jaxmir.load(write_head(tmp_path, "plain"))
    assert plain.labels == ("class_0", "class_1")
    assert "labels (2): class_0 .. class_1 (no class names: no metadata JSON" in plain.describe()


def test_describe_suggests_a_backbone_by_input_width_and_reads_any_metadata_json(tmp_path):
    """info's advice for a head follows its input width (128: a VGGish .pb, 200: msd-musicnn,
    else its own backbone); a JSON with only some of Essentia's fields is still one beside it."""
    expected = {128: "e.g. a VGGish .pb such as audioset-vggish-3.pb",
                200: "e.g. 'msd-musicnn'", 64: "e.g. its backbone's name or path"}
    for width, example in expected.items():
        text = jaxmir.load(write_head(tmp_path, f"head{width}", features=width)).describe()
        assert f"it takes [{width}] embeddings" in text and text.endswith(example), text
    partial = write_head(tmp_path, "partial", {"inference": {"sample_rate": 16000}})
    assert "(no class names: the metadata JSON beside the graph names none;" in \
        jaxmir.load(partial).describe()


def test_metadata_with_wrong_class_count(tmp_path):
    from tools.tf_graphs import essentia_metadata
    meta = essentia_metadata(["a", "b", "c"], "model/Softmax")
    with pytest.raises(InputError, match="lists 3 classes but the graph .* outputs 2 values"):
        jaxmir.load(write_head(tmp_path, "bad", meta))
    (tmp_path / "broken.json").write_text("{not json")
    write_head(tmp_path, "broken")
    with pytest.raises(InputError, match="not readable model metadata"):
        jaxmir.load(tmp_path / "broken.pb")


def test_another_output_of_a_graph_with_essentia_s_json_loads_without_its_classes(tmp_path):
    """load(pb, output="model/dense/BiasAdd"), as the README shows, was refused beside Essentia's
    JSON ("lists 2 classes but the graph outputs 100 values"): the JSON's classes name its
    predictions' values, not another output's."""
    from tools.tf_graphs import essentia_metadata
    meta = essentia_metadata(["happy", "non_happy"], "model/Softmax", "msd-musicnn-1")
    path = write_head(tmp_path, "mood_happy-msd-musicnn-1", meta)
    penultimate = jaxmir.load(path, output="model/dense/BiasAdd")
    assert penultimate.labels == tuple(f"class_{i}" for i in range(100))
    assert "the metadata JSON's classes name the values of its predictions output, not this " \
        "one's" in penultimate.describe()
    # an empty list of classes names no output's values, its predictions' or this one's
    empty = write_head(tmp_path, "empty-msd-musicnn-1",
                       essentia_metadata([], "model/Softmax", "msd-musicnn-1"))
    assert "(no class names: the metadata JSON beside the graph names none;" in jaxmir.load(
        empty, output="model/dense/BiasAdd").describe()
    assert jaxmir.load(path, output="model/Softmax").labels == ("happy", "non_happy")
    # the predictions named, beside a JSON of another class count: still refused
    wrong = essentia_metadata(["a", "b", "c"], "model/Softmax", "msd-musicnn-1")
    bad = write_head(tmp_path, "bad-msd-musicnn-1", wrong)
    for output in ("model/Softmax", "model/Softmax:0"):
        with pytest.raises(InputError, match="lists 3 classes but the graph .* outputs 2 values"):
            jaxmir.load(bad, output=output)
    # a JSON that names no predictions node (or an empty name): the graph's own output's classes
    for schema in ({}, {"schema": {"outputs": [{"name": "", "output_purpose": "predictions"}]}}):
        (tmp_path / "bad-msd-musicnn-1.json").write_text(json.dumps({"classes": ["a", "b", "c"],
                                                                    **schema}))
        with pytest.raises(InputError, match="lists 3 classes but the graph .* outputs 2 values"):
            jaxmir.load(bad, output="model/Softmax")
    x = embeddings(4, 200)
    [mine] = penultimate.apply(x).values()
    [theirs] = jaxmir.load(path).apply(x, outputs="penultimate").values()
    assert np.array_equal(np.maximum(mine, 0), theirs)  # jaxmir's penultimate is after the ReLU


def test_head_on_shipped_backbone_matches_tensorflow_chain(tmp_path, musicnn_graphs):
    from tools.tf_graphs import essentia_metadata
    meta = essentia_metadata(["danceable", "not_danceable"], "model/Softmax", "msd-musicnn-1")
    head_path = write_head(tmp_path, "danceability-msd-musicnn-1", meta)
    model = jaxmir.load(head_path, backbone="msd-musicnn")
    assert model.architecture == "composed" and model.labels == ("danceable", "not_danceable")
    assert model.input_shape == (187, 96)
    patches = np.random.default_rng(9).normal(0, 1.5, (7, 187, 96)).astype(np.float32)
    emb = run_tf(musicnn_graphs / "msd-musicnn-1.pb", {"model/Placeholder": patches},
                 ["model/dense/BiasAdd"])[0]
    reference = run_tf(head_path, {"model/Placeholder": emb}, ["model/Softmax"])[0]
    out = model.apply(patches, ["predictions", "backbone/model/dense/BiasAdd", "model/Placeholder"])
    assert_parity("model/Softmax", reference, out["predictions"], probabilities=True)
    assert_parity("embeddings", emb, out["backbone/model/dense/BiasAdd"])
    np.testing.assert_array_equal(out["model/Placeholder"], out["backbone/model/dense/BiasAdd"])
    # the same head on a backbone given as a path, and as a Model
    again = jaxmir.load(head_path, backbone=jaxmir.load(musicnn_graphs / "msd-musicnn-1.pb"))
    np.testing.assert_allclose(again.apply(patches)["predictions"], out["predictions"], atol=1e-6)


def test_composed_weights_round_trip(tmp_path):
    from jaxmir.weights import save_weights
    model = jaxmir.load(write_head(tmp_path, "h"), backbone="mtt-musicnn")
    save_weights(model, tmp_path / "composed.npz")
    again = jaxmir.load(tmp_path / "composed.npz")
    x = np.random.default_rng(1).standard_normal((2, 187, 96)).astype(np.float32)
    np.testing.assert_array_equal(again.apply(x)["predictions"], model.apply(x)["predictions"])


def test_an_unknown_architecture_lists_every_one_a_weights_file_may_name():
    """The refusal lists the architectures :func:`build_module` takes: ``composed``, which a
    backbone joined to a head is saved as (above), among them."""
    from jaxmir.models import ARCHITECTURES, COMPOSED, build_module
    with pytest.raises(WeightsError, match="unknown architecture 'nope'; known: ") as caught:
        build_module("nope", {})
    listed = str(caught.value).split("; known: ", 1)[1].split(", ")
    assert sorted(listed) == sorted([*ARCHITECTURES, COMPOSED])


def test_a_head_or_a_backbone_from_no_file_is_named_as_the_head(tmp_path):
    """A model built in memory has no source: the composed model was named "h.pb on " (a
    backbone's) or " on msd-musicnn" (a head's), the name a collection's rows and summary
    carry."""
    from jaxmir.loading import on_backbone
    from jaxmir.model import Model

    head_path = write_head(tmp_path, "h")
    backbone = jaxmir.load("msd-musicnn")
    in_memory = Model.from_spec(backbone.spec, labels=backbone.labels)
    assert jaxmir.load(head_path, backbone=in_memory).name == str(head_path)
    assert jaxmir.load(head_path, backbone=backbone).name == f"{head_path} on {backbone.source}"
    head = jaxmir.load(head_path)
    head_in_memory = Model.from_spec(head.spec, labels=head.labels, metadata=head.metadata)
    assert on_backbone(head_in_memory, backbone).name == ""


def test_a_head_composes_with_the_backbone_it_is_given(tmp_path):
    """A head loaded on a Model took that Model's spec, not its variables: a backbone with other
    weights gave the original's outputs, and a bfloat16 backbone computed in float32."""
    import jax
    head = jaxmir.load(write_head(tmp_path, "h"))
    backbone = jaxmir.load("mtt-musicnn")
    tuned = dataclasses.replace(backbone, variables=jax.tree_util.tree_map(
        lambda v: v * 1.05, backbone.variables))
    x = np.random.default_rng(1).standard_normal((2, 187, 96)).astype(np.float32)
    want = head.apply(tuned.apply(x, "embeddings")["embeddings"])["predictions"]
    got = jaxmir.load(write_head(tmp_path, "h"), backbone=tuned).apply(x)["predictions"]
    # the same float32 operations in one program or two: a few float32 steps of values <= 1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(np.asarray(want) - np.asarray(head.apply(
        backbone.apply(x, "embeddings")["embeddings"])["predictions"])).max() > 1e-3
    in_bf16 = jaxmir.load(write_head(tmp_path, "h"), backbone=backbone.astype("bfloat16"))
    assert {v.dtype.name
            for v in jax.tree_util.tree_leaves(in_bf16.variables["params"]["backbone"])} \
        == {"bfloat16"}


def test_a_head_joins_the_layer_before_the_first_dense_one(tmp_path):
    """``head_inputs`` offers the input batch norm's output (1506-d for MusiCNN, before the first
    dense layer); a head there was refused as "a head without a dense layer". The backbone keeps
    its dense head's variables up to the layer joined, no further."""
    from jaxmir.compose import head_inputs

    backbone = jaxmir.load("msd-musicnn")
    heads = {width: write_head(tmp_path, f"h{width}", features=width) for width in (1506, 200)}
    for embedding, width, kept in (
            ("model/dropout/Identity", 1506, ["batch_norm_0"]),
            ("model/dense/Relu", 200, ["batch_norm_0", "dense_1"]),
            ("penultimate", 200, ["batch_norm_0", "batch_norm_3", "dense_1"])):
        assert embedding in head_inputs(backbone)
        composed = jaxmir.load(heads[width], backbone=backbone, embedding=embedding)
        assert sorted(composed.variables["params"]["backbone"]["head"]) == kept, embedding
    x = np.random.default_rng(1).standard_normal((2, 187, 96)).astype(np.float32)
    embedding = "model/dropout/Identity"
    want = jaxmir.load(heads[1506]).apply(backbone.apply(x, embedding)[embedding])
    composed = jaxmir.load(heads[1506], backbone=backbone, embedding=embedding)
    # the same float32 operations in one program or two (as above)
    np.testing.assert_allclose(composed.apply(x)["predictions"], want["predictions"], rtol=0,
                               atol=1e-6)


def test_a_head_node_forwarding_its_input_reads_the_backbone_s_embedding(tmp_path):
    """A head graph whose input goes through an Identity names that node the head's input too:
    on a backbone it read nothing (an unknown output), or, named as the composed model's own
    input, the backbone's patches. It is the embedding, as TensorFlow gives it in the head."""
    require("tensorflow")
    from tools import tf_graphs

    graph = tf_graphs.embedding_head_graph(tf_graphs.random_weights(5))
    for node in graph.node:  # the dense layer reads model/input_copy, an Identity of the input
        node.input[:] = ["model/input_copy" if name == "model/Placeholder" else name
                         for name in node.input]
    copy = graph.node.add(name="model/input_copy", op="Identity", input=["model/Placeholder"])
    copy.attr["T"].type = next(n for n in graph.node if n.name == "model/Placeholder").attr[
        "dtype"].type
    path = tmp_path / "h.pb"
    tf_graphs.write_graph(graph, str(path))
    composed = jaxmir.load(path, backbone="msd-musicnn")
    x = np.random.default_rng(1).standard_normal((2, 187, 96)).astype(np.float32)
    out = composed.apply(x, ["model/input_copy", "model/Placeholder", "predictions"])
    copied, softmax = run_tf(path, {"model/Placeholder": np.asarray(out["model/Placeholder"])},
                             ["model/input_copy", "model/Softmax"])
    np.testing.assert_array_equal(out["model/input_copy"], copied)  # an Identity: exact
    assert_parity("model/Softmax", softmax, out["predictions"], probabilities=True)


def test_composition_errors_name_both_sides(tmp_path):
    vggish_head = write_head(tmp_path, "vggish-head", features=128)
    with pytest.raises(InputError, match="takes 128-d embeddings.*gives 200-d"):
        jaxmir.load(vggish_head, backbone="msd-musicnn")
    # narrower: loaded, then a broadcasting TypeError at the first prediction
    with pytest.raises(InputError, match="takes 200-d embeddings, but the backbone msd-musicnn "
                                         "gives 50-d embeddings at 'model/dense_1/BiasAdd'"):
        jaxmir.load(write_head(tmp_path, "h"), backbone="msd-musicnn",
                    embedding="model/dense_1/BiasAdd")
    with pytest.raises(InputError, match="not an embedding head"):
        jaxmir.load("msd-vgg", backbone="msd-musicnn")
    with pytest.raises(InputError, match="is an embedding head itself, not a backbone"):
        jaxmir.load(vggish_head, backbone=vggish_head)
    with pytest.raises(InputError, match="not a layer of its dense head"):
        jaxmir.load(write_head(tmp_path, "h2"), backbone="msd-musicnn", embedding="mean_pool")


@pytest.mark.parametrize("layer", ["penultimate", "predictions"])
def test_a_head_runs_on_the_layer_it_was_trained_on(tmp_path, layer):
    """``train-head --layer``: the JSON names that layer's graph node (Essentia's vocabulary), and
    a head loaded onto its backbone (``.pb`` and ``.npz``) reads that layer, not ``embeddings``."""
    from jaxmir.train import fit, synthetic
    from jaxmir.train.recipe import fit_head

    data = synthetic.write_dataset(tmp_path / "data", classes=("pads", "drums"), per_class=3,
                                   seconds=3.5)
    result = fit_head(data, layer=layer, output=tmp_path / "head", cache=False,
                      config=fit.TrainConfig(epochs=3))
    backbone = jaxmir.load("msd-musicnn")
    node = {"penultimate": "model/batch_normalization_10/batchnorm/add_1",
            "predictions": "model/Sigmoid"}[layer]
    assert backbone.node_name(layer) == node
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["inference"]["embedding_model"]["output"] == node
    audio = jaxmir.load_audio(sorted(data.rglob("*.wav"))[0])
    features = backbone.predict(audio, 16000, output=[layer, "embeddings"])
    want = result.head.predict(np.asarray(features[layer]))
    for saved in ("head.pb", "head.npz"):
        got = jaxmir.load(tmp_path / saved, backbone="msd-musicnn").predict(audio, 16000)
        # the same float32 layers composed or apart: ~1e-7; 1e-5 on probabilities is ample
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    if layer == "penultimate":  # the two layers give different tags: the check can tell them apart
        wrong = result.head.predict(np.asarray(features["embeddings"]))
        assert np.max(np.abs(wrong - want)) > 1e-3
        with pytest.raises(InputError, match=f"trained on '{node}'.*does not have"):
            jaxmir.load(tmp_path / "head.pb", backbone="msd-vgg")  # VGG has no such layer


def test_the_backbone_a_head_names_is_found_beside_it_or_shipped(tmp_path):
    """``train-head --finetune`` names ``NAME-backbone`` (the .npz beside the head); Essentia's
    JSON names ``msd-musicnn-1``; a name that only starts like a shipped one is neither."""
    import jax

    from jaxmir.loading import backbone_of
    from jaxmir.train import export, fit
    from jaxmir.weights import save_weights

    params = jax.device_get(fit.init_head(jax.random.PRNGKey(0), 200, 100, 2))

    def head(name: str, backbone: str):
        paths = export.export_head(params, "softmax", ("a", "b"), tmp_path / name, backbone,
                                   (187, 96), "model/dense/BiasAdd")
        return jaxmir.load(paths[".pb"])

    assert backbone_of(head("shipped", "msd-musicnn")) == "msd-musicnn"
    tuned = tmp_path / "msd-musicnn-ft-backbone.npz"
    lone = head("lone", str(tuned))  # names msd-musicnn-ft-backbone, which is not there yet
    assert backbone_of(lone) is None
    save_weights(jaxmir.load("mtt-musicnn"), tuned)
    assert backbone_of(lone) == str(tuned)
