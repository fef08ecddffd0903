"""A model in words: the text of ``jaxmir info`` and ``Model.describe()``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from jaxmir.labels import placeholder_labels
from jaxmir.spec import Activation, BatchNorm, Dense, HeadLayer, gives_values


def _arrows(layers: Sequence[HeadLayer]) -> str:
    def word(layer: HeadLayer) -> str:
        if isinstance(layer, Dense):
            return f"dense {layer.units}"
        if isinstance(layer, BatchNorm):
            return "BN"
        return layer.name if isinstance(layer, Activation) else str(layer)
    return " -> ".join(word(layer) for layer in layers)


def summarize(architecture: str, config: Mapping[str, Any]) -> list[str]:
    """The layers of a model in words, one line per stage."""
    if architecture == "composed":
        backbone, head = config["backbone"], config["head"]
        return ([f"backbone ({backbone['architecture']}):"]
                + [f"  {line}" for line in summarize(backbone["architecture"], backbone["config"])]
                + ["head:"]
                + [f"  {line}" for line in summarize(head["architecture"], head["config"])])
    if architecture == "musicnn":
        return [f"front-end: BN, timbral 7x{' & 7x'.join(map(str, config['timbral_widths']))} "
                f"({config['timbral_filters']} filters), temporal "
                f"{'x1, '.join(map(str, config['temporal_lengths']))}x1 "
                f"({config['temporal_filters']} filters)",
                f"mid-end: 3 x conv 7 ({config['midend_filters']} filters), residual",
                "back-end: max + mean over time -> " + _arrows(config["head"])]
    if architecture in ("vgg", "vggish"):
        blocks = []
        for block in config["blocks"]:
            text = f"conv{block.kernel[0]}x{block.kernel[1]} {block.features} {block.activation}"
            text += " BN" if block.bn_epsilon is not None else ""
            if block.pool is not None:
                text += f" pool{block.pool.window[0]}x{block.pool.window[1]}"
                if block.pool.strides != block.pool.window:
                    text += f" (stride {block.pool.strides[0]}x{block.pool.strides[1]})"
            blocks.append(text)
        return [("BN, " if config.get("input_bn_epsilon") is not None else "") + ", ".join(blocks),
                "flatten -> " + _arrows(config["head"])]
    return [_arrows(config["head"])]


def without_audio(architecture: str, input_shape: Sequence[int]) -> str:
    """Why a model without a front-end takes no audio, and what to do instead."""
    if architecture == "head":
        example = ("a VGGish .pb such as audioset-vggish-3.pb" if tuple(input_shape) == (128,)
                   else "'msd-musicnn'" if tuple(input_shape) == (200,)
                   else "its backbone's name or path")
        return (f"this is an embedding head: it takes {list(input_shape)} embeddings, not audio; "
                "load it with the backbone it was trained on to run it on audio: "
                f"jaxmir.load(head, backbone=...) or --backbone, e.g. {example}")
    return (f"this {architecture} model takes {list(input_shape)} inputs, not log-mel patches; "
            "run it with Model.apply on its own inputs")


def describe(model) -> str:
    """A few lines for people: architecture, layers, input, output, labels, output names,
    front-end."""
    spec = model.spec
    labels = list(model.labels)
    default_labels = tuple(labels) == placeholder_labels(len(labels))
    from_json = any(key in model.metadata for key in ("classes", "schema", "inference"))
    why = "the metadata JSON beside the graph names none" if from_json else \
        "no metadata JSON beside the graph names them"
    if isinstance(model.metadata.get("classes"), list) and model.metadata["classes"]:
        why = ("the metadata JSON's classes name the values of its predictions output, not "
               "this one's")
    label_text = (f"class_0 .. class_{len(labels) - 1} (no class names: {why}; in Python: "
                  "labels=)" if default_labels else ", ".join(labels))
    lines = [f"source: {model.source}",
             f"architecture: {spec.architecture}",
             *[f"  {line}" for line in summarize(spec.architecture, spec.config)],
             f"input: {spec.input_name} [batch, {', '.join(map(str, spec.input_shape))}]",
             f"output: {spec.output_name} [batch, {spec.output_width}]"
             + ("; values, not class scores (its head ends in no sigmoid or softmax): the "
                "command line prints them all, in order" if gives_values(spec.head) else ""),
             f"parameters: {model.num_params():,}",
             f"labels ({len(labels)}): {label_text}",
             "outputs by name: " + ", ".join(sorted(
                 {*spec.aliases, *(n for n in spec.node_map if "/" not in n
                                   and n != spec.input_name)})),
             "graph nodes: " + ", ".join(sorted(n for n in spec.node_map if "/" in n))]
    frontend = spec.frontend
    if frontend is not None:
        ms = frontend.frame_seconds * 1000
        lines.append(f"front-end: {frontend.name} ({frontend.n_bands}-band {frontend.log}), "
                     f"a frame every {ms:g} ms at {frontend.sample_rate // 1000} kHz")
        lines.append(f"patches: {frontend.patch_size} frames "
                     f"({frontend.patch_size * frontend.frame_seconds:.2f} "
                     f"s), default hop {frontend.patch_hop} frames "
                     f"({frontend.patch_hop * frontend.frame_seconds:.2f} s)")
    else:
        lines.append(f"audio: none; {without_audio(spec.architecture, spec.input_shape)}")
    return "\n".join(lines)
