"""The Python client library.

``Client`` speaks to one node (``node.py``); ``Cluster`` runs each operation at
the first of several nodes that can do it (``failover.py``), remembering the
member list beside the identity (``members.py``). Every call has a deadline;
network and remote failures become the classes of ``p2pfs.errors``
(``Unavailable``, ``NotFound``, ``AuthError``, ...) with a message a person can
act on. Only the CLI turns them into exit codes.
"""

from __future__ import annotations

import trio

from p2pfs.client.failover import FAILOVER_ATTEMPTS_MAX, FAILOVER_WINDOW_S, Cluster, nodes_to_try
from p2pfs.client.node import (
    CLUSTER_REQUEST_TIMEOUT_S,
    FSCK_TIMEOUT_S,
    PUT_COMMIT_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    Client,
    NodeUnreachable,
    library_errors,
)

__all__ = [
    "CLUSTER_REQUEST_TIMEOUT_S", "FAILOVER_ATTEMPTS_MAX", "FAILOVER_WINDOW_S", "FSCK_TIMEOUT_S",
    "PUT_COMMIT_TIMEOUT_S", "REQUEST_TIMEOUT_S", "Client", "Cluster", "NodeUnreachable", "library_errors",
    "nodes_to_try", "run",
]


def run(async_fn, *args):
    """Run a client coroutine from synchronous code (the CLI)."""
    return trio.run(async_fn, *args)
