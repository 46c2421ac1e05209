"""The transport's errors, placed in the one hierarchy of ``p2pfs.errors``.

Each is classified by what the caller can do about it, not by where in the
transport it happened:

* ``ConnectError``, ``ConnectionClosed``, ``RequestTimeout`` are ``Unavailable``:
  the peer could not be reached or did not answer in time; another replica, or
  a later retry, may do. A TLS handshake that times out (a frozen node) or a
  port that does not speak TLS is a ``ConnectError`` too: nobody's identity was
  judged.
* ``HandshakeError`` is an ``AuthError``: a certificate or identity was
  actually rejected (wrong CA, expired, wrong role, wrong cluster, another node
  than the one expected), by us or by the peer. Retrying will not help.
* ``ProtocolViolation`` is a ``PeerFault``: the peer broke the protocol; its
  connection is closed.
* ``RemoteError`` is the peer's answer to a request: an error code and a text.
  Building one picks the subclass for its code (``NOT_FOUND`` is a
  ``NotFound``, ``UNAVAILABLE`` an ``Unavailable``, ...), so a caller several
  hops away still knows what kind of failure it was.

No trio here: the multiplexer (``mux.py``), which is pure, raises these too.
"""

from __future__ import annotations

from p2pfs.errors import AuthError, BadInput, NotFound, P2pfsError, PeerFault, StorageFull, Unavailable
from p2pfs.wire import ErrorCode


class NetError(P2pfsError):
    """A transport failure: the peer is unreachable, rejected, or the connection broke."""


class ConnectError(NetError, Unavailable):
    """No connection was made (refused, timed out, no TLS or hello in time); nothing was sent."""


class HandshakeError(NetError, AuthError):
    """A certificate or identity was rejected during TLS or the hello; nothing was sent.

    Not a ``ConnectError``: that one is ``Unavailable``, and a rejected identity
    must not be reported (or retried) as a node that is merely down.
    """


class ConnectionClosed(NetError, Unavailable):
    """The connection (or the stream) closed while a request was outstanding."""


class RequestTimeout(NetError, Unavailable, TimeoutError):
    """A request's deadline passed. The connection remains usable."""


class CreditTimeout(RequestTimeout):
    """The peer granted no credit to send a body for ``stream_idle_timeout_s``: it stopped reading.

    ``peer_id`` names that peer, so a handler's failure can be told apart from
    the stall of another node it was itself sending to.
    """

    def __init__(self, text: str, peer_id: str) -> None:
        super().__init__(text)
        self.peer_id = peer_id


class ProtocolViolation(PeerFault):
    """The peer broke the protocol; the connection is closed."""


class RemoteError(P2pfsError):
    """The peer answered a request with an error. Handlers raise it to send one.

    ``RemoteError(code, text)`` returns an instance of the subclass for
    ``code`` (see ``_REMOTE_ERROR_FOR_CODE``), whoever builds it: the
    connection decoding an ERROR frame, a handler, or the simulated network
    handing a handler's error straight to the caller. Codes with no class of
    their own (INTERNAL, CORRUPT, CANCELLED) stay a plain ``RemoteError``.
    """

    def __new__(cls, code: ErrorCode, text: str) -> "RemoteError":
        if cls is RemoteError:
            cls = _REMOTE_ERROR_FOR_CODE.get(code, RemoteError)
        return super().__new__(cls, code, text)

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(code, text)  # the arguments again, so that a copy or a pickle rebuilds it
        self.code = code
        self.text = text

    def __str__(self) -> str:
        return f"{self.code.name}: {self.text}"


class RemoteNotFound(RemoteError, NotFound):
    """The peer has no such name or chunk."""


class RemoteUnavailable(RemoteError, Unavailable):
    """The peer could not do it now (its own peers down, a quorum missed, a deadline passed)."""


class RemoteBadRequest(RemoteError, BadInput):
    """The peer found the request malformed or not allowed in its form."""


class RemoteForbidden(RemoteError, AuthError):
    """The peer refused: our role or key may not do this."""


class RemoteStorageFull(RemoteError, StorageFull):
    """The peer has no room for what was sent."""


_REMOTE_ERROR_FOR_CODE: dict[ErrorCode, type[RemoteError]] = {
    ErrorCode.NOT_FOUND: RemoteNotFound,
    ErrorCode.UNAVAILABLE: RemoteUnavailable,
    ErrorCode.TIMEOUT: RemoteUnavailable,
    ErrorCode.BAD_REQUEST: RemoteBadRequest,
    ErrorCode.FORBIDDEN: RemoteForbidden,
    ErrorCode.STORAGE_FULL: RemoteStorageFull,
}
