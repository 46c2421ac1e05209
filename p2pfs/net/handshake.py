"""Opening a connection: TCP, TLS with certificates on both ends, then the hello; and ``dial``.

Every connection is TLS 1.3 with a certificate on both ends chained to the
cluster CA (see ``identity``). After the handshake each end sends a ``Hello``
(protocol version, cluster id, role, listen address) and checks the peer's:
the role claimed must match the role in the peer's verified certificate, so a
client certificate can never act as a node.

A failure is classified by what it tells the caller (see ``errors.py``): a
certificate or identity that was judged and refused, by either end, is a
``HandshakeError`` (an ``AuthError``); anything else (no answer in time, a
port that does not speak TLS, a connection reset) is a ``ConnectError`` (an
``Unavailable``), because it says nothing about anyone's identity. A frozen
node is down, not an impostor.
"""

from __future__ import annotations

import ssl
from typing import Callable

import trio

from p2pfs import wire
from p2pfs.access import GrantError
from p2pfs.address import Address
from p2pfs.identity import Identity, PeerIdentity, peer_identity_from_der
from p2pfs.ids import short_id
from p2pfs.wire import Frame, FrameKind, Role

from .config import HELLO_FRAME_BYTES_MAX, NetConfig
from .budget import NodeLimits
from .connection import Connection
from .errors import ConnectError, HandshakeError
from .streams import Handlers
from .tls import TLSStream

# Judges a peer whose certificate TLS accepted: why it is refused anyway (revoked), or None.
Refuse = Callable[[PeerIdentity], "str | None"]

# OpenSSL's reasons for a handshake that failed because a certificate was judged and refused:
# by this end (verification failed) or by the peer (the alert it sent back says why).
_CERTIFICATE_REJECTED_REASONS = frozenset({
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


def _local_hello(identity: Identity, listen: Address | None) -> wire.Hello:
    return wire.Hello(
        protocol_version=wire.PROTOCOL_VERSION,
        cluster_id=identity.cluster_id,
        role=identity.role.value,
        listen_host=listen.host if listen else "",
        listen_port=listen.port if listen else 0,
    )


async def handshake(
    stream: TLSStream, identity: Identity, listen: Address | None, refuse: Refuse | None = None
) -> tuple[PeerIdentity, wire.Hello, bytes]:
    """TLS, then hellos both ways, checked against the peer's certificate. No deadline of its own.

    Returns the peer, its hello, and any bytes read past the hello frame.
    Raises HandshakeError (an identity refused) or ConnectError (anything
    else), with a message that leaves naming the peer to the caller. A peer
    that ``refuse`` turns away gets an ERROR frame (FORBIDDEN, saying why) in
    place of our hello, so that it, too, knows it was refused and not merely
    cut off.
    """
    try:
        await stream.do_handshake()
        return await _exchange_hello(stream, identity, listen, refuse)
    except (ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        reason = _ssl_reason(exc)
        if reason in _CERTIFICATE_REJECTED_REASONS:
            raise HandshakeError(f"TLS handshake failed: {reason}") from None
        raise ConnectError(f"TLS handshake failed: {reason} (does another service listen on that port?)") from None
    except wire.WireError as exc:
        raise ConnectError(f"bad hello: {exc}") from None


async def _exchange_hello(
    stream: TLSStream, identity: Identity, listen: Address | None, refuse: Refuse | None
) -> tuple[PeerIdentity, wire.Hello, bytes]:
    der = stream.getpeercert(binary_form=True)
    if not der:
        raise HandshakeError("the peer presented no certificate")
    try:
        peer = peer_identity_from_der(der)
    except GrantError as exc:  # signed by our CA, yet unreadable: refuse rather than guess its rights
        raise HandshakeError(f"the peer's certificate carries a bad grant: {exc}") from None
    reason = refuse(peer) if refuse is not None else None
    if reason is not None:
        error = wire.encode_error(wire.ErrorCode.FORBIDDEN, reason)
        await stream.send_all(wire.encode_frame(Frame(FrameKind.ERROR, 0, 0, error)))
        raise HandshakeError(reason)
    payload = wire.encode_message(_local_hello(identity, listen))
    await stream.send_all(wire.encode_frame(Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, payload)))
    decoder = wire.FrameDecoder(frame_size_bytes_max=HELLO_FRAME_BYTES_MAX)
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(HELLO_FRAME_BYTES_MAX)
        if not data:
            raise ConnectError("the peer closed the connection during the hello")
        decoder.feed(data)
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
    return peer, hello, decoder.take_buffered()  # frames sent right behind the hello


def _ssl_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause) or repr(cause)


async def dial(
    identity: Identity,
    address: Address,
    *,
    config: NetConfig,
    handlers: Handlers | None = None,
    listen: Address | None = None,
    bind_host: str | None = None,
    expected_node_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    refuse: Refuse | None = None,
    limits: NodeLimits | None = None,
) -> Connection:
    """Open a TLS connection to a node and exchange hellos. Does not start the reader.

    Raises ConnectError (unreachable, no handshake in time, not TLS) or
    HandshakeError (a certificate or identity refused), naming the peer.
    """
    try:
        with trio.fail_after(config.connect_timeout_s):
            tcp = await trio.open_tcp_stream(address.host, address.port, local_address=bind_host)
    except trio.TooSlowError:
        raise ConnectError(f"connecting to {address} timed out after {config.connect_timeout_s} s") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect to {address}: {exc.strerror or exc}") from None
    stream = TLSStream(tcp, ssl_context or identity.client_context(), server_side=False)
    try:
        with trio.fail_after(config.handshake_timeout_s):
            try:
                peer, hello, leftover = await handshake(stream, identity, listen, refuse)
            except (ConnectError, HandshakeError) as exc:
                raise type(exc)(f"{address}: {exc}") from None
        if peer.role is not Role.NODE:
            raise HandshakeError(f"{address} is not a node")
        if expected_node_id is not None and peer.node_id != expected_node_id:
            raise HandshakeError(
                f"{address} is node {short_id(peer.node_id)}, expected {short_id(expected_node_id)}"
            )
    except BaseException as exc:
        with trio.move_on_after(0.5) as cleanup:
            cleanup.shield = True
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            # A node that accepts and then says nothing is frozen or overloaded: unavailable.
            raise ConnectError(
                f"{address} accepted the connection but did not complete the handshake within "
                f"{config.handshake_timeout_s} s (is it frozen or overloaded, or does another service "
                "listen on that port?)"
            ) from None
        raise
    return Connection(
        stream, peer, hello, dialled=True, config=config, handlers=handlers, initial_bytes=leftover,
        limits=limits,
    )
