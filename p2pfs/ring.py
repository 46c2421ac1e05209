"""Consistent-hash ring: where each key lives, and what moves when membership changes.

Consistent hashing (Karger et al., "Consistent Hashing and Random Trees", STOC 1997) puts keys
and nodes on one circle of hash positions; a key belongs to the nodes met first walking clockwise
from it. Adding or removing a node then moves only the keys next to that node's positions, about
K/N of them, instead of nearly all keys as ``hash(key) % N`` would. Like Dynamo (DeCandia et al.,
SOSP 2007, §4.2) each member gets many positions on the circle ("virtual nodes", here called
tokens) so that load evens out, and a member's token count is proportional to its capacity weight.

Tokens come from the node id alone: token ``i`` of a member is the ``i``-th 64-bit word of
SHAKE-128(domain || node_id). So every node that sees the same member set builds the same ring,
with no coordination and nothing extra to gossip, and raising a member's weight only adds tokens
(the stream is prefix-stable), which moves only the keys the added tokens take.

Why ``TOKENS_PER_WEIGHT_DEFAULT = 2048``. The share of a member with T random tokens is a sum of T
gap lengths, so its relative standard deviation is 1/sqrt(T) whatever the member count. Tokens
must depend on the node id alone (so that a join or leave moves only that member's keys); then, to
any one member, the union of everyone else's tokens looks random, and no cleverer placement of its
own tokens shrinks the gaps in front of them. That leaves the token count. We want max/mean load
<= 1.10 over 100 equal members. Measured over 200 random sets of 100 node ids
(docs/BENCHMARKS.md): T = 1024 has a median max/mean of 1.078 and exceeds 1.10 in 9% of sets,
T = 1536 in 0.5%; T = 2048 has a median of 1.055, a worst of 1.082, and never exceeded 1.10. The
cost is linear in tokens and paid only when membership changes: 100 members (204,800 tokens)
build in about 0.1 s and take 2.3 MiB, 1,000 members in about 1.7 s and 23 MiB; lookups stay
O(log tokens), about 4 us. Dynamo's equal fixed partitions (strategy 3) and Cassandra's token
allocator balance better with fewer tokens, but both hand tokens out with knowledge of the
current ring, which needs agreement or history we do not have.

Preference lists follow Dynamo §4.3: the first ``rf`` distinct members clockwise from the key. When
members carry zones (racks, hosts, availability zones), replicas spread over zones the way
Cassandra's NetworkTopologyStrategy spreads over racks: walking clockwise, the first member met in
each zone is taken, until ``rf`` zones are covered; if there are fewer zones than ``rf``, one member
of every zone is taken and the rest are the next members clockwise. Members with ``zone == ""`` form
one unnamed zone, so a ring without zones is plain clockwise order. Beyond the preference list,
``fallback_list`` gives the next members clockwise: the order in which a coordinator picks stand-ins
for hinted handoff (Dynamo §4.6, sloppy quorum).

The preference list of a key depends only on which inter-token range its hash falls in, so it is
constant on each range ``(token[i-1], token[i]]``.

Contract with the caller: the ring does not know who is alive. Which members take part is the
caller's choice, and the design brief's rule is: a node that is merely dead (suspected or confirmed,
within its grace period) stays in the ring, and writes meant for it go to the fallback members with
a hint; a node that left gracefully, or whose grace period expired, leaves the ring, and
anti-entropy (``replication.repair``) moves data to the new owners. Skipping a dead member for one
request is the caller's job (walk the preference list, then the fallback list), not a new ring.

Ranges are ``(start, end]`` on the 2**64 circle: ``start`` exclusive, ``end`` inclusive. A
range with ``start >= end`` wraps through zero, and ``start == end`` is the whole circle (the
convention of Cassandra's ``Range``); use ``in_range`` to test membership.

Pure: no I/O, no clock, no randomness beyond the hash functions.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

HASH_BITS = 64
HASH_SPACE_SIZE = 1 << HASH_BITS  # positions on the circle: 0 .. HASH_SPACE_SIZE - 1

# Tokens per unit of capacity weight. 2048 keeps max/mean load <= 1.10 over 100 equal members
# (relative std 1/sqrt(2048) = 2.2%); 1024 does not reliably. See the module docstring.
TOKENS_PER_WEIGHT_DEFAULT = 2048

# Cap on one member's tokens (weight * tokens_per_weight): 16x the default, i.e. a weight of 16 at
# the default. Weights are relative; a bigger figure only costs memory (8 + 4 bytes a token) and
# build time without making placement better.
TOKENS_PER_MEMBER_MAX = 16 * TOKENS_PER_WEIGHT_DEFAULT

_TOKEN_DOMAIN = b"p2pfs/ring/token\x00"  # keeps token streams apart from any other use of SHAKE-128
_KEY_PERSON = b"p2pfs/ring/key"  # BLAKE2b personalisation (<= 16 bytes) for key positions
_TOKEN_BYTES = HASH_BITS // 8
_RANK_BITS = 32  # a member's rank (index in sorted node ids) is stored in array("I")
_RANK_MASK = (1 << _RANK_BITS) - 1


@dataclass(frozen=True, slots=True)
class RingMember:
    """One member of the ring as the caller sees it.

    node_id: the node's id, a hex string (SHA-256 of its public key); tokens derive from it.
    zone: failure domain; "" means none given, and all such members form one unnamed zone.
    weight: relative capacity (> 0); the member gets round(weight * tokens_per_weight) tokens,
        at least one.
    """

    node_id: str
    zone: str = ""
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"node_id must be a non-empty string, got {self.node_id!r}")
        if not isinstance(self.zone, str):
            raise ValueError(f"zone must be a string, got {self.zone!r}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight must be finite and > 0, got {self.weight!r}")


def key_hash(key: bytes) -> int:
    """Position of ``key`` on the circle: BLAKE2b-64 of the key, big-endian.

    Chunk ids are already uniform, but names are not, and hashing again costs under a microsecond
    and makes placement uniform for any key.
    """
    digest = hashlib.blake2b(key, digest_size=_TOKEN_BYTES, person=_KEY_PERSON).digest()
    return int.from_bytes(digest, "big")


def member_tokens(node_id: str, count: int) -> tuple[int, ...]:
    """The first ``count`` tokens of ``node_id``: a prefix-stable, deterministic stream."""
    assert count >= 1
    stream = hashlib.shake_128(_TOKEN_DOMAIN + node_id.encode("utf-8")).digest(count * _TOKEN_BYTES)
    return struct.unpack(f">{count}Q", stream)


def in_range(position: int, start: int, end: int) -> bool:
    """Whether ``position`` lies in ``(start, end]`` on the circle (wrapping if start >= end)."""
    assert 0 <= position < HASH_SPACE_SIZE
    assert 0 <= start < HASH_SPACE_SIZE
    assert 0 <= end < HASH_SPACE_SIZE
    if start < end:
        return start < position <= end
    return position > start or position <= end


def range_size(start: int, end: int) -> int:
    """Number of positions in ``(start, end]``; ``start == end`` is the whole circle."""
    assert 0 <= start < HASH_SPACE_SIZE
    assert 0 <= end < HASH_SPACE_SIZE
    return (end - start) % HASH_SPACE_SIZE or HASH_SPACE_SIZE


class Ring:
    """An immutable consistent-hash ring over a set of members.

    Build a new ``Ring`` when membership changes: O(tokens log members) time, 12 bytes a token.
    Lookups are a binary search over the sorted tokens plus a short clockwise walk.
    """

    __slots__ = (
        "members",
        "tokens_per_weight",
        "_node_ids",
        "_zone_of",
        "_zone_count",
        "_tokens",
        "_owners",
        "_ownership",
    )

    def __init__(
        self,
        members: Iterable[RingMember],
        tokens_per_weight: int = TOKENS_PER_WEIGHT_DEFAULT,
    ) -> None:
        if not (isinstance(tokens_per_weight, int) and tokens_per_weight >= 1):
            raise ValueError(f"tokens_per_weight must be an int >= 1, got {tokens_per_weight!r}")
        by_id: dict[str, RingMember] = {}
        for member in members:
            seen = by_id.setdefault(member.node_id, member)
            if seen != member:
                raise ValueError(f"conflicting members for {member.node_id}: {seen}, {member}")
        node_ids = sorted(by_id)
        if len(node_ids) > _RANK_MASK + 1:
            raise ValueError(f"{len(node_ids)} members, over the {_RANK_MASK + 1} a ring can rank")
        zones = sorted({by_id[n].zone for n in node_ids})
        zone_index = {zone: i for i, zone in enumerate(zones)}

        # Sort (token, rank) pairs packed into one int, so ties (probability ~ tokens^2 / 2^65)
        # go by node id and the order never depends on the order members were given in. Each
        # member's tokens are sorted first: Timsort then merges those runs instead of sorting
        # from scratch. Rank r is node_ids[r].
        packed: list[int] = []
        for rank, node_id in enumerate(node_ids):
            count = max(1, round(by_id[node_id].weight * tokens_per_weight))
            if count > TOKENS_PER_MEMBER_MAX:
                raise ValueError(
                    f"{node_id} would get {count} tokens, over TOKENS_PER_MEMBER_MAX "
                    f"({TOKENS_PER_MEMBER_MAX}); scale the weights down"
                )
            packed.extend(sorted([(t << _RANK_BITS) | rank for t in member_tokens(node_id, count)]))
        packed.sort()

        self.members: Mapping[str, RingMember] = MappingProxyType({n: by_id[n] for n in node_ids})
        self.tokens_per_weight = tokens_per_weight
        self._node_ids = tuple(node_ids)
        self._zone_of = tuple(zone_index[by_id[n].zone] for n in node_ids)
        self._zone_count = len(zones)
        self._tokens = array("Q", [p >> _RANK_BITS for p in packed])
        self._owners = array("I", [p & _RANK_MASK for p in packed])
        self._ownership: dict[int, dict[str, float]] = {}  # by rf, computed on first use
        assert len(self._tokens) == len(self._owners)
        assert len(self._tokens) >= len(self._node_ids)

    def __len__(self) -> int:
        return len(self._node_ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.members

    def __repr__(self) -> str:
        return f"Ring(members={len(self)}, tokens={len(self._tokens)}, zones={self._zone_count})"

    @property
    def token_count(self) -> int:
        return len(self._tokens)

    def preference_list(self, key: bytes, rf: int) -> list[str]:
        """The ``min(rf, len(self))`` members that replicate ``key``, coordinator first."""
        return self.preference_list_at(key_hash(key), rf)

    def preference_list_at(self, position: int, rf: int) -> list[str]:
        """``preference_list`` for whatever key hashes to ``position``.

        Equal for every position in one inter-token range.
        """
        assert 0 <= position < HASH_SPACE_SIZE
        _check_rf(rf)
        if not self._node_ids:
            return []
        picked = self._select(self._walk_ranks(self._index(position)), rf)
        return [self._node_ids[r] for r in picked]

    def walk(self, key: bytes) -> Iterator[str]:
        """Every member once, in clockwise order from ``key``, ignoring zones.

        Without zones the first ``rf`` are ``preference_list(key, rf)``; with zones they may not
        be, because zone spreading skips members. Use ``fallback_list`` for the members beyond
        the preference list.
        """
        if not self._node_ids:
            return
        for rank in self._walk_ranks(self._index(key_hash(key))):
            yield self._node_ids[rank]

    def fallback_list(self, key: bytes, rf: int) -> list[str]:
        """The members not in ``preference_list(key, rf)``, in clockwise order from ``key``.

        A coordinator that cannot reach a preferred replica writes to the first reachable of
        these with a hint naming the intended owner (Dynamo §4.6).
        """
        preferred = set(self.preference_list(key, rf))
        return [n for n in self.walk(key) if n not in preferred]

    def ownership_fraction(self, rf: int) -> dict[str, float]:
        """Each member's fraction of the circle (hence of uniform keys) it holds a replica of at ``rf``.

        Fractions sum to ``min(rf, len(self))``. One walk per token, O(tokens x rf), done once
        per ring and rf (the ring is immutable): the status page and metrics show it.
        """
        _check_rf(rf)
        cached = self._ownership.get(rf)
        if cached is not None:
            return cached
        held = [0] * len(self._node_ids)
        tokens = self._tokens
        for index in range(len(tokens)):
            size = range_size(tokens[index - 1], tokens[index])  # the range this token ends
            for rank in self._select(self._walk_ranks(index), rf):
                held[rank] += size
        fractions = {n: h / HASH_SPACE_SIZE for n, h in zip(self._node_ids, held)}
        self._ownership[rf] = fractions
        return fractions

    def replica_sets(self, rf: int) -> dict[tuple[str, ...], int]:
        """The share of the circle (in positions) each distinct set of ``rf`` replicas holds.

        The sets are sorted node ids: which members hold a range, not in which order. What a
        listing needs to know which ranges its answers cover. One walk per token, O(tokens x rf) like
        ``ownership_fraction``; the ring is immutable, so a caller keeps the answer for as long as
        it keeps the ring. At most one set per token, in practice far fewer.
        """
        _check_rf(rf)
        sizes: dict[tuple[str, ...], int] = {}
        tokens = self._tokens
        for index in range(len(tokens)):
            ranks = self._select(self._walk_ranks(index), rf)
            replicas = tuple(sorted(self._node_ids[r] for r in ranks))
            sizes[replicas] = sizes.get(replicas, 0) + range_size(tokens[index - 1], tokens[index])
        return sizes

    def _index(self, position: int) -> int:
        """Index of the token that ends the range holding ``position``."""
        return bisect.bisect_left(self._tokens, position) % len(self._tokens)

    def _walk_ranks(self, index: int) -> Iterator[int]:
        """Distinct member ranks met walking clockwise from token ``index`` (one lap at most)."""
        token_count = len(self._tokens)
        member_count = len(self._node_ids)
        seen: set[int] = set()
        for step in range(token_count):
            rank = self._owners[(index + step) % token_count]
            if rank not in seen:
                seen.add(rank)
                yield rank
                if len(seen) == member_count:
                    return
        raise AssertionError("a full lap of the ring must meet every member")

    def _select(self, ranks: Iterable[int], rf: int) -> tuple[int, ...]:
        """Zone-spread preference list from distinct ranks in clockwise order.

        The list is the first member of each zone in order met, up to rf zones; then, when
        there are fewer zones than rf, the next members met, in order.
        """
        replicas = min(rf, len(self._node_ids))
        zones_wanted = min(self._zone_count, replicas)
        others_wanted = replicas - zones_wanted
        zone_firsts: list[int] = []
        others: list[int] = []
        zones_seen: set[int] = set()
        for rank in ranks:
            zone = self._zone_of[rank]
            if zone not in zones_seen:
                zones_seen.add(zone)
                if len(zone_firsts) < zones_wanted:
                    zone_firsts.append(rank)
            elif len(others) < others_wanted:
                others.append(rank)
            if len(zone_firsts) == zones_wanted and len(others) == others_wanted:
                break
        assert len(zone_firsts) == zones_wanted, "walk ended before every wanted zone was met"
        assert len(others) == others_wanted, "walk ended before enough members were met"
        return tuple(zone_firsts) + tuple(others)


def _check_rf(rf: int) -> None:
    if not (isinstance(rf, int) and rf >= 1):
        raise ValueError(f"rf must be an int >= 1, got {rf!r}")
