"""Placement properties from 3 to 1,000 members, at the default token count and probes.

Balance, weights and movement are exact (from the tokens' win shares), so each ring is one
example however many keys it stands for. Hypothesis draws sizes up to 300; 1,000 is one ring,
checked for every property at once, so the file stays within seconds. The same properties at
10,000 members take minutes on a loaded machine: ``python scripts/bench_ring.py --members 10000``
measures them (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs.ring import Ring, RingMember, movement

BALANCE_MAX = 1.10  # max/mean load, relative to weight: the target
WEIGHT_CLASS_ERROR_MAX = 0.05  # a weight class's share against its weight's share
MOVED_KEYS_OVER_IDEAL_MAX = 1.10
# Below this many members one member's share of keys at rf strays more than 10% from its fair
# share for some member sets (1.11x at 14 members), though only its own keys move: the bound on
# movement against the fair share is checked from here (the ring's figures: 0.99-1.03x from 100).
FAIR_SHARE_MEMBERS_MIN = 100
# Replica copies a join or leave makes, over the ideal (one copy per key that moves). A key won by
# the joiner's token takes the walk from that token, so its other replicas change too: at rf 3
# about (2 rf - 1) / rf = 1.67x; see docs/ARCHITECTURE.md, "Placement".
MOVED_COPIES_OVER_IDEAL_MAX = 1.80
RF = 3
ZONES = ("a", "b", "c", "d")


def ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [hashlib.sha256(rng.randbytes(32)).hexdigest() for _ in range(count)]


def load_over_weight(ring: Ring) -> list[float]:
    """Each member's primary share over its weight's share (1.0 is exact)."""
    total_weight = sum(m.weight for m in ring.members.values())
    shares = ring.ownership_fraction(1)
    return [shares[n] / (m.weight / total_weight) for n, m in ring.members.items()]


def check_balance_and_weights(ring: Ring) -> None:
    ratios = load_over_weight(ring)
    assert max(ratios) / statistics.fmean(ratios) <= BALANCE_MAX
    total_weight = sum(m.weight for m in ring.members.values())
    shares = ring.ownership_fraction(1)
    for weight in {m.weight for m in ring.members.values()}:
        group = [n for n, m in ring.members.items() if m.weight == weight]
        if len(group) >= 10:  # a class of a few members is as noisy as one member
            target = weight * len(group) / total_weight
            assert abs(sum(shares[n] for n in group) / target - 1) <= WEIGHT_CLASS_ERROR_MAX


def check_zones(ring: Ring, seed: int) -> None:
    zones_count = len({m.zone for m in ring.members.values()})
    rng = random.Random(seed)
    for _ in range(300):
        zones = [ring.members[n].zone for n in ring.preference_list(rng.randbytes(16), RF)]
        assert len(set(zones)) == min(RF, zones_count)


def check_movement(members: list[RingMember], ring: Ring, joiner: RingMember, *, exact: bool) -> None:
    """A join and a leave move at most MOVED_KEYS_OVER_IDEAL_MAX of the ideal; with ``exact``,
    also check that the keys that move are exactly the mover's (tests/test_ring.py checks it on
    small rings; on big ones the mover's share costs a walk of every token)."""
    joined = Ring([*members, joiner])
    for bigger, mover in ((joined, joiner), (ring, members[0])):
        smaller = ring if bigger is joined else Ring(members[1:])
        moved = movement(smaller, bigger, RF)
        if exact:
            share = bigger.ownership_fraction(RF)[mover.node_id]
            assert math.isclose(moved.keys, share, rel_tol=1e-9)  # only the mover's keys
        if len({m.zone for m in bigger.members.values()}) > 1:
            continue  # a member's fair share then depends on its zone's size, not only its weight
        if len(bigger) <= 4 * RF:
            continue  # a heavy member's fair share at rf would near 1 (all keys): shares saturate
        if len(bigger) < FAIR_SHARE_MEMBERS_MIN:
            continue  # what moves is the mover's own share (checked above); its size is balance's
        ideal = min(RF, len(bigger)) / len(bigger) * mover.weight / statistics.fmean(
            m.weight for m in bigger.members.values()
        )
        assert moved.keys / ideal <= MOVED_KEYS_OVER_IDEAL_MAX
        assert moved.copies_max / ideal <= MOVED_COPIES_OVER_IDEAL_MAX


def check_determinism(members: list[RingMember], ring: Ring, seed: int) -> None:
    shuffled = list(members)
    random.Random(seed).shuffle(shuffled)
    again = Ring(shuffled)
    assert again._tokens == ring._tokens
    assert again._owners == ring._owners
    rng = random.Random(seed)
    for _ in range(100):
        key = rng.randbytes(16)
        assert again.preference_list(key, RF) == ring.preference_list(key, RF)


@settings(deadline=None, max_examples=10)
@given(
    count=st.integers(min_value=3, max_value=300),
    seed=st.integers(min_value=0, max_value=2**32),
    weighted=st.booleans(),
    zoned=st.booleans(),
)
def test_placement_properties_from_3_to_300_members(count, seed, weighted, zoned):
    node_ids = ids(count + 1, seed)
    members = [
        RingMember(n, zone=ZONES[i % len(ZONES)] if zoned else "",
                   weight=(0.5, 1.0, 2.0, 4.0)[i % 4] if weighted else 1.0)
        for i, n in enumerate(node_ids[:count])
    ]
    ring = Ring(members)
    check_balance_and_weights(ring)
    check_zones(ring, seed)
    check_movement(members, ring, RingMember(node_ids[count], zone="a" if zoned else ""), exact=True)
    check_determinism(members, ring, seed)


def test_placement_properties_at_1000_members():
    count = 1_000
    node_ids = ids(count + 1, count)
    members = [
        RingMember(n, weight=(0.5, 1.0, 2.0)[i % 3]) for i, n in enumerate(node_ids[:count])
    ]
    ring = Ring(members)
    check_balance_and_weights(ring)
    check_movement(members, ring, RingMember(node_ids[count]), exact=False)
    check_determinism(members, ring, count)
    check_zones(Ring([RingMember(n, zone=ZONES[i % len(ZONES)]) for i, n in enumerate(node_ids[:count])]), count)
