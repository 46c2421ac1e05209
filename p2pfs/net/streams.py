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


# A piece of a body as the transport hands it on: bytes, or (a large one) the bytearray it was
# decrypted into.
Piece = bytes | bytearray | memoryview
PIECE_TYPES = (bytes, bytearray, memoryview)
# Told that the consumer took a piece of a body off its buffer, and the bytes of the node's
# memory budget it held (to return the credit and the memory).
Consumed = Callable[[int, Piece, int], Awaitable[None]]
# Asked, by the connection's reader, for a buffer of exactly this many bytes to decrypt a large
# piece of the body into: a writable view the consumer owns, or None (the reader makes one).
Lender = Callable[[int], memoryview | None]


class BodyReader:
    """The receiving side of a streamed body: a buffer the reader task fills, the consumer drains.

    Each piece comes with the bytes of the node's memory budget it held
    (``budget.py``); they go back when the consumer takes the piece, or when the
    stream closes with the piece unread (``discard``).

    Iterated, it yields each piece as ``bytes`` (a chunk is stored and sent on as the
    object it came in). ``buffers()`` yields each piece as it came instead: a large
    piece is the very buffer TLS decrypted it into (``wire.FrameDecoder``), which
    nothing else holds or reuses, so the consumer may keep it; a copy of every large
    piece fewer, for a consumer that copies the bytes on anyway (a get's output file).
    A consumer can go one copy further and lend the buffers themselves
    (``Buffers.lend``): a large piece is then decrypted into a buffer of its own,
    so a get's output is written to the disk from where TLS put it.
    """

    def __init__(self, stream_id: int, idle_s: float, consumed: Consumed) -> None:
        self._stream_id = stream_id
        self._idle_s = idle_s
        self._consumed = consumed
        # Items: (data, budget bytes), None for the end, or a RemoteError the sender raised mid-stream.
        self._send, self._receive = trio.open_memory_channel[tuple[Piece, int] | RemoteError | None](
            BODY_BUFFER_ITEMS_MAX
        )
        self.held_bytes = 0
        self.finished = False
        # Where the reader gets buffers for large pieces from, once the consumer lends them.
        self.lender: Lender | None = None

    def push(self, item: Piece | RemoteError | None, held_bytes: int = 0) -> None:
        """Called by the reader with what the mux let through, which the buffer always has room for."""
        try:
            self._send.send_nowait((item, held_bytes) if isinstance(item, PIECE_TYPES) else item)
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
        while (data := await self._next()) is not None:
            yield data if type(data) is bytes else bytes(data)

    def buffers(self) -> "Buffers":
        """The pieces as they came, uncopied (see the class): read them, or keep them."""
        return Buffers(self)

    async def _next(self) -> Piece | None:
        """The next piece (its budget bytes and credit given back), or None at the body's end."""
        try:
            with trio.fail_after(self._idle_s):
                item = await self._receive.receive()
        except trio.EndOfChannel:
            raise ConnectionClosed(f"stream {self._stream_id} ended before its end marker") from None
        except trio.TooSlowError:
            raise RequestTimeout(f"no data on stream {self._stream_id} for {self._idle_s} s") from None
        if item is None:
            self.finished = True
            return None
        if isinstance(item, RemoteError):
            self.finished = True
            raise item
        data, held_bytes = item
        self.held_bytes -= held_bytes
        await self._consumed(self._stream_id, data, held_bytes)
        return data

    async def drain(self) -> int:
        """Read the body to its end, discarding it; returns the byte count."""
        total = 0
        async for data in self.buffers():  # counted, not kept: no copy
            total += len(data)
        return total


class Buffers:
    """A body's pieces as they came (``BodyReader.buffers``), and the consumer's way to lend
    the buffers large pieces are decrypted into.

    ``lend(lender)`` is for a consumer that owns buffers the pieces should land in (a get's
    aligned output stage, ``client/direct.py``): from the next large frame on, the reader
    asks ``lender`` for each one's buffer, and the piece yielded is that buffer; what
    arrived before is yielded as it came. The consumer must not reuse a lent buffer it
    has not yet been given back as a piece.
    """

    __slots__ = ("_reader",)

    def __init__(self, reader: BodyReader) -> None:
        self._reader = reader

    def lend(self, lender: Lender | None) -> None:
        """Have large pieces decrypted into ``lender``'s buffers from now on (None: stop)."""
        self._reader.lender = lender

    def __aiter__(self) -> "Buffers":
        return self

    async def __anext__(self) -> Piece:
        if self._reader.finished:
            raise StopAsyncIteration
        data = await self._reader._next()
        if data is None:
            raise StopAsyncIteration
        return data


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


