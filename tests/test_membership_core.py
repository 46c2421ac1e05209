"""Unit tests of the pure membership core, driven with explicit now_s (no trio, no clock)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from typing import Callable

import pytest

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import (
    Ack,
    Gossip,
    MemberFact,
    MemberMeta,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
)
from p2pfs.membership.state import Membership, Send

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
CONFIG = MembershipConfig()


def node_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def address(name: str) -> Address:
    return Address(f"{name}.test", 7000)


def meta(name: str) -> MemberMeta:
    return MemberMeta(f"{name}.test", 7000, "z1", 1000, wire.PROTOCOL_VERSION)


def make(name: str, *, now_s: float = 0.0, incarnation: int = 1, config: MembershipConfig = CONFIG, seed: int = 0) -> Membership:
    return Membership(
        node_id=node_id(name), address=address(name), zone="z1", capacity_bytes=1000,
        protocol_version=wire.PROTOCOL_VERSION, incarnation_initial=incarnation, config=config,
        rng=random.Random(seed), now_s=now_s,
    )


def alive(name: str, incarnation: int = 1) -> MemberFact:
    return MemberFact(node_id(name), incarnation, ALIVE, "", meta(name))


def fact(name: str, incarnation: int, state: MemberState, accuser: str = "") -> MemberFact:
    return MemberFact(node_id(name), incarnation, state, node_id(accuser) if accuser else "", None)


def teach(core: Membership, *facts: MemberFact, now_s: float = 0.0) -> list[Send]:
    return core.handle(address("teacher"), Gossip(tuple(facts)), now_s)


def state_of(core: Membership, name: str) -> tuple[MemberState, int] | None:
    member = core.member(node_id(name))
    return None if member is None else (member.state, member.incarnation)


class Net:
    """Instant delivery between cores by address, with a filter to lose messages."""

    def __init__(self, *cores: Membership) -> None:
        self.cores = {c.address: c for c in cores}
        self.log: list[tuple[Address, Send]] = []

    def deliver(self, sender: Address, sends: list[Send], now_s: float, lose: Callable[[Address, Send], bool] = lambda a, s: False) -> None:
        queue = [(sender, s) for s in sends]
        for _ in range(10_000):
            if not queue:
                return
            src, send = queue.pop(0)
            self.log.append((src, send))
            if send.to not in self.cores or lose(src, send):
                continue
            queue += [(send.to, s) for s in self.cores[send.to].handle(src, send.msg, now_s)]
        raise AssertionError("message storm")

    def tick(self, now_s: float, lose: Callable[[Address, Send], bool] = lambda a, s: False) -> None:
        for core in list(self.cores.values()):
            self.deliver(core.address, core.tick(now_s), now_s, lose)

    def run(self, until_s: float, step_s: float = 0.01, lose: Callable[[Address, Send], bool] = lambda a, s: False) -> float:
        now_s = 0.0
        while now_s < until_s:
            now_s = round(now_s + step_s, 6)
            self.tick(now_s, lose)
        return now_s


def joined(*names: str, config: MembershipConfig = CONFIG) -> tuple[Net, list[Membership]]:
    """Cores that know each other, ALIVE at incarnation 1."""
    cores = [make(n, config=config, seed=i) for i, n in enumerate(names)]
    for core in cores:
        teach(core, *(alive(n) for n in names))
        while core.pending_broadcasts:  # start with empty queues
            core._piggyback(None, 1 << 20)
    return Net(*cores), cores


def sends_of(sends: list[Send], kind: type) -> list[Send]:
    return [s for s in sends if isinstance(s.msg, kind)]


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
    assert sends == []
    refutation = b._piggyback(None, 10_000)
    assert MemberFact(b.node_id, 2, ALIVE, "", meta("b")) in refutation
    a.handle(b.address, Gossip(refutation), 1.1)
    assert state_of(a, "b") == (ALIVE, 2)
    assert a._view.suspicions == {}
    a.tick(1000.0)
    assert state_of(a, "b") == (ALIVE, 2)


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
    assert state_of(a, "z") == (SUSPECT, 1)


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
