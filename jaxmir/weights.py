"""Converted weights files: a NumPy ``.npz`` of arrays plus a JSON description, no pickles.

Layout: one array per variable under ``variables/<collection>/<path>`` and
``__jaxmir__``, the UTF-8 JSON of the spec (architecture, configuration,
front-end, output names), labels and provenance. Loading never enables pickle.
Version 1 files (before the front-end was recorded) are read too: their
front-end follows from the architecture.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from typing import Sequence

import jax
import numpy as np

from jaxmir.atomic import write_atomically
from jaxmir.errors import WeightsError
from jaxmir.frontends import FRONTENDS
from jaxmir.model import Model
from jaxmir.models import COMPOSED, variable_mismatches
from jaxmir.spec import Frontend, ModelSpec, config_from_json, config_to_json

WEIGHTS_SUFFIX = ".npz"
FORMAT = "jaxmir-weights"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_META_KEY = "__jaxmir__"
# Version 1 files did not record the front-end; it follows from the architecture.
_V1_FRONTENDS = {"musicnn": "musicnn", "vgg": "musicnn", "vggish": "vggish"}


def _as_float32(value) -> np.ndarray:
    return np.asarray(value, np.float32)


def _flatten(tree: dict, prefix: str, leaf=_as_float32) -> dict:
    """``{"a": {"b": x}}`` -> ``{"<prefix>/a/b": leaf(x)}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}/{key}", leaf))
        else:
            flat[f"{prefix}/{key}"] = leaf(value)
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        parts = key.split("/")[1:]  # drop "variables"
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def save_weights(model: Model, path: str | os.PathLike, provenance: dict | None = None) -> None:
    """Write ``model`` to ``path`` (``.npz``): variables, spec, labels, provenance.

    The file is written to a temporary name beside ``path`` and renamed, so a
    reader never sees half of it.
    """
    spec = model.spec
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "architecture": spec.architecture, "config": config_to_json(spec.architecture, spec.config),
        "frontend": None if spec.frontend is None else dataclasses.asdict(spec.frontend),
        "input_name": spec.input_name, "input_shape": list(spec.input_shape),
        "output_name": spec.output_name, "aliases": dict(spec.aliases),
        "node_map": {k: [tap, list(shape)] for k, (tap, shape) in spec.node_map.items()},
        "labels": list(model.labels), "provenance": provenance or {},
    }
    arrays = _flatten(jax.device_get(dict(model.variables)), "variables")
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    _write_npz(os.fspath(path), arrays)


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``, but byte-for-byte reproducible (sorted names, fixed timestamps) and atomic."""
    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(arrays):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, buffer.getvalue())

    write_atomically(path, write)


def _frontend(meta: dict, path: str) -> Frontend | None:
    if meta["version"] == 1:
        architecture = meta["architecture"]
        if architecture == COMPOSED:
            architecture = meta["config"]["backbone"]["architecture"]
        name = _V1_FRONTENDS.get(architecture)
        return None if name is None else FRONTENDS[name]
    stored = meta.get("frontend")
    if stored is None:
        return None
    try:
        frontend = Frontend(**stored)
    except TypeError as err:
        raise WeightsError(f"{path}: unreadable front-end description ({err})") from None
    if FRONTENDS.get(frontend.name) != frontend:
        raise WeightsError(f"{path}: front-end {stored} is not one jaxmir computes; known: "
                           + "; ".join(str(dataclasses.asdict(f)) for f in FRONTENDS.values()))
    return frontend


def load_weights(path: str | os.PathLike, labels: Sequence[str] | None = None,
                 trusted: bool = False) -> Model:
    """Read a weights file written by :func:`save_weights` into a :class:`Model`.

    Every variable's shape is checked against the model the file describes,
    unless ``trusted`` (a shipped file whose sha256 was just verified): the
    check traces the model, a noticeable part of a command-line start.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weights file; expected a .npz written by jaxmir "
                           "(tools/convert_musicnn.py) or a shipped model name")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise WeightsError(f"{path}: not a readable jaxmir weights file ({err}); expected a .npz "
                           "written by jaxmir") from None
    if _META_KEY not in arrays:
        raise WeightsError(f"{path}: a .npz without jaxmir's description ({_META_KEY}); "
                           "expected a file written by jaxmir.weights.save_weights")
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: the description is not valid JSON ({err})") from None
    if meta.get("format") != FORMAT or meta.get("version") not in _READABLE_VERSIONS:
        raise WeightsError(f"{path}: format {meta.get('format')} v{meta.get('version')}; this "
                           f"jaxmir reads {FORMAT} v{', v'.join(map(str, _READABLE_VERSIONS))}")
    try:
        architecture = meta["architecture"]
        spec = ModelSpec(architecture, config_from_json(architecture, meta["config"]),
                         _unflatten(arrays), meta["input_name"], tuple(meta["input_shape"]),
                         meta["output_name"], meta["aliases"],
                         {k: (tap, tuple(shape)) for k, (tap, shape) in meta["node_map"].items()},
                         _frontend(meta, path))
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{path}: incomplete description ({type(err).__name__}: {err})") from None
    if not trusted:
        problem = variable_mismatches(spec.architecture, spec.config, spec.input_shape,
                                      spec.variables)
        if problem is not None:
            raise WeightsError(f"{path}: {problem}")
    return Model.from_spec(spec, labels=labels if labels is not None else meta["labels"],
                           source=path, metadata={"provenance": meta.get("provenance", {})})
