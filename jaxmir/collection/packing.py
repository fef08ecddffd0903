"""Patches of many files packed into fixed-size model calls: a whole collection on two programs.

Each file is cut into patches with Essentia's rules (:func:`jaxmir.pipeline.plan`).
Its patches then go to the model in calls of ``batch`` patches of two kinds:

* a **run**: ``batch`` consecutive regular patches of one file, read from one
  window of its samples (a file's last run may hold fewer, more than half a run
  and than :data:`~jaxmir.stream.SINGLE_LIMIT`, padded with the patches that
  would follow them, as the streaming engine pads its last batch), so that MusiCNN computes
  its timbral convolutions once for the overlapping patches
  (:func:`jaxmir.models.with_overlap_hop`), and takes those it shares with the
  file's run before from that run's carry (on one device); the streaming
  engine's own batch program, the same numbers;
* a **pack**: the patches left over (a file's last few patches, a
  ``"repeat"`` last patch, the one padded patch of a short file), from any
  files, each read from its own *segment* of samples; the segments are laid
  end to end and padded to a whole number of frame hops, so that no frame of
  one segment reads another's samples. A collection's last pack is filled
  with silent segments whose outputs are dropped.

A file's patches are therefore computed by a run's or a pack's program
whatever its length, and outputs equal ``Model.predict``'s up to the float32
summation order of a batched convolution (~1e-7 on tags).

:class:`Packer` only cuts: it turns files into :class:`Call` s, on the host.
Running them (on one or several devices) and collecting each file's outputs
is :func:`jaxmir.collection.compute.analyze_stream`'s.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Hashable

import numpy as np

from jaxmir.frontends import num_frames
from jaxmir.models import shares_overlap, with_overlap_hop
from jaxmir.patches import regular_rows
from jaxmir.pipeline import plan
from jaxmir.stream import BATCH, SINGLE_LIMIT, Windowing, cut_samples, frontend_of

if TYPE_CHECKING:
    from jaxmir.model import Model


@dataclasses.dataclass(frozen=True)
class Call:
    """One model call: ``batch`` patches cut from ``audio`` by ``index``.

    Attributes:
      audio: ``[n_samples]`` float32 at 16 kHz (a run's window, or a pack's segments).
      index: ``[batch, patch_size]`` int32 rows into the call's frame table
        (0: a frame of zeros, ``k + 1``: frame ``k`` of ``audio``).
      run: consecutive patches of one file (the overlap-sharing program).
      owners: ``(file key, patch number)`` of the first ``len(owners)`` rows; the rest is padding.
    """

    audio: np.ndarray
    index: np.ndarray
    run: bool
    owners: tuple[tuple[Hashable, int], ...]


class Packer:
    """Cuts 16-kHz signals into :class:`Call` s of ``batch`` patches (see the module docstring).

    Args:
      model: a patch model with a front-end.
      patch_hop, last_patch, pad: Essentia's patch rules (:func:`jaxmir.pipeline.plan`).
      batch: patches per call.
      compat: the front-end's mode.
    """

    def __init__(self, model: "Model", *, patch_hop: int | None = None, last_patch: str = "discard",
                 pad: str | None = None, batch: int = BATCH, compat: str = "essentia"):
        frontend = frontend_of(model)
        self.model, self.batch, self.compat = model, int(batch), compat
        self.last_patch, self.pad = last_patch, pad
        self.windowing = Windowing.of(frontend, compat)
        self.patch_size = int(model.input_shape[0])
        hop = frontend.patch_hop if patch_hop is None else patch_hop
        self.patch_hop = int(hop) or self.patch_size  # 0: the patch size
        self._modules = {True: with_overlap_hop(model.module, self.patch_hop), False: model.module}
        self._shares_overlap = shares_overlap(self._modules[True])
        frame_hop = frontend.hop_size  # segments are whole hops: frames line up across the pack
        self.segment = -(-self.windowing.length(self.patch_size) // frame_hop) * frame_hop
        self._segment_frames = self.segment // frame_hop
        # the pack's last segment must still give all its frames
        needed = (self.batch - 1) * self._segment_frames + self.windowing.lead + self.patch_size
        assert num_frames(frontend, self.batch * self.segment, compat) >= needed
        self._segments: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._owners: list[tuple[Hashable, int]] = []

    def module(self, call: Call):
        """The Flax module that runs ``call``: a run's shares the overlap of its patches."""
        return self._modules[call.run]

    def cut(self, key: Hashable, audio: np.ndarray) -> tuple[int, list[Call]]:
        """Cut one file: ``(n_patches, calls)``, the calls that are complete now.

        ``audio`` is ``[n_samples]`` float32 at 16 kHz; ``key`` names the file in
        :attr:`Call.owners`. A file's left-over patches wait in the packer until a
        pack is full (or :meth:`flush`). Raises :class:`~jaxmir.errors.InputError`
        for a signal that gives no patch (too short without ``pad``).
        """
        cut = plan(self.model, int(audio.shape[0]), patch_hop=self.patch_hop,
                   last_patch=self.last_patch, pad=self.pad, compat=self.compat, bucket=False)
        rows = cut.index[:cut.n_patches]
        regular = (rows == regular_rows(0, cut.n_patches, self.patch_hop, self.patch_size)).all(1)
        calls, p = [], 0
        while p < cut.n_patches:
            count = min(self.batch, cut.n_patches - p)
            # a model that shares overlap runs a file's last patches padded to a whole run when
            # they fill more than half of it (a run costs about as many packed patches, at ~1.6x a
            # run's patch), else packs them; another gains nothing from a run: its tail is packed
            padded = count > max(SINGLE_LIMIT, self.batch // 2) and self._shares_overlap
            if not (count == self.batch or padded) or not regular[p:p + count].all():
                break
            calls.append(self._run(key, audio, p, count))
            p += count
        for patch in range(p, cut.n_patches):
            calls.extend(self._add(key, patch, audio, rows[patch]))
        return cut.n_patches, calls

    def flush(self) -> list[Call]:
        """The last pack, filled up with silent segments; ``[]`` when no patch waits."""
        if not self._owners:
            return []
        while len(self._segments) < self.batch:
            self._segments.append(np.zeros(self.segment, np.float32))
            self._rows.append(np.zeros(self.patch_size, np.int32))
        return [self._pack()]

    def _run(self, key: Hashable, audio: np.ndarray, first_patch: int, count: int) -> Call:
        """``count`` patches from ``first_patch``, padded with the ones that follow to ``batch``."""
        hop = self.patch_hop
        first_frame = first_patch * hop
        span = (self.batch - 1) * hop + self.patch_size
        window = cut_samples(audio, 0, self.windowing.start(first_frame),
                             self.windowing.length(span))
        index = self.windowing.regular_index(self.batch, hop, self.patch_size)
        owners = tuple((key, first_patch + j) for j in range(count))
        return Call(window, index, True, owners)

    def _add(self, key: Hashable, patch: int, audio: np.ndarray, row: np.ndarray) -> list[Call]:
        """Queue one patch (its frame-table ``row`` in the whole signal); a full pack when it
        fills."""
        used = row[row > 0]
        # every frame used is within a patch of it
        first_frame = int(used.min()) - 1 if used.size else 0
        segment = cut_samples(audio, 0, self.windowing.start(first_frame), self.segment)
        local = np.where(row > 0, row - first_frame + self.windowing.lead, 0)
        self._segments.append(segment)
        self._rows.append(local.astype(np.int32))
        self._owners.append((key, patch))
        return [self._pack()] if len(self._segments) == self.batch else []

    def _pack(self) -> Call:
        shift = self._segment_frames * np.arange(len(self._rows), dtype=np.int32)[:, None]
        rows = np.stack(self._rows)
        index = np.where(rows > 0, rows + shift, 0).astype(np.int32)
        call = Call(np.concatenate(self._segments), index, False, tuple(self._owners))
        self._segments, self._rows, self._owners = [], [], []
        return call
