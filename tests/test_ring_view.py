"""The data layer's ring view: big rings are rebuilt off the event loop, the old ring serving."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import trio
import trio.testing

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs import wire
from p2pfs.membership import Member, MemberState
from p2pfs.replication import view as view_module
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.placement import Target
from p2pfs.replication.errors import ReplicaDown
from p2pfs.replication.replicas import RemoteReplica
from p2pfs.replication.view import RingView
from p2pfs import ring as ring_module
from p2pfs.ring import PLACEMENT_VERSION_NEWEST

from clock_helpers import StepClock

WAIT_S = 30.0
# The members run the newest placement (with version 1 in their records the view would build the
# 2,048-token ring).
ADVERTISED_VERSION = wire.advertised_version(wire.PROTOCOL_VERSION, PLACEMENT_VERSION_NEWEST)  # generous: the machine running the suite may be loaded


def member(i: int) -> Member:
    node_id = hashlib.sha256(f"node-{i}".encode()).hexdigest()
    return Member(node_id, Address("127.0.0.1", 7000 + i), "", 10 * 1024**3, ADVERTISED_VERSION, 1,
                  MemberState.ALIVE, 0.0)


async def test_without_the_rebuild_task_every_ring_is_built_in_place(monkeypatch):
    monkeypatch.setattr(view_module, "SYNC_BUILD_TOKENS_MAX", 0)
    members = [member(i) for i in range(3)]
    view = RingView(members[0].node_id, ReplicationConfig(), lambda: members, SystemClock())
    assert set(view.ring().members) == {m.node_id for m in members}


def record_installs(view: RingView) -> list[int]:
    """The member count of every ring the view installs, in order."""
    sizes: list[int] = []
    install = view._install

    def recording(chosen, ring):
        sizes.append(len(ring))
        install(chosen, ring)

    view._install = recording
    return sizes


async def test_a_small_ring_is_built_in_place_even_with_the_rebuild_task():
    members = [member(i) for i in range(3)]
    view = RingView(members[0].node_id, ReplicationConfig(), lambda: members, SystemClock())
    installed = record_installs(view)
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run_rebuilds)
        assert len(view.ring()) == 3
        members.append(member(3))
        assert len(view.ring()) == 4  # no checkpoint in between: built in place
        assert installed == [3, 4]
        nursery.cancel_scope.cancel()


@pytest.fixture
def big_rings(monkeypatch):
    """Every ring counts as big (built by run_rebuilds), and every member is one build step."""
    monkeypatch.setattr(view_module, "SYNC_BUILD_TOKENS_MAX", 0)
    monkeypatch.setattr(ring_module, "BUILD_STEP_TOKENS", 1)


async def test_a_big_ring_is_rebuilt_in_steps_and_a_superseded_build_is_dropped(big_rings):
    members = [member(i) for i in range(3)]
    view = RingView(members[0].node_id, ReplicationConfig(), lambda: members, SystemClock())
    first = view.ring()  # built in place: the rebuild task is not running yet
    assert len(first) == 3
    installed = record_installs(view)
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run_rebuilds)
        members.append(member(3))
        assert view.ring() is first  # the old ring serves while the new one is built
        await trio.sleep(0)
        await trio.sleep(0)  # the rebuild task has taken a step or two of the 4-member build
        assert view.ring() is first
        members.append(member(4))  # supersedes the build in progress
        assert view.ring() is first
        with trio.fail_after(WAIT_S):
            settled = await view.settled_ring()
        assert len(settled) == 5
        assert view.ring() is settled
        assert installed == [5]  # the 4-member build was dropped
        nursery.cancel_scope.cancel()


async def test_going_back_to_the_ring_we_have_drops_the_pending_build(big_rings):
    members = [member(i) for i in range(3)]
    view = RingView(members[0].node_id, ReplicationConfig(), lambda: members, SystemClock())
    first = view.ring()
    installed = record_installs(view)
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run_rebuilds)
        joiner = member(3)
        members.append(joiner)
        view.ring()
        await trio.sleep(0)
        members.remove(joiner)
        assert view.ring() is first
        assert await view.settled_ring() is first  # nothing to wait for
        await trio.testing.wait_all_tasks_blocked()
        assert view.ring() is first
        assert installed == []  # the build of 4 was dropped
        nursery.cancel_scope.cancel()


async def test_a_first_ring_is_built_in_place_even_when_big(big_rings):
    # A node whose first ring is big must not serve from the empty ring while it is built in
    # steps: a write placed on it goes nowhere, yet met its quorum of min(w, 0) = 0.
    members = [member(i) for i in range(3)]
    view = RingView(members[0].node_id, ReplicationConfig(), lambda: members, SystemClock())
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run_rebuilds)
        assert len(view.ring()) == 3
        nursery.cancel_scope.cancel()


def test_the_ring_follows_every_change_though_it_is_not_derived_again_on_every_request():
    # ring() keeps the ring members it derived while the member records, the leaving members and
    # the dead members' grace periods stay as they were: each such change must still show.
    clock = StepClock()
    members = [member(i) for i in range(5)]
    config = ReplicationConfig(dead_grace_s=60.0)
    view = RingView(members[0].node_id, config, lambda: list(members), clock)
    assert len(view.ring()) == 5
    assert view.unavailable() == set() and len(view.alive()) == 5
    dead = members[4]
    members[4] = Member(dead.node_id, dead.address, "", dead.capacity_bytes, dead.protocol_version, 2,
                        MemberState.DEAD, 10.0)
    clock.now_s = 10.0
    assert len(view.ring()) == 5  # dead, within its grace period: still in the ring
    assert view.unavailable() == {dead.node_id} and len(view.alive()) == 4
    clock.now_s = 69.9
    assert len(view.ring()) == 5
    clock.now_s = 70.0
    assert dead.node_id not in view.ring()  # its grace period ran out: no record changed
    view.mark_leaving(members[3].node_id, for_s=5.0)
    assert members[3].node_id not in view.ring()
    clock.now_s = 75.0
    assert members[3].node_id in view.ring()  # no longer leaving
    members.append(member(5))
    assert len(view.ring()) == 5 and member(5).node_id in view.ring()


def replaced(record: Member, **changes) -> Member:
    """A new record of the same member, as membership makes one when anything in it changes."""
    return dataclasses.replace(record, incarnation=record.incarnation + 1, **changes)


def test_a_member_s_record_is_looked_up_by_id_and_follows_every_change():
    # members() hands out the one list it changes in place: what the view keeps must be a copy.
    members = [member(i) for i in range(4)]
    view = RingView(members[0].node_id, ReplicationConfig(), lambda: members, SystemClock())
    config = ReplicationConfig()
    coordinator = Coordinator(node_id=members[0].node_id, config=config, view=view, replicas=None, local=None,
                              clock=SystemClock(), offload=None)
    remote = RemoteReplica(members[2].node_id, None, view, None)
    targets = [Target(m.node_id) for m in members[1:3]] + [Target("not-a-member")]
    assert view.members_by_id()[members[2].node_id] is members[2]
    assert remote._address() == members[2].address
    assert coordinator._wire_versions(targets) == {m.node_id: ADVERTISED_VERSION for m in members[1:3]}
    # The replica moved to another address, and another node was upgraded: the next request sees both.
    members[2] = replaced(members[2], address=Address("127.0.0.1", 9002))
    members[1] = replaced(members[1], protocol_version=ADVERTISED_VERSION + 1)
    assert view.members_by_id()[members[2].node_id] is members[2]
    assert remote._address() == Address("127.0.0.1", 9002)
    assert coordinator._wire_versions(targets) == {members[1].node_id: ADVERTISED_VERSION + 1,
                                                   members[2].node_id: ADVERTISED_VERSION}
    # Reaped: no longer a member, so no address to send to.
    del members[2]
    assert remote.node_id not in view.members_by_id()
    with pytest.raises(ReplicaDown, match="not a known member"):
        remote._address()
    assert coordinator._wire_versions(targets) == {members[1].node_id: ADVERTISED_VERSION + 1}
    members.append(member(9))
    assert view.members_by_id()[member(9).node_id] == member(9)


def test_the_lookup_by_id_is_not_rebuilt_while_no_record_changes():
    members = [member(i) for i in range(4)]
    view = RingView(members[0].node_id, ReplicationConfig(), lambda: list(members), SystemClock())
    view.members_by_id()
    built = view._by_id
    for m in members:
        assert view.members_by_id()[m.node_id] is m
    assert view._by_id is built
    members[3] = replaced(members[3])
    assert view.members_by_id()[members[3].node_id] is members[3]
    assert view._by_id is not built
