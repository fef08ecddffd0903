"""Turn the TF1 checkpoints inside the ``musicnn`` wheel into Essentia-shaped graphs and jaxmir
weights.

    pip install tensorflow-cpu
    python tools/convert_musicnn.py --graphs build/graphs --weights weights

(the musicnn 0.1.0 wheel is fetched from PyPI into the cache unless it is installed).

For each of MSD_musicnn, MTT_musicnn, MSD_vgg, MTT_vgg (and MSD_musicnn_big
when that checkpoint is at hand) it writes:

* ``<graphs>/<name>-1.pb``: a frozen graph shaped like Essentia's
  (``model/Placeholder`` [batch, 187, 96] -> ``model/Sigmoid``; embeddings at
  ``model/dense/BiasAdd``, logits at ``model/dense_1/BiasAdd``), runnable with
  only the input fed;
* with ``--training-graphs``, ``<graphs>/<name>-training.pb``: the checkpoint's
  own training graph (``.meta``) frozen as it is, batch norm and dropout behind
  ``cond`` on the training flag, that flag a ``PlaceholderWithDefault`` False
  named ``model/Placeholder_1``;
* ``<weights>/<name>.npz``: the Flax weights jaxmir ships, imported from the
  ``.pb`` by jaxmir itself, with labels and provenance, and its entry (with
  sha256) in ``<weights>/catalog.json``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MUSICNN_VERSION = "0.1.0"
MUSICNN_WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
# name -> (checkpoint folder, architecture, labels variable in musicnn/configuration.py, sizes)
MODELS = {
    "msd-musicnn": ("MSD_musicnn", "musicnn", "MSD_LABELS", {"midend": 64, "backend": 200}),
    "mtt-musicnn": ("MTT_musicnn", "musicnn", "MTT_LABELS", {"midend": 64, "backend": 200}),
    "msd-vgg": ("MSD_vgg", "vgg", "MSD_LABELS", {}),
    "mtt-vgg": ("MTT_vgg", "vgg", "MTT_LABELS", {}),
    "msd-musicnn-big": ("MSD_musicnn_big", "musicnn", "MSD_LABELS",
                        {"midend": 512, "backend": 500}),
}
DEFAULT_MODEL = "msd-musicnn"
LICENSE_NOTICE = (
    "Weights converted from the musicnn package (https://github.com/jordipons/musicnn), "
    "Copyright (c) 2019 Jordi Pons, ISC License: Permission to use, copy, modify, and/or "
    "distribute this software for any purpose with or without fee is hereby granted, provided "
    "that the above copyright notice and this permission notice appear in all copies. THE "
    "SOFTWARE IS PROVIDED \"AS IS\" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS "
    "SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS.")


def musicnn_dir(explicit: str | None = None) -> Path:
    """The ``musicnn`` package folder: given, installed, or fetched from PyPI into the cache.

    musicnn 0.1.0 pins numpy<1.17, so it cannot be installed beside jaxmir's
    dependencies; only its files are needed, and the wheel is fetched with
    ``pip download --no-deps`` and checked against its known sha256.
    """
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("musicnn")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return fetch_musicnn_wheel()


def fetch_musicnn_wheel(cache: Path | None = None) -> Path:
    cache = cache or Path(os.environ.get("JAXMIR_CACHE_DIR", Path.home() / ".cache" / "jaxmir"))
    target = cache / f"musicnn-{MUSICNN_VERSION}"
    if (target / "musicnn" / "configuration.py").is_file():
        return target / "musicnn"
    download = cache / "download"
    download.mkdir(parents=True, exist_ok=True)
    wheel = download / f"musicnn-{MUSICNN_VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--quiet", "-d", str(download), f"musicnn=={MUSICNN_VERSION}"], check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != MUSICNN_WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not musicnn {MUSICNN_VERSION}'s "
                         f"({MUSICNN_WHEEL_SHA256})")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target / "musicnn"


def read_labels(package: Path, variable: str) -> list[str]:
    """A label list from musicnn/configuration.py, read as a literal (the module is not run)."""
    tree = ast.parse((package / "configuration.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == variable
                                                for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"{variable} not found in {package / 'configuration.py'}")


def essentia_graph(checkpoint: Path, architecture: str, n_labels: int, sizes: dict):
    from tools import tf_graphs
    weights = tf_graphs.checkpoint_weights(str(checkpoint))
    if architecture == "musicnn":
        return tf_graphs.musicnn_graph(weights, n_labels, **sizes)
    return tf_graphs.vgg_graph(weights, n_labels)


def training_graph(checkpoint: Path, architecture: str):
    """The checkpoint's training graph, frozen as is, runnable with only the input fed."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString((checkpoint / ".meta").read_bytes())
    for node in meta.graph_def.node:  # TF 2 refuses the TF 1.12 shapes recorded here
        node.attr.pop("_output_shapes", None)
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
        with tf.compat.v1.Session(graph=graph) as session:
            saver.restore(session, str(checkpoint) + "/")
            outputs = ["model/Sigmoid", "model/dense/BiasAdd"]
            if architecture == "musicnn":
                outputs.append("model/dense_1/BiasAdd")
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), outputs)
    return _default_training_flag(frozen, "model/Placeholder_2", "model/Placeholder_1")


def _default_training_flag(graph_def, old: str, new: str):
    """Turn the bool training placeholder into ``PlaceholderWithDefault(False)`` named ``new``."""
    import tensorflow as tf

    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    default = out.node.add()
    default.name, default.op = f"{new}/input", "Const"
    default.attr["dtype"].type = tf.bool.as_datatype_enum
    default.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(False))
    for node in graph_def.node:
        if node.name == new:
            continue  # musicnn's label placeholder; nothing at inference reads it
        copy = out.node.add()
        copy.CopyFrom(node)
        if node.name == old:
            copy.name, copy.op = new, "PlaceholderWithDefault"
            copy.ClearField("input")
            copy.input.append(default.name)
            copy.attr["shape"].shape.CopyFrom(tf.TensorShape([]).as_proto())
        for i, name in enumerate(copy.input):
            if name.lstrip("^").split(":")[0] == old:
                copy.input[i] = name.replace(old, new)
    return out


def convert(name: str, package: Path, graphs: Path, weights_dir: Path, training: bool) -> dict:
    import jaxmir
    from jaxmir import catalog
    from jaxmir.weights import save_weights
    from tools import tf_graphs

    folder, architecture, label_var, sizes = MODELS[name]
    checkpoint = package / folder
    labels = read_labels(package, label_var)
    pb = graphs / f"{name}-1.pb"
    tf_graphs.write_graph(essentia_graph(checkpoint, architecture, len(labels), sizes), str(pb))
    if training:
        tf_graphs.write_graph(training_graph(checkpoint, architecture),
                              str(graphs / f"{name}-training.pb"))
    model = jaxmir.load(pb, labels=labels)
    out = weights_dir / f"{name}.npz"
    provenance = {
        "source": f"musicnn {MUSICNN_VERSION} (PyPI), checkpoint {folder}",
        "converted_with": "tools/convert_musicnn.py via an Essentia-shaped frozen graph",
        "license": LICENSE_NOTICE,
    }
    save_weights(model, out, provenance)
    return {"file": out.name, "sha256": catalog.sha256(out), "architecture": architecture,
            "labels": labels, "input_shape": list(model.input_shape),
            "parameters": model.num_params(), **provenance}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--musicnn-dir", help="the musicnn package folder (default: installed)")
    parser.add_argument("--graphs", default="build/graphs", help="where to write the .pb files")
    parser.add_argument("--weights", default=None,
                        help="where to write .npz files and catalog.json "
                             "(default: no weights, graphs only)")
    parser.add_argument("--models", nargs="*", default=None, help="names (default: all available)")
    parser.add_argument("--training-graphs", action="store_true",
                        help="also freeze each checkpoint's own training graph")
    args = parser.parse_args(argv)
    package = musicnn_dir(args.musicnn_dir)
    graphs = Path(args.graphs)
    graphs.mkdir(parents=True, exist_ok=True)
    names = args.models or [n for n, (folder, *_) in MODELS.items() if (package / folder).is_dir()]
    weights_dir = Path(args.weights) if args.weights else graphs / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    entries = {name: convert(name, package, graphs, weights_dir, args.training_graphs)
               for name in names}
    if args.weights:
        catalog_path = weights_dir / "catalog.json"
        catalog = json.loads(catalog_path.read_text()) if catalog_path.exists() else {"models": {}}
        catalog["models"].update(entries)
        catalog["default"] = DEFAULT_MODEL
        catalog_path.write_text(json.dumps(catalog, indent=1, sort_keys=True) + "\n")
    for name, entry in entries.items():
        print(f"{name}: {entry['parameters']:,} parameters -> {weights_dir / entry['file']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
