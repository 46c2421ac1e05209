"""What a put costs the coordinator: each chunk's bytes hashed once there and not copied on the way.

A client sends one chunk-sized piece per chunk, and the coordinator's own
replica trusts the id the coordinator has just computed from those bytes; a
peer still hashes every chunk it receives (``test_hostile_messages`` sends it
wrong ids).
"""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
import trio

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.hints import HINTS_FILE_NAME, HintStore
from p2pfs.replication.local import LocalReplica, LocalStore
from p2pfs.replication.replicas import RemoteReplica, Replicas
from p2pfs.replication.view import RingView
from p2pfs.storage import NAMES_FILE_NAME, ChunkStore, NameIndex, chunk_id_of
from p2pfs.storage import chunkstore
from p2pfs.storage.chunkstore import ChunkMismatch
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MIN

ME, PEER = "a" * 64, "b" * 64
CHUNK_BYTES = CHUNK_SIZE_BYTES_MIN


async def _inline(fn, *args):
    return fn(*args)


def _view(node_ids: tuple[str, ...], config: ReplicationConfig) -> RingView:
    members = [Member(n, Address("127.0.0.1", 7000 + i), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)
               for i, n in enumerate(node_ids)]
    return RingView(ME, config, lambda: members, SystemClock())


class CountingStore(ChunkStore):
    """A chunk store that records what each put was handed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.puts: list[tuple[bytes, object, bool]] = []

    def put(self, chunk_id, data, *, hashed=False):
        self.puts.append((chunk_id, data, hashed))
        return super().put(chunk_id, data, hashed=hashed)


def _coordinator(tmp_path) -> tuple[Coordinator, CountingStore]:
    config = ReplicationConfig(chunk_size_bytes=CHUNK_BYTES)
    clock = SystemClock()
    store = CountingStore(tmp_path, 1 << 30, clock=clock)
    local = LocalStore(store, NameIndex(tmp_path / NAMES_FILE_NAME), HintStore(tmp_path / HINTS_FILE_NAME), clock)
    view = _view((ME,), config)
    replicas = Replicas(LocalReplica(ME, local, _inline), None, view, _inline)
    coordinator = Coordinator(node_id=ME, config=config, view=view, replicas=replicas, local=local, clock=clock,
                              offload=_inline)
    return coordinator, store


def test_chunk_sized_pieces_reach_the_store_uncopied_and_hashed_once(tmp_path, monkeypatch):
    coordinator, store = _coordinator(tmp_path)
    pieces = [bytes([i]) * CHUNK_BYTES for i in range(3)]
    hashed_at_store: list[bytes] = []
    real_chunk_id_of = chunkstore.chunk_id_of
    monkeypatch.setattr(chunkstore, "chunk_id_of", lambda data: hashed_at_store.append(data) or real_chunk_id_of(data))

    async def stream():
        for piece in pieces:
            yield piece

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.repairs.run)
            entry = await coordinator.put("f", stream(), 3 * CHUNK_BYTES)
            nursery.cancel_scope.cancel()
        return entry

    entry = trio.run(main)
    assert [ref.chunk_id for ref in entry.manifest.chunks] == [chunk_id_of(p) for p in pieces]
    assert [data for _, data, _ in store.puts] == pieces
    assert all(data is piece for (_, data, _), piece in zip(store.puts, pieces))  # not copied
    assert all(hashed for _, _, hashed in store.puts)
    assert hashed_at_store == []  # the coordinator's hash was the only one
    assert [store.get(chunk_id_of(p)) for p in pieces] == pieces


def test_pieces_of_other_sizes_are_cut_into_the_same_chunks(tmp_path):
    coordinator, store = _coordinator(tmp_path)
    data = bytes(range(256)) * (CHUNK_BYTES * 5 // 2 // 256)  # two and a half chunks
    sizes = (100, CHUNK_BYTES, CHUNK_BYTES - 100, 7, len(data))

    async def stream():
        offset = 0
        for size in sizes:
            if offset < len(data):
                yield data[offset : offset + size]
                offset += size

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.repairs.run)
            entry = await coordinator.put("f", stream(), len(data))
            nursery.cancel_scope.cancel()
        return entry

    entry = trio.run(main)
    expected = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    assert [ref.chunk_id for ref in entry.manifest.chunks] == [chunk_id_of(c) for c in expected]
    assert sorted(data for _, data, _ in store.puts) == sorted(expected)


def test_a_store_told_the_bytes_were_hashed_skips_the_hash_and_otherwise_checks(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path, 1 << 20, clock=SystemClock())
    data = b"x" * 1000
    with pytest.raises(ChunkMismatch):
        store.put(b"\x00" * 32, data)
    monkeypatch.setattr(chunkstore, "chunk_id_of", lambda data: pytest.fail("hashed again"))
    assert store.put(chunk_id_of(data), data, hashed=True) is True
    monkeypatch.undo()
    assert store.get(chunk_id_of(data)) == data


def test_a_peer_is_sent_the_chunk_whether_or_not_this_node_hashed_it():
    sent: list[dm.StoreChunk] = []

    class Endpoint:
        async def request(self, address, msg, *, timeout_s, node_id=None, body=None):
            sent.append(msg)
            return dm.StoreChunkReply(True)

    config = ReplicationConfig()
    remote = RemoteReplica(PEER, Endpoint(), _view((ME, PEER), config), _inline)
    data = b"y" * 1000
    trio.run(lambda: remote.store_chunk(chunk_id_of(data), data, "", hashed=True))
    assert sent == [dm.StoreChunk(chunk_id_of(data), data, "")]  # nothing about hashing crosses the wire


# Chunk-sized buffers made and dropped 8 at a time (a window), on the main thread and two
# workers, as a daemon does; prints the page faults it took.
_CHURN = textwrap.dedent("""
    import os, resource, sys, threading
    if sys.argv[1] == "keep":
        from p2pfs.replication.memory import keep_freed_buffers
        assert keep_freed_buffers()

    def churn():
        for round in range(40):
            window = [os.urandom(16) * (65536 + round) for _ in range(8)]
            del window

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    workers = [threading.Thread(target=churn) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _churn_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_kept_buffers_spare_the_page_faults_of_fresh_ones():
    fresh, kept = _churn_faults("fresh"), _churn_faults("keep")
    # 120 windows of 8 MiB: about 256 faults per fresh 1 MiB buffer, a few per reused one.
    assert fresh > 100_000
    assert kept < fresh / 4
