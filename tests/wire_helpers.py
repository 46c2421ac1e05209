"""A message for transport tests: the product has none that carries an arbitrary payload."""

from __future__ import annotations

from p2pfs import wire
from p2pfs.wire import Role


# Type code 2 is kept for this test message (type codes are append-only; the product never sends 2).
@wire.message(2, senders=(Role.NODE, Role.CLIENT), takes_body=True)
class Echo(wire.Message):
    """A request with a payload, answered by the test's handler with the same message."""

    payload: bytes
