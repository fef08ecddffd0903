"""Imports done at first use: a package's public names (PEP 562), so that importing it loads no
JAX, and optional dependencies, named with how to install them when they cannot be imported."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Callable, Mapping, Sequence

from jaxmir.errors import JaxmirError


def optional(name: str, needed_for: str, install: str,
             error: type[JaxmirError] = JaxmirError) -> ModuleType:
    """``import name`` (``"matplotlib"``, ``"ray.data"``), else ``error`` saying that
    ``needed_for`` needs it and ``install``: that it is not installed, or that it is but
    failed to import (one of its own dependencies missing, a build for another NumPy)."""
    parts = name.split(".")
    top = parts[0]
    failure: Exception
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:  # this module, or one of its own dependencies, missing
        if err.name in {".".join(parts[:k]) for k in range(1, len(parts) + 1)}:
            raise error(f"{needed_for} needs {err.name}, which is not installed; install it "
                        f"with: {install}") from None
        failure = err
    except Exception as err:  # noqa: BLE001 -- whatever a broken installation raises
        failure = err
    raise error(f"{needed_for} needs {top}, which is installed but failed to import "
                f"({type(failure).__name__}: {failure}); reinstall or upgrade it: "
                f"{install}") from None


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
