"""Signed member records (issue 12): the precedence rules of a signing core, and the records themselves.

Pure: cores fed facts with explicit times; keys and certificates made in memory by a CA.
"""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from p2pfs import identity, wire
from p2pfs.address import Address
from p2pfs.claims import NO_CLAIMS, NodeClaims, claims_of
from p2pfs.membership import records
from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import (
    INCARNATION_MAX, Gossip, MemberFact, MemberMeta, MemberState, Ping, PingReq, PushPull,
)
from p2pfs.membership.state import INCARNATION_STEP_MAX, Membership
from p2pfs.wire import Role

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
CA = identity.create_ca()
CAPACITY_BYTES = 1000


class Node:
    """A key, its CA certificate (with claims) and a signing core, named for the test."""

    def __init__(self, name: str, *, claims: NodeClaims | None = None, authority=CA, incarnation: int = 10) -> None:
        self.name = name
        self.address = Address(f"{name}.test", 7000)
        self.key = ed25519.Ed25519PrivateKey.generate()
        cert = authority.issue(self.key.public_key(), Role.NODE, common_name=name,
                               claims=claims if claims is not None else NodeClaims(self.address, "z1", 10**6))
        self.cert_der = cert.public_bytes(Encoding.DER)
        self.signer = records.RecordSigner(self.key, self.cert_der)
        self.id = self.signer.node_id
        self.meta = MemberMeta(self.address.host, self.address.port, "z1", CAPACITY_BYTES, wire.PROTOCOL_VERSION)
        self.verifier = records.RecordVerifier(CA.cert)
        self.verifier.add_certificate(self.cert_der)
        self.core = Membership(
            node_id=self.id, address=self.address, zone="z1", capacity_bytes=CAPACITY_BYTES,
            protocol_version=wire.PROTOCOL_VERSION, incarnation_initial=incarnation, config=MembershipConfig(),
            rng=random.Random(1), now_s=0.0, signer=self.signer, verifier=self.verifier,
        )

    def record(self, incarnation: int, state: MemberState = ALIVE, *, meta: MemberMeta | None = None,
               cert: bool = True) -> MemberFact:
        """A fact carrying this node's own signed record."""
        meta = meta or self.meta
        signature = self.key.sign(records.record_bytes(self.id, incarnation, records.signed_state(state), meta))
        return MemberFact(self.id, incarnation, state, "", meta, signature, self.cert_der if cert else b"")

    def state(self, other: "Node") -> tuple[MemberState, int] | None:
        member = self.core.member(other.id)
        return None if member is None else (member.state, member.incarnation)


def tell(to: Node, *facts: MemberFact, now_s: float = 0.0, sender: Node | None = None):
    return to.core.handle(Address("sender.test", 7000), Gossip(tuple(facts)), now_s,
                          sender_id=sender.id if sender else None)


@pytest.fixture
def pair() -> tuple[Node, Node]:
    a, b = Node("a"), Node("b")
    tell(a, b.record(10))
    assert a.state(b) == (ALIVE, 10)
    return a, b


def test_a_forged_left_at_the_largest_incarnation_is_refused(pair):
    a, b = pair
    forger = Node("forger")
    unsigned = MemberFact(b.id, INCARNATION_MAX, LEFT, "", None)
    meta_no_signature = MemberFact(b.id, INCARNATION_MAX, LEFT, "", b.meta)
    signed_by_another = MemberFact(
        b.id, 11, LEFT, "", b.meta,
        forger.key.sign(records.record_bytes(b.id, 11, LEFT, b.meta)), forger.cert_der,
    )
    tell(a, unsigned, meta_no_signature, signed_by_another)
    assert a.state(b) == (ALIVE, 10)


def test_only_the_member_itself_makes_it_left(pair):
    a, b = pair
    tell(a, b.record(10, LEFT, cert=False))
    assert a.state(b) == (LEFT, 10)


def test_an_accusation_needs_an_incarnation_the_member_signed(pair):
    a, b = pair
    tell(a, MemberFact(b.id, 11, SUSPECT, "c" * 64, None))  # 11 was never signed by b
    assert a.state(b) == (ALIVE, 10)
    tell(a, MemberFact(b.id, 10, SUSPECT, "c" * 64, None))  # 10 was
    assert a.state(b) == (SUSPECT, 10)
    # An accusation at a newer incarnation carries b's own record of it.
    proof = b.record(11, cert=False)
    tell(a, MemberFact(b.id, 11, DEAD, "c" * 64, proof.meta, proof.signature))
    assert a.state(b) == (DEAD, 11)


def test_the_members_own_refutation_always_wins(pair):
    a, b = pair
    c = Node("c")
    tell(b, a.record(10))
    tell(a, c.record(10))
    # c accuses b at the incarnation b signed; b hears it and refutes, signed, one above.
    accusation = MemberFact(b.id, 10, SUSPECT, c.id, None)
    tell(a, accusation)
    tell(b, accusation)
    assert b.core.incarnation == 11
    # The refutation goes out with the next gossip round.
    refutation = next(f for s in b.core.tick(1.0) if isinstance(s.msg, Gossip) for f in s.msg.updates
                      if f.node_id == b.id)
    assert refutation.state == ALIVE and refutation.signature
    tell(a, refutation)
    assert a.state(b) == (ALIVE, 11)
    # Nobody can outbid it: an accusation above what b signed is refused.
    tell(a, MemberFact(b.id, 12, DEAD, c.id, None), MemberFact(b.id, INCARNATION_MAX, DEAD, c.id, None))
    assert a.state(b) == (ALIVE, 11)


def test_unsigned_facts_about_ourselves_are_not_refuted_but_ignored(pair):
    a, b = pair
    tell(b, MemberFact(b.id, INCARNATION_MAX, LEFT, "", None), MemberFact(b.id, 10**12, SUSPECT, a.id, None))
    assert b.core.incarnation == 10
    assert b.core.member(b.id).state == ALIVE


def test_a_member_without_a_certificate_of_the_ca_is_not_believed():
    a = Node("a")
    rogue_ca = identity.create_ca()
    outsider = Node("outsider", authority=rogue_ca)
    tell(a, outsider.record(10))
    assert a.state(outsider) is None
    # Nor one whose certificate is left out and unknown to us.
    stranger = Node("stranger")
    tell(a, stranger.record(10, cert=False))
    assert a.state(stranger) is None
    tell(a, stranger.record(10))
    assert a.state(stranger) == (ALIVE, 10)


@pytest.mark.parametrize("change", [
    {"capacity_bytes": 2**63 - 1},
    {"host": "elsewhere.test"},
    {"zone": "z2"},
])
def test_claims_beyond_the_certificate_are_refused(change):
    a, b = Node("a"), Node("b")
    fields = {"host": b.meta.host, "port": b.meta.port, "zone": b.meta.zone,
              "capacity_bytes": b.meta.capacity_bytes, "protocol_version": b.meta.protocol_version} | change
    tell(a, b.record(10, meta=MemberMeta(**fields)))
    assert a.state(b) is None


def test_a_certificate_without_claims_binds_nothing():
    a, b = Node("a"), Node("b", claims=NO_CLAIMS)
    big = MemberMeta("anywhere.test", 9, "z9", 2**40, wire.PROTOCOL_VERSION)
    tell(a, b.record(10, meta=big))
    assert a.state(b) == (ALIVE, 10)


def test_incarnations_move_forward_by_bounded_steps(pair):
    a, b = pair
    tell(a, b.record(10 + INCARNATION_STEP_MAX + 1))
    assert a.state(b) == (ALIVE, 10)
    tell(a, b.record(10 + INCARNATION_STEP_MAX))
    assert a.state(b) == (ALIVE, 10 + INCARNATION_STEP_MAX)


def test_ping_reqs_go_only_to_members_at_their_signed_address(pair):
    a, b = pair
    c = Node("c")
    elsewhere = PingReq(1, b.id, "attacker.test", 9999, 0.5, ())
    unknown = PingReq(2, c.id, c.address.host, c.address.port, 0.5, ())
    assert a.core.handle(Address("x.test", 1), elsewhere, 0.0, sender_id=c.id) == []
    assert a.core.handle(Address("x.test", 1), unknown, 0.0, sender_id=c.id) == []
    sends = a.core.handle(Address("x.test", 1), PingReq(3, b.id, b.address.host, b.address.port, 0.5, ()), 0.0,
                          sender_id=c.id)
    assert [(s.to, s.to_id, type(s.msg)) for s in sends] == [(b.address, b.id, Ping)]


def test_every_send_names_its_target(pair):
    a, b = pair
    sends = []
    for step in range(40):
        sends += a.core.tick(step * 0.25)
    assert sends
    assert all(s.to_id == b.id for s in sends)


def test_a_record_is_signed_once_per_incarnation_and_verified_once():
    b = Node("b")
    first = b.signer.sign(10, ALIVE, b.meta)
    assert b.signer.sign(10, SUSPECT, b.meta) is first  # an accusation carries the ALIVE record
    assert b.signer.sign(11, ALIVE, b.meta) != first
    verifier = records.RecordVerifier(CA.cert)
    fact = b.record(10)
    assert verifier(fact)
    assert verifier(MemberFact(b.id, 10, ALIVE, "", b.meta, fact.signature))  # cached: no cert needed now
    tampered = MemberFact(b.id, 10, ALIVE, "", MemberMeta("b.test", 7000, "z1", 999, wire.PROTOCOL_VERSION),
                          fact.signature)
    assert not verifier(tampered)


def test_claims_round_trip_through_a_certificate():
    key = ed25519.Ed25519PrivateKey.generate()
    claims = NodeClaims(Address("10.0.0.1", 7000), "rack1", 5 * 2**40)
    cert = CA.issue(key.public_key(), Role.NODE, common_name="n", claims=claims)
    assert claims_of(cert) == claims
    assert claims_of(CA.issue(key.public_key(), Role.NODE, common_name="n")) == NO_CLAIMS


def test_a_full_state_carries_certificates_only_where_the_receiver_may_lack_them(pair):
    a, b = pair
    c = Node("c")
    tell(a, c.record(10))
    # The request: our own certificate only, for a seed that may not know us.
    request = next(s.msg for step in range(200) for s in a.core.tick(step * 0.5) if isinstance(s.msg, PushPull))
    assert {f.node_id for f in request.members if f.cert} == {a.id}
    assert all(f.signature for f in request.members)
    # The reply: the certificates of the members the requester did not list.
    sends = a.core.handle(b.address, PushPull(False, (b.record(10),)), 0.0, sender_id=b.id)
    reply = next(s.msg for s in sends if isinstance(s.msg, PushPull))
    assert {f.node_id for f in reply.members if f.cert} == {a.id, c.id}
    assert reply.members[0].cert == a.cert_der
