"""The data messages' caps and field checks (``messages.py`` builds on them).

Each cap bounds what one message may carry, at least what an honest node sends
(tests/test_message_validation.py checks both); each check raises
``wire.FieldError``, which the codec turns into a ``WireError`` when decoding.
"""

from __future__ import annotations

from p2pfs import wire
from p2pfs.membership.messages import NODE_ID_CHARS_MAX, PUSH_PULL_MEMBERS_MAX
from p2pfs.storage.hlc import LOGICAL_MAX, WALL_MS_MAX
from p2pfs.storage.manifest import (
    CHUNK_ID_BYTES,
    CHUNK_SIZE_BYTES_MAX,
    FILE_HASH_BYTES,
    MANIFEST_CHUNKS_MAX,
)
from p2pfs.storage.naming import WRITER_HEX_CHARS, BadName, validate_name

# -- caps ---------------------------------------------------------------------
# Each is at least what an honest node sends (the senders' own caps are named in
# the comment), so only a peer that breaks the protocol meets them.

# Largest file a manifest can describe: its chunk count cap times the largest chunk.
FILE_SIZE_BYTES_MAX = MANIFEST_CHUNKS_MAX * CHUNK_SIZE_BYTES_MAX
# Ids asked about in one HasChunks (handlers.HAS_CHUNKS_MAX; hand-off asks 1024).
HAS_CHUNKS_IDS_MAX = 4096
# Chunk ids in one ListChunks page or one SyncChunks answer (replicas.IDS_PER_MESSAGE_MAX).
CHUNK_IDS_PER_MESSAGE_MAX = 65536
# Name entries in one ListNames answer (replicas.LIST_PAGE_NAMES).
NAMES_PER_PAGE_MAX = 1000
# Files in one ls answer: one page (service.LS_PAGE_FILES_MAX).
FILES_PER_LIST_MAX = 1000
# Node ids in one list (replicas of a chunk, fsck's holders and unreachable
# nodes): the largest member table a node shares in one push-pull.
NODES_PER_MESSAGE_MAX = PUSH_PULL_MEMBERS_MAX
# Name summaries in one SyncNames answer. The answerer stops after the bucket
# that takes it past antientropy.NAMES_PER_MESSAGE_MAX, so one big bucket can take
# it further; the frame cap stops it anyway, and a summary takes at least 72
# bytes (a 64-digit writer, a name, two ints, a bool, the array header).
NAME_SUMMARIES_PER_MESSAGE_MAX = wire.FRAME_SIZE_BYTES_MAX // 72
# Problems one fsck answer names (fsck.FSCK_PROBLEMS_LISTED_MAX).
FSCK_PROBLEMS_MAX = 50
# Longest a leaving node may ask to stay out of the ring (seconds). It sends
# leave_handoff_timeout_s + handoff.LEAVING_MARGIN_S (6 minutes by default), and
# the receiver clamps it to its own setting; this only keeps NaN, infinities and
# absurd values out.
LEAVING_FOR_S_MAX = 30 * 86400.0
# Fsck's problem kinds and what they are about (what ``fsck.Fsck.run`` reports).
FSCK_KINDS = frozenset({"under_replicated", "missing", "corrupt", "misplaced", "over_replicated"})
FSCK_WHATS = frozenset({"chunks", "names"})
# Counters are int64 on the wire and in SQLite.
COUNT_MAX = 2**63 - 1

HEX_DIGITS = frozenset("0123456789abcdef")


# -- field checks ---------------------------------------------------------------
# Each raises wire.FieldError (a ValueError: the codec's cue for WireError), naming the field.


def check_int(value: int, what: str, low: int, high: int) -> None:
    if not low <= value <= high:
        raise wire.FieldError(f"{what} must be in [{low}, {high}], got {value}")


def check_chunk_id(value: bytes, what: str) -> None:
    if len(value) != CHUNK_ID_BYTES:
        raise wire.FieldError(f"{what} must be {CHUNK_ID_BYTES} bytes, got {len(value)}")


def check_chunk_ids(ids: tuple[bytes, ...], what: str, count_max: int) -> None:
    if len(ids) > count_max:
        raise wire.FieldError(f"{len(ids)} {what} exceed the cap of {count_max}")
    for chunk_id in ids:
        check_chunk_id(chunk_id, what)


def check_id_list(concatenated: bytes, what: str, count_max: int) -> None:
    """Concatenated 32-byte ids: whole ids only, and at most ``count_max`` of them."""
    if len(concatenated) % CHUNK_ID_BYTES:
        raise wire.FieldError(f"{what} of {len(concatenated)} bytes is not a whole number of {CHUNK_ID_BYTES}-byte ids")
    if len(concatenated) > count_max * CHUNK_ID_BYTES:
        raise wire.FieldError(f"{what} holds {len(concatenated) // CHUNK_ID_BYTES} ids, over the cap of {count_max}")


def check_name(name: str, what: str) -> None:
    try:
        validate_name(name)
    except BadName as exc:
        raise wire.FieldError(f"{what}: {exc}") from None


def check_prefix(prefix: str, what: str) -> None:
    """A prefix of names: empty, or what a name may be."""
    if prefix:
        check_name(prefix, what)


def check_writer(writer: str, what: str) -> None:
    if len(writer) != WRITER_HEX_CHARS or not HEX_DIGITS.issuperset(writer):
        raise wire.FieldError(f"{what} must be a node id of {WRITER_HEX_CHARS} lowercase hex digits, got {writer!r:.80}")


def check_member_id(node_id: str, what: str) -> None:
    if not 0 < len(node_id) <= NODE_ID_CHARS_MAX:
        raise wire.FieldError(f"{what} must have 1 to {NODE_ID_CHARS_MAX} characters")


def check_member_ids(node_ids: tuple[str, ...], what: str) -> None:
    if len(node_ids) > NODES_PER_MESSAGE_MAX:
        raise wire.FieldError(f"{len(node_ids)} {what} exceed the cap of {NODES_PER_MESSAGE_MAX}")
    for node_id in node_ids:
        check_member_id(node_id, what)


def check_hint_for(hint_for: str) -> None:
    if hint_for:
        check_member_id(hint_for, "hint_for")


def check_version(wall_ms: int, logical: int, what: str) -> None:
    """An HLC reading (``storage.hlc.Timestamp``'s range)."""
    check_int(wall_ms, f"{what} wall_ms", 0, WALL_MS_MAX)
    check_int(logical, f"{what} logical", 0, LOGICAL_MAX)


def check_bucket(bucket: int) -> None:
    # Imported here: healing loads the ring, which a client's ls and stat messages
    # (client_messages.py) need not load (docs/BENCHMARKS.md, "CLI start-up").
    from p2pfs.replication.healing import BUCKETS

    check_int(bucket, "bucket", 0, BUCKETS - 1)


def check_data(data: bytes) -> None:
    check_int(len(data), "chunk length in bytes", 1, CHUNK_SIZE_BYTES_MAX)


def check_file_hash(file_hash: bytes) -> None:
    if len(file_hash) != FILE_HASH_BYTES:
        raise wire.FieldError(f"file_hash must be {FILE_HASH_BYTES} bytes, got {len(file_hash)}")


def check_count(value: int, what: str) -> None:
    check_int(value, what, 0, COUNT_MAX)
