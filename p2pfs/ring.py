"""Consistent-hash ring: where each key lives, and what moves when membership changes.

Consistent hashing (Karger et al., "Consistent Hashing and Random Trees", STOC 1997) puts keys
and nodes on one circle of hash positions; a key belongs to the nodes met first walking clockwise
from it. Adding or removing a node then moves only the keys next to that node's positions, about
K/N of them, instead of nearly all keys as ``hash(key) % N`` would. Like Dynamo (DeCandia et al.,
SOSP 2007, §4.2) each member gets several positions on the circle ("tokens"), as many as its
capacity weight says.

Tokens come from the node id alone: token ``i`` of a member is the ``i``-th 64-bit word of
SHAKE-128(domain || node_id). So every node that sees the same member set builds the same ring,
with no coordination and nothing extra to gossip, and raising a member's weight only adds tokens
(the stream is prefix-stable), which moves only the keys the added tokens take.

Multi-probe lookup (Appleton and O'Reilly, "Multi-Probe Consistent Hashing", 2015). A key is not
one point on the circle but ``PROBES`` points, derived from the key; each probe measures the
distance to the next token clockwise, and the key belongs to the token met soonest by any probe.
With one probe a token's share is the gap in front of it, and gaps vary exponentially: the load of
a member with T tokens has a relative standard deviation of 1/sqrt(T), which is why the previous
ring needed 2,048 tokens per unit of weight (23 MiB and 1.7 s to build at 1,000 members). With k
probes a token wins a key only if one probe lands within about 1/(k x tokens) in front of it, so a
long gap earns hardly more than an average one: a token's share becomes 1 - exp(-(k - 1) x gap x
tokens), whose relative deviation is about 1/sqrt(2k) instead of 1. Measured over exact shares
(scripts/bench_ring.py, docs/BENCHMARKS.md): with ``TOKENS_PER_WEIGHT_DEFAULT = 32`` and
``PROBES = 21``, max/mean load is 1.05 from 100 to 10,000 members; the ring of 10,000 members
takes about 6 MiB (4 for the tokens, 2.5 for their win shares) and builds in about 0.4 s of CPU.
The cost moves to lookups: 21 binary searches instead of one (still microseconds).

Placement stays monotone, the property behind minimal movement: adding tokens can only make a
new token the nearest for a probe, so a join moves keys only to the joiner, a leave only from the
leaver, and the moved fraction is exactly the member's share. The keys a joiner wins come from tokens all
around the ring, though, and with ``REPLICAS_WALK`` take the walk from the joiner's token, so
their other replicas change too: a join or leave makes about (2 rf - 1) / rf times the ideal
replica copies (``Movement.copies_max``). ``REPLICAS_NEAREST`` (placement version 3) makes one
copy per moved key: see below and docs/ARCHITECTURE.md, "Placement". Placement is a pure function of the
member set (ids, weights, zones): it does not depend on the order members were given in, nor on
history. Why not a token allocator (Cassandra 4) or a fixed partition table filled by an optimiser
(Dynamo's strategy 3, Riak, Garage): both balance well, but the first depends on the order members
joined and the second on the previous table, and we have no consensus service to agree on either;
an optimiser run from scratch on the member set alone moves several times the ideal on each change
(measured in docs/ARCHITECTURE.md, "Placement").

Preference lists (``REPLICAS_WALK``, placement versions 1 and 2) follow Dynamo §4.3: from the
key's winning token, the first ``rf`` distinct members clockwise. With ``REPLICAS_NEAREST``
(version 3) members are instead taken in the order of their nearest token clockwise from any of
the key's probes (the first is the winning token's owner, as before). A member's place in that
order depends on its own tokens only, so a join or leave only inserts or removes the mover, and
the zone rule below, a greedy choice of a matroid's basis, then swaps at most one replica: one
copy per key that moves. The price is exactness: a key's replica set is no longer one per token,
so shares at rf are estimated (``ownership_fraction``, ``answered_shares``) or sampled.

When members carry zones (racks, hosts, availability zones), replicas spread
over zones the way Cassandra's NetworkTopologyStrategy spreads over racks: walking clockwise, the
first member met in each zone is taken, until ``rf`` zones are covered; if there are fewer zones
than ``rf``, one member of every zone is taken and the rest are the next members clockwise. Members
with ``zone == ""`` form one unnamed zone, so a ring without zones is plain clockwise order. Beyond
the preference list, ``fallback_list`` gives the next members clockwise: the order in which a
coordinator picks stand-ins for hinted handoff (Dynamo §4.6, sloppy quorum).

With ``REPLICAS_WALK`` a key's preference list depends only on which token it belongs to.
``token_shares`` gives the exact share of keys each token wins (the integral in ``_win_shares``);
``ownership_fraction`` and ``replica_sets`` add them up.

Contract with the caller: the ring does not know who is alive. Which members take part is the
caller's choice, and the design brief's rule is: a node that is merely dead (suspected or confirmed,
within its grace period) stays in the ring, and writes meant for it go to the fallback members with
a hint; a node that left gracefully, or whose grace period expired, leaves the ring, and
anti-entropy (``replication.repair``) moves data to the new owners. Skipping a dead member for one
request is the caller's job (walk the preference list, then the fallback list), not a new ring.

Pure: no I/O, no clock, no randomness beyond the hash functions. ``Ring.build_in_steps`` builds a
ring in small steps, so that an event loop can build a big one between its other work.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import struct
from array import array
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

HASH_BITS = 64
HASH_SPACE_SIZE = 1 << HASH_BITS  # positions on the circle: 0 .. HASH_SPACE_SIZE - 1
_POSITION_MASK = HASH_SPACE_SIZE - 1

# Tokens per unit of capacity weight. With PROBES probes, 32 keeps max/mean load near 1.05 from 100
# to 10,000 members; 16 gives 1.07 and 64 1.05 at twice the memory (docs/BENCHMARKS.md). It also
# sets how finely weights are honoured: a member gets round(weight x 32) tokens, so weights are
# exact in steps of 1/32 (a weight of 1/16, the smallest ring_weight gives, is 2 tokens).
TOKENS_PER_WEIGHT_DEFAULT = 32

# Probes per key. The deviation of a token's share falls as 1/sqrt(2 x PROBES); each probe costs a
# binary search on every lookup. 21 is the paper's figure for a peak-to-mean of 1.05.
PROBES = 21

# Cap on one member's weight in units of tokens_per_weight: 16, i.e. TOKENS_PER_MEMBER_MAX tokens at
# the default. Weights are relative; a bigger figure only costs memory (8 + 4 bytes a token) and
# build time without making placement better.
_WEIGHT_IN_TOKENS_MAX = 16
TOKENS_PER_MEMBER_MAX = _WEIGHT_IN_TOKENS_MAX * TOKENS_PER_WEIGHT_DEFAULT

# Placement versions: (tokens per unit of weight, probes per key, replica rule). Version 1 is the
# ring before multi-probe hashing: 2,048 tokens per unit of weight and one probe, the key's plain position
# ``key_hash(key)`` (its tokens are the same stream, 2,048 long instead of 32). A node advertises
# the newest version it runs in its signed member record, and the data layer places by the oldest
# version any ring member advertises, so a cluster switches only once every member can
# (replication.view; docs/ARCHITECTURE.md, "Placement").
#
# Version 3 keeps version 2's tokens and probes and changes how the other replicas are chosen
# (``REPLICAS_NEAREST``): a join or leave then makes one replica copy per key that moves, the
# ideal, where the walk from the winning token makes about 1.7 (docs/ARCHITECTURE.md, "Placement").
REPLICAS_WALK = "walk"  # the first rf members (zone-spread) walking clockwise from the winning token
REPLICAS_NEAREST = "nearest"  # the rf members (zone-spread) whose tokens are nearest to any probe
PLACEMENT_VERSIONS = {
    1: (2048, 1, REPLICAS_WALK),
    2: (TOKENS_PER_WEIGHT_DEFAULT, PROBES, REPLICAS_WALK),
    3: (TOKENS_PER_WEIGHT_DEFAULT, PROBES, REPLICAS_NEAREST),
}
PLACEMENT_VERSION_NEWEST = 3

_TOKEN_DOMAIN = b"p2pfs/ring/token\x00"  # keeps token streams apart from any other use of SHAKE-128
_PROBE_DOMAIN = b"p2pfs/ring/probe\x00"
_KEY_PERSON = b"p2pfs/ring/key"  # BLAKE2b personalisation (<= 16 bytes) for key positions
_TOKEN_BYTES = HASH_BITS // 8
_PROBES_STRUCT = struct.Struct(f">{PROBES}Q")
_RANK_BITS = 32  # a member's rank (index in sorted node ids) is stored in array("I")
_RANK_MASK = (1 << _RANK_BITS) - 1
# Tokens are sorted in buckets by their top bits, about _TOKENS_PER_BUCKET to a bucket: no single
# sort holds the interpreter lock for long (one sort of 320,000 tokens takes ~0.1 s), and the bucket
# bounds ("fingers") narrow each probe's binary search from ~19 steps to ~2, which halves lookups.
# Memory: 4 bytes a bucket, about 1 byte a token.
_TOKENS_PER_BUCKET = 4
# Fallback members of REPLICAS_NEAREST given in nearest order (``Ring.fallback_list``): stand-ins
# for a hinted write (at most rf of them, and a retry or two) and a chunk read's next tries. Members
# after these follow in node id order from the key's coordinator: putting all 10,000 members of a
# ring in nearest order costs a walk of every token (about 11 ms), on every request.
FALLBACKS_NEAREST_MAX = 8
# Keys sampled, once per ring, to estimate how REPLICAS_NEAREST spreads replicas over zones
# (``Ring.ownership_fraction``): the shares of a few zones come out within about 2%, in ~30 ms.
ZONE_SAMPLE_KEYS = 2048
# Tokens handled between two yields of Ring.build_in_steps: ~2 ms of CPU each way (generating,
# then sorting into arrays) on an idle core, far under the 50 ms an event loop may be held.
BUILD_STEP_TOKENS = 4096


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

    Placement version 1 places a key by it alone (``key_probes`` with one probe); anti-entropy
    groups keys into buckets by it.
    """
    digest = hashlib.blake2b(key, digest_size=_TOKEN_BYTES, person=_KEY_PERSON).digest()
    return int.from_bytes(digest, "big")


def key_probes(key: bytes, probes: int = PROBES) -> tuple[int, ...]:
    """The ``probes`` positions of ``key`` on the circle: SHAKE-128(domain || key) in 64-bit words.

    Names are not uniform and chunk ids are, but hashing makes every key's probes uniform and
    independent of each other, which multi-probe balance needs. One probe is ``key_hash(key)``,
    the position placement version 1 used.
    """
    if probes == PROBES:
        return _PROBES_STRUCT.unpack(hashlib.shake_128(_PROBE_DOMAIN + key).digest(_PROBES_STRUCT.size))
    if probes == 1:
        return (key_hash(key),)
    return struct.unpack(f">{probes}Q", hashlib.shake_128(_PROBE_DOMAIN + key).digest(probes * _TOKEN_BYTES))


def member_tokens(node_id: str, count: int) -> tuple[int, ...]:
    """The first ``count`` tokens of ``node_id``: a prefix-stable, deterministic stream."""
    assert count >= 1
    stream = hashlib.shake_128(_TOKEN_DOMAIN + node_id.encode("utf-8")).digest(count * _TOKEN_BYTES)
    return struct.unpack(f">{count}Q", stream)


def member_token_count(member: RingMember, tokens_per_weight: int) -> int:
    return max(1, round(member.weight * tokens_per_weight))


def range_size(start: int, end: int) -> int:
    """Number of positions in ``(start, end]``; ``start == end`` is the whole circle."""
    assert 0 <= start < HASH_SPACE_SIZE
    assert 0 <= end < HASH_SPACE_SIZE
    return (end - start) % HASH_SPACE_SIZE or HASH_SPACE_SIZE


class Ring:
    """An immutable multi-probe consistent-hash ring over a set of members.

    Build a new ``Ring`` when membership changes: O(tokens) time (bucketed sort), 13 bytes a
    token. A lookup is ``PROBES`` binary searches over the sorted tokens plus a short clockwise walk.
    """

    __slots__ = (
        "members",
        "tokens_per_weight",
        "probes",
        "replicas",
        "_node_ids",
        "_zone_of",
        "_zone_count",
        "_tokens",
        "_owners",
        "_fingers",
        "_finger_shift",
        "_shares",
        "_ownership",
        "_replica_sets",
    )

    def __init__(
        self,
        members: Iterable[RingMember],
        tokens_per_weight: int = TOKENS_PER_WEIGHT_DEFAULT,
        probes: int = PROBES,
        replicas: str = REPLICAS_WALK,
    ) -> None:
        for _ in self._fill(members, tokens_per_weight, probes, replicas):
            pass

    @classmethod
    def of_version(cls, members: Iterable[RingMember], version: int) -> Ring:
        """The ring of placement ``version`` (``PLACEMENT_VERSIONS``)."""
        return cls(members, *PLACEMENT_VERSIONS[version])

    @classmethod
    def build_in_steps(
        cls,
        members: Iterable[RingMember],
        tokens_per_weight: int = TOKENS_PER_WEIGHT_DEFAULT,
        probes: int = PROBES,
        replicas: str = REPLICAS_WALK,
    ) -> Generator[None, None, Ring]:
        """Build a ring in steps of about ``BUILD_STEP_TOKENS`` tokens: a generator that yields
        between steps and returns the ring.

        A caller on an event loop resumes it between other work, so no step holds the loop for
        long (at 10,000 members the whole build is ~0.3 s of CPU, each step a few milliseconds),
        and it can drop a build that is no longer wanted. A worker thread does not do as well: on
        a loaded machine the thread can be descheduled while it holds the interpreter lock, and
        the loop waits for it (measured: gaps of 0.3 s and more at a load average of 50).
        """
        ring = cls.__new__(cls)
        yield from ring._fill(members, tokens_per_weight, probes, replicas)
        return ring

    def _fill(
        self, members: Iterable[RingMember], tokens_per_weight: int, probes: int, replicas: str
    ) -> Iterator[None]:
        if not (isinstance(tokens_per_weight, int) and tokens_per_weight >= 1):
            raise ValueError(f"tokens_per_weight must be an int >= 1, got {tokens_per_weight!r}")
        if not (isinstance(probes, int) and probes >= 1):
            raise ValueError(f"probes must be an int >= 1, got {probes!r}")
        if replicas not in (REPLICAS_WALK, REPLICAS_NEAREST):
            raise ValueError(f"replicas must be {REPLICAS_WALK!r} or {REPLICAS_NEAREST!r}, got {replicas!r}")
        by_id: dict[str, RingMember] = {}
        for member in members:
            seen = by_id.setdefault(member.node_id, member)
            if seen != member:
                raise ValueError(f"conflicting members for {member.node_id}: {seen}, {member}")
        yield
        node_ids = sorted(by_id)
        if len(node_ids) > _RANK_MASK + 1:
            raise ValueError(f"{len(node_ids)} members, over the {_RANK_MASK + 1} a ring can rank")
        zones = sorted({by_id[n].zone for n in node_ids})
        zone_index = {zone: i for i, zone in enumerate(zones)}

        counts = [member_token_count(by_id[n], tokens_per_weight) for n in node_ids]
        tokens_max = _WEIGHT_IN_TOKENS_MAX * tokens_per_weight
        for node_id, count in zip(node_ids, counts):
            if count > tokens_max:
                raise ValueError(
                    f"{node_id} would get {count} tokens, over {_WEIGHT_IN_TOKENS_MAX} x "
                    f"tokens_per_weight ({tokens_max}); scale the weights down"
                )
        # (token, rank) pairs packed into one int, so ties (probability ~ tokens^2 / 2^65) go by
        # node id and the order never depends on the order members were given in. Rank r is
        # node_ids[r]. Sorted bucket by bucket: see _TOKENS_PER_BUCKET.
        yield  # checking and sorting 10,000 members is a step of its own
        bucket_bits = max(0, (sum(counts) // _TOKENS_PER_BUCKET).bit_length() - 1)
        shift = HASH_BITS + _RANK_BITS - bucket_bits
        buckets: list[list[int]] = [[] for _ in range(1 << bucket_bits)]
        step_tokens = 0
        for rank, (node_id, count) in enumerate(zip(node_ids, counts)):
            for token in member_tokens(node_id, count):
                packed = (token << _RANK_BITS) | rank
                buckets[packed >> shift].append(packed)
            step_tokens += count
            if step_tokens >= BUILD_STEP_TOKENS:
                step_tokens = 0
                yield
        tokens = array("Q")
        owners = array("I")
        fingers = array("I", [0])  # fingers[b]: index of the first token in bucket b
        for bucket in buckets:
            bucket.sort()
            tokens.extend([p >> _RANK_BITS for p in bucket])
            owners.extend([p & _RANK_MASK for p in bucket])
            fingers.append(len(tokens))
            step_tokens += len(bucket)
            bucket.clear()  # freed step by step: freeing 320,000 ints at the end takes ~30 ms
            if step_tokens >= BUILD_STEP_TOKENS:
                step_tokens = 0
                yield

        self.members: Mapping[str, RingMember] = MappingProxyType({n: by_id[n] for n in node_ids})
        self.tokens_per_weight = tokens_per_weight
        self.probes = probes
        self.replicas = replicas
        self._node_ids = tuple(node_ids)
        self._zone_of = tuple(zone_index[by_id[n].zone] for n in node_ids)
        self._zone_count = len(zones)
        self._tokens = tokens
        self._owners = owners
        self._fingers = fingers
        self._finger_shift = HASH_BITS - bucket_bits
        self._shares: array | None = None  # token_shares(), computed on first use
        self._ownership: dict[int, dict[str, float]] = {}  # by rf, computed on first use
        self._replica_sets: dict[int, dict[tuple[str, ...], int]] = {}  # by rf, computed on first use
        assert len(self._tokens) == len(self._owners)
        assert len(self._tokens) >= len(self._node_ids)

    def __len__(self) -> int:
        return len(self._node_ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.members

    def __repr__(self) -> str:
        return (f"Ring(members={len(self)}, tokens={len(self._tokens)}, probes={self.probes}, "
                f"replicas={self.replicas}, zones={self._zone_count})")

    @property
    def token_count(self) -> int:
        return len(self._tokens)

    def memory_bytes(self) -> int:
        """Bytes held by the token arrays (and the token shares, once computed)."""
        held = sum(a.itemsize * len(a) for a in (self._tokens, self._owners, self._fingers))
        if self._shares is not None:
            held += self._shares.itemsize * len(self._shares)
        return held

    def preference_list(self, key: bytes, rf: int) -> list[str]:
        """The ``min(rf, len(self))`` members that replicate ``key``, coordinator first."""
        _check_rf(rf)
        if not self._node_ids:
            return []
        if self.replicas == REPLICAS_NEAREST:
            return [self._node_ids[r] for r in self._nearest_preference(key, rf)]
        return self.preference_list_of_token(self.token_of(key), rf)

    def preference_list_of_token(self, index: int, rf: int) -> list[str]:
        """The preference list of every key that token ``index`` wins (``REPLICAS_WALK``)."""
        _check_rf(rf)
        assert self.replicas == REPLICAS_WALK, "with REPLICAS_NEAREST a token does not decide the replicas"
        assert 0 <= index < len(self._tokens)
        return [self._node_ids[r] for r in self._select(self._walk_ranks(index), rf)]

    def token_of(self, key: bytes) -> int:
        """Index of the token ``key`` belongs to: the token nearest clockwise to any of its probes.

        Ties (two probes at the same distance) go to the lower index, so every node agrees.
        """
        tokens = self._tokens
        fingers = self._fingers
        shift = self._finger_shift
        count = len(tokens)
        assert count > 0, "an empty ring has no tokens"
        best_distance = HASH_SPACE_SIZE
        best_index = 0
        for probe in key_probes(key, self.probes):
            bucket = probe >> shift
            index = bisect.bisect_left(tokens, probe, fingers[bucket], fingers[bucket + 1])
            if index == count:
                index = 0
            distance = (tokens[index] - probe) & _POSITION_MASK
            if distance < best_distance or (distance == best_distance and index < best_index):
                best_distance = distance
                best_index = index
        return best_index

    def walk(self, key: bytes) -> Iterator[str]:
        """Every member once, ignoring zones: in clockwise order from ``key``'s token
        (``REPLICAS_WALK``), or nearest first (``REPLICAS_NEAREST``). Lazy: taking the first few
        costs a few tokens; all of them, a walk of every token.

        Without zones the first ``rf`` are ``preference_list(key, rf)``; with zones they may not
        be, because zone spreading skips members. Use ``fallback_list`` for the members beyond
        the preference list.
        """
        if not self._node_ids:
            return
        if self.replicas == REPLICAS_NEAREST:
            ranks = self._nearest_ranks(key)
        else:
            ranks = self._walk_ranks(self.token_of(key))
        for rank in ranks:
            yield self._node_ids[rank]

    def fallback_list(self, key: bytes, rf: int) -> list[str]:
        """The members not in ``preference_list(key, rf)``, in ``walk`` order from ``key``.

        A coordinator that cannot reach a preferred replica writes to the first reachable of
        these with a hint naming the intended owner (Dynamo §4.6). With ``REPLICAS_NEAREST`` only
        the first ``FALLBACKS_NEAREST_MAX`` are in nearest order, the others in node id order
        from the key's coordinator: see ``FALLBACKS_NEAREST_MAX``.
        """
        preferred = self.preference_list(key, rf)
        if self.replicas == REPLICAS_WALK:
            taken = set(preferred)
            return [n for n in self.walk(key) if n not in taken]
        taken = set(preferred)
        nearest: list[str] = []
        for node_id in self.walk(key):
            if len(nearest) == FALLBACKS_NEAREST_MAX:
                break
            if node_id not in taken:
                nearest.append(node_id)
        taken.update(nearest)
        if len(taken) == len(self._node_ids):
            return nearest
        start = bisect.bisect_left(self._node_ids, preferred[0])
        rest = self._node_ids[start:] + self._node_ids[:start]
        return nearest + [n for n in rest if n not in taken]

    def token_owner(self, index: int) -> str:
        return self._node_ids[self._owners[index]]

    def token_shares(self) -> array:
        """The exact share of uniformly hashed keys each token wins, by token index (sums to 1).

        Computed once per ring, O(tokens log tokens): see ``_win_shares``.
        """
        if self._shares is None:
            self._shares = _win_shares(self._tokens, self.probes)
        return self._shares

    def ownership_fraction(self, rf: int) -> dict[str, float]:
        """Each member's fraction of uniform keys it holds a replica of at ``rf``.

        Fractions sum to ``min(rf, len(self))``. One walk per token, O(tokens x rf), done once
        per ring and rf (the ring is immutable): the status page and metrics show it.

        Exact with ``REPLICAS_WALK``, and with ``REPLICAS_NEAREST`` at rf 1 (the coordinator is
        the same) or rf >= members (every member holds every key). Otherwise ``REPLICAS_NEAREST``
        gives an estimate: a member's primary share, scaled by how many replicas its zone holds
        per primary it holds (exactly rf / 1 with one zone; sampled over ``ZONE_SAMPLE_KEYS``
        keys with several). A member's share at rf follows its primary share closely
        (scripts/bench_ring.py measures both) but not exactly.
        """
        _check_rf(rf)
        cached = self._ownership.get(rf)
        if cached is not None:
            return cached
        held = [0.0] * len(self._node_ids)
        replicas = min(rf, len(self._node_ids))
        if self.replicas == REPLICAS_WALK or replicas == 1:
            for index, share in enumerate(self.token_shares()):
                for rank in self._select(self._walk_ranks(index), rf):
                    held[rank] += share
        elif replicas == len(self._node_ids):
            held = [1.0] * replicas
        else:
            for index, share in enumerate(self.token_shares()):
                held[self._owners[index]] += share
            zone_primary = [0.0] * self._zone_count
            for rank, share in enumerate(held):
                zone_primary[self._zone_of[rank]] += share
            zone_held = [float(replicas)] * self._zone_count  # one zone: it holds all of each key
            if self._zone_count > 1:
                zone_held = [0.0] * self._zone_count
                for i in range(ZONE_SAMPLE_KEYS):
                    for rank in self._select(self._nearest_ranks(b"p2pfs/ring/zone-sample\x00%d" % i), rf):
                        zone_held[self._zone_of[rank]] += 1 / ZONE_SAMPLE_KEYS
            held = [share * zone_held[self._zone_of[rank]] / zone_primary[self._zone_of[rank]]
                    if share else 0.0 for rank, share in enumerate(held)]
        fractions = dict(zip(self._node_ids, held))
        self._ownership[rf] = fractions
        return fractions

    def answered_shares(self, rf: int, answered: Iterable[str]) -> dict[int, float]:
        """The share of keys (summing to 1) by how many of their replicas are in ``answered``.

        What ``ls`` needs to say whether its answers cover every key (``quorum_list``). With
        ``REPLICAS_WALK`` it is exact, from ``replica_sets``. With ``REPLICAS_NEAREST`` a key's
        replicas are any zone-spread set of ``rf`` members (the probes can fall just before
        any members' tokens), so which counts occur is exact: from the fewest answered members
        any zone-spread set can hold to the most (``_most_in_one_set``). How many keys have
        each count is estimated from the members' shares (``ownership_fraction``), as if each
        replica were answered independently with the answered members' share of replicas.
        """
        _check_rf(rf)
        answered = {n for n in answered if n in self.members}
        replicas = min(rf, len(self._node_ids))
        if replicas == 0:
            return {}
        if self.replicas == REPLICAS_WALK:
            shares: dict[int, float] = {}
            for replica_set, size in self.replica_sets(rf).items():
                count = sum(1 for n in replica_set if n in answered)
                shares[count] = shares.get(count, 0.0) + size / HASH_SPACE_SIZE
            return shares
        ranks = {r for r, n in enumerate(self._node_ids) if n in answered}
        others = set(range(len(self._node_ids))) - ranks
        fewest = replicas - self._most_in_one_set(others, replicas)
        most = self._most_in_one_set(ranks, replicas)
        owned = self.ownership_fraction(rf)
        p = min(1.0, sum(owned[n] for n in answered) / replicas)
        weights = {c: math.comb(replicas, c) * p**c * (1 - p) ** (replicas - c)
                   for c in range(fewest, most + 1)}
        total = sum(weights.values())
        if total == 0.0:  # p rounded to 0 or 1 although both kinds of sets occur: spread evenly
            return {c: 1 / (most - fewest + 1) for c in range(fewest, most + 1)}
        return {c: w / total for c, w in weights.items()}

    def _most_in_one_set(self, ranks: set[int], replicas: int) -> int:
        """How many of ``ranks`` one zone-spread replica set can hold at most (``_select``'s
        sets are the bases of a matroid: one member per zone, plus replicas - zones more when
        there are fewer zones than replicas)."""
        zones = len({self._zone_of[r] for r in ranks})
        if self._zone_count >= replicas:
            return min(replicas, zones)
        return zones + min(len(ranks) - zones, replicas - self._zone_count)

    def replica_sets(self, rf: int) -> dict[tuple[str, ...], int]:
        """The share of keys (in positions of the 2**64 circle) each distinct set of ``rf``
        replicas holds.

        The sets are sorted node ids: which members hold keys, not in which order; the sizes sum
        to exactly 2**64. What a
        listing needs to know which keys its answers cover. One walk per token, O(tokens x rf)
        like ``ownership_fraction``; the ring is immutable, so a caller keeps the answer for as
        long as it keeps the ring. At most one set per token, in practice far fewer.
        """
        _check_rf(rf)
        if self.replicas != REPLICAS_WALK:
            raise ValueError("with REPLICAS_NEAREST replica sets are not one per token: use answered_shares")
        cached = self._replica_sets.get(rf)
        if cached is not None:
            return cached
        shares: dict[tuple[str, ...], float] = {}
        for index, share in enumerate(self.token_shares()):
            ranks = self._select(self._walk_ranks(index), rf)
            replicas = tuple(sorted(self._node_ids[r] for r in ranks))
            shares[replicas] = shares.get(replicas, 0.0) + share
        sizes = {replicas: int(share * HASH_SPACE_SIZE) for replicas, share in shares.items()}
        if sizes:  # float rounding: the biggest set takes the few positions left over
            biggest = max(sizes, key=lambda replicas: (sizes[replicas], replicas))
            sizes[biggest] += HASH_SPACE_SIZE - sum(sizes.values())
        self._replica_sets[rf] = sizes
        return sizes

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

    def _probe_heap(self, key: bytes) -> list[tuple[int, int]]:
        """(distance, token index) of the nearest token clockwise from each of ``key``'s probes,
        as a heap: where the merge of the probes' walks starts. The probe itself is the token
        minus the distance; a probe's next token is at the distance plus the gap to it."""
        tokens = self._tokens
        fingers = self._fingers
        shift = self._finger_shift
        count = len(tokens)
        bisect_left = bisect.bisect_left
        heap = []
        for probe in key_probes(key, self.probes):
            bucket = probe >> shift
            index = bisect_left(tokens, probe, fingers[bucket], fingers[bucket + 1])
            if index == count:
                index = 0
            heap.append(((tokens[index] - probe) & _POSITION_MASK, index))
        heapq.heapify(heap)
        return heap

    def _nearest_ranks(self, key: bytes) -> Iterator[int]:
        """Distinct member ranks by their nearest token clockwise from any of ``key``'s probes.

        A merge of the probes' clockwise walks by distance (a heap of one entry per probe): the
        first is the owner of ``token_of(key)``, the next ones cost a few tokens each. A member's
        distance is set by its own tokens alone, so a join or leave changes no other member's
        place in this order: what makes ``REPLICAS_NEAREST`` move one copy per moved key.
        Ties go to the lower token index, as in ``token_of``.
        """
        tokens = self._tokens
        owners = self._owners
        count = len(tokens)
        heap = self._probe_heap(key)
        member_count = len(self._node_ids)
        seen: set[int] = set()
        # Every probe's walk meets every member within one lap, before any walk laps: bounded.
        for _ in range(count * len(heap)):
            distance, index = heap[0]
            rank = owners[index]
            if rank not in seen:
                seen.add(rank)
                yield rank
                if len(seen) == member_count:
                    return
            after = index + 1 if index + 1 < count else 0
            heapq.heapreplace(heap, (distance + ((tokens[after] - tokens[index]) & _POSITION_MASK), after))
        raise AssertionError("the probes' walks must meet every member within a lap")

    def _nearest_preference(self, key: bytes, rf: int) -> list[int]:
        """``_select(_nearest_ranks(key), rf)`` with the merge written out when there are no
        zones to spread over: the lookup every request makes, kept as fast as ``REPLICAS_WALK``'s."""
        if self._zone_count > 1:
            return list(self._select(self._nearest_ranks(key), rf))
        tokens = self._tokens
        owners = self._owners
        count = len(tokens)
        replicas = min(rf, len(self._node_ids))
        heap = self._probe_heap(key)
        heapreplace = heapq.heapreplace
        chosen: list[int] = []
        for _ in range(count * len(heap)):  # bounded as in _nearest_ranks
            distance, index = heap[0]
            rank = owners[index]
            if rank not in chosen:
                chosen.append(rank)
                if len(chosen) == replicas:
                    return chosen
            after = index + 1 if index + 1 < count else 0
            heapreplace(heap, (distance + ((tokens[after] - tokens[index]) & _POSITION_MASK), after))
        raise AssertionError("the probes' walks must meet every member within a lap")

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


@dataclass(frozen=True, slots=True)
class Movement:
    """What a join or leave moves, as shares of all keys (see ``movement``).

    keys: the share of keys whose replica set changes. Ideal: the member's own share at rf,
        ``ownership_fraction(rf)[member]``, which consistent hashing meets exactly.
    copies_max: replica copies that must be made, per key, at most: a key whose winning token
        stays changes by the members that differ; a key won by an added (or removed) token gets
        the walk from another token, counted as ``min(rf, members)`` new copies (its old and new
        replicas almost never overlap at scale). Ideal: ``keys``, one copy per key that moves.
    """

    keys: float
    copies_max: float


def movement(a: Ring, b: Ring, rf: int) -> Movement:
    """What changes between rings ``a`` and ``b`` when one's members are the other's plus some
    (a join or a leave), exactly, from the bigger ring's token shares.

    The bigger ring's tokens are the smaller's plus the added members'. A key won by an added
    token moves; a key won by a shared token has the same winner in both rings, and moves if the
    walks from that token select different replicas. Used by the benchmark and the tests.
    """
    _check_rf(rf)
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    if a.replicas != REPLICAS_WALK or b.replicas != REPLICAS_WALK:
        raise ValueError("movement is exact for REPLICAS_WALK only; sample keys for REPLICAS_NEAREST")
    if (small.tokens_per_weight, small.probes) != (big.tokens_per_weight, big.probes) or any(
        big.members.get(node_id) != member for node_id, member in small.members.items()
    ):
        raise ValueError("movement needs one ring's members to be the other's plus some")
    replicas = min(rf, len(big))
    keys = copies = 0.0
    shared = 0  # index of the next token of the small ring
    for index, share in enumerate(big.token_shares()):
        owner = big.token_owner(index)
        if owner not in small.members:
            keys += share
            copies += share * replicas
            continue
        assert small._tokens[shared] == big._tokens[index] and small.token_owner(shared) == owner
        after = set(big.preference_list_of_token(index, rf))
        differ = len(after - set(small.preference_list_of_token(shared, rf)))
        if differ:
            keys += share
            copies += share * max(differ, 1)
        shared += 1
    assert shared == small.token_count
    return Movement(keys, copies)


def _win_shares(tokens: array, probes: int) -> array:
    """The probability that a key with ``probes`` uniform probes belongs to each token.

    A probe at distance d in front of the next token: with gaps g_j (the arc before token j, as a
    fraction of the circle), P(one probe's distance <= d) = F(d) = sum_j min(d, g_j). Token j wins
    when one probe lands in its gap at distance d and the other k - 1 are farther from their next
    token, so P(j) = k * integral from 0 to g_j of (1 - F(d))^(k-1) dd. F is piecewise linear
    between consecutive gap sizes, so the integral is a sum of closed forms over the sorted gaps.
    Of equal tokens only the first can win (a probe's binary search stops there): the others have
    a gap of 0.
    """
    count = len(tokens)
    if count == 1:
        return array("d", [1.0])
    gaps = [((tokens[i] - tokens[i - 1]) & _POSITION_MASK) / HASH_SPACE_SIZE for i in range(count)]
    shares = array("d", bytes(8 * count))
    covered = 0.0  # F at the previous breakpoint minus its linear part: the sum of smaller gaps
    previous_gap = 0.0
    integral = 0.0
    for done, index in enumerate(sorted(range(count), key=gaps.__getitem__)):
        gap = gaps[index]
        open_gaps = count - done  # gaps still longer than d on (previous_gap, gap]
        before = max(0.0, 1.0 - covered - open_gaps * previous_gap)
        after = max(0.0, 1.0 - covered - open_gaps * gap)
        integral += (before**probes - after**probes) / (probes * open_gaps)
        shares[index] = probes * integral
        covered += gap
        previous_gap = gap
    return shares


def _check_rf(rf: int) -> None:
    if not (isinstance(rf, int) and rf >= 1):
        raise ValueError(f"rf must be an int >= 1, got {rf!r}")
