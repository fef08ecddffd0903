"""What a model is, without its graph: architecture, configuration, variables, output names."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ModelSpec:
    """Everything needed to rebuild a model without the graph.

    ``node_map`` maps a graph node name to ``(tap, shape)``: the module's sown
    intermediate (``"cnn1"``, ``"head/layer_1"``) and that node's shape in the
    graph without the batch axis, which may add singleton axes to the tap.
    """

    architecture: str
    config: dict
    variables: dict
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    aliases: dict[str, str]
    node_map: dict[str, tuple[str, tuple[int, ...]]]
