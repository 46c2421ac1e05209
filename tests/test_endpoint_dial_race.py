"""Two nodes that dial each other at once keep one connection (net/endpoint.py, ``Endpoint._pool``).

A cluster starting up has every pair sending its first gossip both ways at about the same
moment: each node dials the other and accepts the other's dial. Both ends keep the connection
dialled by the lower node id, and its dialler closes the other, instead of each end keeping its
own dial until the idle timeout (300 s) closes the spare.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pfs import net
from p2pfs.address import Address
from p2pfs.net.endpoint import keeps_pooled
from p2pfs.wire import Role

from wire_helpers import Echo

DEADLINE_S = 20.0
_ESTABLISHED = "01"  # the state column of /proc/net/tcp


class EchoHandlers:
    async def handle_request(self, request):
        return request.msg

    def handle_oneway(self, conn, msg) -> None:
        pass


def _established_to(ports: set[int]) -> int:
    """TCP connections open to any of ``ports`` on this host: each counted once, by its accepting end."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if fields[3] == _ESTABLISHED and local_port in ports:
            count += 1
    return count


@pytest.mark.parametrize(
    "current_dialled, new_dialled, own_lower, kept",
    [
        # An accepted and a dialled one: the lower id's dial stays or wins, whichever came first.
        (True, False, True, True),     # ours dialled, we are lower: ours stays
        (True, False, False, False),   # ours dialled, the peer is lower: its dial (accepted) wins
        (False, True, True, False),    # its dial pooled, we are lower: ours wins
        (False, True, False, True),    # its dial pooled, the peer is lower: it stays
        # Two of one kind: a new dial replaces, a new accept does not, as before.
        (True, True, True, False),
        (True, True, False, False),
        (False, False, True, True),
        (False, False, False, True),
    ],
)
def test_both_ends_keep_the_lower_ids_dial(current_dialled, new_dialled, own_lower, kept):
    low, high = "0a" * 16, "f0" * 16
    own, peer = (low, high) if own_lower else (high, low)
    assert keeps_pooled(current_dialled=current_dialled, new_dialled=new_dialled, own_id=own, peer_id=peer) is kept
    # The other end, holding the same two connections with the kinds swapped, makes the same choice.
    if current_dialled != new_dialled:
        other_end = keeps_pooled(current_dialled=not current_dialled, new_dialled=not new_dialled,
                                 own_id=peer, peer_id=own)
        assert other_end is kept


def test_a_connection_to_itself_keeps_the_old_rule():
    me = "0a" * 16
    assert keeps_pooled(current_dialled=True, new_dialled=False, own_id=me, peer_id=me) is True
    assert keeps_pooled(current_dialled=False, new_dialled=True, own_id=me, peer_id=me) is False


# Which dial and which accept finish first varies from run to run (trio shuffles ready tasks):
# a few pairs each time.
@pytest.mark.parametrize("pair", range(3))
async def test_nodes_dialling_each_other_at_once_keep_one_connection(nursery, make_identity, pair):
    endpoints = []
    for _ in range(2):
        endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), EchoHandlers())
        await nursery.start(endpoint.run)
        endpoints.append(endpoint)
    low, high = sorted(endpoints, key=lambda e: e.identity.node_id)
    assert low.config.connection_idle_timeout_s > DEADLINE_S  # only the fix can close the spare in time
    ports = {low.bound_port, high.bound_port}

    async def dial(a: net.Endpoint, b: net.Endpoint) -> None:
        await a.connect(Address("127.0.0.1", b.bound_port), node_id=b.identity.node_id)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as both:  # neither connect finds a pooled connection
            both.start_soon(dial, low, high)
            both.start_soon(dial, high, low)
        while _established_to(ports) != 1:
            await trio.sleep(0.05)
    (to_high,) = low.connections()
    (to_low,) = high.connections()
    assert to_high.peer.node_id == high.identity.node_id
    assert to_low.peer.node_id == low.identity.node_id
    with trio.fail_after(DEADLINE_S):
        assert await to_high.request(Echo(b"up"), timeout_s=DEADLINE_S) == Echo(b"up")
        assert await to_low.request(Echo(b"down"), timeout_s=DEADLINE_S) == Echo(b"down")
    # Both directions went over the one connection left: no end dialled again.
    assert _established_to(ports) == 1
