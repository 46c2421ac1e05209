"""A live member refutes an accusation of itself whatever its record verifier still holds.

An accusation (SUSPECT, DEAD) carries the accused member's own signed record of the
incarnation accused (``MemberView.accusation``). The accused member believed it only if its
verifier could check that record, with the member's own certificate. A verifier keeps at most
``records.CERTIFICATES_MAX`` certificates, oldest out first, and a node's own is the first it
takes (``daemon.Node``): once a long-running node had seen that many member certificates, it
refused every accusation of itself, never refuted one, and once declared dead it stayed dead
while alive and reachable. (The hostile-messages harness met the same with a verifier that
never held its own certificate.)

Pure: three signing cores fed each other's messages with explicit times; the cap is lowered
so that the third member's certificate pushes the accused member's own out.
"""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from p2pfs import identity, wire
from p2pfs.address import Address
from p2pfs.claims import NodeClaims
from p2pfs.membership import records
from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import MemberState
from p2pfs.membership.state import Membership, Send
from p2pfs.wire import Role

CA = identity.create_ca()
INCARNATION = 10
STEP_S = 0.1
# Long enough for a's suspicion of b to expire and for a's reconnect round (within
# reconnect_interval_s of its start) to try the dead b.
DEADLINE_S = 120.0


def member(name: str) -> Membership:
    address = Address(f"{name}.test", 7000)
    key = ed25519.Ed25519PrivateKey.generate()
    cert_der = CA.issue(key.public_key(), Role.NODE, common_name=name,
                        claims=NodeClaims(address, "z1", 10**6)).public_bytes(Encoding.DER)
    verifier = records.RecordVerifier(CA.cert)
    verifier.add_certificate(cert_der)  # as daemon.Node does: its own certificate first
    signer = records.RecordSigner(key, cert_der)
    return Membership(
        node_id=signer.node_id, address=address, zone="z1", capacity_bytes=1000,
        protocol_version=wire.PROTOCOL_VERSION, incarnation_initial=INCARNATION, config=MembershipConfig(),
        rng=random.Random(name), now_s=0.0, signer=signer, verifier=verifier,
    )


def deliver(cores: dict[str, Membership], sender: Membership, sends: list[Send], now_s: float) -> None:
    """Hand every send to its core, and their answers back, until nothing is left to send."""
    pending = [(sender, send) for send in sends]
    while pending:
        source, send = pending.pop(0)
        target = cores.get(send.to_id) if send.to_id else next(c for c in cores.values() if c.address == send.to)
        if target is not None:
            pending += [(target, s) for s in target.handle(source.address, send.msg, now_s, sender_id=source.node_id)]


@pytest.mark.parametrize("state", [MemberState.SUSPECT, MemberState.DEAD])
def test_a_member_whose_own_certificate_was_evicted_still_refutes(monkeypatch, state):
    monkeypatch.setattr(records, "CERTIFICATES_MAX", 2)
    a, b, c = member("a"), member("b"), member("c")
    deliver({a.node_id: a, b.node_id: b}, b, b.join([a.address], 0.0), 0.0)
    deliver({b.node_id: b, c.node_id: c}, c, c.join([b.address], 0.0), 0.0)
    assert a.member(b.node_id).state is MemberState.ALIVE and b.member(c.node_id) is not None
    # b's verifier took a's certificate, then c's: its own went out.

    # Everything a sends b is lost until a holds b ``state``: a's failed probes accuse it.
    now_s = 0.0
    while a.member(b.node_id).state is not state:
        now_s += STEP_S
        assert now_s < DEADLINE_S, f"a never held b {state.name}"
        a.tick(now_s)
    # From now on a's messages arrive (for SUSPECT the suspicion rides first on a's next
    # ping; for DEAD a's reconnect round sends b a's full state, b's DEAD in it).
    while not (a.member(b.node_id).state is MemberState.ALIVE and a.member(b.node_id).incarnation > INCARNATION):
        now_s += STEP_S
        assert now_s < 2 * DEADLINE_S, (
            f"b never refuted: a holds it {a.member(b.node_id).state.name}, b is at incarnation {b.incarnation}")
        deliver({a.node_id: a, b.node_id: b}, a, a.tick(now_s), now_s)
    assert b.incarnation == INCARNATION + 1
