"""The client's small put and get (issue 14, small files).

``Client.put`` reads a source announced at most ``SMALL_FILE_BYTES_MAX`` long on the event
loop, and ``Client.get`` writes a file announced that small there too; anything larger, of
unknown size, or longer than announced still goes through ``trio.to_thread`` (a slow disk
or pipe must not hold up the connection's other requests). To a node that offered
``wire.ALPN_SMALL_FILES`` in the TLS handshake, a small put goes in its request
(``PutSmallFile``) and a get asks for the file in its answer (``GetSmallFile``); to any
other node, the old messages, with bodies. Driven against a stand-in connection: what is
checked is what was sent, which calls hop, and that the bytes are the same.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest
import trio

from p2pfs import errors, wire
from p2pfs.address import Address
from p2pfs.client.node import READ_BYTES, SMALL_FILE_BYTES_MAX, Client
from p2pfs.net.streams import Response
from p2pfs.replication import client_messages as cm
from p2pfs.replication import messages as dm
from p2pfs.storage import FileHasher

NODE = Address("127.0.0.1", 1)


class _Connection:
    """A node before the small-file messages (no ALPN): a put's whole body is read, a get is
    answered with ``content`` as the body. ``requests``: every message sent to it."""

    alpn_protocol: str | None = None

    def __init__(self, content: bytes = b"", announced_bytes: int | None = None) -> None:
        self.content = content
        self.announced_bytes = len(content) if announced_bytes is None else announced_bytes
        self.received = b""
        self.requests: list[wire.Message] = []

    async def request(self, msg, *, timeout_s, body=None):
        self.requests.append(msg)
        assert isinstance(msg, dm.PutFile) and body is not None
        async for data in body:
            self.received += data
        return self._stored(msg.name)

    def _stored(self, name: str) -> dm.PutFileReply:
        hasher = FileHasher()
        hasher.update(self.received)
        return dm.PutFileReply(name, len(self.received), hasher.digest(), 1, 0, 0)

    def _hash(self) -> bytes:
        hasher = FileHasher()
        hasher.update(self.content)
        return hasher.digest()

    @contextlib.asynccontextmanager
    async def open_request(self, msg, *, timeout_s):
        self.requests.append(msg)
        assert isinstance(msg, dm.GetFile)
        yield self._streamed(msg.name)

    def _streamed(self, name: str) -> Response:
        """The old answer to a get: its header, then ``content`` as the body in 256 KiB pieces."""

        async def body():
            for start in range(0, len(self.content), READ_BYTES // 4):
                yield self.content[start : start + READ_BYTES // 4]

        return Response(dm.GetFileReply(name, self.announced_bytes, self._hash()), body())


class _SmallFilesConnection(_Connection):
    """A node that speaks the small-file messages: a file up to ``inline_bytes_max`` is held inline."""

    alpn_protocol = wire.ALPN_SMALL_FILES

    def __init__(self, content: bytes = b"", inline_bytes_max: int = 16 * 1024, answer_bytes: bytes | None = None):
        super().__init__(content)
        self.inline_bytes_max = inline_bytes_max
        self.answer_bytes = content if answer_bytes is None else answer_bytes

    async def request(self, msg, *, timeout_s, body=None):
        if isinstance(msg, cm.PutSmallFile):
            self.requests.append(msg)
            assert body is None
            self.received = msg.content
            return self._stored(msg.name)
        return await super().request(msg, timeout_s=timeout_s, body=body)

    @contextlib.asynccontextmanager
    async def open_request(self, msg, *, timeout_s):
        if not isinstance(msg, cm.GetSmallFile):
            async with super().open_request(msg, timeout_s=timeout_s) as response:
                yield response
            return
        self.requests.append(msg)
        if len(self.content) <= self.inline_bytes_max:
            yield Response(cm.SmallFile(msg.name, len(self.answer_bytes), self._hash(), self.answer_bytes), None)
            return
        yield self._streamed(msg.name)


@pytest.fixture
def hops(monkeypatch) -> list[object]:
    """Every function ``trio.to_thread.run_sync`` is asked to run, in order."""
    called: list[object] = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):
        called.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    return called


async def test_a_small_put_reads_its_source_without_a_thread_hop(hops) -> None:
    content = os.urandom(4096)
    conn = _Connection()
    reply = await Client(conn, NODE).put(io.BytesIO(content), "small", len(content))
    assert conn.received == content
    assert reply.size_bytes == len(content)
    assert hops == []


async def test_a_put_at_the_cap_is_read_on_the_loop_and_one_past_it_in_threads(hops) -> None:
    at_cap = os.urandom(SMALL_FILE_BYTES_MAX)
    conn = _Connection()
    await Client(conn, NODE).put(io.BytesIO(at_cap), "at-cap", len(at_cap))
    assert conn.received == at_cap and hops == []
    past_cap = at_cap + b"x"
    conn = _Connection()
    await Client(conn, NODE).put(io.BytesIO(past_cap), "past-cap", len(past_cap))
    assert conn.received == past_cap
    assert len(hops) == 2  # the bytes, then the end of the source


async def test_a_put_of_unknown_size_reads_in_threads(hops) -> None:
    content = os.urandom(100)
    conn = _Connection()
    await Client(conn, NODE).put(io.BytesIO(content), "unknown", -1)
    assert conn.received == content
    assert len(hops) == 2


async def test_a_source_longer_than_announced_goes_back_to_threads(hops) -> None:
    """What follows the announced size is read in threads: the loop never reads an unbounded stream."""
    content = os.urandom(3 * READ_BYTES)
    conn = _Connection()
    await Client(conn, NODE).put(io.BytesIO(content), "liar", 10)
    assert conn.received == content  # all of it goes, as before: the node refuses the size
    assert len(hops) == 3  # the 2nd and 3rd MiB and the end; the 1st MiB was read on the loop


async def test_a_small_get_writes_without_a_thread_hop(hops) -> None:
    content = os.urandom(4096)
    sink = io.BytesIO()
    reply = await Client(_Connection(content), NODE).get("small", sink)
    assert sink.getvalue() == content
    assert reply.size_bytes == len(content)
    assert hops == []


async def test_a_large_get_writes_in_threads(hops) -> None:
    content = os.urandom(READ_BYTES)
    sink = io.BytesIO()
    await Client(_Connection(content), NODE).get("large", sink)
    assert sink.getvalue() == content
    assert len(hops) == 4  # one per piece of the body


async def test_a_get_announced_small_that_runs_long_writes_the_rest_in_threads(hops) -> None:
    """A node that announces a small file and sends more: only the first 64 KiB are written on the loop."""
    content = os.urandom(READ_BYTES)
    sink = io.BytesIO()
    with pytest.raises(errors.PeerFault, match="arrived damaged"):
        await Client(_Connection(content, announced_bytes=100), NODE).get("liar", sink)
    assert len(hops) == 4  # each 256 KiB piece is past the cap


# --- the small-file messages, to a node that offered them -------------------------------------


async def test_a_small_put_goes_in_its_request_to_a_node_that_speaks_it(hops) -> None:
    content = os.urandom(4096)
    conn = _SmallFilesConnection()
    progress: list[int] = []
    reply = await Client(conn, NODE).put(io.BytesIO(content), "small", len(content), progress.append)
    assert [type(msg) for msg in conn.requests] == [cm.PutSmallFile]
    assert conn.requests[0].size_bytes == len(content) and conn.received == content
    assert reply.size_bytes == len(content) and progress == [len(content)]
    assert hops == []


async def test_an_empty_put_goes_in_its_request(hops) -> None:
    conn = _SmallFilesConnection()
    await Client(conn, NODE).put(io.BytesIO(b""), "empty", 0)
    assert conn.requests == [cm.PutSmallFile("empty", 0, b"")]


async def test_a_small_put_is_streamed_to_a_node_that_does_not_speak_it() -> None:
    content = os.urandom(4096)
    conn = _Connection()
    await Client(conn, NODE).put(io.BytesIO(content), "small", len(content))
    assert conn.requests == [dm.PutFile("small", len(content))]  # the old message, with its body
    assert conn.received == content


async def test_a_put_longer_than_announced_or_of_unknown_size_is_streamed(hops) -> None:
    """Streamed as before, so that the node refuses the size as before: nothing is cut short here."""
    content = os.urandom(5000)
    for announced in (100, -1):
        conn = _SmallFilesConnection()
        await Client(conn, NODE).put(io.BytesIO(content), "odd", announced)
        assert conn.requests == [dm.PutFile("odd", announced)]
        assert conn.received == content


async def test_a_put_past_the_cap_is_streamed() -> None:
    content = os.urandom(SMALL_FILE_BYTES_MAX + 1)
    conn = _SmallFilesConnection()
    await Client(conn, NODE).put(io.BytesIO(content), "large", len(content))
    assert conn.requests == [dm.PutFile("large", len(content))]
    assert conn.received == content


async def test_a_small_get_comes_in_its_answer_from_a_node_that_speaks_it(hops) -> None:
    content = os.urandom(4096)
    conn = _SmallFilesConnection(content)
    sink = io.BytesIO()
    sizes: list[int] = []
    reply = await Client(conn, NODE).get("small", sink, on_size=sizes.append)
    assert conn.requests == [cm.GetSmallFile("small")]
    assert sink.getvalue() == content and sizes == [len(content)]
    assert reply == dm.GetFileReply("small", len(content), conn._hash())  # the answer's type, as before
    assert hops == []


async def test_a_get_of_a_file_in_chunks_is_streamed_by_a_node_that_speaks_it() -> None:
    content = os.urandom(20 * 1024)
    conn = _SmallFilesConnection(content, inline_bytes_max=16 * 1024)
    sink = io.BytesIO()
    await Client(conn, NODE).get("chunked", sink)
    assert conn.requests == [cm.GetSmallFile("chunked")]
    assert sink.getvalue() == content


async def test_a_get_asks_the_old_way_of_a_node_that_does_not_speak_it() -> None:
    content = os.urandom(4096)
    conn = _Connection(content)
    sink = io.BytesIO()
    await Client(conn, NODE).get("small", sink)
    assert conn.requests == [dm.GetFile("small")]
    assert sink.getvalue() == content


async def test_a_small_file_that_does_not_match_its_hash_is_refused() -> None:
    content = os.urandom(4096)
    damaged = bytes([content[0] ^ 1]) + content[1:]
    with pytest.raises(errors.PeerFault, match="arrived damaged"):
        await Client(_SmallFilesConnection(content, answer_bytes=damaged), NODE).get("small", io.BytesIO())
