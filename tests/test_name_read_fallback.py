"""Reads ask, last, the live members they skipped as failing recently.

A node restarted within ``replica_backoff_s`` is still skipped by its peers. A name read whose
stand-ins hold nothing, and a chunk read whose replicas lack the chunk, must still find it at the
restarted node instead of failing.
"""

from __future__ import annotations

import hashlib

import trio

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.errors import ReplicaDown, ReplicaLacks
from p2pfs.replication.placement import name_key
from p2pfs.replication.view import RingView
from p2pfs.storage import NameEntry, Timestamp, chunk_id_of

NODES = [hashlib.sha256(f"node-{i}".encode()).hexdigest() for i in range(5)]
ME = NODES[0]
CONFIG = ReplicationConfig(rf=2, w=2, r=1)
MEMBERS = [Member(n, Address("127.0.0.1", 7000 + i), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)
           for i, n in enumerate(NODES)]


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
    async def main():
        view = RingView(ME, CONFIG, lambda: MEMBERS, SystemClock())
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
        coordinator = Coordinator(node_id=ME, config=CONFIG, view=view, replicas=cluster, local=None,
                                  clock=SystemClock(), offload=None)
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.repairs.run)
            assert await coordinator.read_name(name) == entry
            nursery.cancel_scope.cancel()
        assert restarted in cluster.asked

    trio.run(main)


class FakeChunkReplica(FakeReplica):
    async def fetch_chunk(self, chunk_id: bytes) -> bytes:
        self.cluster.asked.append(self.node_id)
        data = self.cluster.chunks.get((self.node_id, chunk_id))
        if data is None:
            raise ReplicaLacks(f"chunk {chunk_id.hex()[:16]} is not held")
        return data

    async def store_chunk(self, chunk_id: bytes, data: bytes, hint_for: str = "") -> None:
        pass


class FakeChunkCluster(FakeCluster):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: dict[tuple[str, bytes], bytes] = {}

    @property
    def local(self) -> FakeChunkReplica:
        """This node's own replica, which a chunk read asks first when the node is one of the
        chunk's replicas (it holds nothing here)."""
        return FakeChunkReplica(ME, self)

    def __call__(self, node_id: str) -> FakeChunkReplica:
        return FakeChunkReplica(node_id, self)


class NothingHeld:
    def has(self, chunk_id: bytes) -> bool:
        return False


async def _inline(fn, *args):
    return fn(*args)


def test_a_chunk_is_read_from_a_live_member_in_back_off_outside_its_replicas():
    # After a placement change (or a join) a chunk may sit only at a member that is no longer
    # one of its replicas; if that member was restarted a moment ago, it is in back-off.
    async def main():
        view = RingView(ME, CONFIG, lambda: MEMBERS, SystemClock())
        ring = view.ring()
        data = b"chunk bytes"
        chunk_id = chunk_id_of(data)
        holder = next(n for n in ring.fallback_list(chunk_id, 2) if n != ME)
        cluster = FakeChunkCluster()
        cluster.chunks[(holder, chunk_id)] = data
        view.failed(holder)  # restarted a moment ago: backing off
        local = type("Local", (), {"chunks": NothingHeld()})()
        coordinator = Coordinator(node_id=ME, config=CONFIG, view=view, replicas=cluster, local=local,
                                  clock=SystemClock(), offload=_inline)
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.repairs.run)
            assert await coordinator.fetch_chunk(chunk_id) == data
            nursery.cancel_scope.cancel()
        assert cluster.asked[-1] == holder

    trio.run(main)
