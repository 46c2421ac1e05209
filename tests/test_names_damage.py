"""A damaged name index: bad rows and pages are quarantined, counted, and never crash a caller;
a full or read-only index fails over to another replica (a simulated cluster)."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import trio

from p2pfs.clock import SystemClock
from p2pfs.membership import MembershipConfig
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.hints import HINTS_FILE_NAME, HintStore
from p2pfs.replication.local import LocalStore
from p2pfs.replication.scrub import SCRUB_NAME_ROWS_PER_ROUND, Scrubber
from p2pfs.sim.data import DataCluster
from p2pfs.sim.membership import sim_address, wait_until
from p2pfs.sim.network import SEED_ENV, SimNetwork, run_simulation, sim_seed
from p2pfs.storage import ChunkStore, StorageError, StorageFull
from p2pfs.storage.hlc import Timestamp
from p2pfs.storage.manifest import ChunkRef, Manifest, chunk_id_of
from p2pfs.storage.names import NAMES_FILE_NAME, QUARANTINE_DIR_NAME, NameEntry, NameIndex, NameIndexDamaged

from damage_helpers import break_manifest, insert_invalid_utf8_row, overwrite_page, page_count

WRITER = "a" * 64
ENTRIES = 300


def _entry(i: int) -> NameEntry:
    content = b"%d" % i
    manifest = Manifest((ChunkRef(chunk_id_of(content), len(content)),), len(content), chunk_id_of(content), 0, 4096)
    return NameEntry(f"file-{i:04d}-" + "x" * 40, Timestamp(1000 + i, 0), WRITER, manifest)


def _filled(directory: Path, count: int = ENTRIES) -> Path:
    path = directory / NAMES_FILE_NAME
    with NameIndex(path) as index:
        for i in range(count):
            index.apply(_entry(i))
    return path


def _rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM names").fetchone()[0]
    finally:
        conn.close()


def test_a_row_whose_name_is_not_utf8_is_removed_counted_and_skipped(tmp_path, caplog):
    path = _filled(tmp_path, 5)
    insert_invalid_utf8_row(path, WRITER)
    with NameIndex(path) as index:
        assert [s[0] for s in index.summaries()] == [_entry(i).name for i in range(5)]
        assert index.rows_quarantined == 1
        assert index.damage_count == 1
        assert [e.name for e in index.list()] == [_entry(i).name for i in range(5)]
        assert index.rows_quarantined == 1  # removed once, not found again
    assert _rows(path) == 5
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "undecodable" in warnings[0].getMessage()


def test_a_row_whose_manifest_does_not_decode_fails_its_get_once_then_reads_as_missing(tmp_path):
    path = _filled(tmp_path, 5)
    name = _entry(2).name
    break_manifest(path, name)
    with NameIndex(path) as index:
        with pytest.raises(NameIndexDamaged, match="damaged"):
            index.get(name)
        assert index.get(name) is None
        assert index.rows_quarantined == 1
        assert index.get(_entry(3).name) == _entry(3)


def test_listing_skips_and_removes_a_row_that_does_not_decode(tmp_path):
    path = _filled(tmp_path, 40)
    break_manifest(path, _entry(33).name)
    with NameIndex(path) as index:
        assert [e.name for e in index.list()] == [_entry(i).name for i in range(40) if i != 33]
        assert index.rows_quarantined == 1


def test_a_new_version_replaces_a_row_that_does_not_decode(tmp_path):
    path = _filled(tmp_path, 3)
    break_manifest(path, _entry(1).name)
    with NameIndex(path) as index:
        old = _entry(1)
        assert index.apply(NameEntry(old.name, Timestamp(1, 0), WRITER, None))  # older, yet the held row is void
        assert index.get(old.name) == NameEntry(old.name, Timestamp(1, 0), WRITER, None)
        assert index.rows_quarantined == 1


@pytest.mark.parametrize("page", [1, 2, 3, -1])
def test_a_damaged_page_is_quarantined_and_the_index_rebuilt_from_what_reads(tmp_path, caplog, page):
    path = _filled(tmp_path)
    overwrite_page(path, page_count(path) if page == -1 else page, seed=page)
    with NameIndex(path) as index:
        assert index.rebuilds == 1
        kept = index.summaries()
        assert len(kept) <= ENTRIES
        for name, version, writer, _ in kept:  # whatever was kept is whole
            assert index.get(name) == _entry(version.wall_ms - 1000)
        assert index.apply(_entry(ENTRIES))
        assert index.get(_entry(ENTRIES).name) == _entry(ENTRIES)
    assert (tmp_path / QUARANTINE_DIR_NAME / f"{NAMES_FILE_NAME}.0").is_file()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    conn.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "quarantine" in warnings[0]


def test_a_page_damaged_while_open_is_found_by_the_scrub_and_rebuilt(tmp_path):
    path = tmp_path / NAMES_FILE_NAME
    with NameIndex(path) as index:
        for i in range(ENTRIES):
            index.apply(_entry(i))
        overwrite_page(path, 5, seed=5)
        after, found_bad, calls = b"", 0, 0
        with pytest.raises(NameIndexDamaged):
            while True:
                calls += 1
                after, bad = index.check_rows(after, 64)
                found_bad += bad
                assert calls < 100
                if not after:
                    break
        assert index.rebuilds == 1
        assert index.apply(_entry(ENTRIES))
        assert index.check_rows(b"", ENTRIES + 1) == (b"", 0)


def test_the_scrub_check_decodes_every_row_and_removes_the_bad_ones(tmp_path):
    path = _filled(tmp_path, 100)
    break_manifest(path, _entry(10).name)
    break_manifest(path, _entry(90).name)
    with NameIndex(path) as index:
        after, bad_total = b"", 0
        for _ in range(10):
            after, bad = index.check_rows(after, 30)
            bad_total += bad
            if not after:
                break
        assert after == b"" and bad_total == 2
        assert index.rows_quarantined == 2
        assert len(index.summaries()) == 98


def test_a_full_index_is_storage_full_and_a_read_only_one_a_storage_error(tmp_path):
    with NameIndex(tmp_path / NAMES_FILE_NAME) as index:
        index.apply(_entry(0))
        # The index's own connection: SQLite's way to make a file "full" or read-only without a disk.
        pages = index._conn.execute("PRAGMA page_count").fetchone()[0]
        index._conn.execute(f"PRAGMA max_page_count = {pages}")
        chunks = tuple(ChunkRef(chunk_id_of(b"%d" % i), 4096) for i in range(2000))  # ~70 KB: new pages
        big = NameEntry("big", Timestamp(5, 0), WRITER, Manifest(chunks, 2000 * 4096, chunk_id_of(b""), 0, 4096))
        with pytest.raises(StorageFull):
            index.apply(big)
        index._conn.execute("PRAGMA query_only = 1")
        with pytest.raises(StorageError) as raised:
            index.apply(_entry(1))
        assert not isinstance(raised.value, StorageFull)
        assert index.get(_entry(0).name) == _entry(0)  # reads go on
        assert index.damage_count == 0


# -- a simulated cluster: a replica whose index cannot be written ---------------------------------

NODES = 4
REPLICATION = ReplicationConfig(
    chunk_size_bytes=4096, replica_timeout_s=2.0, replica_backoff_s=2.0, dead_grace_s=20.0,
    hint_delivery_interval_s=1.0, anti_entropy_interval_s=5.0, scrub_bytes_per_s=0,
    gc_interval_s=10_000.0, leave_handoff_timeout_s=30.0,
)


@pytest.fixture
def seed(request):
    value = sim_seed(7301)
    request.node.add_report_section("call", "simulation seed", f"seed {value}; replay with {SEED_ENV}={value}")
    return value


def test_puts_through_a_node_whose_index_is_read_only_reach_w_through_stand_ins(tmp_path, seed):
    files = {f"f{i}": random.Random(seed + i).randbytes(5000) for i in range(8)}

    async def main() -> None:
        rng = random.Random(seed)
        network = SimNetwork(random.Random(rng.getrandbits(64)))
        async with trio.open_nursery() as nursery:
            await nursery.start(network.run)
            cluster = DataCluster(nursery, network, tmp_path, rng, MembershipConfig(), REPLICATION)
            for index in range(1, NODES + 1):
                await cluster.start(index, (sim_address(1),))
            assert await wait_until(lambda: all(len(n.membership.members()) == NODES for n in cluster.running()),
                                    timeout_s=60, poll_s=0.5) is not None
            # Node 1 (the coordinator) cannot write its index; node 2's is full.
            cluster.nodes[1].data.names._conn.execute("PRAGMA query_only = 1")
            names2 = cluster.nodes[2].data.names._conn
            names2.execute(f"PRAGMA max_page_count = {names2.execute('PRAGMA page_count').fetchone()[0]}")
            client = cluster.client("alice")
            for name, content in files.items():
                async def pieces(content=content):
                    yield content

                reply = await client.request(sim_address(1), dm.PutFile(name, len(content)), timeout_s=30.0,
                                             body=pieces())
                assert isinstance(reply, dm.PutFileReply)
            for name, content in files.items():
                async with client.open_request(sim_address(1), dm.GetFile(name), timeout_s=30.0) as response:
                    assert b"".join([data async for data in response.body]) == content
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=seed)


def test_the_scrub_decodes_the_index_a_batch_a_round_and_removes_bad_rows(tmp_path):
    path = _filled(tmp_path, SCRUB_NAME_ROWS_PER_ROUND + 10)
    break_manifest(path, _entry(SCRUB_NAME_ROWS_PER_ROUND + 5).name)  # in the second batch
    clock = SystemClock()

    async def inline(fn, *args):
        return fn(*args)

    async def no_repair(chunk_id: bytes) -> bool:
        raise AssertionError("no chunk to repair")

    async def main() -> None:
        hints = HintStore(tmp_path / HINTS_FILE_NAME)
        with NameIndex(path) as names:
            local = LocalStore(ChunkStore(tmp_path, 1 << 20, clock=clock), names, hints, clock)
            scrubber = Scrubber(config=ReplicationConfig(scrub_bytes_per_s=1 << 20), local=local, repair=no_repair,
                                rng=random.Random(1), offload=inline)
            await scrubber.scrub_names()
            assert scrubber.bad_name_rows == 0
            await scrubber.scrub_names()
            assert scrubber.bad_name_rows == 1 and names.rows_quarantined == 1
            await scrubber.scrub_names()  # the pass is over until the next pass of chunks
            assert names.rows_quarantined == 1
            assert len(names.summaries()) == SCRUB_NAME_ROWS_PER_ROUND + 9
        hints.close()

    trio.run(main)



def test_whichever_single_page_is_damaged_the_index_opens_serves_and_checks_clean(tmp_path):
    """Every page of an index, one at a time (the pages above are the usual kinds: header,
    schema, leaves): opening never fails, what is kept is whole, and new writes go in."""
    (tmp_path / "pristine").mkdir()
    pristine = _filled(tmp_path / "pristine")
    for page in range(1, page_count(pristine) + 1):
        directory = tmp_path / f"page{page}"
        directory.mkdir()
        path = directory / NAMES_FILE_NAME
        shutil.copyfile(pristine, path)
        overwrite_page(path, page, seed=page)
        with NameIndex(path) as index:
            for name, version, writer, _ in index.summaries():
                assert index.get(name) == _entry(version.wall_ms - 1000), f"page {page}"
            assert index.apply(_entry(ENTRIES))
            assert index.get(_entry(ENTRIES).name) == _entry(ENTRIES)
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)], f"page {page}"
        conn.close()
