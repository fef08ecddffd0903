"""Ogg pages whose checksum fails, and a file that reads with them passing.

FFmpeg 2.8 (the ``essentia`` wheels' decoder) took every Ogg page as its header
describes it, whatever its CRC; FFmpeg today drops a page whose CRC fails and
searches on for the next one it trusts, so a byte damaged in one page loses
that page's packets and often several seconds after it (a 6-s Vorbis file with
4000 random bytes in its middle: 2.6 s, where Essentia loses none). To decode
such a file as Essentia does, :func:`damage` walks the pages as FFmpeg does
(the next page where the header says, else the next ``OggS``) and gives the
checksum each damaged page would need, and :class:`PatchedFile` reads the file
with those checksums in place; nothing else changes. A page of a version other
than 0 ended 2.8's reading (FFmpeg today skips it and reads on):
:class:`PatchedFile` then ends there, where audio pages follow it.
"""

from __future__ import annotations

import dataclasses
import io
import mmap
import os
import zlib

CAPTURE = b"OggS"
HEADER_BYTES = 27  # capture pattern to segment count; the lacing values follow
MAX_PAGE_BYTES = HEADER_BYTES + 255 + 255 * 255  # 255 lacing values of 255 bytes each
TYPE_AT, END_OF_STREAM = 5, 0x04  # the header type byte, and its last-page flag
_CRC_AT = 22  # the checksum's 4 bytes (little-endian) within a page's header

# Ogg's CRC-32 is the usual polynomial (0x04C11DB7) unreflected, from 0, not inverted at the end:
# zlib's reflected CRC-32 of the bit-reversed bytes, started and ended so, then bit-reversed.
_REVERSED_BITS = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def page_checksum(page: bytes) -> int:
    """The CRC an Ogg page must carry: over the whole page, its own checksum field as zeros."""
    page = page[:_CRC_AT] + bytes(4) + page[_CRC_AT + 4:]
    reflected = ~zlib.crc32(page.translate(_REVERSED_BITS), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def page_end(data, at: int) -> int:
    """Where the page whose header (whole in ``data``) starts at ``at`` ends: behind its lacing
    values and the segments they size; past ``len(data)`` for a page cut short."""
    lacing_end = at + HEADER_BYTES + data[at + HEADER_BYTES - 1]
    return lacing_end + sum(data[at + HEADER_BYTES:lacing_end])


@dataclasses.dataclass(frozen=True)
class Damage:
    """An Ogg file's damaged pages.

    Attributes:
      checksums: ``{offset: checksum}`` for each page whose CRC fails: where its checksum
        field lies and the 4 bytes that make it pass.
      stop: where the first page of a version other than 0 begins that audio pages follow,
        which ended FFmpeg 2.8's reading (``None``: none; one in junk behind a stream's last
        page, with no page after it, loses nothing).
      foreign: the pages of another version inside a stream (not behind its last page), which
        FFmpeg today skips, losing their audio (as it does the pages failing their CRC).
    """

    checksums: dict[int, bytes] = dataclasses.field(default_factory=dict)
    stop: int | None = None
    foreign: int = 0

    def checksums_before_stop(self) -> dict[int, bytes]:
        """The checksums of the pages 2.8 read, before :attr:`stop`."""
        return {at: value for at, value in self.checksums.items()
                if self.stop is None or at < self.stop}


def damage(path: str) -> Damage:
    """The damaged pages of the Ogg file ``path``: none for a file whose pages all pass, and
    for anything that is not an Ogg file."""
    with open(path, "rb") as file:
        if file.read(len(CAPTURE)) != CAPTURE:
            return Damage()
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _walk(data)


def _walk(data) -> Damage:
    fixes: dict[int, bytes] = {}
    at, ended, stop, foreign = 0, False, None, 0  # ended: the page before closed its stream
    while (at := data.find(CAPTURE, at)) >= 0:
        if at + HEADER_BYTES > len(data):
            break  # cut inside the header: FFmpeg ends there
        version = data[at + len(CAPTURE)]
        if version != 0:
            if stop is None and not (ended and data.find(CAPTURE + b"\0", at + 1) < 0):
                stop = at  # 2.8 stopped here; junk behind the last page loses nothing
            foreign += not ended  # today's FFmpeg loses audio with one inside a stream
        else:
            ended = bool(data[at + TYPE_AT] & END_OF_STREAM)
        end = page_end(data, at)
        if end > len(data):
            break  # cut inside the page
        if version == 0:
            page = data[at:end]
            checksum = page_checksum(page)
            if checksum != int.from_bytes(page[_CRC_AT:_CRC_AT + 4], "little"):
                fixes[at + _CRC_AT] = checksum.to_bytes(4, "little")
        at = end
    return Damage(fixes, stop, foreign)


class PatchedFile(io.RawIOBase):
    """``path`` read with ``patches`` (``{offset: bytes}``) in place of the bytes at those
    offsets, ending at byte ``end`` (``None``: its own end); seekable, for FFmpeg
    (``av.open(PatchedFile(...))``)."""

    def __init__(self, path: str, patches: dict[int, bytes], end: int | None = None):
        super().__init__()
        self._file = open(path, "rb")
        self.patches = dict(sorted(patches.items()))
        self.end = end

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        start = self._file.tell()
        view = memoryview(buffer)
        if self.end is not None:
            view = view[:max(0, min(len(view), self.end - start))]
        count = self._file.readinto(view)
        for offset, value in self.patches.items():
            low, high = max(offset, start), min(offset + len(value), start + count)
            if low < high:
                view[low - start:high - start] = value[low - offset:high - offset]
        return count

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END and self.end is not None:
            return self._file.seek(self.end + offset)
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()
