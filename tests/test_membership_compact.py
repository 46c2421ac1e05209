"""Compact member tables (``p2pfs.membership.compact``): the same view as ``MemberView``, seeded.

The simulation of 10,000 members holds every view in flat arrays over one shared
``MemberTable``; these tests hold it to ``MemberView``'s behaviour: the same
random draws, orders and values, fact by fact and in whole clusters with loss,
crashes and restarts, and a cluster formed at once that behaves as a converged one.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from p2pfs import wire
from p2pfs.membership.compact import CompactView, MemberTable
from p2pfs.membership.messages import MemberFact, MemberMeta
from p2pfs.membership.view import Member, MemberView
from p2pfs.sim.membership import CoreCluster, sim_address, sim_node_id
from p2pfs.sim.network import LinkFaults

from membership_helpers import ALIVE, CONFIG, DEAD, LEFT, SUSPECT, meta, node_id

NAMES = [f"m{i}" for i in range(24)]
STATES = (ALIVE, SUSPECT, DEAD, LEFT)


def _random_fact(rng: random.Random) -> MemberFact:
    """A fact about one of NAMES: any state, a nearby incarnation, sometimes a moved address,
    an accuser, a signature."""
    name = rng.choice(NAMES)
    state = rng.choice(STATES)
    incarnation = rng.randrange(1, 4)
    with_meta = state == ALIVE or rng.random() < 0.5
    fact_meta = meta(name)
    if with_meta and rng.random() < 0.2:
        fact_meta = MemberMeta(f"{name}.moved", 7001, "z2", 5, wire.PROTOCOL_VERSION)
    accuser = node_id(rng.choice(NAMES)) if state in (SUSPECT, DEAD) else ""
    signature = bytes([rng.randrange(256)]) * 64 if with_meta and rng.random() < 0.2 else b""
    return MemberFact(node_id(name), incarnation, state, accuser, fact_meta if with_meta else None, signature)


def _snapshot(view: MemberView) -> tuple:
    """Everything of a view the protocol reads, as plain values."""
    return (
        list(view.members.values()),
        view.state_facts(lambda i: False),
        list(view.live_ids),
        list(view.dead_ids),
        {i: (s.accuser_id, s.deadline_s(), s.confirmations) for i, s in view.suspicions.items()},
        sorted(view.suspicion_heap),
        sorted(view.reap_heap),
        dict(view.proofs),
        len(view),
        view.version,
    )


@pytest.mark.parametrize("seed", range(6))
def test_compact_view_follows_member_view_fact_by_fact(seed):
    """Random facts, probes, picks, expiries and reaps: both views hold and draw the same."""
    config = dataclasses.replace(CONFIG, dead_reap_s=40.0, left_reap_s=25.0)
    self_id = node_id("self")
    old = MemberView(self_id, config, random.Random(seed))
    table = MemberTable()
    # A second view on the same table first, so that slots are not in this view's learned order.
    other = CompactView(node_id("other"), config, random.Random(99), table)
    for name in reversed(NAMES):
        other.apply(MemberFact(node_id(name), 1, ALIVE, "", meta(name)), 0.0, self_live=True)
    new = CompactView(self_id, config, random.Random(seed), table)
    for view in (old, new):
        view.set(Member.from_meta(self_id, meta("self"), 1, ALIVE, 0.0), "", 0.0, self_live=True)
    rng = random.Random(1000 + seed)
    now_s = 0.0
    for step in range(600):
        now_s += rng.uniform(0.0, 0.5)
        fact = _random_fact(rng)
        assert old.apply(fact, now_s, self_live=True) == new.apply(fact, now_s, self_live=True), step
        if step % 5 == 0:
            a, b = old.next_probe_target(), new.next_probe_target()
            assert a == b, step
            k = rng.randrange(1, 5)
            exclude = None if a is None else a.node_id
            assert old.pick_live(k, exclude=exclude) == new.pick_live(k, exclude=exclude), step
        if step % 7 == 0:
            assert list(old.expired_suspects(now_s)) == list(new.expired_suspects(now_s)), step
        old.reap(now_s)
        new.reap(now_s)
        assert _snapshot(old) == _snapshot(new), step
    assert len(new) < len(table), "some members were reaped along the way"


def _cluster_run(seed: int, *, compact: bool) -> tuple:
    """30 members join at once under loss, duplication and reordering; one crashes, one restarts."""
    faults = LinkFaults(drop_probability=0.05, duplicate_probability=0.02, reorder_probability=0.05)
    cluster = CoreCluster(seed, faults=faults, compact=compact)
    first = cluster.start(0)
    for i in range(1, 30):
        cluster.start(i, [first.address])
    cluster.run_until(15.0)
    cluster.crash(29)
    cluster.crash(28)
    cluster.run_until(45.0)
    cluster.start(28, [first.address], incarnation_initial=50)
    cluster.run_until(70.0)
    views = {
        index: [(m.node_id, m.incarnation, m.state, m.state_since_s, m.address) for m in core.members()]
        for index, core in cluster.cores.items()
    }
    return cluster.network.stats, views


@pytest.mark.parametrize("seed", [0, 1])
def test_compact_cluster_replays_the_member_view_cluster_exactly(seed):
    """Whole clusters on the seeded network: the same messages, bytes and final views."""
    stats_old, views_old = _cluster_run(seed, compact=False)
    stats_new, views_new = _cluster_run(seed, compact=True)
    assert stats_old == stats_new
    assert views_old == views_new
    # The run did see deaths and a restart, so those paths were compared too.
    assert any(state == DEAD for view in views_old.values() for _, _, state, _, _ in view)
    assert any(incarnation >= 50 for view in views_old.values() for _, incarnation, _, _, _ in view)


def test_a_formed_cluster_holds_what_a_converged_one_holds_and_runs_the_protocol():
    n = 60
    grown = CoreCluster(3, compact=True, codec=False)
    first = grown.start(0)
    for i in range(1, n):
        grown.start(i, [first.address])
    while not grown.converged():
        assert grown.now_s < 30.0, "no convergence"
        grown.run_until(grown.now_s + CONFIG.gossip_interval_s)

    formed = CoreCluster(3, compact=True, codec=False)
    formed.form(n)
    assert formed.converged()

    def held(cluster: CoreCluster) -> list:
        return [sorted((m.node_id, m.incarnation, m.state) for m in core.members()) for core in cluster.running()]

    assert held(formed) == held(grown)
    # Periodic exchanges spread over the interval for n, not bunched in the first 30 s.
    interval_s = CONFIG.push_pull_interval_s_for(n)
    formed.run_until(interval_s)
    push_pulls = formed.network.stats.by_type["PushPull"][0]
    assert 0.5 * n < push_pulls < 2 * 1.5 * n, push_pulls  # one request and one reply each, about
    # A join converges by gossip, and a crash is detected everywhere within the bound.
    joiner = formed.start(n, [sim_address(0)])
    start_s = formed.now_s
    while not formed.converged():
        assert formed.now_s - start_s < 30 * CONFIG.gossip_interval_s, "the join did not converge in 30 rounds"
        formed.run_until(formed.now_s + CONFIG.gossip_interval_s)
    assert all(core.member(joiner.node_id).state == ALIVE for core in formed.running())
    formed.crash(7)
    crashed_s = formed.now_s
    while not formed.dead_everywhere(sim_node_id(7)):
        assert formed.now_s - crashed_s < CONFIG.detection_bound_s(n + 1), "not detected within the bound"
        formed.run_until(formed.now_s + 0.1)
    assert formed.now_s - crashed_s >= CONFIG.suspicion_timeout_s_min(n)


def test_a_compact_view_takes_tens_of_bytes_per_member():
    """The point of it: per view, arrays of a few bytes per member, and nothing per member in dicts."""
    n = 400
    cluster = CoreCluster(0, compact=True, codec=False)
    cluster.form(n)
    cluster.run_until(2.0)  # every core has probed once (its probe order is shuffled)
    view = cluster.cores[5]._view
    assert isinstance(view, CompactView)
    array_bytes = sum(
        len(a) * a.itemsize for a in (view.incarnation, view.live, view.live_pos, view.order, view.probe_order)
    ) + len(view.state)
    assert array_bytes / n <= 30, array_bytes / n
    sparse = (view.since_s, view.meta_own, view.accuser, view.signature, view.dead_pos, view.proofs, view.suspicions)
    assert sum(len(d) for d in sparse) <= 2, "a formed, quiet cluster's views hold nothing per member in dicts"
