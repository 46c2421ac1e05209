"""Judging a client's request by its certificate's grant (``p2pfs.access``), where requests enter.

Every client route calls ``authorize`` first. Node peers are not judged here:
the wire's sender roles refuse client-only messages from them (put, rm, leave,
fsck), the few both may send (status, members) are reads, and what a node may
do otherwise is the membership and replication rooms' concern.
"""

from __future__ import annotations

import logging

from p2pfs import wire
from p2pfs.access import AccessDenied, Operation
from p2pfs.wire import Role

from .errors import RemoteError
from .streams import IncomingRequest

log = logging.getLogger(__name__)


def authorize(request: IncomingRequest, operation: Operation, name: str | None = None) -> str:
    """The client's id if its grant allows ``operation`` (on ``name``); else a FORBIDDEN answer.

    A refusal is logged at WARNING with the client's id: a key trying what it may
    not is worth an operator's look (a misconfigured client, or a stolen key).
    """
    peer = request.peer
    if peer.role is Role.NODE:  # only requests both roles may send (status, members) reach here from a node
        return peer.node_id
    try:
        peer.grant_or_default().check(operation, name)
    except AccessDenied as exc:
        log.warning("refused %s from client %s: %s", operation.value, peer.node_id, exc)
        raise RemoteError(wire.ErrorCode.FORBIDDEN, f"client {peer.short_id}: {exc}") from None
    return peer.node_id
