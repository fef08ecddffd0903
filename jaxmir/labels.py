"""Labels: the names of a model's outputs, one per output, printed for people and used as a
table's column names."""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Sequence

from jaxmir.errors import InputError


def placeholder_labels(width: int) -> tuple[str, ...]:
    """The names of a ``width``-output model's outputs that no metadata names: ``class_0`` ..."""
    return tuple(f"class_{i}" for i in range(width))


def label_list(labels) -> list[str]:
    """``labels`` as a list of class names (Python strings); :class:`InputError` for text (each
    character would be a label), a set (its order is the hashes'), or anything that is no
    sequence of strings."""
    ordered = isinstance(labels, Iterable) and not isinstance(labels, (str, bytes, set, frozenset))
    if not ordered or getattr(labels, "ndim", 1) == 0:
        raise InputError(f"labels={str(labels)[:80]}: expected a list of class names, in the "
                         "model's output order")
    labels = list(labels)
    if not all(isinstance(label, str) for label in labels):
        raise InputError(f"labels={str(labels)[:80]}: expected a list of class names")
    return [str.__str__(label) for label in labels]  # NumPy's str_, a str Enum's value: a str


def check_labels(labels: Sequence[str], width: int) -> None:
    """Raise :class:`InputError` unless there is one label per output of a ``width``-output
    model, each free of control characters (labels are printed, and name columns)."""
    if len(labels) != width:
        raise InputError(f"{len(labels)} labels given for a model with {width} outputs")
    check_label_text(labels)


# Unicode's line and paragraph separators, its text-direction marks, overrides and isolates,
# and the invisible zero-width space and byte-order mark (not the joiners some scripts need)
_LAYOUT_CONTROLS = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                             "\u200e\u200f\u061c\u200b\ufeff")


_BYTE_RUNS = re.compile("[\udc80-\udcff]+")  # a name's bytes as Python's surrogateescape reads them


def read_as_utf8(text: str) -> str:
    """``text`` with each run of escaped bytes (``\\udc80``-``\\udcff``: what Python reads from a
    name's bytes that its locale's encoding cannot, ``m\\udcc3\\udcbasica`` under an ASCII one)
    read as UTF-8 where it is (``música``); bytes that are no UTF-8 stay escapes, and any other
    text as it was (:func:`check_label_text` refuses what is left)."""
    return _BYTE_RUNS.sub(lambda run: run.group().encode("utf-8", "surrogateescape").decode(
        "utf-8", "surrogateescape"), text)


def check_label_text(labels: Iterable[str]) -> None:
    """Raise :class:`InputError` for an empty label, or one holding a control character (a line
    break, an escape sequence a terminal would obey, a text-direction override)."""
    for label in labels:
        if not label.strip():
            raise InputError(f"a label is empty ({label!r}); labels are names printed and used as "
                             "column names")
        if any(unicodedata.category(char) == "Cc" or char in _LAYOUT_CONTROLS for char in label):
            raise InputError(f"the label {label!r} holds a control character (a line break, an "
                             "escape, a text-direction control); labels are names printed and "
                             "used as column names")
        if any(unicodedata.category(char) == "Cs" for char in label):  # Parquet's columns failed
            raise InputError(f"the label {label!r} holds bytes that are not UTF-8 text (a folder "
                             "name's, read under another encoding) or a lone surrogate; labels "
                             "are names printed and used as column names")
