"""The Flax models: pure modules that import nothing but their layers, :mod:`jaxmir.spec` and
:mod:`jaxmir.errors`.

:data:`ARCHITECTURES` maps an architecture name (as saved in a spec) to its
module; :func:`build_module` makes the module a spec describes. Adding a model
family is one module here, one converter in :mod:`jaxmir.tfgraph.convert` and
one entry in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.errors import WeightsError
from jaxmir.models.heads import Composed, EmbeddingHead
from jaxmir.models.musicnn import MusiCNN
from jaxmir.models.vgg import ConvNet
from jaxmir.spec import INPUT_TAP


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A model family: its Flax module and whether it runs on audio patches (a backbone)."""

    module: type[nn.Module]
    backbone: bool


ARCHITECTURES: dict[str, Architecture] = {
    "musicnn": Architecture(MusiCNN, backbone=True),       # Pons & Serra, 2019
    "vgg": Architecture(ConvNet, backbone=True),           # musicnn's VGG baseline
    "vggish": Architecture(ConvNet, backbone=True),        # Hershey et al., 2017
    "head": Architecture(EmbeddingHead, backbone=False),   # a classifier head on embeddings
}
COMPOSED = "composed"  # a backbone joined to a head: config {"backbone": ..., "head": ...}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise WeightsError(f"unknown architecture '{name}'; known: "
                           + ", ".join([*ARCHITECTURES, COMPOSED])) from None


def build_module(architecture_name: str, config: Mapping[str, Any]) -> nn.Module:
    """The Flax module of an architecture with its (typed) configuration."""
    if architecture_name == COMPOSED:
        parts = [config[part] for part in ("backbone", "head")]
        return Composed(*(build_module(p["architecture"], p["config"]) for p in parts))
    return architecture(architecture_name).module(**config)


def backbone_of(module: nn.Module) -> nn.Module:
    """The module that runs on audio patches: a :class:`Composed`'s backbone, else ``module``."""
    return backbone_of(module.backbone) if isinstance(module, Composed) else module


def map_backbone(module: nn.Module, change: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """``module`` with its backbone (:func:`backbone_of`) replaced by ``change(backbone)``; the
    very same module when ``change`` returns the backbone unchanged (one jit cache entry)."""
    if not isinstance(module, Composed):
        return change(module)
    backbone = map_backbone(module.backbone, change)
    return module if backbone is module.backbone else module.clone(backbone=backbone)


def with_overlap_hop(module: nn.Module, hop: int) -> nn.Module:
    """The module set to share work between consecutive patches ``hop`` frames apart, if it can."""
    return map_backbone(module, lambda backbone: backbone.clone(overlap_hop=hop)
                        if isinstance(backbone, MusiCNN) else backbone)


def shares_overlap(module: nn.Module) -> bool:
    """Whether ``module`` is set to share work between consecutive patches
    (:func:`with_overlap_hop`): only then may its calls hand each other a carry."""
    backbone = backbone_of(module)
    return isinstance(backbone, MusiCNN) and backbone.overlap_hop > 0


# Weights in dense layers (2-D kernels) above which a model's head is heavy: it is read in full at
# every call and every step (VGGish's 67 M; musicnn's heads hold under 0.4 M).
HEAVY_DENSE_WEIGHTS = 1 << 22


def dense_weights(variables: Mapping) -> int:
    """How many weights the 2-D kernels (dense layers) of ``variables`` hold; the leaves may be
    arrays or ``jax.ShapeDtypeStruct``."""
    shapes = (np.shape(leaf) for leaf in jax.tree_util.tree_leaves(variables))
    return sum(int(np.prod(shape)) for shape in shapes if len(shape) == 2)


def has_heavy_head(variables: Mapping) -> bool:
    """Whether ``variables``' dense layers hold more than :data:`HEAVY_DENSE_WEIGHTS` weights."""
    return dense_weights(variables) > HEAVY_DENSE_WEIGHTS


def is_bfloat16(tree) -> bool:
    """Whether a tree of arrays (variables, or a call's arguments) holds bfloat16 ones: the
    variables of :meth:`jaxmir.Model.astype` ``("bfloat16")``, whose patches run in bfloat16 too."""
    leaves = jax.tree_util.tree_leaves(tree)
    return any(getattr(leaf, "dtype", None) == jnp.bfloat16 for leaf in leaves)


def _shapes(tree: Mapping) -> dict[str, tuple[int, ...]]:
    return {path: tuple(np.shape(value)) for path, value in leaves(tree).items()}


# No weight of Essentia's models reaches 1e3 (msd-musicnn's largest, a batch norm's variance, is
# 557); a flipped exponent bit in a damaged file makes ~1e36, whose products overflow float32.
MAX_WEIGHT = 1e10


def damaged_variable(variables: Mapping, why: str = ": the file is damaged"
                     ) -> tuple[str, str] | None:
    """``(path, what)`` of the first variable holding NaN, an infinity or a value beyond
    :data:`MAX_WEIGHT` in size (``what`` then ending in ``why``), or ``None``."""
    for path, value in leaves(variables).items():
        array = np.asarray(value)
        if not array.size:
            continue
        lowest, highest = float(array.min()), float(array.max())  # NaN if any is; no copies
        if not (math.isfinite(lowest) and math.isfinite(highest)):
            return path, "NaN or infinite values"
        largest = max(-lowest, highest)
        if largest > MAX_WEIGHT:
            return path, (f"a value of size {largest:.3g}, beyond any trained weight's "
                          f"({MAX_WEIGHT:.0e}){why}")
    return None


def variance_below_epsilon(variables: Mapping, epsilons: Mapping[str, float]
                           ) -> tuple[str, str] | None:
    """``(path, what)`` of the first batch-norm variance ``var`` for which ``var + epsilon`` is
    <= 0 with its batch norm's ``epsilon`` (``epsilons`` by path, as
    :func:`variable_mismatches` reads them): NaN or infinite outputs. ``None`` when there is
    none. Summed in float32, as the batch norm of a float32 model adds them; in bfloat16
    (:meth:`jaxmir.Model.astype`) a variance within ~0.4% of ``-epsilon`` rounds onto it."""
    for path, value in leaves(variables).items():
        if path.startswith("batch_stats/") and path.endswith("/var") and np.size(value):
            epsilon = epsilons[path[len("batch_stats/"):-len("/var")]]
            lowest = float(np.min(value))
            if not np.float32(lowest) + np.float32(epsilon) > 0:
                return path, (f"a variance of {lowest:.3g}, which with its batch norm's epsilon "
                              f"({epsilon:.3g}) is <= 0: the file is damaged")
    return None


def leaves(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"<prefix>a/b": x}``: a variable tree's leaves by path."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(leaves(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def variable_mismatches(name: str, config: Mapping[str, Any], input_shape: tuple[int, ...],
                        variables: Mapping, taps: Iterable[str] = (),
                        tap_shapes: Iterable[tuple[str, Any]] = (),
                        epsilons: dict[str, float] | None = None) -> str | None:
    """How ``variables`` fail to fit the module a spec describes, or ``None`` when they fit;
    also names ``taps`` (sown intermediates a spec's outputs read) that the module does not sow,
    and ``tap_shapes`` (``(tap, per-example shape)``: a spec's node map) whose shape is not one
    of positive sizes holding the tap's values. ``epsilons``, when given, is filled with each
    batch norm's epsilon by the path of its variables under ``batch_stats``
    (``"midend_1/block/batch_norm"``), for :func:`variance_below_epsilon`.

    The module is traced abstractly (``jax.eval_shape``): nothing is allocated.
    """
    module = build_module(name, config)
    dummy = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

    def record(call, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            epsilons["/".join(context.module.path)] = float(context.module.epsilon)
        return call(*args, **kwargs)

    try:
        with nn.intercept_methods(record) if epsilons is not None else contextlib.nullcontext():
            expected = jax.eval_shape(functools.partial(module.init, mutable=True),
                                      jax.random.PRNGKey(0), dummy)
    except Exception as err:  # noqa: BLE001 -- any failure to trace is a model that cannot run
        return f"the {name} model cannot run on [batch, {', '.join(map(str, input_shape))}] " \
               f"inputs ({type(err).__name__}: {err})"
    sown = {tap: value[0].shape for tap, value in leaves(expected.get("intermediates", {})).items()}
    unknown = sorted(set(taps) - set(sown) - {INPUT_TAP})
    if unknown:
        return f"outputs read {_first(unknown)}, which the {name} model does not compute"
    sown[INPUT_TAP] = (1, *input_shape)
    for tap, shape in tap_shapes:
        values = math.prod(sown[tap][1:]) if tap in sown else None
        sizes = list(shape) if isinstance(shape, (tuple, list)) else None
        if values is not None and not (
                sizes is not None and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                          for d in sizes) and math.prod(sizes) == values):
            return (f"the output read from {tap!r} is given the shape {str(shape)[:60]}, which "
                    f"does not hold its {values} values an example")
    want = _shapes({k: v for k, v in expected.items() if k in ("params", "batch_stats")})
    have = _shapes(variables)
    if want == have:
        return None
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shapes = [f"{k} {list(have[k])} in the file, {list(want[k])} in the model"
              for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    return (f"variables do not fit the {name} model they describe (missing: {_first(missing)}; "
            f"unexpected: {_first(extra)}; shapes that differ: {_first(shapes)})")


def _first(items: list[str], shown: int = 3) -> str:
    """``items``' first ``shown``, and how many more; ``none`` for none."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more if items else "none"
