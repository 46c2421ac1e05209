"""A name read asks replicas skipped as failing recently when their stand-ins hold nothing.

A node restarted within ``replica_backoff_s`` is still skipped by its peers; if the name's other
replica then fails, the stand-ins asked in their place hold nothing, and the read must still find
the name at the restarted node instead of failing.
"""

from __future__ import annotations

import hashlib

import trio

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.errors import ReplicaDown
from p2pfs.replication.placement import name_key
from p2pfs.replication.view import RingView
from p2pfs.storage import NameEntry, Timestamp

NODES = [hashlib.sha256(f"node-{i}".encode()).hexdigest() for i in range(5)]
ME = NODES[0]


class FakeReplica:
    def __init__(self, node_id: str, cluster: "FakeCluster") -> None:
        self.node_id = node_id
        self.cluster = cluster

    async def get_name(self, name: str) -> NameEntry | None:
        self.cluster.asked.append(self.node_id)
        if self.node_id in self.cluster.down:
            raise ReplicaDown(f"{self.node_id[:12]} is down")
        return self.cluster.entries.get((self.node_id, name))

    async def put_name(self, entry: NameEntry, hint_for: str = "") -> None:
        pass


class FakeCluster:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], NameEntry] = {}
        self.down: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, node_id: str) -> FakeReplica:
        return FakeReplica(node_id, self)


def test_a_name_is_read_from_a_replica_backing_off_when_the_stand_ins_lack_it():
    config = ReplicationConfig(rf=2, w=2, r=1)
    members = [Member(n, Address("127.0.0.1", 7000 + i), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)
               for i, n in enumerate(NODES)]

    async def main():
        view = RingView(ME, config, lambda: members, SystemClock())
        ring = view.ring()
        # A name this node does not replicate, so that both replicas are peers.
        name = next(f"f{i}" for i in range(1000) if ME not in ring.preference_list(name_key(f"f{i}"), 2))
        restarted, failed = ring.preference_list(name_key(name), 2)
        cluster = FakeCluster()
        entry = NameEntry(name, Timestamp(100, 0), restarted, None)
        cluster.entries[(restarted, name)] = cluster.entries[(failed, name)] = entry
        cluster.down.add(failed)
        view.failed(restarted)  # it was down a moment ago: backing off
        view.failed(failed)
        coordinator = Coordinator(node_id=ME, config=config, view=view, replicas=cluster, local=None,
                                  clock=SystemClock(), offload=None)
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.repairs.run)
            assert await coordinator.read_name(name) == entry
            nursery.cancel_scope.cancel()
        assert restarted in cluster.asked

    trio.run(main)
