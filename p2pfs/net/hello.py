"""What a handshake decides, without I/O: the hello, the checks on the peer, what a failure means.

``handshake.py`` runs these over a trio stream (nodes, and the trio client);
``p2pfs.client.blocking`` runs them over a blocking ``ssl`` socket, so that a
one-request command need not load trio. Both drivers then make the same
checks and classify failures alike: a certificate or identity that was judged
and refused is a ``HandshakeError`` (an ``AuthError``); anything else (no
answer in time, a port that does not speak TLS, a connection reset) is a
``ConnectError`` (an ``Unavailable``), because it says nothing about anyone's
identity. A frozen node is down, not an impostor.

Pure: no trio, no sockets; ``ssl`` only for the class of its errors.
"""

from __future__ import annotations

import ssl

from p2pfs import wire
from p2pfs.access import GrantError
from p2pfs.address import Address
from p2pfs.identity import Identity, PeerIdentity, peer_identity_from_der
from p2pfs.ids import short_id
from p2pfs.wire import Frame, FrameKind, Role

from .errors import ConnectError, HandshakeError

# OpenSSL's reasons for a handshake that failed because a certificate was judged and refused:
# by this end (verification failed) or by the peer (the alert it sent back says why).
CERTIFICATE_REJECTED_REASONS = frozenset({
    "CERTIFICATE_VERIFY_FAILED",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV1_ALERT_UNKNOWN_CA",
})


def local_hello(identity: Identity, listen: Address | None) -> wire.Hello:
    return wire.Hello(
        protocol_version=wire.PROTOCOL_VERSION,
        cluster_id=identity.cluster_id,
        role=identity.role.value,
        listen_host=listen.host if listen else "",
        listen_port=listen.port if listen else 0,
    )


def hello_frame(identity: Identity, listen: Address | None) -> bytes:
    """Our hello, encoded: sent once TLS is up and the peer's certificate has been judged."""
    payload = wire.encode_message(local_hello(identity, listen))
    return wire.encode_frame(Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, payload))


def refusal_frame(reason: str) -> bytes:
    """Sent in place of our hello to a peer we refuse, so that it knows it was refused, not cut off."""
    return wire.encode_frame(Frame(FrameKind.ERROR, 0, 0, wire.encode_error(wire.ErrorCode.FORBIDDEN, reason)))


def ssl_reason(exc: BaseException) -> str:
    """OpenSSL's reason for a failed handshake (or the text of whatever else failed)."""
    cause = exc.__cause__ or exc.__context__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause) or repr(cause)


def handshake_failure(exc: BaseException) -> ConnectError | HandshakeError:
    """What a TLS or socket error during the handshake means: a certificate refused, or not."""
    reason = ssl_reason(exc)
    if reason in CERTIFICATE_REJECTED_REASONS:
        return HandshakeError(f"TLS handshake failed: {reason}")
    return ConnectError(f"TLS handshake failed: {reason} (does another service listen on that port?)")


def peer_of(der: bytes | None) -> PeerIdentity:
    """The peer behind the certificate TLS verified."""
    if not der:
        raise HandshakeError("the peer presented no certificate")
    try:
        return peer_identity_from_der(der)
    except GrantError as exc:  # signed by our CA, yet unreadable: refuse rather than guess its rights
        raise HandshakeError(f"the peer's certificate carries a bad grant: {exc}") from None


def check_hello(frame: Frame, peer: PeerIdentity, identity: Identity) -> wire.Hello:
    """The peer's hello, checked against its certificate and our trust; or why it is refused.

    Raises HandshakeError (refused by the peer, another cluster, a role its
    certificate does not carry) or ConnectError (not a hello, another protocol
    version); WireError if the hello does not decode.
    """
    if frame.kind is FrameKind.ERROR:
        code, text = wire.decode_error(frame.payload)
        if code is wire.ErrorCode.FORBIDDEN:
            raise HandshakeError(f"refused: {text}")
        raise ConnectError(f"refused: {code.name}: {text}")
    if frame.kind is not FrameKind.HELLO or frame.msg_type != wire.Hello.TYPE:
        raise ConnectError(f"expected a hello, got {frame.kind.name}")
    hello = wire.decode_message(frame.msg_type, frame.payload)
    assert isinstance(hello, wire.Hello)
    if hello.protocol_version != wire.PROTOCOL_VERSION:
        raise ConnectError(
            f"peer speaks protocol version {hello.protocol_version}, we speak {wire.PROTOCOL_VERSION}"
        )
    if hello.cluster_id not in identity.trusted_cluster_ids:
        raise HandshakeError("peer belongs to another cluster (cluster ids differ)")
    if hello.role != peer.role.value:
        raise HandshakeError(
            f"peer claims to be a {hello.role} but its certificate is a {peer.role.value}'s"
        )
    return hello


def check_dialled(address: Address, peer: PeerIdentity, expected_node_id: str | None) -> None:
    """The node we dialled is a node, and the one we meant (when we know its id)."""
    if peer.role is not Role.NODE:
        raise HandshakeError(f"{address} is not a node")
    if expected_node_id is not None and peer.node_id != expected_node_id:
        raise HandshakeError(
            f"{address} is node {short_id(peer.node_id)}, expected {short_id(expected_node_id)}"
        )


def connect_timed_out(address: Address, connect_timeout_s: float) -> ConnectError:
    return ConnectError(f"connecting to {address} timed out after {connect_timeout_s} s")


def connect_failed(address: Address, exc: OSError) -> ConnectError:
    return ConnectError(f"cannot connect to {address}: {exc.strerror or exc}")


def handshake_timed_out(address: Address, handshake_timeout_s: float) -> ConnectError:
    """A node that accepts and then says nothing is frozen or overloaded: unavailable."""
    return ConnectError(
        f"{address} accepted the connection but did not complete the handshake within "
        f"{handshake_timeout_s} s (is it frozen or overloaded, or does another service "
        "listen on that port?)"
    )
