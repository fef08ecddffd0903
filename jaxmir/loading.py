"""``jaxmir.load``: one entry point for `.pb` graphs, weights files and shipped names."""

from __future__ import annotations

import os
from typing import Sequence

from jaxmir import catalog
from jaxmir.errors import JaxmirError
from jaxmir.graphdef import Graph
from jaxmir.importer import import_graph
from jaxmir.model import Model
from jaxmir.weights import WEIGHTS_SUFFIX, load_weights


def load(source: str | os.PathLike, *, labels: Sequence[str] | None = None,
         output: str | None = None) -> Model:
    """Load a model from a frozen `.pb`, a converted weights file or a shipped name.

    Args:
      source: ``"msd-musicnn"``, ``"mtt-musicnn"``, ``"msd-vgg"``, ``"mtt-vgg"``
        (shipped), a path to a frozen TensorFlow graph (``.pb``, read with
        protobuf only), or a path to weights written by jaxmir (``.npz``).
      labels: class names, overriding those the source provides.
      output: the graph's output node, when it is none of the usual ones.
    """
    text = os.fspath(source)
    if text in catalog.names():
        return load_weights(catalog.path_of(text), labels=labels)
    if text.endswith(WEIGHTS_SUFFIX):
        return load_weights(text, labels=labels)
    if not os.path.exists(text) and not text.endswith(".pb") and os.sep not in text:
        raise JaxmirError(f"'{text}' is neither a file nor a shipped model; shipped models: "
                          + ", ".join(catalog.names()) + "; or give the path of a .pb or .npz file")
    graph = Graph.from_file(text)
    spec = import_graph(graph, output=output)
    if labels is None:
        labels = catalog.labels_for_graph(text, spec)
    return Model(spec, labels=labels, source=text)
