"""What one node lends all its peers together: bytes of buffered input, and requests per peer.

Credit windows (``flow.py``) bound what one stream and one connection may make
us buffer, but a node has up to ``INBOUND_CONNECTIONS_MAX`` connections, each
with up to ``INCOMING_REQUESTS_PER_CONNECTION_MAX`` requests: the product of the
windows is far more memory than a machine has. So every byte of input is also
taken from one budget per node (``NetConfig.memory_budget_bytes``) and given
back when it is no longer held:

* a connection's reader takes what a read may bring in *before* the read, and
  keeps, of that, the part its frame decoder still holds;
* a complete frame's bytes pass to their holder: a body buffer (given back as
  its consumer takes each piece, or when the stream closes), or the handler of
  a request (given back when the handler ends); anything else is given back at
  once.

When the budget is spent, readers wait before reading: TCP's own window then
pushes back on the senders, and nothing grows. Waiting readers are served in
the order they asked (first come, first served), so a large request cannot be
starved by a stream of small ones. A reader that waits too long with half a
frame is closed by its frame read timeout, which frees what it held.

The request count is per peer (its certificate's id) over all its connections,
so opening more connections does not get a peer more requests served at once.

This is driver state shared by a node's connections, so it uses trio (to wake
waiting readers); the counting itself is plain arithmetic.
"""

from __future__ import annotations

import collections
import logging

import trio

from p2pfs.observe import Collapsed, PeerCollapsed

from .config import (
    HEAP_TRIM_HIGH_FRACTION,
    HEAP_TRIM_INTERVAL_S,
    HEAP_TRIM_LOW_FRACTION,
    HEAP_TRIM_SETTLE_S,
    LOG_COLLAPSE_INTERVAL_S,
    LOGGED_PEERS_MAX,
)


class MemoryBudget:
    """Bytes a node may buffer; ``take`` waits for room, ``give_back`` makes room."""

    def __init__(self, size_bytes: int) -> None:
        assert size_bytes > 0, size_bytes
        self.size_bytes = size_bytes
        self.used_bytes = 0
        self.used_bytes_peak = 0
        # Readers waiting for room, in arrival order: (bytes wanted, woken when granted).
        self._waiting: collections.deque[tuple[int, trio.Event]] = collections.deque()
        # For giving the freed heap back (``heap_trim_due``): the largest use since the last trim,
        # when the use was last seen to fall low (None while it is not low), and the last trim.
        self._used_bytes_peak_since_trim = 0
        self._low_since_s: float | None = None
        self._trimmed_at_s: float | None = None

    @property
    def available_bytes(self) -> int:
        return self.size_bytes - self.used_bytes

    async def take(self, size_bytes: int) -> None:
        """Take ``size_bytes``, waiting (first come, first served) until there is room.

        The caller bounds the wait (the reader's deadline); cancelled while
        waiting, nothing is taken.
        """
        assert 0 < size_bytes <= self.size_bytes, size_bytes
        if not self._waiting and size_bytes <= self.available_bytes:
            self._add(size_bytes)
            return
        granted = trio.Event()
        entry = (size_bytes, granted)
        self._waiting.append(entry)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():
                self.give_back(size_bytes)  # granted just as we were cancelled
            else:
                self._waiting.remove(entry)
                self._grant_waiting()  # a large request gone may let smaller ones through
            raise

    def give_back(self, size_bytes: int) -> None:
        assert 0 <= size_bytes <= self.used_bytes, (size_bytes, self.used_bytes)
        self.used_bytes -= size_bytes
        self._grant_waiting()

    def resize(self, size_bytes: int) -> None:
        """A new budget (a reload): more room lets waiting readers in at once; less makes
        new readers wait until what is buffered beyond it has been given back."""
        assert size_bytes > 0, size_bytes
        self.size_bytes = size_bytes
        self._grant_waiting()

    def heap_trim_due(self, now_s: float) -> bool:
        """Whether the C heap should give its free memory back now (``heap.give_back_free_heap``).

        Yes once the use has risen to ``HEAP_TRIM_HIGH_FRACTION`` of the budget since the last
        trim and has stayed below ``HEAP_TRIM_LOW_FRACTION`` for ``HEAP_TRIM_SETTLE_S``, at most
        once per ``HEAP_TRIM_INTERVAL_S`` (net/config.py says why). Called every
        ``HEAP_TRIM_CHECK_INTERVAL_S``; ``now_s`` is monotonic seconds.
        """
        if self.used_bytes > self.size_bytes * HEAP_TRIM_LOW_FRACTION:
            self._low_since_s = None
            return False
        if self._low_since_s is None:
            self._low_since_s = now_s
        return (
            self._used_bytes_peak_since_trim >= self.size_bytes * HEAP_TRIM_HIGH_FRACTION
            and now_s - self._low_since_s >= HEAP_TRIM_SETTLE_S
            and (self._trimmed_at_s is None or now_s - self._trimmed_at_s >= HEAP_TRIM_INTERVAL_S)
        )

    def heap_trimmed(self, now_s: float) -> None:
        """The heap was trimmed: the next trim waits for the use to rise high again."""
        self._trimmed_at_s = now_s
        self._used_bytes_peak_since_trim = self.used_bytes

    def _add(self, size_bytes: int) -> None:
        self.used_bytes += size_bytes
        self.used_bytes_peak = max(self.used_bytes_peak, self.used_bytes)
        self._used_bytes_peak_since_trim = max(self._used_bytes_peak_since_trim, self.used_bytes)

    def _grant_waiting(self) -> None:
        while self._waiting and self._waiting[0][0] <= self.available_bytes:
            size_bytes, granted = self._waiting.popleft()
            self._add(size_bytes)
            granted.set()


class PeerRequests:
    """Requests being served per peer id, over all its connections, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        assert limit > 0, limit
        self.limit = limit
        self._open: dict[str, int] = {}

    def try_open(self, peer_id: str) -> bool:
        count = self._open.get(peer_id, 0)
        if count >= self.limit:
            return False
        self._open[peer_id] = count + 1
        return True

    def close(self, peer_id: str) -> None:
        count = self._open[peer_id] - 1
        assert count >= 0
        if count:
            self._open[peer_id] = count
        else:
            del self._open[peer_id]  # no entry per peer that ever connected: the dict stays bounded

    def open_count(self, peer_id: str) -> int:
        return self._open.get(peer_id, 0)


class NodeLimits:
    """What one node's connections share: the memory budget, the requests per peer, and the
    log of peers' faults (collapsed per peer over all its connections, not per connection)."""

    def __init__(self, memory_bytes: int, requests_per_peer_max: int) -> None:
        self.memory = MemoryBudget(memory_bytes)
        self.requests = PeerRequests(requests_per_peer_max)
        log = logging.getLogger("p2pfs.net.connection")
        self.peer_faults = PeerCollapsed(log, LOG_COLLAPSE_INTERVAL_S, LOGGED_PEERS_MAX)
        # Connections closed because the budget stayed spent: the node's condition, not a peer's fault.
        self.budget_spent = Collapsed(log, logging.WARNING, LOG_COLLAPSE_INTERVAL_S)
