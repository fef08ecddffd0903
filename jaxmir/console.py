"""Lines for people on standard output, as files are done.

A reader that went away (``jaxmir tag ... | head -1``) or a full disk behind a redirection
stops the command: it is no file's failure, and the files after it would print to nowhere.
"""

from __future__ import annotations

import errno
import io
import os
import re
import select
import sys
import time
import unicodedata
from typing import Callable

from jaxmir.labels import read_as_utf8

# Python's buffered writer takes a write longer than a pipe holds that its reader left as
# written (the pipe took its first 64 KiB): such text is written here, all of it or an error.
_PIPE_BYTES = 1 << 16


class StandardOutputError(Exception):
    """Standard output cannot be written; ``reader_left`` when its reader closed the pipe.

    Neither an :class:`OSError` nor a :class:`~jaxmir.errors.JaxmirError`, so that the handlers
    of a file's failure, or of an output file's, pass it on to the command."""

    def __init__(self, reason: str, reader_left: bool):
        super().__init__(f"cannot write standard output: {reason}")
        self.reader_left = reader_left


# Control characters but tab (and newline, where asked): in a file name, ESC [ ... would drive
# the terminal that shows the message (colours, the window's title, the cursor), and a newline
# start a line of its own.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROLS_BUT_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# A name's byte that is not UTF-8 reaches Python as a lone surrogate, \udc80-\udcff, which a
# stream in a C or POSIX locale writes back as that byte (0x80-0x9f are C1 controls: 0x9b is
# CSI), and another stream refuses: always written as an escape (utf8_text).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # no UTF-8 encodes one


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8 text, whatever the locale: a name's UTF-8 bytes that an ASCII
    locale (PYTHONUTF8=0) read as lone surrogates as the text they are
    (:func:`~jaxmir.labels.read_as_utf8`), each other byte that is not UTF-8 as ``\\udcNN``
    (any other lone surrogate, a JSON's, as ``\\uNNNN``)."""
    if not _LONE_SURROGATE.search(text):
        return text
    return _LONE_SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", read_as_utf8(text))


def printable(text: str, newlines: bool = False) -> str:
    """``text`` with each control character but tab (and newline, with ``newlines``) written as
    ``\\xNN``, as a terminal shows it rather than obeys it, as valid UTF-8 text
    (:func:`utf8_text`)."""
    controls = _CONTROLS_BUT_NEWLINE if newlines else _CONTROLS
    return controls.sub(lambda found: f"\\x{ord(found.group()) & 0xFF:02x}", utf8_text(text))


def columns(text: str) -> int:
    """The columns ``text`` takes on a terminal (:func:`_char_columns` of each character)."""
    return sum(_char_columns(char) for char in text)


def _char_columns(char: str) -> int:
    """Two for a wide character (CJK), none for a mark drawn on the one before (accents,
    Devanagari's and Thai's vowel signs, variation selectors, format characters but the soft
    hyphen, which terminals draw, Hangul's vowel and final jamo), one for any other (as
    glibc's ``wcwidth``)."""
    if char == "\u00ad":
        return 1
    if unicodedata.category(char) in ("Mn", "Me", "Cf") or "\u1160" <= char <= "\u11ff":
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def write_line(text: str) -> None:
    """``text`` (ending in a newline) on standard output, above a progress bar, flushed."""
    from tqdm import tqdm

    text = _encodable(printable(text, newlines=True))
    try:
        if len(text) < _PIPE_BYTES // 4:  # at most 4 bytes a character in UTF-8
            tqdm.write(text, file=sys.stdout, end="" if text.endswith("\n") else "\n")
            sys.stdout.flush()
        else:
            _write_all(text if text.endswith("\n") else text + "\n")
    except OSError as err:
        raise StandardOutputError(err.strerror or str(err), err.errno == errno.EPIPE) from None


def _encodable(text: str) -> str:
    """``text``, or where standard output's encoding cannot take it (ASCII, Latin-1) with
    backslash escapes; it ended in a traceback."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding, getattr(sys.stdout, "errors", None) or "strict")
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know: the stream will say so itself
        pass
    return text


_PIECE_BYTES = 4096  # PIPE_BUF on Linux: a pipe select() calls writable takes this without waiting
_POLL_S = 0.1


def write_whole_line(text: str, give_up_at: Callable[[], float | None]) -> bool:
    """``text`` and a newline on standard output, in pieces a pipe takes without waiting, so that
    a signal while a slow reader holds the line back leaves it whole: ``give_up_at()`` (checked
    every 0.1 s while the reader takes nothing) is ``None`` to go on, or the monotonic time from
    which the line is given up. False when it was given up (a part of it may be out: the reader
    stopped reading); :class:`StandardOutputError` when standard output fails."""
    descriptor = _stdout_descriptor()
    if descriptor is None:
        write_line(text)
        return True
    line = _encodable(printable(text, newlines=True))
    data = _stdout_bytes(line if line.endswith("\n") else line + "\n")
    try:
        while data:
            until = give_up_at()
            if until is not None and time.monotonic() >= until:
                return False
            _, writable, _ = select.select([], [descriptor], [], _POLL_S)
            if writable:
                try:
                    data = data[os.write(descriptor, data[:_PIECE_BYTES]):]
                except BlockingIOError:  # a descriptor left non-blocking, the pipe full again
                    pass
    except OSError as err:
        raise StandardOutputError(err.strerror or str(err), err.errno == errno.EPIPE) from None
    return True


def _stdout_descriptor() -> int | None:
    """Standard output's file descriptor, what Python buffered for it written first; ``None``
    where it is no file (a test's capture)."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None
    sys.stdout.flush()
    return descriptor


def _stdout_bytes(text: str) -> memoryview:
    """``text`` in standard output's encoding, as its text stream would write it."""
    return memoryview(text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"))


def _write_all(text: str) -> None:
    """``text`` to standard output's file descriptor until every byte is taken."""
    descriptor = _stdout_descriptor()
    if descriptor is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    data = _stdout_bytes(text)
    while data:
        data = data[os.write(descriptor, data):]
