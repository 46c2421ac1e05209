"""What a node's last anti-entropy walk found: each peer's digests, and its keys on disk by bucket.

Why it exists: a peer asked for its keys in the buckets whose digests differ
(``SyncChunks``, ``SyncNames``) used to walk its whole store to compute its own
digests and then again to find those keys. At two million chunks that walk took
minutes, far past the asker's request deadline (``replica_timeout_s``, 10 s), so a
node that lost a tenth of its chunks never healed (docs/BENCHMARKS.md, "Data per
node"). Every round's walk already visits each key in order; it now also appends
each key this node replicates to its bucket's file and keeps each peer's digests
(``BUCKETS`` entries per peer, ~10 KiB). A request is answered from these: its
digests are compared with the kept ones and a differing bucket's keys are one
file, 1/256 of the store, so an answer costs the same at a million keys as at a
thousand times fewer, bounded by what one answer carries.

The answer is as old as the walk (one round at most): anti-entropy is eventual,
and the next round's walk sees what changed since. The asker pushes only what the
answerer still lacks when asked again (``HasChunks``) and pulls only what it still
lacks, so a stale list costs one question, not a transfer.

Files: ``<dir>/<serial>/<bucket as two hex digits>``, each key as a 2-byte
big-endian length and its bytes, in the walk's (increasing) order. They are
temporary: a node that restarts walks again before it answers from a snapshot.
Memory while writing: ``FLUSH_BYTES`` per bucket at most (2 MiB for 256 buckets).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from p2pfs.replication.healing import BUCKETS
from p2pfs.storage.modes import FILE_MODE, private_dir
from p2pfs.storage.naming import NAME_BYTES_MAX

# Bytes buffered per bucket before they are appended to its file: 256 buckets hold 2 MiB at most.
FLUSH_BYTES = 8192
# The longest key a snapshot holds: a name's ring key, its prefix and its bytes (a chunk id is 32 bytes).
KEY_BYTES_MAX = 2 * NAME_BYTES_MAX
_LENGTH_BYTES = 2
assert KEY_BYTES_MAX < 1 << (8 * _LENGTH_BYTES)

Digests = dict[int, tuple[bytes, int]]  # bucket -> (digest, count)


class SnapshotError(Exception):
    """A snapshot file that does not parse: this node's own temporary file, damaged or cut short."""


class SnapshotWriter:
    """Appends each key to its bucket's file during a walk, a buffer's worth at a time. Blocking."""

    def __init__(self, directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)  # a walk of an earlier process, cut short
        # Keys are chunk ids and name hashes: the node's own, as its store. (mkdir's parents would
        # get the umask's mode, hence the parent first.)
        private_dir(directory.parent)
        private_dir(directory)
        self.directory = directory
        self._buffers = [bytearray() for _ in range(BUCKETS)]

    def add(self, bucket: int, key: bytes) -> None:
        assert 0 < len(key) <= KEY_BYTES_MAX, len(key)
        buffer = self._buffers[bucket]
        buffer += len(key).to_bytes(_LENGTH_BYTES, "big")
        buffer += key
        if len(buffer) >= FLUSH_BYTES:
            self._flush(bucket)

    def finish(self) -> None:
        for bucket, buffer in enumerate(self._buffers):
            if buffer:
                self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        fd = os.open(self.directory / f"{bucket:02x}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        with open(fd, "ab") as f:
            f.write(self._buffers[bucket])
        self._buffers[bucket].clear()


def parse_keys(data: bytes) -> list[bytes]:
    """The keys of one bucket file, in order; SnapshotError if it does not parse."""
    keys, at = [], 0
    while at < len(data):
        if at + _LENGTH_BYTES > len(data):
            raise SnapshotError("a key's length is cut short")
        length = int.from_bytes(data[at : at + _LENGTH_BYTES], "big")
        at += _LENGTH_BYTES
        if not 0 < length <= KEY_BYTES_MAX or at + length > len(data):
            raise SnapshotError(f"a key of {length} bytes does not fit")
        keys.append(data[at : at + length])
        at += length
    return keys


class KeySnapshot:
    """One finished walk: the digests it computed per peer, and its keys per bucket on disk."""

    def __init__(self, directory: Path, digests: dict[str, Digests]) -> None:
        self.directory = directory
        self._digests = digests
        # Buckets already answered to each peer from this snapshot; a peer asks again after
        # it has pushed and pulled, and the files do not show that yet, so each bucket is
        # listed to a peer once per snapshot and the next walk lists it afresh.
        self._answered: dict[str, set[int]] = {}

    def digests(self, peer: str) -> Digests:
        """The digests the walk computed for ``peer`` (a copy: a round updates its own as it goes)."""
        return dict(self._digests.get(peer, {}))

    def answered(self, peer: str) -> set[int]:
        return self._answered.setdefault(peer, set())

    def keys(self, bucket: int) -> list[bytes]:
        """This node's keys in ``bucket`` at the walk (blocking: a file read)."""
        try:
            data = (self.directory / f"{bucket:02x}").read_bytes()
        except FileNotFoundError:
            return []
        return parse_keys(data)
