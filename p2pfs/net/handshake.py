"""Opening a connection: TCP, TLS with certificates on both ends, then the hello; and ``dial``.

Every connection is TLS 1.3 with a certificate on both ends chained to the
cluster CA (see ``identity``). After the handshake each end sends a ``Hello``
(protocol version, cluster id, role, listen address) and checks the peer's:
the role claimed must match the role in the peer's verified certificate, so a
client certificate can never act as a node.

A failure is classified by what it tells the caller (``hello.py``, shared with
the client's blocking driver; see ``errors.py``): a
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
from p2pfs.address import Address
from p2pfs.identity import Identity, PeerIdentity

from .config import HELLO_FRAME_BYTES_MAX, NetConfig
from .budget import NodeLimits
from .connection import Connection
from .errors import ConnectError, HandshakeError
from .hello import (
    check_dialled, check_hello, connect_failed, connect_timed_out, handshake_failure, handshake_timed_out,
    hello_frame, peer_of, refusal_frame,
)
from .streams import Handlers
from .tls import TLSStream

# Judges a peer whose certificate TLS accepted: why it is refused anyway (revoked), or None.
Refuse = Callable[[PeerIdentity], "str | None"]


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
        raise handshake_failure(exc) from None
    except wire.WireError as exc:
        raise ConnectError(f"bad hello: {exc}") from None


async def _exchange_hello(
    stream: TLSStream, identity: Identity, listen: Address | None, refuse: Refuse | None
) -> tuple[PeerIdentity, wire.Hello, bytes]:
    peer = peer_of(stream.getpeercert(binary_form=True))
    reason = refuse(peer) if refuse is not None else None
    if reason is not None:
        await stream.send_all(refusal_frame(reason))
        raise HandshakeError(reason)
    await stream.send_all(hello_frame(identity, listen))
    decoder = wire.FrameDecoder(frame_size_bytes_max=HELLO_FRAME_BYTES_MAX)
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(HELLO_FRAME_BYTES_MAX)
        if not data:
            raise ConnectError("the peer closed the connection during the hello")
        decoder.feed(data)
    hello = check_hello(frame, peer, identity)
    return peer, hello, decoder.take_buffered()  # frames sent right behind the hello


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
        raise connect_timed_out(address, config.connect_timeout_s) from None
    except OSError as exc:
        raise connect_failed(address, exc) from None
    stream = TLSStream(tcp, ssl_context or identity.client_context(), server_side=False)
    try:
        with trio.fail_after(config.handshake_timeout_s):
            try:
                peer, hello, leftover = await handshake(stream, identity, listen, refuse)
            except (ConnectError, HandshakeError) as exc:
                raise type(exc)(f"{address}: {exc}") from None
        check_dialled(address, peer, expected_node_id)
    except BaseException as exc:
        with trio.move_on_after(0.5) as cleanup:
            cleanup.shield = True
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise handshake_timed_out(address, config.handshake_timeout_s) from None
        raise
    return Connection(
        stream, peer, hello, dialled=True, config=config, handlers=handlers, initial_bytes=leftover,
        limits=limits,
    )
