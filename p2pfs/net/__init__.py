"""Mutual-TLS transport over trio: listener, dialer, multiplexed requests, streams, pool.

One concern per module:

* ``config``: the ``[net]`` settings and the transport's caps.
* ``errors``: the transport's errors, placed in ``p2pfs.errors``' hierarchy.
* ``tls``: TLS over a socket through memory BIOs.
* ``handshake``: TLS plus the hello, and ``dial``; what a failure means (auth or unavailable).
* ``mux``: the stream multiplexer (stream ids, states, cancel), pure and sans-IO.
* ``flow``: its credit windows (per stream and per connection), counted in bytes. Pure.
* ``budget``: what a node's connections share: the memory budget for buffered input,
  requests per peer, the per-peer fault log.
* ``streams``: what handlers and callers see: requests, answers, streamed bodies.
* ``connection``: the trio driver of one connection, carrying out what the mux decides.
* ``endpoint``: a node's listener and connection pool, and a client's connection.

The rest of p2pfs uses the names re-exported here.
"""

from .config import NetConfig
from .connection import Connection
from .endpoint import Endpoint, client_connection
from .errors import (
    ConnectError,
    ConnectionClosed,
    HandshakeError,
    NetError,
    ProtocolViolation,
    RemoteBadRequest,
    RemoteError,
    RemoteForbidden,
    RemoteNotFound,
    RemoteStorageFull,
    RemoteUnavailable,
    RequestTimeout,
)
from .handshake import dial
from .streams import BodyReader, Handlers, IncomingRequest, Reply, Response
from .tls import TLSStream

__all__ = [
    "BodyReader", "ConnectError", "Connection", "ConnectionClosed", "Endpoint", "Handlers",
    "HandshakeError", "IncomingRequest", "NetConfig", "NetError", "ProtocolViolation",
    "RemoteBadRequest", "RemoteError", "RemoteForbidden", "RemoteNotFound", "RemoteStorageFull",
    "RemoteUnavailable", "Reply", "RequestTimeout", "Response", "TLSStream", "client_connection", "dial",
]
