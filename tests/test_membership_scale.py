"""Full-state exchanges at scale (issue 16): the push-pull interval grows with the cluster so that
its bytes per node stay flat, and dead members are retried at odds dead / live (serf's reconnect).

Pure cores with an explicit clock; the sizes are small, the rules are the ones that hold at 10,000.
"""

from __future__ import annotations

import dataclasses

import pytest

from p2pfs import wire
from p2pfs.membership.messages import PushPull
from p2pfs.sim.membership import CoreCluster, sim_node_id

from membership_helpers import CONFIG, DEAD, address, alive, fact, make, sends_of, teach

# Probes far apart, so that members nobody answers for are not declared dead under the test.
QUIET = dataclasses.replace(CONFIG, probe_interval_s=1e9, probe_timeout_s=1.0)


def _state_bytes(core) -> int:
    """What one full-state message of ``core`` costs on the wire."""
    return wire.FRAME_HEADER_BYTES + len(wire.encode_message(PushPull(False, core._request_state())))


def _core_with(live: int, dead: int = 0, *, seed: int = 0):
    """A core holding ``live`` other live members and ``dead`` dead ones, its gossip queue drained."""
    core = make("self", seed=seed, config=QUIET)
    core.handle(address("teacher"), PushPull(True, tuple(alive(f"m{i}") for i in range(live + dead))), 0.0)
    teach(core, *(fact(f"m{i}", 1, DEAD, "x") for i in range(live, live + dead)), now_s=0.0)
    while core.pending_broadcasts:
        core._piggyback(None, 1 << 20)
    return core


def _push_pulls(core, until_s: float, step_s: float = 0.25) -> list:
    """Every PushPull ``core`` starts while its clock runs to ``until_s``."""
    sent = []
    now_s = 0.0
    while now_s < until_s:
        now_s += step_s
        sent += sends_of(core.tick(now_s), PushPull)
    return sent


@pytest.mark.parametrize("n, interval_s", [(1, 30.0), (32, 30.0), (33, 30.9375), (100, 93.75), (10_000, 9375.0)])
def test_push_pull_interval_grows_in_proportion_to_the_cluster(n, interval_s):
    assert CONFIG.push_pull_interval_s_for(n) == pytest.approx(interval_s)


def test_push_pull_bytes_per_second_are_flat_in_the_cluster_size():
    # Bytes per node per second: one request sent and one reply sent per interval on average.
    rates = {}
    for others in (40, 160, 640):
        core = _core_with(others)
        rates[others] = 2 * _state_bytes(core) / CONFIG.push_pull_interval_s_for(core.live_count)
    assert max(rates.values()) / min(rates.values()) < 1.05, rates
    # The rule it replaced (memberlist's log2 scaling) grew 7x over the same range.
    assert rates[640] < 300, rates


def test_a_core_push_pulls_at_the_scaled_interval():
    core = _core_with(319)  # 320 live members: 300 s (memberlist's rule: 150 s)
    interval_s = CONFIG.push_pull_interval_s_for(320)
    assert interval_s == 300.0
    pulls = _push_pulls(core, 30.0 + 3 * interval_s, step_s=1.0)
    # The first at a random offset within the base interval, then one per scaled interval.
    assert len(pulls) == 4
    assert all(not p.msg.is_reply and len(p.msg.members) == 320 for p in pulls)


def test_a_small_cluster_keeps_the_base_interval():
    core = _core_with(9)
    assert len(_push_pulls(core, 30.0 * 10)) == 10


def test_reconnect_tries_one_dead_member_in_a_big_cluster_at_odds_dead_over_live():
    # 1 dead, 199 others live (200 live with self): each round tries with probability 1/200.
    rounds = 2000
    tries = sum(
        len(_push_pulls_to_dead(_core_with(199, 1, seed=seed), rounds_max=10)) for seed in range(rounds // 10)
    )
    # Expected 10 over 2,000 rounds; the old rule tried every round (2,000).
    assert 1 <= tries <= 30


def test_reconnect_tries_every_round_when_half_is_dead():
    # A partition into halves: the odds are 1, so the two sides find each other within a round.
    core = _core_with(4, 5)
    assert len(_push_pulls_to_dead(core, rounds_max=5)) == 5


def _push_pulls_to_dead(core, *, rounds_max: int) -> list:
    """PushPulls sent to dead members over ``rounds_max`` reconnect rounds (the live exchange pushed out of the way)."""
    dead = {m.address for m in core.members() if m.state == DEAD}
    sent = []
    for r in range(rounds_max):
        now_s = (r + 1) * CONFIG.reconnect_interval_s
        sent += [s for s in sends_of(core.tick(now_s), PushPull) if s.to in dead]
    return sent


def test_core_cluster_runs_the_protocol_and_replays_its_seed():
    """The benchmark's trio-free simulation: converges, detects a crash within the bound, replays."""

    def run(seed: int) -> tuple[float, float, int]:
        cluster = CoreCluster(seed, codec=True)
        first = cluster.start(0)
        for i in range(1, 30):
            cluster.start(i, [first.address])
        while not cluster.converged():
            assert cluster.now_s < 30.0, "no convergence"
            cluster.run_until(cluster.now_s + CONFIG.gossip_interval_s)
        converged_s = cluster.now_s
        cluster.run_until(converged_s + 10.0)
        cluster.crash(7)
        crashed_s = cluster.now_s
        while not cluster.dead_everywhere(sim_node_id(7)):
            assert cluster.now_s - crashed_s < CONFIG.detection_bound_s(30), "not detected within the bound"
            cluster.run_until(cluster.now_s + 0.1)
        return converged_s, cluster.now_s - crashed_s, cluster.network.stats.messages_sent

    first = run(5)
    assert first[1] >= CONFIG.suspicion_timeout_s_min(29)
    assert run(5) == first
