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
* ``hello``: what a handshake decides (the hello, the checks on the peer), pure.
* ``traffic``: the bytes a round's own requests move (``metered``), counted by ``connection``. Pure.

The rest of p2pfs uses the names re-exported here. Those of the trio modules are
loaded on first use (PEP 562 ``__getattr__``), so that the pure modules (``mux``,
``flow``, ``hello``, ``errors``, ``config``, ``trust``) can be imported without
trio: the client's blocking driver (``p2pfs.client.blocking``) uses them.
"""

import importlib

from .config import NetConfig
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
from .traffic import TrafficMeter, current_meter, metered

# Names loaded from their trio module on first use.
_HOMES = {
    "Connection": "connection",
    "Endpoint": "endpoint",
    "client_connection": "endpoint",
    "dial": "handshake",
    "BodyReader": "streams",
    "Handlers": "streams",
    "IncomingRequest": "streams",
    "Reply": "streams",
    "Response": "streams",
    "Scattered": "mux",
    "TLSStream": "tls",
}

__all__ = [
    "BodyReader", "ConnectError", "Connection", "ConnectionClosed", "Endpoint", "Handlers",
    "HandshakeError", "IncomingRequest", "NetConfig", "NetError", "ProtocolViolation",
    "RemoteBadRequest", "RemoteError", "RemoteForbidden", "RemoteNotFound", "RemoteStorageFull",
    "RemoteUnavailable", "Reply", "RequestTimeout", "Response", "Scattered", "TLSStream", "TrafficMeter",
    "client_connection", "current_meter", "dial", "metered",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
