"""Every message type refuses malformed field values when decoded.

A table gives, for each message type, a message the class accepts and values
that must be refused, each at a path into the message's fields
(``"buckets.0.ids"``: the ``ids`` of the first ``BucketChunks``). The bad value
is written into the accepted message's msgpack array directly, as a peer could
send it, and decoding must raise ``WireError``; building the class with it
must raise ``ValueError``. Round trips of accepted values are in test_wire.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import msgpack
import pytest

from p2pfs import wire
from p2pfs.errors import BadInput
from p2pfs.membership import messages as mm
from p2pfs.node import messages as nm
from p2pfs.replication import fields
from p2pfs.replication import messages as dm
from p2pfs.storage.hlc import LOGICAL_MAX, WALL_MS_MAX
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MAX, MANIFEST_CHUNKS_MAX
from p2pfs.storage.naming import ENTRY_ENCODED_BYTES_MAX

import p2pfs.node.daemon  # noqa: F401  (registers every message type)

ID = bytes(range(32))
DIGEST = bytes(16)
HEX = "ab" * 32
NAME = "docs/report.txt"
META = mm.MemberMeta("127.0.0.1", 7000, "", 1, 1)

# (accepted message, [(path, bad value), ...])
TABLE: list[tuple[wire.Message, list[tuple[str, object]]]] = [
    (dm.StoreChunk(ID, b"data", ""), [
        ("chunk_id", b""), ("chunk_id", ID[:31]), ("chunk_id", ID + b"\x00"),
        ("data", b""), ("data", bytes(CHUNK_SIZE_BYTES_MAX + 1)),
        ("hint_for", "x" * (mm.NODE_ID_CHARS_MAX + 1)), ("hint_for", 5),
    ]),
    (dm.StoreChunkReply(True), [("stored", 1)]),
    (dm.StoreChunkChain(ID, b"data", "", (dm.ChainLink(HEX, ""),), 1000), [
        ("chunk_id", ID[:31]), ("data", b""), ("data", bytes(CHUNK_SIZE_BYTES_MAX + 1)), ("hint_for", 5),
        ("rest", [[HEX, ""]] * dm.RF_MAX), ("rest.0.node_id", ""), ("rest.0.hint_for", "x" * 129),
        ("timeout_ms", 0), ("timeout_ms", dm.CHAIN_TIMEOUT_MS_MAX + 1),
    ]),
    (dm.StoreChunkChainReply((dm.ChainOutcome(HEX, True, ""),)), [
        ("outcomes", []), ("outcomes", [[HEX, True, ""]] * (dm.RF_MAX + 1)), ("outcomes.0.node_id", ""),
        ("outcomes.0.stored", 1), ("outcomes.0.reason", "x" * (dm.REASON_CHARS_MAX + 1)),
    ]),
    (dm.FetchChunk(ID), [("chunk_id", ID[:31]), ("chunk_id", ID * 2)]),
    (dm.ChunkData(b"d"), [("data", b""), ("data", "text")]),
    (dm.HasChunks((ID,)), [
        ("chunk_ids.0", ID[:16]), ("chunk_ids", [ID] * (dm.HAS_CHUNKS_IDS_MAX + 1)),
    ]),
    (dm.HasChunksReply((True,)), [("present", [True] * (dm.HAS_CHUNKS_IDS_MAX + 1)), ("present.0", 0)]),
    (dm.PutName(b"entry", ""), [
        ("entry", b""), ("entry", bytes(ENTRY_ENCODED_BYTES_MAX + 1)), ("hint_for", "x" * 129),
    ]),
    (dm.PutNameReply(False), [("applied", None)]),
    (dm.GetName(NAME), [("name", ""), ("name", "a\x00b"), ("name", "n" * 1025), ("name", "\u00e9" * 513)]),
    (dm.GetNameReply(b"entry"), [("entry", b""), ("entry", bytes(ENTRY_ENCODED_BYTES_MAX + 1))]),
    (dm.ListNames("", "", 10), [
        ("prefix", "a\x00"), ("prefix", "n" * 1025), ("start_after", "\x00"),
        ("limit", 0), ("limit", -1), ("limit", dm.NAMES_PER_PAGE_MAX + 1),
    ]),
    (dm.ListNamesReply((b"entry",), False), [
        ("entries.0", b""), ("entries", [b"e"] * (dm.NAMES_PER_PAGE_MAX + 1)),
    ]),
    (dm.PutFile(NAME, -1), [("name", ""), ("size_bytes", -2), ("size_bytes", dm.FILE_SIZE_BYTES_MAX + 1)]),
    (dm.PutFileReply(NAME, 0, ID, 0, 0, 0), [
        ("name", ""), ("size_bytes", -1), ("file_hash", ID[:31]),
        ("version_wall_ms", -1), ("version_wall_ms", WALL_MS_MAX + 1),
        ("version_logical", -1), ("version_logical", LOGICAL_MAX + 1),
        ("chunks", -1), ("chunks", MANIFEST_CHUNKS_MAX + 1),
    ]),
    (dm.GetFile(NAME), [("name", "")]),
    (dm.GetFileReply(NAME, 0, ID), [("name", "\x00"), ("size_bytes", -1), ("file_hash", b"")]),
    (dm.ListFiles("", "", 1), [
        ("prefix", "\x00"), ("prefix", "n" * 1025), ("after", "\x00"),
        ("limit", 0), ("limit", dm.FILES_PER_LIST_MAX + 1),
    ]),
    (dm.ListFilesReply((dm.FileInfo(NAME, 0, 0, 0, 0),), True, "", 2, (dm.RangeAnswers(3, 1_000_000),),
                       (dm.Unanswered("n1", "refused"),)), [
        ("files.0.name", ""), ("files.0.size_bytes", -1), ("files.0.created_ms", WALL_MS_MAX + 1),
        ("files.0.version_wall_ms", -1), ("files.0.version_logical", LOGICAL_MAX + 1),
        ("files", [[NAME, 0, 0, 0, 0]] * (dm.FILES_PER_LIST_MAX + 1)),
        ("next_after", "\x00"), ("replicas_needed", -1), ("replicas_needed", dm.RF_MAX + 1),
        ("coverage.0.replicas", dm.RF_MAX + 1), ("coverage.0.ring_ppm", dm.RING_PPM + 1),
        ("coverage", [[0, 0]] * (dm.RF_MAX + 2)),
        ("unanswered.0.node_id", ""), ("unanswered.0.reason", "x" * (dm.REASON_CHARS_MAX + 1)),
    ]),
    (dm.RemoveFile(NAME), [("name", "")]),
    (dm.RemoveFileReply(NAME), [("name", "n" * 1025)]),
    (dm.StatFile(NAME), [("name", "a\x00")]),
    (dm.StatFileReply(NAME, 1, ID, 0, 0, 0, HEX, (dm.ChunkInfo(ID, 1, ("n1",)),)), [
        ("name", ""), ("size_bytes", -1), ("file_hash", b"x"), ("created_ms", -1),
        ("version_wall_ms", WALL_MS_MAX + 1), ("version_logical", -1),
        ("writer", "AB" * 32), ("writer", "ab" * 31), ("writer", "g" * 64),
        ("chunks.0.chunk_id", b"x"), ("chunks.0.size_bytes", 0), ("chunks.0.size_bytes", CHUNK_SIZE_BYTES_MAX + 1),
        ("chunks.0.replicas.0", ""), ("chunks.0.replicas", ["n"] * (fields.NODES_PER_MESSAGE_MAX + 1)),
    ]),
    (dm.SyncChunks((dm.BucketDigest(0, DIGEST, 1),)), [
        ("buckets.0.bucket", -1), ("buckets.0.bucket", 256), ("buckets.0.digest", DIGEST[:15]),
        ("buckets.0.count", -1), ("buckets", [[0, DIGEST, 1], [0, DIGEST, 2]]),
    ]),
    (dm.SyncChunksReply((dm.BucketChunks(0, ID),)), [
        # What ended the daemon: ids that do not split into 32-byte chunk ids.
        ("buckets.0.ids", ID + b"\x00"), ("buckets.0.ids", ID[:31]),
        ("buckets.0.bucket", 256),
        ("buckets", [[b, b""] for b in range(257)]),
        ("buckets", [[0, ID * 40_000], [1, ID * 40_000]]),  # over CHUNK_IDS_PER_MESSAGE_MAX in all
    ]),
    (dm.SyncNames((dm.BucketDigest(255, DIGEST, 0),)), [
        ("buckets.0.bucket", 2**32), ("buckets.0.digest", b""), ("buckets.0.count", -5),
    ]),
    (dm.SyncNamesReply((0,), (dm.NameSummary(NAME, 0, 0, HEX, False),)), [
        ("differing.0", 256), ("differing.0", -1), ("differing", [0] * 257),
        ("names.0.name", ""), ("names.0.wall_ms", -1), ("names.0.wall_ms", WALL_MS_MAX + 1),
        ("names.0.logical", LOGICAL_MAX + 1), ("names.0.writer", "x"),
        ("names", [[NAME, 0, 0, HEX, False]] * (dm.NAME_SUMMARIES_PER_MESSAGE_MAX + 1)),
    ]),
    (dm.ListChunks(b"", 1), [
        ("start_after", ID[:31]), ("limit", 0), ("limit", dm.CHUNK_IDS_PER_MESSAGE_MAX + 1),
    ]),
    (dm.ListChunksReply(ID, False, b""), [
        ("ids", ID + b"\x01"), ("ids", ID * (dm.CHUNK_IDS_PER_MESSAGE_MAX + 1)), ("corrupt", b"\x01"),
    ]),
    (dm.Leaving(1.0), [
        ("for_s", math.nan), ("for_s", math.inf), ("for_s", -1.0), ("for_s", dm.LEAVING_FOR_S_MAX * 2),
    ]),
    (dm.LeavingReply(), [("", ["surplus"])]),
    (dm.Fsck(), [("", [1])]),
    (dm.FsckReply(*[0] * 11, (), (dm.FsckProblem("missing", "chunks", ID.hex(), (), ("n1",)),)), [
        ("names_checked", -1), ("chunks_corrupt", -1), ("nodes_asked", 2**63),
        ("nodes_unreachable", [""]),
        ("problems", [["missing", "chunks", ID.hex(), [], []]] * (dm.FSCK_PROBLEMS_MAX + 1)),
        ("problems.0.kind", "broken"), ("problems.0.what", "chunk"),
        ("problems.0.key", "AB" * 32), ("problems.0.key", NAME),
        ("problems.0", ["missing", "names", "", [], []]),
        ("problems.0.holders", ["x" * 129]), ("problems.0.wanted", ["n"] * (fields.NODES_PER_MESSAGE_MAX + 1)),
    ]),
    (dm.FsckPending(0, 0), [("names_checked", -1), ("chunks_checked", 2**63), ("", [0])]),
    (nm.StatusRequest(), [("", ["surplus"])]),
    (nm.StatusReply(HEX, "127.0.0.1", 7000, "0.1.0", 1.0, "", 0, 0, 1, 0, 0, 0), [
        ("node_id", ""), ("host", ""), ("host", "h" * 256), ("port", -1), ("port", 65536),
        ("version", ""), ("version", "v" * (nm.VERSION_CHARS_MAX + 1)),
        ("uptime_s", math.nan), ("uptime_s", -1.0), ("uptime_s", math.inf),
        ("zone", "z" * 65), ("capacity_bytes", -1), ("used_bytes", -1),
        ("members_alive", -1), ("members_left", -1),
    ]),
    (nm.MembersRequest(), [("", [None])]),
    (nm.MembersReply((nm.MemberInfo(HEX, "127.0.0.1", 7000, "alive", 1, "", 0, 1),)), [
        ("members.0.node_id", ""), ("members.0.host", ""), ("members.0.port", 0), ("members.0.port", 65536),
        ("members.0.state", "zombie"), ("members.0.incarnation", -1), ("members.0.zone", "z" * 65),
        ("members.0.capacity_bytes", -1), ("members.0.protocol_version", 65536),
        ("members", [[HEX, "h", 1, "alive", 1, "", 0, 1]] * (nm.MEMBERS_PER_REPLY_MAX + 1)),
    ]),
    (nm.LeaveRequest(), [("", [0])]),
    (nm.LeaveReply(True), [("accepted", "yes")]),
    # Membership messages checked their fields already; a few rows keep them in the table.
    (mm.Ping(1, HEX, ()), [("seq", -1), ("seq", mm.SEQ_MODULUS), ("target_id", ""),
                           ("updates", [[HEX, 1, 3, "", None]] * (mm.UPDATES_PER_MESSAGE_MAX + 1))]),
    (mm.Ack(1, (mm.MemberFact(HEX, 1, mm.MemberState.ALIVE, "", META),)), [
        ("updates.0.meta", None), ("updates.0.incarnation", -1), ("updates.0.meta.port", 0),
        ("updates.0.meta.host", ""),
    ]),
    (mm.Nack(0), [("seq", 2**32)]),
    (mm.PingReq(1, HEX, "127.0.0.1", 7000, 0.5, ()), [
        ("nack_timeout_s", math.nan), ("nack_timeout_s", mm.NACK_TIMEOUT_S_MAX + 1), ("target_port", 0),
    ]),
    (mm.Gossip(()), [("updates", [["", 1, 1, "", None]])]),
    (mm.PushPull(False, ()), [("members", [[HEX, 1, 3, "", None]] * (mm.PUSH_PULL_MEMBERS_MAX + 1))]),
    (wire.Hello(1, b"", "node", "", 0), [("role", "admin"), ("listen_port", 65536)]),
    # Resumable transfers.
    (dm.GetFileFrom(NAME, ID, 3), [
        ("name", ""), ("file_hash", ID[:31]), ("first_chunk", -1), ("first_chunk", MANIFEST_CHUNKS_MAX + 1),
    ]),
    (dm.GetFileFromReply(NAME, b"m", 0, 0, 0), [
        ("manifest", b""), ("manifest", bytes(ENTRY_ENCODED_BYTES_MAX + 1)), ("version_wall_ms", -1),
        ("first_chunk", -1),
    ]),
    (dm.HeldChunks((ID,)), [("chunk_ids.0", ID[:16]), ("chunk_ids", [ID] * (dm.HAS_CHUNKS_IDS_MAX + 1))]),
    (dm.HeldChunksReply((True,), 1 << 20), [("held", [True] * (dm.HAS_CHUNKS_IDS_MAX + 1)), ("chunk_size_bytes", 0)]),
    (dm.PutFileKnown(NAME, b"m", b""), [
        ("name", "\x00"), ("manifest", b""), ("held", bytes(MANIFEST_CHUNKS_MAX // 8 + 1)),
    ]),
]


def _raw(msg: wire.Message) -> list:
    return msgpack.unpackb(wire.encode_message(msg), raw=False)


def _record_type(tp):
    """The record class inside a field's annotation (``X``, ``X | None`` or ``tuple[X, ...]``)."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    return args[0] if len(args) == 1 else None


def with_value(msg: wire.Message, path: str, value) -> list:
    """``msg``'s msgpack array with ``value`` at ``path`` ("" replaces the whole array)."""
    raw = _raw(msg)
    if not path:
        return value
    container, cls, key = raw, type(msg), None
    steps = path.split(".")
    for i, step in enumerate(steps):
        if step.isdigit():
            key = int(step)
        else:
            names = [f.name for f in dataclasses.fields(cls)]
            key = names.index(step)
            cls = _record_type(typing.get_type_hints(cls)[step])
        if i < len(steps) - 1:
            container = container[key]
    container[key] = value
    return raw


ROWS = [(msg, path, value) for msg, bad in TABLE for path, value in bad]


def _row_id(row) -> str:
    msg, path, value = row
    shown = repr(value)
    return f"{type(msg).__name__}-{path or 'fields'}={shown[:24]}{'...' if len(shown) > 24 else ''}"


@pytest.mark.parametrize("msg", [msg for msg, _ in TABLE], ids=[type(m).__name__ for m, _ in TABLE])
def test_the_accepted_message_of_each_row_decodes(msg):
    assert wire.decode_message(msg.TYPE, wire.encode_message(msg)) == msg


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_a_malformed_field_is_refused_at_decode(row):
    msg, path, value = row
    payload = msgpack.packb(with_value(msg, path, value), use_bin_type=True)
    with pytest.raises(wire.WireError):
        wire.decode_message(msg.TYPE, payload)


def _buildable(row) -> bool:
    """A top-level field and a value of its annotated type: the class itself must refuse it."""
    msg, path, value = row
    if not path or "." in path:
        return False
    return type(value) is typing.get_type_hints(type(msg))[path]


BUILDABLE = [r for r in ROWS if _buildable(r)]


@pytest.mark.parametrize("row", BUILDABLE, ids=[_row_id(r) for r in BUILDABLE])
def test_a_malformed_field_is_refused_when_built(row):
    msg, path, value = row
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    # The data and node messages raise FieldError, which is also the caller's BadInput:
    # a name refused on the command line is a usage error, not a crash.
    ours = type(msg).__module__ in (dm.__name__, nm.__name__)
    with pytest.raises(wire.FieldError if ours else ValueError) as caught:
        type(msg)(**{**fields, path: value})
    assert not ours or isinstance(caught.value, BadInput)


def test_every_data_and_node_message_type_is_in_the_table():
    covered = {type(msg) for msg, _ in TABLE}
    types = {c for c in wire.message_types().values() if c.__module__ in (dm.__name__, nm.__name__)}
    assert types - covered == set()


def test_a_wire_error_is_a_peer_fault():
    from p2pfs.errors import PeerFault

    assert issubclass(wire.WireError, PeerFault)


def test_caps_hold_what_honest_nodes_send():
    """Each cap is at least what the code that builds the message sends, so only a hostile peer meets it."""
    from p2pfs import client
    from p2pfs.replication import fsck, handlers, handoff, replicas, service
    from p2pfs.replication.config import ReplicationConfig

    assert replicas.LIST_PAGE_NAMES <= dm.NAMES_PER_PAGE_MAX
    assert replicas.IDS_PER_MESSAGE_MAX <= dm.CHUNK_IDS_PER_MESSAGE_MAX
    assert handlers.HAS_CHUNKS_MAX <= dm.HAS_CHUNKS_IDS_MAX
    assert handoff.HANDOFF_BATCH_IDS <= dm.HAS_CHUNKS_IDS_MAX
    assert client.LS_PAGE_FILES_MAX <= dm.FILES_PER_LIST_MAX
    assert service.PREFIX_BYTES_MAX <= 1024  # a prefix is checked as a name is
    assert fsck.FSCK_PROBLEMS_LISTED_MAX <= dm.FSCK_PROBLEMS_MAX
    # A leaving node asks to stay out of the ring for its hand-off time plus a margin.
    assert ReplicationConfig().leave_handoff_timeout_s + handoff.LEAVING_MARGIN_S <= dm.LEAVING_FOR_S_MAX
