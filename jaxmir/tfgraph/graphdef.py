"""Read frozen TensorFlow GraphDef (`.pb`) files with protobuf alone.

The message classes for the few TensorFlow protos a frozen graph needs
(``GraphDef``, ``NodeDef``, ``AttrValue``, ``TensorProto``, ``TensorShapeProto``
and the function library) are declared here from their public field numbers,
so reading a `.pb` never imports TensorFlow. Unknown fields are kept and
ignored by protobuf, so graphs written by newer TensorFlow versions still parse.

:class:`Graph` wraps a parsed GraphDef with what the importer needs: nodes by
name, tensor references (``name:1``, ``^control``), walking through
pass-through ops, and decoding ``Const`` tensors into NumPy without trusting
the declared shape.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Iterable, Iterator

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from jaxmir.errors import GraphError

_F = descriptor_pb2.FieldDescriptorProto

# TensorFlow's DataType enum (tensorflow/core/framework/types.proto), the
# values jaxmir decodes. Reference types are the same value + 100.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64, DT_BOOL, DT_HALF = 1, 2, 3, 9, 10, 19
_NUMPY_DTYPES = {
    DT_FLOAT: np.dtype("<f4"),
    DT_DOUBLE: np.dtype("<f8"),
    DT_INT32: np.dtype("<i4"),
    DT_INT64: np.dtype("<i8"),
    DT_BOOL: np.dtype("bool"),
    DT_HALF: np.dtype("<f2"),
}
DTYPE_NAMES = {DT_FLOAT: "float32", DT_DOUBLE: "float64", DT_INT32: "int32",
               DT_INT64: "int64", DT_BOOL: "bool", DT_HALF: "float16"}

# Largest tensor jaxmir will materialise from a single broadcast value. The
# biggest weight of any supported model (VGGish fc1, 12288x4096) is ~5e7.
MAX_BROADCAST_ELEMENTS = 1 << 28
MAX_RANK = 32  # supported models use rank <= 4; NumPy stops at 64
# Per-load budget, proportional to the file's size (see LoadBudget).
BYTES_PER_FILE_BYTE, BASE_BYTES = 4, 64 << 20
# A node of Essentia's graphs takes 49 bytes or more (a name, an op, a dtype); parsing one
# costs protobuf ~130 bytes of memory, so 16 bytes a node keeps parsing within ~8x the file.
NODES_PER_FILE_BYTE, BASE_NODES = 1 / 16, 4096
VISITS_PER_FILE_BYTE, BASE_VISITS = 16, 1_000_000
MAX_CALL_DEPTH = 8
MAX_PORT_DIGITS = 9  # of a tensor reference's output index: no op has a billion outputs
MAX_FILE_BYTES = (2 << 30) - 1  # protobuf's limit on one message
# The one list of ops that forward a tensor unchanged at inference, and the cond ops that
# pick between branches; every walk of the graph (resolve, consumers, names) uses these.
PASS_THROUGH = frozenset({"Identity", "IdentityN", "Snapshot", "StopGradient",
                          "PreventGradient", "CheckNumerics", "Enter", "Exit",
                          "RefIdentity"})
SWITCH_OPS = frozenset({"Switch", "RefSwitch"})
FORWARDING = PASS_THROUGH | SWITCH_OPS | {"Merge"}


# Outputs of the ops whose count does not depend on attributes; other ops are not checked.
_TWO_OUTPUTS = frozenset({"Switch", "RefSwitch", "Merge", "RefMerge"})
_MANY_OUTPUTS = {"FusedBatchNorm": 5, "FusedBatchNormV2": 5, "FusedBatchNormV3": 6}
_ONE_OUTPUT = frozenset({
    "Const", "Placeholder", "PlaceholderWithDefault", "Identity", "Snapshot", "StopGradient",
    "PreventGradient", "CheckNumerics", "Enter", "Exit", "RefIdentity", "MatMul", "Conv2D",
    "BiasAdd", "Relu", "Relu6", "Elu", "Tanh", "Sigmoid", "Softmax", "Add", "AddV2", "Sub", "Mul",
    "RealDiv", "Maximum", "Minimum", "Rsqrt", "Sqrt", "Reciprocal", "Neg", "Square", "Reshape",
    "Squeeze", "ExpandDims", "MaxPool", "AvgPool", "Pad", "PadV2", "ConcatV2", "Transpose", "Max",
    "Mean", "Sum", "Shape", "Size", "Rank"})
# (fewest, most) data inputs of the ops jaxmir reads; None = no upper bound.
_ARITY = {op: (1, 1) for op in (
    "Identity", "Snapshot", "StopGradient", "PreventGradient", "CheckNumerics", "Enter", "Exit",
    "RefIdentity", "Relu", "Relu6", "Elu", "Tanh", "Sigmoid", "Softmax", "Rsqrt", "Sqrt",
    "Reciprocal", "Neg", "Square", "Squeeze", "MaxPool", "AvgPool", "Shape", "Size", "Rank")}
_ARITY.update({op: (2, 2) for op in (
    "MatMul", "Conv2D", "BiasAdd", "Add", "AddV2", "Sub", "Mul", "RealDiv", "Maximum", "Minimum",
    "Reshape", "ExpandDims", "Pad", "Transpose", "Max", "Mean", "Sum", "Switch", "RefSwitch")})
_ARITY.update({"Const": (0, 0), "Placeholder": (0, 0), "PlaceholderWithDefault": (1, 1),
               "PadV2": (3, 3), "ConcatV2": (2, None), "Merge": (1, None), "IdentityN": (1, None),
               "FusedBatchNorm": (5, 5), "FusedBatchNormV2": (5, 5), "FusedBatchNormV3": (5, 5)})


# The AttrValue field each attribute of these ops must use (TensorFlow's op registry).
_ATTR_KINDS = {
    "Placeholder": {"shape": "shape", "dtype": "type"},
    "PlaceholderWithDefault": {"shape": "shape", "dtype": "type"},
    "Const": {"value": "tensor", "dtype": "type"},
    "MatMul": {"transpose_a": "b", "transpose_b": "b", "T": "type"},
    "Conv2D": {"strides": "list", "dilations": "list", "padding": "s", "data_format": "s",
               "T": "type"},
    "MaxPool": {"ksize": "list", "strides": "list", "padding": "s", "data_format": "s"},
    "FusedBatchNorm": {"epsilon": "f", "is_training": "b", "data_format": "s"},
    "FusedBatchNormV2": {"epsilon": "f", "is_training": "b", "data_format": "s"},
    "FusedBatchNormV3": {"epsilon": "f", "is_training": "b", "data_format": "s"},
    "BiasAdd": {"data_format": "s", "T": "type"},
    "Add": {"T": "type"},  # a bias may be added by these too (its T is read as a dtype)
    "AddV2": {"T": "type"},
    "Cast": {"SrcT": "type", "DstT": "type"},  # a cond predicate's cast: read in its DstT
    "PartitionedCall": {"f": "func"},
    "StatefulPartitionedCall": {"f": "func"},
}


_KIND_NAMES = {"i": "an int", "f": "a float", "s": "a string", "b": "a bool", "type": "a dtype",
               "shape": "a shape", "list": "a list", "tensor": "a tensor", "func": "a function",
               "placeholder": "a placeholder"}


class LoadBudget:
    """Work and memory one load may spend, proportional to the size of the file read.

    ``nodes``: graph nodes after inlining function calls, and their bytes (a
    1-MB constant in a function called 4,096 times through nested calls is 4 GB);
    ``visits``: steps of the graph walks (keeps every walk linear in practice,
    and stops one that is not); ``bytes``: NumPy memory decoded or folded from
    constants. Going past a limit raises :class:`GraphError` naming the limit
    and the node.
    """

    def __init__(self, file_bytes: int):
        self.file_bytes = file_bytes
        self.max_nodes = BASE_NODES + int(NODES_PER_FILE_BYTE * file_bytes)
        self.max_visits = BASE_VISITS + VISITS_PER_FILE_BYTE * file_bytes
        self.max_bytes = BASE_BYTES + BYTES_PER_FILE_BYTE * file_bytes
        self.visits = 0
        self.bytes = 0
        self.node_bytes = file_bytes

    def _exceeded(self, what: str, limit: int, where: str) -> GraphError:
        return GraphError(f"{where}: loading this {self.file_bytes}-byte graph needs more than "
                          f"{limit} {what}, the most jaxmir spends on a file of this size; "
                          "the graph is corrupt or built to exhaust memory")

    def check_nodes(self, count: int, where: str,
                    what: str = "graph nodes (after inlining function calls)") -> None:
        """Refuse ``count`` nodes, or their inputs and attributes (``what``), beyond the bound
        the file's size sets."""
        if count > self.max_nodes:
            raise self._exceeded(what, self.max_nodes, where)

    def copy_nodes(self, nbytes: int, where: str) -> None:
        """Account for ``nbytes`` of nodes copied into the graph (a function's body inlined);
        they may take as many bytes as the constants may."""
        self.node_bytes += int(nbytes)
        if self.node_bytes > self.max_bytes:
            raise self._exceeded("bytes of graph nodes (after inlining function calls)",
                                 self.max_bytes, where)

    def visit(self, where: str, count: int = 1) -> None:
        self.visits += count
        if self.visits > self.max_visits:
            raise self._exceeded("steps walking the graph", self.max_visits, where)

    def allocate(self, nbytes: int, where: str) -> None:
        self.bytes += int(nbytes)
        if self.bytes > self.max_bytes:
            raise self._exceeded("bytes of constants", self.max_bytes, where)


def _message(name: str, *fields: tuple, nested: Iterable = (), map_entry: bool = False,
             oneof: str | None = None):
    """A DescriptorProto; ``oneof`` puts every field into one oneof of that name."""
    proto = descriptor_pb2.DescriptorProto(name=name)
    if oneof:
        proto.oneof_decl.add(name=oneof)
    for number, field_name, kind, label, type_name in fields:
        field = proto.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
        if oneof:
            field.oneof_index = 0
    proto.nested_type.extend(nested)
    if map_entry:
        proto.options.map_entry = True
    return proto


def _build_messages():
    """Declare the subset of tensorflow/core/framework/*.proto used by frozen graphs.

    Enum fields (DataType) are declared as int32: the wire format is the same
    varint, and an open int keeps unknown dtypes readable for a clear error.
    """
    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    s, b, i32, i64, f32, f64, bl, msg = (_F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_INT32,
                                         _F.TYPE_INT64,
                                         _F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_BOOL,
                                         _F.TYPE_MESSAGE)
    pkg = ".jaxmir_tf."
    file = descriptor_pb2.FileDescriptorProto(name="jaxmir_tf_graph.proto", package="jaxmir_tf",
                                              syntax="proto3")
    dim = _message("Dim", (1, "size", i64, opt, None), (2, "name", s, opt, None))
    file.message_type.extend([
        _message("TensorShapeProto", (2, "dim", msg, rep, pkg + "TensorShapeProto.Dim"),
                 (3, "unknown_rank", bl, opt, None), nested=[dim]),
        _message("TensorProto",
                 (1, "dtype", i32, opt, None),
                 (2, "tensor_shape", msg, opt, pkg + "TensorShapeProto"),
                 (3, "version_number", i32, opt, None),
                 (4, "tensor_content", b, opt, None),
                 (13, "half_val", i32, rep, None),
                 (5, "float_val", f32, rep, None),
                 (6, "double_val", f64, rep, None),
                 (7, "int_val", i32, rep, None),
                 (8, "string_val", b, rep, None),
                 (10, "int64_val", i64, rep, None),
                 (11, "bool_val", bl, rep, None)),
        _message("NameAttrList", (1, "name", s, opt, None),
                 (2, "attr", msg, rep, pkg + "NameAttrList.AttrEntry"),
                 nested=[_message("AttrEntry", (1, "key", s, opt, None),
                                  (2, "value", msg, opt, pkg + "AttrValue"), map_entry=True)]),
        _message("AttrValue",
                 (1, "list", msg, opt, pkg + "AttrValue.ListValue"),
                 (2, "s", b, opt, None), (3, "i", i64, opt, None), (4, "f", f32, opt, None),
                 (5, "b", bl, opt, None), (6, "type", i32, opt, None),
                 (7, "shape", msg, opt, pkg + "TensorShapeProto"),
                 (8, "tensor", msg, opt, pkg + "TensorProto"),
                 (9, "placeholder", s, opt, None),
                 (10, "func", msg, opt, pkg + "NameAttrList"),
                 oneof="value",
                 nested=[_message("ListValue",
                                  (2, "s", b, rep, None), (3, "i", i64, rep, None),
                                  (4, "f", f32, rep, None), (5, "b", bl, rep, None),
                                  (6, "type", i32, rep, None),
                                  (7, "shape", msg, rep, pkg + "TensorShapeProto"),
                                  (8, "tensor", msg, rep, pkg + "TensorProto"),
                                  (9, "func", msg, rep, pkg + "NameAttrList"))]),
        _message("NodeDef", (1, "name", s, opt, None), (2, "op", s, opt, None),
                 (3, "input", s, rep, None), (4, "device", s, opt, None),
                 (5, "attr", msg, rep, pkg + "NodeDef.AttrEntry"),
                 nested=[_message("AttrEntry", (1, "key", s, opt, None),
                                  (2, "value", msg, opt, pkg + "AttrValue"), map_entry=True)]),
        _message("OpDefArg", (1, "name", s, opt, None)),
        _message("OpDef", (1, "name", s, opt, None), (2, "input_arg", msg, rep, pkg + "OpDefArg"),
                 (3, "output_arg", msg, rep, pkg + "OpDefArg")),
        _message("FunctionDef", (1, "signature", msg, opt, pkg + "OpDef"),
                 (3, "node_def", msg, rep, pkg + "NodeDef"),
                 (4, "ret", msg, rep, pkg + "FunctionDef.RetEntry"),
                 nested=[_message("RetEntry", (1, "key", s, opt, None), (2, "value", s, opt, None),
                                  map_entry=True)]),
        _message("FunctionDefLibrary", (1, "function", msg, rep, pkg + "FunctionDef")),
        _message("VersionDef", (1, "producer", i32, opt, None),
                 (2, "min_consumer", i32, opt, None)),
        _message("GraphDef", (1, "node", msg, rep, pkg + "NodeDef"),
                 (2, "library", msg, opt, pkg + "FunctionDefLibrary"),
                 (4, "versions", msg, opt, pkg + "VersionDef")),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName("jaxmir_tf." + name))
            for name in ("GraphDef", "NodeDef", "TensorProto", "AttrValue")}


_MESSAGES = _build_messages()
GraphDefProto = _MESSAGES["GraphDef"]
TensorProto = _MESSAGES["TensorProto"]


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """One output of a node: ``name:index`` in TensorFlow's notation."""

    node: str
    index: int = 0

    @classmethod
    def parse(cls, text: str) -> "TensorRef":
        """``"name"``, ``"name:1"`` or ``"^name"``; anything else is a :class:`GraphError`."""
        control = text.startswith("^")
        name, colon, index = text[1:].partition(":") if control else text.partition(":")
        if not name or (colon and (control or not index.isdigit() or not index.isascii()
                                   or len(index) > MAX_PORT_DIGITS)):
            shown = text if len(text) <= 80 else text[:80] + "..."
            raise GraphError(f"'{shown}' is not a tensor reference; expected 'node', 'node:port' "
                             "with a port >= 0, or '^node'")
        return cls(name, int(index) if colon else 0)

    def __str__(self) -> str:
        return self.node if self.index == 0 else f"{self.node}:{self.index}"


def shape_of(shape_proto) -> tuple[int, ...] | None:
    """A TensorShapeProto as a tuple (-1 for unknown sizes), None for unknown rank."""
    if shape_proto.unknown_rank:
        return None
    return tuple(int(d.size) for d in shape_proto.dim)


def decode_tensor(tensor, where: str = "tensor", budget: LoadBudget | None = None) -> np.ndarray:
    """Decode a TensorProto into a NumPy array, checking bytes against the shape.

    Supports float32/float16/float64/int32/int64/bool from ``tensor_content``
    and from the typed value fields, including a single value broadcast to
    the declared shape (TensorFlow writes ``tf.zeros([n])`` that way).
    The declared shape is never trusted to size an allocation: raw bytes must
    match it exactly, a broadcast is capped at ``MAX_BROADCAST_ELEMENTS``, and
    the bytes are charged to ``budget`` before they are allocated.
    """
    dtype_code = tensor.dtype % 100  # reference dtypes are +100
    if dtype_code not in _NUMPY_DTYPES:
        raise GraphError(f"{where}: tensor dtype code {tensor.dtype} is not supported; "
                         f"jaxmir decodes {', '.join(DTYPE_NAMES.values())}")
    dtype = _NUMPY_DTYPES[dtype_code]
    shape = shape_of(tensor.tensor_shape)
    if shape is None or any(d < 0 for d in shape):
        raise GraphError(f"{where}: a constant must have a fully known shape, got {shape}")
    if len(shape) > MAX_RANK:
        raise GraphError(f"{where}: a constant of rank {len(shape)}; jaxmir reads constants of "
                         f"rank {MAX_RANK} or less")
    count, span = 1, 1
    for d in shape:
        count *= d
        span *= max(d, 1)
    if span > MAX_BROADCAST_ELEMENTS:  # also catches [0, 2**62, 2**62], which NumPy cannot shape
        if count == 0 or not tensor.tensor_content:
            raise GraphError(f"{where}: a constant of shape {list(shape)} is larger than jaxmir "
                             f"accepts ({MAX_BROADCAST_ELEMENTS} elements)")
    nbytes = count * dtype.itemsize
    if tensor.tensor_content:
        content = tensor.tensor_content
        if len(content) != nbytes:
            raise GraphError(f"{where}: {len(content)} bytes of {DTYPE_NAMES[dtype_code]} data "
                             f"do not fill the declared shape {list(shape)} "
                             f"({nbytes} bytes expected); the file is corrupt")
        if budget is not None:
            budget.allocate(nbytes, where)
        return np.frombuffer(content, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    values = _typed_values(tensor, dtype_code)
    if len(values) == count:
        return values.reshape(shape)
    if len(values) < count:  # TensorFlow's compact form: the last value repeated (none: zeros)
        if count > MAX_BROADCAST_ELEMENTS:
            raise GraphError(f"{where}: a constant of shape {list(shape)} ({count} elements) "
                             f"filled from {len(values)} value(s) is larger than jaxmir accepts "
                             f"({MAX_BROADCAST_ELEMENTS} elements)")
        if budget is not None:
            budget.allocate(nbytes, where)
        filled = np.full(count, values[-1] if len(values) else np.zeros((), dtype), dtype=dtype)
        filled[:len(values)] = values
        return filled.reshape(shape)
    raise GraphError(f"{where}: {len(values)} values do not fit the declared shape {list(shape)} "
                     f"({count} elements); expected at most {count} (fewer: the last repeats, "
                     "as TensorFlow fills them)")


def _typed_values(tensor, dtype_code: int) -> np.ndarray:
    if dtype_code == DT_FLOAT:
        return np.asarray(tensor.float_val, np.float32)
    if dtype_code == DT_DOUBLE:
        return np.asarray(tensor.double_val, np.float64)
    if dtype_code == DT_HALF:  # float16 bit patterns stored in int32 slots
        return np.asarray(tensor.half_val, np.uint16).view(np.float16)
    if dtype_code == DT_INT32:
        return np.asarray(tensor.int_val, np.int32)
    if dtype_code == DT_INT64:
        return np.asarray(tensor.int64_val, np.int64)
    return np.asarray(tensor.bool_val, bool)


class Graph:
    """A parsed GraphDef: nodes by name, their inputs and their consumers."""

    def __init__(self, graph_def, source: str = "<graph>", budget: LoadBudget | None = None):
        self.graph_def = graph_def
        self.source = source
        self.budget = budget or LoadBudget(graph_def.ByteSize())
        self.nodes: dict = {}
        for node in graph_def.node:
            if not node.name:
                raise GraphError(f"{source}: a node has no name; this is not a valid GraphDef")
            if node.name in self.nodes:
                raise GraphError(f"{source}: two nodes are named '{node.name}'; node names must "
                                 "be unique in a GraphDef (the file is corrupt)")
            self.nodes[node.name] = node
        self._consumers: dict[str, list[str]] | None = None
        self._const_cache: dict[str, np.ndarray] = {}
        self._resolved: dict[TensorRef, TensorRef] = {}
        self._branches: dict = {}  # Merge -> the input it runs (itself while deciding)
        self._switches: dict[str, TensorRef | None] = {}  # node -> a Switch output above it
        # the predicates held True that made a cond take its true branch (see inference_branch)
        self.true_predicates: set[str] = set()
        self._held_values: dict[TensorRef, np.generic | None] = {}  # see _held_value
        self._predicate_depth = 0

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "Graph":
        if not data:
            raise GraphError(f"{source}: the file is empty; expected a frozen TensorFlow "
                             "GraphDef (.pb) written with tf.io.write_graph(..., as_text=False)")
        budget = LoadBudget(len(data))
        nodes, parts = _count_nodes(data, budget.max_nodes)  # before parsing them
        budget.check_nodes(nodes, source)
        budget.check_nodes(parts, source, "node inputs and attributes")
        graph_def = GraphDefProto()
        try:
            graph_def.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as err:
            raise GraphError(f"{source}: not a readable GraphDef ({err}); the file is truncated, "
                             "corrupt or of another format. Expected a frozen TensorFlow graph "
                             "(.pb) as Essentia uses") from None
        if not graph_def.node:
            raise GraphError(f"{source}: parsed as protobuf but holds no graph nodes; expected a "
                             "frozen TensorFlow GraphDef (.pb) such as Essentia's models")
        _inline_function_calls(graph_def, source, budget)
        graph = cls(graph_def, source, budget)
        graph._check_references()
        return graph

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Graph":
        path = os.fspath(path)
        if os.path.isdir(path):
            raise GraphError(f"{path}: is a directory; expected a frozen GraphDef file (.pb). "
                             "SavedModel directories are not supported: freeze them first")
        try:
            _check_regular(path, os.stat(path))  # before open: opening a FIFO waits for a writer
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise GraphError(f"{path}: no such file; expected the path of a frozen TensorFlow "
                             "graph (.pb)") from None
        except OSError as err:
            raise GraphError(f"{path}: cannot be read ({err.strerror})") from None
        return cls.from_bytes(data, path)

    def _check_references(self) -> None:
        """Every input names an existing node and output; known ops have their input counts."""
        for node in self.graph_def.node:
            where = f"{self.source}: node '{node.name}' ({node.op})"
            data_inputs = 0
            for text in node.input:
                try:
                    ref = TensorRef.parse(text)
                except GraphError as err:
                    raise GraphError(f"{where}: {err}") from None
                if ref.node not in self.nodes:
                    raise GraphError(f"{where} reads '{text}', which is not in the graph; the "
                                     "file is truncated or corrupt")
                outputs = self.output_count(self.nodes[ref.node])
                if outputs is not None and ref.index >= outputs:
                    raise GraphError(f"{where} reads output {ref.index} of '{ref.node}' "
                                     f"({self.nodes[ref.node].op}), which has {outputs} "
                                     "output(s)")
                if text.startswith("^"):
                    continue
                if data_inputs < len(node.input) and node.input[data_inputs] != text:
                    raise GraphError(f"{where}: data input '{text}' comes after a control input")
                data_inputs += 1
            for key, kind in _ATTR_KINDS.get(node.op, {}).items():
                found = node.attr[key].WhichOneof("value") if key in node.attr else kind
                if found != kind and not (kind == "list" and found is None):  # [] has no field
                    raise GraphError(f"{where}: attribute '{key}' is "
                                     f"{_KIND_NAMES.get(found, 'empty')}; "
                                     f"{node.op} expects {_KIND_NAMES[kind]}")
            fewest, most = _ARITY.get(node.op, (0, None))
            if data_inputs < fewest or (most is not None and data_inputs > most):
                expected = str(fewest) if fewest == most else \
                    f"{fewest} to {most}" if most is not None else f"at least {fewest}"
                raise GraphError(f"{where} has {data_inputs} data inputs; {node.op} takes "
                                 f"{expected}")

    def output_count(self, node) -> int | None:
        """How many outputs ``node`` has, when its op fixes it; None for ops jaxmir does not
        know."""
        if node.op in _ONE_OUTPUT:
            return 1
        if node.op in _TWO_OUTPUTS:
            return 2
        if node.op == "IdentityN":
            return sum(1 for i in node.input if not i.startswith("^"))
        return _MANY_OUTPUTS.get(node.op)

    # -- queries ------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        try:
            return TensorRef.parse(name).node in self.nodes
        except GraphError:
            return False

    def node(self, name: str):
        try:
            return self.nodes[TensorRef.parse(name).node]
        except KeyError:
            raise GraphError(f"{self.source}: no node named '{name}'") from None

    def ops(self, *op_types: str) -> Iterator:
        return (n for n in self.graph_def.node if n.op in op_types)

    @staticmethod
    def data_inputs(node) -> list[TensorRef]:
        """The inputs of a node that carry tensors (control inputs ``^x`` left out)."""
        return [TensorRef.parse(i) for i in node.input if not i.startswith("^")]

    def consumers(self, name: str) -> list[str]:
        if self._consumers is None:
            self._consumers = {n: [] for n in self.nodes}
            for node in self.graph_def.node:
                for ref in self.data_inputs(node):
                    self._consumers[ref.node].append(node.name)
        return self._consumers.get(name, [])

    def attr(self, node, key: str, default=None):
        if key not in node.attr:
            return default
        value = node.attr[key]
        kind = value.WhichOneof("value")
        if kind == "list":
            lst = value.list
            for field in ("i", "f", "s", "b", "type"):
                if len(getattr(lst, field)):
                    return list(getattr(lst, field))
            return []
        if kind == "shape":
            return shape_of(value.shape)
        if kind == "s":
            return value.s.decode("utf-8", "replace")
        return getattr(value, kind) if kind else default

    def typed_attr(self, node, key: str, kind: type, default=None):
        """``attr`` checked to be of ``kind`` (bool, int, float, str, list of int), else GraphError.

        A float attribute written as an int is accepted; a bool is never an int.
        """
        value = self.attr(node, key, default)
        if value is None and default is None:
            raise GraphError(f"{self.source}: node '{node.name}' ({node.op}) has no attribute "
                             f"'{key}'")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is list:
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                 for v in value)
        if not ok:
            name = "a list of ints" if kind is list else f"a {kind.__name__}"
            raise GraphError(f"{self.source}: attribute '{key}' of '{node.name}' ({node.op}) is "
                             f"{value!r}; expected {name}")
        return value

    # -- following the inference path ---------------------------------------------------
    def resolve(self, ref: TensorRef | str) -> TensorRef:
        """Follow a tensor back through pass-through ops to the op that computes it.

        ``Identity`` and friends forward their input; ``Switch`` forwards its data
        input (whichever branch); ``Merge`` forwards the input of the branch the graph
        runs (:meth:`inference_branch`): the *false* one of a graph frozen straight from
        training, where ``cond`` switches on the training flag.
        """
        ref = TensorRef.parse(ref) if isinstance(ref, str) else ref
        if ref.node not in self.nodes:
            raise GraphError(f"{self.source}: no node named '{ref.node}'")
        path, on_path = [], set()
        while ref not in self._resolved:
            node = self.nodes[ref.node]
            if node.op in PASS_THROUGH or node.op in SWITCH_OPS:
                following = self.data_inputs(node)
                if not following:
                    raise GraphError(f"{self.source}: {node.op} '{node.name}' has no data input "
                                     "to pass through")
                following = self._forwarded_input(node, ref, following)
            elif node.op == "Merge" and ref.index == 0:
                following = self.inference_branch(node)
            else:
                self._resolved[ref] = ref
                break
            self.budget.visit(self.source)
            path.append(ref)
            on_path.add(ref)
            if following in on_path:
                raise GraphError(f"{self.source}: pass-through ops form a cycle through "
                                 f"'{node.name}'; a frozen graph must be acyclic")
            ref = following
        result = self._resolved[ref]
        for step in path:  # memoised: a chain of n pass-throughs is walked once, not n times
            self._resolved[step] = result
        return result

    def inference_branch(self, merge) -> TensorRef:
        """The input of a ``cond`` Merge that the graph computes when run as Essentia runs it:
        the false branch, where a training flag fed ``False`` (Essentia's ``isTraining``) leads,
        or the true one when the cond's predicate is held ``True`` (:meth:`_held_true`; one
        with no value before the graph runs is refused). A predicate held ``True`` where the
        branches' Switches do not share it (conds nested, ``tf.case``) is refused: which branch
        runs is not read there."""
        if merge.name not in self._branches:  # every walk asks again; each search is charged
            inputs = self.data_inputs(merge)
            if not inputs:
                raise GraphError(f"{self.source}: Merge '{merge.name}' has no data inputs")
            if any(self.nodes[ref.node].op in ("NextIteration", "RefNextIteration")
                   for ref in inputs):  # its Enter input alone would be zero iterations
                raise GraphError(f"{self.source}: Merge '{merge.name}' is a tf.while_loop's; "
                                 "jaxmir reads no loops")
            self._branches[merge.name] = merge  # re-entered through its predicate: a cycle
            switches = [self._switch_of(ref) for ref in inputs]
            predicates = {self._predicate_source(s) for s in switches if s is not None}
            held = sorted(p.node for p in predicates if p is not None and self._held_true(p))
            if held and len(predicates) > 1:
                raise GraphError(
                    f"{self.source}: the branches of Merge '{merge.name}' are chosen by several "
                    f"predicates, {', '.join(repr(name) for name in held)} held True among "
                    "them (conds nested, or tf.case); jaxmir reads a cond whose predicate is held "
                    "False, or held True alone")
            port = 1 if held else 0
            self.true_predicates.update(held)
            # Without a Switch to tell the branches apart, tf.cond lists the false branch first.
            self._branches[merge.name] = next(
                (ref for ref, s in zip(inputs, switches) if s is not None and s.index == port),
                inputs[min(port, len(inputs) - 1)])
        branch = self._branches[merge.name]
        if branch is merge:
            raise GraphError(f"{self.source}: the predicate of Merge '{merge.name}' depends on "
                             "its own output; a frozen graph must be acyclic")
        return branch

    def _predicate_source(self, switch: TensorRef) -> TensorRef | None:
        """The tensor ``switch``'s predicate comes from, through pass-through ops and the Switches
        that carry it into an enclosing cond's branch (not through a Merge), or None."""
        inputs = self.data_inputs(self.nodes[switch.node])
        return self._forwarded(inputs[1]) if len(inputs) >= 2 else None

    def _forwarded(self, ref: TensorRef) -> TensorRef | None:
        """The tensor pass-through ops and Switches forward as ``ref`` (None: none, or a loop)."""
        seen = set()
        while self.nodes[ref.node].op in PASS_THROUGH | SWITCH_OPS:
            if ref.node in seen:
                return None
            self.budget.visit(self.source)
            seen.add(ref.node)
            following = self.data_inputs(self.nodes[ref.node])
            if not following:
                return None
            ref = self._forwarded_input(self.nodes[ref.node], ref, following)
        return ref

    def _forwarded_input(self, node, ref: TensorRef, inputs: list[TensorRef]) -> TensorRef:
        """The input a pass-through op or Switch forwards as ``ref``: ``IdentityN``'s k-th
        output is its k-th input; the others forward their first."""
        if node.op != "IdentityN":
            return inputs[0]
        if ref.index >= len(inputs):
            raise GraphError(f"{self.source}: IdentityN '{node.name}' has {len(inputs)} "
                             f"input(s); no output {ref.index}")
        return inputs[ref.index]

    def _held_true(self, predicate: TensorRef) -> bool:
        """Whether ``predicate`` is True as Essentia runs the graph (:meth:`_held_value`);
        a predicate whose value is not read that way is refused."""
        value = self._held_value(predicate)
        if value is None:
            node = self.nodes[predicate.node]
            raise GraphError(
                f"{self.source}: a cond's predicate '{node.name}' ({node.op}) is not one "
                "jaxmir evaluates before the graph runs: it reads bool and number Consts, "
                "PlaceholderWithDefault defaults, the fed training flag (False), and "
                "comparisons, logic, casts and reshapes of these (not the input's values, nor "
                "strings)")
        return bool(value)

    def _held_value(self, ref: TensorRef | None) -> np.generic | None:
        """The scalar ``ref`` holds as Essentia runs the graph (a NumPy scalar of its dtype),
        or None where it depends on anything else: a scalar ``Const``, a
        ``PlaceholderWithDefault``'s default, a fed bool ``Placeholder`` (a training flag:
        False), and the logic, comparisons, casts, reshapes and conds of these. The walk's
        depth, conds' predicates within predicates included, is bounded (a predicate is a
        handful of ops): deeper is None."""
        ref = self._forwarded(ref) if ref is not None else None
        if ref is None:
            return None
        if ref not in self._held_values:
            if self._predicate_depth >= _MAX_PREDICATE_DEPTH:
                return None
            self.budget.visit(self.source)
            self._predicate_depth += 1
            try:
                self._held_values[ref] = self._read_held_value(self.nodes[ref.node], ref)
            finally:
                self._predicate_depth -= 1
        return self._held_values[ref]

    def _read_held_value(self, node, ref: TensorRef) -> np.generic | None:
        if node.op == "Const":
            if self.attr(node, "dtype") not in _NUMPY_DTYPES:
                return None  # strings among them
            value = self.constant(node.name)
            return value.reshape(())[()] if value is not None and value.size == 1 else None
        if node.op == "Placeholder":
            return np.bool_(False) if self.attr(node, "dtype") == DT_BOOL else None
        inputs = self.data_inputs(node)
        if node.op == "Merge":  # another cond's output (its own: a cycle, refused there)
            return self._held_value(self.inference_branch(node)) if ref.index == 0 else None
        if node.op in ("PlaceholderWithDefault", "Reshape", "Squeeze", "ExpandDims"):  # its input
            return self._held_value(inputs[0]) if inputs else None
        rule = _PREDICATE_OPS.get(node.op)
        if rule is None or len(inputs) != rule[0]:
            return None
        operands = [self._held_value(r) for r in inputs]
        if any(value is None for value in operands):
            return None
        with np.errstate(all="ignore"):  # a cast overflows, NaN compares, as TensorFlow's do
            if node.op == "Cast":
                target = _NUMPY_DTYPES.get(self.attr(node, "DstT"))
                return None if target is None else np.asarray(operands[0]).astype(target)[()]
            return np.bool_(rule[1](*operands))

    def _switch_of(self, ref: TensorRef) -> TensorRef | None:
        """The output of the Switch above ``ref`` (its port: 0 the false branch, 1 the true
        one), or None where there is none."""
        if self.nodes[ref.node].op in SWITCH_OPS:
            return ref
        return self._switch_above(ref.node)

    def _switch_above(self, name: str) -> TensorRef | None:
        """The Switch output above node ``name``: the first of its inputs (control inputs too)
        that reads a Switch, or has one above. In a ``cond`` every Switch a branch reads sits
        on the same port. Each node is examined once per graph (its answer kept), so every
        Merge's question together cost one walk of the graph; a cycle ends the search where
        it closes."""
        found, in_progress = self._switches, set()
        stack = [name]
        while stack:
            current = stack[-1]
            if current in found:
                stack.pop()
                continue
            self.budget.visit(self.source)
            inputs = [TensorRef.parse(i) for i in self.nodes[current].input]
            # a missing one: reported elsewhere
            inputs = [r for r in inputs if r.node in self.nodes]
            pending = [r.node for r in inputs if r.node not in found and r.node not in in_progress
                       and self.nodes[r.node].op not in SWITCH_OPS]
            if pending and current not in in_progress:
                in_progress.add(current)
                stack.extend(pending)
                continue
            found[current] = next(
                (switch for switch in (r if self.nodes[r.node].op in SWITCH_OPS
                                       else found.get(r.node) for r in inputs)
                 if switch is not None),
                None)
            in_progress.discard(current)
            stack.pop()
        return found[name]

    def constant(self, ref: TensorRef | str, where: str | None = None) -> np.ndarray | None:
        """The value of a tensor that is a ``Const`` (after pass-throughs), else None."""
        resolved = self.resolve(ref)
        node = self.nodes[resolved.node]
        if node.op != "Const":
            return None
        if node.name not in self._const_cache:
            where = f"{self.source}: Const '{node.name}'"
            if "value" not in node.attr or node.attr["value"].WhichOneof("value") != "tensor":
                raise GraphError(f"{where} has no tensor value")
            tensor = node.attr["value"].tensor
            declared = self.attr(node, "dtype")
            if declared is not None and declared != tensor.dtype:
                raise GraphError(f"{where} is declared {_dtype_name(declared)} but holds a "
                                 f"{_dtype_name(tensor.dtype)} tensor; the file is corrupt")
            self._const_cache[node.name] = decode_tensor(tensor, where, self.budget)
        return self._const_cache[node.name]

    def op_histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.graph_def.node:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _dtype_name(code) -> str:
    return DTYPE_NAMES.get(code, f"dtype code {code}") if isinstance(code, int) else repr(code)


_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")

# The ops a cond's predicate is read through: how many operands each takes, and its value.
_PREDICATE_OPS = {
    "Cast": (1, None),  # to its DstT
    "LogicalNot": (1, lambda a: not a),
    "LogicalAnd": (2, lambda a, b: bool(a) and bool(b)),
    "LogicalOr": (2, lambda a, b: bool(a) or bool(b)),
    "Equal": (2, lambda a, b: a == b),
    "NotEqual": (2, lambda a, b: a != b),
    "Less": (2, lambda a, b: a < b),
    "LessEqual": (2, lambda a, b: a <= b),
    "Greater": (2, lambda a, b: a > b),
    "GreaterEqual": (2, lambda a, b: a >= b),
}
_MAX_PREDICATE_DEPTH = 64


def _check_regular(path: str, status: os.stat_result) -> None:
    """A graph is read whole: a FIFO or a device (``/dev/zero``) would never end, and a file
    beyond protobuf's 2-GB limit on a message cannot be a GraphDef."""
    if not stat.S_ISREG(status.st_mode):
        raise GraphError(f"{path}: is not a regular file (a pipe, a device or a socket); expected "
                         "a frozen TensorFlow graph (.pb) file")
    if status.st_size > MAX_FILE_BYTES:
        raise GraphError(f"{path}: holds {status.st_size} bytes, more than protobuf's limit of "
                         f"{MAX_FILE_BYTES} on one message; it is not a GraphDef")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The protobuf varint at ``at``: ``(value, where the next field starts)``; IndexError past
    the end."""
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80 or shift > 63:
            return value, at
        shift += 7


# Field numbers of the repeated fields that cost memory well beyond their bytes on the wire.
_GRAPH_NODE, _GRAPH_LIBRARY = 1, 2  # GraphDef.node, GraphDef.library
_LIBRARY_FUNCTION, _FUNCTION_NODE = 1, 3  # FunctionDefLibrary.function, FunctionDef.node_def
_NODE_INPUT, _NODE_ATTR = 3, 5  # NodeDef.input, NodeDef.attr
_LENGTH_DELIMITED = 2


def _fields(data: bytes, at: int, end: int):
    """``(field number, wire type, first byte, end)`` of each field of the message in
    ``data[at:end]``, without parsing it; a malformed field ends the walk (the parser then
    reports it)."""
    try:
        while at < end:
            tag, at = _varint(data, at)
            kind = tag & 7
            if kind == 0:
                _, after = _varint(data, at)
            elif kind == 1:
                after = at + 8
            elif kind == 5:
                after = at + 4
            elif kind == _LENGTH_DELIMITED:
                size, at = _varint(data, at)
                after = at + size
            else:  # groups: not in a GraphDef
                return
            if after > end:
                return
            yield tag >> 3, kind, at, after
            at = after
    except IndexError:
        return


def _count_nodes(data: bytes, limit: int) -> tuple[int, int]:
    """``(nodes, inputs and attributes)`` of a serialized GraphDef, in the graph and in its
    function library, each counted up to ``limit + 1`` without parsing them. Parsing takes ~130
    bytes of memory a node and jaxmir ~180 an input, so a file of tiny ones (2 or 3 bytes on
    the wire) would take 50x its size before a budget could refuse it."""
    counts = [0, 0]  # nodes, their inputs and attributes

    def node(start: int, end: int) -> bool:
        """Count the NodeDef in ``data[start:end]``; False once a count is past the limit."""
        counts[0] += 1
        for number, kind, _, _ in _fields(data, start, end):
            counts[1] += kind == _LENGTH_DELIMITED and number in (_NODE_INPUT, _NODE_ATTR)
            if counts[1] > limit:
                return False
        return counts[0] <= limit

    def library(start: int, end: int) -> bool:
        for number, kind, f_start, f_end in _fields(data, start, end):
            if (number, kind) != (_LIBRARY_FUNCTION, _LENGTH_DELIMITED):
                continue
            for n_number, n_kind, n_start, n_end in _fields(data, f_start, f_end):
                if (n_number, n_kind) == (_FUNCTION_NODE, _LENGTH_DELIMITED) \
                        and not node(n_start, n_end):
                    return False
        return True

    for number, kind, start, end in _fields(data, 0, len(data)):
        if kind != _LENGTH_DELIMITED:
            continue
        within = node(start, end) if number == _GRAPH_NODE else \
            library(start, end) if number == _GRAPH_LIBRARY else True
        if not within:
            break
    return counts[0], counts[1]


def _inline_function_calls(graph_def, source: str, budget: LoadBudget,
                           max_depth: int = MAX_CALL_DEPTH) -> None:
    """Replace ``PartitionedCall`` nodes by the body of the function they call, in place.

    TF 2 frozen graphs (Essentia's ``serving_default_model_Placeholder`` ->
    ``PartitionedCall`` heads) keep the network in the function library. Each
    body node becomes ``<call>/<node>``; the call node becomes an ``Identity``
    of the function's first output, so its name still names the output.
    Calls nested in bodies are inlined level by level, at most ``max_depth``
    levels, and the nodes and their bytes are checked against ``budget`` before each copy.
    """
    functions = {f.signature.name: f for f in graph_def.library.function}
    if len(functions) < len(graph_def.library.function):  # TensorFlow refuses such a library
        names = [f.signature.name for f in graph_def.library.function]
        twice = sorted({name for name in names if names.count(name) > 1})
        raise GraphError(f"{source}: the function library defines {twice[0][:200]!r} more than "
                         "once; the file is corrupt")
    body_bytes = {name: sum(node.ByteSize() for node in f.node_def)
                  for name, f in functions.items()}
    for level in range(max_depth + 1):
        calls = [n for n in graph_def.node if n.op in _CALL_OPS]
        if not calls:
            return
        if level == max_depth:
            break
        for call in calls:
            name = call.attr["f"].func.name if "f" in call.attr else ""
            if name not in functions:
                raise GraphError(f"{source}: '{call.name}' calls function '{name}', which is not "
                                 "in the graph's library; the file is incomplete")
            where = f"{source}: inlining '{name}' at '{call.name}'"
            budget.check_nodes(len(graph_def.node) + len(functions[name].node_def), where)
            budget.copy_nodes(body_bytes[name], where)
            _inline(graph_def, call, functions[name], source)
    raise GraphError(f"{source}: function calls nested deeper than {max_depth} levels")


def _inline(graph_def, call, function, source: str) -> None:
    args = [a.name for a in function.signature.input_arg]
    call_inputs = [i for i in call.input if not i.startswith("^")]
    if len(call_inputs) != len(args):
        raise GraphError(f"{source}: '{call.name}' passes {len(call_inputs)} input(s) to a "
                         f"function of {len(args)} argument(s)")
    bound = dict(zip(args, call_inputs))

    def rename(reference: str) -> str:
        control = reference.startswith("^")
        parts = reference.lstrip("^").split(":")
        if parts[0] in bound and len(parts) == 1:
            target = bound[parts[0]]
        else:  # "node:output_arg:index"; the index counts within the op's first output arg
            index = parts[2] if len(parts) == 3 else "0"
            target = f"{call.name}/{parts[0]}" + ("" if index == "0" else f":{index}")
        return ("^" + target.lstrip("^").split(":")[0]) if control else target

    for node in function.node_def:
        copy = graph_def.node.add()
        copy.CopyFrom(node)
        copy.name = f"{call.name}/{node.name}"
        del copy.input[:]
        copy.input.extend(rename(i) for i in node.input)
    outputs = [a.name for a in function.signature.output_arg]
    if not outputs or outputs[0] not in function.ret or not function.ret[outputs[0]]:
        raise GraphError(f"{source}: function '{function.signature.name}' called by "
                         f"'{call.name}' has no first output to return")
    result = rename(function.ret[outputs[0]])
    for key in list(call.attr):
        del call.attr[key]
    call.op = "Identity"
    del call.input[:]
    call.input.append(result)
