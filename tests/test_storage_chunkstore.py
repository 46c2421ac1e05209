"""Chunk store on real disk: integrity, crash safety, capacity, and threads."""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from p2pfs.clock import SystemClock
from p2pfs.storage import chunkstore
from p2pfs.storage.chunkstore import (
    ChunkCorrupt,
    ChunkMismatch,
    ChunkMissing,
    ChunkStore,
    StorageError,
    StorageFull,
)
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MAX, chunk_id_of

CAPACITY_BYTES = 1 << 20
CLOCK = SystemClock()


def _chunk(seed: int, size_bytes: int = 1000) -> tuple[bytes, bytes]:
    data = (seed.to_bytes(4, "big") * (size_bytes // 4 + 1))[:size_bytes]
    return chunk_id_of(data), data


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def _chunk_path(root: Path, chunk_id: bytes) -> Path:
    return root / "chunks" / chunk_id.hex()[:2] / chunk_id.hex()[2:]


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path, CAPACITY_BYTES, clock=CLOCK)


def test_put_get_round_trip_and_accounting(store: ChunkStore, tmp_path: Path) -> None:
    chunk_id, data = _chunk(1)
    assert store.put(chunk_id, data) is True
    assert store.put(chunk_id, memoryview(data)) is False  # already held: not counted twice
    assert store.get(chunk_id) == data
    assert store.has(chunk_id)
    assert store.size_of(chunk_id) == len(data)
    assert store.used_bytes == len(data)
    assert store.used_bytes == len(data)
    assert list(store.iter_ids()) == [chunk_id]
    assert _files_under(tmp_path) == [_chunk_path(tmp_path, chunk_id)]


def test_delete(store: ChunkStore) -> None:
    chunk_id, data = _chunk(1)
    store.put(chunk_id, data)
    assert store.delete(chunk_id) is True
    assert store.delete(chunk_id) is False
    assert not store.has(chunk_id)
    assert store.used_bytes == 0
    with pytest.raises(ChunkMissing):
        store.get(chunk_id)
    with pytest.raises(ChunkMissing):
        store.size_of(chunk_id)


def test_wrong_hash_rejected_and_nothing_written(store: ChunkStore, tmp_path: Path) -> None:
    chunk_id, _ = _chunk(1)
    with pytest.raises(ChunkMismatch):
        store.put(chunk_id, b"other bytes")
    assert not store.has(chunk_id)
    assert store.used_bytes == 0
    assert _files_under(tmp_path) == []


def test_bad_arguments(store: ChunkStore) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        store.get(b"short")
    with pytest.raises(ValueError, match="1 to"):
        store.put(chunk_id_of(b""), b"")
    big = bytes(CHUNK_SIZE_BYTES_MAX + 1)
    with pytest.raises(ValueError, match="1 to"):
        store.put(chunk_id_of(big), big)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: bytes([data[0] ^ 1]) + data[1:],  # bit rot
        lambda data: data[:-1],  # truncated
        lambda data: data + b"extra",  # appended to
    ],
)
def test_corruption_detected_quarantined_then_missing(
    store: ChunkStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:
    chunk_id, data = _chunk(1)
    keep_id, keep_data = _chunk(2)
    store.put(chunk_id, data)
    store.put(keep_id, keep_data)
    path = _chunk_path(tmp_path, chunk_id)
    path.write_bytes(damage(data))

    with caplog.at_level(logging.ERROR, logger=chunkstore.__name__), pytest.raises(ChunkCorrupt):
        store.get(chunk_id)
    assert chunk_id.hex() in caplog.text

    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1
    assert quarantined[0].name.startswith(chunk_id.hex())
    assert quarantined[0].read_bytes() == damage(data)  # kept as evidence
    assert not path.exists()
    assert not store.has(chunk_id)
    with pytest.raises(ChunkMissing):
        store.get(chunk_id)
    assert list(store.iter_ids()) == [keep_id]
    if len(damage(data)) == len(data):
        assert store.used_bytes == len(keep_data)
    # A size changed behind the store's back is reconciled by the scan at open.
    assert ChunkStore(tmp_path, CAPACITY_BYTES, clock=CLOCK).used_bytes == len(keep_data)
    assert store.put(chunk_id, data) is True  # a good copy can be stored again
    assert store.get(chunk_id) == data


def test_verify_for_scrub(store: ChunkStore, tmp_path: Path) -> None:
    good_id, good = _chunk(1)
    bad_id, bad = _chunk(2)
    store.put(good_id, good)
    store.put(bad_id, bad)
    _chunk_path(tmp_path, bad_id).write_bytes(b"rotten")
    assert store.verify(good_id) is True
    assert store.verify(bad_id) is False
    assert not store.has(bad_id)
    with pytest.raises(ChunkMissing):
        store.verify(bad_id)


def test_capacity_exceeded_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, capacity_bytes=2500, clock=CLOCK)
    first_id, first = _chunk(1, 2000)
    second_id, second = _chunk(2, 501)
    store.put(first_id, first)
    with pytest.raises(StorageFull):
        store.put(second_id, second)
    assert not store.has(second_id)
    assert store.used_bytes == 2000
    assert _files_under(tmp_path) == [_chunk_path(tmp_path, first_id)]
    assert store.put(first_id, first) is False  # already held: no space needed
    fitting_id, fitting = _chunk(3, 500)
    assert store.put(fitting_id, fitting) is True  # exactly up to capacity is fine
    assert store.used_bytes == 2500


def test_disk_full_becomes_storage_full_and_temp_removed(
    store: ChunkStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunkstore.os, "write", full_disk)
    chunk_id, data = _chunk(1)
    with pytest.raises(StorageFull, match="disk full"):
        store.put(chunk_id, data)
    assert _files_under(tmp_path) == []
    assert store.used_bytes == 0


def test_failed_rename_leaves_no_partial_chunk(
    store: ChunkStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stands in for a crash between write and rename: the chunk never becomes visible."""

    def broken_rename(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(chunkstore.os, "rename", broken_rename)
    chunk_id, data = _chunk(1)
    with pytest.raises(StorageError, match="I/O error"):
        store.put(chunk_id, data)
    assert not store.has(chunk_id)
    assert _files_under(tmp_path) == []
    assert store.used_bytes == 0


def test_a_read_only_disk_is_a_storage_error_and_leaves_nothing_behind(
    store: ChunkStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica on a read-only file system refuses with the room's error, so a coordinator fails over."""
    held_id, held = _chunk(2)
    store.put(held_id, held)
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)

    def read_only_utime(*args, **kwargs) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(chunkstore.os, "open", read_only)
    monkeypatch.setattr(chunkstore.os, "utime", read_only_utime)
    chunk_id, data = _chunk(1)
    with pytest.raises(StorageError, match="Read-only"):
        store.put(chunk_id, data)
    with pytest.raises(StorageError, match="Read-only"):
        store.put(held_id, held)  # held already: only its time is touched
    assert not store.has(chunk_id)
    assert store.used_bytes == len(held)


def test_open_removes_temp_files_and_rescans(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CAPACITY_BYTES, clock=CLOCK)
    chunk_id, data = _chunk(1)
    store.put(chunk_id, data)
    final = _chunk_path(tmp_path, chunk_id)
    leftover = final.with_name(f".{final.name}.0123456789abcdef.tmp")  # as a crash mid-put leaves it
    leftover.write_bytes(data[:10])
    stray = final.with_name("notes.txt")  # not ours: kept, not counted
    stray.write_bytes(b"hello")

    reopened = ChunkStore(tmp_path, CAPACITY_BYTES, clock=CLOCK)
    assert not leftover.exists()
    assert stray.exists()
    assert reopened.used_bytes == len(data)
    assert list(reopened.iter_ids()) == [chunk_id]
    assert reopened.get(chunk_id) == data


def test_over_capacity_at_open_refuses_puts(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CAPACITY_BYTES, clock=CLOCK)
    chunk_id, data = _chunk(1, 2000)
    store.put(chunk_id, data)
    shrunk = ChunkStore(tmp_path, capacity_bytes=1000, clock=CLOCK)
    assert shrunk.used_bytes == 2000
    with pytest.raises(StorageFull):
        shrunk.put(*_chunk(2, 10))
    assert shrunk.get(chunk_id) == data


def test_concurrent_puts_from_threads(store: ChunkStore) -> None:
    """Eight threads put overlapping chunks at once: every put succeeds, each chunk
    is written by exactly one of them, and it is counted once."""
    chunks = [_chunk(seed, 1000 + seed) for seed in range(40)]
    thread_count = 8
    barrier = threading.Barrier(thread_count)
    results: list[list[tuple[bytes, bool]]] = [[] for _ in range(thread_count)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        barrier.wait()
        try:
            # Every thread puts every chunk, each starting at a different place.
            for chunk_id, data in chunks[index * 5 :] + chunks[: index * 5]:
                results[index].append((chunk_id, store.put(chunk_id, data)))
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(thread_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for chunk_id, data in chunks:
        newly_written = [written for per_thread in results for cid, written in per_thread if cid == chunk_id]
        assert len(newly_written) == thread_count
        assert newly_written.count(True) == 1
        assert store.get(chunk_id) == data
    assert store.used_bytes == sum(len(data) for _, data in chunks)
    assert sorted(store.iter_ids()) == sorted(chunk_id for chunk_id, _ in chunks)


def test_concurrent_puts_never_overshoot_capacity(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, capacity_bytes=10_000, clock=CLOCK)
    chunks = [_chunk(seed, 1000) for seed in range(30)]
    barrier = threading.Barrier(6)
    stored: list[bytes] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        barrier.wait()
        for chunk_id, data in chunks[index::6]:
            try:
                store.put(chunk_id, data)
            except StorageFull:
                continue
            with lock:
                stored.append(chunk_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stored) == 10
    assert store.used_bytes == 10_000
    assert sorted(store.iter_ids()) == sorted(stored)
    assert len(os.listdir(tmp_path / "quarantine")) == 0


class _FixedClock:
    def monotonic_s(self) -> float:
        return 0.0

    def wall_ms(self) -> int:
        return 1_234_567


def test_quarantine_names_carry_the_given_clock_and_never_collide(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, CAPACITY_BYTES, clock=_FixedClock())
    chunk_id, data = _chunk(1)
    for _ in range(2):  # corrupt twice within the same (frozen) millisecond
        store.put(chunk_id, data)
        _chunk_path(tmp_path, chunk_id).write_bytes(b"x" + data[1:])
        assert store.verify(chunk_id) is False
    names = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    assert names == [f"{chunk_id.hex()}.1234567.0", f"{chunk_id.hex()}.1234567.1"]


def test_storage_errors_are_in_the_one_hierarchy() -> None:
    from p2pfs import errors
    from p2pfs.storage import StorageError

    assert issubclass(StorageError, errors.LocalStorageError)
    assert issubclass(StorageFull, StorageError) and issubclass(StorageFull, errors.StorageFull)
    assert issubclass(ChunkCorrupt, errors.LocalStorageError)
