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

Placement versions (``ring.PLACEMENT_VERSIONS``): the ring is built for the
oldest version any ring member advertises in its signed record
(``placement.placement_version``), so a cluster being upgraded keeps the old
placement until its last member runs the new one, and then every node switches
as soon as it sees that member's new record. Data does not move at the switch:
each node's next anti-entropy rounds hand what it holds but no longer replicates
to the new replicas. Meanwhile a name's new replicas may not have it yet, so for
``placement_fallback_s`` after this node sees the version change,
``other_ring()`` is the ring of the version placed by before the change, where a
name read that found nothing looks next (``Coordinator.read_name``). The version last placed by is
kept in a file of the data dir, so that a node restarted into the new version
(the last one of an upgrade sees no member running the old) still knows it
changed. Chunks need no such help: a chunk read walks every member after the
replicas (``placement.read_order``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Mapping

import trio

from p2pfs.clock import Clock
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.placement import ReplicaHealth, placement_version, ring_members, unavailable_members
from p2pfs.ring import PLACEMENT_VERSIONS, Ring, RingMember, member_token_count
from p2pfs.storage.modes import FILE_MODE

log = logging.getLogger(__name__)

# Rings of at most this many tokens are built in place by ring(): 20,000 tokens (about 600 members
# of weight 1) build in ~10 ms. Bigger ones are built in steps by run_rebuilds.
SYNC_BUILD_TOKENS_MAX = 20_000
# How long settled_ring() waits for a rebuild in progress (seconds): a 10,000-member build takes
# ~0.3 s on an idle core; the margin is for a loaded machine and a rebuild superseded a few times.
SETTLE_TIMEOUT_S = 60.0
# other_ring() is not built beyond this many tokens: the ring of version 1 has 2,048 tokens per
# unit of weight, so this is about 1,000 members of weight 1 (26 MiB, ~2 s of CPU in steps), as
# big as a cluster of version 1 could run (a 1,000-member rebuild froze its nodes for 1.65 s).
OTHER_RING_TOKENS_MAX = 2_100_000

# In the data dir: the placement version the node last placed by (see the module docstring).
PLACEMENT_FILE_NAME = "placement_version"

# The ring members and the placement version a ring is built for.
RingKey = tuple[frozenset[RingMember], int]


def ring_tokens(key: RingKey) -> int:
    members, version = key
    tokens_per_weight = PLACEMENT_VERSIONS[version][0]
    return sum(member_token_count(m, tokens_per_weight) for m in members)


def read_placement_file(path: Path | None) -> int | None:
    """The placement version a node placed by when it last ran, or None if unknown."""
    if path is None:
        return None
    try:
        version = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return version if version in PLACEMENT_VERSIONS else None


def write_placement_file(path: Path | None, version: int) -> None:
    """Record the version placed by; written only when it changes (a few times in a node's life)."""
    if path is None:
        return
    partial = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)  # as the rest of the data dir
        with open(fd, "w") as f:
            f.write(f"{version}\n")
        os.replace(partial, path)
    except OSError as exc:  # the data dir is not there yet, or the disk refuses: next change
        log.warning("cannot record the placement version in %s: %s", path, exc.strerror)


class RingView:
    def __init__(
        self, node_id: str, config: ReplicationConfig, members: Callable[[], list[Member]], clock: Clock,
        placement_file: Path | None = None,
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
        self._ring_key: RingKey = (frozenset(), config.placement_version)
        # The ring there should be; differs from _ring_key while a rebuild is pending.
        self._wanted: RingKey = self._ring_key
        self._wanted_changed = trio.Event()
        self._installed = trio.Event()
        self._rebuilding_in_background = False  # run_rebuilds is running
        # The ring of the placement version placed by before the last change, for reads
        # (other_ring), and until when it is wanted (monotonic seconds): set when the version
        # placed by changes.
        self._other: Ring | None = None
        self._other_key: RingKey | None = None
        self._other_wanted: RingKey | None = None
        self._fallback_until_s = -math.inf
        self._fallback_version = config.placement_version
        self._placement_file = placement_file
        self._version_before = read_placement_file(placement_file)
        # What ring() last derived its ring key from (see _ring_key_of): the member records (a
        # copy of the list, as members() may hand out one it changes in place), the leaving
        # members, and until when (monotonic seconds) the key holds for those: the first dead
        # member's grace period to run out.
        self._seen_members: list[Member] = []
        self._seen_leaving: dict[str, float] = {}
        self._seen_until_s = -math.inf
        self._seen_key: RingKey = self._ring_key
        # The same for _states: the member records (None: none seen yet), the members down and
        # alive among them, and each record by node id (members_by_id).
        self._states_members: list[Member] | None = None
        self._down: frozenset[str] = frozenset()
        self._alive: frozenset[str] = frozenset()
        self._by_id: dict[str, Member] = {}

    def ring(self) -> Ring:
        """The current ring, rebuilt only when the set of ring members changed.

        While a big ring is rebuilt in the background this is the previous ring.
        """
        now_s = self.clock.monotonic_s()
        for node_id in [n for n, until in self.leaving.items() if until <= now_s]:
            del self.leaving[node_id]
        chosen, version = self._ring_key_of(self.members(), now_s)
        if (chosen, version) == self._wanted:
            return self._ring
        if version != self._version_before:
            self._version_changed(version, now_s)
        self._wanted = (chosen, version)
        if self._wanted == self._ring_key:
            return self._ring  # back to the ring we have: a pending rebuild will be dropped
        # No ring yet (a node's first): there is nothing to serve meanwhile, so build it now
        # whatever its size. An empty ring would place a write nowhere and count it done.
        if (ring_tokens(self._wanted) <= SYNC_BUILD_TOKENS_MAX or not self._rebuilding_in_background
                or not self._ring.members):
            self._install(self._wanted, Ring.of_version(chosen, version))
        else:
            self._wanted_changed.set()
        return self._ring

    def _ring_key_of(self, members: list[Member], now_s: float) -> RingKey:
        """The ring members and placement version of ``members`` at ``now_s``.

        Every request asks (through ring()), and deriving them takes ~9 ms at 10,000 members, so
        the last answer is kept while nothing it depends on changed: the same member records
        (membership replaces a record when anything in it changes; the records are frozen, so an
        unchanged one is the same object and the list comparison is a pointer comparison per
        member), the same leaving members, and no dead member's grace period run out since.
        """
        if members == self._seen_members and self.leaving == self._seen_leaving and now_s < self._seen_until_s:
            return self._seen_key
        grace_s = self.config.dead_grace_s
        chosen = frozenset(ring_members(members, now_s, grace_s, self.leaving))
        version = placement_version(members, now_s, grace_s, self.leaving, self.config.placement_version)
        expiries = [m.state_since_s + grace_s for m in members
                    if m.state is MemberState.DEAD and now_s < m.state_since_s + grace_s]
        self._seen_members, self._seen_leaving = list(members), dict(self.leaving)
        self._seen_until_s = min(expiries, default=math.inf)
        self._seen_key = (chosen, version)
        return self._seen_key

    def _version_changed(self, version: int, now_s: float) -> None:
        if self._version_before is not None:
            log.info("placement version %d -> %d: names are also looked up under %d for %.0f s",
                     self._version_before, version, self._version_before, self.config.placement_fallback_s)
            self._fallback_until_s = now_s + self.config.placement_fallback_s
            self._fallback_version = self._version_before
        self._version_before = version
        write_placement_file(self._placement_file, version)

    def other_ring(self) -> Ring | None:
        """The ring of the current members under the placement version placed by before the last
        change, while a name may still sit at its replicas there (see the module docstring); else
        None.

        None too while it is being built, and beyond ``OTHER_RING_TOKENS_MAX``.
        """
        self.ring()
        if self.clock.monotonic_s() >= self._fallback_until_s:
            self._other = self._other_key = self._other_wanted = None  # its memory is not needed
            return None
        chosen, version = self._ring_key
        if version == self._fallback_version:  # the new ring is still being built
            return None
        wanted = (chosen, self._fallback_version)
        if wanted != self._other_key and wanted != self._other_wanted:
            tokens = ring_tokens(wanted)
            if tokens > OTHER_RING_TOKENS_MAX:
                return None
            self._other_wanted = wanted
            if tokens <= SYNC_BUILD_TOKENS_MAX or not self._rebuilding_in_background:
                self._other, self._other_key = Ring.of_version(*wanted), wanted
            else:
                self._wanted_changed.set()
        return self._other

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
                if self._wanted != self._ring_key:
                    ring = await self._build(lambda: self._wanted)
                    if ring is not None:
                        self._install(self._wanted, ring)
                # Then the other placement's ring, if reads want it; dropped for a new ring in use.
                if self._other_wanted is not None and self._other_wanted != self._other_key:
                    other = await self._build(
                        lambda: self._other_wanted if self._wanted == self._ring_key else None
                    )
                    if other is not None:
                        self._other, self._other_key = other, self._other_wanted
        finally:
            self._rebuilding_in_background = False

    async def _build(self, wanted: Callable[[], RingKey | None]) -> Ring | None:
        """Build the ring ``wanted()`` names, a step at a time; None if it stops being wanted."""
        key = wanted()
        assert key is not None
        members, version = key
        steps = Ring.build_in_steps(members, *PLACEMENT_VERSIONS[version])
        while key == wanted():
            try:
                next(steps)
            except StopIteration as built:
                return built.value
            await trio.sleep(0)  # let the loop run between steps
        log.info("ring rebuild of %d members dropped: membership changed meanwhile", len(members))
        self._wanted_changed.set()  # whatever is wanted now
        return None

    def _install(self, key: RingKey, ring: Ring) -> None:
        self._ring = ring
        self._ring_key = key
        if self._rebuilding_in_background:  # someone may wait in settled_ring (inside trio)
            self._installed.set()
            self._installed = trio.Event()
        log.info("ring rebuilt: %d members, placement version %d", len(key[0]), key[1])

    def mark_leaving(self, node_id: str, for_s: float) -> None:
        self.leaving[node_id] = self.clock.monotonic_s() + for_s

    def unavailable(self) -> set[str]:
        """Members not to write to directly: not alive, or failing recently (never this node)."""
        down = set(self._states()[0])
        down |= self.health.backing_off(self.clock.monotonic_s())
        down.discard(self.node_id)
        return down

    def failed(self, node_id: str) -> None:
        self.health.failed(node_id, self.clock.monotonic_s())

    def succeeded(self, node_id: str) -> None:
        self.health.succeeded(node_id)

    def alive(self) -> set[str]:
        """Live members, this node included."""
        alive = set(self._states()[1])
        alive.add(self.node_id)
        return alive

    def members_by_id(self) -> Mapping[str, Member]:
        """Every member's current record by node id (not to be changed by the caller).

        Every request to a replica looks up its address, and every chunk write its replicas'
        protocol versions: walking every record for them took as long as all of placement's
        other answers together at 10,000 members.
        """
        self._states()
        return self._by_id

    def _states(self) -> tuple[frozenset[str], frozenset[str]]:
        """The members not alive and the members alive, derived again only when a member record
        changed (as in _ring_key_of): every chunk read asks for both, ~3 ms at 10,000 members.
        Also each record by node id, for members_by_id()."""
        members = self.members()
        if members != self._states_members:
            self._states_members = list(members)
            self._down = frozenset(unavailable_members(members))
            self._alive = frozenset(m.node_id for m in members if m.state is MemberState.ALIVE)
            self._by_id = {m.node_id: m for m in members}
        return self._down, self._alive

    def live_nodes(self) -> list[str]:
        """Live members in membership's order, this node last if membership does not list it."""
        live = [m.node_id for m in self.members() if m.state is MemberState.ALIVE]
        return live if self.node_id in live else [*live, self.node_id]

    def everyone(self, ring: Ring) -> list[str]:
        """Nodes that may hold data: the ring's members, and live ones out of it (leaving)."""
        return sorted(set(ring.members) | self.alive())
