"""Decode audio files with FFmpeg (PyAV) as Essentia does, and notice damaged files.

Two modes:

``"essentia"`` (default) reproduces ``AudioLoader`` of the ``essentia`` /
``essentia-tensorflow`` 2.1b6 wheels from PyPI, which link FFmpeg 2.8. There,
``avcodec_find_decoder`` picks FFmpeg's *fixed-point* MPEG audio decoders
(``mp3``, ``mp2``, ``mp1``: 16-bit integer output, saturated at full scale);
the samples become floats through libswresample, ``int16 / 32768``. The
MPEG encoder delay and padding are trimmed when the file says how much (a
LAME/Info header), as FFmpeg does today; Ogg Vorbis keeps the end padding
FFmpeg now trims (FFmpeg 2.8's Ogg demuxer did not signal it), an MP4/M4A file
is read without its edit list (2.8 applied none: AAC's 1024-sample encoder
priming, which one marks, is kept; the priming an iTunes ``iTunSMPB`` tag
declares is trimmed, as 2.8 trimmed it), Matroska keeps the codec delay it declares
for MP3, AAC, MP2 and AC-3, each next stream of a chained Ogg Vorbis file is
decoded afresh, a WAV's last ``data`` chunk is read where it has several, and an
MP3 keeps the frame of silence 2.8 decoded from a LAME header behind junk bytes
(:class:`Mp3Start`). Measured:
identical samples to the wheel's ``AudioLoader`` for MP3 (44.1 kHz stereo
overshooting full scale, 22.05 kHz mono, ``hiphop.mp3``, damaged and cut
files), FLAC (16 and 24 bit) and WAV;
within 3e-7 for Ogg Vorbis (FFmpeg's float Vorbis decoder rounds a little
differently from its 2.8 version).

``"float"`` is FFmpeg's default decoding today: the floating-point MP3
decoder (no quantisation, no clipping: an MP3 may overshoot to 1.04) and
FFmpeg's own trimming. This is what an Essentia built from source against a
recent FFmpeg gives (its ``AudioLoader`` converts to float the same way).
soundfile (libsndfile's mpg123) decodes MP3s to within 7.3e-6 of it when both
start at the same sample (``hiphop.mp3``, LAME-encoded files), but mpg123 may
drop a decoder delay FFmpeg keeps (529 samples seen on some MP3s).

WAV, FLAC and other integer PCM: ``int16 / 32768``, ``int32 / 2**31``,
``(uint8 - 128) / 128`` in float32 -- libswresample's conversions -- in both
modes, identical to Essentia and to soundfile. A plain PCM WAV file (format
tag 1 or 3, its ``data`` chunk all there) is read straight from the file
with the same conversions, not through FFmpeg: the same samples, bit for bit,
for a fifth of the CPU time (FFmpeg's frames and FIFO cost ~0.1 s of CPU for
a 207-s stereo file); any other WAV goes to FFmpeg.

A file is *damaged* when the decoder rejected some of its packets (Essentia
skips them with a warning, so does jaxmir), reading stopped early, Ogg pages
failed their checksum or were of another version, its FLAC STREAMINFO's rate is
not its frames', or a WAV/AIFF header's fields disagree (more samples than it
counts); and *truncated* when it holds fewer samples than its header declares
(WAV ``data`` chunk or, compressed, ``fact`` chunk, FLAC STREAMINFO, MP3
LAME/Xing/VBRI header, container duration; Ogg declares none) or, for Ogg, when
its last page is cut or lacks the end-of-stream mark. Either is reported by a
:class:`DamagedAudioWarning` and the ``status`` of the result, or raised as an
:class:`~jaxmir.errors.AudioError` with ``strict=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import struct
import warnings
from collections.abc import Generator, Iterator
from typing import BinaryIO

import numpy as np

from jaxmir import ogg
from jaxmir.audio_choices import DECODE_MODES
from jaxmir.checks import is_whole
from jaxmir.errors import AudioError, JaxmirWarning
from jaxmir.pcm import (CHUNKS_AFTER_DATA, UNKNOWN_DATA_SIZES, WIDE_HEADS, WavHeader, decode_pcm,
                        frame_bytes, mpeg_frame_bytes, parse_wav_header)

ACCEPTED = "an audio file FFmpeg can decode (WAV, FLAC, OGG/Vorbis, MP3, ...)"
# The extensions a folder's walk keeps, and that `jaxmir info` knows for audio, not a graph.
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif",
                              ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64", ".m4a",
                              ".m4b", ".aac", ".wma", ".mka", ".webm", ".ac3", ".mp2", ".wv",
                              ".ape"})

# The fixed-point twins that FFmpeg 2.8 registered before the float decoders.
_FIXED_POINT = {"mp1float": "mp1", "mp2float": "mp2", "mp3float": "mp3",
                "mp3adufloat": "mp3adu", "mp3on4float": "mp3on4"}
# (demuxer, decoder) pairs whose end padding the Essentia wheel keeps (see the module docstring):
# Vorbis's in Ogg, which 2.8's Ogg demuxer did not signal (its Matroska demuxer did).
_KEEPS_END_PADDING = {("ogg", "vorbis")}
# Demuxers whose start trimming FFmpeg 2.8 did not signal, so the wheel keeps those samples:
# Matroska's codec delay (MP3 1105, AAC 1024, MP2 481, AC-3 256 samples) but for the decoders
# that trim their own delay there. (An MP4 edit list's trimming is not applied at all, as 2.8
# applied none; the priming an iTunSMPB tag declares for AAC, 2.8 trimmed as FFmpeg does.)
_KEEPS_START_PADDING = ("matroska",)
_TRIMS_OWN_DELAY = ("vorbis", "libvorbis", "opus", "libopus")
# A WAV sample's NumPy dtype (jaxmir.pcm.WAV_DTYPES) -> (FFmpeg's decoder for it, the sample
# format it decodes to), for the WAV files read without FFmpeg; FFmpeg decodes 24-bit PCM ("<i3")
# to 32-bit samples.
_FFMPEG_PCM = {"u1": ("pcm_u8", "u8"), "<i2": ("pcm_s16le", "s16"), "<i3": ("pcm_s24le", "s32"),
               "<i4": ("pcm_s32le", "s32"), "<f4": ("pcm_f32le", "flt"),
               "<f8": ("pcm_f64le", "dbl")}
_WAV_HEAD = 1 << 16  # bytes of a WAV file searched for its fmt and data chunks
# A file shorter than declared by up to this many frames is not truncated:
# headers count whole MP3 frames (1152 samples) and encoders disagree on the delay.
# WAV and AIFF headers count the frames themselves: no slack there (a FLAC's count may be
# missing, FFmpeg's duration then a guess).
_LENGTH_SLACK = 2304
_EXACT_LENGTHS = ("wav", "aiff")  # FFmpeg's names of those demuxers


class DamagedAudioWarning(JaxmirWarning):
    """A file decoded only in part, or with a header that does not hold: undecodable packets or
    pages, fewer samples than its header declares, fields of its header that disagree."""


@dataclasses.dataclass(frozen=True)
class DecodedAudio:
    """A whole decoded file.

    Attributes:
      samples: float32 ``[n_frames, channels]``, nominally in [-1, 1].
      sample_rate: Hz.
      declared_frames: the length the file's header declares (frames per
        channel), or None when it declares none (an MP3 without a LAME/Xing
        header, a stream).
      status: ``"ok"``, ``"damaged"`` (see the module docstring: packets or pages skipped,
        a header that does not hold) or ``"truncated"`` (fewer frames than declared).
      problem: the message reported for a damaged or truncated file, else None.
    """

    samples: np.ndarray
    sample_rate: int
    declared_frames: int | None
    status: str
    problem: str | None = None


class AudioBlocks:
    """Stream a file as float32 blocks ``[block_frames, channels]`` (the last one shorter).

    ``sample_rate``, ``channels``, ``codec`` and ``declared_frames`` are known
    as soon as the object exists; ``frames``, ``status`` and ``problem`` once
    the iteration is over, when a damaged file is also reported (see
    :func:`decode_file`). The blocks concatenated are exactly
    ``decode_file(path, mode).samples``. Use it as a context manager, or
    exhaust it, to close the file.
    """

    def __init__(self, path: str | os.PathLike, block_frames: int = 65536, mode: str = "essentia",
                 strict: bool = False, warn: bool = True):
        if mode not in DECODE_MODES:
            raise AudioError(f"unknown decoder {mode!r}; accepted: "
                             + ", ".join(repr(m) for m in DECODE_MODES))
        if not is_whole(block_frames, 1):
            raise AudioError(f"block_frames {block_frames!r} must "
                             "be a positive whole number of frames")
        self.path = os.fspath(path)
        self.mode = mode
        self.strict = strict
        self.warn = warn
        self.block_frames = int(block_frames)
        self.frames = 0
        self.status: str | None = None
        self.problem: str | None = None
        self._container = self._file = None
        self._patched: ogg.PatchedFile | None = None  # an Ogg file read with its checksums fixed
        self._bad_pages = 0
        self._stops_early = False
        self._foreign_pages = 0
        self._missing_bytes = 0  # of a WAV's data chunk, beyond the file's end
        self._sound_shortfall: tuple[int, int] | None = None  # a compressed AIFF-C's SSND chunk
        self._header_rate: int | None = None  # a FLAC STREAMINFO's rate where its frames differ
        self._unfinished_ogg: str | None = None  # how an Ogg file's last page falls short
        self._mp3 = Mp3Start()
        self._first_packet_at: int | None = None  # its byte offset in the file
        self._tags_from: int | None = None  # where an MP3's tags at its end begin
        self._wav_header: WavHeader | None = None  # a RIFF/WAVE file's, read by _plain_wav
        self._wav = self._plain_wav()
        if self._wav is not None:
            self.codec = self._wav.codec
            self.sample_rate, self.channels = self._wav.sample_rate, self._wav.channels
            self.declared_frames = self._wav.declared
            self._exact_length = True
            self._iterator = self._blocks()
            return
        pages = _ogg_damage(self.path)
        self._container, self._patched = _open(self.path, pages if mode == "essentia" else None)
        # what FFmpeg's reading loses or keeps of the damaged pages: the wheel's, or today's
        self._bad_pages = len(pages.checksums_before_stop() if mode == "essentia"
                              else pages.checksums)
        self._foreign_pages = 0 if mode == "essentia" else pages.foreign
        self._stops_early = mode == "essentia" and pages.stop is not None
        try:
            self._stream = self._container.streams.audio[0]
            if self._stream.codec_context is None:  # e.g. a WAV of format tag 0 or 0xFFFF
                raise AudioError(f"{self.path}: cannot be read as audio: FFmpeg has no decoder for "
                                 f"its audio codec; expected {ACCEPTED}")
            self._decoder = _decoder(self._stream, mode)
            sample_format = self._decoder.format
            if sample_format is not None and sample_format.name.rstrip("p") not in _SAMPLE_FORMATS:
                raise AudioError(f"{self.path}: cannot be read as audio: its samples are "
                                 f"{sample_format.name!r}, which jaxmir does not convert "
                                 "(64-bit integers, say); expected " + ACCEPTED)
            self.codec: str = self._decoder.name
            self._demuxer = self._container.format.name.split(",")[0]
            self.sample_rate: int = int(self._stream.codec_context.sample_rate)
            self.channels: int = int(self._stream.codec_context.layout.nb_channels)
            self._mp3 = mp3_start(self.path) if self._demuxer == "mp3" \
                and os.path.isfile(self.path) else Mp3Start()  # a pipe's bytes are FFmpeg's alone
            if self._demuxer == "mp3" and os.path.isfile(self.path):
                self._tags_from = end_tags_start(self.path)
            self.declared_frames = _declared_frames(self._container, self._stream,
                                                    self._wav_header, self._mp3)
            self._header_rate = _flac_header_rate(self._stream)
            # a compressed WAV's last block may hold more frames than its fact chunk counts
            compressed_aiff = _compressed_aiff(self._demuxer, self._stream)
            self._exact_length = self._demuxer in _EXACT_LENGTHS and not _compressed(
                self._wav_header) and not compressed_aiff
            if compressed_aiff and os.path.isfile(self.path):
                self._sound_shortfall = _sound_data_shortfall(self.path)
            # the wheel's 2.8 decodes each next stream of a chained Ogg Vorbis file as a fresh
            # decoder does, keeping its first samples; today's decoder carries its overlap
            # across the join (448 samples more there, and everything after it shifted)
            self._restarts_at_chains = mode == "essentia" and self._demuxer == "ogg" \
                and self.codec == "vorbis"
            self._at_join = False  # the frame being read is the first of a chain's next stream
            self._unfinished_ogg = _unfinished_ogg(self.path, self._container)
        except Exception:
            self.close()
            raise
        if self.sample_rate <= 0 or self.channels <= 0:
            self.close()
            raise AudioError(f"{self.path}: declares {self.sample_rate} Hz, {self.channels} "
                             f"channel(s); cannot be read as audio; expected {ACCEPTED}")
        self._iterator = self._blocks()

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._iterator

    def __next__(self) -> np.ndarray:
        return next(self._iterator)

    def __enter__(self) -> AudioBlocks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for handle in (self._container, self._file, self._patched):
            if handle is not None:
                handle.close()

    def _sound_data_lacks(self) -> str:
        """The words for a compressed AIFF-C's SSND chunk running past the file's end."""
        missing, declared = self._sound_shortfall
        return f"its SSND chunk lacks {missing} of the {declared} bytes it declares"

    def _plain_wav(self) -> _WavLayout | None:
        """The layout of a plain PCM WAV file, kept open in ``_file``; ``None`` for anything else
        (then FFmpeg reads it, and reports what is wrong with it). Keeps a RIFF/WAVE file's
        header in ``_wav_header`` (for the length it declares), plain or not."""
        if not os.path.isfile(self.path):  # not a pipe: a header read would consume its bytes
            return None
        try:
            self._file = open(self.path, "rb")
            head = self._file.read(12)  # RIFF/WAVE or not: other files are read no further here
            size = os.fstat(self._file.fileno()).st_size
            if head[:4] in (b"RIFF", *WIDE_HEADS) and head[8:12] == b"WAVE":
                first = _wav_header(head + self._file.read(_WAV_HEAD - len(head)))
                # FFmpeg, today's and the wheel's, reads the last of several data chunks
                self._wav_header = first and _last_data_chunk(self._file, first, size)
                self._missing_bytes = _missing_data_bytes(self._wav_header, size)
            layout = _wav_layout(self._wav_header, size)
        except OSError:
            layout = None
        if layout is None and self._file is not None:
            self._file.close()
            self._file = None
        return layout

    def _blocks(self) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        held = 0
        try:
            for chunk in self._chunks():
                pending.append(chunk)
                held += chunk.shape[0]
                while held >= self.block_frames:
                    joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    yield joined[:self.block_frames]
                    rest = joined[self.block_frames:]
                    pending, held = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
            if held:
                yield np.concatenate(pending) if len(pending) > 1 else pending[0]
        finally:
            self.close()
        self._report()

    def _chunks(self) -> Iterator[np.ndarray]:
        """Decoded samples as float32 ``[n, channels]``, trimmed as the mode says; counts damage.

        Frames that need no trimming queue in an FFmpeg FIFO and come out in
        blocks: converting an MP3's 1152-sample frames one by one in Python cost
        ~20 us each, as much as FFmpeg's decoding of them.
        """
        self._bad_packets = 0
        self._read_error = None
        self._trimmed_frames = 0  # the length after FFmpeg's own trimming, what headers declare
        if self._wav is not None:  # no FFmpeg at all: not even PyAV's import (~0.16 s)
            yield from self._wav_chunks()
            return
        import av

        skip_start = 0
        trims = self.mode == "essentia"  # the decoder only reports the trimming (skip_manual)
        keep_end = trims and (self._demuxer, self.codec) in _KEEPS_END_PADDING
        keep_start = trims and self._demuxer in _KEEPS_START_PADDING \
            and self.codec not in _TRIMS_OWN_DELAY
        fifo = av.AudioFifo()
        for frame in self._frames():
            if trims and self._mp3.tag_frame is not None:
                skip_start = -(yield from self._silent_tag_frame(frame))
            if frame.sample_rate != self.sample_rate or frame.layout.nb_channels != self.channels:
                # No "from .. to ..": the stream's rate and channels are as FFmpeg probed them,
                # which may be its last part's (the first frame may be labelled with them too)
                raise AudioError(f"{self.path}: holds frames of {self.sample_rate} Hz, "
                                 f"{self.channels} channel(s) and of {frame.sample_rate} Hz, "
                                 f"{frame.layout.nb_channels} channel(s); expected one rate and "
                                 "channel count")
            if not (trims and (skip_start or len(frame.side_data))):
                self._trimmed_frames += frame.samples
                frame.pts = None  # the FIFO would check that timestamps are continuous
                try:
                    fifo.write(frame)
                except ValueError:  # the decoder changed its sample format: a new FIFO
                    yield from self._emit(fifo, 0)
                    fifo = av.AudioFifo()
                    fifo.write(frame)
                yield from self._emit(fifo, self.block_frames)
                continue
            yield from self._emit(fifo, 0)  # what is queued comes first
            data = _to_float(frame)
            start, end = _skip_samples(frame)
            if self._at_join:  # a fresh decoder's first samples, which the wheel's kept
                start = 0
            skip_start += start
            cut = min(skip_start, data.shape[0])
            skip_start -= cut
            end = min(end, data.shape[0] - cut)
            # an MP4's duration, its edit list unapplied, counts the priming an iTunSMPB tag trims
            self._trimmed_frames += data.shape[0] - end - (cut if self._demuxer != "mov" else 0)
            data = data[0 if keep_start else cut:data.shape[0] if keep_end else data.shape[0] - end]
            if data.shape[0]:
                self.frames += data.shape[0]
                yield data
        yield from self._emit(fifo, 0)

    def _silent_tag_frame(self, first) -> Generator[np.ndarray, None, int]:
        """The frame of silence the Essentia wheel decodes from a length header FFmpeg did not
        take for one (:class:`Mp3Start`), where FFmpeg dropped that frame (its first packet came
        after it); once, before the ``first`` decoded frame. The encoder delay the ``first``
        frame says to trim starts in that silence for the wheel: returns how much of it the
        silence took."""
        tag_frame, self._mp3 = self._mp3.tag_frame, dataclasses.replace(self._mp3, tag_frame=None)
        if self._first_packet_at is None or self._first_packet_at <= tag_frame:
            return 0
        taken = min(_skip_samples(first)[0] if len(first.side_data) else 0, self._mp3.tag_samples)
        if self._mp3.tag_samples > taken:
            silence = np.zeros((self._mp3.tag_samples - taken, self.channels), np.float32)
            self.frames += silence.shape[0]
            self._trimmed_frames += silence.shape[0]
            yield silence
        return taken

    def _wav_chunks(self) -> Iterator[np.ndarray]:
        """A plain WAV file's samples in blocks, converted as FFmpeg's PCM decoders and
        libswresample convert them."""
        layout, file = self._wav, self._file
        size = frame_bytes(layout.dtype, layout.channels)
        file.seek(layout.offset)
        left = layout.frames
        while left:
            count = min(left, self.block_frames)
            data = file.read(count * size)
            if len(data) < count * size:  # the file shrank since its header was read
                self._read_error = "the file ended inside its data chunk"
                data, left = data[:len(data) - len(data) % size], 0
            else:
                left -= count
            block = _to_float32(decode_pcm(data, layout.dtype, layout.channels), layout.kind)
            self.frames += block.shape[0]
            self._trimmed_frames += block.shape[0]
            if block.shape[0]:
                yield block

    def _emit(self, fifo, block_frames: int) -> Iterator[np.ndarray]:
        """Blocks of ``block_frames`` from ``fifo`` while it holds that many; with 0, all it
        holds."""
        while fifo.samples and fifo.samples >= block_frames:
            data = _to_float(fifo.read(block_frames))
            self.frames += data.shape[0]
            yield data

    def _frames(self):
        import av

        demuxed = self._container.demux(self._stream)
        while True:
            try:
                packet = next(demuxed)
                if self._first_packet_at is None:
                    self._first_packet_at = packet.pos
            except StopIteration:
                packet = None  # flush the decoder
            except av.error.FFmpegError as err:  # a read error: the rest of the file is lost
                self._read_error = ffmpeg_reason(err)
                if isinstance(err, av.error.PatchWelcomeError) and self._demuxer == "ogg":
                    self._read_error = _CHAIN_CHANGES
                packet = None
            restarted = False
            if self._restarts_at_chains and packet is not None:
                headers = _new_headers(packet)
                if headers is not None:
                    self._decoder = _decoder(self._stream, self.mode, headers)
                    restarted = True
            try:
                for frame in self._decoder.decode(packet):
                    self._at_join, restarted = restarted, False
                    yield frame
            except av.error.EOFError:
                pass
            except av.error.FFmpegError:
                # Essentia skips an undecodable packet too; those FFmpeg reads from the tags at
                # an MP3's end (a cover picture in an APEv2 tag) are no damage
                if not (packet is not None and self._tags_from is not None
                        and packet.pos is not None and packet.pos >= self._tags_from):
                    self._bad_packets += 1
            if packet is None:
                break

    def _report(self) -> None:
        self.status, self.problem = self._diagnosis()
        if self.problem is None:
            return
        if self.strict:
            raise AudioError(self.problem + " (an error in strict mode: --strict, strict=True)")
        if self.warn:
            warnings.warn(self.problem, DamagedAudioWarning, stacklevel=3)

    def _diagnosis(self) -> tuple[str, str | None]:
        """("ok" | "damaged" | "truncated", message or None) once a file has been decoded."""
        rate = self.sample_rate
        declared = self.declared_frames
        have = self._trimmed_frames
        length = f"decoded {have / rate:.2f} s"
        if declared is not None:
            length += f" of the {declared / rate:.2f} s its header declares"
            if f"{have / rate:.2f}" == f"{declared / rate:.2f}":  # "1.00 s of the 1.00 s"
                length = f"decoded {have} of the {declared} frames its header declares"
        if self._bad_packets or self._read_error or self._bad_pages or self._stops_early \
                or self._foreign_pages or self._header_rate is not None:
            what = []
            if self._header_rate is not None:
                wheel = f"plays it at {self._header_rate} Hz" if self._header_rate else \
                    "refuses it"
                what.append(f"its STREAMINFO declares {self._header_rate} Hz, its frames "
                            f"{rate} Hz (decoded at {rate} Hz; Essentia's wheel {wheel})")
            if self._bad_pages and self.mode == "essentia":
                what.append(f"{self._bad_pages} Ogg page(s) failing their checksum decoded as they "
                            "are (as Essentia's FFmpeg 2.8 does; FFmpeg today skips them)")
            elif self._bad_pages:
                what.append(f"{self._bad_pages} Ogg page(s) failing their checksum skipped, as "
                            "FFmpeg does today (Essentia's wheel decodes them as they are)")
            if self._foreign_pages:
                what.append(f"{self._foreign_pages} Ogg page(s) of an unknown version skipped, as "
                            "FFmpeg does today (Essentia's wheel stops at the first)")
            if self._bad_packets:
                what.append(f"{self._bad_packets} undecodable packet(s) skipped")
            if self._read_error:
                what.append(f"reading stopped early ({self._read_error})")
            if self._stops_early:
                what.append("reading stopped at an Ogg page of an unknown version (as Essentia's "
                            "FFmpeg 2.8 stops; FFmpeg today skips it)")
            if self._sound_shortfall is not None:  # cut inside a packet: its last one undecodable
                what.append(f"{self._sound_data_lacks()} (the file is cut short)")
            return "damaged", f"{self.path}: damaged audio: {'; '.join(what)}; {length}"
        slack = 0 if self._exact_length else _LENGTH_SLACK
        if declared is not None and have < declared - slack:
            return "truncated", f"{self.path}: truncated audio: {length}"
        if self._exact_length and declared is not None and have > declared:
            # a WAV's or AIFF's header counts its frames: more means its fields contradict
            # each other (a sample size of 16 bits in frames of 3 bytes, a frame count too small)
            return "damaged", (f"{self.path}: damaged audio: its header's fields disagree "
                               f"(more samples than it declares); {length}")
        if self._unfinished_ogg is not None:
            return "truncated", (f"{self.path}: truncated audio: decoded {have / rate:.2f} s; "
                                 f"its Ogg stream {self._unfinished_ogg}")
        if self._sound_shortfall is not None:  # a compressed AIFF-C's count is not read
            return "truncated", (f"{self.path}: truncated audio: decoded {have / rate:.2f} s; "
                                 f"{self._sound_data_lacks()}")
        if self._missing_bytes:  # a compressed WAV without a fact chunk counts its data in bytes
            return "truncated", (f"{self.path}: truncated audio: decoded {have / rate:.2f} s; "
                                 f"its data chunk lacks {self._missing_bytes} of the "
                                 f"{self._wav_header.data_size} bytes it declares")
        return "ok", None


def iter_blocks(path: str | os.PathLike, block_frames: int = 65536, mode: str = "essentia",
                strict: bool = False, warn: bool = True) -> AudioBlocks:
    """Decode ``path`` in float32 blocks ``[block_frames, channels]``; see :class:`AudioBlocks`.

    ``warn=False``: a damaged file's problem is only kept in ``problem`` (no
    :class:`DamagedAudioWarning`), for threads, which cannot record warnings apart.
    """
    return AudioBlocks(path, block_frames, mode, strict, warn)


def decode_file(path: str | os.PathLike, mode: str = "essentia",
                strict: bool = False) -> DecodedAudio:
    """Decode a whole file to float32 ``[n_frames, channels]`` at its own rate.

    Args:
      path: the file.
      mode: ``"essentia"`` or ``"float"`` (see the module docstring).
      strict: raise instead of warning about a damaged or truncated file.

    Raises:
      AudioError: a missing file, a directory, a file that cannot be opened
        (permission), not audio or without an audio stream, an unknown mode;
        with ``strict=True`` also a damaged or truncated file. The message
        names the file.

    Warns:
      DamagedAudioWarning: undecodable packets were skipped, or the file is
        shorter than its header declares (``status`` says which).
    """
    with iter_blocks(path, 1 << 20, mode, strict, warn=False) as blocks:
        parts = list(blocks)
    if blocks.problem is not None:  # at the caller's line, not at list()'s above
        warnings.warn(blocks.problem, DamagedAudioWarning, stacklevel=2)
    samples = np.concatenate(parts) if parts else np.zeros((0, blocks.channels), np.float32)
    return DecodedAudio(samples, blocks.sample_rate, blocks.declared_frames, blocks.status,
                        blocks.problem)


def missing_reason(path: str) -> str:
    """Why ``path`` names no file: ``"no such file"``, a link to a missing file, or a loop of
    links."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a loop of symbolic links"
    if os.path.islink(path):
        return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
    if os.path.basename(path) == "-":  # a collection makes it absolute
        return "no such file (standard input is /dev/stdin; `jaxmir stream` tags it as it comes)"
    return "no such file"


def folder_problem(path: str) -> str:
    """What is wrong with reading the folder ``path`` as audio: a folder that cannot be listed
    (a collection's walk met it) is said to be one."""
    if not os.access(path, os.R_OK | os.X_OK):
        return "a folder that cannot be listed (permission denied): its audio files are left out"
    return f"is a directory; expected {ACCEPTED}"


def _ogg_damage(path: str) -> ogg.Damage:
    """An Ogg file's damaged pages (none for other files, and for what cannot be read here)."""
    if os.path.isfile(path):
        with contextlib.suppress(OSError):  # unreadable: FFmpeg's open says so
            return ogg.damage(path)
    return ogg.Damage()


def _open(path: str, wheel_pages: ogg.Damage | None = None):
    """``(container, patched)``: ``path`` opened with FFmpeg, every failure an AudioError naming
    the file. With ``wheel_pages`` (its :func:`jaxmir.ogg.damage`), as FFmpeg 2.8 read it: an
    Ogg file with damaged pages through ``patched``, an :class:`~jaxmir.ogg.PatchedFile` where
    their checksums pass and that ends where 2.8 stopped (``None`` otherwise), and an MP4
    file's edit list left unapplied."""
    if not os.path.exists(path):
        raise AudioError(f"{path}: {missing_reason(path)}; expected {ACCEPTED}")
    if os.path.isdir(path):
        raise AudioError(f"{path}: {folder_problem(path)}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:  # FFmpeg's words differ by extension
        raise AudioError(f"{path}: is empty (0 bytes); expected {ACCEPTED}")
    patched = None
    if wheel_pages is not None and (wheel_pages.checksums or wheel_pages.stop is not None):
        patched = ogg.PatchedFile(path, wheel_pages.checksums_before_stop(), wheel_pages.stop)
    # 2.8's MP4 demuxer applied no edit list: today's drops the packets a damaged sample table's
    # timestamps put outside one (1.2 s of 6 for one byte of an stts entry)
    options = {"ignore_editlist": "1"} if wheel_pages is not None else {}
    try:
        container = _opened(path, path if patched is None else patched, options)
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            container.close()
            raise AudioError(f"{path}: cannot be read as audio: it has no audio stream (found: "
                             f"{', '.join(kinds)}); expected {ACCEPTED}")
    except BaseException:
        if patched is not None:
            patched.close()
        raise
    return container, patched


def _opened(path: str, source, options: dict[str, str]):
    """``av.open(source)`` with the demuxer's ``options``, its failures AudioErrors naming
    ``path``."""
    import av

    try:
        return av.open(source, "r", options=options)
    except PermissionError:  # av.error.PermissionError is one too
        raise AudioError(f"{path}: permission denied; the file exists but cannot be opened for "
                         "reading") from None
    except (av.error.InvalidDataError, av.error.EOFError):
        raise AudioError(f"{path}: cannot be read as audio (not a format FFmpeg recognises, or the "
                         f"file is cut short or empty); expected {ACCEPTED}") from None
    except av.error.FFmpegError as err:
        raise AudioError(f"{path}: cannot be read as audio ({ffmpeg_reason(err)}); expected "
                         f"{ACCEPTED}") from None
    except (OSError, ValueError) as err:
        raise AudioError(f"{path}: cannot be read as audio ({err}); expected {ACCEPTED}") from None


def ffmpeg_reason(err) -> str:
    """FFmpeg's words for ``err`` (an ``av.error.FFmpegError``), without the error number and
    the file name PyAV's text adds (``[Errno 1094995529] Invalid data ...: 'name'``)."""
    reason = getattr(err, "strerror", None)
    return f"FFmpeg: {reason[:1].lower()}{reason[1:]}" if reason else str(err)


def _decoder(stream, mode: str, headers: bytes | None = None):
    """The codec context that decodes ``stream`` in ``mode``; a fresh one taking ``headers`` (the
    next stream's of a chained file) for extradata when they are given."""
    import av

    default = stream.codec_context
    if mode == "float":
        return default
    name = _FIXED_POINT.get(default.name)  # the wheel's fixed-point twin of a float decoder
    if name is None and headers is not None:  # the next stream of a chain: a fresh decoder
        name = default.name
    context = default
    if name is not None:
        context = av.CodecContext.create(name, "r")
        context.sample_rate = default.sample_rate
        context.layout = default.layout
        if headers or default.extradata:
            context.extradata = headers or default.extradata
    # Report the encoder delay and padding instead of trimming them: the
    # wheel's FFmpeg 2.8 trimmed some but not all (see _KEEPS_END_PADDING).
    context.options = {**context.options, "flags2": "+skip_manual"}
    return context


# FFmpeg's Ogg demuxer stops ("patches welcome") where a chain's next stream changes these;
# the wheel's FFmpeg 2.8 read on, a new rate's samples at the first's, and crashed on new channels
_CHAIN_CHANGES = ("the chained Ogg stream after the first changes its sample rate or channels, "
                  "which FFmpeg does not read on into; the first stream alone decoded")


def _new_headers(packet) -> bytes | None:
    """The headers of the stream ``packet`` begins, where FFmpeg's demuxer attached them (the
    first packet of each stream after the first in a chained Ogg file), else ``None``."""
    has = getattr(packet, "has_sidedata", None)  # PyAV 14 and later
    if has is None or not packet.size or not has("new_extradata"):
        return None
    return bytes(packet.get_sidedata("new_extradata"))


def _skip_samples(frame) -> tuple[int, int]:
    """(frames to drop at the start, frames to drop at the end) that FFmpeg attached to
    ``frame``."""
    import av

    # by its type: PyAV 19 iterates the side data's types, earlier versions the side data
    side = frame.side_data.get(av.sidedata.sidedata.Type.SKIP_SAMPLES)
    if side is None:
        return 0, 0
    start, end = struct.unpack_from("<II", bytes(side))
    return start, end


def _to_float(frame) -> np.ndarray:
    """One decoded frame as float32 ``[n, channels]``, scaled as libswresample converts to float."""
    kind, channels = frame.format.name.rstrip("p"), frame.layout.nb_channels
    if frame.format.is_planar:
        if kind not in _PLANE_DTYPES:
            raise AudioError(f"decoder output format {kind!r} is not supported")
        # a plane per channel, read one by one: PyAV's to_ndarray() reads one plane more than
        # an 8-channel frame has (Opus 7.1), and the process dies
        raw = np.stack([np.frombuffer(plane, _PLANE_DTYPES[kind], count=frame.samples)
                        for plane in frame.planes[:channels]], axis=1)
    else:
        raw = frame.to_ndarray().reshape(-1, channels)
    return _to_float32(raw, kind)


_PLANE_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "flt": np.float32,
                 "dbl": np.float64}


# FFmpeg's sample formats _to_float32 converts (PyAV gives no s64 array: such files are refused)
_INTEGER_BITS = {"s16": 15, "s32": 31}
_SAMPLE_FORMATS = frozenset({"u8", "flt", "dbl", *_INTEGER_BITS})


def _to_float32(raw: np.ndarray, kind: str) -> np.ndarray:
    """Samples ``[n, channels]`` of FFmpeg's sample format ``kind`` (``"s16"``, ``"flt"``, ...;
    packed) as float32, scaled as libswresample converts to float."""
    if kind == "flt":
        return np.ascontiguousarray(raw, np.float32)
    if kind == "dbl":
        return raw.astype(np.float32)
    if kind == "u8":
        return (raw.astype(np.float32) - np.float32(128)) * np.float32(1 / 128)
    bits = _INTEGER_BITS.get(kind)
    if bits is None:
        raise AudioError(f"decoder output format {kind!r} is not supported")
    return raw.astype(np.float32) * np.float32(2.0 ** -bits)


# Bare codec streams (ADTS AAC, AC-3, E-AC-3, DTS): no length in any header.
_BARE_STREAMS = frozenset({"aac", "ac3", "eac3", "dts"})


def _declared_frames(container, stream, wav_header: WavHeader | None,
                     mp3: Mp3Start) -> int | None:
    """The length the file's header declares, in frames per channel, or None; ``wav_header``:
    a RIFF/WAVE file's, already read (:meth:`AudioBlocks._plain_wav`); ``mp3``: an MP3
    file's :func:`mp3_start`."""
    fmt = container.format.name
    if "wav" in fmt.split(","):
        # a compressed WAV's frames are its fact chunk's count (without one, FFmpeg's duration
        # is an estimate); an uncompressed one's, its data's (FFmpeg clamps it to the bytes there)
        return wav_header.fact_frames if _compressed(wav_header) else _wav_frames(wav_header)
    if "mp3" in fmt.split(","):
        if not mp3.declares_length:
            return None  # FFmpeg's duration is only a guess from the bit rate
        duration = _ffmpeg_frames(container, stream)
        if mp3.declared_samples is not None and duration is not None \
                and duration > mp3.declared_samples + _LENGTH_SLACK:
            # FFmpeg guesses from the bit rate when the file holds more bytes than the header
            # counts (a large APE tag at its end, say): the header still declares its count
            return mp3.declared_samples
        return duration
    if set(fmt.split(",")) & _BARE_STREAMS:
        return None  # no header: the same guess (a 6.10-s ADTS file "declared" 6.04 s)
    if _compressed_aiff(fmt, stream):
        # COMM's count is frames to libsndfile and packets to Apple's ima4 (FFmpeg reads it as
        # packets): a whole GSM file of 8 s "declared" 1280 s
        return None
    if fmt == "flac" and stream.duration is not None:
        return int(stream.duration)  # STREAMINFO's count of samples, whatever the rate it says
    if "ogg" in fmt.split(","):
        # no header counts an Ogg stream: FFmpeg's duration is its last page's position, or a
        # guess from the bit rate behind padding, or across a chain's streams ("6.00 s of the
        # 16.11 s"); a cut stream is told by its last page (_unfinished_ogg)
        return None
    return _ffmpeg_frames(container, stream)


_AIFF_CHUNKS = 64  # chunks an AIFF file's header is searched through for its SSND chunk


def _sound_data_shortfall(path: str) -> tuple[int, int] | None:
    """``(bytes missing, bytes declared)`` of an AIFF file's SSND chunk where it runs past the
    file's end, or None (whole, or no such chunk among the first :data:`_AIFF_CHUNKS`)."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if file.read(12)[8:12] not in (b"AIFF", b"AIFC"):
                return None
            offset = 12
            for _ in range(_AIFF_CHUNKS):
                file.seek(offset)
                head = file.read(8)
                if len(head) < 8:
                    return None
                length = int.from_bytes(head[4:], "big")
                if head[:4] == b"SSND":
                    if length in (0, 0xFFFFFFFF):  # a writer that could not go back to it
                        return None
                    missing = offset + 8 + length - size
                    return (missing, length - 8) if missing > 0 else None  # less its 2 fields
                offset += 8 + length + (length & 1)
    except OSError:
        return None
    return None


def _compressed_aiff(fmt: str, stream) -> bool:
    """Whether an AIFF-C stream's samples are compressed (GSM, ima4, MACE: packets of many
    frames), not PCM or G.711 (a frame in a fixed number of bytes)."""
    return "aiff" in fmt.split(",") and not stream.codec_context.name.startswith("pcm_")


def _flac_header_rate(stream) -> int | None:
    """The rate a FLAC stream's STREAMINFO declares where its frames (and FFmpeg today) say
    another, else ``None``: a damaged header, in a FLAC or an Ogg file (the wheel took its
    rate, or refused a rate of 0)."""
    info = stream.codec_context.extradata or b""
    if stream.codec_context.name != "flac" or len(info) < _STREAMINFO_BYTES:
        return None
    declared = int.from_bytes(info[10:13], "big") >> 4  # 20 bits after the block and frame sizes
    return declared if declared != stream.codec_context.sample_rate else None


_STREAMINFO_BYTES = 34


def _ffmpeg_frames(container, stream) -> int | None:
    """The stream's duration as FFmpeg gives it, in frames per channel, or None."""
    rate = stream.codec_context.sample_rate
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * rate))
    if container.duration is not None:
        return int(round(container.duration * rate / 1_000_000))
    return None


_UNCOMPRESSED_TAGS = (1, 3, 6, 7)  # PCM, float, A-law, mu-law: a frame of block_align bytes


def _compressed(header: WavHeader | None) -> bool:
    """Whether a RIFF/WAVE header's samples are compressed (ADPCM, MP3, GSM: blocks of many
    frames, counted by a ``fact`` chunk, not by the data's size)."""
    return header is not None and header.sample_tag not in _UNCOMPRESSED_TAGS


def _missing_data_bytes(header: WavHeader | None, file_size: int) -> int:
    """The bytes a RIFF/WAVE header's data chunk declares beyond the ``file_size`` bytes of its
    file (0: none, or no such header, or a size its writer could not know)."""
    if header is None or header.data_size is None:
        return 0
    return max(0, header.data_offset + header.data_size - file_size)


def _wav_frames(header: WavHeader | None) -> int | None:
    """Frames the ``data`` chunk of an uncompressed RIFF/WAVE header declares, or None
    (streamed, odd)."""
    if header is None or header.data_size is None:
        return None
    # a writer's bogus block_align (0, 1 for 16-bit samples) is no frame size: FFmpeg reads
    # the samples' own
    frame = max(header.block_align, header.channels * -(-header.bits // 8))
    return header.data_size // frame if frame else None


def _wav_header(head: bytes) -> WavHeader | None:
    """The header of a RIFF/WAVE file from its first bytes ``head``, or ``None`` when they hold
    no well-formed header up to a data chunk (then FFmpeg judges the file)."""
    try:
        return parse_wav_header(io.BytesIO(head).read)
    except AudioError:
        return None


@dataclasses.dataclass(frozen=True)
class _WavLayout:
    """Where a plain PCM WAV file's samples lie (``frames`` of ``channels`` from byte
    ``offset``; the header ``declared`` that many, or more, or said nothing), their NumPy
    ``dtype``, FFmpeg's decoder for them and its sample format."""

    sample_rate: int
    channels: int
    offset: int
    frames: int
    declared: int | None
    dtype: str
    codec: str
    kind: str


def _wav_layout(header: WavHeader | None, file_size: int) -> _WavLayout | None:
    """The layout of a mono or stereo WAV file FFmpeg would decode with one of the plain PCM
    decoders (format tag 1 or 3, :data:`jaxmir.pcm.WAV_DTYPES`), whose ``data`` chunk holds whole
    frames and lies within the file's ``file_size`` bytes; ``None`` for any other file (FFmpeg
    reads it)."""
    if header is None or header.dtype is None:
        return None                                 # not RIFF/WAVE, another format
    if header.tag != header.sample_tag and header.dtype != "<i4":
        # extensible: FFmpeg reads it, but for 32-bit integer samples: of 24 valid bits it
        # decodes them as 24-bit floats (noise); read as int32 (as for 32 valid bits, FFmpeg's
        # own reading) they are the samples exactly
        return None
    if header.channels not in (1, 2) or header.sample_rate <= 0:
        return None
    codec, kind = _FFMPEG_PCM[header.dtype]
    frame, size = frame_bytes(header.dtype, header.channels), header.data_size
    if header.block_align != frame:
        return None
    there = max(file_size - header.data_offset, 0)
    if header.dtype == "<i4":
        # FFmpeg would misread 24 valid bits whatever the length: a live writer's size (0 or
        # none), a truncated file or a partial last frame are read here too, the frames there
        declared = None if not size else size // frame
        return _WavLayout(header.sample_rate, header.channels, header.data_offset,
                          min(size or there, there) // frame, declared, header.dtype, codec, kind)
    if size is None or size == 0 or size % frame or size > there:
        return None
    return _WavLayout(header.sample_rate, header.channels, header.data_offset, size // frame,
                      size // frame, header.dtype, codec, kind)


def _last_data_chunk(file: BinaryIO, header: WavHeader, file_size: int) -> WavHeader:
    """``header`` with the place and size of the last ``data`` chunk among the chunks behind
    the first (a LIST or ``id3 `` chunk usually), whose samples FFmpeg's WAV demuxer reads. A
    header that declares no length has no chunk behind its data."""
    if not header.data_size:
        return header
    at = header.data_offset + header.data_size + header.data_size % 2
    for _ in range(CHUNKS_AFTER_DATA):
        if at + 8 > file_size:
            break
        file.seek(at)
        name, size = struct.unpack("<4sI", file.read(8))
        if name == b"data":
            # 0 or 0xFFFFFFFF: a size the writer could not know, the samples to the file's end
            unknown = size in UNKNOWN_DATA_SIZES
            header = dataclasses.replace(header, data_offset=at + 8,
                                         data_size=None if unknown else size)
            if unknown:
                break
        at += 8 + size + (size & 1)
    return header


# An Ogg page: "OggS", version 0, header type (0x04: the stream's last page), granule position,
# serial number, sequence number, CRC, the number of segments, then their lacing values.

def _unfinished_ogg(path: str, container) -> str | None:
    """How an Ogg file falls short of a finished stream, or None: cut inside its last page, or
    ending on a page without the end-of-stream mark (FFmpeg reads both without a word, and its
    duration comes from the last whole page, so no declared length tells). Pipes and files
    with anything after their last page are not judged."""
    if "ogg" not in container.format.name.split(",") or not os.path.isfile(path):
        return None
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        start = max(0, size - ogg.MAX_PAGE_BYTES)
        file.seek(start)
        tail = file.read()
    at = tail.rfind(ogg.CAPTURE + b"\x00")  # version 0 of the page format
    if at < 0:
        return None
    if len(tail) - at < ogg.HEADER_BYTES:
        return "is cut inside its last page's header"
    end = ogg.page_end(tail, at)
    if end > len(tail):
        return f"is cut inside its last page ({len(tail) - at} of its {end - at} bytes)"
    if end == len(tail) and not tail[at + ogg.TYPE_AT] & ogg.END_OF_STREAM:
        return ("ends on a page without the end-of-stream "
                "mark (the file is cut, or was never finished)")
    return None


@dataclasses.dataclass(frozen=True)
class Mp3Start:
    """How an MP3 file begins, as FFmpeg's MP3 demuxer reads it.

    FFmpeg (2.8 and today) takes a Xing/Info/VBRI frame for the file's length header only right
    behind its ID3v2 tags. One behind junk bytes (zero padding a tagger left, say) is searched
    as the first of two frames of one stream: FFmpeg 2.8 compares their sample rate and layer
    and takes it, to decode a frame of silence (so does the Essentia wheel); FFmpeg today also
    compares their channel modes, which LAME writes apart (stereo in the tag's frame, joint
    stereo after it), and starts behind it. So with a header right behind the tags that counts
    nothing (no frames, no bytes), which neither FFmpeg takes for a length.

    Attributes:
      declares_length: a length header where FFmpeg reads one (its frame count).
      declared_samples: the samples per channel it declares (its frames, less the encoder
        delay and padding a LAME tag gives), where it counts frames.
      tag_frame: the byte offset of a Xing/Info/VBRI frame FFmpeg did not take for the length
        header (behind junk, or counting nothing), or None.
      tag_samples: that frame's samples per channel (1152, or 576 at 24 kHz and below).
    """

    declares_length: bool = False
    declared_samples: int | None = None
    tag_frame: int | None = None
    tag_samples: int = 0


_MPEG_SEARCH = 1 << 16  # bytes searched for the first frame behind the ID3v2 tags, as FFmpeg does
# the header bits two consecutive frames share for FFmpeg 2.8: version, layer, sample rate
_MPEG_SAME_STREAM = 0xFFFE0C00


def mp3_start(path: str) -> Mp3Start:
    """:class:`Mp3Start` of the MP3 file ``path`` (read up to 64 KiB behind its ID3v2 tags)."""
    with open(path, "rb") as file:
        behind_tags = id3v2_end(file)
        file.seek(behind_tags)
        head = file.read(_MPEG_SEARCH + 2 * 4)  # room for the frame after the last searched
    if mpeg_frame_bytes(head[:4]) and _length_header(head, 0, counted=True):
        return Mp3Start(declares_length=True, declared_samples=_counted_samples(head))
    first = _first_frame(head)
    if first is None or not _length_header(head, first, counted=False):
        return Mp3Start()
    mpeg1 = (int.from_bytes(head[first:first + 4], "big") >> 19) & 3 == 3
    return Mp3Start(tag_frame=behind_tags + first, tag_samples=1152 if mpeg1 else 576)


def end_tags_start(path: str) -> int | None:
    """Where the tags at the end of the file ``path`` begin (ID3v1, Lyrics3 v1 or v2, and APEv2,
    as taggers stack them), or None without any: FFmpeg's MP3 demuxer reads on into them."""
    with open(path, "rb") as file:
        end = size = file.seek(0, os.SEEK_END)

        def at(offset: int, length: int) -> bytes:
            file.seek(offset)
            return file.read(length)

        if end >= 128 and at(end - 128, 3) == b"TAG":  # ID3v1: 128 bytes
            end -= 128
        if end >= 15 and at(end - 9, 9) == b"LYRICS200" and at(end - 15, 6).isdigit():
            end -= int(at(end - 15, 6)) + 15  # Lyrics3v2: its size, then the size and mark
        elif end >= 20 and at(end - 9, 9) == b"LYRICSEND":  # Lyrics3v1: at most 5100 bytes
            reach = min(end, 5100 + 9)
            begin = at(end - reach, reach).rfind(b"LYRICSBEGIN")
            end = end - reach + begin if begin >= 0 else end
        if end >= 32 and at(end - 32, 8) == b"APETAGEX":  # APEv2's footer
            end -= struct.unpack_from("<I", at(end - 32, 32), 12)[0]  # its items and footer
            if end >= 32 and at(end - 32, 8) == b"APETAGEX":  # and its header, if it has one
                end -= 32
    return end if 0 <= end < size else None


def id3v2_end(file: BinaryIO) -> int:
    """The offset behind the consecutive ID3v2 tags the binary ``file`` starts with (0 without
    one), each of any size, as FFmpeg skips them: a header with a version byte or a size byte
    it refuses (0xFF; a size byte's top bit) is no tag."""
    offset = 0
    while True:
        file.seek(offset)
        header = file.read(10)
        if len(header) < 10 or header[:3] != b"ID3" or 0xFF in header[3:5] \
                or any(byte & 0x80 for byte in header[6:10]):
            return offset
        size = 0
        for byte in header[6:10]:  # four 7-bit bytes
            size = size << 7 | byte
        offset += 10 + size + (10 if header[5] & 0x10 else 0)  # and its footer


def _first_frame(head: bytes) -> int | None:
    """Where FFmpeg 2.8's demuxer starts in ``head`` (the bytes behind the ID3v2 tags): the
    first frame followed by a frame of the same stream."""
    at = -1
    while 0 <= (at := head.find(b"\xff", at + 1, _MPEG_SEARCH)) < len(head) - 4:
        header = head[at:at + 4]
        size = mpeg_frame_bytes(header)
        if size is None or at + size + 4 > len(head):
            continue
        following = head[at + size:at + size + 4]
        differing = int.from_bytes(header, "big") ^ int.from_bytes(following, "big")
        if mpeg_frame_bytes(following) is not None and not differing & _MPEG_SAME_STREAM:
            return at
    return None


def _counted_samples(head: bytes) -> int | None:
    """The samples per channel the Xing/Info or VBRI header of the frame ``head`` starts with
    counts, as FFmpeg reads them: frames times samples per frame, less the encoder delay and
    padding of a LAME tag (one its encoder string names LAME or Lavf/Lavc); None without a frame
    count."""
    xing, vbri = _tag_offsets(head, 0)
    samples = 1152 if (int.from_bytes(head[:4], "big") >> 19) & 3 == 3 else 576
    if head[vbri:vbri + 4] == b"VBRI":
        return int.from_bytes(head[vbri + 14:vbri + 18], "big") * samples
    flags = int.from_bytes(head[xing + 4:xing + 8], "big")
    if head[xing:xing + 4] not in (b"Xing", b"Info") or not flags & 1:
        return None
    frames = int.from_bytes(head[xing + 8:xing + 12], "big")
    # the LAME tag: behind the frames, bytes, table of contents and quality present
    lame = (xing + 8 + 4 * ((flags & 1) + (flags >> 1 & 1)) + 100 * (flags >> 2 & 1)
            + 4 * (flags >> 3 & 1))
    trim = 0
    if head[lame:lame + 4] in (b"LAME", b"Lavf", b"Lavc") and len(head) >= lame + 24:
        delays = int.from_bytes(head[lame + 21:lame + 24], "big")  # 12 bits each
        trim = (delays >> 12) + (delays & 0xFFF)
    return frames * samples - trim


def _tag_offsets(head: bytes, at: int) -> tuple[int, int]:
    """Where a Xing/Info and where a VBRI header would start in the layer III frame at ``at``."""
    header = int.from_bytes(head[at:at + 4], "big")
    mpeg1, mono = (header >> 19) & 3 == 3, (header >> 6) & 3 == 3
    return at + 4 + ((17 if mono else 32) if mpeg1 else (9 if mono else 17)), at + 4 + 32


def _length_header(head: bytes, at: int, counted: bool) -> bool:
    """Whether the layer III frame at ``at`` holds a Xing/Info or VBRI header where FFmpeg looks
    for them; ``counted``: one FFmpeg takes for the file's length (a frame count or byte size
    other than 0; VBRI of version 1)."""
    if (int.from_bytes(head[at:at + 4], "big") >> 17) & 3 != 1:
        return False
    xing, vbri = _tag_offsets(head, at)
    marked = head[xing:xing + 4] in (b"Xing", b"Info") or head[vbri:vbri + 4] == b"VBRI"
    if not counted or not marked:
        return marked
    counts = []
    if head[xing:xing + 4] in (b"Xing", b"Info"):
        flags, fields = head[xing + 7:xing + 8], head[xing + 8:xing + 16]
        flags = flags[0] if flags else 0
        present = [bool(flags & 1), bool(flags & 2)]
        values = [fields[i:i + 4] for i in range(0, 4 * sum(present), 4)]
        counts += [int.from_bytes(v, "big") for v in values if len(v) == 4]
    if head[vbri:vbri + 6] == b"VBRI\x00\x01":
        counts += [int.from_bytes(head[vbri + 10:vbri + 14], "big"),
                   int.from_bytes(head[vbri + 14:vbri + 18], "big")]
    return any(counts)
