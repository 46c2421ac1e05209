"""Content addresses and manifests: what a stored file is made of.

A chunk's id is the BLAKE3 digest of its bytes, so a chunk is immutable,
deduplicated, and checkable by anyone who holds it. BLAKE3 rather than SHA-256
because it hashes 2.6-4.7x faster on one thread on our machines
(docs/BENCHMARKS.md) and every byte stored or served is hashed at least once.

A file is a manifest: its chunk ids in order, its size, the BLAKE3 of the whole
file (so a user can check a download with ``b3sum``), when it was created and the
chunk size it was cut with. Chunks are fixed-size, so every chunk but the last is
exactly ``chunk_size_bytes`` long and each chunk's size follows from the file size:
the wire form carries only the concatenated ids (32 bytes per chunk), which keeps a
4 GiB file's manifest at 128 KiB and lets decode check the whole layout at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
import msgpack

from p2pfs.storage.errors import StorageError
from p2pfs.storage.hlc import WALL_MS_MAX

CHUNK_ID_BYTES = 32  # BLAKE3's default digest length: 128-bit collision resistance
FILE_HASH_BYTES = 32

# Chunk size bounds. Below 4 KiB per-chunk costs (a file, an fsync, a ring lookup, a
# request) swamp the transfer; above 4 MiB a chunk no longer fits comfortably in one
# wire frame (p2pfs.wire.FRAME_SIZE_BYTES_MAX = 8 MiB) and each in-flight chunk pins
# that much memory.
CHUNK_SIZE_BYTES_MIN = 4 * 1024
CHUNK_SIZE_BYTES_MAX = 4 * 1024 * 1024
# 1 MiB (docs/BENCHMARKS.md): a node stores 1 MiB chunks at 335-407 MB/s, over
# twice the cluster's TLS-bound put ceiling, so larger chunks would not speed a put;
# they would cost memory per chunk in flight, parallelism for files of a few MiB,
# re-sent bytes after a failure, and TLS moves 1 MiB writes faster than 4 MiB ones.
# 256 KiB chunks store markedly slower (a fixed fsync cost per chunk).
CHUNK_SIZE_BYTES_DEFAULT = 1024 * 1024

# Most chunks one manifest may list: 128 Ki ids are 4 MiB encoded, so a name entry
# carrying its manifest inline still fits in one 8 MiB wire frame. That caps a file at
# 128 GiB with the default chunk size (512 GiB with 4 MiB chunks).
MANIFEST_CHUNKS_MAX = 128 * 1024
# Everything but the ids is a handful of small ints and a 32-byte hash.
MANIFEST_ENCODED_BYTES_MAX = MANIFEST_CHUNKS_MAX * CHUNK_ID_BYTES + 256

# First field of the encoded form; a new layout gets a new number.
MANIFEST_FORMAT_VERSION = 1
_MANIFEST_FIELDS = 6


class ManifestError(StorageError, ValueError):
    """A manifest (or a name entry carrying one) is malformed or inconsistent.

    Raised by ``decode`` on anything a peer or a damaged index could hand us, and by
    the constructors when fields don't add up.
    """


def chunk_id_of(data: bytes | bytearray | memoryview) -> bytes:
    """The content address of ``data``: its 32-byte BLAKE3 digest.

    Releases the GIL for large buffers, so callers hash in worker threads.
    """
    return blake3.blake3(data).digest()


def _check_digest(value: object, what: str) -> None:
    if type(value) is not bytes or len(value) != CHUNK_ID_BYTES:
        raise ManifestError(f"{what} must be {CHUNK_ID_BYTES} bytes, got {value!r:.80}")


def _check_int(value: object, what: str, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ManifestError(f"{what} must be an int in [{low}, {high}], got {value!r:.80}")


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a file: its content address and length."""

    chunk_id: bytes
    size_bytes: int

    def __post_init__(self) -> None:
        _check_digest(self.chunk_id, "chunk_id")
        _check_int(self.size_bytes, "chunk size_bytes", 1, CHUNK_SIZE_BYTES_MAX)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A file: ordered chunks, total size, whole-file hash, creation time, chunk size."""

    chunks: tuple[ChunkRef, ...]
    size_bytes: int
    file_hash: bytes  # BLAKE3 of the whole file
    created_ms: int  # milliseconds since the Unix epoch, from the writer's clock
    chunk_size_bytes: int  # the size every chunk but the last has

    def __post_init__(self) -> None:
        _check_int(self.chunk_size_bytes, "chunk_size_bytes", CHUNK_SIZE_BYTES_MIN, CHUNK_SIZE_BYTES_MAX)
        _check_int(self.size_bytes, "size_bytes", 0, MANIFEST_CHUNKS_MAX * self.chunk_size_bytes)
        _check_digest(self.file_hash, "file_hash")
        _check_int(self.created_ms, "created_ms", 0, WALL_MS_MAX)
        if type(self.chunks) is not tuple:
            raise ManifestError(f"chunks must be a tuple, got {type(self.chunks).__name__}")
        expected = _chunk_sizes(self.size_bytes, self.chunk_size_bytes)
        if len(self.chunks) != len(expected):
            raise ManifestError(
                f"{self.size_bytes} bytes in chunks of {self.chunk_size_bytes} need "
                f"{len(expected)} chunks, manifest lists {len(self.chunks)}"
            )
        for index, (ref, size_bytes) in enumerate(zip(self.chunks, expected)):
            if type(ref) is not ChunkRef:
                raise ManifestError(f"chunk {index} is not a ChunkRef: {ref!r:.80}")
            if ref.size_bytes != size_bytes:
                raise ManifestError(f"chunk {index} is {ref.size_bytes} bytes, expected {size_bytes}")

    def encode(self) -> bytes:
        """The wire and index form: a msgpack array, chunk ids concatenated."""
        ids = b"".join(ref.chunk_id for ref in self.chunks)
        return msgpack.packb(
            [
                MANIFEST_FORMAT_VERSION,
                self.chunk_size_bytes,
                self.size_bytes,
                self.file_hash,
                self.created_ms,
                ids,
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and check ``encode``'s output. Any other input raises ManifestError."""
        if len(data) > MANIFEST_ENCODED_BYTES_MAX:
            raise ManifestError(f"manifest of {len(data)} bytes exceeds {MANIFEST_ENCODED_BYTES_MAX}")
        fields = unpack_strict(data, "manifest")
        if type(fields) is not list or len(fields) != _MANIFEST_FIELDS:
            raise ManifestError(f"manifest must be a {_MANIFEST_FIELDS}-item array")
        version, chunk_size_bytes, size_bytes, file_hash, created_ms, ids = fields
        if type(version) is not int or version != MANIFEST_FORMAT_VERSION:
            raise ManifestError(f"unknown manifest format {version!r:.80}")
        _check_int(chunk_size_bytes, "chunk_size_bytes", CHUNK_SIZE_BYTES_MIN, CHUNK_SIZE_BYTES_MAX)
        _check_int(size_bytes, "size_bytes", 0, MANIFEST_CHUNKS_MAX * chunk_size_bytes)
        if type(ids) is not bytes:
            raise ManifestError("manifest chunk ids must be a byte string")
        sizes = _chunk_sizes(size_bytes, chunk_size_bytes)
        if len(ids) != len(sizes) * CHUNK_ID_BYTES:
            raise ManifestError(
                f"{size_bytes} bytes in chunks of {chunk_size_bytes} need {len(sizes)} "
                f"chunk ids, manifest carries {len(ids)} bytes of ids"
            )
        chunks = tuple(
            ChunkRef(ids[offset : offset + CHUNK_ID_BYTES], size)
            for offset, size in zip(range(0, len(ids), CHUNK_ID_BYTES), sizes)
        )
        return cls(chunks, size_bytes, file_hash, created_ms, chunk_size_bytes)


def _chunk_sizes(size_bytes: int, chunk_size_bytes: int) -> list[int]:
    """The size of each chunk of a ``size_bytes`` file cut every ``chunk_size_bytes``."""
    full, rest = divmod(size_bytes, chunk_size_bytes)
    return [chunk_size_bytes] * full + ([rest] if rest else [])


def unpack_strict(data: bytes, what: str) -> object:
    """msgpack-decode untrusted ``data``; every failure becomes ManifestError.

    Maps are refused outright (our formats use arrays only), which also rules out
    unhashable keys; strings must be valid UTF-8; trailing bytes are an error.
    """
    if type(data) is not bytes:
        raise ManifestError(f"{what} must be bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ManifestError(f"{what} is not valid msgpack: {exc}") from exc
