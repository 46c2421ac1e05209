"""The stream multiplexer: many requests at once over one connection. Pure: no trio, no clock.

``Mux`` holds the state of every stream on one connection and nothing else.
It is fed the frames the peer sent (``receive_frame``, which returns events
for the driver to act on) and the local side's calls (``start_request``,
``respond``, ``send_data``, ...: each returns the frame to write). The trio
driver (``connection.py``) moves the bytes, runs the handlers, keeps the
deadlines and wakes the waiting tasks; it never decides what a frame means.
This is h11's split: the whole protocol can be tested with frames in and
frames out, without sockets.

Streams (as in HTTP/2, RFC 9113 section 5.1.1): a request opens a stream; the
dialler numbers its requests with odd ids, the acceptor with even ones, so both
ends may issue requests without colliding. A stream has two halves:

* what this end sends: a request (and, for REQUEST_STREAM, a body of
  STREAM_DATA frames closed by STREAM_END), or an answer (RESPONSE, ERROR, or
  RESPONSE_STREAM and a body closed by STREAM_END or cut short by ERROR);
* what this end receives: the mirror image.

Which frame may come next on a half is the tables ``_RECEIVE`` and ``_SEND``;
a (side, state, frame kind) triple not in them is the peer's protocol violation (raised as
``ProtocolViolation``: the connection is closed) or our own misuse (raised as
``LocalProtocolError``, a bug). Frames for a stream this end no longer knows
are late frames of a request it gave up on, and are dropped.

Cancel: the requester that gives up sends CANCEL (``close_call``) and forgets
the stream; the server stops that handler (``Cancelled``) and sends nothing
more on it. An answer that arrives while the requester is still uploading
stops the upload: the answer already says how the request ended. A request
beyond ``INCOMING_REQUESTS_PER_CONNECTION_MAX`` is refused with UNAVAILABLE
(``SendFrame``), never queued; so is a body on a request whose type takes none
(``wire.Message.TAKES_BODY``), with BAD_REQUEST: nobody would read it.

Flow control: each body is sent against credit granted by its receiver, in
bytes, per stream (``STREAM_WINDOW_BYTES``) and per connection
(``CONNECTION_WINDOW_BYTES``, CREDIT on stream 0), so a receiver never buffers
more than its windows and the reader never waits for application code. That
keeps one slow consumer from stalling every other stream on the connection.
Body frames of a stream that is gone (refused, cancelled, finished) still count
against the connection window and are credited back at once, and a stream that
closes with its buffer unread gives that back to the connection window: either
end's view of the connection window never drifts (RFC 9113 section 6.9). The
windows and the unit of credit are in ``flow.py``; the mux only says when a
window is consumed and granted.
"""

from __future__ import annotations

import dataclasses
import enum
import functools

import msgpack

from p2pfs import wire
from p2pfs.wire import ErrorCode, Frame, FrameKind, Role

from . import flow
from .config import (
    CONNECTION_WINDOW_BYTES,
    INCOMING_REQUESTS_PER_CONNECTION_MAX,
    STREAM_GRANT_BYTES_MIN,
    STREAM_WINDOW_BYTES,
)
from .errors import ConnectionClosed, ProtocolViolation, RemoteError
from .flow import LocalProtocolError, ReceiveWindow, SendWindow

# Stream ids are u32 on the wire; ids wrap around below this.
STREAM_ID_LIMIT = 2**32
# CREDIT on this stream id returns connection credit; no request uses it (ids start at 1 and 2).
CONNECTION_STREAM_ID = 0
# An ERROR frame's text is cut to this many characters: it is for a log line, not a document.
ERROR_TEXT_CHARS_MAX = 1000
# A bytes field of a message at least this long is sent from the object that holds it, not
# copied into the frame's payload (``encode_payload``). Below it, one write of the whole
# payload costs less than the extra TLS record and socket send a separate part takes.
SCATTER_FIELD_BYTES_MIN = 64 * 1024


# -- message payloads ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Scattered:
    """A message's payload as parts to send one after another, the large ones uncopied.

    msgpack's ``packb`` copies every field into one new buffer, so a chunk sent to two
    replicas was copied twice (13% of a put coordinator's samples) only to be copied
    again by TLS. The parts are the same bytes ``wire.encode_message`` makes, in order.
    """

    parts: tuple[bytes, ...]
    size_bytes: int

    def __len__(self) -> int:
        return self.size_bytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


# msgpack's fixarray header holds up to 15 items (a larger message is encoded whole).
_FIXARRAY_ITEMS_MAX = 15


@functools.cache  # one entry per message class: bounded by the registry of message types
def _field_names(cls: type) -> tuple[str, ...]:
    """The fields of a message class in wire order; none for a class that is not a dataclass
    (``wire.encode_message`` takes any sequence too), which is then encoded whole."""
    if not dataclasses.is_dataclass(cls):
        return ()
    return tuple(field.name for field in dataclasses.fields(cls))


def encode_payload(msg: wire.Message) -> bytes | Scattered:
    """The payload of ``msg``: ``wire.encode_message``'s bytes, or the same bytes in parts
    (``Scattered``) when a field holds at least ``SCATTER_FIELD_BYTES_MIN`` bytes."""
    values = [getattr(msg, name) for name in _field_names(type(msg))]
    if not any(type(v) is bytes and len(v) >= SCATTER_FIELD_BYTES_MIN for v in values):
        return wire.encode_message(msg)
    if len(values) > _FIXARRAY_ITEMS_MAX:
        return wire.encode_message(msg)
    parts: list[bytes] = []
    small = [bytes((0x90 | len(values),))]  # msgpack fixarray of the fields, in order
    for value in values:
        if type(value) is bytes and len(value) >= SCATTER_FIELD_BYTES_MIN:
            small.append(b"\xc6" + len(value).to_bytes(4, "big"))  # msgpack bin 32 header
            parts.append(b"".join(small))
            parts.append(value)
            small = []
        else:
            # Packed as wire.encode_message packs it: a record or a tuple of records (the ``rest``
            # of a StoreChunkChain) as arrays, so a chain's chunk is not copied into a payload either.
            small.append(msgpack.packb(wire._to_wire(value), use_bin_type=True))
    if small:
        parts.append(b"".join(small))
    return Scattered(tuple(parts), sum(len(part) for part in parts))


# -- stream states ---------------------------------------------------------------------


class Side(enum.Enum):
    CALL = "call"    # this end sent the request
    SERVE = "serve"  # the peer sent the request


class Half(enum.Enum):
    """The state of one direction of a stream."""

    IDLE = "idle"            # serve, sending: the answer is not sent yet
    ANSWER = "answer"        # call, receiving: waiting for the answer
    BODY = "body"            # a body is under way
    DONE = "done"            # this direction has ended
    STOPPED = "stopped"      # sending: the peer no longer wants it (it answered, or cancelled)


C, S = Side.CALL, Side.SERVE
K = FrameKind

# (side, receiving half, frame kind the peer sent) -> the receiving half's next state.
_RECEIVE: dict[tuple[Side, Half, FrameKind], Half] = {
    (C, Half.ANSWER, K.RESPONSE): Half.DONE,
    (C, Half.ANSWER, K.ERROR): Half.DONE,
    (C, Half.ANSWER, K.RESPONSE_STREAM): Half.BODY,
    (C, Half.BODY, K.STREAM_DATA): Half.BODY,
    (C, Half.BODY, K.STREAM_END): Half.DONE,
    (C, Half.BODY, K.ERROR): Half.DONE,
    (S, Half.BODY, K.STREAM_DATA): Half.BODY,
    (S, Half.BODY, K.STREAM_END): Half.DONE,
}

# (side, sending half, frame kind this end sends) -> the sending half's next state.
_SEND: dict[tuple[Side, Half, FrameKind], Half] = {
    (C, Half.BODY, K.STREAM_DATA): Half.BODY,
    (C, Half.BODY, K.STREAM_END): Half.DONE,
    (S, Half.IDLE, K.RESPONSE): Half.DONE,
    (S, Half.IDLE, K.ERROR): Half.DONE,
    (S, Half.IDLE, K.RESPONSE_STREAM): Half.BODY,
    (S, Half.BODY, K.STREAM_DATA): Half.BODY,
    (S, Half.BODY, K.STREAM_END): Half.DONE,
    (S, Half.BODY, K.ERROR): Half.DONE,
}

# Frames that are not about a stream already open: the hello, gossip, and requests (which open one).
_STREAMLESS_KINDS = frozenset({K.HELLO, K.ONEWAY, K.REQUEST, K.REQUEST_STREAM})


@dataclasses.dataclass(slots=True)
class _Stream:
    side: Side
    sending: Half
    receiving: Half
    send_window: SendWindow | None = None
    receive_window: ReceiveWindow | None = None


# -- events: what the driver acts on ----------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RequestReceived:
    """The peer opened a stream: run a handler for it (its body follows if ``has_body``)."""

    stream_id: int
    msg: wire.Message
    has_body: bool


@dataclasses.dataclass(frozen=True, slots=True)
class OnewayReceived:
    msg: wire.Message


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The answer to our request ``stream_id``; its body follows if ``has_body``."""

    stream_id: int
    msg: wire.Message
    has_body: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorReceived:
    """The peer answered our request ``stream_id`` with an error."""

    stream_id: int
    error: RemoteError


@dataclasses.dataclass(frozen=True, slots=True)
class BodyReceived:
    """A piece of the body arriving on ``stream_id`` (a request's or an answer's)."""

    stream_id: int
    data: bytes | bytearray | memoryview


@dataclasses.dataclass(frozen=True, slots=True)
class BodyEnded:
    stream_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class BodyFailed:
    """The peer cut the body of its answer short with an error."""

    stream_id: int
    error: RemoteError


@dataclasses.dataclass(frozen=True, slots=True)
class SendUnblocked:
    """Credit arrived on ``stream_id``, or the peer stopped it: a waiting sender should look again."""

    stream_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class Cancelled:
    """The peer gave up on the request ``stream_id`` we serve: stop its handler."""

    stream_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class SendFrame:
    """A frame the driver sends on its own (no local caller is waiting to send it)."""

    frame: Frame


Event = (
    RequestReceived | OnewayReceived | ResponseReceived | ErrorReceived | BodyReceived | BodyEnded
    | BodyFailed | SendUnblocked | Cancelled | SendFrame
)


# -- the multiplexer -------------------------------------------------------------------


class Mux:
    """The streams of one connection.

    ``dialled``: this end opened the connection (its requests get odd ids).
    ``peer_role``: what the peer's certificate says it is; it bounds which
    messages it may send. ``serving``: whether this end answers requests at all
    (a client's connection does not: requests to it are refused).
    """

    def __init__(
        self,
        *,
        dialled: bool,
        peer_role: Role,
        serving: bool,
        window_units: int = STREAM_WINDOW_BYTES,
        connection_window_units: int = CONNECTION_WINDOW_BYTES,
        serves_max: int = INCOMING_REQUESTS_PER_CONNECTION_MAX,
    ) -> None:
        self.peer_role = peer_role
        self.serving = serving
        self._window_units = window_units
        # A stream's freed credit goes back once one largest frame's worth is freed
        # (STREAM_GRANT_BYTES_MIN), or half its window if that is less.
        self._grant_units_min = max(1, min(STREAM_GRANT_BYTES_MIN, window_units // 2))
        # What all the bodies on this connection may send and buffer together.
        self._connection_send = SendWindow(connection_window_units)
        # Connection credit goes back in the batches a stream's does, not half the connection
        # window: the streams that share it each hold up to a window of it, and what one frees
        # must not wait for half of everything to be freed. For one stream the two credits
        # then fall due together and go out in one write.
        self._connection_receive = ReceiveWindow(
            connection_window_units, min(connection_window_units, self._grant_units_min)
        )
        self._serves_max = serves_max
        self._first_stream_id = 1 if dialled else 2
        self._next_stream_id = self._first_stream_id
        self._streams: dict[int, _Stream] = {}
        self._serves_count = 0

    def stream_count(self) -> int:
        return len(self._streams)

    # -- the local side ---------------------------------------------------------------

    def start_request(self, msg: wire.Message, *, with_body: bool) -> tuple[int, Frame]:
        """Open a stream for ``msg``; returns its id and the frame to send."""
        if with_body and not msg.TAKES_BODY:
            raise LocalProtocolError(f"{type(msg).__name__} takes no body")
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        if self._next_stream_id >= STREAM_ID_LIMIT:
            self._next_stream_id = self._first_stream_id
        if stream_id in self._streams:
            raise LocalProtocolError(f"stream id {stream_id} wrapped around onto a stream in use")
        stream = _Stream(Side.CALL, sending=Half.DONE, receiving=Half.ANSWER)
        if with_body:
            stream.sending = Half.BODY
            stream.send_window = SendWindow(self._window_units)
        self._streams[stream_id] = stream
        kind = K.REQUEST_STREAM if with_body else K.REQUEST
        return stream_id, Frame(kind, stream_id, msg.TYPE, encode_payload(msg))

    def oneway(self, msg: wire.Message) -> Frame:
        """A message that needs no answer (gossip): it opens no stream."""
        return Frame(K.ONEWAY, 0, msg.TYPE, encode_payload(msg))

    def respond(self, stream_id: int, msg: wire.Message, *, with_body: bool) -> Frame:
        """The answer to a request we serve; with ``with_body``, a body follows."""
        kind = K.RESPONSE_STREAM if with_body else K.RESPONSE
        stream = self._send(stream_id, kind)
        if with_body:
            stream.send_window = SendWindow(self._window_units)
        return Frame(kind, stream_id, msg.TYPE, encode_payload(msg))

    def respond_error(self, stream_id: int, code: ErrorCode, text: str) -> Frame:
        """An error answer to a request we serve, or the end of its answer's body."""
        self._send(stream_id, K.ERROR)
        return _error_frame(stream_id, code, text)

    def sendable_bytes(self, stream_id: int, want_bytes: int) -> int:
        """How many of ``want_bytes`` may be sent on ``stream_id`` now; 0 means wait for credit.

        Raises ConnectionClosed if the peer no longer wants the body.
        """
        stream = self._sending_stream(stream_id)
        if stream.sending is Half.STOPPED:
            raise ConnectionClosed("the stream was closed by the peer")
        assert stream.send_window is not None
        return flow.sendable_bytes(self._send_credit(stream.send_window), want_bytes)

    def send_data(self, stream_id: int, data: bytes | memoryview) -> Frame:
        """A piece of a body; at most ``sendable_bytes`` of it."""
        stream = self._send(stream_id, K.STREAM_DATA)
        assert stream.send_window is not None
        if len(data) > flow.sendable_bytes(self._send_credit(stream.send_window), len(data)):
            raise LocalProtocolError(f"{len(data)} bytes exceed what stream {stream_id} may send")
        units = flow.flow_units(data)
        stream.send_window.consume(units)
        self._connection_send.consume(units)
        return Frame(K.STREAM_DATA, stream_id, 0, data)

    def _send_credit(self, window: SendWindow) -> int:
        return min(window.available_units, self._connection_send.available_units)

    def end_body(self, stream_id: int) -> Frame:
        self._send(stream_id, K.STREAM_END)
        return Frame(K.STREAM_END, stream_id, 0, b"")

    def body_consumed(self, stream_id: int, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Our reader took ``data`` off a body; returns the CREDIT frames now due (stream, connection)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.receive_window is None:
            return []  # closed: what it buffered went back to the connection window then
        units = flow.flow_units(data)
        frames = []
        grant = stream.receive_window.release(units)
        if grant and stream.receiving is Half.BODY:  # once the body has ended, nothing more will come
            frames.append(_credit_frame(stream_id, grant))
        frames.extend(self._connection_released(units))
        return frames

    def close_call(self, stream_id: int) -> list[Frame]:
        """Our caller is done with request ``stream_id``; returns a CANCEL if the answer is
        unfinished, and connection credit for what its body left unread."""
        stream = self._streams.pop(stream_id)
        assert stream.side is Side.CALL
        frames = [] if stream.receiving is Half.DONE else [Frame(K.CANCEL, stream_id, 0, b"")]
        return frames + self._unread_released(stream)

    def close_serve(self, stream_id: int) -> list[Frame]:
        """The handler of request ``stream_id`` has finished; returns connection credit for
        what its body left unread (a handler may answer without reading it all)."""
        stream = self._streams.pop(stream_id)
        assert stream.side is Side.SERVE
        self._serves_count -= 1
        return self._unread_released(stream)

    def refuse(self, stream_id: int, code: ErrorCode, text: str) -> list[Frame]:
        """Turn down request ``stream_id`` without serving it (the driver's own limits say no):
        its error answer, and connection credit for what its body left unread."""
        frame = self.respond_error(stream_id, code, text)
        return [frame, *self.close_serve(stream_id)]

    def _unread_released(self, stream: _Stream) -> list[Frame]:
        if stream.receive_window is None:
            return []
        return self._connection_released(stream.receive_window.buffered_units)

    def _connection_released(self, units: int) -> list[Frame]:
        grant = self._connection_receive.release(units) if units else 0
        return [_credit_frame(CONNECTION_STREAM_ID, grant)] if grant else []

    def _sending_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return stream

    def _send(self, stream_id: int, kind: FrameKind) -> _Stream:
        stream = self._sending_stream(stream_id)
        if stream.sending is Half.STOPPED:
            raise ConnectionClosed("the stream was closed by the peer")
        after = _SEND.get((stream.side, stream.sending, kind))
        if after is None:
            raise LocalProtocolError(
                f"cannot send {kind.name} on {stream.side.value} stream {stream_id} in state {stream.sending.value}"
            )
        stream.sending = after
        return stream

    # -- the peer's side --------------------------------------------------------------

    def receive_frame(self, frame: Frame) -> list[Event]:
        """What the peer's ``frame`` means; raises ProtocolViolation (or WireError) if it breaks the protocol."""
        kind = frame.kind
        if kind in _STREAMLESS_KINDS:
            return self._receive_streamless(frame)
        if kind is K.CREDIT and frame.stream_id == CONNECTION_STREAM_ID:
            return self._receive_connection_credit(frame)
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            # A late frame of a stream either end gave up on (or refused). Body data still
            # counts against the connection window, and is credited back at once.
            if kind is K.STREAM_DATA:
                units = flow.flow_units(frame.payload)
                self._connection_receive.consume(units)
                return [SendFrame(f) for f in self._connection_released(units)]
            return []
        if kind is K.CREDIT:
            return self._receive_credit(frame, stream)
        if kind is K.CANCEL:
            if stream.side is not Side.SERVE:
                raise ProtocolViolation(f"CANCEL of stream {frame.stream_id}, which the peer did not open")
            stream.sending = Half.STOPPED
            return [Cancelled(frame.stream_id)]
        after = _RECEIVE.get((stream.side, stream.receiving, kind))
        if after is None:
            raise ProtocolViolation(
                f"unexpected {kind.name} on stream {frame.stream_id} ({stream.receiving.value})"
            )
        before, stream.receiving = stream.receiving, after
        return self._receive_on_stream(frame, stream, before)

    def _receive_streamless(self, frame: Frame) -> list[Event]:
        kind = frame.kind
        if kind is K.HELLO:
            raise ProtocolViolation("hello sent twice")
        msg = self._decode_allowed(frame)
        if kind is K.ONEWAY:
            return [OnewayReceived(msg)] if self.serving else []
        stream_id = frame.stream_id
        if stream_id % 2 == self._next_stream_id % 2:
            raise ProtocolViolation(f"request with stream id {stream_id} of our parity")
        if stream_id in self._streams:
            raise ProtocolViolation(f"stream id {stream_id} reused while in use")
        has_body = kind is K.REQUEST_STREAM
        # Refused, not queued: a queue here would have no bound. Its body, if any, is dropped
        # as the late frames of an unknown stream.
        if not self.serving or self._serves_count >= self._serves_max:
            return [SendFrame(_error_frame(stream_id, ErrorCode.UNAVAILABLE, "too many requests"))]
        if has_body and not msg.TAKES_BODY:
            return [SendFrame(_error_frame(stream_id, ErrorCode.BAD_REQUEST, f"{type(msg).__name__} takes no body"))]
        stream = _Stream(Side.SERVE, sending=Half.IDLE, receiving=Half.BODY if has_body else Half.DONE)
        if has_body:
            stream.receive_window = ReceiveWindow(self._window_units, self._grant_units_min)
        self._streams[stream_id] = stream
        self._serves_count += 1
        return [RequestReceived(stream_id, msg, has_body)]

    def _receive_connection_credit(self, frame: Frame) -> list[Event]:
        self._connection_send.grant(wire.decode_credit(frame.payload))
        # Any uploader may have been waiting for the connection's credit rather than its own.
        return [
            SendUnblocked(stream_id) for stream_id, stream in self._streams.items() if stream.sending is Half.BODY
        ]

    def _receive_credit(self, frame: Frame, stream: _Stream) -> list[Event]:
        units = wire.decode_credit(frame.payload)
        if stream.send_window is None:
            return []  # no body was ever sent on it: nothing to pace
        stream.send_window.grant(units)
        return [SendUnblocked(frame.stream_id)]

    def _receive_on_stream(self, frame: Frame, stream: _Stream, before: Half) -> list[Event]:
        kind, stream_id = frame.kind, frame.stream_id
        if kind is K.STREAM_DATA:
            assert stream.receive_window is not None
            units = flow.flow_units(frame.payload)
            try:
                stream.receive_window.consume(units)
            except ProtocolViolation:
                raise ProtocolViolation(f"stream {stream_id} exceeded its credit") from None
            try:
                self._connection_receive.consume(units)
            except ProtocolViolation:
                raise ProtocolViolation(f"stream {stream_id} exceeded the connection's credit") from None
            # The payload as it came: a large one is the buffer TLS decrypted it into
            # (``wire.FrameDecoder``), handed to the consumer uncopied (``BodyReader.buffers``).
            return [BodyReceived(stream_id, frame.payload)]
        if kind is K.STREAM_END:
            return [BodyEnded(stream_id)]
        if kind is K.ERROR and before is Half.BODY:
            return [BodyFailed(stream_id, RemoteError(*wire.decode_error(frame.payload)))]
        # The answer: anything still being uploaded is moot, the answer says how the request ended.
        events: list[Event] = []
        if stream.sending is Half.BODY:
            stream.sending = Half.STOPPED
            events.append(SendUnblocked(stream_id))
        if kind is K.ERROR:
            events.append(ErrorReceived(stream_id, RemoteError(*wire.decode_error(frame.payload))))
        else:
            has_body = kind is K.RESPONSE_STREAM
            if has_body:
                stream.receive_window = ReceiveWindow(self._window_units, self._grant_units_min)
            msg = wire.decode_message(frame.msg_type, frame.payload)
            events.append(ResponseReceived(stream_id, msg, has_body))
        return events

    def _decode_allowed(self, frame: Frame) -> wire.Message:
        msg = wire.decode_message(frame.msg_type, frame.payload)
        if self.peer_role not in msg.SENDERS:
            raise ProtocolViolation(f"a {self.peer_role.value} may not send {type(msg).__name__}")
        return msg


def _credit_frame(stream_id: int, credit_bytes: int) -> Frame:
    return Frame(K.CREDIT, stream_id, 0, wire.encode_credit(credit_bytes))


def _error_frame(stream_id: int, code: ErrorCode, text: str) -> Frame:
    return Frame(K.ERROR, stream_id, 0, wire.encode_error(code, text[:ERROR_TEXT_CHARS_MAX]))
