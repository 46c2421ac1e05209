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
replicating an entry replicates its manifest too.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import msgpack

from p2pfs.storage import modes
from p2pfs.storage.errors import StorageError
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

NAMES_FILE_NAME = "names.sqlite"
# First field of an encoded entry; a new layout gets a new number.
ENTRY_FORMAT_VERSION = 1
_ENTRY_FIELDS = 6

# On-disk schema version (PRAGMA user_version); bump with a migration.
SCHEMA_VERSION = 1
# Rows fetched per query by list(): each query holds the index lock, so pages keep
# writers waiting briefly; each row may carry a manifest of up to
# MANIFEST_ENCODED_BYTES_MAX, so this also caps list()'s memory (32 x 4 MiB worst case).
LIST_PAGE_ROWS = 32
# Greater than every UTF-8 string (0xff never occurs in UTF-8): the open upper bound.
_AFTER_ALL_NAMES = b"\xff"


@dataclass(frozen=True, slots=True)
class NameEntry:
    """One version of a name: a manifest, or None for a delete (a tombstone)."""

    name: str
    version: Timestamp  # the writer's HLC when the write happened
    writer: str  # node id (lowercase hex) of the node that stamped the version
    manifest: Manifest | None  # None = tombstone

    def __post_init__(self) -> None:
        validate_name(self.name)
        if type(self.version) is not Timestamp:
            raise TypeError(f"version must be a Timestamp, got {type(self.version).__name__}")
        writer = self.writer
        if type(writer) is not str or len(writer) != WRITER_HEX_CHARS or not HEX_DIGITS.issuperset(writer):
            raise ValueError(f"writer must be a node id: {WRITER_HEX_CHARS} lowercase hex digits, got {writer!r:.80}")
        if self.manifest is not None and type(self.manifest) is not Manifest:
            raise TypeError(f"manifest must be a Manifest or None, got {type(self.manifest).__name__}")

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
        """The wire form: a msgpack array with the manifest's own encoding inline."""
        return msgpack.packb(
            [
                ENTRY_FORMAT_VERSION,
                self.name,
                self.version.wall_ms,
                self.version.logical,
                self.writer,
                None if self.manifest is None else self.manifest.encode(),
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> NameEntry:
        """Parse and check ``encode``'s output; anything else raises ManifestError."""
        if type(data) is bytes and len(data) > ENTRY_ENCODED_BYTES_MAX:
            raise ManifestError(f"name entry of {len(data)} bytes exceeds {ENTRY_ENCODED_BYTES_MAX}")
        fields = unpack_strict(data, "name entry")
        if type(fields) is not list or len(fields) != _ENTRY_FIELDS:
            raise ManifestError(f"a name entry must be a {_ENTRY_FIELDS}-item array")
        version, name, wall_ms, logical, writer, manifest_bytes = fields
        if type(version) is not int or version != ENTRY_FORMAT_VERSION:
            raise ManifestError(f"unknown name entry format {version!r:.80}")
        if manifest_bytes is not None and type(manifest_bytes) is not bytes:
            raise ManifestError("a name entry's manifest must be bytes or nil")
        manifest = None if manifest_bytes is None else Manifest.decode(manifest_bytes)
        try:
            return cls(name, Timestamp(wall_ms, logical), writer, manifest)
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"bad name entry: {exc}") from exc


class NameIndex:
    """Name -> newest NameEntry, in one SQLite file; safe to call from many threads.

    One connection, serialised by a lock: SQLite allows one writer anyway, and the
    calls are short (one row, or one page of rows).
    """

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the index file, e.g. ``DATA / NAMES_FILE_NAME``."""
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        # check_same_thread=False: trio runs our calls on worker threads; the lock
        # above serialises them.
        modes.private_database(Path(path))
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        conn = self._conn
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
                manifest BLOB             -- Manifest.encode(); NULL for a tombstone
            )"""
        )
        conn.execute("CREATE INDEX tombstones ON names (wall_ms, logical) WHERE manifest IS NULL")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> NameIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def apply(self, entry: NameEntry) -> bool:
        """Store ``entry`` if it supersedes what is held (LWW); True if the index changed.

        Idempotent and order-independent: applying the same set of entries in any
        order leaves the same entry per name.
        """
        name_bytes = encode_name(entry.name)
        manifest_bytes = None if entry.manifest is None else entry.manifest.encode()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT wall_ms, logical, writer, manifest FROM names WHERE name = ?",
                    (name_bytes,),
                ).fetchone()
                if row is not None:
                    held_key = (Timestamp(row[0], row[1]), row[2])
                    if entry.key < held_key or (
                        entry.key == held_key and not entry.supersedes(_entry_from_row(name_bytes, *row))
                    ):
                        conn.execute("ROLLBACK")
                        return False
                conn.execute(
                    """INSERT INTO names (name, wall_ms, logical, writer, manifest)
                    VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (name) DO UPDATE SET wall_ms = excluded.wall_ms,
                        logical = excluded.logical, writer = excluded.writer,
                        manifest = excluded.manifest""",
                    (name_bytes, entry.version.wall_ms, entry.version.logical, entry.writer, manifest_bytes),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return True

    def get(self, name: str) -> NameEntry | None:
        """The newest entry held for ``name`` (a tombstone if deleted), or None."""
        name_bytes = encode_name(name)
        with self._lock:
            row = self._conn.execute(
                "SELECT wall_ms, logical, writer, manifest FROM names WHERE name = ?",
                (name_bytes,),
            ).fetchone()
        return None if row is None else _entry_from_row(name_bytes, *row)

    def list(self, prefix: str = "", include_tombstones: bool = False, start_after: str = "") -> Iterator[NameEntry]:
        """Entries whose name starts with ``prefix``, in UTF-8 byte order, after ``start_after``.

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
            with self._lock:
                rows = self._conn.execute(
                    """SELECT name, wall_ms, logical, writer, manifest FROM names
                    WHERE name >= ? AND name < ? AND (? OR manifest IS NOT NULL)
                    ORDER BY name LIMIT ?""",
                    (lower, upper, include_tombstones, LIST_PAGE_ROWS),
                ).fetchall()
            for row in rows:
                yield _entry_from_row(*row)
            if len(rows) < LIST_PAGE_ROWS:
                return
            lower = rows[-1][0] + b"\x00"  # the next byte string after the last name seen

    def summaries(self) -> list[tuple[str, Timestamp, str, bool]]:
        """(name, version, writer, is_tombstone) of every entry, without decoding manifests.

        What anti-entropy compares: the version decides which replica is behind.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, wall_ms, logical, writer, manifest IS NULL FROM names"
            ).fetchall()
        return [(n.decode("utf-8"), Timestamp(w, lg), wr, bool(t)) for n, w, lg, wr, t in rows]

    def remove_if(self, name: str, version: Timestamp, writer: str) -> bool:
        """Drop ``name``'s entry if it is still exactly this version (a node handing a name
        off must not drop a newer version that arrived meanwhile); True if removed."""
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM names WHERE name = ? AND wall_ms = ? AND logical = ? AND writer = ?",
                (encode_name(name), version.wall_ms, version.logical, writer),
            )
            return cursor.rowcount > 0

    def purge_tombstones(self, older_than: Timestamp) -> int:
        """Drop tombstones with a version before ``older_than``; returns how many.

        Safe only once no replica can still hold (or be sent) a version the tombstone
        hides: otherwise that version comes back to life. The replication layer picks
        ``older_than`` (e.g. now minus a grace period longer than any outage it repairs).
        """
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM names WHERE manifest IS NULL AND (wall_ms, logical) < (?, ?)",
                (older_than.wall_ms, older_than.logical),
            )
            return cursor.rowcount


def _entry_from_row(name_bytes: bytes, wall_ms: int, logical: int, writer: str, manifest: bytes | None) -> NameEntry:
    return NameEntry(
        name=name_bytes.decode("utf-8"),
        version=Timestamp(wall_ms, logical),
        writer=writer,
        manifest=None if manifest is None else Manifest.decode(manifest),
    )
