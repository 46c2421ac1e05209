"""A progress line for long transfers: bytes, percentage, rate and ETA, on stderr.

Shown only when stderr is a terminal, so scripts and logs stay clean. Redrawn at
most every ``REDRAW_INTERVAL_S`` so that a fast transfer does not spend its time
printing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from p2pfs.config import format_size

REDRAW_INTERVAL_S = 0.2


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    def __init__(self, label: str, total_bytes: int | None, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.total_bytes = total_bytes if total_bytes is not None and total_bytes >= 0 else None
        self.done_bytes = 0
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._started_s = time.monotonic()
        self._drawn_s = 0.0
        # A transfer of many files (put -r, get -r) also shows how many are done.
        self.files_total: int | None = None
        self.files_done = 0

    def set_total(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes

    def set_files(self, files_total: int, total_bytes: int) -> None:
        self.files_total = files_total
        self.total_bytes = total_bytes

    def file_done(self) -> None:
        self.files_done += 1

    def note(self, text: str) -> None:
        """A line of its own on the stream (a file that failed), above the progress line."""
        if self._enabled:
            self._stream.write("\r" + " " * 70 + "\r")
        self._stream.write(text + "\n")
        self._stream.flush()
        if self._enabled:
            self._draw(time.monotonic())

    def __call__(self, count_bytes: int) -> None:
        self.done_bytes += count_bytes
        now = time.monotonic()
        if self._enabled and now - self._drawn_s >= REDRAW_INTERVAL_S:
            self._drawn_s = now
            self._draw(now)

    def line(self, now: float) -> str:
        elapsed_s = max(now - self._started_s, 1e-6)
        rate = self.done_bytes / elapsed_s
        parts = [self.label, format_size(self.done_bytes)]
        if self.files_total is not None:
            parts.insert(1, f"{self.files_done}/{self.files_total} files")
        if self.total_bytes:
            parts[-1] += f" / {format_size(self.total_bytes)}"
            parts.append(f"{100 * self.done_bytes / self.total_bytes:3.0f}%")
        parts.append(f"{rate / 1e6:.1f} MB/s")
        if self.total_bytes and rate > 0:
            parts.append(f"ETA {_duration((self.total_bytes - self.done_bytes) / rate)}")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        self._stream.write("\r" + self.line(now).ljust(70))
        self._stream.flush()

    def finish(self) -> None:
        if self._enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()
