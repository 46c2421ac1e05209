"""Hybrid logical clock: ordering guarantees that last-writer-wins relies on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfs.storage.hlc import LOGICAL_MAX, MAX_DRIFT_MS, WALL_MS_MAX, ClockDriftError, HybridClock, Timestamp

WALL_BASE_MS = 1_700_000_000_000


def test_table_of_events() -> None:
    """Walk through each branch of Kulkarni et al. figure 5 with explicit times."""
    clock = HybridClock()
    assert clock.now(10) == Timestamp(10, 0)  # physical time moved: counter resets
    assert clock.now(10) == Timestamp(10, 1)  # same millisecond: counter counts
    assert clock.now(5) == Timestamp(10, 2)  # wall clock stepped back: never go back
    assert clock.observe(Timestamp(10, 7), 8) == Timestamp(10, 8)  # same wall: max counter + 1
    assert clock.observe(Timestamp(20, 3), 15) == Timestamp(20, 4)  # peer ahead: adopt its wall
    assert clock.observe(Timestamp(12, 9), 16) == Timestamp(20, 5)  # ours ahead: bump ours
    assert clock.observe(Timestamp(12, 9), 30) == Timestamp(30, 0)  # physical ahead of both
    assert clock.last == Timestamp(30, 0)


def test_restart_from_persisted_last_never_reissues() -> None:
    clock = HybridClock(last=Timestamp(100, 5))
    assert clock.now(50) == Timestamp(100, 6)


_event = st.one_of(
    st.tuples(st.just("now"), st.integers(0, 5_000)),
    st.tuples(
        st.just("observe"),
        st.integers(0, 5_000),
        st.integers(-MAX_DRIFT_MS, MAX_DRIFT_MS),
        st.integers(0, 1_000),
    ),
)


@given(st.lists(_event, max_size=60))
def test_monotonic_and_receive_after_send(events: list[tuple]) -> None:
    """Every timestamp exceeds the previous one and any remote one it observed,
    and its wall part is the largest physical time seen (so it tracks real time)."""
    clock = HybridClock()
    previous = clock.last
    wall_seen_ms = 0
    for event in events:
        wall_ms = WALL_BASE_MS + event[1]
        if event[0] == "now":
            stamp = clock.now(wall_ms)
        else:
            remote = Timestamp(wall_ms + event[2], event[3])
            stamp = clock.observe(remote, wall_ms)
            assert stamp > remote
            wall_seen_ms = max(wall_seen_ms, remote.wall_ms)
        wall_seen_ms = max(wall_seen_ms, wall_ms)
        assert stamp > previous
        assert stamp.wall_ms == wall_seen_ms
        previous = stamp


def test_drift_beyond_limit_is_refused_and_clock_unchanged() -> None:
    clock = HybridClock()
    clock.now(WALL_BASE_MS)
    before = clock.last
    clock.observe(Timestamp(WALL_BASE_MS + MAX_DRIFT_MS, 0), WALL_BASE_MS)  # exactly at the limit: fine
    with pytest.raises(ClockDriftError, match="ahead"):
        clock.observe(Timestamp(WALL_BASE_MS + MAX_DRIFT_MS + 1, 0), WALL_BASE_MS)
    assert clock.last > before
    assert clock.last.wall_ms == WALL_BASE_MS + MAX_DRIFT_MS


def test_drift_limit_is_configurable() -> None:
    clock = HybridClock(max_drift_ms=10)
    with pytest.raises(ClockDriftError):
        clock.observe(Timestamp(1_011, 0), 1_000)
    assert clock.last == Timestamp(0, 0)


def test_exhausted_counter_from_peer_is_a_typed_error() -> None:
    clock = HybridClock()
    with pytest.raises(ClockDriftError, match="exhausted"):
        clock.observe(Timestamp(1_000, LOGICAL_MAX), 1_000)


@pytest.mark.parametrize(
    ("wall_ms", "logical"),
    [(-1, 0), (0, -1), (WALL_MS_MAX + 1, 0), (0, LOGICAL_MAX + 1), (True, 0), (1.5, 0)],
)
def test_timestamp_checked_when_built(wall_ms: object, logical: object) -> None:
    with pytest.raises(ValueError):
        Timestamp(wall_ms, logical)  # type: ignore[arg-type]


def test_timestamps_order_by_wall_then_logical() -> None:
    assert Timestamp(1, 99) < Timestamp(2, 0) < Timestamp(2, 1)
