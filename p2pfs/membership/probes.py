"""The probe this node has in flight, and the indirect probes it runs for others. Pure.

SWIM keeps at most one probe in flight per node; a PingReq asks us to ping a
target on the requester's behalf and forward its ack, or to nack when our own
deadline passes (Lifeguard), so that the requester can tell "the target is
silent" from "I cannot hear my relays".
"""

from __future__ import annotations

import dataclasses
import heapq
import math

from p2pfs.address import Address

# Indirect probes this node relays at once; further PingReqs are ignored (the
# requester then misses our nack, which is the right signal: we are busy).
RELAY_PROBES_MAX = 256


class Probe:
    """The probe in flight (at most one per node, as in SWIM)."""

    __slots__ = ("target_id", "seq", "timeout_s", "end_s", "indirect_sent", "nacks_expected", "nacks")

    def __init__(self, target_id: str, seq: int, timeout_s: float, end_s: float) -> None:
        self.target_id = target_id
        self.seq = seq
        self.timeout_s = timeout_s  # direct ack deadline; then ping-req
        self.end_s = end_s          # end of the probe period; then suspect
        self.indirect_sent = False
        self.nacks_expected = 0
        self.nacks = 0

    def next_deadline_s(self) -> float:
        return self.end_s if self.indirect_sent else self.timeout_s


@dataclasses.dataclass(frozen=True, slots=True)
class Relay:
    """A ping we send for ``requester`` (node ``requester_id``), known to it by ``requester_seq``; nack at ``deadline_s``."""

    requester: Address
    requester_seq: int
    deadline_s: float
    requester_id: str | None = None


class Relays:
    """The indirect probes in flight for others, by the sequence number of our own ping."""

    def __init__(self) -> None:
        self._by_seq: dict[int, Relay] = {}
        self._heap: list[tuple[float, int]] = []

    @property
    def full(self) -> bool:
        return len(self._by_seq) >= RELAY_PROBES_MAX

    def add(self, seq: int, relay: Relay) -> None:
        assert not self.full
        self._by_seq[seq] = relay
        heapq.heappush(self._heap, (relay.deadline_s, seq))

    def pop(self, seq: int) -> Relay | None:
        """The relay our ping ``seq`` belongs to, if it is still waiting (an ack arrived)."""
        return self._by_seq.pop(seq, None)

    def expire(self, now_s: float) -> list[Relay]:
        """The relays whose deadline passed without an ack: each owes its requester a nack."""
        expired = []
        heap = self._heap
        while heap and heap[0][0] <= now_s:
            _, seq = heapq.heappop(heap)
            relay = self._by_seq.pop(seq, None)
            if relay is not None:
                expired.append(relay)
        return expired

    def next_deadline_s(self) -> float:
        return self._heap[0][0] if self._heap else math.inf
