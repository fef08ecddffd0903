"""Training heads on a backbone's embeddings (``jaxmir train-head``).

    from jaxmir.train import fit_head
    result = fit_head("DATA/", backbone="msd-musicnn", output="my_head", folds=5)

Needs optax (the ``[train]`` extra); matplotlib for ``--plot`` (``[plot]``).
"""

import importlib

_EXPORTS = {"fit_head": "recipe", "TrainResult": "recipe", "TrainConfig": "fit",
            "Head": "fit", "train_head": "fit", "cross_validate": "fit", "TrainingError": "fit",
            "SmoothingConfig": "smoothing", "Dataset": "data", "load_dataset": "data"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazy, so that ``jaxmir.train.cli`` can be imported (for the argument parser) without optax
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jaxmir.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxmir.train' has no attribute '{name}'")
