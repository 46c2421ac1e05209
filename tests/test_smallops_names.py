"""A replica's name read without a worker-thread hop (``NameIndex.get_nowait``; issue 14, small files).

What must hold: the answer is ``get``'s (present, absent, tombstone, inline content); a write
acknowledged before the read is seen; the read never waits for the writer (which holds the
index lock through its fsync); anything unusual (a row that does not decode, a large
manifest, a rebuilt file) is left to ``get`` in a worker thread, which quarantines damage
as before. And the two callers, the local replica and the ``GetName`` handler, use it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from p2pfs.replication import messages as dm
from p2pfs.replication.errors import LocalFailure
from p2pfs.replication.handlers import ReplicaHandlers
from p2pfs.replication.local import LocalReplica
from p2pfs.storage import NAMES_FILE_NAME, chunk_id_of
from p2pfs.storage.hlc import Timestamp
from p2pfs.storage.manifest import ChunkRef, Manifest
from p2pfs.storage.names import NOWAIT_MANIFEST_BYTES_MAX, NameEntry, NameIndex, NameIndexDamaged, NameReadDeferred

WRITER = "b" * 64
CHUNK_BYTES = 4096
THREAD_WAIT_S = 30.0


def _inline(content: bytes) -> Manifest:
    return Manifest((), len(content), chunk_id_of(content), 5, CHUNK_BYTES, content)


def _entry(name: str, wall_ms: int, manifest: Manifest | None) -> NameEntry:
    return NameEntry(name, Timestamp(wall_ms, 0), WRITER, manifest)


@pytest.fixture
def index(tmp_path: Path):
    with NameIndex(tmp_path / NAMES_FILE_NAME) as names:
        yield names


def test_it_answers_as_get_does(index: NameIndex) -> None:
    index.apply(_entry("file", 1, _inline(os.urandom(4096))))
    index.apply(_entry("gone", 1, _inline(b"x")))
    index.apply(_entry("gone", 2, None))
    for name in ("file", "gone", "never"):
        assert index.get_nowait(name) == index.get(name)
    assert index.get_nowait("gone").manifest is None
    assert index.get_nowait("never") is None


def test_it_sees_each_write_once_acknowledged(index: NameIndex) -> None:
    for version in range(1, 20):
        entry = _entry("moving", version, _inline(os.urandom(100)))
        index.apply(entry)
        assert index.get_nowait("moving") == entry


def test_it_does_not_wait_for_a_writer_holding_the_index(index: NameIndex) -> None:
    """A group commit holds the index lock through its fsync; ``get`` waits for it, this does not."""
    entry = _entry("file", 1, _inline(b"content"))
    index.apply(entry)
    answered: list[NameEntry | None] = []
    with index._lock:  # what a writer holds while it commits
        reader = threading.Thread(target=lambda: answered.append(index.get_nowait("file")))
        reader.start()
        reader.join(THREAD_WAIT_S)
        assert not reader.is_alive()
    assert answered == [entry]


def test_an_uncommitted_write_is_not_seen(index: NameIndex) -> None:
    old = _entry("file", 1, _inline(b"old"))
    index.apply(old)
    with index._lock:
        index._conn.execute("BEGIN IMMEDIATE")
        index._conn.execute("UPDATE names SET wall_ms = 99 WHERE name = ?", (b"file",))
        assert index.get_nowait("file") == old
        index._conn.execute("ROLLBACK")


def test_a_damaged_row_is_left_to_get_which_quarantines_it(index: NameIndex, tmp_path: Path) -> None:
    index.apply(_entry("rotten", 1, _inline(os.urandom(500))))
    conn = sqlite3.connect(tmp_path / NAMES_FILE_NAME)
    (blob,) = conn.execute("SELECT manifest FROM names WHERE name = ?", (b"rotten",)).fetchone()
    conn.execute("UPDATE names SET manifest = ? WHERE name = ?", (blob[:-1] + bytes([blob[-1] ^ 0x40]), b"rotten"))
    conn.commit()
    conn.close()
    with pytest.raises(NameReadDeferred):
        index.get_nowait("rotten")
    assert index.rows_quarantined == 0  # it only reads
    with pytest.raises(NameIndexDamaged):
        index.get("rotten")
    assert index.get_nowait("rotten") is None


def test_a_manifest_column_of_the_wrong_type_is_left_to_get(index: NameIndex, tmp_path: Path) -> None:
    index.apply(_entry("odd", 1, _inline(b"odd")))
    conn = sqlite3.connect(tmp_path / NAMES_FILE_NAME)
    conn.execute("UPDATE names SET manifest = 5 WHERE name = ?", (b"odd",))
    conn.commit()
    conn.close()
    with pytest.raises(NameReadDeferred):
        index.get_nowait("odd")


def test_a_large_manifest_is_left_to_get(index: NameIndex) -> None:
    chunks = tuple(ChunkRef(os.urandom(32), CHUNK_BYTES) for _ in range(NOWAIT_MANIFEST_BYTES_MAX // 32))
    large = Manifest(chunks, len(chunks) * CHUNK_BYTES, os.urandom(32), 5, CHUNK_BYTES)
    assert len(large.encode()) > NOWAIT_MANIFEST_BYTES_MAX
    index.apply(_entry("large", 1, large))
    with pytest.raises(NameReadDeferred, match="manifest"):
        index.get_nowait("large")
    assert index.get("large").manifest == large


def test_after_a_rebuild_it_reads_the_new_file(index: NameIndex) -> None:
    entry = _entry("kept", 1, _inline(b"kept"))
    index.apply(entry)
    assert index.get_nowait("kept") == entry  # its connection is open on the old file now
    with index._lock:
        index._rebuild("a test")
    later = _entry("after", 1, _inline(b"after"))
    index.apply(later)  # in the new file only
    assert index.get_nowait("after") == later
    assert index.get_nowait("kept") == entry


class _Local:
    """What the replica and the handler use of ``LocalStore``: the name index."""

    def __init__(self, names: NameIndex) -> None:
        self.names = names


async def _no_offload(fn, *args):
    raise AssertionError(f"a worker-thread hop for {fn}")


async def _inline_offload(fn, *args):
    return fn(*args)


async def test_the_local_replica_reads_a_name_without_a_hop(index: NameIndex) -> None:
    entry = _entry("file", 1, _inline(b"content"))
    index.apply(entry)
    replica = LocalReplica("c" * 64, _Local(index), _no_offload)
    assert await replica.get_name("file") == entry
    assert await replica.get_name("never") is None


async def test_the_local_replica_hands_a_damaged_row_to_get(index: NameIndex, tmp_path: Path) -> None:
    index.apply(_entry("rotten", 1, _inline(b"rotten")))
    conn = sqlite3.connect(tmp_path / NAMES_FILE_NAME)
    conn.execute("UPDATE names SET writer = 'not hex' WHERE name = ?", (b"rotten",))
    conn.commit()
    conn.close()
    replica = LocalReplica("c" * 64, _Local(index), _inline_offload)
    with pytest.raises(LocalFailure, match="damaged"):
        await replica.get_name("rotten")
    assert index.rows_quarantined == 1


class _Request:
    def __init__(self, msg) -> None:
        self.msg = msg


async def test_the_get_name_handler_answers_without_a_hop(index: NameIndex) -> None:
    entry = _entry("file", 1, _inline(b"content"))
    index.apply(entry)
    handlers = ReplicaHandlers(_Local(index), lambda e: None, _no_offload)
    assert (await handlers.on_get_name(_Request(dm.GetName("file")))).entry == entry.encode()
    assert (await handlers.on_get_name(_Request(dm.GetName("never")))).entry is None
