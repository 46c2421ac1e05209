"""Hybrid logical clock (HLC): orders versions of a name without a global clock.

Kulkarni, Demirbas, Madeppa, Avva, Leone, "Logical Physical Clocks and Consistent
Snapshots in Globally Distributed Databases" (OPODIS 2014), figure 5. A timestamp is
``(wall_ms, logical)``: ``wall_ms`` is the largest physical time this node has seen
(its own or a peer's), ``logical`` counts events that happened while ``wall_ms``
stood still. Timestamps never go backwards on one node, a receive is ordered after
the send it observes, and ``wall_ms`` stays within the cluster's clock skew of real
time, so "last writer wins" agrees with the wall clock whenever clocks are sane.

The clock is pure: it never reads the system clock. The caller passes ``wall_ms``
(milliseconds since the Unix epoch) into every call, so tests and simulations drive
it explicitly and a node can persist ``last`` to stay monotonic across restarts.

"""

from __future__ import annotations

from dataclasses import dataclass

from p2pfs.storage.errors import StorageError

# How far ahead of our own clock a peer's timestamp may be before we refuse it (ms).
# Without a bound, one peer with a clock set to 2099 would drag every HLC in the
# cluster to 2099 forever (HLC's wall_ms only moves forward) and its writes would win
# every last-writer-wins race. 60 s is far above NTP-synced skew (milliseconds) yet
# tolerates a host whose clock was set by hand; raising it widens the window in
# which a fast clock can win races it should lose.
MAX_DRIFT_MS = 60_000

# 48 bits of milliseconds last until the year 10889; the paper suggests 48 + 16 bits.
WALL_MS_MAX = 2**48 - 1
# The counter only grows while wall_ms stands still (at most MAX_DRIFT_MS after a
# peer's clock pulled us ahead); 32 bits allow 4 billion events in that window,
# where the paper's 16 bits could run out at ~1000 writes/s.
LOGICAL_MAX = 2**32 - 1


class ClockDriftError(StorageError):
    """A peer's timestamp is implausibly far ahead of ours, or a counter ran out.

    The replication layer should reject the message that carried it (and log the
    peer): adopting it would push our clock, and everyone's after us, into the future.
    """


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """One HLC reading. Ordered by ``(wall_ms, logical)``, the order of events."""

    wall_ms: int  # physical component, milliseconds since the Unix epoch
    logical: int  # events counted while wall_ms stood still

    def __post_init__(self) -> None:
        # type() rather than isinstance(): bool is an int and would slip through.
        if type(self.wall_ms) is not int or not 0 <= self.wall_ms <= WALL_MS_MAX:
            raise ValueError(f"wall_ms must be an int in [0, {WALL_MS_MAX}], got {self.wall_ms!r}")
        if type(self.logical) is not int or not 0 <= self.logical <= LOGICAL_MAX:
            raise ValueError(f"logical must be an int in [0, {LOGICAL_MAX}], got {self.logical!r}")


ZERO = Timestamp(0, 0)


def check_not_ahead(stamp: Timestamp, wall_ms: int, *, max_drift_ms: int = MAX_DRIFT_MS) -> None:
    """Raise ClockDriftError if ``stamp`` is more than ``max_drift_ms`` ahead of ``wall_ms``.

    Every version that arrives from elsewhere (a put, name sync, a hint, a
    repair) passes this before it is stored: a version stamped at 2^48-1 ms
    would otherwise win every last-writer-wins comparison for ever, pinning
    its name (a tombstone there hides every later put and is never
    collected). Our own clock refuses to observe such a stamp for the same
    reason (``HybridClock.observe``).
    """
    drift_ms = stamp.wall_ms - wall_ms
    if drift_ms > max_drift_ms:
        raise ClockDriftError(
            f"version is {drift_ms} ms ahead of our clock (limit {max_drift_ms} ms); "
            "refused (check NTP on the writer's host)"
        )


class HybridClock:
    """A node's HLC. Not thread-safe: one owner calls it (the node's event loop)."""

    __slots__ = ("_last", "_max_drift_ms")

    def __init__(self, last: Timestamp | None = None, *, max_drift_ms: int = MAX_DRIFT_MS) -> None:
        """``last``: the newest timestamp issued before a restart, so we never reissue it."""
        if max_drift_ms < 0:
            raise ValueError(f"max_drift_ms must be >= 0, got {max_drift_ms}")
        self._last = ZERO if last is None else last
        self._max_drift_ms = max_drift_ms

    @property
    def last(self) -> Timestamp:
        """The newest timestamp this clock has issued (persist it to survive restarts)."""
        return self._last

    def now(self, wall_ms: int) -> Timestamp:
        """Timestamp a local or send event at physical time ``wall_ms``."""
        last = self._last
        if wall_ms > last.wall_ms:
            stamp = Timestamp(wall_ms, 0)
        else:
            stamp = Timestamp(last.wall_ms, _next_logical(last.logical))
        assert stamp > last
        self._last = stamp
        return stamp

    def observe(self, remote: Timestamp, wall_ms: int) -> Timestamp:
        """Timestamp the receipt of ``remote`` at physical time ``wall_ms``.

        The result is later than both ``remote`` and everything this clock issued.
        Raises ClockDriftError, leaving the clock unchanged, if ``remote`` is more than
        ``max_drift_ms`` ahead of ``wall_ms``.
        """
        drift_ms = remote.wall_ms - wall_ms
        if drift_ms > self._max_drift_ms:
            raise ClockDriftError(
                f"peer timestamp is {drift_ms} ms ahead of our clock "
                f"(limit {self._max_drift_ms} ms); check NTP on both hosts"
            )
        last = self._last
        top_ms = max(last.wall_ms, remote.wall_ms, wall_ms)
        if top_ms == last.wall_ms == remote.wall_ms:
            logical = _next_logical(max(last.logical, remote.logical))
        elif top_ms == last.wall_ms:
            logical = _next_logical(last.logical)
        elif top_ms == remote.wall_ms:
            logical = _next_logical(remote.logical)
        else:
            logical = 0
        stamp = Timestamp(top_ms, logical)
        assert stamp > last
        assert stamp > remote
        self._last = stamp
        return stamp


def _next_logical(logical: int) -> int:
    if logical >= LOGICAL_MAX:
        # Reachable only if a peer sends logical == LOGICAL_MAX, or ~4e9 events pass
        # with the wall clock stuck: either way something is wrong upstream.
        raise ClockDriftError(f"HLC logical counter exhausted at {logical}")
    return logical + 1
