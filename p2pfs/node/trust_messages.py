"""Requests about a node's trust: handing it a CRL, reloading its identity. Codes 100-109.

Fields are checked when built, and so when decoded (see ``replication.messages``).
"""

from __future__ import annotations

from p2pfs import wire
from p2pfs.wire import Role

BOTH = (Role.NODE, Role.CLIENT)

# A CRL travels whole in one message: at most this many DER bytes (about 10,000 entries;
# a new CA starts a new, empty list, so one CA's list never grows without bound).
CRL_BYTES_MAX = 1024 * 1024
# Lines a reload reports.
RELOAD_CHANGES_MAX = 16
RELOAD_CHANGE_CHARS_MAX = 200


def _check_crl(crl: bytes, what: str) -> None:
    if not 0 < len(crl) <= CRL_BYTES_MAX:
        raise wire.FieldError(f"{what} must have 1 to {CRL_BYTES_MAX} bytes, got {len(crl)}")


@wire.message(100, senders=BOTH)
class CrlPush(wire.Message):
    """A CRL (DER) for the node: taken if a trusted CA signed it and it is newer. Admin clients, or nodes."""

    crl: bytes

    def __post_init__(self) -> None:
        _check_crl(self.crl, "crl")


@wire.message(101, senders=BOTH)
class CrlPushReply(wire.Message):
    accepted: bool  # the pushed CRL was newer than the one held and is now in force
    crl_number: int  # the number of the CRL now held from that CA
    newer: bytes | None  # the receiver's own CRL when it is newer than the one pushed (push-pull)

    def __post_init__(self) -> None:
        if not 0 <= self.crl_number < 2**63:
            raise wire.FieldError(f"crl_number must be in [0, 2**63), got {self.crl_number}")
        if self.newer is not None:
            _check_crl(self.newer, "newer")


@wire.message(102, senders=(Role.CLIENT,))
class ReloadRequest(wire.Message):
    """Re-read the node's certificate, key, trusted CAs and CRL (admin clients)."""


@wire.message(103, senders=BOTH)
class ReloadReply(wire.Message):
    changes: tuple[str, ...]  # what changed, for people; empty if nothing did

    def __post_init__(self) -> None:
        if len(self.changes) > RELOAD_CHANGES_MAX:
            raise wire.FieldError(f"at most {RELOAD_CHANGES_MAX} changes")
        for change in self.changes:
            if len(change) > RELOAD_CHANGE_CHARS_MAX:
                raise wire.FieldError(f"a change has at most {RELOAD_CHANGE_CHARS_MAX} characters")
