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

A small file (at most ``INLINE_BYTES_MAX``) may instead carry its bytes in the
manifest itself (``inline``), and so in its name entry, as Garage and others store
objects below a few KiB: a put then writes one row per replica instead of a chunk
file and a row, and a get reads one name instead of a name and a chunk. The same
rules hold as for a chunk: the bytes are checked against ``file_hash`` whenever a
manifest is built or decoded (so on every read of the index row and on every
receipt from a peer), and they replicate, repair and disappear with the name entry.
An inline manifest is encoded as format 2; a manifest without inline bytes keeps
format 1 byte for byte, so existing entries keep their encoding, and a reader that
knows only format 1 refuses an inline one as an unknown format.
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

# Largest file whose bytes may travel inside its manifest (format 2). Small enough that an
# inline entry costs little in a read quorum's answers and an ls page's rows (LIST_PAGE_ROWS),
# and far below a chunk (CHUNK_SIZE_BYTES_MIN), since content above it gains nothing from the
# name index over a chunk file. The cluster's own threshold is the replication config's.
INLINE_BYTES_MAX = 64 * 1024

# First field of the encoded form; a new layout gets a new number. Format 2: the file's bytes
# inline instead of chunk ids (same field count, last field the content).
MANIFEST_FORMAT_VERSION = 1
MANIFEST_FORMAT_VERSION_INLINE = 2
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
    # The whole file's bytes when it is stored inline (then there are no chunks); b"" otherwise.
    inline: bytes = b""

    def __post_init__(self) -> None:
        _check_int(self.chunk_size_bytes, "chunk_size_bytes", CHUNK_SIZE_BYTES_MIN, CHUNK_SIZE_BYTES_MAX)
        _check_int(self.size_bytes, "size_bytes", 0, MANIFEST_CHUNKS_MAX * self.chunk_size_bytes)
        _check_digest(self.file_hash, "file_hash")
        _check_int(self.created_ms, "created_ms", 0, WALL_MS_MAX)
        if type(self.chunks) is not tuple:
            raise ManifestError(f"chunks must be a tuple, got {type(self.chunks).__name__}")
        if type(self.inline) is not bytes:
            raise ManifestError(f"inline content must be bytes, got {type(self.inline).__name__}")
        if self.inline:
            self._check_inline()
            return
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

    def _check_inline(self) -> None:
        """Inline bytes are the whole file, no chunks beside them, and hash to ``file_hash``."""
        if len(self.inline) > INLINE_BYTES_MAX:
            raise ManifestError(f"inline content of {len(self.inline)} bytes exceeds {INLINE_BYTES_MAX}")
        if self.chunks:
            raise ManifestError("a manifest with inline content lists no chunks")
        if len(self.inline) != self.size_bytes:
            raise ManifestError(f"inline content is {len(self.inline)} bytes, the file {self.size_bytes}")
        if chunk_id_of(self.inline) != self.file_hash:
            raise ManifestError("inline content does not match the file hash")

    @property
    def inline_bytes(self) -> int:
        """Content bytes this manifest holds itself (what a replica counts against its capacity)."""
        return len(self.inline)

    def encode(self) -> bytes:
        """The wire and index form: a msgpack array, chunk ids concatenated (or the inline content)."""
        if self.inline:
            version, last = MANIFEST_FORMAT_VERSION_INLINE, self.inline
        else:
            version, last = MANIFEST_FORMAT_VERSION, b"".join(ref.chunk_id for ref in self.chunks)
        return msgpack.packb(
            [
                version,
                self.chunk_size_bytes,
                self.size_bytes,
                self.file_hash,
                self.created_ms,
                last,
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
        if type(version) is not int or version not in (MANIFEST_FORMAT_VERSION, MANIFEST_FORMAT_VERSION_INLINE):
            raise ManifestError(f"unknown manifest format {version!r:.80}")
        _check_int(chunk_size_bytes, "chunk_size_bytes", CHUNK_SIZE_BYTES_MIN, CHUNK_SIZE_BYTES_MAX)
        _check_int(size_bytes, "size_bytes", 0, MANIFEST_CHUNKS_MAX * chunk_size_bytes)
        if version == MANIFEST_FORMAT_VERSION_INLINE:
            if type(ids) is not bytes or not ids:
                raise ManifestError("an inline manifest carries its content as a non-empty byte string")
            return cls((), size_bytes, file_hash, created_ms, chunk_size_bytes, ids)
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
