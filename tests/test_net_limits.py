"""The listener's caps on what unauthenticated peers hold, in one process (see net/endpoint.py).

Loopback has one source address, so the per-address limit is lifted here to
reach the total cap (``INBOUND_CONNECTIONS_MAX``) and see what it sheds.
"""

from __future__ import annotations

import contextlib
import ssl
import struct

import pytest
import trio

from p2pfs import net, wire
from p2pfs.address import Address
from p2pfs.net import endpoint as endpoint_module
from p2pfs.net.connection import frame_read_allowed_s
from p2pfs.wire import FrameKind, Role

from wire_helpers import Echo

CAP = 4
# A handshake deadline far beyond the test, so only shedding can free a place.
SLOW = net.NetConfig(handshake_timeout_s=60.0)


class Handlers:
    async def handle_request(self, request):
        return request.msg

    def handle_oneway(self, conn, msg) -> None:
        pass


@pytest.fixture
async def capped_server(nursery, make_identity, monkeypatch):
    monkeypatch.setattr(endpoint_module, "INBOUND_CONNECTIONS_MAX", CAP)
    monkeypatch.setattr(endpoint_module, "UNAUTHENTICATED_PER_ADDRESS_MAX", 1000)
    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), Handlers(), config=SLOW)
    await nursery.start(endpoint.run)
    return Address("127.0.0.1", endpoint.bound_port)


async def _silent(address: Address, count: int) -> list[trio.SocketStream]:
    return [await trio.open_tcp_stream(address.host, address.port) for _ in range(count)]


async def test_at_the_cap_a_client_sheds_a_silent_connection(capped_server, make_identity):
    silent = await _silent(capped_server, CAP)
    with trio.fail_after(10):
        async with net.client_connection(make_identity(Role.CLIENT), capped_server) as conn:
            assert await conn.request(Echo(b"in"), timeout_s=5.0) == Echo(b"in")
        # The oldest silent connection was closed by the node: reading it ends.
        assert await silent[0].receive_some(1) == b""
    for stream in silent:
        await trio.aclose_forcefully(stream)


async def test_at_the_cap_an_idle_authenticated_connection_goes_before_a_refusal(capped_server, make_identity):
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            connections = [
                await stack.enter_async_context(net.client_connection(make_identity(Role.CLIENT), capped_server))
                for _ in range(CAP)
            ]
            # Every place is taken by an authenticated connection, all idle: a new one sheds the oldest.
            async with net.client_connection(make_identity(Role.CLIENT), capped_server) as newcomer:
                assert await newcomer.request(Echo(b"new"), timeout_s=5.0) == Echo(b"new")
            await connections[0].wait_closed()
            assert await connections[-1].request(Echo(b"kept"), timeout_s=5.0) == Echo(b"kept")


# Short read bounds, so the node gives up within the test; each test leaves the other bound long,
# so that only the one it is about can close the connection.
PARTIAL = net.NetConfig(frame_read_timeout_s=0.5, connection_idle_timeout_s=600.0)
IDLE = net.NetConfig(frame_read_timeout_s=600.0, connection_idle_timeout_s=1.0)
# Slack for a loaded machine between the node's deadline and the test's.
SLACK_S = 5.0


async def _endpoint(nursery, ident, handlers, config: net.NetConfig) -> Address:
    endpoint = net.Endpoint(ident, Address("127.0.0.1", 0), handlers, config=config)
    await nursery.start(endpoint.run)
    return Address("127.0.0.1", endpoint.bound_port)


async def _authenticated_raw(ident, address: Address) -> trio.SSLStream:
    """A TLS connection with a valid client certificate and hello, driven by hand."""
    tcp = await trio.open_tcp_stream(address.host, address.port)
    stream = trio.SSLStream(tcp, ident.client_context(), server_hostname=None)
    await stream.do_handshake()
    hello = wire.Hello(wire.PROTOCOL_VERSION, ident.cluster_id, "client", "", 0)
    await stream.send_all(wire.encode_frame(wire.Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, wire.encode_message(hello))))
    return stream


async def _read_until_closed(stream: trio.SSLStream, bound_s: float) -> None:
    """Read (discarding the node's hello) until the node closes; fail after ``bound_s``."""
    with trio.fail_after(bound_s):
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, ssl.SSLError):
            pass


async def test_a_partial_frame_then_silence_is_closed_within_the_read_timeout(nursery, make_identity):
    address = await _endpoint(nursery, make_identity(Role.NODE), Handlers(), PARTIAL)
    stream = await _authenticated_raw(make_identity(Role.CLIENT), address)
    # Declares the largest frame allowed (8 MiB), minus one byte, sends its first bytes, then nothing.
    frame_bytes = wire.FRAME_SIZE_BYTES_MAX - 1
    await stream.send_all(struct.pack(">I", frame_bytes) + b"\0" * 100)
    allowed_s = frame_read_allowed_s(PARTIAL.frame_read_timeout_s, frame_bytes)
    await _read_until_closed(stream, bound_s=allowed_s + SLACK_S)


async def test_a_large_frame_is_given_time_by_its_size(nursery, make_identity):
    """A frame of 4 MiB on a link that delivers one MiB per timeout is not cut off after one timeout.

    With one timeout per frame whatever its size, a node whose peer sends 4 MiB frames (a get's
    coordinator) could not be served over a link a quarter as fast as one sending 1 MiB frames.
    """
    address = await _endpoint(nursery, make_identity(Role.NODE), Handlers(), PARTIAL)
    stream = await _authenticated_raw(make_identity(Role.CLIENT), address)
    frame_bytes = 4 * 1024 * 1024
    await stream.send_all(struct.pack(">I", frame_bytes) + b"\0" * 100)
    started_s = trio.current_time()
    await _read_until_closed(stream, bound_s=frame_read_allowed_s(PARTIAL.frame_read_timeout_s, frame_bytes) + SLACK_S)
    # Deadlines never fire early: a close sooner than the size allows is the rule broken, not load.
    assert trio.current_time() - started_s >= 4 * PARTIAL.frame_read_timeout_s * 0.95


def test_a_frame_is_allowed_its_timeout_per_mib_and_a_small_one_the_whole_timeout():
    assert frame_read_allowed_s(30.0, 100) == 30.0
    assert frame_read_allowed_s(30.0, 1024 * 1024) == 30.0
    assert frame_read_allowed_s(30.0, 4 * 1024 * 1024) == 120.0


async def test_a_connection_with_nothing_open_is_closed_when_idle(nursery, make_identity):
    address = await _endpoint(nursery, make_identity(Role.NODE), Handlers(), IDLE)
    async with net.client_connection(make_identity(Role.CLIENT), address, config=IDLE) as conn:
        assert await conn.request(Echo(b"once"), timeout_s=5.0) == Echo(b"once")
        with trio.fail_after(IDLE.connection_idle_timeout_s + SLACK_S):
            await conn.wait_closed()


async def test_a_request_longer_than_the_idle_timeout_is_answered(nursery, make_identity):
    class Slow(Handlers):
        async def handle_request(self, request):
            await trio.sleep(IDLE.connection_idle_timeout_s * 2)  # the handler's work, not a synchronisation
            return request.msg

    address = await _endpoint(nursery, make_identity(Role.NODE), Slow(), IDLE)
    async with net.client_connection(make_identity(Role.CLIENT), address, config=IDLE) as conn:
        assert await conn.request(Echo(b"slow"), timeout_s=10.0) == Echo(b"slow")
