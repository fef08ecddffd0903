"""Write a trained head as Essentia writes its heads: a frozen ``.pb``, its ``.json``, and jaxmir
weights.

The graph (built with jaxmir's own protobuf message classes, no TensorFlow)::

    model/Placeholder [batch, d] -> model/dense/MatMul -> model/dense/BiasAdd [batch, 100]
      -> model/dense/Relu -> model/dense_1/MatMul -> model/dense_1/BiasAdd [batch, C]
      -> model/Softmax | model/Sigmoid | model/Identity

Essentia runs it with ``TensorflowPredict2D(graphFilename=NAME.pb,
input="model/Placeholder", output="model/Softmax")`` on the backbone's
embeddings; ``jaxmir.load("NAME.pb")`` reads it back with the JSON's classes.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from jaxmir import catalog
from jaxmir.atomic import deferred_interrupts, new_file_mode, through_link, unwritable
from jaxmir.errors import InputError, OptionError
from jaxmir.tfgraph.graphdef import GraphDefProto, TensorProto

DT_FLOAT = 1
GRAPH_PRODUCER = 27  # a TensorFlow 1.x producer version: every consumer since reads it
INPUT_NODE = "model/Placeholder"
EMBEDDING_NODE = "model/dense/BiasAdd"
OUTPUT_NODE = {"softmax": "model/Softmax", "sigmoid": "model/Sigmoid", "identity": "model/Identity"}
_OP = {"softmax": "Softmax", "sigmoid": "Sigmoid", "identity": "Identity"}
# Essentia's own words: mood_happy's "multi-class classifier", emomusic's "regression model"
MODEL_TYPE = {"softmax": "multi-class classifier", "sigmoid": "multi-label classifier",
              "identity": "regression model"}
SUFFIXES = (".pb", ".json", ".npz")


def _tensor(array: np.ndarray) -> "TensorProto":
    array = np.ascontiguousarray(array, dtype="<f4")
    tensor = TensorProto(dtype=DT_FLOAT, tensor_content=array.tobytes())
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def _node(graph, name: str, op: str, inputs: Sequence[str] = (), **attrs):
    node = graph.node.add(name=name, op=op)
    node.input.extend(inputs)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _attr(**kwargs):
    value = GraphDefProto().node.add().attr["x"]  # a fresh AttrValue of jaxmir's message class
    for key, item in kwargs.items():
        if key == "tensor":
            value.tensor.CopyFrom(item)
        elif key == "shape":
            for size in item:
                value.shape.dim.add(size=size)
        else:
            setattr(value, key, item)
    return value


def head_graph(params: dict, activation: str) -> "GraphDefProto":
    """The frozen GraphDef of a ``dense -> ReLU -> dense -> activation`` head.

    Args:
      params: ``{"dense": {"kernel": [d, h], "bias": [h]}, "dense_1": {...: [h, C], [C]}}``.
      activation: ``"softmax"``, ``"sigmoid"`` or ``"identity"``.
    """
    if activation not in OUTPUT_NODE:
        raise InputError(f"unknown activation '{activation}'; expected one of {list(OUTPUT_NODE)}")
    graph = GraphDefProto()
    graph.versions.producer = GRAPH_PRODUCER
    f32 = _attr(type=DT_FLOAT)
    in_dim = int(np.shape(params["dense"]["kernel"])[0])
    _node(graph, INPUT_NODE, "Placeholder", dtype=f32, shape=_attr(shape=(-1, in_dim)))
    previous = INPUT_NODE
    for layer in ("dense", "dense_1"):
        for variable in ("kernel", "bias"):
            _node(graph, f"model/{layer}/{variable}", "Const", dtype=f32,
                  value=_attr(tensor=_tensor(np.asarray(params[layer][variable]))))
        _node(graph, f"model/{layer}/MatMul", "MatMul", [previous, f"model/{layer}/kernel"], T=f32,
              transpose_a=_attr(b=False), transpose_b=_attr(b=False))
        _node(graph, f"model/{layer}/BiasAdd", "BiasAdd",
              [f"model/{layer}/MatMul", f"model/{layer}/bias"], T=f32,
              data_format=_attr(s=b"NHWC"))
        previous = f"model/{layer}/BiasAdd"
        if layer == "dense":
            _node(graph, "model/dense/Relu", "Relu", [previous], T=f32)
            previous = "model/dense/Relu"
    _node(graph, OUTPUT_NODE[activation], _OP[activation], [previous], T=f32)
    return graph


def embedding_model_entry(backbone: str, input_shape: Sequence[int], layer: str,
                          backbone_file: str | os.PathLike | None = None) -> dict:
    """Essentia's ``inference.embedding_model``: ``msd-musicnn`` -> ``msd-musicnn-1``. A backbone
    file's entry also holds the ``sha256`` of its bytes (read from ``backbone_file``, where they
    are before the export moves them to ``backbone``): a head is tied to those weights, not to
    whatever file takes the name later (Essentia reads only the keys it knows)."""
    algorithm = ("TensorflowPredictVGGish" if tuple(input_shape) == (96, 64)
                 else "TensorflowPredictMusiCNN")
    if backbone in catalog.names():  # Essentia's file names for jaxmir's shipped models
        return {"algorithm": algorithm, "model_name": f"{backbone}-1", "output": layer}
    entry = {"algorithm": algorithm, "model_name": Path(backbone).stem, "output": layer}
    if os.path.isfile(backbone_file or backbone):  # else a name only (a head exported by hand)
        entry["sha256"] = catalog.sha256(backbone_file or backbone)
    return entry


def metadata(name: str, classes: Sequence[str], activation: str, in_dim: int, hidden: int,
             embedding_model: dict, dataset: dict | None = None) -> dict:
    """Essentia's model JSON for a head."""
    from jaxmir import __version__

    outputs = [{"name": OUTPUT_NODE[activation], "type": "float", "shape": [len(classes)],
                "op": _OP[activation], "output_purpose": "predictions"},
               {"name": EMBEDDING_NODE, "type": "float", "shape": [hidden],
                "op": "fully connected", "description": "penultimate layer",
                "output_purpose": ""}]
    # Essentia's keys, in its order; those only a person can fill in are left empty
    return {"name": name, "type": MODEL_TYPE[activation], "link": "", "version": "1",
            "description": f"a head trained with jaxmir {__version__} on "
                           f"{embedding_model['model_name']} embeddings",
            "author": "", "email": "", "release_date": datetime.date.today().isoformat(),
            "framework": "tensorflow", "framework_version": "1.15.0",
            "programming_env": {"language": "python", "version": platform.python_version(),
                                "others": f"GraphDef written by jaxmir {__version__}, "
                                          "without TensorFlow"},
            "classes": list(classes), "model_types": ["frozen_model"],
            "dataset": dataset or {},
            "schema": {"inputs": [{"name": INPUT_NODE, "type": "float", "shape": [in_dim]}],
                       "outputs": outputs},
            "citation": "",
            "inference": {"sample_rate": 16000, "algorithm": "TensorflowPredict2D",
                          "embedding_model": embedding_model}}


def output_paths(output: str | os.PathLike) -> dict[str, Path]:
    """``NAME`` (or ``NAME.pb``) -> ``{".pb": NAME.pb, ".json": NAME.json, ".npz": NAME.npz}``;
    an output that names a folder (``""``, ``.``, ``..``, ``/``, ``heads/``) raises."""
    text = os.fspath(output)
    output = Path(text)
    if not text or text.endswith(("/", os.sep)) or output.name in ("", ".", ".."):
        raise OptionError(f"--output {text!r} names a folder; give the head's name, such as "
                          f"{os.path.join(text, 'my_head') if text else 'my_head'} (it writes "
                          "my_head.pb, my_head.json and my_head.npz)")  # by its name: exit 2
    if output.suffix.lower() in SUFFIXES:  # heads/C.PB: C.pb, not C.PB.pb
        output = output.with_suffix("")
    return {suffix: output.with_name(output.name + suffix) for suffix in SUFFIXES}


def beside(output: str | os.PathLike, ending: str) -> Path:
    """``NAME<ending>`` for an ``--output`` of ``NAME`` or ``NAME.pb``: a file written beside the
    head (``-backbone.npz``, ``-confusion.png``)."""
    stem = output_paths(output)[".pb"].with_suffix("")
    return stem.with_name(stem.name + ending)


def refuse_existing(paths, flag: str = "--overwrite") -> None:
    """Raise :class:`InputError` naming those of ``paths`` that exist (nothing is overwritten
    without ``flag``; a link counts, even to no file)."""
    taken = [str(p) for p in paths if os.path.lexists(p)]
    if taken:
        names = ", ".join(taken[:-1]) + f" and {taken[-1]} already exist" if len(taken) > 1 \
            else f"{taken[0]} already exists"
        them = "them" if len(taken) > 1 else "it"
        raise InputError(f"{names}; choose another --output or overwrite {them} ({flag})")


def refuse_folders(paths) -> None:
    """Raise :class:`InputError` naming those of ``paths`` that are folders (``--overwrite``
    replaces files, not folders), or links that lead into no folder that can be written: before
    any training, not at the export after it."""
    folders = [str(p) for p in paths if os.path.isdir(p)]
    if folders:
        verb = "is a folder" if len(folders) == 1 else "are folders"
        raise InputError(f"{', '.join(folders)} {verb}; give the head another --output name")
    for path in map(Path, paths):
        if path.is_symlink():
            target = through_link(path)
            reason = "no such folder" if not target.parent.is_dir() else unwritable(target.parent)
            if reason is not None:
                raise InputError(f"{path} leads to {target}, which cannot be written ({reason})")


def check_output_folder(output: str | os.PathLike) -> None:
    """Raise :class:`InputError` now, before any training, when the head's folder (or, while it
    does not exist, the nearest folder above it, where it would be made) cannot be written."""
    folder = output_paths(output)[".pb"].parent.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"cannot write the head in {folder}: {existing} is a file")
    reason = unwritable(existing)
    if reason is not None:
        raise InputError(f"cannot write the head in {folder}: {reason}")


def export_head(params: dict, activation: str, classes: Sequence[str], output: str | os.PathLike,
                backbone: str, backbone_input_shape: Sequence[int], layer: str,
                dataset: dict | None = None, overwrite: bool = False,
                also: Mapping[Path, Path] | None = None) -> dict[str, Path]:
    """Write ``NAME.pb``, ``NAME.json`` and ``NAME.npz``; all three or none.

    The ``.npz`` is the ``.pb`` read back by :func:`jaxmir.load` and saved with
    :func:`jaxmir.weights.save_weights`. Existing files are kept unless
    ``overwrite``. ``also`` maps files already written (a fine-tuned backbone, a
    confusion picture) to where they go with the head: moved there with its files,
    all or none.
    """
    from jaxmir.loading import load
    from jaxmir.weights import save_weights

    paths = output_paths(output)
    if not overwrite:
        refuse_existing(paths.values())
    odd = [str(p) for p in paths.values() if os.path.exists(p) and not os.path.isfile(p)]
    if odd:  # a folder, a pipe, a device: a head's file would replace it
        raise InputError(f"{odd[0]} is not a regular file; choose another --output")
    folder = paths[".pb"].parent
    folder.mkdir(parents=True, exist_ok=True)
    stem = paths[".pb"].stem
    in_dim = int(np.shape(params["dense"]["kernel"])[0])
    hidden = int(np.shape(params["dense"]["kernel"])[1])
    written = {Path(final): Path(now) for now, final in (also or {}).items()}
    entry = embedding_model_entry(backbone, backbone_input_shape, layer,
                                  written.get(Path(backbone)))  # a fine-tuned backbone's
    meta = metadata(stem, classes, activation, in_dim, hidden, entry, dataset)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".tmp-export-"))
    moves: dict[Path, Path] = {}  # {where a file goes: where it is now}
    ready: dict[Path, Path] = {}
    try:
        staged = {suffix: staging / f"{stem}{suffix}" for suffix in SUFFIXES}
        try:
            staged[".pb"].write_bytes(head_graph(params, activation).SerializeToString(
                deterministic=True))
            staged[".json"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            model = load(staged[".pb"])
            save_weights(model, staged[".npz"],
                         provenance={"trained_by": "jaxmir train-head", "embedding_model": entry,
                                     "dataset": dataset or {}})
        except OSError as err:  # a full disk: it said only "No space left on device"
            raise InputError(f"cannot write the head {folder / stem} ({err.strerror or err}); "
                             "no file of the head was replaced") from None
        moves = {paths[suffix]: staged[suffix] for suffix in SUFFIXES}
        moves.update({Path(final): Path(written) for written, final in (also or {}).items()})
        ready = _beside_destinations(moves)
        with deferred_interrupts():  # Ctrl-C between the renames would mix two heads
            _move_into_place(ready)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for final, source in ready.items():  # copies beside a link's target, if a rename failed
            if source != moves[final]:
                source.unlink(missing_ok=True)
    return paths


def _move_into_place(ready: dict[Path, Path]) -> None:
    """Rename each ``{final: source}`` over its final file; a failed rename (the place taken
    by a folder meanwhile, a disk error) is an :class:`InputError` naming what was replaced."""
    replaced: list[str] = []
    for final, source in ready.items():
        try:
            os.replace(source, through_link(final))
        except OSError as err:
            done = (f"{', '.join(replaced)} replaced, the others not: the head is incomplete"
                    if replaced else "no file of the head was replaced")
            raise InputError(f"cannot move {final} into place ({err.strerror or err}); "
                             f"{done}") from None
        replaced.append(final.name)


def _beside_destinations(moves: dict[Path, Path]) -> dict[Path, Path]:
    """``{final: source}`` with each source next to the file it replaces: copied there when a
    link leads elsewhere (another folder, or another file system, where a rename would fail
    after the others were done: a new .pb beside the old .npz). A folder that does not exist
    or cannot be written fails here, before any file is replaced."""
    ready = {}
    try:
        for final, source in moves.items():
            destination = through_link(final)
            if destination.parent.resolve() == source.parent.resolve():
                ready[final] = source
                continue
            handle, name = tempfile.mkstemp(dir=destination.parent, prefix=".tmp-export-")
            ready[final] = Path(name)
            os.fchmod(handle, new_file_mode())
            os.close(handle)
            shutil.copyfile(source, name)
    except OSError as err:
        for copied_final, copy in ready.items():
            if copy != moves[copied_final]:
                copy.unlink(missing_ok=True)
        raise InputError(f"{final} leads to {destination}, which cannot be written "
                         f"({err.strerror or err}); no file of the head was replaced") from None
    return ready


def params_from_model(model) -> dict:
    """``{"dense": ..., "dense_1": ...}`` from a loaded ``dense -> ReLU -> dense`` head Model."""
    layers = model.variables.get("params", {}).get("head", {})
    dense = sorted((k for k in layers if k.startswith("dense_")), key=lambda k: int(k[6:]))
    if len(dense) != 2 or set(layers) != set(dense):
        raise InputError(f"{model.source}: a head with layers {sorted(layers)}; resuming needs "
                         "dense -> ReLU -> dense (as train-head writes)")
    return {"dense": {k: np.asarray(v) for k, v in layers[dense[0]].items()},
            "dense_1": {k: np.asarray(v) for k, v in layers[dense[1]].items()}}
