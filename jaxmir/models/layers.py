"""Building blocks shared by the Flax models.

Layers are described by the frozen dataclasses of :mod:`jaxmir.spec`
(``Dense(200)``, ``Activation("relu")``, ``BatchNorm(1e-3)``), so that an
architecture read from a graph is a hashable tuple that a Flax module takes as
an attribute and a weights file stores as JSON.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.promotion import PRECISION, standard_promotion
from jaxmir.spec import Activation, BatchNorm, Dense, HeadLayer, MaxPool, dense_indices

# The Flax collection in which calls on consecutive patches of one signal hand the next call
# the rows of work both compute (MusiCNN's timbral rows; ``jaxmir.models.runner`` threads it).
OVERLAP = "overlap"

# What a backbone's call computes (``module(x, stage=...)``, :class:`Backbone`): the whole model;
# its body alone (patches -> the features its dense head takes, ``[batch, features]``); or its
# head alone (those features -> outputs). A runner can then take the body in small steps, whose
# activations stay in cache, and the head once per batch: VGGish's head reads its 67 M weights at
# every call (~3 ms per patch in calls of 8, against ~11 for its convolutions; Zen 4).
WHOLE, BODY, HEAD = "whole", "body", "head"

# The function of each activation a spec names (jaxmir.spec.ACTIVATIONS)
ACTIVATION_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "elu": nn.elu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "softmax": nn.softmax,
    "identity": lambda x: x,
}


def frozen_batch_norm(epsilon: float, name: str | None = None) -> nn.BatchNorm:
    """Batch normalisation with running statistics, as TensorFlow runs it at inference.

    ``y = (x - mean) * (scale * rsqrt(var + epsilon)) + bias`` over the last
    axis; ``mean``/``var`` live in the ``batch_stats`` collection.
    """
    return nn.BatchNorm(use_running_average=True, epsilon=epsilon, name=name)


def dense_name(index: int) -> str:
    """The Flax name of the dense layer at position ``index`` of a :class:`DenseHead`."""
    return f"dense_{index}"


def batch_norm_name(index: int) -> str:
    """The Flax name of the batch norm at position ``index`` of a :class:`DenseHead`."""
    return f"batch_norm_{index}"


class DenseHead(nn.Module):
    """A stack of dense layers, batch norms and activations applied to ``[batch, features]``.

    Attributes:
      layers: in order, e.g. ``(BatchNorm(1e-3), Dense(200), Activation("relu"),
        BatchNorm(1e-3), Dense(50), Activation("sigmoid"))`` (MusiCNN's back-end).

    Each layer's output is sown as ``intermediates/layer_<i>``.
    """

    layers: tuple[HeadLayer, ...]

    @nn.compact
    @standard_promotion
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                x = dense(x, *KernelParams((x.shape[-1], layer.units), name=dense_name(i))())
            elif isinstance(layer, BatchNorm):
                x = frozen_batch_norm(layer.epsilon, name=batch_norm_name(i))(x)
            elif isinstance(layer, Activation):
                x = ACTIVATION_FUNCTIONS[layer.name](x)
            else:
                raise TypeError(f"not a head layer: {layer!r}")
            self.sow("intermediates", f"layer_{i}", x)
        return x


class Backbone(nn.Module):
    """A model on patches whose call can stop after its body or start at its dense head.

    ``module(x, stage)``: :data:`WHOLE` (patches -> head output), :data:`BODY` (patches -> the
    features the head takes, ``[batch, features]``) or :data:`HEAD` (those features -> head
    output). Subclasses define ``head`` (a :class:`DenseHead`'s layers) and :meth:`body`.
    """

    staged: ClassVar[bool] = True

    @nn.compact
    @standard_promotion
    def __call__(self, x: jax.Array, stage: str = WHOLE) -> jax.Array:
        if stage != HEAD:
            x = self.body(x)
        if stage == BODY:
            return x
        return DenseHead(self.head, name="head")(x)

    def body(self, patches: jax.Array) -> jax.Array:
        """Patches -> the features the dense head takes ``[batch, features]``."""
        raise NotImplementedError


def head_variables(weights: dict[int, dict]) -> dict:
    """A :class:`DenseHead`'s variables from per-layer weights.

    ``weights`` maps a layer position to ``{"kernel", "bias"}`` (dense) or
    ``{"params": {"scale", "bias"}, "batch_stats": {"mean", "var"}}`` (batch norm).
    Returns ``{"params": {...}, "batch_stats": {...}}`` for the head alone.
    """
    params, stats = {}, {}
    for index, value in weights.items():
        if "kernel" in value:
            params[dense_name(index)] = value
        else:
            params[batch_norm_name(index)] = value["params"]
            stats[batch_norm_name(index)] = value["batch_stats"]
    return {"params": params, **({"batch_stats": stats} if stats else {})}


def head_aliases(layers: Sequence[HeadLayer], prefix: str = "head/") -> dict[str, str]:
    """Friendly output names for a head: ``embeddings``, ``penultimate``, ``logits``,
    ``predictions``.

    ``embeddings`` is the first dense layer's output (before its activation, as
    Essentia's ``model/dense/BiasAdd``); ``penultimate`` is what feeds the last
    dense layer (musicnn's batch-normalised ``bn_dense``); ``logits`` is the last
    dense layer's output and ``predictions`` the head's output.
    """
    dense = dense_indices(layers)
    aliases = {"predictions": f"{prefix}layer_{len(layers) - 1}"}
    if dense:
        aliases["embeddings"] = f"{prefix}layer_{dense[0]}"
        aliases["logits"] = f"{prefix}layer_{dense[-1]}"
        if dense[-1] > 0:
            aliases["penultimate"] = f"{prefix}layer_{dense[-1] - 1}"
    return aliases


def monotone_direction(batch_norm: nn.BatchNorm | None, features: int, dtype) -> jax.Array:
    """``[features]``: +1 for the channels in which ``batch_norm`` (after a non-decreasing
    activation) is non-decreasing, -1 where its scale is negative and it decreases.

    With ``None`` (no batch norm) every channel is +1. Must be called inside the
    module that owns ``batch_norm``; at init it creates the batch norm's variables.
    """
    if batch_norm is None:
        return jnp.ones(features, dtype)
    if batch_norm.is_initializing():
        batch_norm(jnp.zeros((1, features), dtype))
    return jnp.where(batch_norm.variables["params"]["scale"] < 0, -1, 1).astype(dtype)


def directed_max(linear: Callable[[jax.Array], jax.Array], kernel: jax.Array,
                 direction: jax.Array, axis: int) -> jax.Array:
    """Per output channel (the last axis), the max over ``axis`` of ``linear(kernel)`` where
    ``direction`` is +1 and the min where it is -1, taken with one max reduction.

    ``linear`` maps a kernel ``[..., channels]`` to its output ``[..., channels]``
    (a convolution or a matrix product), channel ``c`` depending on kernel column
    ``c`` alone, so ``linear(-kernel) == -linear(kernel)`` bit for bit and
    ``min(y) = -max(-y)``. Why one reduction: XLA's CPU backend fuses a single
    reduction into the convolution before it (no ``[..., mel, filters]`` tensor
    is written). A max and a min of the same output, compiled alone, are not
    fused and run 2-5x slower; inside the whole MusiCNN XLA fused both anyway,
    and one reduction is ~5% faster there.

    With ``f`` an activation and batch norm, monotone per channel in ``direction``
    (:func:`monotone_direction`), ``f(directed_max(...) + bias)`` is exactly
    ``max(f(linear(kernel) + bias), axis)``: float32 rounding is monotone too,
    so taking the extreme before ``f`` changes no bit, while ``f`` runs on the
    reduced tensor only, outside the convolution's fusion (:func:`fusion_boundary`).
    """
    return direction * fusion_boundary(jnp.max(linear(kernel * direction), axis=axis))


def fusion_boundary(x: jax.Array) -> jax.Array:
    """``x`` unchanged, bit for bit (a rounding to its own dtype's exponent and mantissa widths),
    as a point where XLA ends a fusion.

    Why: XLA's CPU backend otherwise fuses the elementwise work after a convolution and its
    reduction (direction, bias, ReLU, batch norm) into the convolution's YNNPACK fusion, which
    then runs on one core at batch 1. MusiCNN on the Zen 4 (2 cores), ms per patch, without and
    with it: batch 1 26.2 -> 19.6-22.2, batch 8 17.1-18.2 -> 15.3-17.3; the 207-s ``predict``
    1.50-1.54 -> 1.40-1.47 s (three alternated process pairs).
    """
    info = jnp.finfo(x.dtype)
    return jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


# Elementwise and non-decreasing: the activations directed_max may precede.
MONOTONE = ("relu", "elu", "tanh", "sigmoid", "identity", "")


def convolve(x: jax.Array, kernel: jax.Array, padding: str | tuple) -> jax.Array:
    """Stride-1 convolution of ``[b, *spatial, c_in]`` with ``[*window, c_in, c_out]`` at full
    float32 precision, as :class:`flax.linen.Conv` computes it (without its bias)."""
    spatial = {3: "W", 4: "HW"}[kernel.ndim]
    numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    return jax.lax.conv_general_dilated(x, kernel, (1,) * (kernel.ndim - 2), padding,
                                        dimension_numbers=numbers, precision=PRECISION)


def convolve_rows_as_channels(x: jax.Array, kernel: jax.Array, padding: tuple) -> jax.Array:
    """:func:`convolve` of a one-channel ``[b, h, w, 1]`` by ``[kh, kw, 1, c]`` with explicit
    ``padding`` ``((top, bottom), (left, right))``, computed as a 1-D convolution along ``w``
    whose ``kh`` input channels are ``x`` shifted by ``0 .. kh - 1`` rows: ``[b, h', w', c]``,
    the same numbers up to float32 summation order.

    Why: XLA's CPU backend hands 2-D convolutions to YNNPACK and 1-D ones to its own kernels.
    For MusiCNN's 7x67 timbral branch on an AVX2 CPU the latter ran ~1.4x as fast (Zen 3;
    ``jaxmir.models.compiler``); the ``kh``-fold copy of the input is small beside the output.
    """
    (top, bottom), (left, right) = padding
    height = kernel.shape[0]
    rows = jnp.pad(x[..., 0], ((0, 0), (top, bottom), (0, 0)))
    out_rows = rows.shape[1] - height + 1
    shifted = jnp.stack([rows[:, i:i + out_rows] for i in range(height)], axis=-1)  # [b, h', w, kh]
    lines = shifted.reshape((-1,) + shifted.shape[2:])
    y = jax.lax.conv_general_dilated(lines, jnp.transpose(kernel[:, :, 0], (1, 0, 2)), (1,),
                                     ((left, right),), dimension_numbers=("NWC", "WIO", "NWC"),
                                     precision=PRECISION)
    return y.reshape(x.shape[0], out_rows, *y.shape[1:])


class ConvBlock(nn.Module):
    """Convolution, activation, optional batch norm, optional max-pool: ``[b, h, w, c]``.

    Attributes:
      features: output channels.
      kernel: ``(height, width)``, or ``(length,)`` for a 1-D convolution on ``[b, t, c]``.
      padding: ``"SAME"``, ``"VALID"`` or explicit ``((top, bottom), (left, right))``.
      activation: a key of :data:`ACTIVATION_FUNCTIONS` or ``""`` for none.
      bn_epsilon: batch-norm epsilon after the activation, or ``None`` for no batch norm.
      pool: a :class:`~jaxmir.spec.MaxPool` or ``None``.
      max_axis: when set, the block ends with the max over this axis (MusiCNN's max
        over frequency), taken by :func:`directed_max` before the bias, activation
        and batch norm, which then run on the reduced tensor; no pool then.
      rows_as_channels: compute the convolution (of a one-channel input, with an
        explicit ``padding``) by :func:`convolve_rows_as_channels`; the same variables.

    With a pool, the output before pooling is sown as ``features``. A call may pass
    another ``padding`` than the attribute's: the same variables (MusiCNN's patch ends).
    """

    features: int
    kernel: tuple[int, ...]
    padding: str | tuple = "SAME"
    activation: str = "relu"
    bn_epsilon: float | None = None
    pool: MaxPool | None = None
    max_axis: int | None = None
    rows_as_channels: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, padding: str | tuple | None = None) -> jax.Array:
        batch_norm = (frozen_batch_norm(self.bn_epsilon, name="batch_norm")
                      if self.bn_epsilon is not None else None)

        def after_conv(y: jax.Array) -> jax.Array:
            y = ACTIVATION_FUNCTIONS[self.activation](y) if self.activation else y
            return batch_norm(y) if batch_norm is not None else y

        padding = padding or self.padding
        if self.max_axis is not None:
            assert self.pool is None and self.activation in MONOTONE
            return after_conv(self._max_of_conv(x, batch_norm, padding))
        kernel, bias = KernelParams((*self.kernel, x.shape[-1], self.features), name="conv")()
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        x = self._convolve(x, kernel, padding) + bias
        x = after_conv(x)
        if self.pool is not None:
            self.sow("intermediates", "features", x)
            x = nn.max_pool(x, self.pool.window, strides=self.pool.strides,
                            padding=self.pool.padding)
        return x

    def _max_of_conv(self, x: jax.Array, batch_norm: nn.BatchNorm | None,
                     padding: str | tuple) -> jax.Array:
        """The convolution plus bias, reduced over ``max_axis`` towards where ``after_conv`` is
        largest."""
        kernel, bias = KernelParams((*self.kernel, x.shape[-1], self.features), name="conv")()
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        direction = monotone_direction(batch_norm, self.features, x.dtype)
        extreme = directed_max(lambda k: self._convolve(x, k, padding), kernel, direction,
                               self.max_axis)
        return extreme + bias

    def _convolve(self, x: jax.Array, kernel: jax.Array, padding: str | tuple) -> jax.Array:
        if self.rows_as_channels:
            return convolve_rows_as_channels(x, kernel, padding)
        return convolve(x, kernel, padding)


def time_blocks(x: jax.Array, length: int, block: int) -> jax.Array:
    """A ``[b, t, f]`` signal as blocks of ``block`` frames laid along channels, zero-padded for
    a ``"SAME"`` convolution along time of ``length`` taps (TensorFlow's padding:
    ``(length - 1) // 2`` frames before).

    Returns ``[b, blocks, f, block]``, where block ``j`` holds padded frames
    ``j * block .. (j + 1) * block - 1`` and the output block ``j`` of
    :func:`block_kernel` reads blocks ``j .. j + taps - 1``: ``blocks`` is
    ``ceil(t / block) + taps - 1``.
    """
    b, frames, bands = x.shape
    lead, taps = _block_geometry(length, block)
    blocks = -(-frames // block) + taps - 1
    padded = jnp.pad(x, ((0, 0), (lead * block, blocks * block - lead * block - frames), (0, 0)))
    return padded.reshape(b, blocks, block, bands).transpose(0, 1, 3, 2)


def block_kernel(kernel: jax.Array, block: int) -> jax.Array:
    """A time kernel ``[length, features]`` as a convolution over :func:`time_blocks`:
    ``[taps, 1, block, block * features]``, output channel ``o * features + c`` being frame
    ``o`` of the block, filter ``c`` (zeros where a frame lies outside the kernel's reach)."""
    length, features = kernel.shape
    lead, taps = _block_geometry(length, block)
    offset = lead * block - (length - 1) // 2       # padded frame of output frame 0's first tap
    tap = np.arange(taps * block)[:, None] - offset - np.arange(block)[None, :]
    inside = (tap >= 0) & (tap < length)
    toeplitz = jnp.where(inside[..., None], kernel[np.clip(tap, 0, length - 1)], 0.0)
    return toeplitz.reshape(taps, 1, block, block * features)


def _block_geometry(length: int, block: int) -> tuple[int, int]:
    """``(lead, taps)``: blocks of zeros before the signal and blocks an output block reads."""
    before = (length - 1) // 2
    lead = -(-before // block)
    return lead, -(-(lead * block - before + block + length - 1) // block)


class KernelParams(nn.Module):
    """A ``kernel`` and a ``bias`` (``[kernel_shape[-1]]``), named as :class:`flax.linen.Conv`
    and :class:`flax.linen.Dense` name theirs, for layers that compute themselves.

    Given variables are read and their shapes compared with ``kernel_shape`` directly: Flax's
    ``param`` traces the initializer to check them, at every trace of the model (0.1-0.2 s of a
    process's first MusiCNN trace, ~0.3-0.5 s in all, on a 2-core Zen 3).
    """

    kernel_shape: tuple[int, ...]

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        return (self._param("kernel", nn.initializers.lecun_normal(), self.kernel_shape),
                self._param("bias", nn.initializers.zeros_init(), self.kernel_shape[-1:]))

    def _param(self, name: str, init: Callable, shape: tuple[int, ...]) -> jax.Array:
        if not self.has_variable("params", name):
            return self.param(name, init, shape, jnp.float32)  # as nn.Conv's, under x64 too
        value = self.get_variable("params", name)
        if np.shape(value) != tuple(shape):
            raise flax.errors.ScopeParamShapeError(name, self.scope.path_text, np.shape(value),
                                                   tuple(shape))
        return value


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``x @ kernel + bias`` over the last axis at full float32 precision, as
    :class:`flax.linen.Dense` computes it: ``[..., in] -> [..., out]``."""
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=PRECISION)
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def conv_variables(kernel, bias, batch_norm: tuple[dict, dict] | None = None) -> dict:
    """A :class:`ConvBlock`'s variables: its kernel, bias and ``(params, batch_stats)`` of its batch
    norm."""
    variables = {"params": {"conv": {"kernel": kernel, "bias": bias}}}
    if batch_norm is not None:
        params, stats = batch_norm
        variables["params"]["batch_norm"] = params
        variables["batch_stats"] = {"batch_norm": stats}
    return variables


def nest(tree: dict, prefix: tuple[str, ...], variables: dict) -> None:
    """Place a submodule's ``{"params": ..., "batch_stats": ...}`` under ``prefix`` in ``tree``."""
    for collection, values in variables.items():
        target = tree.setdefault(collection, {})
        for key in prefix:
            target = target.setdefault(key, {})
        target.update(values)
