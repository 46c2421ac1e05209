"""Unit tests of the pure membership core: fact precedence, suspicion, dissemination, join, leave, reap."""

from __future__ import annotations

import dataclasses
import math

import pytest

from p2pfs import wire
from p2pfs.membership.messages import Gossip, MemberFact, Nack, Ping, PingReq, PushPull

from membership_helpers import (
    ALIVE, CONFIG, DEAD, LEFT, SUSPECT, Net, address, alive, fact, joined, make, meta, node_id, sends_of, state_of, teach,
)


@pytest.mark.parametrize(
    "held, heard, result",
    [
        # Higher incarnation always wins.
        ((ALIVE, 1), (ALIVE, 2), (ALIVE, 2)),
        ((SUSPECT, 1), (ALIVE, 2), (ALIVE, 2)),
        ((DEAD, 1), (ALIVE, 2), (ALIVE, 2)),
        ((LEFT, 1), (ALIVE, 2), (ALIVE, 2)),
        ((ALIVE, 2), (DEAD, 1), (ALIVE, 2)),
        ((SUSPECT, 2), (LEFT, 1), (SUSPECT, 2)),
        # Equal incarnation: ALIVE < SUSPECT < DEAD < LEFT.
        ((ALIVE, 1), (SUSPECT, 1), (SUSPECT, 1)),
        ((SUSPECT, 1), (ALIVE, 1), (SUSPECT, 1)),
        ((SUSPECT, 1), (DEAD, 1), (DEAD, 1)),
        ((DEAD, 1), (SUSPECT, 1), (DEAD, 1)),
        ((DEAD, 1), (ALIVE, 1), (DEAD, 1)),
        ((DEAD, 1), (LEFT, 1), (LEFT, 1)),
        ((LEFT, 1), (DEAD, 1), (LEFT, 1)),
        ((LEFT, 1), (ALIVE, 1), (LEFT, 1)),
        # A suspicion at a higher incarnation keeps the member suspect there.
        ((SUSPECT, 1), (SUSPECT, 2), (SUSPECT, 2)),
        ((ALIVE, 1), (DEAD, 3), (DEAD, 3)),
    ],
)
def test_facts_are_ordered_by_incarnation_then_state(held, heard, result):
    a = make("a")
    teach(a, alive("b", held[1]))
    if held[0] != ALIVE:
        teach(a, fact("b", held[1], held[0], "c"))
    assert state_of(a, "b") == held
    heard_fact = alive("b", heard[1]) if heard[0] == ALIVE else fact("b", heard[1], heard[0], "d")
    teach(a, heard_fact)
    assert state_of(a, "b") == result


def test_unknown_member_is_learned_only_from_a_fact_that_says_where_it_is():
    a = make("a")
    teach(a, fact("x", 1, DEAD, "b"), fact("y", 1, LEFT), fact("z", 1, SUSPECT, "b"))
    assert {m.node_id for m in a.members()} == {a.node_id}
    teach(a, MemberFact(node_id("z"), 1, SUSPECT, node_id("b"), meta("z")))
    # Learned, but not suspected: b's suspicion may be refuted already (test_membership_core).
    assert state_of(a, "z") == (ALIVE, 1)


def test_members_are_capped(monkeypatch):
    from p2pfs.membership import view
    monkeypatch.setattr(view, "MEMBERS_MAX", 3)
    a = make("a")
    teach(a, alive("b"), alive("c"), alive("d"))
    assert len(a.members()) == 3 and state_of(a, "d") is None


def test_push_pull_turns_remote_dead_into_local_suspicion():
    _, (a, b) = joined("a", "b")
    a.handle(b.address, PushPull(True, (MemberFact(b.node_id, 1, DEAD, node_id("c"), meta("b")),)), 5.0)
    assert state_of(a, "b") == (SUSPECT, 1)
    assert a._view.suspicions[b.node_id].accuser_id == a.node_id


def test_version_counts_changes_to_members():
    a = make("a")
    v0 = a.version
    teach(a, alive("b"))
    assert a.version > v0
    v1 = a.version
    teach(a, alive("b"))
    assert a.version == v1, "a fact we already hold changes nothing"
    teach(a, fact("b", 1, SUSPECT, "c"))
    assert a.version > v1


# -- suspicion -----------------------------------------------------------------


def test_confirmations_shorten_the_suspicion():
    names = [f"n{i}" for i in range(12)]
    a = make("a")
    teach(a, *(alive(n) for n in names))
    n = a.live_count
    assert n == 13 and CONFIG.suspicion_confirmations_expected(n) == 2
    teach(a, fact("n0", 1, SUSPECT, "n1"), now_s=0.0)
    s = a._view.suspicions[node_id("n0")]
    assert s.deadline_s() == pytest.approx(CONFIG.suspicion_timeout_s_max(n))
    teach(a, fact("n0", 1, SUSPECT, "n1"), now_s=1.0)  # same accuser: no confirmation
    assert s.confirmations == 0
    teach(a, fact("n0", 1, SUSPECT, "n2"), now_s=1.0)
    assert s.confirmations == 1
    assert a._broadcasts.pending(node_id("n0")).accuser_id == node_id("n2"), "a confirmation is re-gossiped"
    teach(a, fact("n0", 1, SUSPECT, "n3"), now_s=2.0)
    assert s.deadline_s() == pytest.approx(CONFIG.suspicion_timeout_s_min(n))
    a.tick(CONFIG.suspicion_timeout_s_min(n))
    assert state_of(a, "n0") == (DEAD, 1)


# -- dissemination ---------------------------------------------------------------


def test_update_is_piggybacked_retransmit_limit_times():
    names = [f"n{i}" for i in range(20)]
    _, cores = joined("a", *names)
    a = cores[0]
    limit = CONFIG.retransmit_limit(a.live_count)
    assert limit == 4 * math.ceil(math.log10(22))
    suspicion = fact("n0", 1, SUSPECT, "n1")
    teach(a, suspicion)
    carried = 0
    now_s = 0.0
    for _ in range(limit * 3):
        now_s = max(now_s, a.next_deadline_s())
        for send in a.tick(now_s):
            updates = getattr(send.msg, "updates", ())
            if send.to != address("n0"):  # the suspect itself is told on every ping, beyond the limit
                carried += updates.count(suspicion)
    assert carried == limit
    assert a._broadcasts.pending(node_id("n0")) != suspicion


def test_piggyback_respects_byte_cap_and_newest_first():
    from p2pfs.membership.messages import PIGGYBACK_BYTES_MAX, fact_size_bytes
    a = make("a")
    teach(a, *(alive(f"n{i}") for i in range(100)))
    updates = a._piggyback(None, PIGGYBACK_BYTES_MAX)
    assert 0 < len(updates) < 100
    assert len(wire.encode_message(Ping(1, a.node_id, updates))) <= PIGGYBACK_BYTES_MAX
    assert sum(fact_size_bytes(f) for f in updates) <= PIGGYBACK_BYTES_MAX
    assert updates[0].node_id == node_id("n99"), "newest first"


def test_ping_to_a_suspect_carries_its_suspicion_first():
    net, (a, b) = joined("a", "b")
    teach(a, fact("b", 1, SUSPECT, "c"))
    while not (pings := sends_of(a.tick(a.next_deadline_s()), Ping)):
        pass
    assert pings[0].msg.updates[0] == fact("b", 1, SUSPECT, "c")


def test_gossip_round_sends_to_fanout_members_only_when_something_is_pending():
    names = [f"n{i}" for i in range(10)]
    _, cores = joined("a", *names)
    a = cores[0]
    assert sends_of(a.tick(a._next_gossip_s), Gossip) == []
    teach(a, fact("n0", 1, SUSPECT, "n1"))
    gossip = sends_of(a.tick(a.next_deadline_s()), Gossip)
    assert len(gossip) == CONFIG.gossip_fanout
    assert len({g.to for g in gossip}) == CONFIG.gossip_fanout


def test_push_pull_exchanges_full_state():
    _, (a, b) = joined("a", "b")
    teach(b, alive("x"), alive("y"))
    replies = b.handle(a.address, PushPull(False, (alive("a"),)), 1.0)
    assert len(replies) == 1 and replies[0].to == a.address and replies[0].msg.is_reply
    assert replies[0].msg.members[0].node_id == b.node_id, "self first"
    a.handle(b.address, replies[0].msg, 1.0)
    assert {"x", "y"} <= {n for n in ("x", "y") if a.member(node_id(n))}
    assert a.handle(b.address, replies[0].msg, 1.0) == [], "a reply is not answered"


# -- join, leave, reap -------------------------------------------------------------


def test_join_through_seed_and_retry_until_answered():
    a = make("a")
    seed = make("seed")
    sends = a.join([seed.address, a.address], 0.0)
    assert [s.to for s in sends] == [seed.address], "own address skipped"
    assert isinstance(sends[0].msg, PushPull) and not sends[0].msg.is_reply
    retry = [s for s in a.tick(CONFIG.join_retry_interval_s) if isinstance(s.msg, PushPull)]
    assert [s.to for s in retry] == [seed.address]
    net = Net(a, seed)
    net.deliver(a.address, retry, 1.0)
    assert {m.node_id for m in a.members()} == {m.node_id for m in seed.members()} == {a.node_id, seed.node_id}
    later = a.tick(1.0 + CONFIG.join_retry_interval_s)
    assert [s for s in later if s.to == seed.address and isinstance(s.msg, PushPull)] == []


def test_leave_marks_left_everywhere_and_is_final_for_that_incarnation():
    net, (a, b, c) = joined("a", "b", "c")
    sends = a.leave(10.0)
    assert sends and all(isinstance(s.msg, Gossip) for s in sends)
    net.deliver(a.address, sends, 10.0)
    for core in (b, c):
        assert state_of(core, "a") == (LEFT, 1)
        assert node_id("a") not in {m.node_id for m in core.live_members()}
    teach(b, alive("a", 1))
    assert state_of(b, "a") == (LEFT, 1), "stale ALIVE cannot resurrect a left member"
    teach(b, fact("a", 1, DEAD, "c"))
    assert state_of(b, "a") == (LEFT, 1)
    assert [s for s in a.tick(11.0) if isinstance(s.msg, (Ping, PingReq, PushPull))] == []
    teach(b, alive("a", 2))  # a restart: a new incarnation
    assert state_of(b, "a") == (ALIVE, 2)


def test_dead_and_left_members_are_reaped_after_their_times():
    config = dataclasses.replace(CONFIG, dead_reap_s=100.0, left_reap_s=50.0)
    a = make("a", config=config)
    teach(a, alive("b"), alive("c"), alive("d"), now_s=0.0)
    teach(a, fact("b", 1, DEAD, "x"), fact("c", 1, LEFT), now_s=10.0)
    a.tick(59.9)
    assert state_of(a, "c") == (LEFT, 1)
    a.tick(60.0)
    assert state_of(a, "c") is None
    a.tick(109.9)
    assert state_of(a, "b") == (DEAD, 1)
    version = a.version
    a.tick(110.0)
    assert state_of(a, "b") is None and a.version > version
    teach(a, fact("b", 1, DEAD, "x"), now_s=111.0)
    assert state_of(a, "b") is None, "a late DEAD does not bring a reaped member back"
    assert {m.node_id for m in a.members()} == {a.node_id, node_id("d")}


def test_reconnect_push_pulls_a_dead_member():
    _, (a, b) = joined("a", "b")
    teach(a, fact("b", 1, DEAD, "x"), now_s=1.0)
    now_s = a._next_reconnect_s
    pushes = [s for s in a.tick(now_s) if isinstance(s.msg, PushPull)]
    assert [s.to for s in pushes] == [b.address]
    replies = b.handle(a.address, pushes[0].msg, now_s)  # b hears it is "dead" and refutes
    assert b.incarnation == 2
    a.handle(b.address, replies[0].msg, now_s)
    assert state_of(a, "b") == (ALIVE, 2)


def test_relay_nacks_after_its_timeout_and_forwards_late_nothing():
    _, (a, b, c) = joined("a", "b", "c")
    sends = b.handle(a.address, PingReq(77, c.node_id, c.address.host, c.address.port, 0.4, ()), 1.0)
    assert [type(s.msg) for s in sends] == [Ping] and sends[0].to == c.address
    assert b.next_deadline_s() <= 1.4
    assert [(s.to, s.msg) for s in sends_of(b.tick(1.4), Nack)] == [(a.address, Nack(77))]
    ack = c.handle(b.address, sends[0].msg, 1.5)[0]
    assert b.handle(c.address, ack.msg, 1.5) == []
