"""The simulated network: faults, partitions, crash/pause, determinism. Each test states its seed."""

from __future__ import annotations

import random

import pytest
import trio

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.sim import SEED_ENV, LinkFaults, SimNetwork, run_simulation, sim_seed

from wire_helpers import Echo

A, B, C = Address("a.sim", 1), Address("b.sim", 1), Address("c.sim", 1)


@pytest.fixture
def seeded(request):
    def resolve(default: int) -> int:
        seed = sim_seed(default)
        request.node.add_report_section("call", "simulation seed", f"seed {seed}; replay with {SEED_ENV}={seed}")
        return seed

    return resolve


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[float, Address, bytes]] = []

    def __call__(self, sender: Address, msg: wire.Message) -> None:
        assert isinstance(msg, Echo)
        self.got.append((trio.current_time(), sender, msg.payload))


async def with_network(seed: int, faults: LinkFaults, body):
    network = SimNetwork(random.Random(seed), faults)
    inboxes = {addr: Inbox() for addr in (A, B, C)}
    transports = {addr: network.attach(addr, inboxes[addr]) for addr in (A, B, C)}
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        result = await body(network, transports, inboxes)
        nursery.cancel_scope.cancel()
    return result


def test_delivers_within_the_delay_range_and_counts_frame_bytes(seeded):
    seed = seeded(1)

    async def body(network, t, inbox):
        await t[A].send(B, Echo(b"hello"))
        await trio.sleep(1.0)
        ((at_s, sender, payload),) = inbox[B].got
        assert sender == A and payload == b"hello"
        assert 0.010 <= at_s <= 0.020
        assert network.stats.bytes_sent == wire.FRAME_HEADER_BYTES + len(wire.encode_message(Echo(b"hello")))
        assert network.stats.by_type["Echo"] == [1, network.stats.bytes_sent]

    run_simulation(with_network, seed, LinkFaults(delay_s_min=0.010, delay_s_max=0.020), body, seed=seed)


def test_drop_probability_is_honoured(seeded):
    seed = seeded(2)

    async def body(network, t, inbox):
        for i in range(2000):
            await t[A].send(B, Echo(b"%d" % i))
        await trio.sleep(1.0)
        return len(inbox[B].got)

    received = run_simulation(with_network, seed, LinkFaults(drop_probability=0.3), body, seed=seed)
    assert 1300 < received < 1500


def test_duplicates_and_reordering(seeded):
    seed = seeded(3)

    async def body(network, t, inbox):
        for i in range(500):
            await t[A].send(B, Echo(b"%04d" % i))
            await trio.sleep(0.001)
        await trio.sleep(1.0)
        return [p for _, _, p in inbox[B].got]

    faults = LinkFaults(duplicate_probability=0.1, reorder_probability=0.2, reorder_delay_s_max=0.05)
    payloads = run_simulation(with_network, seed, faults, body, seed=seed)
    assert 520 < len(payloads) < 580, "about 10% duplicated"
    assert set(payloads) == {b"%04d" % i for i in range(500)}, "nothing lost"
    assert payloads != sorted(payloads), "some overtaken"


def test_partition_blocks_across_groups_until_healed(seeded):
    seed = seeded(4)

    async def body(network, t, inbox):
        network.partition([A], [B])
        await t[A].send(B, Echo(b"cut"))
        await t[A].send(C, Echo(b"c is in no group"))
        await t[B].send(C, Echo(b"nor here"))
        await trio.sleep(1.0)
        assert inbox[B].got == [] and len(inbox[C].got) == 2
        await t[A].send(B, Echo(b"in flight at the cut"))
        network.heal()
        network.partition([A], [B])
        await trio.sleep(1.0)
        assert inbox[B].got == []
        network.heal()
        await t[A].send(B, Echo(b"healed"))
        await trio.sleep(1.0)
        assert [p for _, _, p in inbox[B].got] == [b"healed"]

    run_simulation(with_network, seed, LinkFaults(), body, seed=seed)


def test_crash_and_pause(seeded):
    seed = seeded(5)

    async def body(network, t, inbox):
        network.pause(B)
        await t[A].send(B, Echo(b"to paused"))
        await t[B].send(A, Echo(b"from paused"))
        await trio.sleep(1.0)
        assert inbox[A].got == [] and inbox[B].got == []
        network.resume(B)
        await t[A].send(B, Echo(b"resumed"))
        network.crash(C)
        await t[A].send(C, Echo(b"to crashed"))
        await t[C].send(A, Echo(b"from crashed"))
        await trio.sleep(1.0)
        assert [p for _, _, p in inbox[B].got] == [b"resumed"] and inbox[A].got == inbox[C].got == []
        assert network.stats.messages_dropped == 4
        network.attach(C, inbox[C])  # a restart
        await t[A].send(C, Echo(b"back"))
        await trio.sleep(1.0)
        assert [p for _, _, p in inbox[C].got] == [b"back"]

    run_simulation(with_network, seed, LinkFaults(), body, seed=seed)


def test_same_seed_same_trace_other_seed_other_trace(seeded):
    seed = seeded(6)

    async def body(network, t, inbox):
        async with trio.open_nursery() as nursery:
            for src in (A, B, C):
                async def chatter(src=src):
                    for i in range(50):
                        await t[src].send((A, B, C)[i % 3], Echo(b"%s-%d" % (src.host.encode(), i)))
                        await trio.sleep(0.003)
                nursery.start_soon(chatter)
        await trio.sleep(1.0)
        return [inbox[x].got for x in (A, B, C)]

    faults = LinkFaults(drop_probability=0.1, duplicate_probability=0.1, reorder_probability=0.3)
    first = run_simulation(with_network, seed, faults, body, seed=seed)
    assert run_simulation(with_network, seed, faults, body, seed=seed) == first
    assert run_simulation(with_network, seed + 1, faults, body, seed=seed + 1) != first


def test_seed_comes_from_the_environment_when_set(monkeypatch):
    monkeypatch.delenv(SEED_ENV, raising=False)
    assert sim_seed(17) == 17
    monkeypatch.setenv(SEED_ENV, "12345")
    assert sim_seed(17) == 12345


def test_faults_are_checked():
    with pytest.raises(ValueError):
        LinkFaults(drop_probability=1.5)
    with pytest.raises(ValueError):
        LinkFaults(delay_s_min=0.2, delay_s_max=0.1)
