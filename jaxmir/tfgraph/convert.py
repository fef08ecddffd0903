"""Recognise a frozen graph's architecture and convert its weights to a Flax tree.

``import_graph(graph)`` finds the input placeholder and the output node,
collects the convolutions and dense layers on the inference path, decides
the architecture from their shapes and wiring, and returns a
:class:`ModelSpec`: the Flax module's configuration, its variables and a
map from the graph's node names to the module's intermediate outputs.
"""

from __future__ import annotations

import math

from jaxmir.errors import UnsupportedGraphError
from jaxmir.frontends import MUSICNN, VGGISH
from jaxmir.models.heads import embedding_head_variables
from jaxmir.models.layers import conv_variables, head_aliases
from jaxmir.models.musicnn import musicnn_variables
from jaxmir.models.vgg import convnet_variables, pool_aliases
from jaxmir.spec import (INPUT_TAP, Activation, ConvBlockSpec, Frontend, HeadLayer, MaxPool,
                         ModelSpec, dense_indices, width_at)
from jaxmir.tfgraph.graphdef import DT_FLOAT, FORWARDING, Graph, TensorRef
from jaxmir.tfgraph.walk import (ConvLayer, InferencePath, conv_chain_shapes, input_shape,
                                 topological_order)

SUPPORTED = ("MusiCNN (MSD, MTT, MSD-big and its transfer classifiers), musicnn's VGG baseline, "
             "VGGish and Essentia's classifier heads")
OUTPUT_CANDIDATES = ("model/Sigmoid", "model/Softmax", "model/Identity", "dense_out",
                     "PartitionedCall", "model/vggish/embeddings")


# TensorFlow 2's control flow: branches and loop bodies are functions of the graph's library,
# which jaxmir does not read (TensorFlow 1's Switch/Merge conds are read where they are held).
FUNCTIONAL_CONTROL_FLOW = ("If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase")


def import_graph(graph: Graph, output: str | None = None) -> ModelSpec:
    """Read a frozen graph into a :class:`ModelSpec`, or explain why it cannot."""
    try:
        return _import_graph(graph, output)
    except UnsupportedGraphError as err:
        control_flow = _control_flow_above(graph, output)
        if control_flow is None:
            raise
        raise UnsupportedGraphError(
            f"{err} (the graph holds TensorFlow 2 control flow, {control_flow.op} at "
            f"'{control_flow.name}', whose branches jaxmir does not read: freeze it with "
            "tf.compat.v1.disable_control_flow_v2() or without the cond)") from err


def _control_flow_above(graph: Graph, output: str | None):
    """The first TensorFlow 2 control-flow node the output depends on (any in the graph when
    the output is not known), or None."""
    if output is None:
        try:
            output = find_output(graph)
        except UnsupportedGraphError:
            return next((node for node in graph.nodes.values()
                         if node.op in FUNCTIONAL_CONTROL_FLOW), None)
    stack, seen = [TensorRef.parse(output).node], set()
    while stack:
        name = stack.pop()
        if name in seen or name not in graph.nodes:
            continue
        seen.add(name)
        graph.budget.visit(graph.source)
        node = graph.nodes[name]
        if node.op in FUNCTIONAL_CONTROL_FLOW:
            return node
        stack.extend(ref.node for ref in graph.data_inputs(node))
    return None


def _import_graph(graph: Graph, output: str | None) -> ModelSpec:
    output = output or find_output(graph)
    path = InferencePath(graph, output)
    input_node = _find_input(graph, path)
    convs = [graph.nodes[n] for n in topological_order(graph, path.live)
             if graph.nodes[n].op == "Conv2D"]
    if len(convs) == 8:
        spec = _import_musicnn(path, input_node, convs)
    elif convs:
        spec = _import_convnet(path, input_node, convs)
    elif any(graph.nodes[n].op == "MatMul" for n in path.live):
        spec = _import_head(path, input_node)
    else:
        raise _unknown(graph, path,
                       "no convolution or dense layer between the input and the output")
    _alias_pass_through_nodes(path, spec.node_map)
    return spec


def _alias_pass_through_nodes(path: InferencePath, node_map: dict) -> None:
    """Name ``Identity`` nodes (``model/vggish/embeddings``, dropout) like the node they forward."""
    for name in path.live:
        node = path.graph.nodes[name]
        if name not in node_map and node.op in FORWARDING:
            target = path.graph.resolve(name).node
            if target in node_map:
                node_map[name] = node_map[target]


def _import_head(path: InferencePath, input_node) -> ModelSpec:
    """An embedding-input head (Essentia's TensorflowPredict2D models): dense layers on
    ``[b, d]``."""
    graph = path.graph
    shape = graph.attr(input_node, "shape")
    head, head_vars, head_nodes = path.dense_chain(input_node.name)
    first = next((v["kernel"] for v in head_vars.values() if "kernel" in v), None)
    if first is None:
        raise _unknown(graph, path, "no dense layer after the input")
    width = int(first.shape[0])
    if shape is not None and [d for d in shape[1:] if d != 1] not in ([width], [-1]):
        raise _unknown(graph, path, f"input '{input_node.name}' has shape {shape} but the first "
                       f"dense layer takes {width} features")
    node_map = _head_node_map(head, head_nodes, width)
    node_map[input_node.name] = (INPUT_TAP, (width,))
    return ModelSpec("head", {"head": head}, embedding_head_variables(head_vars), input_node.name,
                     (width,), path.output, head_aliases(head), node_map, frontend=None)


def find_output(graph: Graph) -> str:
    """The graph's own output node: the first of :data:`OUTPUT_CANDIDATES` it holds."""
    for name in OUTPUT_CANDIDATES:
        if name in graph.nodes:
            return name
    raise _unknown(graph, None, "none of the usual output nodes ("
                   + ", ".join(OUTPUT_CANDIDATES) + ") is in the graph; pass output= to "
                   "jaxmir.load to choose one, or (for the command line too) name it in Essentia's "
                   "metadata JSON beside the .pb: \"schema\": {\"outputs\": [{\"name\": NODE, "
                   "\"output_purpose\": \"predictions\"}]}")


def _find_input(graph: Graph, path: InferencePath):
    inputs = [graph.nodes[n] for n in path.live
              if graph.nodes[n].op in ("Placeholder", "PlaceholderWithDefault")
              and graph.attr(graph.nodes[n], "dtype") == DT_FLOAT]
    if len(inputs) != 1:
        raise _unknown(graph, path, f"the output depends on {len(inputs)} float inputs "
                       f"({', '.join(sorted(n.name for n in inputs)) or 'none'}); expected one")
    return inputs[0]


def _unknown(graph: Graph, path: InferencePath | None, why: str) -> UnsupportedGraphError:
    found = ""
    if path is not None:
        kernels = []
        for name in topological_order(graph, path.live):
            node = graph.nodes[name]
            if node.op in ("Conv2D", "MatMul"):
                weight = graph.constant(graph.data_inputs(node)[1])
                kernels.append(f"{node.op} {list(weight.shape) if weight is not None else '?'}")
        found = "; layers found: " + (", ".join(kernels) or "none")
    ops = ", ".join(f"{op} x{n}" for op, n in list(graph.op_histogram().items())[:12])
    return UnsupportedGraphError(f"{graph.source}: unsupported graph: {why}{found}; ops: {ops}. "
                                 f"jaxmir supports {SUPPORTED}")


def _expanded_input(path: InferencePath, input_node):
    """The node that gives the input patch ``[batch, height, width]`` as ``[batch, height,
    width, 1]``: the placeholder through ExpandDims, Reshape and Squeeze nodes, which keep the
    values in their order (row-major), ending in that shape.

    Raises:
      UnsupportedGraphError: a chain that ends in another shape (a Reshape to ``[-1, width,
        height, 1]`` gives the convolutions other rows), or a step whose shape jaxmir cannot
        read.
    """
    patch = input_shape(path.graph, input_node, 2)
    shape, end = (-1, *patch), input_node
    node = path.next_op(input_node.name)
    while node is not None and node.op in ("ExpandDims", "Reshape", "Squeeze"):
        shape = _reshaped(path, node, shape)
        if shape is None:
            raise path.unsupported(f"'{node.name}' ({node.op}) reshapes the input patch "
                                   f"{list(patch)} in a way jaxmir cannot read; expected it as "
                                   f"[-1, {patch[0]}, {patch[1]}, 1] before the first layer")
        end, node = node, path.next_op(node.name)
    if shape != (-1, *patch, 1):
        raise path.unsupported(f"the input patch {list(patch)} reaches "
                               f"'{node.name if node else end.name}' as {list(shape)}; expected "
                               f"[-1, {patch[0]}, {patch[1]}, 1]")
    return end


def _reshaped(path: InferencePath, node, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """``shape`` (``-1`` the batch) after ExpandDims, Reshape or Squeeze ``node``, or ``None``
    where its argument cannot be read or does not keep the batch as the first axis."""
    graph = path.graph
    if node.op == "Squeeze":  # the axes listed, or every axis of size 1 (the batch is not)
        listed = graph.typed_attr(node, "squeeze_dims", list, [])
        if not all(isinstance(d, int) and -len(shape) <= d < len(shape) for d in listed):
            return None
        drop = {d % len(shape) for d in listed} or {i for i, d in enumerate(shape) if d == 1}
        if 0 in drop or any(shape[d] != 1 for d in drop):
            return None
        return tuple(d for i, d in enumerate(shape) if i not in drop)
    inputs = graph.data_inputs(node)
    given = _shape_argument(path, inputs[1], node.op == "Reshape") if len(inputs) == 2 else None
    if given is None:
        return None
    if node.op == "ExpandDims":
        if len(given) != 1 or not -len(shape) - 1 <= given[0] <= len(shape):
            return None
        axis = given[0] % (len(shape) + 1)
        return None if axis == 0 else shape[:axis] + (1,) + shape[axis:]
    if given[:1] != [-1] or any(d <= 0 for d in given[1:]) \
            or math.prod(given[1:]) != math.prod(shape[1:]):
        return None
    return tuple(given)


def _shape_argument(path: InferencePath, ref, shape: bool) -> list[int] | None:
    """A constant shape or axis as integers; for a ``shape``, a Pack whose first element is the
    batch, read from the input (``tf.stack([tf.shape(x)[0], 96, 64, 1])``, Keras's Reshape),
    with ``-1`` there."""
    try:
        return [int(v) for v in path.value(ref, "int").reshape(-1)]
    except (IndexError, ValueError, UnsupportedGraphError):
        pass
    pack = path.producer(ref)
    if not shape or pack.op != "Pack" or path.graph.typed_attr(pack, "axis", int, 0) != 0:
        return None
    first, *rest = path.graph.data_inputs(pack)
    slice_node = path.producer(first)
    if slice_node.op != "StridedSlice" or path.producer(
            path.graph.data_inputs(slice_node)[0]).op != "Shape":
        return None
    try:
        begin = path.value(path.graph.data_inputs(slice_node)[1], "int").reshape(-1).tolist()
        sizes = [int(path.value(r, "int").reshape(())) for r in rest]
    except (IndexError, ValueError, UnsupportedGraphError):
        return None
    return [-1, *sizes] if begin == [0] else None


def _input_batch_norm(path: InferencePath, expanded):
    """The batch norm applied to the expanded input patch (:func:`_expanded_input`), if any."""
    return path.batch_norm_at(path.next_op(expanded.name))


def _conv_source(path: InferencePath, conv):
    """The node whose output a Conv2D reads, looking through an explicit Pad."""
    source = path.producer(path.graph.data_inputs(conv)[0])
    if source.op in ("Pad", "PadV2"):
        source = path.producer(path.graph.data_inputs(source)[0])
    return source


def _conv_variables(layer: ConvLayer, epsilon: float | None, kernel_1d: bool = False) -> dict:
    kernel = layer.kernel[:, :, 0, :] if kernel_1d else layer.kernel
    batch_norm = None
    if layer.batch_norm is not None:
        batch_norm = layer.batch_norm.with_epsilon(epsilon).variables()
    return conv_variables(kernel, layer.bias, batch_norm)


def _frontend_for(candidate: Frontend, patch_shape: tuple[int, ...]) -> Frontend | None:
    """The family's front-end when the input takes its patches; ``None`` (patches only)
    otherwise."""
    if tuple(patch_shape) == (candidate.patch_size, candidate.n_bands):
        return candidate
    return None


def _consumer(path: InferencePath, name: str, op: str):
    matches = [c for c in path.consumers(name) if c.op == op]
    if len(matches) != 1:
        raise path.unsupported(f"expected one {op} after '{name}', found {len(matches)}")
    return matches[0]


def _pools_every_band(layer: ConvLayer, mels: int) -> bool:
    """Whether ``layer``'s max-pool is MusiCNN's: one window over every frequency band its
    convolution outputs (``mels`` bands in), one frame tall, giving one value per frame."""
    (window_t, window_f), (stride_t, stride_f), padding = layer.pool
    if layer.padding == "SAME":
        bands = mels
    else:
        bands = mels + sum(layer.padding[1]) - layer.kernel.shape[1] + 1
    if padding == "SAME":  # a window past the bands takes them all: padding never wins a max
        covers, pooled = window_f >= bands, -(-bands // stride_f)
    else:
        covers, pooled = window_f == bands, (bands - window_f) // stride_f + 1
    return (window_t, stride_t) == (1, 1) and covers and pooled == 1


def _import_musicnn(path: InferencePath, input_node, convs) -> ModelSpec:
    graph = path.graph
    time, mels = input_shape(graph, input_node, 2)
    input_bn = _input_batch_norm(path, _expanded_input(path, input_node))
    if input_bn is None:
        raise _unknown(graph, path, "8 convolutions as in MusiCNN, but no batch norm on the input")
    epsilon = input_bn.epsilon
    layers = [path.conv_layer(conv) for conv in convs]
    front = [l for l, c in zip(layers, convs) if _conv_source(path, c).name == input_bn.node]
    timbral = sorted((l for l in front if l.kernel.shape[1] > 1), key=lambda l: l.kernel.shape[1])
    temporal = sorted((l for l in front if l.kernel.shape[1] == 1),
                      key=lambda l: -l.kernel.shape[0])
    midend = [l for l in layers if l not in front]
    n_front = sum(l.kernel.shape[-1] for l in front)
    problems = []
    if len(timbral) != 2 or len(temporal) != 3 or len(midend) != 3:
        problems.append(f"{len(timbral)} timbral, {len(temporal)} temporal and {len(midend)} "
                        "mid-end convolutions (MusiCNN has 2, 3 and 3)")
    else:
        if any(l.kernel.shape[0] != 7 or l.padding != ((3, 3), (0, 0)) for l in timbral + midend):
            problems.append("timbral and mid-end convolutions must be 7 frames tall with 3 frames "
                            "of zero padding on each side")
        if any(l.padding != "SAME" for l in temporal):
            problems.append("temporal convolutions must use SAME padding")
        if midend[0].kernel.shape[1] != n_front or any(
                l.kernel.shape[1] != midend[0].kernel.shape[-1] for l in midend[1:]):
            problems.append("mid-end kernel widths do not match the front-end's "
                            f"{n_front} features")
        if any(l.batch_norm is None or l.pool is None for l in front) or any(
                l.batch_norm is None for l in midend):
            problems.append("every convolution must be followed by ReLU and batch norm, and the "
                            "front-end's by a max-pool over frequency")
        elif not all(_pools_every_band(l, mels) for l in front):
            problems.append("the front-end's max-pools must each take all the frequency bands "
                            "of their convolution at once, frame by frame")
        if any(l.activation != "relu" for l in layers):
            problems.append("every convolution must be followed by ReLU")
        if len({l.kernel.shape[-1] for l in timbral}) != 1 or len(
                {l.kernel.shape[-1] for l in temporal}) != 1:
            problems.append("both timbral branches (and all temporal ones) must have equal filters")
    if problems:
        raise _unknown(graph, path, "looks like MusiCNN but " + "; ".join(problems))

    # The graph nodes that carry musicnn's features.
    node_map: dict[str, tuple[str, tuple[int, ...]]] = {}
    branch_taps = [(l, f"timbral_{i}") for i, l in enumerate(timbral)] + [
        (l, f"temporal_{i}") for i, l in enumerate(temporal)]
    for layer, tap in branch_taps:
        filters = layer.kernel.shape[-1]
        node_map[layer.pool_node] = (f"{tap}/output", (time, 1, filters))
        squeeze = path.next_op(layer.pool_node)
        if squeeze is not None and squeeze.op == "Squeeze":
            node_map[squeeze.name] = (f"{tap}/output", (time, filters))
    frontend = _consumer(path, path.next_op(timbral[0].pool_node).name, "ConcatV2")
    _check_concat(path, frontend, [l.pool_node for l in timbral + temporal], (2, -1),
                  "the front-end's timbral and temporal features")
    node_map[frontend.name] = ("frontend", (time, n_front))
    midend_filters = midend[0].kernel.shape[-1]
    cnn = _midend_outputs(path, midend, frontend)
    for i, node in enumerate(cnn, start=1):
        node_map[node.name] = (f"cnn{i}", (time, midend_filters, 1))
    n_mid = n_front + 3 * midend_filters
    concat = _consumer(path, cnn[-1].name, "ConcatV2")
    _check_concat(path, concat, [frontend.name] + [node.name for node in cnn], (2, -2),
                  "the front-end's and the mid-end's features")
    node_map[concat.name] = ("midend", (time, n_mid, 1))
    max_node = _consumer(path, concat.name, "Max")
    mean_node = _consumer(path, concat.name, "Mean")
    for reduction in (max_node, mean_node):
        if path.value(_input(path, reduction, 1), "int").reshape(-1).tolist() != [1]:
            raise path.unsupported(f"'{reduction.name}' must pool over time (axis 1)")
    node_map[max_node.name] = ("max_pool", (n_mid, 1))
    node_map[mean_node.name] = ("mean_pool", (1, n_mid, 1))
    mean_squeezed = path.next_op(mean_node.name)
    pooled = path.next_op(max_node.name)
    if mean_squeezed is not None and mean_squeezed.op == "Squeeze":
        node_map[mean_squeezed.name] = ("mean_pool", (n_mid, 1))
    if pooled is None or pooled.op != "ConcatV2":
        raise _unknown(graph, path, "the back-end does not concatenate max and mean pooling")
    _check_concat(path, pooled, [max_node.name, mean_node.name], (2, -1), "max and mean pooling")
    node_map[pooled.name] = ("pooled", (n_mid, 2))
    flatten = path.next_op(pooled.name)
    if flatten is None or flatten.op != "Reshape":
        raise _unknown(graph, path, "the pooled features are not flattened before the dense layers")
    node_map[flatten.name] = ("pooled", (2 * n_mid,))
    head, head_vars, head_nodes = _read_head(path, flatten.name, "MusiCNN")
    if not dense_indices(head):
        raise _unknown(graph, path, "no dense layer after the temporal pooling")
    node_map.update(_head_node_map(head, head_nodes, 2 * n_mid))

    variables = musicnn_variables(
        input_bn.variables(),
        timbral=[_conv_variables(layer, epsilon) for layer in timbral],
        temporal=[_conv_variables(layer, epsilon) for layer in temporal],
        midend=[_conv_variables(layer, epsilon, kernel_1d=True) for layer in midend],
        head=head_vars)
    config = {
        "head": head,
        "timbral_filters": int(timbral[0].kernel.shape[-1]),
        "timbral_widths": tuple(int(l.kernel.shape[1]) for l in timbral),
        "temporal_filters": int(temporal[0].kernel.shape[-1]),
        "temporal_lengths": tuple(int(l.kernel.shape[0]) for l in temporal),
        "midend_filters": int(midend_filters),
        "bn_epsilon": epsilon,
    }
    aliases = {name: name for name in ("timbral", "temporal", "cnn1", "cnn2", "cnn3",
                                       "mean_pool", "max_pool")}
    aliases.update(head_aliases(head))
    node_map[input_node.name] = (INPUT_TAP, (time, mels))
    return ModelSpec("musicnn", config, variables, input_node.name, (time, mels), path.output,
                     aliases, node_map, _frontend_for(MUSICNN, (time, mels)))


def _input(path: InferencePath, node, index: int):
    """Data input ``index`` of ``node`` (``-1``: the last); a graph without it is refused."""
    inputs = path.graph.data_inputs(node)
    if not -len(inputs) <= index < len(inputs):
        raise path.unsupported(f"{node.op} '{node.name}' has {len(inputs)} data input(s)")
    return inputs[index]


def _behind(path: InferencePath, ref, ops: tuple[str, ...] = ("Squeeze", "ExpandDims")):
    """The node whose values ``ref`` carries, looking through ``ops`` (shape changes)."""
    node = path.producer(ref)
    while node.op in ops:
        node = path.producer(_input(path, node, 0))
    return node


def _check_concat(path: InferencePath, concat, sources: list[str], axes: tuple[int, int],
                  what: str) -> None:
    """``concat`` joins ``sources`` (node names, through Squeeze/ExpandDims) in this order on
    one of ``axes`` (the same axis counted from the start and from the end), as musicnn does:
    a graph that joins them otherwise computes another network."""
    inputs = path.graph.data_inputs(concat)
    found = [_behind(path, ref).name for ref in inputs[:-1]]
    axis = path.value(_input(path, concat, -1), "int").reshape(-1).tolist()
    if found != sources or axis not in ([axes[0]], [axes[1]]):
        raise path.unsupported(f"'{concat.name}' must join {what} ({', '.join(sources)}) in this "
                               f"order on axis {axes[0]}; it joins {', '.join(found)} on axis "
                               f"{axis[0] if len(axis) == 1 else axis}")


def _midend_outputs(path: InferencePath, midend: list[ConvLayer], frontend) -> list:
    """The nodes of musicnn's ``cnn1..3``: each mid-end convolution reads the one before (the
    first the front-end's features), and the second and third add it to their own output."""
    graph, outputs = path.graph, []
    for layer in midend:
        conv_input = _input(path, graph.nodes[layer.conv_node], 0)
        source = _behind(path, conv_input, ("Pad", "PadV2", "ExpandDims"))
        expected = outputs[-1] if outputs else frontend
        if source.name != expected.name:
            raise path.unsupported(f"the mid-end convolution '{layer.conv_node}' must read "
                                   f"'{expected.name}'; it reads '{source.name}'")
        node = path.next_op(layer.output_node)            # transpose back to [b, t, filters, 1]
        if node is None or node.op != "Transpose" or path.value(
                _input(path, node, 1), "int").reshape(-1).tolist() != [0, 1, 3, 2]:
            raise path.unsupported(f"'{layer.output_node}' must be transposed to [batch, time, "
                                   "filters, 1] (perm [0, 1, 3, 2])")
        if outputs:
            adds = [c for c in path.consumers(node.name) if c.op in ("Add", "AddV2")]
            if len(adds) != 1 or sorted(_behind(path, ref).name for ref in graph.data_inputs(
                    adds[0])) != sorted([node.name, outputs[-1].name]):
                raise path.unsupported(f"'{node.name}' must be added to '{outputs[-1].name}' (the "
                                       "mid-end's residual connection)")
            node = adds[0]
        outputs.append(node)
    return outputs


def _node_of(node_map: dict, tap: str) -> str:
    return next(name for name, (t, _) in node_map.items() if t == tap)


def _read_head(path: InferencePath, start: str, body: str):
    try:
        return path.dense_chain(start)
    except UnsupportedGraphError as err:
        raise UnsupportedGraphError(f"a {body} body was recognised, but what follows it is not a "
                                    f"head jaxmir supports: {err}") from None


def _head_node_map(head: tuple[HeadLayer, ...], head_nodes: dict[str, int], width: int) -> dict:
    """Graph nodes of a dense head -> (tap, shape); ``width`` is the head's input width."""
    return {name: (f"head/layer_{i}", (width_at(head, i, width),))
            for name, i in head_nodes.items()}


def _import_convnet(path: InferencePath, input_node, convs) -> ModelSpec:
    graph = path.graph
    patch_shape = input_shape(graph, input_node, 2)
    expanded = _expanded_input(path, input_node)
    input_bn = _input_batch_norm(path, expanded)
    layers = [path.conv_layer(conv) for conv in convs]
    first = _conv_source(path, graph.nodes[layers[0].conv_node]).name
    if first != (expanded.name if input_bn is None else input_bn.node):
        raise _unknown(graph, path, f"the first convolution '{layers[0].conv_node}' reads "
                       f"'{first}', not the input patch "
                       + ("" if input_bn is None else "after its batch norm ")
                       + f"('{expanded.name if input_bn is None else input_bn.node}')")
    for previous, layer in zip(layers, layers[1:]):
        if _conv_source(path, graph.nodes[layer.conv_node]).name != previous.output_node:
            raise _unknown(graph, path,
                           f"convolutions are not a single chain ('{previous.conv_node}' "
                           f"does not feed '{layer.conv_node}')")
    problems = [f"'{l.conv_node}' pads {l.padding}" for l in layers if l.padding != "SAME"]
    problems += [f"'{l.conv_node}' has a {l.kernel.shape[0]}x{l.kernel.shape[1]} kernel"
                 for l in layers if l.kernel.shape[:2] != (3, 3)]
    problems += [f"'{l.conv_node}' has no activation" for l in layers if not l.activation]
    with_bn = [l.batch_norm is not None for l in layers]
    if any(with_bn) and not (all(with_bn) and input_bn is not None
                             and all(l.pool is not None for l in layers)):
        problems.append("batch norm and pooling must follow every convolution and the input "
                        "(musicnn's VGG), or no convolution at all (VGGish)")
    if problems:
        raise _unknown(graph, path, "a VGG-style stack needs 3x3 SAME convolutions with "
                       "activations: " + "; ".join(problems))
    epsilon = input_bn.epsilon if input_bn is not None else None

    flatten = path.next_op(layers[-1].output_node)
    if flatten is None or flatten.op != "Reshape":
        raise _unknown(graph, path, "the last convolution block is not flattened into dense layers")
    height, width = patch_shape
    blocks, node_map = [], {}
    for i, (layer, (out_h, out_w, filters)) in enumerate(
            zip(layers, conv_chain_shapes(layers, patch_shape)), start=1):
        pool = layer.pool
        if pool is not None:  # SAME convolutions keep the size: the pool reads height x width
            node_map[layer.features_node] = (f"block_{i}/features", (height, width, filters))
            pool = MaxPool(tuple(pool[0]), tuple(pool[1]), pool[2])
        blocks.append(ConvBlockSpec(filters, tuple(int(k) for k in layer.kernel.shape[:2]),
                                    layer.activation,
                                    epsilon if layer.batch_norm is not None else None, pool))
        height, width = out_h, out_w
        node_map[layer.output_node] = (f"block_{i}_output", (height, width, filters))
    flat = height * width * int(layers[-1].kernel.shape[-1])
    node_map[flatten.name] = ("flatten", (flat,))
    if input_bn is not None:  # and the node the first convolution reads (a cond's Merge)
        read = graph.resolve(graph.data_inputs(graph.nodes[layers[0].conv_node])[0]).node
        for node in {input_bn.node, read}:
            node_map[node] = ("normalized_input", (*patch_shape, 1))
    head, head_vars, head_nodes = _read_head(path, flatten.name, "VGG-style")
    node_map.update(_head_node_map(head, head_nodes, flat))

    variables = convnet_variables(
        None if input_bn is None else input_bn.with_epsilon(epsilon).variables(),
        [_conv_variables(layer, epsilon) for layer in layers], head_vars)
    blocks = tuple(blocks)
    has_bn = any(l.batch_norm is not None for l in layers)
    architecture, frontend = ("vgg", MUSICNN) if has_bn else ("vggish", VGGISH)
    config = {"blocks": blocks, "head": head, "input_bn_epsilon": epsilon}
    for alias, tap in pool_aliases(blocks).items():
        # musicnn's extractor squeezes singleton axes (pool5 is [b, 2, 128])
        shape = node_map[_node_of(node_map, tap)][1]
        node_map[alias] = (tap, tuple(d for d in shape if d != 1))
    aliases = head_aliases(head)
    if architecture == "vggish":
        aliases.update(_vggish_aliases(blocks, head, node_map))
    node_map[input_node.name] = (INPUT_TAP, patch_shape)
    return ModelSpec(architecture, config, variables, input_node.name, patch_shape, path.output,
                     aliases, node_map, _frontend_for(frontend, patch_shape))


def _vggish_aliases(blocks: tuple[ConvBlockSpec, ...], head: tuple[HeadLayer, ...],
                    node_map: dict) -> dict[str, str]:
    """VGGish's own layer names: conv1, pool1, conv2, pool2, conv3_1, conv3_2, ..., fc1_1, fc1_2,
    fc2.

    Each names a layer's output after its activation, where one follows (slim's layers, which
    VGGish is written with, include it): a ``conv`` after its ReLU, ``fc2`` after its ReLU in
    the 2017 release, before none in the current one. ``embeddings`` is what the graph's
    ``.../embeddings`` node holds when there is one, otherwise ``fc2``.
    """
    aliases, stage, convs = {}, 1, []
    for i, block in enumerate(blocks, start=1):
        convs.append(i)
        if block.pool is not None:
            for j, index in enumerate(convs, start=1):
                name = f"conv{stage}" if len(convs) == 1 else f"conv{stage}_{j}"
                aliases[name] = f"block_{index}/features" if index == i else f"block_{index}_output"
            aliases[f"pool{stage}"] = f"block_{i}_output"
            stage, convs = stage + 1, []
    dense = dense_indices(head)
    for name, index in zip(("fc1_1", "fc1_2", "fc2"), dense):
        activated = index + 1 < len(head) and isinstance(head[index + 1], Activation)
        aliases[name] = f"head/layer_{index + 1 if activated else index}"
    embedding_nodes = [tap for node, (tap, _) in node_map.items() if node.endswith("/embeddings")]
    if embedding_nodes:
        aliases["embeddings"] = embedding_nodes[0]
    elif "fc2" in aliases:
        aliases["embeddings"] = aliases["fc2"]
    return aliases
