"""Hostile and damaged `.pb` files end in a jaxmir error, in bounded time and memory.

Each case is a graph a tester built against an earlier jaxmir that hung, ran
out of memory, crashed, raised a Python error or loaded a wrong model. The
graphs are built here with jaxmir's own protobuf classes, from scratch or by
editing the fixture graphs. Cases that once hung or exhausted memory load in
a subprocess under a memory cap and a timeout (:func:`load_guarded`), so a
regression fails the test instead of the machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxmir
from conftest import ROOT, child_env, require, run_tf, shared_fixture
from jaxmir.errors import GraphError, JaxmirError, UnsupportedGraphError, WeightsError
from jaxmir.tfgraph.convert import import_graph
from jaxmir.tfgraph.graphdef import (DT_BOOL, DT_DOUBLE, DT_FLOAT, DT_INT32, Graph, GraphDefProto,
                                     TensorProto)
from jaxmir.weights import load_weights, save_weights

VGG4 = "essentia-models/vgg4.pb"
DORTMUND = "essentia-models/genre_dortmund_musicnn_msd.pb"
HEAD_IN, HEAD_HIDDEN, HEAD_OUT = 8, 4, 3

# -- running loads under a memory cap ---------------------------------------------------------

_WORKER = r"""
import json, resource, sys
import jaxmir
from jaxmir.errors import JaxmirError
warmup, cap_mb, results, *paths = sys.argv[1:]
jaxmir.load(warmup)  # imports and starts JAX before the cap, so the cap measures the load alone
with open("/proc/self/status") as status:
    vm = next(int(l.split()[1]) for l in status if l.startswith("VmSize:")) * 1024
limit = vm + int(cap_mb) * (1 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
with open(results, "a") as out:
    for path in paths:
        out.write(json.dumps([path, "start"]) + "\n"); out.flush()
        try:
            jaxmir.load(path)
            outcome = "loaded"
        except JaxmirError as err:
            outcome = "jaxmir " + type(err).__name__ + ": " + str(err)[:300]
        except BaseException as err:
            outcome = "FOREIGN " + type(err).__name__ + ": " + str(err)[:300]
        out.write(json.dumps([path, outcome]) + "\n"); out.flush()
"""


def _finished_lines(results_file: Path) -> list:
    """The worker's records so far; a line it is still writing (no newline yet) waits for the next
    poll."""
    *finished, _being_written = results_file.read_text().split("\n")
    return [json.loads(line) for line in finished if line.strip()]


def load_guarded(paths: list, cap_mb: int = 2048, timeout_s: float = 60.0) -> dict[str, str]:
    """``jaxmir.load`` each path in a worker process; returns path -> outcome.

    The worker's address space may grow ``cap_mb`` past what it uses after a
    warm-up load; a load running past ``timeout_s`` is killed (``TIMEOUT``), a
    dying worker is reported as ``CRASH`` and the rest go on in a new worker.
    Outcomes: ``loaded``, ``jaxmir <ErrorClass>: ...``, ``FOREIGN ...``,
    ``TIMEOUT``, ``CRASH ...``.
    """
    warmup = str(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    results_file = (Path(os.environ.get("TMPDIR", "/tmp"))
                    / f"jaxmir-guarded-{os.getpid()}-{time.time_ns()}.jsonl")
    pending, outcomes = [str(p) for p in paths], {}
    env = child_env()
    try:
        while pending:
            results_file.write_text("")
            worker = subprocess.Popen([sys.executable, "-c", _WORKER, warmup, str(cap_mb),
                                       str(results_file), *pending], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            current, started = None, time.monotonic()
            while True:
                code = worker.poll()
                for path, outcome in _finished_lines(results_file):
                    if outcome == "start":
                        if path != current:
                            current, started = path, time.monotonic()
                    else:
                        outcomes[path] = outcome
                if code is not None:
                    break
                if current is not None and current not in outcomes and \
                        time.monotonic() - started > timeout_s:
                    worker.kill()
                    worker.wait()
                    outcomes[current] = "TIMEOUT"
                    break
                time.sleep(0.05)
            if code is not None and code != 0:
                error = worker.stderr.read().decode(errors="replace")[-300:]
                if current is None or current in outcomes:
                    raise AssertionError(f"the guarded worker failed before loading: {error}")
                outcomes[current] = f"CRASH (exit {code}): {error}"
            worker.stderr.close()
            pending = [p for p in pending if p not in outcomes]
    finally:
        results_file.unlink(missing_ok=True)
    return outcomes


# -- building graphs ---------------------------------------------------------------------------

# ops jaxmir reads as layers whose T TensorFlow requires (it loads no graph where one lacks it)
TYPED_LAYER_OPS = ("Conv2D", "MatMul", "BiasAdd", "Add", "AddV2")


def add_node(graph_def, name: str, op: str, inputs=(), **attrs):
    node = graph_def.node.add(name=name, op=op)
    node.input.extend(inputs)
    if op in TYPED_LAYER_OPS:
        set_type(node, "T", DT_FLOAT)
    for key, value in attrs.items():
        attr = node.attr[key]
        if isinstance(value, bool):
            attr.b = value
        elif isinstance(value, int):
            attr.i = value
        elif isinstance(value, float):
            attr.f = value
        elif isinstance(value, str):
            attr.s = value.encode()
        elif isinstance(value, list):
            attr.list.i.extend(value)
        elif isinstance(value, tuple):  # a shape
            for size in value:
                attr.shape.dim.add(size=size)
    return node


def set_type(node, key: str, dtype: int) -> None:
    node.attr[key].type = dtype


def tensor_proto(value: np.ndarray | None = None, dtype: int = DT_FLOAT, shape=None,
                 float_val=None) -> TensorProto:
    proto = TensorProto(dtype=dtype)
    for size in (value.shape if shape is None else shape):
        proto.tensor_shape.dim.add(size=size)
    if value is not None:
        proto.tensor_content = value.tobytes()
    if float_val is not None:
        proto.float_val.extend(float_val)
    return proto


def add_const(graph_def, name: str, value: np.ndarray | None = None, dtype: int = DT_FLOAT,
              **tensor_fields):
    node = add_node(graph_def, name, "Const")
    set_type(node, "dtype", dtype)
    node.attr["value"].tensor.CopyFrom(tensor_proto(value, dtype, **tensor_fields))
    return node


def head_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"k1": rng.standard_normal((HEAD_IN, HEAD_HIDDEN)).astype(np.float32),
            "b1": rng.standard_normal(HEAD_HIDDEN).astype(np.float32),
            "k2": rng.standard_normal((HEAD_HIDDEN, HEAD_OUT)).astype(np.float32),
            "b2": rng.standard_normal(HEAD_OUT).astype(np.float32)}


def head_graph(weights: dict | None = None):
    """Placeholder [b, 8] -> dense 4 + ReLU -> dense 3 -> model/Softmax, as Essentia's heads."""
    weights = weights or head_weights()
    g = GraphDefProto()
    x = add_node(g, "model/Placeholder", "Placeholder", shape=(-1, HEAD_IN))
    set_type(x, "dtype", DT_FLOAT)
    for name, value in weights.items():
        add_const(g, name, value)
    add_node(g, "dense/MatMul", "MatMul", ["model/Placeholder", "k1"])
    add_node(g, "dense/BiasAdd", "BiasAdd", ["dense/MatMul", "b1"])
    add_node(g, "dense/Relu", "Relu", ["dense/BiasAdd"])
    add_node(g, "dense_1/MatMul", "MatMul", ["dense/Relu", "k2"])
    add_node(g, "dense_1/BiasAdd", "BiasAdd", ["dense_1/MatMul", "b2"])
    add_node(g, "model/Softmax", "Softmax", ["dense_1/BiasAdd"])
    return g


def head_reference(weights: dict, x: np.ndarray) -> np.ndarray:
    hidden = np.maximum(x.astype(np.float64) @ weights["k1"] + weights["b1"], 0)
    logits = hidden @ weights["k2"] + weights["b2"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def identity_function(g, inputs: list[str], returned: str, node: str = "n") -> None:
    """A library function ``f(a) -> y``: its body ``node = Identity(*inputs)``, ``y`` bound to
    ``returned``."""
    function = g.library.function.add()
    function.signature.name = "f"
    function.signature.input_arg.add(name="a")
    function.signature.output_arg.add(name="y")
    function.node_def.add(name=node, op="Identity", input=inputs)
    function.ret["y"] = returned


def assert_head_as_its_reference(tmp_path: Path, name: str, g, weights: dict, seed: int) -> None:
    """The head graph ``g`` loads and computes as :func:`head_reference` does with ``weights``
    on 5 rows of seeded noise (1e-6 on float32 probabilities)."""
    model = jaxmir.load(write(tmp_path, name, g))
    x = np.random.default_rng(seed).standard_normal((5, HEAD_IN)).astype(np.float32)
    got = np.asarray(model.apply(x, ["model/Softmax"])["model/Softmax"])
    np.testing.assert_allclose(got, head_reference(weights, x), rtol=0, atol=1e-6)


def node_named(graph_def, name: str):
    return next(n for n in graph_def.node if n.name == name)


def fixture_graph(relative: str):
    g = GraphDefProto()
    g.ParseFromString(shared_fixture(relative).read_bytes())
    return g


def write(tmp_path: Path, name: str, graph_def) -> Path:
    path = tmp_path / f"{name}.pb"
    path.write_bytes(graph_def.SerializeToString())
    return path


def musicnn_tf_tags(path: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two random ``[187, 96]`` patches drawn with ``seed``, and TensorFlow's tags of the
    MusiCNN graph at ``path`` on them."""
    patches = np.random.default_rng(seed).standard_normal((2, 187, 96)).astype(np.float32)
    tags, = run_tf(path, {"model/Placeholder:0": patches}, ["model/Sigmoid:0"])
    return patches, tags


# -- crafted graphs (also fed to the fuzz test) ---------------------------------------------------

def cycle_graph():
    """The head's first MatMul reads Add(x, Reshape(model/Softmax)): the output feeds itself."""
    g = head_graph()
    add_const(g, "shape", np.array([-1, HEAD_IN], np.int32), DT_INT32)
    add_node(g, "reshape", "Reshape", ["model/Softmax", "shape"])
    add_node(g, "mixed", "AddV2", ["model/Placeholder", "reshape"])
    node_named(g, "dense/MatMul").input[0] = "mixed"
    return g


def self_add_graph():
    """The first bias is Add(itself, b1)."""
    g = head_graph()
    add_node(g, "self", "Add", ["self", "b1"])
    node_named(g, "dense/BiasAdd").input[1] = "self"
    return g


def nested_calls_graph(depth: int = 8, fanout: int = 10):
    """``PartitionedCall`` of f0, each f_i calling f_{i+1} ``fanout`` times: fanout**depth nodes."""
    g = GraphDefProto()
    x = add_node(g, "x", "Placeholder", shape=(-1, HEAD_IN))
    set_type(x, "dtype", DT_FLOAT)
    call = add_node(g, "PartitionedCall", "PartitionedCall", ["x"])
    call.attr["f"].func.name = "f0"
    for level in range(depth + 1):
        function = g.library.function.add()
        function.signature.name = f"f{level}"
        function.signature.input_arg.add(name="x")
        function.signature.output_arg.add(name="y")
        if level == depth:
            function.node_def.add(name="id", op="Identity", input=["x"])
            function.ret["y"] = "id:output:0"
            continue
        for i in range(fanout):
            inner = function.node_def.add(name=f"c{i}", op="PartitionedCall", input=["x"])
            inner.attr["f"].func.name = f"f{level + 1}"
        function.ret["y"] = "c0:output:0"
    return g


def nested_constant_calls_graph(depth: int = 7, fanout: int = 4, constant_bytes: int = 1 << 20):
    """A 1-MB constant in f0, each f_i calling f_{i-1} ``fanout`` times: few nodes, but
    ``fanout**(depth - 1)`` copies of the constant (4 GB from a 1-MB file)."""
    g = GraphDefProto()
    bottom = g.library.function.add()
    bottom.signature.name = "f0"
    bottom.signature.output_arg.add(name="y")
    constant = bottom.node_def.add(name="w", op="Const")
    constant.attr["value"].tensor.CopyFrom(tensor_proto(np.zeros(constant_bytes // 4, np.float32)))
    set_type(constant, "dtype", DT_FLOAT)
    bottom.ret["y"] = "w:output:0"
    for level in range(1, depth):
        function = g.library.function.add()
        function.signature.name = f"f{level}"
        function.signature.output_arg.add(name="y")
        for i in range(fanout):
            inner = function.node_def.add(name=f"c{i}", op="PartitionedCall")
            inner.attr["f"].func.name = f"f{level - 1}"
        function.ret["y"] = "c0:output:0"
    add_node(g, "PartitionedCall", "PartitionedCall").attr["f"].func.name = f"f{depth - 1}"
    return g


def broadcast_bomb_graph(copies: int = 40):
    """A bias summed from ``copies`` constants, each one float broadcast to 2**27 elements."""
    g = head_graph()
    previous = None
    for i in range(copies):
        add_const(g, f"fill{i}", shape=(1 << 27,), float_val=[1.0])
        if previous is not None:
            add_node(g, f"sum{i}", "Add", [previous, f"fill{i}"])
        previous = f"fill{i}" if previous is None else f"sum{i}"
    node_named(g, "dense/BiasAdd").input[1] = previous
    return g


def outer_product_bomb_graph():
    """A bias folded from [16384, 1] + [1, 16384] constants: 2**28 elements from 128 KB."""
    g = head_graph()
    add_const(g, "column", np.ones((1 << 14, 1), np.float32))
    add_const(g, "row", np.ones((1, 1 << 14), np.float32))
    add_node(g, "outer", "Add", ["column", "row"])
    node_named(g, "dense/BiasAdd").input[1] = "outer"
    return g


def identity_chain_graph(links: int):
    """``links`` Identity nodes between the input and the first MatMul."""
    g = head_graph()
    previous = "model/Placeholder"
    for i in range(links):
        add_node(g, f"id{i}", "Identity", [previous])
        previous = f"id{i}"
    node_named(g, "dense/MatMul").input[0] = previous
    return g


CRAFTED = {"cycle": cycle_graph, "self_add": self_add_graph, "nested_calls": nested_calls_graph,
           "nested_constant_calls": nested_constant_calls_graph,
           "broadcast_bomb": broadcast_bomb_graph, "outer_product_bomb": outer_product_bomb_graph}


# -- 1-3: hangs and memory blow-ups --------------------------------------------------------------

@pytest.mark.parametrize("value, what", [(np.nan, "NaN or infinite values"),
                                         (np.inf, "NaN or infinite values"),
                                         (-2.8e36, "a value of size 2.8e\\+36, beyond any trained "
                                                   "weight's \\(1e\\+10\\): the file is damaged")])
def test_weights_that_are_not_finite_or_far_too_large_are_refused_at_load(tmp_path, value, what):
    """They loaded, and every output was NaN (JSON output then held a bare NaN); so did a
    weight whose exponent a flipped bit had made huge, which is finite."""
    weights = head_weights()
    weights["k2"][1, 2] = value
    with pytest.raises(GraphError, match=f"the weights of '.*' hold {what}"):
        jaxmir.load(write(tmp_path, "head", head_graph(weights)))


def _with_constant(graph, name: str, edit) -> None:
    """The float32 Const ``name`` of ``graph`` replaced by ``edit(its values)``, in place."""
    node = node_named(graph, name)
    tensor = node.attr["value"].tensor
    values = np.frombuffer(tensor.tensor_content, "<f4").copy() if tensor.tensor_content \
        else np.asarray(tensor.float_val, np.float32)
    values = edit(values)
    del tensor.float_val[:]
    tensor.tensor_content = values.astype("<f4").tobytes()


def _fused_variance(graph) -> str:
    """The Const that is the first FusedBatchNorm's variance (its fifth input)."""
    fused = next(n for n in graph.node if n.op.startswith("FusedBatchNorm"))
    name = fused.input[4].split(":")[0]
    while node_named(graph, name).op == "Identity":
        name = node_named(graph, name).input[0]
    return name


def test_a_variance_that_makes_the_batch_norm_divide_by_nothing_is_refused(tmp_path):
    """A flipped sign bit (variance 1.0 -> -1.0) loaded, and every tag was NaN with status ok."""
    emomusic = shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb")
    dortmund = shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb")
    x = np.random.default_rng(0).standard_normal((2, 1, 200)).astype(np.float32)

    def negative(values):  # channel 3, or the only one
        channel = min(3, values.size - 1)
        values[channel] = -abs(values[channel]) - 1e-3
        return values

    graph = GraphDefProto.FromString(emomusic.read_bytes())  # TF's unfused add/Rsqrt/mul form
    _with_constant(graph, "var", negative)
    broken = write(tmp_path, "emo_negative", graph)
    # what TensorFlow makes of it: the refusal spares users these outputs
    assert np.isnan(run_tf(broken, {"flatten_in_input:0": x}, ["dense_out:0"])[0]).any()
    with pytest.raises(GraphError, match=r"batch norm '.*' has a variance of -.* \(channel 3\) "
                                         r"with epsilon .*; variance \+ epsilon must be > 0"):
        jaxmir.load(broken)
    graph = GraphDefProto.FromString(emomusic.read_bytes())
    _with_constant(graph, "var", lambda values: np.where(np.arange(values.size) == 5, 0, values))
    _with_constant(graph, "onnx_tf_prefix_batch_normalization/add/y", lambda values: 0 * values)
    with pytest.raises(GraphError, match=r"variance of 0 \(channel 5\) with epsilon 0"):
        jaxmir.load(write(tmp_path, "emo_zero", graph))
    graph = GraphDefProto.FromString(dortmund.read_bytes())  # FusedBatchNorm
    _with_constant(graph, _fused_variance(graph), negative)
    with pytest.raises(GraphError, match="variance \\+ epsilon must be > 0"):
        jaxmir.load(write(tmp_path, "fused_negative", graph))
    model = jaxmir.load("msd-musicnn")  # and in a weights file
    variables = jax.tree_util.tree_map(np.array, dict(model.variables))
    variables["batch_stats"]["midend_2"]["block"]["batch_norm"]["var"][7] = -1.0
    save_weights(dataclasses.replace(model, variables=variables), tmp_path / "negative.npz")
    with pytest.raises(WeightsError, match=r"batch_stats/midend_2/block/batch_norm/var' holds a "
                                           r"variance of -1, which with its batch norm's "
                                           r"epsilon \(0.001\) is <= 0: the file is damaged"):
        jaxmir.load(tmp_path / "negative.npz")


def test_a_weights_file_s_variances_are_checked_against_their_own_epsilons(tmp_path):
    """Each batch norm's variance with its own epsilon, as TensorFlow adds them: a zero variance
    with epsilon 0 loaded (every tag NaN); so did one between a config's two epsilons in the
    batch norm of the smaller (the check took the largest for all), and one of -epsilon, which
    float32 adds to 0 (the check added them in float64)."""
    from jaxmir.spec import BatchNorm

    model = jaxmir.load("msd-musicnn")
    patches = np.random.default_rng(0).standard_normal((2, 187, 96)).astype(np.float32)

    def saved(name: str, epsilons: tuple[float, float], where: tuple[str, ...], value: float):
        """The model with batch-norm epsilons (mid-end, head) and variance 7 of ``where``."""
        config = {**model.spec.config, "bn_epsilon": epsilons[0],
                  "head": tuple(BatchNorm(epsilons[1]) if isinstance(layer, BatchNorm) else layer
                                for layer in model.spec.config["head"])}
        variables = jax.tree_util.tree_map(np.array, dict(model.variables))
        node = variables["batch_stats"]
        for key in where:
            node = node[key]
        node["var"][7] = value
        path = tmp_path / f"{name}.npz"
        save_weights(dataclasses.replace(model, spec=dataclasses.replace(model.spec, config=config),
                                         variables=variables), path)
        return path

    midend, head = ("midend_2", "block", "batch_norm"), ("head", "batch_norm_0")
    refused = {"zero": ((0.0, 0.0), midend, 0.0, "0", "0"),
               "smaller": ((1e-3, 1e-2), midend, -5e-3, "-0.005", "0.001"),
               "float32": ((1e-3, 1e-2), head, -1e-2, "-0.01", "0.01")}
    for name, (epsilons, where, value, shown, epsilon) in refused.items():
        path = saved(name, epsilons, where, value)
        with pytest.raises(WeightsError, match=rf"{'/'.join(where)}/var' holds a variance of "
                                               rf"{shown}, which with its batch norm's epsilon "
                                               rf"\({epsilon}\) is <= 0"):
            jaxmir.load(path)
    # what the refusal spares, where the sum is 0 in float32 only (one program with "between")
    unchecked = load_weights(path, trusted=True)
    assert not np.isfinite(unchecked.apply(patches)["predictions"]).all()
    # in the head's batch norm, whose epsilon is the larger: it divides by sqrt(5e-3)
    between = jaxmir.load(saved("between", (1e-3, 1e-2), head, -5e-3))
    assert np.isfinite(between.apply(patches)["predictions"]).all()


def test_a_variance_below_zero_but_above_minus_epsilon_loads_as_tensorflow_runs_it(tmp_path):
    """-1e-4 with epsilon 1e-3 divides by sqrt(9e-4): TensorFlow's outputs are finite, and the
    first refusal of negative variances refused it all the same."""
    graph = GraphDefProto.FromString(
        shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb").read_bytes())
    variance = next(n.input[4].split(":")[0] for n in graph.node
                    if n.op.startswith("FusedBatchNorm") and "batch_normalization_1/" in n.name)
    while node_named(graph, variance).op == "Identity":
        variance = node_named(graph, variance).input[0]

    def slightly_negative(values):
        values[0] = -1e-4
        return values

    _with_constant(graph, variance, slightly_negative)
    path = write(tmp_path, "slightly_negative", graph)
    patches, reference = musicnn_tf_tags(path, 2)
    assert np.isfinite(reference).all()
    found = np.asarray(jaxmir.load(path).apply(patches)["predictions"])
    np.testing.assert_allclose(found, reference, rtol=0, atol=1e-5)  # float32 probabilities
    model = jaxmir.load("msd-musicnn")  # and in a weights file
    variables = jax.tree_util.tree_map(np.array, dict(model.variables))
    variables["batch_stats"]["midend_2"]["block"]["batch_norm"]["var"][7] = -1e-4
    save_weights(dataclasses.replace(model, variables=variables), tmp_path / "slight.npz")
    assert np.isfinite(np.asarray(jaxmir.load(tmp_path / "slight.npz").apply(patches)[
        "predictions"])).all()


@pytest.mark.parametrize("within, epsilon, matters, seed", [
    ("batch_normalization_1/", 0.5, 1e-3, 4),  # other epsilons than the input's
    ("", None, 1e-4, 8),                       # none at all: TensorFlow's default, 1e-4
])
def test_batch_norms_of_other_epsilons_than_the_input_s_load_as_tensorflow_runs_them(
        tmp_path, within, epsilon, matters, seed):
    """The model keeps one epsilon, the input batch norm's, and moves each other batch norm's
    difference from it into its variance: a graph whose layers use other epsilons than its
    input's, or whose batch norms have none (FusedBatchNorm's epsilon is optional), computes
    as TensorFlow computes it."""
    graph = fixture_graph(DORTMUND)
    edited = [n for n in graph.node if n.op.startswith("FusedBatchNorm") and within in n.name]
    assert edited
    for node in edited:
        if epsilon is None:
            del node.attr["epsilon"]
        else:
            node.attr["epsilon"].f = epsilon
    path = write(tmp_path, "epsilons", graph)
    patches, reference = musicnn_tf_tags(path, seed)
    _, original = musicnn_tf_tags(shared_fixture(DORTMUND), seed)
    assert np.max(np.abs(reference - original)) > matters  # the edit changes what TF computes
    found = np.asarray(jaxmir.load(path).apply(patches)["predictions"])
    np.testing.assert_allclose(found, reference, rtol=0, atol=1e-5)  # float32 probabilities


def test_a_batch_norm_without_is_training_computes_batch_statistics_and_is_refused(tmp_path):
    """FusedBatchNorm's is_training is optional and TensorFlow's default is True (a graph
    written with strip_default_attrs drops it where it is True): TensorFlow then normalises
    by the batch's statistics. The graph loaded as one in inference mode, its tags 0.69 off
    TensorFlow's; jaxmir, which computes no batch statistics, refuses it by name."""
    graph = fixture_graph(DORTMUND)
    edited = next(n for n in graph.node
                  if n.op.startswith("FusedBatchNorm") and "batch_normalization_1/" in n.name)
    del edited.attr["is_training"]
    path = write(tmp_path, "no_is_training", graph)
    _, reference = musicnn_tf_tags(path, 3)
    _, original = musicnn_tf_tags(shared_fixture(DORTMUND), 3)
    assert np.max(np.abs(reference - original)) > 0.1  # TF takes the batch's statistics
    with pytest.raises(UnsupportedGraphError, match=rf"batch norm '{edited.name}' computes batch "
                       r"statistics .*no is_training attribute: TensorFlow's default is True"):
        jaxmir.load(path)


@pytest.mark.parametrize("node, attr", [
    ("model/vggish/1CNN/Conv2D", "padding"),
    ("model/vggish/1CNN/Conv2D", "strides"),
    ("model/vggish/1CNN/Conv2D", "T"),
    ("model/vggish/2CNN/BiasAdd", "T"),
    ("model/vggish/dense/MatMul", "T"),
])
def test_a_layer_without_a_required_attribute_is_refused_as_tensorflow_refuses_it(tmp_path, node,
                                                                                    attr):
    """Conv2D's padding and strides, and the T of the ops jaxmir reads as layers, have no default
    in TensorFlow, which does not run a graph that lacks one; jaxmir loaded it as VALID, stride 1
    or float32 (the defaults it gave them), a model TensorFlow never computed."""
    g = fixture_graph(VGG4)
    edited = node_named(g, node)
    del edited.attr[attr]
    path = write(tmp_path, f"without_{attr}", g)
    feeds = {"model/Placeholder:0": np.zeros((1, 128, 128), np.float32),
             "model/Placeholder_1:0": False}
    with pytest.raises(ValueError, match=f"NodeDef missing attr '{attr}' from Op<name="
                                         f"{edited.op};"):
        run_tf(path, feeds, ["model/Softmax:0"])
    with pytest.raises(GraphError, match=rf"'{node}' \({edited.op}\) has no attribute '{attr}'"):
        jaxmir.load(path)


@pytest.mark.parametrize("pool, attr, axis, size", [
    ("model/max_pooling2d/MaxPool", "ksize", 2, 58),    # timbral 7x38: 59 bands, one short
    ("model/max_pooling2d_2/MaxPool", "ksize", 2, 64),  # temporal: 96 bands
    ("model/max_pooling2d/MaxPool", "ksize", 1, 2),     # two frames at once
    ("model/max_pooling2d/MaxPool", "strides", 1, 2),   # every other frame (0.063 off)
])
def test_a_front_end_pool_that_is_not_musicnn_s_is_refused(tmp_path, pool, attr, axis, size):
    """Its window was not read: the graph loaded and gave the original's tags (TensorFlow's
    outputs moved by up to 1.6e-2)."""
    graph = GraphDefProto.FromString(
        shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb").read_bytes())
    node_named(graph, pool).attr[attr].list.i[axis] = size
    with pytest.raises(GraphError, match="the front-end's max-pools must each take all the "
                                         "frequency bands of their convolution at once"):
        jaxmir.load(write(tmp_path, "pool", graph))


@pytest.mark.parametrize("window", [59, 100])
def test_a_same_padded_pool_wider_than_the_bands_loads_as_tensorflow_runs_it(tmp_path, window):
    """A SAME max-pool 100 bands wide over 59 takes them all, as MusiCNN's 59-wide one does;
    so does a SAME one exactly 59 wide (the bound itself)."""
    graph = GraphDefProto.FromString(
        shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb").read_bytes())
    pool = node_named(graph, "model/max_pooling2d/MaxPool")
    pool.attr["ksize"].list.i[2] = pool.attr["strides"].list.i[2] = window
    pool.attr["padding"].s = b"SAME"
    path = write(tmp_path, "wide_pool", graph)
    patches, reference = musicnn_tf_tags(path, 6)
    found = np.asarray(jaxmir.load(path).apply(patches)["predictions"])
    np.testing.assert_allclose(found, reference, rtol=0, atol=1e-5)  # float32 probabilities


def _dortmund_padded_with(border: np.ndarray):
    """The Dortmund fixture whose timbral Pad is a PadV2 filling its border with ``border``."""
    graph = fixture_graph(DORTMUND)
    node_named(graph, "model/Pad").op = "PadV2"
    add_const(graph, "border", border)
    node_named(graph, "model/Pad").input.append("border")
    return graph


@pytest.mark.parametrize("fill", [0.0, 5.0])
def test_a_pad_v2_is_read_as_tensorflow_fills_its_border(tmp_path, fill):
    """The border value of a PadV2 before a timbral convolution was not read: with 5.0 the graph
    loaded and gave the zero-padded model's tags, where TensorFlow's top tag was another."""
    path = write(tmp_path, "pad_v2", _dortmund_padded_with(np.float32(fill)))
    if fill:
        with pytest.raises(GraphError, match=r"'model/Pad' \(PadV2\) pads with 5\.0; jaxmir pads "
                                             "convolutions with zeros"):
            jaxmir.load(path)
        return
    patches, reference = musicnn_tf_tags(path, 7)
    found = np.asarray(jaxmir.load(path).apply(patches)["predictions"])
    np.testing.assert_allclose(found, reference, rtol=0, atol=1e-5)  # float32 probabilities


def test_a_pad_v2_whose_border_is_not_a_scalar_is_refused_as_tensorflow_refuses_it(tmp_path):
    """A border value of shape [1], zero: TensorFlow does not run the graph (its PadV2 takes a
    scalar), so jaxmir does not load it as a zero-padded model either."""
    tf = require("tensorflow")
    path = write(tmp_path, "pad_v2_vector", _dortmund_padded_with(np.zeros(1, np.float32)))
    patches = np.zeros((1, 187, 96), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="scalar"):
        run_tf(path, {"model/Placeholder:0": patches}, ["model/Sigmoid:0"])
    with pytest.raises(GraphError, match=r"'model/Pad' \(PadV2\) fills its border with a value "
                                         r"of shape \[1\]; TensorFlow takes a scalar"):
        jaxmir.load(path)


def test_weights_that_overflow_float32_give_an_error_not_nan_tags(tmp_path, capsys):
    """Every kernel at +-9e9 (each weight finite, within the 1e10 bound): the model's outputs were
    NaN, shown as tags with status ok and written as NaN in JSON lines (not JSON)."""
    from jaxmir import cli
    from jaxmir.tfgraph.graphdef import decode_tensor

    graph = GraphDefProto.FromString(
        shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb").read_bytes())
    for node in graph.node:
        if node.op == "Const" and node.name.endswith("kernel"):
            kernel = decode_tensor(node.attr["value"].tensor)
            node.attr["value"].tensor.CopyFrom(
                tensor_proto(np.where(kernel < 0, -9e9, 9e9).astype(np.float32)))
    model = str(write(tmp_path, "overflowing", graph))
    audio = str(shared_fixture("audio/vignesh.wav"))
    said = "hold NaN or infinity (9 of 9 values) on finite audio: its weights overflow float32"
    assert cli.main(["tag", audio, "--model", model]) == 1
    assert said in capsys.readouterr().err
    rows = tmp_path / "rows.jsonl"
    assert cli.main(["tag", audio, "--model", model, "-o", str(rows), "--no-progress"]) == 1
    row = json.loads(rows.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert row["status"] == "error" and said in row["error"], row
    # a damaged file's problem stays with its error row
    import soundfile

    whole = tmp_path / "whole.wav"
    soundfile.write(whole, np.random.default_rng(3).uniform(-0.3, 0.3, 6 * 16000), 16000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 3 // 4])
    rows = tmp_path / "cut.jsonl"
    assert cli.main(["tag", str(cut), "--model", model, "-o", str(rows), "--no-progress"]) == 1
    row = json.loads(rows.read_text())
    assert "predictions hold NaN or infinity (" in row["error"], row
    assert row["error"].endswith("here (truncated audio: decoded 4.50 s of the 6.00 s its header "
                                 "declares)"), row
    # infinity is refused as NaN is (an embedding or a regression has no softmax to make it NaN)
    from jaxmir.collection.rows import check_finite

    for value in (np.inf, -np.inf, np.nan):
        with pytest.raises(JaxmirError, match=r"hold NaN or infinity \(1 of 2 values\)"):
            check_finite(np.array([[value, 1.0]], np.float32))


def test_calls_nested_eight_levels_are_inlined_nine_refused(monkeypatch):
    """Eight levels of calls (the top-level call, then f0 calling f1 ... f6 calling f7) were
    refused as "nested deeper than 8 levels"; nine are refused, before the ninth is copied."""
    from jaxmir.tfgraph.graphdef import LoadBudget

    copies, copy = [], LoadBudget.copy_nodes
    monkeypatch.setattr(LoadBudget, "copy_nodes",
                        lambda self, *args: copies.append(1) or copy(self, *args))
    Graph.from_bytes(nested_calls_graph(depth=7, fanout=1).SerializeToString())
    assert len(copies) == 8
    copies.clear()
    with pytest.raises(GraphError, match="function calls nested deeper than 8 levels"):
        Graph.from_bytes(nested_calls_graph(depth=8, fanout=1).SerializeToString())
    assert len(copies) == 8


def test_a_constant_of_rank_33_is_refused(tmp_path):
    """The rank bound is 32 (NumPy's own is 64): one more is refused by it."""
    with pytest.raises(GraphError, match="a constant of rank 33; jaxmir reads constants of rank "
                                         "32 or less"):
        jaxmir.load(write(tmp_path, "rank33", _edit_head(_reshape_const("b1", [1] * 33,
                                                                          float_val=[1.0]))))


def test_nodes_of_eight_bytes_are_refused_by_their_count(tmp_path):
    """The node budget is a node per 16 bytes of file (protobuf takes ~130 bytes of memory to
    parse a node): 131,072 nodes of 8 bytes in 1 MB ask twice that, refused before parsing."""
    node = _length_delimited(1, _length_delimited(1, b"abcd"))  # a NodeDef named "abcd"
    assert len(node) == 8
    bomb = tmp_path / "eight.pb"
    bomb.write_bytes(node * (1 << 17))
    with pytest.raises(GraphError, match=r"needs more than \d+ graph nodes \(after inlining"):
        Graph.from_file(bomb)


def test_nodes_after_an_unknown_fixed64_field_are_counted(tmp_path):
    """A field jaxmir does not declare (a newer TensorFlow's) of wire type 1 spans 8 bytes, as
    protobuf reads it; the count on the wire skips the 8 and counts the nodes that follow (its
    last 4 bytes, read as a field, would be a group and end the count)."""
    unknown = bytes([15 << 3 | 1]) + b"\0" * 4 + bytes([1 << 3 | 3]) + b"\0" * 3
    node = _length_delimited(1, _length_delimited(1, b"abcd"))  # a NodeDef named "abcd"
    assert len(GraphDefProto.FromString(unknown + node).node) == 1  # protobuf: 8 bytes, a node
    bomb = tmp_path / "fixed64.pb"
    bomb.write_bytes(unknown + node * (1 << 17))
    with pytest.raises(GraphError, match=r"needs more than \d+ graph nodes \(after inlining"):
        Graph.from_file(bomb)


def test_a_library_defining_a_function_twice_is_refused(tmp_path):
    """The last definition was taken, and the error that followed named another problem."""
    g = nested_calls_graph(depth=1, fanout=1)
    again = g.library.function.add()
    again.CopyFrom(g.library.function[1])
    with pytest.raises(GraphError, match="the function library defines 'f1' more than once"):
        jaxmir.load(write(tmp_path, "twice", g))


def test_the_head_builder_is_a_valid_model(tmp_path):
    """The graphs below are edits of this one, which loads and computes the head exactly."""
    weights = head_weights()
    model = jaxmir.load(write(tmp_path, "head", head_graph(weights)))
    x = np.random.default_rng(1).standard_normal((5, HEAD_IN)).astype(np.float32)
    # float32 sums of 8 and 4 products of magnitudes ~1: error << 1e-5 on probabilities.
    np.testing.assert_allclose(np.asarray(model.apply(x, ["model/Softmax"])["model/Softmax"]),
                               head_reference(weights, x), atol=1e-5)


@pytest.mark.parametrize("name, message", [
    ("cycle", "cycle"),
    ("self_add", "cycle|depends on itself"),
    ("nested_calls", r"more than \d+ graph nodes \(after inlining"),  # their count, not bytes
    ("nested_constant_calls", "bytes of graph nodes"),  # 3.6 GB and a crash before
    ("broadcast_bomb", "bytes of constants"),
    ("outer_product_bomb", "bytes of constants"),
])
def test_hangs_and_memory_bombs_end_in_a_jaxmir_error(tmp_path, name, message):
    path = write(tmp_path, name, CRAFTED[name]())
    if name == "nested_calls":
        # a few KB asking for 10**8 nodes (3.7 GB and a crash before)
        assert path.stat().st_size < 4096
    outcome = load_guarded([path], cap_mb=2048, timeout_s=60)[str(path)]
    assert outcome.startswith("jaxmir GraphError"), outcome
    assert __import__("re").search(message, outcome), outcome


def test_a_file_of_tiny_nodes_is_refused_before_it_is_parsed(tmp_path):
    """10 MB of empty NodeDefs took 648 MB to parse (protobuf's ~130 bytes a node) before the
    budget refused them; 40 MB took 2 GB. They are now counted on the wire first."""
    tiny = tmp_path / "tiny.pb"
    tiny.write_bytes(b"\x0a\x00" * (5 << 20))  # 5 M nodes in 10 MB
    outcome = load_guarded([tiny], cap_mb=64, timeout_s=60)[str(tiny)]
    assert outcome.startswith("jaxmir GraphError") and "graph nodes" in outcome, outcome


def _length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (lengths below 2**21 here)."""
    size, length = len(payload), b""
    while True:
        length += bytes([(size & 0x7F) | (0x80 if size >> 7 else 0)])
        size >>= 7
        if not size:
            return bytes([field << 3 | 2]) + length + payload


@pytest.mark.parametrize("what, message", [("library", "graph nodes"),
                                           ("inputs", "node inputs and attributes"),
                                           ("attributes", "node inputs and attributes")])
def test_tiny_function_nodes_inputs_and_attributes_are_refused_before_parsing(tmp_path, what,
                                                                              message):
    """Only the graph's own nodes were counted on the wire: 10 M empty nodes in an uncalled
    function (20 MB) took 1.1 GB to load, 7 M one-letter inputs of one node 1.3 GB and 33 s."""
    count = 1 << 21
    if what == "library":
        function = _length_delimited(3, b"") * count  # FunctionDef.node_def
        graph = _length_delimited(2, _length_delimited(1, function))  # library.function
    else:
        field = (_length_delimited(3, b"a") if what == "inputs"  # NodeDef.input
                 else _length_delimited(5, b""))  # NodeDef.attr
        graph = _length_delimited(1, _length_delimited(1, b"x") + field * count)
    bomb = tmp_path / f"{what}.pb"
    bomb.write_bytes(head_graph().SerializeToString() + graph)
    outcome = load_guarded([bomb], cap_mb=64, timeout_s=60)[str(bomb)]
    assert outcome.startswith("jaxmir GraphError") and message in outcome, outcome


def test_budget_grows_with_the_file():
    """A tiny file gets a small budget; the limits scale with its size."""
    small = Graph.from_bytes(head_graph().SerializeToString())
    big = Graph.from_bytes(identity_chain_graph(20_000).SerializeToString())
    assert small.budget.max_bytes < big.budget.max_bytes
    assert small.budget.max_nodes < big.budget.max_nodes


# -- 4: linear in pass-through chains -------------------------------------------------------------

def merge_lattice_graph(merges: int):
    """Placeholder -> ``merges`` Merge nodes, each reading the two before it -> model/Sigmoid."""
    g = GraphDefProto()
    set_type(add_node(g, "in", "Placeholder", shape=(-1, HEAD_IN)), "dtype", DT_FLOAT)
    for i in range(merges):
        add_node(g, f"m{i}", "Merge",
                 ["in" if i < 2 else f"m{i - 1}", "in" if i < 2 else f"m{i - 2}"])
    add_node(g, "model/Sigmoid", "Sigmoid", [f"m{merges - 1}"])
    return g


def test_merges_are_walked_once(monkeypatch):
    """Each walk asked every Merge for its inference input again, and each answer searched up to
    64 nodes above it, uncharged: a 2.8-MB lattice of 100,000 Merges took 189 s to refuse. Now
    a graph's nodes are examined once for all its Merges (counted in inputs read, as the search
    reads them), and charged to the budget."""
    from jaxmir.errors import UnsupportedGraphError
    from jaxmir.tfgraph.graphdef import TensorRef

    parse, parsed = TensorRef.parse.__func__, [0]

    def counting(cls, text):
        parsed[0] += 1
        return parse(cls, text)

    monkeypatch.setattr(TensorRef, "parse", classmethod(counting))
    merges = 4000
    graph = Graph.from_bytes(merge_lattice_graph(merges).SerializeToString())
    parsed[0] = 0
    with pytest.raises(UnsupportedGraphError, match="Merge x4000"):
        import_graph(graph)
    assert parsed[0] < 25 * merges, parsed[0] / merges  # was 270 inputs read per Merge
    assert graph.budget.visits > 2 * merges

def test_identity_chains_are_walked_in_linear_steps():
    """Walk steps (the budget's count) grow like the chain, not its square (was 126 s at 10k)."""
    visits = {}
    for links in (1000, 8000):
        graph = Graph.from_bytes(identity_chain_graph(links).SerializeToString())
        spec = import_graph(graph)
        assert spec.architecture == "head"
        visits[links] = graph.budget.visits
    assert visits[8000] < 8 * visits[1000] * 1.5, visits


def test_a_long_identity_chain_loads_and_computes(tmp_path):
    weights = head_weights(2)
    g = identity_chain_graph(10_000)
    for name, value in weights.items():
        node_named(g, name).attr["value"].tensor.tensor_content = value.tobytes()
    model = jaxmir.load(write(tmp_path, "chain", g))
    x = np.random.default_rng(3).standard_normal((2, HEAD_IN)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.apply(x, ["model/Softmax"])["model/Softmax"]),
                               head_reference(weights, x), atol=1e-5)


def test_a_deep_chain_of_constant_adds_folds_without_recursion(tmp_path):
    """A kernel folded from 10k nested Adds (RecursionError before) loads and is the sum."""
    weights = head_weights(4)
    g = head_graph(weights)
    step = np.full((HEAD_IN, HEAD_HIDDEN), 1.0 / 1024, np.float32)  # exact in float32
    add_const(g, "step", step)
    previous = "k1"
    for i in range(10_000):
        add_node(g, f"add{i}", "AddV2", [previous, "step"])
        previous = f"add{i}"
    node_named(g, "dense/MatMul").input[1] = previous
    model = jaxmir.load(write(tmp_path, "adds", g))
    expected = dict(weights, k1=weights["k1"] + np.float32(10_000 / 1024))
    x = np.random.default_rng(5).standard_normal((3, HEAD_IN)).astype(np.float32)
    # The 10k float32 additions each round at |k1| ~ 10 (ulp 1e-6): up to ~1e-2 drift in the
    # kernel; the reference adds in float32 the same way, so compare against that.
    folded = weights["k1"].copy()
    for _ in range(10_000):
        folded = folded + step
    expected["k1"] = folded
    np.testing.assert_allclose(np.asarray(model.apply(x, ["model/Softmax"])["model/Softmax"]),
                               head_reference(expected, x), atol=1e-5)


def test_a_folded_constant_is_charged_at_least_the_bytes_numpy_makes_of_it():
    """A Reshape of a float64 constant by an int32 shape makes float64 values: the fold is
    charged by the wider operand's item size, not the shape's (half the bytes made)."""
    from jaxmir.tfgraph.walk import InferencePath

    g = GraphDefProto()
    data, shape = np.arange(1000, dtype=np.float64), np.array([10, 100], np.int32)
    add_const(g, "data", data, DT_DOUBLE)
    add_const(g, "shape", shape, DT_INT32)
    add_node(g, "reshaped", "Reshape", ["data", "shape"])
    graph = Graph.from_bytes(g.SerializeToString())
    folded = InferencePath(graph, "reshaped").value("reshaped")
    np.testing.assert_array_equal(folded, data.reshape(10, 100))
    assert graph.budget.bytes - data.nbytes - shape.nbytes >= folded.nbytes


# -- 5 and 6: every malformed op is a jaxmir error ---------------------------------------------

def _edit_head(edit):
    g = head_graph()
    edit(g)
    return g


def _edit_vgg4(edit):
    g = fixture_graph(VGG4)
    edit(g)
    return g


def _drop_inputs(name: str, keep: int):
    def edit(g):
        node = node_named(g, name)
        kept = list(node.input[:keep])
        del node.input[:]
        node.input.extend(kept)
    return edit


def _reshape_const(name: str, shape, **fields):
    def edit(g):
        node = node_named(g, name)
        node.attr["value"].tensor.CopyFrom(tensor_proto(dtype=DT_FLOAT, shape=shape, **fields))
    return edit


def _set_attr(name: str, key: str, value):
    def edit(g):
        node = node_named(g, name)
        if key in node.attr:
            del node.attr[key]
        if value is not None:
            add_node(g, "_tmp", "NoOp", **{key: value})
            node.attr[key].CopyFrom(node_named(g, "_tmp").attr[key])
            del g.node[-1]
    return edit


VGG4_POOL = "model/vggish/max_pooling2d/MaxPool"


def _vgg4_pool_with(key: str, value):
    """A maker of the VGG fixture whose first MaxPool's ``key`` is ``value`` (None: none)."""
    return lambda: _edit_vgg4(_set_attr(VGG4_POOL, key, value))


def _int32_kernel(g):
    node = node_named(g, "k1")
    node.attr["dtype"].type = DT_INT32
    node.attr["value"].tensor.dtype = DT_INT32  # the same float bytes, now read as int32


def _declared_float_holding_int32(g):
    node_named(g, "k1").attr["value"].tensor.dtype = DT_INT32


def _conv_strides_of_bools(g):
    strides = node_named(g, "model/vggish/1CNN/Conv2D").attr["strides"]
    strides.list.Clear()
    strides.list.b.extend([True] * 4)  # a list(bool) where Conv2D takes list(int)


def _identity_without_input(g):
    add_node(g, "k1/read", "Identity")
    node_named(g, "dense/MatMul").input[1] = "k1/read"


def _duplicate(g):
    add_node(g, "dense/BiasAdd", "BiasAdd", ["dense/MatMul", "b2"])


def _port(port: str):
    def edit(g):
        node_named(g, "dense/MatMul").input[1] = f"k1:{port}"
    return edit


def _control_input_first(g):
    node = node_named(g, "dense/MatMul")
    node.input.insert(0, "^b1")


def _call_of_fewer_inputs():
    """A call passing one input to a function of two (the second unused)."""
    g = nested_calls_graph(depth=1, fanout=1)
    g.library.function[0].signature.input_arg.add(name="unused")
    return g


def _no_nodes():
    g = head_graph()
    del g.node[:]
    g.versions.producer = 1  # a GraphDef that parses, its file not empty
    return g


def _identity_n_read_past_its_data_inputs(g):
    """``IdentityN(decoy, ^decoy)`` has one output; a node off the inference path reads a second."""
    add_const(g, "decoy", np.zeros((1,), np.float32))
    add_node(g, "idn", "IdentityN", ["decoy", "^decoy"])
    add_node(g, "user", "Identity", ["idn:1"])


def _function_returning_nothing(g):
    identity_function(g, ["a"], "", node="idn")
    add_node(g, "call", "PartitionedCall", ["dense_1/MatMul"]).attr["f"].func.name = "f"


def _bias_add_as_add_v2_typed_by_a_list(g):
    """A dense bias added by AddV2 whose ``T`` is a list of dtypes (TensorFlow's is one dtype)."""
    bias = node_named(g, "dense/BiasAdd")
    bias.op = "AddV2"
    bias.attr["T"].list.type.append(DT_FLOAT)


def _append_input(name: str, source: str):
    return lambda g: node_named(g, name).input.append(source)


def _second_bias(after: str, reader: str):
    """``AddV2(after, c)`` read by ``reader``: TensorFlow adds it, a bias where no layer has one."""
    def edit(g):
        add_const(g, "c", np.full(HEAD_HIDDEN, 2.0, np.float32))
        add_node(g, "dense/Add2", "AddV2", [after, "c"])
        node_named(g, reader).input[0] = "dense/Add2"
    return edit


def _cut_batch_norm(prefix: str, size: int):
    """A batch norm's four vectors, ``size`` long."""
    def edit(g):
        for vector in ("gamma", "beta", "moving_mean", "moving_variance"):
            _reshape_const(f"{prefix}/{vector}", [size], float_val=[1.0])(g)
    return edit


def _swap_conv_channels(g):
    node = node_named(g, "vggish/1CNN/kernel")
    tensor = node.attr["value"].tensor
    kernel = np.frombuffer(tensor.tensor_content, "<f4").reshape(3, 3, 1, 32)
    swapped = np.ascontiguousarray(kernel.transpose(0, 1, 3, 2))
    tensor.CopyFrom(tensor_proto(swapped))


MALFORMED = {
    # 5: Python errors before
    "identity_without_input": (lambda: _edit_head(_identity_without_input),
                               "Identity.*0 data inputs"),
    "matmul_missing_input": (lambda: _edit_head(_drop_inputs("dense/MatMul", 1)),
                             "MatMul.*1 data inputs"),
    "conv_without_kernel": (lambda: _edit_vgg4(_drop_inputs("model/vggish/1CNN/Conv2D", 1)),
                            "Conv2D.*1 data inputs"),
    "maxpool_ksize_2": (_vgg4_pool_with("ksize", [2, 2]), "ksize \\[2, 2\\]"),
    "maxpool_without_ksize": (_vgg4_pool_with("ksize", None), "no attribute 'ksize'"),
    "maxpool_over_channels": (_vgg4_pool_with("ksize", [1, 2, 2, 2]),
                              r"ksize \[1, 2, 2, 2\]; expected \[1, height, width, 1\]"),
    # a window over the batch (TensorFlow refuses it), one of no rows, a stride over the batch
    "maxpool_over_the_batch": (_vgg4_pool_with("ksize", [2, 2, 2, 1]),
                               r"ksize \[2, 2, 2, 1\]; expected \[1, height, width, 1\]"),
    "maxpool_window_of_no_rows": (_vgg4_pool_with("ksize", [1, 0, 2, 1]),
                                  r"ksize \[1, 0, 2, 1\]; expected \[1, height, width, 1\] with "
                                  "positive sizes"),
    "maxpool_strides_over_the_batch": (_vgg4_pool_with("strides", [2, 2, 2, 1]),
                                       r"strides \[2, 2, 2, 1\]; expected \[1, height, width, "
                                       r"1\]"),
    "rank_100_const": (lambda: _edit_head(_reshape_const("b1", [1] * 100, float_val=[1.0])),
                       "rank 100"),
    "batch_norm_3_inputs": (lambda: _edit_vgg4(_drop_inputs(
        "model/vggish/batch_normalization_1/cond/FusedBatchNorm_1", 3)),
                            "FusedBatchNorm.*3 data inputs"),
    "epsilon_negative": (lambda: _edit_vgg4(_set_attr(
        "model/vggish/batch_normalization_1/cond/FusedBatchNorm_1", "epsilon", -1e-4)),
        r"has epsilon -9.99\d*e-05; expected a finite value >= 0"),
    "const_shape_unknown": (lambda: _edit_head(_reshape_const("b1", [-1], float_val=[1.0])),
                            r"a constant must have a fully known shape, got \(-1,\)"),
    "const_shape_two_unknown": (lambda: _edit_head(_reshape_const("b1", [-1, -1],
                                                                  float_val=[1.0])),
                                r"fully known shape, got \(-1, -1\)"),
    "epsilon_string": (lambda: _edit_vgg4(_set_attr(
        "model/vggish/batch_normalization_1/cond/FusedBatchNorm_1", "epsilon", "0.001")),
        "epsilon.*expect(s|ed) a float"),
    "zero_size_overflow": (lambda: _edit_head(_reshape_const("b1", [0, 1 << 62, 1 << 62])),
                           "larger than jaxmir accepts"),
    "placeholder_rank_4_vgg": (lambda: _edit_vgg4(_set_attr("model/Placeholder", "shape",
                                                            (-1, 128, 128, 1))), "shape"),
    # 6: silently wrong models before
    "int32_kernel_of_float_bytes": (lambda: _edit_head(_int32_kernel), "int32.*float"),
    "declared_dtype_mismatch": (lambda: _edit_head(_declared_float_holding_int32),
                                "declared float32 but holds a int32"),
    "duplicate_names": (lambda: _edit_head(_duplicate), "two nodes are named 'dense/BiasAdd'"),
    "port_out_of_range": (lambda: _edit_head(_port("3")), "output 3 of 'k1'"),
    "port_one_of_a_const": (lambda: _edit_head(_port("1")),
                            "output 1 of 'k1' \\(Const\\), which has 1 output"),
    "matmul_transposing_its_input": (lambda: _edit_head(_set_attr("dense/MatMul", "transpose_a",
                                                                  True)),
                                     "MatMul 'dense/MatMul' transposes its input"),
    "data_input_after_control": (lambda: _edit_head(_control_input_first),
                                 "data input 'model/Placeholder' comes after a control input"),
    "call_of_fewer_inputs": (_call_of_fewer_inputs, r"'PartitionedCall' passes 1 input\(s\) to "
                                                    r"a function of 2 argument\(s\)"),
    "port_negative": (lambda: _edit_head(_port("-1")), "not a tensor reference"),
    "port_of_5000_digits": (lambda: _edit_head(_port("1" * 5000)),  # Python's int() refused it
                            r"'k1:1{77}\.\.\.' is not a tensor reference"),
    "placeholder_shape_an_int": (lambda: _edit_head(_set_attr("model/Placeholder", "shape", 8)),
                                 "'shape' is an int; Placeholder expects a shape"),
    # 7: accepted before, then a foreign error at apply
    "conv_channels_swapped": (lambda: _edit_vgg4(_swap_conv_channels), "1CNN.*32"),
    "dense_bias_wrong_length": (lambda: _edit_head(_reshape_const(
        "b2", [HEAD_OUT - 1], float_val=[1.0, 2.0])), "bias of dense layer.*3 units"),
    "conv_bias_wrong_length": (lambda: _edit_vgg4(_reshape_const(
        "vggish/2CNN/bias", [31], float_val=[0.0] * 31)), "bias of Conv2D.*32 filters"),
    # 8: checks no test reached before (mutation testing): without each, the graph loaded or
    # failed at a later check
    "relu_of_two_inputs": (lambda: _edit_head(_append_input("dense/Relu", "b1")),
                           r"'dense/Relu' \(Relu\) has 2 data inputs; Relu takes 1"),
    "second_dense_bias": (lambda: _edit_head(_second_bias("dense/BiasAdd", "dense/Relu")),
                          "the dense head has op AddV2 at 'dense/Add2', which jaxmir does not "
                          "support"),
    "bias_after_the_relu": (lambda: _edit_head(_second_bias("dense/Relu", "dense_1/MatMul")),
                            "the dense head has op AddV2 at 'dense/Add2'"),  # not a KeyError
    "second_kernel_5_wide": (lambda: _edit_head(_reshape_const("k2", [5, HEAD_OUT])),
                             "MatMul 'dense_1/MatMul' takes 5 features but the dense layer "
                             "before it gives 4"),
    "empty_dense_kernel": (lambda: _edit_head(_reshape_const("k1", [HEAD_IN, 0])),
                           r"'dense/MatMul' has a kernel of shape \[8, 0\]; expected 2 non-empty"),
    "conv_batch_norm_31_of_32": (lambda: _edit_vgg4(_cut_batch_norm(
        "vggish/batch_normalization_1", 31)), "after Conv2D 'model/vggish/1CNN/Conv2D' "
                                 "normalises 31 channels; the convolution has 32"),
    "dense_batch_norm_199_of_200": (lambda: _edit_conv(DORTMUND, _cut_batch_norm(
        "batch_normalization_10", 199)), "normalises 199 features; the dense layer before it "
                                    "has 200"),
    "no_nodes": (_no_nodes, "parsed as protobuf but holds no graph nodes"),
    "a_node_without_a_name": (lambda: _edit_head(lambda g: add_const(
        g, "", np.zeros((1,), np.float32))), "a node has no name; this is not a valid GraphDef"),
    "identity_n_read_past_its_data_inputs": (lambda: _edit_head(
        _identity_n_read_past_its_data_inputs),
        r"reads output 1 of 'idn' \(IdentityN\), which has 1 output\(s\)"),
    "function_returning_nothing": (lambda: _edit_head(_function_returning_nothing),
                                   "function 'f' called by 'call' has no first output to return"),
    "conv_strides_of_bools": (lambda: _edit_vgg4(_conv_strides_of_bools),
                              r"'strides' of 'model/vggish/1CNN/Conv2D' \(Conv2D\) is \[True, "
                              r"True, True, True\]; expected a list of ints"),
    "placeholder_of_no_frames": (lambda: _edit_vgg4(_set_attr("model/Placeholder", "shape",
                                                              (-1, 0, 128))),
                                 r"has shape \(-1, 0, 128\); jaxmir needs a batch axis and 2 "
                                 "known sizes"),
    # a raw TypeError (unhashable list) where the bias's dtype was named
    "add_bias_typed_by_a_list": (lambda: _edit_head(_bias_add_as_add_v2_typed_by_a_list),
                                 "attribute 'T' is a list; AddV2 expects a dtype"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ops_raise_jaxmir_errors(tmp_path, case):
    build, message = MALFORMED[case]
    path = write(tmp_path, case, build())
    with pytest.raises(JaxmirError, match=message):
        jaxmir.load(path)


def _musicnn_input_rank_2(g):
    _set_attr("model/Placeholder", "shape", (-1, 187))(g)


def _vgg4_pool_flip(g):
    """One bit flipped in the last pool's window height: 2 -> 130, wider than its 8x8 input."""
    node = node_named(g, "model/vggish/max_pooling2d_4/MaxPool")
    node.attr["ksize"].list.i[1] ^= 128


NEEDS_CONVERT = {
    # convert.py must call walk.input_shape(graph, node, 2) (see the report for issue 12)
    "musicnn_placeholder_rank_2": (lambda: _edit_conv(DORTMUND, _musicnn_input_rank_2),
                                   "input 'model/Placeholder' has shape"),
    # convert.py must call walk.conv_chain_shapes, or check the module against its variables
    "maxpool_window_bit_flip": (lambda: _edit_conv(VGG4, _vgg4_pool_flip), "MaxPool|window|shape"),
}


def _edit_conv(relative, edit):
    g = fixture_graph(relative)
    edit(g)
    return g


def _int32_const(name: str, value):
    def edit(g):
        node_named(g, name).attr["value"].tensor.CopyFrom(
            tensor_proto(np.asarray(value, np.int32), DT_INT32))
    return edit


# What jaxmir does not compute is refused by name: each was loaded before as if it were what
# jaxmir computes (a stride of 1, a max over time, no channels padded), other numbers than TF's
OTHER_ARITHMETIC = {
    "conv_strided": (VGG4, _set_attr("model/vggish/1CNN/Conv2D", "strides", [1, 2, 2, 1]),
                     r"has strides \[1, 2, 2, 1\]; jaxmir supports 1"),
    "conv_valid": (VGG4, _set_attr("model/vggish/5CNN/Conv2D", "padding", "VALID"),
                   "'model/vggish/5CNN/Conv2D' pads VALID"),  # not computed as SAME
    "conv_dilated": (VGG4, _set_attr("model/vggish/1CNN/Conv2D", "dilations", [1, 2, 2, 1]),
                     r"has dilations \[1, 2, 2, 1\]; jaxmir supports 1"),
    "conv_nchw": (VGG4, _set_attr("model/vggish/1CNN/Conv2D", "data_format", "NCHW"),
                  "Conv2D 'model/vggish/1CNN/Conv2D' is NCHW; only NHWC"),
    "batch_norm_nchw": (VGG4, _set_attr("model/vggish/batch_normalization_1/cond/FusedBatchNorm_1",
                                        "data_format", "NCHW"), "batch_normalization_1.* is NCHW"),
    "max_pool_nchw": (VGG4, _set_attr(VGG4_POOL, "data_format", "NCHW"),
                      "max_pooling2d/MaxPool.* NCHW"),
    "max_over_mel": (DORTMUND, _int32_const("model/Max/reduction_indices", 2),
                     "'model/Max' must pool over time"),
    "mean_over_mel": (DORTMUND, _int32_const("model/moments/mean/reduction_indices", [2]),
                      "'model/moments/mean' must pool over time"),
    "frames_padded_2_and_4": (DORTMUND, _int32_const("model/Pad/paddings",
                                                     [[0, 0], [2, 4], [0, 0], [0, 0]]),
                              "3 frames of zero padding on each side"),
    "frames_cropped": (DORTMUND, _int32_const("model/Pad/paddings",
                                              [[0, 0], [-3, 3], [0, 0], [0, 0]]),
                       r"pads \[\[0, 0\], \[-3, 3\], \[0, 0\], \[0, 0\]\]; expected \[4, 2\] "
                       "non-negative amounts"),
    "midend_transposed_otherwise": (DORTMUND, _int32_const("model/transpose_1/perm", [0, 2, 1, 3]),
                                    r"must be transposed to \[batch, time, filters, 1\] \(perm "
                                    r"\[0, 1, 3, 2\]\)"),
    "elu_after_a_front_end_conv": (DORTMUND, lambda g: setattr(node_named(
        g, "model/conv2d/Relu"), "op", "Elu"), "looks like MusiCNN but every convolution must "
                                   "be followed by ReLU"),
    "mid_end_5_frames_tall": (DORTMUND, _reshape_const("conv2d_5/kernel", [5, 561, 1, 64],
                                                       float_val=[0.0]),
                              "timbral and mid-end convolutions must be 7 frames tall"),
    "channels_padded": (DORTMUND, _int32_const("model/Pad/paddings",
                                               [[0, 0], [3, 3], [0, 0], [1, 1]]),
                        r"'model/Pad' pads \[\[0, 0\], \[3, 3\], \[0, 0\], \[1, 1\]\] before"),
    # TensorFlow pads the batch with two all-zero patches: two more rows of tags than patches
    "batch_padded": (DORTMUND, _int32_const("model/Pad/paddings",
                                            [[1, 1], [3, 3], [0, 0], [0, 0]]),
                     r"'model/Pad' pads \[\[1, 1\], \[3, 3\], \[0, 0\], \[0, 0\]\] before"),
}


@pytest.mark.parametrize("case", sorted(OTHER_ARITHMETIC))
def test_arithmetic_jaxmir_does_not_compute_is_refused(tmp_path, case):
    """Each edit of a real graph asks for arithmetic jaxmir's modules do not compute: refused by
    name, not loaded as the arithmetic they do compute."""
    relative, edit, message = OTHER_ARITHMETIC[case]
    with pytest.raises(UnsupportedGraphError, match=message):
        jaxmir.load(write(tmp_path, case, _edit_conv(relative, edit)))


@pytest.mark.parametrize("case", sorted(NEEDS_CONVERT))
def test_malformed_conv_nets_raise_jaxmir_errors_at_load(tmp_path, case):
    build, message = NEEDS_CONVERT[case]
    path = write(tmp_path, case, build())
    with pytest.raises(JaxmirError, match=message):
        jaxmir.load(path)  # refused at load, not left to fail in apply


def test_walk_checks_a_pool_window_against_its_input():
    """What convert.py is to call: the flipped window is refused with the node's name."""
    from jaxmir.tfgraph.walk import InferencePath, conv_chain_shapes
    g = fixture_graph(VGG4)
    _vgg4_pool_flip(g)
    graph = Graph.from_bytes(g.SerializeToString())
    path = InferencePath(graph, "model/Softmax")
    convs = [graph.nodes[f"model/vggish/{i}CNN/Conv2D"] for i in range(1, 6)]
    layers = [path.conv_layer(c) for c in convs]
    with pytest.raises(GraphError, match="max_pooling2d_4/MaxPool.*130x2 VALID window over a 8x8"):
        conv_chain_shapes(layers, (128, 128))
    good = Graph.from_file(shared_fixture(VGG4))
    good_path = InferencePath(good, "model/Softmax")
    shapes = conv_chain_shapes([good_path.conv_layer(good.nodes[c.name]) for c in convs],
                               (128, 128))
    assert shapes[-1] == (4, 4, 32)  # 4*4*32 = 512, the dense kernel's input


def test_a_window_as_large_as_its_input_fits_and_a_larger_kernel_is_refused():
    """The bounds of the shapes a graph's convolutions and pools are checked against: a VALID
    pool as large as its input gives one value (it was refused as not fitting by an off-by-one);
    a VALID kernel one larger than its input gives none (it was let through)."""
    from jaxmir.tfgraph.walk import ConvLayer, conv_output, pool_output

    assert pool_output((4, 4), ((4, 4), (1, 1), "VALID"), "p") == (1, 1)
    with pytest.raises(UnsupportedGraphError, match="'p' has a 5x4 VALID window over a 4x4"):
        pool_output((4, 4), ((5, 4), (1, 1), "VALID"), "p")

    def layer(height: int) -> ConvLayer:
        return ConvLayer(kernel=np.zeros((height, 3, 1, 2), np.float32),
                         bias=np.zeros(2, np.float32), padding="VALID", activation="relu",
                         batch_norm=None, pool=None, conv_node="c", output_node="c")

    assert conv_output((3, 3), layer(3)) == (1, 1)
    with pytest.raises(UnsupportedGraphError, match="'c' has a 4x3 kernel, larger than the 3x3"):
        conv_output((3, 3), layer(4))


def test_a_same_pool_s_output_rounds_up_as_the_pool_that_runs_it():
    """A SAME pool gives ceil(size / stride) values an axis, as XLA's (which runs the model)
    does; VGGish's even sizes never told rounding up from rounding down."""
    from jaxmir.tfgraph.walk import pool_output

    for size, window, strides in (((5, 7), (2, 2), (2, 2)), ((9, 4), (3, 1), (4, 3))):
        ran = jax.lax.reduce_window(np.zeros(size, np.float32), -np.inf, jax.lax.max, window,
                                    strides, "SAME")
        assert pool_output(size, (window, strides, "SAME"), "p") == ran.shape


def test_a_matmul_of_a_transposed_kernel_is_read_as_tensorflow_multiplies(tmp_path):
    """``transpose_b``: the kernel stored [out, in]; no test had one (ignoring the flag loaded
    it as a [3, 4] kernel, or gave wrong numbers where the kernel is square)."""
    weights = head_weights(3)
    g = head_graph(weights)
    _set_attr("dense_1/MatMul", "transpose_b", True)(g)
    node_named(g, "k2").attr["value"].tensor.CopyFrom(
        tensor_proto(np.ascontiguousarray(weights["k2"].T)))
    assert_head_as_its_reference(tmp_path, "transposed", g, weights, seed=3)


def test_a_float_input_with_a_default_is_the_input_as_tensorflow_feeds_it(tmp_path):
    """The head's input as a PlaceholderWithDefault (a zero row by default), as
    ``tf.compat.v1.placeholder_with_default`` writes it: it is the graph's input, fed as
    TensorFlow feeds it (1e-6 on float32 probabilities, as the head tests above), not refused as
    a graph of no float input."""
    weights = head_weights(5)
    g = head_graph(weights)
    add_const(g, "model/default", np.zeros((1, HEAD_IN), np.float32))
    x = node_named(g, "model/Placeholder")
    x.op = "PlaceholderWithDefault"
    x.input.append("model/default")
    for node in g.node:  # TensorFlow runs only nodes that name their type
        if node.op not in ("Const", "PlaceholderWithDefault"):
            set_type(node, "T", DT_FLOAT)
    path = write(tmp_path, "input_with_default", g)
    patches = np.random.default_rng(5).standard_normal((4, HEAD_IN)).astype(np.float32)
    reference, = run_tf(path, {"model/Placeholder:0": patches}, ["model/Softmax:0"])
    np.testing.assert_allclose(reference, head_reference(weights, patches), rtol=0, atol=1e-6)
    found = np.asarray(jaxmir.load(path).apply(patches, ["model/Softmax"])["model/Softmax"])
    np.testing.assert_allclose(found, reference, rtol=0, atol=1e-6)


def test_a_cond_whose_training_branch_is_its_switch_s_output_reads_one_layer(tmp_path):
    """``cond(training, lambda: x, lambda: relu(x))`` with one Switch for both branches (as a
    graph optimiser leaves two identical ones): the Merge reads the Switch's true output, which
    TensorFlow does not compute at inference; the head is read as ReLU then the dense layers,
    not as the input feeding two layers."""
    weights = head_weights(7)
    g = head_graph(weights)
    set_type(add_node(g, "training", "Placeholder"), "dtype", DT_BOOL)
    add_node(g, "cond/Switch", "Switch", ["model/Placeholder", "training"])
    add_node(g, "cond/Relu", "Relu", ["cond/Switch"])
    add_node(g, "cond/Merge", "Merge", ["cond/Relu", "cond/Switch:1"], N=2)
    node_named(g, "dense/MatMul").input[0] = "cond/Merge"
    for node in g.node:
        if node.op not in ("Const", "Placeholder"):
            set_type(node, "T", DT_FLOAT)
    path = write(tmp_path, "shared_switch", g)
    x = np.random.default_rng(7).standard_normal((5, HEAD_IN)).astype(np.float32)
    reference, = run_tf(path, {"model/Placeholder:0": x, "training:0": False},
                        ["model/Softmax:0"])
    np.testing.assert_allclose(reference, head_reference(weights, np.maximum(x, 0)), rtol=0,
                               atol=1e-6)  # the inference branch: ReLU first
    found = np.asarray(jaxmir.load(path).apply(x, ["model/Softmax"])["model/Softmax"])
    np.testing.assert_allclose(found, reference, rtol=0, atol=1e-6)  # as the tests above


def test_a_convolution_in_a_cond_s_training_branch_is_no_layer(tmp_path):
    """VGG4 with a 1x1 Conv2D on its first batch norm's training branch, a layer TensorFlow
    does not run at inference: the model loads with VGG4's five convolutions and computes as
    TensorFlow does. Pins that only the nodes computed at inference are taken for layers, not
    every input of a cond's Merge."""
    g = fixture_graph(VGG4)
    cond = "model/vggish/batch_normalization/cond"
    add_const(g, f"{cond}/train_kernel", np.full((1, 1, 1, 1), 3.0, np.float32))
    add_node(g, f"{cond}/train_conv", "Conv2D", [f"{cond}/FusedBatchNorm", f"{cond}/train_kernel"],
             strides=[1, 1, 1, 1], padding="SAME")
    merge = node_named(g, f"{cond}/Merge")
    assert merge.input[1] == f"{cond}/FusedBatchNorm"  # the training branch
    merge.input[1] = f"{cond}/train_conv"
    path = write(tmp_path, "conv_in_training_branch", g)
    model = jaxmir.load(path)
    assert len(model.spec.config["blocks"]) == 5
    x = np.random.default_rng(4).standard_normal((3, 128, 128)).astype(np.float32)
    reference, = run_tf(path, {"model/Placeholder:0": x, "model/Placeholder_1:0": False},
                        ["model/Softmax:0"])
    found = np.asarray(model.apply(x, ["model/Softmax"])["model/Softmax"])
    # probabilities within 1e-5, as conftest's assert_parity bounds them for the VGG4 fixture
    np.testing.assert_allclose(found, reference, rtol=0, atol=1e-5)


def test_a_layer_feeding_two_branches_is_refused_not_read_as_one(tmp_path):
    """A second dense layer on the hidden ReLU, added to the logits: a branching head, which
    jaxmir's chain of layers cannot hold. Refused by name, not loaded as its first branch."""
    g = head_graph()
    add_node(g, "extra/MatMul", "MatMul", ["dense/Relu", "k2"])
    add_node(g, "dense_1/Add", "Add", ["dense_1/BiasAdd", "extra/MatMul"])
    node_named(g, "model/Softmax").input[0] = "dense_1/Add"
    with pytest.raises(UnsupportedGraphError, match=r"'dense/Relu' feeds 2 layers "
                       r"\(dense_1/MatMul, extra/MatMul\) where one was expected"):
        jaxmir.load(write(tmp_path, "branching", g))


def test_a_kernel_read_through_identity_n_is_the_input_its_port_names(tmp_path):
    """``IdentityN(decoy, k2):1`` forwards its second input; no test had an IdentityN (its first
    input read instead gave probabilities 0.86 off)."""
    weights = head_weights(4)
    g = head_graph(weights)
    add_const(g, "decoy", np.full((HEAD_HIDDEN, HEAD_OUT), 0.5, np.float32))
    forward = add_node(g, "forward", "IdentityN", ["decoy", "k2"])
    forward.attr["T"].list.type.extend([DT_FLOAT, DT_FLOAT])
    node_named(g, "dense_1/MatMul").input[1] = "forward:1"
    assert_head_as_its_reference(tmp_path, "identity_n", g, weights, seed=4)


def test_a_kernel_a_function_returns_from_a_later_output_is_that_output(tmp_path):
    """A function returning ``idn:output:1`` of its ``IdentityN(a, b)`` returns ``b``; every
    function tested returned an output 0, and reading 0 instead went unseen."""
    weights = head_weights(5)
    g = head_graph(weights)
    add_const(g, "decoy", np.full((HEAD_HIDDEN, HEAD_OUT), 0.5, np.float32))
    function = g.library.function.add()
    function.signature.name = "second"
    for arg in ("a", "b"):
        function.signature.input_arg.add(name=arg)
    function.signature.output_arg.add(name="y")
    function.node_def.add(name="idn", op="IdentityN", input=["a", "b"])
    function.ret["y"] = "idn:output:1"
    call = add_node(g, "call", "PartitionedCall", ["decoy", "k2"])
    call.attr["f"].func.name = "second"
    node_named(g, "dense_1/MatMul").input[1] = "call"
    assert_head_as_its_reference(tmp_path, "later_output", g, weights, seed=5)


def test_a_control_input_on_a_function_argument_is_the_control_edge_of_what_it_is_bound_to(
        tmp_path):
    """A function body's ``Identity(a, ^a)`` where ``a`` is bound to ``idn:1``: the control
    edge names the node, ``^idn`` (a port is no control edge's); the kernel read is ``k2``."""
    weights = head_weights(5)
    g = head_graph(weights)
    add_const(g, "decoy", np.full((HEAD_HIDDEN, HEAD_OUT), 0.5, np.float32))
    forward = add_node(g, "idn", "IdentityN", ["decoy", "k2"])
    forward.attr["T"].list.type.extend([DT_FLOAT, DT_FLOAT])
    identity_function(g, ["a", "^a"], "n:output:0")
    add_node(g, "call", "PartitionedCall", ["idn:1"]).attr["f"].func.name = "f"
    node_named(g, "dense_1/MatMul").input[1] = "call"
    assert_head_as_its_reference(tmp_path, "control_on_argument", g, weights, seed=5)


def test_a_control_input_of_a_call_is_no_argument_of_its_function(tmp_path):
    """``PartitionedCall(k2, ^decoy)`` of a one-argument function: the control edge orders the
    call and passes nothing, as in TensorFlow; the call is inlined with ``k2`` as its argument,
    not refused as passing two inputs to a function of one."""
    weights = head_weights(6)
    g = head_graph(weights)
    add_const(g, "decoy", np.full((HEAD_HIDDEN, HEAD_OUT), 0.5, np.float32))
    identity_function(g, ["a"], "n:output:0")
    add_node(g, "call", "PartitionedCall", ["k2", "^decoy"]).attr["f"].func.name = "f"
    node_named(g, "dense_1/MatMul").input[1] = "call"
    assert_head_as_its_reference(tmp_path, "control_input_of_a_call", g, weights, seed=6)


def _swap_first_inputs(name: str):
    def edit(g):
        node = node_named(g, name)
        node.input[0], node.input[1] = node.input[1], node.input[0]
    return edit


def _bypass(name: str, to: str):
    def edit(g):
        for node in g.node:
            for i, source in enumerate(node.input):
                if source == name:
                    node.input[i] = to
    return edit


def _set_op(name: str, op: str):
    return lambda g: setattr(node_named(g, name), "op", op)


def _set_axis(name: str, axis: int):
    def edit(g):
        node_named(g, name).attr["value"].tensor.CopyFrom(
            tensor_proto(np.array(axis, np.int32), DT_INT32, shape=()))
    return edit


def _set_input(name: str, index: int, to: str):
    def edit(g):
        node_named(g, name).input[index] = to
    return edit


MUSICNN_REWIRED = {
    "residual_sub": _set_op("model/Add", "Sub"),
    # the third layer's residual added to the first layer's output, not the second's sum
    "second_residual_adds_the_first_layer": _set_input("model/Add_1", 1, "model/transpose"),
    "residual_maximum": _set_op("model/Add_1", "Maximum"),
    "residual_bypassed": _bypass("model/Add", "model/transpose_1"),
    "second_residual_bypassed": _bypass("model/Add_1", "model/transpose_2"),
    "frontend_concat_swapped": _swap_first_inputs("model/concat"),
    "midend_concat_swapped": _swap_first_inputs("model/concat_1"),
    # the third convolution of the mid-end reads the first's output, not the first residual sum
    "third_layer_reads_the_first": _set_input("model/Pad_3", 0, "model/transpose"),
    "pooling_concat_axis_1": _set_axis("model/concat_2/axis", 1),
}


@pytest.mark.parametrize("case", sorted(MUSICNN_REWIRED))
def test_a_rewired_musicnn_is_refused(tmp_path, case):
    """MusiCNN graphs rewired in ways TensorFlow runs (a residual subtracted or left out, the
    features joined in another order or on another axis) loaded as the original network: wrong
    tags, unsaid (up to 1.0 from TensorFlow's on random patches). TensorFlow computes another
    network from each, measured here, and jaxmir refuses them naming the node."""
    g = fixture_graph(DORTMUND)
    MUSICNN_REWIRED[case](g)
    path = write(tmp_path, case, g)
    _, rewired = musicnn_tf_tags(path, 0)
    _, original = musicnn_tf_tags(shared_fixture(DORTMUND), 0)
    assert np.max(np.abs(rewired - original)) > 1e-3  # another network, not a harmless edit
    with pytest.raises(JaxmirError, match="must (join|be added|read)"):
        jaxmir.load(path)


def test_musicnn_s_features_joined_on_axes_counted_from_the_end_load_as_tensorflow_runs_them(
        tmp_path):
    """Each concat's axis given as TensorFlow also reads it, from the end (-1 of the front-end's
    and the pooling's [b, t, f], -2 of the mid-end's [b, t, f, 1]): the same network, loaded as
    it runs, not refused as joining the features otherwise."""
    g = fixture_graph(DORTMUND)
    for concat, axis in (("model/concat", -1), ("model/concat_1", -2), ("model/concat_2", -1)):
        _set_axis(f"{concat}/axis", axis)(g)
    path = write(tmp_path, "axes_from_the_end", g)
    x, reference = musicnn_tf_tags(path, 9)
    found = np.asarray(jaxmir.load(path).apply(x)["predictions"])
    np.testing.assert_allclose(found, reference, rtol=0, atol=1e-5)  # float32 probabilities


def test_timbral_branches_of_unequal_filters_are_refused_as_such(tmp_path):
    """The 7x67 branch cut to 102 filters of 204: refused saying why, beside the mid-end's widths
    that no longer match (that alone said nothing of the branches)."""
    g = fixture_graph(DORTMUND)
    kernel = node_named(g, "conv2d_1/kernel").attr["value"].tensor
    shape = [dim.size for dim in kernel.tensor_shape.dim]
    values = np.frombuffer(kernel.tensor_content, "<f4").reshape(shape)
    kernel.CopyFrom(tensor_proto(np.ascontiguousarray(values[..., :102])))
    _reshape_const("conv2d_1/bias", [102], float_val=[0.0])(g)
    _cut_batch_norm("batch_normalization_2", 102)(g)
    with pytest.raises(JaxmirError, match=r"both timbral branches \(and all temporal ones\) must "
                                          "have equal filters"):
        jaxmir.load(write(tmp_path, "timbral_102_of_204", g))


@pytest.mark.parametrize("node, keep", [("model/transpose", 1), ("model/Max", 1),
                                        ("model/Squeeze", 0)])
def test_a_musicnn_node_short_of_inputs_is_a_jaxmir_error(tmp_path, node, keep):
    """The wiring checks read inputs by position: a node left with fewer is refused by name."""
    g = fixture_graph(DORTMUND)
    del node_named(g, node).input[keep:]
    with pytest.raises(JaxmirError):
        jaxmir.load(write(tmp_path, "short", g))


def test_a_vgg_whose_input_has_no_batch_norm_is_refused_not_a_type_error(tmp_path):
    """musicnn's VGG with its input batch norm bypassed: every convolution still has one, but
    the model takes its one epsilon from the input's, so the graph is refused by name (without
    the check on the input, Python's TypeError on the missing epsilon)."""
    g = fixture_graph(VGG4)
    _set_input("model/vggish/1CNN/Conv2D", 0, "model/vggish/ExpandDims")(g)
    with pytest.raises(UnsupportedGraphError, match="batch norm and pooling must follow every "
                                                    "convolution and the input"):
        jaxmir.load(write(tmp_path, "no_input_batch_norm", g))


SMALL_VGGISH = "essentia-models/small_vggish_init.pb"


def _insert_before(consumer: str, op: str):
    """An element-wise ``op`` between ``consumer`` and its first input."""
    def edit(g):
        node = node_named(g, consumer)
        inserted = g.node.add(name=f"hostile/{op}", op=op, input=[node.input[0]])
        inserted.attr["T"].type = DT_FLOAT
        node.input[0] = inserted.name
    return edit


def _reshape_to(shape: tuple[int, ...]):
    def edit(g):
        node_named(g, "model/vggish/Reshape/shape").attr["value"].tensor.CopyFrom(
            tensor_proto(np.array(shape, np.int32), DT_INT32))
    return edit


def _declared(shape: tuple[int, ...]):
    def edit(g):
        declared = node_named(g, "model/Placeholder").attr["shape"].shape
        del declared.dim[:]
        for size in shape:
            declared.dim.add(size=size)
    return edit


INPUT_PATHS_CHANGED = {  # fixture, edit, input patch fed, what jaxmir says
    "vggish_reshaped_transposed": (SMALL_VGGISH, _reshape_to((-1, 64, 96, 1)), (96, 64),
                                   r"the input patch \[96, 64\] reaches 'model/vggish/conv1/"
                                   r"Conv2D' as \[-1, 64, 96, 1\]"),
    "vggish_negated_before_conv1": (SMALL_VGGISH,
                                    _insert_before("model/vggish/conv1/Conv2D", "Neg"),
                                    (96, 64), "reads 'hostile/Neg', not the input patch"),
    "vgg_negated_after_input_bn": (VGG4, _insert_before("model/vggish/1CNN/Conv2D", "Neg"),
                                   (128, 128), "reads 'hostile/Neg', not the input patch after "
                                               "its batch norm"),
    "musicnn_squared_input": (DORTMUND, _insert_before("model/ExpandDims", "Square"), (187, 96),
                              r"the input patch \[187, 96\] reaches 'hostile/Square' as"),
}


@pytest.mark.parametrize("case", sorted(INPUT_PATHS_CHANGED))
def test_an_input_path_that_changes_the_patch_is_refused(tmp_path, case):
    """What lies between the placeholder and the first convolution was not read: a Reshape
    transposing the patch, or an op before the first convolution, loaded as the original network
    (VGGish 0.003-0.07 from TensorFlow, VGG 1.0). TensorFlow computes another network from each,
    measured here; jaxmir refuses them, naming the node."""
    fixture, edit, patch, message = INPUT_PATHS_CHANGED[case]
    g = fixture_graph(fixture)
    edit(g)
    path = write(tmp_path, case, g)
    feeds = {"model/Placeholder:0": np.random.default_rng(1).standard_normal((2, *patch))
             .astype(np.float32)}
    if fixture == VGG4:
        feeds["model/Placeholder_1:0"] = False
    output = {VGG4: "model/Softmax:0", DORTMUND: "model/Sigmoid:0"}.get(fixture, "model/Sigmoid:0")
    changed, = run_tf(path, feeds, [output])
    original = jaxmir.load(shared_fixture(fixture)).apply(
        feeds["model/Placeholder:0"].reshape(2, *jaxmir.load(shared_fixture(fixture)).input_shape),
        [output.removesuffix(":0")])[output.removesuffix(":0")]
    assert np.max(np.abs(changed - np.asarray(original))) > 1e-3  # another network
    with pytest.raises(JaxmirError, match=message):
        jaxmir.load(path)


def test_a_patch_declared_in_another_shape_than_its_reshape_is_refused(tmp_path):
    """A placeholder of [-1, 64, 96] reshaped to [-1, 96, 64, 1]: TensorFlow convolves the
    values as 96 x 64, jaxmir took the declared 64 x 96 for the convolutions' input."""
    g = fixture_graph(SMALL_VGGISH)
    _declared((-1, 64, 96))(g)
    with pytest.raises(JaxmirError, match=r"the input patch \[64, 96\] reaches 'model/vggish/"
                                          r"conv1/Conv2D' as \[-1, 96, 64, 1\]"):
        jaxmir.load(write(tmp_path, "declared", g))


def test_a_batch_norm_whose_shift_is_not_beta_minus_mean_times_scale_runs_as_tensorflow(tmp_path):
    """TensorFlow's unfolded batch norm, b = beta - mean * a: with mean * gamma there instead,
    the operand that was not ``a`` was taken for the mean all the same (tags up to 0.83 from
    TensorFlow's). Now the shift is folded as the graph computes it."""
    g = fixture_graph(DORTMUND)
    node_named(g, "model/batch_normalization_9/batchnorm/mul_2").input[1] = \
        "batch_normalization_9/gamma/read"
    path = write(tmp_path, "bn_shift", g)
    x, edited = musicnn_tf_tags(path, 2)
    _, original = musicnn_tf_tags(shared_fixture(DORTMUND), 2)
    assert np.max(np.abs(edited - original)) > 1e-2
    # sigmoid outputs in [0, 1], float32 through nine layers: 1e-5 as every parity test here
    np.testing.assert_allclose(np.asarray(jaxmir.load(path).apply(x)["predictions"]), edited,
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 7), (1 << 40,), ("a", "b"), (0, 200), (True, 200)])
def test_a_weights_file_s_node_map_shapes_must_hold_their_outputs(tmp_path, shape):
    """A node map's shape was never checked: `apply(outputs=[node])` then raised NumPy's
    TypeError ("cannot reshape"), which `jaxmir embed --layer` blamed on the audio file."""
    model = jaxmir.load(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    node, (tap, _) = next(iter(model.spec.node_map.items()))
    node_map = {**model.spec.node_map, node: (tap, shape)}
    save_weights(dataclasses.replace(model,
                                     spec=dataclasses.replace(model.spec, node_map=node_map)),
                 tmp_path / "node_map.npz")
    with pytest.raises(WeightsError, match=f"the output read from '{tap}' is given the shape"):
        jaxmir.load(tmp_path / "node_map.npz")


def _set_field(name: str, key: str, **value):
    def edit(g):
        attr = node_named(g, name).attr[key]
        attr.Clear()
        for field, content in value.items():
            setattr(attr, field, content)
    return edit


def _as_column(name: str):
    """A constant vector ``[n]`` rewritten as ``[n, 1]``: the same values, broadcast otherwise."""
    def edit(g):
        tensor = node_named(g, name).attr["value"].tensor
        size = tensor.tensor_shape.dim[0].size
        del tensor.tensor_shape.dim[:]
        tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_shape.dim.add(size=1)
    return edit


EMOMUSIC = "essentia-models/emomusic-msd-musicnn-1.pb"
ATTRIBUTES_IGNORED = {  # fixture, edit, what jaxmir says: each loaded as the original network
    "conv_in_float16": (DORTMUND, _set_field("model/conv2d/Conv2D", "T", type=19),
                        "'model/conv2d/Conv2D' \\(Conv2D\\) computes in float16"),
    "bias_add_nchw": (SMALL_VGGISH, _set_field("model/vggish/conv1/BiasAdd", "data_format",
                                              s=b"NCHW"),
                      "BiasAdd 'model/vggish/conv1/BiasAdd' is NCHW"),
    "dense_bias_as_a_column": (EMOMUSIC, _as_column("dense_out/bias_tf_0_36efc7f2"),
                               r"has shape \[2, 1\]; expected 2 values along the last axis"),
}


@pytest.mark.parametrize("case", sorted(ATTRIBUTES_IGNORED))
def test_attributes_and_shapes_that_change_the_computation_are_read(tmp_path, case):
    """A float16 Conv2D, an NCHW BiasAdd and a bias of shape [n, 1] (broadcast over the batch
    by TensorFlow: other values when the batch is n) loaded as the float32, NHWC, per-channel
    originals."""
    fixture, edit, message = ATTRIBUTES_IGNORED[case]
    g = fixture_graph(fixture)
    edit(g)
    with pytest.raises(JaxmirError, match=message):
        jaxmir.load(write(tmp_path, case, g))


def test_a_bias_of_shape_n_by_1_is_another_computation_in_tensorflow(tmp_path):
    """What the refusal above guards against, measured: a batch of 2 through emomusic's head
    with its 2 biases as a column."""
    g = fixture_graph(EMOMUSIC)
    _as_column("dense_out/bias_tf_0_36efc7f2")(g)
    x = np.random.default_rng(3).standard_normal((2, 1, 200)).astype(np.float32)
    feeds = {"flatten_in_input:0": x}
    column, = run_tf(write(tmp_path, "column", g), feeds, ["dense_out:0"])
    original, = run_tf(shared_fixture(EMOMUSIC), feeds, ["dense_out:0"])
    assert column.shape == original.shape and np.max(np.abs(column - original)) > 1e-3


def test_a_weights_file_without_a_predictions_output_is_refused_at_load(tmp_path):
    """Its description's aliases emptied, it loaded, and every file then failed ("unknown output
    'predictions'"), blamed on the audio."""
    model = jaxmir.load(shared_fixture("essentia-models/emomusic-msd-musicnn-1.pb"))
    save_weights(dataclasses.replace(model, spec=dataclasses.replace(model.spec, aliases={})),
                 tmp_path / "no_aliases.npz")
    with pytest.raises(WeightsError, match="its description gives no 'predictions' output"):
        jaxmir.load(tmp_path / "no_aliases.npz")


def _typed_node(g, name: str, op: str, inputs=(), types=None, ints=None, value=None):
    """A node with dtype attributes ``types``, int attributes ``ints`` and a Const's ``value``."""
    node = add_node(g, name, op, inputs, **(ints or {}))
    for key, dtype in (types or {}).items():
        set_type(node, key, dtype)
    if value is not None:
        node.attr["value"].tensor.CopyFrom(tensor_proto(value, DT_INT32, shape=value.shape))
    return node


def _reshape_by_pack(g, slice_begin: int = 0):
    """Keras's Reshape((96, 64, 1)): its shape a Pack of the input's batch (Shape, StridedSlice
    from ``slice_begin``, 0: the batch) and constants, which jaxmir cannot fold."""
    _typed_node(g, "keras/Shape", "Shape", ["model/Placeholder"],
                {"T": DT_FLOAT, "out_type": DT_INT32})
    for name, value in (("begin", [slice_begin]), ("end", [slice_begin + 1]), ("strides", [1])):
        _typed_node(g, f"keras/{name}", "Const", types={"dtype": DT_INT32},
                    value=np.array(value, np.int32))
    _typed_node(g, "keras/batch", "StridedSlice",
                ["keras/Shape", "keras/begin", "keras/end", "keras/strides"],
                {"T": DT_INT32, "Index": DT_INT32},
                {"shrink_axis_mask": 1, "begin_mask": 0, "end_mask": 0, "ellipsis_mask": 0,
                 "new_axis_mask": 0})
    for size in (96, 64, 1):
        _typed_node(g, f"keras/{size}", "Const", types={"dtype": DT_INT32},
                    value=np.array(size, np.int32))
    _typed_node(g, "keras/shape", "Pack", ["keras/batch", "keras/96", "keras/64", "keras/1"],
                {"T": DT_INT32}, {"N": 4, "axis": 0})
    node_named(g, "model/vggish/Reshape").input[1] = "keras/shape"


def _reshape_in_two_steps(g):
    """[-1, 6144] first, then the fixture's own [-1, 96, 64, 1]: values kept in their order."""
    _typed_node(g, "flat/shape", "Const", types={"dtype": DT_INT32},
                value=np.array([-1, 96 * 64], np.int32))
    _typed_node(g, "flat", "Reshape", ["model/Placeholder", "flat/shape"],
                {"T": DT_FLOAT, "Tshape": DT_INT32})
    node_named(g, "model/vggish/Reshape").input[0] = "flat"


@pytest.mark.parametrize("edit", [_reshape_by_pack, _reshape_in_two_steps],
                         ids=["keras_pack", "two_steps"])
def test_input_reshapes_that_keep_the_values_in_order_load_as_tensorflow_runs_them(tmp_path, edit):
    """The input-path check refused these (its first form read each step on its own, and no
    Pack): TensorFlow's outputs, measured, within float32 rounding of the sigmoid's."""
    g = fixture_graph(SMALL_VGGISH)
    edit(g)
    path = write(tmp_path, edit.__name__, g)
    x = np.random.default_rng(4).standard_normal((2, 96, 64)).astype(np.float32)
    want, = run_tf(path, {"model/Placeholder:0": x}, ["model/Sigmoid:0"])
    np.testing.assert_allclose(np.asarray(jaxmir.load(path).apply(x)["predictions"]), want,
                               rtol=0, atol=1e-5)


def test_a_reshape_packing_another_axis_than_the_batch_is_refused(tmp_path):
    """``tf.stack([tf.shape(x)[1], 96, 64, 1])`` takes the patch's 96 frames as the batch: it
    runs only for 96 patches, and then regroups them; it is not read as ``[-1, 96, 64, 1]``."""
    g = fixture_graph(SMALL_VGGISH)
    _reshape_by_pack(g, slice_begin=1)
    with pytest.raises(UnsupportedGraphError, match="reshapes the input patch"):
        jaxmir.load(write(tmp_path, "pack_axis_1", g))


def test_a_reshape_pack_whose_axis_is_not_an_int_is_a_graph_error(tmp_path):
    """A Pack's axis written as the float 0.0 (TensorFlow refuses the node: its op declares an
    int) was read as axis 0 and the graph loaded."""
    g = fixture_graph(SMALL_VGGISH)
    _reshape_by_pack(g)
    node_named(g, "keras/shape").attr["axis"].f = 0.0
    path = write(tmp_path, "pack_axis_float", g)
    with pytest.raises(ValueError, match="type 'float' when 'int' expected"):
        run_tf(path, {"model/Placeholder:0": np.zeros((1, 96, 64), np.float32)},
               ["model/Sigmoid:0"])
    with pytest.raises(GraphError, match="'axis' of 'keras/shape'"):
        jaxmir.load(path)


def test_a_squeeze_whose_axes_are_not_a_list_is_a_graph_error(tmp_path):
    """squeeze_dims as an int on the input path raised Python's TypeError (a traceback)."""
    g = fixture_graph(SMALL_VGGISH)
    _typed_node(g, "squeezed", "Squeeze", ["model/Placeholder"], {"T": DT_FLOAT},
                {"squeeze_dims": 1})
    node_named(g, "model/vggish/Reshape").input[0] = "squeezed"
    with pytest.raises(GraphError, match="squeeze_dims"):
        jaxmir.load(write(tmp_path, "squeeze_int", g))
