"""Classifier heads on embeddings, and a backbone joined to a head.

Essentia's newer models are small heads (dense 100 -> classes -> softmax) that
run on another model's embeddings (``TensorflowPredict2D``). jaxmir imports a
head on its own (:class:`EmbeddingHead`, input ``[batch, features]``) and can
join it to its backbone (:class:`Composed`): the backbone cut at its embedding
layer, then the head, one Flax module from patches to the head's classes.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from jaxmir.models.layers import BODY, WHOLE, DenseHead, head_variables, nest
from jaxmir.promotion import standard_promotion
from jaxmir.spec import HeadLayer


class EmbeddingHead(nn.Module):
    """Dense layers on embeddings ``[batch, features]`` -> ``[batch, classes]``."""

    head: tuple[HeadLayer, ...]

    @nn.compact
    @standard_promotion
    def __call__(self, embeddings: jax.Array) -> jax.Array:
        return DenseHead(self.head, name="head")(embeddings)


class Composed(nn.Module):
    """A backbone whose output is its embedding layer, followed by a head.

    ``patches [batch, time, mel]`` -> backbone -> ``[batch, features]`` -> head.
    Intermediates are sown under ``backbone/...`` and ``head/...``.
    """

    backbone: nn.Module
    head: nn.Module
    staged: ClassVar[bool] = True

    @standard_promotion
    def __call__(self, x: jax.Array, stage: str = WHOLE) -> jax.Array:
        """``stage``: as the backbone's; the body is the backbone's, the head both dense heads."""
        if stage == BODY:
            return self.backbone(x, stage=BODY)
        return self.head(self.backbone(x, stage=stage))


def embedding_head_variables(head: dict[int, dict]) -> dict:
    """:class:`EmbeddingHead`'s variable tree from per-layer weights."""
    tree: dict = {}
    nest(tree, ("head",), head_variables(head))
    return tree
