"""Cut log-mel frames into the fixed-size patches the models take.

Follows Essentia's ``VectorRealToTensor`` as ``TensorflowPredictMusiCNN`` /
``TensorflowPredictVGGish`` drive it: patch ``p`` holds frames
``[p * hop, p * hop + patch_size)``; ``hop == 0`` means ``hop = patch_size``;
with ``last_patch="discard"`` frames after the last complete patch are dropped;
with ``"repeat"``, if any frames remain after the last complete patch's hop,
one more patch is made of those frames repeated cyclically
(``frame[start + j % remaining]``), even when they were already covered.

Where Essentia would return nothing (fewer frames than a patch and
``"discard"``, or no frames at all), :func:`make_patches` raises
:class:`~jaxmir.errors.ShortAudioError` (an ``InputError``) unless ``pad`` asks for one
padded patch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jaxmir.checks import is_whole, scalar_of
from jaxmir.errors import InputError, ShortAudioError

if TYPE_CHECKING:  # imported when a JAX array is cut (:func:`_jnp`)
    import jax

LAST_PATCH_MODES = ("discard", "repeat")
PAD_MODES = (None, "zero", "repeat")


def _check_int(value, name: str, minimum: int) -> int:
    value = scalar_of(value)
    if not is_whole(value, minimum):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _resolve(n_frames, patch_size, patch_hop, last_patch) -> tuple[int, int, int]:
    n_frames = _check_int(n_frames, "n_frames", 0)
    patch_size = _check_int(patch_size, "patch_size", 1)
    patch_hop = _check_int(patch_hop, "patch_hop", 0) or patch_size
    if patch_hop > patch_size:
        raise InputError(f"patch_hop {patch_hop} is larger than patch_size {patch_size}; "
                         "Essentia accepts 0 (= patch_size) up to patch_size")
    if last_patch not in LAST_PATCH_MODES:
        raise InputError(f"unknown last_patch {last_patch!r}; accepted: 'discard', 'repeat'")
    return n_frames, patch_size, patch_hop


def patch_starts(n_frames: int, patch_size: int, patch_hop: int,
                 last_patch: str = "discard") -> np.ndarray:
    """First frame of each patch Essentia makes, ``[n_patches]`` int64 (possibly empty).

    With ``last_patch="repeat"`` the extra, cyclically repeated patch starts
    at ``n_full * hop``.
    """
    n_frames, patch_size, patch_hop = _resolve(n_frames, patch_size, patch_hop, last_patch)
    n_full = (n_frames - patch_size) // patch_hop + 1 if n_frames >= patch_size else 0
    starts = np.arange(n_full, dtype=np.int64) * patch_hop
    if last_patch == "repeat" and n_frames - n_full * patch_hop > 0:
        starts = np.append(starts, np.int64(n_full * patch_hop))
    return starts


def _patch_indices(n_frames: int, patch_size: int, patch_hop: int, last_patch: str) -> np.ndarray:
    """Frame index of every patch row, ``[n_patches, patch_size]``."""
    starts = patch_starts(n_frames, patch_size, patch_hop, last_patch)
    rows = np.arange(patch_size)
    index = starts[:, None] + rows[None, :]
    if index.size and index[-1, -1] >= n_frames:  # the "repeat" patch
        remaining = n_frames - starts[-1]
        index[-1] = starts[-1] + rows % remaining
    return index


def regular_rows(first: int, stop: int, hop: int, size: int) -> np.ndarray:
    """``[stop - first, size]`` int32 frame-table rows of patches ``first .. stop - 1`` cut every
    ``hop`` frames, in the tables the model's programs read: row ``k + 1`` is frame ``k``
    (row 0 is a frame of zeros)."""
    starts = hop * np.arange(first, stop, dtype=np.int32)
    return (starts[:, None] + np.arange(1, size + 1, dtype=np.int32)[None, :]).astype(np.int32)


def make_patches(frames: np.ndarray | jax.Array, patch_size: int, patch_hop: int,
                 last_patch: str = "discard", pad: str | None = None,
                 frames_per_second: float | None = None) -> np.ndarray | jax.Array:
    """Cut ``[..., n_frames, n_bands]`` frames into ``[..., n_patches, patch_size, n_bands]``.

    Args:
      frames: log-mel frames (NumPy or JAX array; the result is the same kind).
      patch_size: frames per patch (MusiCNN/VGG 187, VGGish 96).
      patch_hop: frames between patch starts; 0 means ``patch_size``
        (Essentia's default 93 for both; musicnn's package uses 187).
      last_patch: ``"discard"`` or ``"repeat"`` (see the module docstring).
      pad: what to do when the frames would give no patch at all (fewer than
        ``patch_size`` with ``"discard"``, or none): ``None`` raises
        :class:`~jaxmir.errors.ShortAudioError`; ``"zero"`` appends frames of 0.0 to make one patch
        (0.0 is digital silence for MusiCNN features, not for VGGish, whose
        silence is ``ln(0.01)``); ``"repeat"`` makes one patch of the frames
        repeated cyclically. Inputs long enough for a patch are not padded.
      frames_per_second: only used to state durations in error messages
        (62.5 for MusiCNN, 100 for VGGish).
    """
    shape = np.shape(frames)
    if len(shape) < 2:
        raise InputError(f"frames have shape {list(shape)}; expected [..., n_frames, n_bands]")
    n_frames = shape[-2]
    if pad not in PAD_MODES:
        raise InputError(f"unknown pad {pad!r}; accepted: None, 'zero', 'repeat'")
    n_frames, patch_size, patch_hop = _resolve(n_frames, patch_size, patch_hop, last_patch)
    xp = np if isinstance(frames, np.ndarray) else _jnp()
    index = _patch_indices(n_frames, patch_size, patch_hop, last_patch)
    if index.shape[0] == 0:
        if pad is None or (pad == "repeat" and n_frames == 0):
            raise _too_short(n_frames, patch_size, last_patch, pad, frames_per_second)
        if pad == "zero":
            widths = [(0, 0)] * (len(shape) - 2) + [(0, patch_size - n_frames), (0, 0)]
            return xp.pad(frames, widths)[..., None, :, :]
        index = (np.arange(patch_size) % n_frames)[None, :]
    return xp.take(frames, index, axis=-2)


def _jnp():
    import jax.numpy as jnp

    return jnp


def _too_short(n_frames: int, patch_size: int, last_patch: str, pad,
               fps: float | None) -> ShortAudioError:
    def amount(frames: int) -> str:
        return f"{frames} frames" + (f" ({frames / fps:.2f} s)" if fps else "")

    length = f"{amount(n_frames)} is too short for one patch of {amount(patch_size)}"
    if pad == "repeat":
        return ShortAudioError("no frames to repeat: pad='repeat' needs at least one frame; use "
                               "pad='zero'", length,
                               "no frames to repeat: --pad repeat needs at least one frame; use "
                               "--pad zero")
    return ShortAudioError(
        f"{length} with last_patch={last_patch!r} (Essentia would return no predictions); pass "
        "last_patch='repeat', pad='zero' or pad='repeat' to get one padded patch (on the "
        "command line: --last-patch repeat, --pad zero, --pad repeat), or give longer audio",
        length,
        f"{length} with --last-patch {last_patch} (Essentia would return no predictions); pass "
        "--last-patch repeat, --pad zero or --pad repeat to get one padded patch, or give "
        "longer audio")
