"""Revocation: a standard X.509 CRL signed by the cluster CA, and the CA's record of what it issued.

``p2pfs ca revoke ID|CERT`` adds the certificate's serial number to
``CA_DIR/crl.pem`` (RFC 5280 CRL, version 2) and raises its CRL number; an
admin client hands the file to any node (``p2pfs crl push``), the nodes spread
it among themselves, and every node refuses the revoked certificates from then
on (``net.trust``). A CRL is accepted only if a trusted CA signed it, and only
if its CRL number is higher than the one held from the same CA: an old CRL
replayed cannot un-revoke anything.

Each revoked entry also carries, in a non-critical entry extension of our own
(``NODE_ID_ENTRY_OID``), the id of the key it revokes: a node can then drop a
revoked node from its member list at once, without waiting to see its
certificate. Other tools read the CRL as a plain one and ignore the extension.

To revoke by id the CA must know which certificates it signed for that key:
``create_identity`` records each one in ``CA_DIR/issued/SERIAL.pem``.
Certificates issued before that record existed are revoked by file (``CERT``).

The CRL's nextUpdate is set far ahead (``CRL_NEXT_UPDATE_DAYS``): nodes do not
fetch CRLs on a schedule, they are pushed the newest, ordered by number; a
nextUpdate in the past would make strict readers distrust a CRL that is still
the newest there is.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from p2pfs.errors import AuthError, BadInput
from p2pfs.identity import CRL_FILE, ISSUED_DIR, node_id_of  # noqa: F401  (CRL_FILE: revocation.CRL_FILE)

# The key id (node or client id, hex) a revoked entry is about: our own OID under 2.25.
NODE_ID_ENTRY_OID = "2.25.165243234557108049737224323694978411910"
CRL_NEXT_UPDATE_DAYS = 3650
# The largest CRL a node accepts: 1 MiB holds some 10,000 entries, far more than a
# cluster revokes between CA rotations (a new CA starts a new, empty list).
CRL_BYTES_MAX = 1024 * 1024  # the same cap as node.trust_messages.CRL_BYTES_MAX
# An id given to `ca revoke` must have at least this many hex digits (the CLI shows 12).
ID_PREFIX_CHARS_MIN = 8


class RevocationError(AuthError):
    """A CRL that cannot be used: unreadable, not signed by a trusted CA, or too big."""


@dataclasses.dataclass(frozen=True, slots=True)
class RevocationList:
    """One CA's CRL, parsed: its number, the serials it revokes and the key ids it names."""

    crl: x509.CertificateRevocationList
    number: int
    serials: frozenset[int]
    node_ids: frozenset[str]

    @classmethod
    def parse(cls, data: bytes) -> RevocationList:
        """PEM or DER; RevocationError if it is not a CRL with a number. Does not check the signature."""
        if len(data) > CRL_BYTES_MAX:
            raise RevocationError(f"a CRL of {len(data)} bytes exceeds {CRL_BYTES_MAX}")
        try:
            crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            raise RevocationError("the CRL has no CRL number") from None
        except ValueError as exc:
            raise RevocationError(f"not a CRL: {exc}") from None
        serials, node_ids = set(), set()
        for entry in crl:
            serials.add(entry.serial_number)
            try:
                value = entry.extensions.get_extension_for_oid(x509.ObjectIdentifier(NODE_ID_ENTRY_OID)).value
            except x509.ExtensionNotFound:
                continue
            if isinstance(value, x509.UnrecognizedExtension):
                node_ids.add(value.value.decode("ascii", "replace"))
        return cls(crl, number, frozenset(serials), frozenset(node_ids))

    def der(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.DER)

    def pem(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.PEM)

    def signer(self, ca_certs: list[x509.Certificate]) -> x509.Certificate:
        """The trusted CA that issued and signed this CRL; RevocationError if none did."""
        for ca_cert in ca_certs:
            if self.crl.issuer != ca_cert.subject:
                continue
            try:
                if self.crl.is_signature_valid(ca_cert.public_key()):
                    return ca_cert
            except (InvalidSignature, TypeError):
                continue
        raise RevocationError("the CRL is not signed by a CA this node trusts")


def ca_key_id(ca_cert: x509.Certificate) -> bytes:
    """Which CA a CRL belongs to: the CA's public key (names may repeat across CAs)."""
    return ca_cert.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------
# The CA's side


def issued_certificates(ca_dir: Path) -> list[x509.Certificate]:
    issued = ca_dir / ISSUED_DIR
    if not issued.is_dir():
        return []
    return [x509.load_pem_x509_certificate(path.read_bytes()) for path in sorted(issued.glob("*.pem"))]


def load_ca_crl(ca_dir: Path) -> RevocationList | None:
    path = ca_dir / CRL_FILE
    if not path.is_file():
        return None
    return RevocationList.parse(path.read_bytes())


def revoke(
    ca_dir: Path,
    ca_key: ed25519.Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    certs: list[x509.Certificate],
    now: datetime.datetime,
) -> RevocationList:
    """Add ``certs`` to the CA's CRL (kept in ``ca_dir``), sign it with a higher number, write it.

    Certificates already revoked stay as they were; the number rises anyway, so the
    new file is the one that spreads.
    """
    held = load_ca_crl(ca_dir)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=CRL_NEXT_UPDATE_DAYS))
        .add_extension(x509.CRLNumber(held.number + 1 if held else 1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    present = set()
    if held is not None:
        for entry in held.crl:
            builder = builder.add_revoked_certificate(entry)
            present.add(entry.serial_number)
    for cert in certs:
        if cert.issuer != ca_cert.subject:
            raise BadInput(f"certificate {cert.serial_number:x} was not issued by this CA")
        if cert.serial_number in present:
            continue
        present.add(cert.serial_number)
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now)
            .add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(NODE_ID_ENTRY_OID), node_id_of(cert).encode("ascii")),
                critical=False,
            )
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    revocation = RevocationList.parse(builder.sign(ca_key, None).public_bytes(serialization.Encoding.PEM))
    write_atomic(ca_dir / CRL_FILE, revocation.pem())
    return revocation


def write_atomic(path: Path, data: bytes) -> None:
    """Write a public file whole or not at all: a crash leaves the old one (temp file, fsync, rename)."""
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temp, 0o644)
    os.replace(temp, path)

