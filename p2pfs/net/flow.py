"""Credit-based flow control in bytes: what a frame costs, and the windows it is sent against.

Each body is sent against credit granted by its receiver, so a receiver never
buffers more than its window and the reader task never waits for application
code (HTTP/2's flow control, RFC 9113 section 5.2). There are two windows, both
counted in bytes: one per stream (``config.STREAM_WINDOW_BYTES``) and one per
connection (``config.CONNECTION_WINDOW_BYTES``), which all the streams of a
connection share; a STREAM_DATA frame needs credit in both. A CREDIT frame on a
stream returns that stream's credit; on stream 0 it returns the connection's.

A frame costs its payload plus ``STREAM_DATA_FRAME_COST_BYTES``: the receiver
holds each frame as an object, and a window counted in payload bytes alone
would let a peer send millions of empty frames within it.

Pure: the multiplexer (``mux.py``) owns the windows and calls these.
"""

from __future__ import annotations

from .config import STREAM_DATA_BYTES_MAX, STREAM_DATA_FRAME_COST_BYTES
from .errors import ProtocolViolation


class LocalProtocolError(Exception):
    """This end misused the multiplexer (a bug here, not the peer's fault)."""


def flow_units(payload: bytes | bytearray | memoryview) -> int:
    """What one STREAM_DATA payload costs in credit, in bytes: its length plus the frame's upkeep."""
    return len(payload) + STREAM_DATA_FRAME_COST_BYTES


def sendable_bytes(available_units: int, want_bytes: int) -> int:
    """How many of ``want_bytes`` may go in the next STREAM_DATA frame (0: wait for credit).

    ``available_units``: the smaller of the stream's and the connection's credit.
    """
    if available_units <= STREAM_DATA_FRAME_COST_BYTES:
        return 0
    return min(want_bytes, STREAM_DATA_BYTES_MAX, available_units - STREAM_DATA_FRAME_COST_BYTES)


class SendWindow:
    """Credit this end holds to send (one body, or a connection's): ``size_units`` bytes at the start, then what is granted."""

    __slots__ = ("size_units", "available_units")

    def __init__(self, size_units: int) -> None:
        assert size_units > 0
        self.size_units = size_units
        self.available_units = size_units

    def consume(self, units: int) -> None:
        if not 0 <= units <= self.available_units:
            raise LocalProtocolError(f"sending {units} units with {self.available_units} of credit")
        self.available_units -= units

    def grant(self, units: int) -> None:
        """The receiver freed ``units``; more than it ever lent is the peer's fault."""
        if self.available_units + units > self.size_units:
            raise ProtocolViolation("peer granted more credit than the window")
        self.available_units += units


class ReceiveWindow:
    """Credit the peer holds to send to us (one body, or a connection's), and what our reader freed but not yet returned.

    Freed credit goes back in batches of at least ``grant_units_min`` (by default
    half the window), so a reader taking frames one by one does not cost a CREDIT
    frame each.
    """

    __slots__ = ("size_units", "peer_units", "freed_units", "grant_units_min")

    def __init__(self, size_units: int, grant_units_min: int | None = None) -> None:
        assert size_units > 0
        self.size_units = size_units
        self.peer_units = size_units
        self.freed_units = 0
        self.grant_units_min = max(1, size_units // 2) if grant_units_min is None else grant_units_min
        assert 0 < self.grant_units_min <= size_units

    def consume(self, units: int) -> None:
        """The peer sent ``units``; past its credit it broke flow control."""
        if units > self.peer_units:
            raise ProtocolViolation("exceeded its credit")
        self.peer_units -= units

    @property
    def buffered_units(self) -> int:
        """Received and not yet released: what the receiver holds now."""
        return self.size_units - self.peer_units - self.freed_units

    def release(self, units: int) -> int:
        """Our reader took ``units`` out of the buffer; returns the credit to grant now (maybe 0)."""
        self.freed_units += units
        assert self.peer_units + self.freed_units <= self.size_units, "freed more than was received"
        if self.freed_units < self.grant_units_min:
            return 0
        grant, self.freed_units = self.freed_units, 0
        self.peer_units += grant
        return grant
