"""Hostile messages for tests/test_hostile_messages.py: every type, random and boundary fields.

Values are drawn as raw msgpack fields, past the message classes' checks, so that
a test can send what no honest message may carry.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing

from hypothesis import strategies as st

from p2pfs import net, wire
from p2pfs.membership import messages as mm
from p2pfs.node import messages as nm
from p2pfs.replication import messages as dm
from p2pfs.wire import ErrorCode, FrameKind, Role

from test_wire import field_strategy

MEMBERSHIP_TYPES = sorted(mm.MEMBERSHIP_MESSAGES, key=lambda c: c.TYPE)
DATA_TYPES = sorted(
    (c for c in wire.message_types().values() if c.__module__ in (dm.__name__, nm.__name__)),
    key=lambda c: c.TYPE,
)
# What the node asks a peer, and the answer the hostile peer twists.
ANSWER_OF = {
    dm.StoreChunk: dm.StoreChunkReply, dm.FetchChunk: dm.ChunkData, dm.HasChunks: dm.HasChunksReply,
    dm.PutName: dm.PutNameReply, dm.GetName: dm.GetNameReply, dm.ListNames: dm.ListNamesReply,
    dm.SyncChunks: dm.SyncChunksReply, dm.SyncNames: dm.SyncNamesReply, dm.ListChunks: dm.ListChunksReply,
}
NODE_REQUESTS = list(ANSWER_OF)


# -- raw, possibly invalid, field values -------------------------------------------

_BOUNDARY_INTS = [-1, 0, 1, 255, 256, 2**31 - 1, 2**32 - 1, 2**32, 2**48 - 1, 2**48, 2**63 - 1, -(2**63), 2**64 - 1]
_BOUNDARY_FLOATS = [math.nan, math.inf, -math.inf, -0.0, -1.0, 1e308]
_BOUNDARY_TEXT = ["", "\x00", "a\x00b", "x" * 65, "x" * 129, "n" * 1025, "\u00e9" * 600, "AB" * 32, "ab" * 32]
_BOUNDARY_BYTE_LENGTHS = [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 95]


def weighted(*choices: tuple[st.SearchStrategy, int]) -> st.SearchStrategy:
    """Draw from one of the strategies, each as often as its weight says.

    (``st.one_of`` does not weigh its branches evenly, nor by repetition.)
    """
    return st.sampled_from([s for s, weight in choices for _ in range(weight)]).flatmap(lambda s: s)


def hostile_value(tp) -> st.SearchStrategy:
    """A wire value of type ``tp`` that a check may refuse: boundaries and nonsense."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return st.booleans()
    if tp is int or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return st.sampled_from(_BOUNDARY_INTS) | st.integers(-(2**63), 2**64 - 1)
    if tp is float:
        return st.sampled_from(_BOUNDARY_FLOATS) | st.floats()
    if tp is str:
        return st.sampled_from(_BOUNDARY_TEXT) | st.text(max_size=80)
    if tp is bytes:
        return st.sampled_from(_BOUNDARY_BYTE_LENGTHS).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | hostile_value(inner)
    if origin is tuple:
        items = raw_value(typing.get_args(tp)[0])
        return weighted((st.lists(items, min_size=1, max_size=4), 3), (st.just([]), 1))
    if dataclasses.is_dataclass(tp):
        return raw_fields(tp)
    raise AssertionError(f"no hostile values for {tp}")


def raw_value(tp) -> st.SearchStrategy:
    """An item of a list field: an accepted value or a hostile one."""
    if dataclasses.is_dataclass(tp):
        return raw_fields(tp)
    return hostile_value(tp)


def wrong_type() -> st.SearchStrategy:
    return st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3) | st.binary(max_size=3) | st.lists(
        st.integers(0, 3), max_size=2)


def raw_fields(cls, fixed: dict[str, st.SearchStrategy] | None = None) -> st.SearchStrategy:
    """The msgpack array of a ``cls``: each field accepted, hostile, or of the wrong type.

    Records inside (and lists of them) are always drawn field by field, so that a
    hostile value reaches their fields too; wrong types are rarer than the rest,
    so that hostile values mostly get past the type checks to the value checks.
    """
    hints = typing.get_type_hints(cls)
    fixed = fixed or {}
    parts = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in fixed:
            parts.append(fixed[f.name])
        elif _holds_records(tp):
            parts.append(weighted((hostile_value(tp), 6), (wrong_type(), 1)))
        else:
            accepted = field_strategy(cls, f.name).map(wire._to_wire)
            parts.append(weighted((accepted, 3), (hostile_value(tp), 3), (wrong_type(), 1)))
    return st.tuples(*parts).map(list)


def _holds_records(tp) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    return dataclasses.is_dataclass(tp) or any(dataclasses.is_dataclass(a) for a in args)


# Membership messages must not send the node to any address but loopback, nor
# speak about the two real nodes in a way they cannot refute (a DEAD at the largest
# incarnation): phantom ids and a closed loopback port stand in.
def membership_fields(cls, closed_port: int) -> st.SearchStrategy:
    phantom_ids = st.text("0123456789abcdef", min_size=64, max_size=64) | st.sampled_from(["", "p", "x" * 129])
    host = st.sampled_from(["127.0.0.1", "", "h" * 256])
    port = st.sampled_from([closed_port, 0, 65536, -1])
    meta = raw_fields(mm.MemberMeta, {"host": host, "port": port})
    fact = raw_fields(mm.MemberFact, {"node_id": phantom_ids, "meta": st.none() | meta})
    updates = st.lists(fact, max_size=4)
    fixed = {
        mm.Gossip: {"updates": updates},
        mm.Ping: {"updates": updates},
        mm.Ack: {"updates": updates},
        mm.PingReq: {"updates": updates, "target_id": phantom_ids, "target_host": host, "target_port": port},
        mm.PushPull: {"members": st.lists(fact, max_size=4)},
    }
    return raw_fields(cls, fixed.get(cls, {}))


class RawMessage(tuple):
    """Fields written as they are, past the message classes' checks.

    ``wire.encode_message`` writes a tuple as an array, and the endpoint takes
    the frame's type from ``TYPE``: so a handler can answer with it.
    """

    TYPE: int

    def __new__(cls, type_code: int, fields: list) -> "RawMessage":
        self = super().__new__(cls, fields)
        self.TYPE = type_code
        return self


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the hostile peer answers one kind of request with."""

    how: str  # "raw" (fields of the declared answer), "other" (another type), "error"
    type_code: int
    fields: list

    def message(self) -> RawMessage:
        if self.how == "error":
            raise net.RemoteError(ErrorCode(self.type_code), "hostile peer says no")
        return RawMessage(self.type_code, self.fields)


def answers_for(request: type) -> st.SearchStrategy:
    declared = ANSWER_OF[request]
    others = [c for c in DATA_TYPES if c is not declared]
    raw = raw_fields(declared).map(lambda fields: Answer("raw", declared.TYPE, fields))
    other = st.sampled_from(others).flatmap(
        lambda c: raw_fields(c).map(lambda fields, c=c: Answer("other", c.TYPE, fields)))
    error = st.sampled_from(list(ErrorCode)).map(lambda code: Answer("error", int(code), []))
    return weighted((raw, 3), (other, 1), (error, 1))


@dataclasses.dataclass(frozen=True)
class Sent:
    """One message the example sends the node."""

    role: Role
    kind: FrameKind
    type_code: int
    fields: list

    def __repr__(self) -> str:
        return f"{wire.message_types()[self.type_code].__name__}({self.role.value}, {self.fields!r:.300})"


def sent(cls, closed_port: int) -> st.SearchStrategy:
    if cls in mm.MEMBERSHIP_MESSAGES:
        return membership_fields(cls, closed_port).map(lambda f: Sent(Role.NODE, FrameKind.ONEWAY, cls.TYPE, f))
    # A node may not send client messages (the node closes the connection before
    # decoding further), so those come from a client certificate.
    role = Role.CLIENT if cls.SENDERS == frozenset({Role.CLIENT}) else Role.NODE
    return raw_fields(cls).map(lambda f: Sent(role, FrameKind.REQUEST, cls.TYPE, f))


# A client's LeaveRequest would, by design, make the node leave: everything else goes.
SENT_TYPES = [c for c in MEMBERSHIP_TYPES + DATA_TYPES if c is not nm.LeaveRequest]


def messages_of_every_type(closed_port: int) -> st.SearchStrategy:
    """One message of every type, in a random order."""
    return st.tuples(*(sent(c, closed_port) for c in SENT_TYPES)).flatmap(lambda ms: st.permutations(list(ms)))


def answer_plans() -> st.SearchStrategy:
    """How the hostile peer answers each kind of request the node sends it."""
    return st.fixed_dictionaries({req: answers_for(req) for req in NODE_REQUESTS})
