"""Training heads on a backbone's embeddings (``jaxmir train-head``).

    from jaxmir.train import fit_head
    result = fit_head("DATA/", backbone="msd-musicnn", output="my_head", folds=5)

Needs optax (a core dependency; the ``[train]`` extra is kept, empty, for those who name it);
matplotlib for ``--plot`` (``[plot]``).
"""

from jaxmir import lazy

_EXPORTS = {"fit_head": "recipe", "TrainResult": "recipe", "TrainConfig": "fit",
            "Head": "fit", "train_head": "fit", "cross_validate": "fit", "TrainingError": "fit",
            "SmoothingConfig": "smoothing", "Dataset": "data", "load_dataset": "data"}
__all__ = sorted(_EXPORTS)

# lazy, so that ``jaxmir.train.cli`` can be imported (for the argument parser) without optax
__getattr__, __dir__ = lazy.attributes(
    __name__, {name: f"{__name__}.{module}" for name, module in _EXPORTS.items()}, __all__)
