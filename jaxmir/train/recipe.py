"""``fit_head``: from labelled audio to an exported head, in one call.

dataset -> per-patch embeddings (cached) -> optional label smoothing ->
optional k-fold cross-validation -> a head trained on every track ->
``NAME.pb`` + ``NAME.json`` (Essentia) + ``NAME.npz`` (jaxmir).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from jaxmir.audio import check_reading
from jaxmir.audio_choices import reading_entry
from jaxmir.checks import is_real, is_whole
from jaxmir.compose import embedding_layer, embedding_width
from jaxmir.errors import InputError, JaxmirWarning
from jaxmir.labels import placeholder_labels
from jaxmir.model import Model
from jaxmir.spec import Activation, head_width
from jaxmir.train import export
from jaxmir.train.data import ACTIVATION, Dataset, check_classes, load_dataset
from jaxmir.train.embeddings import cache_key, cache_root, cached, extract_embeddings
from jaxmir.train.fit import (CrossValidation, Head, TrainConfig, check_folds, check_resumed,
                              cross_validate, steady_seconds, train_head)
from jaxmir.train.smoothing import (METHODS, SmoothingConfig, as_learnt, check_class_sizes,
                                    smoother)

DEFAULT_LAYER = "embeddings"  # each backbone's own: MusiCNN's model/dense/BiasAdd, VGGish's 128-d


@dataclasses.dataclass(repr=False)
class TrainResult:
    """What :func:`fit_head` produced."""

    head: Head
    dataset: Dataset
    failures: list[str]
    cross_validation: CrossValidation | None
    paths: dict[str, Path] | None
    seconds_per_epoch: float
    train_targets: np.ndarray | None = None  # [tracks, C] the head learnt: smoothed, with LDL
    smoothing: SmoothingConfig = SmoothingConfig()  # as the head's targets were smoothed
    resampler: str = "essentia"  # how the audio was read (jaxmir.load_audio)
    decoder: str = "essentia"

    def __repr__(self) -> str:
        written = [str(path) for path in (self.paths or {}).values()]
        return (f"TrainResult({self.head!r}, {self.dataset!r}, {len(self.failures)} file(s) "
                f"skipped, {self.cross_validation!r}, written {written})")


def mfcc_features(paths, kind: str, cache) -> tuple[list[np.ndarray | None], list[str]]:
    """S_A (``"summary"``) or S_B (``"pooled"``) MFCC features of each file, cached."""
    from jaxmir.audio import load_audio
    from jaxmir.train import mfcc

    def compute(path: str) -> np.ndarray:
        audio = mfcc.segment(load_audio(path, mfcc.SAMPLE_RATE), mfcc.SAMPLE_RATE)
        coefficients = np.asarray(mfcc.mfcc(audio, mfcc.SAMPLE_RATE))
        return mfcc.mfcc_summary(coefficients) if kind == "summary" else \
            mfcc.mfcc_pooled(coefficients)

    root = cache_root() if cache is True else (Path(cache) if cache else None)
    return cached(compute, paths, lambda p: cache_key("mfcc", kind, p, kind="mfcc"), root)


def resumed_head(source: str | os.PathLike, classes: tuple[str, ...], task: str) -> Model:
    """A head to resume from (``.pb`` or ``.npz``), refused when it has another number of outputs
    than ``classes``; a warning when it was trained for other ``classes`` (its outputs take the
    new ones in order) or with another output activation than ``task``'s."""
    from jaxmir.loading import load

    model = load(source)
    if model.architecture != "head":
        raise InputError(f"{source} is a {model.architecture} model, not an embedding head")
    n_outputs = head_width(model.spec.config["head"])
    if n_outputs != len(classes):
        raise InputError(f"the resumed head {source} has {n_outputs} outputs, the data "
                         f"{len(classes)} {'columns' if task == 'regression' else 'classes'}")
    # placeholders: no JSON named its classes
    if model.labels and tuple(model.labels) not in (tuple(classes), placeholder_labels(n_outputs)):
        warnings.warn(f"{source} was trained for the classes {list(model.labels)}; resumed for "
                      f"{list(classes)}, its outputs take these in this order",
                      JaxmirWarning, stacklevel=3)
    activation = output_activation(model)
    if activation != ACTIVATION[task]:
        warnings.warn(f"{source} has {activation} outputs; resumed for {task} data, whose head "
                      f"has {ACTIVATION[task]} outputs (its weights only the starting point)",
                      JaxmirWarning, stacklevel=3)
    return model


def output_activation(head: Model) -> str:
    """The activation after a head's last dense layer: ``softmax``, ``sigmoid`` or ``identity``."""
    last = head.spec.config["head"][-1]
    return last.name if isinstance(last, Activation) else "identity"


def warn_of_other_embeddings(head: Model, backbone: Model, layer: str) -> None:
    """Warn when a resumed ``head`` was trained on another layer of ``backbone`` than ``layer``
    (``penultimate`` and ``embeddings`` are both 200-d: only the width was checked), or on another
    backbone (:func:`jaxmir.loading.warn_of_another_backbone`)."""
    from jaxmir.loading import embedding_output, warn_of_another_backbone

    warn_of_another_backbone(head, backbone)
    trained = embedding_output(head)
    if trained is None:
        return
    try:
        same = backbone.resolve_output(trained)[0] == backbone.resolve_output(layer)[0]
    except InputError:  # the backbone has no such output: another backbone, warned above
        return
    if not same:
        warnings.warn(f"{head.name} was trained on the backbone's '{trained}' (its metadata's "
                      f"embedding_model.output); resumed on '{layer}', other embeddings",
                      JaxmirWarning, stacklevel=3)


def check_options(folds: int, smoothing: SmoothingConfig) -> None:
    """Refuse bad folds and smoothing settings before any audio is decoded."""
    if not (is_whole(folds, 2) or is_whole(folds, 0, 0)):
        raise InputError(f"folds = {folds!r}; expected 0 (no cross-validation) or 2 or more")
    if smoothing.method not in METHODS:
        raise InputError(f"unknown label smoothing {smoothing.method!r}; expected one of "
                         f"{', '.join(METHODS)}")
    if smoothing.method == "none":
        return
    counts = {"k": smoothing.k}
    if smoothing.method == "lmnn":
        counts.update(lmnn_k=smoothing.lmnn_k, lmnn_components=smoothing.lmnn_components,
                      lmnn_max_iter=smoothing.lmnn_max_iter)
    for name, value in counts.items():
        if not is_whole(value, 1):
            raise InputError(f"label smoothing {name} = {value!r}; expected a whole number >= 1")
    push = smoothing.lmnn_push
    if smoothing.method == "lmnn" and not (is_real(push) and 0 <= push <= 1):
        # LMNN's objective weighs its pull by 1 - push: beyond [0, 1] it inverts (or NaN); a
        # bool is no weight (True passed as 1, and the head's JSON recorded "lmnn_push": true)
        raise InputError(f"label smoothing lmnn_push = {push!r}; expected a weight in [0, 1]")


def fit_head(data: str | os.PathLike | Dataset, backbone: str | os.PathLike = "msd-musicnn",
             layer: str = DEFAULT_LAYER, output: str | os.PathLike | None = None, *,
             folds: int = 0, config: TrainConfig = TrainConfig(),
             smoothing: SmoothingConfig = SmoothingConfig(),
             cache: bool | str | os.PathLike = True,
             resampler: str = "essentia", decoder: str = "essentia",
             resume: str | os.PathLike | None = None, overwrite: bool = False,
             log: Callable[[str], None] | None = None, progress: bool = False,
             with_head: Callable[[CrossValidation | None, tuple[str, ...]], dict[Path, Path]]
             | None = None
             ) -> TrainResult:
    """Train (and cross-validate, and export) a head on a backbone's embeddings.

    Args:
      data: a class-folder tree, a ``path,label`` CSV/Parquet, or a :class:`Dataset`.
      backbone: a shipped model name or a path (``.pb``/``.npz``).
      layer: the backbone output whose per-patch values are the features.
      output: ``NAME`` to write ``NAME.pb``, ``NAME.json`` and ``NAME.npz``; ``None`` writes
      nothing.
      folds: k-fold cross-validation first when >= 2.
      config: training hyper-parameters (MTG's by default).
      smoothing: label distribution learning (single-label data only).
      cache: embedding cache folder, ``True`` for the default, ``False`` for none.
      resampler, decoder: how the audio is read for the backbone (:func:`jaxmir.load_audio`),
        as the head will be deployed: ``resampler="essentia-q4"`` is
        ``MonoLoader(resampleQuality=4)``, as Essentia's model pages load audio.
      resume: a head (``.pb``/``.npz``) to start from.
      overwrite: replace existing output files.
      log: called with a line per cross-validation fold (``log=print``); the final head's
        training says nothing (:func:`~jaxmir.train.fit.train_head` logs each epoch).
      progress: a progress bar while the embeddings are extracted.
      with_head: called with the cross-validation and the classes before the export; returns
        files it wrote that land with the head's (``{written: where it goes}``: a confusion
        picture).
    """
    from jaxmir.loading import load, warn_of_another_reading

    check_options(folds, smoothing)
    check_reading(resampler, decoder)
    outputs = export.output_paths(output) if output is not None else {}
    if not overwrite:
        export.refuse_existing(outputs.values(), "train-head --overwrite, fit_head(overwrite=True)")
    if output is not None:
        export.check_output_folder(output)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)  # which checks it
    where = str(data) if not isinstance(data, Dataset) else "the dataset"
    if smoothing.method != "none" and dataset.task != "single":
        raise InputError(f"label smoothing ({smoothing.method}) applies to single-label data; "
                         f"{where} is {dataset.task}")
    check_class_sizes(dataset.targets, dataset.classes, smoothing, folds)
    if folds:
        check_folds(dataset.targets, dataset.task, dataset.classes, folds)
    resumed = resumed_head(resume, dataset.classes, dataset.task) if resume is not None else None
    model = load(backbone)
    if model.architecture == "head":
        raise InputError(f"{backbone} is an embedding head; the backbone is a model that takes "
                         "audio, such as msd-musicnn")
    if model.frontend is None:  # each file would fail alike, one warning each
        raise InputError(f"{backbone} takes {list(model.input_shape)} inputs, not the log-mel "
                         "patches of a front-end jaxmir computes from audio; the backbone is a "
                         "model that takes audio, such as msd-musicnn")
    keep = embedding_layer(model, layer)  # a layer no head can join fails here, before decoding
    initial = None
    if resumed is not None:
        warn_of_other_embeddings(resumed, model, layer)
        warn_of_another_reading(resumed, resampler, decoder)
        initial = check_resumed(export.params_from_model(resumed),
                                embedding_width(model, keep), len(dataset.classes))
    tracks, failures = extract_embeddings(model, str(backbone), dataset.paths, layer, cache,
                                          progress, resampler=resampler, decoder=decoder)
    features = None
    if smoothing.method != "none":
        kind = "summary" if smoothing.method == "knn" else "pooled"
        usable = [i for i, t in enumerate(tracks) if t is not None]  # the others: skipped once
        found, mfcc_failures = mfcc_features([dataset.paths[i] for i in usable], kind, cache)
        features = [None] * len(tracks)
        for i, value in zip(usable, found):
            features[i] = value
        tracks = [t if f is not None else None for t, f in zip(tracks, features)]
        failures += mfcc_failures
    keep = [i for i, t in enumerate(tracks) if t is not None]
    if failures:
        warnings.warn(f"{len(failures)} of {len(dataset)} file(s) skipped (could not be used)",
                      JaxmirWarning, stacklevel=2)
    if not keep:
        raise InputError(f"{where}: none of the {len(dataset)} files could be used")
    dataset = dataset.subset(keep)
    tracks = [tracks[i] for i in keep]
    if failures or isinstance(data, Dataset):  # load_dataset checked (and warned) as it read
        check_classes(dataset, f"{where} (after skipping {len(failures)} file(s))"
                      if failures else where)
    check_class_sizes(dataset.targets, dataset.classes, smoothing, folds)
    smooth = None
    if features is not None:
        features = np.stack([features[i] for i in keep])
        smooth = smoother(features, dataset.targets, smoothing)
        smoothing = as_learnt(smoothing, features.shape)  # the final head's, for its JSON

    validation = None
    if folds:
        validation = cross_validate(tracks, dataset.targets, dataset.task, dataset.classes, folds,
                                    config, smooth, log)
    train_targets = dataset.targets if smooth is None else smooth(np.arange(len(dataset)))
    head = train_head(tracks, train_targets, dataset.task, dataset.classes, config,
                      initial=initial, log=None, labels=np.argmax(dataset.targets, axis=1)
                      if dataset.task == "single" else None)
    epoch_seconds = steady_seconds(head.history)
    paths = None
    if output is not None:
        also = with_head(validation, dataset.classes) if with_head is not None else None
        paths = export.export_head(head.params, head.activation, dataset.classes, output,
                                   str(backbone), model.input_shape,
                                   model.node_name(layer) or layer,
                                   dataset_entry(where, dataset, validation, folds, smoothing,
                                                 resampler, decoder),
                                   overwrite, also=also)
    return TrainResult(head, dataset, failures, validation, paths,
                       float(np.median(epoch_seconds)) if epoch_seconds else float("nan"),
                       train_targets, smoothing, resampler, decoder)


def dataset_entry(where: str, dataset: Dataset, validation: CrossValidation | None,
                  folds: int, smoothing: SmoothingConfig = SmoothingConfig(),
                  resampler: str = "essentia", decoder: str = "essentia") -> dict:
    """The JSON's ``dataset``: name, size, how the audio was read for the backbone (the
    head is to be deployed on embeddings of audio read so), the cross-validation figures if
    any, and the label smoothing the head learnt with (its targets, not the dataset's labels)."""
    entry = {"name": Path(where).name or where, "size": f"{len(dataset)} tracks",
             "audio": reading_entry(resampler, decoder)}
    if smoothing.method != "none":
        entry["label_smoothing"] = {"method": smoothing.method, "k": smoothing.k}
        if smoothing.method == "lmnn":
            entry["label_smoothing"].update(
                lmnn_k=smoothing.lmnn_k, lmnn_components=smoothing.lmnn_components,
                lmnn_push=smoothing.lmnn_push, lmnn_max_iter=smoothing.lmnn_max_iter)
    if dataset.task != "regression":
        entry["size"] += ", " + "/".join(map(str, dataset.tracks_per_class())) + " per class"
    if validation is not None:
        # null where every fold left it undefined: JSON has no NaN (strict parsers refuse it)
        entry["metrics"] = {f"{folds}-fold_cross_validation_{name}":
                            round(mean, 4) if np.isfinite(mean) else None
                            for name, (mean, _) in validation.summary.items()}
    return entry
