"""The bandwidth cap of client transfers, changeable while the node runs.

Clients' file bodies through this node (put bodies it receives, get bodies it
sends) share one token bucket, ``[replication] client_bytes_per_s``, so that a
node serving many clients at once leaves room on its link for replication and
repair (which have their own budget, ``repair_bytes_per_s``). A reload changes
the rate at once, for transfers already running too. Holding back a put's body
holds back the credit its stream grants, so the client slows down rather than
the node buffering. A small file carried whole in a message rather than a body
(``client_messages.PutSmallFile`` and its answer ``SmallFile``) is charged the same
before the request is served or the answer sent: it cannot be slowed down part by part,
but it is at most 64 KiB, and the next one waits for the budget.

Transfers between nodes (a coordinator's chunk writes to replicas, repair) are
not counted here: the client's bytes are counted once, where they enter or
leave the cluster.
"""

from __future__ import annotations

from typing import AsyncIterable, AsyncIterator

import trio

from p2pfs import net, wire
from p2pfs.replication import client_messages as cm
from p2pfs.replication.healing import Pacer

# The bucket holds this many seconds of the rate: a short burst goes out at once,
# a long transfer averages the rate within about a second.
CLIENT_BURST_S = 1.0


class Throttle:
    """A byte budget shared by transfers, at a rate a reload may change; 0 means no cap.

    ``waited_s`` adds up the time transfers were held back (for the metrics: a cap
    that bites shows as a growing total).
    """

    def __init__(self, rate_bytes_per_s: int) -> None:
        self.rate_bytes_per_s = 0
        self.waited_s = 0.0
        self._pacer: Pacer | None = None
        self.set_rate(rate_bytes_per_s)

    def set_rate(self, rate_bytes_per_s: int) -> None:
        assert rate_bytes_per_s >= 0
        if rate_bytes_per_s == self.rate_bytes_per_s:
            return
        self.rate_bytes_per_s = rate_bytes_per_s
        # A fresh bucket: bytes taken at the old rate are not charged to the new one.
        self._pacer = Pacer(rate_bytes_per_s, rate_bytes_per_s * CLIENT_BURST_S) if rate_bytes_per_s else None

    async def take(self, size_bytes: int) -> None:
        """Wait until ``size_bytes`` fit in the budget (at once when there is no cap)."""
        if self._pacer is None:
            return
        delay_s = self._pacer.delay_s(size_bytes, trio.current_time())
        if delay_s > 0:
            self.waited_s += delay_s
            await trio.sleep(delay_s)

    async def take_in_message(self, msg: wire.Message) -> None:
        """Wait until a file carried in ``msg`` itself (the small-file messages) fits in the budget."""
        if isinstance(msg, (cm.PutSmallFile, cm.SmallFile)):
            await self.take(len(msg.content))

    def paced_request(self, request: net.IncomingRequest) -> net.IncomingRequest:
        """The request with its body (if any) read within the budget, whatever the rate becomes."""
        if request.body is None:
            return request
        return net.IncomingRequest(request.conn, request.msg, _PacedPieces(self, request.body))

    def paced_reply(self, answer: net.Reply) -> net.Reply:
        """The streamed answer with its body sent within the budget, whatever the rate becomes."""
        write_body = answer.body

        async def body(send) -> None:
            async def paced_send(data) -> None:
                await self.take(len(data))
                await send(data)

            await write_body(paced_send)

        return net.Reply(answer.msg, body)


class _PacedPieces:
    """A body's pieces, each let through once the budget has room for it. An iterator class
    rather than an async generator: a consumer that stops early leaves nothing to finalize."""

    def __init__(self, throttle: Throttle, pieces: AsyncIterable[bytes]) -> None:
        self._throttle = throttle
        self._pieces = pieces
        self._iterator: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> _PacedPieces:
        self._iterator = aiter(self._pieces)
        return self

    async def __anext__(self) -> bytes:
        assert self._iterator is not None
        piece = await anext(self._iterator)
        await self._throttle.take(len(piece))
        return piece
