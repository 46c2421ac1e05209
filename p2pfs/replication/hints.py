"""Hints: what a stand-in holds for an owner that was down (Dynamo's hinted handoff).

A hint says "this chunk (or name) belongs on node X; hand it over when X is
back". Hints live in one SQLite file next to the node's data
(``DATA/hints.sqlite``), so they survive a restart of the stand-in. They expire
after ``hint_ttl_s``: anti-entropy is the safety net for what was never handed
over.

The file is this node's own, and a node never stops because of it. SQLite's
errors become the project's: a full disk ``StorageFull`` (the write fails over to
another replica), a read-only or failing one ``HintsError`` (a
``LocalStorageError``). A damaged file (a bad page, not a database at all) is
moved to ``DATA/quarantine`` and a new, empty one takes its place, at open or
when a call finds the damage (the call is then tried once more on the new file):
the hints it held are lost, which costs what losing a stand-in costs, and
anti-entropy repairs it. Hints are not rebuilt from the old file, unlike the name
index: they are a shortcut, not data.

Synchronous and thread-safe, like the rest of the storage room: trio code calls
it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from p2pfs.storage import modes
from p2pfs.storage.errors import StorageError, StorageFull
from p2pfs.storage.names import QUARANTINE_DIR_NAME

log = logging.getLogger(__name__)

HINTS_FILE_NAME = "hints.sqlite"
# Hints handed over per owner per delivery round: bounds the work of one round.
HINTS_PER_ROUND_MAX = 256
# Keys asked about in one query of ``hinted_among``: under SQLite's bound on a statement's
# parameters (999 in builds before 3.32).
HINTED_QUERY_KEYS_MAX = 500
# SQLite's primary result codes (sqlite3.h) for what is wrong with the file itself.
_SQLITE_DAMAGED = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_FULL = 13

T = TypeVar("T")


class HintsError(StorageError):
    """The hints file failed (read-only, I/O error): this node's disk, not a peer's fault."""


class HintKind(enum.IntEnum):
    CHUNK = 0  # key: the chunk id
    NAME = 1  # key: the name's UTF-8 bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Hint:
    owner: str
    kind: HintKind
    key: bytes
    created_ms: int


class HintStore:
    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        # Damaged files moved to quarantine and replaced since this store was opened.
        self.replaced_files = 0
        self._db: sqlite3.Connection | None = None
        try:
            self._open()
        except StorageError as exc:
            # Not fatal: the node runs without hints (a write that needs one fails over to
            # another replica) and every call tries to open the file again.
            log.error("%s; hints are refused until it opens", exc)

    def _open(self) -> sqlite3.Connection:
        """The connection, opened and the file checked if it is not open yet; a damaged file is replaced.

        Called with the lock held, or from ``__init__``.
        """
        if self._db is not None:
            return self._db
        try:
            self._db = self._connect(self._path)
            problem = _check_file(self._db)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                self._close()
                raise _translated(exc) from None
            problem = str(exc)
        except OSError as exc:
            raise HintsError(f"cannot open the hints file {self._path}: {exc.strerror}") from None
        if problem is not None:
            self._replace(problem)
        assert self._db is not None
        return self._db

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        modes.private_database(path)  # no one else reads which peer is owed which chunk
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                """CREATE TABLE IF NOT EXISTS hints (
                    owner TEXT NOT NULL, kind INTEGER NOT NULL, key BLOB NOT NULL,
                    created_ms INTEGER NOT NULL, PRIMARY KEY (owner, kind, key)
                ) WITHOUT ROWID"""
            )
        except BaseException:
            db.close()
            raise
        return db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _replace(self, reason: str) -> None:
        """Move the damaged file (and its -wal, -shm) to quarantine and open a new, empty one."""
        self._close()
        quarantine_dir = self._path.parent / QUARANTINE_DIR_NAME
        try:
            modes.private_dir(quarantine_dir)
            serial = next(n for n in itertools.count() if not (quarantine_dir / f"{self._path.name}.{n}").exists())
            for suffix in ("", "-wal", "-shm"):
                old = self._path.with_name(self._path.name + suffix)
                if old.exists():
                    os.replace(old, quarantine_dir / f"{self._path.name}.{serial}{suffix}")
            self._db = self._connect(self._path)
        except OSError as exc:
            raise HintsError(f"the hints file {self._path} is damaged ({reason}) and cannot be replaced: "
                             f"{exc.strerror}") from None
        except sqlite3.DatabaseError as exc:
            raise _translated(exc) from None
        self.replaced_files += 1
        log.warning("the hints file %s is damaged (%s): moved to %s and started afresh; "
                    "anti-entropy repairs what its hints were for", self._path, reason, quarantine_dir)

    def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """``operation`` on the connection, under the lock, with SQLite's errors made the project's.

        A damaged file is replaced and the operation tried once more, on the new one.
        """
        with self._lock:
            try:
                return operation(self._open())
            except sqlite3.DatabaseError as exc:
                if not _is_damage(exc):
                    raise _translated(exc) from None
                self._replace(str(exc))
            try:
                return operation(self._open())
            except sqlite3.DatabaseError as exc:
                raise _translated(exc) from None

    def close(self) -> None:
        with self._lock:
            self._close()

    def add(self, owner: str, kind: HintKind, key: bytes, created_ms: int) -> None:
        self._run(lambda db: db.execute(
            "INSERT OR IGNORE INTO hints (owner, kind, key, created_ms) VALUES (?, ?, ?, ?)",
            (owner, int(kind), key, created_ms),
        ))

    def count(self) -> int:
        """Hints held, for every owner."""
        return self._run(lambda db: db.execute("SELECT COUNT(*) FROM hints").fetchone()[0])

    def owners(self) -> list[str]:
        return self._run(lambda db: [row[0] for row in db.execute("SELECT DISTINCT owner FROM hints")])

    def for_owner(self, owner: str, limit: int = HINTS_PER_ROUND_MAX) -> list[Hint]:
        rows = self._run(lambda db: db.execute(
            "SELECT owner, kind, key, created_ms FROM hints WHERE owner = ? ORDER BY created_ms LIMIT ?",
            (owner, limit),
        ).fetchall())
        return [Hint(o, HintKind(k), bytes(key), c) for o, k, key, c in rows]

    def remove(self, hint: Hint) -> None:
        self._run(lambda db: db.execute(
            "DELETE FROM hints WHERE owner = ? AND kind = ? AND key = ?",
            (hint.owner, int(hint.kind), hint.key),
        ))

    def remove_owner(self, owner: str) -> int:
        """Drop every hint for ``owner`` (it left the ring for good); returns how many."""
        return self._run(lambda db: db.execute("DELETE FROM hints WHERE owner = ?", (owner,)).rowcount)

    def is_hinted(self, kind: HintKind, key: bytes) -> bool:
        """Whether any owner still waits for this key (then the stand-in must keep its copy)."""
        row = self._run(lambda db: db.execute(
            "SELECT 1 FROM hints WHERE kind = ? AND key = ? LIMIT 1", (int(kind), key)
        ).fetchone())
        return row is not None

    def expire(self, older_than_ms: int) -> int:
        return self._run(lambda db: db.execute("DELETE FROM hints WHERE created_ms < ?", (older_than_ms,)).rowcount)

    def hinted_among(self, kind: HintKind, keys: Sequence[bytes]) -> set[bytes]:
        """Those of ``keys`` that some owner still waits for: ``is_hinted`` for a batch, a query
        per HINTED_QUERY_KEYS_MAX keys (a leave asked once per key: three million queries and
        worker-thread hops at two million chunks and a million names)."""
        found: set[bytes] = set()
        for start in range(0, len(keys), HINTED_QUERY_KEYS_MAX):
            part = tuple(keys[start : start + HINTED_QUERY_KEYS_MAX])
            rows = self._run(lambda db: db.execute(
                f"SELECT DISTINCT key FROM hints WHERE kind = ? AND key IN ({', '.join('?' * len(part))})",
                (int(kind), *part),
            ).fetchall())
            found.update(bytes(row[0]) for row in rows)
        return found


def _check_file(db: sqlite3.Connection) -> str | None:
    """What ``PRAGMA quick_check`` finds wrong (the hints table is small: a read of each page), or None."""
    found = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)").fetchall()]
    return None if found == ["ok"] else "; ".join(found).replace("\n", "; ")


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _SQLITE_DAMAGED


def _translated(exc: sqlite3.Error) -> StorageError:
    """SQLite's error as the project's: a full disk ``StorageFull``, anything else ``HintsError``."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == _SQLITE_FULL:
        return StorageFull(f"the hints file cannot grow: {exc}")
    return HintsError(f"the hints file failed: {exc}")
