"""Tests of the consistent-hash ring (p2pfs/ring.py).

Property tests use few tokens per weight, which makes rings small and irregular (runs of one
member, duplicate zones, members owning everything) and keeps them fast. The balance tests use
the default token count, because that is the figure they check.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs.ring import (
    HASH_SPACE_SIZE,
    TOKENS_PER_MEMBER_MAX,
    TOKENS_PER_WEIGHT_DEFAULT,
    Ring,
    RingMember,
    in_range,
    key_hash,
    member_tokens,
    range_size,
)

ZONES = ["", "a", "b", "c", "d"]

node_ids = st.binary(min_size=32, max_size=32).map(bytes.hex)
members_st = st.builds(
    RingMember,
    node_id=node_ids,
    zone=st.sampled_from(ZONES),
    weight=st.sampled_from([0.5, 1.0, 2.0]),
)
member_lists = st.lists(members_st, min_size=1, max_size=10, unique_by=lambda m: m.node_id)
tokens_per_weight_st = st.sampled_from([1, 2, 4, 16])
rf_st = st.integers(min_value=1, max_value=5)

FAST = settings(deadline=None, max_examples=200)


def make_id(i: int) -> str:
    return hashlib.sha256(f"node-{i}".encode()).hexdigest()


def arcs(*rings: Ring) -> list[tuple[int, int]]:
    """The ``(start, end]`` ranges between consecutive tokens of all ``rings``, tokens recomputed
    from the members: on each, every ring's preference list is constant."""
    ends = sorted(
        {
            token
            for ring in rings
            for member in ring.members.values()
            for token in member_tokens(
                member.node_id, max(1, round(member.weight * ring.tokens_per_weight))
            )
        }
    )
    return list(zip(ends[-1:] + ends[:-1], ends))


def arc_shares(ring: Ring, rf: int) -> dict[str, float]:
    """Each member's exact fraction of the circle (hence of uniform keys) replicated at ``rf``."""
    positions = dict.fromkeys(ring.members, 0)
    for start, end in arcs(ring):
        for node_id in ring.preference_list_at(end, rf):
            positions[node_id] += range_size(start, end)
    return {node_id: p / HASH_SPACE_SIZE for node_id, p in positions.items()}


def changed_arcs(old: Ring, new: Ring, rf: int) -> list[tuple[int, int, list[str], list[str]]]:
    """The arcs whose replica set at ``rf`` differs between ``old`` and ``new``, with both lists."""
    changed = []
    for start, end in arcs(old, new):
        before = old.preference_list_at(end, rf)
        after = new.preference_list_at(end, rf)
        if set(before) != set(after):
            changed.append((start, end, before, after))
    return changed


def moved_fraction(changes: list[tuple[int, int, list[str], list[str]]]) -> float:
    return sum(range_size(start, end) for start, end, _, _ in changes) / HASH_SPACE_SIZE


# --- pinned values: changing either function reshuffles every stored chunk -----------------------


def test_key_hash_is_pinned():
    assert key_hash(b"") == 4437102819891214032
    assert key_hash(bytes(32)) == 9566437964049630152


def test_member_tokens_are_pinned_and_prefix_stable():
    assert member_tokens("00" * 32, 3) == (
        10510541203367967620,
        11281598313494528239,
        4421118603094227125,
    )
    assert member_tokens("00" * 32, 5)[:3] == member_tokens("00" * 32, 3)
    assert member_tokens("00" * 32, 3) != member_tokens("01" * 32, 3)


# --- ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "start", "end", "inside"),
    [
        (5, 5, 10, False),  # start is exclusive
        (6, 5, 10, True),
        (10, 5, 10, True),  # end is inclusive
        (11, 5, 10, False),
        (HASH_SPACE_SIZE - 1, 10, 5, True),  # wraps through zero
        (0, 10, 5, True),
        (5, 10, 5, True),
        (7, 10, 5, False),
        (10, 10, 5, False),
        (7, 7, 7, True),  # start == end is the whole circle
        (123, 7, 7, True),
    ],
)
def test_in_range(position, start, end, inside):
    assert in_range(position, start, end) is inside


def test_range_size():
    assert range_size(5, 10) == 5
    assert range_size(10, 5) == HASH_SPACE_SIZE - 5
    assert range_size(HASH_SPACE_SIZE - 1, 0) == 1
    assert range_size(7, 7) == HASH_SPACE_SIZE


# --- construction and validation -----------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_member_rejects_bad_weight(weight):
    with pytest.raises(ValueError):
        RingMember(make_id(0), weight=weight)


def test_member_rejects_empty_node_id():
    with pytest.raises(ValueError):
        RingMember("")


def test_ring_rejects_conflicting_duplicates_but_not_repeats():
    one = RingMember(make_id(0), zone="a")
    assert len(Ring([one, one], tokens_per_weight=4)) == 1
    with pytest.raises(ValueError):
        Ring([one, RingMember(make_id(0), zone="b")], tokens_per_weight=4)


def test_ring_rejects_bad_arguments():
    ring = Ring([RingMember(make_id(0))], tokens_per_weight=4)
    with pytest.raises(ValueError):
        ring.preference_list(b"k", 0)
    with pytest.raises(ValueError):
        Ring([RingMember(make_id(0))], tokens_per_weight=0)
    too_heavy = TOKENS_PER_MEMBER_MAX / TOKENS_PER_WEIGHT_DEFAULT + 1
    with pytest.raises(ValueError):
        Ring([RingMember(make_id(0), weight=too_heavy)])


def test_tokens_follow_weight():
    ring = Ring(
        [
            RingMember(make_id(0), weight=1.0),
            RingMember(make_id(1), weight=2.5),
            RingMember(make_id(2), weight=0.01),
        ],
        tokens_per_weight=10,
    )
    assert ring.token_count == 10 + 25 + 1  # a tiny weight still gets one token


# --- small rings ---------------------------------------------------------------------------------


def test_empty_ring():
    ring = Ring([])
    assert len(ring) == 0
    assert ring.preference_list(b"k", 3) == []
    assert list(ring.walk(b"k")) == []
    assert ring.fallback_list(b"k", 3) == []


def test_single_member_owns_the_whole_circle():
    ring = Ring([RingMember(make_id(0))], tokens_per_weight=8)
    assert ring.preference_list(b"k", 3) == [make_id(0)]
    assert arc_shares(ring, 3) == {make_id(0): 1.0}


def test_rf_above_member_count_gives_every_member():
    ids = [make_id(i) for i in range(3)]
    ring = Ring([RingMember(n) for n in ids], tokens_per_weight=8)
    for key in (b"a", b"b", b"c"):
        assert sorted(ring.preference_list(key, 5)) == sorted(ids)
        assert ring.fallback_list(key, 5) == []


def test_zone_fill_when_fewer_zones_than_rf():
    # Two zones, rf 3: one member from each zone first, then the next member clockwise.
    members = [RingMember(make_id(i), zone="a" if i < 4 else "b") for i in range(5)]
    ring = Ring(members, tokens_per_weight=16)
    for i in range(50):
        key = f"key-{i}".encode()
        walk = list(ring.walk(key))
        first_a = next(n for n in walk if ring.members[n].zone == "a")
        first_b = next(n for n in walk if ring.members[n].zone == "b")
        firsts = sorted([first_a, first_b], key=walk.index)
        rest = next(n for n in walk if n not in firsts)
        assert ring.preference_list(key, 3) == firsts + [rest]


# --- properties ----------------------------------------------------------------------------------


@FAST
@given(members=member_lists, tokens_per_weight=tokens_per_weight_st, rf=rf_st, seed=st.randoms())
def test_same_members_in_any_order_give_the_same_ring(members, tokens_per_weight, rf, seed):
    shuffled = list(members)
    seed.shuffle(shuffled)
    a = Ring(members, tokens_per_weight=tokens_per_weight)
    b = Ring(shuffled + shuffled[:2], tokens_per_weight=tokens_per_weight)  # repeats are harmless
    for i in range(20):
        key = f"key-{i}".encode()
        assert a.preference_list(key, rf) == b.preference_list(key, rf)
        assert list(a.walk(key)) == list(b.walk(key))


@FAST
@given(
    members=member_lists,
    tokens_per_weight=tokens_per_weight_st,
    rf=rf_st,
    key=st.binary(max_size=40),
)
def test_preference_list_is_rf_distinct_members_then_fallbacks(members, tokens_per_weight, rf, key):
    ring = Ring(members, tokens_per_weight=tokens_per_weight)
    preferred = ring.preference_list(key, rf)
    fallback = ring.fallback_list(key, rf)
    walk = list(ring.walk(key))
    assert len(preferred) == min(rf, len(members))
    assert len(set(preferred)) == len(preferred)
    assert sorted(preferred + fallback) == sorted(m.node_id for m in members)
    assert fallback == [n for n in walk if n not in preferred]  # clockwise order
    assert preferred[0] == walk[0]  # the first member clockwise always coordinates
    if len({m.zone for m in members}) == 1:
        assert preferred == walk[: len(preferred)]  # no zones: plain clockwise order


@FAST
@given(
    members=member_lists,
    tokens_per_weight=tokens_per_weight_st,
    rf=rf_st,
    key=st.binary(max_size=40),
)
def test_zone_spreading(members, tokens_per_weight, rf, key):
    ring = Ring(members, tokens_per_weight=tokens_per_weight)
    zones = {m.zone for m in members}
    preferred_zones = [ring.members[n].zone for n in ring.preference_list(key, rf)]
    if len(zones) >= rf:
        assert len(set(preferred_zones)) == rf  # one replica per zone
    else:
        assert set(preferred_zones) == zones  # every zone holds a replica


@settings(deadline=None, max_examples=50)
@given(
    ids=st.lists(node_ids, min_size=2, max_size=25, unique=True),
    rf=st.integers(min_value=1, max_value=3),
)
def test_join_moves_about_rf_over_n_plus_1_all_to_the_new_member(ids, rf):
    # Stated tolerance: within 25% of min(rf, N+1)/(N+1). At 512 tokens the new member's share has
    # a relative standard deviation of about 1/sqrt(512) = 4.4%, so 25% is over 5 deviations.
    *old_ids, joiner = ids
    old = Ring([RingMember(n) for n in old_ids], tokens_per_weight=512)
    new = Ring([RingMember(n) for n in ids], tokens_per_weight=512)
    changes = changed_arcs(old, new, rf)
    assert all(set(after) - set(before) == {joiner} for _, _, before, after in changes)
    moved = moved_fraction(changes)
    assert math.isclose(moved, arc_shares(new, rf)[joiner], rel_tol=1e-9)  # all it takes
    ideal = min(rf, len(ids)) / len(ids)
    assert abs(moved - ideal) <= 0.25 * ideal


@FAST
@given(
    members=st.lists(members_st, min_size=2, max_size=10, unique_by=lambda m: m.node_id),
    tokens_per_weight=tokens_per_weight_st,
    rf=rf_st,
)
def test_join_and_leave_only_change_placements_involving_that_member(
    members, tokens_per_weight, rf
):
    *stay, mover = members
    without = Ring(stay, tokens_per_weight=tokens_per_weight)
    with_mover = Ring(members, tokens_per_weight=tokens_per_weight)
    for _, _, before, after in changed_arcs(without, with_mover, rf):  # join
        assert mover.node_id in after
        assert mover.node_id not in before
    left = changed_arcs(with_mover, without, rf)
    for _, _, before, after in left:  # leave
        assert set(before) - set(after) == {mover.node_id}
    assert math.isclose(moved_fraction(left), arc_shares(with_mover, rf)[mover.node_id], rel_tol=1e-9)


@FAST
@given(members=member_lists, tokens_per_weight=tokens_per_weight_st, rf=rf_st)
def test_raising_a_weight_only_moves_data_to_that_member(members, tokens_per_weight, rf):
    first, *rest = members
    heavier = RingMember(first.node_id, zone=first.zone, weight=first.weight * 2)
    changes = changed_arcs(
        Ring(members, tokens_per_weight=tokens_per_weight),
        Ring([heavier, *rest], tokens_per_weight=tokens_per_weight),
        rf,
    )
    assert all(first.node_id in set(after) - set(before) for _, _, before, after in changes)


# --- balance at the default token count ----------------------------------------------------------


def test_balance_of_100_equal_members():
    # Arc length owned as primary is exactly the expected fraction of uniformly hashed keys,
    # so this stands for any number of keys (1,000,000 or more) without sampling them.
    ring = Ring([RingMember(make_id(i)) for i in range(100)])
    shares = list(arc_shares(ring, 1).values())
    mean = statistics.fmean(shares)
    assert math.isclose(mean, 1 / 100)
    assert max(shares) / mean <= 1.10
    assert min(shares) / mean >= 0.90
    assert statistics.pstdev(shares) / mean <= 0.035  # theory: 1/sqrt(2048) = 2.2%


def test_sampled_keys_follow_arc_shares():
    # The arc share is the key share: 20,000 keys land where the arcs say, within sampling error.
    ring = Ring([RingMember(make_id(i)) for i in range(4)], tokens_per_weight=64)
    shares = arc_shares(ring, 1)
    rng = random.Random(1)
    counts = dict.fromkeys(shares, 0)
    keys_count = 20_000
    for _ in range(keys_count):
        counts[ring.preference_list(rng.randbytes(32), 1)[0]] += 1
    for node_id, share in shares.items():
        sigma = math.sqrt(keys_count * share * (1 - share))
        assert abs(counts[node_id] - keys_count * share) <= 5 * sigma


@pytest.mark.parametrize("copies", [1, 10])
def test_balance_follows_capacity_weights(copies):
    weights = [1.0, 2.0, 4.0] * copies
    members = [RingMember(make_id(i), weight=w) for i, w in enumerate(weights)]
    ring = Ring(members)
    shares = arc_shares(ring, 1)
    for member in members:
        target = member.weight / sum(weights)
        assert abs(shares[member.node_id] - target) <= 0.10 * target


def test_zones_balance_per_zone():
    # Three zones of unequal size at rf 3: each zone holds one replica of every key, so a
    # member's replicated share is about 1 / (members in its zone).
    sizes = {"a": 2, "b": 3, "c": 5}
    members = [
        RingMember(make_id(i * 10 + j), zone=z)
        for i, (z, n) in enumerate(sizes.items())
        for j in range(n)
    ]
    ring = Ring(members, tokens_per_weight=256)
    fractions = arc_shares(ring, 3)
    for member in members:
        target = 1 / sizes[member.zone]
        assert abs(fractions[member.node_id] - target) <= 0.2 * target


@pytest.mark.parametrize("members, rf", [(1, 3), (3, 3), (5, 3), (7, 2)])
def test_ownership_fraction_is_each_members_share_of_keys_replicated(members, rf):
    ring = Ring([RingMember(f"node-{i}", zone=f"z{i % 3}") for i in range(members)])
    shares = ring.ownership_fraction(rf)
    assert math.isclose(sum(shares.values()), min(rf, members))
    rng = random.Random(members * 10 + rf)
    keys = 20_000
    held = {node_id: 0 for node_id in shares}
    for _ in range(keys):
        for node_id in ring.preference_list(rng.randbytes(16), rf):
            held[node_id] += 1
    for node_id, share in shares.items():
        assert abs(held[node_id] / keys - share) < 0.02, (node_id, held[node_id] / keys, share)
    assert ring.ownership_fraction(rf) is shares, "computed once per ring"
