"""Table tests of the membership building blocks: suspicion, awareness, retransmit queue,
config formulas, messages and their caps."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfs import wire
from p2pfs.membership.awareness import Awareness
from p2pfs.membership.broadcast import BroadcastQueue
from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import (
    MEMBERSHIP_MESSAGES,
    PUSH_PULL_MEMBERS_MAX,
    UPDATES_PER_MESSAGE_MAX,
    Ack,
    Gossip,
    MemberFact,
    MemberMeta,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    fact_size_bytes,
    is_membership_message,
)
from p2pfs.membership.suspicion import Suspicion, remaining_suspicion_time_s

from wire_helpers import Echo

# -- suspicion -------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, k, elapsed_s, expected_s",
    [
        # hashicorp/memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime
        # (min 2 s, max 30 s).
        (0, 3, 0.0, 30.0),
        (1, 3, 2.0, 14.0),
        (2, 3, 3.0, 4.81),
        (3, 3, 4.0, -2.0),
        (4, 3, 5.0, -3.0),
        (5, 3, 10.0, -8.0),
    ],
)
def test_remaining_suspicion_time_matches_memberlist(n, k, elapsed_s, expected_s):
    assert remaining_suspicion_time_s(n, k, elapsed_s, 2.0, 30.0) == pytest.approx(expected_s, abs=1e-9)


def test_suspicion_counts_each_independent_accuser_once_up_to_k():
    s = Suspicion(start_s=100.0, accuser_id="a", k=3, timeout_s_min=2.0, timeout_s_max=30.0)
    assert s.deadline_s() == pytest.approx(130.0)
    assert not s.confirm("a"), "the first accuser is counted up front"
    assert s.confirm("b") and not s.confirm("b")
    assert s.deadline_s() == pytest.approx(116.0)
    assert s.confirm("c") and s.confirm("d")
    assert not s.confirm("e"), "k confirmations already: nothing more to gain"
    assert s.confirmations == 3
    assert s.deadline_s() == pytest.approx(102.0)


def test_suspicion_without_expected_confirmations_uses_the_floor():
    s = Suspicion(start_s=0.0, accuser_id="a", k=0, timeout_s_min=4.0, timeout_s_max=24.0)
    assert s.deadline_s() == 4.0


# -- awareness -------------------------------------------------------------------


def test_awareness_score_is_clamped_and_scales_timeouts():
    a = Awareness(8)
    assert a.scale_timeout_s(0.5) == 0.5
    a.apply_delta(3)
    assert a.score == 3 and a.scale_timeout_s(1.0) == 4.0
    a.apply_delta(100)
    assert a.score == 7 and a.scale_timeout_s(1.0) == 8.0
    a.apply_delta(-100)
    assert a.score == 0


# -- config ------------------------------------------------------------------------


def test_defaults_are_memberlist_lan_but_a_lower_suspicion_floor():
    c = MembershipConfig()
    assert (c.probe_interval_s, c.probe_timeout_s, c.indirect_checks) == (1.0, 0.5, 3)
    assert (c.suspicion_mult, c.suspicion_max_timeout_mult, c.retransmit_mult) == (3, 6, 4)  # mult: LAN's 4
    assert c.suspicion_confirmations == 2
    assert (c.gossip_interval_s, c.gossip_fanout, c.push_pull_interval_s, c.awareness_max) == (0.2, 3, 30.0, 8)


@pytest.mark.parametrize(
    "n, floor_s, ceiling_s, k, retransmits, push_pull_s",
    [
        (1, 3.0, 18.0, 0, 4, 30.0),
        (3, 3.0, 18.0, 0, 4, 30.0),
        (4, 3.0, 18.0, 2, 4, 30.0),
        (10, 3.0, 18.0, 2, 8, 30.0),
        (20, 3.903, 23.418, 2, 8, 30.0),
        (100, 6.0, 36.0, 2, 12, 93.75),
        (1000, 9.0, 54.0, 2, 16, 937.5),
        (10_000, 12.0, 72.0, 2, 20, 9375.0),
    ],
)
def test_derived_timings(n, floor_s, ceiling_s, k, retransmits, push_pull_s):
    c = MembershipConfig()
    assert c.suspicion_timeout_s_min(n) == pytest.approx(floor_s, abs=0.005)
    assert c.suspicion_timeout_s_max(n) == pytest.approx(ceiling_s, abs=0.03)
    assert c.suspicion_confirmations_expected(n) == k
    assert c.retransmit_limit(n) == retransmits
    assert c.push_pull_interval_s_for(n) == push_pull_s


def test_detection_bound_formula():
    c = MembershipConfig()
    assert c.detection_bound_s(2) == pytest.approx(2 + 18.0)
    assert c.detection_bound_s(200) == pytest.approx(2 * 199 + 6 * 3 * 2.301)
    slow = dataclasses.replace(c, probe_interval_s=2.0, probe_timeout_s=1.0)
    assert slow.detection_bound_s(200) == pytest.approx(2 * c.detection_bound_s(200))


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        MembershipConfig(probe_timeout_s=2.0)
    with pytest.raises(ValueError):
        MembershipConfig(gossip_fanout=0)
    with pytest.raises(ValueError):
        MembershipConfig(dead_reap_s=0)


# -- retransmit queue -----------------------------------------------------------------


def _f(name: str, incarnation: int = 1, state: MemberState = MemberState.SUSPECT) -> MemberFact:
    return MemberFact(name, incarnation, state, "x", None)


def test_queue_replaces_older_fact_about_same_member():
    q = BroadcastQueue()
    q.enqueue(_f("a", 1), 10)
    q.take(bytes_max=100, count_max=10, transmit_limit=5)
    q.enqueue(_f("a", 2), 10)
    assert len(q) == 1
    assert q.take(bytes_max=100, count_max=10, transmit_limit=5) == [_f("a", 2)]


def test_queue_least_transmitted_first_then_newest_and_drops_at_limit():
    q = BroadcastQueue()
    q.enqueue(_f("a"), 10)
    assert q.take(bytes_max=100, count_max=1, transmit_limit=3) == [_f("a")]
    q.enqueue(_f("b"), 10)
    q.enqueue(_f("c"), 10)
    assert q.take(bytes_max=100, count_max=2, transmit_limit=3) == [_f("c"), _f("b")]
    assert q.take(bytes_max=100, count_max=10, transmit_limit=3) == [_f("c"), _f("b"), _f("a")]
    assert q.take(bytes_max=100, count_max=10, transmit_limit=3) == [_f("c"), _f("b"), _f("a")]
    assert len(q) == 0
    assert q.take(bytes_max=100, count_max=10, transmit_limit=3) == []


def test_queue_respects_byte_budget_and_skips_what_does_not_fit():
    q = BroadcastQueue()
    q.enqueue(_f("small"), 10)
    q.enqueue(_f("big"), 90)
    assert q.take(bytes_max=50, count_max=10, transmit_limit=3) == [_f("small")]
    assert q.take(bytes_max=100, count_max=10, transmit_limit=3) == [_f("big"), _f("small")]


def test_queue_lower_limit_after_shrink_drops_early():
    q = BroadcastQueue()
    q.enqueue(_f("a"), 10)
    for _ in range(3):
        q.take(bytes_max=100, count_max=10, transmit_limit=10)
    assert q.take(bytes_max=100, count_max=10, transmit_limit=4) == [_f("a")]
    assert len(q) == 0


# -- messages ------------------------------------------------------------------------

META = MemberMeta("node1.example", 7000, "rack-1", 10 * 1024**3, wire.PROTOCOL_VERSION)
ID = "ab" * 32


@pytest.mark.parametrize(
    "msg",
    [
        Ping(1, ID, (MemberFact(ID, 5, MemberState.ALIVE, "", META),)),
        Ack(2**32 - 1, (MemberFact(ID, 5, MemberState.SUSPECT, "cd" * 32, None),)),
        Nack(0),
        PingReq(3, ID, "10.0.0.1", 7001, 0.4, ()),
        Gossip((MemberFact(ID, 2**40, MemberState.LEFT, "", None),)),
        PushPull(True, (MemberFact(ID, 1, MemberState.DEAD, ID, META),)),
    ],
)
def test_messages_round_trip_through_the_codec(msg):
    assert is_membership_message(msg)
    assert type(msg).TYPE in range(20, 40)
    assert wire.decode_message(msg.TYPE, wire.encode_message(msg)) == msg


def test_type_codes_are_in_the_membership_range_and_registered():
    registered = wire.message_types()
    for cls in MEMBERSHIP_MESSAGES:
        assert 20 <= cls.TYPE <= 39 and registered[cls.TYPE] is cls
    assert not is_membership_message(Echo(b""))


@pytest.mark.parametrize(
    "build",
    [
        lambda: MemberFact("", 1, MemberState.ALIVE, "", META),
        lambda: MemberFact("x" * 129, 1, MemberState.SUSPECT, "", None),
        lambda: MemberFact(ID, -1, MemberState.SUSPECT, "", None),
        lambda: MemberFact(ID, 1, MemberState.ALIVE, "", None),
        lambda: MemberMeta("h", 0, "", 1, 1),
        lambda: MemberMeta("h", 1, "z" * 65, 1, 1),
        lambda: Ping(2**32, ID, ()),
        lambda: PingReq(1, ID, "h", 1, 61.0, ()),
        lambda: Gossip(tuple(MemberFact(ID, 1, MemberState.LEFT, "", None) for _ in range(UPDATES_PER_MESSAGE_MAX + 1))),
        lambda: PushPull(False, tuple(MemberFact(ID, 1, MemberState.LEFT, "", None) for _ in range(PUSH_PULL_MEMBERS_MAX + 1))),
    ],
)
def test_messages_check_their_fields(build):
    with pytest.raises(ValueError):
        build()


def test_peer_cannot_send_an_oversized_push_pull():
    fact = ["ab" * 32, 1, int(MemberState.LEFT), "", None]
    import msgpack
    payload = msgpack.packb([False, [fact] * (PUSH_PULL_MEMBERS_MAX + 1)])
    with pytest.raises(wire.WireError):
        wire.decode_message(PushPull.TYPE, payload)
    with pytest.raises(wire.WireError):
        wire.decode_message(Gossip.TYPE, msgpack.packb([[["ab", 1, 0, "", None]]]))  # ALIVE without meta


_text = st.text(min_size=1, max_size=128)


@given(
    node_id=_text,
    accuser=st.text(max_size=128),
    incarnation=st.integers(0, 2**63 - 1),
    state=st.sampled_from(list(MemberState)),
    meta=st.none() | st.builds(
        MemberMeta, st.text(min_size=1, max_size=255), st.integers(1, 65535), st.text(max_size=64),
        st.integers(0, 2**63 - 1), st.integers(0, 65535),
    ),
)
def test_fact_size_matches_the_encoding(node_id, accuser, incarnation, state, meta):
    if meta is None and state == MemberState.ALIVE:
        state = MemberState.SUSPECT
    fact = MemberFact(node_id, incarnation, state, accuser, meta)
    encoded = len(wire.encode_message(Gossip((fact,)))) - len(wire.encode_message(Gossip(())))
    assert fact_size_bytes(fact) == encoded
    assert math.isfinite(fact_size_bytes(fact))
