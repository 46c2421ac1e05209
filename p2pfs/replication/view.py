"""The data layer's view of the cluster: the ring, who is alive, who is leaving, who is failing.

Membership says who exists and in which state; the data layer adds two facts of
its own: members handing their data off before leaving (out of the ring from
the moment they say so, so that new owners keep what they are handed), and
replicas that failed recently (skipped for ``replica_backoff_s``, because
membership needs a few seconds to suspect a frozen node). The ring is rebuilt
only when the set of ring members changes.

A small ring (up to ``SYNC_BUILD_TOKENS_MAX`` tokens, a few milliseconds) is
rebuilt in place, so the next request already sees it. A bigger one is rebuilt
by ``run_rebuilds`` in small steps between the loop's other work
(``Ring.build_in_steps``) while the old ring keeps serving: at 10,000 members a
build takes about 0.3 s of CPU, which must not stall the event loop (membership
probes would time out). A build whose member set is no longer wanted is dropped
at its next step, and the newest set is built instead.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from p2pfs.clock import Clock
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.placement import ReplicaHealth, ring_members, unavailable_members
from p2pfs.ring import TOKENS_PER_WEIGHT_DEFAULT, Ring, RingMember, member_token_count

log = logging.getLogger(__name__)

# Rings of at most this many tokens are built in place by ring(): 20,000 tokens (about 600 members
# of weight 1) build in ~10 ms. Bigger ones are built in steps by run_rebuilds.
SYNC_BUILD_TOKENS_MAX = 20_000
# How long settled_ring() waits for a rebuild in progress (seconds): a 10,000-member build takes
# ~0.3 s on an idle core; the margin is for a loaded machine and a rebuild superseded a few times.
SETTLE_TIMEOUT_S = 60.0


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
        self._ring_key: frozenset[RingMember] = frozenset()
        # The member set the ring should have; differs from _ring_key while a rebuild is pending.
        self._wanted: frozenset[RingMember] = frozenset()
        self._wanted_changed = trio.Event()
        self._installed = trio.Event()
        self._rebuilding_in_background = False  # run_rebuilds is running

    def ring(self) -> Ring:
        """The current ring, rebuilt only when the set of ring members changed.

        While a big ring is rebuilt in the background this is the previous ring.
        """
        now_s = self.clock.monotonic_s()
        for node_id in [n for n, until in self.leaving.items() if until <= now_s]:
            del self.leaving[node_id]
        chosen = frozenset(ring_members(self.members(), now_s, self.config.dead_grace_s, self.leaving))
        if chosen == self._wanted:
            return self._ring
        self._wanted = chosen
        if chosen == self._ring_key:
            return self._ring  # back to the ring we have: a pending rebuild will be dropped
        tokens = sum(member_token_count(m, TOKENS_PER_WEIGHT_DEFAULT) for m in chosen)
        if tokens <= SYNC_BUILD_TOKENS_MAX or not self._rebuilding_in_background:
            self._install(chosen, Ring(chosen))
        else:
            self._wanted_changed.set()
        return self._ring

    async def settled_ring(self) -> Ring:
        """The ring of the current member set, waiting (up to SETTLE_TIMEOUT_S) for its rebuild.

        For the few callers that must not act on the previous ring, e.g. a node handing its data
        off before it leaves needs the ring without itself.
        """
        with trio.fail_after(SETTLE_TIMEOUT_S):
            while True:
                installed = self._installed
                ring = self.ring()
                if self._wanted == self._ring_key:
                    return ring
                await installed.wait()

    async def run_rebuilds(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Build the big rings ring() asks for, a step at a time (see the module docstring)."""
        self._rebuilding_in_background = True
        try:
            task_status.started()
            while True:
                await self._wanted_changed.wait()
                self._wanted_changed = trio.Event()
                wanted = self._wanted
                if wanted == self._ring_key:
                    continue
                steps = Ring.build_in_steps(wanted)
                while wanted == self._wanted:
                    try:
                        next(steps)
                    except StopIteration as built:
                        self._install(wanted, built.value)
                        break
                    await trio.sleep(0)  # let the loop run between steps
                else:
                    log.info("ring rebuild of %d members dropped: membership changed meanwhile", len(wanted))
        finally:
            self._rebuilding_in_background = False

    def _install(self, chosen: frozenset[RingMember], ring: Ring) -> None:
        self._ring = ring
        self._ring_key = chosen
        if self._rebuilding_in_background:  # someone may wait in settled_ring (inside trio)
            self._installed.set()
            self._installed = trio.Event()
        log.info("ring rebuilt: %d members", len(chosen))

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
