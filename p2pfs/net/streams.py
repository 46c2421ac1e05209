"""What handlers and callers see of a connection: requests, answers, and streamed bodies."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Protocol

import trio

from p2pfs import wire
from p2pfs.identity import PeerIdentity

from .config import STREAM_DATA_FRAME_COST_BYTES, STREAM_WINDOW_BYTES
from .errors import ConnectionClosed, RemoteError, RequestTimeout

if TYPE_CHECKING:
    from .connection import Connection

# Items a body buffer holds: the mux's credit (in bytes, each frame costing at least
# STREAM_DATA_FRAME_COST_BYTES) bounds the data frames, plus the end marker or an error.
BODY_BUFFER_ITEMS_MAX = STREAM_WINDOW_BYTES // STREAM_DATA_FRAME_COST_BYTES + 1

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


# Told that the consumer took a piece of a body off its buffer, and the bytes of the node's
# memory budget it held (to return the credit and the memory).
Consumed = Callable[[int, bytes | memoryview, int], Awaitable[None]]


class BodyReader:
    """The receiving side of a streamed body: a buffer the reader task fills, the consumer drains.

    Each piece comes with the bytes of the node's memory budget it holds
    (``budget.py``); they go back when the consumer takes the piece, or when the
    stream closes with the piece unread (``discard``).
    """

    def __init__(self, stream_id: int, idle_s: float, consumed: Consumed) -> None:
        self._stream_id = stream_id
        self._idle_s = idle_s
        self._consumed = consumed
        # Items: (data, budget bytes), None for the end, or a RemoteError the sender raised mid-stream.
        self._send, self._receive = trio.open_memory_channel[tuple[bytes, int] | RemoteError | None](
            BODY_BUFFER_ITEMS_MAX
        )
        self.held_bytes = 0
        self.finished = False

    def push(self, item: bytes | memoryview | RemoteError | None, held_bytes: int = 0) -> None:
        """Called by the reader with what the mux let through, which the buffer always has room for."""
        try:
            self._send.send_nowait((item, held_bytes) if isinstance(item, (bytes, memoryview)) else item)
        except trio.WouldBlock:
            raise AssertionError(f"stream {self._stream_id} buffered beyond its credit") from None
        self.held_bytes += held_bytes

    def abort(self) -> None:
        self._send.close()

    def discard(self) -> int:
        """The stream is closed: drop what was never read; returns the budget bytes it held."""
        self._send.close()
        while True:
            try:
                self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        held, self.held_bytes = self.held_bytes, 0
        return held

    async def __aiter__(self) -> AsyncIterator[bytes]:
        idle_s = self._idle_s
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
            data, held_bytes = data
            self.held_bytes -= held_bytes
            await self._consumed(self._stream_id, data, held_bytes)
            yield data

    async def drain(self) -> int:
        """Read the body to its end, discarding it; returns the byte count."""
        total = 0
        async for data in self:
            total += len(data)
        return total


@dataclasses.dataclass(slots=True)
class Response:
    """The answer to a request: a message and, if the peer streams one, a body."""

    msg: wire.Message
    body: BodyReader | None


@dataclasses.dataclass(slots=True)
class IncomingRequest:
    """A request as a handler sees it."""

    conn: "Connection"
    msg: wire.Message
    body: BodyReader | None

    @property
    def peer(self) -> PeerIdentity:
        return self.conn.peer


