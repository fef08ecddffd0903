"""How programs are built per model family and CPU: which leave XLA's YNNPACK fusions out, and
where MusiCNN's 7x67 branch runs as a 1-D convolution."""

from __future__ import annotations

import io

import jax
import numpy as np
import pytest

import jaxmir
from conftest import AVX2_FLAGS, AVX512_FLAGS, on_cpu, shared_fixture
from jaxmir import stream as streaming
from jaxmir.models import (backbone_of, build_module, compiler, map_backbone, runner,
                           shares_overlap, with_overlap_hop)
from jaxmir.models.compiler import DEFAULTS, WITHOUT_YNNPACK, compiler_options, formulated, tuned
from jaxmir.models.heads import Composed, EmbeddingHead


@pytest.fixture(scope="module")
def vggish():
    return jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))


def test_this_jax_knows_the_option_and_refuses_an_unknown_one():
    assert compiler.accepts(WITHOUT_YNNPACK)
    assert not compiler.accepts((("xla_cpu_no_such_option", "1"),))


@pytest.mark.parametrize("flags, platform, expected", [
    (AVX2_FLAGS, "cpu", WITHOUT_YNNPACK), (AVX512_FLAGS, "cpu", DEFAULTS),
    (frozenset(), "cpu", DEFAULTS), (AVX2_FLAGS, "gpu", DEFAULTS)],
                         ids=["avx2", "avx512", "not-x86", "gpu"])
def test_only_a_convnet_on_an_avx2_cpu_leaves_ynnpack_out(monkeypatch, vggish, flags, platform,
                                                          expected):
    monkeypatch.setattr(compiler, "cpu_flags", lambda: flags)
    musicnn = jaxmir.load("msd-musicnn").module
    assert compiler_options(vggish.module, platform) == expected
    assert compiler_options(musicnn, platform) == DEFAULTS
    head = EmbeddingHead(())
    assert compiler_options(Composed(vggish.module, head), platform) == expected
    assert compiler_options(Composed(musicnn, head), platform) == DEFAULTS


def test_a_jax_that_lacks_the_option_compiles_with_its_defaults(monkeypatch, vggish):
    """An XLA without YNNPACK's option (JAX 0.8 allowed by the dependencies) would refuse to
    compile every ConvNet program on an AVX2 CPU, and in bfloat16 on any CPU."""
    monkeypatch.setattr(compiler, "cpu_flags", lambda: AVX2_FLAGS)
    monkeypatch.setattr(compiler, "accepts", lambda options: False)
    half = np.zeros((1, *vggish.input_shape), jax.numpy.bfloat16)
    assert compiler_options(vggish.module, "cpu") == DEFAULTS
    assert compiler_options(vggish.module, "cpu", half) == DEFAULTS


def test_fine_tuning_runs_every_timbral_branch_as_rows_on_a_cpu(monkeypatch, vggish):
    """A fine-tuning step's gradient took 2.5x as long through the 2-D convolutions (the input
    gradient of a one-channel convolution: a convolution to one channel). The 1-D formulation
    is the same convolution (``test_layers``), so the same numbers to float32 rounding; other
    platforms and families are unchanged."""
    from jaxmir.models.compiler import for_gradients
    from jaxmir.train import finetune

    musicnn = jaxmir.load("msd-musicnn")
    assert for_gradients(musicnn.module, "cpu").timbral_rows_as_channels == (38, 67)
    for platform in ("gpu", "tpu"):  # every platform but the CPU keeps its formulation
        assert for_gradients(musicnn.module, platform) is musicnn.module
    assert for_gradients(vggish.module, "cpu") == vggish.module
    asked = []
    monkeypatch.setattr(finetune, "for_gradients",
                        lambda module, platform: asked.append(platform) or module)
    finetune.embed_fn(musicnn, "embeddings")
    assert asked == ["cpu"]


def test_the_program_built_without_ynnpack_has_none_and_the_same_outputs(vggish):
    x = np.random.default_rng(0).normal(0, 2, (8, *vggish.input_shape)).astype(np.float32)
    _, taps = vggish.resolve_outputs(["embeddings"])
    args = (vggish.module, vggish.variables, taps, x, None)
    without = runner._run_patches_compiled(WITHOUT_YNNPACK)
    assert "__ynn_fusion" not in without.lower(*args).compile().as_text()
    outputs = {options: np.asarray(runner._run_patches_compiled(options)(*args)[0])
               for options in (DEFAULTS, WITHOUT_YNNPACK)}
    # Two kernels summing 3x3xC products in their own orders: float32 rounding apart.
    scale = float(np.max(np.abs(outputs[DEFAULTS])))
    np.testing.assert_allclose(outputs[WITHOUT_YNNPACK], outputs[DEFAULTS], rtol=0,
                               atol=1e-5 * max(scale, 1e-6))


@pytest.mark.parametrize("flags, expected",
                         [(AVX2_FLAGS, WITHOUT_YNNPACK), (AVX512_FLAGS, DEFAULTS)],
                         ids=["avx2", "avx512"])
def test_apply_predict_and_streams_compile_with_the_options(monkeypatch, vggish, flags, expected):
    monkeypatch.setattr(compiler, "cpu_flags", lambda: flags)
    vggish = on_cpu(vggish)
    asked = []

    def spying(name, compiled):
        def with_options(options):
            asked.append((name, options))
            return compiled(options)
        return with_options

    monkeypatch.setattr(runner, "_run_patches_compiled",
                        spying("patches", runner._run_patches_compiled))
    monkeypatch.setattr(streaming, "_audio_to_outputs_compiled",
                        spying("audio", streaming._audio_to_outputs_compiled))
    x = np.random.default_rng(1).normal(0, 2, (3, *vggish.input_shape)).astype(np.float32)
    vggish.apply(x)
    y = (0.1 * np.random.default_rng(2).standard_normal(16000 * 3)).astype(np.float32)
    vggish.predict(y, 16000)
    assert set(asked) == {("patches", expected), ("audio", expected)}


@pytest.mark.parametrize("flags", [AVX2_FLAGS, AVX512_FLAGS, frozenset()],
                         ids=["avx2", "avx512", "not-x86"])
def test_a_convnet_in_bfloat16_leaves_ynnpack_out_on_every_cpu(monkeypatch, vggish, flags):
    monkeypatch.setattr(compiler, "cpu_flags", lambda: flags)
    x = np.zeros((2, *vggish.input_shape), np.float32)
    low = vggish.astype("bfloat16")
    assert compiler_options(low.module, "cpu", (low.variables, x)) == WITHOUT_YNNPACK
    assert compiler_options(low.module, "gpu", (low.variables, x)) == DEFAULTS
    musicnn = jaxmir.load("msd-musicnn").astype("bfloat16")
    assert compiler_options(musicnn.module, "cpu", (musicnn.variables, x)) == DEFAULTS


def test_a_bfloat16_convnet_of_vggish_widths_has_no_nan_on_this_cpu():
    """JAX 0.11-0.12's YNNPACK gave NaN in places for VGGish's 256-channel bfloat16 convolutions
    (24x16 frames and bands) on an AVX-512 Xeon with AMX. Two such layers, seeded weights: the
    bfloat16 outputs are finite and within bfloat16's rounding of float32's."""
    from jaxmir.spec import Activation, ConvBlockSpec, Dense, MaxPool, ModelSpec

    pool = MaxPool((2, 2), (2, 2), "SAME")
    blocks = (ConvBlockSpec(16, (3, 3), "relu", None, pool),
              ConvBlockSpec(32, (3, 3), "relu", None, pool),
              ConvBlockSpec(256, (3, 3), "relu", None, None),
              ConvBlockSpec(256, (3, 3), "relu", None, pool))
    config = {"blocks": blocks, "input_bn_epsilon": None,
              "head": (Dense(8), Activation("identity"))}
    shapes = jax.eval_shape(build_module("vggish", config).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 96, 64), np.float32))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda leaf: (rng.standard_normal(leaf.shape)
                      / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32),
        shapes)
    spec = ModelSpec("vggish", config, variables, "x", (96, 64), "y", {"pool3": "block_4_output"},
                     {})
    model = on_cpu(jaxmir.Model.from_spec(spec))
    x = rng.normal(0, 2, (4, 96, 64)).astype(np.float32)
    full = np.asarray(model.apply(x, "pool3")["pool3"])
    low = np.asarray(model.astype("bfloat16").apply(x, "pool3")["pool3"], np.float32)
    assert np.isfinite(low).all()
    # four layers of bfloat16 rounding (2**-8 relative each) on activations of this size
    np.testing.assert_allclose(low, full, rtol=0, atol=0.05 * float(np.abs(full).max()))


def test_traced_calls_run_inside_their_callers_program(monkeypatch, vggish):
    """Under ``jax.grad``, ``jit`` or ``vmap`` the model's program is part of the caller's, which
    JAX compiles with no options of the model's own: the calls run all the same, and give what
    the model's own program gives."""
    monkeypatch.setattr(compiler, "cpu_flags", lambda: AVX2_FLAGS)
    x = np.random.default_rng(3).normal(0, 2, (2, *vggish.input_shape)).astype(np.float32)
    _, taps = vggish.resolve_outputs(["embeddings"])
    assert compiler_options(vggish.module, "cpu", (vggish.variables, x)) == WITHOUT_YNNPACK

    def total(variables):
        return runner.run_patches_jit(vggish.module, variables, taps, x)[0].sum()

    grads = jax.tree_util.tree_leaves(jax.grad(total)(vggish.variables))
    assert grads and all(bool(np.isfinite(g).all()) for g in grads)
    assert any(float(np.abs(g).max()) > 0 for g in grads)
    own = np.asarray(vggish.apply(x, "embeddings")["embeddings"])
    inside = np.asarray(jax.jit(lambda p: vggish.apply(p, "embeddings")["embeddings"])(x))
    scale = float(np.max(np.abs(own)))
    np.testing.assert_allclose(inside, own, rtol=0, atol=1e-5 * max(scale, 1e-6))
    audio = jax.numpy.asarray(0.1 * np.random.default_rng(4).standard_normal(16000 * 2), "float32")
    slope = jax.grad(lambda y: vggish.predict(y, 16000, output="embeddings").sum())(audio)
    assert slope.shape == audio.shape and bool(np.isfinite(np.asarray(slope)).all())


@pytest.mark.parametrize("flags, platform, wide", [
    (AVX2_FLAGS, "cpu", (67,)), (AVX512_FLAGS, "cpu", ()), (frozenset(), "cpu", ()),
    (AVX2_FLAGS, "gpu", ())], ids=["avx2", "avx512", "not-x86", "gpu"])
def test_only_musicnn_on_an_avx2_cpu_runs_its_wide_branch_as_a_1d_convolution(
        monkeypatch, vggish, flags, platform, wide):
    monkeypatch.setattr(compiler, "cpu_flags", lambda: flags)
    musicnn = jaxmir.load("msd-musicnn").module
    assert musicnn.timbral_widths == (38, 67) and musicnn.timbral_rows_as_channels == ()
    assert formulated(musicnn, platform).timbral_rows_as_channels == wide
    head = EmbeddingHead(())
    assert formulated(Composed(musicnn, head), platform).backbone.timbral_rows_as_channels == wide
    assert formulated(vggish.module, platform) == vggish.module
    assert tuned(musicnn, platform) == (formulated(musicnn, platform), DEFAULTS)
    assert tuned(vggish.module, platform) == (vggish.module,
                                              compiler_options(vggish.module, platform))


def test_cpu_flags_are_the_flags_line_of_proc_cpuinfo(monkeypatch):
    """The words after the colon of the first ``flags`` line (Linux lists one per processor);
    none where the file cannot be read. (The other tests replace cpu_flags; this one
    pins what it reads.)"""
    cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
               "flags\t\t: fpu sse2 avx avx2 fma\nbugs\t\t: sysret_ss_attrs\n\n"
               "processor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n")

    def unreadable(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    try:
        for opened, flags in ((lambda *args, **kwargs: io.StringIO(cpuinfo),
                               {"fpu", "sse2", "avx", "avx2", "fma"}), (unreadable, set())):
            monkeypatch.setattr(compiler, "open", opened, raising=False)
            compiler.cpu_flags.cache_clear()
            assert compiler.cpu_flags() == frozenset(flags)
    finally:
        compiler.cpu_flags.cache_clear()  # the next call reads this machine's file again


def test_a_timbral_branch_exactly_the_bound_wide_runs_as_a_1d_convolution(monkeypatch):
    """:data:`~jaxmir.models.compiler.ROWS_AS_CHANNELS_WIDTH` is the narrowest width that runs
    as a 1-D convolution on an AVX2 CPU ("at least this many bands"); one band less keeps
    YNNPACK's 2-D convolution."""
    monkeypatch.setattr(compiler, "cpu_flags", lambda: AVX2_FLAGS)
    bound = compiler.ROWS_AS_CHANNELS_WIDTH
    edge = jaxmir.load("msd-musicnn").module.clone(timbral_widths=(bound - 1, bound))
    assert formulated(edge, "cpu").timbral_rows_as_channels == (bound,)


def test_a_composed_model_is_changed_only_in_a_musicnn_backbone_however_deep(monkeypatch, vggish):
    monkeypatch.setattr(compiler, "cpu_flags", lambda: AVX2_FLAGS)
    musicnn, head = jaxmir.load("msd-musicnn").module, EmbeddingHead(())
    nested = Composed(Composed(musicnn, head), head)
    assert backbone_of(nested) is musicnn
    assert backbone_of(with_overlap_hop(nested, 93)).overlap_hop == 93
    assert shares_overlap(with_overlap_hop(nested, 93)) and not shares_overlap(nested)
    assert backbone_of(formulated(nested, "cpu")).timbral_rows_as_channels == (67,)
    on_vggish = Composed(vggish.module, head)
    assert with_overlap_hop(on_vggish, 93) is on_vggish
    assert map_backbone(on_vggish, lambda backbone: backbone) is on_vggish
    assert compiler_options(Composed(on_vggish, head), "cpu") == WITHOUT_YNNPACK


def _ynnpack_convolutions(hlo: str) -> set[str]:
    """The windows (``7x38``, ``67``) of the convolutions inside the YNNPACK fusions of a
    compiled program's HLO text."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            name = line.split()[0].lstrip("%")
            if name == "ENTRY":
                name = line.split()[1].lstrip("%")
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)
    called = {line.split("calls=%")[1].split(",")[0] for body in bodies.values() for line in body
              if "ynn_fusion" in line.split("=")[0] and "calls=%" in line}
    return {line.split("window={size=")[1].split()[0].rstrip("},") for name in called
            for line in bodies.get(name, ()) if " convolution(" in line}


def test_the_1d_branch_leaves_ynnpack_and_gives_the_same_outputs(monkeypatch):
    """The 7x67 branch leaves YNNPACK (its convolution is XLA's own); a file's predictions,
    whose calls share the timbral rows of consecutive patches and carry them from call to call,
    are the same up to float32 summation order, and so are a single patch's."""
    model = jaxmir.load("msd-musicnn")
    x = np.random.default_rng(5).normal(0, 2, (8, *model.input_shape)).astype(np.float32)
    _, taps = model.resolve_outputs(["predictions"])
    wide = model.module.clone(timbral_rows_as_channels=(67,))
    program = runner._run_patches_compiled(DEFAULTS)
    # YNNPACK is XLA:CPU's: the programs are built for the CPU, whatever the default device
    variables, patches = jax.device_put((model.variables, x), jax.devices("cpu")[0])
    windows = {m: _ynnpack_convolutions(program.lower(m, variables, taps, patches, None).compile()
                                        .as_text()) for m in (model.module, wide)}
    assert {"7x67", "7x38"} <= windows[model.module]
    assert "7x38" in windows[wide] and not any("67" in w for w in windows[wide])
    audio = (0.3 * np.random.default_rng(6).standard_normal(16000 * 20)).astype(np.float32)
    found = {}
    for name, flags in (("2-D", AVX512_FLAGS), ("1-D", AVX2_FLAGS)):
        monkeypatch.setattr(compiler, "cpu_flags", lambda flags=flags: flags)
        found[name] = (np.asarray(model.predict(audio, 16000)),
                       np.asarray(model.apply(x[:1])["predictions"]))
    # probabilities in [0, 1] from sums of up to 469 products in another order: ~1e-7 apart
    for got, want in zip(found["1-D"], found["2-D"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
