"""jaxmir: Essentia's TensorFlow music models (MusiCNN, VGG, VGGish) in JAX/Flax."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from jaxmir.errors import (AudioError, DeviceMemoryError, GraphError, InputError, JaxmirError,
                           JaxmirWarning, UnsupportedGraphError, WeightsError)

if TYPE_CHECKING:
    from jaxmir import frontends
    from jaxmir.audio import load_audio
    from jaxmir.loading import load
    from jaxmir.model import Model

__all__ = ["load", "Model", "JaxmirError", "GraphError", "UnsupportedGraphError", "WeightsError",
           "InputError", "AudioError", "DeviceMemoryError", "JaxmirWarning", "load_audio", "frontends"]
__version__ = "0.1.0"

# Loaded at first use (PEP 562), with JAX: `jaxmir --help` takes ~0.1 s instead of ~1, and a
# Ctrl-C in a command's first second meets the command line's handler, not an import.
_FROM_MODULES = {"load": "jaxmir.loading", "Model": "jaxmir.model", "load_audio": "jaxmir.audio"}


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _FROM_MODULES:
        value = getattr(importlib.import_module(_FROM_MODULES[name]), name)
    else:  # a submodule: jaxmir.frontends, jaxmir.decode, ...
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
