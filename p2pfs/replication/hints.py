"""Hints: what a stand-in holds for an owner that was down (Dynamo's hinted handoff).

A hint says "this chunk (or name) belongs on node X; hand it over when X is
back". Hints live in one SQLite file next to the node's data
(``DATA/hints.sqlite``), so they survive a restart of the stand-in. They expire
after ``hint_ttl_s``: anti-entropy is the safety net for what was never handed
over.

Synchronous and thread-safe, like the rest of the storage room: trio code calls
it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import dataclasses
import enum
import sqlite3
import threading
from pathlib import Path

from p2pfs.storage import modes

HINTS_FILE_NAME = "hints.sqlite"
# Hints handed over per owner per delivery round: bounds the work of one round.
HINTS_PER_ROUND_MAX = 256


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
        self._lock = threading.Lock()
        modes.private_database(path)  # no one else reads which peer is owed which chunk
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS hints (
                owner TEXT NOT NULL, kind INTEGER NOT NULL, key BLOB NOT NULL,
                created_ms INTEGER NOT NULL, PRIMARY KEY (owner, kind, key)
            ) WITHOUT ROWID"""
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, owner: str, kind: HintKind, key: bytes, created_ms: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO hints (owner, kind, key, created_ms) VALUES (?, ?, ?, ?)",
                (owner, int(kind), key, created_ms),
            )

    def count(self) -> int:
        """Hints held, for every owner."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM hints").fetchone()[0]

    def owners(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT DISTINCT owner FROM hints")]

    def for_owner(self, owner: str, limit: int = HINTS_PER_ROUND_MAX) -> list[Hint]:
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, kind, key, created_ms FROM hints WHERE owner = ? ORDER BY created_ms LIMIT ?",
                (owner, limit),
            ).fetchall()
        return [Hint(o, HintKind(k), bytes(key), c) for o, k, key, c in rows]

    def remove(self, hint: Hint) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM hints WHERE owner = ? AND kind = ? AND key = ?",
                (hint.owner, int(hint.kind), hint.key),
            )

    def remove_owner(self, owner: str) -> int:
        """Drop every hint for ``owner`` (it left the ring for good); returns how many."""
        with self._lock:
            return self._db.execute("DELETE FROM hints WHERE owner = ?", (owner,)).rowcount

    def is_hinted(self, kind: HintKind, key: bytes) -> bool:
        """Whether any owner still waits for this key (then the stand-in must keep its copy)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM hints WHERE kind = ? AND key = ? LIMIT 1", (int(kind), key)
            ).fetchone()
        return row is not None

    def expire(self, older_than_ms: int) -> int:
        with self._lock:
            cursor = self._db.execute("DELETE FROM hints WHERE created_ms < ?", (older_than_ms,))
            return cursor.rowcount
