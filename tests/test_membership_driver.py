"""The trio driver: bounded sends, slow peers, change notification, leave. On MockClock."""

from __future__ import annotations

import random

import trio

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.membership import driver as driver_module
from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.driver import MembershipService
from p2pfs.membership.messages import Gossip, MemberFact, MemberState, Ping
from p2pfs.sim.membership import sim_address, sim_node_id
from p2pfs.membership.state import Membership
from p2pfs.sim import SimNetwork, run_simulation

CONFIG = MembershipConfig()


def make_core(i: int) -> Membership:
    return Membership(
        node_id=sim_node_id(i), address=sim_address(i), zone="", capacity_bytes=1,
        protocol_version=wire.PROTOCOL_VERSION, incarnation_initial=1, config=CONFIG,
        rng=random.Random(i), now_s=trio.current_time(),
    )


class Stalling:
    """Wraps a transport; sends to ``stalled`` never complete (a peer that stopped reading)."""

    def __init__(self, inner, stalled: set[Address]) -> None:
        self.inner = inner
        self.stalled = stalled
        self.delivered: list[tuple[Address, str]] = []

    async def send(self, to: Address, msg: wire.Message, to_id: str | None) -> None:
        if to in self.stalled:
            await trio.sleep_forever()
        self.delivered.append((to, type(msg).__name__))
        await self.inner.send(to, msg, to_id)


async def start_services(network: SimNetwork, nursery: trio.Nursery, n: int, wrap=lambda i, t: t):
    services = []
    for i in range(n):
        core = make_core(i)
        holder: list[MembershipService] = []
        transport = network.attach(core.address, lambda s, m, h=holder: h[0].deliver(s, m))
        service = MembershipService(core, wrap(i, transport))
        holder.append(service)
        services.append(service)
    for i, service in enumerate(services):
        await nursery.start(service.run, [sim_address(0)] if i else [])
    return services


def test_slow_peer_does_not_hold_up_probes_to_others():
    async def scenario():
        network = SimNetwork(random.Random(1))
        stalling = {}

        def wrap(i, transport):
            if i == 1:  # node 1 cannot get anything through to nodes 2 and 3
                stalling[i] = Stalling(transport, {sim_address(2), sim_address(3)})
                return stalling[i]
            return transport

        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.run)
            services = await start_services(network, nursery, 6, wrap)
            await trio.sleep(60.0)
            slow = services[1]
            assert slow.sends_timed_out > 0
            pinged = {to for to, kind in stalling[1].delivered if kind == "Ping"}
            assert {sim_address(i) for i in (0, 4, 5)} <= pinged
            # Its probes of the reachable members kept succeeding.
            for i in (0, 4, 5):
                assert slow.core.member(sim_node_id(i)).state == MemberState.ALIVE
            nursery.cancel_scope.cancel()

    run_simulation(scenario, seed=1)


def test_send_queue_is_bounded_and_deliver_never_blocks():
    async def scenario():
        network = SimNetwork(random.Random(2))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.run)
            core = make_core(0)
            everything_stalls = Stalling(network.attach(core.address, lambda s, m: None), {sim_address(1)})
            service = MembershipService(core, everything_stalls)
            await nursery.start(service.run, [])
            for seq in range(driver_module.SEND_QUEUE_MESSAGES_MAX + 100):
                service.deliver(sim_address(1), Ping(seq, core.node_id, ()))  # each asks for an Ack
            assert service.sends_dropped >= 100 - driver_module.SEND_CONCURRENCY_MAX
            nursery.cancel_scope.cancel()

    run_simulation(scenario, seed=2)


def test_wait_changed_wakes_on_membership_change():
    async def scenario():
        network = SimNetwork(random.Random(3))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.run)
            services = await start_services(network, nursery, 1)
            service = services[0]
            seen = service.core.version
            fact = MemberFact(sim_node_id(9), 1, MemberState.ALIVE, "", make_core(9)._meta)

            async def later():
                await trio.sleep(5.0)
                service.deliver(sim_address(9), Gossip((fact,)))

            nursery.start_soon(later)
            with trio.fail_after(10.0):
                new = await service.wait_changed(seen)
            assert new > seen and trio.current_time() >= 5.0
            assert sim_node_id(9) in {m.node_id for m in service.members()}
            nursery.cancel_scope.cancel()

    run_simulation(scenario, seed=3)


def test_leave_is_bounded_by_its_timeout_when_sends_hang():
    async def scenario():
        network = SimNetwork(random.Random(4))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.run)
            services = await start_services(
                network, nursery, 3,
                wrap=lambda i, t: Stalling(t, {sim_address(j) for j in range(3)}) if i == 2 else t,
            )
            await trio.sleep(2.0)
            start_s = trio.current_time()
            await services[2].leave(timeout_s=0.3)
            assert trio.current_time() - start_s <= 0.3 + 1e-9
            nursery.cancel_scope.cancel()

    run_simulation(scenario, seed=4)
