"""A package's public names loaded at first use (PEP 562), so that importing it loads no JAX."""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence


def attributes(package: str, sources: Mapping[str, str], public: Sequence[str]
               ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: a name of ``sources`` comes from the module
    it maps to, any other from the submodule of that name (``jaxmir.decode``); ``dir()`` lists
    ``public``."""
    def load(name: str) -> object:
        if name.startswith("__") or "." in name:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if name in sources:
            value = getattr(importlib.import_module(sources[name]), name)
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        setattr(sys.modules[package], name, value)
        return value

    def names() -> list[str]:
        return sorted(public)

    return load, names
