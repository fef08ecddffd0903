"""MusiCNN (Pons & Serra, 2019) in Flax.

A musically motivated front-end (timbral and temporal convolutions over a
log-mel patch), a dense mid-end of three 1-D convolutions with residual
connections, temporal max and mean pooling, and a dense back-end::

    patch [b, t, 96] -> BN -> timbral 7x38, 7x67 (204 filters) -> max over frequency
                            -> temporal 128x1, 64x1, 32x1 (51 filters) -> max over frequency
                      concat [b, t, 561] -> conv7 (64) -> +conv7 (64) -> +conv7 (64)
                      concat [b, t, 753] -> max and mean over time -> [b, 1506]
                      -> BN -> dense 200 -> ReLU -> BN -> dense 50 -> sigmoid

Every convolution is followed by ReLU, then batch norm. MSD-big uses 512
mid-end filters and 500 back-end units; the layer sizes are attributes, read
from the graph at import.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmir.models.layers import ConvBlock, DenseHead, frozen_batch_norm

MUSICNN_FEATURES = ("timbral", "temporal", "cnn1", "cnn2", "cnn3", "mean_pool", "max_pool",
                    "penultimate")


def musicnn_head(units: int = 200, n_labels: int = 50, epsilon: float = 1e-3) -> tuple[str, ...]:
    """musicnn's back-end after pooling: BN, dense + ReLU, BN, dense logits, sigmoid."""
    bn = f"batch_norm:{epsilon}"
    return (bn, f"dense:{units}", "relu", bn, f"dense:{n_labels}", "sigmoid")


class FrequencyMaxBlock(nn.Module):
    """A front-end branch: conv, ReLU, BN, then max over the whole frequency axis.

    ``[b, t, mel, 1]`` -> ``[b, t, filters]``.
    """

    filters: int
    kernel: tuple[int, int]
    padding: str | tuple
    bn_epsilon: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ConvBlock(self.filters, self.kernel, self.padding, "relu", self.bn_epsilon,
                      name="block")(x)
        x = jnp.max(x, axis=2)
        self.sow("intermediates", "output", x)
        return x


class MidendConv(nn.Module):
    """A mid-end layer: a 7-frame convolution across all features, ReLU, BN. ``[b, t, c] -> [b, t, filters]``."""

    filters: int
    bn_epsilon: float
    length: int = 7

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        half = self.length // 2
        return ConvBlock(self.filters, (self.length,), ((half, self.length - 1 - half),), "relu",
                         self.bn_epsilon, name="block")(x)


class MusiCNN(nn.Module):
    """MusiCNN on log-mel patches ``[batch, time, mel]``; returns the head's output.

    Attributes:
      head: the back-end after pooling as layer specs (see :func:`musicnn_head`).
      timbral_filters, timbral_widths: filters of both timbral branches and
        their kernel widths in mel bands (7 frames tall).
      temporal_filters, temporal_lengths: filters of the temporal branches
        and their kernel lengths in frames (1 band wide).
      midend_filters: filters of the three mid-end convolutions.
      bn_epsilon: epsilon of every batch norm of the body.

    Intermediate outputs are sown under ``intermediates`` with musicnn's names
    (``timbral`` ``[b, t, 408]``, ``temporal`` ``[b, t, 153]``, ``cnn1..3``
    ``[b, t, 64]``, ``mean_pool``/``max_pool`` ``[b, 753]``) and more.
    """

    head: tuple[str, ...] = musicnn_head()
    timbral_filters: int = 204
    timbral_widths: tuple[int, ...] = (38, 67)
    temporal_filters: int = 51
    temporal_lengths: tuple[int, ...] = (128, 64, 32)
    midend_filters: int = 64
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        x = frozen_batch_norm(self.bn_epsilon, name="input_bn")(patches[..., None])

        timbral = [FrequencyMaxBlock(self.timbral_filters, (7, width), ((3, 3), (0, 0)),
                                     self.bn_epsilon, name=f"timbral_{i}")(x)
                   for i, width in enumerate(self.timbral_widths)]
        temporal = [FrequencyMaxBlock(self.temporal_filters, (length, 1), "SAME",
                                      self.bn_epsilon, name=f"temporal_{i}")(x)
                    for i, length in enumerate(self.temporal_lengths)]
        frontend = jnp.concatenate(timbral + temporal, axis=-1)

        cnn1 = MidendConv(self.midend_filters, self.bn_epsilon, name="midend_1")(frontend)
        cnn2 = MidendConv(self.midend_filters, self.bn_epsilon, name="midend_2")(cnn1) + cnn1
        cnn3 = MidendConv(self.midend_filters, self.bn_epsilon, name="midend_3")(cnn2) + cnn2
        midend = jnp.concatenate([frontend, cnn1, cnn2, cnn3], axis=-1)

        max_pool = jnp.max(midend, axis=1)
        mean_pool = jnp.mean(midend, axis=1)
        # musicnn flattens [b, features, (max, mean)], so the two pools interleave.
        pooled = jnp.stack([max_pool, mean_pool], axis=-1).reshape(midend.shape[0], -1)

        for name, value in [("timbral", jnp.concatenate(timbral, -1)),
                            ("temporal", jnp.concatenate(temporal, -1)),
                            ("frontend", frontend), ("cnn1", cnn1), ("cnn2", cnn2), ("cnn3", cnn3),
                            ("midend", midend), ("max_pool", max_pool), ("mean_pool", mean_pool),
                            ("pooled", pooled)]:
            self.sow("intermediates", name, value)
        return DenseHead(self.head, name="head")(pooled)
