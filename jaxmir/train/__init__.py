"""Training heads on a backbone's embeddings (``jaxmir train-head``).

    from jaxmir.train import fit_head
    result = fit_head("DATA/", backbone="msd-musicnn", output="my_head", folds=5)

Needs optax (the ``[train]`` extra); matplotlib for ``--plot`` (``[plot]``).
"""

from jaxmir.train.data import Dataset, load_dataset
from jaxmir.train.fit import Head, TrainConfig, TrainingError, cross_validate, train_head
from jaxmir.train.recipe import TrainResult, fit_head
from jaxmir.train.smoothing import SmoothingConfig

__all__ = ["fit_head", "TrainResult", "TrainConfig", "SmoothingConfig", "Dataset", "load_dataset",
           "Head", "train_head", "cross_validate", "TrainingError"]
