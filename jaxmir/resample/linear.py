"""libsamplerate's linear interpolator (``SRC_LINEAR``) as Essentia calls it: Essentia's
``resampleQuality=4``, computed with libsamplerate's positions, float arithmetic and calls.

Output ``k`` lies at fraction ``f`` past input ``c - 1`` by libsamplerate's position recurrence
(:func:`jaxmir.resample.positions.positions`) and is ``float(x[c-1] + f * float(x[c] -
x[c-1]))``, the first sample standing before the first. The recurrence does not depend on how
the input is cut into calls (a call that steps past its end carries the excess into the next
exactly), so neither do the outputs' values; the calls decide where the signal ends and what a
call of one frame reads:

- ``Resample(quality=4)`` on an array is one call over it; ``MonoLoader(resampleQuality=4)``'s
  streaming ``Resample`` makes calls of ``call_frames`` (4096) and gives the frames a call
  leaves unused to the next one.
- A call of ``n`` frames from ``s`` stops at its first output whose ``(c - s) + f``, added in
  double, reaches ``n``. An output within ~2**-42 of a 4096-frame call's last frame rounds so
  (14.841 kHz -> 16 kHz at frame 32,767): the call leaves that frame, the next starts there,
  and every later call starts a frame earlier. At the end, the frame left makes a call alone.
- A call of one frame reads the value before its buffer (libsndfile/libsamplerate#208):
  the sample before, or 0 where the call starts one of Essentia's buffers of
  :data:`BUFFER_FRAMES` (a signal of one sample; a file's last call at a multiple of it).
"""

from __future__ import annotations

import math

import numpy as np

from jaxmir.errors import AudioError
from jaxmir.resample.positions import positions

BUFFER_FRAMES = 65_536


class LinearInterpolator:
    """libsamplerate's linear interpolator at ``ratio`` (outputs per input, Essentia's float32
    value), fed chunk by chunk: :meth:`push` gives the outputs no later sample changes,
    :meth:`close` the rest. ``call_frames``: MonoLoader's calls (4096); ``None``: one call over
    the whole signal, as ``Resample`` on an array."""

    def __init__(self, ratio: float, call_frames: int | None = None):
        self.ratio, self.step, self.call_frames = ratio, 1.0 / ratio, call_frames
        self.c, self.f = 0, 0.0        # the next output's right sample and fraction
        self.start = 0                 # the first frame of the call not yet walked
        self.kept = np.zeros(0, np.float32)  # the samples from index self.first on
        self.first = 0
        self.n = 0
        self.closed = False

    def push(self, x: np.ndarray) -> np.ndarray:
        """Float32 ``[k]`` outputs of the signal so far, given ``x`` ``[n]`` more of it."""
        if self.closed:
            raise AudioError("push after close: this LinearInterpolator is closed; create a new "
                             "one")
        x = np.asarray(x, np.float32)
        self.kept = np.concatenate([self.kept, x])
        self.n += x.shape[0]
        # outputs at least a frame before the end pass any call's end test, and no later call
        # of one frame reads before them
        c, f = self._outputs(self.n - 2)
        if self.call_frames is not None:
            self._walk_calls(c, f)
        values = self._values(c, f, None)
        self._drop()
        return values

    def close(self) -> np.ndarray:
        """The last outputs, as the signal's last call (or calls) makes them (none after the
        first call)."""
        n, spent = self.n, self.closed
        self.closed = True
        if n == 0 or spent:
            return np.zeros(0, np.float32)
        c, f = self._outputs(n - 1)
        start = self.start if self.call_frames is not None else 0
        size = n - start
        left = (c == n - 1) & (float(size - 1) + f >= size)  # beyond the last call's end test
        if left.any() and self.call_frames is None:  # one call: never made
            c, f, left = c[~left], f[~left], left[~left]
        elif left.any():  # the frame they lie on comes back alone, and that call makes them
            start = n - 1
        else:
            left = c == start  # made by a last call of one frame, if it is one
        alone = n - start == 1 and start % BUFFER_FRAMES == 0
        return self._values(c, f, left if alone else None)

    def _walk_calls(self, c: np.ndarray, f: np.ndarray) -> None:
        """Move :attr:`start` past the calls whose last frame's outputs are all in ``c``: each
        ends where the next begins, a frame early where an output on its last frame rounds the
        end test up."""
        frames = self.call_frames
        while self.start + frames - 1 <= self.n - 2:
            last = self.start + frames - 1
            on_last = slice(*np.searchsorted(c, [last, last + 1]))
            rounds = bool(np.any(float(frames - 1) + f[on_last] >= frames))
            self.start = last if rounds else last + 1

    def _outputs(self, last: int) -> tuple[np.ndarray, np.ndarray]:
        """``(c, f)`` of the next outputs whose right sample is at most ``last``; the state moves
        past them."""
        out_c, out_f = [], []
        while self.c <= last:
            count = int(math.ceil((last - self.c + 2) * self.ratio)) + 2
            frac, advance, after = positions(self.step, self.f, count)
            centres = self.c + np.concatenate([[0], np.cumsum(advance[:-1])])
            take = int(np.searchsorted(centres, last, side="right"))
            out_c.append(centres[:take])
            out_f.append(frac[:take])
            if take < count:
                self.c, self.f = int(centres[take]), float(frac[take])
            else:
                self.c, self.f = int(centres[-1] + advance[-1]), float(after)
        if not out_c:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(out_c), np.concatenate(out_f)

    def _values(self, c: np.ndarray, f: np.ndarray, zero_left: np.ndarray | None) -> np.ndarray:
        """The outputs at ``(c, f)``; where ``zero_left``, the sample before is read as 0."""
        if c.size == 0:
            return np.zeros(0, np.float32)
        right = self.kept[c - self.first]
        left = self.kept[np.maximum(c - 1, 0) - self.first]
        if zero_left is not None:
            left = np.where(zero_left, np.float32(0), left)
        return (left.astype(np.float64) + f * (right - left).astype(np.float64)).astype(np.float32)

    def _drop(self) -> None:
        """Forget the samples no output needs any more (all before the next one's left)."""
        drop = min(max(self.c - 1, 0) - self.first, self.kept.shape[0])
        if drop > 0:  # those not yet pushed are not dropped: they come next
            self.kept = self.kept[drop:]
            self.first += drop
