"""Node ids as people see them. Pure: the cores name members in their logs without loading TLS.

A node id is the SHA-256 of the node's public key, 64 hex characters
(``identity.node_id_of``); logs and tables show its first 12.
"""

from __future__ import annotations


def short_id(node_id: str) -> str:
    """The first 12 hex characters: enough to tell members apart in logs and tables."""
    return node_id[:12]
