"""Property-based tests of the frame codec and the message codec."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from p2pfs import wire
from p2pfs.membership import messages as mm
from p2pfs.node import messages as nm
from p2pfs.replication import messages as dm
from p2pfs.replication.healing import BUCKETS, DIGEST_BYTES
from p2pfs.storage.hlc import LOGICAL_MAX, WALL_MS_MAX
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MAX, MANIFEST_CHUNKS_MAX
from p2pfs.wire import Frame, FrameKind

# Import every room that defines messages (the daemon and the client import them all),
# so the registry, and so the parametrisation below, is complete whatever ran before.
import p2pfs.client  # noqa: F401
import p2pfs.node.daemon  # noqa: F401

from wire_helpers import Echo


def strategy_for(tp) -> st.SearchStrategy:
    origin = typing.get_origin(tp)
    if tp is int:
        # Mostly values a field would hold (counters, sizes); sometimes the extremes msgpack carries.
        return st.integers(0, 2**31) | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is bool:
        return st.booleans()
    if tp is str:
        return st.text(max_size=50)
    if tp is bytes:
        return st.binary(max_size=200)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | strategy_for(inner)
    if origin is tuple:
        return st.lists(strategy_for(typing.get_args(tp)[0]), max_size=5).map(tuple)
    if dataclasses.is_dataclass(tp):
        return instances_of(tp)
    raise AssertionError(f"no strategy for {tp}")


# Values the message classes accept, by field name, where a field takes a narrow
# set (the classes check their fields when built); other fields get
# ``strategy_for`` their type. Ranges reach both ends, so the caps themselves
# round-trip.
_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
_member_ids = st.text(min_size=1, max_size=mm.NODE_ID_CHARS_MAX)
_hex_ids = st.text("0123456789abcdef", min_size=64, max_size=64)
_chunk_ids = st.binary(min_size=32, max_size=32)
_id_lists = st.lists(_chunk_ids, max_size=4).map(b"".join)
_wall_ms = st.integers(0, WALL_MS_MAX)
_logical = st.integers(0, LOGICAL_MAX)
_counts = st.integers(0, 2**63 - 1)
_sizes = st.integers(0, dm.FILE_SIZE_BYTES_MAX)

FIELD_STRATEGIES = {
    "role": st.sampled_from(["node", "client"]),
    "port": st.integers(1, 65535),
    "listen_port": st.integers(0, 65535),
    "chunk_id": _chunk_ids,
    "data": st.binary(min_size=1, max_size=64),
    "hint_for": st.just("") | _member_ids,
    "chunk_ids": st.lists(_chunk_ids, max_size=4).map(tuple),
    "entry": st.binary(min_size=1, max_size=64),
    "entries": st.lists(st.binary(min_size=1, max_size=64), max_size=4).map(tuple),
    "name": _names,
    "prefix": st.just("") | _names,
    "start_after": st.just("") | _names,
    "size_bytes": _sizes,
    "file_hash": st.binary(min_size=32, max_size=32),
    "version_wall_ms": _wall_ms,
    "wall_ms": _wall_ms,
    "created_ms": _wall_ms,
    "version_logical": _logical,
    "logical": _logical,
    "writer": _hex_ids,
    "replicas": st.lists(_member_ids, max_size=3).map(tuple),
    "nodes_unreachable": st.lists(_member_ids, max_size=3).map(tuple),
    "bucket": st.integers(0, BUCKETS - 1),
    "differing": st.lists(st.integers(0, BUCKETS - 1), max_size=4).map(tuple),
    "digest": st.binary(min_size=DIGEST_BYTES, max_size=DIGEST_BYTES),
    "count": _counts,
    "ids": _id_lists,
    "corrupt": _id_lists,
    "for_s": st.floats(0.0, dm.LEAVING_FOR_S_MAX),
    "node_id": _member_ids,
    "host": st.text(min_size=1, max_size=mm.HOST_CHARS_MAX),
    "incarnation": st.integers(0, mm.INCARNATION_MAX),
    "seq": st.integers(0, mm.SEQ_MODULUS - 1),
    "signature": st.just(b"") | st.binary(min_size=mm.SIGNATURE_BYTES, max_size=mm.SIGNATURE_BYTES),
    "target_host": st.text(min_size=1, max_size=mm.HOST_CHARS_MAX),
    "target_port": st.integers(1, 65535),
    "nack_timeout_s": st.floats(0.0, mm.NACK_TIMEOUT_S_MAX),
    "zone": st.text(max_size=mm.ZONE_CHARS_MAX),
    "capacity_bytes": st.integers(0, mm.CAPACITY_BYTES_MAX),
    "protocol_version": st.integers(0, 65535),
    "version": st.text(min_size=1, max_size=nm.VERSION_CHARS_MAX),
    "uptime_s": st.floats(0.0, allow_infinity=False),
    "used_bytes": _counts,
    **{field: _counts for field in ("members_alive", "members_suspect", "members_dead", "members_left")},
    **{field: _counts for field in dm._FSCK_COUNTS},
}

# Per class, where one field name means different things in different messages.
CLASS_FIELD_STRATEGIES = {
    (dm.PutFile, "size_bytes"): st.integers(-1, dm.FILE_SIZE_BYTES_MAX),
    (dm.ChunkInfo, "size_bytes"): st.integers(1, CHUNK_SIZE_BYTES_MAX),
    (dm.PutFileReply, "chunks"): st.integers(0, MANIFEST_CHUNKS_MAX),
    (dm.ListNames, "limit"): st.integers(1, dm.NAMES_PER_PAGE_MAX),
    (dm.ListChunks, "limit"): st.integers(1, dm.CHUNK_IDS_PER_MESSAGE_MAX),
    (dm.ListChunks, "start_after"): st.just(b"") | _chunk_ids,
    (nm.StatusReply, "port"): st.integers(0, 65535),
    (nm.MemberInfo, "state"): st.sampled_from(sorted(nm.MEMBER_STATE_NAMES)),
    (nm.StatusReply, "node_id"): _hex_ids,
    (dm.ListFiles, "after"): st.just("") | _names,
    (dm.ListFiles, "limit"): st.integers(1, dm.FILES_PER_LIST_MAX),
    (dm.ListFilesReply, "next_after"): st.just("") | _names,
    (dm.ListFilesReply, "replicas_needed"): st.integers(0, dm.RF_MAX),
    (dm.RangeAnswers, "replicas"): st.integers(0, dm.RF_MAX),
    (dm.RangeAnswers, "ring_ppm"): st.integers(0, dm.RING_PPM),
    (dm.Unanswered, "reason"): st.text(max_size=40),
}


def _fsck_problems() -> st.SearchStrategy:
    node_lists = st.lists(_member_ids, max_size=3).map(tuple)
    kinds = st.sampled_from(sorted(dm.FSCK_KINDS))
    return st.builds(dm.FsckProblem, kinds, st.just("chunks"), _chunk_ids.map(bytes.hex), node_lists, node_lists) | (
        st.builds(dm.FsckProblem, kinds, st.just("names"), _names, node_lists, node_lists)
    )


# Whole records built as one, where fields depend on each other.
RECORD_STRATEGIES = {
    dm.FsckProblem: _fsck_problems(),
    dm.SyncChunks: st.lists(st.builds(dm.BucketDigest, FIELD_STRATEGIES["bucket"], FIELD_STRATEGIES["digest"], _counts),
                            max_size=4, unique_by=lambda d: d.bucket).map(lambda ds: dm.SyncChunks(tuple(ds))),
    dm.SyncNames: st.lists(st.builds(dm.BucketDigest, FIELD_STRATEGIES["bucket"], FIELD_STRATEGIES["digest"], _counts),
                           max_size=4, unique_by=lambda d: d.bucket).map(lambda ds: dm.SyncNames(tuple(ds))),
}


def field_strategy(cls, name: str) -> st.SearchStrategy:
    """Values the field ``name`` of ``cls`` accepts (mostly: a class may still refuse a combination)."""
    if (cls, name) in CLASS_FIELD_STRATEGIES:
        return CLASS_FIELD_STRATEGIES[(cls, name)]
    if name in FIELD_STRATEGIES:
        return FIELD_STRATEGIES[name]
    return strategy_for(typing.get_type_hints(cls)[name])


def instances_of(cls) -> st.SearchStrategy:
    """Instances of a message or record class, with values it accepts."""
    if cls in RECORD_STRATEGIES:
        return RECORD_STRATEGIES[cls]
    fields = {f.name: field_strategy(cls, f.name) for f in dataclasses.fields(cls)}

    def build(kwargs):
        try:
            return cls(**kwargs)
        except (ValueError, TypeError):
            return None  # the class rejected these values when built: not a message we can send

    return st.fixed_dictionaries(fields).map(build).filter(lambda m: m is not None)


MESSAGE_CLASSES = sorted(wire.message_types().items())


@pytest.mark.parametrize("type_code,cls", MESSAGE_CLASSES, ids=[c.__name__ for _, c in MESSAGE_CLASSES])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips(type_code, cls, data):
    msg = data.draw(instances_of(cls))
    payload = wire.encode_message(msg)
    frame = Frame(FrameKind.REQUEST, data.draw(st.integers(0, 2**32 - 1)), type_code, payload)
    decoder = wire.FrameDecoder()
    encoded = wire.encode_frame(frame)
    # Feed in random pieces: the decoder must reassemble across any split.
    cut = data.draw(st.integers(0, len(encoded)))
    decoder.feed(encoded[:cut])
    if cut < len(encoded):
        assert decoder.next_frame() is None
    decoder.feed(encoded[cut:])
    (decoded,) = list(decoder.frames())
    assert decoded == frame
    assert wire.decode_message(type_code, decoded.payload) == msg


@settings(max_examples=500, deadline=None)
@given(type_code=st.sampled_from([c for c, _ in MESSAGE_CLASSES] + [0, 7, 65535]), payload=st.binary(max_size=300))
def test_random_payloads_raise_only_wire_error(type_code, payload):
    try:
        wire.decode_message(type_code, payload)
    except wire.WireError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(type_code=st.sampled_from([c for c, _ in MESSAGE_CLASSES]), data=st.data())
def test_truncated_or_mutated_payloads_raise_only_wire_error(type_code, data):
    cls = wire.message_types()[type_code]
    payload = bytearray(wire.encode_message(data.draw(instances_of(cls))))
    if data.draw(st.booleans()) and payload:
        payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
    elif payload:
        index = data.draw(st.integers(0, len(payload) - 1))
        payload[index] = data.draw(st.integers(0, 255))
    try:
        wire.decode_message(type_code, bytes(payload))
    except wire.WireError:
        pass


@settings(max_examples=500, deadline=None)
@given(stream=st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_but_wire_error_from_the_frame_decoder(stream):
    decoder = wire.FrameDecoder(frame_size_bytes_max=1024)
    decoder.feed(stream)
    try:
        for frame in decoder.frames():
            assert len(frame.payload) <= 1024
    except wire.WireError:
        pass
    assert decoder.buffered_bytes <= 1024 + wire.FRAME_HEADER_BYTES


def test_oversized_frame_is_refused_before_its_body_arrives():
    decoder = wire.FrameDecoder()
    decoder.feed(wire.FRAME_HEADER.pack(wire.FRAME_SIZE_BYTES_MAX + 1, FrameKind.REQUEST, 1, 1))
    with pytest.raises(wire.WireError, match="exceeds"):
        decoder.next_frame()


def test_encoding_an_oversized_frame_fails():
    with pytest.raises(wire.WireError):
        wire.encode_frame(Frame(FrameKind.STREAM_DATA, 1, 0, b"x" * wire.FRAME_SIZE_BYTES_MAX))


def test_unknown_message_type_is_a_wire_error():
    with pytest.raises(wire.WireError, match="unknown message type"):
        wire.decode_message(59998, wire.encode_message(Echo(b"x")))


def test_field_types_and_values_are_checked():
    with pytest.raises(wire.WireError, match="expected int"):
        wire.decode_message(wire.Hello.TYPE, msgpack.packb(["1", b"", "node", "", 0]))
    with pytest.raises(wire.WireError, match="expected bytes"):
        wire.decode_message(wire.Hello.TYPE, msgpack.packb([1, "text", "node", "", 0]))
    with pytest.raises(wire.WireError, match="bad role"):
        wire.decode_message(wire.Hello.TYPE, msgpack.packb([1, b"", "admin", "", 0]))
    with pytest.raises(wire.WireError, match="expected 5 fields"):
        wire.decode_message(wire.Hello.TYPE, msgpack.packb([1, b"", "node", ""]))


def test_error_payloads_round_trip():
    assert wire.decode_error(wire.encode_error(wire.ErrorCode.NOT_FOUND, "no such name")) == (
        wire.ErrorCode.NOT_FOUND, "no such name")
    with pytest.raises(wire.WireError):
        wire.decode_error(b"\x01")
