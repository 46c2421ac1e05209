"""Storage support for garbage collection and anti-entropy: re-put refreshes, guarded deletes."""

from __future__ import annotations

import dataclasses
import os

from p2pfs.storage import ChunkStore, NameEntry, NameIndex, Timestamp, chunk_id_of
from p2pfs.storage.names import NAMES_FILE_NAME

WRITER = "a" * 64


@dataclasses.dataclass
class ManualClock:
    now_ms: int = 1_700_000_000_000

    def monotonic_s(self) -> float:
        return self.now_ms / 1000

    def wall_ms(self) -> int:
        return self.now_ms


def test_re_put_restarts_the_gc_grace_and_guarded_delete_respects_it(tmp_path):
    clock = ManualClock()
    store = ChunkStore(tmp_path, 10 * 1024 * 1024, clock=clock)
    data = b"chunk" * 100
    cid = chunk_id_of(data)
    store.put(cid, data)
    path = tmp_path / "chunks" / cid.hex()[:2] / cid.hex()[2:]
    written_ms = clock.now_ms
    assert path.stat().st_mtime_ns == written_ms * 1_000_000  # stamped by the store's clock
    clock.now_ms += 3_600_000
    assert store.delete_if_unused_since(cid, before_ms=written_ms) is False  # not older than that
    store.put(cid, data)  # deduplicated put of the same content, an hour later
    assert path.stat().st_mtime_ns == clock.now_ms * 1_000_000
    assert not store.delete_if_unused_since(cid, before_ms=clock.now_ms - 60_000)
    assert store.has(cid)
    assert store.delete_if_unused_since(cid, before_ms=clock.now_ms + 1)
    assert not store.has(cid) and store.used_bytes == 0
    assert os.listdir(path.parent) == []


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
