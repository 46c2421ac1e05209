"""Placement versions: carried in the signed member record, agreed on by the ring's members, and
the previous version's ring kept for name reads while data moves (tests/test_placement_upgrade_processes.py
upgrades a real cluster)."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from p2pfs import identity, wire
from p2pfs.address import Address
from p2pfs.claims import NodeClaims
from p2pfs.membership import Member, MemberState
from p2pfs.membership import records
from p2pfs.membership.messages import MemberFact, MemberMeta, Ping
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.placement import placement_version
from p2pfs.replication import view as view_module
from p2pfs.replication.view import PLACEMENT_FILE_NAME, RingView
from p2pfs.ring import PLACEMENT_VERSION_NEWEST, REPLICAS_NEAREST, REPLICAS_WALK, Ring, RingMember
from p2pfs.wire import Role

from clock_helpers import StepClock

FALLBACK_S = 100.0
WAIT_S = 30.0  # generous: the machine running the suite may be loaded


def test_a_record_without_a_placement_version_means_version_1_and_version_1_sends_what_older_nodes_did():
    assert wire.placement_version_of(wire.PROTOCOL_VERSION) == 1
    assert wire.advertised_version(wire.PROTOCOL_VERSION, 1) == wire.PROTOCOL_VERSION
    advertised = wire.advertised_version(wire.PROTOCOL_VERSION, 2)
    assert advertised != wire.PROTOCOL_VERSION
    assert wire.placement_version_of(advertised) == 2
    assert advertised & 0xFF == wire.PROTOCOL_VERSION


def test_a_record_advertising_version_2_keeps_the_five_fields_and_is_checked_as_any_other():
    # What an older node does with it: decode a MemberMeta of exactly five fields (the wire
    # decoder refuses any other count), and check the signature over those five.
    ca = identity.create_ca()
    key = ed25519.Ed25519PrivateKey.generate()
    address = Address("node.test", 7000)
    cert_der = ca.issue(key.public_key(), Role.NODE, common_name="n",
                        claims=NodeClaims(address, "", 10**6)).public_bytes(Encoding.DER)
    signer = records.RecordSigner(key, cert_der)
    meta = MemberMeta(address.host, address.port, "", 1000, wire.advertised_version(wire.PROTOCOL_VERSION, 2))
    fact = MemberFact(signer.node_id, 5, MemberState.ALIVE, "", meta, signer.sign(5, MemberState.ALIVE, meta), cert_der)
    payload = wire.encode_message(Ping(1, signer.node_id, (fact,)))
    assert len(msgpack.unpackb(payload)[2][0][4]) == 5  # the fact's meta: still five fields
    decoded = wire.decode_message(Ping.TYPE, payload)
    assert decoded.updates[0] == fact
    verifier = records.RecordVerifier(ca.cert)
    assert verifier(decoded.updates[0])
    tampered = MemberMeta(address.host, address.port, "", 1000, wire.PROTOCOL_VERSION)
    assert not verifier(MemberFact(fact.node_id, 5, MemberState.ALIVE, "", tampered, fact.signature, cert_der))


def node_id(i: int) -> str:
    return hashlib.sha256(f"node-{i}".encode()).hexdigest()


def member(i: int, version: int, state: MemberState = MemberState.ALIVE, since_s: float = 0.0) -> Member:
    return Member(node_id(i), Address("127.0.0.1", 7000 + i), "", 10 * 1024**3,
                  wire.advertised_version(wire.PROTOCOL_VERSION, version), 1, state, since_s)


def test_the_cluster_places_by_the_oldest_version_of_its_ring_members():
    def version(members, own=2, now_s=50.0):
        return placement_version(members, now_s, 60.0, (), own)

    assert version([member(i, 2) for i in range(4)]) == 2
    assert version([member(i, 2) for i in range(3)] + [member(3, 1)]) == 1
    assert version([member(i, 2) for i in range(4)], own=1) == 1
    # A dead member in its grace period may come back as it was: it still counts. After it, or
    # once it left, it does not.
    assert version([member(0, 2), member(1, 1, MemberState.DEAD, since_s=0.0)], now_s=59.0) == 1
    assert version([member(0, 2), member(1, 1, MemberState.DEAD, since_s=0.0)], now_s=60.0) == 2
    assert version([member(0, 2), member(1, 1, MemberState.LEFT)]) == 2
    assert placement_version([member(0, 2), member(1, 1)], 0.0, 60.0, (node_id(1),), 2) == 2  # leaving


def test_version_1_is_the_ring_before_multi_probe_hashing():
    # Preference lists the ring of 2,048 tokens per unit of weight gave (p2pfs before placement
    # versions), for members of three weights in two zones.
    ring = Ring.of_version([RingMember(f"n{i}", zone="ab"[i % 2], weight=(1 / 16, 1.0, 2.0)[i % 3])
                            for i in range(6)], 1)
    assert ring.token_count == sum(round(w * 2048) for w in (1 / 16, 1.0, 2.0)) * 2
    assert ring.preference_list(b"name\x00a", 3) == ["n4", "n5", "n2"]
    assert ring.preference_list(b"name\x00b/c.txt", 3) == ["n5", "n2", "n1"]
    assert ring.preference_list(bytes(32), 3) == ["n4", "n1", "n2"]
    assert ring.preference_list(bytes(range(32)), 3) == ["n3", "n2", "n1"]
    assert ring.fallback_list(b"x", 3)[:2] == ["n4", "n0"]
    assert Ring.of_version(ring.members.values(), 2).probes > 1


def make_view(tmp_path, members: list[Member], clock: StepClock, own_version: int = 2) -> RingView:
    config = ReplicationConfig(placement_version=own_version, placement_fallback_s=FALLBACK_S)
    return RingView(node_id(0), config, lambda: members, clock, placement_file=tmp_path / PLACEMENT_FILE_NAME)


def test_the_view_switches_when_the_last_member_runs_the_new_version_and_reads_fall_back_for_a_while(tmp_path):
    clock = StepClock()
    members = [member(0, 2), member(1, 2), member(2, 1), member(3, 1)]
    view = make_view(tmp_path, members, clock)
    assert view.ring().probes == 1
    assert view.other_ring() is None  # a node's first version is no change
    members[2] = member(2, 2)
    assert view.ring().probes == 1  # one member still runs version 1
    members[3] = member(3, 2)
    clock.now_s = 10.0
    ring = view.ring()
    assert ring.probes > 1 and len(ring) == 4
    other = view.other_ring()
    assert other is not None and other.probes == 1 and set(other.members) == set(ring.members)
    clock.now_s = 10.0 + FALLBACK_S - 1
    assert view.other_ring() is other
    clock.now_s = 10.0 + FALLBACK_S
    assert view.other_ring() is None


def test_a_node_restarted_into_the_new_version_knows_that_it_changed(tmp_path):
    # The last node of an upgrade sees no member run the old version once it is back: the version
    # it placed by before its restart, kept in its data dir, says that the placement changed.
    clock = StepClock()
    before = make_view(tmp_path, [member(0, 1), member(1, 1)], clock, own_version=1)
    assert before.ring().probes == 1
    after = make_view(tmp_path, [member(0, 2), member(1, 2)], clock)
    assert after.ring().probes > 1
    assert after.other_ring() is not None and after.other_ring().probes == 1
    restarted_again = make_view(tmp_path, [member(0, 2), member(1, 2)], clock)
    assert restarted_again.ring().probes > 1
    assert restarted_again.other_ring() is None  # nothing changed since the last start


def test_placement_settings_are_checked():
    with pytest.raises(ValueError, match="placement_version"):
        ReplicationConfig(placement_version=PLACEMENT_VERSION_NEWEST + 1)
    with pytest.raises(ValueError, match="placement_fallback_s"):
        ReplicationConfig(placement_fallback_s=-1.0)


async def test_a_big_other_ring_is_built_in_the_background_after_the_ring_in_use(tmp_path, monkeypatch):
    monkeypatch.setattr(view_module, "SYNC_BUILD_TOKENS_MAX", 0)
    clock = StepClock()
    (tmp_path / PLACEMENT_FILE_NAME).write_text("1\n")  # it placed by version 1 before
    view = make_view(tmp_path, [member(i, 2) for i in range(4)], clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run_rebuilds)
        with trio.fail_after(WAIT_S):
            ring = await view.settled_ring()
            assert ring.probes > 1 and len(ring) == 4
            while view.other_ring() is None:
                await trio.sleep(0.01)
        other = view.other_ring()
        assert other.probes == 1 and set(other.members) == set(ring.members)
        nursery.cancel_scope.cancel()


def test_a_cluster_of_version_2_switches_to_3_once_every_member_runs_it_and_reads_fall_back_to_2(tmp_path):
    clock = StepClock()
    members = [member(0, 3), member(1, 3), member(2, 3), member(3, 2)]
    view = make_view(tmp_path, members, clock, own_version=3)
    assert view.ring().replicas == REPLICAS_WALK and view.ring().probes > 1  # version 2
    assert view.other_ring() is None
    members[3] = member(3, 3)
    clock.now_s = 10.0
    ring = view.ring()
    assert ring.replicas == REPLICAS_NEAREST and len(ring) == 4
    other = view.other_ring()
    assert other is not None and other.replicas == REPLICAS_WALK and other.probes > 1
    assert set(other.members) == set(ring.members)
    assert (tmp_path / PLACEMENT_FILE_NAME).read_text() == "3\n"
    clock.now_s = 10.0 + FALLBACK_S
    assert view.other_ring() is None


def test_a_cluster_upgraded_from_version_1_straight_to_3_falls_back_to_1(tmp_path):
    clock = StepClock()
    (tmp_path / PLACEMENT_FILE_NAME).write_text("1\n")  # it placed by version 1 before its restart
    view = make_view(tmp_path, [member(i, 3) for i in range(4)], clock, own_version=3)
    assert view.ring().replicas == REPLICAS_NEAREST
    assert view.other_ring().probes == 1


def test_a_node_of_version_2_places_by_2_beside_members_of_3():
    # What a node of the code before version 3 does: it takes the oldest of its own version and
    # its members', so members advertising 3 keep it (and them) at 2.
    members = [member(0, 3), member(1, 3), member(2, 2)]
    assert placement_version(members, 0.0, 60.0, (), 2) == 2
    assert placement_version(members[:2], 0.0, 60.0, (), 3) == 3
