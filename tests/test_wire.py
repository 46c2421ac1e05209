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
from p2pfs.wire import Frame, FrameKind

# Import every room that defines messages (the daemon and the client import them all),
# so the registry, and so the parametrisation below, is complete whatever ran before.
import p2pfs.client  # noqa: F401
import p2pfs.node.daemon  # noqa: F401



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


# Fields whose constructors accept only a narrow set of values, by field name.
FIELD_STRATEGIES = {
    "role": st.sampled_from(["node", "client"]),
    "port": st.integers(0, 65535),
    "listen_port": st.integers(0, 65535),
}


def instances_of(cls) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: FIELD_STRATEGIES[f.name] if f.name in FIELD_STRATEGIES else strategy_for(hints[f.name])
        for f in dataclasses.fields(cls)
    }

    def build(kwargs):
        try:
            return cls(**kwargs)
        except (ValueError, TypeError):
            return None  # the class rejected these values when built: not a message we can send

    return st.fixed_dictionaries(fields).map(build).filter(lambda m: m is not None)


MESSAGE_CLASSES = sorted(wire.message_types().items())


@pytest.mark.parametrize("type_code,cls", MESSAGE_CLASSES, ids=[c.__name__ for _, c in MESSAGE_CLASSES])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
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
        wire.decode_message(59998, wire.encode_message(wire.Echo(b"x")))


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
