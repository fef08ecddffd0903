"""A small labelled audio set generated from scratch: classes that differ in timbre and rhythm.

For examples and tests: nothing is downloaded. Each class is a family of
signals with random pitch, tempo and level:

* ``pads``: slow, sustained harmonic chords (no onsets);
* ``drums``: decaying noise bursts and kick-like sweeps on a fast pulse;
* ``plucks``: short decaying harmonic notes on a medium pulse.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16000
CLASSES = ("pads", "drums", "plucks")


def _pads(rng, t):
    root = rng.uniform(110, 220)
    chord = [1.0, 1.25, 1.5, 2.0]
    tone = sum(np.sin(2 * np.pi * root * r * t + rng.uniform(0, 6.3)) / (1 + i)
               for i, r in enumerate(chord))
    return tone * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t))


def _events(rng, t, period, make):
    out = np.zeros_like(t)
    start = rng.uniform(0, period)
    while start < t[-1]:
        i = int(start * SAMPLE_RATE)
        event = make(t[:len(t) - i])
        out[i:] += event
        start += period * rng.uniform(0.95, 1.05)
    return out


def _drums(rng, t):
    period = 60.0 / rng.uniform(130, 170) / 2
    noise = lambda u: rng.standard_normal(len(u)) * np.exp(-u * 40)
    kick = lambda u: (np.sin(2 * np.pi * (60 * u + 400 * (1 - np.exp(-u * 30)) / 30))
                      * np.exp(-u * 12))
    return _events(rng, t, period, noise) * 0.5 + _events(rng, t, period * 2, kick)


def _plucks(rng, t):
    period = 60.0 / rng.uniform(90, 120) / 2
    scale = rng.uniform(220, 440) * np.array([1, 9 / 8, 5 / 4, 3 / 2, 5 / 3])

    def note(u):
        f = rng.choice(scale)
        return sum(np.sin(2 * np.pi * f * h * u) / h ** 2 for h in (1, 2, 3, 4)) * np.exp(-u * 6)

    return _events(rng, t, period, note)


_MAKERS = {"pads": _pads, "drums": _drums, "plucks": _plucks}


def synth(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One clip ``[seconds * 16000]`` float32 of class ``kind``, peak 0.5, a little noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    signal = _MAKERS[kind](rng, t) + 0.01 * rng.standard_normal(len(t))
    return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


def write_dataset(root: str | os.PathLike, classes: Sequence[str] = CLASSES, per_class: int = 8,
                  seconds: float = 4.0, seed: int = 0) -> Path:
    """``root/<class>/<class>_<i>.wav`` (16 kHz, 16-bit PCM); returns ``root``. Clips of those
    names an earlier call left beyond ``per_class`` are removed (they would be trained on)."""
    import soundfile

    root = Path(root)
    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for stale in (root / kind).glob(f"{kind}_[0-9][0-9].wav"):
            stale.unlink()
        for i in range(per_class):
            soundfile.write(root / kind / f"{kind}_{i:02d}.wav", synth(kind, seconds, rng),
                            SAMPLE_RATE, subtype="PCM_16")
    return root
