"""Certificates and identities read without ``cryptography`` (``p2pfs.certfields``, issue 10's start-up).

The fast reader must say exactly what ``cryptography`` says about every kind of
certificate p2pfs makes, refuse (so that ``cryptography`` reads it) any other kind,
and ``load_identity`` must keep every check it made.
"""

from __future__ import annotations

import datetime
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from p2pfs import access, certfields, identity
from p2pfs.address import Address
from p2pfs.claims import NodeClaims
from p2pfs.identity import IdentityError
from p2pfs.wire import Role

NOW = datetime.datetime.now(datetime.timezone.utc)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return identity.init_ca(tmp_path_factory.mktemp("ca") / "ca")


def certificates(authority, tmp_path) -> dict[str, bytes]:
    """One of each kind of certificate p2pfs issues."""
    made = {"ca": der(authority.cert)}
    claims = NodeClaims(Address("127.0.0.1", 7000), "rack-1", 10 * 2**30)
    made["node"] = der(identity.create_identity(tmp_path / "node", authority, Role.NODE, claims=claims).cert)
    made["admin client"] = der(identity.create_identity(tmp_path / "admin", authority, Role.CLIENT).cert)
    grant = access.Grant(access.ClientRole.WRITE, ("team/", "x/é"))
    made["writer under prefixes"] = der(identity.create_identity(tmp_path / "w", authority, Role.CLIENT,
                                                                 grant=grant).cert)
    key = ed25519.Ed25519PrivateKey.generate()
    made["client without a grant"] = der(authority.issue(key.public_key(), Role.CLIENT, common_name="old"))
    made["expiring in 2051 (GeneralizedTime)"] = der(authority.issue(
        key.public_key(), Role.NODE, common_name="long", not_valid_after=datetime.datetime(
            2051, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)))
    identity.create_identity(tmp_path / "renewed", authority, Role.NODE)
    made["renewed"] = der(identity.renew_identity(tmp_path / "renewed", authority, days=3).cert)
    other = identity.create_ca("another CA")
    made["rotated to another CA"] = der(identity.renew_identity(tmp_path / "renewed", other).cert)
    return made


def peer_read_with_cryptography(cert_der: bytes) -> identity.PeerIdentity:
    """What ``peer_identity_from_der`` said before it read certificates itself."""
    cert = x509.load_der_x509_certificate(cert_der)
    role = identity.role_of(cert)
    try:
        issuer_key_id = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        issuer_key_id = None
    return identity.PeerIdentity(
        identity.node_id_of(cert), role, identity.grant_of(cert) if role is Role.CLIENT else None,
        cert.serial_number, cert.not_valid_after_utc.timestamp(), issuer_key_id or b"",
    )


def test_the_fast_reader_says_what_cryptography_says_of_every_certificate_p2pfs_issues(authority, tmp_path):
    made = certificates(authority, tmp_path)
    for kind, cert_der in made.items():
        assert certfields.read(cert_der) == identity.parsed_cert_fields(cert_der), kind
        assert identity.peer_identity_from_der(cert_der) == peer_read_with_cryptography(cert_der), kind
    peers = {kind: identity.peer_identity_from_der(cert_der) for kind, cert_der in made.items()}
    assert {kind for kind, peer in peers.items() if peer.role is Role.NODE} == {
        "node", "expiring in 2051 (GeneralizedTime)", "renewed", "rotated to another CA"}
    assert peers["writer under prefixes"].grant == access.Grant(access.ClientRole.WRITE, ("team/", "x/é"))
    assert peers["client without a grant"].grant is access.GRANT_WITHOUT_EXTENSION
    assert peers["expiring in 2051 (GeneralizedTime)"].not_valid_after_s == datetime.datetime(
        2051, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc).timestamp()
    assert peers["rotated to another CA"].issuer_key_id != peers["renewed"].issuer_key_id != b""


def test_any_other_certificate_is_left_to_cryptography(authority, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ec")])
    ec_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(7).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .sign(key, hashes.SHA256()))
    with pytest.raises(certfields.Unexpected, match="Ed25519"):
        certfields.read(der(ec_cert))
    peer = identity.peer_identity_from_der(der(ec_cert))
    assert (peer.node_id, peer.role, peer.serial_number) == (identity.node_id_of(ec_cert), Role.NODE, 7)

    node = der(identity.create_identity(tmp_path / "node", authority, Role.NODE).cert)
    for broken in (node[:-1], node + b"\x00", b"\x30\x81\x05" + node[3:], node[:4] + b"\x00" + node[5:]):
        with pytest.raises(certfields.Unexpected):
            certfields.read(broken)
        with pytest.raises(ValueError):  # and cryptography refuses it as before
            identity.peer_identity_from_der(broken)


def test_loading_an_identity_keeps_its_checks_without_cryptography(authority, tmp_path):
    node = identity.create_identity(tmp_path / "node", authority, Role.NODE)
    client = identity.create_identity(tmp_path / "client", authority, Role.CLIENT)
    loaded = identity.load_identity(tmp_path / "client")
    assert loaded == client
    assert (loaded.role, loaded.node_id, loaded.cluster_id) == (
        Role.CLIENT, identity.node_id_of(client.cert), identity.cluster_id_of(authority.cert))
    assert loaded.grant == access.Grant(access.ClientRole.ADMIN)

    # The node's key beside the client's certificate: refused, by OpenSSL's check now.
    (tmp_path / "client" / "key.pem").write_bytes((tmp_path / "node" / "key.pem").read_bytes())
    with pytest.raises(IdentityError, match="key.pem does not match .*cert.pem"):
        identity.load_identity(tmp_path / "client")
    # Several CAs (a rotation): read with cryptography, the issuer found by its signature.
    other = identity.create_ca("another CA")
    renewed = identity.renew_identity(tmp_path / "node", other)
    assert len(renewed.ca_ders) == 2 and renewed.ca_cert == other.cert
    assert renewed.trusted_cluster_ids == {identity.cluster_id_of(authority.cert), identity.cluster_id_of(other.cert)}
    assert renewed.node_id == node.node_id


def test_loading_a_client_identity_imports_no_cryptography(authority, tmp_path):
    identity.create_identity(tmp_path / "client", authority, Role.CLIENT)
    code = ("import sys; from pathlib import Path; from p2pfs import identity; from p2pfs.net.trust import TrustStore; "
            f"i = identity.load_identity(Path({str(tmp_path / 'client')!r})); TrustStore(i); "
            "print(i.role.value, i.node_id, i.cluster_id.hex(), sorted(m for m in sys.modules if 'cryptography' in m))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    client = identity.load_identity(tmp_path / "client")
    assert result.stdout.split(" ", 3) == ["client", client.node_id, client.cluster_id.hex(), "[]\n"]
