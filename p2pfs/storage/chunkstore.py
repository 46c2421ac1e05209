"""The content-addressed chunk store on a node's disk.

Layout under the node's data dir ``root``::

    root/chunks/ab/cdef...      one file per chunk, named by its hex id (first byte
                                as a fan-out dir, 256 dirs, so no dir grows huge)
    root/chunks/ab/.cdef....<random>.tmp   a write in progress
    root/quarantine/abcdef....<ms>.<n>     chunks that failed verification (wall ms, serial)

Crash safety: a chunk is written to a temp file in its final dir, fsynced, renamed
into place and the dir fsynced, so a chunk file is either absent or complete; temp
files left by a crash are removed at open. Integrity: bytes are checked against the
id before they are written and every time they are read (disks rot, operators copy
files around); a chunk that fails is moved to quarantine, logged, raised as
ChunkCorrupt and from then on is simply missing, for replication to repair.

Time: a chunk file's mtime is set from the store's clock on every write and
re-put, and garbage collection measures its grace against that clock, so a
simulation (or a node with a skewed clock) decides the same way throughout.

Capacity: ``used_bytes`` is the sum of chunk sizes (content bytes, not disk blocks),
found by scanning at open and kept up to date, plus the content the node holds
elsewhere (``count_also``: small files inline in the name index); a put that would
pass ``capacity_bytes`` raises StorageFull before writing anything. The file system is
the only index (an in-memory map of a million chunks would cost ~200 MB), so a chunk
is uncounted by its file's size when it is removed: if rot changed that size, the
count is off by the difference until the next open rescans.

Threads: every method is synchronous and may be called from many threads at once
(trio callers use ``trio.to_thread.run_sync``). Hashing runs outside any lock.
Writers of the same id are serialised by one of ``LOCK_STRIPES`` locks chosen by the
id's first byte, which makes "is it there? then write it and count it" atomic, so two
concurrent puts of one chunk both succeed and it is counted once. Reads take no lock:
files are only ever created whole (rename) or removed, never changed in place.
Open one ChunkStore per data dir: two would not see each other's accounting.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from p2pfs.clock import Clock
from p2pfs.storage import modes
from p2pfs.storage.errors import StorageError, StorageFull
from p2pfs.storage.manifest import CHUNK_ID_BYTES, CHUNK_SIZE_BYTES_MAX, chunk_id_of

log = logging.getLogger(__name__)

CHUNKS_DIR_NAME = "chunks"
QUARANTINE_DIR_NAME = "quarantine"
TEMP_SUFFIX = ".tmp"
# Number of locks serialising writers; ids are uniform, so 64 stripes make two
# unrelated puts contend with probability 1/64, at the cost of 64 small objects.
LOCK_STRIPES = 64
# Hex digits naming the fan-out dir (one byte: 256 dirs).
_FANOUT_HEX_CHARS = 2
_FANOUT_NAMES = tuple(f"{prefix:02x}" for prefix in range(256))
_CHUNK_ID_HEX_CHARS = 2 * CHUNK_ID_BYTES
_HEX_DIGITS = frozenset("0123456789abcdef")
# errnos that mean "the disk (or our quota on it) is full".
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Direct (``O_DIRECT``) writes: a chunk is copied into a page-aligned buffer of this pool and
# the disk is handed that buffer, instead of the kernel copying it into fresh page-cache pages
# (a quarter of a put replica's CPU samples: docs/BENCHMARKS.md, "Put: a chain's chunk
# uncopied"). One buffer per chunk being written at once; a write that finds none free (more
# concurrent writers than this: the put window is 8) writes through the page cache as before.
DIRECT_BUFFERS_MAX = 8
# Alignment of a direct write's buffer address and length: a multiple of the common logical
# block sizes (512, 4096).
DIRECT_BLOCK_BYTES = 4096
_DIRECT_BUFFER_BYTES = -(-CHUNK_SIZE_BYTES_MAX // DIRECT_BLOCK_BYTES) * DIRECT_BLOCK_BYTES
# A direct read's buffer (``get_direct``): the largest chunk and the block that shows a file
# longer than that, in whole blocks. Pages are resident only once read into, so a buffer that
# holds 1 MiB chunks costs 1 MiB of RSS.
DIRECT_READ_BUFFER_BYTES = _DIRECT_BUFFER_BYTES + DIRECT_BLOCK_BYTES


class ChunkMissing(StorageError):
    """This node does not hold the chunk (never had it, deleted, or quarantined)."""


class ChunkCorrupt(StorageError):
    """A stored chunk's bytes no longer match its id; it has been quarantined."""


class ChunkMismatch(StorageError, ValueError):
    """Bytes offered to ``put`` do not hash to the given id (a peer or caller fault)."""


class ChunkStore:
    """Content-addressed chunk files under ``root``, at most ``capacity_bytes`` in total."""

    def __init__(self, root: Path, capacity_bytes: int, *, clock: Clock) -> None:
        """Open (creating if needed) the store in the node's data dir ``root``.

        ``clock`` stamps chunk files when they are written or re-put (their mtime:
        what garbage collection's grace is measured against) and the names of
        quarantined files, so a simulation replays both and a skewed node is
        skewed consistently.

        Removes temp files a crash left behind and scans the chunks to find
        ``used_bytes``: O(number of chunks) stat calls.
        """
        if type(capacity_bytes) is not int or capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be an int >= 0, got {capacity_bytes!r}")
        self._root = Path(root)
        self._chunks_dir = self._root / CHUNKS_DIR_NAME
        self._quarantine_dir = self._root / QUARANTINE_DIR_NAME
        self._capacity_bytes = capacity_bytes
        self._clock = clock
        # Tells apart two quarantines of one chunk within the same millisecond.
        self._quarantine_serials = itertools.count()
        self._stripes = tuple(threading.Lock() for _ in range(LOCK_STRIPES))
        # Aligned buffers for direct writes, made when first needed (anonymous maps: page-aligned,
        # and only the pages a chunk touches count in RSS), at most DIRECT_BUFFERS_MAX.
        self._direct_buffers: list[mmap.mmap] = []
        self._direct_buffers_made = 0
        self._direct_lock = threading.Lock()
        # False once the file system refused O_DIRECT: plain writes from then on.
        self._direct_ok = hasattr(os, "O_DIRECT")
        self._used_lock = threading.Lock()
        # Content bytes the node holds outside chunk files, counted against the same capacity.
        self._also_used_bytes: Callable[[], int] = lambda: 0
        self._create_dirs()
        self._used_bytes = self._scan()
        if self._used_bytes > capacity_bytes:
            log.warning(
                "chunk store %s holds %d bytes, over its capacity of %d bytes; puts will fail",
                self._chunks_dir,
                self._used_bytes,
                capacity_bytes,
            )

    # ---- accounting -------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes of chunks held, including puts in progress (they reserve first), and ``count_also``'s."""
        with self._used_lock:
            return self._used_bytes + self._also_used_bytes()

    def count_also(self, used_bytes: Callable[[], int]) -> None:
        """Count content held outside the chunk files (``used_bytes()``, read on every check) in
        ``used_bytes`` and against the capacity: one node, one capacity."""
        self._also_used_bytes = used_bytes

    def check_room(self, size_bytes: int) -> None:
        """StorageFull unless ``size_bytes`` more would fit, for content stored elsewhere (inline names).

        Nothing is reserved: the caller's write is counted by ``count_also`` once made, so
        concurrent checks may overshoot the capacity by what they write at once.
        """
        with self._used_lock:
            self._check_fits(size_bytes)

    def _check_fits(self, size_bytes: int) -> None:
        used_bytes = self._used_bytes + self._also_used_bytes()
        if used_bytes + size_bytes > self._capacity_bytes:
            raise StorageFull(
                f"storing {size_bytes} bytes would exceed capacity: "
                f"{used_bytes} of {self._capacity_bytes} bytes used"
            )

    def _reserve(self, size_bytes: int) -> None:
        with self._used_lock:
            self._check_fits(size_bytes)
            self._used_bytes += size_bytes

    def _release(self, size_bytes: int) -> None:
        """Undo a reservation, or uncount a chunk file being removed.

        A file removed is uncounted by its size now; if something outside the store
        changed that size, the count is off by the difference until the next open
        rescans, so the count is kept from going below zero rather than asserted.
        """
        with self._used_lock:
            self._used_bytes = max(0, self._used_bytes - size_bytes)

    # ---- operations -------------------------------------------------------------

    def put(self, chunk_id: bytes, data: bytes | bytearray | memoryview, *, hashed: bool = False) -> bool:
        """Store ``data`` under ``chunk_id``; True if newly written, False if already held.

        A copy already held is not re-read: ``get`` and ``verify`` catch a rotten one,
        which then counts as missing and is put again by repair.

        ``hashed``: the caller, in this process, computed or checked ``chunk_id`` from
        these very bytes (a coordinator hashes every chunk it receives), so hashing
        them again here would only repeat it. Bytes from a peer never come with it.

        Raises ChunkMismatch if ``data`` does not hash to ``chunk_id`` and StorageFull
        if it does not fit (capacity or a full disk); either way nothing is left behind.
        Durable when it returns.
        """
        path = self._path(chunk_id)
        view = memoryview(data).cast("B")
        size_bytes = view.nbytes
        if not 1 <= size_bytes <= CHUNK_SIZE_BYTES_MAX:
            raise ValueError(f"a chunk is 1 to {CHUNK_SIZE_BYTES_MAX} bytes, got {size_bytes}")
        if not hashed and chunk_id_of(view) != chunk_id:
            raise ChunkMismatch(f"data does not hash to chunk {chunk_id.hex()}")
        with self._stripe(chunk_id):
            if path.exists():
                # Held already (deduplicated): restart its garbage-collection grace, so a
                # chunk that a new manifest is about to reference is not collected as unused.
                try:
                    os.utime(path, ns=self._stamp_ns())
                except OSError as exc:
                    raise StorageError(f"cannot touch chunk {path.name}: {exc}") from exc
                return False
            self._reserve(size_bytes)
            try:
                self._write_new(path, view)
            except BaseException:
                self._release(size_bytes)
                raise
        # The rename is done: the chunk is visible and counted. Make it durable.
        _fsync_dir(path.parent)
        return True

    def get(self, chunk_id: bytes) -> bytes:
        """The chunk's bytes, verified. Raises ChunkMissing, or ChunkCorrupt after quarantining."""
        path = self._path(chunk_id)
        data, inode = self._read(path, chunk_id)
        return self._verified(chunk_id, data, path, inode)

    def _verified(self, chunk_id: bytes, data: bytes | memoryview, path: Path,
                  inode: tuple[int, int]) -> bytes | memoryview:
        """``data`` if it is the chunk (read from ``path``, file ``inode``); else the file is
        quarantined and ChunkCorrupt raised."""
        if len(data) > CHUNK_SIZE_BYTES_MAX:
            reason = f"file is larger than {CHUNK_SIZE_BYTES_MAX} bytes"
        elif (actual_id := chunk_id_of(data)) != chunk_id:
            reason = f"content hashes to {actual_id.hex()}"
        else:
            return data
        self._quarantine(path, inode, reason)
        raise ChunkCorrupt(f"chunk {chunk_id.hex()} failed verification ({reason}) and was quarantined")

    def get_direct(self, chunk_id: bytes, buffer: mmap.mmap) -> bytes | memoryview:
        """The chunk's bytes, verified, as ``get``, but read past the page cache into ``buffer``
        (page-aligned, ``DIRECT_READ_BUFFER_BYTES``): a view of it, valid until the buffer is reused.

        Chunks are written past the page cache, so a get's read would fetch them from the disk
        into fresh cache pages and copy them out; read directly, the disk fills the buffer and
        no page is cached (nor evicted later). Where the file system has no direct I/O,
        ``get``'s bytes. Raises ChunkMissing, or ChunkCorrupt after quarantining.
        """
        assert len(buffer) >= DIRECT_READ_BUFFER_BYTES, len(buffer)
        if not self._direct_ok:
            return self.get(chunk_id)
        path = self._path(chunk_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {chunk_id.hex()} is not held") from None
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return self.get(chunk_id)  # no direct reads here
        try:
            stat = os.fstat(fd)
            # As _read: at most one byte past what the file should hold, so a file that grew is caught.
            limit_bytes = min(stat.st_size, CHUNK_SIZE_BYTES_MAX) + 1
            view = memoryview(buffer)
            got_bytes = 0
            # Direct reads start at whole blocks: a short read (the file's end) ends the loop.
            while got_bytes < limit_bytes and got_bytes % DIRECT_BLOCK_BYTES == 0:
                wanted_bytes = -(-(limit_bytes - got_bytes) // DIRECT_BLOCK_BYTES) * DIRECT_BLOCK_BYTES
                try:
                    count_bytes = os.preadv(fd, [view[got_bytes:got_bytes + wanted_bytes]], got_bytes)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    return self.get(chunk_id)  # the open was taken, the read refused
                if not count_bytes:
                    break
                got_bytes += count_bytes
        finally:
            os.close(fd)
        return self._verified(chunk_id, view[:min(got_bytes, limit_bytes)], path, (stat.st_dev, stat.st_ino))

    def verify(self, chunk_id: bytes) -> bool:
        """Read and check one chunk (for a background scrub); quarantine it if bad.

        Returns False if it was corrupt (and is now quarantined); raises ChunkMissing
        if it is not held.
        """
        try:
            self.get(chunk_id)
        except ChunkCorrupt:
            return False
        return True

    def has(self, chunk_id: bytes) -> bool:
        """Whether the chunk is held (not verified; ``get`` or ``verify`` check bytes)."""
        return self._path(chunk_id).exists()

    def size_of(self, chunk_id: bytes) -> int:
        """The chunk's size in bytes; raises ChunkMissing if not held."""
        try:
            return self._path(chunk_id).stat().st_size
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {chunk_id.hex()} is not held") from None

    def delete(self, chunk_id: bytes) -> bool:
        """Remove the chunk; True if it was held.

        Not fsynced: if a crash undoes the delete the chunk simply reappears, is
        counted by the scan at open, and garbage collection deletes it again.
        """
        path = self._path(chunk_id)
        with self._stripe(chunk_id):
            try:
                size_bytes = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return False
            self._release(size_bytes)
        return True

    def delete_if_unused_since(self, chunk_id: bytes, before_ms: int) -> bool:
        """Delete the chunk only if it was not written or re-put since ``before_ms`` (the store's wall clock).

        Atomic against ``put`` of the same chunk (same stripe lock), so garbage collection
        cannot remove a chunk that a concurrent put has just relied on.
        """
        path = self._path(chunk_id)
        with self._stripe(chunk_id):
            try:
                info = path.stat()
                if info.st_mtime_ns >= before_ms * 1_000_000:
                    return False
                path.unlink()
            except FileNotFoundError:
                return False
            self._release(info.st_size)
        return True

    def iter_ids(self) -> Iterator[bytes]:
        """Every chunk id held, in no particular order, one fan-out dir at a time.

        Chunks put or deleted while iterating may or may not appear.
        """
        for fanout_name in _FANOUT_NAMES:
            with os.scandir(self._chunks_dir / fanout_name) as entries:
                names = [entry.name for entry in entries]
            for name in names:
                chunk_id = _parse_chunk_name(fanout_name, name)
                if chunk_id is not None:
                    yield chunk_id

    # ---- internals --------------------------------------------------------------

    def _path(self, chunk_id: bytes) -> Path:
        if type(chunk_id) is not bytes or len(chunk_id) != CHUNK_ID_BYTES:
            raise ValueError(f"a chunk id is {CHUNK_ID_BYTES} bytes, got {chunk_id!r:.80}")
        hex_id = chunk_id.hex()
        return self._chunks_dir / hex_id[:_FANOUT_HEX_CHARS] / hex_id[_FANOUT_HEX_CHARS:]

    def _stamp_ns(self) -> tuple[int, int]:
        """A chunk file's times: when it was last written, on the store's clock (GC compares them)."""
        now_ns = self._clock.wall_ms() * 1_000_000
        return now_ns, now_ns

    def _stripe(self, chunk_id: bytes) -> threading.Lock:
        return self._stripes[chunk_id[0] % LOCK_STRIPES]

    def _write_new(self, path: Path, view: memoryview) -> None:
        """Write ``view`` to a temp file beside ``path``, fsync it, rename it to ``path``.

        Written directly (``_write_direct``) where it can be, else through the page cache;
        either way the fsync below is what makes it durable before the rename."""
        temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes.FILE_MODE)
            try:
                if not self._write_direct(temp, fd, view):
                    written_bytes = 0
                    while written_bytes < view.nbytes:
                        written_bytes += os.write(fd, view[written_bytes:])
                os.utime(fd, ns=self._stamp_ns())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, path)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
                raise StorageFull(f"disk full writing chunk {path.name}: {exc}") from exc
            if isinstance(exc, OSError):
                # A read-only or failing disk: this replica refuses, a coordinator tries another.
                raise StorageError(f"cannot write chunk {path.name}: {exc}") from exc
            raise

    def _write_direct(self, temp: Path, fd: int, view: memoryview) -> bool:
        """Write ``view`` to the empty file ``fd`` has open at ``temp`` past the page cache:
        copied into an aligned buffer, written padded to a whole block, then cut back to its
        length. False (nothing written) where that cannot be done: no buffer free, or a file
        system without direct I/O (then no further chunk tries it)."""
        if not self._direct_ok:
            return False
        buffer = self._take_direct_buffer()
        if buffer is None:
            return False
        try:
            try:
                direct_fd = os.open(temp, os.O_WRONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_ok = False  # tmpfs on older kernels and others: no direct I/O
                return False
            try:
                size_bytes = view.nbytes
                padded_bytes = -(-size_bytes // DIRECT_BLOCK_BYTES) * DIRECT_BLOCK_BYTES
                with memoryview(buffer) as aligned:
                    aligned[:size_bytes] = view
                    aligned[size_bytes:padded_bytes] = bytes(padded_bytes - size_bytes)
                    written_bytes = 0
                    while written_bytes < padded_bytes:
                        try:
                            written_bytes += os.write(direct_fd, aligned[written_bytes:padded_bytes])
                        except OSError as exc:
                            if exc.errno != errno.EINVAL or written_bytes:
                                raise
                            self._direct_ok = False  # the open was taken, the write refused
                            return False
            finally:
                os.close(direct_fd)
            if padded_bytes != size_bytes:
                os.ftruncate(fd, size_bytes)
            return True
        finally:
            self._give_back_direct_buffer(buffer)

    def _take_direct_buffer(self) -> mmap.mmap | None:
        with self._direct_lock:
            if self._direct_buffers:
                return self._direct_buffers.pop()
            if self._direct_buffers_made >= DIRECT_BUFFERS_MAX:
                return None
            self._direct_buffers_made += 1
        return mmap.mmap(-1, _DIRECT_BUFFER_BYTES)  # anonymous: page-aligned

    def _give_back_direct_buffer(self, buffer: mmap.mmap) -> None:
        with self._direct_lock:
            self._direct_buffers.append(buffer)

    def _read(self, path: Path, chunk_id: bytes) -> tuple[bytes, tuple[int, int]]:
        """The file's bytes and its (device, inode), read without trusting its size."""
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {chunk_id.hex()} is not held") from None
        with f:
            stat = os.fstat(f.fileno())
            # Read one byte more than the file should hold, and never more than one
            # byte past the largest chunk: a file that grew or was replaced by
            # something huge is caught without reading all of it.
            limit_bytes = min(stat.st_size, CHUNK_SIZE_BYTES_MAX) + 1
            parts = []
            got_bytes = 0
            while got_bytes < limit_bytes:
                part = f.read(limit_bytes - got_bytes)
                if not part:
                    break
                parts.append(part)
                got_bytes += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data, (stat.st_dev, stat.st_ino)

    def _quarantine(self, path: Path, inode: tuple[int, int], reason: str) -> None:
        """Move the bad file at ``path`` to quarantine, unless it was replaced meanwhile.

        ``inode`` identifies the file we read; if a delete and a fresh put replaced it
        after our read, the new file is a different inode and is left alone.
        """
        hex_id = path.parent.name + path.name
        with self._stripe(bytes.fromhex(hex_id)):
            try:
                stat = path.stat()
            except FileNotFoundError:
                return
            if (stat.st_dev, stat.st_ino) != inode:
                return
            target = self._quarantine_dir / f"{hex_id}.{self._clock.wall_ms()}.{next(self._quarantine_serials)}"
            os.rename(path, target)
            self._release(stat.st_size)
        log.error("chunk %s is corrupt (%s); moved to %s", hex_id, reason, target)

    def _create_dirs(self) -> None:
        # Private (see modes.py): the data dir itself too, whoever created it.
        modes.private_dir(self._root)
        modes.private_dir(self._quarantine_dir)
        modes.private_dir(self._chunks_dir)
        for fanout_name in _FANOUT_NAMES:
            modes.private_dir(self._chunks_dir / fanout_name)
        _fsync_dir(self._chunks_dir)
        _fsync_dir(self._root)

    def _scan(self) -> int:
        """Remove leftover temp files and return the total size of the chunks held."""
        used_bytes = 0
        for fanout_name in _FANOUT_NAMES:
            with os.scandir(self._chunks_dir / fanout_name) as entries:
                for entry in entries:
                    if entry.name.endswith(TEMP_SUFFIX):
                        log.info("removing temp file %s left by an interrupted write", entry.path)
                        os.unlink(entry.path)
                    elif _parse_chunk_name(fanout_name, entry.name) is not None:
                        used_bytes += entry.stat(follow_symlinks=False).st_size
                    else:
                        log.warning("ignoring unexpected file %s in the chunk store", entry.path)
        return used_bytes

    # ---- bounded iteration ------------------------------------------------------
    # For the background jobs of a node holding millions of chunks (anti-entropy, GC,
    # fsck, hand-off): ids come in id order (the fan-out dir is the id's first byte, and
    # a dir is sorted as it is listed), so a caller pages by key or walks the store in
    # batches and never holds more than one fan-out dir (a 256th of the store) and a batch.

    def ids_after(self, start_after: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` held ids greater than ``start_after`` (b"": from the first), in id order.

        A keyset page: lists only the fan-out dirs the page spans. Chunks put or deleted
        meanwhile may or may not appear.
        """
        assert limit > 0
        page: list[bytes] = []
        first = start_after[0] if start_after else 0
        for fanout_name in _FANOUT_NAMES[first:]:
            ids = self._ids_in_fanout(fanout_name)
            if start_after and ids and ids[0] <= start_after:
                ids = [chunk_id for chunk_id in ids if chunk_id > start_after]
            page.extend(ids[: limit - len(page)])
            if len(page) == limit:
                break
        return page

    def iter_id_batches(self, batch_ids: int) -> Iterator[list[bytes]]:
        """Every held id in id order, in lists of ``batch_ids`` (the last may be shorter).

        One fan-out dir is listed at a time; a batch may span dirs.
        """
        assert batch_ids > 0
        batch: list[bytes] = []
        for fanout_name in _FANOUT_NAMES:
            for chunk_id in self._ids_in_fanout(fanout_name):
                batch.append(chunk_id)
                if len(batch) == batch_ids:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def count_ids(self) -> int:
        """How many chunks are held, listing one fan-out dir at a time."""
        return sum(len(self._ids_in_fanout(fanout_name)) for fanout_name in _FANOUT_NAMES)

    def _ids_in_fanout(self, fanout_name: str) -> list[bytes]:
        with os.scandir(self._chunks_dir / fanout_name) as entries:
            ids = [chunk_id for entry in entries
                   if (chunk_id := _parse_chunk_name(fanout_name, entry.name)) is not None]
        ids.sort()
        return ids

    def unused_since(self, chunk_ids: list[bytes], before_ms: int) -> list[bytes]:
        """Those of ``chunk_ids`` held and not written or re-put since ``before_ms`` (the store's wall clock).

        What garbage collection may judge at all: a chunk written within the grace may
        belong to a put whose name is not written yet. One ``stat`` per id, no lock
        (``delete_if_unused_since`` checks again, atomically, before removing).
        """
        old = []
        for chunk_id in chunk_ids:
            try:
                if self._path(chunk_id).stat().st_mtime_ns < before_ms * 1_000_000:
                    old.append(chunk_id)
            except FileNotFoundError:
                continue
        return old


def _parse_chunk_name(fanout_name: str, name: str) -> bytes | None:
    """The chunk id a file in ``chunks/<fanout_name>/`` stands for, or None if it isn't one."""
    hex_id = fanout_name + name
    if len(fanout_name) != _FANOUT_HEX_CHARS or len(hex_id) != _CHUNK_ID_HEX_CHARS:
        return None
    if not _HEX_DIGITS.issuperset(hex_id):  # we only ever write lowercase hex
        return None
    return bytes.fromhex(hex_id)


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or create in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
