"""The ``jaxmir`` command: tag audio files, extract embeddings, describe a model.

    jaxmir tag song.mp3 other.wav --model mtt-musicnn --top 5
    jaxmir tag *.wav --format json --output tags.json
    jaxmir embed *.mp3 --output embeddings/ --layer penultimate
    jaxmir info msd-musicnn

A file that cannot be used (unreadable, a directory, too short, NaN samples,
...) is reported on stderr, naming it; the others are still processed, and the
exit status is 1. Compiled programs are kept in JAX's persistent cache
(``$JAXMIR_CACHE_DIR/jax``, default ``~/.cache/jaxmir/jax``; ``--no-cache`` or
``JAXMIR_NO_CACHE=1`` turns it off) so that the next run starts faster.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

FORMATS = ("text", "json", "csv")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# -- set-up ---------------------------------------------------------------------------------
def _enable_cache(disabled: bool) -> None:
    if disabled:
        return
    from jaxmir import cache

    cache.enable(cache.cache_dir(), _warn)


def _warn(message: str) -> None:
    print(f"jaxmir: warning: {message}", file=sys.stderr)


def _error(message: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(f"jaxmir: error: {message}", file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(f"jaxmir: error: {message}", file=sys.stderr)


def _load_model(name: str | None, backbone: str | None = None, audio: bool = True):
    """The model to run; an embedding head is joined to ``backbone``, or to the one its JSON names."""
    import jaxmir
    from jaxmir import catalog
    from jaxmir.loading import backbone_of

    model = jaxmir.load(name or catalog.default_name())
    if model.architecture != "head":
        if backbone:
            raise jaxmir.InputError(f"--backbone is for embedding heads; {model.source} is a "
                                    f"{model.architecture} model that runs on audio by itself")
        return model
    if backbone is None and audio:
        backbone = backbone_of(model)
        if backbone:
            _warn(f"{model.source} is an embedding head; using the backbone its metadata names: "
                  f"{backbone}")
    return jaxmir.load(name, backbone=backbone) if backbone else model


# -- patch options ----------------------------------------------------------------------------
def patch_hop_of(model, overlap: float | None, patch_hop: int | None) -> int | None:
    """Frames between patches from ``--overlap`` seconds or ``--patch-hop`` frames (None: default 93)."""
    from jaxmir import pipeline
    from jaxmir.errors import InputError

    if patch_hop is not None:
        return patch_hop
    if overlap is None:
        return None
    frontend = pipeline.frontend_of(model)
    size, seconds = frontend.patch_size, frontend.frame_seconds
    hop = size - int(round(overlap / seconds))
    if not 0 <= overlap or hop < 1:
        raise InputError(f"--overlap {overlap:g} s: patches last {size * seconds:.3f} s "
                         f"({size} frames), so the overlap must be at least 0 and less than that")
    return hop


def _process(files: Sequence[str], work: Callable[[str], object], progress: bool,
             show: Callable[[str, object], str] | None = None) -> tuple[list, int]:
    """``work(file)`` for each file; ``([(file, result or None, error or None)], n_failed)``.

    ``show(file, result)``, if given, is printed as soon as a file is done.
    """
    from tqdm import tqdm

    from jaxmir.errors import JaxmirError

    results, failed = [], 0
    bar = tqdm(files, unit="file", disable=not progress or len(files) < 2 or None,
               file=sys.stderr, dynamic_ncols=True)
    for path in bar:
        try:
            result = work(path)
            results.append((path, result, None))
            if show is not None:
                tqdm.write(show(path, result), file=sys.stdout, end="")
            continue
        except JaxmirError as err:
            message = str(err)
        except MemoryError:
            message = "out of memory"
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
            message = f"unexpected {type(err).__name__}: {err}"
        if not message.startswith(path):
            message = f"{path}: {message}"
        _error(message)
        results.append((path, None, message))
        failed += 1
    return results, failed


def _emit(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    Path(output).write_text(text, encoding="utf-8")


# -- tag ----------------------------------------------------------------------------------------
def _tag_one(model, args, hop):
    import numpy as np

    from jaxmir import pipeline
    from jaxmir.audio import load_audio

    def work(path: str) -> dict:
        audio = load_audio(path, 16000, resampler=args.resampler)
        plan = pipeline.plan(model, int(audio.shape[0]), patch_hop=hop,
                             last_patch=args.last_patch, pad=args.pad)
        taggram = np.asarray(pipeline.run_plan(model, audio, plan)["predictions"], np.float64)
        mean = taggram.mean(axis=0)
        order = np.argsort(-mean, kind="stable")[:args.top or len(mean)]
        return {"file": path, "duration_s": round(audio.shape[0] / 16000, 4),
                "n_patches": int(taggram.shape[0]),
                "top": [{"label": model.labels[i], "score": float(mean[i])} for i in order],
                "mean": [float(v) for v in mean],
                "patch_starts_s": [round(float(s), 4) for s in plan.patch_start_seconds],
                "taggram": taggram.astype(np.float32).tolist()}
    return work


def text_block(path: str, result: dict) -> str:
    """musicnn's ``[file] Top3 tags:`` then `` - tag`` lines, with the mean probability."""
    width = max(len(t["label"]) for t in result["top"])
    lines = [f"[{path}] top {len(result['top'])} tags ({result['n_patches']} patches):"]
    lines += [f" - {t['label']:<{width}}  {t['score']:.4f}" for t in result["top"]]
    return "\n".join(lines) + "\n"


def format_text(results: list) -> str:
    return "".join(text_block(path, result) for path, result, _ in results if result is not None)


def format_json(results: list, header: dict) -> str:
    files = [result if result is not None else {"file": path, "error": error}
             for path, result, error in results]
    return json.dumps({**header, "files": files}, indent=1) + "\n"


def format_csv(results: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "rank", "label", "score"])
    for path, result, _ in results:
        for rank, tag in enumerate(result["top"] if result else [], start=1):
            writer.writerow([path, rank, tag["label"], f"{tag['score']:.6f}"])
    return buffer.getvalue()


def cmd_tag(args) -> int:
    from jaxmir import pipeline

    model = _load_model(args.model, args.backbone)
    frontend = pipeline.frontend_of(model)  # a model that does not take audio fails here, once
    hop = patch_hop_of(model, args.overlap, args.patch_hop)
    stream = args.format == "text" and args.output is None
    results, failed = _process(args.files, _tag_one(model, args, hop), not args.no_progress,
                               show=text_block if stream else None)
    if stream:
        return EXIT_FAILED if failed else EXIT_OK
    if args.format == "text":
        text = format_text(results)
    elif args.format == "csv":
        text = format_csv(results)
    else:
        size, seconds = frontend.patch_size, frontend.frame_seconds
        resolved = (hop if hop is not None else frontend.patch_hop) or size
        from jaxmir import catalog

        header = {"model": args.model or catalog.default_name(), "source": str(model.source),
                  "labels": list(model.labels), "patch_frames": size, "patch_hop_frames": resolved,
                  "patch_s": round(size * seconds, 4), "patch_hop_s": round(resolved * seconds, 4),
                  "last_patch": args.last_patch, "pad": args.pad}
        text = format_json(results, header)
    _emit(text, args.output)
    return EXIT_FAILED if failed else EXIT_OK


# -- embed ----------------------------------------------------------------------------------------
def _npy_names(files: Sequence[str]) -> dict[str, str]:
    """One ``<stem>.npy`` per input; repeated stems get ``_2``, ``_3``, ..."""
    names, used = {}, set()
    for path in files:
        stem = Path(path).stem or "audio"
        name, count = f"{stem}.npy", 1
        while name in used:
            count += 1
            name = f"{stem}_{count}.npy"
        used.add(name)
        names[path] = name
    return names


def cmd_embed(args) -> int:
    import numpy as np

    from jaxmir import pipeline
    from jaxmir.audio import load_audio
    from jaxmir.errors import InputError

    model = _load_model(args.model, args.backbone)
    pipeline.frontend_of(model)
    hop = patch_hop_of(model, args.overlap, args.patch_hop)
    model.resolve_output(args.layer)  # an unknown name fails here, once, listing the names
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--output {out_dir} is a file; give a folder for the .npy files")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _npy_names(args.files)

    def work(path: str) -> str:
        audio = load_audio(path, 16000, resampler=args.resampler)
        plan = pipeline.plan(model, int(audio.shape[0]), patch_hop=hop,
                             last_patch=args.last_patch, pad=args.pad)
        values = np.asarray(pipeline.run_plan(model, audio, plan, args.layer)[args.layer])
        target = out_dir / names[path]
        np.save(target, values.astype(np.float32))
        return f"{path} -> {target} {list(values.shape)}"

    results, failed = _process(args.files, work, not args.no_progress)
    if not args.quiet:
        _emit("".join(f"{line}\n" for _, line, _ in results if line), None)
    return EXIT_FAILED if failed else EXIT_OK


# -- info ----------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    model = _load_model(args.model, args.backbone, audio=False)
    _emit(model.describe() + "\n", None)
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _backbone_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-b", "--backbone", metavar="NAME|PATH", default=None,
                        help="for an embedding head (Essentia's TensorflowPredict2D models): the "
                             "model whose embeddings it takes (default: the one its JSON names)")


def _patch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", metavar="NAME|PATH", default=None,
                        help="a shipped model (msd-musicnn, mtt-musicnn, msd-vgg, mtt-vgg), or a "
                             "path to a .pb/.npz (default: msd-musicnn)")
    _backbone_option(parser)
    hop = parser.add_mutually_exclusive_group()
    hop.add_argument("-ov", "--overlap", metavar="S", type=float, default=None,
                     help="overlap of consecutive patches in seconds (patches last 3 s for "
                          "MusiCNN/VGG); default: Essentia's hop of 93 frames, 1.5 s overlap. "
                          "(musicnn's --overlap is the hop between patches; use --patch-hop for that)")
    hop.add_argument("--patch-hop", metavar="FRAMES", type=_positive_int, default=None,
                     help="frames between patch starts (default 93; 0 = patch size, no overlap)")
    parser.add_argument("--last-patch", choices=("discard", "repeat"), default="discard",
                        help="frames after the last full patch: drop them (Essentia's default) "
                             "or make one more patch of them, repeated")
    parser.add_argument("--pad", choices=("zero", "repeat"), default=None,
                        help="pad audio shorter than one patch (default: report it as too short)")
    parser.add_argument("--resampler", choices=("essentia", "soxr"), default="essentia",
                        help="resampling to 16 kHz: libsamplerate as Essentia (default) or soxr "
                             "as librosa/musicnn")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not use the persistent compilation cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxmir", description="Essentia's MusiCNN, VGG and VGGish models in JAX: tag music, "
                                   "extract embeddings.",
        epilog="Compiled programs are cached in $JAXMIR_CACHE_DIR/jax (default "
               "~/.cache/jaxmir/jax); JAXMIR_NO_CACHE=1 or --no-cache turns that off.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    tag = commands.add_parser("tag", help="the most likely tags of audio files",
                              description="Average the model's predictions over the patches of each "
                                          "file and print the top tags.")
    tag.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3, ...)")
    _patch_options(tag)
    tag.add_argument("-n", "--top", "--topN", metavar="N", type=_positive_int, default=3,
                     help="how many tags to list (default 3; 0 = all)")
    tag.add_argument("-f", "--format", choices=FORMATS, default="text",
                     help="text (default), json (with the per-patch taggram) or csv "
                          "(file,rank,label,score)")
    tag.add_argument("-o", "--output", "--save", metavar="PATH", default=None,
                     help="write to PATH instead of standard output")
    tag.set_defaults(func=cmd_tag)

    embed = commands.add_parser("embed", help="embeddings of audio files, one .npy per file",
                                description="Write the chosen layer for every patch of each file "
                                            "to OUTPUT/<name>.npy, shaped [n_patches, ...].")
    embed.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    embed.add_argument("-o", "--output", metavar="DIR", required=True, help="folder for the .npy files")
    embed.add_argument("-l", "--layer", metavar="NAME", default="embeddings",
                       help="output name (default embeddings: model/dense/BiasAdd for MusiCNN, "
                            "model/vggish/embeddings for VGGish); `jaxmir info MODEL` lists them")
    _patch_options(embed)
    embed.add_argument("-q", "--quiet", action="store_true", help="do not list the files written")
    embed.set_defaults(func=cmd_embed)

    info = commands.add_parser("info", help="describe a model",
                               description="Architecture, input, outputs, labels and parameters.")
    info.add_argument("model", metavar="MODEL", help="a shipped name or a path to a .pb/.npz")
    _backbone_option(info)
    info.set_defaults(func=cmd_info, no_cache=True)

    from jaxmir.train import cli as train_cli  # argparse only: optax is imported when it runs

    train_cli.add_parser(commands)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"jaxmir {version('jaxmir')}"
    except Exception:  # noqa: BLE001 -- running from a checkout
        return "jaxmir (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a file or model failed, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _enable_cache(getattr(args, "no_cache", False))
    from jaxmir.errors import JaxmirError

    try:
        return args.func(args)
    except JaxmirError as err:
        _error(str(err))
        return EXIT_FAILED
    except OSError as err:  # e.g. --output in a folder that cannot be written
        _error(f"{err.filename or ''}: {err.strerror or err}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
