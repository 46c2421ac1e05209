"""The mutual-TLS transport over real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import ssl
import struct

import pytest
import trio

from p2pfs import errors, identity, net, wire
from p2pfs.address import Address
from p2pfs.wire import ErrorCode, FrameKind, Role

from wire_helpers import Echo

FAST = net.NetConfig(handshake_timeout_s=1.0, stream_idle_timeout_s=5.0)


@wire.message(60001, senders=(Role.NODE, Role.CLIENT))
class SleepThenAnswer(wire.Message):
    """Test-only request: the handler sleeps, then answers with the same message."""

    delay_s: float
    tag: int


@wire.message(60002, senders=(Role.NODE, Role.CLIENT), takes_body=True)
class Upload(wire.Message):
    """Test-only request with a streamed body; the answer carries its size."""

    size_bytes: int


@wire.message(60003, senders=(Role.NODE, Role.CLIENT))
class Download(wire.Message):
    """Test-only request answered with a streamed body of ``size_bytes``."""

    size_bytes: int


@wire.message(60004, senders=(Role.NODE,))
class NodeOnly(wire.Message):
    """Test-only: a message clients may not send."""

    value: int


FAIL_MIDWAY_BYTES = 1_000_001  # a Download of this size fails after sending its bytes


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


class EchoHandlers:
    def __init__(self) -> None:
        self.oneway: list[wire.Message] = []
        self.arrived = trio.Event()

    async def handle_request(self, request: net.IncomingRequest):
        msg = request.msg
        if isinstance(msg, Echo):
            return msg
        if isinstance(msg, SleepThenAnswer):
            await trio.sleep(msg.delay_s)
            return msg
        if isinstance(msg, Upload):
            received = bytearray()
            async for data in request.body:
                received += data
            if bytes(received) != pattern(msg.size_bytes):
                raise net.RemoteError(ErrorCode.CORRUPT, "body differs")
            return Upload(len(received))
        if isinstance(msg, Download):
            async def body(send):
                data = pattern(msg.size_bytes)
                for start in range(0, len(data), 300_000):
                    await send(data[start : start + 300_000])
                if msg.size_bytes == FAIL_MIDWAY_BYTES:
                    raise net.RemoteError(ErrorCode.CORRUPT, "went bad midway")
            return net.Reply(msg, body)
        if isinstance(msg, NodeOnly):
            return msg
        raise net.RemoteError(ErrorCode.BAD_REQUEST, "unexpected")

    def handle_oneway(self, conn, msg) -> None:
        self.oneway.append(msg)
        self.arrived.set()


@pytest.fixture
async def server(nursery, make_identity):
    ident = make_identity(Role.NODE)
    handlers = EchoHandlers()
    endpoint = net.Endpoint(ident, Address("127.0.0.1", 0), handlers, config=FAST)
    await nursery.start(endpoint.run)
    endpoint.handlers = handlers
    endpoint.address = Address("127.0.0.1", endpoint.bound_port)
    return endpoint


async def test_node_ids_known_on_both_ends(server, make_identity, nursery):
    client_ident = make_identity(Role.NODE)
    client = net.Endpoint(client_ident, Address("127.0.0.1", 0), EchoHandlers(), config=FAST)
    await nursery.start(client.run)
    conn = await client.connect(server.address)
    assert conn.peer.node_id == server.identity.node_id
    assert conn.peer.role is Role.NODE
    assert await conn.request(Echo(b"hi"), timeout_s=5) == Echo(b"hi")
    # The accepting end knows who dialled: it can reuse the connection the other way.
    with trio.fail_after(5):
        while not server.connections():
            await trio.sleep(0.01)
    (back,) = server.connections()
    assert back.peer.node_id == client_ident.node_id
    assert await back.request(Echo(b"back"), timeout_s=5) == Echo(b"back")


async def test_client_identity_connects_as_client(server, make_identity):
    client_ident = make_identity(Role.CLIENT)
    async with net.client_connection(client_ident, server.address, config=FAST) as conn:
        assert conn.peer.node_id == server.identity.node_id
        assert await conn.request(Echo(b"x"), timeout_s=5) == Echo(b"x")
    # A client connection is never put into the node pool.
    assert all(c.peer.role is Role.NODE for c in server.connections())


async def good_connection_still_works(server, make_identity) -> None:
    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        assert await conn.request(Echo(b"ok"), timeout_s=5) == Echo(b"ok")


@pytest.mark.parametrize(
    "case", ["other_ca", "self_signed", "expired", "not_yet_valid"]
)
async def test_bad_certificates_are_rejected(server, make_identity, tmp_path, case, caplog):
    caplog.set_level(logging.INFO)
    if case == "other_ca":
        other = identity.create_ca()
        bad = make_identity(Role.CLIENT, authority=other)
    elif case == "self_signed":
        # A "CA" of its own that issues itself: the certificate chains to nothing we trust.
        own = identity.create_ca()
        bad = identity.create_identity(tmp_path / "self", own, Role.NODE)
    elif case == "expired":
        now = datetime.datetime.now(datetime.timezone.utc)
        bad = make_identity(
            Role.CLIENT,
            not_valid_before=now - datetime.timedelta(days=10),
            not_valid_after=now - datetime.timedelta(days=1),
        )
    else:
        now = datetime.datetime.now(datetime.timezone.utc)
        bad = make_identity(
            Role.CLIENT,
            not_valid_before=now + datetime.timedelta(days=1),
            not_valid_after=now + datetime.timedelta(days=10),
        )
    # The bad party presents the server's own CA as trusted, so only the server's check can stop it.
    (bad.directory / identity.CA_CERT_FILE).write_bytes((server.identity.ca_path).read_bytes())
    bad = identity.load_identity(bad.directory)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(good_connection_still_works, server, make_identity)
        # The server's alert says why: the client learns its certificate was refused (an
        # authentication failure), not that the node is down.
        with pytest.raises(net.HandshakeError) as info:
            async with net.client_connection(bad, server.address, config=FAST) as conn:
                await conn.request(Echo(b"x"), timeout_s=5)
    assert isinstance(info.value, errors.AuthError)
    assert not isinstance(info.value, errors.Unavailable)
    assert any("rejected" in r.getMessage() for r in caplog.records)


async def test_dialler_rejects_a_server_from_another_ca(make_identity, nursery, tmp_path):
    other_ca = identity.create_ca()
    impostor = identity.create_identity(tmp_path / "impostor", other_ca, Role.NODE)
    endpoint = net.Endpoint(impostor, Address("127.0.0.1", 0), EchoHandlers(), config=FAST)
    await nursery.start(endpoint.run)
    with pytest.raises(net.HandshakeError, match="CERTIFICATE_VERIFY_FAILED") as info:
        async with net.client_connection(
            make_identity(Role.CLIENT), Address("127.0.0.1", endpoint.bound_port), config=FAST
        ):
            pass
    assert isinstance(info.value, errors.AuthError)


async def test_client_certificate_cannot_accept_connections(make_identity):
    with pytest.raises(identity.IdentityError):
        make_identity(Role.CLIENT).server_context()


async def raw_tls(ident: identity.Identity, address: Address) -> trio.SSLStream:
    tcp = await trio.open_tcp_stream(address.host, address.port)
    stream = trio.SSLStream(tcp, ident.client_context(), server_hostname=None)
    await stream.do_handshake()
    return stream


async def read_until_closed(stream: trio.SSLStream) -> None:
    with trio.fail_after(5):
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, ssl.SSLError):
            pass


async def test_client_claiming_to_be_a_node_is_rejected(server, make_identity, caplog):
    caplog.set_level(logging.INFO)
    client_ident = make_identity(Role.CLIENT)
    stream = await raw_tls(client_ident, server.address)
    forged = wire.Hello(wire.PROTOCOL_VERSION, client_ident.cluster_id, "node", "127.0.0.1", 9)
    await stream.send_all(
        wire.encode_frame(wire.Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, wire.encode_message(forged)))
    )
    await read_until_closed(stream)
    await good_connection_still_works(server, make_identity)
    assert any("claims to be a node" in r.getMessage() for r in caplog.records)


async def test_client_sending_a_node_message_is_cut_off(server, make_identity, caplog):
    caplog.set_level(logging.INFO)
    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        with pytest.raises(net.ConnectionClosed):
            await conn.request(NodeOnly(1), timeout_s=5)
    await good_connection_still_works(server, make_identity)
    assert any("may not send NodeOnly" in r.getMessage() for r in caplog.records)


async def test_plain_tcp_garbage_is_rejected(server, make_identity, caplog):
    caplog.set_level(logging.INFO)
    tcp = await trio.open_tcp_stream(server.address.host, server.address.port)
    await tcp.send_all(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 10)
    with trio.fail_after(5):
        try:
            while await tcp.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    await good_connection_still_works(server, make_identity)
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


async def test_silent_peer_is_dropped_after_the_handshake_timeout(server, make_identity):
    tcp = await trio.open_tcp_stream(server.address.host, server.address.port)
    # Say nothing: the server must hang up by itself within its handshake timeout.
    with trio.fail_after(FAST.handshake_timeout_s + 3):
        try:
            assert await tcp.receive_some(65536) == b""
        except trio.BrokenResourceError:
            pass
    await good_connection_still_works(server, make_identity)


async def listener_that_never_speaks(task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A TCP port that accepts and then says nothing, like a frozen node."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        task_status.started(Address("127.0.0.1", listener.socket.getsockname()[1]))
        tcp = await listener.accept()
        async with tcp:  # held open: a closed socket would answer with an EOF, not with silence
            await trio.sleep_forever()


async def listener_that_speaks_http(task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A TCP port where some other service answers, not TLS."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        task_status.started(Address("127.0.0.1", listener.socket.getsockname()[1]))
        while True:
            tcp = await listener.accept()
            with trio.move_on_after(5):
                await tcp.receive_some(65536)
                await tcp.send_all(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            await tcp.aclose()


async def test_a_silent_node_is_unavailable_not_an_authentication_failure(make_identity, nursery):
    address = await nursery.start(listener_that_never_speaks)
    config = net.NetConfig(handshake_timeout_s=0.3)
    with trio.fail_after(5):
        with pytest.raises(net.ConnectError, match="did not complete the handshake") as info:
            await net.dial(make_identity(Role.NODE), address, config=config)
    assert isinstance(info.value, errors.Unavailable)
    assert not isinstance(info.value, (errors.AuthError, net.HandshakeError))


async def test_a_port_that_does_not_speak_tls_is_unavailable(make_identity, nursery):
    address = await nursery.start(listener_that_speaks_http)
    with trio.fail_after(5):
        with pytest.raises(net.ConnectError, match="TLS handshake failed") as info:
            await net.dial(make_identity(Role.NODE), address, config=FAST)
    assert isinstance(info.value, errors.Unavailable)
    assert not isinstance(info.value, (errors.AuthError, net.HandshakeError))


@pytest.mark.parametrize(
    "bad_frame",
    [
        struct.pack(">IBIH", 2**31, FrameKind.REQUEST, 1, 2),  # oversized
        struct.pack(">IBIH", 7, 99, 1, 2),  # unknown frame kind
        wire.frame_header(FrameKind.REQUEST, 1, 59999, 3) + b"abc",  # unknown message type
        wire.frame_header(FrameKind.REQUEST, 1, Echo.TYPE, 3) + b"\xc1\xc1\xc1",  # malformed
        wire.frame_header(FrameKind.REQUEST, 1, Echo.TYPE, 2) + b"\x91\x05",  # wrong field type
    ],
    ids=["oversized", "unknown-kind", "unknown-type", "malformed", "wrong-field-type"],
)
async def test_bad_frames_close_only_that_connection(server, make_identity, bad_frame, caplog):
    caplog.set_level(logging.INFO)
    client_ident = make_identity(Role.CLIENT)
    async with net.client_connection(client_ident, server.address, config=FAST) as bystander:
        stream = await raw_tls(client_ident, server.address)
        hello = wire.Hello(wire.PROTOCOL_VERSION, client_ident.cluster_id, "client", "", 0)
        await stream.send_all(
            wire.encode_frame(wire.Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, wire.encode_message(hello)))
        )
        await stream.send_all(bad_frame)
        await read_until_closed(stream)
        assert await bystander.request(Echo(b"still"), timeout_s=5) == Echo(b"still")
    assert any("protocol error" in r.getMessage() or "closing connection" in r.getMessage()
               for r in caplog.records)


async def test_many_concurrent_requests_share_one_connection(server, make_identity):
    results: dict[int, wire.Message] = {}
    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        async def one(tag: int) -> None:
            # Later requests finish first: answers must still reach the right caller.
            results[tag] = await conn.request(SleepThenAnswer((200 - tag) / 2000, tag), timeout_s=10)

        async with trio.open_nursery() as nursery:
            for tag in range(200):
                nursery.start_soon(one, tag)
    assert results == {tag: SleepThenAnswer((200 - tag) / 2000, tag) for tag in range(200)}


async def test_request_past_its_deadline_times_out_and_the_connection_stays_usable(server, make_identity):
    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        with pytest.raises(net.RequestTimeout):
            await conn.request(SleepThenAnswer(30.0, 1), timeout_s=0.2)
        assert await conn.request(Echo(b"after"), timeout_s=5) == Echo(b"after")
        # The server cancelled the abandoned handler instead of running it on.
        with trio.fail_after(5):
            while conn._pending:
                await trio.sleep(0.01)


async def test_cancelled_request_leaves_the_connection_usable(server, make_identity):
    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        with trio.move_on_after(0.2):
            await conn.request(SleepThenAnswer(30.0, 1), timeout_s=60)
        assert await conn.request(Echo(b"after"), timeout_s=5) == Echo(b"after")


async def test_streamed_bodies_both_ways(server, make_identity):
    size = 20 * 1024 * 1024 + 7
    data = pattern(size)

    async def body():
        for start in range(0, size, 1 << 20):
            yield data[start : start + (1 << 20)]

    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        assert await conn.request(Upload(size), timeout_s=30, body=body()) == Upload(size)
        received = bytearray()
        async with conn.open_request(Download(size), timeout_s=30) as response:
            assert response.msg == Download(size)
            async for chunk in response.body:
                received += chunk
        assert bytes(received) == data
        # Requests interleave with streams on the same connection.
        assert await conn.request(Echo(b"after"), timeout_s=5) == Echo(b"after")


async def test_error_midway_through_a_streamed_answer_reaches_the_reader(server, make_identity):
    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        received = bytearray()
        with pytest.raises(net.RemoteError, match="went bad midway"):
            async with conn.open_request(Download(FAIL_MIDWAY_BYTES), timeout_s=30) as response:
                async for chunk in response.body:
                    received += chunk
        assert bytes(received) == pattern(FAIL_MIDWAY_BYTES)
        assert await conn.request(Echo(b"after"), timeout_s=5) == Echo(b"after")


async def test_error_answer_during_upload_stops_the_upload(server, make_identity):
    async def wrong_body():
        for _ in range(100):
            yield b"\xff" * (1 << 20)

    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        with pytest.raises(net.RemoteError) as info:
            await conn.request(Upload(10), timeout_s=30, body=wrong_body())
        assert info.value.code is ErrorCode.CORRUPT
        assert await conn.request(Echo(b"after"), timeout_s=5) == Echo(b"after")


async def test_oneway_messages_arrive(server, make_identity, nursery):
    client = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), EchoHandlers(), config=FAST)
    await nursery.start(client.run)
    assert await client.send_oneway(server.address, Echo(b"gossip"))
    with trio.fail_after(5):
        await server.handlers.arrived.wait()
    assert server.handlers.oneway == [Echo(b"gossip")]


async def test_pool_backs_off_from_an_unreachable_address(make_identity, nursery):
    client = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), EchoHandlers(), config=FAST)
    await nursery.start(client.run)
    # A port nobody listens on: bind and close to find one.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        dead = Address("127.0.0.1", sock.getsockname()[1])
    with pytest.raises(net.ConnectError, match="cannot connect"):
        await client.connect(dead)
    with pytest.raises(net.ConnectError, match="retrying"):
        await client.connect(dead)
    assert not await client.send_oneway(dead, Echo(b"x"))


async def test_pool_reconnects_after_the_peer_restarts(make_identity, nursery):
    server_ident = make_identity(Role.NODE)
    client = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), EchoHandlers(), config=FAST)
    await nursery.start(client.run)
    async with trio.open_nursery() as first_life:
        first = net.Endpoint(server_ident, Address("127.0.0.1", 0), EchoHandlers(), config=FAST)
        await first_life.start(first.run)
        address = Address("127.0.0.1", first.bound_port)
        assert await client.request(address, Echo(b"1"), timeout_s=5) == Echo(b"1")
        first_life.cancel_scope.cancel()
    second = net.Endpoint(server_ident, address, EchoHandlers(), config=FAST)
    await nursery.start(second.run)
    with trio.fail_after(10):
        while True:
            try:
                reply = await client.request(address, Echo(b"2"), timeout_s=2, node_id=server_ident.node_id)
                break
            except net.NetError:
                await trio.sleep(0.05)
    assert reply == Echo(b"2")


async def test_dial_checks_the_expected_node_id(server, make_identity, nursery):
    client = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), EchoHandlers(), config=FAST)
    await nursery.start(client.run)
    with pytest.raises(net.HandshakeError, match="expected"):
        await client.connect(server.address, node_id="0" * 64)


async def test_a_dial_outlives_the_caller_that_gave_up_on_it(server, make_identity, nursery):
    # On a loaded machine a handshake can take longer than one gossip send's deadline (1 s). The
    # dial must go on when that caller gives up, so that the next send finds the connection instead
    # of starting, and abandoning, the same handshake again.
    handshake_delay_s = 0.5

    async def slow_forwarder(inbound: trio.SocketStream) -> None:
        await trio.sleep(handshake_delay_s)  # the accept is slow, as under load
        outbound = await trio.open_tcp_stream("127.0.0.1", server.address.port)

        async def pump(source, sink) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async for data in source:
                    await sink.send_all(data)

        async with outbound, trio.open_nursery() as pumps:
            pumps.start_soon(pump, inbound, outbound)
            pumps.start_soon(pump, outbound, inbound)

    (listener,) = await nursery.start(functools.partial(trio.serve_tcp, slow_forwarder, 0, host="127.0.0.1"))
    slow_address = Address("127.0.0.1", listener.socket.getsockname()[1])
    client = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), EchoHandlers(), config=FAST)
    await nursery.start(client.run)
    with trio.move_on_after(handshake_delay_s / 5) as gave_up:
        await client.connect(slow_address, node_id=server.identity.node_id)
    assert gave_up.cancelled_caught
    with trio.fail_after(10):
        while not client.connections():
            await trio.sleep(0.01)
    (conn,) = client.connections()
    assert conn.peer.node_id == server.identity.node_id
    assert await client.request(slow_address, Echo(b"next"), timeout_s=5,
                                node_id=server.identity.node_id) == Echo(b"next")
