"""The trio driver of one authenticated connection: it moves frames and runs what the mux decides.

The protocol (stream ids, which frame may come when, credit, cancel) lives in
``mux.py`` and is pure. This module only does what needs trio: one task reads
and decodes frames and carries out the mux's events (wake a caller, feed a
body buffer, start or cancel a handler); writers take turns on the socket,
each frame whole; every wait has a deadline (``NetConfig``). A request has a
deadline; when it passes, or the caller is cancelled, the caller sends CANCEL
and the connection stays usable. The reader never blocks on application
code: bodies arrive into buffers the mux's credit bounds.

Memory: every byte read is taken from the node's budget (``budget.py``) before
the read, and handed with each frame to what holds it (a body buffer until the
consumer takes it, a handler until it ends); when the budget is spent the
reader waits instead of reading, and TCP pushes back on the peer. A peer's
requests are counted over all its connections (``INCOMING_REQUESTS_PER_PEER_MAX``).

Logs: ERROR (with a traceback) only for a handler that failed on its own; what
a peer does wrong is a WARNING once per peer and kind per interval
(``NodeLimits.peer_faults``); a peer that simply goes away is not logged above debug.

Anything a peer does wrong (bad frame, unknown type, wrong role, exceeding its
credit) closes that one connection with a logged reason. So does holding it
without progress: a frame started and not finished within ``frame_read_timeout_s``
for each MiB it declares (``frame_read_allowed_s``),
or nothing received and no request open for ``connection_idle_timeout_s``. The
reader waits under one cancel scope whose deadline is moved whenever one of
those changes (a frame begins or ends, a request opens or closes), so the
receive is cancelled only to close the connection and never loses bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import ssl
from typing import AsyncIterable, AsyncIterator

import trio

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.identity import PeerIdentity
from p2pfs.wire import ErrorCode, Frame

from . import mux as m
from .budget import NodeLimits
from .config import (
    INCOMING_REQUESTS_PER_PEER_MAX,
    RECEIVE_BYTES,
    RECEIVE_BYTES_IDLE,
    STREAM_DATA_BYTES_MAX,
    NetConfig,
)
from .errors import ConnectionClosed, CreditTimeout, NetError, ProtocolViolation, RemoteError, RequestTimeout
from .streams import BodyReader, Handlers, IncomingRequest, Piece, Reply, Response
from .tls import TLSStream
from .traffic import TrafficMeter, current_meter, unmetered

log = logging.getLogger(__name__)

# Payloads up to this size are copied behind their header into one TLS write; larger ones are
# written after it uncopied. Either way the frame leaves in one socket write (TLSStream.send_all).
_COALESCE_PAYLOAD_BYTES_MAX = 64 * 1024
# Seconds a caller that gave up spends at most telling the peer (CANCEL), and a closing
# connection spends at most on its close_notify.
_CANCEL_SEND_S_MAX = 1.0
_CLOSE_S_MAX = 0.5
# The unit a started frame's read deadline scales with (frame_read_allowed_s).
_MIB = 1024 * 1024


def frame_read_allowed_s(timeout_s_per_mib: float, frame_bytes: int) -> float:
    """How long a started frame of ``frame_bytes`` may take to arrive: ``timeout_s_per_mib`` for
    each MiB, and never less than that for a small one.

    A fixed time per frame would make the slowest link a node can serve depend on how large its
    peers' frames are (a get's coordinator sends up to 4 MiB in one); scaling with the declared
    size keeps one minimum rate, while a peer that stops mid-frame still frees the buffer it
    holds within a bounded time.
    """
    return timeout_s_per_mib * max(1.0, frame_bytes / _MIB)


@dataclasses.dataclass(slots=True)
class _Pending:
    """A request of ours, waiting for its answer."""

    answer: wire.Message | RemoteError | None = None
    arrived: trio.Event = dataclasses.field(default_factory=trio.Event)
    body: BodyReader | None = None
    # Where the request's traffic is counted (``traffic.metered``), if anywhere.
    meter: TrafficMeter | None = None


@dataclasses.dataclass(slots=True)
class _Serving:
    """A request of the peer's, with its handler running under ``scope``."""

    scope: trio.CancelScope
    body: BodyReader | None
    # Budget bytes the request's own frame holds while its handler runs.
    held_bytes: int


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
        limits: NodeLimits | None = None,
    ) -> None:
        """``limits``: what the node's connections share; a client's connection has its own."""
        self.peer = peer
        self._initial_bytes = initial_bytes
        self.peer_hello = peer_hello
        self.config = config
        self._stream = stream
        self._handlers = handlers
        self._mux = m.Mux(dialled=dialled, peer_role=peer.role, serving=handlers is not None)
        self._limits = limits or NodeLimits(config.memory_budget_bytes, INCOMING_REQUESTS_PER_PEER_MAX)
        # Budget bytes the reader holds: what its decoder buffers, plus room for the read under way.
        self._reader_bytes = 0
        self._awaiting_memory = False
        self._send_lock = trio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._serving: dict[int, _Serving] = {}
        # Senders waiting for credit on a stream, woken by the mux's SendUnblocked.
        self._send_wakeups: dict[int, trio.Event] = {}
        self._closed = trio.Event()
        self.close_reason: str | None = None
        self._nursery: trio.Nursery | None = None
        # The reader's wait and what its deadline is computed from (trio time, seconds).
        self._read_scope: trio.CancelScope | None = None
        self._partial_frame_since_s: float | None = None
        # Bytes of the frame under way that the decoder holds or will (its whole size once its
        # header is in, for a frame read into a buffer of its own): what its deadline scales with.
        self._partial_frame_bytes = 0
        self._quiet_since_s = 0.0

    def __repr__(self) -> str:
        return f"<Connection {self.peer.role.value} {self.peer.short_id} {self.peer_address}>"

    @property
    def peer_address(self) -> Address | None:
        """Where the peer accepts connections (nodes only)."""
        if self.peer_hello.listen_port == 0:
            return None
        return Address(self.peer_hello.listen_host, self.peer_hello.listen_port)

    @property
    def alpn_protocol(self) -> str | None:
        """What both ends speak beyond the hello's version (``wire.ALPN_PROTOCOLS``); None if either offered nothing."""
        return self._stream.selected_alpn_protocol()

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    @property
    def is_idle(self) -> bool:
        """No request open in either direction: closing it now interrupts nobody."""
        return not self._pending and not self._serving

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def shed(self, reason: str) -> None:
        """Close without waiting (the listener makes room for a new connection); ``run`` cleans up."""
        self._mark_closed(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- running ------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Read and dispatch frames until the connection ends. Handlers run in here."""
        unmetered()  # a round may have dialled it, but what it serves is not the round's traffic
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
            with trio.move_on_after(_CLOSE_S_MAX) as cleanup:
                cleanup.shield = True
                await self._stream.aclose()

    def _mark_closed(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        for pending in self._pending.values():
            pending.arrived.set()
            if pending.body is not None:
                pending.body.abort()
        for serving in self._serving.values():
            serving.scope.cancel()
            if serving.body is not None:
                serving.body.abort()
        for wakeup in self._send_wakeups.values():
            wakeup.set()
        self._send_wakeups.clear()

    async def aclose(self, reason: str = "closed locally") -> None:
        self._mark_closed(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        with trio.move_on_after(_CLOSE_S_MAX) as cleanup:
            cleanup.shield = True
            await self._stream.aclose()

    async def _read_loop(self) -> None:
        decoder = wire.FrameDecoder(lend=self._lend_payload)
        self._quiet_since_s = trio.current_time()
        memory = self._limits.memory
        try:
            try:
                if self._initial_bytes:  # what came with the hello: read before the budget could be asked
                    await self._reserve(len(self._initial_bytes))
                    decoder.feed(self._initial_bytes)
                    self._initial_bytes = b""
                    self._decode(decoder, self._quiet_since_s)
                while True:
                    # A frame under way is read in large pieces; between frames a small read
                    # takes the next header, so an idle connection holds little of the budget.
                    # A large frame's payload is read into its own buffer (wire.FrameDecoder),
                    # whose whole size the budget holds from when its header is in.
                    receive_bytes = RECEIVE_BYTES if decoder.buffered_bytes else RECEIVE_BYTES_IDLE
                    direct = decoder.direct_bytes_due
                    with trio.CancelScope() as scope:
                        self._read_scope = scope
                        scope.deadline = self._read_deadline_s()
                        if direct:
                            await self._reserve(decoder.buffered_bytes)
                            view = decoder.direct_buffer()
                            assert view is not None
                            assert len(view) == direct, (len(view), direct)
                            received_bytes = await self._stream.receive_into(view)
                            del view
                        else:
                            await self._reserve(decoder.buffered_bytes + receive_bytes)
                            data = await self._stream.receive_some(receive_bytes)
                            received_bytes = len(data)
                    self._read_scope = None
                    if scope.cancelled_caught:
                        self.close_reason = self._stall_reason()
                        if self._awaiting_memory:  # not the peer's fault: the node's budget stayed spent
                            self._limits.budget_spent.log(
                                trio.current_time(), "closed a connection to %s %s: %s",
                                self.peer.role.value, self.peer.short_id, self.close_reason,
                            )
                        elif self._partial_frame_since_s is not None:
                            self._peer_fault("closing the connection: %s", self.close_reason)
                        else:
                            log.debug("closing connection to %s %s: %s", self.peer.role.value,
                                      self.peer.short_id, self.close_reason)
                        return
                    if not received_bytes:
                        self.close_reason = "peer closed the connection"
                        return
                    self._quiet_since_s = trio.current_time()
                    if direct:
                        decoder.direct_received(received_bytes)
                    else:
                        decoder.feed(data)
                        # The decoder holds a copy: this one must not live on while the next read
                        # waits for the budget, outside it.
                        del data
                    self._decode(decoder, self._quiet_since_s)
                    # Keep only what the decoder still holds; the next read asks again (and
                    # for the whole of a large frame whose header just came in, before its
                    # buffer is made).
                    if self._reader_bytes > decoder.buffered_bytes:
                        memory.give_back(self._reader_bytes - decoder.buffered_bytes)
                        self._reader_bytes = decoder.buffered_bytes
            finally:
                memory.give_back(self._reader_bytes)
                self._reader_bytes = 0
        except (wire.WireError, ProtocolViolation) as exc:
            self.close_reason = f"protocol error: {exc}"
            self._peer_fault("closing the connection: protocol error: %s", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            self.close_reason = f"connection lost: {exc!r}"
            log.debug("connection to %s lost: %r", self.peer.short_id, exc)

    def _lend_payload(self, kind_raw: int, stream_id: int, payload_bytes: int) -> memoryview | None:
        """The buffer to read a large body piece into, if the consumer of the answer it belongs
        to lends one (``streams.Buffers.lend``); None: the decoder makes its own. The header
        is not checked yet: a frame the mux then refuses closes the connection as before."""
        if kind_raw != wire.FrameKind.STREAM_DATA:
            return None
        pending = self._pending.get(stream_id)
        if pending is None or pending.body is None or pending.body.lender is None:
            return None
        return pending.body.lender(payload_bytes)

    async def _reserve(self, size_bytes: int) -> None:
        """Hold at least ``size_bytes`` of the budget for the reader, waiting for room if need be."""
        if size_bytes > self._reader_bytes:
            self._awaiting_memory = True
            await self._limits.memory.take(size_bytes - self._reader_bytes)
            self._awaiting_memory = False
            self._reader_bytes = size_bytes

    def _peer_fault(self, msg: str, *args: object) -> None:
        """The peer misbehaved: a WARNING, once per peer and kind per interval, with its id."""
        self._limits.peer_faults.log(
            trio.current_time(), self.peer.short_id, f"{self.peer.role.value} {msg}", *args
        )

    def _decode(self, decoder: wire.FrameDecoder, now_s: float) -> None:
        """Carry out every complete frame, handing its budget bytes on; note when a frame left incomplete began."""
        completed = False
        while (frame := decoder.next_frame()) is not None:
            completed = True
            events = self._mux.receive_frame(frame)  # if it raises, the reader still holds the frame's bytes
            held_bytes = wire.FRAME_HEADER_BYTES + len(frame.payload)
            self._reader_bytes -= held_bytes
            if not self._execute(events, held_bytes):
                self._limits.memory.give_back(held_bytes)
        self._partial_frame_bytes = decoder.buffered_bytes
        if decoder.buffered_bytes == 0:
            self._partial_frame_since_s = None
        elif completed or self._partial_frame_since_s is None:
            self._partial_frame_since_s = now_s  # a new frame began in this read

    def _read_deadline_s(self) -> float:
        """When the reader gives up: a started frame must finish; a connection nobody uses must hear something."""
        if self._partial_frame_since_s is not None:
            return self._partial_frame_since_s + self._partial_frame_allowed_s()
        if self._pending or self._serving:
            return math.inf  # each request has its own deadline
        return self._quiet_since_s + self.config.connection_idle_timeout_s

    def _partial_frame_allowed_s(self) -> float:
        return frame_read_allowed_s(self.config.frame_read_timeout_s, self._partial_frame_bytes)

    def _stall_reason(self) -> str:
        if self._awaiting_memory:
            return "the node's memory budget stayed spent until the read deadline"
        if self._partial_frame_since_s is not None:
            return f"a frame was not completed within {self._partial_frame_allowed_s():g} s"
        return f"idle for {self.config.connection_idle_timeout_s} s"

    def _streams_changed(self) -> None:
        """A request opened or closed: the idle clock restarts, and the reader's deadline moves."""
        self._quiet_since_s = trio.current_time()
        if self._read_scope is not None:
            self._read_scope.deadline = self._read_deadline_s()

    def _execute(self, events: list[m.Event], held_bytes: int) -> bool:
        """Carry out what the mux made of one frame. Never waits: the reader must not block.

        Returns whether something now holds the frame's ``held_bytes`` of the budget
        (a body buffer, a handler); if not, the caller gives them back.
        """
        kept = False
        for event in events:  # the cases in order of frequency: a match tries them in turn
            match event:
                case m.BodyReceived(stream_id, data):
                    self._body(stream_id).push(data, held_bytes)
                    kept = True
                case m.ResponseReceived(stream_id, msg, has_body):
                    pending = self._pending[stream_id]
                    if pending.meter is not None:
                        pending.meter.bytes_received += held_bytes - wire.FRAME_HEADER_BYTES
                    pending.body = self._new_body(stream_id) if has_body else None
                    pending.answer = msg
                    pending.arrived.set()
                case m.RequestReceived(stream_id, msg, has_body):
                    assert self._nursery is not None
                    if not self._limits.requests.try_open(self.peer.node_id):
                        self._peer_fault("refused a request: %d requests open over its connections",
                                         self._limits.requests.limit)
                        for frame in self._mux.refuse(stream_id, ErrorCode.UNAVAILABLE, "too many requests from you"):
                            self._nursery.start_soon(self._send_quietly, frame)
                        continue
                    body = self._new_body(stream_id) if has_body else None
                    serving = self._serving[stream_id] = _Serving(trio.CancelScope(), body, held_bytes)
                    kept = True
                    self._nursery.start_soon(self._serve_request, stream_id, msg, body, serving.scope)
                case m.SendUnblocked(stream_id):
                    wakeup = self._send_wakeups.pop(stream_id, None)
                    if wakeup is not None:
                        wakeup.set()
                case m.BodyEnded(stream_id):
                    self._body(stream_id).push(None)
                case m.BodyFailed(stream_id, error):
                    self._body(stream_id).push(error)
                case m.ErrorReceived(stream_id, error):
                    pending = self._pending[stream_id]
                    if pending.meter is not None:
                        pending.meter.bytes_received += held_bytes - wire.FRAME_HEADER_BYTES
                    pending.answer = error
                    pending.arrived.set()
                case m.OnewayReceived(msg):
                    assert self._handlers is not None
                    self._handlers.handle_oneway(self, msg)
                case m.Cancelled(stream_id):
                    self._serving[stream_id].scope.cancel()
                case m.SendFrame(frame):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._send_quietly, frame)
                case _:
                    raise AssertionError(f"unknown mux event {event!r}")
        return kept

    def _send_soon(self, frames: list[Frame]) -> None:
        """Send frames nobody waits for (credit, cancel) from a task of their own."""
        if frames and self._nursery is not None and not self._closed.is_set():
            for frame in frames:
                self._nursery.start_soon(self._send_quietly, frame)

    def _new_body(self, stream_id: int) -> BodyReader:
        return BodyReader(stream_id, self.config.stream_idle_timeout_s, self._body_consumed)

    async def _body_consumed(self, stream_id: int, data: Piece, held_bytes: int) -> None:
        self._limits.memory.give_back(held_bytes)
        pending = self._pending.get(stream_id)  # None for a body the peer sends with its request
        if pending is not None and pending.meter is not None:
            pending.meter.bytes_received += len(data)
        credits = self._mux.body_consumed(stream_id, data)
        if credits:  # the stream's and the connection's, in one write
            if self._closed.is_set():
                raise ConnectionClosed(self.close_reason or "closed")
            async with self._send_lock:
                with trio.CancelScope(shield=True):  # whole, as in _send_frame
                    await self._send_frame_whole(b"".join(wire.encode_frame(f) for f in credits), b"")

    def _body(self, stream_id: int) -> BodyReader:
        holder = self._pending.get(stream_id) or self._serving[stream_id]
        assert holder.body is not None
        return holder.body

    async def _serve_request(
        self, stream_id: int, msg: wire.Message, body: BodyReader | None, scope: trio.CancelScope
    ) -> None:
        assert self._handlers is not None
        try:
            with scope:
                try:
                    result = await self._handlers.handle_request(IncomingRequest(self, msg, body))
                except Exception as exc:
                    await self._handler_failed(stream_id, msg, exc, "handler for %s failed")
                    return
                if isinstance(result, Reply):
                    await self._send_frame(self._mux.respond(stream_id, result.msg, with_body=True))
                    try:
                        await result.body(functools.partial(self._send_data, stream_id))
                    except Exception as exc:
                        await self._handler_failed(stream_id, msg, exc, "streaming the answer to %s failed")
                        return
                    await self._send_frame(self._mux.end_body(stream_id))
                else:
                    await self._send_frame(self._mux.respond(stream_id, result, with_body=False))
        except (NetError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.debug("could not answer %s to %s: %r", type(msg).__name__, self.peer.short_id, exc)
        finally:
            serving = self._serving.pop(stream_id)
            memory = self._limits.memory
            memory.give_back(serving.held_bytes)
            if body is not None:
                memory.give_back(body.discard())
            self._limits.requests.close(self.peer.node_id)
            self._send_wakeups.pop(stream_id, None)
            self._send_soon(self._mux.close_serve(stream_id))
            self._streams_changed()

    async def _handler_failed(self, stream_id: int, msg: wire.Message, exc: Exception, what: str) -> None:
        """Answer a request whose handler raised ``exc``; a traceback only if the fault is ours.

        A RemoteError is the handler's answer. A transport error (also when a
        nursery in the handler wrapped it in a group) means a peer went away or
        stalled: this connection's peer, or one the handler asked in turn; the
        caller hears UNAVAILABLE and the log says nothing above debug, except
        for this peer's own stall (it granted no credit), a peer fault.
        """
        if isinstance(exc, RemoteError):
            await self._send_error(stream_id, exc.code, exc.text)
            return
        transport_error = _transport_error(exc)
        if transport_error is None:
            log.exception(what, type(msg).__name__)
            await self._send_error(stream_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        if isinstance(transport_error, CreditTimeout) and transport_error.peer_id == self.peer.node_id:
            self._peer_fault("granted no credit for %s s on an answer (%s)",
                             self.config.stream_idle_timeout_s, type(msg).__name__)
        else:
            log.debug("%s for %s ended: %r", type(msg).__name__, self.peer.short_id, transport_error)
        await self._send_error(stream_id, ErrorCode.UNAVAILABLE, str(transport_error) or repr(transport_error))

    # -- sending ------------------------------------------------------------

    async def _send_frame(self, frame: Frame) -> None:
        header = wire.frame_header(frame.kind, frame.stream_id, frame.msg_type, len(frame.payload))
        if self._closed.is_set():
            raise ConnectionClosed(self.close_reason or "closed")
        # A free lock is taken without a trip through the scheduler (``Lock.acquire`` yields
        # even then): the socket write below yields anyway, and a small request or answer paid
        # for both (docs/BENCHMARKS.md, "Small files: a name read's tasks, the stand-ins found
        # when needed, the send lock"). A cancelled caller still stops here, as it did at the
        # lock, before anything is sent.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._send_lock.locked():
            await self._send_lock.acquire()
        else:
            self._send_lock.acquire_nowait()
        try:
            # A frame goes out whole, whoever is cancelled meanwhile: a TLS stream is broken for
            # good by a send cancelled midway (and half a frame would derail the peer's
            # decoder anyway), which would fail every other request on the connection, e.g. when
            # a quorum read cancels its slowest replica. send_timeout_s still bounds the wait.
            with trio.CancelScope(shield=True):
                await self._send_frame_whole(header, frame.payload)
        finally:
            self._send_lock.release()

    async def _send_frame_whole(self, header: bytes, payload: bytes | memoryview | m.Scattered) -> None:
        try:
            with trio.fail_after(self.config.send_timeout_s):
                if isinstance(payload, m.Scattered):
                    # The first part is the small head of the message: it goes with the header.
                    await self._stream.send_all(header + payload.parts[0], *payload.parts[1:])
                elif len(payload) <= _COALESCE_PAYLOAD_BYTES_MAX:
                    await self._stream.send_all(header + payload)
                else:
                    await self._stream.send_all(header, payload)
        except trio.TooSlowError:
            reason = f"peer did not read for {self.config.send_timeout_s} s"
            self._mark_closed(reason)
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            raise ConnectionClosed(reason) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            self._mark_closed(f"connection lost: {exc!r}")
            raise ConnectionClosed(f"connection to {self.peer.short_id} lost: {exc!r}") from None

    async def _send_quietly(self, frame: Frame) -> None:
        with contextlib.suppress(NetError):
            await self._send_frame(frame)

    async def _send_error(self, stream_id: int, code: ErrorCode, text: str) -> None:
        with contextlib.suppress(NetError):
            await self._send_frame(self._mux.respond_error(stream_id, code, text))

    async def _send_data(self, stream_id: int, data: bytes | memoryview | m.Scattered) -> None:
        """Send one piece of a streamed body, cut into frames as credit allows.

        A ``Scattered`` piece of at most ``STREAM_DATA_BYTES_MAX`` goes as one frame, its
        parts uncopied, once the credit for all of it is there (several chunks in one frame
        cost the per-frame work once); a larger one goes part by part."""
        if isinstance(data, m.Scattered):
            if len(data) > STREAM_DATA_BYTES_MAX:
                for part in data.parts:
                    await self._send_data(stream_id, part)
                return
            await self._wait_sendable(stream_id, len(data), whole=True)
            await self._send_frame(self._mux.send_data(stream_id, data))
            return
        view = memoryview(data)
        while view:  # each pass sends at least one byte, or fails on the idle deadline
            size_bytes = await self._wait_sendable(stream_id, len(view))
            await self._send_frame(self._mux.send_data(stream_id, view[:size_bytes]))
            view = view[size_bytes:]

    async def _wait_sendable(self, stream_id: int, want_bytes: int, *, whole: bool = False) -> int:
        """Bytes of ``want_bytes`` the credit lets go in the next frame, once it lets any
        (or, ``whole``, all of them) go."""
        least_bytes = want_bytes if whole else 1
        try:
            with trio.fail_after(self.config.stream_idle_timeout_s):
                while (size_bytes := self._mux.sendable_bytes(stream_id, want_bytes)) < least_bytes:
                    if self._closed.is_set():
                        raise ConnectionClosed(self.close_reason or "closed")
                    wakeup = self._send_wakeups[stream_id] = trio.Event()
                    await wakeup.wait()
        except trio.TooSlowError:
            raise CreditTimeout(
                f"{self.peer.short_id} granted no credit for {self.config.stream_idle_timeout_s} s",
                self.peer.node_id,
            ) from None
        return size_bytes

    async def _send_body(self, stream_id: int, body: AsyncIterable[bytes], meter: TrafficMeter | None) -> None:
        async for data in body:
            await self._send_data(stream_id, data)
            if meter is not None:
                meter.bytes_sent += len(data)
        await self._send_frame(self._mux.end_body(stream_id))

    async def send_oneway(self, msg: wire.Message) -> None:
        """Send a message that gets no answer (gossip). Bounded by ``send_timeout_s``."""
        await self._send_frame(self._mux.oneway(msg))

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
        """Like ``request``, but yields a Response whose streamed body the caller reads.

        Under ``traffic.metered()`` (a background round), the request, its body, its answer and
        each piece of the answer's body read are counted into that meter."""
        stream_id, frame = self._mux.start_request(msg, with_body=body is not None)
        meter = current_meter()
        pending = self._pending[stream_id] = _Pending(meter=meter)
        self._streams_changed()
        try:
            await self._send_frame(frame)
            if meter is not None:
                meter.requests += 1
                meter.bytes_sent += len(frame.payload)
            if body is not None:
                await self._upload_then_wait(stream_id, pending, body, timeout_s)
            else:
                await self._wait_answer(pending, timeout_s)
            if pending.answer is None:
                raise ConnectionClosed(self.close_reason or "connection closed")
            if isinstance(pending.answer, RemoteError):
                raise pending.answer
            yield Response(pending.answer, pending.body)
        finally:
            del self._pending[stream_id]
            self._streams_changed()
            self._send_wakeups.pop(stream_id, None)
            if pending.body is not None:
                self._limits.memory.give_back(pending.body.discard())
            frames = self._mux.close_call(stream_id)
            if frames and not self._closed.is_set():
                with trio.move_on_after(_CANCEL_SEND_S_MAX) as cleanup:
                    cleanup.shield = True
                    for frame in frames:
                        await self._send_quietly(frame)

    async def _wait_answer(self, pending: _Pending, timeout_s: float) -> None:
        try:
            with trio.fail_after(timeout_s):
                await pending.arrived.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"no answer from {self.peer.short_id} within {timeout_s} s") from None

    async def _upload_then_wait(
        self, stream_id: int, pending: _Pending, body: AsyncIterable[bytes], timeout_s: float
    ) -> None:
        """Send the body while watching for an early answer (an error cuts the upload short)."""
        async with trio.open_nursery() as nursery:
            uploaded = trio.Event()

            async def upload() -> None:
                try:
                    await self._send_body(stream_id, body, pending.meter)
                except ConnectionClosed:
                    if pending.answer is None and not self._closed.is_set():
                        raise
                    return  # the peer answered early; the answer tells why
                uploaded.set()

            nursery.start_soon(upload)
            with trio.CancelScope() as early:
                nursery.start_soon(_set_then_cancel, pending.arrived, early)
                await uploaded.wait()
                await self._wait_answer(pending, timeout_s)
            nursery.cancel_scope.cancel()


def _transport_error(exc: BaseException) -> NetError | None:
    """The transport error ``exc`` is, or the first of a group made only of them (a handler's
    nursery wraps what its tasks raise); None if anything else is in it."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split((NetError, trio.TooSlowError))
        if matched is None or rest is not None:
            return None
        leaves = list(_leaves(matched))
        exc = next((leaf for leaf in leaves if isinstance(leaf, NetError)), leaves[0])
    if isinstance(exc, NetError):
        return exc
    if isinstance(exc, trio.TooSlowError):
        return RequestTimeout(str(exc) or "a deadline passed")
    return None


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
