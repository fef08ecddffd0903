"""The GraphDef reader: protobuf only, every Const encoding, references, and bad files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, require, run_tf, shared_fixture
from jaxmir.errors import GraphError, JaxmirError
from jaxmir.tfgraph.graphdef import (DT_BOOL, DT_FLOAT, DT_HALF, DT_INT32, DT_INT64,
                                     MAX_PORT_DIGITS, Graph, GraphDefProto, TensorRef,
                                     decode_tensor)

DORTMUND = "essentia-models/genre_dortmund_musicnn_msd.pb"


def const_graph(**tensors) -> Graph:
    graph_def = GraphDefProto()
    for name, tensor in tensors.items():
        node = graph_def.node.add(name=name, op="Const")
        node.attr["value"].tensor.CopyFrom(tensor)
    return Graph.from_bytes(graph_def.SerializeToString(), "<test>")


def typed_consts(**tensors) -> GraphDefProto:
    """A GraphDef of a Const per tensor, with the ``dtype`` TensorFlow needs to import it."""
    graph_def = GraphDefProto()
    for name, proto in tensors.items():
        node = graph_def.node.add(name=name, op="Const")
        node.attr["dtype"].type = proto.dtype
        node.attr["value"].tensor.CopyFrom(proto)
    return graph_def


def merged_cond(path, graph_def: GraphDefProto, float_nodes):
    """``graph_def`` with ``(name, op, inputs)`` nodes of float ``T`` added, the last a Merge of
    two named ``merge``, written to ``path``: ``(path, the Merge's value, the index of the input
    it took)`` as TensorFlow runs it."""
    for name, op, inputs in float_nodes:
        graph_def.node.add(name=name, op=op, input=inputs).attr["T"].type = DT_FLOAT
    graph_def.node[-1].attr["N"].i = 2
    path.write_bytes(graph_def.SerializeToString())
    expected, index = run_tf(path, {}, ["merge", "merge:1"], optimize=False)
    return path, expected, index


def tensor(dtype: int, shape, **fields):
    from jaxmir.tfgraph.graphdef import TensorProto
    proto = TensorProto(dtype=dtype)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    for key, value in fields.items():
        if key == "tensor_content":
            proto.tensor_content = value
        else:
            getattr(proto, key).extend(value)
    return proto


def test_reading_a_graph_does_not_import_tensorflow():
    path = shared_fixture(DORTMUND)
    code = ("import sys, jaxmir; m = jaxmir.load(sys.argv[1]); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; print(m)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "musicnn" in result.stdout


@pytest.mark.parametrize("dtype, values, np_dtype", [
    (DT_FLOAT, [1.5, -2.0, 3.25, 0.0], np.float32),
    (DT_INT32, [1, -2, 3, 4], np.int32),
    (DT_INT64, [1, -2, 3, 1 << 40], np.int64),
    (DT_BOOL, [True, False, True, True], np.bool_),
    (DT_HALF, [0.5, -1.0, 2.0, 65504.0], np.float16),
])
def test_const_from_tensor_content_and_typed_fields(dtype, values, np_dtype):
    expected = np.array(values, np_dtype).reshape(2, 2)
    typed_field = {DT_FLOAT: "float_val", DT_INT32: "int_val", DT_INT64: "int64_val",
                   DT_BOOL: "bool_val", DT_HALF: "half_val"}[dtype]
    typed = (expected.view(np.uint16).ravel().tolist() if dtype == DT_HALF
             else expected.ravel().tolist())
    graph = const_graph(raw=tensor(dtype, [2, 2], tensor_content=expected.tobytes()),
                        typed=tensor(dtype, [2, 2], **{typed_field: typed}))
    for name in ("raw", "typed"):
        value = graph.constant(name)
        assert value.dtype == np_dtype and value.shape == (2, 2)
        np.testing.assert_array_equal(value, expected)


def test_single_value_is_broadcast_to_the_shape():
    graph = const_graph(fill=tensor(DT_FLOAT, [3, 4], float_val=[0.25]),
                        zeros=tensor(DT_INT32, [5]))
    np.testing.assert_array_equal(graph.constant("fill"), np.full((3, 4), 0.25, np.float32))
    np.testing.assert_array_equal(graph.constant("zeros"), np.zeros(5, np.int32))


def test_tensorflow_written_constants_decode_identically():
    tf = require("tensorflow")
    from jaxmir.tfgraph.graphdef import TensorProto
    cases = [np.arange(12, dtype=np.float32).reshape(3, 4), np.float16([1.5, 2.5]),
             np.int64([7, -8]), np.array([True, False]), np.full((2, 3), 7.0, np.float32),
             np.float32(3.0), np.full((1,) * 32, 2.5, np.float32)]  # rank 32: the most it reads
    for value in cases:
        proto = TensorProto()
        proto.ParseFromString(tf.make_tensor_proto(value).SerializeToString())
        decoded = decode_tensor(proto)
        assert decoded.dtype == value.dtype
        np.testing.assert_array_equal(decoded, value)


def test_bytes_that_do_not_fill_the_shape_are_rejected():
    graph = const_graph(bad=tensor(DT_FLOAT, [1000, 1000], tensor_content=b"\0" * 12))
    with pytest.raises(GraphError, match="do not fill the declared shape"):
        graph.constant("bad")


def test_a_huge_declared_shape_allocates_nothing():
    graph = const_graph(huge=tensor(DT_FLOAT, [1 << 20, 1 << 20], float_val=[1.0, 2.0]),
                        wrong=tensor(DT_FLOAT, [2], float_val=[1.0, 2.0, 3.0]))
    with pytest.raises(GraphError, match="larger than jaxmir accepts"):
        graph.constant("huge")
    with pytest.raises(GraphError, match="3 values do not fit the declared shape"):
        graph.constant("wrong")


def test_fewer_values_than_the_shape_repeat_the_last_as_tensorflow_fills_them():
    """TensorFlow writes constants ending in a run of one value compactly, and reads them
    back with the last value repeated; jaxmir refused them ("399 values do not fit")."""
    tf = require("tensorflow")
    cases = [tensor(DT_FLOAT, [3, 4], float_val=[0.5, -1.0, 2.0]),
             tensor(DT_INT32, [5], int_val=[7, 8]),
             tensor(DT_FLOAT, [200, 2], float_val=np.linspace(-1, 1, 399).tolist())]
    graph = const_graph(**{f"c{i}": proto for i, proto in enumerate(cases)})
    for i, proto in enumerate(cases):
        expected = tf.make_ndarray(tf.make_tensor_proto(0).__class__.FromString(
            proto.SerializeToString()))
        found = graph.constant(f"c{i}")
        assert found.dtype == expected.dtype
        np.testing.assert_array_equal(found, expected)


def test_a_reference_dtype_decodes_as_its_value_type():
    """TensorFlow's reference dtypes are the value types + 100 (101: float32_ref)."""
    decoded = decode_tensor(tensor(DT_FLOAT + 100, [3], float_val=[1.0, 2.0, 3.0]))
    assert decoded.dtype == np.float32 and decoded.tolist() == [1.0, 2.0, 3.0]


def test_an_empty_shape_beyond_the_bound_is_refused_whatever_its_bytes():
    """[0, 2**62, 2**62] holds no element but is no shape NumPy makes: its size is what is
    wrong, whatever bytes come with it (with 4, it was refused as bytes that do not fill it)."""
    huge = [0, 1 << 62, 1 << 62]
    for fields in ({}, {"tensor_content": b"\0" * 4}):
        with pytest.raises(GraphError, match="larger than jaxmir accepts"):
            decode_tensor(tensor(DT_FLOAT, huge, **fields))


def test_decoded_constants_count_against_the_load_budget():
    """The arrays a load decodes, from raw bytes or filled from a few values, are spent from its
    budget of constant memory (uncounted raw bytes would let a file decode twice the budget)."""
    from jaxmir.tfgraph.graphdef import LoadBudget

    budget = LoadBudget(1000)
    raw = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(
        decode_tensor(tensor(DT_FLOAT, [2, 3], tensor_content=raw.tobytes()), "raw", budget), raw)
    assert budget.bytes == raw.nbytes
    filled = decode_tensor(tensor(DT_FLOAT, [4, 5], float_val=[1.0]), "filled", budget)
    assert filled.shape == (4, 5) and budget.bytes == raw.nbytes + filled.nbytes


@pytest.mark.parametrize("text", ["k1:\u00b2", "k1:\u0660", "k1:\uff11"])
def test_a_port_of_other_digits_than_ascii_is_not_a_reference(text):
    """Python's isdigit holds for a superscript two (int() then raised ValueError) and for an
    Arabic-Indic zero (read as port 0)."""
    with pytest.raises(GraphError, match="is not a tensor reference"):
        TensorRef.parse(text)


def test_unsupported_dtype_is_named():
    graph = const_graph(s=tensor(7, [1]))  # DT_STRING
    with pytest.raises(GraphError, match="dtype code 7 is not supported"):
        graph.constant("s")


def test_tensor_references_and_control_inputs():
    assert TensorRef.parse("a/b:1") == TensorRef("a/b", 1)
    assert TensorRef.parse("^a/b") == TensorRef("a/b", 0)
    assert str(TensorRef("x", 2)) == "x:2"
    longest = "9" * MAX_PORT_DIGITS  # the most digits a port may have; one more is refused
    assert TensorRef.parse(f"a:{longest}") == TensorRef("a", int(longest))
    with pytest.raises(GraphError, match="is not a tensor reference"):
        TensorRef.parse(f"a:1{longest}")
    graph_def = GraphDefProto()
    graph_def.node.add(name="c", op="Const").attr["value"].tensor.CopyFrom(
        tensor(DT_FLOAT, [1], float_val=[2.0]))
    graph_def.node.add(name="s", op="Switch", input=["c", "p"])
    graph_def.node.add(name="p", op="Placeholder")
    graph_def.node.add(name="i", op="Identity", input=["s:1", "^p"])
    graph = Graph.from_bytes(graph_def.SerializeToString())
    assert graph.data_inputs(graph.node("i")) == [TensorRef("s", 1)]
    assert graph.constant("i").tolist() == [2.0]  # through Identity and Switch
    assert graph.consumers("s") == ["i"]


def test_a_cond_held_true_whose_true_branch_reads_no_switch_runs_that_branch(tmp_path):
    """A Merge of a Switch's false output and of a constant read through no Switch, its
    predicate a True Const: TensorFlow runs the constant (the Switch's output 0 is dead)."""
    require("tensorflow")
    graph_def = typed_consts(false_value=tensor(DT_FLOAT, [2], float_val=[1.0, 2.0]),
                             true_value=tensor(DT_FLOAT, [2], float_val=[3.0, 4.0]),
                             pred=tensor(DT_BOOL, [], bool_val=[True]))
    path, expected, index = merged_cond(tmp_path / "cond.pb", graph_def, (
        ("switch", "Switch", ["false_value", "pred"]),
        ("false_branch", "Identity", ["switch:0"]),
        ("merge", "Merge", ["false_branch", "true_value"])))
    graph = Graph.from_file(path)
    np.testing.assert_array_equal(graph.constant("merge"), expected)
    # Output 1 is the index of the input taken (1 here), not that input: jaxmir folds none of it
    assert graph.constant("merge:1") is None and index == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda data: b"", "empty"),
    (lambda data: data[: len(data) // 2], "truncated|not in the graph|not a readable"),
    (lambda data: b"this is not a graph at all" * 10, "not a readable GraphDef|no graph nodes"),
    (lambda data: bytes(255 - b for b in data[:4096]),
     "not a readable GraphDef|no graph nodes|corrupt|not in the graph"),
])
def test_corrupt_files_raise_clear_errors(tmp_path, mutate, message):
    data = shared_fixture(DORTMUND).read_bytes()
    path = tmp_path / "bad.pb"
    path.write_bytes(mutate(data))
    import jaxmir
    with pytest.raises(JaxmirError, match=message):
        jaxmir.load(path)


def test_a_pipe_a_device_or_a_file_beyond_protobufs_limit_is_refused_unread(tmp_path):
    """A FIFO waited for a writer for ever; /dev/zero and a sparse 3-GB file were read whole
    (a raw MemoryError after GBs)."""
    import os

    fifo = tmp_path / "fifo.pb"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.pb"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(GraphError, match="is not a regular file"):
            Graph.from_file(path)
    huge = tmp_path / "huge.pb"
    with open(huge, "wb") as handle:
        handle.truncate(3 << 30)  # sparse: no disk space taken
    with pytest.raises(GraphError, match="more than protobuf's limit"):
        Graph.from_file(huge)


def test_missing_file_and_directory(tmp_path):
    import jaxmir
    with pytest.raises(GraphError, match="no such file"):
        jaxmir.load(tmp_path / "nothing.pb")
    with pytest.raises(GraphError, match="is a directory"):
        Graph.from_file(tmp_path)
    with pytest.raises(JaxmirError, match="shipped models: "):
        jaxmir.load("no-such-model")


def test_the_file_s_own_node_bytes_count_against_the_inlining_budget():
    """Inlined function bodies may bring the graph's nodes to as many bytes as constants may
    take: the file's own nodes are counted first, not only the copies."""
    from jaxmir.tfgraph.graphdef import LoadBudget

    budget = LoadBudget(1000)
    budget.copy_nodes(budget.max_bytes - 1000, "inlined")  # with the file's 1000: the bound
    with pytest.raises(GraphError, match="bytes of graph nodes"):
        budget.copy_nodes(1, "inlined")


def test_a_bool_attribute_is_not_read_as_a_float_an_int_is():
    """typed_attr's float accepts an int written for it (1 -> 1.0) but not a bool (True was read
    as 1.0, as Python's bool is an int)."""
    graph_def = GraphDefProto()
    node = graph_def.node.add(name="n", op="NoOp")
    node.attr["as_int"].i = 1
    node.attr["as_bool"].b = True
    graph = Graph.from_bytes(graph_def.SerializeToString())
    value = graph.typed_attr(graph.node("n"), "as_int", float)
    assert value == 1.0 and isinstance(value, float)
    with pytest.raises(GraphError, match="attribute 'as_bool' of 'n' .* expected a float"):
        graph.typed_attr(graph.node("n"), "as_bool", float)


def test_a_list_of_dtypes_attribute_reads_as_tensorflow_reads_it():
    """An IdentityN's ``T`` is a list of dtypes; Graph.attr returns them as TensorFlow's
    get_attr does (as type enums), not an empty list."""
    tf = require("tensorflow")
    graph_def = typed_consts(f=tensor(DT_FLOAT, [1], float_val=[1.0]),
                             i=tensor(DT_INT32, [1], int_val=[2]))
    pair = graph_def.node.add(name="pair", op="IdentityN", input=["f", "i"])
    pair.attr["T"].list.type.extend([DT_FLOAT, DT_INT32])
    reference = tf.Graph()
    with reference.as_default():
        tf.graph_util.import_graph_def(
            tf.compat.v1.GraphDef.FromString(graph_def.SerializeToString()), name="")
    expected = [t.as_datatype_enum for t in reference.get_operation_by_name("pair").get_attr("T")]
    graph = Graph.from_bytes(graph_def.SerializeToString())
    assert graph.attr(graph.node("pair"), "T") == expected == [DT_FLOAT, DT_INT32]


def test_a_conv_whose_dilations_attribute_is_empty_is_read_as_tensorflow_runs_it(tmp_path):
    """An AttrValue with no field set is TensorFlow's empty list: it runs such a Conv2D with its
    default dilations. Graph reads it (a list attribute may be that empty value)."""
    tf = require("tensorflow")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4, 4, 1], name="x")
        kernel = tf.constant(np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1), name="kernel")
        tf.nn.conv2d(x, kernel, strides=1, padding="VALID", name="conv")
    graph_def = graph.as_graph_def()
    feed = {"x": np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)}
    paths = {}
    for name in ("original", "empty_dilations"):
        if name == "empty_dilations":
            next(n for n in graph_def.node if n.op == "Conv2D").attr["dilations"].Clear()
        paths[name] = tmp_path / f"{name}.pb"
        paths[name].write_bytes(graph_def.SerializeToString())
    (original,), (edited,) = (run_tf(paths[name], feed, ["conv"], optimize=False)
                              for name in ("original", "empty_dilations"))
    np.testing.assert_array_equal(edited, original)  # TensorFlow runs it, undilated
    read = Graph.from_file(paths["empty_dilations"])
    assert read.attr(read.node("conv"), "dilations", [1, 1, 1, 1]) == [1, 1, 1, 1]
    assert read.node("conv").attr["dilations"].WhichOneof("value") is None


def test_a_cond_predicate_cast_to_int_is_read_as_its_destination_type(tmp_path):
    """Equal(Cast(0.5 to int32), 0) is True: the cast truncates to its DstT (0); read in its
    SrcT (0.5) the predicate would be False and the cond would take the other branch."""
    require("tensorflow")
    graph_def = typed_consts(false_value=tensor(DT_FLOAT, [2], float_val=[1.0, 2.0]),
                             true_value=tensor(DT_FLOAT, [2], float_val=[3.0, 4.0]),
                             half=tensor(DT_FLOAT, [], float_val=[0.5]),
                             zero=tensor(DT_INT32, [], int_val=[0]))
    cast = graph_def.node.add(name="cast", op="Cast", input=["half"])
    cast.attr["SrcT"].type, cast.attr["DstT"].type = DT_FLOAT, DT_INT32
    graph_def.node.add(name="pred", op="Equal", input=["cast", "zero"]).attr["T"].type = DT_INT32
    path, expected, index = merged_cond(tmp_path / "cast_cond.pb", graph_def, (
        ("switch_false", "Switch", ["false_value", "pred"]),
        ("switch_true", "Switch", ["true_value", "pred"]),
        ("merge", "Merge", ["switch_false:0", "switch_true:1"])))
    assert index == 1  # TensorFlow takes the true branch
    np.testing.assert_array_equal(Graph.from_file(path).constant("merge"), expected)
    # its DstT written as the float 3.0 (DT_INT32's number): TensorFlow refuses the node; it
    # was read as int32 and the graph loaded
    cast.attr["DstT"].f = float(DT_INT32)
    path.write_bytes(graph_def.SerializeToString())
    with pytest.raises(ValueError, match="type 'float' when 'type' expected"):
        run_tf(path, {}, ["merge"], optimize=False)
    with pytest.raises(GraphError, match=r"'cast' \(Cast\): attribute 'DstT' is a float"):
        Graph.from_file(path)
