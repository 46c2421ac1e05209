"""The pure rules of a chain write (p2pfs/replication/quorum_chain.py), driven with explicit times."""

from __future__ import annotations

import pytest

from p2pfs import wire
from p2pfs.replication import messages as dm
from p2pfs.replication.quorum_chain import (
    CHAIN, FORWARD_WAIT_S_MIN, STAR, BadChainReply, ChainRefused, ChainResult, Outcome, chain_capable, check_chain,
    head_failed, hop_times, message_timeout_ms, plan_chunk_write, read_reply, settle,
)
from p2pfs.replication.placement import Target
from p2pfs.replication.quorum import QuorumError, WriteQuorum

A, B, C, D, E = "a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64
NEW = wire.advertised_version(dm.CHAIN_WIRE_VERSION, 2)
OLD = wire.advertised_version(wire.PROTOCOL_VERSION, 2)
CHUNK_ID = bytes(32)


def targets(*node_ids: str) -> list[Target]:
    return [Target(n) for n in node_ids]


# -- which targets form the chain ----------------------------------------------------


def test_a_chain_is_the_peers_in_plan_order_and_the_coordinator_writes_its_own_copy():
    plan = plan_chunk_write(targets(B, A, C), A, {A: NEW, B: NEW, C: NEW}, CHAIN)
    assert plan.local == (Target(A),)
    assert plan.chain == (Target(B), Target(C))
    assert plan.star == ()


def test_a_coordinator_outside_the_plan_sends_one_chain_through_all_three():
    plan = plan_chunk_write(targets(B, C, D), A, {B: NEW, C: NEW, D: NEW}, CHAIN)
    assert (plan.local, plan.chain, plan.star) == ((), (Target(B), Target(C), Target(D)), ())


def test_peers_of_an_older_version_or_unknown_are_written_directly():
    plan = plan_chunk_write(targets(B, C, D, E), A, {B: NEW, C: OLD, D: NEW}, CHAIN)
    assert plan.chain == (Target(B), Target(D))
    assert plan.star == (Target(C), Target(E))


def test_a_chain_of_one_peer_is_a_star_write_and_star_sends_no_chain():
    assert plan_chunk_write(targets(A, B, C), A, {B: NEW, C: OLD}, CHAIN).chain == ()
    star = plan_chunk_write(targets(A, B, C), A, {B: NEW, C: NEW}, STAR)
    assert (star.local, star.chain, star.star) == ((Target(A),), (), (Target(B), Target(C)))


def test_stand_ins_keep_their_hint_in_the_chain():
    plan = plan_chunk_write([Target(A), Target(D, hint_for=B), Target(C)], A, {C: NEW, D: NEW}, CHAIN)
    assert plan.chain == (Target(D, hint_for=B), Target(C))


def test_the_wire_version_is_read_from_the_low_byte_whatever_the_placement_version():
    assert chain_capable(wire.advertised_version(dm.CHAIN_WIRE_VERSION, 1))
    assert chain_capable(wire.advertised_version(dm.CHAIN_WIRE_VERSION, 2))
    assert not chain_capable(wire.advertised_version(2, 2))
    assert not chain_capable(wire.advertised_version(2, 1))


# -- what a receiver refuses ---------------------------------------------------------


@pytest.mark.parametrize("hint_for, rest, why", [
    ("", targets(B, C, D), "longer than rf"),
    ("", targets(B, A), "names this node"),
    ("", targets(B, B), "names a node twice"),
    ("x" * 12, targets(B), "not a node id"),
    ("", [Target(B, hint_for="y")], "not a node id"),
    (A, targets(B), "hint for itself"),
    ("", [Target(B, hint_for=B)], "hint for itself"),
])
def test_a_receiver_refuses_a_chain_too_long_a_loop_a_repeat_or_a_bad_hint(hint_for, rest, why):
    with pytest.raises(ChainRefused, match=why):
        check_chain(A, hint_for, rest, rf=3)


def test_a_receiver_takes_a_chain_of_up_to_rf_nodes():
    check_chain(A, "", targets(B, C), rf=3)
    check_chain(A, E, [Target(B, hint_for=D)], rf=3)
    check_chain(A, "", [], rf=3)


def test_the_wire_caps_the_rest_of_a_chain():
    link = dm.ChainLink(B, "")
    with pytest.raises(wire.FieldError):
        dm.StoreChunkChain(CHUNK_ID, b"x", "", (link,) * dm.RF_MAX, 1000)
    with pytest.raises(wire.FieldError):
        dm.StoreChunkChain(CHUNK_ID, b"x", "", (), 0)
    with pytest.raises(wire.FieldError):
        dm.StoreChunkChainReply(())


# -- deadlines, shrinking per hop ------------------------------------------------------


def test_each_hop_answers_before_its_caller_stops_waiting():
    """A chain of five hops from a coordinator waiting 10 s: every node's answer is due
    before the node before it gives up on it, by at least the margin."""
    caller_gives_up_at_s = 100.0 + 10.0
    now_s, wait_s = 100.0, 10.0
    for _ in range(5):
        times = hop_times(now_s, message_timeout_ms(wait_s), replica_timeout_s=10.0)
        assert times.answer_by_s < caller_gives_up_at_s
        assert times.forward_wait_s is not None
        # The next node is waited for a margin less than this one has to answer.
        assert now_s + times.forward_wait_s < times.answer_by_s
        caller_gives_up_at_s = now_s + times.forward_wait_s
        now_s, wait_s = now_s + 0.01, times.forward_wait_s


def test_a_receiver_never_takes_longer_than_its_own_replica_timeout():
    times = hop_times(5.0, dm.CHAIN_TIMEOUT_MS_MAX, replica_timeout_s=2.0)
    assert times.answer_by_s == 7.0
    assert times.forward_wait_s < 2.0


def test_with_too_little_time_left_the_chunk_is_not_passed_on():
    times = hop_times(0.0, int(FORWARD_WAIT_S_MIN * 1000), replica_timeout_s=10.0)
    assert times.forward_wait_s is None
    assert times.answer_by_s == pytest.approx(FORWARD_WAIT_S_MIN)


# -- what an answer means --------------------------------------------------------------

CHAIN3 = (Target(B), Target(C), Target(D, hint_for=E))


def test_a_full_answer_gives_every_outcome_in_order():
    result = read_reply(CHAIN3, [(B, True, ""), (C, False, "disk full"), (D, True, "")])
    assert result.outcomes == (Outcome(CHAIN3[0], True), Outcome(CHAIN3[1], False, "disk full"),
                               Outcome(CHAIN3[2], True))
    assert result.unacknowledged == ()


def test_nodes_past_the_last_outcome_are_unacknowledged_not_failed():
    result = read_reply(CHAIN3, [(B, True, "")])
    assert result.outcomes == (Outcome(CHAIN3[0], True),)
    assert result.unacknowledged == CHAIN3[1:]


@pytest.mark.parametrize("answered", [
    [],
    [(C, True, "")],
    [(B, True, ""), (D, True, "")],
    [(B, True, ""), (C, True, ""), (D, True, ""), (E, True, "")],
])
def test_an_answer_that_does_not_follow_the_chain_is_a_bad_reply(answered):
    with pytest.raises(BadChainReply):
        read_reply(CHAIN3, answered)


def test_a_head_that_did_not_answer_failed_and_the_rest_is_unacknowledged():
    result = head_failed(CHAIN3, "timed out")
    assert result.outcomes == (Outcome(CHAIN3[0], False, "timed out"),)
    assert result.unacknowledged == CHAIN3[1:]


# -- the mid-chain failure rule, counted in the write quorum -----------------------------


def quorum_of(*chain: Target, spare=(E,)) -> WriteQuorum:
    """A quorum of rf = 3, w = 2: this node (A) and the chain."""
    return WriteQuorum("chunk 0", [Target(A), *chain], list(spare), needed=2)


def test_b_failing_mid_chunk_gets_a_stand_in_for_b_and_c_written_directly():
    quorum = quorum_of(Target(B), Target(C))
    quorum.on_answer(Target(A))
    direct = settle(quorum, head_failed((Target(B), Target(C)), "connection lost"))
    assert direct == [Target(E, hint_for=B), Target(C)]
    assert quorum.acks == 1
    quorum.on_answer(direct[0])
    quorum.on_answer(direct[1])
    assert quorum.check() == 3


def test_c_failing_behind_a_healthy_b_gets_a_stand_in_with_a_hint():
    quorum = quorum_of(Target(B), Target(C))
    quorum.on_answer(Target(A))
    direct = settle(quorum, read_reply((Target(B), Target(C)), [(B, True, ""), (C, False, "timed out")]))
    assert direct == [Target(E, hint_for=C)]
    assert quorum.acks == 2
    assert not quorum.done
    quorum.on_answer(direct[0])
    assert quorum.check() == 3


def test_every_ack_counted_is_a_node_reported_stored_and_a_failure_without_stand_ins_falls_short():
    quorum = quorum_of(Target(B), Target(C), spare=())
    direct = settle(quorum, ChainResult((Outcome(Target(B), False, "x"), Outcome(Target(C), False, "y")), ()))
    assert direct == []
    quorum.on_failure(Target(A), "local disk")
    assert quorum.done
    with pytest.raises(QuorumError, match="chunk 0"):
        quorum.check()
