"""What can go wrong when a replica is asked something, in the one hierarchy.

Every replica, this node's own or a peer, fails with a ``ReplicaError``, so a
coordinator or a background job catches one class whoever it asked. Each kind
is also the hierarchy's class for whose fault it is, so callers outside the
room need not know these.
"""

from __future__ import annotations

from p2pfs import errors


class ReplicaError(errors.P2pfsError):
    """A replica could not do what it was asked."""


class ReplicaDown(ReplicaError, errors.Unavailable):
    """Unreachable, or no answer within the deadline: worth backing off from."""


class ReplicaRefused(ReplicaError, errors.Unavailable):
    """It answered with an error (full, busy, bad request)."""

    def __init__(self, code, text: str) -> None:
        super().__init__(text)
        self.code = code


class ReplicaLacks(ReplicaError, errors.NotFound):
    """It does not hold a good copy of the chunk: it may be given one (read repair)."""


class BadReply(ReplicaError, errors.PeerFault):
    """A peer's answer did not parse or made no sense: that exchange fails, nothing else."""


class LocalFailure(ReplicaError, errors.LocalStorageError):
    """This node's own store refused (full, or bytes that do not match their id)."""
