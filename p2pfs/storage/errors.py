"""The storage room's errors: faults of this node's own disk and files.

``StorageError`` is the room's base and a ``errors.LocalStorageError``, so a
caller outside the room catches the hierarchy's class; ``StorageFull`` is both
the room's error and ``errors.StorageFull``, so the CLI maps it to its own exit
code without knowing the room.
"""

from __future__ import annotations

from p2pfs import errors


class StorageError(errors.LocalStorageError):
    """Base of every error the storage room raises."""


class StorageFull(StorageError, errors.StorageFull):
    """Storing the chunk would exceed the node's capacity, or the disk is full."""
