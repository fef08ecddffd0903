"""MusiCNN's front-end layers against their plain definitions: conv, ReLU, batch norm, max over
mel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmir.models.layers import (ACTIVATION_FUNCTIONS, OVERLAP, DenseHead, convolve,
                                  convolve_rows_as_channels, dense_name, directed_max,
                                  fusion_boundary, head_aliases)
from jaxmir.models.musicnn import FrequencyMaxBlock, MidendConv, TimeConvFrequencyMax, musicnn_head
from jaxmir.spec import Activation, BatchNorm, Dense, MaxPool


def _batch_norm(rng, filters: int):
    """TensorFlow's inference batch norm with scales of both signs, and its variables."""
    stats = {"mean": rng.normal(0, 1, filters).astype(np.float32),
             "var": rng.uniform(0.5, 2, filters).astype(np.float32)}
    params = {"scale": rng.normal(0, 1, filters).astype(np.float32),
              "bias": rng.normal(0, 1, filters).astype(np.float32)}

    def apply(y, epsilon=1e-3):
        return (y - stats["mean"]) * (params["scale"] * jax.lax.rsqrt(stats["var"] + epsilon)) \
            + params["bias"]
    return apply, params, stats


@pytest.mark.parametrize("activation", ["relu", "elu", "tanh", "sigmoid", "identity"])
def test_directed_max_then_activation_is_exactly_the_max(activation):
    rng = np.random.default_rng(0)
    batch_norm, params, _ = _batch_norm(rng, 16)
    assert (params["scale"] < 0).any() and (params["scale"] > 0).any()
    x = jnp.asarray(rng.normal(0, 2, (3, 40, 24, 5)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(0, 1, (5, 16)).astype(np.float32))
    bias = jnp.asarray(rng.normal(0, 1, 16).astype(np.float32))

    def linear(k):
        return jnp.einsum("btmc,cf->btmf", x, k, precision=jax.lax.Precision.HIGHEST)

    def fn(v):
        return batch_norm(ACTIVATION_FUNCTIONS[activation](v))
    direction = jnp.where(params["scale"] < 0, -1.0, 1.0)
    got = fn(directed_max(linear, kernel, direction, axis=2) + bias)
    # float32 rounding is monotone and negation exact: the same numbers, bit for bit on a CPU; on
    # a GPU XLA's tanh kernels for two shapes gave one value a float32 step apart (an H200)
    np.testing.assert_array_max_ulp(np.asarray(got),
                                    np.asarray(jnp.max(fn(linear(kernel) + bias), axis=2)),
                                    maxulp=1)


def _check_conv_relu_batch_norm_max(module, kernel: tuple[int, int], padding, frames: int,
                                    variables_of=lambda v: {"block": v}, hop: int = 0) -> None:
    """``module`` on ``[2, frames, 96, 1]`` equals conv, ReLU, batch norm, max over mel (with
    ``hop``: 3 patches cut ``hop`` frames apart from one signal, convolved patch by patch)."""
    rng = np.random.default_rng(1)
    filters = 8
    if hop:
        signal = rng.normal(0, 1, (2 * hop + frames, 96, 1)).astype(np.float32)
        x = jnp.asarray(np.stack([signal[p * hop:p * hop + frames] for p in range(3)]))
    else:
        x = jnp.asarray(rng.normal(0, 1, (2, frames, 96, 1)).astype(np.float32))
    batch_norm, params, stats = _batch_norm(rng, filters)
    weights = {"kernel": rng.normal(0, 0.1, (*kernel, 1, filters)).astype(np.float32),
               "bias": rng.normal(0, 0.1, filters).astype(np.float32)}
    variables = {"params": variables_of({"conv": weights, "batch_norm": params}),
                 "batch_stats": variables_of({"batch_norm": stats})}
    got = module.apply(variables, x)
    # with hop, also as a call carrying the rows the next call would share with this one does
    carrying = module.apply(variables, x, mutable=[OVERLAP])[0] if hop else got
    conv = jax.lax.conv_general_dilated(x, weights["kernel"], (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST) + weights["bias"]
    want = jnp.max(batch_norm(jax.nn.relu(conv)), axis=2)
    for output in (got, carrying):
        assert output.shape == (len(x), frames, filters)
        # another summation order of up to 266 products of magnitude ~0.1-1: 1e-5 of the
        # outputs' size
        np.testing.assert_allclose(output, want, rtol=0,
                                   atol=1e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_fusion_boundary_changes_no_bit(dtype):
    """Subnormals, extremes, infinities and NaN included; float64 stays float64 (under x64)."""
    with jax.enable_x64(dtype == "float64"):
        info = jnp.finfo(dtype)
        special = np.array([0.0, -0.0, float(info.tiny) / 3, -float(info.tiny) / 7, float(info.max),
                            -float(info.max), np.inf, -np.inf, np.nan, 1 + float(info.eps)])
        values = np.concatenate([special, np.random.default_rng(0).normal(0, 1e3, 990)])
        x = jnp.asarray(values, dtype)
        bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]
        got = jax.jit(fusion_boundary)(x)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(got).view(bits), np.asarray(x).view(bits))


@pytest.mark.parametrize("kernel, rows_as_channels", [((7, 38), False), ((7, 67), True),
                                                      ((32, 1), False), ((128, 1), False)])
def test_frequency_max_block_equals_conv_relu_batch_norm_max(kernel, rows_as_channels):
    """Timbral (XLA's 2-D convolution, or a 1-D one along frequency with the kernel's rows as
    channels) and temporal (time in blocks along channels) branches alike."""
    padding = ((3, 3), (0, 0)) if kernel[1] > 1 else "SAME"
    module = FrequencyMaxBlock(8, kernel, padding, 1e-3, rows_as_channels=rows_as_channels)
    _check_conv_relu_batch_norm_max(module, kernel, padding, 187)


@pytest.mark.parametrize("top, hop", [(3, 10), (1, 10), (6, 10), (3, 36)])
def test_a_timbral_branch_sharing_overlapping_frames_convolves_each_patch(top, hop):
    """With ``overlap_hop`` the block runs once over the frames consecutive patches share, and
    per patch only on the end rows whose window reads the patch's padding: with padding above
    and below the kernel of other heights (MusiCNN pads 3 and 3), each end too. Patches of 40
    frames 36 apart share no row: each runs alone, carrying rows or not."""
    padding = ((top, 6 - top), (0, 0))
    module = FrequencyMaxBlock(8, (7, 38), padding, 1e-3, overlap_hop=hop)
    _check_conv_relu_batch_norm_max(module, (7, 38), padding, 40, hop=hop)


@pytest.mark.parametrize("kernel, padding", [((7, 67, 1, 5), ((3, 3), (0, 0))),
                                             ((3, 4, 1, 2), ((0, 2), (1, 0))),
                                             ((1, 96, 1, 3), ((0, 0), (0, 0)))])
def test_rows_as_channels_is_the_same_convolution(kernel, padding):
    """Asymmetric padding on both axes, a kernel one row tall, one as wide as the input."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(0, 1, (3, 11, 96, 1)).astype(np.float32))
    w = jnp.asarray(rng.normal(0, 0.1, kernel).astype(np.float32))
    want = convolve(x, w, padding)
    got = jax.jit(convolve_rows_as_channels, static_argnums=2)(x, w, padding)
    assert got.shape == want.shape
    # sums of up to 469 products of magnitude <~0.3 in another order: ~1e-6 of outputs of ~2
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("length,block,frames", [(128, 8, 187), (64, 3, 40), (5, 8, 3), (2, 3, 7),
                                                 (1, 8, 9), (33, 1, 20), (8, 8, 16)])
def test_time_blocks_equal_the_same_convolution(length, block, frames):
    """Kernels longer and shorter than a block, even and odd (TensorFlow pads one frame more
    after than before), signals shorter than the kernel or than a block."""
    module = TimeConvFrequencyMax(8, length, 1e-3, block=block)
    _check_conv_relu_batch_norm_max(module, (length, 1), "SAME", frames, variables_of=lambda v: v)


def test_given_kernels_are_read_without_tracing_their_initializer(monkeypatch):
    """Flax's ``param`` traces a parameter's initializer at every trace of the model, to check
    the shape of the value given; the convolutions and dense layers read their given kernels
    and biases and compare the shapes themselves (a process's first MusiCNN trace took
    0.43-0.51 s with the initializers traced, 0.28-0.31 s without, on a 2-core Zen 3). ``init``
    still draws them, and a wrong shape is still Flax's error."""
    import flax
    import flax.linen as nn

    import jaxmir
    from jaxmir.models.layers import ConvBlock, DenseHead
    from jaxmir.spec import Activation, Dense

    drawn = []
    lecun_normal = nn.initializers.lecun_normal

    def recorded(*args, **kwargs):
        init = lecun_normal(*args, **kwargs)
        return lambda *a, **k: drawn.append(a[1]) or init(*a, **k)

    monkeypatch.setattr(nn.initializers, "lecun_normal", recorded)
    model = jaxmir.load("msd-musicnn")
    patches = jax.ShapeDtypeStruct((2, 187, 96), jnp.float32)
    jax.eval_shape(lambda p: model.module.apply(model.variables, p), patches)
    assert drawn == []

    block, head = ConvBlock(4, (3,), "SAME"), DenseHead((Dense(3), Activation("sigmoid")))
    x = np.ones((1, 5, 2), np.float32)
    variables = {name: module.init(jax.random.key(0), x) for name, module in
                 (("block", block), ("head", head))}
    assert drawn == [(3, 2, 4), (2, 3)]
    wrong = jax.tree_util.tree_map(lambda v: v[:1] if v.ndim == 3 else v, variables["block"])
    # Flax's own message: the shape the layer needs, then the shape it was given
    with pytest.raises(flax.errors.ScopeParamShapeError,
                       match=r'"kernel".*generate shape \(3, 2, 4\).*has shape \(1, 2, 4\)'):
        block.apply(wrong, x)
    dense_0 = jax.tree_util.tree_map(np.asarray, variables["head"]["params"]["dense_0"])
    np.testing.assert_allclose(head.apply(variables["head"], x),
                               1 / (1 + np.exp(-(x @ dense_0["kernel"] + dense_0["bias"]))),
                               rtol=1e-6, atol=0)


def test_drawn_kernels_are_float32_under_x64_too():
    """As :class:`flax.linen.Conv` and ``Dense`` draw theirs: a caller's own ``module.init``
    under x64 drew float64 kernels (jaxmir's own heads draw theirs in float32 elsewhere)."""
    from jaxmir.models.layers import ConvBlock, DenseHead
    from jaxmir.spec import Dense

    x = np.ones((1, 5, 2), np.float32)
    with jax.enable_x64(True):
        drawn = [module.init(jax.random.key(0), x)["params"]
                 for module in (ConvBlock(4, (3,), "SAME"), DenseHead((Dense(3),)))]
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(drawn)} == {np.dtype(np.float32)}


def test_a_head_refuses_a_layer_it_does_not_compute():
    """A layer of another kind (a pool) is an error, not passed over as if it were the
    identity."""
    head = DenseHead((Dense(3), MaxPool((2, 1), (2, 1), "SAME"), Activation("sigmoid")))
    with pytest.raises(TypeError, match=r"not a head layer: MaxPool\("):
        head.init(jax.random.key(0), np.ones((1, 4), np.float32))


def test_every_activation_a_spec_names_has_its_function():
    """The specs' names (jaxmir.spec) and the layers' functions are two lists kept by hand."""
    from jaxmir.spec import ACTIVATIONS

    assert sorted(ACTIVATION_FUNCTIONS) == sorted(ACTIVATIONS)


@pytest.mark.parametrize("layers, penultimate", [
    ((BatchNorm(1e-3), Dense(3), Activation("sigmoid")), 0),  # the last dense layer second
    (musicnn_head(6, 3), 3),
    ((Dense(4), Activation("relu"), Dense(3)), 1),
    ((Dense(3), Activation("sigmoid")), None)])  # the head's input feeds its only dense layer
def test_head_aliases_name_the_layers_they_describe(layers, penultimate):
    """``penultimate`` is the layer that feeds the last dense one, whose output is ``logits``;
    ``predictions`` is the head's output. Checked on the values the head computes."""
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (4, 5)).astype(np.float32)
    head = DenseHead(layers)
    # positive, so that they make valid batch-norm variances too
    variables = jax.tree_util.tree_map(lambda v: rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                                       head.init(jax.random.key(0), x))
    out, state = head.apply(variables, x, mutable=["intermediates"])
    values = {f"head/{name}": value for name, (value,) in state["intermediates"].items()}
    aliases = head_aliases(layers)
    assert aliases.get("penultimate") == (None if penultimate is None
                                          else f"head/layer_{penultimate}")
    fed = x if penultimate is None else np.asarray(values[aliases["penultimate"]], np.float64)
    last_dense = max(i for i, layer in enumerate(layers) if isinstance(layer, Dense))
    last = variables["params"][dense_name(last_dense)]
    # float32 products of 4-6 terms against float64: 1e-5 of the logits' size
    want = fed @ np.asarray(last["kernel"], np.float64) + last["bias"]
    np.testing.assert_allclose(values[aliases["logits"]], want, rtol=0,
                               atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(values[aliases["predictions"]], out)


@pytest.mark.parametrize("length", [7, 6])
def test_midend_conv_equals_conv_relu_batch_norm(length):
    """A ``"SAME"`` convolution along time as TensorFlow pads it (an even kernel one frame more
    after than before), ReLU, batch norm: ``[b, t, c] -> [b, t, filters]``."""
    rng = np.random.default_rng(7)
    filters, channels = 8, 12
    x = jnp.asarray(rng.normal(0, 1, (2, 30, channels)).astype(np.float32))
    batch_norm, params, stats = _batch_norm(rng, filters)
    weights = {"kernel": rng.normal(0, 0.1, (length, channels, filters)).astype(np.float32),
               "bias": rng.normal(0, 0.1, filters).astype(np.float32)}
    variables = {"params": {"block": {"conv": weights, "batch_norm": params}},
                 "batch_stats": {"block": {"batch_norm": stats}}}
    got = MidendConv(filters, 1e-3, length).apply(variables, x)
    conv = jax.lax.conv_general_dilated(x, weights["kernel"], (1,), "SAME",
                                        dimension_numbers=("NWC", "WIO", "NWC"),
                                        precision=jax.lax.Precision.HIGHEST) + weights["bias"]
    want = batch_norm(jax.nn.relu(conv))
    assert got.shape == want.shape
    # the same sums of length * 12 products (84 at most) of magnitude ~0.1, maybe in another order
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))
