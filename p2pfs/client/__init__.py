"""The Python client library (docs/CLIENT.md).

``connect()`` gives a ``Cluster``: every operation runs at the first of the
given nodes (then of the members remembered beside the identity) that can do
it (``failover.py``, ``attempts.py``, ``members.py``). ``Client`` speaks to one node
(``node.py``); ``sync`` runs the same operations from code without trio. Every
call has a deadline; network and remote failures become the classes of
``p2pfs.errors`` (``Unavailable``, ``NotFound``, ``AuthError``, ...) with a
message a person can act on. Only the CLI turns them into exit codes.

``blocking.py`` runs the one-request operations (ls, stat, members, status, rm)
over a plain socket, without trio, under the same rules: the CLI uses it so that
those commands start fast. So the names below are loaded on first use (PEP 562
``__getattr__``): importing ``p2pfs.client.blocking`` loads no trio.
"""

from __future__ import annotations

import importlib
import os

from p2pfs.client.settings import Nodes, identity_directory, node_addresses

# Names loaded from their module on first use.
_HOMES = {
    "FAILOVER_ATTEMPTS_MAX": "attempts",
    "FAILOVER_WINDOW_S": "attempts",
    "nodes_to_try": "attempts",
    "Cluster": "failover",
    "cluster_name": "failover",
    "LS_PAGE_FILES_MAX": "listing",
    "Listing": "listing",
    "CLUSTER_REQUEST_TIMEOUT_S": "deadlines",
    "FSCK_TIMEOUT_S": "deadlines",
    "PUT_COMMIT_TIMEOUT_S": "deadlines",
    "REQUEST_TIMEOUT_S": "deadlines",
    "NodeUnreachable": "faults",
    "library_errors": "faults",
    "Client": "node",
}

__all__ = [
    "CLUSTER_REQUEST_TIMEOUT_S", "FAILOVER_ATTEMPTS_MAX", "FAILOVER_WINDOW_S", "FSCK_TIMEOUT_S",
    "LS_PAGE_FILES_MAX", "Listing", "PUT_COMMIT_TIMEOUT_S", "REQUEST_TIMEOUT_S", "Client", "Cluster", "NodeUnreachable", "cluster_name",
    "connect", "library_errors", "nodes_to_try", "run",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def connect(identity: str | os.PathLike | None = None, nodes: Nodes | None = None, *,
            remember: bool = True):
    """The cluster, spoken to with the client identity in directory ``identity``: a ``Cluster``.

    ``identity`` defaults to ``P2PFS_IDENTITY``; ``nodes`` ("HOST:PORT",
    "A:1,B:2", or a list of them) to ``P2PFS_NODE``, then to the nodes
    ``p2pfs client init --node`` saved. Nothing is sent yet: each operation
    connects to the first node that can serve it. With ``remember``, the member
    list learnt from the nodes is kept in the identity directory, so that later
    operations can fail over to members that were not given.
    """
    from p2pfs.client.failover import Cluster
    from p2pfs.identity import load_identity

    directory = identity_directory(identity)
    return Cluster(load_identity(directory), node_addresses(nodes, directory),
                   remember_in=directory if remember else None)


def run(async_fn, *args):
    """Run a client coroutine from synchronous code (the CLI)."""
    import trio

    return trio.run(async_fn, *args)
