"""Unit tests of the pure membership core: probes, awareness, refutation (explicit now_s, no trio)."""

from __future__ import annotations

import dataclasses
import math

from p2pfs.membership.messages import Ack, Gossip, MemberFact, Nack, Ping, PingReq, PushPull
from p2pfs.membership.state import Send

from membership_helpers import (
    ALIVE, CONFIG, DEAD, LEFT, SUSPECT, address, alive, fact, joined, make, meta, node_id, sends_of, state_of,
    teach,
)


# -- probes -----------------------------------------------------------------


def test_ping_ack_keeps_member_alive():
    net, (a, b) = joined("a", "b")
    sends = a.tick(a.next_deadline_s())
    pings = sends_of(sends, Ping)
    assert len(pings) == 1 and pings[0].to == b.address
    assert pings[0].msg.target_id == b.node_id
    replies = b.handle(a.address, pings[0].msg, 0.5)
    acks = sends_of(replies, Ack)
    assert len(acks) == 1 and acks[0].to == a.address and acks[0].msg.seq == pings[0].msg.seq
    a.handle(b.address, acks[0].msg, 0.5)
    net.tick(10.0)
    assert state_of(a, "b") == (ALIVE, 1)


def test_ping_for_another_node_is_not_acked():
    _, (a, b) = joined("a", "b")
    assert sends_of(b.handle(a.address, Ping(5, node_id("someone-else"), ()), 0.0), Ack) == []
    assert len(sends_of(b.handle(a.address, Ping(5, b.node_id, ()), 0.0), Ack)) == 1


def test_indirect_probe_saves_member_whose_direct_path_is_broken():
    net, cores = joined("a", "b", "c", "d", "e")
    a = cores[0]
    start_s = a.next_deadline_s()
    pings = sends_of(a.tick(start_s), Ping)
    target = next(c for c in cores if c.address == pings[0].to)
    lose_direct = lambda src, s: {src, s.to} == {a.address, target.address}
    net.deliver(a.address, pings, start_s, lose_direct)
    reqs = sends_of(a.tick(start_s + CONFIG.probe_timeout_s), PingReq)
    assert len(reqs) == CONFIG.indirect_checks
    assert all(r.msg.target_id == target.node_id and r.msg.seq == pings[0].msg.seq for r in reqs)
    assert all(0 < r.msg.nack_timeout_s < CONFIG.probe_interval_s - CONFIG.probe_timeout_s for r in reqs)
    net.deliver(a.address, reqs, start_s + 0.6, lose_direct)
    assert a._probe is None, "a forwarded ack ends the probe"
    a.tick(start_s + CONFIG.probe_interval_s)
    assert a.member(target.node_id).state == ALIVE
    assert a.awareness_score == 0


def test_failed_probe_suspects_tells_the_suspect_then_declares_dead():
    net, (a, b, c) = joined("a", "b", "c")
    start_s = a.next_deadline_s()
    probe_target = sends_of(a.tick(start_s), Ping)[0].to
    a.tick(start_s + CONFIG.probe_timeout_s)  # ping-reqs go out; nobody answers
    end_sends = a.tick(start_s + CONFIG.probe_interval_s)
    suspect = next(c for c in (b, c) if c.address == probe_target)
    assert a.member(suspect.node_id).state == SUSPECT
    told = [s for s in sends_of(end_sends, Gossip) if s.to == suspect.address]
    assert told and told[0].msg.updates[0] == MemberFact(suspect.node_id, 1, SUSPECT, a.node_id, None)
    # Three live members: nobody else can confirm (k = 0), so the floor applies.
    assert CONFIG.suspicion_confirmations_expected(3) == 0
    dead_at_s = start_s + CONFIG.probe_interval_s + CONFIG.suspicion_timeout_s_min(3)
    a.tick(dead_at_s - 0.001)
    assert a.member(suspect.node_id).state == SUSPECT
    a.tick(dead_at_s)
    member = a.member(suspect.node_id)
    assert member.state == DEAD and member.state_since_s == dead_at_s
    assert suspect.node_id not in {m.node_id for m in a.live_members()}


def test_missing_nacks_raise_awareness_received_nacks_do_not():
    _, cores = joined("a", "b", "c", "d", "e")
    a = cores[0]
    t0 = a.next_deadline_s()
    a.tick(t0)
    reqs = sends_of(a.tick(t0 + CONFIG.probe_timeout_s), PingReq)
    for r in reqs:  # every relay answers "no ack from the target"
        a.handle(r.to, Nack(r.msg.seq), t0 + 0.9)
    a.tick(t0 + CONFIG.probe_interval_s)
    assert a.awareness_score == 0, "relays answered: the target, not us, is the problem"
    # Next probe: the relays stay silent too, so we may be the sick one.
    t1 = t0 + CONFIG.probe_interval_s
    a.tick(t1 + CONFIG.probe_timeout_s)
    a.tick(t1 + CONFIG.probe_interval_s)
    assert a.awareness_score == CONFIG.indirect_checks


def test_awareness_stretches_probe_interval_and_timeout():
    # No relays, and a suspicion long enough that b stays a probe target.
    config = dataclasses.replace(CONFIG, indirect_checks=0, suspicion_mult=100)
    _, (a, b) = joined("a", "b", config=config)
    now_s = a.next_deadline_s()
    ping_times = []
    for _ in range(200):
        sends = a.tick(now_s)
        if sends_of(sends, Ping):
            ping_times.append(now_s)
        now_s = a.next_deadline_s()
        if len(ping_times) == 6:
            break
    gaps = [round(t2 - t1, 6) for t1, t2 in zip(ping_times, ping_times[1:])]
    # Each failed probe (no relays: +1) stretches the next period by one interval.
    assert gaps == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert a.awareness_score == 5
    # The stretched probe waits (score + 1) * probe_timeout_s before going indirect.
    assert a._probe is not None and math.isclose(a._probe.timeout_s - ping_times[-1], 0.5 * 6)


def test_awareness_is_capped_and_recovers_on_success():
    config = dataclasses.replace(CONFIG, indirect_checks=0, suspicion_mult=100)
    _, (a, b) = joined("a", "b", config=config)
    for _ in range(1000):
        a.tick(a.next_deadline_s())
        if a._next_probe_s > 60.0:
            break
    assert a.awareness_score == config.awareness_max - 1, "capped at awareness_max - 1"
    assert a.member(b.node_id).state == SUSPECT
    acks = 0
    for _ in range(100):
        now_s = a.next_deadline_s()
        for send in sends_of(a.tick(now_s), Ping):
            for reply in sends_of(b.handle(a.address, send.msg, now_s), Ack):
                a.handle(b.address, reply.msg, now_s)
                acks += 1
        if acks == 3:
            break
    assert a.awareness_score == config.awareness_max - 4


# -- incarnations and ordering ----------------------------------------------


def test_refutation_raises_incarnation_and_clears_the_suspicion():
    net, (a, b, c) = joined("a", "b", "c")
    teach(a, fact("b", 1, SUSPECT, "c"))
    assert state_of(a, "b") == (SUSPECT, 1)
    sends = b.handle(a.address, Gossip((fact("b", 1, SUSPECT, "c"),)), 1.0)
    assert b.incarnation == 2
    assert b.awareness_score == 1, "having to refute counts against our own health"
    # The refutation goes straight to the accuser, c (see the test below), and to gossip.
    assert [(s.to, s.msg) for s in sends] == [(c.address, Gossip((MemberFact(b.node_id, 2, ALIVE, "", meta("b")),)))]
    refutation = b._piggyback(None, 10_000)
    assert MemberFact(b.node_id, 2, ALIVE, "", meta("b")) in refutation
    a.handle(b.address, Gossip(refutation), 1.1)
    assert state_of(a, "b") == (ALIVE, 2)
    assert a._view.suspicions == {}
    a.tick(1000.0)
    assert state_of(a, "b") == (ALIVE, 2)


def test_refutation_reaches_the_accuser_at_once_whoever_passed_the_accusation_on():
    # a suspected b; b hears of it from c, not from a (a's own word to b was lost). Gossip
    # alone would reach a only when a random fan-out or a probe picks it; sent straight
    # to a, the refutation clears a's suspicion before any timer runs.
    names = ["a", "b", "c"] + [f"m{i}" for i in range(7)]
    net, cores = joined(*names)
    a, b, c = cores[:3]
    suspicion = fact("b", 1, SUSPECT, "a")
    teach(a, suspicion)
    teach(c, suspicion)
    assert state_of(a, "b") == (SUSPECT, 1)
    net.deliver(c.address, [Send(b.address, Gossip((suspicion,)), b.node_id)], 1.0)
    assert b.incarnation == 2
    assert state_of(a, "b") == (ALIVE, 2)
    assert b.node_id not in a._view.suspicions
    # An accusation whose accuser we do not know is refuted by gossip alone.
    stranger = MemberFact(b.node_id, 2, DEAD, node_id("stranger"), None)
    assert b.handle(c.address, Gossip((stranger,)), 2.0) == []
    assert b.incarnation == 3


def test_a_joiner_does_not_inherit_a_suspicion_it_cannot_see_refuted():
    # c joins from a's full state while a still holds b suspected at incarnation 1; b has refuted
    # already (incarnation 2) and the refutation's gossip is over. Held as c's own suspicion, it
    # would run out into DEAD with nothing to cancel it (seen in a 50-process start-up).
    c = make("c")
    suspected_b = dataclasses.replace(alive("b"), state=SUSPECT, accuser_id=node_id("a"))
    c.handle(address("a"), PushPull(True, (alive("a"), suspected_b)), 1.0)
    assert state_of(c, "b") == (ALIVE, 1)
    assert c._view.suspicions == {}
    assert not [f for f in c._piggyback(None, 1 << 20) if f.state == SUSPECT], "the stale suspicion is not gossiped on"
    c.tick(1000.0)  # far past any suspicion timeout; no probe of b has failed yet
    assert state_of(c, "b") == (ALIVE, 1)
    # A new accusation, or a DEAD in a full state (our own suspicion then), still counts.
    teach(c, fact("b", 1, SUSPECT, "a"), now_s=1000.0)
    assert state_of(c, "b") == (SUSPECT, 1)
    d = make("d")
    d.handle(address("a"), PushPull(True, (alive("a"), dataclasses.replace(alive("b"), state=DEAD))), 1.0)
    assert d.member(node_id("b")) is None  # unsigned: no record, so not introduced at all


def test_a_stale_suspicion_is_answered_with_the_refutation_to_whoever_passes_it_on():
    # b refuted (incarnation 2) and c heard it; a heard the suspicion only afterwards, the
    # refutation's gossip over. When a passes the suspicion on to c, c answers a at once.
    net, (a, b, c, d) = joined("a", "b", "c", "d")
    teach(c, alive("b", 2))
    teach(a, fact("b", 1, SUSPECT, "d"))
    assert state_of(a, "b") == (SUSPECT, 1)
    stale = Gossip((fact("b", 1, SUSPECT, "d"),))
    sends = c.handle(a.address, stale, 1.0, sender_id=a.node_id)
    assert [(s.to, s.to_id) for s in sends] == [(a.address, a.node_id)]
    assert sends[0].msg.updates == (MemberFact(b.node_id, 2, ALIVE, "", meta("b")),)
    net.deliver(c.address, sends, 1.0)
    assert state_of(a, "b") == (ALIVE, 2)
    assert b.node_id not in a._view.suspicions
    # Only accusations older than an ALIVE we hold are answered; the same incarnation is news.
    assert c.handle(a.address, Gossip((fact("b", 2, SUSPECT, "d"),)), 2.0, sender_id=a.node_id) == []
    assert c.handle(a.address, Gossip((fact("b", 1, SUSPECT, "d"),)), 2.0, sender_id=a.node_id) == []


def test_refutes_dead_and_left_claims_and_ignores_old_ones():
    b = make("b", incarnation=10)
    teach(b, fact("b", 9, DEAD, "a"))
    assert b.incarnation == 10
    teach(b, fact("b", 10, DEAD, "a"))
    assert b.incarnation == 11
    teach(b, fact("b", 11, LEFT))
    assert b.incarnation == 12
    assert b.member(b.node_id).state == ALIVE


def test_fact_at_the_largest_incarnation_about_self_is_ignored():
    from p2pfs.membership.messages import INCARNATION_MAX
    b = make("b")
    teach(b, MemberFact(b.node_id, INCARNATION_MAX, DEAD, node_id("a"), None))
    assert b.incarnation == 1 and b.member(b.node_id).state == ALIVE


def test_restart_with_lower_incarnation_refutes_its_previous_life():
    # The previous life refuted its way to incarnation 1000; the new one starts lower.
    b = make("b", incarnation=900)
    teach(b, MemberFact(b.node_id, 1000, ALIVE, "", meta("b")))
    assert b.incarnation == 1001
    teach(b, fact("b", 1000, DEAD, "a"))
    assert b.incarnation == 1001
