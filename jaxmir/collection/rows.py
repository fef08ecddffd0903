"""The row written for each file of a collection, and the layout (columns) shared by every writer,
with the identity (model, options) an output records (:func:`identity`).

Every row has ``path`` (absolute), ``size_bytes`` and ``mtime_ns`` (the file's
state before it was read: what a resumed run compares), ``duration_s`` (of the
16-kHz signal), ``n_patches``, ``status`` (``"ok"``, ``"damaged"``: decoded in part, or
``"error"``) and ``error`` (the message, or null). Then:

* ``tag``: one float64 column per label, the mean over patches (computed in
  float64 from the float32 predictions, as ``jaxmir tag`` does);
* ``embed``: ``embedding``, the mean over patches (float64 mean stored as
  float32), each patch flattened when the layer has more than one axis.

With ``per_patch`` rows also hold ``patches``: ``[n_patches, dim]`` float32,
the model's output for every patch, flattened per patch.

A file name that is not UTF-8 reaches Python with its stray bytes as lone
surrogates; every table (Parquet, CSV, JSONL) stores its path and messages as
:func:`as_text` writes them, valid UTF-8 text (a ``.npy`` folder's index its
arrays' names too).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from jaxmir import catalog
from jaxmir.collection.inputs import Source
from jaxmir.errors import InputError, NonFiniteOutputError
from jaxmir.labels import read_as_utf8

if TYPE_CHECKING:  # the options' module computes rows
    from jaxmir.collection.compute import Options

def check_finite(values: np.ndarray, what: str = "outputs") -> None:
    """Raise :class:`NonFiniteOutputError` when the model's ``values`` hold NaN or infinity
    (the audio is finite, so its weights overflow float32): no table, line or tag shows them as
    an ``ok`` result, and JSON has no spelling for them."""
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise NonFiniteOutputError(
            f"the model's {what} hold NaN or infinity ({bad} of {np.size(values)} values) on "
            "finite audio: its weights overflow float32 here")


# what to do about an output a run refuses, in the words of both jaxmir's options and collect()'s
ANOTHER_OUTPUT = "give another output (--output)"
OVERWRITE = "--overwrite (overwrite=True in Python)"

BASE_COLUMNS = ("path", "size_bytes", "mtime_ns", "duration_s", "n_patches", "status", "error")
OK, DAMAGED, ERROR = "ok", "damaged", "error"
DONE = (OK, DAMAGED)  # statuses a resumed run does not redo


# Identity fields added after the first outputs were written, recorded only when they are not
# these defaults: older outputs then still match a run with the defaults.
UNRECORDED_DEFAULTS = {"dtype": "float32", "decoder": "essentia"}
# What a CSV or JSONL output written before jaxmir recorded its settings was written with: the
# defaults (Essentia's hop of 93 frames for every model). A run with others may not append to it.
SETTINGS_BEFORE_RECORDED = {"patch_hop": 93, "last_patch": "discard", "pad": None,
                            "resampler": "essentia"}


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a collection's rows hold; ``identity`` is checked against an existing output on resume.

    ``identity`` holds the model's name and source, the output name, the labels
    (tags) and the patch options; two runs may share an output only when their
    identities are equal.
    """

    command: str
    identity: dict
    labels: tuple[str, ...] = ()
    per_patch: bool = False
    average: bool = False  # a folder of .npy holds the mean over patches
    strict: bool = False  # a damaged file is an error: its row from a run before is not kept
    # the output's other names (an alias and the graph's nodes of one tap): a table's rows are the
    # same values under any of them, so a run may resume one written under another
    same_outputs: frozenset[str] = frozenset()

    def __post_init__(self):
        repeated = sorted(label for label, n in collections.Counter(self.labels).items() if n > 1)
        if repeated:
            raise InputError(f"the model's labels name {repeated} more than once; a table has one "
                             "column (JSONL one key) per label: give the model distinct labels")

    def check_label_columns(self, columns: Iterable[str], table: str) -> None:
        """A table with a column per label (Parquet, CSV) cannot also have its own ``columns``
        named so; JSONL nests the labels."""
        clash = sorted(set(self.labels) & set(columns)) if self.command == "tag" else []
        if clash:
            raise InputError(f"the model's labels {clash} clash with the {table} table's own "
                             "columns; write JSONL (the labels nested in 'tags'), or give the "
                             "model other labels")

    @property
    def model(self) -> str:
        """The model's name as the output records it."""
        return str(self.identity["model"])

    @property
    def value_columns(self) -> tuple[str, ...]:
        """The columns of the model's values: a label each (``tag``), or ``embedding``."""
        return self.labels if self.command == "tag" else ("embedding",)

    def identity_json(self) -> str:
        """:attr:`identity` as JSON text, keys sorted (Parquet's metadata)."""
        return json.dumps(self.identity, sort_keys=True)


@dataclasses.dataclass
class Result:
    """One file's outcome: ``values`` ``[n_patches, ...]`` from the model, or ``error``."""

    source: Source
    duration_s: float = 0.0
    values: np.ndarray | None = None
    error: str | None = None
    warning: str | None = None  # the file was decoded in part

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """:data:`OK`, :data:`DAMAGED` (decoded in part) or :data:`ERROR`."""
        return ERROR if not self.ok else DAMAGED if self.warning else OK


def as_text(value: str) -> str:
    """``value`` as valid UTF-8 text: each lone surrogate (a byte of a file name that is not
    UTF-8) written as the escape JSON writes for it, ``\\udcff``; the backslashes right before
    such an escape's text or a lone surrogate doubled (a name that holds ``\\udcff`` as text
    stays apart from the one holding the byte); other text unchanged. :func:`from_text` reads
    it back."""
    doubled = _BEFORE_ESCAPE.sub(lambda match: match.group(0) * 2, value)
    return doubled.encode("utf-8", "backslashreplace").decode("utf-8")


def recorded_text(name: str) -> str:
    """A name as outputs record it, UTF-8 text whatever the locale: the escapes of its UTF-8
    bytes that an ASCII locale read (:func:`~jaxmir.labels.read_as_utf8`) as the text they are,
    other bytes as :func:`as_text` writes them (JSON would write lone surrogates, which strict
    readers refuse)."""
    return as_text(read_as_utf8(name))


_BEFORE_ESCAPE = re.compile(r"\\+(?=udc[89a-f][0-9a-f]|[\udc80-\udcff])")
_ESCAPED = re.compile(r"(\\+)u(dc[89a-f][0-9a-f])")


def from_text(value: str) -> str:
    """The name :func:`as_text` wrote as ``value``: of ``k`` backslashes before ``udcXX``, half
    are the name's when ``k`` is even; when odd, the last one and ``udcXX`` are a lone
    surrogate."""
    def unescaped(match: re.Match) -> str:
        backslashes, byte = match.group(1), match.group(2)
        kept = backslashes[:len(backslashes) // 2]
        return kept + chr(int(byte, 16)) if len(backslashes) % 2 else kept + "u" + byte
    return _ESCAPED.sub(unescaped, value)


def mean(values: np.ndarray) -> np.ndarray:
    """The mean over patches in float64, ``[dim]`` (each patch flattened)."""
    flat = np.asarray(values, np.float64).reshape(values.shape[0], -1)
    return flat.mean(axis=0)


def patches(values: np.ndarray) -> np.ndarray:
    """``[n_patches, dim]`` float32, each patch flattened."""
    return np.asarray(values, np.float32).reshape(values.shape[0], -1)


# a message's line breaks (a library's, a file name's) become spaces; other spacing, a file
# name's own, is kept
_LINE_BREAKS = re.compile(r"[ \t]*[\r\n]+[ \t]*")


def base(result: Result) -> dict[str, Any]:
    source = result.source
    n = 0 if result.values is None else int(result.values.shape[0])
    return {"path": source.path, "size_bytes": source.size, "mtime_ns": source.mtime_ns,
            "duration_s": float(result.duration_s), "n_patches": n,
            "status": result.status,
            "error": _LINE_BREAKS.sub(" ", problem).strip()
            if (problem := result.error or result.warning)
            else None}


def embedding_mean(result: Result) -> np.ndarray | None:
    """The mean embedding over the patches, float32 ``[dim]`` (None for a failed file)."""
    return mean(result.values).astype(np.float32) if result.ok else None


def tag_means(layout: Layout, result: Result) -> dict[str, float | None]:
    """Each label's mean over the patches (None for a failed file)."""
    means = mean(result.values) if result.ok else [None] * len(layout.labels)
    return {label: None if v is None else float(v)
            for label, v in zip(layout.labels, means, strict=True)}


def summary(layout: Layout, result: Result) -> dict[str, Any]:
    """The row as Python values: base columns, then the means (None for a failed file); a label
    named like a base column, or ``patches``, is overwritten (tables with a column per label
    refuse such labels: :meth:`Layout.check_label_columns`)."""
    row = base(result)
    if layout.command == "tag":
        row.update(tag_means(layout, result))
    else:
        row["embedding"] = embedding_mean(result)
    if layout.per_patch:
        row["patches"] = patches(result.values) if result.ok else None
    return row


def model_fields(name: str, backbone: str | None = None) -> dict:
    """How an output names its model (and backbone): a shipped model by its name, a file by its
    file name and, in ``model_sha256``, its bytes' sha256, so that the same file by any path is
    the same model and other bytes at the same path are another."""
    names, digests = [], []
    for part in filter(None, (name, backbone)):
        if part in catalog.names() or not os.path.isfile(part):
            names.append(recorded_text(part))
        else:
            names.append(recorded_text(os.path.basename(part)))
            digests.append(catalog.sha256(part))
    return {"model": "+".join(names), **({"model_sha256": "+".join(digests)} if digests else {})}


def same_model_name(recorded: str, name: str) -> bool:
    """Whether an output's ``recorded`` model name is ``name`` (:func:`model_fields`'), also as
    outputs recorded it before names were UTF-8 text: as Python read it, which
    :func:`model_fields` makes ``name`` of."""
    return recorded == name or recorded_text(recorded) == name


def model_by_path(recorded, name: str | None) -> bool:
    """Whether an output's ``recorded`` model names a model file by its path, as outputs did
    before they recorded its bytes (``model_sha256``), and, unless ``name`` is ``None``, the
    files :func:`~jaxmir.collection.commands.model_fields` names ``name`` now
    (``head.pb+msd-musicnn``: each part by its file name, in any folder, ``/`` or ``\\``
    apart). Such an output cannot tell other bytes under the same file name: it is taken to be
    of the file named so now."""
    if not isinstance(recorded, str) or not re.search(r"[/\\]|\.(pb|npz)(\+|$)", recorded):
        return False
    if name is None:
        return True
    in_any_folder = r"(?:.*[/\\])?"
    return re.fullmatch(r"\+".join(in_any_folder + re.escape(part) for part in name.split("+")),
                        recorded, re.DOTALL) is not None


def default_output_node(model) -> str:
    """The output node ``model``'s graph gives without ``output=`` or a JSON naming one (its
    own for a shipped model or a weights file, whose bytes fix it)."""
    if model.graph_output is not None:  # read when the graph was loaded
        return model.graph_output
    source = str(model.source or "")
    if not source.endswith(".pb") or not os.path.isfile(source):
        return model.spec.output_name
    from jaxmir.errors import JaxmirError
    from jaxmir.tfgraph import convert, graphdef

    try:
        return convert.find_output(graphdef.Graph.from_file(source))
    except JaxmirError:  # none of the usual nodes: the one chosen is not the graph's own
        return ""


def settings_before_recorded(settings: dict, model: str) -> dict:
    """The settings an output written without them (by ``model``) holds, for a run whose own
    are ``settings``: the defaults of the time; what the output cannot tell (the model file's
    digest, the command, which its kind implies) taken from the run's."""
    known = {k: settings[k] for k in ("command",) if k in settings}  # its model: by its path
    default = "predictions" if settings.get("command") == "tag" else "embeddings"
    averaged = {"average": False} if "average" in settings else {}  # arrays were per patch
    return {**known, "model": model, "output": default, **averaged, **SETTINGS_BEFORE_RECORDED}


def same_outputs(model, output: str) -> frozenset[str]:
    """Every name ``model`` gives ``output``'s values (``embeddings`` and
    ``model/dense/BiasAdd`` in MusiCNN: an alias and the graph's nodes of one tap)."""
    tap = model.resolve_output(output)[0]
    return frozenset(name for name in model.output_names if model.resolve_output(name)[0] == tap)


def identity(model_names: dict, model, command: str, options: Options) -> dict:
    """What must match for two runs to share an output (see :class:`rows.Layout`);
    ``model_names``: :func:`model_fields`."""
    from jaxmir import pipeline

    frontend = pipeline.frontend_of(model)
    hop = frontend.patch_hop if options.patch_hop is None else options.patch_hop
    fields = {**model_names, "command": command, "output": options.output,
              "patch_hop": int(hop) or frontend.patch_size, "last_patch": options.last_patch,
              "pad": options.pad, "resampler": options.resampler}
    # the float decoder's samples differ (~1e-5 on MP3); bfloat16's outputs by ~1e-2
    for name, value in (("dtype", options.dtype), ("decoder", options.decoder)):
        if value != UNRECORDED_DEFAULTS[name]:
            fields[name] = value
    # a graph's output node chosen by output= or its JSON, where the rows hold its values: the
    # one the graph gives by itself goes unrecorded, as outputs written before held none
    if model.resolve_output(options.output)[0] == model.resolve_output("predictions")[0] \
            and model.spec.output_name != default_output_node(model):
        fields["output_node"] = model.spec.output_name
    if command == "tag":
        fields["labels"] = list(model.labels)
    return fields
