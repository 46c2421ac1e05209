"""Clock sanity at every entry (issue 12): a version beyond the allowed clock offset is never stored."""

from __future__ import annotations

import pytest

from p2pfs.replication.hints import HintStore
from p2pfs.replication.local import LocalStore
from p2pfs.storage import ChunkStore, NameEntry, NameIndex, Timestamp
from p2pfs.storage.hlc import MAX_DRIFT_MS, WALL_MS_MAX, ClockDriftError, check_not_ahead

NOW_MS = 1_800_000_000_000
WRITER = "ab" * 32


@pytest.mark.parametrize("ahead_ms, refused", [(0, False), (MAX_DRIFT_MS, False), (MAX_DRIFT_MS + 1, True),
                                               (WALL_MS_MAX - NOW_MS, True), (-10**9, False)])
def test_check_not_ahead(ahead_ms, refused):
    stamp = Timestamp(NOW_MS + ahead_ms, 7)
    if refused:
        with pytest.raises(ClockDriftError):
            check_not_ahead(stamp, NOW_MS)
    else:
        check_not_ahead(stamp, NOW_MS)


class FixedClock:
    def monotonic_s(self) -> float:
        return 0.0

    def wall_ms(self) -> int:
        return NOW_MS


def test_the_local_store_never_stores_a_version_from_the_future(tmp_path):
    clock = FixedClock()
    local = LocalStore(ChunkStore(tmp_path / "chunks", 10**9, clock=clock), NameIndex(tmp_path / "names"),
                       HintStore(tmp_path / "hints"), clock)
    pinned = NameEntry("f.bin", Timestamp(WALL_MS_MAX, 0), WRITER, None)
    for hint_for in ("", "cd" * 32):  # a put, a hint
        with pytest.raises(ClockDriftError):
            local.apply(pinned, hint_for)
    assert local.names.get("f.bin") is None
    assert local.hints.count() == 0
    assert local.apply(NameEntry("f.bin", Timestamp(NOW_MS, 0), WRITER, None), "")
    assert local.names.get("f.bin") is not None
