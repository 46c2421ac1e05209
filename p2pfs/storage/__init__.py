"""The storage room: chunking, the content-addressed chunk store, manifests, names.

Everything here is synchronous. Pure pieces (``hlc``, ``manifest``, ``chunker``'s
builder) never touch the disk or the clock; ``ChunkStore`` and ``NameIndex`` do
blocking disk I/O and are thread-safe, so trio code calls them through
``trio.to_thread.run_sync`` and the event loop never waits on a disk or a hash.
``ChunkStore`` reads time only from the ``p2pfs.clock.Clock`` it is given.

Layout of a node's data dir ``DATA``::

    DATA/chunks/ab/cdef...   ChunkStore(DATA, capacity_bytes, clock=clock)
    DATA/quarantine/         chunks that failed verification
    DATA/names.sqlite        NameIndex(DATA / NAMES_FILE_NAME)
"""

from p2pfs.storage.chunker import FileHasher, ManifestBuilder, check_chunk_size, iter_chunks
from p2pfs.storage.chunkstore import ChunkCorrupt, ChunkMismatch, ChunkMissing, ChunkStore
from p2pfs.storage.errors import StorageError, StorageFull
from p2pfs.storage.hlc import MAX_DRIFT_MS, ClockDriftError, HybridClock, Timestamp
from p2pfs.storage.manifest import (
    CHUNK_ID_BYTES,
    CHUNK_SIZE_BYTES_DEFAULT,
    CHUNK_SIZE_BYTES_MAX,
    CHUNK_SIZE_BYTES_MIN,
    MANIFEST_CHUNKS_MAX,
    ChunkRef,
    Manifest,
    ManifestError,
    chunk_id_of,
)
from p2pfs.storage.names import NAME_BYTES_MAX, NAMES_FILE_NAME, BadName, NameEntry, NameIndex, validate_name

__all__ = [
    "CHUNK_ID_BYTES",
    "CHUNK_SIZE_BYTES_DEFAULT",
    "CHUNK_SIZE_BYTES_MAX",
    "CHUNK_SIZE_BYTES_MIN",
    "MANIFEST_CHUNKS_MAX",
    "MAX_DRIFT_MS",
    "NAMES_FILE_NAME",
    "NAME_BYTES_MAX",
    "BadName",
    "ChunkCorrupt",
    "ChunkMismatch",
    "ChunkMissing",
    "ChunkRef",
    "ChunkStore",
    "ClockDriftError",
    "FileHasher",
    "HybridClock",
    "Manifest",
    "ManifestBuilder",
    "ManifestError",
    "NameEntry",
    "NameIndex",
    "StorageError",
    "StorageFull",
    "Timestamp",
    "check_chunk_size",
    "chunk_id_of",
    "iter_chunks",
    "validate_name",
]
