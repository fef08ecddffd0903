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

from jaxmir.models.layers import (ACTIVATION_FUNCTIONS, OVERLAP, Backbone, ConvBlock, KernelParams,
                                  block_kernel, convolve, directed_max, frozen_batch_norm,
                                  head_variables, monotone_direction, nest, time_blocks)
from jaxmir.spec import Activation, BatchNorm, Dense, HeadLayer


def musicnn_head(units: int = 200, n_labels: int = 50,
                 epsilon: float = 1e-3) -> tuple[HeadLayer, ...]:
    """musicnn's back-end after pooling: BN, dense + ReLU, BN, dense logits, sigmoid."""
    bn = BatchNorm(epsilon)
    return (bn, Dense(units), Activation("relu"), bn, Dense(n_labels), Activation("sigmoid"))


class FrequencyMaxBlock(nn.Module):
    """A front-end branch: conv, ReLU, BN, then max over the whole frequency axis.

    ``[b, t, mel, 1]`` -> ``[b, t, filters]``.

    Attributes:
      overlap_hop: when > 0, the batch holds consecutive patches of one signal,
        ``overlap_hop`` frames apart, and a convolution padded by its own height
        minus one (MusiCNN's timbral branches) is computed once over the frames
        the patches cover (see :meth:`_over_stretch`). The result equals
        patch-by-patch evaluation up to float32 summation order.

    When the :data:`~jaxmir.models.layers.OVERLAP` collection is mutable, the
    stretch also stores, as ``rows``, the rows the next batch of consecutive
    patches would compute again (those of the frames both stretches cover, but
    for the 3 at each end, which read padding), and takes its own first rows from
    the ``rows`` the variables hold when ``valid`` is set: consecutive calls, or
    the steps of one call, then compute each frame's timbral rows once.

    ``rows_as_channels``: the convolution runs as a 1-D one along frequency
    (:func:`~jaxmir.models.layers.convolve_rows_as_channels`), a choice of speed.
    """

    filters: int
    kernel: tuple[int, int]
    padding: str | tuple
    bn_epsilon: float
    overlap_hop: int = 0
    rows_as_channels: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernel[1] == 1 and self.padding == "SAME" and x.shape[-1] == 1:
            x = TimeConvFrequencyMax(self.filters, self.kernel[0], self.bn_epsilon, name="block")(x)
        else:
            # conv + ReLU + BN, then max over frequency: [b, t, mel, 1] -> [b, t, filters]
            block = ConvBlock(self.filters, self.kernel, self.padding, "relu", self.bn_epsilon,
                              max_axis=2, rows_as_channels=self.rows_as_channels, name="block")
            if self._shares_overlap(x):
                x = self._over_stretch(block, x)
            else:
                x = block(x)
        self.sow("intermediates", "output", x)
        return x

    def _shares_overlap(self, x: jax.Array) -> bool:
        if self.overlap_hop <= 0 or not isinstance(self.padding, tuple):
            return False
        top, bottom = self.padding[0]
        return (self.kernel[0] == top + bottom + 1 and x.shape[0] > 1
                and self.overlap_hop < x.shape[1] - 2 * (top + bottom))

    def _over_stretch(self, block: nn.Module, x: jax.Array) -> jax.Array:
        """``block`` on ``[C, T, mel, 1]`` consecutive patches, ``hop`` frames apart:
        ``[C, T, filters]``.

        The patches' frames are laid end to end (``L = (C - 1) * hop + T``
        frames) and the block runs once on that stretch; row ``r`` of patch
        ``p`` is row ``p * hop + r`` of the result, except the ``top``/``bottom``
        rows at the patch's ends, whose convolution reads the patch's zero
        padding: those run per patch (:func:`_end_rows`). Everything after the
        convolution (ReLU, batch norm, the max over frequency) acts on each row
        separately; ``block`` maps ``[b, t, mel, 1]`` to ``[b, t, filters]``, so
        that rows are copied only after the frequency axis is gone.
        """
        n, length = x.shape[0], x.shape[1]
        hop, (top, bottom) = self.overlap_hop, self.padding[0]
        stretch = jnp.concatenate([x[:-1, :hop].reshape((-1,) + x.shape[2:]), x[-1]])
        if self.is_mutable_collection(OVERLAP):
            # The first `carried` rows (frames top..) are the last ones of the stretch before.
            carried = length - hop - top - bottom
            head = self._carried_rows(block, stretch[:carried + top + bottom])
            rest = block(stretch[None, carried:])[0, top:]
            shared = jnp.concatenate([head, rest])          # row i: frame top + i
            self.put_variable(OVERLAP, "rows", shared[n * hop:n * hop + carried])
            self.put_variable(OVERLAP, "valid", jnp.array(True))
        else:
            shared = block(stretch[None])[0, top:]
        rows = jnp.stack([shared[p * hop:p * hop + length - top - bottom] for p in range(n)])
        first, last = _end_rows(block, x, top, bottom)
        return jnp.concatenate([first, rows, last], axis=1)

    def _carried_rows(self, block: nn.Module, head: jax.Array) -> jax.Array:
        """The block's rows for the inside of ``head`` (``[k, mel, 1]`` frames, unpadded):
        the stored ones when the variables hold valid ones, else computed."""
        no_pad = ((0, 0),) * (head.ndim - 1)
        if not self.has_variable(OVERLAP, "rows"):
            return block(head[None], padding=no_pad)[0]
        stored = self.get_variable(OVERLAP, "rows")
        # lax.cond runs one branch; the block runs unbound inside it (Flax modules and
        # JAX transforms do not mix), on the bound block's own variables.
        unbound, variables = block.clone(parent=None), block.variables
        return jax.lax.cond(self.get_variable(OVERLAP, "valid"), lambda: stored,
                            lambda: unbound.apply(variables, head[None], padding=no_pad)[0])


class TimeConvFrequencyMax(nn.Module):
    """A temporal branch: ``"SAME"`` convolution along time (kernel ``[length, 1]``) of
    a one-channel ``[b, t, mel, 1]``, ReLU, BN, max over frequency: ``[b, t, filters]``.

    The same numbers as :class:`ConvBlock` followed by the max (up to float32
    summation order), computed with time cut into blocks of ``block`` frames laid
    along channels (:func:`time_blocks`): a convolution a few blocks tall with
    ``block`` input channels and ``block * filters`` outputs (:func:`block_kernel`,
    the kernel's Toeplitz matrix), which XLA reduces over frequency as it goes.
    XLA's one-channel convolution with a tall kernel runs far below the machine's
    peak; this one at 50-70% of it (``benchmarks/bench_peak.py``, Zen 4), where the
    banded matrix products it replaced ran at 40-65%. Variables are :class:`ConvBlock`'s
    (``conv/kernel``, ``conv/bias``, ``batch_norm``).
    """

    filters: int
    length: int
    bn_epsilon: float
    block: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = KernelParams((self.length, 1, 1, self.filters), name="conv")()
        batch_norm = frozen_batch_norm(self.bn_epsilon, name="batch_norm")
        frames, block = x.shape[1], self.block
        blocks = time_blocks(x[..., 0], self.length, block)             # [b, blocks, mel, block]

        def convolution(time_kernel: jax.Array) -> jax.Array:
            y = convolve(blocks, block_kernel(time_kernel, block), "VALID")
            # [b, j, mel, block, filters]
            return y.reshape(y.shape[:3] + (block, self.filters))

        # extreme over mel: [b, j, block, filters]
        direction = monotone_direction(batch_norm, self.filters, blocks.dtype)
        y = directed_max(convolution, kernel[:, 0, 0, :], direction, axis=2) + bias
        y = batch_norm(ACTIVATION_FUNCTIONS["relu"](y))
        return y.reshape(y.shape[0], -1, self.filters)[:, :frames]


def _end_rows(block, x: jax.Array, top: int, bottom: int) -> tuple[jax.Array, jax.Array]:
    """The first ``top`` and last ``bottom`` rows of ``block`` on each ``[C, T, mel, 1]`` patch
    (a convolution ``top + bottom + 1`` frames tall, zero-padded by ``top``/``bottom``), in one
    unpadded call on ``[2C, top + bottom + max(top, bottom), mel, 1]`` (with ``top == bottom``,
    as in MusiCNN, it computes those rows and no other)."""
    edge, most = top + bottom, max(top, bottom)
    no_pad = ((0, 0),) * (x.ndim - 2)
    heads = jnp.pad(x[:, :edge], ((0, 0), (top, most - top)) + no_pad)
    tails = jnp.pad(x[:, x.shape[1] - edge:], ((0, 0), (most - bottom, bottom)) + no_pad)
    ends = block(jnp.concatenate([heads, tails]), padding=no_pad)
    n = x.shape[0]
    return ends[:n, :top], ends[n:, most - bottom:]


class MidendConv(nn.Module):
    """A mid-end layer: a 7-frame convolution across all features, ReLU, BN.
    ``[b, t, c] -> [b, t, filters]``."""

    filters: int
    bn_epsilon: float
    length: int = 7

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ConvBlock(self.filters, (self.length,), "SAME", "relu", self.bn_epsilon,
                         name="block")(x)


class MusiCNN(Backbone):
    """MusiCNN on log-mel patches ``[batch, time, mel]``; returns the head's output (or, by
    ``stage``, the body's or the head's alone: :class:`~jaxmir.models.layers.Backbone`).

    Attributes:
      head: the back-end after pooling as layer specs (see :func:`musicnn_head`).
      timbral_filters, timbral_widths: filters of both timbral branches and
        their kernel widths in mel bands (7 frames tall).
      temporal_filters, temporal_lengths: filters of the temporal branches
        and their kernel lengths in frames (1 band wide).
      midend_filters: filters of the three mid-end convolutions.
      bn_epsilon: epsilon of every batch norm of the body.
      overlap_hop: set (``module.clone(overlap_hop=hop)``) when a batch holds
        consecutive patches ``hop`` frames apart: the timbral convolutions are
        then computed once for the frames the patches share.
      timbral_rows_as_channels: widths of the timbral branches whose convolution
        runs as a 1-D one along frequency, the kernel's 7 rows as channels: the
        same numbers up to float32 summation order, chosen per CPU for speed
        (:func:`jaxmir.models.compiler.tuned`).

    Intermediate outputs are sown under ``intermediates`` with musicnn's names
    (``timbral`` ``[b, t, 408]``, ``temporal`` ``[b, t, 153]``, ``cnn1..3``
    ``[b, t, 64]``, ``mean_pool``/``max_pool`` ``[b, 753]``) and more.
    """

    head: tuple[HeadLayer, ...] = musicnn_head()
    timbral_filters: int = 204
    timbral_widths: tuple[int, ...] = (38, 67)
    temporal_filters: int = 51
    temporal_lengths: tuple[int, ...] = (128, 64, 32)
    midend_filters: int = 64
    bn_epsilon: float = 1e-3
    overlap_hop: int = 0
    timbral_rows_as_channels: tuple[int, ...] = ()

    def body(self, patches: jax.Array) -> jax.Array:
        """Patches ``[b, t, mel]`` -> pooled features ``[b, 2 * 753]``, the head's input."""
        x = frozen_batch_norm(self.bn_epsilon, name="input_bn")(patches[..., None])

        timbral = [FrequencyMaxBlock(self.timbral_filters, (7, width), ((3, 3), (0, 0)),
                                     self.bn_epsilon, self.overlap_hop,
                                     rows_as_channels=width in self.timbral_rows_as_channels,
                                     name=f"timbral_{i}")(x)
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
        return pooled


def musicnn_variables(input_bn: tuple[dict, dict], timbral: list[dict], temporal: list[dict],
                      midend: list[dict], head: dict[int, dict]) -> dict:
    """:class:`MusiCNN`'s variable tree from its parts.

    Args:
      input_bn: ``(params, batch_stats)`` of the input batch norm.
      timbral, temporal: each branch's :func:`~jaxmir.models.layers.conv_variables`
        (2-D kernels ``[kh, kw, 1, filters]``), in the module's order.
      midend: the three mid-end layers' conv variables (1-D kernels ``[7, in, filters]``).
      head: per-layer weights of the dense head (:func:`~jaxmir.models.layers.head_variables`).
    """
    tree: dict = {}
    nest(tree, ("input_bn",), dict(zip(("params", "batch_stats"), input_bn)))
    for prefix, blocks in (("timbral", timbral), ("temporal", temporal)):
        for i, block in enumerate(blocks):
            nest(tree, (f"{prefix}_{i}", "block"), block)
    for i, block in enumerate(midend, start=1):
        nest(tree, (f"midend_{i}", "block"), block)
    nest(tree, ("head",), head_variables(head))
    return tree
