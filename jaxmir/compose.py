"""Join an embedding head to its backbone: one model from patches to the head's classes."""

from __future__ import annotations

from jaxmir.errors import InputError, WeightsError
from jaxmir.model import Model
from jaxmir.models import ARCHITECTURES, COMPOSED
from jaxmir.spec import INPUT_TAP, ModelSpec, dense_indices, width_at

# What each backbone family calls its embeddings (Essentia: model/dense/BiasAdd,
# model/vggish/embeddings).
DEFAULT_EMBEDDING = "embeddings"
_HEAD_LAYER = "head/layer_"


def _prefixed(tap: str, prefix: str) -> str:
    return tap if tap == INPUT_TAP else f"{prefix}/{tap}"


def _layer_index(tap: str) -> int | None:
    return int(tap[len(_HEAD_LAYER):]) if tap.startswith(_HEAD_LAYER) else None


def _prune_head(tree: dict, keep: int) -> dict:
    """Drop the backbone's dense-head variables after layer ``keep``."""
    pruned = {}
    for collection, values in tree.items():
        values = dict(values)
        if "head" in values:
            values["head"] = {k: v for k, v in values["head"].items()
                              if int(k.rsplit("_", 1)[1]) <= keep}
        pruned[collection] = values
    return pruned


def check_backbone(backbone: Model) -> None:
    """Raise :class:`InputError` unless ``backbone`` runs on audio patches and gives embeddings."""
    family = ARCHITECTURES.get(backbone.architecture)
    if family is None or not family.backbone:
        what = "an embedding head itself" if backbone.architecture == "head" else \
            f"a {backbone.architecture} model"
        raise InputError(f"{backbone.name} is {what}, not a backbone (musicnn, vgg or vggish: "
                         "the model whose embeddings the head was trained on)")


def head_inputs(backbone: Model) -> list[str]:
    """The outputs of ``backbone`` a head can take, by name: the layers of its dense head (a head
    joins the backbone there, in jaxmir as in Essentia's graphs)."""
    return [name for name in backbone.output_names
            if _layer_index(backbone.resolve_output(name)[0]) is not None]


def embedding_layer(backbone: Model, embedding: str) -> int:
    """The index of the dense-head layer ``embedding`` names; raises :class:`InputError` naming
    the outputs a head can take when it names another output (``mean_pool``, a convolution)."""
    tap, _ = backbone.resolve_output(embedding)
    index = _layer_index(tap)
    if index is None:
        raise InputError(f"'{embedding}' of {backbone.name} is not a layer of its dense head, "
                         f"where a head joins its backbone; heads take one of: "
                         f"{', '.join(head_inputs(backbone))}")
    return index


def embedding_width(backbone: Model, keep: int) -> int:
    """The width of ``backbone``'s dense-head layer ``keep``: the units of the last dense layer up
    to it, or, before the first (the input batch norm), what that dense layer takes."""
    layers = backbone.spec.head
    dense = dense_indices(layers)
    if not dense:
        raise WeightsError(f"the dense head of {backbone.name} has no dense layer: {list(layers)}")
    first = backbone.variables["params"]["head"][f"dense_{dense[0]}"]["kernel"]  # [in, units]
    return width_at(layers, keep, int(first.shape[0]))


def compose(backbone: Model, head: Model, embedding: str | None = None) -> Model:
    """``backbone`` cut at its ``embedding`` output, then ``head``; labels are the head's.

    Raises :class:`InputError` when ``head`` is not an embedding head, or when its
    input width differs from the backbone's embedding width (both are named).
    """
    if head.architecture != "head":
        raise InputError(f"{head.name} is a {head.architecture} model that takes "
                         f"{list(head.input_shape)} patches, not an embedding head; load it alone")
    check_backbone(backbone)
    embedding = embedding or DEFAULT_EMBEDDING
    tap, _ = backbone.resolve_output(embedding)
    keep = embedding_layer(backbone, embedding)
    backbone_head = backbone.spec.head[:keep + 1]
    width = embedding_width(backbone, keep)
    if width != head.input_shape[0]:
        raise InputError(f"the head {head.name} takes {head.input_shape[0]}-d embeddings, but the "
                         f"backbone {backbone.name} gives {width}-d embeddings at '{embedding}'")

    config = {"backbone": {"architecture": backbone.architecture,
                           "config": {**backbone.spec.config, "head": backbone_head}},
              "head": {"architecture": "head", "config": head.spec.config}}
    variables: dict = {}
    # the models' own variables, not their specs': a backbone in bfloat16 (Model.astype) or
    # with changed weights stays so
    for prefix, tree in (("backbone", _prune_head(backbone.variables, keep)),
                         ("head", head.variables)):
        for collection, values in tree.items():
            variables.setdefault(collection, {})[prefix] = values

    def keeps(tap: str) -> bool:
        index = _layer_index(tap)
        return index is None or index <= keep

    embedding_tap = _prefixed(tap, "backbone")  # what the head reads

    def in_head(t: str) -> str:
        """A head's tap in the joined model: its input (and a node forwarding it, an Identity)
        reads the backbone's embedding, not the joined model's input."""
        return embedding_tap if t == INPUT_TAP else f"head/{t}"

    aliases = {name: in_head(t) for name, t in head.spec.aliases.items()}
    aliases.update({f"backbone/{name}": _prefixed(t, "backbone")
                    for name, t in backbone.spec.aliases.items() if keeps(t)})
    node_map = {f"backbone/{name}": (_prefixed(t, "backbone"), shape)
                for name, (t, shape) in backbone.spec.node_map.items() if keeps(t)}
    node_map.update({name: (in_head(t), shape) for name, (t, shape) in head.spec.node_map.items()})
    node_map[head.spec.input_name] = (embedding_tap, tuple(head.input_shape))
    spec = ModelSpec(COMPOSED, config, variables, backbone.spec.input_name, backbone.input_shape,
                     head.spec.output_name, aliases, node_map, backbone.spec.frontend)
    # a model built in memory has no source: then the head's alone ("h.pb on " named nothing)
    source = f"{head.source} on {backbone.source}" if head.source and backbone.source \
        else head.source
    return Model.from_spec(spec, labels=head.labels, source=source,
                           metadata={"backbone": backbone.source, "head": head.source,
                                     "embedding": embedding})
