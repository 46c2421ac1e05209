"""Pure replication decisions, with explicit clocks."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from p2pfs.address import Address
from p2pfs.membership import Member, MemberState
from p2pfs.replication.placement import (
    ReplicaHealth,
    name_key,
    newest,
    read_order,
    ring_members,
    ring_weight,
    stale_replicas,
    unavailable_members,
    write_plan,
)
from p2pfs.ring import Ring, RingMember
from p2pfs.storage import NameEntry, Timestamp

IDS = [f"{i:064x}" for i in range(1, 9)]


def member(node_id: str, state: MemberState = MemberState.ALIVE, since_s: float = 0.0,
           capacity_bytes: int = 10 * 1024**3) -> Member:
    return Member(node_id, Address("127.0.0.1", 7000), "", capacity_bytes, 1, 1, state, since_s)


def ring_of(ids) -> Ring:
    return Ring([RingMember(i) for i in ids])


def test_ring_members_keep_dead_nodes_for_the_grace_period_and_drop_left_ones():
    members = [
        member(IDS[0]),
        member(IDS[1], MemberState.SUSPECT, 5.0),
        member(IDS[2], MemberState.DEAD, since_s=100.0),
        member(IDS[3], MemberState.LEFT, since_s=100.0),
    ]
    inside = {m.node_id for m in ring_members(members, now_s=100.0 + 59.0, dead_grace_s=60.0)}
    assert inside == {IDS[0], IDS[1], IDS[2]}
    after = {m.node_id for m in ring_members(members, now_s=100.0 + 60.0, dead_grace_s=60.0)}
    assert after == {IDS[0], IDS[1]}


def test_ring_weight_follows_capacity_within_bounds():
    assert ring_weight(10 * 1024**3) == 1.0
    assert ring_weight(20 * 1024**3) == 2.0
    assert ring_weight(1) == 1 / 16
    assert ring_weight(10 * 1024**5) == 16.0


def test_unavailable_is_everything_but_alive():
    members = [member(IDS[0]), member(IDS[1], MemberState.SUSPECT), member(IDS[2], MemberState.DEAD)]
    assert unavailable_members(members) == {IDS[1], IDS[2]}


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=1, max_size=40), down=st.sets(st.sampled_from(IDS), max_size=4))
def test_write_plan_replaces_each_unavailable_replica_by_a_distinct_stand_in(key, down):
    ring = ring_of(IDS)
    preferred = ring.preference_list(key, 3)
    targets, spare = write_plan(ring, key, 3, set(down))
    written = [t.node_id for t in targets]
    assert len(written) == len(set(written)), "a node is written twice"
    assert not set(written) & down
    for t in targets:
        if t.hint_for:
            assert t.hint_for in preferred and t.hint_for in down
            assert t.node_id not in preferred
        else:
            assert t.node_id in preferred
    # Every preferred replica is covered directly or by a hint, while stand-ins last.
    covered = {t.hint_for or t.node_id for t in targets}
    available_fallbacks = [n for n in ring.fallback_list(key, 3) if n not in down]
    expected = min(3, len([p for p in preferred if p not in down]) + len(available_fallbacks))
    assert len(covered) == expected
    assert not set(spare) & (set(written) | down)


def test_read_order_prefers_the_local_copy_then_rotates_over_live_replicas():
    ring = ring_of(IDS[:5])
    key = b"some chunk"
    preferred = ring.preference_list(key, 3)
    first_replicas = {read_order(ring, key, 3, set(), holder=None, rotate=i)[0] for i in range(3)}
    assert first_replicas == set(preferred), "reads spread over every replica"
    down = {preferred[0]}
    order = read_order(ring, key, 3, down, holder=IDS[4], rotate=0)
    assert order[0] == IDS[4]
    assert order[-1] == preferred[0], "an unavailable replica is the last resort"
    assert len(order) == len(set(order)) == 5


def entry(wall_ms: int, writer: str, tombstone: bool = False) -> NameEntry:
    from p2pfs.storage import Manifest

    manifest = None if tombstone else Manifest((), 0, b"\0" * 32, wall_ms, 1024 * 1024)
    return NameEntry("n", Timestamp(wall_ms, 0), writer, manifest)


def test_newest_wins_by_clock_then_node_id_and_stale_replicas_get_repaired():
    old, new, tie = entry(100, IDS[0]), entry(200, IDS[0]), entry(200, IDS[1])
    assert newest([old, None, new]) == new
    assert newest([new, tie]) == tie == newest([tie, new])
    assert newest([None, None]) is None
    answers = {IDS[0]: old, IDS[1]: tie, IDS[2]: None, IDS[3]: tie}
    assert stale_replicas(answers, tie) == sorted([IDS[0], IDS[2]])


def test_a_tombstone_beats_older_versions():
    assert newest([entry(100, IDS[0]), entry(150, IDS[2], tombstone=True)]).manifest is None


def test_replica_health_backs_off_then_forgives():
    health = ReplicaHealth(backoff_s=5.0)
    health.failed(IDS[0], now_s=10.0)
    assert health.backing_off(14.9) == {IDS[0]}
    assert health.backing_off(15.0) == set()
    health.failed(IDS[1], now_s=20.0)
    health.succeeded(IDS[1])
    assert health.backing_off(20.1) == set()


def test_name_keys_are_distinct_per_name_and_prefixed():
    assert name_key("a") != name_key("b")
    assert name_key("a/b").startswith(b"name\x00")
