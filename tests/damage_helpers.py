"""Ways to damage a node's name index file on disk, as a failing disk or a stray write would."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

# SQLite's default page size, and what the index uses.
PAGE_SIZE_BYTES = 4096


def checkpoint(path: Path) -> None:
    """Fold the WAL into the main file, so that damage to the file is what every reader sees."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def insert_invalid_utf8_row(path: Path, writer: str) -> None:
    """A row keyed by bytes that are not UTF-8, otherwise well formed."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "INSERT INTO names (name, wall_ms, logical, writer, manifest) VALUES (?, 1, 0, ?, NULL)",
            (b"bad-\xff\xfe-name", writer),
        )
        conn.commit()
    finally:
        conn.close()
    checkpoint(path)


def break_manifest(path: Path, name: str) -> None:
    """Replace the manifest of ``name``'s row with bytes that are not msgpack."""
    conn = sqlite3.connect(path)
    try:
        changed = conn.execute("UPDATE names SET manifest = ? WHERE name = ?", (b"\xc1garbage", name.encode()))
        assert changed.rowcount == 1, f"no row for {name!r}"
        conn.commit()
    finally:
        conn.close()
    checkpoint(path)


def page_count(path: Path) -> int:
    return path.stat().st_size // PAGE_SIZE_BYTES


def overwrite_page(path: Path, page_number: int, seed: int) -> None:
    """Overwrite one 4 KiB page (numbered from 1, as SQLite does) with random bytes."""
    checkpoint(path)
    assert 1 <= page_number <= page_count(path), f"page {page_number} of {page_count(path)}"
    with open(path, "r+b") as f:
        f.seek((page_number - 1) * PAGE_SIZE_BYTES)
        f.write(random.Random(seed).randbytes(PAGE_SIZE_BYTES))
