"""One operation's walk over the nodes: which node next, what to do after a failure, the error at the end.

The rules of failover (``failover.py``'s docstring says why each is safe),
with no I/O and no clock: the driver that makes the attempts (``failover.py``
over trio, ``blocking.py`` over a plain socket) passes the time in. Both
drivers follow exactly these, so an operation fails over alike whichever runs it:

- the nodes tried are the given ones in order, then the remembered members not
  given, at most ``FAILOVER_ATTEMPTS_MAX``;
- a further attempt starts only within ``FAILOVER_WINDOW_S`` of the first;
- only unavailability is worth another node; anything else is raised at once;
- after an attempt that may have sent something (anything but ``NodeUnreachable``),
  the operation's ``resend`` prepares a repeat or says why there can be none;
- the final error names every node tried and what happened there.
"""

from __future__ import annotations

from typing import Callable, Sequence

from p2pfs import errors
from p2pfs.address import Address
from p2pfs.client.faults import NodeUnreachable

# Nodes one operation tries: enough to get past a rack or a zone being down, few
# enough that a client cut off from the whole cluster gives up within a minute
# (each unreachable node costs at most connect plus handshake timeouts, 3 + 5 s).
FAILOVER_ATTEMPTS_MAX = 8
# A further attempt starts only this many seconds after the operation's start: a
# retry later than that would surprise someone waiting at a terminal more than an error.
# An attempt under way keeps its own deadlines (a long put is never cut short by this).
FAILOVER_WINDOW_S = 180.0


def nodes_to_try(given: Sequence[Address], remembered: Sequence[Address]) -> list[Address]:
    """The given nodes in order, then remembered ones not given, without repeats, capped."""
    order: list[Address] = []
    for address in [*given, *remembered]:
        if address not in order:
            order.append(address)
    return order[:FAILOVER_ATTEMPTS_MAX]


def described(node: Address, exc: BaseException) -> str:
    """An attempt's failure as the final error lists it: always naming the node."""
    text = str(exc)
    return text if str(node) in text else f"{node}: {text}"


class Attempts:
    """The attempts of one operation ``what`` ("list files") over ``candidates``, started at ``started_s``.

    A driver asks ``next_node(now_s)`` until it gets None, reports each failure
    to ``failed`` (which raises when the operation must not go on), and raises
    ``exhausted()`` when no node is left. ``failures`` are the attempts that
    failed, each naming its node: after a success, the nodes passed over.
    """

    def __init__(self, what: str, candidates: Sequence[Address], started_s: float) -> None:
        assert candidates, "an operation needs a node to try"
        self.what = what
        self._candidates = list(candidates)
        self._started_s = started_s
        self.tried: list[Address] = []
        self.failures: list[str] = []

    def next_node(self, now_s: float) -> Address | None:
        """The node to try next; None once every candidate was tried or the window has passed."""
        if len(self.tried) == len(self._candidates):
            return None
        if self.failures and now_s - self._started_s > FAILOVER_WINDOW_S:
            self.failures.append(f"no further node tried after {FAILOVER_WINDOW_S:.0f} s")
            return None
        node = self._candidates[len(self.tried)]
        self.tried.append(node)
        return node

    def failed(self, node: Address, exc: errors.P2pfsError, resend: Callable[[], str | None]) -> None:
        """Record that ``node`` failed with ``exc``; raise if the operation must stop here.

        ``resend`` is asked only after an attempt that may have sent something;
        it prepares the repeat (rewinds a source) or returns why there can be none.
        """
        if not isinstance(exc, errors.Unavailable):
            raise exc
        self.failures.append(described(node, exc))
        if not isinstance(exc, NodeUnreachable) and (reason := resend()) is not None:
            raise errors.Unavailable(
                f"cannot {self.what}: {'; '.join(self.failures)} (not retried: {reason})"
            ) from None

    def exhausted(self) -> errors.Unavailable:
        """The error once no node could do it: every node tried, and what happened there."""
        return errors.Unavailable(
            f"cannot {self.what} at any node tried ({', '.join(map(str, self.tried))}): {'; '.join(self.failures)}"
        )
