"""The data messages of a client's one-request commands: ls, stat and rm (codes 64-69).

Why a module of their own: `p2pfs ls` (``client.blocking``) needs these ten
classes, and building the ~45 frozen, slotted dataclasses of ``messages.py`` at
import was a fifth of its start-up (docs/BENCHMARKS.md, "CLI start-up"). The
classes are unchanged, and ``messages.py`` imports them back, so ``dm.ListFiles``
and the rest keep working and the daemon decodes every type as before: a wire
type is registered by whichever module defines it, once.

The field checks follow ``messages.py``'s rules (see its docstring); the caps are
in ``fields.py``.

Codes 90-92 are the small-file put and get, a file carried in the message itself
rather than as a streamed body after it. A client sends them only to a node that
offered ``wire.ALPN_SMALL_FILES`` in the TLS handshake, since a node before them
would close the connection on a type it does not know; a node answers them only
when asked with them, so an older client is answered as before.
"""

from __future__ import annotations

from p2pfs import wire
from p2pfs.replication.fields import (  # FILES_PER_LIST_MAX is part of this module's interface (cm.X_MAX)
    FILE_SIZE_BYTES_MAX, FILES_PER_LIST_MAX, NODES_PER_MESSAGE_MAX, check_chunk_id, check_file_hash, check_int,
    check_member_ids, check_name, check_prefix, check_version, check_writer,
)
from p2pfs.storage.hlc import WALL_MS_MAX
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MAX, INLINE_BYTES_MAX, MANIFEST_CHUNKS_MAX
from p2pfs.wire import Role

# The largest replication factor a node accepts (ReplicationConfig checks rf <= 16).
RF_MAX = 16
# Parts of the ring in a million: coverage shares are in these (quorum_list.RING_PPM).
RING_PPM = 1_000_000
# Characters of one unanswered node's reason (the coordinator cuts longer ones).
REASON_CHARS_MAX = 300

CLIENT = (Role.CLIENT,)
BOTH = (Role.NODE, Role.CLIENT)


@wire.message(64, senders=CLIENT)
class ListFiles(wire.Message):
    """A page of live files with ``prefix``, in name order, after the name ``after`` ("" from the start)."""

    prefix: str
    after: str
    limit: int  # files in the answer at most

    def __post_init__(self) -> None:
        check_prefix(self.prefix, "prefix")
        check_prefix(self.after, "after")
        check_int(self.limit, "limit", 1, FILES_PER_LIST_MAX)


@wire.record
class FileInfo:
    name: str
    size_bytes: int
    created_ms: int
    version_wall_ms: int
    version_logical: int

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(self.size_bytes, "size_bytes", 0, FILE_SIZE_BYTES_MAX)
        check_int(self.created_ms, "created_ms", 0, WALL_MS_MAX)
        check_version(self.version_wall_ms, self.version_logical, "version")


@wire.record
class RangeAnswers:
    """``ring_ppm`` parts per million of the ring had ``replicas`` of their replica set answer."""

    replicas: int
    ring_ppm: int

    def __post_init__(self) -> None:
        check_int(self.replicas, "replicas", 0, RF_MAX)
        check_int(self.ring_ppm, "ring_ppm", 0, RING_PPM)


@wire.record
class Unanswered:
    """A node that did not answer a listing, and why (as the coordinator saw it)."""

    node_id: str
    reason: str

    def __post_init__(self) -> None:
        check_member_ids((self.node_id,), "node_id")
        check_int(len(self.reason), "reason", 0, REASON_CHARS_MAX)


@wire.message(65, senders=BOTH)
class ListFilesReply(wire.Message):
    """One page of a listing, and how much of the ring it was read from (quorum_list.py).

    ``complete``: every range had ``replicas_needed`` of its replicas answer, so no
    name acknowledged at the write quorum can be missing from this page.
    ``next_after``: the name to ask the next page after; "" when the listing is over.
    """

    files: tuple[FileInfo, ...]
    complete: bool
    next_after: str
    replicas_needed: int
    coverage: tuple[RangeAnswers, ...]
    unanswered: tuple[Unanswered, ...]

    def __post_init__(self) -> None:
        check_int(len(self.files), "files", 0, FILES_PER_LIST_MAX)
        check_prefix(self.next_after, "next_after")
        check_int(self.replicas_needed, "replicas_needed", 0, RF_MAX)
        check_int(len(self.coverage), "coverage", 0, RF_MAX + 1)
        check_int(len(self.unanswered), "unanswered", 0, NODES_PER_MESSAGE_MAX)


@wire.message(66, senders=CLIENT)
class RemoveFile(wire.Message):
    name: str

    def __post_init__(self) -> None:
        check_name(self.name, "name")


@wire.message(67, senders=BOTH)
class RemoveFileReply(wire.Message):
    name: str

    def __post_init__(self) -> None:
        check_name(self.name, "name")


@wire.message(68, senders=CLIENT)
class StatFile(wire.Message):
    name: str

    def __post_init__(self) -> None:
        check_name(self.name, "name")


@wire.record
class ChunkInfo:
    chunk_id: bytes
    size_bytes: int
    replicas: tuple[str, ...]  # node ids found holding it

    def __post_init__(self) -> None:
        check_chunk_id(self.chunk_id, "chunk_id")
        check_int(self.size_bytes, "size_bytes", 1, CHUNK_SIZE_BYTES_MAX)
        check_member_ids(self.replicas, "replicas")


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
    writer_client: str = ""  # the client whose put wrote this version; "" if not recorded

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(self.size_bytes, "size_bytes", 0, FILE_SIZE_BYTES_MAX)
        check_file_hash(self.file_hash)
        check_int(self.created_ms, "created_ms", 0, WALL_MS_MAX)
        check_version(self.version_wall_ms, self.version_logical, "version")
        check_writer(self.writer, "writer")
        check_int(len(self.chunks), "chunks", 0, MANIFEST_CHUNKS_MAX)
        if self.writer_client:
            check_writer(self.writer_client, "writer_client")


# --- small files, carried in the message (codes 90-92) -------------------------------------

# Largest file a put or get carries in its message: what a node may hold inline in a name
# entry (``inline_file_bytes_max`` is capped at it). A get's answer is this small only for
# such a file, and a larger put is streamed as a body, as before.
SMALL_FILE_BYTES_MAX = INLINE_BYTES_MAX


@wire.message(90, senders=CLIENT)
class PutSmallFile(wire.Message):
    """Store ``content`` under ``name``: a put without a body, answered by a ``PutFileReply``.

    One frame each way instead of a header, a body frame and its end: what a 4 KiB put
    spent on its second and third frame was a tenth of its client's CPU.
    """

    name: str
    size_bytes: int  # as announced by the caller: the node refuses content of another size, as for a body
    content: bytes

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(self.size_bytes, "size_bytes", 0, SMALL_FILE_BYTES_MAX)
        check_int(len(self.content), "content", 0, SMALL_FILE_BYTES_MAX)


@wire.message(91, senders=CLIENT)
class GetSmallFile(wire.Message):
    """Get ``name``: a file held inline is answered with a ``SmallFile`` (no body); any other
    as ``GetFile`` is, a ``GetFileReply`` followed by the streamed body."""

    name: str

    def __post_init__(self) -> None:
        check_name(self.name, "name")


@wire.message(92, senders=BOTH)
class SmallFile(wire.Message):
    """A whole small file, the answer to ``GetSmallFile``: checked against ``file_hash`` by the client."""

    name: str
    size_bytes: int
    file_hash: bytes
    content: bytes

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_int(self.size_bytes, "size_bytes", 0, SMALL_FILE_BYTES_MAX)
        check_file_hash(self.file_hash)
        if len(self.content) != self.size_bytes:
            raise wire.FieldError(f"content of {len(self.content)} bytes, size_bytes says {self.size_bytes}")
