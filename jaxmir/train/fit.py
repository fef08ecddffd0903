"""Training a head on per-patch embeddings: MTG's recipe, k-fold cross-validation.

The head is ``Dense(100) -> ReLU -> Dense(C) -> softmax | sigmoid | identity``
(variance-scaling initialisation, scale 2). Training follows MTG's recipe for
Essentia's classification heads (``src/train.py`` of palonso/musicnn-training,
branch ``mtgdb-models``): Adam at 1e-3, batches of 32 patches drawn at random
from all training patches, L2 weight decay 1e-5 on every variable, and the
weights of the lowest validation cost kept, the untrained ones included (MTG's
first epoch only validates). The cost is the loss plus the weight decay, on
validation as in training, averaged over batches of ``batch_size`` patches. The
learning rate is halved once ``patience`` epochs have not improved on the best
cost since the last halving (counted whether or not others improved between
them). Evaluation averages the predictions of a track's patches.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike
import optax

from jaxmir import interrupts
from jaxmir.checks import is_whole, real_fields, whole_fields
from jaxmir.errors import InputError, JaxmirError, JaxmirWarning
from jaxmir.models import damaged_variable
from jaxmir.promotion import PRECISION, standard_promotion
from jaxmir.train import metrics
from jaxmir.train.data import (ACTIVATION, check_targets, check_task, check_varying,
                               names_preview)


class TrainingError(JaxmirError):
    """Training could not go on (a non-finite loss, ...)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are MTG's (150 epochs as the ICASSP 2020 transfer models).

    ``epochs`` counts trained epochs; MTG's count includes its first, which only validates
    (:func:`train_head` validates the starting weights before its epochs)."""

    hidden: int = 100
    learning_rate: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-5
    epochs: int = 150
    patience: int = 75
    validation_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self):
        whole_fields(self, {"hidden": 1, "batch_size": 1, "epochs": 1, "patience": 1, "seed": 0})
        if self.seed > MAX_SEED:  # JAX's keys take 64-bit seeds, and folds add theirs
            raise InputError(f"TrainConfig seed = {self.seed}; expected a whole number "
                             f"<= {MAX_SEED}")
        real_fields(self, {
            "learning_rate": (lambda rate: rate > 0, "a positive number"),
            "weight_decay": (lambda decay: decay >= 0, "a number >= 0"),
            "validation_fraction": (lambda fraction: 0 < fraction < 1,
                                    "a fraction strictly between 0 and 1")})


MAX_SEED = 2**32 - 1

Params = dict  # {"dense": {"kernel": [d, 100], "bias": [100]}, "dense_1": {...: [100, C], [C]}}


def init_head(key: jax.Array, in_dim: int, hidden: int, n_out: int) -> Params:
    """Variance-scaling (scale 2, fan-in, truncated normal) kernels, zero biases."""
    init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
    k1, k2 = jax.random.split(key)
    return {"dense": {"kernel": init(k1, (in_dim, hidden), jnp.float32),
                      "bias": jnp.zeros((hidden,), jnp.float32)},
            "dense_1": {"kernel": init(k2, (hidden, n_out), jnp.float32),
                        "bias": jnp.zeros((n_out,), jnp.float32)}}


@standard_promotion
def head_logits(params: Params, x: jax.Array) -> jax.Array:
    """``[batch, features] -> [batch, C]`` before the output activation."""
    hidden = jax.nn.relu(jnp.matmul(x, params["dense"]["kernel"], precision=PRECISION)
                         + params["dense"]["bias"])
    return jnp.matmul(hidden, params["dense_1"]["kernel"], precision=PRECISION) \
        + params["dense_1"]["bias"]


def activate(task: str, logits: jax.Array) -> jax.Array:
    if task == "single":
        return jax.nn.softmax(logits, axis=-1)
    if task == "multi":
        return jax.nn.sigmoid(logits)
    return logits


def sample_losses(task: str, logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``[batch]``: softmax cross-entropy (soft targets), sigmoid cross-entropy or squared error."""
    if task == "single":
        return optax.softmax_cross_entropy(logits, targets)
    if task == "multi":
        return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)
    return ((logits - targets) ** 2).mean(axis=-1)


def l2_penalty(params) -> jax.Array:
    """TensorFlow's ``l2_loss`` summed over every variable: ``sum(w**2) / 2``."""
    return sum(0.5 * jnp.sum(p ** 2) for p in jax.tree_util.tree_leaves(params))


def _optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """Adam whose learning rate lives in its state (``state.hyperparams["learning_rate"]``)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def _loss(task: str, weight_decay: float, params, x, y, w):
    data = jnp.sum(sample_losses(task, head_logits(params, x), y) * w) / jnp.maximum(w.sum(), 1)
    return data + weight_decay * l2_penalty(params)


@functools.partial(jax.jit, static_argnums=(0, 1))
def train_step(task: str, weight_decay: float, params, state, x, y, w):
    """One step ``(params, state, x[b, d], y[b, C], w[b]) -> (params, state, cost)``: the
    batch's mean loss plus the weight decay, before the step.

    ``w`` masks the padding of the last batch of an epoch (0 for padded rows).
    Compiled once per task and shape: the learning rate is part of ``state``.
    """
    cost, grads = jax.value_and_grad(functools.partial(_loss, task, weight_decay))(params, x, y, w)
    updates, state = _optimizer().update(grads, state, params)
    return optax.apply_updates(params, updates), state, cost


@functools.partial(jax.jit, static_argnums=(0, 1))
def _validation_terms(task: str, weight_decay: float, params, x, y
                      ) -> tuple[jax.Array, jax.Array]:
    """``([patches] losses, the weight decay's term)`` of ``params`` on ``x [patches, d]``."""
    return sample_losses(task, head_logits(params, x), y), weight_decay * l2_penalty(params)


@standard_promotion
def validation_cost(task: str, weight_decay: float, params: Params, x: np.ndarray,
                    y: np.ndarray, batch: int) -> float:
    """The cost MTG's loop compares: the mean over ``batch``-patch batches of ``x [patches, d]``
    (the last one shorter) of each batch's mean loss, plus the weight decay's term."""
    losses, decay = jax.device_get(_validation_terms(task, weight_decay, params, x, y))
    starts = np.arange(0, len(losses), batch)
    return float(np.mean(np.add.reduceat(np.asarray(losses, np.float64), starts)
                         / np.diff(np.append(starts, len(losses)))) + decay)


@dataclasses.dataclass(repr=False)
class Head:
    """A trained head: its parameters, task, class names, training history and the epoch whose
    weights it holds (0: those it started from)."""

    params: Params
    task: str
    classes: tuple[str, ...]
    history: list[dict] = dataclasses.field(default_factory=list)
    kept_epoch: int | None = None

    def __post_init__(self):
        check_task(self.task)

    def __repr__(self) -> str:  # not every weight and epoch
        return (f"Head({self.task}, {self.in_dim} inputs -> {names_preview(self.classes)}, "
                f"{len(self.history)} epochs)")

    @property
    def in_dim(self) -> int:
        """Width of the embeddings the head takes (``[patches, in_dim]``)."""
        return int(self.params["dense"]["kernel"].shape[0])

    @property
    def activation(self) -> str:
        """The output activation of its task: softmax, sigmoid or identity (regression)."""
        return ACTIVATION[self.task]

    @standard_promotion
    def predict(self, embeddings: ArrayLike) -> np.ndarray:
        """``[patches, features] -> [patches, C]`` after the output activation."""
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.in_dim:
            raise InputError(f"embeddings of shape {embeddings.shape}; this head takes "
                             f"[patches, {self.in_dim}]")
        if not np.all(np.isfinite(embeddings)):  # as training refuses them: NaN would come out
            patch = int(np.nonzero(~np.isfinite(embeddings).all(axis=1))[0][0])
            raise InputError(f"NaN or infinite embeddings (patch {patch} first)")
        return np.asarray(_predict(self.task, self.params, jnp.asarray(embeddings)))

    def predict_tracks(self, tracks: Sequence[np.ndarray]) -> np.ndarray:
        """``[tracks, C]``: each track's patch predictions averaged."""
        flat, owner = _flatten(tracks)
        values = self.predict(flat)
        sums = np.zeros((len(tracks), values.shape[1]), np.float64)
        np.add.at(sums, owner, values)
        return (sums / np.bincount(owner, minlength=len(tracks))[:, None]).astype(np.float32)


_predict = jax.jit(lambda task, params, x: activate(task, head_logits(params, x)),
                   static_argnums=0)


def _flatten(tracks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All patches ``[patches, features]`` and the track of each ``[patches]``."""
    arrays = check_tracks(tracks)
    owner = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
    return np.concatenate(arrays), owner


def check_tracks(tracks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The tracks as float32 arrays, if each is ``[patches >= 1, features]`` of one width."""
    if not len(tracks):
        raise InputError("no tracks to train or evaluate on")
    arrays = [np.asarray(t, np.float32) for t in tracks]
    for i, array in enumerate(arrays):
        if array.ndim != 2 or len(array) == 0:
            raise InputError(f"track {i} has embeddings of shape {array.shape}; expected "
                             "[patches, features] with at least one patch")
        if array.shape[1] != arrays[0].shape[1]:
            raise InputError(f"track {i} has {array.shape[1]}-d embeddings, track 0 "
                             f"{arrays[0].shape[1]}-d; every track needs the same backbone "
                             "and layer")
        if not np.all(np.isfinite(array)):
            patch = int(np.nonzero(~np.isfinite(array).all(axis=1))[0][0])
            raise InputError(f"track {i} has NaN or infinite embeddings (patch {patch} first)")
    return arrays


def split_validation(targets: np.ndarray, task: str, fraction: float,
                     rng: np.random.Generator, labels: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` track indices; stratified by class for single-label data: by
    ``labels`` (``[tracks]`` class indices) where given, else by the targets' largest class."""
    n = len(targets)
    if task == "single":
        classes = np.argmax(targets, axis=1) if labels is None else np.asarray(labels)
        val = []
        for c in np.unique(classes):
            members = rng.permutation(np.nonzero(classes == c)[0])
            take = int(round(fraction * len(members)))
            val.extend(members[:min(max(take, 1), len(members) - 1)])
        val = np.sort(np.asarray(val, int))
    else:
        order = rng.permutation(n)
        val = np.sort(order[:min(max(int(round(fraction * n)), 1), n - 1)])
    return np.setdiff1d(np.arange(n), val), val


def check_folds(targets: np.ndarray, task: str, classes: Sequence[str], folds) -> None:
    """Refuse ``folds`` that are not a whole number from 2 to the number of tracks, or that
    leave a single-label class fewer than two tracks to train on in some fold (training splits
    one of them off to validate on, as :func:`train_head` does with all the tracks)."""
    if not is_whole(folds, 2):
        raise InputError(f"folds = {folds!r}; expected a whole number >= 2")
    _check_fold_count(folds, len(targets))
    if task != "single":
        return
    counts = np.bincount(np.argmax(targets, axis=1), minlength=len(classes))
    for name, count in zip(classes, counts):
        least = int(count - -(-count // folds))  # a fold tests ceil(count / folds) of them
        if least < 2:
            # more folds test fewer tracks each: from `count` folds on, a fold trains on count - 1
            remedy = "give more tracks" if count < 3 else \
                f"use more folds (from {count} on, {count - 1} train), or give more tracks"
            raise InputError(f"{folds} folds leave class {name!r} ({count} tracks) "
                             f"{least} to train on in some fold, and training "
                             f"needs two per class (one to validate on); {remedy}")


def _check_fold_count(folds: int, n: int) -> None:
    if folds < 2 or folds > n:
        raise InputError(f"{folds} folds for {n} tracks; use 2 <= folds <= tracks")


def fold_indices(targets: np.ndarray, task: str, folds: int, seed: int) -> list[np.ndarray]:
    """Test-track indices of ``folds`` folds (class-stratified for single-label data)."""
    n = len(targets)
    _check_fold_count(folds, n)
    rng = np.random.default_rng(seed)
    assignment = np.empty(n, int)
    if task == "single":
        classes = np.argmax(targets, axis=1)
        offset = 0
        for c in np.unique(classes):
            members = rng.permutation(np.nonzero(classes == c)[0])
            assignment[members] = (np.arange(len(members)) + offset) % folds
            offset += len(members)
    else:
        assignment[rng.permutation(n)] = np.arange(n) % folds
    return [np.nonzero(assignment == f)[0] for f in range(folds)]


@standard_promotion
def train_head(tracks: Sequence[np.ndarray], targets: np.ndarray, task: str,
               classes: Sequence[str], config: TrainConfig = TrainConfig(),
               validation: tuple[Sequence[np.ndarray], np.ndarray] | None = None,
               initial: Params | None = None, log: Callable[[str], None] | None = None,
               labels: np.ndarray | None = None, keep_start: bool = False) -> Head:
    """Train a head on per-patch embeddings.

    Args:
      tracks: one ``[patches, features]`` array per training track.
      targets: ``[tracks, C]``: one-hot rows or label distributions (single),
        multi-hot rows or probabilities in [0, 1] (multi), or values (regression).
      task: ``"single"``, ``"multi"`` or ``"regression"``.
      classes: ``C`` output names.
      config: hyper-parameters.
      validation: ``(tracks, targets)`` for the plateau schedule and the kept
        checkpoint; ``None`` splits ``config.validation_fraction`` of the
        tracks off (stratified).
      initial: parameters to resume from (their input width must match).
      log: called with one line per epoch (epoch 0: the untrained or resumed head's validation).
      labels: ``[tracks]`` the single-label classes the validation split is stratified by,
        where ``targets`` are smoothed distributions (default: their largest class).
      keep_start: when no epoch's validation cost comes below the untrained head's, return
        the untrained head (``kept_epoch`` 0), as MTG's loop keeps it, instead of raising
        (a cross-validation fold). A resumed head is kept so always, with a warning.

    Returns:
      the :class:`Head` at its lowest validation cost (:func:`validation_cost`), with
      ``history``: one record per trained epoch (its training and validation costs, the
      learning rate it trained with, its seconds).

    Raises:
      InputError: tracks, targets, task or classes that do not fit together (the
        targets must suit the task: see :func:`~jaxmir.train.data.check_targets`).
      TrainingError: a non-finite cost (the message names the epoch and step), or no
        epoch whose validation cost came below the untrained head's (unless ``keep_start``).
    """
    tracks = check_tracks(tracks)
    targets = check_training_targets(tracks, targets, task, classes)
    rng = np.random.default_rng(config.seed)
    if labels is not None and np.shape(labels) != (len(targets),):
        raise InputError(f"labels have shape {list(np.shape(labels))}; expected [{len(targets)}]: "
                         "one class index per track")
    if validation is None:
        train, val = split_validation(targets, task, config.validation_fraction, rng, labels)
        if not len(val):
            raise InputError(f"{len(targets)} tracks are too few to split off a validation set; "
                             "give more tracks (at least two per class) or validation=")
        validation = ([tracks[i] for i in val], targets[val])
        tracks, targets = [tracks[i] for i in train], targets[train]
    else:
        validation = (validation[0], check_training_targets(*validation, task, classes,
                                                            "validation targets"))
    x, owner = _flatten(tracks)
    y = targets[owner]
    vx, vowner = _flatten(validation[0])
    if vx.shape[1] != x.shape[1]:
        raise InputError(f"validation embeddings are {vx.shape[1]}-d, training embeddings "
                         f"{x.shape[1]}-d")
    vy = validation[1][vowner]
    in_dim, n_out = x.shape[1], targets.shape[1]
    if initial is None:
        params = init_head(jax.random.PRNGKey(config.seed), in_dim, config.hidden, n_out)
    else:
        params = check_resumed(initial, in_dim, n_out)

    state = _optimizer(config.learning_rate).init(params)

    batch = min(config.batch_size, len(x))  # a larger one would be padding, computed
    n_batches = -(-len(x) // batch)
    lr, since_halving = config.learning_rate, 0
    best, best_epoch = params, 0
    start_name = "untrained" if initial is None else "resumed"
    best_cost = initial_cost = validation_cost(task, config.weight_decay, params, vx, vy,
                                               config.batch_size)
    if not np.isfinite(initial_cost):
        raise TrainingError(f"the {start_name} head's validation cost is {initial_cost}; check "
                            "the embeddings and targets for NaN/inf")
    if log is not None:
        log(f"epoch 0 ({start_name}): validation {initial_cost:.4f}")
    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(x))
        order = np.concatenate([order, np.zeros(n_batches * batch - len(x), int)])
        weights = (np.arange(n_batches * batch) < len(x)).astype(np.float32)
        losses = []
        for b in range(n_batches):
            rows = order[b * batch:(b + 1) * batch]
            params, state, loss = train_step(task, config.weight_decay, params, state, x[rows],
                                             y[rows], weights[b * batch:(b + 1) * batch])
            losses.append(loss)
        losses = np.asarray(jax.device_get(losses), np.float64)
        bad = np.nonzero(~np.isfinite(losses))[0]
        if bad.size:
            raise TrainingError(f"the training cost became {losses[bad[0]]} at epoch {epoch}, "
                                f"step {bad[0] + 1} of {n_batches} (global step "
                                f"{(epoch - 1) * n_batches + bad[0] + 1}); lower the learning "
                                "rate or check the embeddings and targets for NaN/inf")
        current = validation_cost(task, config.weight_decay, params, vx, vy, config.batch_size)
        if not np.isfinite(current):
            raise TrainingError(f"the validation cost became {current} at epoch {epoch}; lower "
                                "the learning rate or check the embeddings and targets")
        record = {"epoch": epoch, "train_loss": float(losses.mean()), "val_loss": current,
                  "learning_rate": lr, "seconds": time.perf_counter() - start}
        if since_halving >= config.patience:  # MTG's order: the count of the epochs before
            lr /= 2.0
            state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
            since_halving = 0
        if current < best_cost:
            best, best_cost, best_epoch = params, current, epoch
        else:
            since_halving += 1
        history.append(record)
        if log is not None:
            log(f"epoch {epoch}: train {record['train_loss']:.4f}, validation {current:.4f}, "
                f"lr {record['learning_rate']:.2e}")
        interrupts.raise_if_received()  # a Ctrl-C that JAX's callbacks swallowed
    if best_epoch == 0:
        lowest = min(record["val_loss"] for record in history)
        never = (f"no epoch's validation cost (the lowest {lowest:.6g}) came below the "
                 f"{start_name} head's ({initial_cost:.6g})")
        if initial is not None:  # a head trained before, maybe already the best: kept
            warnings.warn(f"{never}: the resumed head is kept as it was", JaxmirWarning,
                          stacklevel=2)
        elif not keep_start:
            raise TrainingError(f"{never}; lower the learning rate, or give data whose classes "
                                "its embeddings tell apart")
    best = jax.device_get(best)
    diverged = damaged_variable(best, why="")  # trained here: no file to call damaged
    if diverged is not None:
        raise TrainingError(f"the head's weights diverged ('{diverged[0]}' holds {diverged[1]}) "
                            "though the loss stayed finite; lower the learning rate")
    return Head(best, task, tuple(classes), history, best_epoch)


def check_training_targets(tracks: Sequence[np.ndarray], targets, task: str,
                           classes: Sequence[str], what: str = "targets") -> np.ndarray:
    """``targets`` as float32, if they suit ``task`` and ``classes`` and give one row per track."""
    targets = check_targets(targets, task, classes, what)
    if task == "single" and targets.shape[1] < 2:
        raise InputError(f"only one class ({', '.join(map(str, classes))}); a single-label "
                         "(softmax) head needs at least two: its one output would always be 1")
    if task == "single" and np.count_nonzero(targets.sum(axis=0) > 0) < 2:
        only = tuple(classes)[int(np.argmax(targets.sum(axis=0)))]
        raise InputError(f"every track is in one class ({only!r}); a classifier needs tracks "
                         "of at least two classes")
    if len(tracks) != len(targets):
        raise InputError(f"{len(tracks)} tracks but {len(targets)} {what} rows")
    if task == "regression":
        check_varying(targets, classes, what)
    return targets


def check_resumed(initial: Params, in_dim: int, n_out: int) -> Params:
    """The parameters of a resumed head, if their widths fit the embeddings and outputs."""
    have_in = int(np.shape(initial["dense"]["kernel"])[0])
    have_out = int(np.shape(initial["dense_1"]["kernel"])[1])
    if have_in != in_dim:
        raise InputError(f"the resumed head takes {have_in}-d embeddings, but the backbone and "
                         f"layer give {in_dim}-d embeddings; use the backbone/layer it was "
                         "trained on")
    if have_out != n_out:
        raise InputError(f"the resumed head has {have_out} outputs, the data {n_out} classes")
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), initial)


def steady_seconds(history: list[dict]) -> list[float]:
    """Seconds per epoch after the first (which compiles), or the first's if it is alone."""
    return [h["seconds"] for h in history[1:] or history]


@dataclasses.dataclass(repr=False)
class CrossValidation:
    """Per-fold figures, their mean and std, and the summed confusion matrix (single-label)."""

    folds: list[dict[str, float]]
    summary: dict[str, tuple[float, float]]
    confusion: np.ndarray | None
    seconds_per_epoch: float

    def __repr__(self) -> str:
        figures = ", ".join(f"{name} {mean:.4g} ± {std:.2g}"
                            for name, (mean, std) in self.summary.items())
        return f"CrossValidation({len(self.folds)} folds: {figures})"


@standard_promotion
def cross_validate(tracks: Sequence[np.ndarray], targets: np.ndarray, task: str,
                   classes: Sequence[str], folds: int = 5, config: TrainConfig = TrainConfig(),
                   smooth: Callable[[np.ndarray], np.ndarray] | None = None,
                   log: Callable[[str], None] | None = None) -> CrossValidation:
    """k-fold cross-validation; ``smooth(train_indices) -> [len, C]`` replaces training targets.

    Smoothing (label distribution learning) sees only the training tracks of a
    fold; the test tracks are scored against their original labels. A fold whose epochs never
    come below its untrained head's validation cost is scored with that head, as MTG's loop
    keeps it, with a :class:`~jaxmir.errors.JaxmirWarning` naming the fold.
    """
    tracks = check_tracks(tracks)
    targets = check_training_targets(tracks, targets, task, classes)
    check_folds(targets, task, classes, folds)
    results, confusion, epoch_seconds = [], None, []
    if task == "single":
        confusion = np.zeros((targets.shape[1],) * 2, np.int64)
    for f, test in enumerate(fold_indices(targets, task, folds, config.seed)):
        train = np.setdiff1d(np.arange(len(targets)), test)
        train_targets = targets[train] if smooth is None else np.asarray(smooth(train), np.float32)
        head = train_head([tracks[i] for i in train], train_targets, task, classes,
                          dataclasses.replace(config, seed=(config.seed + f) % (MAX_SEED + 1)),
                          labels=np.argmax(targets[train], axis=1) if task == "single" else None,
                          keep_start=True)
        if head.kept_epoch == 0:
            warnings.warn(f"fold {f + 1}/{folds}: no epoch's validation cost came below the "
                          "untrained head's; the fold is scored with the untrained head, as "
                          "MTG's loop keeps it", JaxmirWarning, stacklevel=2)
        predictions = head.predict_tracks([tracks[i] for i in test])
        figures = metrics.evaluate(task, targets[test], predictions)
        results.append(figures)
        epoch_seconds.extend(steady_seconds(head.history))
        if confusion is not None:
            confusion += metrics.confusion_matrix(np.argmax(targets[test], 1),
                                                  np.argmax(predictions, 1), targets.shape[1])
        if log is not None:
            log(f"fold {f + 1}/{folds}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    return CrossValidation(results, metrics.summarize(results), confusion,
                           float(np.median(epoch_seconds)) if epoch_seconds else float("nan"))
