"""The few fields of an X.509 certificate p2pfs uses, read from its DER without ``cryptography``.

Why: loading ``cryptography.x509`` costs a one-request command (`p2pfs ls`) about
a sixth of its start-up (docs/BENCHMARKS.md, "CLI start-up"), yet such a command
reads only a handful of fields: the peer's key (its node id), its role (Extended
Key Usage), a client's grant, the serial number a CRL names, the expiry and the
issuer's key id. TLS (OpenSSL) has already verified the certificate, its chain
and its dates; this reads the fields out of the bytes it verified.

It reads only the shape p2pfs issues (``identity``): an Ed25519 key, DER with
minimal lengths, each extension at most once. Anything else gives None, and the
caller reads the certificate with ``cryptography`` instead (``identity.cert_info``),
so an unusual certificate is judged exactly as before, only slower.
tests/test_startup_certs.py checks both readers agree on every kind of
certificate p2pfs makes.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib

from p2pfs.access import GRANT_EXTENSION_OID

# SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING },
# then the 32 key bytes. A node id is the SHA-256 of the whole SubjectPublicKeyInfo.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
ED25519_SPKI_BYTES = len(ED25519_SPKI_PREFIX) + 32
# Extension ids (RFC 5280 4.2.1.12 and 4.2.1.1), and the serverAuth key purpose (1.3.6.1.5.5.7.3.1) as
# the contents of its DER OBJECT IDENTIFIER.
EXTENDED_KEY_USAGE_OID = "2.5.29.37"
AUTHORITY_KEY_ID_OID = "2.5.29.35"
SERVER_AUTH_OID = bytes.fromhex("2b06010505070301")
# Bytes of a DER length: 4 give up to 4 GiB, far more than any certificate; a longer one is not ours.
LENGTH_BYTES_MAX = 4

_SEQUENCE, _INTEGER, _OID, _OCTET_STRING, _BOOLEAN = 0x30, 0x02, 0x06, 0x04, 0x01
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_VERSION, _ISSUER_UID, _SUBJECT_UID, _EXTENSIONS, _KEY_ID = 0xA0, 0x81, 0x82, 0xA3, 0x80


class Unexpected(ValueError):
    """The bytes are not in the shape this reader knows: read them with ``cryptography``."""


@dataclasses.dataclass(frozen=True, slots=True)
class CertFields:
    """What p2pfs reads from a certificate (``identity.PeerIdentity`` is made from it)."""

    node_id: str  # SHA-256 of the SubjectPublicKeyInfo, hex
    server_auth: bool  # whether Extended Key Usage names serverAuth (a node's certificate)
    grant: bytes | None  # the value of a client's grant extension (``access``); None if it has none
    serial_number: int
    not_valid_after_s: float  # Unix seconds
    issuer_key_id: bytes  # authority key identifier; b"" if not given


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the contents, end of the contents) of the DER element at ``at``."""
    if at + 2 > len(data):
        raise Unexpected("truncated")
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= LENGTH_BYTES_MAX or at + count > len(data) or data[at] == 0:
            raise Unexpected("bad length")
        length = int.from_bytes(data[at:at + count], "big")
        if length < 0x80:  # with a non-zero first byte, the only way a long form is not the shortest
            raise Unexpected("length not minimal")
        at += count
    if at + length > len(data):
        raise Unexpected("truncated")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The elements between ``start`` and ``end``: (tag, element start, contents start, end)."""
    found = []
    while start < end:
        tag, body, stop = _tlv(data, start)
        if stop > end:
            raise Unexpected("element overruns its parent")
        found.append((tag, start, body, stop))
        start = stop
    return found


def _expect(element: tuple[int, int, int, int], tag: int) -> tuple[int, int, int, int]:
    if element[0] != tag:
        raise Unexpected(f"tag {element[0]:#x}, expected {tag:#x}")
    return element


def _dotted(oid: bytes) -> str:
    """An OBJECT IDENTIFIER's contents as "1.2.3" (X.690 8.19)."""
    if not oid or oid[-1] & 0x80:
        raise Unexpected("bad object identifier")
    arcs, value, starting = [], 0, True
    for byte in oid:
        if starting and byte == 0x80:
            raise Unexpected("object identifier not minimal")
        value = (value << 7) | (byte & 0x7F)
        starting = not byte & 0x80
        if starting:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))


def _time_s(tag: int, text: bytes) -> float:
    """UTCTime (YYMMDDHHMMSSZ, 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ) as Unix seconds (RFC 5280 4.1.2.5)."""
    if tag == _UTC_TIME and len(text) == 13:
        year = int(text[:2])
        year += 1900 if year >= 50 else 2000
        rest = text[2:12]
    elif tag == _GENERALIZED_TIME and len(text) == 15:
        year = int(text[:4])
        rest = text[4:14]
    else:
        raise Unexpected("validity time not in the RFC 5280 form")
    if not text.endswith(b"Z") or not rest.isdigit():
        raise Unexpected("validity time not in the RFC 5280 form")
    month, day, hour, minute, second = (int(rest[i:i + 2]) for i in range(0, 10, 2))
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.timezone.utc)
    except ValueError:
        raise Unexpected("validity time out of range") from None
    return moment.timestamp()


def read(der: bytes) -> CertFields:
    """The fields of a DER certificate in the shape p2pfs issues; ``Unexpected`` for any other."""
    try:
        return _read(der)
    except Unexpected:
        raise
    except (ValueError, IndexError) as exc:  # an element count or a number not as expected
        raise Unexpected(str(exc)) from None


def _read(der: bytes) -> CertFields:
    top = _children(der, 0, len(der))
    if len(top) != 1:
        raise Unexpected("not one certificate")
    _, _, body, end = _expect(top[0], _SEQUENCE)
    certificate = _children(der, body, end)
    if len(certificate) != 3:
        raise Unexpected("a certificate has three parts")
    _, _, tbs_body, tbs_end = _expect(certificate[0], _SEQUENCE)
    parts = _children(der, tbs_body, tbs_end)
    if not parts or parts[0][0] != _VERSION or der[parts[0][2]:parts[0][3]] != b"\x02\x01\x02":
        raise Unexpected("not a version 3 certificate")
    if len(parts) < 7:
        raise Unexpected("too few fields")
    serial = _expect(parts[1], _INTEGER)
    serial_bytes = der[serial[2]:serial[3]]
    if not serial_bytes or len(serial_bytes) > 1 and serial_bytes[0] == (0xFF if serial_bytes[1] & 0x80 else 0):
        raise Unexpected("serial number not minimal")
    validity = _children(der, *_expect(parts[4], _SEQUENCE)[2:])
    if len(validity) != 2:
        raise Unexpected("validity has two times")
    tag, _, time_body, time_end = validity[1]
    not_valid_after_s = _time_s(tag, der[time_body:time_end])
    _, spki_start, _, spki_end = _expect(parts[6], _SEQUENCE)
    spki = der[spki_start:spki_end]
    if len(spki) != ED25519_SPKI_BYTES or not spki.startswith(ED25519_SPKI_PREFIX):
        raise Unexpected("not an Ed25519 key")
    extensions: dict[str, bytes] = {}
    for index, (tag, _, part_body, part_end) in enumerate(parts[7:]):
        if tag in (_ISSUER_UID, _SUBJECT_UID):
            continue
        if tag != _EXTENSIONS or index != len(parts) - 8:  # the extensions come last, once
            raise Unexpected(f"unexpected field {tag:#x}")
        (sequence,) = _children(der, part_body, part_end)
        for extension in _children(der, *_expect(sequence, _SEQUENCE)[2:]):
            items = _children(der, *_expect(extension, _SEQUENCE)[2:])
            if len(items) == 3:
                critical = _expect(items[1], _BOOLEAN)
                if der[critical[2]:critical[3]] != b"\xff":  # DER: FALSE is left out, TRUE is 0xff
                    raise Unexpected("bad critical flag")
            elif len(items) != 2:
                raise Unexpected("an extension has two or three parts")
            oid = _expect(items[0], _OID)
            name = _dotted(der[oid[2]:oid[3]])
            if name in extensions:
                raise Unexpected(f"extension {name} given twice")
            value = _expect(items[-1], _OCTET_STRING)
            extensions[name] = der[value[2]:value[3]]
    return CertFields(
        node_id=hashlib.sha256(spki).hexdigest(),
        server_auth=_server_auth(extensions.get(EXTENDED_KEY_USAGE_OID)),
        grant=extensions.get(GRANT_EXTENSION_OID),
        serial_number=int.from_bytes(serial_bytes, "big", signed=True),
        not_valid_after_s=not_valid_after_s,
        issuer_key_id=_key_id(extensions.get(AUTHORITY_KEY_ID_OID)),
    )


def _server_auth(value: bytes | None) -> bool:
    """Whether an Extended Key Usage value (SEQUENCE OF OID) names serverAuth."""
    if value is None:
        return False
    (sequence,) = _children(value, 0, len(value))
    purposes = _children(value, *_expect(sequence, _SEQUENCE)[2:])
    if not purposes:
        raise Unexpected("an empty Extended Key Usage")
    return any(value[p[2]:p[3]] == SERVER_AUTH_OID for p in (_expect(p, _OID) for p in purposes))


def _key_id(value: bytes | None) -> bytes:
    """The keyIdentifier of an Authority Key Identifier value (RFC 5280 4.2.1.1); b"" if none."""
    if value is None:
        return b""
    (sequence,) = _children(value, 0, len(value))
    for tag, _, body, end in _children(value, *_expect(sequence, _SEQUENCE)[2:]):
        if tag == _KEY_ID:
            return value[body:end]
    return b""


def pem_blocks(data: bytes, label: bytes = b"CERTIFICATE") -> list[bytes]:
    """The DER of each ``label`` block of a PEM file (RFC 7468 strict form); ``Unexpected`` if
    the file holds anything else but whitespace between them."""
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    blocks, rest = [], data.strip()
    while rest:
        if not rest.startswith(begin) or end not in rest:
            raise Unexpected("not a PEM file of certificates")
        body, _, rest = rest[len(begin):].partition(end)
        rest = rest.lstrip()
        try:
            blocks.append(base64.b64decode(b"".join(body.split()), validate=True))
        except binascii.Error:
            raise Unexpected("bad base64 in a PEM block") from None
    return blocks
