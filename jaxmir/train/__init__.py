"""Training heads on a backbone's embeddings (``jaxmir train-head``).

    from jaxmir.train import fit_head
    result = fit_head("DATA/", backbone="msd-musicnn", output="my_head", folds=5)

Needs optax (a core dependency; the ``[train]`` extra is kept, empty, for those who name it);
matplotlib for ``--plot`` (``[plot]``).
"""

from typing import TYPE_CHECKING

from jaxmir import lazy

if TYPE_CHECKING:
    from jaxmir.train.data import Dataset, load_dataset
    from jaxmir.train.fit import Head, TrainConfig, TrainingError, cross_validate, train_head
    from jaxmir.train.recipe import TrainResult, fit_head
    from jaxmir.train.smoothing import SmoothingConfig

_EXPORTS = {"fit_head": "recipe", "TrainResult": "recipe", "TrainConfig": "fit",
            "Head": "fit", "train_head": "fit", "cross_validate": "fit", "TrainingError": "fit",
            "SmoothingConfig": "smoothing", "Dataset": "data", "load_dataset": "data"}
__all__ = ["Dataset", "Head", "SmoothingConfig", "TrainConfig", "TrainResult", "TrainingError",
           "cross_validate", "fit_head", "load_dataset", "train_head"]

# lazy, so that ``jaxmir.train.cli`` can be imported (for the argument parser) without optax
__getattr__, __dir__ = lazy.attributes(
    __name__, {name: f"{__name__}.{module}" for name, module in _EXPORTS.items()}, __all__)
