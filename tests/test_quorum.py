"""The pure quorum rules, driven one answer at a time (no trio, no clock, no network)."""

from __future__ import annotations

import pytest

from p2pfs import errors
from p2pfs.replication.placement import Target
from p2pfs.replication.quorum import (
    DONE,
    WAIT,
    ChunkRead,
    Decision,
    HintPlan,
    QuorumError,
    ReadQuorum,
    WriteQuorum,
    hint_plan,
    keep_stand_in_copy,
    quorum_size,
)
from p2pfs.storage import NameEntry, Timestamp

P0, P1, P2, S0, S1 = (c * 64 for c in "abcde")  # three preferred replicas, two stand-ins
PREFERRED = (P0, P1, P2)
OLD = NameEntry("x", Timestamp(100, 0), P0, None)
NEW = NameEntry("x", Timestamp(200, 0), P0, None)


def test_quorum_error_is_unavailable():
    assert issubclass(QuorumError, errors.Unavailable)


@pytest.mark.parametrize(
    "wanted, ring_size, expected",
    [(2, 5, 2), (2, 1, 1), (3, 3, 3), (3, 0, 0)],
)
def test_a_quorum_never_exceeds_the_ring(wanted, ring_size, expected):
    assert quorum_size(wanted, ring_size) == expected


# -- writes -----------------------------------------------------------------------

def _write(spare=(S0, S1), needed=2) -> WriteQuorum:
    return WriteQuorum("chunk 0", [Target(P0), Target(P1), Target(P2)], list(spare), needed)


@pytest.mark.parametrize(
    "events, decisions, acks, met",
    [
        # every replica acknowledges
        ([("ok", P0), ("ok", P1), ("ok", P2)], [WAIT, WAIT, DONE], 3, True),
        # a failure is replaced by the first stand-in, with a hint for the failed replica
        ([("fail", P1), ("ok", P0), ("ok", S0), ("ok", P2)],
         [Decision(retry=Target(S0, P1)), WAIT, WAIT, DONE], 3, True),
        # a failed stand-in is replaced by the next, still hinting for the original owner
        ([("fail", P1), ("fail", S0, P1), ("ok", S1, P1), ("ok", P0), ("ok", P2)],
         [Decision(retry=Target(S0, P1)), Decision(retry=Target(S1, P1)), WAIT, WAIT, DONE], 3, True),
    ],
)
def test_write_quorum_table(events, decisions, acks, met):
    quorum = _write()
    got = []
    for kind, node, *hint in events:
        target = Target(node, *hint)
        got.append(quorum.on_answer(target) if kind == "ok" else quorum.on_failure(target, "down"))
    assert got == decisions
    assert quorum.done and quorum.acks == acks
    assert quorum.check() == acks


def test_write_quorum_out_of_stand_ins_fails_below_w_with_the_reasons():
    quorum = _write(spare=())
    assert quorum.on_failure(Target(P0), "refused") == WAIT
    assert quorum.on_failure(Target(P1), "timed out") == WAIT
    assert quorum.on_answer(Target(P2)) == DONE
    with pytest.raises(QuorumError, match=r"chunk 0: 1 of 2 required replicas acknowledged .*refused.*timed out"):
        quorum.check()


def test_write_quorum_with_no_targets_is_done_at_once():
    quorum = WriteQuorum("name 'x'", [], [], 0)
    assert quorum.done and quorum.check() == 0


# -- reads --------------------------------------------------------------------------

def _read(targets=(Target(P0), Target(P1), Target(P2)), spare=(S0, S1), needed=2) -> ReadQuorum:
    return ReadQuorum("reading name 'x'", PREFERRED, list(targets), list(spare), needed)


def test_two_preferred_answers_make_a_read():
    quorum = _read()
    assert quorum.on_answer(Target(P0), NEW) == WAIT
    assert quorum.on_answer(Target(P1), OLD) == DONE
    outcome = quorum.outcome()
    assert outcome.winner == NEW
    assert outcome.repairs == (Target(P1),)


def test_absent_needs_every_reachable_preferred_replica():
    quorum = _read()
    assert quorum.on_answer(Target(P0), None) == WAIT
    assert quorum.on_answer(Target(P1), None) == WAIT  # two "absent" count, but P2 may hold it
    assert quorum.on_answer(Target(P2), None) == DONE
    assert quorum.outcome().winner is None


def test_a_stand_ins_nothing_here_does_not_count():
    """Seed 30 of the chaos suite: two quick "nothing here" from stand-ins must not make "absent"."""
    quorum = _read(targets=(Target(S0, P0), Target(P1), Target(S1, P2)), spare=())
    assert quorum.on_answer(Target(S0, P0), None) == WAIT
    assert quorum.on_answer(Target(S1, P2), None) == WAIT  # P1 (which holds the write) is slow
    assert not quorum.done
    assert quorum.on_failure(Target(P1), "timed out") == DONE
    with pytest.raises(QuorumError, match="0 of 2"):
        quorum.outcome()


def test_a_stand_in_that_holds_the_name_counts():
    quorum = _read(targets=(Target(S0, P0), Target(P1), Target(P2)))
    assert quorum.on_answer(Target(S0, P0), NEW) == WAIT
    assert quorum.on_answer(Target(P1), OLD) == DONE
    outcome = quorum.outcome()
    assert outcome.winner == NEW
    assert outcome.repairs == (Target(P1),)


def test_a_version_found_is_returned_short_of_quorum():
    quorum = _read(spare=())
    assert quorum.on_failure(Target(P0), "down") == WAIT
    assert quorum.on_failure(Target(P1), "down") == WAIT
    assert quorum.on_answer(Target(P2), OLD) == DONE
    assert quorum.outcome().winner == OLD


def test_a_failed_read_asks_a_stand_in_and_repairs_it_under_the_hint():
    quorum = _read()
    assert quorum.on_failure(Target(P0), "down") == Decision(retry=Target(S0, P0))
    assert quorum.on_answer(Target(S0, P0), None) == WAIT  # a stand-in's "nothing": not counted
    assert quorum.on_answer(Target(P1), NEW) == WAIT  # one answer that counts, r = 2
    assert quorum.on_answer(Target(P2), OLD) == DONE
    outcome = quorum.outcome()
    assert outcome.winner == NEW
    # Both stale replicas get the winner; the stand-in under the hint it was asked with.
    assert outcome.repairs == (Target(P2), Target(S0, P0))


# -- chunk reads ----------------------------------------------------------------------

def test_chunk_read_repairs_only_preferred_replicas_found_lacking():
    read = ChunkRead(b"\x01" * 32, [P0, S0, P1, P2], PREFERRED)
    assert read.first() == P0
    assert read.on_lacking(P0, "corrupt copy") == S0
    assert read.on_lacking(S0, "not held") == P1
    assert read.on_failure(P1, "timed out") == P2
    assert read.repairs() == [Target(P0)]  # not the stand-in, not the one that timed out


def test_chunk_read_out_of_replicas_names_every_reason():
    read = ChunkRead(b"\x02" * 32, [P0], PREFERRED)
    assert read.first() == P0
    assert read.on_failure(P0, "timed out") is None
    error = read.error()
    assert isinstance(error, QuorumError) and "timed out" in str(error)


# -- hints ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "owners, in_ring, alive, forget, deliver",
    [
        ([P0], [P0, P1], [P0], (), (P0,)),  # back: hand over
        ([P0], [P0, P1], [P1], (), ()),  # still down, still in the ring: wait
        ([P0], [P1], [P0], (P0,), ()),  # out of the ring (left, or dead past grace): forget
        ([S0], [S0], [S0], (), ()),  # hints for this node itself: never sent
    ],
)
def test_hint_plan_table(owners, in_ring, alive, forget, deliver):
    assert hint_plan(owners, in_ring, alive, me=S0) == HintPlan(forget, deliver)


@pytest.mark.parametrize(
    "preferred, hinted, keep",
    [((P0, P1, P2), False, False), ((P0, S0, P2), False, True), ((P0, P1, P2), True, True)],
)
def test_a_stand_in_keeps_its_copy_while_hinted_or_placed_here(preferred, hinted, keep):
    assert keep_stand_in_copy(S0, preferred, hinted) is keep
