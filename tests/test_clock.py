"""The node's clock: wall time moved by a fixed offset and by an offset file changed while it runs."""

from __future__ import annotations

import os
import time

from p2pfs.clock import OFFSET_FILE_REREAD_S, SystemClock

# Slack for the time between reading the host's clock and the node's (ms).
SLACK_MS = 200


def skew_ms(clock: SystemClock) -> int:
    return clock.wall_ms() - time.time_ns() // 1_000_000


def write_offset(path, offset_ms: int) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(f"{offset_ms}\n")
    os.replace(temporary, path)


def test_fixed_and_file_offsets_add_up_and_the_file_is_reread(tmp_path):
    offset_file = tmp_path / "clock-offset"
    write_offset(offset_file, 5_000)
    clock = SystemClock(wall_offset_ms=1_000, offset_file=offset_file)
    assert abs(skew_ms(clock) - 6_000) < SLACK_MS

    write_offset(offset_file, -3_000)
    deadline_s = time.monotonic() + 10 * OFFSET_FILE_REREAD_S + 5.0
    while abs(skew_ms(clock) - (-2_000)) >= SLACK_MS:
        assert time.monotonic() < deadline_s, "the new offset was never read"
        time.sleep(OFFSET_FILE_REREAD_S / 5)  # polling a file re-read on a timer, under a deadline


def test_a_missing_or_garbled_file_keeps_the_last_offset(tmp_path):
    offset_file = tmp_path / "clock-offset"
    clock = SystemClock(offset_file=offset_file)
    assert abs(skew_ms(clock)) < SLACK_MS  # no file yet: no offset
    write_offset(offset_file, 7_000)
    fresh = SystemClock(offset_file=offset_file)
    assert abs(skew_ms(fresh) - 7_000) < SLACK_MS
    offset_file.write_text("not a number\n")
    fresh._file_read_at_s = -1e9  # force the next reading to look at the file again
    assert abs(skew_ms(fresh) - 7_000) < SLACK_MS
