"""Label distribution learning: one-hot labels replaced by their k nearest neighbours' labels.

Buisson, Alonso-Jiménez and Bogdanov (ICASSP 2022): a track's target becomes
``d_i = (1/k) sum_{j in N_k(i)} y_j`` over its ``k`` nearest training tracks
(itself excluded) in a feature space, always with the neighbours' original
labels (smoothed labels are not propagated).

* ``knn`` (S_A): the space is the MFCC summary (mean and std of 13 MFCCs), k = 10.
* ``lmnn`` (S_B): pooled MFCCs (1-s windows, stacked) mapped by LMNN
  (k_LMNN = 3, push 0.5, 32 dimensions by default: the paper's mood setting;
  64 for genre) to a space where k-NN smoothing uses k = 10 (genre) or 30 (mood).

Features are standardised (z-scores over the training tracks) before the
distances: the paper leaves the scaling unstated, and MFCC 0 would otherwise
dominate.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import numpy as np

from jaxmir.checks import is_real, is_whole
from jaxmir.errors import InputError, JaxmirWarning

METHODS = ("none", "knn", "lmnn")


@dataclasses.dataclass(frozen=True)
class SmoothingConfig:
    """Label smoothing's method and the paper's parameters (S_A: k = 10; S_B: LMNN k = 3, 32
    dimensions, then k = 10).

    ``method``: ``"none"``, ``"knn"`` (S_A: each track's target the mean of its ``k`` nearest
    neighbours' in MFCC summaries) or ``"lmnn"`` (S_B: the same in a space LMNN learnt on
    pooled MFCCs); checked by :func:`~jaxmir.train.recipe.fit_head` before any audio is read.
    """

    method: str = "none"
    k: int = 10
    lmnn_k: int = 3
    lmnn_components: int = 32
    lmnn_push: float = 0.5
    lmnn_max_iter: int = 10000

    def __post_init__(self):
        # NumPy numbers as Python ones: the head's JSON records them (json refuses np.int64);
        # anything else is left for fit_head's check to refuse by name
        for name in ("k", "lmnn_k", "lmnn_components", "lmnn_max_iter"):
            if is_whole(getattr(self, name)):
                object.__setattr__(self, name, int(getattr(self, name)))
        if is_real(self.lmnn_push):
            object.__setattr__(self, "lmnn_push", float(self.lmnn_push))
        given = [field.name for field in dataclasses.fields(self) if field.name.startswith("lmnn")
                 and _differs(getattr(self, field.name), field.default)]
        if given and self.method != "lmnn":  # SmoothingConfig(lmnn_components=64) smoothed nothing
            warnings.warn(f"SmoothingConfig({', '.join(f'{name}=...' for name in given)}) with "
                          f"method={self.method!r}: LMNN's settings apply to method='lmnn' only",
                          JaxmirWarning, stacklevel=3)


def _differs(value, default) -> bool:
    """Whether ``value`` is not ``default`` (an array, which fit_head refuses later, is not)."""
    try:
        return bool(value != default)
    except (ValueError, TypeError):
        return True


def standardize(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    std = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)


def knn_smooth(features: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """``[n, C]``: each row the mean of its ``k`` nearest other rows' targets."""
    features = np.asarray(features, np.float64)
    n = len(features)
    if not is_whole(k, 1):  # none to average (NaN targets), or not a count to slice by
        raise InputError(f"k-NN label smoothing with k = {k!r}; expected a whole number >= 1")
    if k > n - 1:
        raise InputError(f"k-NN label smoothing with k = {k} needs more than {k} training tracks; "
                         f"there are {n}")
    sq = np.sum(features ** 2, axis=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * features @ features.T
    np.fill_diagonal(dist, np.inf)
    neighbours = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.asarray(targets, np.float64)[neighbours].mean(axis=1).astype(np.float32)


def check_class_sizes(targets: np.ndarray, classes, config: SmoothingConfig,
                      folds: int = 0) -> None:
    """Refuse smoothing over ``k`` neighbours where a class has ``k`` tracks or fewer: a track's
    own class then holds at most ``count - 1`` of its ``k`` neighbours, so other classes weigh in
    its target whatever its features (outweigh it below ``k / 2 + 1`` tracks); a tester's
    folds of such classes all scored chance. LMNN needs more than its own ``lmnn_k`` too. With
    ``folds`` (>= 2) the count is that of a fold's training split, where cross-validation
    smooths: ``count - ceil(count / folds)``."""
    if config.method == "none":
        return
    counts = np.bincount(np.argmax(targets, axis=1), minlength=len(classes))
    if folds:
        counts = counts - -(-counts // folds)
    needs = {"k": config.k}
    if config.method == "lmnn":
        needs["LMNN's k"] = config.lmnn_k
    name, k = max(needs.items(), key=lambda item: item[1])
    smallest = int(np.argmin(counts))
    if counts[smallest] <= k:
        where = (f"class {classes[smallest]!r} has {int(counts[smallest])} in some fold's "
                 f"training split ({folds} folds)") if folds else \
            f"class {classes[smallest]!r} has {int(counts[smallest])}"
        smaller = "train-head --smoothing-k, SmoothingConfig(k=)" if name == "k" else \
            "SmoothingConfig(lmnn_k=)"
        more = ", more folds (each tests fewer tracks)" if folds else ""
        count = int(counts[smallest])
        if name != "k":  # LMNN's neighbours are the track's own class's, by definition
            raise InputError(f"label smoothing (lmnn) learns its metric from each track's "
                             f"{k} nearest tracks of its own class (LMNN's k = {k}), so every "
                             f"class needs more than {k} tracks; {where} (give more tracks{more}, "
                             f"or a smaller LMNN k: {smaller} in Python)")
        others = k - max(count, 1) + 1
        raise InputError(f"label smoothing ({config.method}) over {name} = {k} neighbours needs "
                         f"more than {k} tracks in every class: with {count}, at least {others} "
                         f"of a track's {k} neighbours {'is' if others == 1 else 'are'} other "
                         f"classes', whatever its features; {where} (give more tracks{more}, or "
                         f"a smaller {name}: {smaller})")


def lmnn_components(config: SmoothingConfig, shape: tuple[int, int]) -> int:
    """The dimensions LMNN learns for features ``[n, f]``: ``config.lmnn_components``, at most
    ``f`` and ``n - 1``."""
    return min(config.lmnn_components, shape[1], shape[0] - 1)


def as_learnt(config: SmoothingConfig, shape: tuple[int, int]) -> SmoothingConfig:
    """``config`` as :func:`smooth_labels` runs it on features ``[n, f]``: LMNN's dimensions
    those it learns (what a head's JSON records)."""
    if config.method != "lmnn":
        return config
    return dataclasses.replace(config, lmnn_components=lmnn_components(config, shape))


def smooth_labels(features: np.ndarray, targets: np.ndarray, config: SmoothingConfig) -> np.ndarray:
    """Label distributions ``[n, C]`` for training tracks' ``features [n, f]`` and ``targets``."""
    if config.method == "none":
        return np.asarray(targets, np.float32)
    space = standardize(features)
    if config.method == "lmnn":
        from jaxmir.train.lmnn import fit_lmnn  # JAX: loaded only to smooth, not for the parser

        labels = np.argmax(targets, axis=1)
        space = fit_lmnn(space, labels, n_components=lmnn_components(config, space.shape),
                         k=config.lmnn_k,
                         push=config.lmnn_push, max_iter=config.lmnn_max_iter).transform(space)
    elif config.method != "knn":
        raise InputError(f"unknown label smoothing '{config.method}'; expected one of {METHODS}")
    return knn_smooth(space, targets, config.k)


def smoother(features: np.ndarray, targets: np.ndarray,
             config: SmoothingConfig) -> Callable[[np.ndarray], np.ndarray]:
    """``train_indices -> [len, C]`` smoothed within those tracks only (for cross-validation)."""
    return lambda train: smooth_labels(features[train], targets[train], config)
