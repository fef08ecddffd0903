"""The user-facing :class:`Model`: a Flax module, its variables, labels and output names."""

from __future__ import annotations

from typing import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.errors import InputError
from jaxmir.models.heads import Composed, EmbeddingHead
from jaxmir.spec import ModelSpec
from jaxmir.models.musicnn import MusiCNN
from jaxmir.models.vgg import ConvNet


def _tuples(value):
    """JSON lists back to the nested tuples Flax module attributes need."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def build_module(architecture: str, config: dict) -> nn.Module:
    """The Flax module for an architecture name and its configuration."""
    if architecture == "composed":
        return Composed(build_module(**config["backbone"]), build_module(**config["head"]))
    config = {key: _tuples(value) for key, value in config.items()}
    if architecture == "musicnn":
        return MusiCNN(**config)
    if architecture in ("vgg", "vggish"):
        return ConvNet(**config)
    if architecture == "head":
        return EmbeddingHead(**config)
    raise InputError(f"unknown architecture '{architecture}'; known: musicnn, vgg, vggish, head, "
                     "composed")


def final_head(architecture: str, config: dict) -> list[str]:
    """The layer specs that produce a model's output."""
    if architecture == "composed":
        return final_head(**config["head"])
    return list(config["head"])


def _arrows(specs) -> str:
    return " -> ".join(s.replace(":", " ") if not s.startswith("batch_norm") else "BN"
                       for s in specs)


def summarize(architecture: str, config: dict) -> list[str]:
    """The layers of a model in words, one line per stage."""
    if architecture == "composed":
        return ([f"backbone ({config['backbone']['architecture']}):"]
                + [f"  {line}" for line in summarize(**config["backbone"])]
                + ["head:"] + [f"  {line}" for line in summarize(**config["head"])])
    if architecture == "musicnn":
        return [f"front-end: BN, timbral 7x{' & 7x'.join(map(str, config['timbral_widths']))} "
                f"({config['timbral_filters']} filters), temporal "
                f"{'x1, '.join(map(str, config['temporal_lengths']))}x1 "
                f"({config['temporal_filters']} filters)",
                f"mid-end: 3 x conv 7 ({config['midend_filters']} filters), residual",
                "back-end: max + mean over time -> " + _arrows(config["head"])]
    if architecture in ("vgg", "vggish"):
        blocks = []
        for features, kernel, activation, bn, pool in config["blocks"]:
            text = f"conv{kernel[0]}x{kernel[1]} {features} {activation}" + (" BN" if bn else "")
            blocks.append(text + (f" pool{pool[0][0]}x{pool[0][1]}" if pool else ""))
        return [("BN, " if config.get("input_bn_epsilon") is not None else "") + ", ".join(blocks),
                "flatten -> " + _arrows(config["head"])]
    return [_arrows(config["head"])]


def _flatten_taps(tree: dict, prefix: str = "") -> dict[str, jax.Array]:
    taps = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            taps.update(_flatten_taps(value, f"{prefix}{key}/"))
        else:
            taps[f"{prefix}{key}"] = value[0]  # sow keeps a tuple of sown values
    return taps


class Model:
    """A model ready to run: ``Model.apply(patches, outputs=[...])``.

    Attributes:
      module: the Flax module (``module.apply(variables, patches)`` is the pure function).
      variables: ``{"params": ..., "batch_stats": ...}``, a plain tree of arrays.
      labels: one name per output class.
      architecture: ``"musicnn"``, ``"vgg"``, ``"vggish"``, ``"head"`` (on embeddings)
        or ``"composed"`` (a backbone joined to a head).
      input_shape: the patch shape without the batch axis, e.g. ``(187, 96)``.
    """

    def __init__(self, spec: ModelSpec, labels: Sequence[str] | None = None,
                 source: str = "", metadata: dict | None = None):
        self.spec = spec
        self.architecture = spec.architecture
        self.module = build_module(spec.architecture, spec.config)
        self.variables = jax.tree_util.tree_map(jnp.asarray, spec.variables)
        self._chunk = apply_chunk(spec.variables)
        self.input_shape = tuple(spec.input_shape)
        self.source = source
        self.metadata = dict(metadata or {})
        n_out = self.output_width()
        if labels is None:
            labels = [f"class_{i}" for i in range(n_out)]
        labels = list(labels)
        if len(labels) != n_out:
            raise InputError(f"{len(labels)} labels given for a model with {n_out} outputs")
        self.labels = labels

    # -- introspection ------------------------------------------------------------------
    def output_width(self) -> int:
        head = final_head(self.spec.architecture, self.spec.config)
        return [int(s.split(":")[1]) for s in head if s.startswith("dense")][-1]

    @property
    def output_names(self) -> list[str]:
        """Every name ``apply`` accepts: friendly names, then the graph's node names."""
        return sorted(self.spec.aliases) + sorted(self.spec.node_map)

    def num_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.variables)))

    def describe(self) -> str:
        """A few lines for people: architecture, layers, input, output, labels, output names."""
        default_labels = self.labels == [f"class_{i}" for i in range(len(self.labels))]
        labels = (f"class_0 .. class_{len(self.labels) - 1} (no class names: no metadata JSON "
                  "beside the graph; pass labels=)" if default_labels else ", ".join(self.labels))
        lines = [f"source: {self.source}",
                 f"architecture: {self.architecture}",
                 *[f"  {line}" for line in summarize(self.spec.architecture, self.spec.config)],
                 f"input: {self.spec.input_name} [batch, {', '.join(map(str, self.input_shape))}]",
                 f"output: {self.spec.output_name} [batch, {self.output_width()}]",
                 f"parameters: {self.num_params():,}",
                 f"labels ({len(self.labels)}): {labels}",
                 "outputs by name: " + ", ".join(sorted(
                     [*self.spec.aliases, *(n for n in self.spec.node_map if "/" not in n
                                            and n != self.spec.input_name)])),
                 "graph nodes: " + ", ".join(sorted(n for n in self.spec.node_map if "/" in n))]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Model({self.architecture}, input {list(self.input_shape)}, "
                f"{len(self.labels)} outputs, {self.num_params():,} parameters)")

    # -- running ------------------------------------------------------------------------
    def resolve_output(self, name: str) -> tuple[str, tuple[int, ...] | None]:
        if name in self.spec.aliases:
            return self.spec.aliases[name], None
        if name in self.spec.node_map:
            tap, shape = self.spec.node_map[name]
            return tap, tuple(shape)
        base = name.partition(":")[0]
        if base != name and base in self.spec.node_map and name.endswith(":0"):
            return self.resolve_output(base)
        raise InputError(f"unknown output '{name}'; this {self.architecture} model has: "
                         + ", ".join(self.output_names))

    def check_patches(self, patches) -> jax.Array:
        """Validate ``[batch, *input_shape]`` floating-point patches."""
        if not hasattr(patches, "shape") or not hasattr(patches, "dtype"):
            patches = np.asarray(patches)
        dtype = np.dtype(patches.dtype)
        if not np.issubdtype(dtype, np.floating):
            raise InputError(f"patches have dtype {dtype}; expected floating point "
                             f"(float32) log-mel patches of shape [batch, {', '.join(map(str, self.input_shape))}]")
        if tuple(patches.shape[1:]) != self.input_shape and patches.ndim > 1:
            # Essentia squeezes every size-1 axis but the batch before feeding a graph
            squeezed = tuple(d for d in patches.shape[1:] if d != 1)
            if squeezed == self.input_shape:
                patches = patches.reshape((patches.shape[0],) + squeezed)
        if tuple(patches.shape[1:]) != self.input_shape or patches.ndim != len(self.input_shape) + 1:
            raise InputError(f"patches have shape {list(patches.shape)}; this model takes "
                             f"[batch, {', '.join(map(str, self.input_shape))}]")
        if patches.shape[0] == 0:
            raise InputError("an empty batch of patches (batch size 0)")
        return jnp.asarray(patches, jnp.float32)

    def apply(self, patches, outputs: Iterable[str] | str | None = None) -> dict[str, jax.Array]:
        """Run the model on patches ``[batch, time, mel]``.

        Args:
          patches: log-mel patches, ``[batch, *input_shape]``, float32.
          outputs: names to return: ``"predictions"`` (default), musicnn's
            feature names (``timbral``, ``temporal``, ``cnn1``..``cnn3``,
            ``mean_pool``, ``max_pool``, ``penultimate``; ``pool1``.. for VGG),
            ``embeddings``, ``logits``, or the graph's node names such as
            ``model/dense/BiasAdd``.

        Returns:
          ``{name: array}`` with the batch axis first; graph node names keep
          the node's shape in the graph.
        """
        if outputs is None:
            outputs = ("predictions",)
        elif isinstance(outputs, str):
            outputs = (outputs,)
        outputs = tuple(outputs)
        taps = tuple(self.resolve_output(name) for name in outputs)
        patches = self.check_patches(patches)
        values = _run(self.module, taps, self._chunk, self.variables, patches)
        return dict(zip(outputs, values))

    def __call__(self, patches, outputs=None):
        return self.apply(patches, outputs)

    # -- from audio (jaxmir.pipeline) ------------------------------------------------------
    def features(self, audio, sample_rate: int, compat: str = "essentia") -> np.ndarray:
        """Log-mel frames of a signal, as this model's front-end computes them.

        Args:
          audio: ``[n_samples]`` or ``[n_samples, channels]`` (float in [-1, 1]
            or integer PCM) at ``sample_rate``; resampled to 16 kHz if needed.
          sample_rate: the rate of ``audio`` in Hz (required, never guessed).
          compat: front-end mode, see :func:`jaxmir.frontends.musicnn_logmel`.

        Returns:
          float32 ``[n_frames, 96]`` (MusiCNN/VGG, a frame every 16 ms) or
          ``[n_frames, 64]`` (VGGish, every 10 ms); a NumPy array (a JAX
          array when ``audio`` is traced).
        """
        from jaxmir import pipeline

        return pipeline.features(self, audio, sample_rate, compat=compat)

    def predict(self, audio, sample_rate: int, output: str | None = None,
                patch_hop: int | None = None, last_patch: str = "discard",
                pad: str | None = None, compat: str = "essentia") -> np.ndarray:
        """The output for every patch of a signal, as Essentia's TensorflowPredictMusiCNN/VGGish.

        Args:
          audio: ``[n_samples]`` or ``[n_samples, channels]`` at ``sample_rate``
            (a traced 16-kHz ``[n_samples]`` array works under ``jax.grad``).
          sample_rate: the rate of ``audio`` in Hz (required, never guessed).
          output: any name :meth:`apply` accepts; default ``"predictions"``.
          patch_hop: frames between patches (default 93; 0 = the patch size).
          last_patch: ``"discard"`` (Essentia's default) or ``"repeat"``.
          pad: ``None`` (too short a signal raises InputError), ``"zero"`` or
            ``"repeat"``: one padded patch for a signal shorter than a patch.
          compat: front-end mode (``"essentia"``; ``"musicnn"``/``"google"``).

        Returns:
          ``[n_patches, ...]``, e.g. ``[n_patches, 50]`` for MusiCNN's tags: a
          NumPy array (a JAX array when ``audio`` is traced, e.g. under ``jax.grad``).
        """
        from jaxmir import pipeline

        return pipeline.predict(self, audio, sample_rate, output, patch_hop=patch_hop,
                                last_patch=last_patch, pad=pad, compat=compat)


def tapped_outputs(module: nn.Module, taps: tuple, variables: dict,
                   patches: jax.Array) -> tuple[jax.Array, ...]:
    """The pure function behind ``Model.apply``: the module's sown intermediates named by ``taps``.

    ``taps`` holds ``(tap, shape)`` pairs; a shape (without the batch axis)
    reshapes the tap to the graph node's shape.
    """
    _, state = module.apply(variables, patches, mutable=["intermediates"])
    available = _flatten_taps(state["intermediates"])
    available["input"] = patches
    values = []
    for tap, shape in taps:
        value = available[tap]
        values.append(value if shape is None else jnp.reshape(value, (value.shape[0],) + shape))
    return tuple(values)


# Patches per step of Model.apply. Small steps keep activations in cache: on a 2-core CPU,
# VGG runs ~2x faster per patch in steps of 4 than in one batch of 64. A model with large
# dense layers (VGGish's fc1 holds 50 M weights) runs whole batches instead: each step would
# read all its weights again.
APPLY_CHUNK = 4
MAX_CHUNKED_WEIGHTS = 1 << 22


def apply_chunk(variables: dict) -> int | None:
    """Patches per step for a model's variables, or ``None`` for whole batches."""
    largest = max((int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(variables)),
                  default=0)
    return APPLY_CHUNK if largest <= MAX_CHUNKED_WEIGHTS else None


def _tapped_in_chunks(module: nn.Module, taps: tuple, chunk: int | None, variables: dict,
                      patches: jax.Array) -> tuple[jax.Array, ...]:
    """:func:`tapped_outputs` over the batch in steps of ``chunk`` patches."""
    n = patches.shape[0]
    if chunk is None or n <= chunk:
        return tapped_outputs(module, taps, variables, patches)
    pad = (-n) % chunk
    steps = jnp.pad(patches, ((0, pad),) + ((0, 0),) * (patches.ndim - 1))
    steps = steps.reshape((-1, chunk) + patches.shape[1:])
    values = jax.lax.map(lambda step: tapped_outputs(module, taps, variables, step), steps)
    return tuple(v.reshape((-1,) + v.shape[2:])[:n] for v in values)


_run = jax.jit(_tapped_in_chunks, static_argnums=(0, 1, 2))
