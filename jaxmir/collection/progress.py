"""Progress of a collection run: a tqdm bar (files/s, audio hours per hour, ETA) and the final
summary."""

from __future__ import annotations

import dataclasses
import sys
import time

from jaxmir.collection.rows import DAMAGED, Result
from jaxmir.console import printable


@dataclasses.dataclass
class Tally:
    """Counts of a run; ``audio_s`` is the duration of the audio analysed (16-kHz signal)."""

    total: int = 0
    skipped: int = 0
    ok: int = 0
    damaged: int = 0  # of the ok ones: decoded in part
    failed: int = 0
    audio_s: float = 0.0
    started: float = dataclasses.field(default_factory=time.monotonic)
    ended: float | None = None  # set by :meth:`end`

    def end(self) -> None:
        """The run is over: its wall time stops here."""
        self.ended = time.monotonic()

    @property
    def wall_s(self) -> float:
        """Seconds from the run's start to its end (to now while it runs)."""
        return (time.monotonic() if self.ended is None else self.ended) - self.started

    @property
    def realtime(self) -> float:
        """Seconds of audio per second of wall time (= audio hours per hour)."""
        return self.audio_s / max(self.wall_s, 1e-9)

    def summary(self) -> str:
        """One line: files ok (damaged among them), failed and skipped, hours of audio, wall
        time and times real time."""
        damaged = f" ({self.damaged} damaged: decoded in part)" if self.damaged else ""
        done = f"{self.ok} ok{damaged}, {self.failed} failed"
        if self.skipped:
            done += f", {self.skipped} already done"
        if not self.ok and not self.failed:
            return f"{done}; nothing to do"
        if not self.ok:  # no audio analysed: an hours figure of 0.000 would say nothing
            return f"{done} in {self.wall_s:.1f} s"
        return (f"{done}; {self.audio_s / 3600:.3f} h of audio in {self.wall_s:.1f} s "
                f"({self.realtime:.1f}x real time)")


class Progress:
    """A tqdm bar over the files to do (disabled when ``enabled`` is false or output is not a
    tty)."""

    def __init__(self, tally: Tally, enabled: bool = True):
        from tqdm import tqdm

        self.tally = tally
        self.bar = tqdm(total=tally.total - tally.skipped, unit="file", file=sys.stderr,
                        dynamic_ncols=True, disable=not enabled or None, smoothing=0.1)

    def update(self, result: Result) -> None:
        """Count a file's result (the audio of one that failed is not counted as analysed) and
        report its problem in one line: the error, or what was wrong with a file decoded in part."""
        if result.error:
            self.write(f"jaxmir: error: {result.error}")
        elif result.warning:
            self.write(f"jaxmir: warning: {result.warning}")
        tally = self.tally
        if result.ok:
            tally.ok += 1
            tally.damaged += result.status == DAMAGED
            tally.audio_s += result.duration_s
        else:
            tally.failed += 1
        self.bar.set_postfix_str(f"{tally.realtime:.1f} audio h/h, {tally.failed} failed",
                                 refresh=False)
        self.bar.update(1)

    def write(self, message: str) -> None:
        self.bar.write(printable(message), file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
