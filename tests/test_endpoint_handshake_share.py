"""Half-open connections by source address (net/endpoint.py, ``Endpoint._make_room``).

One address may use every free handshake slot; once they are all taken, the
address holding most gives way to a newcomer. Every member of a test network
dials from 127.0.0.1, so a fixed per-address limit shed honest handshakes when
many members started at once. A second source address is 127.0.0.2, which
Linux routes to the loopback interface like the rest of 127.0.0.0/8.
"""

from __future__ import annotations

import logging

import pytest
import trio

from p2pfs import net
from p2pfs.address import Address
from p2pfs.net import endpoint as endpoint_module
from p2pfs.net.handshake import dial
from p2pfs.net.trust import TrustStore
from p2pfs.wire import Role

from wire_helpers import Echo

# A handshake deadline far beyond the test, so only shedding can free a slot.
SLOW = net.NetConfig(handshake_timeout_s=60.0)
DEADLINE_S = 20.0


class Handlers:
    async def handle_request(self, request):
        return request.msg

    def handle_oneway(self, conn, msg) -> None:
        pass


async def _serve(nursery, make_identity) -> Address:
    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), Handlers(), config=SLOW)
    await nursery.start(endpoint.run)
    return Address("127.0.0.1", endpoint.bound_port)


async def _silent(address: Address, count: int, source: str = "127.0.0.1") -> list[trio.SocketStream]:
    return [await trio.open_tcp_stream(address.host, address.port, local_address=source) for _ in range(count)]


async def _echo_from(identity, address: Address, source: str) -> bytes:
    """One request on a fresh authenticated connection from ``source``."""
    conn = await dial(identity, address, config=SLOW, bind_host=source,
                      ssl_context=TrustStore(identity).client_context)
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        reply = await conn.request(Echo(b"in"), timeout_s=DEADLINE_S)
        await conn.aclose()
        nursery.cancel_scope.cancel()
    return reply.payload


async def test_one_address_may_use_the_free_handshake_slots(nursery, make_identity, caplog):
    caplog.set_level(logging.INFO, logger=endpoint_module.__name__)
    server = await _serve(nursery, make_identity)
    count = endpoint_module.UNAUTHENTICATED_PER_ADDRESS_MAX * 2
    assert count < endpoint_module.HANDSHAKES_CONCURRENT_MAX
    silent = await _silent(server, count)
    with trio.fail_after(DEADLINE_S):
        # Accepted after the silent ones, so every one of them has been counted by now.
        assert await _echo_from(make_identity(Role.CLIENT), server, "127.0.0.1") == b"in"
    assert not [r for r in caplog.records if "shed" in r.getMessage()], "an honest crowd on one address was shed"
    for stream in silent:
        await trio.aclose_forcefully(stream)


@pytest.fixture
def few_slots(monkeypatch):
    monkeypatch.setattr(endpoint_module, "HANDSHAKES_CONCURRENT_MAX", 8)
    monkeypatch.setattr(endpoint_module, "UNAUTHENTICATED_PER_ADDRESS_MAX", 4)


async def test_when_the_slots_are_taken_the_crowded_address_gives_way(few_slots, nursery, make_identity):
    server = await _serve(nursery, make_identity)
    # One more than the slots: the address's oldest goes (its newest must not queue behind its own).
    silent = await _silent(server, 9)
    with trio.fail_after(DEADLINE_S):
        assert await silent[0].receive_some(1) == b""
        # Every slot is held by 127.0.0.1: a newcomer from elsewhere sheds its oldest and gets in,
        # well before the 60 s handshake deadline would free a slot.
        assert await _echo_from(make_identity(Role.CLIENT), server, "127.0.0.2") == b"in"
        assert await silent[1].receive_some(1) == b""
    for stream in silent:
        await trio.aclose_forcefully(stream)
