"""The hints file is this node's own: its faults become the project's errors, and never stop the node.

A full disk is ``StorageFull``, a read-only or failing file a ``LocalStorageError``;
a damaged file (garbage, one bad page, damage found while running) is moved to
``DATA/quarantine`` and started afresh; a daemon whose hints file is garbage starts,
serves, and keeps running.
"""

from __future__ import annotations

import io
import logging
import sqlite3

import pytest
import trio

from p2pfs import errors, identity, testnet
from p2pfs.client import Client
from p2pfs.replication.hints import HINTS_FILE_NAME, HintKind, HintStore
from p2pfs.storage.names import QUARANTINE_DIR_NAME

from damage_helpers import checkpoint, overwrite_page, page_count
from testnet_helpers import running_testnet, wait_for

OWNER = "b" * 64
HINTS = 2000  # enough for a file of many pages


def _filled(path, count: int = HINTS) -> None:
    store = HintStore(path)
    try:
        for i in range(count):
            store.add(OWNER, HintKind.CHUNK, i.to_bytes(32, "big"), 1000 + i)
    finally:
        store.close()
    checkpoint(path)


def _quarantined(directory) -> list[str]:
    quarantine = directory / QUARANTINE_DIR_NAME
    return sorted(p.name for p in quarantine.iterdir()) if quarantine.exists() else []


def test_a_file_that_is_not_a_database_is_quarantined_and_replaced(tmp_path, caplog):
    path = tmp_path / HINTS_FILE_NAME
    path.write_bytes(b"this is not a database" * 400)
    with caplog.at_level(logging.WARNING):
        store = HintStore(path)
    try:
        assert store.replaced_files == 1
        assert _quarantined(tmp_path) == [f"{HINTS_FILE_NAME}.0"]
        store.add(OWNER, HintKind.NAME, b"n", 1)
        assert store.count() == 1
    finally:
        store.close()
    assert any("damaged" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("page", [1, 2, "middle", "last"])
def test_one_bad_page_is_found_at_open_and_the_file_replaced(tmp_path, page):
    path = tmp_path / HINTS_FILE_NAME
    _filled(path)
    pages = page_count(path)
    number = {"middle": pages // 2, "last": pages}.get(page, page)
    overwrite_page(path, number, seed=number)
    store = HintStore(path)
    try:
        assert store.replaced_files == 1, f"page {number} of {pages}"
        assert store.count() == 0  # hints are a shortcut: anti-entropy repairs what they were for
        store.add(OWNER, HintKind.CHUNK, b"x" * 32, 1)
        assert store.owners() == [OWNER]
    finally:
        store.close()


def test_damage_found_while_running_replaces_the_file_and_the_call_succeeds(tmp_path):
    path = tmp_path / HINTS_FILE_NAME
    _filled(path)
    store = HintStore(path)
    try:
        assert store.replaced_files == 0
        for number in range(2, page_count(path) + 1):  # every page but the header, behind its back
            overwrite_page(path, number, seed=number)
        assert store.for_owner(OWNER) == []  # the read that met the damage, retried on a new file
        assert store.replaced_files == 1
        store.add(OWNER, HintKind.NAME, b"n", 5)
        assert store.is_hinted(HintKind.NAME, b"n")
    finally:
        store.close()
    assert _quarantined(tmp_path)[0] == f"{HINTS_FILE_NAME}.0"


def test_a_full_file_is_storage_full_and_a_read_only_one_a_local_storage_error(tmp_path):
    store = HintStore(tmp_path / HINTS_FILE_NAME)
    try:
        # SQLite's way to make a file "full" or read-only without a disk (the store's own connection).
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(errors.StorageFull):
            for i in range(HINTS):
                store.add(OWNER, HintKind.CHUNK, i.to_bytes(32, "big"), i)
        store._db.execute("PRAGMA query_only = 1")
        with pytest.raises(errors.LocalStorageError) as raised:
            store.remove_owner(OWNER)
        assert not isinstance(raised.value, errors.StorageFull)
        assert store.replaced_files == 0  # not damage: the file stays
    finally:
        store.close()


def test_a_file_that_cannot_be_opened_is_an_error_for_each_call_not_for_the_node(tmp_path, caplog):
    path = tmp_path / HINTS_FILE_NAME
    path.mkdir()  # what SQLite cannot open: a directory where the file should be
    with caplog.at_level(logging.ERROR):
        store = HintStore(path)
    assert any("hints" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    with pytest.raises(errors.LocalStorageError):
        store.add(OWNER, HintKind.NAME, b"n", 1)
    path.rmdir()  # fixed: the next call opens it
    store.add(OWNER, HintKind.NAME, b"n", 1)
    assert store.count() == 1
    store.close()


def test_a_daemon_whose_hints_file_is_garbage_starts_and_serves(tmp_path):
    with running_testnet(tmp_path / "net", nodes=1) as net:
        net.stop("node1")
        data_dir = tmp_path / "net" / "node1" / "data"
        for suffix in ("-wal", "-shm"):
            (data_dir / f"{HINTS_FILE_NAME}{suffix}").unlink(missing_ok=True)
        (data_dir / HINTS_FILE_NAME).write_bytes(b"\xff" * 8192)
        net.start("node1")
        trio.run(lambda: testnet.wait_converged(net.directory, timeout_s=120, started=[net.directory / "node1"]))
        ident = identity.load_identity(tmp_path / "net" / testnet.CLIENT_DIR)
        address = net.status()["node1"].address

        async def put_and_get() -> bytes:
            with trio.fail_after(120):
                async with Client.connect(ident, address) as client:
                    await client.put(io.BytesIO(b"hello"), "after", 5)
                    out = io.BytesIO()
                    await client.get("after", out)
                    return out.getvalue()

        assert trio.run(put_and_get) == b"hello"
        assert f"{HINTS_FILE_NAME}.0" in _quarantined(data_dir)
        wait_for(lambda: net.status()["node1"].running, timeout_s=5, what="node1 still running")
        assert sqlite3.connect(data_dir / HINTS_FILE_NAME).execute("PRAGMA quick_check").fetchone() == ("ok",)
