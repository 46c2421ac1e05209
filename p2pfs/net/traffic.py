"""What a piece of work costs on the wire: the bytes its own requests send and their answers bring.

A background round (anti-entropy, GC, a leave's hand-off) runs while the node serves
and replicates, so a socket's counters cannot tell its traffic apart from the rest.
``metered()`` installs a ``TrafficMeter`` in the task's context for a block; the
connection counts each request opened inside it (``Connection.open_request``) into
that meter. Trio copies the context into each task started from it, so the
round's child tasks count into the same meter. Only the requester counts: what
this node serves to others is their traffic (a connection's own tasks, even one a
round dialled, count nothing: ``unmetered``).

Counted: the payload bytes of the request and answer messages and of their streamed
bodies (an answer's body as the reader takes each piece, whoever reads it); frame
headers and TLS records are not. With no meter installed, a request costs one
``ContextVar.get``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator


@dataclasses.dataclass(slots=True)
class TrafficMeter:
    """Payload bytes sent and received by the requests made under it, and how many."""

    bytes_sent: int = 0
    bytes_received: int = 0
    requests: int = 0

    def summary(self) -> str:
        """The words a round's log line carries (scripts/bench_pernode.py reads them)."""
        return f"{self.bytes_sent} bytes sent and {self.bytes_received} received in {self.requests} requests"


_current: contextvars.ContextVar[TrafficMeter | None] = contextvars.ContextVar("p2pfs_traffic_meter", default=None)


def current_meter() -> TrafficMeter | None:
    """The meter requests made now count into, if any."""
    return _current.get()


def unmetered() -> None:
    """Count nothing more in this task, nor in the tasks it starts from now on.

    For a task that serves others, started by whichever task needed it first: a connection
    dialled by a round carries every later request on it, both ways, long after the round.
    """
    _current.set(None)


@contextlib.contextmanager
def metered() -> Iterator[TrafficMeter]:
    """Count the requests made in the block, and in the tasks started from it, into a fresh meter."""
    meter = TrafficMeter()
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)
