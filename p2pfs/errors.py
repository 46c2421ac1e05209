"""The one error hierarchy of p2pfs.

Every error p2pfs raises on purpose is a ``P2pfsError``, classified by whose
fault it is and what the caller can do about it. A caller catches the class it
can act on, never a hand-made tuple of room-specific errors:

    P2pfsError
    ├── BadInput           the caller's input is wrong (a name, a file, an option)
    │   └── ConfigError    a configuration file or option is wrong
    ├── NotFound           no such name (or chunk) where it was looked for
    ├── Unavailable        a node unreachable, a deadline passed, a quorum not met
    ├── AuthError          a certificate or key problem, a wrong cluster or role
    ├── PeerFault          another node sent a bad message or answer: drop that
    │                      exchange (or connection), log once, never crash
    └── LocalStorageError  this node's own disk or files
        └── StorageFull    no room left

Rooms subclass these (``net.ConnectError`` is ``Unavailable``,
``wire.WireError`` is ``PeerFault``, ``storage.StorageError`` is
``LocalStorageError``) so that their callers can be precise while everyone
else catches the class. Only the CLI knows exit codes: ``cli.exit_code_for``
maps these classes to them.
"""

from __future__ import annotations


class P2pfsError(Exception):
    """Base of every error p2pfs raises on purpose; its message is meant for a person."""


class BadInput(P2pfsError):
    """The caller's input is wrong: a usage error, a bad name, a missing or unreadable file."""


class ConfigError(BadInput):
    """A configuration file or option is wrong; the message names the key."""


class NotFound(P2pfsError):
    """No such name (or chunk) where it was looked for."""


class Unavailable(P2pfsError):
    """A node is unreachable, a deadline passed, or a quorum could not be met."""


class AuthError(P2pfsError):
    """A certificate or key problem, a wrong cluster, or a role that may not do this."""


class PeerFault(P2pfsError):
    """Another node (or a client) sent a malformed message or answer.

    It costs that exchange or that connection, never the node: handlers catch it,
    log it once with the peer's id, and carry on.
    """


class LocalStorageError(P2pfsError):
    """This node's own disk or files failed (I/O error, corrupt local state)."""


class StorageFull(LocalStorageError):
    """The store has no room for what was asked."""
