"""Membership simulations: many MembershipServices on a seeded SimNetwork and MockClock.

Each test states its seed; ``P2PFS_SIM_SEED=N`` replays a run with another seed,
and a failing test shows the seed it ran with.
"""

from __future__ import annotations

import dataclasses

import pytest
import trio

from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import MemberState
from p2pfs.sim.membership import SimCluster, open_sim_cluster, sim_address, wait_until
from p2pfs.sim import SEED_ENV, LinkFaults, run_simulation, sim_seed

CONFIG = MembershipConfig()
POLL_S = 0.1


@pytest.fixture
def seeded(request):
    """``seeded(default)`` -> the seed to use, recorded in the report of a failing test."""

    def resolve(default: int) -> int:
        seed = sim_seed(default)
        request.node.add_report_section("call", "simulation seed", f"seed {seed}; replay with {SEED_ENV}={seed}")
        return seed

    return resolve


async def start_cluster(cluster: SimCluster, n: int) -> None:
    """Node 0 is the seed; all others join through it at time 0."""
    seed = await cluster.start(0)
    for i in range(1, n):
        await cluster.start(i, [seed.address])


async def converge(cluster: SimCluster, timeout_s: float = 60.0) -> float:
    elapsed_s = await wait_until(cluster.converged, timeout_s=timeout_s, poll_s=POLL_S)
    assert elapsed_s is not None, "did not converge"
    return elapsed_s


def test_200_nodes_join_through_one_seed_and_converge(seeded):
    # Codec off: 200 simultaneous joins move ~40 MB of 16 KiB gossip; encoding
    # it all would dominate the suite's time. The smaller simulations below
    # run every message through the wire codec.
    seed = seeded(200)

    async def scenario():
        async with open_sim_cluster(seed, codec=False) as cluster:
            await start_cluster(cluster, 200)
            elapsed_s = await converge(cluster, timeout_s=30.0)
            # Well within the target of 30 gossip rounds (for 1,000 nodes).
            assert elapsed_s <= 30 * CONFIG.gossip_interval_s
            views = {frozenset((m.node_id, m.incarnation, m.state) for m in n.core.members()) for n in cluster.running()}
            assert len(views) == 1 and len(next(iter(views))) == 200

    run_simulation(scenario, seed=seed)


def test_crashed_node_is_declared_dead_by_every_live_node_within_the_bound(seeded):
    seed = seeded(201)
    n = 200

    async def scenario():
        async with open_sim_cluster(seed, codec=False) as cluster:
            await start_cluster(cluster, n)
            await converge(cluster)
            await trio.sleep(5.0)
            victim = cluster.nodes[137]
            cluster.crash(victim)
            crashed_at_s = trio.current_time()
            first_dead_s = await wait_until(
                lambda: any(
                    (m := node.core.member(victim.node_id)) is not None and m.state == MemberState.DEAD
                    for node in cluster.running()
                ),
                timeout_s=CONFIG.detection_bound_s(n), poll_s=POLL_S,
            )
            assert first_dead_s is not None
            # Nobody can declare it dead before a suspicion has run its floor.
            assert first_dead_s >= CONFIG.suspicion_timeout_s_min(n)
            remaining_s = CONFIG.detection_bound_s(n) - (trio.current_time() - crashed_at_s)
            all_dead_s = await wait_until(
                lambda: cluster.dead_everywhere(victim.node_id), timeout_s=remaining_s, poll_s=POLL_S
            )
            assert all_dead_s is not None, "not dead everywhere within detection_bound_s"
            # The bound is loose by design; in practice the ~1 probe per second
            # the cluster aims at the crashed node brings Lifeguard confirmations,
            # which pull the suspicion from its ceiling towards its floor.
            assert trio.current_time() - crashed_at_s < CONFIG.suspicion_timeout_s_max(n)
            # And nobody else was harmed.
            assert cluster.converged()

    run_simulation(scenario, seed=seed)


def test_no_live_node_is_declared_dead_under_10_percent_loss_for_10_minutes(seeded):
    # 24 nodes keeps this test at a few seconds; 10% loss on every message,
    # both ways, for 600 simulated seconds (14,400 probes).
    seed = seeded(10)

    async def scenario():
        async with open_sim_cluster(seed, record_states=True) as cluster:
            await start_cluster(cluster, 24)
            await converge(cluster)
            cluster.network.set_faults(LinkFaults(drop_probability=0.10))
            await trio.sleep(600.0)
            dead = {(obs, subj) for (obs, subj), states in cluster.seen.items() if MemberState.DEAD in states}
            suspected = {(obs, subj) for (obs, subj), states in cluster.seen.items() if MemberState.SUSPECT in states}
            assert dead == set()
            # The loss did bite: false suspicions happened, and were refuted in time.
            assert len(suspected) > 0
            cluster.network.set_faults(LinkFaults())
            await converge(cluster)

    run_simulation(scenario, seed=seed)


def test_pause_shorter_than_suspicion_timeout_is_suspected_but_never_dead(seeded):
    seed = seeded(31)
    n = 16

    async def scenario():
        async with open_sim_cluster(seed, record_states=True) as cluster:
            await start_cluster(cluster, n)
            await converge(cluster)
            await trio.sleep(3.0)
            paused = cluster.nodes[5]
            pause_s = 0.6 * CONFIG.suspicion_timeout_s_min(n)
            cluster.pause(paused)
            await trio.sleep(pause_s)
            cluster.resume(paused)
            await trio.sleep(60.0)
            assert cluster.ever(MemberState.SUSPECT, paused.node_id), "nobody noticed the pause"
            assert cluster.ever(MemberState.DEAD, paused.node_id) == set()
            assert {subj for (obs, subj), states in cluster.seen.items() if MemberState.DEAD in states} == set()
            assert paused.core.incarnation > 1, "it refuted"
            await converge(cluster)

    run_simulation(scenario, seed=seed)


def test_partition_into_halves_then_heal_converges(seeded):
    seed = seeded(42)
    n = 16

    async def scenario():
        async with open_sim_cluster(seed) as cluster:
            await start_cluster(cluster, n)
            await converge(cluster)
            nodes = cluster.running()
            left, right = nodes[: n // 2], nodes[n // 2:]
            cluster.network.partition([x.address for x in left], [x.address for x in right])

            def sides_apart() -> bool:
                return all(cluster.dead_everywhere(x.node_id, right) for x in left) and all(
                    cluster.dead_everywhere(x.node_id, left) for x in right
                )

            apart_s = await wait_until(sides_apart, timeout_s=CONFIG.detection_bound_s(n), poll_s=POLL_S)
            assert apart_s is not None, "each side should declare the other dead"
            assert cluster.converged(left) and cluster.converged(right)
            cluster.network.heal()
            # Reconnect push-pulls (every reconnect_interval_s) find the other side.
            healed_s = await converge(cluster, timeout_s=3 * CONFIG.reconnect_interval_s)
            assert healed_s <= 2 * CONFIG.reconnect_interval_s

    run_simulation(scenario, seed=seed)


def test_graceful_leave_marks_left_everywhere_then_is_reaped(seeded):
    seed = seeded(7)
    config = dataclasses.replace(CONFIG, left_reap_s=60.0)

    async def scenario():
        async with open_sim_cluster(seed, config=config, record_states=True) as cluster:
            await start_cluster(cluster, 12)
            await converge(cluster)
            leaver = cluster.nodes[3]
            with trio.fail_after(5.0):
                await leaver.service.leave(timeout_s=5.0)
            others = [x for x in cluster.running() if x is not leaver]
            for node in others:
                assert node.core.member(leaver.node_id).state == MemberState.LEFT
            cluster.crash(leaver)
            assert await wait_until(lambda: cluster.converged(others), timeout_s=1.0, poll_s=POLL_S) is not None
            assert cluster.ever(MemberState.DEAD, leaver.node_id) == set(), "left, not dead"
            await trio.sleep(config.left_reap_s + 1.0)
            assert all(node.core.member(leaver.node_id) is None for node in others)

    run_simulation(scenario, seed=seed)


@pytest.mark.parametrize("incarnation_after_restart", [10_000, 1])
def test_restarted_node_rejoins_alive_whatever_its_new_incarnation(seeded, incarnation_after_restart):
    # The restart pitfall: the cluster holds the node DEAD at incarnation 1
    # or more; a restart from a clock (higher) wins at once, a restart from 1
    # wins by refuting its previous life.
    seed = seeded(5)

    async def scenario():
        async with open_sim_cluster(seed) as cluster:
            await start_cluster(cluster, 10)
            await converge(cluster)
            victim = cluster.nodes[4]
            cluster.crash(victim)
            assert await wait_until(lambda: cluster.dead_everywhere(victim.node_id), timeout_s=120.0, poll_s=POLL_S)
            restarted = await cluster.start(4, [cluster.nodes[0].address], incarnation_initial=incarnation_after_restart)
            await converge(cluster, timeout_s=10.0)
            assert restarted.core.incarnation >= 2

    run_simulation(scenario, seed=seed)


def test_node_started_before_its_seed_joins_when_the_seed_comes_up(seeded):
    seed = seeded(3)

    async def scenario():
        async with open_sim_cluster(seed) as cluster:
            early = await cluster.start(1, [sim_address(0)])
            await trio.sleep(10.0)
            assert [m.node_id for m in early.core.live_members()] == [early.node_id]
            await cluster.start(0)
            elapsed_s = await converge(cluster, timeout_s=5.0)
            assert elapsed_s <= CONFIG.join_retry_interval_s + 0.5

    run_simulation(scenario, seed=seed)


def test_same_seed_same_run(seeded):
    seed = seeded(99)

    async def scenario():
        async with open_sim_cluster(seed, faults=LinkFaults(drop_probability=0.05, duplicate_probability=0.02)) as cluster:
            await start_cluster(cluster, 12)
            await converge(cluster)
            cluster.crash(cluster.nodes[2])
            await trio.sleep(30.0)
            stats = cluster.network.stats
            return (
                stats.messages_sent, stats.bytes_sent, stats.messages_dropped,
                [(n.node_id, n.core.version, n.core.incarnation) for n in cluster.running()],
            )

    assert run_simulation(scenario, seed=seed) == run_simulation(scenario, seed=seed)
