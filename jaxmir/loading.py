"""``jaxmir.load``: one entry point for `.pb` graphs, weights files, shipped names and heads."""

from __future__ import annotations

import json
import os
import shlex
import warnings
from pathlib import Path
from typing import Sequence

from jaxmir import catalog
from jaxmir.audio_choices import DECODE_MODES, RESAMPLERS, canonical_resampler, reading_entry
from jaxmir.compose import check_backbone, compose
from jaxmir.console import printable
from jaxmir.decode import AUDIO_EXTENSIONS
from jaxmir.errors import GraphError, InputError, JaxmirWarning, UnsupportedGraphError
from jaxmir.labels import check_label_text, label_list, read_as_utf8
from jaxmir.model import Model
from jaxmir.models import damaged_variable, variable_mismatches
from jaxmir.weights import WEIGHTS_SUFFIX, load_weights


def load(source: str | os.PathLike, *, backbone: "str | os.PathLike | Model | None" = None,
         labels: Sequence[str] | None = None, output: str | None = None,
         embedding: str | None = None) -> Model:
    """Load a model from a frozen `.pb`, a converted weights file or a shipped name.

    Args:
      source: ``"msd-musicnn"``, ``"mtt-musicnn"``, ``"msd-vgg"``, ``"mtt-vgg"``
        (shipped), a path to a frozen TensorFlow graph (``.pb``, read with
        protobuf only), or a path to weights written by jaxmir (``.npz``).
        Essentia's metadata JSON beside a `.pb` (``mood_happy-msd-musicnn-1.json``)
        supplies its classes and output node.
      backbone: for an embedding head (Essentia's TensorflowPredict2D models),
        the model whose embeddings it takes: a shipped name, a path or a Model.
        The result runs from patches to the head's classes. Without it, a head
        loads alone and takes embeddings ``[batch, features]``.
      labels: class names, overriding those the source provides.
      output: the graph's output node, when it is none of the usual ones.
      embedding: the backbone output the head reads: by default the one its metadata
        names (``inference.embedding_model.output``), else ``embeddings``
        (``model/dense/BiasAdd`` for MusiCNN, ``model/vggish/embeddings`` for VGGish).
    """
    for name, value in (("output", output), ("embedding", embedding)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{name}={value!r}: expected the name of an output or graph node")
    model = _load_one(source, labels=labels, output=output)
    if backbone is None:
        if embedding is not None:  # it was ignored without a word
            raise InputError(f"embedding={embedding!r} names the backbone output a head reads; "
                             "it goes with backbone= (a head on a backbone's embeddings)")
        return model
    return on_backbone(model, backbone, embedding)


def on_backbone(model: Model, backbone: "str | os.PathLike | Model",
                embedding: str | None = None) -> Model:
    """A loaded head ``model`` on ``backbone``, reading its ``embedding`` (:func:`load`'s)."""
    if not isinstance(backbone, Model):
        backbone = _load_one(backbone)
    check_backbone(backbone)  # before its outputs are looked for the head's embedding
    if embedding is None:
        embedding = embedding_output(model)
        if embedding is not None and not _has_output(backbone, embedding):
            raise InputError(f"{model.name} was trained on '{embedding}' (its metadata's "
                             f"embedding_model.output), which {backbone.name} does not have; "
                             "give the backbone it was trained on, or the output to read "
                             "(embedding= in Python)")
    composed = compose(backbone, model, embedding)
    warn_of_another_backbone(model, backbone)  # a pair that cannot compose has failed already
    return composed


def _embedding_model(head: Model) -> dict:
    """A head's ``embedding_model`` entry: Essentia's JSON (``inference``) or, for weights jaxmir
    wrote, their provenance."""
    for section in ("inference", "provenance"):
        entry = head.metadata.get(section)
        entry = entry.get("embedding_model") if isinstance(entry, dict) else None
        if isinstance(entry, dict):
            return entry
    return {}


def embedding_output(head: Model) -> str | None:
    """The backbone output a head's metadata says it reads (``embedding_model.output``)."""
    name = _embedding_model(head).get("output")
    return name if isinstance(name, str) and name else None


def _has_output(model: Model, name: str) -> bool:
    try:
        model.resolve_output(name)
    except InputError:
        return False
    return True


def _load_one(source, labels=None, output=None) -> Model:
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot load {source!r}: expected a shipped model's name or the path of "
                         "a .pb or .npz file")
    if labels is not None:
        labels = label_list(labels)
    text = os.fspath(source)
    if "\0" in text:
        raise InputError(f"cannot load {text!r}: a path holds no NUL character")
    if text in catalog.names():  # sha256 checked
        return _fixed_output(load_weights(catalog.path_of(text), labels=labels, trusted=True),
                             output)
    suffix = os.path.splitext(text)[1].lower()
    if suffix == WEIGHTS_SUFFIX:
        return _fixed_output(load_weights(text, labels=labels), output)
    if suffix == ".json" and os.path.isfile(text):  # Essentia's metadata, passed for its model
        graph_path = os.path.splitext(text)[0] + ".pb"
        beside = f"{graph_path}, beside it," if os.path.isfile(graph_path) else "its .pb"
        raise InputError(f"{text} is a model's metadata (Essentia's JSON), not a model: load "
                         f"{beside} instead; the JSON beside a .pb is read with it")
    if suffix in AUDIO_EXTENSIONS and os.path.isfile(text):  # `jaxmir info song.mp3`
        raise InputError(f"{text} is an audio file, not a model: a model is a shipped name ("
                         f"{', '.join(catalog.names())}) or a .pb or .npz file; `jaxmir tag "
                         "FILE` tags audio (jaxmir.load_audio reads it)")
    if not os.path.exists(text) and not text.endswith(".pb") and os.sep not in text:
        raise InputError(f"'{text}' is neither a file nor a shipped model; shipped models: "
                          + ", ".join(catalog.names()) + "; or give the path of a .pb or .npz file")
    from jaxmir.tfgraph import convert, graphdef  # protobuf is needed for .pb files only

    graph = graphdef.Graph.from_file(text)
    metadata = read_metadata(text)
    chosen = output is not None  # the caller's output, not the JSON's predictions
    if output is None:
        output = _metadata_output(metadata, graph)
    elif graphdef.TensorRef.parse(output).node not in graph.nodes:
        raise InputError(f"{text}: no node named '{output}'; output= names the graph's output node "
                         "('model/Sigmoid', say): the outputs that Model.apply and predict take by "
                         "name ('embeddings', 'penultimate', ...) go to their own output=")
    spec = convert.import_graph(graph, output=output)
    try:
        graph_output = convert.find_output(graph)
    except GraphError:  # none of the usual nodes: output= or the JSON named the one used
        graph_output = ""
    problem = variable_mismatches(spec.architecture, spec.config, spec.input_shape, spec.variables)
    if problem is not None:  # what loads must also run
        raise UnsupportedGraphError(f"{text}: {problem}")
    damaged = damaged_variable(spec.variables)
    if damaged is not None:
        raise GraphError(f"{text}: the weights of '{damaged[0]}' hold {damaged[1]}; the graph "
                         "would give NaN or meaningless outputs")
    # [] is refused, not ignored; "" is what Essentia's own embedding extractors' JSON holds
    # (audioset-vggish-3.json): no class names
    if labels is None and metadata.get("classes") not in (None, ""):
        if not isinstance(metadata["classes"], list) or not all(
                isinstance(name, str) for name in metadata["classes"]):
            raise InputError(f"{metadata['_path']}: 'classes' is {str(metadata['classes'])[:80]}; "
                             "expected a list of class names")
        classes = [str(c) for c in metadata["classes"]]
        if len(classes) == spec.output_width or not chosen or _is_predictions(output, metadata,
                                                                             graph):
            labels = _json_labels(classes, metadata, text, spec)
        # else the JSON's classes name its predictions' values, not this output's: class_i
    return Model.from_spec(spec, labels=labels or catalog.labels_for_graph(text, spec), source=text,
                           metadata={k: v for k, v in metadata.items() if not k.startswith("_")},
                           graph_output=graph_output)


def _is_predictions(output: str, metadata: dict, graph) -> bool:
    """Whether ``output`` names the node whose values the JSON's classes name: its ``schema``'s
    predictions, or where it names none it can (no schema, an empty name, a node the graph
    lacks), the output jaxmir takes by default."""
    from jaxmir.tfgraph import convert
    from jaxmir.tfgraph.graphdef import TensorRef

    try:
        predictions = _metadata_output(metadata, graph)
    except InputError:
        predictions = None
    if predictions is None:
        try:
            predictions = convert.find_output(graph)
        except GraphError:
            return False
    return TensorRef.parse(predictions).node == TensorRef.parse(output).node


def _json_labels(classes: list[str], metadata: dict, text: str, spec) -> list[str]:
    """The JSON's ``classes`` as the labels of ``spec``'s output, checked: as many as its values,
    UTF-8 read as single bytes repaired (with a warning), printable."""
    readable = [read_as_utf8(label) for label in classes]
    if readable != classes:
        warnings.warn(f"{metadata['_path']}: its classes hold UTF-8 read as single bytes "
                      f"(a head trained under an ASCII locale): read as "
                      f"{[b for a, b in zip(classes, readable) if a != b][:3]}; write them so "
                      "in its 'classes'", JaxmirWarning, stacklevel=4)
    if len(readable) != spec.output_width:
        raise InputError(f"{metadata['_path']} lists {len(readable)} classes but the graph "
                         f"{text} outputs {spec.output_width} values at '{spec.output_name}'")
    try:
        check_label_text(readable)
    except InputError as err:
        raise InputError(f"{metadata['_path']}: {err}") from None
    return readable


def _fixed_output(model: Model, output: str | None) -> Model:
    """``model`` (a converted one, whose output was chosen at conversion) if ``output`` is ``None``
    or names that output; else :class:`InputError`: ``output=`` picks a `.pb` graph's output
    node at import, and was ignored here."""
    if output is None or model.resolve_output(output)[0] == model.resolve_output("predictions")[0]:
        return model  # an unknown name raised, listing the model's outputs
    raise InputError(f"output='{output}': {model.name} is a converted model, whose output was "
                     f"chosen when it was converted ('{model.spec.output_name}'); ask for "
                     f"'{output}' when running it: predict(..., output='{output}')")


def read_metadata(graph_path: str | os.PathLike) -> dict:
    """Essentia's model JSON beside a `.pb` (same name, ``.json``), or ``{}``."""
    path = Path(graph_path).with_suffix(".json")
    if not _is_file(path):
        return {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark allowed
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: JSON
        raise InputError(f"{path}: not readable model metadata ({err}); expected Essentia's "
                         "model JSON with 'classes' and 'schema'") from None
    if not isinstance(metadata, dict):
        raise InputError(f"{path}: expected a JSON object with 'classes' and 'schema'")
    metadata["_path"] = str(path)
    return metadata


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; ``False`` for a name too long to be one (``ENAMETOOLONG``:
    a ``.pb`` named with 252 bytes has no ``.json`` of 254 beside it)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _metadata_output(metadata: dict, graph) -> str | None:
    """The JSON's prediction output node (``schema.outputs``), if it names one."""
    schema = metadata.get("schema") or {}
    outputs = schema.get("outputs") if isinstance(schema, dict) else None
    if not isinstance(outputs, (list, type(None))) or not isinstance(schema, dict):
        raise InputError(f"{metadata['_path']}: 'schema' is {str(schema)[:80]}; "
                         "expected Essentia's object with an 'outputs' list")
    for entry in outputs or []:
        if isinstance(entry, dict) and entry.get("output_purpose") == "predictions":
            name = entry.get("name") or ""
            if not isinstance(name, str):
                raise InputError(f"{metadata['_path']}: the predictions output's 'name' is "
                                 f"{str(name)[:80]}; expected a node name")
            if name.startswith("^") or name.partition(":")[2] not in ("", "0"):
                raise InputError(f"{metadata['_path']} names the output '{name[:200]}'; jaxmir "
                                 "reads a node's first output: 'node' or 'node:0'")
            if name and name not in graph:
                raise InputError(f"{metadata['_path']} names the output node '{name[:200]}', which "
                                 "the graph beside it does not have: the JSON is another model's")
            if name:
                return name
    return None


def backbone_name(head: Model) -> str | None:
    """The backbone a head's metadata names (``embedding_model.model_name``), found or not."""
    name = _embedding_model(head).get("model_name")
    return str(name) if name not in (None, "") else None


def _unversioned(name: str) -> str:
    """A model's name without Essentia's version suffix: ``msd-musicnn-1`` -> ``msd-musicnn``."""
    stem, _, version = name.rpartition("-")
    return stem if stem and version.isdigit() else name


def trained_reading(model: Model) -> dict[str, str]:
    """How the audio ``model`` was trained on was read: ``{"resampler": ..., "decoder": ...}``
    as ``jaxmir train-head`` records it in ``dataset.audio`` (a head's JSON, a head's or a
    fine-tuned backbone's ``.npz`` provenance), the resampler by its canonical name; ``{}``
    where the metadata does not say (Essentia's own heads, weights jaxmir wrote before)."""
    for section in (model.metadata, model.metadata.get("provenance")):
        dataset = section.get("dataset") if isinstance(section, dict) else None
        audio = dataset.get("audio") if isinstance(dataset, dict) else None
        if isinstance(audio, dict):
            said = {key: audio.get(key) for key in ("resampler", "decoder")}
            return {key: canonical_resampler(value) if key == "resampler" else value
                    for key, value in said.items() if isinstance(value, str)}
    return {}


def reading_options(reading: dict[str, str | None]) -> str:
    """``{"resampler": "soxr", "decoder": "float"}`` as the options that read audio so:
    ``"--resampler soxr --decoder float"``; a value a metadata file gives quoted as a shell
    reads it, its control characters escaped (a line break, a terminal's colour code)."""
    return " ".join(f"--{key} {shlex.quote(printable(str(value)))}"
                    for key, value in reading.items())


def warn_of_another_reading(model: Model, resampler: str, decoder: str | None) -> None:
    """Warn when a run reads files for ``model`` with another resampler or decoder (``None``:
    it decodes none) than its training audio was read with (:func:`trained_reading`). Where
    that changes the audio (a file resampled; compressed audio, for the decoder) the
    embeddings, and so the outputs, differ from those it learnt from: up to 0.2 on a tester's
    ``essentia-q4`` head's tags read with the default converter."""
    trained = trained_reading(model)
    now = reading_entry(resampler, decoder)
    other = [key for key in trained if now[key] is not None and trained[key] != now[key]]
    if not other:
        return
    then = reading_options({key: trained[key] for key in other})
    given = reading_options({key: now[key] for key in other})
    offered = {"resampler": RESAMPLERS, "decoder": DECODE_MODES}
    advice = f"; pass {then}" if all(trained[key] in offered[key] for key in other) else ""
    warnings.warn(f"{model.name} was trained on audio read with {then} (its metadata's "
                  f"dataset.audio), this run reads with {given}: files this resamples or "
                  f"decodes otherwise give other outputs than it learnt to give{advice}",
                  JaxmirWarning, stacklevel=3)


def warn_of_another_backbone(head: Model, backbone: Model) -> None:
    """Warn when ``backbone`` is not the one ``head``'s metadata names: another name, or, where
    the metadata holds the sha256 of the backbone file's bytes (jaxmir writes it), a file of
    that name with other bytes (retrained or replaced since). The head then reads embeddings it
    was not trained on (only a different width would fail). The same bytes by another name are
    the same backbone."""
    named = backbone_name(head)
    if named is None or not backbone.source:
        return
    trained_on = backbone_digest(head)
    now = catalog.sha256(backbone.source) if trained_on is not None \
        and _is_file(Path(backbone.source)) else None
    if now is not None and now == trained_on:
        return
    given = Path(backbone.source).stem if os.sep in backbone.source or "." in backbone.source \
        else backbone.source
    if _unversioned(Path(named).stem) != _unversioned(given):
        warnings.warn(f"{head.name} was trained on {named} (its metadata's embedding_model."
                      f"model_name), not on {backbone.name}: its outputs are meaningless unless "
                      "the two give the same embeddings", JaxmirWarning, stacklevel=3)
    elif now is not None:
        warnings.warn(f"{head.name} was trained on a backbone file of other bytes than "
                      f"{backbone.source} (sha256 {trained_on[:12]}... in its metadata, "
                      f"{now[:12]}... now): if it was retrained or replaced since, the head's "
                      "outputs are meaningless", JaxmirWarning, stacklevel=3)


def backbone_digest(head: Model) -> str | None:
    """The sha256 of the backbone file's bytes ``head`` was trained on, where its metadata
    records it (jaxmir does for a file), else ``None``."""
    digest = _embedding_model(head).get("sha256")
    return digest if isinstance(digest, str) and digest else None


def trained_on_file(head: Model) -> bool:
    """Whether ``head``'s metadata ties it to a backbone file's bytes (their sha256)."""
    return backbone_digest(head) is not None


def backbone_of(model: Model) -> str | None:
    """The backbone a head's metadata names, if jaxmir has it: a file beside the head named so
    (``NAME-backbone.npz``, which ``train-head --finetune`` writes; ``NAME.pb``, the graph a head
    was trained on, as Essentia finds it; of the two, the one of the bytes the metadata's sha256
    names), or a shipped model in Essentia's spelling (``msd-musicnn-1`` -> ``msd-musicnn``). A
    head whose metadata holds a file's sha256 was trained on that file: a shipped model is taken
    only where its own file has those bytes (a ``msd-musicnn-3.pb`` may hold any weights)."""
    name = backbone_name(model) or ""
    trained_on = backbone_digest(model)
    if name and model.source and os.sep not in name:
        besides = (Path(model.source).with_name(name + suffix)
                   for suffix in (WEIGHTS_SUFFIX, ".pb"))
        found = [str(beside) for beside in besides if _is_file(beside)]
        if len(found) > 1 and trained_on:  # a graph converted beside it (NAME.npz from NAME.pb)
            found = [path for path in found if catalog.sha256(path) == trained_on] or found
        if found:
            return found[0]
    if trained_on:
        entries = catalog.catalog()["models"] if catalog.names() else {}
        return next((shipped for shipped, entry in entries.items()
                     if entry["sha256"] == trained_on), None)
    return shipped_as(name)


def shipped_as(name: str) -> str | None:
    """The shipped model Essentia's file name ``name`` spells (``msd-musicnn-1`` ->
    ``msd-musicnn``), or ``None``."""
    for shipped in catalog.names():
        version = name[len(shipped) + 1:]
        if name == shipped or (name.startswith(shipped + "-") and version.isdigit()):
            return shipped
    return None
