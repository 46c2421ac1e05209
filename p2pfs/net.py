"""Mutual-TLS transport over trio: listener, dialer, multiplexed requests, streams, pool.

Every connection is TLS 1.3 with a certificate on both ends chained to the
cluster CA (see ``identity``). After the handshake each end sends a ``Hello``
(protocol version, cluster id, role, listen address) and checks the peer's:
the role claimed must match the role in the peer's verified certificate, so a
client certificate can never act as a node.

On one connection, many requests run at once: each has a stream id (the
dialler uses odd ids, the acceptor even ones, so both ends may issue requests
without colliding, as in HTTP/2). A request has a deadline; when it passes, or
the caller is cancelled, the caller sends CANCEL and the connection stays
usable. Large payloads travel as streamed bodies: STREAM_DATA frames under
credit-based flow control, so a receiver never buffers more than
``STREAM_WINDOW_FRAMES`` frames per stream and the reader task never blocks on
application code. That is what keeps one slow consumer from stalling every
other request on the connection.

Anything a peer does wrong (bad frame, unknown type, wrong role, exceeding its
credit) closes that one connection with a logged reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import math
import random
import ssl
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable, Protocol

import trio

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.config import doc
from p2pfs.identity import Identity, PeerIdentity, peer_identity_from_der, short_id
from p2pfs.wire import ErrorCode, Frame, FrameKind, Role

log = logging.getLogger(__name__)

# Frames a stream receiver buffers at most; the sender starts with this much credit.
STREAM_WINDOW_FRAMES = 8
# Largest STREAM_DATA payload we send; bodies are cut to this size.
STREAM_DATA_BYTES_MAX = 1024 * 1024
# Concurrent incoming requests per connection; beyond it requests are refused
# with UNAVAILABLE instead of queueing without bound.
INCOMING_REQUESTS_PER_CONNECTION_MAX = 512
# Concurrent TLS handshakes a listener runs; more connections wait in the backlog.
HANDSHAKES_CONCURRENT_MAX = 64
# Connections a listener keeps open at once.
INBOUND_CONNECTIONS_MAX = 1024
# Plaintext bytes the reader takes at most per call.
_RECEIVE_BYTES = 256 * 1024
# Bytes read from a socket at once: several TLS records, decrypted together.
_SOCKET_RECEIVE_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class NetConfig:
    """The ``[net]`` section: transport timings, in seconds."""

    handshake_timeout_s: float = doc(
        "A peer that connects and does not finish TLS and the hello within this many seconds is dropped.",
        default=5.0,
    )
    connect_timeout_s: float = doc("Seconds to establish a TCP connection when dialling.", default=3.0)
    send_timeout_s: float = doc(
        "A single write that does not complete in this many seconds means the peer stopped reading "
        "(frozen or gone): the connection is closed.",
        default=10.0,
    )
    stream_idle_timeout_s: float = doc(
        "Longest wait, in seconds, for the next piece of a streamed body or for credit to send one.",
        default=15.0,
    )
    redial_backoff_s_min: float = doc(
        "After a failed dial, seconds before the address is tried again; doubles on each failure...",
        default=0.1,
    )
    redial_backoff_s_max: float = doc("... up to this many seconds.", default=5.0)


class NetError(Exception):
    """A network-level failure: the peer is unreachable, the connection broke, ..."""


class ConnectError(NetError):
    """Could not connect or authenticate to a peer."""


class HandshakeError(ConnectError):
    """The TLS handshake or hello exchange failed: wrong CA, wrong role, bad hello."""


class ConnectionClosed(NetError):
    """The connection closed while a request was outstanding."""


class RequestTimeout(NetError, TimeoutError):
    """A request's deadline passed. The connection remains usable."""


class RemoteError(Exception):
    """The peer answered a request with an error. Handlers raise it to send one."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{code.name}: {text}")
        self.code = code
        self.text = text


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection is closed."""


BodyWriter = Callable[[Callable[[bytes | memoryview], Awaitable[None]]], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class Reply:
    """A handler's answer with a streamed body following the response message.

    ``body`` is called with a ``send(data)`` coroutine function and sends the
    body through it. It is a callback rather than an async generator so that a
    handler can run a nursery (say, to fetch ahead) around its sends: trio
    forbids nurseries that span a ``yield``. If ``body`` raises RemoteError
    after sending has begun, the caller's body iterator raises it.
    """

    msg: wire.Message
    body: BodyWriter


class Handlers(Protocol):
    """What a server does with what arrives on a connection."""

    async def handle_request(self, request: "IncomingRequest") -> wire.Message | Reply: ...

    def handle_oneway(self, conn: "Connection", msg: wire.Message) -> None: ...


# ---------------------------------------------------------------------------
# TLS


class TLSStream:
    """TLS over a trio socket stream, through the ssl module's memory BIOs.

    Why not ``trio.SSLStream``: its ``receive_some`` returns at most one TLS record (16 KiB) per
    call, each through a general-purpose retry loop with locks and a checkpoint. Decrypting every
    record a socket read brought in, in one call, costs less than half the CPU per byte received
    (0.60 against 1.40 CPU-seconds per GiB on the project's 2-core machine), and the receiver of
    every hop of a put or a get pays it.

    It does exactly what a Connection needs: one handshake, then one reader and one writer at a
    time (the Connection serialises its writers). The reader may have to answer the peer itself
    (a TLS 1.3 key update); socket writes therefore share a lock and always send what the TLS
    object produced, in the order it produced it. Errors surface as trio's do:
    ``BrokenResourceError`` caused by the ``ssl.SSLError``, and ``b""`` once the peer has closed.
    """

    def __init__(self, transport: trio.SocketStream, context: ssl.SSLContext, *, server_side: bool) -> None:
        self.transport_stream = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=None)
        self._socket_send_lock = trio.Lock()
        self._peer_closed = False

    def getpeercert(self, binary_form: bool = False):
        return self._tls.getpeercert(binary_form)

    async def _flush(self) -> None:
        """Send what TLS has produced so far (under the lock: records leave in the order made)."""
        async with self._socket_send_lock:
            data = self._outgoing.read()
            if data:
                await self.transport_stream.send_all(data)

    async def _receive_from_socket(self) -> None:
        data = await self.transport_stream.receive_some(_SOCKET_RECEIVE_BYTES)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def do_handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._receive_from_socket()
            except ssl.SSLError as exc:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self._flush()  # the alert tells the peer why
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        await self._flush()  # our last handshake message (and, on a server, session tickets)

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of plaintext, at least one byte; ``b""`` once the peer closed TLS."""
        pieces: list[bytes] = []
        size_bytes = 0
        while True:
            try:
                while size_bytes < max_bytes and not self._peer_closed:
                    piece = self._tls.read(max_bytes - size_bytes)
                    if not piece:  # close_notify
                        self._peer_closed = True
                        break
                    pieces.append(piece)
                    size_bytes += len(piece)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            if self._outgoing.pending and not self._socket_send_lock.locked():
                # Something TLS answers by itself (a key update). While a write is under way its
                # next flush takes this along: waiting for it here could deadlock two peers that
                # both write more than the other reads.
                await self._flush()
            if pieces or self._peer_closed:
                await trio.lowlevel.checkpoint()
                return b"".join(pieces)
            await self._receive_from_socket()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
        await self._flush()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Send close_notify if no write is under way, then close the socket."""
        try:
            if not self._socket_send_lock.locked():
                with contextlib.suppress(ssl.SSLError):
                    self._tls.unwrap()  # queues close_notify; does not wait for the peer's
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self._flush()
        finally:
            await self.transport_stream.aclose()


# ---------------------------------------------------------------------------
# Streams


class _InStream:
    """Receiving side of a streamed body: a bounded buffer fed by the reader task."""

    def __init__(self, conn: "Connection", stream_id: int) -> None:
        self._conn = conn
        self._stream_id = stream_id
        # Items: data, None for the end, or a RemoteError the sender raised mid-stream.
        self._send, self._receive = trio.open_memory_channel[bytes | RemoteError | None](
            STREAM_WINDOW_FRAMES + 1
        )
        self._consumed_since_credit = 0
        self.finished = False

    def push(self, data: bytes | RemoteError | None) -> None:
        """Called by the reader. ``None`` ends the stream. Raises on credit overrun."""
        try:
            self._send.send_nowait(data)
        except trio.WouldBlock:
            raise ProtocolViolation(f"stream {self._stream_id} exceeded its credit") from None
        except trio.BrokenResourceError:
            pass  # the consumer went away; late frames are dropped

    def abort(self) -> None:
        self._send.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        idle_s = self._conn.config.stream_idle_timeout_s
        while True:
            try:
                with trio.fail_after(idle_s):
                    data = await self._receive.receive()
            except trio.EndOfChannel:
                raise ConnectionClosed(f"stream {self._stream_id} ended before its end marker") from None
            except trio.TooSlowError:
                raise RequestTimeout(f"no data on stream {self._stream_id} for {idle_s} s") from None
            if data is None:
                self.finished = True
                return
            if isinstance(data, RemoteError):
                self.finished = True
                raise data
            self._consumed_since_credit += 1
            if self._consumed_since_credit >= STREAM_WINDOW_FRAMES // 2:
                credit, self._consumed_since_credit = self._consumed_since_credit, 0
                await self._conn._send_frame(
                    FrameKind.CREDIT, self._stream_id, 0, wire.encode_credit(credit)
                )
            yield data

    async def drain(self) -> int:
        """Read the body to its end, discarding it; returns the byte count."""
        total = 0
        async for data in self:
            total += len(data)
        return total


class _OutStream:
    """Sending side of a streamed body: waits for credit before each frame."""

    def __init__(self) -> None:
        self.credit = STREAM_WINDOW_FRAMES
        self._changed = trio.Event()
        self.closed = False

    def add_credit(self, frames: int) -> None:
        self.credit += frames
        if self.credit > STREAM_WINDOW_FRAMES:
            raise ProtocolViolation("peer granted more credit than the window")
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def acquire(self, idle_s: float) -> None:
        with trio.fail_after(idle_s):
            while self.credit == 0 and not self.closed:
                self._changed = trio.Event()
                await self._changed.wait()
        if self.closed:
            raise ConnectionClosed("the stream was closed by the peer")
        self.credit -= 1


@dataclasses.dataclass(slots=True)
class Response:
    """The answer to a request: a message and, if the peer streams one, a body."""

    msg: wire.Message
    body: _InStream | None


@dataclasses.dataclass(slots=True)
class _Pending:
    header: Frame | None = None
    arrived: trio.Event = dataclasses.field(default_factory=trio.Event)
    out: _OutStream | None = None
    body: _InStream | None = None


@dataclasses.dataclass(slots=True)
class IncomingRequest:
    """A request as a handler sees it."""

    conn: "Connection"
    msg: wire.Message
    body: _InStream | None

    @property
    def peer(self) -> PeerIdentity:
        return self.conn.peer


# ---------------------------------------------------------------------------
# Connection


class Connection:
    """One authenticated connection, carrying many concurrent requests."""

    def __init__(
        self,
        stream: TLSStream,
        peer: PeerIdentity,
        peer_hello: wire.Hello,
        *,
        dialled: bool,
        config: NetConfig,
        handlers: Handlers | None,
        initial_bytes: bytes = b"",
    ) -> None:
        self.peer = peer
        self._initial_bytes = initial_bytes
        self.peer_hello = peer_hello
        self.config = config
        self._stream = stream
        self._handlers = handlers
        self._send_lock = trio.Lock()
        self._next_stream_id = 1 if dialled else 2
        self._pending: dict[int, _Pending] = {}
        self._incoming: dict[int, tuple[trio.CancelScope, _InStream | None, _OutStream]] = {}
        self._closed = trio.Event()
        self.close_reason: str | None = None
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.peer.role.value} {self.peer.short_id} {self.peer_address}>"

    @property
    def peer_address(self) -> Address | None:
        """Where the peer accepts connections (nodes only)."""
        if self.peer_hello.listen_port == 0:
            return None
        return Address(self.peer_hello.listen_host, self.peer_hello.listen_port)

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- running ------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Read and dispatch frames until the connection ends. Handlers run in here."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await self._read_loop()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._mark_closed(self.close_reason or "closed")
            with trio.move_on_after(0.5) as cleanup:
                cleanup.shield = True
                await self._stream.aclose()

    def _mark_closed(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        for pending in self._pending.values():
            pending.arrived.set()
            if pending.out is not None:
                pending.out.close()
            if pending.body is not None:
                pending.body.abort()
        for scope, body, out in self._incoming.values():
            scope.cancel()
            out.close()
            if body is not None:
                body.abort()

    async def aclose(self, reason: str = "closed locally") -> None:
        self._mark_closed(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        with trio.move_on_after(0.5) as cleanup:
            cleanup.shield = True
            await self._stream.aclose()

    async def _read_loop(self) -> None:
        decoder = wire.FrameDecoder()
        decoder.feed(self._initial_bytes)
        self._initial_bytes = b""
        try:
            while (frame := decoder.next_frame()) is not None:
                self._dispatch(frame)
            while True:
                data = await self._stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    self.close_reason = "peer closed the connection"
                    return
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    self._dispatch(frame)
        except (wire.WireError, ProtocolViolation) as exc:
            self.close_reason = f"protocol error: {exc}"
            log.warning("closing connection to %s %s: %s", self.peer.role.value, self.peer.short_id, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            self.close_reason = f"connection lost: {exc!r}"
            log.debug("connection to %s lost: %r", self.peer.short_id, exc)

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.kind
        if kind in (FrameKind.RESPONSE, FrameKind.RESPONSE_STREAM, FrameKind.ERROR):
            pending = self._pending.get(frame.stream_id)
            if pending is None:
                return  # a late answer to a request we gave up on
            if pending.header is not None:
                if kind is FrameKind.ERROR and pending.body is not None:
                    pending.body.push(RemoteError(*wire.decode_error(frame.payload)))
                return
            if kind is FrameKind.RESPONSE_STREAM:
                pending.body = _InStream(self, frame.stream_id)
            pending.header = frame
            pending.arrived.set()
            if pending.out is not None:
                pending.out.close()  # the peer answered: no point sending more body
        elif kind in (FrameKind.STREAM_DATA, FrameKind.STREAM_END):
            data = frame.payload if kind is FrameKind.STREAM_DATA else None
            pending = self._pending.get(frame.stream_id)
            if pending is not None and pending.body is not None:
                pending.body.push(data)
                return
            incoming = self._incoming.get(frame.stream_id)
            if incoming is not None and incoming[1] is not None:
                incoming[1].push(data)
            # otherwise the stream was abandoned; late frames are dropped
        elif kind is FrameKind.CREDIT:
            frames = wire.decode_credit(frame.payload)
            pending = self._pending.get(frame.stream_id)
            if pending is not None and pending.out is not None:
                pending.out.add_credit(frames)
            elif (incoming := self._incoming.get(frame.stream_id)) is not None:
                incoming[2].add_credit(frames)
        elif kind is FrameKind.CANCEL:
            incoming = self._incoming.get(frame.stream_id)
            if incoming is not None:
                incoming[0].cancel()
        elif kind in (FrameKind.REQUEST, FrameKind.REQUEST_STREAM):
            msg = self._decode_allowed(frame)
            if frame.stream_id % 2 == self._next_stream_id % 2:
                raise ProtocolViolation(f"request with stream id {frame.stream_id} of our parity")
            if frame.stream_id in self._incoming:
                raise ProtocolViolation(f"stream id {frame.stream_id} reused while in use")
            body = _InStream(self, frame.stream_id) if kind is FrameKind.REQUEST_STREAM else None
            if len(self._incoming) >= INCOMING_REQUESTS_PER_CONNECTION_MAX or self._handlers is None:
                self._nursery.start_soon(
                    self._send_error, frame.stream_id, ErrorCode.UNAVAILABLE, "too many requests"
                )
                return
            scope = trio.CancelScope()
            self._incoming[frame.stream_id] = (scope, body, _OutStream())
            self._nursery.start_soon(self._serve_request, frame.stream_id, msg, body, scope)
        elif kind is FrameKind.ONEWAY:
            msg = self._decode_allowed(frame)
            if self._handlers is not None:
                self._handlers.handle_oneway(self, msg)
        elif kind is FrameKind.HELLO:
            raise ProtocolViolation("hello sent twice")
        else:
            raise ProtocolViolation(f"unexpected frame kind {kind.name}")

    def _decode_allowed(self, frame: Frame) -> wire.Message:
        msg = wire.decode_message(frame.msg_type, frame.payload)
        if self.peer.role not in msg.SENDERS:
            raise ProtocolViolation(
                f"a {self.peer.role.value} may not send {type(msg).__name__}"
            )
        return msg

    async def _serve_request(
        self, stream_id: int, msg: wire.Message, body: _InStream | None, scope: trio.CancelScope
    ) -> None:
        assert self._handlers is not None
        out = self._incoming[stream_id][2]
        try:
            with scope:
                try:
                    result = await self._handlers.handle_request(IncomingRequest(self, msg, body))
                except RemoteError as exc:
                    await self._send_error(stream_id, exc.code, exc.text)
                    return
                except (NetError, trio.TooSlowError) as exc:
                    await self._send_error(stream_id, ErrorCode.UNAVAILABLE, str(exc) or repr(exc))
                    return
                except Exception as exc:
                    log.exception("handler for %s failed", type(msg).__name__)
                    await self._send_error(stream_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
                    return
                if isinstance(result, Reply):
                    await self._send_message(FrameKind.RESPONSE_STREAM, stream_id, result.msg)
                    try:
                        await result.body(functools.partial(self._send_data, stream_id, out))
                    except RemoteError as exc:
                        await self._send_error(stream_id, exc.code, exc.text)
                        return
                    except Exception as exc:
                        log.exception("streaming the answer to %s failed", type(msg).__name__)
                        await self._send_error(stream_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
                        return
                    await self._send_frame(FrameKind.STREAM_END, stream_id, 0, b"")
                else:
                    await self._send_message(FrameKind.RESPONSE, stream_id, result)
        except (NetError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.debug("could not answer %s to %s: %r", type(msg).__name__, self.peer.short_id, exc)
        finally:
            del self._incoming[stream_id]

    # -- sending ------------------------------------------------------------

    async def _send_frame(self, kind: FrameKind, stream_id: int, msg_type: int, payload: bytes) -> None:
        header = wire.frame_header(kind, stream_id, msg_type, len(payload))
        if self._closed.is_set():
            raise ConnectionClosed(self.close_reason or "closed")
        async with self._send_lock:
            # A frame goes out whole, whoever is cancelled meanwhile: a TLS stream is broken for
            # good by a send cancelled midway (and half a frame would derail the peer's
            # decoder anyway), which would fail every other request on the connection, e.g. when
            # a quorum read cancels its slowest replica. send_timeout_s still bounds the wait.
            with trio.CancelScope(shield=True):
                await self._send_frame_whole(header, payload)

    async def _send_frame_whole(self, header: bytes, payload: bytes) -> None:
        try:
            with trio.fail_after(self.config.send_timeout_s):
                if len(payload) <= 64 * 1024:
                    await self._stream.send_all(header + payload)
                else:  # avoid copying large payloads into one buffer
                    await self._stream.send_all(header)
                    await self._stream.send_all(payload)
        except trio.TooSlowError:
            reason = f"peer did not read for {self.config.send_timeout_s} s"
            self._mark_closed(reason)
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            raise ConnectionClosed(reason) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            self._mark_closed(f"connection lost: {exc!r}")
            raise ConnectionClosed(f"connection to {self.peer.short_id} lost: {exc!r}") from None

    async def _send_message(self, kind: FrameKind, stream_id: int, msg: wire.Message) -> None:
        await self._send_frame(kind, stream_id, msg.TYPE, wire.encode_message(msg))

    async def _send_error(self, stream_id: int, code: ErrorCode, text: str) -> None:
        with contextlib.suppress(NetError):
            await self._send_frame(FrameKind.ERROR, stream_id, 0, wire.encode_error(code, text[:1000]))

    async def _send_data(self, stream_id: int, out: _OutStream, data: bytes | memoryview) -> None:
        """Send one piece of a streamed body, cut to frame size, each frame paced by credit."""
        view = memoryview(data)
        for start in range(0, len(view), STREAM_DATA_BYTES_MAX):
            await out.acquire(self.config.stream_idle_timeout_s)
            await self._send_frame(
                FrameKind.STREAM_DATA, stream_id, 0, view[start : start + STREAM_DATA_BYTES_MAX]
            )

    async def _send_body(self, stream_id: int, body: AsyncIterable[bytes], out: _OutStream) -> None:
        async for data in body:
            await self._send_data(stream_id, out, data)
        await self._send_frame(FrameKind.STREAM_END, stream_id, 0, b"")

    async def send_oneway(self, msg: wire.Message) -> None:
        """Send a message that gets no answer (gossip). Bounded by ``send_timeout_s``."""
        await self._send_message(FrameKind.ONEWAY, 0, msg)

    def _new_stream_id(self) -> int:
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        if self._next_stream_id >= 2**32:
            self._next_stream_id -= 2**32 - 2
        return stream_id

    async def request(
        self, msg: wire.Message, *, timeout_s: float, body: AsyncIterable[bytes] | None = None
    ) -> wire.Message:
        """Send a request and return the answer message.

        ``timeout_s`` bounds the wait for the answer after the request (and its
        body, if any) has been sent; a body is paced by flow control with
        ``stream_idle_timeout_s`` between frames. Raises RequestTimeout,
        RemoteError, ConnectionClosed. A streamed answer is drained and dropped:
        use ``open_request`` to read one.
        """
        async with self.open_request(msg, timeout_s=timeout_s, body=body) as response:
            if response.body is not None:
                await response.body.drain()
            return response.msg

    @contextlib.asynccontextmanager
    async def open_request(
        self, msg: wire.Message, *, timeout_s: float, body: AsyncIterable[bytes] | None = None
    ) -> AsyncIterator[Response]:
        """Like ``request``, but yields a Response whose streamed body the caller reads."""
        stream_id = self._new_stream_id()
        pending = _Pending()
        self._pending[stream_id] = pending
        done = False
        try:
            kind = FrameKind.REQUEST if body is None else FrameKind.REQUEST_STREAM
            await self._send_message(kind, stream_id, msg)
            if body is not None:
                pending.out = _OutStream()
                await self._upload_then_wait(stream_id, pending, body, timeout_s)
            else:
                await self._wait_header(pending, timeout_s)
            header = pending.header
            if header is None:
                raise ConnectionClosed(self.close_reason or "connection closed")
            if header.kind is FrameKind.ERROR:
                done = True
                code, text = wire.decode_error(header.payload)
                raise RemoteError(code, text)
            response = Response(wire.decode_message(header.msg_type, header.payload), pending.body)
            done = response.body is None
            yield response
            done = response.body is None or response.body.finished
        finally:
            del self._pending[stream_id]
            if not done and not self._closed.is_set():
                with trio.move_on_after(1.0) as cleanup:
                    cleanup.shield = True
                    with contextlib.suppress(NetError):
                        await self._send_frame(FrameKind.CANCEL, stream_id, 0, b"")

    async def _wait_header(self, pending: _Pending, timeout_s: float) -> None:
        try:
            with trio.fail_after(timeout_s):
                await pending.arrived.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"no answer from {self.peer.short_id} within {timeout_s} s") from None

    async def _upload_then_wait(
        self, stream_id: int, pending: _Pending, body: AsyncIterable[bytes], timeout_s: float
    ) -> None:
        """Send the body while watching for an early answer (an error cuts the upload short)."""
        assert pending.out is not None
        async with trio.open_nursery() as nursery:
            uploaded = trio.Event()

            async def upload() -> None:
                try:
                    await self._send_body(stream_id, body, pending.out)
                except ConnectionClosed:
                    if pending.header is None and not self._closed.is_set():
                        raise
                    return  # the peer answered early; the answer tells why
                except trio.TooSlowError:
                    raise RequestTimeout(
                        f"{self.peer.short_id} granted no credit for "
                        f"{self.config.stream_idle_timeout_s} s"
                    ) from None
                uploaded.set()

            nursery.start_soon(upload)
            with trio.CancelScope() as early:
                nursery.start_soon(_set_then_cancel, pending.arrived, early)
                await uploaded.wait()
                await self._wait_header(pending, timeout_s)
            nursery.cancel_scope.cancel()


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


# ---------------------------------------------------------------------------
# Handshake


def _local_hello(identity: Identity, listen: Address | None) -> wire.Hello:
    return wire.Hello(
        protocol_version=wire.PROTOCOL_VERSION,
        cluster_id=identity.cluster_id,
        role=identity.role.value,
        listen_host=listen.host if listen else "",
        listen_port=listen.port if listen else 0,
    )


async def _exchange_hello(
    stream: TLSStream, identity: Identity, listen: Address | None
) -> tuple[PeerIdentity, wire.Hello, bytes]:
    """Send our hello, read theirs, check it against the peer's certificate.

    Returns the peer, its hello, and any bytes read past the hello frame.
    """
    der = stream.getpeercert(binary_form=True)
    if not der:
        raise HandshakeError("the peer presented no certificate")
    peer = peer_identity_from_der(der)
    payload = wire.encode_message(_local_hello(identity, listen))
    await stream.send_all(wire.encode_frame(Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, payload)))
    decoder = wire.FrameDecoder(frame_size_bytes_max=4096)
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(4096)
        if not data:
            raise HandshakeError("the peer closed the connection during the hello")
        decoder.feed(data)
    if frame.kind is not FrameKind.HELLO or frame.msg_type != wire.Hello.TYPE:
        raise HandshakeError(f"expected a hello, got {frame.kind.name}")
    hello = wire.decode_message(frame.msg_type, frame.payload)
    assert isinstance(hello, wire.Hello)
    if hello.protocol_version != wire.PROTOCOL_VERSION:
        raise HandshakeError(
            f"peer speaks protocol version {hello.protocol_version}, we speak {wire.PROTOCOL_VERSION}"
        )
    if hello.cluster_id != identity.cluster_id:
        raise HandshakeError("peer belongs to another cluster (cluster ids differ)")
    if hello.role != peer.role.value:
        raise HandshakeError(
            f"peer claims to be a {hello.role} but its certificate is a {peer.role.value}'s"
        )
    return peer, hello, decoder.take_buffered()  # frames sent right behind the hello


async def dial(
    identity: Identity,
    address: Address,
    *,
    config: NetConfig,
    handlers: Handlers | None = None,
    listen: Address | None = None,
    bind_host: str | None = None,
    expected_node_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Connection:
    """Open a TLS connection to a node and exchange hellos. Does not start the reader.

    Raises ConnectError (or HandshakeError) with a message naming the peer.
    """
    try:
        with trio.fail_after(config.connect_timeout_s):
            tcp = await trio.open_tcp_stream(
                address.host, address.port, local_address=bind_host
            )
    except trio.TooSlowError:
        raise ConnectError(f"connecting to {address} timed out after {config.connect_timeout_s} s") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect to {address}: {exc.strerror or exc}") from None
    context = ssl_context or identity.client_context()
    stream = TLSStream(tcp, context, server_side=False)
    try:
        with trio.fail_after(config.handshake_timeout_s):
            await stream.do_handshake()
            peer, hello, leftover = await _exchange_hello(stream, identity, listen)
    except BaseException as exc:
        with trio.move_on_after(0.5) as cleanup:
            cleanup.shield = True
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise HandshakeError(f"handshake with {address} timed out") from None
        if isinstance(exc, (ssl.SSLError, trio.BrokenResourceError)):
            raise HandshakeError(f"TLS handshake with {address} failed: {_ssl_reason(exc)}") from None
        if isinstance(exc, wire.WireError):
            raise HandshakeError(f"bad hello from {address}: {exc}") from None
        raise
    if peer.role is not Role.NODE:
        await trio.aclose_forcefully(stream)
        raise HandshakeError(f"{address} is not a node")
    if expected_node_id is not None and peer.node_id != expected_node_id:
        await trio.aclose_forcefully(stream)
        raise HandshakeError(
            f"{address} is node {short_id(peer.node_id)}, expected {short_id(expected_node_id)}"
        )
    return Connection(
        stream, peer, hello, dialled=True, config=config, handlers=handlers, initial_bytes=leftover
    )


def _ssl_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause) or repr(cause)


# ---------------------------------------------------------------------------
# A node's endpoint: listener and connection pool


class Endpoint:
    """A node's network presence: the TLS listener and a pool of connections by node id.

    Connections are symmetric: one accepted from a node is reused to send it
    requests, so two nodes usually share one connection. A failed dial puts the
    address into exponential back-off with jitter; ``connect`` fails fast
    during it instead of hammering a dead peer.
    """

    def __init__(
        self,
        identity: Identity,
        listen: Address,
        handlers: Handlers,
        *,
        config: NetConfig = NetConfig(),
        bind_host: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.listen = listen
        self.config = config
        self._handlers = handlers
        self._bind_host = bind_host
        self._rng = rng or random.Random()
        self._by_node: dict[str, Connection] = {}
        self._node_at: dict[Address, str] = {}
        self._dialling: dict[Address, trio.Event] = {}
        self._backoff: dict[Address, tuple[float, float]] = {}  # address -> (retry_at, delay_s)
        self._inbound_count = 0
        self._handshakes = trio.Semaphore(HANDSHAKES_CONCURRENT_MAX)
        self._nursery: trio.Nursery | None = None
        self.bound_port: int | None = None
        # Built once: loading the certificate files per connection would cost a
        # file read and a parse on every accept and dial.
        self._server_context = identity.server_context()
        self._client_context = identity.client_context()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled. Raises OSError (e.g. EADDRINUSE) before ``started``."""
        listeners = await trio.open_tcp_listeners(self.listen.port, host=self.listen.host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        if self.listen.port == 0:  # an ephemeral port (tests): tell peers the real one
            self.listen = Address(self.listen.host, self.bound_port)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                try:
                    tcp = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("accept failed (%s); pausing 100 ms", exc)
                        await trio.sleep(0.1)  # resource exhaustion: let connections close
                        continue
                    raise
                if self._inbound_count >= INBOUND_CONNECTIONS_MAX:
                    log.warning("refusing a connection: %d inbound connections open", self._inbound_count)
                    await trio.aclose_forcefully(tcp)
                    continue
                self._nursery.start_soon(self._serve_inbound, tcp)

    async def _serve_inbound(self, tcp: trio.SocketStream) -> None:
        self._inbound_count += 1
        try:
            stream = TLSStream(tcp, self._server_context, server_side=True)
            remote = _remote_name(tcp)
            try:
                async with self._handshakes:
                    with trio.fail_after(self.config.handshake_timeout_s):
                        await stream.do_handshake()
                        peer, hello, leftover = await _exchange_hello(stream, self.identity, self.listen)
            except trio.TooSlowError:
                log.info("dropped %s: no handshake within %s s", remote, self.config.handshake_timeout_s)
                await trio.aclose_forcefully(stream)
                return
            except (ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.info("rejected %s: TLS handshake failed: %s", remote, _ssl_reason(exc))
                await trio.aclose_forcefully(stream)
                return
            except (HandshakeError, wire.WireError) as exc:
                log.info("rejected %s: %s", remote, exc)
                await trio.aclose_forcefully(stream)
                return
            conn = Connection(
                stream, peer, hello, dialled=False, config=self.config,
                handlers=self._handlers, initial_bytes=leftover,
            )
            log.debug("accepted %r from %s", conn, remote)
            if peer.role is Role.NODE and conn.peer_address is not None:
                self._node_at[conn.peer_address] = peer.node_id
                current = self._by_node.get(peer.node_id)
                if current is None or current.is_closed:
                    self._by_node[peer.node_id] = conn
            try:
                await conn.run()
            finally:
                if self._by_node.get(peer.node_id) is conn:
                    del self._by_node[peer.node_id]
        finally:
            self._inbound_count -= 1

    async def connect(self, address: Address, *, node_id: str | None = None) -> Connection:
        """A live connection to the node at ``address`` (and with ``node_id``, if given)."""
        assert self._nursery is not None, "Endpoint.run has not started"
        while True:
            known = node_id or self._node_at.get(address)
            if known is not None:
                conn = self._by_node.get(known)
                if conn is not None and not conn.is_closed:
                    return conn
            waiting = self._dialling.get(address)
            if waiting is None:
                break
            await waiting.wait()  # someone else is dialling this address; bounded by their timeouts
            if node_id is None and address not in self._node_at:
                raise ConnectError(f"cannot connect to {address}")
        retry_at, delay_s = self._backoff.get(address, (0.0, 0.0))
        if trio.current_time() < retry_at:
            raise ConnectError(f"{address} is unreachable (retrying in {retry_at - trio.current_time():.1f} s)")
        done = self._dialling[address] = trio.Event()
        try:
            conn = await dial(
                self.identity, address, config=self.config, handlers=self._handlers,
                listen=self.listen, bind_host=self._bind_host, expected_node_id=node_id,
                ssl_context=self._client_context,
            )
        except ConnectError:
            delay_s = min(
                max(delay_s * 2, self.config.redial_backoff_s_min), self.config.redial_backoff_s_max
            )
            jitter = self._rng.uniform(0.5, 1.0)
            self._backoff[address] = (trio.current_time() + delay_s * jitter, delay_s)
            raise
        finally:
            del self._dialling[address]
            done.set()
        self._backoff.pop(address, None)
        self._node_at[address] = conn.peer.node_id
        self._by_node[conn.peer.node_id] = conn
        await self._nursery.start(self._run_dialled, conn)
        return conn

    async def _run_dialled(self, conn: Connection, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await conn.run(task_status=task_status)
        finally:
            if self._by_node.get(conn.peer.node_id) is conn:
                del self._by_node[conn.peer.node_id]

    async def request(
        self, address: Address, msg: wire.Message, *, timeout_s: float, node_id: str | None = None,
        body: AsyncIterable[bytes] | None = None,
    ) -> wire.Message:
        """Connect (within the same deadline) and make one request."""
        with trio.move_on_after(timeout_s) as scope:
            conn = await self.connect(address, node_id=node_id)
        if scope.cancelled_caught:
            raise RequestTimeout(f"connecting to {address} took longer than {timeout_s} s")
        return await conn.request(msg, timeout_s=timeout_s, body=body)

    async def send_oneway(self, address: Address, msg: wire.Message) -> bool:
        """Best effort: connect and send; False (logged at debug) on any network failure."""
        try:
            conn = await self.connect(address)
            await conn.send_oneway(msg)
        except NetError as exc:
            log.debug("could not send %s to %s: %s", type(msg).__name__, address, exc)
            return False
        return True

    def connections(self) -> list[Connection]:
        return [c for c in self._by_node.values() if not c.is_closed]


def _remote_name(tcp: trio.SocketStream) -> str:
    try:
        host, port = tcp.socket.getpeername()[:2]
    except OSError:
        return "<unknown>"
    return f"{host}:{port}"


@contextlib.asynccontextmanager
async def client_connection(
    identity: Identity, address: Address, *, config: NetConfig = NetConfig()
) -> AsyncIterator[Connection]:
    """A connection from the CLI (or any client) to one node, closed on exit."""
    conn = await dial(identity, address, config=config)
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        try:
            yield conn
        finally:
            await conn.aclose()
            nursery.cancel_scope.cancel()
