"""Who may read a node's data on disk: the node's own user, no one else.

Chunks are the cluster's files in clear, the name index lists every file name,
and the hints name peers and chunks: 0644 files under 0755 directories would let
every local account read them. Directories are created 0700 and files 0600, as
ssh keeps ``~/.ssh``; data dirs and files a previous version made readable are
tightened when a store opens them. The modes are given at creation, so the
process umask can only remove bits, never add them.

SQLite creates a database's ``-wal`` and ``-shm`` files with the mode of the
database file itself, so creating that file 0600 first covers all three.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700, or tighten it to 0700 if it exists."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing, or tighten it to 0600 (a database before SQLite opens it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def private_database(path: Path) -> None:
    """Make the SQLite database at ``path`` 0600 before SQLite opens it, so its -wal and -shm are too.

    A -wal or -shm left by an earlier run keeps its mode when SQLite reopens it: tightened here.
    """
    private_file(path)
    for suffix in ("-wal", "-shm"):
        try:
            os.chmod(path.with_name(path.name + suffix), FILE_MODE)
        except FileNotFoundError:
            pass
