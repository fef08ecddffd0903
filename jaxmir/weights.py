"""Converted weights files: a NumPy ``.npz`` of arrays plus a JSON description, no pickles.

Layout: one array per variable under ``variables/<collection>/<path>`` and
``__jaxmir__``, the UTF-8 JSON of the architecture, configuration, labels,
output names and provenance. Loading never enables pickle.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.errors import WeightsError
from jaxmir.spec import ModelSpec
from jaxmir.model import Model, build_module

WEIGHTS_SUFFIX = ".npz"
FORMAT = "jaxmir-weights"
FORMAT_VERSION = 1
_META_KEY = "__jaxmir__"


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
    """Write ``model`` to ``path`` (``.npz``): variables, configuration, labels, provenance."""
    spec = model.spec
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "architecture": spec.architecture, "config": spec.config,
        "input_name": spec.input_name, "input_shape": list(spec.input_shape),
        "output_name": spec.output_name, "aliases": spec.aliases,
        "node_map": {k: [tap, list(shape)] for k, (tap, shape) in spec.node_map.items()},
        "labels": list(model.labels), "provenance": provenance or {},
    }
    arrays = _flatten(jax.device_get(model.variables), "variables")
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    _write_npz(path, arrays)


def _write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``, but byte-for-byte reproducible (sorted names, fixed timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


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
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise WeightsError(f"{path}: format {meta.get('format')} v{meta.get('version')}; this "
                           f"jaxmir reads {FORMAT} v{FORMAT_VERSION}")
    spec = ModelSpec(meta["architecture"], meta["config"], _unflatten(arrays), meta["input_name"],
                     tuple(meta["input_shape"]), meta["output_name"], meta["aliases"],
                     {k: (tap, tuple(shape)) for k, (tap, shape) in meta["node_map"].items()})
    if not trusted:
        _check_shapes(spec, path)
    return Model(spec, labels=labels if labels is not None else meta["labels"], source=path,
                 metadata={"provenance": meta.get("provenance", {})})


def _check_shapes(spec: ModelSpec, path: str) -> None:
    """Compare the stored variables with what the module expects, without allocating them."""
    module = build_module(spec.architecture, spec.config)
    dummy = jax.ShapeDtypeStruct((1,) + tuple(spec.input_shape), jnp.float32)
    expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy)
    expected = {k: v for k, v in expected.items() if k in ("params", "batch_stats")}
    want = _flatten(expected, "variables", leaf=lambda v: tuple(v.shape))
    have = _flatten(spec.variables, "variables", leaf=np.shape)
    if want != have:
        missing = sorted(set(want) - set(have))[:3]
        extra = sorted(set(have) - set(want))[:3]
        wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:3]
        raise WeightsError(f"{path}: variables do not fit the {spec.architecture} model they "
                           f"describe (missing {missing}, unexpected {extra}, wrong shape "
                           f"{[(k, have[k], want[k]) for k in wrong]})")

