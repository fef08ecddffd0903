"""``argparse`` types shared by the command lines (``jaxmir``, ``jaxmir train-head``)."""

from __future__ import annotations

import argparse
from typing import Callable

from jaxmir.audio_choices import DECODE_MODES, RESAMPLERS, canonical_resampler


def whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """An ``argparse`` type: an integer from ``least`` to ``most`` (no bound when ``None``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {value}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"expected a whole number <= {most}, got {value}")
        return value

    return parse


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """``--resampler`` and ``--decoder``: how audio files are read (:func:`jaxmir.load_audio`)."""
    parser.add_argument("--resampler", choices=RESAMPLERS, type=canonical_resampler,
                        default="essentia",
                        help="resampling to 16 kHz: Essentia's converter (default; in JAX from "
                             "the usual rates of 22.05 kHz and above, within 1e-6 of it), "
                             "libsamplerate itself (Essentia's samples to float32 rounding, "
                             "slower), soxr as librosa/musicnn, or MonoLoader's resampleQuality=4 "
                             "(essentia-q4, linear, as Essentia's model pages load audio; "
                             "essentia-q1 is essentia)")
    parser.add_argument("--decoder", choices=DECODE_MODES, default="essentia",
                        help="MP3 and other compressed audio: as the essentia-tensorflow wheel "
                             "decodes it (default: 16-bit, clipped) or FFmpeg's float decoders "
                             "(as an Essentia built against a recent FFmpeg)")
