"""A large put's worker-thread hops: one per chunk where the chunk is written, and no fewer checks.

A client's chunk (``PutFileKnown``) and a chain's chunk at a replica
(``StoreChunkChain``) are hashed against their id in the same hop that writes the
node's own copy; before, each took a hop to hash and a second to write. What must
not change with it: a chunk that does not hash to its id is stored nowhere, the
put or the chain message is refused as the sender's fault, and no peer is taken
for a failing one because it refused that chunk too.
"""

from __future__ import annotations

import functools
import types

import pytest
import trio

from p2pfs import net, wire
from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.hints import HINTS_FILE_NAME, HintStore
from p2pfs.replication.local import LocalReplica, LocalStore
from p2pfs.replication.replicas import Replicas
from p2pfs.replication.resumable import Resumable
from p2pfs.replication.view import RingView
from p2pfs.storage import NAMES_FILE_NAME, ChunkRef, ChunkStore, FileHasher, Manifest, NameIndex, chunk_id_of
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MIN

ME, PEER = "a" * 64, "b" * 64
CHUNK_BYTES = CHUNK_SIZE_BYTES_MIN
TIMEOUT_S = 30.0


class Hops:
    """An offload that runs inline and records what each hop ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def __call__(self, fn, *args):
        inner = fn.func if isinstance(fn, functools.partial) else fn
        self.ran.append(inner.__name__)
        return fn(*args)

    def chunk_hops(self) -> int:
        """Hops that hashed or stored a chunk."""
        return sum(name in ("chunk_id_of", "store_chunk") for name in self.ran)


class Endpoint:
    """The peer: answers each StoreChunk as ``answer`` says, and records it."""

    def __init__(self, answer=lambda msg: dm.StoreChunkReply(True)) -> None:
        self.answer = answer
        self.sent: list[wire.Message] = []

    async def request(self, address, msg, *, timeout_s, node_id=None, body=None):
        self.sent.append(msg)
        return self.answer(msg)


def _node(tmp_path, node_ids: tuple[str, ...], endpoint: Endpoint | None = None):
    config = ReplicationConfig(chunk_size_bytes=CHUNK_BYTES)
    clock = SystemClock()
    members = [Member(n, Address("127.0.0.1", 7000 + i), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)
               for i, n in enumerate(node_ids)]
    view = RingView(ME, config, lambda: members, clock)
    hops = Hops()
    store = ChunkStore(tmp_path, 1 << 30, clock=clock)
    local = LocalStore(store, NameIndex(tmp_path / NAMES_FILE_NAME), HintStore(tmp_path / HINTS_FILE_NAME), clock)
    replicas = Replicas(LocalReplica(ME, local, hops), endpoint, view, hops)
    coordinator = Coordinator(node_id=ME, config=config, view=view, replicas=replicas, local=local, clock=clock,
                              offload=hops)
    return coordinator, store, view, hops


def _known_put(coordinator: Coordinator, view: RingView, chunks: list[bytes], ids: list[bytes]):
    """Run ``put_known`` of ``chunks`` (one body piece each) under the given ids; its entry or
    RemoteError, and the nodes the view holds unavailable after it (its clock is trio's)."""
    hasher = FileHasher()
    for chunk in chunks:
        hasher.update(chunk)
    manifest = Manifest(tuple(ChunkRef(i, len(c)) for i, c in zip(ids, chunks)), sum(map(len, chunks)),
                        hasher.digest(), 0, CHUNK_BYTES)
    resumable = Resumable(coordinator=coordinator, view=view, replicas=coordinator.replicas,
                          existing_file=lambda name: None)

    async def body():
        for chunk in chunks:
            yield chunk

    async def main():
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(coordinator.repairs.run)
                try:
                    outcome = await resumable.put_known("f", manifest, dm.held_bitmap([False] * len(chunks)), body())
                except net.RemoteError as exc:
                    outcome = exc  # not raised here: it would come out in a group around the nursery
                nursery.cancel_scope.cancel()
        return outcome, view.unavailable()

    return trio.run(main)


def test_a_clients_chunk_is_checked_and_stored_in_one_hop(tmp_path):
    coordinator, store, view, hops = _node(tmp_path, (ME,))
    chunks = [bytes([i]) * CHUNK_BYTES for i in range(3)]
    entry, _ = _known_put(coordinator, view, chunks, [chunk_id_of(c) for c in chunks])
    assert hops.chunk_hops() == len(chunks)  # was two each: a hash hop, then a write hop
    assert [ref.chunk_id for ref in entry.manifest.chunks] == [chunk_id_of(c) for c in chunks]
    assert [store.get(chunk_id_of(c)) for c in chunks] == chunks


def test_a_clients_chunk_that_is_not_its_id_is_refused_and_stored_nowhere(tmp_path):
    endpoint = Endpoint()
    coordinator, store, view, _ = _node(tmp_path, (ME, PEER), endpoint)
    coordinator.config = ReplicationConfig(chunk_size_bytes=CHUNK_BYTES, rf=2, w=2)
    chunks = [b"\x01" * CHUNK_BYTES, b"\x02" * CHUNK_BYTES]
    ids = [chunk_id_of(chunks[0]), chunk_id_of(b"something else")]
    refusal, unavailable = _known_put(coordinator, view, chunks, ids)
    assert isinstance(refusal, net.RemoteError)
    assert refusal.code == wire.ErrorCode.BAD_REQUEST
    assert "chunk 1 does not match its id" in refusal.text
    assert not store.has(ids[1])
    assert not any(isinstance(m, dm.StoreChunk) and m.chunk_id == ids[1] for m in endpoint.sent)
    assert PEER not in unavailable
    assert coordinator.local.names.get("f") is None  # the name was not written


def _chain_request(chunk_id: bytes, data: bytes) -> types.SimpleNamespace:
    return types.SimpleNamespace(msg=dm.StoreChunkChain(chunk_id, data, "", (dm.ChainLink(PEER, ""),), 5000))


def test_a_chain_replica_checks_and_stores_its_copy_in_one_hop_and_passes_the_chunk_on(tmp_path):
    endpoint = Endpoint()
    coordinator, store, view, hops = _node(tmp_path, (ME, PEER), endpoint)
    data = b"\x05" * CHUNK_BYTES

    async def main():
        with trio.fail_after(TIMEOUT_S):
            return await coordinator.on_store_chunk_chain(_chain_request(chunk_id_of(data), data))

    reply = trio.run(main)
    assert [(o.node_id, o.stored) for o in reply.outcomes] == [(ME, True), (PEER, True)]
    assert hops.chunk_hops() == 1  # was two: a hash hop, then a write hop
    assert store.get(chunk_id_of(data)) == data
    assert [type(m) for m in endpoint.sent] == [dm.StoreChunk]
    assert endpoint.sent[0].data is data  # passed on as it came


def test_a_chain_replica_refuses_a_chunk_that_is_not_its_id_and_does_not_blame_the_next(tmp_path):
    def refuse(msg):  # the next node checks the chunk too, and refuses it
        raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, "data does not hash to its chunk")

    endpoint = Endpoint(refuse)
    coordinator, store, view, _ = _node(tmp_path, (ME, PEER), endpoint)
    data, wrong_id = b"\x06" * CHUNK_BYTES, chunk_id_of(b"other bytes")

    async def main():
        with trio.fail_after(TIMEOUT_S):
            with pytest.raises(net.RemoteError) as caught:
                await coordinator.on_store_chunk_chain(_chain_request(wrong_id, data))
        return caught.value, view.unavailable()

    refusal, unavailable = trio.run(main)
    assert refusal.code == wire.ErrorCode.BAD_REQUEST
    assert not store.has(wrong_id)
    assert PEER not in unavailable
