"""Data messages. Codes 40-59 between nodes, 60-79 from clients to a coordinator.

Every message checks its fields when built, and so when decoded (the codec turns
the ``FieldError`` into ``WireError``, a ``PeerFault``): a handler never sees a
chunk id of the wrong length, an id list that does not split into ids, a name
the index would refuse, a timestamp outside the HLC's range, a bucket outside the
digest tree or a list longer than its cap. A peer that sends one loses that
connection, and with it the exchange; the node carries on.

Name entries and manifests travel in their storage encodings (``NameEntry.encode``),
which their decoders check in full where they are used; the wire layer checks
their size only, so that a put does not decode every manifest twice.

The caps and field checks are in ``fields.py``. Node ids come in two kinds. A writer (``NameSummary.writer``) is what
``NameEntry`` accepts: 64 lowercase hex digits. Any other node id here names a
member (a hint's owner, a replica, an fsck holder) and follows the membership
messages' rule, because it comes from the member table: a stricter rule here
would make this node refuse to build a message about a member it was told of.
"""

from __future__ import annotations

import math

from p2pfs import wire
from p2pfs.replication.fields import (  # the caps are part of this module's interface (dm.X_MAX)
    CHUNK_IDS_PER_MESSAGE_MAX, FILE_SIZE_BYTES_MAX, FILES_PER_LIST_MAX, FSCK_KINDS, FSCK_PROBLEMS_MAX,
    FSCK_WHATS, HAS_CHUNKS_IDS_MAX, HEX_DIGITS, LEAVING_FOR_S_MAX, NAME_SUMMARIES_PER_MESSAGE_MAX,
    NAMES_PER_PAGE_MAX, NODES_PER_MESSAGE_MAX, check_bucket, check_chunk_id, check_chunk_ids, check_count,
    check_data, check_file_hash, check_hint_for, check_id_list, check_int, check_member_ids, check_name,
    check_prefix, check_version, check_writer,
)
# The messages of ls, stat and rm live there, so that a client's one-request commands load only
# them; they are part of this module's interface (dm.ListFiles, dm.RF_MAX).
from p2pfs.replication.client_messages import (  # noqa: F401
    BOTH, CLIENT, REASON_CHARS_MAX, RF_MAX, RING_PPM, ChunkInfo, FileInfo, ListFiles, ListFilesReply, RangeAnswers,
    RemoveFile, RemoveFileReply, StatFile, StatFileReply, Unanswered,
)
from p2pfs.replication.healing import BUCKETS, DIGEST_BYTES
from p2pfs.storage.manifest import CHUNK_ID_BYTES, CHUNK_SIZE_BYTES_MAX, CHUNK_SIZE_BYTES_MIN, MANIFEST_CHUNKS_MAX
from p2pfs.storage.naming import ENTRY_ENCODED_BYTES_MAX


# --- between nodes ---------------------------------------------------------


@wire.message(40)
class StoreChunk(wire.Message):
    """Store a chunk. ``hint_for`` names the intended owner when this is a stand-in write."""

    chunk_id: bytes
    data: bytes
    hint_for: str

    def __post_init__(self) -> None:
        check_chunk_id(self.chunk_id, "chunk_id")
        check_data(self.data)
        check_hint_for(self.hint_for)


@wire.message(41)
class StoreChunkReply(wire.Message):
    stored: bool  # False: it was already there


@wire.message(42)
class FetchChunk(wire.Message):
    chunk_id: bytes

    def __post_init__(self) -> None:
        check_chunk_id(self.chunk_id, "chunk_id")


@wire.message(43)
class ChunkData(wire.Message):
    data: bytes

    def __post_init__(self) -> None:
        check_data(self.data)


@wire.message(44)
class HasChunks(wire.Message):
    chunk_ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_chunk_ids(self.chunk_ids, "chunk_ids", HAS_CHUNKS_IDS_MAX)


@wire.message(45)
class HasChunksReply(wire.Message):
    present: tuple[bool, ...]

    def __post_init__(self) -> None:
        check_int(len(self.present), "answers in present", 0, HAS_CHUNKS_IDS_MAX)


@wire.message(46)
class PutName(wire.Message):
    """Apply a name entry (last writer wins). ``hint_for`` as for StoreChunk."""

    entry: bytes
    hint_for: str

    def __post_init__(self) -> None:
        check_int(len(self.entry), "entry length in bytes", 1, ENTRY_ENCODED_BYTES_MAX)
        check_hint_for(self.hint_for)


@wire.message(47)
class PutNameReply(wire.Message):
    applied: bool  # False: an equal or newer entry was already there


@wire.message(48)
class GetName(wire.Message):
    name: str

    def __post_init__(self) -> None:
        check_name(self.name, "name")


@wire.message(49)
class GetNameReply(wire.Message):
    entry: bytes | None

    def __post_init__(self) -> None:
        if self.entry is not None:
            check_int(len(self.entry), "entry length in bytes", 1, ENTRY_ENCODED_BYTES_MAX)


@wire.message(50)
class ListNames(wire.Message):
    """Names this node holds with the prefix, tombstones included, after ``start_after``."""

    prefix: str
    start_after: str
    limit: int

    def __post_init__(self) -> None:
        check_prefix(self.prefix, "prefix")
        check_prefix(self.start_after, "start_after")
        check_int(self.limit, "limit", 1, NAMES_PER_PAGE_MAX)


@wire.message(51)
class ListNamesReply(wire.Message):
    entries: tuple[bytes, ...]
    more: bool

    def __post_init__(self) -> None:
        check_int(len(self.entries), "entries", 0, NAMES_PER_PAGE_MAX)
        for entry in self.entries:
            check_int(len(entry), "entry length in bytes", 1, ENTRY_ENCODED_BYTES_MAX)


# --- client to coordinator -------------------------------------------------


@wire.message(60, senders=CLIENT, takes_body=True)
class PutFile(wire.Message):
    """Store the streamed body under ``name``. ``size_bytes`` is -1 when unknown (stdin)."""

    name: str
    size_bytes: int

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(self.size_bytes, "size_bytes", -1, FILE_SIZE_BYTES_MAX)


@wire.message(61, senders=BOTH)
class PutFileReply(wire.Message):
    name: str
    size_bytes: int
    file_hash: bytes
    version_wall_ms: int
    version_logical: int
    chunks: int

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(self.size_bytes, "size_bytes", 0, FILE_SIZE_BYTES_MAX)
        check_file_hash(self.file_hash)
        check_version(self.version_wall_ms, self.version_logical, "version")
        check_int(self.chunks, "chunks", 0, MANIFEST_CHUNKS_MAX)


@wire.message(62, senders=CLIENT)
class GetFile(wire.Message):
    name: str

    def __post_init__(self) -> None:
        check_name(self.name, "name")


@wire.message(63, senders=BOTH)
class GetFileReply(wire.Message):
    """Header of a get; the file's bytes follow as the streamed body."""

    name: str
    size_bytes: int
    file_hash: bytes

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(self.size_bytes, "size_bytes", 0, FILE_SIZE_BYTES_MAX)
        check_file_hash(self.file_hash)


# --- anti-entropy, hand-off and fsck (between nodes) -----------------------


@wire.record
class BucketDigest:
    """A digest of what one node holds in one bucket of the key space, for one peer."""

    bucket: int
    digest: bytes
    count: int

    def __post_init__(self) -> None:
        check_bucket(self.bucket)
        if len(self.digest) != DIGEST_BYTES:
            raise wire.FieldError(f"digest must be {DIGEST_BYTES} bytes, got {len(self.digest)}")
        check_count(self.count, "count")


@wire.record
class BucketChunks:
    bucket: int
    ids: bytes  # concatenated 32-byte chunk ids

    def __post_init__(self) -> None:
        check_bucket(self.bucket)
        check_id_list(self.ids, "ids", CHUNK_IDS_PER_MESSAGE_MAX)


@wire.record
class NameSummary:
    name: str
    wall_ms: int
    logical: int
    writer: str
    tombstone: bool

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_version(self.wall_ms, self.logical, "version")
        check_writer(self.writer, "writer")


def _check_digests(buckets: tuple[BucketDigest, ...]) -> None:
    """One digest per bucket at most: a repeated bucket would make the answer ambiguous."""
    if len({d.bucket for d in buckets}) != len(buckets):
        raise wire.FieldError("a bucket's digest is given twice")


@wire.message(52)
class SyncChunks(wire.Message):
    """Digests of the chunks the sender holds that both it and the receiver should hold."""

    buckets: tuple[BucketDigest, ...]

    def __post_init__(self) -> None:
        _check_digests(self.buckets)


@wire.message(53)
class SyncChunksReply(wire.Message):
    """The receiver's ids in every bucket whose digest differs."""

    buckets: tuple[BucketChunks, ...]

    def __post_init__(self) -> None:
        check_int(len(self.buckets), "buckets", 0, BUCKETS)
        total_bytes = sum(len(b.ids) for b in self.buckets)
        check_int(total_bytes // CHUNK_ID_BYTES, "ids in all buckets", 0, CHUNK_IDS_PER_MESSAGE_MAX)


@wire.message(54)
class SyncNames(wire.Message):
    buckets: tuple[BucketDigest, ...]

    def __post_init__(self) -> None:
        _check_digests(self.buckets)


@wire.message(55)
class SyncNamesReply(wire.Message):
    differing: tuple[int, ...]  # buckets whose digests differ (the receiver may hold none there)
    names: tuple[NameSummary, ...]  # the receiver's entries in those buckets

    def __post_init__(self) -> None:
        check_int(len(self.differing), "differing buckets", 0, BUCKETS)
        for bucket in self.differing:
            check_bucket(bucket)
        check_int(len(self.names), "names", 0, NAME_SUMMARIES_PER_MESSAGE_MAX)


@wire.message(56)
class ListChunks(wire.Message):
    """A page of the chunk ids a node holds, after ``start_after`` in id order."""

    start_after: bytes
    limit: int

    def __post_init__(self) -> None:
        if self.start_after:
            check_chunk_id(self.start_after, "start_after")
        check_int(self.limit, "limit", 1, CHUNK_IDS_PER_MESSAGE_MAX)


@wire.message(57)
class ListChunksReply(wire.Message):
    ids: bytes  # concatenated 32-byte ids
    more: bool
    corrupt: bytes  # ids found corrupt here and not yet repaired (first page only)

    def __post_init__(self) -> None:
        check_id_list(self.ids, "ids", CHUNK_IDS_PER_MESSAGE_MAX)
        # Corrupt chunks are few; the frame cap bounds how many one answer can name.
        check_id_list(self.corrupt, "corrupt", wire.FRAME_SIZE_BYTES_MAX // CHUNK_ID_BYTES)


@wire.message(58)
class Leaving(wire.Message):
    """The sender is handing off its data to leave: take it out of the ring now, so
    that the new owners keep what it hands them. Expires after ``for_s`` seconds."""

    for_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.for_s) and 0.0 <= self.for_s <= LEAVING_FOR_S_MAX):
            raise wire.FieldError(f"for_s must be in [0, {LEAVING_FOR_S_MAX}] seconds, got {self.for_s}")


@wire.message(59)
class LeavingReply(wire.Message):
    pass


# --- fsck (client to coordinator) ------------------------------------------


@wire.message(70, senders=CLIENT)
class Fsck(wire.Message):
    pass


@wire.record
class FsckProblem:
    kind: str  # one of FSCK_KINDS
    what: str  # "chunks" or "names"
    key: str  # chunk id (hex) or name
    holders: tuple[str, ...]
    wanted: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in FSCK_KINDS:
            raise wire.FieldError(f"unknown fsck problem kind {self.kind!r:.40}")
        if self.what not in FSCK_WHATS:
            raise wire.FieldError(f"an fsck problem is about chunks or names, not {self.what!r:.40}")
        if self.what == "chunks":
            if len(self.key) != 2 * CHUNK_ID_BYTES or not HEX_DIGITS.issuperset(self.key):
                raise wire.FieldError("a chunk's key must be its id in lowercase hex")
        else:
            check_name(self.key, "key")
        check_member_ids(self.holders, "holders")
        check_member_ids(self.wanted, "wanted")


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

    def __post_init__(self) -> None:
        for field in _FSCK_COUNTS:
            check_count(getattr(self, field), field)
        check_member_ids(self.nodes_unreachable, "nodes_unreachable")
        check_int(len(self.problems), "problems", 0, FSCK_PROBLEMS_MAX)


_FSCK_COUNTS = (
    "names_checked", "chunks_checked", "names_under_replicated", "chunks_under_replicated",
    "chunks_over_replicated", "names_over_replicated", "names_misplaced", "chunks_misplaced",
    "chunks_missing", "chunks_corrupt", "nodes_asked",
)


# --- resumable transfers (client to coordinator) ---------------------------
# A get that resumes from the chunks a client already holds, and a put that does
# not send the chunks the cluster already holds (p2pfs/replication/resumable.py).


@wire.message(72, senders=CLIENT)
class GetFileFrom(wire.Message):
    """The newest version of ``name``, its body from chunk ``first_chunk`` on when that
    version's hash is ``file_hash`` (what the client's partial copy is of), else from
    the start. An empty ``file_hash`` asks for the whole file."""

    name: str
    file_hash: bytes
    first_chunk: int

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        if self.file_hash:
            check_file_hash(self.file_hash)
        check_int(self.first_chunk, "first_chunk", 0, MANIFEST_CHUNKS_MAX)


@wire.message(73, senders=BOTH)
class GetFileFromReply(wire.Message):
    """Header of a resumable get: the version sent (its manifest in the storage
    encoding, which the client decodes and checks) and the chunk the body starts at."""

    name: str
    manifest: bytes
    version_wall_ms: int
    version_logical: int
    first_chunk: int

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(len(self.manifest), "manifest length in bytes", 1, ENTRY_ENCODED_BYTES_MAX)
        check_version(self.version_wall_ms, self.version_logical, "version")
        check_int(self.first_chunk, "first_chunk", 0, MANIFEST_CHUNKS_MAX)


@wire.message(74, senders=CLIENT)
class HeldChunks(wire.Message):
    """Which of these chunks every one of their ``rf`` preferred nodes holds."""

    chunk_ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_chunk_ids(self.chunk_ids, "chunk_ids", HAS_CHUNKS_IDS_MAX)


@wire.message(75, senders=BOTH)
class HeldChunksReply(wire.Message):
    """``chunk_size_bytes``: the size this cluster cuts files at; a client that cut at
    another size cuts again, so one content is stored one way (and found held)."""

    held: tuple[bool, ...]
    chunk_size_bytes: int

    def __post_init__(self) -> None:
        check_int(len(self.held), "answers in held", 0, HAS_CHUNKS_IDS_MAX)
        check_int(self.chunk_size_bytes, "chunk_size_bytes", CHUNK_SIZE_BYTES_MIN, CHUNK_SIZE_BYTES_MAX)


def held_bitmap(held: list[bool]) -> bytes:
    """``PutFileKnown.held`` from one flag per chunk: bit i of byte i // 8, least significant first."""
    bitmap = bytearray((len(held) + 7) // 8)
    for index, here in enumerate(held):
        if here:
            bitmap[index // 8] |= 1 << (index % 8)
    return bytes(bitmap)


def is_held(bitmap: bytes, index: int) -> bool:
    """Whether ``PutFileKnown.held`` marks chunk ``index`` as held (not in the body)."""
    return index // 8 < len(bitmap) and bool(bitmap[index // 8] & (1 << (index % 8)))


@wire.message(76, senders=CLIENT, takes_body=True)
class PutFileKnown(wire.Message):
    """Store a file the client cut into chunks itself: ``manifest`` lists every chunk;
    the body carries, in order, the chunks whose bit in ``held`` (bit i of byte i // 8,
    least significant first) is clear. The others the cluster holds already. The
    answer is a PutFileReply."""

    name: str
    manifest: bytes
    held: bytes

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(len(self.manifest), "manifest length in bytes", 1, ENTRY_ENCODED_BYTES_MAX)
        check_int(len(self.held), "held bitmap length in bytes", 0, (MANIFEST_CHUNKS_MAX + 7) // 8)


# --- chain replication of chunk writes (between nodes) ---------------------
# Codes 40-59 are all taken, so these node-to-node messages continue at 77 (senders: nodes only).
# p2pfs/replication/quorum_chain.py says how a chain is written and checked.

from p2pfs.replication.fields import check_member_id  # noqa: E402 (appended here, so that merges stay clean)

# The wire version (low byte of a member record's protocol_version) from which a node knows
# StoreChunkChain. The frames are unchanged, so the connection's hello still checks
# wire.PROTOCOL_VERSION (2) and nodes of both versions talk; a coordinator sends a chain only
# through members whose record advertises at least this, and writes star-wise to the others.
CHAIN_WIRE_VERSION = 3
# Longest time a chain message may ask its receiver to take (ms): a node also never takes
# longer than its own replica_timeout_s, so this only bounds what the field can carry.
CHAIN_TIMEOUT_MS_MAX = 3_600_000


@wire.record
class ChainLink:
    """A node further down a chain, and the owner it stores for when it is a stand-in."""

    node_id: str
    hint_for: str

    def __post_init__(self) -> None:
        check_member_id(self.node_id, "node_id")
        check_hint_for(self.hint_for)


@wire.message(77)
class StoreChunkChain(wire.Message):
    """Store a chunk (``hint_for`` as for StoreChunk) and pass it on down ``rest``, in order;
    answer within ``timeout_ms`` with this node's outcome and those of the rest."""

    chunk_id: bytes
    data: bytes
    hint_for: str
    rest: tuple[ChainLink, ...]
    timeout_ms: int

    def __post_init__(self) -> None:
        check_chunk_id(self.chunk_id, "chunk_id")
        check_data(self.data)
        check_hint_for(self.hint_for)
        # A chain holds at most rf nodes: the receiver and rf - 1 after it.
        check_int(len(self.rest), "nodes in rest", 0, RF_MAX - 1)
        check_int(self.timeout_ms, "timeout_ms", 1, CHAIN_TIMEOUT_MS_MAX)


@wire.record
class ChainOutcome:
    """One node's outcome in a chain: stored, or not and why."""

    node_id: str
    stored: bool
    reason: str

    def __post_init__(self) -> None:
        check_member_id(self.node_id, "node_id")
        check_int(len(self.reason), "reason", 0, REASON_CHARS_MAX)


@wire.message(78)
class StoreChunkChainReply(wire.Message):
    """The receiver's outcome first, then those of the nodes after it, in chain order; nodes
    past the last outcome given are unacknowledged (their fate is unknown to the receiver)."""

    outcomes: tuple[ChainOutcome, ...]

    def __post_init__(self) -> None:
        check_int(len(self.outcomes), "outcomes", 1, RF_MAX)


# --- fsck across requests (node to client) -----------------------------------


@wire.message(79, senders=BOTH)
class FsckPending(wire.Message):
    """The answer to Fsck while the check is still under way (p2pfs/replication/fsck.py): what
    it has checked so far. The client asks again; the node's job goes on meanwhile."""

    names_checked: int
    chunks_checked: int

    def __post_init__(self) -> None:
        check_count(self.names_checked, "names_checked")
        check_count(self.chunks_checked, "chunks_checked")
