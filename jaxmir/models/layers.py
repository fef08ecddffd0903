"""Building blocks shared by the Flax models.

Layers are described by short specs, strings such as ``"dense:200"``,
``"relu"`` or ``"batch_norm:0.001"``, so that an architecture read from a
graph is a hashable tuple that Flax modules take as an attribute and that a
weights file stores as JSON.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "elu": nn.elu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "softmax": nn.softmax,
}


def frozen_batch_norm(epsilon: float, name: str | None = None) -> nn.BatchNorm:
    """Batch normalisation with running statistics, as TensorFlow runs it at inference.

    ``y = (x - mean) * (scale * rsqrt(var + epsilon)) + bias`` over the last
    axis; ``mean``/``var`` live in the ``batch_stats`` collection.
    """
    return nn.BatchNorm(use_running_average=True, epsilon=epsilon, name=name)


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    return kind, arg


class DenseHead(nn.Module):
    """A stack of dense layers, batch norms and activations applied to ``[batch, features]``.

    Attributes:
      layers: specs in order, e.g. ``("batch_norm:0.001", "dense:200", "relu",
        "batch_norm:0.001", "dense:50", "sigmoid")`` (MusiCNN's back-end).

    Each layer's output is sown as ``intermediates/layer_<i>``.
    """

    layers: tuple[str, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, spec in enumerate(self.layers):
            kind, arg = parse_spec(spec)
            if kind == "dense":
                x = nn.Dense(int(arg), name=f"dense_{i}")(x)
            elif kind == "batch_norm":
                x = frozen_batch_norm(float(arg), name=f"batch_norm_{i}")(x)
            else:
                x = ACTIVATIONS[kind](x)
            self.sow("intermediates", f"layer_{i}", x)
        return x


def head_aliases(layers: Sequence[str], prefix: str = "head/") -> dict[str, str]:
    """Friendly output names for a head: ``embeddings``, ``penultimate``, ``logits``, ``predictions``.

    ``embeddings`` is the first dense layer's output (before its activation, as
    Essentia's ``model/dense/BiasAdd``); ``penultimate`` is what feeds the last
    dense layer (musicnn's batch-normalised ``bn_dense``); ``logits`` is the last
    dense layer's output and ``predictions`` the head's output.
    """
    dense = [i for i, spec in enumerate(layers) if parse_spec(spec)[0] == "dense"]
    aliases = {"predictions": f"{prefix}layer_{len(layers) - 1}"}
    if dense:
        aliases["embeddings"] = f"{prefix}layer_{dense[0]}"
        aliases["logits"] = f"{prefix}layer_{dense[-1]}"
        if dense[-1] > 0:
            aliases["penultimate"] = f"{prefix}layer_{dense[-1] - 1}"
    return aliases


class ConvBlock(nn.Module):
    """Convolution, activation, optional batch norm, optional max-pool: ``[b, h, w, c]``.

    Attributes:
      features: output channels.
      kernel: ``(height, width)``, or ``(length,)`` for a 1-D convolution on ``[b, t, c]``.
      padding: ``"SAME"``, ``"VALID"`` or explicit ``((top, bottom), (left, right))``.
      activation: a key of :data:`ACTIVATIONS` or ``""`` for none.
      bn_epsilon: batch-norm epsilon after the activation, or ``None`` for no batch norm.
      pool: ``((window_h, window_w), (stride_h, stride_w), padding)`` or ``None``.

    With a pool, the output before pooling is sown as ``features``.
    """

    features: int
    kernel: tuple[int, ...]
    padding: str | tuple = "SAME"
    activation: str = "relu"
    bn_epsilon: float | None = None
    pool: tuple | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, self.kernel, padding=self.padding, name="conv")(x)
        if self.activation:
            x = ACTIVATIONS[self.activation](x)
        if self.bn_epsilon is not None:
            x = frozen_batch_norm(self.bn_epsilon, name="batch_norm")(x)
        if self.pool is not None:
            self.sow("intermediates", "features", x)
            window, strides, padding = self.pool
            x = nn.max_pool(x, tuple(window), strides=tuple(strides), padding=padding)
        return x
