"""A large frame's payload read straight into a buffer of its own (``wire.FrameDecoder.direct_buffer``).

TLS decrypts into that buffer and the frame hands it on as its payload: no copy between the
decryption and the message decoder or the body's consumer. The decoder counts the whole frame
from when its header is in, so the connection takes it from the memory budget before the buffer
is made, and a peer announcing a frame it never sends holds what the budget allows, no more.
"""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs import net, wire
from p2pfs.net.config import RECEIVE_BYTES_IDLE, STREAM_DATA_BYTES_MAX
from p2pfs.net.tls import TLSStream
from p2pfs.address import Address
from p2pfs.wire import Frame, FrameKind, Role

from wire_helpers import Echo

FAST = net.NetConfig(handshake_timeout_s=5.0, stream_idle_timeout_s=10.0)
LARGE_BYTES = wire.DIRECT_PAYLOAD_BYTES_MIN + 12_345


_BYTE_VALUES = bytes(range(256))


def _payload(size_bytes: int, seed: int = 0) -> bytes:
    start = seed % 256
    return (_BYTE_VALUES[start:] + _BYTE_VALUES[:start]) * (size_bytes // 256) + _BYTE_VALUES[: size_bytes % 256]


def test_a_large_frame_is_read_into_its_own_buffer_and_handed_on_as_it_is():
    payload = _payload(LARGE_BYTES)
    encoded = wire.encode_frame(Frame(FrameKind.STREAM_DATA, 5, 0, payload))
    decoder = wire.FrameDecoder()
    decoder.feed(encoded[: wire.FRAME_HEADER_BYTES + 1000])
    assert decoder.next_frame() is None
    # The whole frame is counted before its buffer exists: the budget is taken first.
    assert decoder.buffered_bytes == len(encoded)
    assert decoder.direct_bytes_due == LARGE_BYTES - 1000
    rest = memoryview(encoded)[wire.FRAME_HEADER_BYTES + 1000 :]
    buffers = set()
    while decoder.direct_bytes_due:
        view = decoder.direct_buffer()
        assert view is not None and len(view) == decoder.direct_bytes_due == len(rest)
        buffers.add(id(view.obj))
        count = min(len(view), 30_000)  # as a TLS read brings it: a piece at a time
        view[:count] = rest[:count]
        decoder.direct_received(count)
        rest = rest[count:]
        assert decoder.buffered_bytes == len(encoded)
    frame = decoder.next_frame()
    assert frame == Frame(FrameKind.STREAM_DATA, 5, 0, payload)
    assert buffers == {id(frame.payload)}  # the very buffer the bytes were written into
    assert decoder.buffered_bytes == 0 and decoder.direct_bytes_due == 0
    assert decoder.direct_buffer() is None and decoder.next_frame() is None


def test_small_frames_are_not_read_directly():
    encoded = wire.encode_frame(Frame(FrameKind.STREAM_DATA, 5, 0, _payload(wire.DIRECT_PAYLOAD_BYTES_MIN - 1)))
    decoder = wire.FrameDecoder()
    decoder.feed(encoded[:-1])
    assert decoder.next_frame() is None
    assert decoder.direct_buffer() is None and decoder.direct_bytes_due == 0
    assert decoder.buffered_bytes == len(encoded) - 1


def test_a_large_frame_of_an_unknown_kind_is_refused_when_complete():
    encoded = wire.encode_frame(Frame(FrameKind.STREAM_DATA, 5, 0, _payload(LARGE_BYTES)))
    decoder = wire.FrameDecoder()
    decoder.feed(encoded[:4] + bytes([99]) + encoded[5:-1])
    assert decoder.next_frame() is None
    decoder.feed(encoded[-1:])
    with pytest.raises(wire.WireError, match="unknown frame kind"):
        decoder.next_frame()


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_frames_decode_whatever_mix_of_fed_and_direct_reads_brings_them(data):
    sizes = data.draw(st.lists(st.sampled_from([0, 3, 1000, LARGE_BYTES, 2 * LARGE_BYTES + 1]), min_size=1, max_size=5))
    frames = [Frame(FrameKind.STREAM_DATA, i + 1, 0, _payload(size, i)) for i, size in enumerate(sizes)]
    stream = memoryview(b"".join(wire.encode_frame(f) for f in frames))
    decoder = wire.FrameDecoder()
    decoded: list[Frame] = []
    while stream:
        count = data.draw(st.integers(1, len(stream)))
        view = decoder.direct_buffer() if data.draw(st.booleans()) else None
        if view is not None:
            count = min(count, len(view))
            view[:count] = stream[:count]
            decoder.direct_received(count)
        else:
            decoder.feed(stream[:count])
        stream = stream[count:]
        decoded.extend(decoder.frames())
        assert decoder.buffered_bytes <= wire.FRAME_HEADER_BYTES + 2 * LARGE_BYTES + 1 + count
    assert decoded == frames
    assert decoder.buffered_bytes == 0


class _Handlers:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def handle_request(self, request: net.IncomingRequest):
        if request.body is not None:
            received = bytearray()
            async for piece in request.body:
                assert type(piece) is bytes  # what a body's consumers take (a chunk is passed on as it is)
                received += piece
            self.bodies.append(bytes(received))
        return request.msg

    def handle_oneway(self, conn, msg) -> None:
        raise AssertionError("no oneway messages here")


async def test_large_messages_and_bodies_cross_tls_whole_and_the_budget_comes_back(nursery, make_identity):
    handlers = _Handlers()
    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), handlers, config=FAST)
    await nursery.start(endpoint.run)
    address = Address("127.0.0.1", endpoint.bound_port)
    body = [_payload(size, seed) for seed, size in enumerate([LARGE_BYTES, 1 << 20, 17, 3 * LARGE_BYTES])]

    async def pieces():
        for piece in body:
            yield piece

    async with net.client_connection(make_identity(Role.CLIENT), address, config=FAST) as conn:
        for size in (LARGE_BYTES, 4 << 20, 100):
            msg = Echo(_payload(size, size))
            assert await conn.request(msg, timeout_s=30) == msg
        assert await conn.request(Echo(b"with a body"), timeout_s=30, body=pieces()) == Echo(b"with a body")
        assert handlers.bodies == [b"".join(body)]
        # Every frame's budget bytes went back (a large frame's were taken whole, before its buffer).
        with trio.fail_after(10):
            while endpoint.limits.memory.used_bytes > RECEIVE_BYTES_IDLE:  # one idle reader's read
                await trio.sleep(0.01)


def test_a_peer_announcing_a_large_frame_is_counted_for_all_of_it():
    """What the connection reserves before the buffer is made (the hostile-bytes test holds the node to it)."""
    decoder = wire.FrameDecoder()
    declared_body_bytes = wire.FRAME_SIZE_BYTES_MAX - 1
    decoder.feed(struct.pack(">IBIH", declared_body_bytes, FrameKind.STREAM_DATA, 1, 0))
    assert decoder.next_frame() is None
    assert decoder.buffered_bytes == 4 + declared_body_bytes
    assert decoder.direct_bytes_due == declared_body_bytes - 7


async def _tls_pair(make_identity) -> tuple[TLSStream, TLSStream]:
    """Two ends of TLS over a local socket pair, handshaken."""
    left, right = trio.socket.socketpair()
    server = TLSStream(trio.SocketStream(left), make_identity(Role.NODE).server_context(), server_side=True)
    client = TLSStream(trio.SocketStream(right), make_identity(Role.CLIENT).client_context(), server_side=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def test_a_direct_read_returns_only_with_its_buffer_full(make_identity):
    """``receive_into`` fills the frame's whole payload, however many socket reads it takes, so
    the connection's read loop runs once per large frame, not once per socket read."""
    sender, receiver = await _tls_pair(make_identity)
    data = _payload(3 * 64 * 1024 + 5)
    buffer = bytearray(len(data))
    returned: list[int] = []

    async def receive() -> None:
        returned.append(await receiver.receive_into(memoryview(buffer)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        for start in range(0, len(data), 64 * 1024):  # four pieces, the receiver waiting between them
            await trio.testing.wait_all_tasks_blocked()
            assert returned == [], "returned before its buffer was full"
            await sender.send_all(data[start : start + 64 * 1024])
    assert returned == [len(data)]
    assert buffer == data
    await sender.send_all(b"xy")  # and what follows is read as before
    assert await receiver.receive_some(100) == b"xy"


async def test_a_direct_read_cut_short_by_the_peer_returns_what_came(make_identity):
    sender, receiver = await _tls_pair(make_identity)
    buffer = bytearray(100_000)
    await sender.send_all(b"a" * 1000)
    await sender.aclose()
    with trio.fail_after(10):
        assert await receiver.receive_into(memoryview(buffer)) == 1000
        assert await receiver.receive_into(memoryview(buffer)[1000:]) == 0
    assert buffer[:1000] == b"a" * 1000


async def test_a_body_lends_its_large_pieces_uncopied_and_iterates_as_bytes(nursery, make_identity):
    """``BodyReader.buffers()`` hands a large piece on as the buffer it was decrypted into
    (a get's output copies it once, into its disk buffer); iterating gives bytes, as stores want."""
    pieces = [_payload(LARGE_BYTES, 1), b"small", _payload(1 << 20, 2)]

    class Streaming(_Handlers):
        async def handle_request(self, request):
            async def body(send) -> None:
                for piece in pieces:
                    await send(piece)

            return net.Reply(request.msg, body)

    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), Streaming(), config=FAST)
    await nursery.start(endpoint.run)
    address = Address("127.0.0.1", endpoint.bound_port)
    async with net.client_connection(make_identity(Role.CLIENT), address, config=FAST) as conn:
        async with conn.open_request(Echo(b"lend"), timeout_s=30) as response:
            lent = [piece async for piece in response.body.buffers()]
        async with conn.open_request(Echo(b"copy"), timeout_s=30) as response:
            copied = [piece async for piece in response.body]
    assert lent == pieces
    assert [type(piece) for piece in lent] == [bytearray, bytes, bytearray]
    assert copied == pieces
    assert all(type(piece) is bytes for piece in copied)


async def test_a_header_and_its_payload_leave_in_one_socket_write(make_identity):
    """A large frame's header and payload are encrypted one after the other and flushed together:
    one socket write (and one trio wait) per frame on the sending node, not two."""
    sender, receiver = await _tls_pair(make_identity)
    writes: list[int] = []
    transport_send_all = sender.transport_stream.send_all

    async def counted(data) -> None:
        writes.append(len(data))
        await transport_send_all(data)

    sender.transport_stream.send_all = counted
    header, payload = b"header", _payload(LARGE_BYTES)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send_all, header, payload)
        buffer = bytearray(len(header) + len(payload))
        assert await receiver.receive_into(memoryview(buffer)) == len(buffer)
    assert buffer == header + payload
    assert len(writes) == 1


async def test_a_scattered_body_piece_goes_as_one_frame_and_arrives_as_one_buffer(nursery, make_identity):
    """A get's coordinator sends the chunks it has ready in one frame (``net.Scattered``), parts
    uncopied; the reader gets them as one piece. One larger than a frame goes part by part."""
    chunks = [_payload(1 << 20, seed) for seed in range(4)]
    too_large = [_payload(3 << 20, 5), _payload(2 << 20, 6)]

    class Streaming(_Handlers):
        async def handle_request(self, request):
            async def body(send) -> None:
                await send(net.Scattered((b"", *chunks), sum(map(len, chunks))))
                await send(net.Scattered((b"", *too_large), sum(map(len, too_large))))

            return net.Reply(request.msg, body)

    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), Streaming(), config=FAST)
    await nursery.start(endpoint.run)
    address = Address("127.0.0.1", endpoint.bound_port)
    async with net.client_connection(make_identity(Role.CLIENT), address, config=FAST) as conn:
        async with conn.open_request(Echo(b"frames"), timeout_s=30) as response:
            pieces = [piece async for piece in response.body.buffers()]
    assert pieces[0] == b"".join(chunks)
    assert STREAM_DATA_BYTES_MAX == len(pieces[0])  # four chunks of 1 MiB: one frame
    assert b"".join(pieces[1:]) == b"".join(too_large)
    assert all(len(piece) <= STREAM_DATA_BYTES_MAX for piece in pieces)


async def test_a_consumer_that_lends_buffers_gets_its_large_pieces_decrypted_into_them(nursery, make_identity):
    """``Buffers.lend``: from then on each large piece lands in a buffer the consumer lent (a get's
    output stage), asked for at its exact size; small pieces come as bytes, and a large one the
    lender has no buffer for comes in one the reader made."""
    pieces = [_payload(LARGE_BYTES, 1), b"small", _payload(1 << 20, 2), _payload(1 << 20, 3)]
    lent_now = trio.Event()

    class Streaming(_Handlers):
        async def handle_request(self, request):
            async def body(send) -> None:
                await lent_now.wait()  # nothing is read before the lending: each piece is asked for
                for piece in pieces:
                    await send(piece)

            return net.Reply(request.msg, body)

    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), Streaming(), config=FAST)
    await nursery.start(endpoint.run)
    address = Address("127.0.0.1", endpoint.bound_port)
    owned = [bytearray(1 << 20), bytearray(1 << 20)]
    asked: list[int] = []

    def lender(size_bytes: int) -> memoryview | None:
        asked.append(size_bytes)
        return memoryview(owned[len(asked) - 1])[:size_bytes] if len(asked) <= len(owned) else None

    async with net.client_connection(make_identity(Role.CLIENT), address, config=FAST) as conn:
        async with conn.open_request(Echo(b"lend"), timeout_s=30) as response:
            buffers = response.body.buffers()
            buffers.lend(lender)
            lent_now.set()
            received = [piece async for piece in buffers]
    assert asked == [LARGE_BYTES, 1 << 20, 1 << 20]
    assert received == pieces
    assert [type(piece) for piece in received] == [memoryview, bytes, memoryview, bytearray]
    assert received[0].obj is owned[0] and received[2].obj is owned[1]
