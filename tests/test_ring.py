"""Tests of the consistent-hash ring (p2pfs/ring.py).

Property tests use few tokens per weight, which makes rings small and irregular (runs of one
member, duplicate zones, members owning everything) and keeps them fast. Balance, weights and
movement are checked exactly from the tokens' win shares (``Ring.token_shares``), which stand for
any number of uniformly hashed keys; one test checks those shares against sampled keys. The
large-scale properties (3 to 10,000 members) are in tests/test_ring_scale.py.
"""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs.ring import (
    HASH_SPACE_SIZE,
    PROBES,
    TOKENS_PER_MEMBER_MAX,
    TOKENS_PER_WEIGHT_DEFAULT,
    Ring,
    RingMember,
    key_hash,
    key_probes,
    member_tokens,
    movement,
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

FAST = settings(deadline=None, max_examples=100)


def make_id(i: int) -> str:
    return hashlib.sha256(f"node-{i}".encode()).hexdigest()


def sampled_moves(old: Ring, new: Ring, rf: int, keys: list[bytes]) -> list[tuple[list[str], list[str]]]:
    """(before, after) preference lists of the sampled keys whose replica set changed."""
    changed = []
    for key in keys:
        before, after = old.preference_list(key, rf), new.preference_list(key, rf)
        if set(before) != set(after):
            changed.append((before, after))
    return changed


# --- pinned values: changing any of them reshuffles every stored chunk ---------------------------


def test_key_hash_is_pinned():
    assert key_hash(b"") == 4437102819891214032
    assert key_hash(bytes(32)) == 9566437964049630152


def test_key_probes_are_pinned():
    probes = key_probes(b"")
    assert len(probes) == PROBES == 21
    assert probes[:2] == (10309602444518331987, 8977768778056941792)
    assert key_probes(b"a") != probes


def test_member_tokens_are_pinned_and_prefix_stable():
    assert member_tokens("00" * 32, 3) == (
        10510541203367967620,
        11281598313494528239,
        4421118603094227125,
    )
    assert member_tokens("00" * 32, 5)[:3] == member_tokens("00" * 32, 3)
    assert member_tokens("00" * 32, 3) != member_tokens("01" * 32, 3)


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


def test_memory_is_about_13_bytes_a_token():
    ring = Ring([RingMember(make_id(i)) for i in range(100)])
    assert ring.token_count == 100 * TOKENS_PER_WEIGHT_DEFAULT
    assert 12 * ring.token_count <= ring.memory_bytes() <= 16 * ring.token_count


# --- small rings ---------------------------------------------------------------------------------


def test_empty_ring():
    ring = Ring([])
    assert len(ring) == 0
    assert ring.preference_list(b"k", 3) == []
    assert list(ring.walk(b"k")) == []
    assert ring.fallback_list(b"k", 3) == []
    assert ring.ownership_fraction(3) == {}


def test_single_member_owns_everything():
    ring = Ring([RingMember(make_id(0))], tokens_per_weight=8)
    assert ring.preference_list(b"k", 3) == [make_id(0)]
    assert ring.ownership_fraction(3) == pytest.approx({make_id(0): 1.0})
    one_token = Ring([RingMember(make_id(0))], tokens_per_weight=1)
    assert list(one_token.token_shares()) == [1.0]


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


def test_a_key_belongs_to_the_token_nearest_to_any_probe():
    ring = Ring([RingMember(make_id(i)) for i in range(5)], tokens_per_weight=4)
    tokens = sorted(t for m in ring.members for t in member_tokens(m, 4))
    for i in range(200):
        key = f"key-{i}".encode()
        nearest = min(
            ((t - p) % HASH_SPACE_SIZE, t) for p in key_probes(key) for t in tokens
        )[1]
        assert ring.token_owner(ring.token_of(key)) == next(
            m for m in ring.members if nearest in member_tokens(m, 4)
        )


# --- exact shares against sampled keys -----------------------------------------------------------


@pytest.mark.parametrize("members, tokens_per_weight", [(1, 3), (4, 1), (4, 8), (30, 4)])
def test_token_shares_are_the_share_of_sampled_keys(members, tokens_per_weight):
    ring = Ring([RingMember(make_id(i)) for i in range(members)], tokens_per_weight=tokens_per_weight)
    shares = ring.token_shares()
    assert math.isclose(sum(shares), 1.0, rel_tol=1e-9)
    rng = random.Random(members)
    keys_count = 20_000
    counts = [0] * ring.token_count
    for _ in range(keys_count):
        counts[ring.token_of(rng.randbytes(32))] += 1
    for share, count in zip(shares, counts):
        sigma = math.sqrt(keys_count * share * (1 - share))
        assert abs(count - keys_count * share) <= 5 * sigma + 1


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


def test_replica_sets_cover_the_circle_once():
    ring = Ring([RingMember(make_id(i), zone=f"z{i % 2}") for i in range(6)], tokens_per_weight=8)
    sets = ring.replica_sets(3)
    assert sum(sets.values()) == HASH_SPACE_SIZE
    assert all(len(replicas) == 3 and list(replicas) == sorted(replicas) for replicas in sets)
    by_member = dict.fromkeys(ring.members, 0)
    for replicas, size in sets.items():
        for node_id in replicas:
            by_member[node_id] += size / HASH_SPACE_SIZE
    assert by_member == pytest.approx(ring.ownership_fraction(3), rel=1e-6)


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
    assert a.ownership_fraction(rf) == b.ownership_fraction(rf)


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
    keys = [f"key-{i}".encode() for i in range(100)]
    for before, after in sampled_moves(without, with_mover, rf, keys):  # join
        assert mover.node_id in after
        assert mover.node_id not in before
    for before, after in sampled_moves(with_mover, without, rf, keys):  # leave
        assert mover.node_id in before
        assert mover.node_id not in after
    # Exactly the keys the mover holds change their replica set, no more: what consistent
    # hashing promises. (Their other replicas may change too: see Movement.copies_max.)
    moved = movement(without, with_mover, rf)
    assert math.isclose(moved.keys, with_mover.ownership_fraction(rf)[mover.node_id], rel_tol=1e-9)
    assert moved.keys <= moved.copies_max <= min(rf, len(members)) * moved.keys + 1e-12


@settings(deadline=None, max_examples=20)
@given(members=st.lists(members_st, min_size=2, max_size=6, unique_by=lambda m: m.node_id))
def test_moved_fraction_is_the_share_of_sampled_keys_that_move(members):
    *stay, mover = members
    without = Ring(stay, tokens_per_weight=4)
    with_mover = Ring(members, tokens_per_weight=4)
    keys = [f"key-{i}".encode() for i in range(2_000)]
    sampled = len(sampled_moves(without, with_mover, 3, keys)) / len(keys)
    exact = movement(without, with_mover, 3).keys
    assert abs(sampled - exact) <= 5 * math.sqrt(max(0.0, exact * (1 - exact)) / len(keys)) + 1e-9


@FAST
@given(members=member_lists, tokens_per_weight=tokens_per_weight_st, rf=rf_st)
def test_raising_a_weight_only_moves_data_to_that_member(members, tokens_per_weight, rf):
    first, *rest = members
    heavier = RingMember(first.node_id, zone=first.zone, weight=first.weight * 2)
    before_ring = Ring(members, tokens_per_weight=tokens_per_weight)
    after_ring = Ring([heavier, *rest], tokens_per_weight=tokens_per_weight)
    keys = [f"key-{i}".encode() for i in range(100)]
    for before, after in sampled_moves(before_ring, after_ring, rf, keys):
        assert first.node_id in after  # its new token won the key, or its walk now passes one


def test_movement_rejects_rings_that_are_not_one_inside_the_other():
    a = Ring([RingMember(make_id(0)), RingMember(make_id(1))], tokens_per_weight=4)
    b = Ring([RingMember(make_id(0)), RingMember(make_id(2))], tokens_per_weight=4)
    with pytest.raises(ValueError):
        movement(a, b, 3)
