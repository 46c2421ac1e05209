"""The client's small put and get run without a worker-thread hop (issue 14, small files).

``Client.put`` reads a source announced at most ``SMALL_FILE_BYTES_MAX`` long on the event
loop, and ``Client.get`` writes a file announced that small there too; anything larger, of
unknown size, or longer than announced still goes through ``trio.to_thread`` (a slow disk
or pipe must not hold up the connection's other requests). Driven against a stand-in
connection: what is measured is which calls hop, and that the bytes are the same.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest
import trio

from p2pfs import errors
from p2pfs.address import Address
from p2pfs.client.node import READ_BYTES, SMALL_FILE_BYTES_MAX, Client
from p2pfs.net.streams import Response
from p2pfs.replication import messages as dm
from p2pfs.storage import FileHasher

NODE = Address("127.0.0.1", 1)


class _Connection:
    """Answers a put by reading its whole body, and a get with ``content`` as the body."""

    def __init__(self, content: bytes = b"", announced_bytes: int | None = None) -> None:
        self.content = content
        self.announced_bytes = len(content) if announced_bytes is None else announced_bytes
        self.received = b""

    async def request(self, msg, *, timeout_s, body=None):
        assert isinstance(msg, dm.PutFile)
        async for data in body:
            self.received += data
        hasher = FileHasher()
        hasher.update(self.received)
        return dm.PutFileReply(msg.name, len(self.received), hasher.digest(), 1, 0, 0)

    @contextlib.asynccontextmanager
    async def open_request(self, msg, *, timeout_s):
        assert isinstance(msg, dm.GetFile)
        hasher = FileHasher()
        hasher.update(self.content)

        async def body():
            for start in range(0, len(self.content), READ_BYTES // 4):
                yield self.content[start : start + READ_BYTES // 4]

        yield Response(dm.GetFileReply(msg.name, self.announced_bytes, hasher.digest()), body())


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
