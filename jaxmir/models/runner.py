"""The one way patches go through a model: ``run_patches``, and its jit-compiled form.

A *tap* is a sown intermediate of a module (``"cnn1"``, ``"head/layer_1"``),
with an optional shape that reshapes it to a graph node's shape. Every caller
(``Model.apply``, the audio pipeline, the streaming engine, collection runs)
goes through :func:`run_patches`, so chunking and tap handling live here once.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.errors import DeviceMemoryError
from jaxmir.models import is_bfloat16
from jaxmir.models.compiler import compiled, tuned
from jaxmir.models.layers import BODY, HEAD, OVERLAP, WHOLE
from jaxmir.spec import INPUT_TAP

Tap = tuple[str, "tuple[int, ...] | None"]

# Patches per step of a call's body on a CPU: a call of more (a file's or a collection's) runs its
# body in steps of this many, whose activations stay in cache, and its dense head once.
CPU_STEP = 8

_traces = [0]


def compiled_programs() -> int:
    """How many times :func:`run_patches` has been traced in this process (≈ programs
    compiled)."""
    return _traces[0]


def _flatten_taps(tree: dict, prefix: str = "") -> dict[str, jax.Array]:
    taps = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            taps.update(_flatten_taps(value, f"{prefix}{key}/"))
        else:
            taps[f"{prefix}{key}"] = value[0]  # sow keeps a tuple of sown values
    return taps


def platform_of(variables) -> str:
    """The platform (``cpu``, ``gpu``, ``tpu``) of the device holding ``variables``; JAX's default
    one when they are traced (a tracer has no device) or not JAX arrays."""
    for leaf in jax.tree_util.tree_leaves(variables):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
            return next(iter(leaf.devices())).platform
    return jax.default_backend()


@contextlib.contextmanager
def device_memory(platform: str, n: int) -> Iterator[None]:
    """Turns XLA's out-of-memory error in a call of ``n`` patches on ``platform`` into a
    :class:`~jaxmir.errors.DeviceMemoryError` that says what to lower (a GPU holds a whole
    call's activations: ~110 MB a MusiCNN patch on an H200)."""
    try:
        yield
    except RuntimeError as err:
        if not str(err).startswith("RESOURCE_EXHAUSTED"):
            raise
        reason = str(err).splitlines()[0][:200]
        raise DeviceMemoryError(
            f"the {platform} ran out of memory in a call of {n} "
            f"patches ({reason}); run fewer patches per call: --batch "
            "(Options(batch=) in Python), or Model.apply(chunk=)") from None


def call_step(variables, n: int) -> int:
    """Patches per body step in a call of ``n``: at most :data:`CPU_STEP` on a CPU; on an
    accelerator all ``n``, whose parallel units a few patches would leave idle."""
    return min(n, CPU_STEP) if platform_of(variables) == "cpu" else n


def is_staged(module: nn.Module) -> bool:
    """Whether ``module`` runs in stages: body, then dense head (:class:`.layers.Backbone`)."""
    return getattr(module, "staged", False)


def _body_stage(module: nn.Module) -> str:
    """The stage a call's steps run: the body of a staged module, else the whole module."""
    return BODY if is_staged(module) else WHOLE


def tapped_outputs(module: nn.Module, variables: dict, taps: tuple[Tap, ...],
                   patches: jax.Array) -> tuple[jax.Array, ...]:
    """The module's sown intermediates named by ``taps`` for one batch ``[b, *input_shape]``
    (not counted in :func:`compiled_programs`: shapes are found so)."""
    return _run(module, variables, taps, patches, None, None, None)[0]


def _sown(module: nn.Module, variables: dict, x: jax.Array, carry: dict | None,
          stage: str) -> tuple[jax.Array, dict[str, jax.Array], dict]:
    """``module(x)`` at ``stage``: its output, its sown intermediates by tap name, and the
    :data:`OVERLAP` state it leaves (``{}`` for a module that shares no overlap), given the
    state the batch before left (``None``: none)."""
    if carry:
        variables = {**variables, OVERLAP: carry}
    kwargs = {} if stage == WHOLE else {"stage": stage}
    out, state = module.apply(variables, x, mutable=["intermediates", OVERLAP], **kwargs)
    return out, _flatten_taps(state.get("intermediates", {})), state.get(OVERLAP, {})


def run_patches(module: nn.Module, variables: dict, taps: tuple[Tap, ...], patches: jax.Array,
                chunk: int | None = None, frames: jax.Array | None = None) -> tuple[jax.Array, ...]:
    """Tapped outputs for a batch of patches, ``chunk`` patches per step (all at once for ``None``).

    Args:
      module, variables: the Flax module and its variables.
      taps: ``(tap, shape)`` pairs (see the module docstring).
      patches: ``[n, *input_shape]`` float patches; or, with ``frames``, int32
        rows ``[n, patch_size]`` into ``frames`` ``[n_frames, n_bands]`` (each
        step gathers its own patches, so they never exist all at once).
      chunk: patches per step of a ``lax.scan`` loop; steps keep the activations
        in cache. The ``n % chunk`` patches left run in one step more. A module that
        shares the overlap of consecutive patches (``overlap_hop``) hands each
        step the rows the step before computed for it. A staged module
        (``module.staged``, see :data:`~jaxmir.models.layers.BODY`) runs its body
        in the steps and its dense head once on all ``n``.

    Returns:
      One ``[n, ...]`` array per tap. Pure and traceable (``jit``, ``grad``).
    """
    return run_patches_carrying(module, variables, taps, patches, None, chunk, frames)[0]


def run_patches_carrying(module: nn.Module, variables: dict, taps: tuple[Tap, ...],
                         patches: jax.Array, carry: dict | None, chunk: int | None = None,
                         frames: jax.Array | None = None) -> tuple[tuple[jax.Array, ...], dict]:
    """:func:`run_patches` continuing a call on the patches just before: ``(outputs, carry)``.

    ``carry`` is the :data:`~jaxmir.models.layers.OVERLAP` state the call on the
    patches before returned, :func:`empty_carry` when there was none (it has
    the same structure: one compiled program either way), or ``None`` (no
    state: computed afresh). The returned carry serves the call on the
    patches that follow (``{}`` for a module that shares no overlap).
    """
    _traces[0] += 1
    return _run(module, variables, taps, patches, carry, chunk, frames)


def _run(module: nn.Module, variables: dict, taps: tuple[Tap, ...], patches: jax.Array,
         carry: dict | None, chunk: int | None, frames: jax.Array | None
         ) -> tuple[tuple[jax.Array, ...], dict]:
    low = is_bfloat16(variables)
    staged = is_staged(module)
    names = {tap for tap, _ in taps}

    def step(state: dict | None, batch: jax.Array) -> tuple[dict, tuple[jax.Array, dict]]:
        if frames is not None:
            batch = frames[batch].astype(jnp.result_type(frames.dtype, jnp.float32))
        if low:  # bfloat16 variables (Model.astype): bfloat16 arithmetic, float32 results
            batch = batch.astype(jnp.bfloat16)
        given = state
        out, sown, state = _sown(module, variables, batch, state, _body_stage(module))
        if given and batch.shape[0] < 2:  # one patch shares no rows: those held would be stale
            state = _invalid(given)
        sown[INPUT_TAP] = batch
        # the body's output feeds the head; an unstaged module's is not kept (no stacked copy)
        return state, (out if staged else None, {name: sown[name] for name in names & sown.keys()})

    n = patches.shape[0]
    if chunk is None or n <= chunk:
        carry, (out, found) = step(carry, patches)
    else:
        # whole steps in the loop, the rest in a step of its own: padding the last step (zeros)
        # broke the run of consecutive patches an overlap-sharing module takes a step for
        whole = n - n % chunk
        steps = patches[:whole].reshape((-1, chunk) + patches.shape[1:])
        if carry is None:
            carry = _zeros(jax.eval_shape(step, None, steps[0])[0])
        carry, (out, found) = jax.lax.scan(step, carry, steps)
        out, found = jax.tree_util.tree_map(lambda v: v.reshape((-1,) + v.shape[2:]), (out, found))
        if whole < n:
            carry, (rest, more) = step(carry, patches[whole:])
            out = None if out is None else jnp.concatenate([out, rest])
            found = {name: jnp.concatenate([found[name], more[name]]) for name in found}
    if staged and names - found.keys():  # a tap of the head: run it once on all n
        _, sown, _ = _sown(module, variables, out, None, HEAD)
        found.update({name: sown[name] for name in names - found.keys() if name in sown})
    values = []
    for tap, shape in taps:
        value = found[tap][:n]
        value = value if shape is None else jnp.reshape(value, (n,) + shape)
        values.append(value.astype(jnp.float32) if low else value)
    return tuple(values), carry


def empty_carry(module: nn.Module, variables: dict, patch_shape: tuple[int, ...],
                batch: int) -> dict:
    """The carry of "no call before" for calls on ``batch`` patches ``[batch, *patch_shape]``:
    zeros, ``valid`` false; ``{}`` when the module carries nothing. NumPy arrays: JAX's own
    zeros would compile two or three programs (a broadcast, conversions) in every process that has
    no persistent cache."""
    dtype = jnp.bfloat16 if is_bfloat16(variables) else jnp.float32
    patches = jax.ShapeDtypeStruct((batch, *patch_shape), dtype)
    shapes = jax.eval_shape(lambda p: _sown(module, variables, p, None, _body_stage(module))[2],
                            patches)
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _invalid(carry: dict) -> dict:
    """``carry`` marked as holding no rows (zeros, ``valid`` false): the next call computes its
    own."""
    return jax.tree_util.tree_map(jnp.zeros_like, carry)


def _zeros(shapes: dict) -> dict:
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


_run_patches_compiled = compiled(run_patches, static_argnames=("module", "taps", "chunk"))


def run_patches_jit(module: nn.Module, variables: dict, taps: tuple[Tap, ...], patches: jax.Array,
                    chunk: int | None = None) -> tuple[jax.Array, ...]:
    """:func:`run_patches`, compiled once per module, taps, chunk and batch shape (the module
    formulated and compiled for the platform: :func:`~jaxmir.models.compiler.tuned`)."""
    platform = platform_of(variables)
    module, options = tuned(module, platform, (variables, patches))
    program = _run_patches_compiled(options)
    with device_memory(platform, np.shape(patches)[0]):
        return program(module, variables, taps, patches, chunk)
