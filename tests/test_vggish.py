"""VGGish and the full-graph transfer classifiers: graphs shaped like Essentia's, parity with
TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

import jaxmir
from conftest import assert_parity, require, run_tf, shared_fixture
from jaxmir.models.vgg import vggish_blocks
from jaxmir.tfgraph.graphdef import GraphDefProto

PROBABILITIES = ("model/Sigmoid", "model/Softmax")


def patches(batch: int, shape=(96, 64), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (batch, *shape)).astype(np.float32)


def graph_nodes(model) -> list[str]:
    """The graph nodes ``model`` maps, its input left out."""
    return [n for n in model.spec.node_map if n != model.spec.input_name and "/" in n]


def assert_nodes(model, x, names, reference) -> dict[str, float]:
    """``model``'s ``names`` on ``x`` against TensorFlow's ``reference`` (same order); the
    errors."""
    ours = model.apply(x, names)
    return {n: assert_parity(n, r, ours[n], n in PROBABILITIES) for n, r in zip(names, reference)}


def compare(path, model, x, feeds=None, optimize=True):
    """Every mapped graph node of ``model`` against TensorFlow on the same input."""
    names = graph_nodes(model)
    reference = run_tf(path, {model.spec.input_name: x, **(feeds or {})}, names, optimize)
    return assert_nodes(model, x, names, reference)


def write(graph_def, path):
    from tools.tf_graphs import write_graph
    write_graph(graph_def, str(path))
    return path


@pytest.fixture(scope="module")
def audioset_vggish(tmp_path_factory):
    """Full-size replicas of audioset-vggish-3 (random weights): current (no fc2 ReLU) and 2017
    form."""
    require("tensorflow")
    from tools import tf_graphs
    out = tmp_path_factory.mktemp("vggish")
    return {relu: write(tf_graphs.vggish_graph(tf_graphs.random_weights(7), fc2_relu=relu),
                        out / f"audioset-vggish-3{'-relu' if relu else ''}.pb")
            for relu in (False, True)}


@pytest.mark.parametrize("fc2_relu", [False, True], ids=["pre-activation", "post-relu"])
def test_audioset_vggish_replica(audioset_vggish, fc2_relu):
    path = audioset_vggish[fc2_relu]
    model = jaxmir.load(path)
    assert model.architecture == "vggish" and model.input_shape == (96, 64)
    assert model.spec.output_name == "model/vggish/embeddings"
    assert model.num_params() == 72_141_184  # tensorflow/models' VGGish
    # the blocks read from the replica are those vggish_blocks() declares (the benchmarks build
    # VGGish from it; a pool moved between the 256 blocks keeps the parameter count)
    assert model.spec.config["blocks"] == vggish_blocks()
    x = patches(7)
    names = graph_nodes(model)
    assert {"model/vggish/embeddings", "model/vggish/pool4/MaxPool", "model/vggish/conv1/Relu",
            "model/vggish/fc1/fc1_2/Relu", "model/vggish/fc2/BiasAdd"} <= set(names)
    listed = next(line for line in model.describe().splitlines() if line.startswith("outputs by"))
    listed = listed.split(": ", 1)[1].split(", ")
    assert "pool1" in listed and len(listed) == len(set(listed))  # an alias and a node: once
    # VGGish's six conv blocks end in four max-pools: no pool5 or pool6 of unpooled blocks
    assert {name for name in listed if name.startswith("pool")} == {f"pool{k}" for k in range(1, 5)}
    # TensorFlow's kernels without Grappler's rewriting: its constant folding of 72M parameters
    # takes ~20 s a session. The small Essentia VGGish fixtures below run with it on. One
    # session for both batch sizes: TensorFlow computes each patch on its own.
    reference = run_tf(path, {model.spec.input_name: x}, names, optimize=False)
    for batch in (7, 1):
        assert_nodes(model, x[:batch], names, [expected[:batch] for expected in reference])
        out = model.apply(x[:batch], ["embeddings", "fc2", "pool1", "pool4", "conv3_2", "fc1_1"])
        assert out["embeddings"].shape == (batch, 128) and out["pool4"].shape == (batch, 6, 4, 512)
        assert (out["pool1"].shape == (batch, 48, 32, 64)
                and out["conv3_2"].shape == (batch, 24, 16, 256))
        # The embedding is read from the graph: post-ReLU only in the 2017 form.
        assert bool(np.all(np.asarray(out["embeddings"]) >= 0)) == fc2_relu
        np.testing.assert_array_equal(out["embeddings"], out["fc2"])  # after its ReLU, if any
        assert np.all(np.asarray(out["fc1_1"]) >= 0)  # after its ReLU, as conv3_2 is


def test_essentia_small_vggish_fixture(cpu):
    path = shared_fixture("essentia-models/small_vggish_init.pb")
    model = jaxmir.load(path)
    assert model.architecture == "vggish" and model.output_width() == 2
    errors = compare(path, model, patches(7))
    assert "model/Sigmoid" in errors and "model/vggish/fc2/Relu" in errors
    # no embeddings node in this toy: fc2 after its ReLU
    assert model.spec.aliases["embeddings"] == model.spec.node_map["model/vggish/fc2/Relu"][0]
    # VGGish's layer names after their ReLU, as its conv names are (fc2 and fc1_2 were the
    # products before it, 0.88 from Essentia's fc2/Relu relative to its size)
    for name, node in (("fc2", "model/vggish/fc2/Relu"), ("fc1_2", "model/vggish/fc1/fc1_2/Relu"),
                       ("conv1", "model/vggish/conv1/Relu")):
        assert model.resolve_output(name)[0] == model.resolve_output(node)[0], name


def test_fc2_read_by_a_dense_layer_without_a_relu_between_is_named_at_fc2(tmp_path):
    """The small Essentia VGGish with fc2's ReLU taken out (VGGish's current release has none),
    its classifier's dense layer reading fc2 directly: fc2 (and the embeddings, no node being
    named so) are fc2's own output, as TensorFlow computes it, not the dense layer after it
    (only an activation is taken as part of its layer)."""
    graph_def = GraphDefProto.FromString(
        shared_fixture("essentia-models/small_vggish_init.pb").read_bytes())
    relu = next(node for node in graph_def.node if node.name == "model/vggish/fc2/Relu")
    graph_def.node.remove(relu)
    classifier = next(node for node in graph_def.node
                      if node.name == "model/fully_connected/MatMul")
    classifier.input[0] = "model/vggish/fc2/BiasAdd"
    path = write(graph_def, tmp_path / "fc2_without_relu.pb")
    model = jaxmir.load(path)
    x = patches(3)
    reference, = run_tf(path, {model.spec.input_name: x}, ["model/vggish/fc2/BiasAdd"])
    ours = model.apply(x, ["fc2", "embeddings"])
    for name in ("fc2", "embeddings"):
        assert_parity(name, reference, ours[name])


def test_essentia_vgg4_fixture_behind_cond(cpu):
    path = shared_fixture("essentia-models/vgg4.pb")
    model = jaxmir.load(path)
    assert model.architecture == "vgg" and model.input_shape == (128, 128)
    x = np.random.default_rng(4).standard_normal((7, 128, 128)).astype(np.float32)
    errors = compare(path, model, x, feeds={"model/Placeholder_1": False})
    assert "model/Softmax" in errors
    # the input's batch norm, which Essentia's TensorflowPredict gives by this name, was not one
    assert "model/vggish/batch_normalization/cond/Merge" in errors


@pytest.mark.parametrize("family", ["vggish", "musicnn", "vgg"])
def test_full_graph_transfer_classifiers(tmp_path, family):
    require("tensorflow")
    from tools import tf_graphs
    weights = tf_graphs.random_weights(11)
    if family == "vggish":
        graph = tf_graphs.vggish_graph(weights, widths=(16, 32, 64, 128), fc=(256, 256, 128),
                                       classifier=[(100, "relu"), (8, None)], output="Softmax")
        x = patches(7)
    elif family == "musicnn":
        graph = tf_graphs.musicnn_graph(weights, classifier=[(100, None), (9, None)],
                                        output="Softmax")
        x = patches(7, (187, 96))
    else:
        graph = tf_graphs.vgg_graph(weights, classifier=[(100, "relu"), (4, None)],
                                    output="Softmax")
        x = patches(7, (187, 96))
    path = write(graph, tmp_path / f"genre-{family}.pb")
    model = jaxmir.load(path)
    assert model.output_width() == {"vggish": 8, "musicnn": 9, "vgg": 4}[family]
    assert model.spec.output_name == "model/Softmax"
    errors = compare(path, model, x)
    assert "model/Softmax" in errors
    probabilities = np.asarray(model.apply(x)["predictions"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_same_pools_over_odd_sizes_pad_as_tensorflow_s(tmp_path):
    """VGGish's SAME pools halve its 96x64 patches evenly, where SAME and VALID agree; over a
    95x63 patch each pads a row or a column (48x32 after the first, not 47x31)."""
    require("tensorflow")
    from tools import tf_graphs
    graph = tf_graphs.vggish_graph(tf_graphs.random_weights(12), widths=(4, 8, 8, 8),
                                   fc=(16, 16, 8), patch=(95, 63))
    path = write(graph, tmp_path / "odd.pb")
    model = jaxmir.load(path)
    errors = compare(path, model, patches(3, (95, 63)))
    assert {"model/vggish/pool1/MaxPool", "model/vggish/embeddings"} <= set(errors)


def test_unknown_head_on_a_known_body(tmp_path):
    require("tensorflow")
    from tools import tf_graphs
    graph_def = tf_graphs.musicnn_graph(tf_graphs.random_weights(1), n_labels=5)
    # swap the final sigmoid for an op jaxmir does not know
    for node in graph_def.node:
        if node.name == "model/Sigmoid":
            node.op = "Selu"
    path = write(graph_def, tmp_path / "odd.pb")
    with pytest.raises(jaxmir.UnsupportedGraphError,
                       match="MusiCNN body was recognised.*op Selu at 'model/Sigmoid'"):
        jaxmir.load(path)


@pytest.mark.parametrize("fc2_relu", [False, True], ids=["pre-activation", "post-relu"])
def test_essentia_s_own_vggish_metadata_loads_and_its_embeddings_are_not_ranked(tmp_path, capsys,
                                                                               fc2_relu):
    """Essentia's audioset-vggish-3.json says ``"classes": ""`` (an embedding extractor): the
    model beside it could not be loaded ("'classes' is ; expected a list"); and `jaxmir tag` on
    the 2017 form (a ReLU last) ranked 128 embedding values as tag scores."""
    require("tensorflow")
    import json

    import soundfile

    from jaxmir import cli
    from tools import tf_graphs

    graph = tf_graphs.vggish_graph(tf_graphs.random_weights(8), fc2_relu=fc2_relu,
                                   widths=(8, 16, 32, 64), fc=(32, 32, 128))
    path = write(graph, tmp_path / "audioset-vggish-3.pb")
    # the fields of Essentia's published JSON that jaxmir reads (its text, other fields left out)
    path.with_suffix(".json").write_text(json.dumps({
        "name": "VGGish", "type": "embedding extractor", "version": "1", "classes": "",
        "model_types": ["frozen_model"],
        "schema": {"inputs": [{"name": "model/Placeholder", "type": "float", "shape": [96, 64]}],
                   "outputs": [{"name": "model/vggish/embeddings", "type": "float",
                                "shape": [1, 128], "op": "fully connected",
                                "output_purpose": "embeddings"}]},
        "inference": {"sample_rate": 16000, "algorithm": "TensorflowPredictVGGish"}}))
    model = jaxmir.load(path)
    assert model.labels[:2] == ("class_0", "class_1") and len(model.labels) == 128
    assert "(no class names: the metadata JSON beside the graph names none;" in model.describe()
    assert model.spec.output_name == "model/vggish/embeddings"
    audio = tmp_path / "a.wav"
    soundfile.write(audio, np.random.default_rng(3).uniform(-0.5, 0.5, 16000 * 2), 16000)
    status = cli.main(["tag", str(audio), "--model", str(path), "-n", "2"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "--top is ignored: the model gives values, not class scores" in err
    listed = [line.split()[1] for line in out.splitlines() if line.strip().startswith("- ")]
    assert listed == [f"class_{i}" for i in range(128)]  # all, in their order
