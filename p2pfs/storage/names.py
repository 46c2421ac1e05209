"""The name index: which manifest version each user-visible name points at.

Every write of a name (a put or a delete) is a NameEntry stamped with the writer's
hybrid logical clock and node id. Entries are merged last-writer-wins on
``(version, writer)``, a total order every node computes the same way, so replicas
that received the same entries in any order hold the same answer. A delete is an
entry without a manifest (a tombstone): it beats older versions, and must outlive
them everywhere before ``purge_tombstones`` may drop it.

Names are opaque UTF-8 keys: compared bytewise, never normalised, never turned into
file system paths. The index is one SQLite file (``DATA/names.sqlite``, WAL mode),
keyed by the name's UTF-8 bytes; the manifest is stored inline with the entry, so
replicating an entry replicates its manifest too. A small file's bytes may be part of
its manifest (``manifest.Manifest.inline``); the row then records how many
(``inline_bytes``), so the node counts them against its capacity.

Group commit: concurrent ``apply`` calls (the name writes of many puts arriving at
once, each in its own worker thread) share one transaction, and so one fsync of the
write-ahead log. The first caller to take the index lock commits every entry queued
by then (at most ``APPLY_BATCH_ENTRIES_MAX``); the others find theirs committed when
the lock comes to them. No caller waits for a batch to fill: a lone write commits at
once, as before. Each caller returns only after the COMMIT that holds its entry, with
``synchronous=FULL``, so an acknowledged name write survives a crash of the process
and, as far as the disk honours fsync, a power loss.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import msgpack

from p2pfs.storage import modes
from p2pfs.storage.errors import StorageError, StorageFull
from p2pfs.storage.hlc import Timestamp
from p2pfs.storage.naming import (
    ENTRY_ENCODED_BYTES_MAX,
    HEX_DIGITS,
    WRITER_HEX_CHARS,
    BadName,
    encode_name,
    utf8,
    validate_name,
)
from p2pfs.storage.manifest import (
    Manifest,
    ManifestError,
    unpack_strict,
)

log = logging.getLogger(__name__)

NAMES_FILE_NAME = "names.sqlite"
# Damaged index files go where the chunk store puts corrupt chunks (DATA/quarantine),
# as names.sqlite.<n> (with its -wal and -shm); the new file is built beside the old
# one under this suffix, then renamed into place.
QUARANTINE_DIR_NAME = "quarantine"
REBUILD_SUFFIX = ".rebuild"
# Problems PRAGMA quick_check reports at most: one is enough to rebuild, a few say why.
QUICK_CHECK_ERRORS_MAX = 5
# Characters of a damage report kept for the log line.
PROBLEM_CHARS_MAX = 300
# SQLite's primary result codes for a damaged file (sqlite.org/rescode.html), and a full one.
_SQLITE_DAMAGED = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_FULL = 13
# What decoding a damaged row can raise: a name that is not UTF-8 (ValueError), a
# column of the wrong type (TypeError, AttributeError), a manifest that does not parse.
_ROW_ERRORS = (ValueError, TypeError, AttributeError, ManifestError)
# First field of an encoded entry; a new layout gets a new number. Format 2 appends
# the writing client's id; an entry without one (written by a node's own jobs, or
# before client ids were recorded) is still encoded as format 1, byte for byte as
# before, so existing entries keep their encoding and their tie-break order.
ENTRY_FORMAT_VERSION = 1
ENTRY_FORMAT_VERSION_WITH_CLIENT = 2
_ENTRY_FIELDS = {ENTRY_FORMAT_VERSION: 6, ENTRY_FORMAT_VERSION_WITH_CLIENT: 7}

# On-disk schema version (PRAGMA user_version); bump with a migration. Version 2 adds
# the writing client's id (see _migrate_to_2), version 3 the inline content's size
# (_migrate_to_3). An older p2pfs refuses a newer file (it names the version it found).
SCHEMA_VERSION = 3
# Most entries one group commit writes in one transaction: bounds how long the index lock
# (which reads wait for too) is held by one commit, about 64 row writes plus one fsync.
APPLY_BATCH_ENTRIES_MAX = 64
# Rows fetched per query by list(): each query holds the index lock, so pages keep
# writers waiting briefly; each row may carry a manifest of up to
# MANIFEST_ENCODED_BYTES_MAX, so this also caps list()'s memory (32 x 4 MiB worst case).
LIST_PAGE_ROWS = 32
# Greater than every UTF-8 string (0xff never occurs in UTF-8): the open upper bound.
_AFTER_ALL_NAMES = b"\xff"
# Largest encoded manifest ``get_nowait`` decodes on the caller's thread (the event loop):
# a small file's, inline content and all (16 KiB at most), or a file's of up to about 1,500
# chunks. A larger one takes milliseconds to decode and is left to ``get`` in a worker thread.
NOWAIT_MANIFEST_BYTES_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class NameEntry:
    """One version of a name: a manifest, or None for a delete (a tombstone)."""

    name: str
    version: Timestamp  # the writer's HLC when the write happened
    writer: str  # node id (lowercase hex) of the node that stamped the version
    manifest: Manifest | None  # None = tombstone
    # Id (lowercase hex) of the client whose put or rm wrote this version; "" if unknown
    # (written before client ids were recorded).
    client: str = ""

    def __post_init__(self) -> None:
        validate_name(self.name)
        if type(self.version) is not Timestamp:
            raise TypeError(f"version must be a Timestamp, got {type(self.version).__name__}")
        writer = self.writer
        if type(writer) is not str or len(writer) != WRITER_HEX_CHARS or not HEX_DIGITS.issuperset(writer):
            raise ValueError(f"writer must be a node id: {WRITER_HEX_CHARS} lowercase hex digits, got {writer!r:.80}")
        if self.manifest is not None and type(self.manifest) is not Manifest:
            raise TypeError(f"manifest must be a Manifest or None, got {type(self.manifest).__name__}")
        client = self.client
        if type(client) is not str or (
            client and (len(client) != WRITER_HEX_CHARS or not HEX_DIGITS.issuperset(client))
        ):
            raise ValueError(f"client must be \"\" or a client id: {WRITER_HEX_CHARS} lowercase hex digits, "
                             f"got {client!r:.80}")

    @property
    def key(self) -> tuple[Timestamp, str]:
        """The last-writer-wins order: later HLC wins, the larger node id breaks ties."""
        return (self.version, self.writer)

    def supersedes(self, other: NameEntry) -> bool:
        """Whether this entry should replace ``other`` (a version of the same name).

        Equal keys cannot come from an honest writer (its clock never repeats), but a
        buggy or hostile one could send two different entries with one key; comparing
        the encoded bytes then still gives every node the same winner.
        """
        assert self.name == other.name, "only versions of one name are ordered"
        if self.key != other.key:
            return self.key > other.key
        return self.encode() > other.encode()

    def encode(self) -> bytes:
        """The wire form: a msgpack array with the manifest's own encoding inline (and the client's id)."""
        fields = [
            ENTRY_FORMAT_VERSION_WITH_CLIENT if self.client else ENTRY_FORMAT_VERSION,
            self.name,
            self.version.wall_ms,
            self.version.logical,
            self.writer,
            None if self.manifest is None else self.manifest.encode(),
        ]
        if self.client:
            fields.append(self.client)
        return msgpack.packb(fields, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> NameEntry:
        """Parse and check ``encode``'s output; anything else raises ManifestError."""
        if type(data) is bytes and len(data) > ENTRY_ENCODED_BYTES_MAX:
            raise ManifestError(f"name entry of {len(data)} bytes exceeds {ENTRY_ENCODED_BYTES_MAX}")
        fields = unpack_strict(data, "name entry")
        if type(fields) is not list or not fields:
            raise ManifestError("a name entry must be a non-empty array")
        version = fields[0]
        if type(version) is not int or version not in _ENTRY_FIELDS:
            raise ManifestError(f"unknown name entry format {version!r:.80}")
        if len(fields) != _ENTRY_FIELDS[version]:
            raise ManifestError(f"a name entry of format {version} must be a {_ENTRY_FIELDS[version]}-item array")
        _, name, wall_ms, logical, writer, manifest_bytes = fields[:6]
        client = fields[6] if version == ENTRY_FORMAT_VERSION_WITH_CLIENT else ""
        if version == ENTRY_FORMAT_VERSION_WITH_CLIENT and (type(client) is not str or not client):
            raise ManifestError("a format 2 name entry names its client")
        if manifest_bytes is not None and type(manifest_bytes) is not bytes:
            raise ManifestError("a name entry's manifest must be bytes or nil")
        manifest = None if manifest_bytes is None else Manifest.decode(manifest_bytes)
        try:
            return cls(name, Timestamp(wall_ms, logical), writer, manifest, client)
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"bad name entry: {exc}") from exc


class NameReadDeferred(StorageError):
    """``get_nowait`` could not answer at once (the file busy, a row that does not decode, a
    large manifest): ask ``get``, in a worker thread, which also deals with damage."""


class NameIndexDamaged(StorageError):
    """A row or a page of the name index was found damaged: it was quarantined, this call failed.

    The index is usable again at once (the bad rows removed, or the file rebuilt from
    what could be read); what was lost comes back from the replicas.
    """


class NameIndex:
    """Name -> newest NameEntry, in one SQLite file; safe to call from many threads.

    One connection, serialised by a lock: SQLite allows one writer anyway, and the
    calls are short (one row, or one page of rows).

    The file is this node's own data, and a node never stops because of it. It is
    checked when opened (``PRAGMA quick_check``) and row by row by the scrub
    (``check_rows``); every read decodes what it returns. A row that does not decode
    is deleted (counted in ``rows_quarantined``, logged at WARNING once per call that
    found any); a damaged page (SQLite's CORRUPT or NOTADB) makes the index move the
    file to ``DATA/quarantine`` and start a new one from the rows that can still be
    read (counted in ``rebuilds``). Either way the replicas hold every entry rf
    times: ``damage_count`` tells the replication layer to refill the index from them.
    """

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the index file, e.g. ``DATA / NAMES_FILE_NAME``."""
        self._path = Path(path)
        self._lock = threading.Lock()
        # Undecodable rows removed, and files rebuilt, since this index was opened.
        self.rows_quarantined = 0
        self.rebuilds = 0
        # Name writes waiting for a group commit (at most one per calling thread), under _queue_lock.
        self._queue: deque[_PendingApply] = deque()
        self._queue_lock = threading.Lock()
        # Content bytes held inline in the rows (the sum of their inline_bytes), kept under _lock.
        self._inline_bytes = 0
        self._conn: sqlite3.Connection | None = None
        # get_nowait's own connection, opened on first use and again after a rebuild (it would
        # still read the quarantined file): its lock is never waited for, only tried.
        self._reader: sqlite3.Connection | None = None
        self._reader_rebuilds = 0
        self._reader_lock = threading.Lock()
        try:
            self._conn = self._connect(self._path)
            problem = _check_file(self._conn)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            problem = str(exc)  # not even the header reads: nothing to copy
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if problem is not None:
            self._rebuild(problem)
        self._inline_bytes = _inline_bytes_held(self._conn)

    @property
    def inline_bytes(self) -> int:
        """File content held inline in the index, in bytes: counted against the node's capacity."""
        return self._inline_bytes

    @property
    def damage_count(self) -> int:
        """Grows whenever entries may have been lost here: what a refill from the replicas waits for."""
        return self.rows_quarantined + self.rebuilds

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        # check_same_thread=False: trio runs our calls on worker threads; the lock
        # serialises them.
        modes.private_database(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            NameIndex._setup(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _setup(conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"could not put the name index in WAL mode (got {mode!r})")
        # FULL: a name write that was acknowledged survives power loss, not only a
        # process crash (NORMAL can lose the last commits); names are written far
        # less often than chunks, so the extra fsync is cheap.
        conn.execute("PRAGMA synchronous=FULL")
        schema_version = conn.execute("PRAGMA user_version").fetchone()[0]
        if schema_version == SCHEMA_VERSION:
            return
        if schema_version == 1:
            _migrate_to_2(conn)
            schema_version = 2
        if schema_version == 2:
            _migrate_to_3(conn)
            return
        if schema_version != 0:
            raise StorageError(
                f"name index schema version {schema_version} is not {SCHEMA_VERSION}: "
                f"written by a different p2pfs version"
            )
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            """CREATE TABLE names (
                name BLOB PRIMARY KEY,    -- UTF-8 bytes: opaque, ordered bytewise
                wall_ms INTEGER NOT NULL,
                logical INTEGER NOT NULL,
                writer TEXT NOT NULL,
                manifest BLOB,            -- Manifest.encode(); NULL for a tombstone
                client TEXT NOT NULL DEFAULT '',  -- the writing client's id; '' if not known
                inline_bytes INTEGER NOT NULL DEFAULT 0  -- file content inside the manifest, in bytes
            )"""
        )
        conn.execute("CREATE INDEX tombstones ON names (wall_ms, logical) WHERE manifest IS NULL")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> NameIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- damage -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; SQLite's errors turned into the storage room's.

        A damaged file is quarantined and rebuilt before the call fails; a full disk
        is ``StorageFull`` and a read-only or failing one a ``StorageError``, so a
        coordinator tries another replica. Errors SQLite did not raise (misuse) pass.
        """
        with self._lock:
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                code = getattr(exc, "sqlite_errorcode", None)
                if code is None:
                    raise
                if _is_damage(exc):
                    self._rebuild(str(exc))
                    raise NameIndexDamaged(f"the name index was damaged ({exc}); rebuilt") from None
                if code & 0xFF == _SQLITE_FULL:
                    raise StorageFull(f"the name index cannot grow: {exc}") from None
                raise StorageError(f"the name index failed: {exc}") from None

    def _rebuild(self, reason: str) -> None:
        """Move the damaged file to quarantine and carry on with a new one holding every row still readable.

        Called with the lock held (or from ``__init__``). Rows are copied as they are
        read and the copy stops at the first unreadable page: what it misses, the
        replicas refill.
        """
        quarantine_dir = self._path.parent / QUARANTINE_DIR_NAME
        modes.private_dir(quarantine_dir)
        fresh_path = self._path.with_name(self._path.name + REBUILD_SUFFIX)
        for stale in _database_files(fresh_path):
            stale.unlink(missing_ok=True)
        fresh = self._connect(fresh_path)
        copied, bad = 0, 0
        try:
            if self._conn is not None:
                try:
                    rows = self._conn.execute(
                        "SELECT name, wall_ms, logical, writer, manifest, client, inline_bytes FROM names"
                    )
                    for row in rows:
                        if _decode_row(*row[:6]) is None:
                            bad += 1
                            continue
                        fresh.execute("INSERT OR IGNORE INTO names (name, wall_ms, logical, writer, manifest, "
                                      "client, inline_bytes) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                        copied += 1
                except sqlite3.DatabaseError:
                    pass  # the rest of the file is past the damage
        finally:
            fresh.close()
            if self._conn is not None:
                self._conn.close()
        serial = next(n for n in itertools.count() if not (quarantine_dir / f"{self._path.name}.{n}").exists())
        for old in _database_files(self._path):
            if old.exists():
                os.replace(old, quarantine_dir / f"{old.name.replace(self._path.name, f'{self._path.name}.{serial}')}")
        os.replace(fresh_path, self._path)
        self._conn = self._connect(self._path)
        self._inline_bytes = _inline_bytes_held(self._conn)
        self.rebuilds += 1
        self.rows_quarantined += bad
        log.warning(
            "the name index %s is damaged (%s): moved to %s, %d rows kept, %d undecodable dropped; "
            "the replicas refill the rest", self._path, reason, quarantine_dir, copied, bad,
        )

    def _drop_rows(self, conn: sqlite3.Connection, bad: list[tuple[bytes, str]]) -> None:
        """Delete rows that did not decode (lock held); one WARNING for the lot."""
        if not bad:
            return
        for name_bytes, _ in bad:
            for (inline_bytes,) in conn.execute("DELETE FROM names WHERE name IS ? RETURNING inline_bytes",
                                                (name_bytes,)).fetchall():
                self._inline_bytes -= inline_bytes if type(inline_bytes) is int else 0
        self.rows_quarantined += len(bad)
        log.warning(
            "the name index held %d undecodable rows (first: %r: %s); removed, the replicas refill them",
            len(bad), bad[0][0][:64], bad[0][1],
        )

    def check_rows(self, start_after: bytes, limit: int) -> tuple[bytes, int]:
        """Decode up to ``limit`` rows after ``start_after`` (the scrub); remove bad ones.

        Returns the key to continue after (``b""`` once the pass is over: the whole
        file is then checked with ``PRAGMA quick_check``) and how many rows were bad.
        """
        assert limit > 0
        with self._guarded() as conn:
            rows = conn.execute(
                """SELECT name, wall_ms, logical, writer, manifest, client FROM names
                WHERE name > ? ORDER BY name LIMIT ?""",
                (start_after, limit),
            ).fetchall()
            bad = [(row[0], why) for row in rows if (why := _row_problem(*row)) is not None]
            self._drop_rows(conn, bad)
            if len(rows) == limit:
                return rows[-1][0], len(bad)
            problem = _check_file(conn)
            if problem is not None:
                self._rebuild(problem)
        return b"", len(bad)

    # -- entries ------------------------------------------------------------------------

    def apply(self, entry: NameEntry) -> bool:
        """Store ``entry`` if it supersedes what is held (LWW); True if the index changed.

        Idempotent and order-independent: applying the same set of entries in any
        order leaves the same entry per name. A held row that does not decode is
        replaced. Durable (fsynced) when it returns; concurrent calls share one
        transaction and one fsync (group commit, see the module docstring).
        """
        manifest = entry.manifest
        pending = _PendingApply(
            entry, encode_name(entry.name), None if manifest is None else manifest.encode(),
            0 if manifest is None else manifest.inline_bytes,
        )
        with self._queue_lock:
            self._queue.append(pending)
        with self._guarded() as conn:
            while not pending.done:
                self._commit_batch(conn, self._next_batch(pending), pending)
        return pending.applied

    def _next_batch(self, pending: _PendingApply) -> list[_PendingApply]:
        """The queued writes to commit together (lock held): ``pending`` alone after its batch failed."""
        if pending.alone:
            return [pending]
        with self._queue_lock:
            return [self._queue.popleft() for _ in range(min(len(self._queue), APPLY_BATCH_ENTRIES_MAX))]

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_PendingApply], own: _PendingApply) -> None:
        """Apply a batch in one transaction (lock held), for the caller of ``own``.

        If it fails, the error is raised to that caller (its own write withdrawn if it was
        still queued), and every other write of the batch is tried again on its own by its
        caller, which then sees its own error (or succeeds).
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            changes = [self._apply_one(conn, pending) for pending in batch]
            conn.execute("COMMIT")
        except BaseException:
            for pending in batch:
                pending.alone = True
            with self._queue_lock:
                if own in self._queue:
                    self._queue.remove(own)
            raise
        for pending, inline_delta_bytes in zip(batch, changes):
            pending.applied = inline_delta_bytes is not None
            self._inline_bytes += inline_delta_bytes or 0
            pending.done = True

    def _apply_one(self, conn: sqlite3.Connection, pending: _PendingApply) -> int | None:
        """Write one entry inside the batch's transaction if it wins; the change of the inline
        bytes held if it was written, None if what is held supersedes it."""
        entry, name_bytes = pending.entry, pending.name_bytes
        row = conn.execute(
            "SELECT wall_ms, logical, writer, manifest, client, inline_bytes FROM names WHERE name = ?",
            (name_bytes,),
        ).fetchone()
        held = None if row is None else _decode_row(name_bytes, *row[:5])
        held_inline_bytes = 0
        if row is not None and held is None:
            self._drop_rows(conn, [(name_bytes, "replaced by a new version")])
        elif held is not None:
            if not entry.supersedes(held):
                return None
            held_inline_bytes = row[5]
        conn.execute(
            """INSERT INTO names (name, wall_ms, logical, writer, manifest, client, inline_bytes)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET wall_ms = excluded.wall_ms,
                logical = excluded.logical, writer = excluded.writer,
                manifest = excluded.manifest, client = excluded.client,
                inline_bytes = excluded.inline_bytes""",
            (name_bytes, entry.version.wall_ms, entry.version.logical, entry.writer, pending.manifest_bytes,
             entry.client, pending.inline_bytes),
        )
        return pending.inline_bytes - held_inline_bytes

    def get(self, name: str) -> NameEntry | None:
        """The newest entry held for ``name`` (a tombstone if deleted), or None.

        ``NameIndexDamaged`` if the row did not decode (it is removed): this replica
        cannot answer for the name until it is refilled.
        """
        name_bytes = encode_name(name)
        with self._guarded() as conn:
            row = conn.execute(
                "SELECT wall_ms, logical, writer, manifest, client FROM names WHERE name = ?",
                (name_bytes,),
            ).fetchone()
            if row is None:
                return None
            why = _row_problem(name_bytes, *row)
            if why is None:
                return _entry_from_row(name_bytes, *row)
            self._drop_rows(conn, [(name_bytes, why)])
        raise NameIndexDamaged(f"the entry of {name!r} was damaged here ({why}); removed")

    def get_nowait(self, name: str) -> NameEntry | None:
        """``get`` for the event loop: no index lock, no worker thread; or NameReadDeferred.

        A name read is the whole of a replica's work for a quorum read, and a thread hop
        cost more CPU than the read itself (about 90 µs against 7 µs here; docs/BENCHMARKS.md,
        "Small files: CPU per operation"). So this reads through a connection of its own,
        which in WAL mode never waits for the writer (a group commit holds the index lock
        through its fsync) and sees every COMMIT made before the read began: a write
        acknowledged before it is never missed, one still in its transaction is not seen,
        exactly as with ``get``. It never waits for a lock (busy timeout 0), and it only
        reads (one primary-key lookup, in pages the OS keeps cached): when the file is busy, SQLite fails, a row does not decode, or a manifest is over
        ``NOWAIT_MANIFEST_BYTES_MAX``, it raises NameReadDeferred and ``get`` answers.
        """
        name_bytes = encode_name(name)
        if not self._reader_lock.acquire(blocking=False):
            raise NameReadDeferred("another thread is reading")
        try:
            try:
                if self._reader is None or self._reader_rebuilds != self.rebuilds:
                    self._open_reader()
                rows = self._reader.execute(
                    "SELECT wall_ms, logical, writer, manifest, client FROM names WHERE name = ?", (name_bytes,),
                ).fetchall()  # to the end: the statement, and so its read transaction, is over
            except sqlite3.Error as exc:
                raise NameReadDeferred(f"the name index: {exc}") from None
        finally:
            self._reader_lock.release()
        if not rows:
            return None
        row = rows[0]
        manifest = row[3]
        if type(manifest) is bytes and len(manifest) > NOWAIT_MANIFEST_BYTES_MAX:
            raise NameReadDeferred(f"a manifest of {len(manifest)} bytes")
        try:
            return _entry_from_row(name_bytes, *row)
        except _ROW_ERRORS as exc:
            raise NameReadDeferred(f"the entry of {name!r} does not decode: {exc}") from None

    def _open_reader(self) -> None:
        """(Re)open get_nowait's connection (reader lock held), on the index file as it is now."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        rebuilds = self.rebuilds
        # mode=rw: never create the file (it is missing only midway through a rebuild).
        reader = sqlite3.connect(f"{self._path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None,
                                 check_same_thread=False, timeout=0)
        try:
            reader.execute("PRAGMA query_only = 1")
        except BaseException:
            reader.close()
            raise
        self._reader, self._reader_rebuilds = reader, rebuilds

    def list(self, prefix: str = "", include_tombstones: bool = False, start_after: str = "") -> Iterator[NameEntry]:
        """Entries whose name starts with ``prefix``, in UTF-8 byte order, after ``start_after``;
        damaged rows skipped (and removed).

        Fetched a page at a time, so entries written while iterating may or may not
        appear, and no lock is held between pages. ``start_after`` starts the scan
        there (an index seek), so a listing paged by name costs each page its own rows.
        """
        if type(prefix) is not str:
            raise BadName(f"a prefix must be a str, got {type(prefix).__name__}")
        lower = utf8(prefix)
        # The smallest byte string after every string starting with `lower`: bump its
        # last byte (never 0xff in UTF-8, so no carry).
        upper = lower[:-1] + bytes([lower[-1] + 1]) if lower else _AFTER_ALL_NAMES
        if start_after:
            lower = max(lower, utf8(start_after) + b"\x00")  # the next byte string after it
        while True:
            with self._guarded() as conn:
                rows = conn.execute(
                    """SELECT name, wall_ms, logical, writer, manifest, client FROM names
                    WHERE name >= ? AND name < ? AND (? OR manifest IS NOT NULL)
                    ORDER BY name LIMIT ?""",
                    (lower, upper, include_tombstones, LIST_PAGE_ROWS),
                ).fetchall()
                decoded = [(row, _decode_row(*row)) for row in rows]
                self._drop_rows(conn, [(row[0], "does not decode") for row, entry in decoded if entry is None])
            for _, entry in decoded:
                if entry is not None:
                    yield entry
            if len(rows) < LIST_PAGE_ROWS:
                return
            lower = rows[-1][0] + b"\x00"  # the next byte string after the last name seen

    def summaries(self) -> list[tuple[str, Timestamp, str, bool]]:
        """(name, version, writer, is_tombstone) of every entry, without decoding manifests.

        What anti-entropy compares: the version decides which replica is behind. Rows
        whose name, version or writer do not decode are removed.
        """
        with self._guarded() as conn:
            rows = conn.execute(
                "SELECT name, wall_ms, logical, writer, manifest IS NULL FROM names"
            ).fetchall()
            found = self._decode_summaries(conn, rows)
        return found

    def _decode_summaries(self, conn, rows) -> list[tuple[str, Timestamp, str, bool]]:
        """Decode ``summaries`` rows; rows whose name, version or writer do not decode are removed."""
        found, bad = [], []
        for name_bytes, wall_ms, logical, writer, tomb in rows:
            try:
                key = NameEntry(name_bytes.decode("utf-8"), Timestamp(wall_ms, logical), writer, None)
            except _ROW_ERRORS as exc:
                bad.append((name_bytes, str(exc)))
                continue
            found.append((key.name, key.version, key.writer, bool(tomb)))
        self._drop_rows(conn, bad)
        return found

    def remove_if(self, name: str, version: Timestamp, writer: str) -> bool:
        """Drop ``name``'s entry if it is still exactly this version (a node handing a name
        off must not drop a newer version that arrived meanwhile); True if removed."""
        with self._guarded() as conn:
            removed = conn.execute(
                "DELETE FROM names WHERE name = ? AND wall_ms = ? AND logical = ? AND writer = ? "
                "RETURNING inline_bytes",
                (encode_name(name), version.wall_ms, version.logical, writer),
            ).fetchall()
            self._inline_bytes -= sum(inline_bytes for (inline_bytes,) in removed)
            return bool(removed)

    def purge_tombstones(self, older_than: Timestamp) -> int:
        """Drop tombstones with a version before ``older_than``; returns how many.

        Safe only once no replica can still hold (or be sent) a version the tombstone
        hides: otherwise that version comes back to life. The replication layer picks
        ``older_than`` (e.g. now minus a grace period longer than any outage it repairs).
        """
        with self._guarded() as conn:
            cursor = conn.execute(
                "DELETE FROM names WHERE manifest IS NULL AND (wall_ms, logical) < (?, ?)",
                (older_than.wall_ms, older_than.logical),
            )
            return cursor.rowcount

    # -- bounded iteration --------------------------------------------------------------

    def summaries_after(self, start_after: bytes, limit: int) -> tuple[list[tuple[str, Timestamp, str, bool]], bytes]:
        """``summaries`` a keyset page at a time: up to ``limit`` rows after the name bytes ``start_after``.

        Returns the page in name (UTF-8 byte) order and the key to go on after (``b""``
        once the index is done). One query per page under the lock, so a walk over a
        million names holds one page and keeps writers waiting one page at a time.
        """
        assert limit > 0
        with self._guarded() as conn:
            rows = conn.execute(
                "SELECT name, wall_ms, logical, writer, manifest IS NULL FROM names WHERE name > ? "
                "ORDER BY name LIMIT ?",
                (start_after, limit),
            ).fetchall()
            found = self._decode_summaries(conn, rows)
        return found, (rows[-1][0] if len(rows) == limit else b"")

    def summaries_of(self, names: list[bytes]) -> list[tuple[str, Timestamp, str, bool]]:
        """``summaries`` of those of ``names`` (UTF-8 bytes) held here, in name order.

        What anti-entropy reads for the names one bucket listed at its last walk: the
        versions held now, and nothing for a name gone since. One query per
        ``SUMMARIES_OF_NAMES_MAX`` names under the lock.
        """
        found = []
        for start in range(0, len(names), SUMMARIES_OF_NAMES_MAX):
            batch = names[start : start + SUMMARIES_OF_NAMES_MAX]
            with self._guarded() as conn:
                rows = conn.execute(
                    "SELECT name, wall_ms, logical, writer, manifest IS NULL FROM names WHERE name IN "
                    f"({', '.join('?' * len(batch))})",
                    batch,
                ).fetchall()
                found += self._decode_summaries(conn, rows)
        return sorted(found, key=lambda row: row[0].encode("utf-8"))

    def remove_many_if(self, versions: list[tuple[str, Timestamp, str]]) -> int:
        """``remove_if`` for many names in one transaction (one commit, one fsync); the count removed.

        What a leave's hand-off drops: a million names one commit each is a million
        fsyncs (``synchronous=FULL``). Callers pass a bounded batch (hand-off passes
        ``HANDOFF_BATCH_NAMES``), so the lock is held for one batch's deletes.
        """
        removed = 0
        with self._guarded() as conn:
            conn.execute("BEGIN IMMEDIATE")
            freed = 0
            for name, version, writer in versions:
                rows = conn.execute(
                    "DELETE FROM names WHERE name = ? AND wall_ms = ? AND logical = ? AND writer = ? "
                    "RETURNING inline_bytes",
                    (encode_name(name), version.wall_ms, version.logical, writer),
                ).fetchall()
                removed += len(rows)
                freed += sum(inline_bytes for (inline_bytes,) in rows)
            conn.execute("COMMIT")
            self._inline_bytes -= freed
        return removed


@dataclass(slots=True, eq=False)  # compared by identity: two writes may carry equal fields
class _PendingApply:
    """One name write waiting for its group commit; ``done`` once a COMMIT holds it."""

    entry: NameEntry
    name_bytes: bytes
    manifest_bytes: bytes | None
    inline_bytes: int
    applied: bool = False  # whether it replaced what was held (valid once done)
    done: bool = False
    alone: bool = False  # its batch failed: its caller commits it by itself


def _inline_bytes_held(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(SUM(inline_bytes), 0) FROM names").fetchone()[0]


def _check_file(conn: sqlite3.Connection) -> str | None:
    """What ``PRAGMA quick_check`` finds wrong with the file (pages, b-trees), or None if nothing.

    quick_check reads every page once (integrity_check also compares indexes with
    their tables, several times slower); a file too damaged to read at all is a
    problem too, not an exception.
    """
    try:
        rows = conn.execute(f"PRAGMA quick_check({QUICK_CHECK_ERRORS_MAX})").fetchall()
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        return str(exc)
    found = [str(row[0]) for row in rows]
    # One line (quick_check's own lines break), short enough for a log line.
    return None if found == ["ok"] else "; ".join(found).replace("\n", "; ")[:PROBLEM_CHARS_MAX]


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _SQLITE_DAMAGED


def _database_files(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))]


def _row_problem(name_bytes: object, wall_ms: object, logical: object, writer: object, manifest: object,
                 client: object) -> str | None:
    """Why a row does not decode to an entry, or None if it does."""
    try:
        _entry_from_row(name_bytes, wall_ms, logical, writer, manifest, client)
    except _ROW_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


def _decode_row(name_bytes, wall_ms, logical, writer, manifest, client) -> NameEntry | None:
    try:
        return _entry_from_row(name_bytes, wall_ms, logical, writer, manifest, client)
    except _ROW_ERRORS:
        return None


def _entry_from_row(
    name_bytes: bytes, wall_ms: int, logical: int, writer: str, manifest: bytes | None, client: str
) -> NameEntry:
    return NameEntry(
        name=name_bytes.decode("utf-8"),
        version=Timestamp(wall_ms, logical),
        writer=writer,
        manifest=None if manifest is None else Manifest.decode(manifest),
        client=client,
    )


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: add the writing client's column; existing rows say '' (not known)."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE names ADD COLUMN client TEXT NOT NULL DEFAULT ''")
    conn.execute("PRAGMA user_version = 2")
    conn.execute("COMMIT")


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3: add the inline content's size; existing rows hold none (0), so nothing is rewritten."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE names ADD COLUMN inline_bytes INTEGER NOT NULL DEFAULT 0")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")


# Names looked up per query of ``NameIndex.summaries_of``: one bucket's names take a few
# queries, and each holds the index lock briefly (SQLite allows 32,766 parameters).
SUMMARIES_OF_NAMES_MAX = 500
