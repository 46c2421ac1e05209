"""Retransmit queue for piggybacked updates (memberlist's TransmitLimitedQueue).

SWIM disseminates by piggybacking each update on about lambda * log(n)
outgoing messages (Das et al. 2002, section 4.1). The queue holds at most one
pending fact per member: a newer fact about a member replaces the older one
(memberlist's "invalidates"), so the queue never holds more entries than there
are members. Facts are handed out least-transmitted first, and newest first
among equals, so a fresh update overtakes ones that have already travelled;
a fact is dropped once it has been sent ``transmit_limit`` times.
"""

from __future__ import annotations

from .messages import MemberFact

# Smallest encoded fact (short id, no meta); when less budget than this is
# left, nothing else can fit.
FACT_BYTES_MIN = 8
# Facts examined per take() beyond those taken: bounds the work of skipping
# facts too large for the remaining budget.
SCAN_EXTRA_MAX = 32


class _Item:
    __slots__ = ("fact", "size_bytes", "transmits")

    def __init__(self, fact: MemberFact, size_bytes: int) -> None:
        self.fact = fact
        self.size_bytes = size_bytes
        self.transmits = 0


class BroadcastQueue:
    def __init__(self) -> None:
        self._items: dict[str, _Item] = {}
        # _buckets[t] holds the items sent t times, in insertion order (oldest first).
        self._buckets: list[dict[str, _Item]] = [{}]

    def __len__(self) -> int:
        return len(self._items)

    def enqueue(self, fact: MemberFact, size_bytes: int) -> None:
        """Queue ``fact`` for retransmission, replacing any pending fact about the same member."""
        old = self._items.pop(fact.node_id, None)
        if old is not None:
            del self._buckets[old.transmits][fact.node_id]
        item = _Item(fact, size_bytes)
        self._items[fact.node_id] = item
        self._buckets[0][fact.node_id] = item

    def pending(self, node_id: str) -> MemberFact | None:
        item = self._items.get(node_id)
        return None if item is None else item.fact

    def take(self, *, bytes_max: int, count_max: int, transmit_limit: int) -> list[MemberFact]:
        """Facts to piggyback on one message, within ``bytes_max`` and ``count_max``.

        Each fact handed out counts as one transmission; facts that reach
        ``transmit_limit`` (which may have fallen since they were queued, if
        the cluster shrank) leave the queue.
        """
        assert transmit_limit >= 1
        taken: list[tuple[str, _Item]] = []
        budget_bytes = bytes_max
        scanned_extra = 0
        for bucket in self._buckets:
            if not bucket:
                continue
            for node_id in reversed(bucket):
                item = bucket[node_id]
                if item.size_bytes <= budget_bytes:
                    taken.append((node_id, item))
                    budget_bytes -= item.size_bytes
                    if len(taken) >= count_max or budget_bytes < FACT_BYTES_MIN:
                        break
                else:
                    scanned_extra += 1
                    if scanned_extra > SCAN_EXTRA_MAX:
                        break
            if len(taken) >= count_max or budget_bytes < FACT_BYTES_MIN or scanned_extra > SCAN_EXTRA_MAX:
                break
        # Move them up a bucket oldest first, so that they keep their order
        # there (memberlist orders by transmits, then newest enqueued).
        for node_id, item in reversed(taken):
            del self._buckets[item.transmits][node_id]
            item.transmits += 1
            if item.transmits >= transmit_limit:
                del self._items[node_id]
                continue
            if item.transmits == len(self._buckets):
                self._buckets.append({})
            self._buckets[item.transmits][node_id] = item
        return [item.fact for _, item in taken]
