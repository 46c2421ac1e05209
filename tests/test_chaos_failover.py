"""The chaos workload's outcomes when the client fails over: an op is `fail` only if no
attempt reached a coordinator, and `answered` only if no coordinator reached may still be
working on it. And the summary's share of gets and puts that succeeded."""

from __future__ import annotations

import pytest

from p2pfs import errors, net, wire
from p2pfs.address import Address
from p2pfs.chaos import checker
from p2pfs.chaos.history import ABSENT, DELETE, FAIL, GET, INFO, OK, PUT, Op
from p2pfs.chaos.workload import classify
from p2pfs.client import NodeUnreachable

A, B = Address("127.0.0.2", 7000), Address("127.0.0.3", 7000)


def chained(error: errors.P2pfsError, cause: BaseException) -> errors.P2pfsError:
    """``error`` as the client library raises it: translated from ``cause``."""
    try:
        try:
            raise cause
        except type(cause):
            raise error from None
    except type(error) as raised:
        return raised


UNREACHABLE = NodeUnreachable("cannot reach node")
QUORUM = chained(errors.Unavailable("quorum not met"), net.RemoteError(wire.ErrorCode.UNAVAILABLE, "quorum"))
TIMED_OUT = chained(errors.Unavailable("no answer in time"), net.RequestTimeout("timed out"))
NOT_FOUND = chained(errors.NotFound("no file"), net.RemoteError(wire.ErrorCode.NOT_FOUND, "no file"))
GAVE_UP = errors.Unavailable("cannot do it at any node tried")


@pytest.mark.parametrize(
    "kind, error, attempts, outcome, answered",
    [
        (PUT, GAVE_UP, [(A, UNREACHABLE), (B, UNREACHABLE)], FAIL, True),  # nothing was ever sent
        (PUT, GAVE_UP, [(A, UNREACHABLE), (B, QUORUM)], INFO, True),  # B answered: it is done with it
        (PUT, GAVE_UP, [(A, TIMED_OUT), (B, UNREACHABLE)], INFO, False),  # A may still stamp it later
        (DELETE, NOT_FOUND, [(A, UNREACHABLE), (B, NOT_FOUND)], FAIL, True),  # no file: nothing written
        (DELETE, NOT_FOUND, [(A, QUORUM), (B, NOT_FOUND)], INFO, True),  # A may have written the tombstone
        (GET, NOT_FOUND, [(A, UNREACHABLE), (B, NOT_FOUND)], OK, True),  # read "absent"
        (GET, GAVE_UP, [(A, TIMED_OUT), (B, QUORUM)], FAIL, False),  # a failed read changes nothing
    ],
)
def test_an_op_that_failed_over_is_judged_by_every_attempt(kind, error, attempts, outcome, answered):
    op = Op(op_id=1, worker=0, kind=kind, name="f", node="n1", invoke_s=0.0)
    classify(op, error, attempts)
    assert (op.outcome, op.answered) == (outcome, answered)
    assert op.value == (ABSENT if outcome == OK else "")


def test_the_summary_gives_the_share_of_gets_and_puts_that_succeeded():
    ops = [Op(op_id=i, worker=0, kind=kind, name="f", node="n1", invoke_s=0.0, outcome=outcome, attempts=tries)
           for i, (kind, outcome, tries) in enumerate(
               [(GET, OK, 1), (GET, OK, 2), (GET, FAIL, 3), (GET, OK, 1), (PUT, OK, 1), (PUT, INFO, 2),
                (DELETE, FAIL, 1)])]
    summary = checker.summarize(1, ops, [], [], [])
    assert summary["succeeded"] == {"get": {"ok": 3, "total": 4, "fraction": 0.75},
                                    "put": {"ok": 1, "total": 2, "fraction": 0.5}}
    assert summary["failed_over"] == 3
    assert "gets 75.00% (3 of 4), puts 50.00% (1 of 2); 3 served after failing over" in checker.render_summary(summary)
