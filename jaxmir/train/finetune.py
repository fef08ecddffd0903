"""Fine-tuning: the backbone and the head trained together, end to end on log-mel patches.

The front-end (``Model.features``: jaxmir's differentiable log-mel) has no
trainable parameters, so patches are computed once; each step runs the
backbone (``module.apply``, a pure Flax function) up to the embedding layer,
then the head, and updates both: Adam at a small rate for the backbone's
``params`` (its frozen batch-norm statistics stay), MTG's rate for the head.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmir import interrupts
from jaxmir.audio_choices import reading_entry
from jaxmir.checks import real_fields, whole_fields
from jaxmir.errors import InputError
from jaxmir.model import Model
from jaxmir.models.compiler import for_gradients, forward_mode_gradients
from jaxmir.models.runner import platform_of, run_patches
from jaxmir.patches import make_patches
from jaxmir.promotion import standard_promotion
from jaxmir.train.fit import TrainingError, head_logits, l2_penalty, sample_losses


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    backbone_learning_rate: float = 1e-5
    head_learning_rate: float = 1e-3
    batch_size: int = 8
    steps: int = 100
    weight_decay: float = 1e-5
    seed: int = 0

    def __post_init__(self):
        whole_fields(self, {"batch_size": 1, "steps": 1, "seed": 0})
        positive = (lambda rate: rate > 0, "a positive number")
        real_fields(self, {"backbone_learning_rate": positive, "head_learning_rate": positive,
                           "weight_decay": (lambda decay: decay >= 0, "a number >= 0")})


def audio_patches(backbone: Model, audio: np.ndarray, sample_rate: int,
                  patch_hop: int | None = None) -> np.ndarray:
    """``[patches, time, mel]`` log-mel patches of a signal as the backbone cuts them.

    ``patch_hop`` in frames; ``None``: the backbone's own (Essentia's 93 frames for
    MusiCNN, VGG and VGGish); ``0``: the patch size.
    """
    frames = backbone.features(audio, sample_rate)
    hop = backbone.frontend.patch_hop if patch_hop is None else patch_hop
    return np.asarray(make_patches(np.asarray(frames), backbone.input_shape[0], hop), np.float32)


def embed_fn(backbone: Model, layer: str):
    """``(variables, patches[b, t, mel]) -> [b, features]``: the backbone cut at ``layer``,
    formulated for its gradients (:func:`~jaxmir.models.compiler.for_gradients`)."""
    tap = backbone.resolve_output(layer)
    module = for_gradients(backbone.module, platform_of(backbone.variables))

    def embed(variables, patches):
        value = run_patches(module, variables, (tap,), patches)[0]
        return value.reshape(value.shape[0], -1)

    return embed


def mixed_value_and_grad(loss_fn: Callable, forward_mode: Callable[[tuple], bool]) -> Callable:
    """``jax.value_and_grad(loss_fn, has_aux=True)``, with the gradient of the parameters
    ``forward_mode(path)`` chooses (a ``jax.tree_util`` key path) taken in forward mode, one
    ``jax.jvp`` per number, and the others' in reverse mode with those held: the same
    gradient up to float32 rounding, each in its parameter's dtype, at another cost (see
    :func:`~jaxmir.models.compiler.forward_mode_gradients`). Meant for ``jax.jit``, where XLA
    computes the forward pass the reverse and forward modes share once (run eagerly, each
    derivative runs its own)."""
    def value_and_grad(params, *args):
        keyed, tree = jax.tree_util.tree_flatten_with_path(params)
        leaves = [leaf for _, leaf in keyed]
        chosen = [i for i, (path, _) in enumerate(keyed) if forward_mode(path)]
        if not chosen:
            return jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
        others = [i for i in range(len(leaves)) if i not in chosen]

        def loss_of(chosen_leaves: list, other_leaves: list):
            merged = list(leaves)
            for i, leaf in zip(chosen + others, chosen_leaves + other_leaves):
                merged[i] = leaf
            return loss_fn(jax.tree_util.tree_unflatten(tree, merged), *args)

        held, rest = [leaves[i] for i in chosen], [leaves[i] for i in others]
        value, rest_grads = jax.value_and_grad(lambda free: loss_of(held, free), has_aux=True)(
            rest)
        grads = dict(zip(others, rest_grads))

        def derivative(n: int, tangent: jax.Array) -> jax.Array:
            """The loss's derivative along ``tangent`` in the ``n``-th chosen leaf."""
            tangents = [tangent if m == n else jnp.zeros_like(leaf) for m, leaf in enumerate(held)]
            return jax.jvp(lambda free: loss_of(free, rest)[0], (held,), (tangents,))[1]

        for n, leaf in enumerate(held):
            basis = jnp.eye(leaf.size, dtype=leaf.dtype).reshape((leaf.size, *leaf.shape))
            grads[chosen[n]] = jnp.stack([derivative(n, unit) for unit in basis]).reshape(
                leaf.shape).astype(leaf.dtype)
        return value, jax.tree_util.tree_unflatten(tree, [grads[i] for i in range(len(leaves))])

    return value_and_grad


@standard_promotion
def finetune(backbone: Model, layer: str, patches: np.ndarray, targets: np.ndarray, task: str,
             head_params: dict, config: FinetuneConfig = FinetuneConfig()
             ) -> tuple[dict, dict, list[float]]:
    """Train backbone and head together on ``patches [n, time, mel]`` with ``targets [n, C]``.

    Returns ``(backbone variables, head params, training loss per step)``.
    """
    patches = np.asarray(patches, np.float32)
    targets = np.asarray(targets, np.float32)
    if len(patches) != len(targets) or len(patches) == 0:
        raise InputError(f"{len(patches)} patches but {len(targets)} target rows")
    embed = embed_fn(backbone, layer)
    frozen = {k: v for k, v in backbone.variables.items() if k != "params"}
    trainable = {"backbone": backbone.variables["params"],
                 "head": jax.tree_util.tree_map(jnp.asarray, head_params)}
    optimizer = optax.multi_transform(
        {"backbone": optax.adam(config.backbone_learning_rate),
         "head": optax.adam(config.head_learning_rate)},
        {"backbone": "backbone", "head": "head"})
    state = optimizer.init(trainable)

    def loss_fn(params, x, y):
        features = embed({"params": params["backbone"], **frozen}, x)
        data = jnp.mean(sample_losses(task, head_logits(params["head"], features), y))
        return data + config.weight_decay * l2_penalty(params["head"]), data

    value_and_grad = mixed_value_and_grad(
        loss_fn, forward_mode_gradients(backbone.module, platform_of(backbone.variables)))

    @jax.jit
    def step(params, state, x, y):
        (_, data), grads = value_and_grad(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, data

    rng = np.random.default_rng(config.seed)
    batch = min(config.batch_size, len(patches))
    losses = []
    try:
        for index in range(config.steps):
            rows = rng.choice(len(patches), batch, replace=False)
            trainable, state, loss = step(trainable, state, patches[rows], targets[rows])
            interrupts.raise_if_received()  # a Ctrl-C that JAX's callbacks swallowed
            loss = float(loss)
            if not np.isfinite(loss):
                raise TrainingError(f"the fine-tuning loss became {loss} at step {index + 1}")
            losses.append(loss)
    except BaseException:
        # the step in flight finishes before this frame, and its program, go: a Ctrl-C here
        # ended in a segmentation fault (XLA's threads ran the freed program) in 7 of 8 tries
        jax.block_until_ready((trainable, state))
        raise
    variables = {"params": trainable["backbone"], **frozen}
    return jax.device_get(variables), jax.device_get(trainable["head"]), losses


def backbone_with(backbone: Model, variables: dict, source: str) -> Model:
    """A copy of ``backbone`` with new variables (for saving with ``save_weights``)."""
    spec = dataclasses.replace(backbone.spec, variables=variables)
    return Model.from_spec(spec, labels=backbone.labels, source=source)


FINE_TUNED_NOTE = ("backbone and head fine-tuned together after training; cross-validation "
                   "figures, if any, are the head's before fine-tuning")


def backbone_output(output: str) -> Path:
    """``NAME-backbone.npz``, the fine-tuned backbone written beside the head ``NAME``."""
    from jaxmir.train import export

    return export.beside(output, "-backbone.npz")


def _spill_patches(model: Model, paths, spill, resampler: str, decoder: str) -> np.ndarray:
    """Write each file's log-mel patches to ``spill`` (a binary file), file after file, the
    audio read with ``resampler`` and ``decoder``; return the track of each patch,
    ``[n_patches]``. The patches of a whole dataset (72 KB each for MusiCNN) live on disk, not
    in memory: training reads the batch it draws."""
    from jaxmir.audio import load_audio

    rows = []
    for index, path in enumerate(paths):
        interrupts.raise_if_received()
        audio = load_audio(path, resampler=resampler, decoder=decoder)
        cut = audio_patches(model, audio, 16000)
        spill.write(np.ascontiguousarray(cut, np.float32).tobytes())
        rows.extend([index] * len(cut))
    spill.flush()
    return np.asarray(rows, int)


def finetune_and_export(result, backbone: str, layer: str, output: str, steps: int, seed: int,
                        overwrite: bool, dataset: dict | None = None,
                        also: dict[Path, Path] | None = None) -> dict:
    """Fine-tune a :func:`~jaxmir.train.recipe.fit_head` result; write ``NAME-backbone.npz`` and the
    head.

    The head's JSON names ``NAME-backbone`` as its embedding model; its ``dataset`` is
    ``dataset`` (:func:`~jaxmir.train.recipe.dataset_entry`), marked as fine-tuned after any
    cross-validation it reports. ``also``: files that land with the head (as
    :func:`~jaxmir.train.export.export_head` takes them).
    """
    from jaxmir.loading import load
    from jaxmir.train import export
    from jaxmir.weights import save_weights

    backbone_path = backbone_output(output)
    if not overwrite:
        export.refuse_existing([backbone_path])
    export.check_output_folder(output)
    model = load(backbone)
    folder = export.output_paths(output)[".pb"].parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder, prefix=".tmp-patches-") as spill:
        rows = _spill_patches(model, result.dataset.paths, spill, result.resampler,
                              result.decoder)
        patches = np.memmap(spill, np.float32, "r", shape=(len(rows), *model.input_shape))
        targets = result.dataset.targets if result.train_targets is None else result.train_targets
        variables, head, _ = finetune(model, layer, patches, targets[rows],  # smoothed, with LDL
                                      result.head.task, result.head.params,
                                      FinetuneConfig(steps=steps, seed=seed))
        del patches
    tuned = backbone_with(model, variables, str(backbone_path))
    temp = backbone_path.with_name(f".tmp-{backbone_path.name}")
    temp.parent.mkdir(parents=True, exist_ok=True)
    audio = reading_entry(result.resampler, result.decoder)  # as the head records it
    save_weights(tuned, temp, provenance={"fine_tuned_from": str(backbone),
                                          "dataset": {"audio": audio}})
    try:  # the head and its backbone land together (through links, as the head's own files)
        paths = export.export_head(head, result.head.activation, result.dataset.classes,
                                   output, str(backbone_path), model.input_shape,
                                   model.node_name(layer) or layer,
                                   {**(dataset or {}), "fine_tuned": FINE_TUNED_NOTE}, overwrite,
                                   also={temp: backbone_path, **(also or {})})
    finally:
        temp.unlink(missing_ok=True)  # moved, unless the export failed
    return {**paths, "backbone": backbone_path}
