"""What a node presents and trusts, reloadable: its certificate and key, the CAs, the CRLs.

The endpoint takes its TLS contexts from here on every accept and dial, so a
reload (SIGHUP, or an admin's `p2pfs reload`) changes what new connections use
without touching the ones that are open: a healthy connection is never dropped
for a reload. Only a revoked peer's connections are closed (``Endpoint``).

Session resumption is off on the accepting end (no TLS 1.3 tickets): a resumed
session skips the peer's certificate, so an expired or revoked certificate
could get back in on a ticket from its better days. A full handshake costs a
node one Ed25519 verification per connection, and connections are long-lived.

CRLs are held one per CA (by the CA's key), the newest by CRL number, in
``DIR/crl.pem`` beside the identity, so they outlive a restart. A serial number
is looked up in every held CRL: serials are 159 random bits, so one CA's serial
never names another CA's certificate in practice.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from p2pfs.errors import BadInput
from p2pfs.identity import CRL_FILE, Identity, IdentityError, PeerIdentity, key_id_of, load_identity
from p2pfs.wire import Role

if TYPE_CHECKING:  # ``revocation`` loads ``cryptography``: only where a CRL is read (a client mostly has none)
    from p2pfs.revocation import RevocationList


class TrustStore:
    """A node's (or a client's) identity, trusted CAs and CRLs, and the TLS contexts built from them."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self._crls: dict[bytes, RevocationList] = {}
        self._crls = self._read_crls(identity)
        self.server_context, self.client_context = self._contexts(identity)

    @property
    def crl_path(self) -> Path:
        return self.identity.directory / CRL_FILE

    # -- reading --------------------------------------------------------------------

    def _contexts(self, identity: Identity) -> tuple[ssl.SSLContext | None, ssl.SSLContext]:
        server = identity.server_context() if identity.role is Role.NODE else None
        if server is not None:
            server.num_tickets = 0  # no resumption: every connection shows a certificate (see above)
        return server, identity.client_context()

    def _read_crls(self, identity: Identity) -> dict[bytes, RevocationList]:
        """The CRLs in DIR/crl.pem signed by CAs ``identity`` trusts; a bad file is an IdentityError."""
        path = identity.directory / CRL_FILE
        if not path.is_file():
            return {}
        from p2pfs.revocation import RevocationError, RevocationList, ca_key_id

        crls: dict[bytes, RevocationList] = {}
        try:
            pems = _split_pem(path.read_bytes())
            for pem in pems:
                crl = RevocationList.parse(pem)
                signer = crl.signer(list(identity.ca_certs or (identity.ca_cert,)))
                key = ca_key_id(signer)
                if key not in crls or crls[key].number < crl.number:
                    crls[key] = crl
        except (OSError, RevocationError) as exc:
            raise IdentityError(f"cannot use {path}: {exc}") from None
        return crls

    def reload(self) -> list[str]:
        """Re-read the identity directory (key, certificate, CAs, CRL) and rebuild the contexts.

        All or nothing: on any error the running trust stays as it was and IdentityError
        says why. Returns what changed, for the log. A CRL held in memory that is newer
        than the file's (it arrived by gossip) is kept.
        """
        try:
            identity = load_identity(self.identity.directory)
        except BadInput as exc:  # a file missing: as much a reason to keep the running one
            raise IdentityError(str(exc)) from None
        if identity.role is not self.identity.role:
            raise IdentityError(f"{identity.directory} now holds a {identity.role.value}'s identity")
        if identity.node_id != self.identity.node_id:
            raise IdentityError(
                f"{identity.directory} holds another key (id {identity.node_id[:12]}): a new key is a new "
                "node, which needs a restart; a renewal keeps the key"
            )
        from p2pfs.revocation import ca_key_id

        crls = self._read_crls(identity)
        contexts = self._contexts(identity)
        changes = []
        if identity.cert != self.identity.cert:
            changes.append(f"certificate (serial {identity.cert.serial_number:x}, valid to "
                           f"{identity.cert.not_valid_after_utc:%Y-%m-%d})")
        if identity.ca_certs != self.identity.ca_certs:
            changes.append(f"trusted CAs ({len(identity.ca_certs)})")
        trusted = {ca_key_id(ca) for ca in identity.ca_certs}
        for key, held in self._crls.items():
            if key in trusted and (key not in crls or crls[key].number < held.number):
                crls[key] = held
        if {k: c.number for k, c in crls.items()} != {k: c.number for k, c in self._crls.items()}:
            changes.append("CRL " + ", ".join(str(c.number) for c in crls.values()))
        self.identity, self._crls = identity, crls
        self.server_context, self.client_context = contexts
        return changes

    # -- revocation -----------------------------------------------------------------

    def crls(self) -> list[RevocationList]:
        return list(self._crls.values())

    def crl_number(self) -> int:
        """The highest CRL number held (0: none), for status."""
        return max((crl.number for crl in self._crls.values()), default=0)

    def offer(self, data: bytes) -> RevocationList | None:
        """Take a CRL if a trusted CA signed it and it is newer than the one held from that CA.

        Returns it if taken (written to DIR/crl.pem first, so it survives a restart),
        None if not newer; RevocationError if it is not a usable CRL.
        """
        from p2pfs.revocation import RevocationList, ca_key_id, write_atomic

        crl = RevocationList.parse(data)
        key = ca_key_id(crl.signer(list(self.identity.ca_certs or (self.identity.ca_cert,))))
        held = self._crls.get(key)
        if held is not None and held.number >= crl.number:
            return None
        crls = {**self._crls, key: crl}
        write_atomic(self.crl_path, b"".join(c.pem() for c in crls.values()))
        self._crls = crls
        return crl

    def newer_than(self, data: bytes) -> bytes | None:
        """Our CRL from the same CA as ``data`` if ours is newer (push-pull), else None."""
        from p2pfs.revocation import RevocationError, RevocationList, ca_key_id

        try:
            crl = RevocationList.parse(data)
            key = ca_key_id(crl.signer(list(self.identity.ca_certs or (self.identity.ca_cert,))))
        except RevocationError:
            return None
        held = self._crls.get(key)
        return held.der() if held is not None and held.number > crl.number else None

    def is_revoked(self, peer: PeerIdentity) -> bool:
        return any(peer.serial_number in crl.serials or peer.node_id in crl.node_ids for crl in self._crls.values())

    def revoked_node_ids(self) -> frozenset[str]:
        return frozenset().union(*(crl.node_ids for crl in self._crls.values()))

    def is_untrusted_issuer(self, peer: PeerIdentity) -> bool:
        """Whether the CA that signed the peer's certificate is no longer trusted (withdrawn after a
        CA rotation): the connection it opened must not outlive the trust that admitted it."""
        trusted = {key_id_of(ca) for ca in self.identity.ca_certs or (self.identity.ca_cert,)}
        return bool(peer.issuer_key_id) and peer.issuer_key_id not in trusted

    def refusal(self, peer: PeerIdentity) -> str | None:
        """Why a peer whose certificate TLS accepted is refused anyway (revoked), or None."""
        if self.is_revoked(peer):
            return f"certificate {peer.serial_number:x} of {peer.role.value} {peer.short_id} is revoked"
        return None


def _split_pem(data: bytes) -> list[bytes]:
    """The PEM blocks in a file holding several CRLs."""
    marker = b"-----END X509 CRL-----"
    return [block + marker for block in data.split(marker) if block.strip()]

