"""jaxmir: Essentia's TensorFlow music models (MusiCNN, VGG, VGGish) in JAX/Flax."""

from typing import TYPE_CHECKING

from jaxmir import lazy
from jaxmir.errors import (AudioError, DeviceMemoryError, GraphError, InputError, JaxmirError,
                           JaxmirWarning, NonFiniteOutputError, ShortAudioError,
                           UnsupportedGraphError, WeightsError)

if TYPE_CHECKING:
    from jaxmir import frontends
    from jaxmir.audio import load_audio
    from jaxmir.loading import load
    from jaxmir.model import Model

__all__ = ["load", "Model", "JaxmirError", "GraphError", "UnsupportedGraphError", "WeightsError",
           "InputError", "AudioError", "ShortAudioError", "DeviceMemoryError",
           "NonFiniteOutputError", "JaxmirWarning",
           "load_audio", "frontends"]
__version__ = "0.1.0"

# Loaded at first use, with JAX: `jaxmir --help` takes ~0.1 s instead of ~1, and a Ctrl-C in a
# command's first second meets the command line's handler, not an import.
__getattr__, __dir__ = lazy.attributes(
    __name__, {"load": "jaxmir.loading", "Model": "jaxmir.model", "load_audio": "jaxmir.audio"},
    [*__all__, "__version__"])
