"""What a chunk read costs the coordinator in worker-thread hops: one for its own copy.

Each hop is a round trip through a worker thread and trio's wake-up, which on the project's
loaded 2-core machine cost more than the copy and the hash of the chunk (docs/BENCHMARKS.md,
"Receive path and thread hops"). A read asked ``has`` first, then read: two per chunk of a get.
"""

from __future__ import annotations

import mmap
import random

import pytest
import trio

from p2pfs import net

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import LOCAL_READ_CHUNKS_MAX, Coordinator
from p2pfs.replication.hints import HINTS_FILE_NAME, HintStore
from p2pfs.replication.local import LocalReplica, LocalStore
from p2pfs.replication.quorum import QuorumError
from p2pfs.replication.replicas import Replicas
from p2pfs.replication.view import RingView
from p2pfs.storage import NAMES_FILE_NAME, ChunkCorrupt, ChunkMissing, ChunkStore, NameIndex, chunk_id_of
from p2pfs.storage.chunkstore import DIRECT_BLOCK_BYTES, DIRECT_READ_BUFFER_BYTES
from p2pfs.net.config import STREAM_DATA_BYTES_MAX
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MAX, CHUNK_SIZE_BYTES_MIN, ChunkRef

ME = "a" * 64


class CountingOffload:
    """Runs what would go to a worker thread inline, and counts the hops."""

    def __init__(self) -> None:
        self.hops = 0

    async def __call__(self, fn, *args):
        self.hops += 1
        return fn(*args)


def _coordinator(tmp_path) -> tuple[Coordinator, ChunkStore, CountingOffload]:
    config = ReplicationConfig(chunk_size_bytes=CHUNK_SIZE_BYTES_MIN)
    clock = SystemClock()
    store = ChunkStore(tmp_path, 1 << 30, clock=clock)
    local = LocalStore(store, NameIndex(tmp_path / NAMES_FILE_NAME), HintStore(tmp_path / HINTS_FILE_NAME), clock)
    members = [Member(ME, Address("127.0.0.1", 7000), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)]
    view = RingView(ME, config, lambda: members, clock)
    offload = CountingOffload()
    replicas = Replicas(LocalReplica(ME, local, offload), None, view, offload)
    coordinator = Coordinator(node_id=ME, config=config, view=view, replicas=replicas, local=local, clock=clock,
                              offload=offload)
    return coordinator, store, offload


def test_a_chunk_held_here_is_read_in_one_thread_hop(tmp_path):
    coordinator, store, offload = _coordinator(tmp_path)
    data = b"x" * CHUNK_SIZE_BYTES_MIN
    chunk_id = chunk_id_of(data)
    store.put(chunk_id, data)
    assert trio.run(coordinator.fetch_chunk, chunk_id) == data
    assert offload.hops == 1


def test_a_corrupt_copy_here_is_quarantined_and_the_read_fails_over(tmp_path):
    coordinator, store, offload = _coordinator(tmp_path)
    data = b"y" * CHUNK_SIZE_BYTES_MIN
    chunk_id = chunk_id_of(data)
    store.put(chunk_id, data)
    path = next(p for p in tmp_path.rglob(chunk_id.hex()[2:]) if p.is_file())
    path.write_bytes(b"z" * CHUNK_SIZE_BYTES_MIN)
    with pytest.raises(QuorumError):  # its only replica lacks it now
        trio.run(coordinator.fetch_chunk, chunk_id)
    assert not store.has(chunk_id)  # quarantined
    assert chunk_id in coordinator.local.corrupt_pending  # for the repair to fetch it again


def test_chunks_fetched_ahead_leave_together_in_frames_of_at_most_the_frame_size(tmp_path):
    """The chunks ready after the one due go with it in one body piece, up to one frame, uncopied."""
    coordinator, store, _ = _coordinator(tmp_path)
    chunks = [bytes([index]) * CHUNK_SIZE_BYTES_MIN for index in range(3 * coordinator.config.get_window_chunks)]
    refs = []
    for data in chunks:
        store.put(chunk_id_of(data), data)
        refs.append(ChunkRef(chunk_id_of(data), len(data)))
    sent = []

    async def send(piece) -> None:  # done with the bytes when it returns, as a connection is
        parts = [bytes(part) for part in piece.parts] if isinstance(piece, net.Scattered) else None
        sent.append((bytes(piece), parts))

    trio.run(coordinator.stream_chunks, refs, send)
    assert b"".join(data for data, _ in sent) == b"".join(chunks)
    assert len(sent) < len(chunks)  # the offload here is inline: every window is ready at once
    assert all(len(data) <= STREAM_DATA_BYTES_MAX for data, _ in sent)
    together = [parts for _, parts in sent if parts is not None]
    assert together
    for parts in together:  # whole chunks as read, behind an empty head (it goes with the frame's header)
        assert parts[0] == b""
        assert [len(part) for part in parts[1:]] == [CHUNK_SIZE_BYTES_MIN] * (len(parts) - 1)


def _stored_refs(store: ChunkStore, count: int) -> tuple[list[ChunkRef], list[bytes]]:
    chunks = [bytes([index]) * CHUNK_SIZE_BYTES_MIN for index in range(count)]
    for data in chunks:
        store.put(chunk_id_of(data), data)
    return [ChunkRef(chunk_id_of(data), len(data)) for data in chunks], chunks


def test_a_get_reads_the_chunks_held_here_several_to_a_thread_hop(tmp_path):
    """A get's chunks held here are read ``LOCAL_READ_CHUNKS_MAX`` to a worker-thread trip, not one each."""
    coordinator, store, offload = _coordinator(tmp_path)
    count = 3 * coordinator.config.get_window_chunks + 1
    refs, chunks = _stored_refs(store, count)
    sent = []

    async def send(piece) -> None:
        sent.append(bytes(piece))

    trio.run(coordinator.stream_chunks, refs, send)
    assert b"".join(sent) == b"".join(chunks)
    assert offload.hops == -(-count // LOCAL_READ_CHUNKS_MAX)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_chunk_a_trip_cannot_read_here_is_fetched_on_its_own(tmp_path, damage):
    """One chunk of a trip missing or corrupt here does not fail the trip's others: it goes the
    way of any chunk (``fetch_chunk``: here the only replica, so the get fails on it), and a
    corrupt copy is quarantined and noted for repair."""
    coordinator, store, offload = _coordinator(tmp_path)
    refs, chunks = _stored_refs(store, LOCAL_READ_CHUNKS_MAX)
    bad = refs[2].chunk_id
    path = next(p for p in tmp_path.rglob(bad.hex()[2:]) if p.is_file())
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"z" * CHUNK_SIZE_BYTES_MIN)
    sent = []

    async def send(piece) -> None:
        sent.append(bytes(piece))

    with pytest.raises(QuorumError):
        trio.run(coordinator.stream_chunks, refs, send)
    assert b"".join(sent) == b"".join(chunks[:2])  # what came before it was sent
    assert not store.has(bad)
    assert (bad in coordinator.local.corrupt_pending) == (damage == "corrupt")
    assert offload.hops >= 2  # the trip, then the chunk on its own


def test_a_chunk_read_past_the_page_cache_is_the_chunk_and_a_bad_one_is_quarantined(tmp_path):
    """``ChunkStore.get_direct``: the bytes ``get`` gives, in the caller's aligned buffer (no page
    cached); a copy that no longer hashes to its id, or grew past it, is quarantined as by ``get``."""
    store = ChunkStore(tmp_path, 1 << 30, clock=SystemClock())
    buffer = mmap.mmap(-1, DIRECT_READ_BUFFER_BYTES)
    sizes = [1, DIRECT_BLOCK_BYTES, DIRECT_BLOCK_BYTES + 1, 1024 * 1024, CHUNK_SIZE_BYTES_MAX]
    for size in sizes:
        data = random.Random(size).randbytes(size)
        store.put(chunk_id_of(data), data)
        got = store.get_direct(chunk_id_of(data), buffer)
        assert got == data
        if isinstance(got, memoryview):  # a file system without O_DIRECT gives get's bytes
            assert got.obj is buffer
    with pytest.raises(ChunkMissing):
        store.get_direct(bytes(32), buffer)
    for damage in ("rotten", "grown"):
        data = damage.encode() * 1000
        chunk_id = chunk_id_of(data)
        store.put(chunk_id, data)
        path = next(p for p in tmp_path.rglob(chunk_id.hex()[2:]) if p.is_file())
        path.write_bytes(b"x" * len(data) if damage == "rotten" else data + b"!")
        with pytest.raises(ChunkCorrupt):
            store.get_direct(chunk_id, buffer)
        assert not store.has(chunk_id)  # quarantined
