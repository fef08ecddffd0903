"""What a model is, without its graph: typed layers, the front-end it expects, the saved spec.

Everything here is plain, frozen data. The Flax modules (:mod:`jaxmir.models`)
take these types as attributes; the TensorFlow-graph converter
(:mod:`jaxmir.tfgraph.convert`) produces them; the weights file stores them as
JSON (:func:`config_to_json` / :func:`config_from_json`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence, Union

from jaxmir.errors import WeightsError

ACTIVATIONS = ("relu", "elu", "tanh", "sigmoid", "softmax", "identity")
INPUT_TAP = "input"  # the tap of a node map that reads the model's input, not a sown intermediate


# -- layers of a dense head -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Dense:
    """A fully connected layer with bias: ``[batch, in] -> [batch, units]``."""

    units: int


@dataclasses.dataclass(frozen=True)
class Activation:
    """An element-wise activation (or softmax over the last axis); one of :data:`ACTIVATIONS`."""

    name: str


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation with frozen statistics:
    ``(x - mean) * scale / sqrt(var + epsilon) + bias``."""

    epsilon: float


HeadLayer = Union[Dense, Activation, BatchNorm]


def head_width(layers: Sequence[HeadLayer]) -> int:
    """Units of the last dense layer of a head: the width of its output."""
    for layer in reversed(layers):
        if isinstance(layer, Dense):
            return layer.units
    raise WeightsError(f"a head without a dense layer: {list(layers)}")


def width_at(layers: Sequence[HeadLayer], index: int, input_width: int) -> int:
    """The width of a head's layer ``index``: the units of its last dense layer up to it, or,
    before its first, the head's ``input_width``."""
    upto = layers[:index + 1]
    return head_width(upto) if dense_indices(upto) else input_width


def gives_values(layers: Sequence[HeadLayer]) -> bool:
    """Whether a head gives values, not class scores to rank: it ends in anything but a sigmoid
    or a softmax (no activation or the identity: a regression head; a ReLU: an embedding,
    VGGish's as Google published it first)."""
    last = layers[-1] if layers else None
    return last is not None and not (isinstance(last, Activation)
                                     and last.name in ("sigmoid", "softmax"))


def dense_indices(layers: Sequence[HeadLayer]) -> list[int]:
    """Positions of the dense layers in a head."""
    return [i for i, layer in enumerate(layers) if isinstance(layer, Dense)]


# -- convolution blocks of VGG-style networks ---------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MaxPool:
    """Max-pooling: window and strides ``(time, mel)``, padding ``"SAME"`` or ``"VALID"``."""

    window: tuple[int, int]
    strides: tuple[int, int]
    padding: str


@dataclasses.dataclass(frozen=True)
class ConvBlockSpec:
    """A 2-D convolution block: conv ``kernel`` (SAME) -> activation -> [batch norm] ->
    [max-pool]."""

    features: int
    kernel: tuple[int, int]
    activation: str
    bn_epsilon: float | None = None
    pool: MaxPool | None = None


# -- the audio front-end a model was trained on -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Frontend:
    """How audio becomes a model's input patches (Essentia's ``TensorflowPredict*`` settings).

    Attributes:
      name: ``"musicnn"`` (MusiCNN and musicnn's VGG) or ``"vggish"``.
      sample_rate: Hz of the waveform the front-end takes (16000).
      frame_size, hop_size: samples per analysis frame and between frames.
      n_bands: mel bands per frame (96 or 64).
      patch_size: frames per patch (187 or 96).
      patch_hop: Essentia's default frames between patches (93 for both).
      log: the compression applied to the mel bands, in words.
    """

    name: str
    sample_rate: int
    frame_size: int
    hop_size: int
    n_bands: int
    patch_size: int
    patch_hop: int
    log: str

    @property
    def frame_seconds(self) -> float:
        """Seconds between frames (0.016 for MusiCNN, 0.01 for VGGish)."""
        return self.hop_size / self.sample_rate

    @property
    def frames_per_second(self) -> float:
        """Log-mel frames per second of audio (62.5 for MusiCNN, 100 for VGGish)."""
        return self.sample_rate / self.hop_size


# -- the spec --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model without its graph.

    Attributes:
      architecture: a key of :data:`jaxmir.models.ARCHITECTURES`.
      config: the Flax module's attributes (typed: tuples of :class:`Dense`,
        :class:`ConvBlockSpec`, ...; for ``"composed"``: ``{"backbone": ModelSpec-like
        {"architecture", "config"}, "head": ...}``).
      variables: ``{"params": ..., "batch_stats": ...}`` as NumPy arrays.
      input_name, input_shape: the graph's input node and its shape without the batch axis.
      output_name: the graph's output node.
      aliases: friendly output names -> the module's sown intermediates (taps).
      node_map: graph node names -> ``(tap, shape)``: the tap and the node's
        shape in the graph without the batch axis (it may add singleton axes).
      frontend: the audio front-end the model expects, or ``None`` for models
        that take embeddings (heads).
    """

    architecture: str
    config: Mapping[str, Any]
    variables: Mapping[str, Any] = dataclasses.field(repr=False)  # every weight: thousands of lines
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    aliases: Mapping[str, str]
    node_map: Mapping[str, tuple[str, tuple[int, ...]]]
    frontend: Frontend | None = None

    @property
    def head(self) -> tuple[HeadLayer, ...]:
        """The dense head that produces the model's output."""
        if self.architecture == "composed":
            return tuple(self.config["head"]["config"]["head"])
        return tuple(self.config["head"])

    @property
    def output_width(self) -> int:
        return head_width(self.head)


# -- JSON form (weights files) ------------------------------------------------------------------
def layer_to_text(layer: HeadLayer) -> str:
    """``Dense(200)`` -> ``"dense:200"``, ``BatchNorm(1e-3)`` -> ``"batch_norm:0.001"``,
    ``"relu"``."""
    if isinstance(layer, Dense):
        return f"dense:{layer.units}"
    if isinstance(layer, BatchNorm):
        return f"batch_norm:{layer.epsilon!r}"
    return layer.name


def layer_from_text(text: str) -> HeadLayer:
    """:func:`layer_to_text`'s inverse: ``dense:N`` of N >= 1 units in ASCII digits,
    ``batch_norm:EPS`` of a finite EPS >= 0, or an activation's bare name."""
    kind, _, argument = str(text).partition(":")
    if kind == "dense" and _is_units(argument):
        return Dense(int(argument))
    if kind == "batch_norm" and _is_epsilon(argument):
        return BatchNorm(float(argument))
    if kind in ACTIVATIONS and not argument:
        return Activation(kind)
    raise WeightsError(f"layer {str(text)[:60]!r} is not one jaxmir reads; expected dense:N "
                       "(N >= 1 units), batch_norm:EPS (a finite EPS >= 0) or one of "
                       + ", ".join(ACTIVATIONS))


def _is_units(text: str) -> bool:
    # at most 9 digits: Python's int() refuses strings of over 4,300 with advice of its own
    return text.isascii() and text.isdigit() and len(text) <= 9 and int(text) > 0


def _is_epsilon(text: str) -> bool:
    if not text.isascii() or "_" in text or text != text.strip():  # float() reads them all
        return False
    try:
        epsilon = float(text)
    except ValueError:
        return False
    return math.isfinite(epsilon) and epsilon >= 0


def _block_to_json(block: ConvBlockSpec) -> list:
    pool = block.pool
    return [block.features, list(block.kernel), block.activation, block.bn_epsilon,
            None if pool is None else [list(pool.window), list(pool.strides), pool.padding]]


def _block_from_json(value: Sequence) -> ConvBlockSpec:
    features, kernel, activation, epsilon, pool = value
    if pool is not None:
        pool = MaxPool(tuple(pool[0]), tuple(pool[1]), pool[2])
    return ConvBlockSpec(int(features), tuple(kernel), activation, epsilon, pool)


def config_to_json(architecture: str, config: Mapping[str, Any]) -> dict:
    """A module configuration as JSON-ready values (the format of weights files)."""
    if architecture == "composed":
        return {part: {"architecture": config[part]["architecture"],
                       "config": config_to_json(config[part]["architecture"],
                                                config[part]["config"])}
                for part in ("backbone", "head")}
    out = {}
    for key, value in config.items():
        if key == "head":
            value = [layer_to_text(layer) for layer in value]
        elif key == "blocks":
            value = [_block_to_json(block) for block in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def config_from_json(architecture: str, config: Mapping[str, Any]) -> dict:
    if architecture == "composed":
        return {part: {"architecture": config[part]["architecture"],
                       "config": config_from_json(config[part]["architecture"],
                                                  config[part]["config"])}
                for part in ("backbone", "head")}
    out = {}
    for key, value in config.items():
        if key == "head":
            value = tuple(layer_from_text(text) for text in value)
        elif key == "blocks":
            value = tuple(_block_from_json(block) for block in value)
        elif isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out
