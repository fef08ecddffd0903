"""How audio is read, by name: the resamplers and decoders ``resampler=``, ``decoder=``,
``--resampler`` and ``--decoder`` take.

No JAX or NumPy here: the command lines build their parsers from these names. What each one
computes is :mod:`jaxmir.audio`'s and :mod:`jaxmir.decode`'s.
"""

from __future__ import annotations

# Essentia's resampleQuality 0-4: libsamplerate's converter of each that jaxmir reproduces
QUALITY_CONVERTERS = {1: "sinc_medium", 4: "linear"}
RESAMPLERS = ("essentia", "samplerate", "soxr", *(f"essentia-q{q}" for q in QUALITY_CONVERTERS))
# FFmpeg's decoding as the essentia-tensorflow wheels' AudioLoader (16-bit, clipped), or as an
# Essentia built against a recent FFmpeg (its float decoders)
DECODE_MODES = ("essentia", "float")


def canonical_resampler(name: str) -> str:
    """``name`` as outputs and caches record it: ``"essentia-q1"`` (MonoLoader's default
    quality) is ``"essentia"``, one converter under one name."""
    return "essentia" if name == "essentia-q1" else name


def reading_entry(resampler: str, decoder: str | None) -> dict[str, str | None]:
    """How audio was read, as a trained head's or backbone's metadata records it
    (``dataset.audio``); ``decoder=None`` for a run that decodes no file (a stream)."""
    return {"resampler": canonical_resampler(resampler), "decoder": decoder}
