"""Labels: the names of a model's outputs, one per output, printed for people and used as a
table's column names."""

from __future__ import annotations

import unicodedata
from typing import Iterable, Sequence

from jaxmir.errors import InputError


def check_labels(labels: Sequence[str], width: int) -> None:
    """Raise :class:`InputError` unless there is one label per output of a ``width``-output
    model, each free of control characters (labels are printed, and name columns)."""
    if len(labels) != width:
        raise InputError(f"{len(labels)} labels given for a model with {width} outputs")
    check_label_text(labels)


def check_label_text(labels: Iterable[str]) -> None:
    """Raise :class:`InputError` for a label holding a control character (a line break, an
    escape sequence that a terminal would obey)."""
    for label in labels:
        if any(unicodedata.category(char) == "Cc" for char in label):
            raise InputError(f"the label {label!r} holds a control character; labels are names "
                             "printed and used as column names")
