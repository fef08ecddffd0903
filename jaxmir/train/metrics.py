"""Evaluation figures: class-balanced accuracy, ROC-AUC / PR-AUC, R² / RMSE (NumPy only)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``[true class, predicted class]`` counts from ``[tracks]`` class indices."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean per-class recall over the classes present (MTG's "normalised accuracy")."""
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of one binary column (ties count half); NaN with one class."""
    truth = truth.astype(bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average ranks over ties (Mann-Whitney U)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision (step-wise, as scikit-learn); NaN with one class, as
    :func:`roc_auc`: without negatives every ranking scores 1 (scikit-learn's 1.0), which
    would lift a mean over classes whatever the predictions."""
    truth = truth.astype(bool)
    if truth.all() or not truth.any():
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    # thresholds at distinct scores: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(truth)[last]
    precision = tp / (last + 1)
    recall = tp / truth.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def evaluate(task: str, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Track-level figures for ``targets``/``predictions`` ``[tracks, outputs]``."""
    if task == "single":
        n = targets.shape[1]
        matrix = confusion_matrix(np.argmax(targets, 1), np.argmax(predictions, 1), n)
        return {"normalized_accuracy": balanced_accuracy(matrix),
                "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1))}
    if task == "multi":
        # soft targets (probabilities) count as positive from 0.5, not from any value above 0
        truth = targets >= 0.5
        roc = [roc_auc(truth[:, c], predictions[:, c]) for c in range(targets.shape[1])]
        pr = [average_precision(truth[:, c], predictions[:, c]) for c in range(targets.shape[1])]
        return {"roc_auc": float(np.nanmean(roc)) if not np.all(np.isnan(roc)) else float("nan"),
                "pr_auc": float(np.nanmean(pr)) if not np.all(np.isnan(pr)) else float("nan")}
    residual = ((targets - predictions) ** 2).sum(axis=0)
    total = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1.0 - residual / np.where(total > 0, total, np.nan)
    # each output's RMSE, then their mean, as R² and scikit-learn's root_mean_squared_error
    # (pooled, a tempo's errors outweighed a 0-1 output's)
    rmse = np.sqrt(np.mean((targets - predictions) ** 2, axis=0))
    return {"r2": float(np.nanmean(r2)) if not np.all(np.isnan(r2)) else float("nan"),
            "rmse": float(np.mean(rmse))}


def summarize(folds: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``{metric: (mean, std)}`` over folds (population std, NaN folds ignored)."""
    names = folds[0].keys() if folds else []
    out = {}
    for name in names:
        values = np.asarray([f[name] for f in folds], np.float64)
        values = values[~np.isnan(values)]  # none left: undefined in every fold (one track each)
        out[name] = (float(values.mean()), float(values.std())) if values.size else \
            (float("nan"), float("nan"))
    return out
