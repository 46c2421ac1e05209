"""The one clock of the data layer: monotonic time for deadlines, wall time for versions.

Nothing in the data layer reads ``time`` or ``trio.current_time()`` itself; it
asks the ``Clock`` it was given. In a daemon that is ``SystemClock``; in a
simulation it is ``SimClock``, whose wall time is a function of trio's
(mock) clock, so a seeded run replays the same versions, expiries and GC
decisions, and clock skew is a per-node offset rather than a patch of the
``time`` module.

Monotonic time comes from trio so that ``trio.testing.MockClock`` drives it.
This module itself does not load trio: the pure cores name ``Clock`` in their
signatures and must stay free of I/O (tests/test_import_rules.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Protocol

# Seconds between two reads of a SystemClock's offset file: how soon a changed
# offset takes effect, against a file read per wall-clock reading.
OFFSET_FILE_REREAD_S = 0.25


class Clock(Protocol):
    def monotonic_s(self) -> float:
        """Seconds on a clock that never jumps (deadlines, intervals, back-off)."""
        ...

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch (versions, expiry stamps, GC grace)."""
        ...


def _trio_now_s() -> float:
    import trio  # loaded on first use, by the trio driver that runs the clock, not by the cores

    return trio.current_time()


@dataclasses.dataclass(slots=True)
class SystemClock:
    """The host's clocks, wall time moved by ``wall_offset_ms`` and by the offset in ``offset_file``.

    Both offsets exist for clock-skew tests. The file (milliseconds, an integer)
    is re-read at most every ``OFFSET_FILE_REREAD_S``, so a test can move a
    running node's wall clock; write it atomically (write and rename).
    """

    wall_offset_ms: int = 0
    offset_file: Path | None = None
    _file_offset_ms: int = 0
    _file_read_at_s: float = -math.inf

    def monotonic_s(self) -> float:
        return _trio_now_s()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.wall_offset_ms + self._offset_from_file_ms()

    def _offset_from_file_ms(self) -> int:
        if self.offset_file is None:
            return 0
        now_s = time.monotonic()
        if now_s - self._file_read_at_s >= OFFSET_FILE_REREAD_S:
            self._file_read_at_s = now_s
            try:
                self._file_offset_ms = int(self.offset_file.read_text().strip() or 0)
            except (OSError, ValueError):
                pass  # keep the last offset: a missing or unreadable file changes nothing
        return self._file_offset_ms


@dataclasses.dataclass(slots=True)
class SimClock:
    """Wall time derived from trio's (mock) clock: deterministic under a seed.

    ``epoch_ms`` is the wall time at trio time 0; ``skew_ms`` is this node's
    offset from the true time, which a simulation may change while it runs.
    """

    epoch_ms: int = 1_700_000_000_000
    skew_ms: int = 0

    def monotonic_s(self) -> float:
        return _trio_now_s()

    def wall_ms(self) -> int:
        return self.epoch_ms + int(_trio_now_s() * 1000) + self.skew_ms
