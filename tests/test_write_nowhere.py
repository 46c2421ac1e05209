"""A write that has no replica to go to fails; it is never acknowledged as written."""

from __future__ import annotations

import pytest
import trio

from p2pfs.clock import SystemClock
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.hints import HINTS_FILE_NAME, HintStore
from p2pfs.replication.local import LocalReplica, LocalStore
from p2pfs.replication.quorum import QuorumError
from p2pfs.replication.replicas import Replicas
from p2pfs.replication.view import RingView
from p2pfs.storage import NAMES_FILE_NAME, ChunkStore, NameIndex
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MIN

ME = "a" * 64


async def _inline(fn, *args):
    return fn(*args)


def test_a_put_with_an_empty_ring_fails_and_stores_nothing(tmp_path):
    # An empty ring gives a quorum of min(w, 0) = 0, which no answer at all would meet.
    config = ReplicationConfig(chunk_size_bytes=CHUNK_SIZE_BYTES_MIN)
    clock = SystemClock()
    store = ChunkStore(tmp_path, 1 << 30, clock=clock)
    local = LocalStore(store, NameIndex(tmp_path / NAMES_FILE_NAME), HintStore(tmp_path / HINTS_FILE_NAME), clock)
    view = RingView(ME, config, lambda: [], clock)
    replicas = Replicas(LocalReplica(ME, local, _inline), None, view, _inline)
    coordinator = Coordinator(node_id=ME, config=config, view=view, replicas=replicas, local=local, clock=clock,
                              offload=_inline)

    async def stream():
        yield b"x" * (2 * CHUNK_SIZE_BYTES_MIN)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.repairs.run)
            with pytest.raises(QuorumError, match="no replica"):
                await coordinator.put("f", stream(), 2 * CHUNK_SIZE_BYTES_MIN)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert list(store.iter_ids()) == []
    assert local.names.get("f") is None
