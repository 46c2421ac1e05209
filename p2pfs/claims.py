"""What a node may claim about itself, as signed by the CA in its certificate. Pure.

A node announces its address, zone and capacity in membership (``MemberMeta``).
Its own signature on that announcement (``membership.records``) proves the
node said it, but not that it may: a node key holder could still announce
another node's address (and draw its traffic), another zone (and defeat
zone-aware placement) or a capacity of 2^63-1 bytes (and draw every write).
So ``p2pfs node init`` has the CA sign, in a certificate extension of our own,
the address the node listens on, its zone and a ceiling on the capacity it may
offer; every receiver refuses an announcement beyond them.

The extension (``CLAIMS_OID``, in a private arc) is not critical: OpenSSL does
not know it and would refuse a critical one at the handshake. Its value is a
msgpack array ``[version, host, port, zone, capacity_bytes_max]`` (the wire
format the rest of the protocol uses; ``""``, ``0``, ``None`` for "no bound").

Upgrades: a certificate made before claims existed has no extension and is
bound by nothing (``NO_CLAIMS``), as before; its node is still held to its own
signature. Re-issue it (``p2pfs node init`` on a new directory) to bind it.
"""

from __future__ import annotations

import dataclasses

import msgpack
from cryptography import x509

from p2pfs.address import Address

# 1.3.6.1.4.1 is IANA's private-enterprise arc; 59999 is not assigned to us, and
# the OID is only ever read by p2pfs: it names our extension, not an organisation.
CLAIMS_OID = x509.ObjectIdentifier("1.3.6.1.4.1.59999.1.1")
CLAIMS_VERSION = 1
# Bound on the encoded extension: a host name, a zone and three integers.
CLAIMS_BYTES_MAX = 512


@dataclasses.dataclass(frozen=True, slots=True)
class NodeClaims:
    """The bounds the CA set on a node's announcements; ``None`` fields bind nothing."""

    address: Address | None
    zone: str | None
    capacity_bytes_max: int | None

    def __post_init__(self) -> None:
        if self.capacity_bytes_max is not None and self.capacity_bytes_max < 0:
            raise ValueError("capacity_bytes_max must not be negative")

    def refusal(self, address: Address, zone: str, capacity_bytes: int) -> str | None:
        """Why an announcement of ``address``, ``zone`` and ``capacity_bytes`` oversteps these claims, or None."""
        if self.address is not None and address != self.address:
            return f"address {address} is not the certified {self.address}"
        if self.zone is not None and zone != self.zone:
            return f"zone {zone!r} is not the certified {self.zone!r}"
        if self.capacity_bytes_max is not None and capacity_bytes > self.capacity_bytes_max:
            return f"capacity {capacity_bytes} bytes is above the certified ceiling {self.capacity_bytes_max}"
        return None


NO_CLAIMS = NodeClaims(None, None, None)


def claims_extension(claims: NodeClaims) -> x509.UnrecognizedExtension:
    """The certificate extension that carries ``claims`` (add it with critical=False)."""
    address = claims.address
    value = msgpack.packb(
        [CLAIMS_VERSION, address.host if address else "", address.port if address else 0,
         claims.zone, claims.capacity_bytes_max],
        use_bin_type=True,
    )
    assert len(value) <= CLAIMS_BYTES_MAX
    return x509.UnrecognizedExtension(CLAIMS_OID, value)


def claims_of(cert: x509.Certificate) -> NodeClaims:
    """The claims in a certificate (``NO_CLAIMS`` without the extension); ValueError if malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(CLAIMS_OID)
    except x509.ExtensionNotFound:
        return NO_CLAIMS
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension) or len(value.value) > CLAIMS_BYTES_MAX:
        raise ValueError("malformed node claims")
    try:
        raw = msgpack.unpackb(value.value, raw=False, max_map_len=0, max_ext_len=0)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed node claims: {exc}") from None
    if not isinstance(raw, list) or len(raw) != 5 or raw[0] != CLAIMS_VERSION:
        raise ValueError("malformed node claims (unknown version or shape)")
    _, host, port, zone, capacity = raw
    if type(host) is not str or type(port) is not int:
        raise ValueError("malformed node claims (address)")
    if zone is not None and type(zone) is not str:
        raise ValueError("malformed node claims (zone)")
    if capacity is not None and type(capacity) is not int:
        raise ValueError("malformed node claims (capacity)")
    address = Address(host, port) if host else None
    return NodeClaims(address, zone, capacity)
