"""``argparse`` types shared by the command lines (``jaxmir``, ``jaxmir train-head``)."""

from __future__ import annotations

import argparse
from typing import Callable


def whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """An ``argparse`` type: an integer from ``least`` to ``most`` (no bound when ``None``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {value}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"expected a whole number <= {most}, got {value}")
        return value

    return parse
