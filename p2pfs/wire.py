"""Wire protocol: length-prefixed frames and typed messages. Pure (no I/O).

A frame on the wire is::

    u32 body_length | u8 kind | u32 stream_id | u16 msg_type | payload

* ``kind`` says what the frame is for (a request, its response, one chunk of a
  streamed body, ...); ``stream_id`` ties requests, responses and stream frames
  together so that many requests share one connection; ``msg_type`` names the
  message class of a REQUEST, RESPONSE or ONEWAY frame.
* The payload of a message frame is a msgpack array of the message's fields,
  in declaration order. Field types are checked against the dataclass
  annotations when decoding, so a peer cannot hand us a ``str`` where we expect
  ``int``; then each message class checks its values when built (lengths,
  ranges, id formats), so a handler never sees a malformed one. Anything wrong
  raises ``WireError`` and nothing else.
* ``body_length`` is capped by ``FRAME_SIZE_BYTES_MAX``: a peer announcing more
  is cut off before we buffer anything (as h11 caps incomplete events).

Message type codes are part of the protocol: they are explicit integers,
append-only, allocated in ranges per room::

    1-19    connection (hello, ping of the transport itself)
    20-39   membership
    40-79   data (chunks, names, replication)
    80-99   client and admin requests

Each message says which roles may send it (``senders``): a node accepts a
client's certificate only for client messages, so a client can never act as a
node.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import types
import typing
from typing import Any, Callable, ClassVar, Iterator

import msgpack

from p2pfs.errors import BadInput, PeerFault

# 2: CREDIT counts bytes (and stream 0 carries the connection's credit); 1 counted frames.
PROTOCOL_VERSION = 2

# The placement version a member runs (``ring.PLACEMENT_VERSIONS``) rides in the high byte of its
# record's ``protocol_version``; the low byte stays the wire protocol version. Not a field of its
# own because nodes before it decode a MemberMeta only with exactly its five fields, and sign and
# check exactly those: a sixth would make them drop every gossip message of an upgraded node. They
# store ``protocol_version`` and show it, and compare it with nothing (the connection's hello
# carries the version they check), so a record carrying a placement version is read, relayed and
# its signature checked by them as any other. A high byte of 0, what every older node sends,
# means placement version 1.
PLACEMENT_VERSION_SHIFT = 8
_WIRE_VERSION_MASK = (1 << PLACEMENT_VERSION_SHIFT) - 1


def advertised_version(wire_version: int, placement_version: int) -> int:
    """The ``protocol_version`` a member's record carries: its wire and placement versions."""
    assert 0 <= wire_version <= _WIRE_VERSION_MASK
    assert 1 <= placement_version <= _WIRE_VERSION_MASK
    return wire_version | (0 if placement_version == 1 else placement_version << PLACEMENT_VERSION_SHIFT)


def placement_version_of(protocol_version: int) -> int:
    """The placement version a record's ``protocol_version`` advertises (1 when it says none)."""
    return protocol_version >> PLACEMENT_VERSION_SHIFT or 1


def wire_version_of(protocol_version: int) -> int:
    """The wire protocol version a record's ``protocol_version`` advertises (its low byte)."""
    return protocol_version & _WIRE_VERSION_MASK


FRAME_HEADER = struct.Struct(">IBIH")  # body_length, kind, stream_id, msg_type
FRAME_HEADER_BYTES = FRAME_HEADER.size
_LENGTH = struct.Struct(">I")
_BODY_HEADER = struct.Struct(">BIH")

# Largest frame body we accept or send. A chunk (at most CHUNK_SIZE_BYTES_MAX,
# 4 MiB) plus its message fields must fit; 8 MiB leaves room and still bounds
# what one peer can make us buffer per connection.
FRAME_SIZE_BYTES_MAX = 8 * 1024 * 1024

# Nesting and length caps for decoded payloads, so hostile msgpack cannot make
# us build huge structures out of a small frame.
_ARRAY_ITEMS_MAX = 1_000_000


class WireError(PeerFault):
    """A frame or message is malformed, oversized, unknown or not allowed.

    Raised for the peer's faults, including a field a message class refuses
    (its ``__post_init__`` raises a ValueError such as FieldError, which
    decoding turns into this).
    The connection that produced it is closed; nothing else is affected.
    """


class FieldError(ValueError, BadInput):
    """A message field outside its range or format, found when the message is built.

    Built from a peer's payload, decoding turns it into a WireError (the peer's
    fault); built from a caller's input (a name on the command line, say), it
    is that caller's BadInput.
    """


class FrameKind(enum.IntEnum):
    HELLO = 1          # first frame each side sends: payload is a Hello message
    REQUEST = 2        # msg_type + fields; the stream id is the caller's request id
    RESPONSE = 3       # msg_type + fields; ends the request unless a stream follows
    ERROR = 4          # payload: msgpack [code, message]; ends the request
    ONEWAY = 5         # msg_type + fields; no reply (gossip)
    STREAM_DATA = 6    # raw bytes of a streamed body, for stream_id
    STREAM_END = 7     # end of a streamed body (empty payload)
    CANCEL = 8         # the caller gave up on stream_id
    CREDIT = 9         # payload: u32 bytes of credit the sender of STREAM_DATA may add (stream 0: the connection's)
    REQUEST_STREAM = 10   # a REQUEST whose body follows as STREAM_DATA frames
    RESPONSE_STREAM = 11  # a RESPONSE whose body follows as STREAM_DATA frames


class Role(enum.Enum):
    NODE = "node"
    CLIENT = "client"


class ErrorCode(enum.IntEnum):
    """Error codes carried by ERROR frames. Append-only."""

    INTERNAL = 1
    BAD_REQUEST = 2
    NOT_FOUND = 3
    UNAVAILABLE = 4
    FORBIDDEN = 5
    STORAGE_FULL = 6
    TIMEOUT = 7
    CORRUPT = 8
    CANCELLED = 9


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    stream_id: int
    msg_type: int
    # A large frame read by a FrameDecoder arrives as the bytearray it was decrypted into.
    payload: bytes | bytearray | memoryview

    def __post_init__(self) -> None:
        if not 0 <= self.stream_id < 2**32:
            raise ValueError(f"stream_id out of range: {self.stream_id}")
        if not 0 <= self.msg_type < 2**16:
            raise ValueError(f"msg_type out of range: {self.msg_type}")


# ---------------------------------------------------------------------------
# Messages


class Message:
    """Base of every typed message. Subclasses are made with ``@message``."""

    TYPE: ClassVar[int]
    SENDERS: ClassVar[frozenset[Role]]
    # Whether a request of this type may carry a streamed body (REQUEST_STREAM). One that
    # takes none is refused if sent with one: nobody would read it, so it would only hold memory.
    TAKES_BODY: ClassVar[bool]
    __slots__ = ()


_MESSAGES: dict[int, type[Message]] = {}
_DECODERS: dict[type, typing.Callable[[Any], Any]] = {}


def message(type_code: int, *, senders: tuple[Role, ...] = (Role.NODE,), takes_body: bool = False):
    """Class decorator: make a frozen, slotted dataclass and register its type code.

    ``senders`` are the roles whose connections may send this message;
    ``takes_body``: a request of this type may be followed by a streamed body.
    """
    assert 1 <= type_code < 2**16

    def wrap(cls: type) -> type:
        assert issubclass(cls, Message), f"{cls.__name__} must subclass wire.Message"
        if type_code in _MESSAGES:
            raise AssertionError(f"message type {type_code} registered twice")
        cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        cls.TYPE = type_code
        cls.SENDERS = frozenset(senders)
        cls.TAKES_BODY = takes_body
        _MESSAGES[type_code] = cls
        _DECODERS[cls] = _record_decoder(cls)
        return cls

    return wrap


def record(cls: type) -> type:
    """Class decorator for a frozen dataclass used as a field inside messages."""
    cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
    _DECODERS[cls] = _record_decoder(cls)
    return cls


def message_types() -> dict[int, type[Message]]:
    """All registered message classes by type code (a copy)."""
    return dict(_MESSAGES)


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [_to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return [_to_wire(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _record_decoder(cls: type) -> typing.Callable[[Any], Any]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    converters = [_converter(hints[f.name]) for f in fields]
    names = [f.name for f in fields]

    def decode(raw: Any) -> Any:
        if not isinstance(raw, list) or len(raw) != len(converters):
            raise WireError(f"{cls.__name__}: expected {len(converters)} fields")
        kwargs = {name: conv(v) for name, conv, v in zip(names, converters, raw)}
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise WireError(f"{cls.__name__}: {exc}") from None

    return decode


def _converter(tp: Any) -> typing.Callable[[Any], Any]:
    """Build a checker/converter from a wire value to the annotated type."""
    origin = typing.get_origin(tp)
    if tp is int:
        def conv_int(v: Any) -> int:
            if type(v) is not int:
                raise WireError(f"expected int, got {type(v).__name__}")
            return v
        return conv_int
    if tp is float:
        def conv_float(v: Any) -> float:
            if type(v) not in (float, int):
                raise WireError(f"expected float, got {type(v).__name__}")
            return float(v)
        return conv_float
    if tp is bool:
        def conv_bool(v: Any) -> bool:
            if type(v) is not bool:
                raise WireError(f"expected bool, got {type(v).__name__}")
            return v
        return conv_bool
    if tp is str:
        def conv_str(v: Any) -> str:
            if type(v) is not str:
                raise WireError(f"expected str, got {type(v).__name__}")
            return v
        return conv_str
    if tp is bytes:
        def conv_bytes(v: Any) -> bytes:
            if type(v) is not bytes:
                raise WireError(f"expected bytes, got {type(v).__name__}")
            return v
        return conv_bytes
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        def conv_enum(v: Any) -> Any:
            try:
                return tp(v)
            except (ValueError, TypeError):
                raise WireError(f"bad {tp.__name__}: {v!r}") from None
        return conv_enum
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and len(args) == 2:
            conv = _converter(inner[0])
            return lambda v: None if v is None else conv(v)
        raise AssertionError(f"unsupported union in message field: {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            conv = _converter(args[0])

            def conv_tuple(v: Any) -> tuple:
                if not isinstance(v, list) or len(v) > _ARRAY_ITEMS_MAX:
                    raise WireError("expected array")
                return tuple(conv(x) for x in v)
            return conv_tuple
        raise AssertionError(f"only tuple[X, ...] is supported in messages: {tp}")
    if dataclasses.is_dataclass(tp):
        return lambda v: _DECODERS[tp](v)
    raise AssertionError(f"unsupported message field type: {tp}")


def encode_message(msg: Message) -> bytes:
    """The payload bytes of a message (msgpack array of its fields)."""
    return msgpack.packb(_to_wire(msg), use_bin_type=True)


def decode_message(msg_type: int, payload: bytes | memoryview) -> Message:
    """Decode a payload as the message registered under ``msg_type``.

    Raises WireError, and only WireError, for anything a peer could send.
    """
    cls = _MESSAGES.get(msg_type)
    if cls is None:
        raise WireError(f"unknown message type {msg_type}")
    try:
        raw = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_array_len=_ARRAY_ITEMS_MAX,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, ...)
        raise WireError(f"bad payload for message type {msg_type}: {exc}") from None
    try:
        return _DECODERS[cls](raw)
    except WireError:
        raise
    except RecursionError:
        raise WireError("payload nested too deeply") from None


def encode_error(code: ErrorCode, text: str) -> bytes:
    return msgpack.packb([int(code), text], use_bin_type=True)


def decode_error(payload: bytes | memoryview) -> tuple[ErrorCode, str]:
    try:
        raw = msgpack.unpackb(payload, raw=False, max_map_len=0, max_ext_len=0)
    except Exception as exc:
        raise WireError(f"bad error payload: {exc}") from None
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or type(raw[0]) is not int
        or type(raw[1]) is not str
    ):
        raise WireError("bad error payload")
    try:
        return ErrorCode(raw[0]), raw[1]
    except ValueError:
        return ErrorCode.INTERNAL, raw[1]


_CREDIT = struct.Struct(">I")


def encode_credit(credit_bytes: int) -> bytes:
    return _CREDIT.pack(credit_bytes)


def decode_credit(payload: bytes | memoryview) -> int:
    """The bytes of credit a CREDIT frame grants."""
    if len(payload) != _CREDIT.size:
        raise WireError("bad credit payload")
    (credit_bytes,) = _CREDIT.unpack(payload)
    return credit_bytes


# ---------------------------------------------------------------------------
# Frames


def encode_frame(frame: Frame) -> bytes:
    """Header plus payload. Raises WireError if it would exceed the frame cap."""
    body_length = _BODY_HEADER.size + len(frame.payload)
    if body_length > FRAME_SIZE_BYTES_MAX:
        raise WireError(f"frame of {body_length} bytes exceeds FRAME_SIZE_BYTES_MAX")
    header = FRAME_HEADER.pack(body_length, frame.kind, frame.stream_id, frame.msg_type)
    return header + bytes(frame.payload)


def frame_header(kind: FrameKind, stream_id: int, msg_type: int, payload_length: int) -> bytes:
    """Just the header, so a large payload can be written without a copy."""
    body_length = _BODY_HEADER.size + payload_length
    if body_length > FRAME_SIZE_BYTES_MAX:
        raise WireError(f"frame of {body_length} bytes exceeds FRAME_SIZE_BYTES_MAX")
    return FRAME_HEADER.pack(body_length, kind, stream_id, msg_type)


# A frame whose payload is at least this long is read into a buffer of its own, made once its
# header is in (``FrameDecoder.direct_buffer``): TLS decrypts into it and it is handed on as the
# frame's payload, where a frame read through the decoder's buffer was copied three times more
# (the socket read's pieces joined, appended to the buffer, sliced out of it). Below it, frames
# are read many to a socket read, and one buffer serves them all.
DIRECT_PAYLOAD_BYTES_MIN = 64 * 1024


@dataclasses.dataclass(slots=True)
class _DirectFrame:
    """A large frame whose header is in: its payload is read into a buffer of its own."""

    kind_raw: int  # checked when the frame is complete, as for any other frame
    stream_id: int
    msg_type: int
    payload_bytes: int
    payload: bytearray | memoryview | None = None  # made by direct_buffer (or when fed bytes), once
    filled_bytes: int = 0


class FrameDecoder:
    """Incremental frame parser: feed bytes, take out complete frames.

    Sans-IO in the h11 manner: ``feed()`` only buffers, ``frames()`` yields what
    is complete. At most one frame (``FRAME_SIZE_BYTES_MAX``) plus one header is
    ever buffered, because the length is checked before the body arrives.

    A frame with a large payload (``DIRECT_PAYLOAD_BYTES_MIN``) may instead be read
    straight into its own payload buffer: when ``direct_buffer()`` returns a view, the
    caller writes the next bytes into it and reports them with ``direct_received()``.
    ``buffered_bytes`` counts that whole frame from when its header is in, so a caller
    that takes it from a memory budget before asking for the buffer holds what it will
    allocate. Fed bytes keep working in every state.

    ``lend(kind_raw, stream_id, payload_bytes)``, if given, may supply that buffer: a
    writable view of exactly ``payload_bytes`` that the frame's consumer owns (a get's
    output stage, ``client/direct.py``), so the bytes are decrypted where they are used
    next; None, and the decoder makes a ``bytearray`` as before. It is asked once per
    large frame, with the header as the peer sent it (not yet checked).
    """

    def __init__(self, frame_size_bytes_max: int = FRAME_SIZE_BYTES_MAX, *,
                 lend: Callable[[int, int, int], memoryview | None] | None = None) -> None:
        self._buffer = bytearray()
        self._frame_size_bytes_max = frame_size_bytes_max
        self._direct: _DirectFrame | None = None
        self._lend = lend

    @property
    def buffered_bytes(self) -> int:
        direct = self._direct
        if direct is None:
            return len(self._buffer)
        frame_bytes = FRAME_HEADER_BYTES + direct.payload_bytes
        if direct.payload is None:  # the buffer holds the payload's start, and maybe more
            return frame_bytes + max(0, len(self._buffer) - direct.payload_bytes)
        return frame_bytes + len(self._buffer)

    @property
    def direct_bytes_due(self) -> int:
        """Payload bytes still due of the large frame under way (to read into ``direct_buffer()``), else 0."""
        direct = self._direct
        if direct is None:
            return 0
        if direct.payload is None:
            return direct.payload_bytes - min(len(self._buffer), direct.payload_bytes)
        return direct.payload_bytes - direct.filled_bytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def take_buffered(self) -> bytes:
        """Remove and return the bytes not yet parsed (to hand them to another decoder)."""
        assert self._direct is None, "a frame is being read into a buffer of its own"
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def direct_buffer(self) -> memoryview | None:
        """Where the next bytes read should go, if a large frame is under way: the rest of its payload.

        None when the next bytes should be fed. The payload buffer is made on the first call.
        """
        direct = self._direct
        if direct is None:
            return None
        if direct.payload is None:
            self._absorb(direct)
        assert direct.payload is not None
        if direct.filled_bytes == direct.payload_bytes:
            return None
        return memoryview(direct.payload)[direct.filled_bytes:]

    def direct_received(self, count_bytes: int) -> None:
        """``count_bytes`` were written at the start of the view ``direct_buffer`` returned."""
        direct = self._direct
        assert direct is not None
        assert direct.payload is not None
        assert 0 <= count_bytes <= direct.payload_bytes - direct.filled_bytes, count_bytes
        direct.filled_bytes += count_bytes

    def frames(self) -> Iterator[Frame]:
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame

    def next_frame(self) -> Frame | None:
        if self._direct is not None:
            return self._next_direct(self._direct)
        buf = self._buffer
        if len(buf) < _LENGTH.size:
            return None
        (body_length,) = _LENGTH.unpack_from(buf, 0)
        if body_length > self._frame_size_bytes_max:
            raise WireError(
                f"frame of {body_length} bytes exceeds the maximum of {self._frame_size_bytes_max}"
            )
        if body_length < _BODY_HEADER.size:
            raise WireError(f"frame body of {body_length} bytes is shorter than its header")
        end = _LENGTH.size + body_length
        payload_bytes = end - FRAME_HEADER_BYTES
        if len(buf) < end and payload_bytes >= DIRECT_PAYLOAD_BYTES_MIN and len(buf) >= FRAME_HEADER_BYTES:
            kind_raw, stream_id, msg_type = _BODY_HEADER.unpack_from(buf, _LENGTH.size)
            self._direct = _DirectFrame(kind_raw, stream_id, msg_type, payload_bytes)
            del buf[:FRAME_HEADER_BYTES]
            return None
        if len(buf) < end:
            return None
        kind_raw, stream_id, msg_type = _BODY_HEADER.unpack_from(buf, _LENGTH.size)
        with memoryview(buf) as view:  # one copy of the payload, not two (a slice of a bytearray is one)
            payload = bytes(view[FRAME_HEADER_BYTES:end])
        del buf[:end]
        return Frame(_frame_kind(kind_raw), stream_id, msg_type, payload)

    def _next_direct(self, direct: _DirectFrame) -> Frame | None:
        if self._buffer:
            self._absorb(direct)
        if direct.payload is None or direct.filled_bytes < direct.payload_bytes:
            return None
        self._direct = None
        return Frame(_frame_kind(direct.kind_raw), direct.stream_id, direct.msg_type, direct.payload)

    def _absorb(self, direct: _DirectFrame) -> None:
        """Make the payload buffer if need be, and move the fed bytes that belong to it there."""
        if direct.payload is None:
            lent = self._lend(direct.kind_raw, direct.stream_id, direct.payload_bytes) if self._lend else None
            if lent is not None:
                assert len(lent) == direct.payload_bytes and not lent.readonly, (len(lent), direct.payload_bytes)
            direct.payload = lent if lent is not None else bytearray(direct.payload_bytes)
        count_bytes = min(len(self._buffer), direct.payload_bytes - direct.filled_bytes)
        if count_bytes:
            with memoryview(self._buffer) as view:
                direct.payload[direct.filled_bytes:direct.filled_bytes + count_bytes] = view[:count_bytes]
            del self._buffer[:count_bytes]
            direct.filled_bytes += count_bytes


def _frame_kind(kind_raw: int) -> FrameKind:
    try:
        return FrameKind(kind_raw)
    except ValueError:
        raise WireError(f"unknown frame kind {kind_raw}") from None


# ---------------------------------------------------------------------------
# Connection-level messages


@message(1, senders=(Role.NODE, Role.CLIENT))
class Hello(Message):
    """First frame on every connection, in both directions.

    ``cluster_id`` is the hash of the cluster CA certificate: TLS already proves
    a shared CA, and this makes a mismatch (say, two clusters sharing a CA by
    mistake of configuration) a clear error rather than a confusing one.
    ``listen_host``/``listen_port`` are where a node accepts connections
    (empty/0 for clients), so that the peer can dial back.
    """

    protocol_version: int
    cluster_id: bytes
    role: str
    listen_host: str
    listen_port: int

    def __post_init__(self) -> None:
        if self.role not in ("node", "client"):
            raise ValueError(f"bad role {self.role!r}")
        if not 0 <= self.listen_port < 65536:
            raise ValueError(f"bad port {self.listen_port}")


# Type code 2 is reserved for the transport tests' Echo (tests/wire_helpers.py).


# What a connection's two ends speak beyond the hello's version, agreed in the TLS handshake
# (ALPN, RFC 7301). The hello's version must match exactly (a node before this refuses any
# other), so an end says what more it speaks there instead: an end that offers no ALPN ignores
# the offer and the handshake goes on without it, so neither end sends what the other may not
# know. ALPN_SMALL_FILES: the small-file messages (``replication.client_messages``, 90-92).
# ALPN_FSCK_PENDING: those, and ``FsckPending`` in answer to ``Fsck`` (an older client would
# call it unexpected; it is held until the report instead). ALPN agrees on one name, so each
# name speaks all the ones after it: newest first, and a server picks its first the client offered.
ALPN_SMALL_FILES = "p2pfs-small-files"
ALPN_FSCK_PENDING = "p2pfs-fsck-pending"
ALPN_PROTOCOLS = (ALPN_FSCK_PENDING, ALPN_SMALL_FILES)


def alpn_speaks(agreed: str | None, extension: str) -> bool:
    """Whether a connection that agreed on ``agreed`` in its handshake speaks ``extension``."""
    return agreed in ALPN_PROTOCOLS and ALPN_PROTOCOLS.index(agreed) <= ALPN_PROTOCOLS.index(extension)
