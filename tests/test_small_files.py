"""Small files stored inline in their name entry, and the name index's group commit.

Unit tests drive the manifest, the name index, the local store and a one-node
coordinator directly; the real-daemon tests put, get, repair and remove inline
files on a 3-node network, and SIGKILL every daemon while puts are in flight to
check that every acknowledged put is still there afterwards.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
from pathlib import Path

import msgpack
import pytest
import trio

from p2pfs import errors, identity, testnet
from p2pfs.client import Client
from p2pfs.clock import SystemClock
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.hints import HINTS_FILE_NAME, HintStore
from p2pfs.replication.local import LocalStore
from p2pfs.storage import NAMES_FILE_NAME, ChunkStore, StorageFull, chunk_id_of, names
from p2pfs.storage.hlc import Timestamp
from p2pfs.storage.manifest import INLINE_BYTES_MAX, ChunkRef, Manifest, ManifestError
from p2pfs.storage.names import NameEntry, NameIndex, NameIndexDamaged

from test_put_cost import _coordinator
from testnet_helpers import CLI_TIMEOUT_S, Net, running_testnet, wait_for

WRITER = "a" * 64
CHUNK_BYTES = 4096
WAIT_S = 120.0


def _inline_manifest(content: bytes, created_ms: int = 5) -> Manifest:
    return Manifest((), len(content), chunk_id_of(content), created_ms, CHUNK_BYTES, content)


def _entry(name: str, wall_ms: int, manifest: Manifest | None) -> NameEntry:
    return NameEntry(name, Timestamp(wall_ms, 0), WRITER, manifest)


# --- the manifest ----------------------------------------------------------------------------


def test_an_inline_manifest_round_trips_as_format_2_and_a_chunked_one_keeps_format_1() -> None:
    content = os.urandom(3000)
    inline = _inline_manifest(content)
    encoded = inline.encode()
    assert msgpack.unpackb(encoded)[0] == 2
    assert Manifest.decode(encoded) == inline
    assert Manifest.decode(encoded).inline == content
    # A manifest without inline content is encoded exactly as before (format 1).
    chunk_id = chunk_id_of(content)
    chunked = Manifest((ChunkRef(chunk_id, 3000),), 3000, chunk_id, 5, CHUNK_BYTES)
    assert chunked.encode() == msgpack.packb([1, CHUNK_BYTES, 3000, chunk_id, 5, chunk_id], use_bin_type=True)


def test_inline_content_is_checked_against_the_file_hash_when_decoded() -> None:
    content = os.urandom(100)
    encoded = bytearray(_inline_manifest(content).encode())
    encoded[-1] ^= 0x01  # the last byte of the content
    with pytest.raises(ManifestError, match="does not match the file hash"):
        Manifest.decode(bytes(encoded))
    with pytest.raises(ManifestError, match="exceeds"):
        _inline_manifest(b"x" * (INLINE_BYTES_MAX + 1))
    with pytest.raises(ManifestError, match="lists no chunks"):
        Manifest((ChunkRef(chunk_id_of(content), 100),), 100, chunk_id_of(content), 5, CHUNK_BYTES, content)


def test_a_format_1_reader_refuses_an_inline_entry_cleanly() -> None:
    """What an older node does with an inline entry: its decoder knows format 1 only."""
    fields = msgpack.unpackb(_inline_manifest(b"hello").encode())
    assert fields[0] not in (1,), "an older reader checks `version != 1` and raises ManifestError"


# --- the name index ----------------------------------------------------------------------------


def test_the_index_holds_inline_files_byte_exact_and_counts_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / NAMES_FILE_NAME
    first, second = os.urandom(1000), os.urandom(2000)
    with NameIndex(path) as index:
        assert index.apply(_entry("a", 1, _inline_manifest(first)))
        assert index.apply(_entry("b", 1, _inline_manifest(second)))
        assert index.get("a").manifest.inline == first
        assert index.inline_bytes == 3000
        assert index.apply(_entry("a", 2, _inline_manifest(b"xy")))  # a new version replaces the bytes
        assert index.inline_bytes == 2002
        assert index.apply(_entry("b", 2, None))  # rm: the tombstone holds no content
        assert index.inline_bytes == 2
        assert not index.apply(_entry("b", 1, _inline_manifest(second)))  # older: ignored, not counted
        assert index.inline_bytes == 2
    with NameIndex(path) as index:  # counted again when opened
        assert index.inline_bytes == 2
        assert index.remove_if("a", Timestamp(2, 0), WRITER)  # a hand-off drops it
        assert index.inline_bytes == 0


def test_a_rotten_inline_row_is_refused_on_read_and_by_the_scrub(tmp_path: Path) -> None:
    path = tmp_path / NAMES_FILE_NAME
    with NameIndex(path) as index:
        for name in ("a", "b"):
            index.apply(_entry(name, 1, _inline_manifest(os.urandom(500))))
    conn = sqlite3.connect(path)
    for name in (b"a", b"b"):
        (blob,) = conn.execute("SELECT manifest FROM names WHERE name = ?", (name,)).fetchone()
        rotten = blob[:-1] + bytes([blob[-1] ^ 0x40])
        conn.execute("UPDATE names SET manifest = ? WHERE name = ?", (rotten, name))
    conn.commit()
    conn.close()
    with NameIndex(path) as index:
        with pytest.raises(NameIndexDamaged):
            index.get("a")
        assert index.check_rows(b"", 10) == (b"", 1)  # "b", found by the scrub
        assert index.get("b") is None
        assert index.rows_quarantined == 2
        assert index.inline_bytes == 0


def test_a_schema_2_index_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / NAMES_FILE_NAME
    conn = sqlite3.connect(path)  # a schema 2 index, as written before inline content
    conn.execute("CREATE TABLE names (name BLOB PRIMARY KEY, wall_ms INTEGER NOT NULL, logical INTEGER NOT NULL, "
                 "writer TEXT NOT NULL, manifest BLOB, client TEXT NOT NULL DEFAULT '')")
    conn.execute("INSERT INTO names VALUES (?, 1, 0, ?, NULL, '')", (b"old", WRITER))
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with NameIndex(path) as index:
        assert index.get("old") == _entry("old", 1, None)
        index.apply(_entry("new", 2, _inline_manifest(b"abc")))
        assert index.inline_bytes == 3
    with NameIndex(path) as index:
        assert index.get("new").manifest.inline == b"abc"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == names.SCHEMA_VERSION == 3
    conn.close()


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 30.0
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)  # polling threads of this process, under a deadline


def test_concurrent_name_writes_share_one_commit(tmp_path: Path, monkeypatch) -> None:
    writers = 10
    with NameIndex(tmp_path / NAMES_FILE_NAME) as index:
        batches: list[int] = []
        commit = NameIndex._commit_batch
        monkeypatch.setattr(NameIndex, "_commit_batch",
                            lambda self, conn, batch, own: batches.append(len(batch)) or commit(self, conn, batch, own))
        results: dict[int, bool] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, index.apply(_entry(f"n{i}", 1, _inline_manifest(bytes([i]) * 10))))) for i in range(writers)]
        with index._lock:  # as if a commit were under way: every writer queues behind it
            for thread in threads:
                thread.start()
            _wait_until(lambda: len(index._queue) == writers, "every write queued")
        for thread in threads:
            thread.join(30.0)
        assert batches == [writers]
        assert results == {i: True for i in range(writers)}
        assert all(index.get(f"n{i}").manifest.inline == bytes([i]) * 10 for i in range(writers))
        assert index.inline_bytes == 10 * writers


def test_a_failed_group_commit_fails_its_runner_and_the_others_commit_alone(tmp_path: Path, monkeypatch) -> None:
    with NameIndex(tmp_path / NAMES_FILE_NAME) as index:
        apply_one = NameIndex._apply_one
        failures = []

        def failing_once(self, conn, pending):
            if not failures:
                failures.append(pending.entry.name)
                raise sqlite3.OperationalError("disk I/O error")
            return apply_one(self, conn, pending)

        monkeypatch.setattr(NameIndex, "_apply_one", failing_once)
        outcomes: dict[str, object] = {}

        def write(name: str) -> None:
            try:
                outcomes[name] = index.apply(_entry(name, 1, _inline_manifest(name.encode())))
            except (names.StorageError, sqlite3.Error) as exc:
                outcomes[name] = exc

        threads = [threading.Thread(target=write, args=(f"n{i}",)) for i in range(5)]
        with index._lock:
            for thread in threads:
                thread.start()
            _wait_until(lambda: len(index._queue) == 5, "every write queued")
        for thread in threads:
            thread.join(30.0)
        failed = [name for name, outcome in outcomes.items() if isinstance(outcome, Exception)]
        assert len(failed) == 1  # the write whose thread ran the batch; the others were retried alone
        assert sorted(name for name, outcome in outcomes.items() if outcome is True) == sorted(
            set(outcomes) - set(failed))
        assert all(index.get(name) is not None for name in outcomes if name not in failed)
        assert index.inline_bytes == sum(len(name) for name in outcomes if name not in failed)


# --- capacity -------------------------------------------------------------------------------


def test_inline_content_counts_against_the_nodes_capacity(tmp_path: Path) -> None:
    clock = SystemClock()
    chunks = ChunkStore(tmp_path, 10_000, clock=clock)
    local = LocalStore(chunks, NameIndex(tmp_path / NAMES_FILE_NAME), HintStore(tmp_path / HINTS_FILE_NAME), clock)
    now_ms = clock.wall_ms()
    assert local.apply(_entry("a", now_ms, _inline_manifest(b"x" * 6000)), "")
    assert chunks.used_bytes == 6000
    with pytest.raises(StorageFull):
        local.apply(_entry("b", now_ms, _inline_manifest(b"y" * 5000)), "")
    data = b"z" * 5000
    with pytest.raises(StorageFull):  # a chunk sees the inline bytes too
        chunks.put(chunk_id_of(data), data)
    assert local.apply(_entry("a", now_ms + 1, None), "")  # rm frees the room at once
    assert chunks.used_bytes == 0
    assert chunks.put(chunk_id_of(data), data)
    local.names.close()
    local.hints.close()


# --- the coordinator, one node -----------------------------------------------------------------


async def _pieces(data: bytes, piece_bytes: int = 1000):
    for offset in range(0, len(data), piece_bytes):
        yield data[offset : offset + piece_bytes]


async def _get(coordinator, name: str) -> bytes:
    entry = await coordinator.read_name(name)
    received = bytearray()

    async def send(data) -> None:  # bytes, or several chunks in one piece (net.Scattered)
        received.extend(bytes(data))

    await coordinator.stream_file(entry.manifest, 0, send)
    return bytes(received)


async def test_a_put_shorter_than_a_chunk_is_stored_inline_and_a_longer_one_in_chunks(tmp_path: Path) -> None:
    coordinator, store = _coordinator(tmp_path)  # chunks of 4 KiB, inline up to 16 KiB by default
    assert coordinator.config.inline_file_bytes_max >= CHUNK_BYTES
    small, exact, larger = os.urandom(CHUNK_BYTES - 1), os.urandom(CHUNK_BYTES), os.urandom(CHUNK_BYTES + 1)
    for name, data in (("small", small), ("exact", exact), ("larger", larger)):
        await coordinator.put(name, _pieces(data), len(data))
        assert await _get(coordinator, name) == data
    assert (await coordinator.read_name("small")).manifest.inline == small
    assert len(store.puts) == 1 + 2  # the chunks of "exact" and of "larger"; none for "small"
    assert coordinator.local.names.inline_bytes == len(small)
    await coordinator.remove("small")
    assert (await coordinator.read_name("small")).manifest is None
    assert coordinator.local.names.inline_bytes == 0


async def test_inline_storage_can_be_turned_off(tmp_path: Path) -> None:
    coordinator, store = _coordinator(tmp_path)
    coordinator.config = ReplicationConfig(chunk_size_bytes=CHUNK_BYTES, inline_file_bytes_max=0)
    await coordinator.put("f", _pieces(b"tiny"), 4)
    assert (await coordinator.read_name("f")).manifest.inline == b""
    assert len(store.puts) == 1
    assert await _get(coordinator, "f") == b"tiny"


# --- real daemons ---------------------------------------------------------------------------------

OVERRIDES = {"replication": {"anti_entropy_interval_s": 1.0, "scrub_bytes_per_s": 64 * 1024 * 1024}}


def _client_identity(net: Net) -> identity.Identity:
    return identity.load_identity(net.directory / testnet.CLIENT_DIR)


def _rows(net: Net, node: str, *, read_only: bool = True) -> dict[bytes, tuple]:
    """A node's index rows, read beside the running daemon (WAL lets a reader in), or
    (``read_only=False``) after a crash, recovering its write-ahead log as the daemon would."""
    path = net.directory / node / "data" / NAMES_FILE_NAME
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True) if read_only else sqlite3.connect(path)
    try:
        return {row[0]: row[1:] for row in conn.execute(
            "SELECT name, wall_ms, logical, writer, manifest, inline_bytes FROM names")}
    finally:
        conn.close()


def _chunk_files(net: Net, node: str) -> int:
    return sum(len(files) for _, _, files in os.walk(net.directory / node / "data" / "chunks"))


def test_inline_files_on_real_daemons_put_get_repair_and_rm(tmp_path: Path) -> None:
    files = {f"s/{size}": os.urandom(size) for size in (1, 100, 4096, 16 * 1024)}
    with running_testnet(tmp_path / "net", nodes=3, overrides=OVERRIDES) as net:
        ident = _client_identity(net)
        addresses = {name: process.address for name, process in net.status().items()}

        async def put_all() -> None:
            with trio.fail_after(CLI_TIMEOUT_S):
                async with Client.connect(ident, addresses["node1"]) as client:
                    for name, data in files.items():
                        await client.put(io.BytesIO(data), name, len(data))

        async def get(node: str, name: str) -> bytes:
            sink = io.BytesIO()
            with trio.fail_after(CLI_TIMEOUT_S):
                async with Client.connect(ident, addresses[node]) as client:
                    await client.get(name, sink)
            return sink.getvalue()

        trio.run(put_all)
        source = tmp_path / "by-path"  # the CLI puts a path through the resumable put
        source.write_bytes(os.urandom(5000))
        net.cli("put", str(source), "--name", "s/path", node="node3")
        files["s/path"] = source.read_bytes()
        for name, data in files.items():
            assert trio.run(get, "node2", name) == data
        assert sum(_chunk_files(net, node) for node in net.names) == 0
        size_total = sum(map(len, files.values()))
        wait_for(lambda: all(net.json("status", node=n)["used_bytes"] == size_total for n in net.names),
                 timeout_s=WAIT_S, what="every replica counting the inline bytes")

        # node3 loses one row and has another rot; the scrub and anti-entropy bring both back.
        good = _rows(net, "node1")
        net.stop("node3")
        path = net.directory / "node3" / "data" / NAMES_FILE_NAME
        conn = sqlite3.connect(path)
        conn.execute("DELETE FROM names WHERE name = ?", (b"s/100",))
        blob = good[b"s/4096"][3]
        conn.execute("UPDATE names SET manifest = ? WHERE name = ?", (blob[:-1] + bytes([blob[-1] ^ 1]), b"s/4096"))
        conn.commit()
        conn.close()
        net.start("node3")
        wait_for(lambda: _rows(net, "node3") == good, timeout_s=WAIT_S, what="node3's index repaired byte-exact")
        net.stop("node1")  # node3 must now answer the read quorum with node2
        for name, data in files.items():
            assert trio.run(get, "node3", name) == data
        net.start("node1")

        net.cli("rm", "s/4096", node="node2")
        assert net.cli("get", "s/4096", "-o", str(tmp_path / "out"), node="node3", check=False).returncode != 0
        wait_for(lambda: all(net.json("status", node=n)["used_bytes"] == size_total - 4096 for n in net.live()),
                 timeout_s=WAIT_S, what="the removed file's bytes uncounted")


PUTTERS = 16
ACKED_BEFORE_KILL = 150


def test_every_acknowledged_put_survives_sigkill_of_every_daemon(tmp_path: Path) -> None:
    """Group commit acknowledges a write only after the COMMIT holding it: kill -9 loses none."""
    with running_testnet(tmp_path / "net", nodes=3) as net:
        ident = _client_identity(net)
        addresses = [process.address for process in net.status().values()]
        acked: dict[str, bytes] = {}

        async def main() -> None:
            killed = trio.Event()

            async def putter(i: int) -> None:
                async with Client.connect(ident, addresses[i % len(addresses)]) as client:
                    for j in range(10_000):
                        name, data = f"k/{i}/{j}", os.urandom(4096)
                        try:
                            await client.put(io.BytesIO(data), name, len(data))
                        except errors.P2pfsError:
                            assert killed.is_set(), f"put {name} failed before the daemons were killed"
                            return
                        acked[name] = data
                        if len(acked) >= ACKED_BEFORE_KILL and not killed.is_set():
                            killed.set()
                            for node in net.names:  # SIGKILL while the other puts are in flight
                                net.kill(node)

            with trio.fail_after(CLI_TIMEOUT_S * 2):
                async with trio.open_nursery() as nursery:
                    for i in range(PUTTERS):
                        nursery.start_soon(putter, i)

        trio.run(main)
        assert len(acked) >= ACKED_BEFORE_KILL
        assert not net.live()
        rows = {node: _rows(net, node, read_only=False) for node in net.names}
        for name, data in acked.items():  # in the files themselves: at least w = 2 of 3
            holding = [node for node in net.names if name.encode() in rows[node]]
            assert len(holding) >= 2, f"{name} acknowledged but held by {holding}"
            assert all(Manifest.decode(rows[node][name.encode()][3]).inline == data for node in holding)

        async def read_back() -> None:
            with trio.fail_after(CLI_TIMEOUT_S * 2):
                async with Client.connect(ident, addresses[0]) as client:
                    for name, data in acked.items():
                        sink = io.BytesIO()
                        await client.get(name, sink)
                        assert sink.getvalue() == data, name

        for node in net.names:
            net.start(node)
        wait_for(lambda: net.json("status", node="node1")["members_alive"] == 3, timeout_s=WAIT_S,
                 what="the nodes back")
        trio.run(read_back)
