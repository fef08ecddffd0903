"""Follow a frozen graph's inference path and read layers off it by structure.

The importer never trusts variable names. It starts from the output node,
marks every node the output depends on at inference (taking the false,
inference branch of each ``cond`` on the training flag), and then reads
layers by walking that path: a ``Conv2D`` with a constant kernel, the
``BiasAdd`` after it, its activation, the batch norm after that (fused, or
TensorFlow's unfused ``x * a + b`` form), the ``MaxPool``; a chain of
``MatMul`` layers for a dense head.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from jaxmir.errors import GraphError, UnsupportedGraphError
from jaxmir.spec import Activation, BatchNorm as BatchNormLayer, Dense
from jaxmir.tfgraph.graphdef import DT_FLOAT, DTYPE_NAMES, FORWARDING, Graph, TensorRef

ACTIVATION_OPS = {"Relu": "relu", "Elu": "elu", "Tanh": "tanh", "Sigmoid": "sigmoid",
                  "Softmax": "softmax"}
BATCH_NORM_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
_FOLD = {
    "Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "RealDiv": np.divide, "Maximum": np.maximum, "Minimum": np.minimum,
    "Rsqrt": lambda x: (1.0 / np.sqrt(x)).astype(x.dtype), "Sqrt": np.sqrt,
    "Reciprocal": lambda x: (1.0 / x).astype(x.dtype), "Neg": np.negative, "Square": np.square,
    "Reshape": lambda x, shape: np.reshape(x, shape), "Squeeze": np.squeeze,
    "ExpandDims": lambda x, axis: np.expand_dims(x, int(axis)),
}
_UNARY = frozenset({"Rsqrt", "Sqrt", "Reciprocal", "Neg", "Square", "Squeeze"})
_INDEX_ARGUMENT = frozenset({"Reshape", "ExpandDims"})  # second operand: ints, not data


@dataclasses.dataclass(eq=False)
class BatchNorm:
    """Inference batch norm: ``(x - mean) * scale / sqrt(var + epsilon) + bias``."""

    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float
    node: str  # the graph node that outputs the normalised tensor

    def with_epsilon(self, epsilon: float) -> "BatchNorm":
        """The same transform expressed with another epsilon (only ``var + epsilon`` matters)."""
        if epsilon == self.epsilon:
            return self
        var = (self.var.astype(np.float64) + self.epsilon - epsilon).astype(np.float32)
        return dataclasses.replace(self, var=var, epsilon=epsilon)

    def variables(self) -> tuple[dict, dict]:
        """(params, batch_stats) as Flax's BatchNorm holds them."""
        return ({"scale": self.scale, "bias": self.bias}, {"mean": self.mean, "var": self.var})


@dataclasses.dataclass(eq=False)
class ConvLayer:
    """A Conv2D with its bias, activation, batch norm and max-pool, as found in the graph."""

    kernel: np.ndarray           # [kh, kw, in, out]
    bias: np.ndarray
    padding: object              # "SAME" | "VALID" | ((top, bottom), (left, right))
    activation: str
    batch_norm: BatchNorm | None
    pool: tuple | None           # ((wh, ww), (sh, sw), padding)
    conv_node: str
    output_node: str             # last node of the block
    pool_node: str | None = None
    features_node: str = ""      # the block's output before pooling


class InferencePath:
    """The part of a graph that computes ``output`` at inference time."""

    def __init__(self, graph: Graph, output: str):
        self.graph = graph
        self.output = TensorRef.parse(output).node
        if self.output not in graph.nodes:
            raise GraphError(f"{graph.source}: no node named '{self.output}'")
        self.live = self._live_nodes()
        self._check_acyclic()
        self._constant: dict[str, bool] = {}
        self._values: dict[TensorRef, np.ndarray] = {}

    # -- structure ----------------------------------------------------------------------
    def _live_nodes(self) -> set[str]:
        live, stack = set(), [self.output]
        while stack:
            name = stack.pop()
            if name in live:
                continue
            live.add(name)
            self.graph.budget.visit(self.graph.source)
            stack.extend(self._live_inputs(self.graph.nodes[name]))
        return live

    def _live_inputs(self, node) -> list[str]:
        """The nodes ``node`` reads at inference: a Merge reads only its inference branch."""
        if node.op == "Merge":
            return [self.graph.inference_branch(node).node]
        return [ref.node for ref in self.graph.data_inputs(node)]

    def _check_acyclic(self) -> None:
        """Raise GraphError if the inference path has a cycle (TensorFlow refuses those too)."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for root in self.live:
            if root in state:
                continue
            stack = [(root, iter(self._live_inputs(self.graph.nodes[root])))]
            state[root] = 1
            while stack:
                name, inputs = stack[-1]
                following = next(inputs, None)
                if following is None:
                    state[name] = 2
                    stack.pop()
                elif state.get(following) == 1:
                    raise GraphError(f"{self.graph.source}: the nodes computing '{self.output}' "
                                     f"form a cycle through '{following}' and '{name}'; a frozen "
                                     "graph must be acyclic")
                elif following not in state:
                    self.graph.budget.visit(self.graph.source)
                    state[following] = 1
                    stack.append((following, iter(self._live_inputs(self.graph.nodes[following]))))

    def consumers(self, name: str) -> list:
        """Live nodes that use ``name``'s output, looking through pass-through ops."""
        found, seen = [], set()
        queue = collections.deque((c, name) for c in self.graph.consumers(name))
        while queue:
            consumer, source = queue.popleft()
            if consumer in seen or consumer not in self.live:
                continue
            node = self.graph.nodes[consumer]
            if node.op == "Merge" and source not in self._live_inputs(node):
                continue  # the training branch of a cond: not an edge at inference
            seen.add(consumer)
            self.graph.budget.visit(self.graph.source)
            if node.op in FORWARDING:
                queue.extend((c, consumer) for c in self.graph.consumers(consumer))
            elif node.op not in _SHAPE_OPS:
                found.append(node)
        return found

    def next_op(self, name: str):
        """The single live consumer of ``name``, or None at the end of the path."""
        consumers = self.consumers(name)
        if len(consumers) > 1:
            raise self.unsupported(f"'{name}' feeds {len(consumers)} layers "
                                   f"({', '.join(c.name for c in consumers)}) "
                                   "where one was expected")
        return consumers[0] if consumers else None

    def producer(self, ref):
        return self.graph.nodes[self.graph.resolve(ref).node]

    def unsupported(self, what: str) -> UnsupportedGraphError:
        return UnsupportedGraphError(f"{self.graph.source}: {what}")

    # -- constants ----------------------------------------------------------------------
    def is_constant(self, ref) -> bool:
        """True when a tensor depends on no placeholder (on the inference path).

        Walked with an explicit stack (graphs can be deeper than Python's
        recursion limit); a cycle is a GraphError.
        """
        root = self.graph.resolve(ref).node
        stack, on_stack = [root], set()
        while stack:
            name = stack[-1]
            if name in self._constant:
                stack.pop()
                continue
            node = self.graph.nodes[name]
            if node.op == "Const":
                self._constant[name] = True
            elif node.op.startswith("Placeholder") or node.op in ("VariableV2", "VarHandleOp"):
                self._constant[name] = False
            else:
                inputs = [self.graph.resolve(r).node for r in self.graph.data_inputs(node)]
                pending = [i for i in inputs if i not in self._constant]
                if not pending:
                    self._constant[name] = all(self._constant[i] for i in inputs)
                    on_stack.discard(name)
                else:
                    if name in on_stack:
                        raise GraphError(f"{self.graph.source}: '{name}' depends on itself through "
                                         f"'{pending[0]}'; a frozen graph must be acyclic")
                    on_stack.add(name)
                    self.graph.budget.visit(self.graph.source, len(pending))
                    stack.extend(pending)
                continue
            stack.pop()
        return self._constant[root]

    def value(self, ref, kind: str | None = None) -> np.ndarray:
        """Fold a constant tensor to NumPy (Const and simple arithmetic on Consts).

        ``kind`` ("float" or "int") requires that dtype family, as the op
        reading the value does in TensorFlow. Folding uses an explicit stack;
        every folded result is charged to the graph's budget before it is made.
        """
        root = self.graph.resolve(ref)
        stack = [root]
        while stack:
            current = stack[-1]
            if current in self._values:
                stack.pop()
                continue
            constant = self.graph.constant(current)
            if constant is not None:
                self._values[current] = constant
                stack.pop()
                continue
            node = self.graph.nodes[current.node]
            if node.op not in _FOLD or not self.is_constant(current):
                raise self.unsupported(f"cannot evaluate the constant '{node.name}' (op "
                                       f"{node.op}); expected a Const or arithmetic on Consts")
            inputs = [self.graph.resolve(r) for r in self.graph.data_inputs(node)]
            pending = [r for r in inputs if r not in self._values]
            if pending:  # is_constant above has ruled out cycles
                self.graph.budget.visit(self.graph.source, len(pending))
                stack.extend(pending)
                continue
            self._values[current] = self._fold(node, [self._values[r] for r in inputs])
            stack.pop()
        result = self._values[root]
        if kind is not None:
            self._check_kind(result, kind, root.node)
        return result

    def _fold(self, node, args: list) -> np.ndarray:
        where = f"{self.graph.source}: '{node.name}' ({node.op})"
        arity = 1 if node.op in _UNARY else 2
        if len(args) != arity:
            raise self.unsupported(f"'{node.name}' ({node.op}) has {len(args)} inputs, expected "
                                   f"{arity}")
        if node.op in _INDEX_ARGUMENT:
            self._check_kind(args[1], "int", node.name)
            size = args[0].size
        else:
            for arg in args:
                self._check_kind(arg, "number", node.name)
            try:
                size = int(np.prod(np.broadcast_shapes(*(a.shape for a in args)), dtype=np.int64))
            except ValueError:
                raise self.unsupported(f"'{node.name}' ({node.op}) combines shapes "
                                       f"{[list(a.shape) for a in args]}, which do not "
                                       "broadcast") from None
        self.graph.budget.allocate(size * max(a.dtype.itemsize for a in args), where)
        try:
            with np.errstate(all="ignore"):
                return np.asarray(_FOLD[node.op](*args))
        except (ValueError, TypeError, IndexError) as err:
            raise self.unsupported(f"'{node.name}' ({node.op}) cannot be applied to constants of "
                                   f"shapes {[list(a.shape) for a in args]}: {err}") from None

    def _check_kind(self, value: np.ndarray, kind: str, name: str) -> None:
        ok = {"float": np.issubdtype(value.dtype, np.floating),
              "int": np.issubdtype(value.dtype, np.integer),
              "number": np.issubdtype(value.dtype, np.number)}[kind]
        if not ok:
            raise self.unsupported(f"'{name}' is a constant of {value.dtype} where {kind} values "
                                   "are expected")

    def vector(self, ref, length: int | None = None, what: str = "vector") -> np.ndarray:
        """A float constant folded to a float32 vector (biases, batch-norm statistics).

        ``length``, when given, is checked (the channels the vector applies to); its values lie
        along the last axis (``[n]``, ``[1, n]``: a ``[n, 1]`` constant broadcasts otherwise).
        """
        value = self.value(ref, "float")
        vector = value.astype(np.float32, copy=False).reshape(-1)
        across = any(d != 1 for d in value.shape[:-1])  # broadcast over the batch by TensorFlow
        if across or (length is not None and vector.shape != (length,)):
            raise self.unsupported(f"{what} '{self.graph.resolve(ref).node}' has shape "
                                   f"{list(value.shape)}; expected "
                                   f"{'its' if length is None else length} values along the "
                                   "last axis")
        return vector

    def kernel(self, ref, rank: int, what: str) -> np.ndarray:
        """A float constant of the given rank and non-empty axes, as float32."""
        value = self.value(ref, "float")
        if value.ndim != rank or value.size == 0:
            raise self.unsupported(f"{what} has a kernel of shape {list(value.shape)}; expected "
                                   f"{rank} non-empty axes")
        return value.astype(np.float32, copy=False)

    def split_operands(self, node) -> tuple[TensorRef, TensorRef] | None:
        """(data input, constant input) of a binary op, or None if not that shape."""
        inputs = self.graph.data_inputs(node)
        if len(inputs) != 2:
            return None
        a, b = inputs
        if self.is_constant(b) and not self.is_constant(a):
            return a, b
        if self.is_constant(a) and not self.is_constant(b):
            return b, a
        return None

    def float_op(self, node) -> None:
        """:class:`UnsupportedGraphError` unless ``node`` computes in float32 (its ``T``):
        jaxmir runs every layer in float32, TensorFlow a ``half`` one in float16.
        :class:`GraphError` where it has no ``T``: the ops read here (Conv2D, MatMul, BiasAdd,
        Add) have no default one in TensorFlow, which does not load such a graph."""
        kind = self.graph.typed_attr(node, "T", int)  # a dtype's enum (checked at parse time)
        if kind != DT_FLOAT:
            raise self.unsupported(f"'{node.name}' ({node.op}) computes in "
                                   f"{DTYPE_NAMES.get(kind, f'dtype {kind}')}; jaxmir reads "
                                   "float32 graphs")

    def bias(self, node, width: int, what: str) -> np.ndarray:
        """The constant a BiasAdd or Add ``node`` adds over its input's last axis of ``width``
        (:meth:`vector`); a BiasAdd in NHWC, its default."""
        self.float_op(node)
        if node.op == "BiasAdd" and self.graph.typed_attr(node, "data_format", str, "NHWC") \
                not in ("NHWC", "N...C"):
            raise self.unsupported(f"BiasAdd '{node.name}' is "
                                   f"{self.graph.attr(node, 'data_format')}; only NHWC graphs "
                                   "are supported")
        return self.vector(self.split_operands(node)[1], width, what)

    # -- layers ---------------------------------------------------------------------------
    def batch_norm_at(self, node) -> BatchNorm | None:
        """A batch norm starting at ``node``: a FusedBatchNorm, or ``x * a`` followed by ``+ b``."""
        if node is None:
            return None
        if node.op in BATCH_NORM_OPS:
            g = self.graph
            # TensorFlow's default where the attribute is missing (a graph written with
            # strip_default_attrs has none where it is True) is True: batch statistics
            if g.typed_attr(node, "is_training", bool, True):
                held = ", ".join(f"'{name}'" for name in sorted(g.true_predicates))
                if "is_training" not in node.attr:
                    why = " (it has no is_training attribute: TensorFlow's default is True)"
                else:
                    why = f" (the graph holds its cond predicate {held} True)" if held else ""
                raise self.unsupported(f"batch norm '{node.name}' computes batch statistics "
                                       f"(is_training=True) on the path the graph runs{why}; "
                                       "freeze it with the training flag False")
            if g.typed_attr(node, "data_format", str, "NHWC") != "NHWC":
                raise self.unsupported(f"batch norm '{node.name}' is "
                                       f"{g.attr(node, 'data_format')}; only NHWC is supported")
            epsilon = g.typed_attr(node, "epsilon", float, 1e-4)
            if not np.isfinite(epsilon) or epsilon < 0:
                raise self.unsupported(f"batch norm '{node.name}' has epsilon {epsilon}; expected "
                                       "a finite value >= 0")
            inputs = g.data_inputs(node)
            if len(inputs) != 5:
                raise self.unsupported(f"batch norm '{node.name}' has {len(inputs)} inputs; "
                                       "expected 5 (x, scale, offset, mean, variance)")
            scale = self.vector(inputs[1], what=f"the scale of batch norm '{node.name}'")
            bias, mean, var = (self.vector(r, scale.size, f"{what} of batch norm '{node.name}'")
                               for r, what in zip(inputs[2:], ("the offset", "the mean",
                                                               "the variance")))
            return self._normalising(BatchNorm(scale, bias, mean, var, epsilon, node.name))
        if node.op != "Mul" or self.split_operands(node) is None:
            return None
        add = self.next_op(node.name)
        if add is None or add.op not in ("Add", "AddV2") or self.split_operands(add) is None:
            return None
        scale_ref = self.split_operands(node)[1]
        shift_ref = self.split_operands(add)[1]
        return self._unfused_batch_norm(scale_ref, shift_ref, add.name)

    def _normalising(self, batch_norm: BatchNorm) -> BatchNorm:
        """``batch_norm`` if each ``var + epsilon`` is > 0; else :class:`GraphError`: the graph
        divides by the square root of a negative number or zero (TensorFlow's outputs are NaN or
        infinite; a flipped sign bit makes such a variance)."""
        denominators = batch_norm.var.astype(np.float64) + batch_norm.epsilon
        bad = np.flatnonzero(~(denominators > 0))
        if bad.size:
            raise GraphError(f"{self.graph.source}: batch norm '{batch_norm.node}' has a variance "
                             f"of {batch_norm.var[bad[0]]:.3g} (channel {bad[0]}) with epsilon "
                             f"{batch_norm.epsilon:.3g}; variance + epsilon must be > 0: the graph "
                             "would give NaN or infinite outputs (the file is damaged)")
        return batch_norm

    def _unfused_batch_norm(self, scale_ref, shift_ref, out: str) -> BatchNorm:
        """Recover gamma/beta/mean/var/epsilon from TensorFlow's ``batchnorm/mul``, ``sub``.

        TF writes ``a = rsqrt(var + eps) * gamma`` and ``b = beta - mean * a``.
        If the graph was constant-folded and only ``a`` and ``b`` remain, the
        same transform is kept as ``scale=a, bias=b, mean=0, var=1, eps=0``.
        """
        a_node, b_node = self.producer(scale_ref), self.producer(shift_ref)
        try:
            rsqrt, gamma = a_node, None
            if a_node.op == "Mul":
                first, second = self.graph.data_inputs(a_node)
                if self.producer(first).op == "Rsqrt":
                    rsqrt, gamma = self.producer(first), second
                else:
                    rsqrt, gamma = self.producer(second), first
            add = self.producer(self.graph.data_inputs(rsqrt)[0]) if rsqrt.op == "Rsqrt" else None
            mul_mean = (self.producer(self.graph.data_inputs(b_node)[1]) if b_node.op == "Sub"
                        else None)
            if add is not None and add.op in ("Add", "AddV2") and mul_mean is not None \
                    and mul_mean.op == "Mul":
                var_ref, eps_ref = self.graph.data_inputs(add)
                operands = self.graph.data_inputs(mul_mean)
                others = [r for r in operands if self.graph.resolve(r).node != a_node.name]
                # b = beta - mean * a: else b is another expression, folded as it is below
                if self.value(eps_ref).size == 1 and len(operands) == 2 and len(others) == 1:
                    mean_ref = others[0]
                    var = self.vector(var_ref)
                    scale = self.vector(gamma, var.size) if gamma is not None else np.ones_like(var)
                    epsilon = float(self.value(eps_ref, "float").reshape(()))
                    if np.isfinite(epsilon) and epsilon >= 0:
                        return self._normalising(BatchNorm(
                            scale, self.vector(self.graph.data_inputs(b_node)[0], var.size),
                            self.vector(mean_ref, var.size), var, epsilon, out))
        except (ValueError, IndexError, UnsupportedGraphError):
            pass  # not TF's pattern: keep the folded form below
        a = self.vector(scale_ref, what=f"the scale of batch norm '{out}'")
        b = self.vector(shift_ref, a.size, f"the shift of batch norm '{out}'")
        return BatchNorm(a, b, np.zeros_like(a), np.ones_like(a), 0.0, out)

    def conv_layer(self, conv) -> ConvLayer:
        """Read a Conv2D block: [Pad] Conv2D -> BiasAdd -> activation -> [BN] -> [MaxPool]."""
        g = self.graph
        inputs = g.data_inputs(conv)
        if len(inputs) != 2:
            raise self.unsupported(f"Conv2D '{conv.name}' has {len(inputs)} inputs; expected 2 "
                                   "(input, kernel)")
        self.float_op(conv)
        kernel = self.kernel(inputs[1], 4, f"Conv2D '{conv.name}'")
        if g.typed_attr(conv, "data_format", str, "NHWC") != "NHWC":
            raise self.unsupported(f"Conv2D '{conv.name}' is {g.attr(conv, 'data_format')}; "
                                   "only NHWC graphs are supported")
        # strides and padding have no default in TensorFlow's Conv2D (a graph without one does
        # not load there); dilations' is [1, 1, 1, 1]
        for key, default in (("strides", None), ("dilations", [1])):
            if any(v != 1 for v in g.typed_attr(conv, key, list, default)):
                raise self.unsupported(f"Conv2D '{conv.name}' has {key} "
                                       f"{g.attr(conv, key)}; jaxmir supports 1")
        padding = g.typed_attr(conv, "padding", str)
        before = self.producer(inputs[0])
        if before.op in ("Pad", "PadV2"):
            pads = self.value(g.data_inputs(before)[1], "int")
            if pads.shape != (4, 2) or np.any(pads < 0) or np.any(pads > 1 << 16):
                raise self.unsupported(f"'{before.name}' pads {pads.tolist()}; expected [4, 2] "
                                       "non-negative amounts")
            pads = pads.astype(int).tolist()
            if before.op == "PadV2":  # its third input fills the border; the model pads zeros
                fill = self.value(g.data_inputs(before)[2], "float")
                if fill.shape != ():
                    raise self.unsupported(f"'{before.name}' (PadV2) fills its border with a "
                                           f"value of shape {list(fill.shape)}; TensorFlow "
                                           "takes a scalar")
                if fill != 0:
                    raise self.unsupported(f"'{before.name}' (PadV2) pads with "
                                           f"{fill.tolist()}; jaxmir pads convolutions with zeros")
            if padding != "VALID" or pads[0] != [0, 0] or pads[3] != [0, 0]:
                raise self.unsupported(f"'{before.name}' pads {pads} before a {padding} Conv2D")
            padding = (tuple(pads[1]), tuple(pads[2]))
        elif padding not in ("SAME", "VALID"):
            raise self.unsupported(f"Conv2D '{conv.name}' has padding {padding}")

        node = self.next_op(conv.name)
        filters = kernel.shape[-1]
        bias = np.zeros(filters, np.float32)
        if node is not None and node.op in ("BiasAdd", "Add",
                                            "AddV2") and self.split_operands(node):
            bias = self.bias(node, filters, f"the bias of Conv2D '{conv.name}' ({filters} filters)")
            last, node = node, self.next_op(node.name)
        else:
            last = conv
        activation = ""
        if node is not None and node.op in ACTIVATION_OPS:
            activation = ACTIVATION_OPS[node.op]
            last, node = node, self.next_op(node.name)
        batch_norm = self.batch_norm_at(node)
        if batch_norm is not None:
            if batch_norm.scale.size != filters:
                raise self.unsupported(f"batch norm '{batch_norm.node}' after Conv2D '{conv.name}' "
                                       f"normalises {batch_norm.scale.size} channels; the "
                                       f"convolution has {filters}")
            last = g.nodes[batch_norm.node]
            node = self.next_op(last.name)
        pool, pool_node, features_node = None, None, last.name
        if node is not None and node.op == "MaxPool":
            pool = self.max_pool(node)
            last, pool_node = node, node.name
        return ConvLayer(kernel, bias, padding, activation, batch_norm, pool, conv.name, last.name,
                         pool_node, features_node)

    def max_pool(self, node) -> tuple:
        """A MaxPool's ((window h, w), (stride h, w), padding), checked to be a 2-D NHWC pool."""
        g = self.graph
        window, strides = g.typed_attr(node, "ksize", list), g.typed_attr(node, "strides", list)
        padding = g.typed_attr(node, "padding", str)
        if g.typed_attr(node, "data_format", str, "NHWC") != "NHWC":
            raise self.unsupported(f"MaxPool '{node.name}' is {g.attr(node, 'data_format')}; "
                                   "only NHWC is supported")
        for name, values in (("ksize", window), ("strides", strides)):
            if len(values) != 4 or values[0] != 1 or values[3] != 1 or \
                    not all(0 < v <= 1 << 16 for v in values):
                raise self.unsupported(f"MaxPool '{node.name}' has {name} {values}; expected "
                                       "[1, height, width, 1] with positive sizes")
        if padding not in ("SAME", "VALID"):
            raise self.unsupported(f"MaxPool '{node.name}' has padding {padding!r}; expected "
                                   "SAME or VALID")
        return (window[1], window[2]), (strides[1], strides[2]), padding

    def dense_chain(self, start: str) -> tuple[tuple, dict, dict[str, int]]:
        """Read the dense head that follows node ``start`` up to the output.

        Returns (layer specs, variables by layer index, graph node -> layer index).
        """
        specs: list = []
        variables: dict[int, dict] = {}
        nodes: dict[str, int] = {}
        biased: set[int] = set()
        width: int | None = None  # features after the last dense layer
        visited: set[str] = set()
        node = self.next_op(start)
        while node is not None:
            if node.name in visited:  # _check_acyclic rules this out; never loop regardless
                raise GraphError(f"{self.graph.source}: the dense head loops back to '{node.name}'")
            visited.add(node.name)
            op = node.op
            bias_target = len(specs) - 1
            if op == "MatMul":
                kernel = self._dense_kernel(node, width)
                width = kernel.shape[1]
                specs.append(Dense(int(kernel.shape[1])))
                variables[len(specs) - 1] = {"kernel": kernel,
                                             "bias": np.zeros(kernel.shape[1], np.float32)}
            elif op in ("BiasAdd", "Add", "AddV2") and specs and isinstance(specs[-1], Dense) \
                    and self.split_operands(node) and bias_target not in biased:
                bias = self.bias(node, width,
                                 f"the bias of dense layer '{node.name}' ({width} units)")
                variables[bias_target]["bias"] = bias
                biased.add(bias_target)
                nodes = {k: v for k, v in nodes.items() if v != bias_target}  # MatMul was pre-bias
            elif op in ACTIVATION_OPS:
                specs.append(Activation(ACTIVATION_OPS[op]))
            elif (batch_norm := self.batch_norm_at(node)) is not None:
                if width is not None and batch_norm.scale.size != width:
                    raise self.unsupported(f"batch norm '{batch_norm.node}' normalises "
                                           f"{batch_norm.scale.size} features; the dense layer "
                                           f"before it has {width}")
                specs.append(BatchNormLayer(batch_norm.epsilon))
                params, stats = batch_norm.variables()
                variables[len(specs) - 1] = {"params": params, "batch_stats": stats}
                node = self.graph.nodes[batch_norm.node]
            elif op in ("Reshape", "Squeeze"):
                pass  # flattening a [b, 1, d] head input or the like: no-op on [b, d]
            else:
                raise self.unsupported(f"the dense head has op {op} at '{node.name}', "
                                       "which jaxmir does not support (MatMul, BiasAdd, "
                                       "Relu, Elu, Tanh, Sigmoid, Softmax, batch norm)")
            if specs:
                nodes[node.name] = len(specs) - 1
            node = self.next_op(node.name)
        if self.output not in nodes and specs:
            nodes[self.output] = len(specs) - 1
        return tuple(specs), variables, nodes

    def _dense_kernel(self, node, width: int | None) -> np.ndarray:
        """A MatMul's constant kernel as [in, out], its ``in`` checked against ``width``."""
        g = self.graph
        inputs = g.data_inputs(node)
        if len(inputs) != 2:
            raise self.unsupported(f"MatMul '{node.name}' has {len(inputs)} inputs; expected 2")
        if g.typed_attr(node, "transpose_a", bool, False):
            raise self.unsupported(f"MatMul '{node.name}' transposes its input")
        self.float_op(node)
        kernel = self.kernel(inputs[1], 2, f"MatMul '{node.name}'")
        if g.typed_attr(node, "transpose_b", bool, False):
            kernel = kernel.T
        if width is not None and kernel.shape[0] != width:
            raise self.unsupported(f"MatMul '{node.name}' takes {kernel.shape[0]} features but the "
                                   f"dense layer before it gives {width}")
        return kernel


def topological_order(graph: Graph, names: set[str]) -> list[str]:
    """``names`` sorted so that every node comes after its inputs."""
    order, state = [], {}
    for root in names:
        stack = [(root, False)]
        while stack:
            name, done = stack.pop()
            if done:
                state[name] = 2
                order.append(name)
                continue
            if state.get(name):
                continue
            state[name] = 1
            stack.append((name, True))
            for ref in graph.data_inputs(graph.nodes[name]):
                if ref.node in names and not state.get(ref.node):
                    stack.append((ref.node, False))
    return order


def input_shape(graph: Graph, node, rank: int) -> tuple[int, ...]:
    """The shape of one example fed to placeholder ``node`` (its shape minus the batch axis).

    Checked to have ``rank`` axes of known positive size (``[-1, 187, 96]`` ->
    ``(187, 96)`` for rank 2); anything else is an UnsupportedGraphError.
    """
    shape = graph.attr(node, "shape")
    if not isinstance(shape, tuple) or len(shape) != rank + 1 or \
            any(d <= 0 or d > 1 << 20 for d in shape[1:]):
        example = "[-1, 187, 96]" if rank == 2 else f"[-1, {', '.join(['n'] * rank)}]"
        raise UnsupportedGraphError(f"{graph.source}: input '{node.name}' has shape {shape}; "
                                    f"jaxmir needs a batch axis and {rank} known sizes, such as "
                                    f"{example}")
    return tuple(int(d) for d in shape[1:])


def conv_output(size: tuple[int, int], layer: ConvLayer) -> tuple[int, int]:
    """[height, width] after ``layer``'s convolution (stride 1), before its pool."""
    (kh, kw) = layer.kernel.shape[:2]
    if layer.padding == "SAME":
        out = size
    else:
        (top, bottom), (left, right) = layer.padding if layer.padding != "VALID" else ((0, 0),
                                                                                      (0, 0))
        out = (size[0] + top + bottom - kh + 1, size[1] + left + right - kw + 1)
    if min(out) <= 0:
        raise UnsupportedGraphError(f"Conv2D '{layer.conv_node}' has a {kh}x{kw} kernel, larger "
                                    f"than the {size[0]}x{size[1]} (padded) input it reads")
    return out


def pool_output(size: tuple[int, int], pool: tuple, node: str) -> tuple[int, int]:
    """[height, width] after a max pool ``((wh, ww), (sh, sw), padding)`` of a ``size`` input."""
    window, strides, padding = pool
    if padding == "SAME":
        return tuple(-(-n // s) for n, s in zip(size, strides))
    if any(w > n for w, n in zip(window, size)):
        raise UnsupportedGraphError(f"MaxPool '{node}' has a {window[0]}x{window[1]} VALID window "
                                    f"over a {size[0]}x{size[1]} input; the window must fit")
    return tuple((n - w) // s + 1 for n, w, s in zip(size, window, strides))


def conv_chain_shapes(layers: list[ConvLayer], size: tuple[int, int],
                      channels: int = 1) -> list[tuple[int, int, int]]:
    """Check a chain of conv blocks on a ``size`` [height, width] input of ``channels``.

    Returns each block's output [height, width, channels]; raises
    UnsupportedGraphError when a kernel's input channels differ from what the
    block before gives, or a kernel or pool window does not fit its input.
    """
    shapes = []
    for layer in layers:
        if layer.kernel.shape[2] != channels:
            raise UnsupportedGraphError(f"Conv2D '{layer.conv_node}' has a kernel for "
                                        f"{layer.kernel.shape[2]} input channels; its input has "
                                        f"{channels}")
        size = conv_output(size, layer)
        if layer.pool is not None:
            size = pool_output(size, layer.pool, layer.pool_node)
        channels = layer.kernel.shape[3]
        shapes.append((*size, channels))
    return shapes
