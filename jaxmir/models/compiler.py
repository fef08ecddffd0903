"""The XLA compiler options a model's programs are built with, and the programs built so.

XLA's CPU backend (JAX 0.10) hands convolutions and matrix products to
YNNPACK. On a CPU without AVX-512 (a Zen 3 with AVX2) YNNPACK ran VGGish's
3x3 convolutions 30-55% slower than XLA's own convolution kernels at batch
8-64, while MusiCNN ran 20-40% slower without it (``benchmarks/HISTORY.md``).
So a :class:`~jaxmir.models.vgg.ConvNet` (VGGish, musicnn's VGG) compiles
without YNNPACK fusions on such a CPU; every other program, on every other
CPU or accelerator, keeps XLA's defaults (on AVX-512 CPUs the choice was not
measured). :func:`compiled` gives one ``jax.jit`` per set of options.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import numpy as np

from jaxmir.models.heads import Composed
from jaxmir.models.vgg import ConvNet

Options = tuple[tuple[str, str], ...]

DEFAULTS: Options = ()
# An empty list of YNNPACK fusion types: XLA's own kernels for every operation.
WITHOUT_YNNPACK: Options = (("xla_cpu_experimental_ynn_fusion_type", ""),)


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


def _backbone(module: nn.Module) -> nn.Module:
    return module.backbone if isinstance(module, Composed) else module


def compiler_options(module: nn.Module, platform: str) -> Options:
    """The options ``module``'s programs compile with on ``platform`` (``"cpu"``, ``"gpu"``, ...):
    :data:`WITHOUT_YNNPACK` for a ConvNet on an AVX2 CPU without AVX-512 (when this XLA knows
    the option), else :data:`DEFAULTS`."""
    flags = cpu_flags()
    if (platform == "cpu" and isinstance(_backbone(module), ConvNet)
            and "avx2" in flags and "avx512f" not in flags and accepts(WITHOUT_YNNPACK)):
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
