"""Per-patch embeddings of audio files, computed once and cached on disk.

Each file's ``[patches, features]`` float32 array is stored as a ``.npy``
(read back with ``allow_pickle=False``), written atomically, under a name
derived from the backbone, the layer, the code that computes it (jaxmir's
source, and the versions of JAX and of the decoding and resampling
libraries) and the file's absolute path, size and modification time: a
changed file, or a jaxmir that decodes or computes differently, computes
anew; an unchanged one is reused across epochs, folds and runs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxmir import catalog, interrupts
from jaxmir.atomic import write_atomically
from jaxmir.audio import check_reading
from jaxmir.audio_choices import canonical_resampler
from jaxmir.collection.compute import error_message
from jaxmir.errors import InputError, JaxmirError, JaxmirWarning, ShortAudioError

DEFAULT_CACHE = Path.home() / ".cache" / "jaxmir" / "embeddings"


def cache_root() -> Path:
    """``$JAXMIR_CACHE_DIR/embeddings`` or ``~/.cache/jaxmir/embeddings``."""
    root = os.environ.get("JAXMIR_CACHE_DIR")
    return Path(root) / "embeddings" if root else DEFAULT_CACHE


def file_identity(path: str | os.PathLike) -> dict:
    """What identifies a file's content cheaply: absolute path, size and mtime (ns)."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(backbone_id: str, layer: str, path: str | os.PathLike, kind: str = "embedding",
              resampler: str = "essentia", decoder: str = "essentia") -> str:
    """A hex digest naming the cached features of ``path`` as this jaxmir computes them from the
    audio read with ``resampler`` and ``decoder`` (an upgrade or a fix of a decoder must not
    reuse features decoded before it)."""
    text = json.dumps({"kind": kind, "backbone": backbone_id, "layer": layer,
                       "resampler": canonical_resampler(resampler), "decoder": decoder,
                       "code": computed_by(), **file_identity(path)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def source_digest(package: Path) -> str:
    """A hex digest of every Python source below ``package``, names and bytes."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def computed_by() -> str:
    """What computes the features: jaxmir's source (its version stays 0.1.0 through fixes), and
    the versions of what decodes, resamples and runs the model (FFmpeg's libraries, libsndfile,
    libsamplerate and soxr's bindings, JAX)."""
    import av
    import soundfile

    libraries = ", ".join(f"{name} {'.'.join(map(str, av.library_versions[name]))}"
                          for name in ("libavformat", "libavcodec", "libswresample"))
    packages = ", ".join(f"{name} {importlib.metadata.version(name)}"
                         for name in ("jax", "jaxlib", "av", "samplerate", "soxr", "soundfile"))
    return f"jaxmir {source_digest(Path(__file__).resolve().parents[1])[:16]}, {packages}, " \
           f"{libraries}, libsndfile {soundfile.__libsndfile_version__}"


def save_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda out: np.lib.format.write_array(
        out, np.ascontiguousarray(array), allow_pickle=False))


def load_array(path: Path) -> np.ndarray | None:
    """A cached array, or ``None`` when absent or unreadable (it is then recomputed)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def cached(compute: Callable[[str], np.ndarray], paths: Sequence[str], key: Callable[[str], str],
           root: Path | None, progress: bool = False) -> tuple[list[np.ndarray | None], list[str]]:
    """``compute(path)`` for each path, through the cache under ``root`` (``None``: no cache).

    A file that fails (any :class:`JaxmirError`: unreadable, too short, ...) is
    reported with a warning, skipped and counted: its entry is ``None`` and its
    message is returned in the second list. A cache that cannot be written (read-only, a
    file in a folder's place, a full disk) is turned off with one warning, as the compilation
    cache is.
    """
    results: list[np.ndarray | None] = []
    failures: list[str] = []
    iterator = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="features", unit="file", leave=False,
                        disable=None)  # a terminal's: none in a log file
    for path in iterator:
        interrupts.raise_if_received()  # a Ctrl-C that a decoder or JAX swallowed
        try:
            entry = root / f"{key(path)}.npy" if root is not None else None
        except OSError as err:
            failures.append(f"{path}: {err.strerror or err}")
            results.append(None)
            continue
        value = load_array(entry) if entry is not None and entry.exists() else None
        if value is None:
            try:
                value = np.asarray(compute(path), np.float32)
            except ShortAudioError as err:  # training takes whole patches: no padding to suggest
                failures.append(f"{path}: {err.length}")
                results.append(None)
                continue
            except JaxmirError as err:
                failures.append(error_message(str(path), err))  # the file named once
                results.append(None)
                continue
            if entry is not None:
                try:
                    save_array(entry, value)
                except OSError as err:
                    reason = "a file is in its place" if root.is_file() else err.strerror or err
                    _cache_off(root, str(reason))
                    root = None
        results.append(value)
    for message in failures:
        warnings.warn(f"skipped {message}", JaxmirWarning, stacklevel=2)
    return results, failures


_TURNED_OFF: set[Path] = set()  # said once a process: MFCCs for smoothing take the cache too


def _cache_off(root: Path, reason: str) -> None:
    if root not in _TURNED_OFF:
        _TURNED_OFF.add(root)
        warnings.warn(f"embedding cache off: {root} cannot be written ({reason}); the "
                      "embeddings are computed anew on every run", JaxmirWarning, stacklevel=3)


def backbone_id(name_or_path: str) -> str:
    """A stable name for a backbone: a shipped name with its weights' sha256 (a jaxmir shipping
    other weights under the name computes anew), or a file path with its size and mtime."""
    if os.path.isfile(name_or_path):
        return json.dumps(file_identity(name_or_path), sort_keys=True)
    if str(name_or_path) in catalog.names():
        return f"{name_or_path}@{catalog.catalog()['models'][str(name_or_path)]['sha256']}"
    return str(name_or_path)


def embed_file(model, layer: str, resampler: str = "essentia",
               decoder: str = "essentia") -> Callable[[str], np.ndarray]:
    """``path -> [patches, features]``: ``model.predict`` at ``layer`` on the file read at 16 kHz
    with ``resampler`` and ``decoder`` (:func:`jaxmir.load_audio`)."""
    from jaxmir.audio import load_audio

    def compute(path: str) -> np.ndarray:
        audio = load_audio(path, resampler=resampler, decoder=decoder)
        values = np.asarray(model.predict(audio, 16000, output=layer), np.float32)
        values = values.reshape(values.shape[0], -1)
        if not np.all(np.isfinite(values)):
            raise InputError(f"the {layer} embeddings are not finite")
        return values

    return compute


def extract_embeddings(model, backbone: str, paths: Sequence[str], layer: str,
                       cache: str | os.PathLike | None | bool = True,
                       progress: bool = False, *, resampler: str = "essentia",
                       decoder: str = "essentia"
                       ) -> tuple[list[np.ndarray | None], list[str]]:
    """Per-patch embeddings ``[patches, features]`` of each file (``None`` for a failed file).

    Args:
      model: the backbone :class:`jaxmir.Model`.
      backbone: its name or path (part of the cache key).
      paths: audio files.
      layer: the output name, e.g. ``model/dense/BiasAdd``.
      cache: a folder, ``True`` (:func:`cache_root`) or ``False``/``None`` (no cache).
      progress: a progress bar.
      resampler, decoder: how the files are read (:func:`jaxmir.load_audio`), as the head
        will be deployed: ``resampler="essentia-q4"`` is ``MonoLoader(resampleQuality=4)``, as
        Essentia's model pages load audio.
    """
    check_reading(resampler, decoder)  # once, rather than as every file's failure
    root = cache_root() if cache is True else (Path(cache) if cache else None)
    ident = backbone_id(backbone)
    tap, _ = model.resolve_output(layer)  # a name and its alias ('logits') are one entry
    return cached(embed_file(model, layer, resampler, decoder), paths,
                  lambda p: cache_key(ident, tap, p, resampler=resampler, decoder=decoder),
                  root, progress)
