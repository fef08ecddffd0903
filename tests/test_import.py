"""Recognising architectures from the graph's structure, on real, training-time and stripped
graphs."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import jaxmir
from conftest import ROOT, assert_parity, child_env, require, run_tf, shared_fixture
from jaxmir.errors import GraphError, InputError, JaxmirWarning, UnsupportedGraphError
from jaxmir.spec import Activation, BatchNorm, Dense
from jaxmir.tfgraph.graphdef import DT_BOOL, Graph
from test_hostile_graphs import add_const

DORTMUND = "essentia-models/genre_dortmund_musicnn_msd.pb"


def compare_all_nodes(path, model, patches, probabilities=("model/Sigmoid",), live_port=0):
    """Every graph node jaxmir maps, against TensorFlow on the same patches (a Switch's by its
    first output when that is ``live_port``: TensorFlow cannot fetch a dead branch)."""
    graph = Graph.from_file(path)
    names = [n for n in model.spec.node_map
             if n in graph and (graph.node(n).op != "Switch" or live_port == 0)]
    reference = run_tf(path, {"model/Placeholder": patches}, names)
    ours = model.apply(patches, names)
    return {n: assert_parity(n, r, ours[n], n in probabilities) for n, r in zip(names, reference)}


def test_essentia_genre_dortmund_body_matches_tensorflow(patches_187):
    path = shared_fixture(DORTMUND)
    model = jaxmir.load(path)
    assert model.architecture == "musicnn"
    assert model.spec.config["midend_filters"] == 64
    epsilon = float(np.float32(1e-3))  # the graph stores it as a float32 attribute
    assert model.spec.config["head"][:4] == (BatchNorm(epsilon), Dense(200), Activation("relu"),
                                             BatchNorm(epsilon))
    errors = compare_all_nodes(path, model, patches_187)
    assert "model/dense/BiasAdd" in errors and "model/transpose" in errors \
        and "model/Squeeze" in errors and "model/moments/Squeeze" in errors  # the squeezed mean


def test_a_musicnn_of_other_patches_runs_on_its_patches_not_on_audio(tmp_path):
    """A graph whose patches are 64 frames is no Essentia MusiCNN: the front-end of 187-frame
    patches (taken by the bands alone) was given to it. It runs on its own patches, as
    TensorFlow runs it, and audio is refused."""
    from jaxmir.tfgraph.graphdef import GraphDefProto

    graph = GraphDefProto.FromString(shared_fixture(DORTMUND).read_bytes())
    placeholder = next(node for node in graph.node if node.name == "model/Placeholder")
    for dim, size in zip(placeholder.attr["shape"].shape.dim, (-1, 64, 96)):
        dim.size = size
    path = tmp_path / "musicnn64.pb"
    path.write_bytes(graph.SerializeToString())
    model = jaxmir.load(path)
    assert model.input_shape == (64, 96) and model.frontend is None
    with pytest.raises(InputError, match=r"takes \[64, 96\] inputs, not log-mel patches"):
        model.predict(np.zeros(32000, np.float32), 16000)
    x = np.random.default_rng(4).standard_normal((2, 64, 96)).astype(np.float32)
    want, = run_tf(path, {"model/Placeholder:0": x}, ["model/Sigmoid:0"])
    got = np.asarray(model.apply(x, ["model/Sigmoid"])["model/Sigmoid"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # probabilities in [0, 1]


@pytest.mark.parametrize("name", ["msd-musicnn", "msd-vgg"])
def test_graph_frozen_straight_from_training(musicnn_graphs, patches_187, name):
    """The checkpoint's own graph: BN and dropout behind cond on the training flag."""
    path = musicnn_graphs / f"{name}-training.pb"
    graph = Graph.from_file(path)
    assert graph.node("model/Placeholder_1").op == "PlaceholderWithDefault"
    assert sum(1 for _ in graph.ops("Merge")) > 10 and sum(1 for _ in graph.ops("Switch")) > 10
    model = jaxmir.load(path)
    errors = compare_all_nodes(path, model, patches_187)
    assert "model/Sigmoid" in errors and "model/dense/BiasAdd" in errors
    if name == "msd-vgg":  # musicnn's extractor's pool1..pool5: the pools, singleton axes squeezed
        pools = [f"pool{i}" for i in range(1, 6)]
        nodes = [next(node for node, (tap, _) in model.spec.node_map.items()
                      if node in graph and tap == model.resolve_output(pool)[0]) for pool in pools]
        reference = run_tf(path, {"model/Placeholder": patches_187}, nodes)
        ours = model.apply(patches_187, pools)
        for pool, expected in zip(pools, reference):
            assert_parity(pool, np.squeeze(expected), ours[pool])  # a batch of 7 stays


def flagged(graph_path, tmp_path, default: bool, swap_branches: bool = False):
    """The training graph with its training flag's default set to ``default``; with
    ``swap_branches``, every Switch's two outputs exchanged, so that the true branch is the
    inference one."""
    tf = require("tensorflow")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    nodes = {node.name: node for node in graph_def.node}
    default_value = nodes[nodes["model/Placeholder_1"].input[0]]
    default_value.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(default))
    if swap_branches:
        switches = {n.name for n in graph_def.node if n.op == "Switch"}
        for node in graph_def.node:
            for i, ref in enumerate(node.input):
                name, _, port = ref.partition(":")
                if name in switches and not ref.startswith("^"):
                    node.input[i] = f"{name}:{1 - int(port or 0)}"
    out = tmp_path / "flagged.pb"
    out.write_bytes(graph_def.SerializeToString())
    return out


def test_a_cond_whose_predicate_the_graph_holds_true_runs_its_true_branch(musicnn_graphs, tmp_path,
                                                                          patches_187):
    """TensorFlow (and Essentia, which feeds no flag) runs the branch a held predicate names: the
    training branch is refused, a true branch that is the inference one is computed."""
    training = musicnn_graphs / "msd-musicnn-training.pb"
    with pytest.raises(UnsupportedGraphError, match="predicate 'model/Placeholder_1' True"):
        jaxmir.load(flagged(training, tmp_path, True))
    path = flagged(training, tmp_path, True, swap_branches=True)
    errors = compare_all_nodes(path, jaxmir.load(path), patches_187, live_port=1)
    assert "model/Sigmoid" in errors and "model/dropout/cond/Merge" in errors


CONDS_IN_A_HEAD = """
import functools
import sys
import numpy as np
import tensorflow as tf
from tools.tf_graphs import _Builder, random_weights, run_graph, write_graph

folder = sys.argv[1]
features = np.random.default_rng(1).standard_normal((5, 200)).astype(np.float32)
np.save(folder + "/in.npy", features)
for case in sys.argv[2:]:
    if case.startswith("v2"):
        tf.compat.v1.enable_control_flow_v2()
    else:  # tf.cond as Switch and Merge, as frozen graphs hold it
        tf.compat.v1.disable_control_flow_v2()
    builder, graph = _Builder(random_weights(0)), tf.Graph()
    with graph.as_default(), tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, 200], name="Placeholder")
        flag = tf.compat.v1.placeholder_with_default(case != "not_false", [], name="flag")
        inner = tf.compat.v1.placeholder_with_default(True, [], name="inner")
        mode = tf.compat.v1.placeholder_with_default(2, [], name="mode")
        dense = lambda scope: (lambda: tf.nn.relu(builder.dense(x, scope, 100)))
        if case in ("not_false", "v2"):
            hidden = tf.compat.v1.cond(tf.logical_not(flag), dense("a"), dense("b"))
        elif case == "computed":
            held = tf.logical_and(tf.equal(mode, 2), tf.greater(tf.cast(mode, tf.float32), 1.5))
            hidden = tf.compat.v1.cond(held, dense("a"), dense("b"))
        elif case == "boundaries":  # each comparison on equal operands, each True as written
            two = tf.constant(2)
            comparisons = [tf.logical_not(tf.greater(mode, two)), tf.greater_equal(mode, two),
                           tf.logical_not(tf.less(mode, two)), tf.less_equal(mode, two),
                           tf.equal(mode, two), tf.logical_not(tf.not_equal(mode, two))]
            held = functools.reduce(tf.logical_and, comparisons)
            hidden = tf.compat.v1.cond(held, dense("a"), dense("b"))
        elif case == "cast_and_big":  # 2.7 cast to int32 is 2, 2**53 + 1 is not 2**53: True
            rate = tf.compat.v1.placeholder_with_default(tf.constant(2.7, tf.float64), [])
            big = tf.compat.v1.placeholder_with_default(tf.constant(2**53 + 1, tf.int64), [])
            held = tf.logical_and(tf.equal(tf.cast(rate, tf.int32), 2),
                                  tf.logical_not(tf.equal(big, 2**53)))
            loud = tf.compat.v1.placeholder_with_default(tf.constant(7e4, tf.float64), [])
            held = tf.logical_and(held, tf.greater(tf.cast(loud, tf.float16), 1.0))  # inf
            held = tf.identity_n([tf.logical_not(held), held])[1]  # its second input
            hidden = tf.compat.v1.cond(held, dense("a"), dense("b"))
        elif case == "chain":  # each cond's predicate the cond before's output
            held = flag
            for _ in range(100):
                held = tf.compat.v1.cond(held, lambda: tf.constant(False),
                                         lambda: tf.constant(True))
            hidden = tf.compat.v1.cond(held, dense("a"), dense("b"))
        elif case == "v2_aside":  # a cond the output does not read, an op jaxmir does not know
            tf.compat.v1.cond(flag, lambda: x, lambda: 2 * x)
            hidden = tf.nn.selu(builder.dense(x, "a", 100))
        elif case == "on_the_input":
            hidden = tf.compat.v1.cond(tf.reduce_sum(x) > 0, dense("a"), dense("b"))
        elif case == "loop":
            hidden = tf.compat.v1.while_loop(lambda i, h: i < 3, lambda i, h: (i + 1, h * 0.5),
                                             [tf.constant(0), dense("a")()])[1]
        else:  # the outer flag held True, a cond held True in its false branch
            hidden = tf.compat.v1.cond(flag, dense("c"),
                                       lambda: tf.compat.v1.cond(inner, dense("a"), dense("b")))
        tf.nn.softmax(builder.dense(hidden, "dense_1", 2), name="Softmax")
    out = f"{folder}/{case}.pb"
    write_graph(graph.as_graph_def(), out)
    np.save(out + ".npy", run_graph(graph.as_graph_def(), {"model/Placeholder": features},
                                    ["model/Softmax"])[0])
"""


def test_conds_read_by_their_predicates_or_refused(tmp_path):
    """A cond on LogicalNot of a flag held False runs its true branch in TensorFlow (jaxmir took the
    false one: 0.74 from it), and so does one on comparisons of a held value (read as False
    before; each comparison is also taken on equal operands, where it and its strict or negated
    twin differ); conds nested with a predicate held True, whose branches jaxmir cannot tell
    apart, are refused (they gave values 0.8 from TensorFlow's), and so are a cond on the input's
    values, a predicate of two values, and a while loop (read as no iteration); a predicate that
    reads its own cond's output is a cycle (a RecursionError of 2,973 lines). TensorFlow 2's cond
    (StatelessIf) is named in the refusal."""
    require("tensorflow")
    cases = ("not_false", "computed", "boundaries", "cast_and_big", "nested", "chain",
             "on_the_input", "loop", "v2", "v2_aside")
    subprocess.run([sys.executable, "-c", CONDS_IN_A_HEAD, str(tmp_path), *cases], cwd=ROOT,
                   env=child_env(), check=True, capture_output=True, timeout=300)
    paths = {case: str(tmp_path / f"{case}.pb") for case in cases}
    for case in ("not_false", "computed", "boundaries", "cast_and_big"):
        with warnings.catch_warnings():  # NumPy's overflow in a cast, as TensorFlow's, unsaid
            warnings.simplefilter("error", RuntimeWarning)
            head = jaxmir.load(paths[case], output="model/Softmax")
        got = head.apply(np.load(tmp_path / "in.npy"), ["model/Softmax"])["model/Softmax"]
        assert_parity("model/Softmax", np.load(paths[case] + ".npy"), got, True)
    with pytest.raises(GraphError,
                       match="chosen by several predicates, 'model/flag', 'model/inner' held True"):
        jaxmir.load(paths["nested"], output="model/Softmax")
    with pytest.raises(GraphError, match="predicate 'model/Greater' .Greater. is not one jaxmir "
                       "evaluates before the graph runs"):
        jaxmir.load(paths["on_the_input"], output="model/Softmax")
    with pytest.raises(GraphError, match="predicate 'model/cond_.*/Merge' .Merge. is not one"):
        jaxmir.load(paths["chain"], output="model/Softmax")  # was a RecursionError at 200
    with pytest.raises(GraphError, match="a tf.while_loop's; jaxmir reads no loops"):
        jaxmir.load(paths["loop"], output="model/Softmax")  # was its Enter input: no iteration
    with pytest.raises(UnsupportedGraphError, match="TensorFlow 2 control flow, StatelessIf at "
                       "'model/cond'.*disable_control_flow_v2"):
        jaxmir.load(paths["v2"], output="model/Softmax")
    with pytest.raises(UnsupportedGraphError, match="Selu") as refused:
        jaxmir.load(paths["v2_aside"], output="model/Softmax")
    assert "control flow" not in str(refused.value)  # its hint would not help
    graph = Graph.from_file(paths["not_false"])
    graph.node("model/cond/pred_id").input[:] = ["model/cond/Merge"]
    looped = tmp_path / "looped.pb"
    looped.write_bytes(graph.graph_def.SerializeToString())
    with pytest.raises(GraphError, match="cycle|acyclic"):
        jaxmir.load(looped, output="model/Softmax")
    graph = Graph.from_file(paths["not_false"])  # a predicate of two values, which TF refuses
    add_const(graph.graph_def, "model/two_flags", np.array([True, False]), DT_BOOL)
    graph.node("model/cond/pred_id").input[:] = ["model/two_flags"]
    two = tmp_path / "two_flags.pb"
    two.write_bytes(graph.graph_def.SerializeToString())
    with pytest.raises(GraphError, match="predicate 'model/two_flags' .Const. is not one jaxmir"):
        jaxmir.load(two, output="model/Softmax")  # not NumPy's ValueError of a reshape


def stripped(graph_path, tmp_path, fold_batch_norms: bool):
    """TF's optimize_for_inference (no Identity reads), optionally with batch norms folded to
    a*x+b."""
    tf = require("tensorflow")
    from tensorflow.python.tools import optimize_for_inference_lib
    from tools.tf_graphs import run_graph

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    graph_def = optimize_for_inference_lib.optimize_for_inference(
        graph_def, ["model/Placeholder"], ["model/Sigmoid"], tf.float32.as_datatype_enum)
    if fold_batch_norms:
        names = [n.name for n in graph_def.node if n.name.endswith("batchnorm/mul")
                 or n.name.endswith("batchnorm/sub")]
        values = run_graph(graph_def, {}, names)
        for node in graph_def.node:
            if node.name in names:
                value = values[names.index(node.name)]
                node.op = "Const"
                node.ClearField("input")
                node.attr.clear()
                node.attr["dtype"].type = tf.float32.as_datatype_enum
                node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, ["model/Sigmoid"])
    out = tmp_path / "stripped.pb"
    out.write_bytes(graph_def.SerializeToString())
    return out


@pytest.mark.parametrize("fold", [False, True], ids=["stripped", "batchnorm-folded"])
def test_graph_stripped_for_inference(musicnn_graphs, tmp_path, patches_187, fold):
    path = stripped(musicnn_graphs / "msd-musicnn-1.pb", tmp_path, fold)
    graph = Graph.from_file(path)
    assert not any(n.name.endswith("/read") for n in graph.ops("Identity"))
    if fold:
        assert graph.node("model/batch_normalization_9/batchnorm/mul").op == "Const"
    model = jaxmir.load(path)
    errors = compare_all_nodes(path, model, patches_187)
    assert "model/Sigmoid" in errors


def test_only_a_graph_named_from_its_start_like_a_shipped_model_takes_its_labels(tmp_path):
    """A graph without its JSON takes a shipped model's labels by its name's start, as Essentia
    names them (msd-musicnn-1.pb); one whose name only holds one (old-msd-musicnn-1.pb) is
    another model, whose classes are not known; so is one of another width (a 9-genre MusiCNN
    named msd-musicnn-1.pb), whose outputs the 50 tags do not name."""
    from jaxmir.catalog import labels_for_graph

    spec = jaxmir.load("msd-musicnn").spec
    assert labels_for_graph("/models/msd-musicnn-1.pb", spec)[:2] == ["rock", "pop"]
    assert labels_for_graph("/models/old-msd-musicnn-1.pb", spec) is None
    named = tmp_path / "msd-musicnn-1.pb"
    named.write_bytes(shared_fixture(DORTMUND).read_bytes())
    assert jaxmir.load(named).labels == tuple(f"class_{i}" for i in range(9))


def test_msd_big_configuration_from_a_random_graph(tmp_path, patches_187):
    require("tensorflow")
    from tools import tf_graphs
    path = tmp_path / "msd-musicnn-big.pb"
    tf_graphs.write_graph(tf_graphs.musicnn_graph(tf_graphs.random_weights(3), midend=512,
                                                  backend=500), str(path))
    model = jaxmir.load(path)
    assert model.spec.config["midend_filters"] == 512
    assert Dense(500) in model.spec.config["head"]
    assert model.labels[:2] == ("rock", "pop")  # named like the shipped MSD model
    out = model.apply(patches_187[:2], ["mean_pool", "penultimate"])
    assert out["mean_pool"].shape == (2, 561 + 3 * 512) and out["penultimate"].shape == (2, 500)
    compare_all_nodes(path, model, patches_187)


def build(tf_graph_fn, tmp_path, name="g.pb"):
    tf = require("tensorflow")
    graph = tf.Graph()
    with graph.as_default(), tf.name_scope("model"):
        tf_graph_fn(tf)
    path = tmp_path / name
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def test_unknown_convnet_names_what_it_found(tmp_path):
    def five_by_five(tf):
        x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96], name="Placeholder")
        y = tf.nn.conv2d(tf.expand_dims(x, 3), tf.ones([5, 5, 1, 8]), 1, "SAME")
        y = tf.reshape(tf.nn.relu(y), [-1, 187 * 96 * 8])
        tf.nn.sigmoid(tf.matmul(y, tf.ones([187 * 96 * 8, 3])), name="Sigmoid")

    with pytest.raises(UnsupportedGraphError) as error:
        jaxmir.load(build(five_by_five, tmp_path))
    message = str(error.value)
    assert "5x5 kernel" in message and "Conv2D [5, 5, 1, 8]" in message and "MusiCNN" in message


def test_graph_without_known_output_or_layers(tmp_path):
    def no_output(tf):
        tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")

    def no_conv(tf):
        x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96], name="Placeholder")
        tf.nn.sigmoid(tf.reduce_mean(x, axis=1), name="Sigmoid")

    with pytest.raises(UnsupportedGraphError, match="none of the usual output nodes"):
        jaxmir.load(build(no_output, tmp_path, "a.pb"))
    with pytest.raises(UnsupportedGraphError, match="no convolution.*jaxmir supports"):
        jaxmir.load(build(no_conv, tmp_path, "b.pb"))


def test_a_graph_without_a_float_input_says_so(tmp_path):
    """An output fed by an integer placeholder alone has no input jaxmir can take."""
    def integer_input(tf):
        x = tf.compat.v1.placeholder(tf.int32, [None, 4], name="Placeholder")
        tf.nn.sigmoid(tf.matmul(tf.cast(x, tf.float32), tf.ones([4, 3])), name="Sigmoid")

    with pytest.raises(UnsupportedGraphError,
                       match=r"the output depends on 0 float inputs \(none\); expected one"):
        jaxmir.load(build(integer_input, tmp_path))


def test_an_unusual_output_node_is_named_by_output_or_by_the_metadata_json(tmp_path):
    """The way out the error gives, for Python and for the command line, both work."""
    import json

    from jaxmir.tfgraph.graphdef import GraphDefProto

    original = shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb")
    graph_def = GraphDefProto()
    graph_def.ParseFromString(original.read_bytes())
    (node,) = [n for n in graph_def.node if n.name == "dense_out"]
    node.name = "arousal_valence"
    renamed = tmp_path / "renamed.pb"
    renamed.write_bytes(graph_def.SerializeToString())
    with pytest.raises(UnsupportedGraphError, match='pass output= to jaxmir.load.*"schema": '
                                                    '{"outputs": \\[{"name": NODE'):
        jaxmir.load(renamed)
    embeddings = np.random.default_rng(0).standard_normal((5, 200)).astype(np.float32)
    want = jaxmir.load(original).apply(embeddings)["predictions"]
    np.testing.assert_array_equal(
        jaxmir.load(renamed, output="arousal_valence").apply(embeddings)["predictions"], want)
    schema = {"outputs": [{"name": "arousal_valence", "output_purpose": "predictions"}]}
    renamed.with_suffix(".json").write_text(json.dumps({"classes": ["valence", "arousal"],
                                                        "schema": schema}))
    model = jaxmir.load(renamed)
    assert list(model.labels) == ["valence", "arousal"]
    np.testing.assert_array_equal(model.apply(embeddings)["predictions"], want)
    schema["outputs"][0]["name"] = "arousal_valence:0"  # TensorFlow's name of the same tensor
    renamed.with_suffix(".json").write_text(json.dumps({"classes": ["valence", "arousal"],
                                                        "schema": schema}))
    np.testing.assert_array_equal(jaxmir.load(renamed).apply(embeddings)["predictions"], want)


@pytest.mark.parametrize("metadata, message", [  # each a raw Python error, or ignored, before
    ('{"schema": "x"}', "'schema' is x; expected Essentia's object with an 'outputs' list"),
    ('{"schema": [1]}', "'schema' is \\[1\\]; expected"),
    ('{"schema": {"outputs": 5}}', "'schema' is .*; expected"),
    ("[" * 100_000 + "]" * 100_000, "not readable model metadata"),
    ('{"version": ' + "9" * 5000 + "}", "not readable model metadata"),  # Python's int limit
    ('{"classes": [[1], {"x": 2}]}', "'classes' is .*; expected a list of class names"),
    ('{"classes": ["calm", "\\u001b[2Jtense"]}',  # printed as is, the escape cleared a terminal
     r"head.json: the label '\\x1b\[2Jtense' holds a control character"),
    ('{"schema": {"outputs": [{"name": "model/Sigmoid", "output_purpose": "predictions"}]}}',
     "names the output node 'model/Sigmoid', which the graph beside it does not have"),
    # each ran the node's first output, which TensorFlow would not have given for them
    ('{"schema": {"outputs": [{"name": "dense_out:7", "output_purpose": "predictions"}]}}',
     "names the output 'dense_out:7'; jaxmir reads a node's first output: 'node' or 'node:0'"),
    ('{"schema": {"outputs": [{"name": "dense_out:1", "output_purpose": "predictions"}]}}',
     "names the output 'dense_out:1'; jaxmir reads a node's first output"),  # the next port
    ('{"schema": {"outputs": [{"name": "^dense_out", "output_purpose": "predictions"}]}}',
     "names the output '\\^dense_out'; jaxmir reads"),
    # "names the output node 'None'"; an empty list was the same as no list
    ('{"schema": {"outputs": [{"name": 3, "output_purpose": "predictions"}]}}',
     "the predictions output's 'name' is 3; expected a node name"),
    ('{"classes": []}', "lists 0 classes but the graph .* outputs 2 values"),
])
def test_metadata_json_of_the_wrong_shape_is_an_input_error(tmp_path, metadata, message):
    from jaxmir.errors import InputError

    head = tmp_path / "head.pb"
    head.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    head.with_suffix(".json").write_text(metadata)
    with pytest.raises(InputError, match=message):
        jaxmir.load(head)


def test_metadata_json_with_a_byte_order_mark_is_read(tmp_path):
    """It was refused ("Unexpected UTF-8 BOM"), as editors on Windows save JSON."""
    head = tmp_path / "head.pb"
    head.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    head.with_suffix(".json").write_bytes(b"\xef\xbb\xbf" + json.dumps(
        {"classes": ["valence", "arousal"]}).encode())
    assert jaxmir.load(head).labels == ("valence", "arousal")


def test_a_graph_named_too_long_for_a_json_beside_it_loads(tmp_path):
    """A .pb of 252 bytes has no room for a .json name beside it: an OSError before."""
    head = tmp_path / ("h" * 252 + ".pb")
    head.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    assert jaxmir.load(head).architecture == "head"


def test_a_head_finds_the_graph_its_metadata_names_beside_it(tmp_path, patches_187):
    """A head trained on a .pb backbone (train-head --backbone X.pb) ran only with --backbone."""
    import json

    from jaxmir.loading import backbone_of

    head = tmp_path / "head.pb"
    head.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    entry = {"model_name": "genre_dortmund_musicnn_msd", "output": "model/dense/BiasAdd"}
    head.with_suffix(".json").write_text(json.dumps({"inference": {"embedding_model": entry}}))
    assert backbone_of(jaxmir.load(head)) is None
    backbone = tmp_path / "genre_dortmund_musicnn_msd.pb"
    backbone.write_bytes(shared_fixture(DORTMUND).read_bytes())
    assert backbone_of(jaxmir.load(head)) == str(backbone)
    chained = jaxmir.load(head, backbone=backbone_of(jaxmir.load(head)))
    embeddings = jaxmir.load(backbone).apply(patches_187[:2], ["model/dense/BiasAdd"])
    np.testing.assert_allclose(
        chained.apply(patches_187[:2])["predictions"],
        jaxmir.load(head).apply(embeddings["model/dense/BiasAdd"])["predictions"], atol=1e-5)
    # the graph converted beside it: the .npz came first, and its other bytes were warned of
    from jaxmir import catalog
    from jaxmir.weights import save_weights

    save_weights(jaxmir.load(backbone), backbone.with_suffix(".npz"))
    head.with_suffix(".json").write_text(json.dumps({"inference": {"embedding_model": {
        **entry, "sha256": catalog.sha256(backbone)}}}))
    assert backbone_of(jaxmir.load(head)) == str(backbone)
    head.with_suffix(".json").write_text(json.dumps({"inference": {"embedding_model": entry}}))
    assert backbone_of(jaxmir.load(head)) == str(backbone.with_suffix(".npz"))  # no digest
    # a digest of neither file (the backbone retrained since): found as one file beside it is,
    # and its other bytes said when they run, not taken for a backbone that is missing
    head.with_suffix(".json").write_text(json.dumps({"inference": {"embedding_model": {
        **entry, "sha256": "0" * 64}}}))
    assert backbone_of(jaxmir.load(head)) == str(backbone.with_suffix(".npz"))
    with pytest.warns(JaxmirWarning, match="trained on a backbone file of other bytes"):
        jaxmir.load(head, backbone=backbone_of(jaxmir.load(head)))


def test_empty_names_in_a_head_s_metadata_name_no_backbone_and_no_output(tmp_path, patches_187):
    """An empty ``model_name`` or ``output`` (a JSON edited by hand) names nothing: the head runs
    on the backbone given, on its default embeddings, without a warning of another backbone."""
    head = tmp_path / "head.pb"
    head.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    head.with_suffix(".json").write_text(json.dumps(
        {"inference": {"embedding_model": {"model_name": "", "output": ""}}}))
    backbone = jaxmir.load(shared_fixture(DORTMUND))
    with warnings.catch_warnings():
        warnings.simplefilter("error", JaxmirWarning)
        chained = jaxmir.load(head, backbone=backbone)
    embeddings = backbone.apply(patches_187[:2], ["model/dense/BiasAdd"])["model/dense/BiasAdd"]
    np.testing.assert_allclose(chained.apply(patches_187[:2])["predictions"],
                               jaxmir.load(head).apply(embeddings)["predictions"], atol=1e-5)


def test_a_head_whose_backbone_is_missing_says_which_and_info_names_it(tmp_path, capsys):
    """The hint named 'msd-musicnn' (the shipped model of that width) for a head whose JSON names
    its own fine-tuned backbone: following it ran the head on the wrong backbone."""
    import json

    from jaxmir import cli

    head = tmp_path / "ft.pb"
    head.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    entry = {"model_name": "ft-backbone", "output": "embeddings"}
    head.with_suffix(".json").write_text(json.dumps({"inference": {"embedding_model": entry}}))
    audio = shared_fixture("audio/vignesh.wav")
    assert cli.main(["tag", str(audio), "--model", str(head), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "whose metadata names the backbone 'ft-backbone', which is neither beside it" in err
    assert "msd-musicnn" not in err
    assert cli.main(["info", str(head)]) == 0
    assert "backbone (its metadata's): ft-backbone, not found beside it nor shipped\n" in \
        capsys.readouterr().out
    entry["model_name"] = "msd-musicnn-1"
    head.with_suffix(".json").write_text(json.dumps({"inference": {"embedding_model": entry}}))
    assert cli.main(["info", str(head)]) == 0
    assert "found: msd-musicnn (jaxmir info --backbone msd-musicnn" in capsys.readouterr().out


def test_a_head_given_as_its_own_backbone_is_named_a_head(tmp_path):
    """The message said the backbone lacked the head's embedding layer, not that it was a head."""
    import json

    from jaxmir.errors import InputError

    head = tmp_path / "head.pb"
    head.write_bytes(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb").read_bytes())
    entry = {"model_name": "msd-musicnn-1", "output": "model/dense/BiasAdd"}
    head.with_suffix(".json").write_text(json.dumps({"inference": {"embedding_model": entry}}))
    with pytest.raises(InputError, match="head.pb is an embedding head itself, not a backbone"):
        jaxmir.load(head, backbone=head)


def test_eight_convolutions_that_are_not_musicnn(tmp_path):
    def eight(tf):
        x = tf.expand_dims(tf.compat.v1.placeholder(tf.float32, [None, 187, 96],
                                                    name="Placeholder"), 3)
        for i in range(8):
            x = tf.nn.relu(tf.nn.conv2d(x, tf.ones([3, 3, int(x.shape[-1]), 4]), 1, "SAME"))
        tf.nn.sigmoid(tf.matmul(tf.reshape(x, [-1, 187 * 96 * 4]), tf.ones([187 * 96 * 4, 2])),
                      name="Sigmoid")

    with pytest.raises(UnsupportedGraphError, match="MusiCNN.*no batch norm on the input"):
        jaxmir.load(build(eight, tmp_path))


def test_a_file_digest_is_read_once_while_the_file_is_unchanged(tmp_path, monkeypatch):
    """A run asks for a backbone's sha256 up to three times (0.3 s each for a 288-MB VGGish);
    an unchanged file is read once, a rewritten one (same size, mtime set back) again, and a
    file written in the last seconds always (its ctime may repeat within a clock tick)."""
    import hashlib
    import os
    import time

    from jaxmir import catalog

    readings, sha256 = [], hashlib.sha256

    def counted(*args):
        readings.append(1)
        return sha256(*args)

    monkeypatch.setattr(catalog.hashlib, "sha256", counted)
    monkeypatch.setattr(catalog, "_DIGESTS", {})
    graph = tmp_path / "backbone.pb"
    graph.write_bytes(b"a" * 3000)
    digest = catalog.sha256(graph)
    assert catalog.sha256(graph) == digest and len(readings) == 2  # just written: read each time
    monkeypatch.setattr(catalog, "_SETTLED_NS", 0)  # as if written long ago
    assert catalog.sha256(graph) == catalog.sha256(graph) == digest and len(readings) == 3
    stamp = graph.stat().st_mtime_ns
    time.sleep(0.05)
    graph.write_bytes(b"b" * 3000)
    os.utime(graph, ns=(stamp, stamp))
    assert catalog.sha256(graph) == sha256(b"b" * 3000).hexdigest() != digest
    for index in range(70):  # the memo is bounded: a folder of many heads grows it no further
        other = tmp_path / f"head_{index}.pb"
        other.write_bytes(bytes([index]) * 10)
        assert catalog.sha256(other) == sha256(bytes([index]) * 10).hexdigest()
        assert 0 < len(catalog._DIGESTS) <= 64  # at every step, not only after a clearing


def test_an_optional_dependency_installed_but_broken_is_not_called_missing(tmp_path,
                                                                            monkeypatch):
    """pyarrow 14 or matplotlib 3.6 (built for NumPy 1) beside NumPy 2 failed to import with an
    ImportError, and --plot said matplotlib "is not installed", whose install did nothing."""
    from jaxmir import lazy
    from jaxmir.errors import JaxmirError

    for name, body in (("jaxmir_test_abi", "raise ImportError('numpy.core.multiarray failed "
                                            "to import')"),
                       ("jaxmir_test_needs", "import jaxmir_test_not_there"),
                       # its own compiled part missing: it said the package was not installed
                       ("jaxmir_test_native", "import jaxmir_test_native._native")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, why in (("jaxmir_test_abi", "ImportError: numpy.core.multiarray failed to import"),
                      ("jaxmir_test_needs", "ModuleNotFoundError: No module named "
                                            "'jaxmir_test_not_there'"),
                      ("jaxmir_test_native", "ModuleNotFoundError: No module named "
                                             "'jaxmir_test_native._native'")):
        with pytest.raises(JaxmirError, match=re.escape(
                f"--plot needs {name}, which is installed but failed to import ({why}); "
                "reinstall or upgrade it: pip install x")):
            lazy.optional(name, "--plot", "pip install x")
    with pytest.raises(InputError, match=r"^--plot needs jaxmir_test_gone, which is not "
                                         r"installed; install it with: pip install x$"):
        lazy.optional("jaxmir_test_gone.sub", "--plot", "pip install x", InputError)
    # the package there, its submodule not (ray without ray.data): not a broken installation
    (tmp_path / "jaxmir_test_part").mkdir()
    (tmp_path / "jaxmir_test_part" / "__init__.py").write_text("")
    importlib.invalidate_caches()  # the path's folder was listed before the package was made
    with pytest.raises(InputError, match=r"^--plot needs jaxmir_test_part.data, which is not "
                                         r"installed; install it with: pip install x$"):
        lazy.optional("jaxmir_test_part.data", "--plot", "pip install x", InputError)


def test_a_lazy_submodule_missing_a_dependency_names_it(tmp_path, monkeypatch):
    """``jaxmir.train.fit`` without optax said "module 'jaxmir.train' has no attribute 'fit'"."""
    package = tmp_path / "jaxmir_test_lazy"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from jaxmir import lazy\n__getattr__, __dir__ = lazy.attributes(__name__, {}, [])\n")
    (package / "fit.py").write_text("import jaxmir_test_absent\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    import jaxmir_test_lazy

    try:
        with pytest.raises(ModuleNotFoundError, match="jaxmir_test_absent"):
            jaxmir_test_lazy.fit
        with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
            jaxmir_test_lazy.nothing
    finally:
        del sys.modules["jaxmir_test_lazy"]


def test_a_dotted_name_is_no_attribute_of_a_lazy_package(tmp_path, monkeypatch):
    """getattr(package, "sub.module") is no way to a submodule: it would import it and set an
    attribute whose name no ``package.name`` can read."""
    package = tmp_path / "jaxmir_test_dotted"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from jaxmir import lazy\n__getattr__, __dir__ = lazy.attributes(__name__, {}, [])\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "module.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    import jaxmir_test_dotted

    try:
        with pytest.raises(AttributeError, match="has no attribute 'sub.module'"):
            getattr(jaxmir_test_dotted, "sub.module")
        assert "sub.module" not in vars(jaxmir_test_dotted)
    finally:
        for name in [name for name in sys.modules if name.startswith("jaxmir_test_dotted")]:
            del sys.modules[name]
