"""jaxmir: Essentia's TensorFlow music models (MusiCNN, VGG, VGGish) in JAX/Flax."""

from jaxmir.errors import (AudioError, DeviceMemoryError, GraphError, InputError, JaxmirError,
                           JaxmirWarning, UnsupportedGraphError, WeightsError)
from jaxmir import frontends
from jaxmir.audio import load_audio
from jaxmir.loading import load
from jaxmir.model import Model

__all__ = ["load", "Model", "JaxmirError", "GraphError", "UnsupportedGraphError", "WeightsError",
           "InputError", "AudioError", "DeviceMemoryError", "JaxmirWarning", "load_audio", "frontends"]
__version__ = "0.1.0"
