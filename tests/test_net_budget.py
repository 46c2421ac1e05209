"""The node's shared limits: the memory budget, requests per peer, and the per-peer fault log."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from p2pfs import net
from p2pfs.address import Address
from p2pfs.net.budget import MemoryBudget, PeerRequests
from p2pfs.observe import PeerCollapsed
from p2pfs.wire import Role

from wire_helpers import Echo


async def _take(budget: MemoryBudget, got: list[int], size_bytes: int) -> None:
    """Take ``size_bytes`` of ``budget`` (waiting for room), then note it in ``got``."""
    await budget.take(size_bytes)
    got.append(size_bytes)


async def test_the_budget_gives_what_it_has_and_makes_the_rest_wait():
    budget = MemoryBudget(100)
    await budget.take(60)
    got: list[int] = []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_take, budget, got, 50)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_take, budget, got, 10)  # would fit, but waits its turn behind the first
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and budget.used_bytes == 60
        budget.give_back(20)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(got) == [10, 50] and budget.used_bytes == 100  # both granted (woken in any order)
    assert budget.used_bytes_peak == 100
    budget.give_back(100)
    assert budget.available_bytes == 100


async def test_a_resized_budget_lets_waiting_readers_in_or_holds_new_ones_back():
    budget = MemoryBudget(100)
    await budget.take(80)
    got: list[int] = []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_take, budget, got, 50)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        budget.resize(200)  # a reload with a larger budget: the waiting reader goes in
        await trio.testing.wait_all_tasks_blocked()
        assert got == [50] and budget.used_bytes == 130
    budget.resize(100)  # smaller than what is buffered: new readers wait for it to drain
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_take, budget, got, 10)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [50]
        budget.give_back(50)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [50, 10] and budget.used_bytes == 90


async def test_a_wait_given_up_takes_nothing_and_lets_the_next_through():
    budget = MemoryBudget(100)
    await budget.take(90)
    got: list[int] = []

    big = trio.CancelScope()

    async def take_big() -> None:
        with big:
            await budget.take(50)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_big)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_take, budget, got, 10)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # behind the big one
        big.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [10] and budget.used_bytes == 100


def test_peer_requests_are_counted_per_peer_and_forgotten_at_zero():
    requests = PeerRequests(2)
    assert requests.try_open("a") and requests.try_open("a")
    assert not requests.try_open("a")
    assert requests.try_open("b")
    requests.close("a")
    assert requests.try_open("a")
    for peer in ("a", "a", "b"):
        requests.close(peer)
    assert requests.open_count("a") == requests.open_count("b") == 0
    assert requests._open == {}  # no entry left per peer that ever asked


def test_a_peers_faults_are_one_warning_per_peer_and_kind_per_interval(caplog):
    caplog.set_level(logging.INFO)
    faults = PeerCollapsed(logging.getLogger("test"), interval_s=10.0, peers_max=2)
    for now_s in (0.0, 1.0, 2.0):
        faults.log(now_s, "peer-a", "protocol error: %s", "x")
    faults.log(3.0, "peer-b", "protocol error: %s", "y")
    faults.log(4.0, "peer-a", "stalled for %s s", 5)
    assert [(r.getMessage(), r.peer) for r in caplog.records] == [
        ("protocol error: x", "peer-a"), ("protocol error: y", "peer-b"), ("stalled for 5 s", "peer-a"),
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    faults.log(12.0, "peer-a", "protocol error: %s", "z")  # peer-a's first kind was forgotten (peers_max)
    assert caplog.records[-1].getMessage() == "protocol error: z"


@pytest.mark.parametrize("peers_max", [0, -1])
def test_the_fault_log_needs_room_for_a_peer(peers_max):
    with pytest.raises(AssertionError):
        PeerCollapsed(logging.getLogger("test"), interval_s=10.0, peers_max=peers_max)


# -- through a real endpoint -----------------------------------------------------------------


async def test_a_peer_past_its_requests_is_refused_cleanly_on_any_of_its_connections(nursery, make_identity):
    """The cap counts one certificate's requests over all its connections; past it, UNAVAILABLE,
    and the connection and the requests under way carry on."""
    release = trio.Event()

    class Held:
        async def handle_request(self, request):
            await release.wait()
            return request.msg

        def handle_oneway(self, conn, msg) -> None:
            pass

    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), Held())
    endpoint.limits.requests.limit = 2
    await nursery.start(endpoint.run)
    address = Address("127.0.0.1", endpoint.bound_port)
    client = make_identity(Role.CLIENT)
    answers: list[Echo] = []

    async def ask(conn, tag: bytes) -> None:
        answers.append(await conn.request(Echo(tag), timeout_s=10.0))

    with trio.fail_after(10):
        async with net.client_connection(client, address) as first, net.client_connection(client, address) as second:
            async with trio.open_nursery() as requests:
                requests.start_soon(ask, first, b"a")
                requests.start_soon(ask, second, b"b")
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(net.RemoteUnavailable, match="too many requests"):
                    await second.request(Echo(b"c"), timeout_s=10.0)
                release.set()
            assert sorted(answer.payload for answer in answers) == [b"a", b"b"]
            assert await first.request(Echo(b"d"), timeout_s=10.0) == Echo(b"d")  # counted down again
