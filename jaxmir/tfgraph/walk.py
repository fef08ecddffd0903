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

import dataclasses

import numpy as np

from jaxmir.errors import UnsupportedGraphError
from jaxmir.spec import Activation, BatchNorm as BatchNormLayer, Dense
from jaxmir.tfgraph.graphdef import Graph, TensorRef

ACTIVATION_OPS = {"Relu": "relu", "Elu": "elu", "Tanh": "tanh", "Sigmoid": "sigmoid",
                  "Softmax": "softmax"}
BATCH_NORM_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
_FORWARD_SKIP = frozenset({"Identity", "Switch", "Merge", "Snapshot", "StopGradient",
                           "PreventGradient", "CheckNumerics", "RefSwitch"})
_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
_FOLD = {
    "Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "RealDiv": np.divide, "Maximum": np.maximum, "Minimum": np.minimum,
    "Rsqrt": lambda x: (1.0 / np.sqrt(x)).astype(x.dtype), "Sqrt": np.sqrt,
    "Reciprocal": lambda x: (1.0 / x).astype(x.dtype), "Neg": np.negative, "Square": np.square,
    "Reshape": lambda x, shape: np.reshape(x, shape), "Squeeze": np.squeeze,
    "ExpandDims": lambda x, axis: np.expand_dims(x, int(axis)),
}


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
        self.live = self._live_nodes()
        self._constant: dict[str, bool] = {}

    # -- structure ----------------------------------------------------------------------
    def _live_nodes(self) -> set[str]:
        live, stack = set(), [self.output]
        while stack:
            name = stack.pop()
            if name in live:
                continue
            live.add(name)
            node = self.graph.nodes[name]
            if node.op == "Merge":
                stack.append(self.graph.inference_branch(node).node)
            else:
                stack.extend(ref.node for ref in self.graph.data_inputs(node))
        return live

    def consumers(self, name: str) -> list:
        """Live nodes that use ``name``'s output, looking through pass-through ops."""
        found, stack, seen = [], list(self.graph.consumers(name)), set()
        while stack:
            consumer = stack.pop(0)
            if consumer in seen or consumer not in self.live:
                continue
            seen.add(consumer)
            node = self.graph.nodes[consumer]
            if node.op in _FORWARD_SKIP:
                stack.extend(self.graph.consumers(consumer))
            elif node.op not in _SHAPE_OPS:
                found.append(node)
        return found

    def next_op(self, name: str):
        """The single live consumer of ``name``, or None at the end of the path."""
        consumers = self.consumers(name)
        if len(consumers) > 1:
            raise self.unsupported(f"'{name}' feeds {len(consumers)} layers "
                                   f"({', '.join(c.name for c in consumers)}) where one was expected")
        return consumers[0] if consumers else None

    def producer(self, ref):
        return self.graph.nodes[self.graph.resolve(ref).node]

    def unsupported(self, what: str) -> UnsupportedGraphError:
        return UnsupportedGraphError(f"{self.graph.source}: {what}")

    # -- constants ----------------------------------------------------------------------
    def is_constant(self, ref) -> bool:
        """True when a tensor depends on no placeholder (on the inference path)."""
        resolved = self.graph.resolve(ref)
        if resolved.node not in self._constant:
            node = self.graph.nodes[resolved.node]
            if node.op == "Const":
                result = True
            elif node.op.startswith("Placeholder") or node.op in ("VariableV2", "VarHandleOp"):
                result = False
            else:
                self._constant[resolved.node] = False  # guards cycles
                result = all(self.is_constant(r) for r in self.graph.data_inputs(node))
            self._constant[resolved.node] = result
        return self._constant[resolved.node]

    def value(self, ref) -> np.ndarray:
        """Fold a constant tensor to NumPy (Const and simple arithmetic on Consts)."""
        value = self.graph.constant(ref)
        if value is not None:
            return value
        node = self.producer(ref)
        if node.op in _FOLD:
            args = [self.value(r) for r in self.graph.data_inputs(node)]
            return np.asarray(_FOLD[node.op](*args))
        raise self.unsupported(f"cannot evaluate the constant '{node.name}' (op {node.op})")

    def vector(self, ref) -> np.ndarray:
        """A constant folded to a float32 vector (biases, batch-norm statistics)."""
        return self.value(ref).astype(np.float32).reshape(-1)

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

    # -- layers ---------------------------------------------------------------------------
    def batch_norm_at(self, node) -> BatchNorm | None:
        """A batch norm starting at ``node``: a FusedBatchNorm, or ``x * a`` followed by ``+ b``."""
        if node is None:
            return None
        if node.op in BATCH_NORM_OPS:
            if self.graph.attr(node, "is_training", False):
                raise self.unsupported(f"batch norm '{node.name}' computes batch statistics "
                                       "(is_training=True) on the inference path")
            inputs = self.graph.data_inputs(node)
            scale, bias, mean, var = (self.vector(r) for r in inputs[1:5])
            return BatchNorm(scale, bias, mean, var, float(self.graph.attr(node, "epsilon", 1e-4)),
                             node.name)
        if node.op != "Mul" or self.split_operands(node) is None:
            return None
        add = self.next_op(node.name)
        if add is None or add.op not in ("Add", "AddV2") or self.split_operands(add) is None:
            return None
        scale_ref = self.split_operands(node)[1]
        shift_ref = self.split_operands(add)[1]
        return self._unfused_batch_norm(scale_ref, shift_ref, add.name)

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
            mul_mean = self.producer(self.graph.data_inputs(b_node)[1]) if b_node.op == "Sub" else None
            if add is not None and add.op in ("Add", "AddV2") and mul_mean is not None \
                    and mul_mean.op == "Mul":
                var_ref, eps_ref = self.graph.data_inputs(add)
                if self.value(eps_ref).size == 1:
                    mean_ref = [r for r in self.graph.data_inputs(mul_mean)
                                if self.graph.resolve(r).node != a_node.name][0]
                    var = self.vector(var_ref)
                    scale = self.vector(gamma) if gamma is not None else np.ones_like(var)
                    return BatchNorm(scale, self.vector(self.graph.data_inputs(b_node)[0]),
                                     self.vector(mean_ref), var,
                                     float(self.value(eps_ref).reshape(())), out)
        except (ValueError, IndexError, UnsupportedGraphError):
            pass  # not TF's pattern: keep the folded form below
        a, b = self.vector(scale_ref), self.vector(shift_ref)
        return BatchNorm(a, b, np.zeros_like(a), np.ones_like(a), 0.0, out)

    def conv_layer(self, conv) -> ConvLayer:
        """Read a Conv2D block: [Pad] Conv2D -> BiasAdd -> activation -> [BN] -> [MaxPool]."""
        g = self.graph
        kernel = self.value(g.data_inputs(conv)[1]).astype(np.float32)
        if kernel.ndim != 4:
            raise self.unsupported(f"Conv2D '{conv.name}' has a kernel of shape {kernel.shape}")
        if g.attr(conv, "data_format", "NHWC") != "NHWC":
            raise self.unsupported(f"Conv2D '{conv.name}' is {g.attr(conv, 'data_format')}; "
                                   "only NHWC graphs are supported")
        for key in ("strides", "dilations"):
            if any(v != 1 for v in (g.attr(conv, key) or [1])):
                raise self.unsupported(f"Conv2D '{conv.name}' has {key} "
                                       f"{g.attr(conv, key)}; jaxmir supports 1")
        padding = g.attr(conv, "padding", "VALID")
        before = self.producer(g.data_inputs(conv)[0])
        if before.op in ("Pad", "PadV2"):
            pads = self.value(g.data_inputs(before)[1]).astype(int).tolist()
            if padding != "VALID" or pads[0] != [0, 0] or pads[3] != [0, 0]:
                raise self.unsupported(f"'{before.name}' pads {pads} before a {padding} Conv2D")
            padding = (tuple(pads[1]), tuple(pads[2]))
        elif padding not in ("SAME", "VALID"):
            raise self.unsupported(f"Conv2D '{conv.name}' has padding {padding}")

        node = self.next_op(conv.name)
        bias = np.zeros(kernel.shape[-1], np.float32)
        if node is not None and node.op in ("BiasAdd", "Add", "AddV2") and self.split_operands(node):
            bias = self.vector(self.split_operands(node)[1])
            last, node = node, self.next_op(node.name)
        else:
            last = conv
        activation = ""
        if node is not None and node.op in ACTIVATION_OPS:
            activation = ACTIVATION_OPS[node.op]
            last, node = node, self.next_op(node.name)
        batch_norm = self.batch_norm_at(node)
        if batch_norm is not None:
            last = g.nodes[batch_norm.node]
            node = self.next_op(last.name)
        pool, pool_node, features_node = None, None, last.name
        if node is not None and node.op == "MaxPool":
            window, strides = g.attr(node, "ksize"), g.attr(node, "strides")
            pool = ((window[1], window[2]), (strides[1], strides[2]), g.attr(node, "padding"))
            last, pool_node = node, node.name
        return ConvLayer(kernel, bias, padding, activation, batch_norm, pool, conv.name, last.name,
                         pool_node, features_node)

    def dense_chain(self, start: str) -> tuple[tuple, dict, dict[str, int]]:
        """Read the dense head that follows node ``start`` up to the output.

        Returns (layer specs, variables by layer index, graph node -> layer index).
        """
        specs: list = []
        variables: dict[int, dict] = {}
        nodes: dict[str, int] = {}
        biased: set[int] = set()
        node = self.next_op(start)
        while node is not None:
            op = node.op
            bias_target = len(specs) - 1
            if op == "MatMul":
                if self.graph.attr(node, "transpose_a", False):
                    raise self.unsupported(f"MatMul '{node.name}' transposes its input")
                kernel = self.value(self.graph.data_inputs(node)[1]).astype(np.float32)
                if self.graph.attr(node, "transpose_b", False):
                    kernel = kernel.T
                specs.append(Dense(int(kernel.shape[1])))
                variables[len(specs) - 1] = {"kernel": kernel,
                                             "bias": np.zeros(kernel.shape[1], np.float32)}
            elif op in ("BiasAdd", "Add", "AddV2") and specs and isinstance(specs[-1], Dense) \
                    and self.split_operands(node) and bias_target not in biased:
                bias = self.vector(self.split_operands(node)[1])
                variables[bias_target]["bias"] = bias
                biased.add(bias_target)
                nodes = {k: v for k, v in nodes.items() if v != bias_target}  # MatMul was pre-bias
            elif op in ACTIVATION_OPS:
                specs.append(Activation(ACTIVATION_OPS[op]))
            elif (batch_norm := self.batch_norm_at(node)) is not None:
                specs.append(BatchNormLayer(batch_norm.epsilon))
                params, stats = batch_norm.variables()
                variables[len(specs) - 1] = {"params": params, "batch_stats": stats}
                node = self.graph.nodes[batch_norm.node]
            elif op in ("Reshape", "Squeeze"):
                pass  # flattening a [b, 1, d] head input or the like: no-op on [b, d]
            else:
                raise self.unsupported(f"the dense head has op {op} at '{node.name}', which jaxmir "
                                       "does not support (MatMul, BiasAdd, Relu, Elu, Tanh, Sigmoid, "
                                       "Softmax, batch norm)")
            if specs:
                nodes[node.name] = len(specs) - 1
            node = self.next_op(node.name)
        if self.output not in nodes and specs:
            nodes[self.output] = len(specs) - 1
        return tuple(specs), variables, nodes


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
