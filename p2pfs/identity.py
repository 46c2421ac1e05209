"""Cluster identities: the CA, node and client certificates, node ids, TLS contexts.

Key type: Ed25519. Python's ssl module (OpenSSL 3) negotiates TLS 1.3 with
Ed25519 certificates on both ends; the keys are small, signing is fast, and
there are no curve parameters to get wrong. The bulk cipher (AES-256-GCM) is
the same whatever the key type, so the choice costs nothing in throughput.

A node's id is the SHA-256 of its certificate's SubjectPublicKeyInfo, in hex.
It cannot be claimed without the private key: after the TLS handshake each end
computes the peer's id from the certificate the peer proved it holds.

The role is in the certificate's Extended Key Usage: a node certificate has
serverAuth and clientAuth (it accepts and dials connections), a client
certificate only clientAuth. OpenSSL's purpose check therefore refuses a client
certificate on the accepting end of a TLS connection, and our handshake refuses
a connection whose certificate says client but whose hello says node.

A client certificate also carries a grant (``access``): its role and write
prefixes, in an extension of our own.

On disk (an identity directory)::

    key.pem    private key, mode 0600
    cert.pem   this identity's certificate, signed by the cluster CA
    ca.pem     the cluster CA certificate (a copy); two while the CA is rotated
    crl.pem    the newest CRL a node holds (``net.trust``), if any

and a CA directory holds ``ca.key`` (0600), ``ca.pem``, ``issued/`` (a copy of
every certificate it signed) and ``crl.pem`` once it has revoked one
(``revocation``).

Loading an identity and reading a peer's certificate do not load ``cryptography``
(a sixth of a one-request command's start-up, docs/BENCHMARKS.md): the fields
p2pfs uses are read from the DER (``certfields``), ``ssl`` checks that the key
matches the certificate, and a certificate in any other shape than the ones p2pfs
issues is read with ``cryptography`` as before. Making keys and certificates
(the CA, issuing, renewing) imports it where it is needed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfs import access, certfields
from p2pfs.errors import AuthError, BadInput
from p2pfs.ids import short_id
from p2pfs.wire import ALPN_PROTOCOLS, Role

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from p2pfs.claims import NodeClaims

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.pem"
# In a CA directory: a copy of every certificate it signed, by serial (``revocation``).
ISSUED_DIR = "issued"
KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
# The newest CRL a node holds (``net.trust``, ``revocation``).
CRL_FILE = "crl.pem"

# Node and client certificates: one year. A year bounds how long a key that leaked
# unnoticed (and was never revoked) stays useful, and matches a yearly operations
# cycle; renewal is one command per identity and a reload (`p2pfs node renew`,
# `client renew`), and nodes warn 30 days ahead (node.trust). Shorter lifetimes
# (Let's Encrypt's 90 days) pay off only with automated renewal, which we do not
# ship. `renew --days` sets another.
CERT_VALIDITY_DAYS_DEFAULT = 365
# The CA: ten years. Its key stays offline and replacing it is a rotation of every
# identity (docs/SECURITY.md), so it should come up rarely, on the operator's schedule.
CA_VALIDITY_DAYS_DEFAULT = 3650

NODE_ID_HEX_CHARS = 64


# The cryptography modules this module once imported at the top, which callers read from it
# (``identity.serialization.Encoding``): loaded when first asked for (PEP 562).
_LAZY_MODULES = {
    "x509": "cryptography.x509",
    "serialization": "cryptography.hazmat.primitives.serialization",
    "ed25519": "cryptography.hazmat.primitives.asymmetric.ed25519",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY_MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return importlib.import_module(_LAZY_MODULES[name])


class IdentityError(AuthError):
    """An identity's key or certificate cannot be used; the message says what to do.

    A missing directory or a file in the way is the caller's input (``BadInput``).
    """


@dataclasses.dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of a TLS connection, from its verified certificate."""

    node_id: str
    role: Role
    # What a client may do (``access``); None for a node. A client without the
    # extension gets ``access.GRANT_WITHOUT_EXTENSION``.
    grant: access.Grant | None = None
    serial_number: int = 0  # the certificate's, which a CRL names
    not_valid_after_s: float = 0.0  # the certificate's expiry, Unix seconds
    issuer_key_id: bytes = b""  # which CA signed it (authority key identifier); b"" if not said

    @property
    def short_id(self) -> str:
        return short_id(self.node_id)

    def grant_or_default(self) -> access.Grant:
        """The grant requests are judged by (a peer built without one: ``GRANT_WITHOUT_EXTENSION``)."""
        assert self.role is Role.CLIENT, "only clients' requests are judged by a grant"
        return self.grant or access.GRANT_WITHOUT_EXTENSION


def node_id_of(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def role_of(cert: x509.Certificate) -> Role:
    """NODE if the certificate may accept connections (serverAuth), else CLIENT."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return Role.CLIENT
    return Role.NODE if ExtendedKeyUsageOID.SERVER_AUTH in eku else Role.CLIENT


def grant_of(cert: x509.Certificate) -> access.Grant:
    """A client certificate's grant; ``GRANT_WITHOUT_EXTENSION`` if it has none, GrantError if unreadable."""
    from cryptography import x509

    oid = x509.ObjectIdentifier(access.GRANT_EXTENSION_OID)
    try:
        extension = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return access.GRANT_WITHOUT_EXTENSION
    assert isinstance(extension, x509.UnrecognizedExtension)
    return access.Grant.decode(extension.value)


def cert_fields(der: bytes) -> certfields.CertFields:
    """What p2pfs reads from a certificate: from its DER (``certfields``), or with ``cryptography``
    when it is not in the shape p2pfs issues (ValueError if it does not parse)."""
    try:
        return certfields.read(der)
    except certfields.Unexpected:
        return parsed_cert_fields(der)


def parsed_cert_fields(der: bytes) -> certfields.CertFields:
    """``cert_fields`` read with ``cryptography``, whatever the certificate's shape (ValueError if it does not parse)."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        issuer_key_id = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        issuer_key_id = None
    try:
        grant = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(access.GRANT_EXTENSION_OID)).value
    except x509.ExtensionNotFound:
        grant = None
    assert grant is None or isinstance(grant, x509.UnrecognizedExtension)
    return certfields.CertFields(
        node_id_of(cert), role_of(cert) is Role.NODE, grant.value if grant is not None else None,
        cert.serial_number, cert.not_valid_after_utc.timestamp(), issuer_key_id or b"",
    )


def _role(fields: certfields.CertFields) -> Role:
    """As ``role_of``: NODE if the certificate may accept connections (serverAuth), else CLIENT."""
    return Role.NODE if fields.server_auth else Role.CLIENT


def _grant(fields: certfields.CertFields) -> access.Grant:
    """As ``grant_of``: ``GRANT_WITHOUT_EXTENSION`` if it has none, GrantError if unreadable."""
    return access.GRANT_WITHOUT_EXTENSION if fields.grant is None else access.Grant.decode(fields.grant)


def peer_identity_from_der(der: bytes) -> PeerIdentity:
    """The peer behind a verified certificate; GrantError if a client's grant cannot be read."""
    fields = cert_fields(der)
    role = _role(fields)
    return PeerIdentity(
        fields.node_id, role, _grant(fields) if role is Role.CLIENT else None,
        fields.serial_number, fields.not_valid_after_s, fields.issuer_key_id,
    )


def key_id_of(ca_cert: x509.Certificate) -> bytes:
    """A CA's key identifier, as the certificates it signs name it (RFC 5280 method 1)."""
    from cryptography import x509

    return x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key()).digest


def cluster_id_of(ca_cert: x509.Certificate) -> bytes:
    """Identifies the cluster: the SHA-256 of its CA certificate (as ``cluster_id_of_der``)."""
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).digest()


# ---------------------------------------------------------------------------
# Writing files


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create a file with ``mode`` (0600 for private keys), durably; never overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise BadInput(f"{path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # the umask may have narrowed it; a key must not be wider either


def _write_private(path: Path, data: bytes) -> None:
    _write_new(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_new(path, data, 0o644)


# Bits of a key file's mode that let anyone but its owner read or change it. As ssh
# does for its private keys, such a key is refused rather than used: whoever else
# can read it can act as this node (or, for the CA key, mint members).
_KEY_MODE_OTHERS = 0o077


def _check_private(path: Path) -> None:
    """Refuse a key file that its group or others may read or write, saying how to fix it."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
    if mode & _KEY_MODE_OTHERS:
        raise IdentityError(
            f"{path} has mode {mode:04o}: a private key must be readable by its owner alone; "
            f"fix it with `chmod 600 {path}`"
        )


def cluster_id_of_der(ca_der: bytes) -> bytes:
    """Identifies the cluster: the SHA-256 of its CA certificate's DER."""
    return hashlib.sha256(ca_der).digest()


def _key_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _prepare_dir(directory: Path, files: tuple[str, ...]) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create {directory}: {exc.strerror}") from None
    existing = [name for name in files if (directory / name).exists()]
    if existing:
        raise BadInput(
            f"{directory} already holds {', '.join(existing)}; refusing to overwrite "
            "(choose another directory or remove it first)"
        )


# ---------------------------------------------------------------------------
# The CA


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateAuthority:
    key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate
    directory: Path | None = None  # where it lives; certificates it signs are recorded there

    @property
    def cluster_id(self) -> bytes:
        return cluster_id_of(self.cert)

    def issue(
        self,
        public_key: ed25519.Ed25519PublicKey,
        role: Role,
        *,
        common_name: str,
        not_valid_before: datetime.datetime | None = None,
        not_valid_after: datetime.datetime | None = None,
        grant: access.Grant | None = None,
        claims: NodeClaims | None = None,
    ) -> x509.Certificate:
        """Sign a certificate for a node or a client. The validity window is settable for tests.

        A client's ``grant`` (role and prefixes) goes into our extension; a node has none.
        ``claims`` (nodes only) bound what the node may announce about itself (``p2pfs.claims``).
        """
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        from p2pfs.claims import claims_extension

        assert grant is None or role is Role.CLIENT, "only a client certificate carries a grant"
        assert claims is None or role is Role.NODE, "only a node's certificate carries claims"
        now = datetime.datetime.now(datetime.timezone.utc)
        start = not_valid_before or now - datetime.timedelta(minutes=5)  # tolerate small clock skew
        end = not_valid_after or now + datetime.timedelta(days=CERT_VALIDITY_DAYS_DEFAULT)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if role is Role.NODE:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),
                critical=False,
            )
        )
        if grant is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(access.GRANT_EXTENSION_OID), grant.encode()),
                critical=False,  # OpenSSL refuses certificates with critical extensions it does not know
            )
        if claims is not None:
            builder = builder.add_extension(claims_extension(claims), critical=False)
        return builder.sign(self.key, None)  # Ed25519 signs without a separate digest


def create_ca(common_name: str = "p2pfs cluster CA") -> CertificateAuthority:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALIDITY_DAYS_DEFAULT))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    return CertificateAuthority(key, cert)


def init_ca(directory: Path) -> CertificateAuthority:
    """Create a CA in ``directory``. Refuses to overwrite an existing one."""
    _prepare_dir(directory, (CA_KEY_FILE, CA_CERT_FILE))
    ca = dataclasses.replace(create_ca(), directory=directory)
    _write_private(directory / CA_KEY_FILE, _key_pem(ca.key))
    _write_public(directory / CA_CERT_FILE, _cert_pem(ca.cert))
    return ca


def load_ca(directory: Path) -> CertificateAuthority:
    key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
    for path in (key_path, cert_path):
        if not path.is_file():
            raise BadInput(f"{path} not found: is {directory} a CA directory (p2pfs ca init)?")
    _check_private(key_path)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read the CA in {directory}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{key_path} is not an Ed25519 key")
    return CertificateAuthority(key, cert, directory)


def record_issued(ca: CertificateAuthority, cert: x509.Certificate) -> None:
    """Keep a copy of a certificate the CA signed (if it has a directory), so that
    `p2pfs ca revoke ID` can find its serial number. Public data: 0644."""
    if ca.directory is None:
        return
    issued = ca.directory / ISSUED_DIR
    issued.mkdir(exist_ok=True)
    path = issued / f"{cert.serial_number:x}.pem"
    if not path.exists():
        _write_public(path, _cert_pem(cert))


# ---------------------------------------------------------------------------
# Node and client identities


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """A loaded identity directory: this end's certificate and the CA to trust.

    Held as DER: a client needs only its role, its cluster id and the files' paths
    (``ssl`` reads them), so ``cert``, ``ca_cert`` and ``ca_certs`` are parsed with
    ``cryptography`` when first asked for (by a node: records, reload, status).
    """

    directory: Path
    cert_der: bytes
    ca_der: bytes  # the trusted CA that signed the certificate
    # Every CA ca.pem lists: more than one while the CA is being rotated (docs/SECURITY.md).
    ca_ders: tuple[bytes, ...]
    # What was read from the DER so far, by name (``_cached``): the fields, the parsed certificates.
    _read: dict[str, Any] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def _cached(self, name: str, read: Any) -> Any:
        if name not in self._read:
            self._read[name] = read()
        return self._read[name]

    @property
    def fields(self) -> certfields.CertFields:
        return self._cached("fields", lambda: cert_fields(self.cert_der))

    @property
    def cert(self) -> x509.Certificate:
        from cryptography import x509

        return self._cached("cert", lambda: x509.load_der_x509_certificate(self.cert_der))

    @property
    def ca_cert(self) -> x509.Certificate:
        from cryptography import x509

        return self._cached("ca_cert", lambda: x509.load_der_x509_certificate(self.ca_der))

    @property
    def ca_certs(self) -> tuple[x509.Certificate, ...]:
        from cryptography import x509

        return self._cached("ca_certs", lambda: tuple(x509.load_der_x509_certificate(d) for d in self.ca_ders))

    @property
    def trusted_cluster_ids(self) -> frozenset[bytes]:
        """The cluster ids of every trusted CA: a peer's hello may name any of them."""
        return frozenset(cluster_id_of_der(ca) for ca in self.ca_ders)

    @property
    def node_id(self) -> str:
        return self.fields.node_id

    @property
    def role(self) -> Role:
        return _role(self.fields)

    @property
    def grant(self) -> access.Grant | None:
        """A client's grant (``access``); None for a node."""
        return _grant(self.fields) if self.role is Role.CLIENT else None

    @property
    def cluster_id(self) -> bytes:
        return cluster_id_of_der(self.ca_der)

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def ca_path(self) -> Path:
        return self.directory / CA_CERT_FILE

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        """The private key, for a node's signed membership records (``membership.records``)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        _check_private(self.key_path)
        try:
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise IdentityError(f"cannot read {self.key_path}: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise IdentityError(f"{self.key_path} is not an Ed25519 key")
        return key

    def server_context(self) -> ssl.SSLContext:
        """Accepting end: TLS 1.3 only, a certificate from the cluster CA required."""
        if self.role is not Role.NODE:
            raise IdentityError("a client identity cannot accept connections")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._configure(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """Dialling end. Host names are not checked: peers are named by their node id,
        which the caller checks against the verified certificate after the handshake."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        self._configure(ctx)
        return ctx

    def _configure(self, ctx: ssl.SSLContext) -> None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))  # what this end speaks beyond the hello's version
        try:
            ctx.load_verify_locations(cafile=str(self.ca_path))
            ctx.load_cert_chain(certfile=str(self.cert_path), keyfile=str(self.key_path))
        except (OSError, ssl.SSLError) as exc:
            raise IdentityError(f"cannot load the identity in {self.directory}: {exc}") from None


def create_identity(
    directory: Path,
    ca: CertificateAuthority,
    role: Role,
    *,
    not_valid_before: datetime.datetime | None = None,
    not_valid_after: datetime.datetime | None = None,
    grant: access.Grant | None = None,
    claims: NodeClaims | None = None,
) -> Identity:
    """Generate a key, have the CA sign it (with a client's ``grant`` or a node's ``claims``),
    and write key, certificate and CA copy.

    A client gets ``grant``, or the admin role if none is given: the library's callers
    (testnet, chaos) make the operator's own key. `p2pfs client init` passes the one asked for.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if role is Role.CLIENT and grant is None:
        grant = access.Grant(access.ClientRole.ADMIN)
    _prepare_dir(directory, (KEY_FILE, CERT_FILE, CA_CERT_FILE))
    key = ed25519.Ed25519PrivateKey.generate()
    public_spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    node_id = hashlib.sha256(public_spki).hexdigest()
    cert = ca.issue(
        key.public_key(),
        role,
        common_name=f"{role.value}-{short_id(node_id)}",
        not_valid_before=not_valid_before,
        not_valid_after=not_valid_after,
        grant=grant,
        claims=claims,
    )
    _write_private(directory / KEY_FILE, _key_pem(key))
    _write_public(directory / CERT_FILE, _cert_pem(cert))
    _write_public(directory / CA_CERT_FILE, _cert_pem(ca.cert))
    record_issued(ca, cert)
    ca_der = ca.cert.public_bytes(serialization.Encoding.DER)
    return Identity(directory, cert.public_bytes(serialization.Encoding.DER), ca_der, (ca_der,))


def load_identity(directory: Path) -> Identity:
    """Load an identity directory, with errors that say which file is wrong."""
    if not directory.is_dir():
        raise BadInput(f"identity directory {directory} does not exist")
    paths = {name: directory / name for name in (KEY_FILE, CERT_FILE, CA_CERT_FILE)}
    for name, path in paths.items():
        if not path.is_file():
            raise BadInput(f"{path} not found: is {directory} an identity directory?")
    _check_private(paths[KEY_FILE])
    try:
        key_pem = paths[KEY_FILE].read_bytes()
        cert_pem = paths[CERT_FILE].read_bytes()
        ca_pem = paths[CA_CERT_FILE].read_bytes()
    except PermissionError as exc:
        raise IdentityError(f"cannot read {exc.filename}: permission denied") from None
    except OSError as exc:
        raise IdentityError(f"cannot read the identity in {directory}: {exc}") from None
    return _read_identity(directory, cert_pem, ca_pem) or _parse_identity(directory, key_pem, cert_pem, ca_pem)


def _read_identity(directory: Path, cert_pem: bytes, ca_pem: bytes) -> Identity | None:
    """The identity, without ``cryptography``, when its files are as p2pfs writes them: one
    certificate and one CA in the shape ``certfields`` reads, a key ``ssl`` loads. IdentityError
    if the key is not the certificate's; None for anything else (``_parse_identity`` judges it).

    Several CAs (a rotation) go the slow way too: which of them signed the certificate
    takes a signature check (``issuer_of``).
    """
    try:
        cert_ders, ca_ders = certfields.pem_blocks(cert_pem), tuple(certfields.pem_blocks(ca_pem))
        if len(cert_ders) != 1 or len(ca_ders) != 1:
            return None
        for der in (*cert_ders, *ca_ders):
            certfields.read(der)
    except certfields.Unexpected:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    try:  # OpenSSL checks that the key is the one the certificate names (X509_check_private_key)
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path), password=b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise IdentityError(f"{key_path} does not match {cert_path}") from None
        return None
    except OSError:
        return None
    return Identity(directory, cert_ders[0], ca_ders[0], ca_ders)


def _parse_identity(directory: Path, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> Identity:
    """The identity, read with ``cryptography``: any certificate and key it can load, several CAs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca_certs = tuple(x509.load_pem_x509_certificates(ca_pem))
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise IdentityError(f"cannot read the identity in {directory}: {exc}") from None
    if key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) != cert.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw):
        raise IdentityError(f"{directory / KEY_FILE} does not match {directory / CERT_FILE}")
    issuer = issuer_of(cert, ca_certs)
    return Identity(directory, cert.public_bytes(serialization.Encoding.DER),
                    issuer.public_bytes(serialization.Encoding.DER),
                    tuple(ca.public_bytes(serialization.Encoding.DER) for ca in ca_certs))


def renew_identity(directory: Path, ca: CertificateAuthority, *, days: int = CERT_VALIDITY_DAYS_DEFAULT) -> Identity:
    """Give an identity a new certificate for the same key (so the same id) from ``ca``.

    The new certificate copies the old one's subject and extensions (role, a client's
    grant, whatever else the CA signed into it) with a new validity window and serial;
    ``ca`` may be a new CA during a rotation, and is then added to DIR/ca.pem, so the
    identity trusts the CA it now presents. cert.pem (and ca.pem) are replaced
    atomically; a running node takes them up on reload (SIGHUP or `p2pfs reload`).
    """
    from cryptography import x509

    if days <= 0:
        raise BadInput(f"a certificate must be valid for at least a day, not {days}")
    old = load_identity(directory)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(old.cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension in old.cert.extensions:
        if isinstance(extension.value, x509.AuthorityKeyIdentifier):
            continue  # names the signing CA: made anew below
        builder = builder.add_extension(extension.value, critical=extension.critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()), critical=False
    )
    cert = builder.sign(ca.key, None)
    if ca.cert not in old.ca_certs:
        _replace_public(directory / CA_CERT_FILE, b"".join(_cert_pem(c) for c in (*old.ca_certs, ca.cert)))
    _replace_public(directory / CERT_FILE, _cert_pem(cert))
    record_issued(ca, cert)
    return load_identity(directory)


def _replace_public(path: Path, data: bytes) -> None:
    """Replace a public file whole or not at all (temp file, fsync, rename): a node reloading
    at that moment reads the old file or the new one, never half of one."""
    temp = path.with_name(path.name + ".new")
    temp.unlink(missing_ok=True)
    _write_public(temp, data)
    os.replace(temp, path)


def issuer_of(cert: x509.Certificate, ca_certs: tuple[x509.Certificate, ...]) -> x509.Certificate:
    """The CA among ``ca_certs`` whose key signed ``cert`` (the first if none did: TLS will refuse it)."""
    from cryptography.exceptions import InvalidSignature

    for ca_cert in ca_certs:
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca_cert
    return ca_certs[0]
