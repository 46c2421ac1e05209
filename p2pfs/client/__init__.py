"""The Python client library (docs/CLIENT.md).

``connect()`` gives a ``Cluster``: every operation runs at the first of the
given nodes (then of the members remembered beside the identity) that can do
it (``failover.py``, ``members.py``). ``Client`` speaks to one node
(``node.py``); ``sync`` runs the same operations from code without trio. Every
call has a deadline; network and remote failures become the classes of
``p2pfs.errors`` (``Unavailable``, ``NotFound``, ``AuthError``, ...) with a
message a person can act on. Only the CLI turns them into exit codes.
"""

from __future__ import annotations

import os

import trio

from p2pfs.client.failover import FAILOVER_ATTEMPTS_MAX, FAILOVER_WINDOW_S, Cluster, cluster_name, nodes_to_try
from p2pfs.client.listing import LS_PAGE_FILES_MAX, Listing
from p2pfs.client.node import (
    CLUSTER_REQUEST_TIMEOUT_S,
    FSCK_TIMEOUT_S,
    PUT_COMMIT_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    Client,
    NodeUnreachable,
    library_errors,
)
from p2pfs.client.settings import Nodes, identity_directory, node_addresses

__all__ = [
    "CLUSTER_REQUEST_TIMEOUT_S", "FAILOVER_ATTEMPTS_MAX", "FAILOVER_WINDOW_S", "FSCK_TIMEOUT_S",
    "LS_PAGE_FILES_MAX", "Listing", "PUT_COMMIT_TIMEOUT_S", "REQUEST_TIMEOUT_S", "Client", "Cluster", "NodeUnreachable", "cluster_name",
    "connect", "library_errors", "nodes_to_try", "run",
]


def connect(identity: str | os.PathLike | None = None, nodes: Nodes | None = None, *,
            remember: bool = True) -> Cluster:
    """The cluster, spoken to with the client identity in directory ``identity``.

    ``identity`` defaults to ``P2PFS_IDENTITY``; ``nodes`` ("HOST:PORT",
    "A:1,B:2", or a list of them) to ``P2PFS_NODE``, then to the nodes
    ``p2pfs client init --node`` saved. Nothing is sent yet: each operation
    connects to the first node that can serve it. With ``remember``, the member
    list learnt from the nodes is kept in the identity directory, so that later
    operations can fail over to members that were not given.
    """
    from p2pfs.identity import load_identity

    directory = identity_directory(identity)
    return Cluster(load_identity(directory), node_addresses(nodes, directory),
                   remember_in=directory if remember else None)


def run(async_fn, *args):
    """Run a client coroutine from synchronous code (the CLI)."""
    return trio.run(async_fn, *args)
