"""Read repair of the coordinator's own copy: a node that should hold a chunk and finds it
gone (quarantined by the scrub or an earlier read) gets it back from the replica that served
the read, as any other replica found lacking does. Real coordinator and chunk store on disk;
the one peer is an in-memory replica."""

from __future__ import annotations

import trio
import trio.testing

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.errors import ReplicaLacks
from p2pfs.replication.hints import HINTS_FILE_NAME, HintStore
from p2pfs.replication.local import LocalReplica, LocalStore
from p2pfs.replication.replicas import Replicas
from p2pfs.replication.view import RingView
from p2pfs.storage import NAMES_FILE_NAME, ChunkStore, NameIndex, chunk_id_of
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MIN

ME, PEER = "a" * 64, "b" * 64
DATA = b"r" * CHUNK_SIZE_BYTES_MIN
CHUNK_ID = chunk_id_of(DATA)


async def _inline(fn, *args):
    return fn(*args)


class Peer:
    """A replica that holds the chunk, and counts what it was asked."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch_chunk(self, chunk_id: bytes) -> bytes:
        self.fetches += 1
        if chunk_id != CHUNK_ID:
            raise ReplicaLacks("not held")
        return DATA


class TwoNodeReplicas(Replicas):
    def __init__(self, local: LocalReplica, view: RingView, peer: Peer) -> None:
        super().__init__(local, None, view, _inline)
        self.peer = peer

    def remote(self, node_id: str):
        assert node_id == PEER
        return self.peer


def _coordinator(tmp_path) -> tuple[Coordinator, ChunkStore, Peer]:
    config = ReplicationConfig(rf=2, w=1, r=1, chunk_size_bytes=CHUNK_SIZE_BYTES_MIN)
    clock = SystemClock()
    store = ChunkStore(tmp_path, 1 << 30, clock=clock)
    local = LocalStore(store, NameIndex(tmp_path / NAMES_FILE_NAME), HintStore(tmp_path / HINTS_FILE_NAME), clock)
    members = [Member(node_id, Address("127.0.0.1", port), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)
               for node_id, port in ((ME, 7000), (PEER, 7001))]
    view = RingView(ME, config, lambda: members, clock)
    peer = Peer()
    replicas = TwoNodeReplicas(LocalReplica(ME, local, _inline), view, peer)
    coordinator = Coordinator(node_id=ME, config=config, view=view, replicas=replicas, local=local, clock=clock,
                              offload=_inline)
    return coordinator, store, peer


async def _fetch_then_let_repairs_run(coordinator: Coordinator) -> bytes:
    assert ME in coordinator.view.ring().preference_list(CHUNK_ID, 2)  # its owner
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.repairs.run)
        data = await coordinator.fetch_chunk(CHUNK_ID)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return data


def test_a_chunk_this_owner_lost_before_the_read_is_repaired_from_the_replica_that_served_it(tmp_path):
    coordinator, store, peer = _coordinator(tmp_path)
    assert not store.has(CHUNK_ID)  # quarantined before this read: missing, not corrupt, here
    assert trio.run(_fetch_then_let_repairs_run, coordinator) == DATA
    assert peer.fetches == 1
    assert store.get(CHUNK_ID) == DATA


def test_a_corrupt_copy_found_by_the_read_is_repaired_too(tmp_path):
    coordinator, store, peer = _coordinator(tmp_path)
    store.put(CHUNK_ID, DATA)
    path = next(p for p in tmp_path.rglob(CHUNK_ID.hex()[2:]) if p.is_file())
    path.write_bytes(b"z" * CHUNK_SIZE_BYTES_MIN)
    assert trio.run(_fetch_then_let_repairs_run, coordinator) == DATA
    assert store.get(CHUNK_ID) == DATA
