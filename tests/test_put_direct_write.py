"""A chunk is written past the page cache (O_DIRECT) through a bounded pool of aligned buffers.

Written through the page cache, every chunk byte a node stores is first copied by the kernel
into a fresh cache page: a quarter of a put replica's CPU samples (docs/BENCHMARKS.md). The
store copies it into a reused page-aligned buffer instead and hands the disk that buffer. What
must not change: the file holds exactly the chunk's bytes whatever its length (a direct write
is padded to a whole block, then cut back), it is fsynced before the rename, and a file system
that refuses direct I/O gets the plain write.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from p2pfs.clock import SystemClock
from p2pfs.storage import ChunkStore, chunk_id_of
from p2pfs.storage import chunkstore
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MAX

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux's")


def _opens(monkeypatch, refuse_direct: bool = False) -> list[int]:
    """Record the flags of every os.open the store makes; optionally refuse O_DIRECT (EINVAL)."""
    flags_seen: list[int] = []
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        flags_seen.append(flags)
        if refuse_direct and flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(chunkstore.os, "open", open_)
    return flags_seen


@pytest.mark.parametrize("size_bytes", [1, 511, 4095, 4096, 4097, 1024 * 1024, 1024 * 1024 + 3, CHUNK_SIZE_BYTES_MAX])
def test_a_chunk_written_directly_holds_exactly_its_bytes(tmp_path, monkeypatch, size_bytes):
    try:
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        pytest.skip("this file system refuses O_DIRECT")
    os.unlink(tmp_path / "probe")
    store = ChunkStore(tmp_path, 1 << 30, clock=SystemClock())
    flags_seen = _opens(monkeypatch)
    data = os.urandom(size_bytes)
    assert store.put(chunk_id_of(data), data) is True
    assert any(flags & os.O_DIRECT for flags in flags_seen)
    assert store.size_of(chunk_id_of(data)) == size_bytes
    assert store.get(chunk_id_of(data)) == data
    fsyncs: list[int] = []
    monkeypatch.setattr(chunkstore.os, "fsync", lambda fd: fsyncs.append(fd))
    other = os.urandom(size_bytes)
    store.put(chunk_id_of(other), other)
    assert len(fsyncs) == 2  # the file, then its directory: durable as before


def test_a_file_system_that_refuses_direct_io_gets_plain_writes(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path, 1 << 30, clock=SystemClock())
    flags_seen = _opens(monkeypatch, refuse_direct=True)
    chunks = [os.urandom(5000 + i) for i in range(3)]
    for data in chunks:
        assert store.put(chunk_id_of(data), data) is True
    assert [store.get(chunk_id_of(data)) for data in chunks] == chunks
    assert sum(bool(flags & os.O_DIRECT) for flags in flags_seen) == 1  # asked once, then never again


def test_writers_share_at_most_the_buffers_the_pool_holds(tmp_path):
    store = ChunkStore(tmp_path, 1 << 30, clock=SystemClock())
    writers = chunkstore.DIRECT_BUFFERS_MAX * 2
    chunks = [[os.urandom(64 * 1024 + w * 7 + i) for i in range(4)] for w in range(writers)]
    failures: list[BaseException] = []

    def write(mine: list[bytes]) -> None:
        try:
            for data in mine:
                store.put(chunk_id_of(data), data)
        except BaseException as exc:  # noqa: BLE001 (reported below, in the test's thread)
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(mine,)) for mine in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert all(store.get(chunk_id_of(data)) == data for mine in chunks for data in mine)
    assert store._direct_buffers_made <= chunkstore.DIRECT_BUFFERS_MAX
