"""Storage support for garbage collection and anti-entropy: re-put refreshes, guarded deletes."""

from __future__ import annotations

import os
import time

from p2pfs.storage import ChunkStore, NameEntry, NameIndex, Timestamp, chunk_id_of
from p2pfs.storage.names import NAMES_FILE_NAME

WRITER = "a" * 64


def test_re_put_restarts_the_gc_grace_and_guarded_delete_respects_it(tmp_path):
    store = ChunkStore(tmp_path, 10 * 1024 * 1024)
    data = b"chunk" * 100
    cid = chunk_id_of(data)
    store.put(cid, data)
    old = time.time() - 3600
    path = tmp_path / "chunks" / cid.hex()[:2] / cid.hex()[2:]
    os.utime(path, (old, old))
    assert store.written_at_s(cid) == old
    store.put(cid, data)  # deduplicated put of the same content
    assert store.written_at_s(cid) > old + 3000
    assert not store.delete_if_unused_since(cid, before_s=time.time() - 60)
    assert store.has(cid)
    assert store.delete_if_unused_since(cid, before_s=time.time() + 1)
    assert not store.has(cid) and store.used_bytes == 0


def test_summaries_and_remove_if_only_drop_the_exact_version(tmp_path):
    index = NameIndex(tmp_path / NAMES_FILE_NAME)
    first = NameEntry("n", Timestamp(100, 0), WRITER, None)
    index.apply(first)
    assert index.summaries() == [("n", Timestamp(100, 0), WRITER, True)]
    newer = NameEntry("n", Timestamp(200, 0), WRITER, None)
    index.apply(newer)
    assert not index.remove_if("n", first.version, WRITER)
    assert index.get("n") == newer
    assert index.remove_if("n", newer.version, WRITER)
    assert index.get("n") is None
