"""Cut a byte stream into fixed-size chunks and describe it with a manifest.

A file is streamed, never held whole: at most one chunk is read and held at a time,
so memory stays at ``chunk_size_bytes`` whatever the file size. A put looks like::

    hasher = FileHasher()
    builder = ManifestBuilder(chunk_size_bytes)
    for data in iter_chunks(f, chunk_size_bytes):
        chunk_id = chunk_id_of(data)      # in a worker thread: hashing releases the GIL
        hasher.update(data)
        builder.add(chunk_id, len(data))
        ...store or send (chunk_id, data)...
    manifest = builder.finish(hasher.digest(), created_ms=now_ms)

Fixed-size rather than content-defined chunking: it is simpler, needs no rolling hash
in Python on the data path, and p2pfs stores whole immutable files, where CDC's gain
(deduplicating edits that shift bytes) does not arise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import blake3

from p2pfs.storage.manifest import (
    CHUNK_SIZE_BYTES_MAX,
    CHUNK_SIZE_BYTES_MIN,
    MANIFEST_CHUNKS_MAX,
    ChunkRef,
    Manifest,
    ManifestError,
)


def check_chunk_size(chunk_size_bytes: int) -> None:
    """Raise ValueError unless ``chunk_size_bytes`` is one a manifest may record."""
    if type(chunk_size_bytes) is not int or not CHUNK_SIZE_BYTES_MIN <= chunk_size_bytes <= CHUNK_SIZE_BYTES_MAX:
        raise ValueError(
            f"chunk_size_bytes must be an int in [{CHUNK_SIZE_BYTES_MIN}, {CHUNK_SIZE_BYTES_MAX}], "
            f"got {chunk_size_bytes!r}"
        )


def iter_chunks(f: BinaryIO, chunk_size_bytes: int) -> Iterator[bytes]:
    """Yield successive chunks of ``f``: each exactly ``chunk_size_bytes`` except the last.

    An empty stream yields nothing. Short reads (pipes, sockets, raw files) are
    retried until the chunk is full or the stream ends, so chunk boundaries depend
    only on the bytes, never on how the OS delivered them; that is what makes the
    same file produce the same chunk ids everywhere.
    """
    check_chunk_size(chunk_size_bytes)
    while True:
        chunk = _read_full(f, chunk_size_bytes)
        if chunk:
            yield chunk
        if len(chunk) < chunk_size_bytes:
            return


def _read_full(f: BinaryIO, size_bytes: int) -> bytes:
    """Read until ``size_bytes`` bytes or end of stream; b"" means the stream had ended."""
    first = _read_some(f, size_bytes)
    if len(first) == size_bytes or not first:
        return first  # the common case: one read, no copy
    parts = [first]
    got_bytes = len(first)
    while got_bytes < size_bytes:
        part = _read_some(f, size_bytes - got_bytes)
        if not part:
            break
        parts.append(part)
        got_bytes += len(part)
    assert got_bytes <= size_bytes
    return b"".join(parts)


def _read_some(f: BinaryIO, size_bytes: int) -> bytes:
    data = f.read(size_bytes)
    if data is None:
        raise BlockingIOError("iter_chunks needs a blocking stream; read() returned None")
    if not isinstance(data, bytes):
        raise TypeError(f"iter_chunks needs a binary stream; read() returned {type(data).__name__}")
    assert len(data) <= size_bytes
    return data


class FileHasher:
    """Incremental BLAKE3 of a whole file, fed chunk by chunk; also counts its bytes."""

    __slots__ = ("_hasher", "_size_bytes")

    def __init__(self) -> None:
        self._hasher = blake3.blake3()
        self._size_bytes = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)
        self._size_bytes += memoryview(data).nbytes

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    def digest(self) -> bytes:
        """The 32-byte BLAKE3 of everything fed so far (may be called more than once)."""
        return self._hasher.digest()


class ManifestBuilder:
    """Collects chunk refs in file order, then makes the (checked) Manifest."""

    __slots__ = ("_chunk_size_bytes", "_chunks", "_size_bytes")

    def __init__(self, chunk_size_bytes: int) -> None:
        check_chunk_size(chunk_size_bytes)
        self._chunk_size_bytes = chunk_size_bytes
        self._chunks: list[ChunkRef] = []
        self._size_bytes = 0

    def add(self, chunk_id: bytes, size_bytes: int) -> None:
        """Append the next chunk. Raises ManifestError if the file grew too large."""
        if self._chunks and self._chunks[-1].size_bytes < self._chunk_size_bytes:
            raise ManifestError("only the last chunk may be shorter than chunk_size_bytes")
        if size_bytes > self._chunk_size_bytes:
            raise ManifestError(f"chunk of {size_bytes} bytes exceeds chunk_size_bytes {self._chunk_size_bytes}")
        if len(self._chunks) >= MANIFEST_CHUNKS_MAX:
            raise ManifestError(
                f"file exceeds {MANIFEST_CHUNKS_MAX} chunks "
                f"({MANIFEST_CHUNKS_MAX * self._chunk_size_bytes} bytes at this chunk size); "
                f"use a larger chunk size"
            )
        self._chunks.append(ChunkRef(chunk_id, size_bytes))
        self._size_bytes += size_bytes

    def finish(self, file_hash: bytes, created_ms: int) -> Manifest:
        """The manifest of the chunks added so far."""
        return Manifest(
            chunks=tuple(self._chunks),
            size_bytes=self._size_bytes,
            file_hash=file_hash,
            created_ms=created_ms,
            chunk_size_bytes=self._chunk_size_bytes,
        )
