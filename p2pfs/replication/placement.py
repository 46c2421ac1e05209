"""Pure replication decisions: who is in the ring, where a write goes, which read wins.

No I/O, no clock reads: callers pass ``now_s``. The trio service carries these
decisions out; the simulation and unit tests drive them directly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Mapping, Sequence

from p2pfs.membership import Member, MemberState
from p2pfs.ring import Ring, RingMember
from p2pfs.storage import NameEntry
from p2pfs.wire import placement_version_of

# Capacity that counts as ring weight 1. A fixed reference (not the cluster's
# mean) keeps a member's weight, and so its tokens, from changing when others
# join or leave; the clamp keeps tiny and huge disks within the ring's token cap.
WEIGHT_REFERENCE_BYTES = 10 * 1024**3
WEIGHT_MIN = 1 / 16
WEIGHT_MAX = 16.0

NAME_KEY_PREFIX = b"name\x00"

# RingMembers kept for reuse by ring_members, which runs on every ring lookup of the data layer:
# building and checking 10,000 of them each time cost ~30 ms of the event loop. Bounded so that a
# cluster's churn over months cannot grow it; 65,536 covers the largest cluster we plan for.
RING_MEMBER_CACHE_ENTRIES_MAX = 65_536


def name_key(name: str) -> bytes:
    """A name's key on the ring (kept apart from chunk ids, which are raw 32-byte digests)."""
    return NAME_KEY_PREFIX + name.encode("utf-8")


def ring_weight(capacity_bytes: int) -> float:
    return min(WEIGHT_MAX, max(WEIGHT_MIN, capacity_bytes / WEIGHT_REFERENCE_BYTES))


def ring_members(
    members: Iterable[Member], now_s: float, dead_grace_s: float, leaving: Iterable[str] = ()
) -> list[RingMember]:
    """The members that take part in placement.

    Alive and suspect members are in. A dead member stays in for ``dead_grace_s``
    after it was declared dead (temporary failure is not departure: writes meant
    for it go to stand-ins with hints). A member that left, or announced that it
    is leaving (it is handing its data to the owners of the ring without it), is out.
    """
    leaving = set(leaving)
    return [
        _ring_member(member.node_id, member.zone, member.capacity_bytes)
        for member in members
        if _in_ring(member, now_s, dead_grace_s, leaving)
    ]


def placement_version(
    members: Iterable[Member], now_s: float, dead_grace_s: float, leaving: Iterable[str], own_version: int
) -> int:
    """The placement version to place by: the oldest that this node or any ring member runs.

    Read from each member's signed record (``wire.placement_version_of``); a record from before
    placement versions says 1. Taken over the same members as ``ring_members``, so every node that
    sees the same member set places by the same version, and a cluster moves to a new placement
    only once none of its ring members, a dead one within its grace period included (it may come
    back as it was), still runs an older one.
    """
    leaving = set(leaving)
    version = own_version
    for member in members:
        if _in_ring(member, now_s, dead_grace_s, leaving):
            version = min(version, placement_version_of(member.protocol_version))
    return version


def _in_ring(member: Member, now_s: float, dead_grace_s: float, leaving: set[str]) -> bool:
    if member.state is MemberState.LEFT or member.node_id in leaving:
        return False
    return member.state is not MemberState.DEAD or now_s - member.state_since_s < dead_grace_s


@functools.lru_cache(maxsize=RING_MEMBER_CACHE_ENTRIES_MAX)
def _ring_member(node_id: str, zone: str, capacity_bytes: int) -> RingMember:
    return RingMember(node_id, zone, ring_weight(capacity_bytes))


def unavailable_members(members: Iterable[Member]) -> set[str]:
    """Members not to send writes to directly: suspected, dead or gone."""
    return {m.node_id for m in members if m.state is not MemberState.ALIVE}


class ReplicaHealth:
    """Recent failures per replica: a replica that failed is skipped for ``backoff_s``.

    Membership needs a few seconds to suspect a frozen node; meanwhile this
    keeps every chunk of a put from waiting out the same timeout.
    """

    def __init__(self, backoff_s: float) -> None:
        self._backoff_s = backoff_s
        self._failed_until: dict[str, float] = {}

    def failed(self, node_id: str, now_s: float) -> None:
        self._failed_until[node_id] = now_s + self._backoff_s

    def succeeded(self, node_id: str) -> None:
        self._failed_until.pop(node_id, None)

    def backing_off(self, now_s: float) -> set[str]:
        expired = [n for n, until in self._failed_until.items() if until <= now_s]
        for node_id in expired:
            del self._failed_until[node_id]
        return set(self._failed_until)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One replica write: the node written to, and whom it stands in for ("" if nobody)."""

    node_id: str
    hint_for: str = ""


def write_plan(
    ring: Ring, key: bytes, rf: int, unavailable: set[str]
) -> tuple[list[Target], list[str]]:
    """Where a write of ``key`` goes first, and the stand-ins left for failures.

    Each available preferred replica is written directly; each unavailable one
    is replaced by the next available fallback, with a hint naming it (Dynamo's
    sloppy quorum). Returns the targets and the unused fallbacks in order.
    """
    preferred = ring.preference_list(key, rf)
    spare = [n for n in ring.fallback_list(key, rf) if n not in unavailable]
    targets = []
    for node_id in preferred:
        if node_id not in unavailable:
            targets.append(Target(node_id))
        elif spare:
            targets.append(Target(spare.pop(0), hint_for=node_id))
    return targets, spare


def read_order(
    ring: Ring, key: bytes, rf: int, unavailable: set[str], *, holder: str | None, rotate: int,
    alive: set[str] = frozenset(),
) -> list[str]:
    """Replicas to fetch ``key`` from, best first.

    ``holder`` (this node, if it holds the chunk) comes first: no network hop.
    Then the available preferred replicas, rotated by ``rotate`` so that the
    chunks of one file are read from all replicas in turn; then stand-ins that
    may hold it under a hint; unavailable replicas last, as a final try.
    """
    preferred = ring.preference_list(key, rf)
    available = [n for n in preferred if n not in unavailable]
    if available:
        shift = rotate % len(available)
        available = available[shift:] + available[:shift]
    fallbacks = ring.fallback_list(key, rf)
    order = [holder] if holder else []
    order += available
    order += [n for n in fallbacks if n not in unavailable]
    order += [n for n in preferred if n in unavailable]
    # Then ``alive`` members in back-off (unavailable though alive): one restarted a moment ago may
    # hold the only copy, e.g. where an older placement put it until anti-entropy moves it.
    order += [n for n in fallbacks if n in unavailable and n in alive]
    seen: set[str] = set()
    return [n for n in order if not (n in seen or seen.add(n))]


def newest(entries: Iterable[NameEntry | None]) -> NameEntry | None:
    """The last writer's entry among replicas' answers (None where a replica had none)."""
    best: NameEntry | None = None
    for entry in entries:
        if entry is not None and (best is None or entry.supersedes(best)):
            best = entry
    return best


def stale_replicas(answers: Mapping[str, NameEntry | None], winner: NameEntry) -> list[str]:
    """Replicas whose answer is older than the winner: they get read repair."""
    return sorted(
        node_id for node_id, entry in answers.items() if entry is None or winner.supersedes(entry)
    )


def quorum_error(what: str, acks: int, needed: int, errors: Sequence[str]) -> str:
    """The message a client sees when a write misses its quorum."""
    detail = "; ".join(errors) if errors else "no replica could be reached"
    return f"{what}: {acks} of {needed} required replicas acknowledged ({detail})"
