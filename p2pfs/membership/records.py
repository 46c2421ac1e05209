"""Signed member records: what a node says about itself, signed with its own key. Pure.

Without signatures, anyone holding a node certificate could say anything
about anyone: "node4 LEFT at incarnation 2^63-1" evicted node4 for a day with
no way to refute it (issue 12). With them, a node's own words about itself
(alive at an incarnation, with this address, zone and capacity; leaving) are
a *record* signed with the Ed25519 key of its TLS certificate, and every
receiver checks the signature against that certificate: the CA's signature on
it, its node id (the SHA-256 of its public key, as ``identity.node_id_of``) and
its claims (``p2pfs.claims``: address, zone, capacity ceiling). Relays pass
the signature on unchanged. The core (``state.py``) decides which facts need
a record; this module signs and checks, with ``cryptography`` only (no I/O,
no clock), and caches so that steady gossip costs no signature work:

* a node signs once per incarnation change (``RecordSigner`` keeps its last
  records), not per message;
* a certificate is checked once per node id and kept (``CERTIFICATES_MAX``),
  so gossip carries it only where a receiver may not know the member yet;
* a record checked once is remembered (``VERIFIED_RECORDS_MAX``), so the same
  record arriving by several routes costs one Ed25519 verification.

Certificate expiry and revocation are the handshake's business (``identity``,
``net``), not checked here.
"""

from __future__ import annotations

import collections
import hashlib
import logging

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from p2pfs.address import Address
from p2pfs.claims import NodeClaims, claims_of
from p2pfs.ids import short_id

from .messages import MemberFact, MemberMeta, MemberState

log = logging.getLogger(__name__)

# Separates these signatures from anything else the same key signs (TLS handshakes).
RECORD_DOMAIN = b"p2pfs member record v1\x00"
# Certificates kept by node id: one per member, as many as a view holds (view.MEMBERS_MAX).
CERTIFICATES_MAX = 100_000
# Records already verified, remembered so a record relayed by several members is
# checked once. A cluster's live records fit many times over; the oldest go first.
VERIFIED_RECORDS_MAX = 4096


def signed_state(state: MemberState) -> MemberState:
    """The state a record signs: LEFT for a departure, ALIVE for anything else.

    SUSPECT and DEAD are others' accusations; they carry the member's ALIVE
    record at the accused incarnation, the proof that it reached it.
    """
    return MemberState.LEFT if state == MemberState.LEFT else MemberState.ALIVE


def record_bytes(node_id: str, incarnation: int, state: MemberState, meta: MemberMeta) -> bytes:
    """The bytes a record's signature covers (``state`` as given by ``signed_state``)."""
    assert state in (MemberState.ALIVE, MemberState.LEFT)
    return RECORD_DOMAIN + msgpack.packb(
        [node_id, incarnation, int(state), meta.host, meta.port, meta.zone, meta.capacity_bytes,
         meta.protocol_version],
        use_bin_type=True,
    )


def node_id_of_key(public_key: ed25519.Ed25519PublicKey) -> str:
    """A node id from its public key: the SHA-256 of the SubjectPublicKeyInfo (``identity.node_id_of``)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


class RecordSigner:
    """Signs this node's own records; each (incarnation, state, meta) is signed once."""

    def __init__(self, key: ed25519.Ed25519PrivateKey, cert_der: bytes) -> None:
        self.node_id = node_id_of_key(key.public_key())
        self.cert_der = cert_der
        self._key = key
        self._last: tuple[tuple[int, MemberState, MemberMeta], bytes] | None = None

    def sign(self, incarnation: int, state: MemberState, meta: MemberMeta) -> bytes:
        what = (incarnation, signed_state(state), meta)
        if self._last is not None and self._last[0] == what:
            return self._last[1]
        signature = self._key.sign(record_bytes(self.node_id, *what))
        self._last = (what, signature)
        return signature


class _Signer:
    """What a verified certificate tells about its node."""

    __slots__ = ("public_key", "claims", "cert_der")

    def __init__(self, public_key: ed25519.Ed25519PublicKey, claims: NodeClaims, cert_der: bytes) -> None:
        self.public_key = public_key
        self.claims = claims
        self.cert_der = cert_der


class RecordVerifier:
    """Checks members' records against their certificates, issued by the cluster CA."""

    def __init__(self, ca_cert: x509.Certificate) -> None:
        self._ca_certs = [ca_cert]
        self._signers: collections.OrderedDict[str, _Signer] = collections.OrderedDict()
        self._verified: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self.refused = 0  # records refused, for logs and tests

    def trust(self, ca_certs: list[x509.Certificate]) -> None:
        """The CAs whose node certificates are believed from now on (all of them during a CA
        rotation). Certificates already kept stay: a node's records need no new check."""
        self._ca_certs = list(ca_certs)

    def _check_issuer(self, cert: x509.Certificate) -> None:
        for ca_cert in self._ca_certs[:-1]:
            try:
                cert.verify_directly_issued_by(ca_cert)
                return
            except (ValueError, TypeError, InvalidSignature):
                continue
        cert.verify_directly_issued_by(self._ca_certs[-1])  # raises the last CA's refusal

    def add_certificate(self, cert_der: bytes) -> str | None:
        """Check a DER certificate (the CA's signature, a node's, readable claims) and keep it.

        Returns its node id, or None (logged) if it is not a node certificate of this cluster.
        """
        try:
            cert = x509.load_der_x509_certificate(cert_der)
            self._check_issuer(cert)
            public_key = cert.public_key()
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
                raise ValueError("not a node certificate")
            claims = claims_of(cert)
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound) as exc:
            log.debug("refused a member certificate: %s", exc or type(exc).__name__)
            return None
        node_id = node_id_of_key(public_key)
        if node_id not in self._signers and len(self._signers) >= CERTIFICATES_MAX:
            self._signers.popitem(last=False)
        self._signers[node_id] = _Signer(public_key, claims, cert_der)
        self._signers.move_to_end(node_id)
        return node_id

    def certificate(self, node_id: str) -> bytes:
        """The DER certificate kept for ``node_id``, or b"" if none."""
        signer = self._signers.get(node_id)
        return b"" if signer is None else signer.cert_der

    def __call__(self, fact: MemberFact) -> bool:
        """True if ``fact`` carries its member's valid record: signed by the member, within its claims."""
        meta = fact.meta
        if meta is None or not fact.signature:
            return self._refuse(fact, "no signed record")
        state = signed_state(fact.state)
        key = (fact.node_id, fact.incarnation, state, meta, fact.signature)
        if key in self._verified:
            return True
        signer = self._signers.get(fact.node_id)
        if signer is None:
            if not fact.cert or self.add_certificate(fact.cert) != fact.node_id:
                return self._refuse(fact, "no certificate of this cluster's CA for it")
            signer = self._signers[fact.node_id]
        why = signer.claims.refusal(Address(meta.host, meta.port), meta.zone, meta.capacity_bytes)
        if why is not None:
            return self._refuse(fact, why)
        try:
            signer.public_key.verify(fact.signature, record_bytes(fact.node_id, fact.incarnation, state, meta))
        except InvalidSignature:
            return self._refuse(fact, "bad signature")
        if len(self._verified) >= VERIFIED_RECORDS_MAX:
            self._verified.popitem(last=False)
        self._verified[key] = None
        return True

    def _refuse(self, fact: MemberFact, why: str) -> bool:
        # Debug, not info: a hostile peer decides how many of these there are; ``refused`` counts them.
        self.refused += 1
        log.debug("refused a record of %s (%s at incarnation %d): %s", short_id(fact.node_id),
                 fact.state.name, fact.incarnation, why)
        return False
