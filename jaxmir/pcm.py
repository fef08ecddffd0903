"""PCM bytes: WAV headers and raw little-endian frames, as live input (standard input) sends them.

    reader = ByteReader(sys.stdin.fileno())
    if reader.peek(4) == b"RIFF":
        rate, channels, dtype, size = read_wav_header(reader.read)
    frames = decode_pcm(reader.some(), dtype, channels)      # [n, channels]

What ``jaxmir stream`` reads (``arecord -f S16_LE -r 44100 -c 2 | jaxmir stream ...``). A WAV
writer that cannot know the length (a live one) writes 0 or 0xFFFFFFFF as the data size; the
data then runs to the end of the stream. The same header walker
(:func:`parse_wav_header`) tells plain PCM WAV files, which :mod:`jaxmir.decode` reads
without FFmpeg, from the others.
"""

from __future__ import annotations

import dataclasses
import os
import select
import struct
from typing import Callable

import numpy as np

from jaxmir.errors import AudioError

# raw PCM's ``--dtype`` names -> NumPy dtypes
RAW_DTYPES = {"s16le": "<i2", "s32le": "<i4", "f32le": "<f4"}
# (WAV format tag, bits per sample) -> NumPy dtype; "<i3" is 24-bit PCM (see decode_pcm)
WAV_DTYPES = {(1, 8): "u1", (1, 16): "<i2", (1, 24): "<i3", (1, 32): "<i4", (3, 32): "<f4",
               (3, 64): "<f8"}
_EXTENSIBLE = 0xFFFE    # WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID
# The GUID's last 12 bytes behind which FFmpeg (riff.c's parse_waveformatex) reads its first 4
# as a format tag: KSDATAFORMAT_SUBTYPE's base, the ambisonic one and a broken writer's
_SUB_FORMAT_BASES = tuple(map(bytes.fromhex, ("0000 1000 8000 00aa 0038 9b71",
                                               "2107 d311 8644 c8c1 ca00 0000",
                                               "0000 0000 0000 1000 8000 00aa")))
# Sizes of a data chunk whose writer could not know it (a stream): its samples run to the end.
UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)


@dataclasses.dataclass(frozen=True)
class WavHeader:
    """What a RIFF/WAVE header says, up to the start of its ``data`` chunk.

    Attributes:
      tag: the fmt chunk's format tag as written (1 PCM, 3 float, 0xFFFE extensible).
      channels, sample_rate, block_align, bits: the fmt chunk's fields (bytes per frame,
        bits per sample).
      sample_tag: the samples' format tag (an extensible header's: its sub-format's where
        FFmpeg reads one, else 0xFFFE).
      data_offset: bytes before the samples.
      data_size: the data chunk's declared bytes, ``None`` where the writer could not know
        them (0 or 0xFFFFFFFF).
      fact_frames: the frames a ``fact`` chunk before the data counts (compressed samples:
        ADPCM, MP3), or ``None``.
    """

    tag: int
    channels: int
    sample_rate: int
    block_align: int
    bits: int
    sample_tag: int
    data_offset: int
    data_size: int | None
    fact_frames: int | None = None

    @property
    def dtype(self) -> str | None:
        """The samples' NumPy dtype (:data:`WAV_DTYPES`), ``None`` for other formats. 24-bit PCM
        in frames of 4 bytes a channel is read as libsndfile reads it: each sample in the high
        bytes of an int32 (FFmpeg reads the bytes as packed 24-bit samples, or as 24-bit floats:
        noise)."""
        if (self.sample_tag, self.bits) == (1, 24) and self.block_align == 4 * self.channels:
            return "<i4"
        return WAV_DTYPES.get((self.sample_tag, self.bits))


WIDE_HEADS = (b"RF64", b"BW64")  # RIFF's 64-bit forms: sizes past 4 GB in a ds64 chunk


def _skipped(read: Callable[[int], bytes], n: int) -> bool:
    """Read past ``n`` bytes in pieces of at most 64 KB (a chunk's declared size may be
    anything); whether they all came."""
    for start in range(0, n, 1 << 16):
        piece = min(1 << 16, n - start)
        if len(read(piece)) < piece:
            return False
    return True


def _sample_tag(fmt: bytes) -> int:
    """The format tag of the samples a WAV ``fmt`` chunk describes, as FFmpeg (riff.c) reads it:
    the chunk's own tag, or an extensible chunk's sub-format, a 32-bit tag read only from a whole
    extension (cbSize 22 in 40 bytes) behind a base GUID FFmpeg knows; else 0xFFFE, no samples
    it decodes."""
    tag = struct.unpack("<H", fmt[:2])[0]
    extension = struct.unpack("<H", fmt[16:18])[0] if len(fmt) >= 18 else 0
    if tag != _EXTENSIBLE or len(fmt) < 40 or extension < 22:
        return tag
    return struct.unpack("<I", fmt[24:28])[0] if fmt[28:40] in _SUB_FORMAT_BASES else tag


def parse_wav_header(read: Callable[[int], bytes], source: str = "standard input") -> WavHeader:
    """Read a RIFF/WAVE header (or an RF64/BW64 one) from ``read`` up to the first sample of
    its ``data`` chunk.

    ``read(n)`` returns exactly ``n`` bytes or fewer at the end of the input; the first fmt
    chunk counts; other chunks before the data are skipped in pieces of at most 64 KB. An
    RF64/BW64 header's first chunk is its ``ds64``, whose 64-bit data size stands for the data
    chunk's 32-bit size.

    Raises:
      AudioError: naming ``source``, for a header that ends early, has no RIFF/WAVE
        signature (or RF64/BW64 without a ds64 chunk first), or no fmt chunk of at least 16
        bytes before its data.
    """
    def need(n: int, what: str) -> bytes:
        data = read(n)
        if len(data) < n:
            raise AudioError(f"{source}: malformed WAV header: ends inside the {what}")
        return data

    def skip(n: int, what: str) -> None:
        if not _skipped(read, n):
            raise AudioError(f"{source}: malformed WAV header: ends inside the {what}")

    riff = need(12, "RIFF header")
    if riff[:4] not in (b"RIFF", *WIDE_HEADS) or riff[8:12] != b"WAVE":
        raise AudioError(f"{source}: malformed WAV header: no RIFF/WAVE signature")
    offset, fmt, fact, wide_size = 12, None, None, None
    if riff[:4] in WIDE_HEADS:  # as FFmpeg reads it: 24 bytes at least, an even number
        name, size = struct.unpack("<4sI", need(8, "chunk header"))
        if name != b"ds64" or size < 24 or size % 2:  # FFmpeg then reads the next chunk a byte off
            raise AudioError(f"{source}: malformed WAV header: {riff[:4].decode()} without a "
                             "ds64 chunk of 24 bytes or more (an even number) first")
        wide_size = struct.unpack("<Q", need(24, "'ds64' chunk")[8:16])[0]
        skip(size - 24, "'ds64' chunk")
        offset += 8 + size
    while True:
        name, size = struct.unpack("<4sI", need(8, "chunk header"))
        offset += 8
        if name == b"data":
            if wide_size is not None:  # FFmpeg reads the ds64 size, whatever the chunk's says
                size = 0 if wide_size >= 1 << 63 else wide_size  # 0, or all ones: not known
            break
        padded, what = size + (size & 1), f"{name.decode('latin-1')!r} chunk"
        if name == b"fmt " and fmt is None:
            if size < 16:
                raise AudioError(f"{source}: malformed WAV header: fmt chunk of {size} bytes")
            body = need(padded, what)[:size]
            fmt = struct.unpack("<HHIIHH", body[:16]) + (_sample_tag(body),)
        elif name == b"fact" and size >= 4:
            fact = struct.unpack("<I", need(padded, what)[:4])[0]
            fact = None if fact in UNKNOWN_DATA_SIZES else fact  # RF64 writers put -1 there
        else:
            skip(padded, what)
        offset += padded
    if fmt is None:
        raise AudioError(f"{source}: malformed WAV header: no fmt chunk before the data")
    tag, channels, rate, _, block_align, bits, sample_tag = fmt
    return WavHeader(tag, channels, rate, block_align, bits, sample_tag, offset,
                     None if size in UNKNOWN_DATA_SIZES else size, fact)


CHUNKS_AFTER_DATA = 64        # chunks after a WAV's data looked through for another data chunk
_LARGEST_SKIPPED = 1 << 20    # bytes of one such chunk (a LIST, an id3 tag) read past, at most


def data_chunk_after(read: Callable[[int], bytes], padding: int) -> int | None:
    """The declared size of a ``data`` chunk among the chunks that follow a WAV stream's data
    (``read`` from just after its last sample, giving fewer bytes than asked where none come:
    :meth:`ByteReader.read` with ``wait_s``; ``padding``: its pad byte, 0 or 1), or ``None``
    at the end of what comes, after :data:`CHUNKS_AFTER_DATA` chunks or at a chunk larger than
    :data:`_LARGEST_SKIPPED`. FFmpeg (and Essentia's loader) read a file's last data chunk."""
    read(padding)
    for _ in range(CHUNKS_AFTER_DATA):
        head = read(8)
        if len(head) < 8:
            return None
        name, size = struct.unpack("<4sI", head)
        if name == b"data":
            return size
        if size > _LARGEST_SKIPPED or not _skipped(read, size + (size & 1)):
            return None
    return None


def read_wav_header(read: Callable[[int], bytes]) -> tuple[int, int, str, int | None]:
    """A live WAV stream's header (:func:`parse_wav_header`): ``(rate, channels, dtype, data
    bytes or None)``, the size ``None`` where the writer could not know it. 24-bit PCM is
    ``"<i3"``, or ``"<i4"`` in frames of 4 bytes a channel (:attr:`WavHeader.dtype`).

    Raises:
      AudioError: a malformed header or a sample format other than 8/16/24/32-bit PCM and
        32/64-bit float.
    """
    header = parse_wav_header(read)
    if header.dtype is None or header.channels < 1:
        raise AudioError(f"standard input: unsupported WAV format (format tag {header.sample_tag}, "
                         f"{header.bits} bits, {header.channels} channel(s)); accepted: "
                         f"8/16/24/32-bit PCM, 32/64-bit float")
    frame = frame_bytes(header.dtype, header.channels)
    if header.block_align > frame:  # padding inside frames (16-bit in 4 bytes): read as noise
        raise AudioError(f"standard input: WAV frames of {header.block_align} bytes (its "
                         f"block_align) for {header.channels} channel(s) of {header.bits}-bit "
                         f"samples, which take {frame}; accepted: samples packed without padding")
    return header.sample_rate, header.channels, header.dtype, header.data_size


# The first four bytes of encoded audio files, which raw PCM read as samples would make noise of
# (an MP4's are its box size; bytes 4-8 say "ftyp").
_SIGNATURES = {b"fLaC": "a FLAC file", b"OggS": "an Ogg file", b"FORM": "an AIFF file",
               b"caff": "a CAF file", b"wvpk": "a WavPack file", b"MAC ": "an APE file"}
_SIGNATURES.update({b"ID3" + bytes([version]): "an MP3 file (ID3 tag)" for version in (2, 3, 4)})
_MP4_BRAND = b"ftyp"
_WAV_HEADS = (b"RIFF", b"RF64", b"BW64", b"RIFX")

# MPEG audio frame headers: kbit/s by [MPEG-1?][layer I, II, III][index]; Hz by version
_KBPS = {True: ((0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
                (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
                (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)),
         False: ((0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
                 (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
                 (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160))}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mpeg_frame_bytes(header: bytes) -> int | None:
    """The length of the MPEG audio frame (MP1/2/3) whose 4-byte header this is, or ``None``
    (reserved values, or a free bitrate, as FFmpeg takes them)."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = header[1] >> 3 & 3, 4 - (header[1] >> 1 & 3)  # layer 4: reserved
    bitrate, rate_index, padding = header[2] >> 4, header[2] >> 2 & 3, header[2] >> 1 & 1
    if version == 1 or layer == 4 or bitrate in (0, 15) or rate_index == 3:
        return None  # reserved values, or a free bitrate, whose length the header does not give
    kbps, rate = _KBPS[version == 3][layer - 1][bitrate], _MPEG_RATES[version][rate_index]
    if layer == 1:
        return (12 * kbps * 1000 // rate + padding) * 4
    per_frame = 144 if layer == 2 or version == 3 else 72
    return per_frame * kbps * 1000 // rate + padding


def _adts_frame_bytes(header: bytes) -> int | None:
    """The length of the ADTS (AAC) frame whose header this is, or ``None``."""
    if len(header) < 7 or header[0] != 0xFF or header[1] & 0xF6 != 0xF0 or header[2] >> 2 & 15 > 12:
        return None
    length = (header[3] & 3) << 11 | header[4] << 3 | header[5] >> 5
    return length if length >= 7 else None


def _mpeg_kind(header: bytes) -> str:
    """``"an MP3 file"``, ``"an MP2 file"`` or ``"an MP1 file"``, by the layer of a valid
    MPEG audio frame header."""
    return f"an MP{4 - (header[1] >> 1 & 3)} file"


def _adts_kind(header: bytes) -> str:
    return "an AAC (ADTS) file"


def _mpeg_stream(header: bytes) -> tuple:
    """What every frame header of one MPEG audio stream shares: version, layer, CRC, rate."""
    return header[1], header[2] >> 2 & 3


def _adts_stream(header: bytes) -> tuple:
    """What every ADTS header of one stream shares: version, CRC, profile, rate, channels."""
    return header[1], header[2], header[3] >> 6


_FRAMED = ((mpeg_frame_bytes, _mpeg_kind, _mpeg_stream),
           (_adts_frame_bytes, _adts_kind, _adts_stream))
# A stream joined mid-way (a radio's, cut anywhere) has its first whole frame, or Ogg page,
# within these bytes: MP3 frames take at most 1,728, ADTS ones are rarely over a few thousand.
_JOINED_SCAN = 1 << 14


def _chained(peek: Callable[[int], bytes], frame_bytes_of, stream_of, at: int,
             frames: int, distinct: bool = False) -> bool:
    """Whether ``frames`` frame headers of one stream (``stream_of`` them alike) follow each
    other from byte ``at``, each where the length of the one before says; ``distinct``: and no
    frame is the one before it byte for byte (a tone whose period divides a chance header's
    frame length repeats that header at every frame; an encoder's frames differ, but for
    digital silence)."""
    first, before = None, None
    for _ in range(frames):
        header = peek(at + 8)[at:]
        length = frame_bytes_of(header)
        if length is None or stream_of(header) != (first := first or stream_of(header)):
            return False
        if distinct:
            frame = peek(at + length)[at:]
            if frame == before:
                return False
            before = frame
        at += length
    return True


def encoded_format(peek: Callable[[int], bytes]) -> str | None:
    """What kind of encoded audio file the bytes ``peek(n)`` shows begin, or ``None`` (PCM).

    Signatures, and MP3/MP2 or ADTS (AAC) streams with no tag before them, which open on a frame
    header: those are told by a second header where the first's length says (raw PCM can open on
    bytes that read as one header, never by chance on two). MPEG layer I is left out: the bytes
    FF FF of every small negative 32-bit sample read as its header, and its frames' lengths,
    multiples of 4, land on the next such sample; nobody streams MP1.
    """
    head = peek(8)
    if head[4:8] == _MP4_BRAND:
        return "an MP4/M4A file"
    if head[:4] in _SIGNATURES:
        return _SIGNATURES[head[:4]]
    for frame_bytes_of, kind, stream_of in _FRAMED:
        if not _layer_one(head) and _chained(peek, frame_bytes_of, stream_of, 0, 2):
            return kind(head)
    return None


def _layer_one(header: bytes) -> bool:
    return len(header) > 1 and header[1] & 6 == 6


def joined_format(peek: Callable[[int], bytes]) -> tuple[str, int] | None:
    """``(kind, byte)`` where raw PCM looks like an MP3, MP2, AAC (ADTS) or Ogg stream joined
    mid-frame (a live radio's) from that byte, else ``None``: three frame headers of one stream
    in a row, no frame a copy of the one before, or an Ogg page's capture pattern, within the
    first :data:`_JOINED_SCAN` bytes. A guess, to be said, not acted on: a tone with a little
    dither whose period divides a chance header's frame length repeats that header too (11 of
    17,520 such tones here). Call it on what :func:`encoded_format` took for PCM."""
    head = peek(4)
    if head[:4] in _WAV_HEADS:  # a WAV stream: its header says what its samples are
        return None
    scanned = peek(_JOINED_SCAN)
    page = scanned.find(b"OggS\x00")  # version 0 of the page format
    if page >= 0:
        return "an Ogg file", page
    at = scanned.find(b"\xff", 1)
    while at >= 0:
        if not _layer_one(scanned[at:at + 2]):
            for frame_bytes_of, kind, stream_of in _FRAMED:
                if _chained(peek, frame_bytes_of, stream_of, at, 3, distinct=True):
                    return kind(scanned[at:at + 4]), at
        at = scanned.find(b"\xff", at + 1)
    return None


def frame_bytes(dtype: str, channels: int) -> int:
    """Bytes per sample frame of ``dtype`` (a :data:`RAW_DTYPES` value or ``"<i3"``)."""
    return channels * (3 if dtype == "<i3" else np.dtype(dtype).itemsize)


def decode_pcm(data: bytes, dtype: str, channels: int) -> np.ndarray:
    """Whole sample frames of raw little-endian PCM -> ``[n, channels]`` (24-bit -> int32 scale)."""
    if dtype == "<i3":
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        values = (raw[:, 0] << 8 | raw[:, 1] << 16 | raw[:, 2] << 24)  # sign kept by the top byte
        return values.reshape(-1, channels)
    return np.frombuffer(data, np.dtype(dtype)).reshape(-1, channels)


class ByteReader:
    """A file descriptor's bytes as they arrive (``os.read``: no buffering that would hold
    back a live writer's last bytes)."""

    def __init__(self, fd: int):
        self.fd = fd
        self._pending = b""
        self.ended = False

    def read(self, n: int, wait_s: float | None = None) -> bytes:
        """Exactly ``n`` bytes (fewer at the end of input): for headers. With ``wait_s``, fewer
        too where no byte came for that long (a writer that keeps its end open)."""
        data = self.peek(n, wait_s)
        self._pending = self._pending[len(data):]
        return data

    def peek(self, n: int, wait_s: float | None = None) -> bytes:
        """The next ``n`` bytes (fewer at the end of input, or after ``wait_s`` without a
        byte), left to be read again."""
        while len(self._pending) < n and not self.ended:
            if wait_s is not None and not select.select([self.fd], [], [], wait_s)[0]:
                break
            self._fill()
        return self._pending[:n]

    def unread(self, data: bytes) -> None:
        """Put ``data`` (bytes just taken) back in front of what comes next."""
        self._pending = data + self._pending

    def some(self) -> bytes:
        """What has arrived (at least one byte unless the input ended)."""
        if not self._pending and not self.ended:
            self._fill()
        data, self._pending = self._pending, b""
        return data

    def _fill(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
                break
            except BlockingIOError:  # a descriptor its writer left non-blocking: wait for data
                select.select([self.fd], [], [])
        if data:
            self._pending += data
        else:
            self.ended = True
