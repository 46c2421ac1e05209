"""Failure detection, faster and no noisier (issue 14): the lower suspicion floor with memberlist's
two confirmations kept, and a refuted accusation answered again when it comes back."""

from __future__ import annotations

import pytest

from p2pfs.membership.messages import Ack, Ping

from membership_helpers import ALIVE, CONFIG, SUSPECT, fact, joined, node_id, sends_of, state_of, teach


def test_floor_is_three_periods_scaled_and_two_confirmations_bring_it_there():
    assert CONFIG.suspicion_timeout_s_min(5) == pytest.approx(3.0)
    assert CONFIG.suspicion_timeout_s_min(20) == pytest.approx(3.903)
    assert CONFIG.suspicion_confirmations_expected(20) == 2
    assert CONFIG.suspicion_confirmations_expected(3) == 0  # nobody else could confirm


def test_a_refuted_suspicion_that_comes_back_is_answered_with_the_current_alive():
    net, (a, b, c) = joined("a", "b", "c")
    teach(a, fact("a", 1, SUSPECT, "b"), now_s=1.0)  # a refutes: incarnation 2
    assert a.incarnation == 2
    while a.pending_broadcasts:  # the refutation's copies all go out ... and are all lost
        a._piggyback(None, 1 << 20)
    # b missed it, and pings a with its suspicion first in the piggyback.
    teach(b, fact("a", 1, SUSPECT, "c"), now_s=1.0)
    ping = Ping(42, a.node_id, (fact("a", 1, SUSPECT, "c"),))
    acks = sends_of(a.handle(b.address, ping, 2.0), Ack)
    assert [s.to for s in acks] == [b.address]
    assert [(f.node_id, f.incarnation, f.state) for f in acks[0].msg.updates] == [(node_id("a"), 2, ALIVE)]
    b.handle(a.address, acks[0].msg, 2.0)
    assert state_of(b, "a") == (ALIVE, 2)


def test_an_accusation_at_the_current_incarnation_is_still_refuted_by_a_new_one():
    _, (a, b) = joined("a", "b")
    teach(a, fact("a", 1, SUSPECT, "b"), now_s=1.0)
    teach(a, fact("a", 2, SUSPECT, "b"), now_s=2.0)
    assert a.incarnation == 3
