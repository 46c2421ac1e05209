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

import importlib

# Each name and the module it lives in: loaded on first use (PEP 562), so that the
# pure modules (naming, hlc, manifest) can be imported without the stores' I/O.
_HOMES = {
    "FileHasher": "chunker",
    "ManifestBuilder": "chunker",
    "check_chunk_size": "chunker",
    "iter_chunks": "chunker",
    "ChunkCorrupt": "chunkstore",
    "ChunkMismatch": "chunkstore",
    "ChunkMissing": "chunkstore",
    "ChunkStore": "chunkstore",
    "StorageError": "errors",
    "StorageFull": "errors",
    "ClockDriftError": "hlc",
    "HybridClock": "hlc",
    "MAX_DRIFT_MS": "hlc",
    "Timestamp": "hlc",
    "CHUNK_ID_BYTES": "manifest",
    "CHUNK_SIZE_BYTES_DEFAULT": "manifest",
    "CHUNK_SIZE_BYTES_MAX": "manifest",
    "CHUNK_SIZE_BYTES_MIN": "manifest",
    "ChunkRef": "manifest",
    "MANIFEST_CHUNKS_MAX": "manifest",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "chunk_id_of": "manifest",
    "BadName": "naming",
    "NAMES_FILE_NAME": "names",
    "NAME_BYTES_MAX": "naming",
    "NameEntry": "names",
    "NameIndex": "names",
    "NameIndexDamaged": "names",
    "validate_name": "naming",
}

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
    "NameIndexDamaged",
    "StorageError",
    "StorageFull",
    "Timestamp",
    "check_chunk_size",
    "chunk_id_of",
    "iter_chunks",
    "validate_name",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
