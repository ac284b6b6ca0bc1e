"""Sweep progress on rank 0's stderr: `--progress auto|live|lines|off`.

`live` redraws one line with a carriage return (fine in a terminal, also through
mpiexec, which forwards rank 0's stderr through a pipe: that is why `auto` can only
choose `live` when stderr itself is a terminal, i.e. without mpiexec). `lines` writes a
line every LINE_SECONDS, with a timestamp, for batch logs. Both always end with the final
counts. Each line carries done, error, total, percent, elapsed time, rate and ETA (h:mm:ss;
`-` until a rate is known).
"""

from __future__ import annotations

import datetime
import sys
import threading
import time
from typing import TextIO

MODES = ("auto", "live", "lines", "off")
LIVE_SECONDS = 0.2
LINE_SECONDS = 5.0
_drawn: list[Progress] = []   # the live line on this process's stderr, if one is drawn
_lock = threading.Lock()


def break_live_line() -> None:
    """Before other text on stderr: end the live line, so that text gets a line of its
    own (the next update draws the live line again below it)."""
    with _lock:   # virtual ranks echo from threads of one process
        while _drawn:
            progress = _drawn.pop()
            progress.stream.write("\n")
            progress.stream.flush()
            progress.width = 0


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss (hours may pass 24)."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class Progress:
    """Counts of one sweep, shown as the mode says."""

    def __init__(self, total: int, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "live" if self.stream.isatty() else "lines"
        self.mode = mode
        self.total = total
        self.began = time.monotonic()
        self.last = self.began
        self.interval = LIVE_SECONDS if mode == "live" else LINE_SECONDS
        self.width = 0  # of the live line drawn last, to blank what a shorter one leaves

    def text(self, remaining: int, errors: int, now: float) -> str:
        finished = self.total - remaining
        elapsed = now - self.began
        rate = finished / elapsed if elapsed > 0 else 0.0
        eta = clock(remaining / rate) if rate > 0 else "-"
        percent = 100.0 * finished / self.total if self.total else 100.0
        return (f"sweep: {finished - errors:,} done, {errors:,} error of {self.total:,} "
                f"({percent:.1f}%) in {clock(elapsed)}, {rate:,.0f}/s, ETA {eta}")

    def update(self, remaining: int, errors: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.mode == "off" or (now - self.last < self.interval and not force):
            return
        self.last = now
        text = self.text(remaining, errors, now)
        if self.mode == "live":
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            with _lock:
                if self not in _drawn:
                    _drawn.append(self)
        else:
            stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
            self.stream.write(f"[{stamp}] {text}\n")
        self.stream.flush()

    def finish(self, remaining: int, errors: int) -> None:
        """The final counts, always shown (unless off)."""
        self.update(remaining, errors, force=True)
        break_live_line()
