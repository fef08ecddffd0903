"""The resamplers by name, as ``resampler=`` and ``--resampler`` take them.

No JAX here: the command lines build their parsers from these names. What each one computes is
:mod:`jaxmir.audio`'s.
"""

from __future__ import annotations

# Essentia's resampleQuality 0-4: libsamplerate's converter of each that jaxmir reproduces
QUALITY_CONVERTERS = {1: "sinc_medium", 4: "linear"}
RESAMPLERS = ("essentia", "samplerate", "soxr", *(f"essentia-q{q}" for q in QUALITY_CONVERTERS))


def canonical_resampler(name: str) -> str:
    """``name`` as outputs and caches record it: ``"essentia-q1"`` (MonoLoader's default
    quality) is ``"essentia"``, one converter under one name."""
    return "essentia" if name == "essentia-q1" else name
