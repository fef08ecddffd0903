"""Converted weights files: a NumPy ``.npz`` of arrays plus a JSON description, no pickles.

Layout: one array per variable under ``variables/<collection>/<path>`` and
``__jaxmir__``, the UTF-8 JSON of the spec (architecture, configuration,
front-end, output names), labels and provenance. Loading never enables pickle.
Version 1 files (before the front-end was recorded) are read too: their
front-end follows from the architecture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import zipfile
import zlib
from typing import Callable, Sequence

import jax
import numpy as np

from jaxmir.atomic import LINK_LOOP, is_link_loop, write_atomically
from jaxmir.errors import InputError, JaxmirError, WeightsError
from jaxmir.frontends import FRONTENDS
from jaxmir.labels import check_labels, read_as_utf8
from jaxmir.model import Model
from jaxmir.models import (COMPOSED, damaged_variable, leaves, variable_mismatches,
                           variance_below_epsilon)
from jaxmir.spec import Frontend, ModelSpec, config_from_json, config_to_json

WEIGHTS_SUFFIX = ".npz"
FORMAT = "jaxmir-weights"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_META_KEY = "__jaxmir__"
_VARIABLES = "variables"
MAX_BYTES = 2 << 30  # of a weights file's arrays: VGGish's 72 M float32 variables take 290 MB
MAX_DESCRIPTION_BYTES = 16 << 20  # a shipped model's description takes 3-4 KB
# Version 1 files did not record the front-end; it follows from the architecture.
_V1_FRONTENDS = {"musicnn": "musicnn", "vgg": "musicnn", "vggish": "vggish"}


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
    arrays = {path: np.asarray(value, np.float32)
              for path, value in leaves(jax.device_get(dict(model.variables)),
                                        f"{_VARIABLES}/").items()}
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    _write_npz(os.fspath(path), arrays)


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``, but byte-for-byte reproducible (sorted names, fixed timestamps) and
    atomic."""
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

    Every variable's shape is checked against the model the file describes, from the
    arrays' headers before their data is read (a small file may declare gigabytes), and
    their values for damage, unless ``trusted`` (a shipped file whose sha256 was just
    verified): the check traces the model, a noticeable part of a command-line start.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = ("is a directory" if os.path.isdir(path) else
                "is not a regular file (a pipe, a device or a socket)" if os.path.exists(path)
                else LINK_LOOP if is_link_loop(path) else "no such weights file")
        raise WeightsError(f"{path}: {what}; expected a .npz written by jaxmir "
                           "(tools/convert_musicnn.py) or a shipped model name")

    epsilons: dict[str, float] = {}  # each batch norm's, read while the shapes are checked

    def check_declared(meta: dict, declared: dict[str, jax.ShapeDtypeStruct]) -> None:
        with _named_errors(path, labels):
            spec = _spec(meta, _unflatten(declared), path)
            _check_shapes(spec, path, epsilons)
            check_labels(labels if labels is not None else _labels(meta), spec.output_width)

    meta, arrays = _read_arrays(path, None if trusted else check_declared)
    with _named_errors(path, labels):
        spec = _spec(meta, _unflatten(arrays), path)
        damaged = None if trusted else (damaged_variable(spec.variables)
                                        or variance_below_epsilon(spec.variables, epsilons))
        if damaged is not None:
            raise WeightsError(f"{path}: '{_VARIABLES}/{damaged[0]}' holds {damaged[1]}")
        return Model.from_spec(spec, labels=labels if labels is not None else _labels(meta),
                               source=path, metadata={"provenance": meta.get("provenance", {})})


@contextlib.contextmanager
def _named_errors(path: str, labels: Sequence[str] | None):
    """Errors from what a file's description holds, as errors that name the file
    (:class:`WeightsError` where Python's own): a file jaxmir did not write may hold anything
    where the description has its fields."""
    try:
        yield
    except JaxmirError as err:
        if str(err).startswith(path) or (labels is not None and isinstance(err, InputError)):
            raise  # named already, or the caller's own labels
        kind = WeightsError if isinstance(err, InputError) else type(err)  # the file's labels
        raise kind(f"{path}: {err}") from None  # or architecture, say
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise WeightsError(f"{path}: incomplete description "
                           f"({type(err).__name__}: {err})") from None


def _description(path: str, data: np.ndarray) -> dict:
    """The file's JSON description, of a format and version this jaxmir reads."""
    try:
        meta = json.loads(data.tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: bad JSON, or
        # huge ints
        raise WeightsError(f"{path}: the description is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: the description is a JSON {type(meta).__name__}; expected "
                           "an object")
    if meta.get("format") != FORMAT or meta.get("version") not in _READABLE_VERSIONS:
        raise WeightsError(f"{path}: format {meta.get('format')} v{meta.get('version')}; this "
                           f"jaxmir reads {FORMAT} v{', v'.join(map(str, _READABLE_VERSIONS))}")
    return meta


def _read_arrays(path: str, check: Callable[[dict, dict], None] | None = None
                 ) -> tuple[dict, dict[str, np.ndarray]]:
    """The description and the variables' arrays of a weights file, each array checked from its
    header before it is read: float32 variables (the description as at most
    :data:`MAX_DESCRIPTION_BYTES` bytes), no more than the file holds, :data:`MAX_BYTES` in all.
    ``check(description, declared)``, where ``declared`` maps each variable's name to its shape
    (:class:`jax.ShapeDtypeStruct`), runs before any variable's data is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _variable_members(path, archive)
            info = archive.getinfo(_META_KEY + ".npy")
            if info.file_size > MAX_DESCRIPTION_BYTES:
                raise WeightsError(f"{path}: its description takes {info.file_size} bytes, more "
                                   f"than the {MAX_DESCRIPTION_BYTES} jaxmir reads")
            with archive.open(info) as handle:
                meta = _description(path, _read_array(path, _META_KEY, handle, info.file_size))
            if check is not None:
                declared = {}
                for member in members:
                    with archive.open(member) as handle:
                        shape, _, _ = _header(path, _name(member), handle, member.file_size)
                    declared[_name(member)] = jax.ShapeDtypeStruct(shape, np.float32)
                check(meta, declared)
            arrays = {}
            for member in members:
                with archive.open(member) as handle:
                    arrays[_name(member)] = _read_array(path, _name(member), handle,
                                                        member.file_size)
    except JaxmirError:
        raise  # ``check``'s, or the file's (an InputError is a ValueError)
    # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile lacks
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, RuntimeError,
            NotImplementedError) as err:
        raise WeightsError(f"{path}: not a readable jaxmir weights file ({err}); expected a .npz "
                           "written by jaxmir") from None
    return meta, arrays


def _name(member: zipfile.ZipInfo) -> str:
    return member.filename.removesuffix(".npy")


def _variable_members(path: str, archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's variables, after checking that it holds jaxmir's description, nothing
    else, and no more than :data:`MAX_BYTES`."""
    members = archive.infolist()
    total = sum(member.file_size for member in members)
    if total > MAX_BYTES:
        raise WeightsError(f"{path}: holds {total} bytes of arrays, more than the "
                           f"{MAX_BYTES} jaxmir reads from a weights file")
    if _META_KEY + ".npy" not in {member.filename for member in members}:
        raise WeightsError(f"{path}: a .npz without jaxmir's description ({_META_KEY}); "
                           "expected a file written by jaxmir.weights.save_weights")
    for member in members:
        name = _name(member)
        if not member.filename.endswith(".npy") or not (
                name == _META_KEY or name.startswith(_VARIABLES + "/")):
            raise WeightsError(f"{path}: holds '{member.filename}', which is no part of a "
                               f"jaxmir weights file ({_META_KEY}, {_VARIABLES}/...)")
    return [member for member in members if _name(member) != _META_KEY]


def _header(path: str, name: str, handle, size: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of an ``.npy`` entry from its header: the dtype jaxmir
    writes, and no more bytes than ``size`` (a 1.7-KB file may declare 64 GB)."""
    major, _ = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 \
        else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(handle)
    want = np.dtype(np.uint8) if name == _META_KEY else np.dtype(np.float32)
    if dtype != want:
        raise WeightsError(f"{path}: '{name}' holds {dtype} values; jaxmir writes {want}")
    if math.prod(shape) * dtype.itemsize > size:
        raise WeightsError(f"{path}: '{name}' declares a {list(shape)} array, more than its "
                           f"{size} bytes hold; the file is corrupt")
    return shape, fortran_order, dtype


def _read_array(path: str, name: str, handle, size: int) -> np.ndarray:
    """An ``.npy`` entry of at most ``size`` bytes, its header checked before its data is read
    (:func:`_header`)."""
    shape, fortran_order, dtype = _header(path, name, handle, size)
    nbytes = math.prod(shape) * dtype.itemsize
    data = bytearray(nbytes)  # writable, as np.load's arrays are
    if _read_into(handle, memoryview(data)) != nbytes:
        raise WeightsError(f"{path}: '{name}' ends before the {list(shape)} array it declares; "
                           "the file is corrupt")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C")


def _read_into(handle, buffer: memoryview, chunk: int = 1 << 22) -> int:
    """Fill ``buffer`` from ``handle`` in chunks of ``chunk`` bytes: a zip member's ``readinto``
    reads the whole of it into a new object first, then copies (3x a 1.5-GB array's memory)."""
    done = 0
    while done < len(buffer):
        read = handle.readinto(buffer[done:done + chunk])
        if not read:
            break
        done += read
    return done


def _spec(meta: dict, variables: dict, path: str) -> ModelSpec:
    """The spec a description gives, with ``variables`` (arrays, or their shapes)."""
    architecture = meta["architecture"]
    input_shape = tuple(meta["input_shape"])
    if not all(type(size) is int and size > 0 for size in input_shape):
        raise ValueError(f"input_shape {str(meta['input_shape'])[:80]} is not a list of sizes")
    for key in ("input_name", "output_name"):
        if not isinstance(meta[key], str):
            raise TypeError(f"{key} is {str(meta[key])[:80]}; expected a graph node's name")
    return ModelSpec(architecture, config_from_json(architecture, meta["config"]), variables,
                     meta["input_name"], input_shape, meta["output_name"],
                     dict(meta["aliases"]),
                     {k: (tap, tuple(shape)) for k, (tap, shape) in meta["node_map"].items()},
                     _frontend(meta, path))


def _check_shapes(spec: ModelSpec, path: str, epsilons: dict[str, float] | None = None) -> None:
    """Variables (or their shapes) that fit the model; outputs that name what it computes.
    ``epsilons``: filled with the batch norms' (:func:`~jaxmir.models.variable_mismatches`)."""
    frontend = spec.frontend
    if frontend is not None and spec.input_shape != (frontend.patch_size, frontend.n_bands):
        raise WeightsError(f"{path}: input_shape {list(spec.input_shape)} does not fit the "
                           f"{frontend.name} front-end's patches of {frontend.patch_size} frames "
                           f"of {frontend.n_bands} bands")
    if not isinstance(spec.aliases.get("predictions"), str):  # every run reads it
        raise WeightsError(f"{path}: its description gives no 'predictions' output (its "
                           "'aliases'); expected the tap of the model's output")
    taps = [*spec.aliases.values(), *(tap for tap, _ in spec.node_map.values())]
    problem = variable_mismatches(spec.architecture, spec.config, spec.input_shape,
                                  spec.variables, taps, spec.node_map.values(), epsilons)
    if problem is not None:
        raise WeightsError(f"{path}: {problem}")


def _labels(meta: dict) -> list[str]:
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise TypeError(f"labels are {str(labels)[:80]}; expected a list of names")
    return [read_as_utf8(label) for label in labels]  # a head exported under an ASCII locale
