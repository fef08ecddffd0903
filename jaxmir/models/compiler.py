"""How a model's programs are built for the machine: the XLA compiler options, the formulation
of layers whose speed depends on the CPU, and the programs built so.

XLA's CPU backend (JAX 0.10) hands 2-D convolutions and matrix products to
YNNPACK. On a CPU without AVX-512 (a Zen 3 with AVX2) XLA's own convolution
kernels ran VGGish 1.3-1.55x as fast as YNNPACK at batch 8-64, and MusiCNN
at 0.67-0.83x (``benchmarks/HISTORY.md``). So a
:class:`~jaxmir.models.vgg.ConvNet` (VGGish, musicnn's VGG) compiles without
YNNPACK fusions on such a CPU; every other program, on every other CPU or
accelerator, keeps XLA's defaults (on AVX-512 CPUs the choice was not
measured), as does a call traced inside the caller's own program. A ConvNet in
bfloat16 compiles without YNNPACK fusions on every CPU: from JAX 0.11, YNNPACK's
bfloat16 convolutions of VGGish's 256-channel layers gave NaN in places (a
different count at each run) on an AVX-512 Xeon with AMX.
Within MusiCNN only the wide timbral branch gains from XLA's own kernels: on
such a CPU it runs as a 1-D convolution, which XLA keeps for itself
(:data:`ROWS_AS_CHANNELS_WIDTH`). :func:`tuned` gives both choices,
:func:`compiled` one ``jax.jit`` per set of options; :func:`for_gradients` the
formulation that training's gradients run fastest in, :func:`forward_mode_gradients`
the parameters whose gradient runs faster in forward mode.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from jaxmir.models import backbone_of, is_bfloat16, map_backbone
from jaxmir.models.musicnn import MusiCNN
from jaxmir.models.vgg import ConvNet

Options = tuple[tuple[str, str], ...]

DEFAULTS: Options = ()
# An empty list of YNNPACK fusion types: XLA's own kernels for every operation.
WITHOUT_YNNPACK: Options = (("xla_cpu_experimental_ynn_fusion_type", ""),)

# MusiCNN's timbral branches at least this many mel bands wide run with their kernel's rows as
# channels on an AVX2 CPU without AVX-512 (MusiCNN.timbral_rows_as_channels). Zen 3, 8 consecutive
# patches, ms per patch (medians of 11 rounds): 7x67 3.81 against 5.38 in YNNPACK; 7x38 6.30
# against 4.84, so it keeps YNNPACK's 2-D convolution. The bound lies between the two widths
# measured.
ROWS_AS_CHANNELS_WIDTH = 48


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``avx2``, ``avx512f``, ...); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def accepts(options: Options) -> bool:
    """Whether this JAX's XLA knows ``options`` (JAX 0.6, for one, has no YNNPACK options):
    one tiny program compiled with them, once per process."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except (TypeError, RuntimeError):  # an unknown keyword or "No such compile option"
        return False
    return True


def _avx2_only() -> bool:
    """Whether this CPU has AVX2 and no AVX-512 (where YNNPACK's kernels trail XLA's)."""
    flags = cpu_flags()
    return "avx2" in flags and "avx512f" not in flags


def tuned(module: nn.Module, platform: str, arguments: Any = ()) -> tuple[nn.Module, Options]:
    """``(module, options)`` for a call on ``platform`` with ``arguments``: the module with the
    formulation of its layers that runs fastest there (:func:`formulated`), and the options its
    program compiles with (:func:`compiler_options`)."""
    return formulated(module, platform), compiler_options(module, platform, arguments)


def formulated(module: nn.Module, platform: str) -> nn.Module:
    """``module`` with MusiCNN's wide timbral branches as 1-D convolutions on an AVX2 CPU without
    AVX-512 (:data:`ROWS_AS_CHANNELS_WIDTH`); unchanged elsewhere. The same numbers up to float32
    summation order."""
    if platform != "cpu" or not _avx2_only():
        return module
    return _with_rows_as_channels(module, ROWS_AS_CHANNELS_WIDTH)


@functools.lru_cache(maxsize=32)
def _with_rows_as_channels(module: nn.Module, width: int) -> nn.Module:
    """``module`` with its MusiCNN's timbral branches at least ``width`` bands wide as 1-D
    convolutions."""
    def rows_as_channels(part: nn.Module) -> nn.Module:
        if not isinstance(part, MusiCNN):
            return part
        wide = tuple(w for w in part.timbral_widths if w >= width)
        return part.clone(timbral_rows_as_channels=wide)
    return map_backbone(module, rows_as_channels)


def for_gradients(module: nn.Module, platform: str) -> nn.Module:
    """``module`` formulated for its gradients on ``platform``: on a CPU, every MusiCNN timbral
    branch as a 1-D convolution, whatever the CPU. XLA's CPU backend computes the gradients of
    a one-channel 2-D convolution far below the forward's rate (the 7x38 branch on 8 patches:
    kernel gradient 1.35 s, input gradient, a convolution to one channel, 2.64 s; 0.45 and
    0.81 s so): a fine-tuning step's gradient (msd-musicnn, 8 patches) took 8.8 s, and 3.5 s
    so; with :func:`forward_mode_gradients`, which needs no input gradient there, 4.4-4.6
    CPU-s a step against 2.6 (2-core Zen 3). Unchanged elsewhere; the same numbers up to
    float32 summation order."""
    if platform != "cpu":
        return module
    return _with_rows_as_channels(module, 0)


def forward_mode_gradients(module: nn.Module, platform: str) -> Callable[[tuple], bool]:
    """Which of ``module``'s parameters training takes the gradient of in forward mode on
    ``platform``, as a test of a parameter's ``jax.tree_util`` key path: on a CPU, a MusiCNN's
    input batch norm's scale and offset; none elsewhere.

    In reverse mode those two numbers carry the gradient back through every front-end
    convolution to its input, the part XLA's CPU backend runs slowest; held fixed, reverse mode
    stops at the kernels, and one forward-mode derivative per number costs about a forward
    pass. A fine-tuning step of 8 patches (2-core Zen 3, quiet): msd-musicnn 2.1-2.2 s in reverse
    mode alone, 0.9-1.0 s so; msd-vgg, whose first convolution's input gradient is cheap and
    whose forward pass is not, 1.0-1.3 s against 1.4-1.6 s, so VGG keeps reverse mode.
    """
    if platform != "cpu" or not isinstance(backbone_of(module), MusiCNN):
        return lambda path: False
    return lambda path: any(getattr(key, "key", None) == "input_bn" for key in path)


def compiler_options(module: nn.Module, platform: str, arguments: Any = ()) -> Options:
    """The options ``module``'s programs compile with on ``platform`` (``"cpu"``, ``"gpu"``, ...)
    when called with ``arguments`` (a tree of arrays): :data:`WITHOUT_YNNPACK` for a ConvNet on
    an AVX2 CPU without AVX-512 or in bfloat16 on any CPU (when this XLA knows the option), else
    :data:`DEFAULTS`, as for traced arguments (inside ``jax.jit``, ``grad`` or ``vmap`` the program
    is part of the caller's, and JAX takes compiler options only for a program of its own)."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(arguments)):
        return DEFAULTS
    if (platform == "cpu" and isinstance(backbone_of(module), ConvNet)
            and (_avx2_only() or is_bfloat16(arguments)) and accepts(WITHOUT_YNNPACK)):
        return WITHOUT_YNNPACK
    return DEFAULTS


def compiled(fun: Callable, static_argnames: tuple[str, ...]) -> Callable[[Options], Callable]:
    """``options -> jax.jit(fun)`` built with those compiler options (one jit, and so one cache
    of compiled programs, per set of options)."""
    @functools.cache
    def with_options(options: Options) -> Callable:
        extra = {"compiler_options": dict(options)} if options else {}
        return jax.jit(fun, static_argnames=static_argnames, **extra)
    return with_options
