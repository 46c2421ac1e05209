"""A name read asks ``r`` replicas first, this node first, and the others only when needed.

A get used to ask all ``rf`` replicas for the name and cancel the last; now the third is asked
only when one of the first fails or is slow (the hedge), when their answers disagree (then it
is heard too and every stale replica repaired), or when they say "absent". The coordinator is
the real one; its replicas are fakes that count the ``GetName`` requests they are sent.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import NAME_READ_HEDGE_S, Coordinator
from p2pfs.replication.errors import ReplicaDown
from p2pfs.replication.placement import Target, name_key
from p2pfs.replication.quorum import DONE, WAIT, Decision, ReadQuorum, name_read_order
from p2pfs.replication.view import RingView
from p2pfs.storage import NameEntry, Timestamp

CONFIG = ReplicationConfig(rf=3, w=2, r=2)
WAIT_S = 10.0


def _members(count: int) -> tuple[list[str], list[Member]]:
    nodes = [hashlib.sha256(f"node-{i}".encode()).hexdigest() for i in range(count)]
    members = [Member(n, Address("127.0.0.1", 7000 + i), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)
               for i, n in enumerate(nodes)]
    return nodes, members


class FakeReplica:
    def __init__(self, node_id: str, cluster: FakeCluster) -> None:
        self.node_id = node_id
        self.cluster = cluster

    async def get_name(self, name: str) -> NameEntry | None:
        self.cluster.asked.append(self.node_id)
        if self.node_id in self.cluster.slow:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        if self.node_id in self.cluster.down:
            raise ReplicaDown(f"{self.node_id[:12]} is down")
        return self.cluster.entries.get(self.node_id)

    async def put_name(self, entry: NameEntry, hint_for: str = "") -> bool:
        self.cluster.repaired.append((self.node_id, hint_for))
        self.cluster.entries[self.node_id] = entry
        return True


class FakeCluster:
    def __init__(self) -> None:
        self.entries: dict[str, NameEntry] = {}  # one name: node -> its entry
        self.down: set[str] = set()
        self.slow: set[str] = set()
        self.asked: list[str] = []
        self.repaired: list[tuple[str, str]] = []

    def __call__(self, node_id: str) -> FakeReplica:
        return FakeReplica(node_id, self)


def _entry(name: str, wall_ms: int) -> NameEntry:
    return NameEntry(name, Timestamp(wall_ms, 0), "e" * 64, None)


async def _read(me: str, members: list[Member], cluster: FakeCluster, name: str) -> NameEntry | None:
    view = RingView(me, CONFIG, lambda: members, SystemClock())
    coordinator = Coordinator(node_id=me, config=CONFIG, view=view, replicas=cluster, local=None,
                              clock=SystemClock(), offload=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.repairs.run)
        entry = await coordinator.read_name(name)
        with trio.fail_after(WAIT_S):  # the repairs run in the background: wait for them to end
            while coordinator.repairs.running:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    return entry


def _replicas(members: list[Member], me: str, name: str) -> list[str]:
    async def ask() -> list[str]:  # the view reads trio's clock
        view = RingView(me, CONFIG, lambda: members, SystemClock())
        return view.ring().preference_list(name_key(name), CONFIG.rf)

    return trio.run(ask)


def _run(fn, *args):
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_get_whose_replicas_agree_asks_two_this_node_first():
    nodes, members = _members(3)
    me = nodes[0]
    cluster = FakeCluster()
    entry = _entry("a", 100)
    cluster.entries = {node: entry for node in nodes}
    assert _run(_read, me, members, cluster, "a") == entry
    assert len(cluster.asked) == 2  # was 3: every replica asked, the last cancelled
    assert me in cluster.asked  # trio starts the two in either order
    assert cluster.repaired == []


def test_a_coordinator_that_is_no_replica_asks_two():
    nodes, members = _members(6)
    name = next(f"f{i}" for i in range(1000) if nodes[0] not in _replicas(members, nodes[0], f"f{i}"))
    replicas = _replicas(members, nodes[0], name)
    cluster = FakeCluster()
    entry = _entry(name, 100)
    cluster.entries = {node: entry for node in replicas}
    assert _run(_read, nodes[0], members, cluster, name) == entry
    assert sorted(cluster.asked) == sorted(replicas[:2])


def test_a_first_replica_down_brings_in_the_third_and_the_get_succeeds():
    nodes, members = _members(3)
    me = nodes[0]
    down = next(n for n in _replicas(members, me, "a") if n != me)  # the peer asked first
    cluster = FakeCluster()
    entry = _entry("a", 100)
    cluster.entries = {node: entry for node in nodes}
    cluster.down.add(down)
    assert _run(_read, me, members, cluster, "a") == entry
    assert sorted(cluster.asked) == sorted(nodes)  # the third, not a stand-in, in its place


@pytest.mark.parametrize("stale_is_me", [True, False])
def test_a_stale_first_answer_asks_the_third_and_repairs_every_stale_replica(stale_is_me):
    nodes, members = _members(3)
    me = nodes[0]
    peers = [n for n in _replicas(members, me, "a") if n != me]
    first_peer, third = peers
    new, old = _entry("a", 200), _entry("a", 100)
    cluster = FakeCluster()
    if stale_is_me:  # this node and the third are behind
        cluster.entries = {me: old, first_peer: new, third: None}
    else:
        cluster.entries = {me: new, first_peer: old, third: old}
    assert _run(_read, me, members, cluster, "a") == new
    assert sorted(cluster.asked) == sorted(nodes)
    stale = {me, third} if stale_is_me else {first_peer, third}
    assert sorted(cluster.repaired) == sorted((node, "") for node in stale)
    assert all(cluster.entries[node] == new for node in nodes)


def test_a_slow_first_replica_is_hedged_after_the_deadline():
    nodes, members = _members(3)
    me = nodes[0]
    slow = next(n for n in _replicas(members, me, "a") if n != me)
    cluster = FakeCluster()
    entry = _entry("a", 100)
    cluster.entries = {node: entry for node in nodes}
    cluster.slow.add(slow)

    async def main():
        start_s = trio.current_time()
        assert await _read(me, members, cluster, "a") == entry
        return trio.current_time() - start_s

    elapsed_s = _run(main)
    assert NAME_READ_HEDGE_S <= elapsed_s < NAME_READ_HEDGE_S * 2
    assert sorted(cluster.asked) == sorted(nodes)


def test_absent_is_still_asked_of_every_preferred_replica():
    nodes, members = _members(3)
    cluster = FakeCluster()
    assert _run(_read, nodes[0], members, cluster, "nothing") is None
    assert sorted(cluster.asked) == sorted(nodes)


# -- the rules alone ------------------------------------------------------------------

P0, P1, P2, S0 = (c * 64 for c in "abcd")
OLD = _entry("x", 100)
NEW = _entry("x", 200)


def _hedged(targets=(Target(P0), Target(P1), Target(P2)), spare=(S0,)) -> ReadQuorum:
    return ReadQuorum("reading name 'x'", (P0, P1, P2), list(targets), list(spare), 2, ask_first=2)


def test_agreeing_first_answers_never_ask_the_held_replica():
    quorum = _hedged()
    assert quorum.targets == (Target(P0), Target(P1)) and quorum.held == (Target(P2),)
    assert quorum.on_answer(Target(P0), NEW) == WAIT
    assert quorum.on_answer(Target(P1), NEW) == DONE
    assert quorum.hedge() == ()
    assert quorum.outcome().repairs == ()


def test_a_failure_asks_the_held_replica_before_a_stand_in():
    quorum = _hedged()
    assert quorum.on_failure(Target(P1), "down") == Decision(retry=Target(P2))
    assert quorum.on_answer(Target(P0), NEW) == WAIT
    assert quorum.on_answer(Target(P2), NEW) == DONE


def test_a_disagreement_hears_the_held_replica_before_it_is_done():
    quorum = _hedged()
    assert quorum.on_answer(Target(P0), NEW) == WAIT
    assert quorum.on_answer(Target(P1), OLD) == Decision(more=(Target(P2),))
    assert not quorum.done
    assert quorum.on_answer(Target(P2), None) == DONE
    assert quorum.outcome().repairs == (Target(P1), Target(P2))


def test_the_hedge_hands_out_the_held_and_the_first_two_answers_end_it():
    quorum = _hedged()
    assert quorum.on_answer(Target(P0), NEW) == WAIT
    assert quorum.hedge() == (Target(P2),)
    assert quorum.hedge() == ()
    assert quorum.on_answer(Target(P2), NEW) == DONE  # P1 is still out: cancelled by the driver


def test_a_read_asks_this_node_then_preferred_then_stand_ins():
    targets = [Target(S0, P0), Target(P1), Target(P2)]
    assert name_read_order(targets, P2) == [Target(P2), Target(P1), Target(S0, P0)]
    assert name_read_order(targets, "z" * 64) == [Target(P1), Target(P2), Target(S0, P0)]
