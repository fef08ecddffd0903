"""Pictures of model outputs: the taggram (tags x time) of one file.

matplotlib is an optional dependency (``pip install 'jaxmir[plot]'``), imported
only when a picture is drawn.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmir import lazy
from jaxmir.atomic import write_atomically
from jaxmir.errors import JaxmirError, JaxmirWarning, OptionError


def _pyplot():
    matplotlib = lazy.optional("matplotlib", "drawing a taggram", "pip install 'jaxmir[plot]'")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def check_available() -> None:
    """Raise :class:`JaxmirError` (with the install command) when matplotlib is missing."""
    _pyplot()


def check_format(path: str | os.PathLike) -> None:
    """Raise :class:`~jaxmir.errors.OptionError` when ``path``'s extension names a format
    matplotlib does not write (``--plot p.txt`` failed file by file, after the model ran); no
    extension is a PNG."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix[1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise OptionError(f"--plot {path}: matplotlib writes no '.{suffix}' pictures; give a name "
                          "ending in " + ", ".join(f".{name}" for name in sorted(formats)))


def save_taggram(path: str | os.PathLike, taggram: np.ndarray, starts: np.ndarray,
                 labels: Sequence[str], patch_seconds: float, title: str = "") -> Path:
    """Draw per-patch predictions as an image: one row per label, one column per patch.

    Args:
      path: the image file (its suffix picks the format: .png, .svg, .pdf);
        written atomically (a temporary file in the same folder, then renamed).
      taggram: ``[n_patches, n_labels]`` probabilities.
      starts: ``[n_patches]`` patch starts in seconds (the x axis).
      labels: ``n_labels`` names (the y axis).
      patch_seconds: a patch's duration, for the last column's width.
      title: shown above the picture.

    Returns:
      The path written.
    """
    taggram = np.asarray(taggram, np.float32)
    starts = np.asarray(starts, np.float64)
    if taggram.ndim != 2 or taggram.shape[0] != starts.shape[0] or taggram.shape[1] != len(labels):
        raise JaxmirError(f"taggram {list(taggram.shape)} does not match {starts.shape[0]} patch "
                          f"starts and {len(labels)} labels")
    plt = _pyplot()
    target = Path(path)
    n_labels = len(labels)
    # column edges: each patch spans from its start to the next one's (the last one: a patch)
    ends = np.append(starts[1:], starts[-1] + patch_seconds) if starts.size else starts
    edges = np.append(starts, ends[-1:]) if starts.size else np.array([0.0, patch_seconds])
    values = taggram.T if taggram.size else np.zeros((n_labels, 1), np.float32)
    figure, axes = plt.subplots(figsize=(max(6.0, min(24.0, 0.25 * len(starts) + 4)),
                                         0.18 * n_labels + 1.5))
    with warnings.catch_warnings(record=True) as caught:  # (not thread-safe, as warnings)
        # every glyph's, to name each character; the other warnings as the caller's filters say
        warnings.filterwarnings("always", message=_MISSING_GLYPH.pattern)
        try:
            _draw(figure, axes, target, edges, values, labels, title)
        finally:
            plt.close(figure)
    _warn_again(caught, target)
    return target


def _draw(figure, axes, target: Path, edges: np.ndarray, values: np.ndarray,
          labels: Sequence[str], title: str) -> None:
    """The taggram's picture in ``figure``, written to ``target``."""
    n_labels = len(labels)
    image = axes.pcolormesh(edges, np.arange(n_labels + 1), values, cmap="viridis", vmin=0.0,
                            vmax=max(1e-6, float(values.max())), shading="flat")
    axes.set_yticks(np.arange(n_labels) + 0.5)
    axes.set_yticklabels(labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("time (s)")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.03, pad=0.01)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    # the picture's format follows the target's extension, as savefig(path) would choose it
    write_atomically(target, lambda handle: figure.savefig(
        handle, format=target.suffix[1:] or None, dpi=120))


_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from (?:current )?font")  # matplotlib's


def _warn_again(caught: list[warnings.WarningMessage], target: Path) -> None:
    """The warnings of a drawing, matplotlib's "Glyph 26085 missing from font(s)" (one for
    each character, each time the text is laid out: 8 lines a picture) in one line."""
    missing = []
    for caught_warning in caught:
        found = _MISSING_GLYPH.search(str(caught_warning.message))
        if found is None:  # it passed the caller's filters when it was raised: shown as it was
            warnings.showwarning(caught_warning.message, caught_warning.category,
                                 caught_warning.filename, caught_warning.lineno,
                                 caught_warning.file, caught_warning.line)
        elif chr(int(found.group(1))) not in missing:
            missing.append(chr(int(found.group(1))))
    if missing:
        warnings.warn(f"{target}: matplotlib's fonts lack {' '.join(missing)} (of the labels or "
                      "the title), drawn as boxes", JaxmirWarning, stacklevel=3)


__all__ = ["save_taggram", "check_available", "check_format"]
