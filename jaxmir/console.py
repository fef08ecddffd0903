"""Lines for people on standard output, as files are done.

A reader that went away (``jaxmir tag ... | head -1``) or a full disk behind a redirection
stops the command: it is no file's failure, and the files after it would print to nowhere.
"""

from __future__ import annotations

import errno
import sys


class StandardOutputError(Exception):
    """Standard output cannot be written; ``reader_left`` when its reader closed the pipe.

    Neither an :class:`OSError` nor a :class:`~jaxmir.errors.JaxmirError`, so that the handlers
    of a file's failure, or of an output file's, pass it on to the command."""

    def __init__(self, reason: str, reader_left: bool):
        super().__init__(f"cannot write standard output: {reason}")
        self.reader_left = reader_left


def write_line(text: str) -> None:
    """``text`` (ending in a newline) on standard output, above a progress bar, flushed."""
    from tqdm import tqdm

    try:
        tqdm.write(text, file=sys.stdout, end="" if text.endswith("\n") else "\n")
        sys.stdout.flush()
    except OSError as err:
        raise StandardOutputError(err.strerror or str(err), err.errno == errno.EPIPE) from None
