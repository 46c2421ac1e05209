"""The data layer's view of the cluster: the ring, who is alive, who is leaving, who is failing.

Membership says who exists and in which state; the data layer adds two facts of
its own: members handing their data off before leaving (out of the ring from
the moment they say so, so that new owners keep what they are handed), and
replicas that failed recently (skipped for ``replica_backoff_s``, because
membership needs a few seconds to suspect a frozen node). The ring is rebuilt
only when the set of ring members changes.
"""

from __future__ import annotations

import logging
from typing import Callable

from p2pfs.clock import Clock
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.placement import ReplicaHealth, ring_members, unavailable_members
from p2pfs.ring import Ring

log = logging.getLogger(__name__)


class RingView:
    def __init__(
        self, node_id: str, config: ReplicationConfig, members: Callable[[], list[Member]], clock: Clock
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.members = members
        self.clock = clock
        self.health = ReplicaHealth(config.replica_backoff_s)
        # Members handing off to leave (this one too, when it leaves), and until when
        # (monotonic seconds) they stay out of the ring: see handoff.leave.
        self.leaving: dict[str, float] = {}
        self._ring: Ring = Ring([])
        self._ring_key: frozenset = frozenset()

    def ring(self) -> Ring:
        """The current ring, rebuilt only when the set of ring members changed."""
        now_s = self.clock.monotonic_s()
        for node_id in [n for n, until in self.leaving.items() if until <= now_s]:
            del self.leaving[node_id]
        chosen = frozenset(ring_members(self.members(), now_s, self.config.dead_grace_s, self.leaving))
        if chosen != self._ring_key:
            self._ring = Ring(chosen)
            self._ring_key = chosen
            log.info("ring rebuilt: %d members", len(chosen))
        return self._ring

    def mark_leaving(self, node_id: str, for_s: float) -> None:
        self.leaving[node_id] = self.clock.monotonic_s() + for_s

    def unavailable(self) -> set[str]:
        """Members not to write to directly: not alive, or failing recently (never this node)."""
        down = unavailable_members(self.members()) | self.health.backing_off(self.clock.monotonic_s())
        down.discard(self.node_id)
        return down

    def failed(self, node_id: str) -> None:
        self.health.failed(node_id, self.clock.monotonic_s())

    def succeeded(self, node_id: str) -> None:
        self.health.succeeded(node_id)

    def alive(self) -> set[str]:
        """Live members, this node included."""
        return {m.node_id for m in self.members() if m.state is MemberState.ALIVE} | {self.node_id}

    def live_nodes(self) -> list[str]:
        """Live members in membership's order, this node last if membership does not list it."""
        live = [m.node_id for m in self.members() if m.state is MemberState.ALIVE]
        return live if self.node_id in live else [*live, self.node_id]

    def everyone(self, ring: Ring) -> list[str]:
        """Nodes that may hold data: the ring's members, and live ones out of it (leaving)."""
        return sorted(set(ring.members) | self.alive())
