"""The cross-validation confusion matrix as a picture (matplotlib, the optional ``[plot]``
extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmir import lazy
from jaxmir.atomic import write_atomically


def require_matplotlib():
    matplotlib = lazy.optional("matplotlib", "--plot", "pip install 'jaxmir[plot]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_picture(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike) -> Path:
    """Write a PNG of ``matrix [true, predicted]`` (row-normalised colours, counts printed)."""
    plt = require_matplotlib()
    path = Path(path)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.5 + 0.6 * len(classes)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center",
                  color="white" if rows[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    figure.tight_layout()
    try:
        write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    finally:
        plt.close(figure)
    return path
