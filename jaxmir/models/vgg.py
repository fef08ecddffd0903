"""VGG-style networks in Flax: musicnn's VGG baseline and VGGish.

Both are a stack of 3x3 convolution blocks on a log-mel patch seen as a
one-channel image, flattened into a dense head::

    musicnn VGG   [b, 187, 96] -> BN -> 5 x (conv3x3 128, ReLU, BN, max-pool) -> flatten 256
                               -> dense 50
    VGGish        [b, 96, 64] -> conv64 pool conv128 pool conv256 conv256 pool conv512 conv512 pool
                               -> flatten 12288 -> fc 4096 -> fc 4096 -> fc 128

The blocks (:class:`~jaxmir.spec.ConvBlockSpec`) and the head are read from
the graph at import.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmir.models.layers import (Backbone, ConvBlock, frozen_batch_norm, fusion_boundary,
                                  head_variables, nest)
from jaxmir.spec import ConvBlockSpec, HeadLayer, MaxPool


def vggish_blocks() -> tuple[ConvBlockSpec, ...]:
    """VGGish (tensorflow/models research/audioset): no batch norm, 2x2/2 SAME pools."""
    pool = MaxPool((2, 2), (2, 2), "SAME")
    return tuple(ConvBlockSpec(features, (3, 3), "relu", None, pool if pooled else None)
                 for features, pooled in [(64, True), (128, True), (256, False), (256, True),
                                          (512, False), (512, True)])


class ConvNet(Backbone):
    """Convolution blocks then a dense head, on patches ``[batch, time, mel]`` (or, by ``stage``,
    either part alone: :class:`~jaxmir.models.layers.Backbone`).

    Attributes:
      blocks: the convolution blocks in order.
      head: the dense head after flattening (``[b, h * w * c]``, NHWC order).
      input_bn_epsilon: batch norm on the input (musicnn's VGG), or ``None``.

    Each block's output is sown as ``block_<i>_output`` (1-based), the flattened
    features as ``flatten``, the input after its batch norm as ``normalized_input``.
    """

    blocks: tuple[ConvBlockSpec, ...]
    head: tuple[HeadLayer, ...]
    input_bn_epsilon: float | None = None

    def body(self, patches: jax.Array) -> jax.Array:
        """Patches ``[b, time, mel]`` -> flattened features ``[b, h * w * c]``, the head's input."""
        x = patches[..., None]
        if self.input_bn_epsilon is not None:
            x = frozen_batch_norm(self.input_bn_epsilon, name="input_bn")(x)
            self.sow("intermediates", "normalized_input", x)
        for i, block in enumerate(self.blocks, start=1):
            x = ConvBlock(block.features, block.kernel, "SAME", block.activation, block.bn_epsilon,
                          block.pool, name=f"block_{i}")(x)
            self.sow("intermediates", f"block_{i}_output", x)
        # XLA's CPU backend otherwise compiles every block and the head into one YNNPACK fusion,
        # which ran VGGish at 12-15 patches/s at batch 8 against 75-85 so (Zen 4, 2 cores)
        x = fusion_boundary(jnp.reshape(x, (x.shape[0], -1)))
        self.sow("intermediates", "flatten", x)
        return x


def pool_aliases(blocks: tuple[ConvBlockSpec, ...]) -> dict[str, str]:
    """``pool1``, ``pool2``, ... for the blocks that end in a max-pool (musicnn's names)."""
    pooled = [i for i, block in enumerate(blocks, start=1) if block.pool is not None]
    return {f"pool{k}": f"block_{i}_output" for k, i in enumerate(pooled, start=1)}


def convnet_variables(input_bn: tuple[dict, dict] | None, blocks: list[dict],
                      head: dict[int, dict]) -> dict:
    """:class:`ConvNet`'s variable tree: input batch norm, each block's conv variables, the
    head's."""
    tree: dict = {}
    if input_bn is not None:
        nest(tree, ("input_bn",), dict(zip(("params", "batch_stats"), input_bn)))
    for i, block in enumerate(blocks, start=1):
        nest(tree, (f"block_{i}",), block)
    nest(tree, ("head",), head_variables(head))
    return tree
