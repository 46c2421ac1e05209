"""Data messages. Codes 40-59 between nodes, 60-79 from clients to a coordinator.

Name entries and manifests travel in their storage encodings (``NameEntry.encode``),
which their decoders check in full; the wire layer only checks that they are bytes.
"""

from __future__ import annotations

from p2pfs import wire
from p2pfs.wire import Role

CLIENT = (Role.CLIENT,)
BOTH = (Role.NODE, Role.CLIENT)

# --- between nodes ---------------------------------------------------------


@wire.message(40)
class StoreChunk(wire.Message):
    """Store a chunk. ``hint_for`` names the intended owner when this is a stand-in write."""

    chunk_id: bytes
    data: bytes
    hint_for: str


@wire.message(41)
class StoreChunkReply(wire.Message):
    stored: bool  # False: it was already there


@wire.message(42)
class FetchChunk(wire.Message):
    chunk_id: bytes


@wire.message(43)
class ChunkData(wire.Message):
    data: bytes


@wire.message(44)
class HasChunks(wire.Message):
    chunk_ids: tuple[bytes, ...]


@wire.message(45)
class HasChunksReply(wire.Message):
    present: tuple[bool, ...]


@wire.message(46)
class PutName(wire.Message):
    """Apply a name entry (last writer wins). ``hint_for`` as for StoreChunk."""

    entry: bytes
    hint_for: str


@wire.message(47)
class PutNameReply(wire.Message):
    applied: bool  # False: an equal or newer entry was already there


@wire.message(48)
class GetName(wire.Message):
    name: str


@wire.message(49)
class GetNameReply(wire.Message):
    entry: bytes | None


@wire.message(50)
class ListNames(wire.Message):
    """Names this node holds with the prefix, tombstones included, after ``start_after``."""

    prefix: str
    start_after: str
    limit: int


@wire.message(51)
class ListNamesReply(wire.Message):
    entries: tuple[bytes, ...]
    more: bool


# --- client to coordinator -------------------------------------------------


@wire.message(60, senders=CLIENT)
class PutFile(wire.Message):
    """Store the streamed body under ``name``. ``size_bytes`` is -1 when unknown (stdin)."""

    name: str
    size_bytes: int


@wire.message(61, senders=BOTH)
class PutFileReply(wire.Message):
    name: str
    size_bytes: int
    file_hash: bytes
    version_wall_ms: int
    version_logical: int
    chunks: int


@wire.message(62, senders=CLIENT)
class GetFile(wire.Message):
    name: str


@wire.message(63, senders=BOTH)
class GetFileReply(wire.Message):
    """Header of a get; the file's bytes follow as the streamed body."""

    name: str
    size_bytes: int
    file_hash: bytes


@wire.message(64, senders=CLIENT)
class ListFiles(wire.Message):
    prefix: str


@wire.record
class FileInfo:
    name: str
    size_bytes: int
    created_ms: int
    version_wall_ms: int
    version_logical: int


@wire.message(65, senders=BOTH)
class ListFilesReply(wire.Message):
    files: tuple[FileInfo, ...]
    complete: bool  # False if some node could not be asked


@wire.message(66, senders=CLIENT)
class RemoveFile(wire.Message):
    name: str


@wire.message(67, senders=BOTH)
class RemoveFileReply(wire.Message):
    name: str


@wire.message(68, senders=CLIENT)
class StatFile(wire.Message):
    name: str


@wire.record
class ChunkInfo:
    chunk_id: bytes
    size_bytes: int
    replicas: tuple[str, ...]  # node ids found holding it


@wire.message(69, senders=BOTH)
class StatFileReply(wire.Message):
    name: str
    size_bytes: int
    file_hash: bytes
    created_ms: int
    version_wall_ms: int
    version_logical: int
    writer: str
    chunks: tuple[ChunkInfo, ...]


# --- anti-entropy, hand-off and fsck (between nodes) -----------------------


@wire.record
class BucketDigest:
    """A digest of what one node holds in one bucket of the key space, for one peer."""

    bucket: int
    digest: bytes
    count: int


@wire.record
class BucketChunks:
    bucket: int
    ids: bytes  # concatenated 32-byte chunk ids


@wire.record
class NameSummary:
    name: str
    wall_ms: int
    logical: int
    writer: str
    tombstone: bool


@wire.message(52)
class SyncChunks(wire.Message):
    """Digests of the chunks the sender holds that both it and the receiver should hold."""

    buckets: tuple[BucketDigest, ...]


@wire.message(53)
class SyncChunksReply(wire.Message):
    """The receiver's ids in every bucket whose digest differs."""

    buckets: tuple[BucketChunks, ...]


@wire.message(54)
class SyncNames(wire.Message):
    buckets: tuple[BucketDigest, ...]


@wire.message(55)
class SyncNamesReply(wire.Message):
    differing: tuple[int, ...]  # buckets whose digests differ (the receiver may hold none there)
    names: tuple[NameSummary, ...]  # the receiver's entries in those buckets


@wire.message(56)
class ListChunks(wire.Message):
    """A page of the chunk ids a node holds, after ``start_after`` in id order."""

    start_after: bytes
    limit: int


@wire.message(57)
class ListChunksReply(wire.Message):
    ids: bytes  # concatenated 32-byte ids
    more: bool
    corrupt: bytes  # ids found corrupt here and not yet repaired (first page only)


@wire.message(58)
class Leaving(wire.Message):
    """The sender is handing off its data to leave: take it out of the ring now, so
    that the new owners keep what it hands them. Expires after ``for_s`` seconds."""

    for_s: float


@wire.message(59)
class LeavingReply(wire.Message):
    pass


# --- fsck (client to coordinator) ------------------------------------------


@wire.message(70, senders=CLIENT)
class Fsck(wire.Message):
    pass


@wire.record
class FsckProblem:
    kind: str  # under_replicated, missing, corrupt, misplaced, over_replicated
    what: str  # "chunk" or "name"
    key: str  # chunk id (hex) or name
    holders: tuple[str, ...]
    wanted: tuple[str, ...]


@wire.message(71, senders=BOTH)
class FsckReply(wire.Message):
    names_checked: int
    chunks_checked: int
    names_under_replicated: int
    chunks_under_replicated: int
    chunks_over_replicated: int
    names_over_replicated: int
    names_misplaced: int  # enough live copies, but not all on the preferred nodes yet
    chunks_misplaced: int
    chunks_missing: int
    chunks_corrupt: int
    nodes_asked: int
    nodes_unreachable: tuple[str, ...]
    problems: tuple[FsckProblem, ...]  # the first few, for people
