"""The listener's caps on what unauthenticated peers hold, in one process (see net/endpoint.py).

Loopback has one source address, so the per-address limit is lifted here to
reach the total cap (``INBOUND_CONNECTIONS_MAX``) and see what it sheds.
"""

from __future__ import annotations

import contextlib

import pytest
import trio

from p2pfs import net
from p2pfs.address import Address
from p2pfs.net import endpoint as endpoint_module
from p2pfs.wire import Role

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
