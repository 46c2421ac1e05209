"""Requests a client (or a node) sends to one node about the node itself. Codes 80-89.

Fields are checked when built, and so when decoded (see ``replication.messages``);
a member's fields follow the membership messages' rules, as they come from the
member table.
"""

from __future__ import annotations

import math

from p2pfs import wire
from p2pfs.membership.messages import (
    CAPACITY_BYTES_MAX,
    HOST_CHARS_MAX,
    INCARNATION_MAX,
    NODE_ID_CHARS_MAX,
    PUSH_PULL_MEMBERS_MAX,
    ZONE_CHARS_MAX,
    MemberState,
)
from p2pfs.wire import Role

BOTH = (Role.NODE, Role.CLIENT)

# Members one MembersReply lists: the largest member table a node shares in one push-pull.
MEMBERS_PER_REPLY_MAX = PUSH_PULL_MEMBERS_MAX
# Longest version string a node reports (a PEP 440 version with a local part fits).
VERSION_CHARS_MAX = 64
# A member's state as `p2pfs members` shows it.
MEMBER_STATE_NAMES = frozenset(state.name.lower() for state in MemberState)
# Counters and sizes are int64 on the wire.
COUNT_MAX = 2**63 - 1


def _check_int(value: int, what: str, low: int, high: int) -> None:
    if not low <= value <= high:
        raise wire.FieldError(f"{what} must be in [{low}, {high}], got {value}")


def _check_text(value: str, what: str, chars_min: int, chars_max: int) -> None:
    if not chars_min <= len(value) <= chars_max:
        raise wire.FieldError(f"{what} must have {chars_min} to {chars_max} characters, got {len(value)}")


@wire.record
class MemberInfo:
    """One member as a node sees it, for `p2pfs members`."""

    node_id: str
    host: str
    port: int
    state: str
    incarnation: int
    zone: str
    capacity_bytes: int
    protocol_version: int

    def __post_init__(self) -> None:
        _check_text(self.node_id, "node_id", 1, NODE_ID_CHARS_MAX)
        _check_text(self.host, "host", 1, HOST_CHARS_MAX)
        _check_int(self.port, "port", 1, 65535)
        if self.state not in MEMBER_STATE_NAMES:
            raise wire.FieldError(f"unknown member state {self.state!r:.40}")
        _check_int(self.incarnation, "incarnation", 0, INCARNATION_MAX)
        _check_text(self.zone, "zone", 0, ZONE_CHARS_MAX)
        _check_int(self.capacity_bytes, "capacity_bytes", 0, CAPACITY_BYTES_MAX)
        _check_int(self.protocol_version, "protocol_version", 0, 2**16 - 1)


@wire.message(80, senders=BOTH)
class StatusRequest(wire.Message):
    pass


@wire.message(81, senders=BOTH)
class StatusReply(wire.Message):
    node_id: str
    host: str
    port: int
    version: str
    uptime_s: float
    zone: str
    capacity_bytes: int
    used_bytes: int
    members_alive: int
    members_suspect: int
    members_dead: int
    members_left: int
    # Trust (node.trust): when this node's certificate and the soonest-expiring trusted CA
    # stop being valid (Unix ms), and the newest CRL number it holds (0: none).
    cert_not_valid_after_ms: int = 0
    ca_not_valid_after_ms: int = 0
    crl_number: int = 0

    def __post_init__(self) -> None:
        _check_text(self.node_id, "node_id", 1, NODE_ID_CHARS_MAX)
        _check_text(self.host, "host", 1, HOST_CHARS_MAX)
        _check_int(self.port, "port", 0, 65535)  # 0: the configured listen port was "any"
        _check_text(self.version, "version", 1, VERSION_CHARS_MAX)
        if not (math.isfinite(self.uptime_s) and self.uptime_s >= 0.0):
            raise wire.FieldError(f"uptime_s must be a finite, non-negative number of seconds, got {self.uptime_s}")
        _check_text(self.zone, "zone", 0, ZONE_CHARS_MAX)
        _check_int(self.capacity_bytes, "capacity_bytes", 0, CAPACITY_BYTES_MAX)
        _check_int(self.used_bytes, "used_bytes", 0, COUNT_MAX)
        for field in ("members_alive", "members_suspect", "members_dead", "members_left",
                      "cert_not_valid_after_ms", "ca_not_valid_after_ms", "crl_number"):
            _check_int(getattr(self, field), field, 0, COUNT_MAX)


@wire.message(82, senders=BOTH)
class MembersRequest(wire.Message):
    pass


@wire.message(83, senders=BOTH)
class MembersReply(wire.Message):
    members: tuple[MemberInfo, ...]

    def __post_init__(self) -> None:
        _check_int(len(self.members), "members", 0, MEMBERS_PER_REPLY_MAX)


@wire.message(84, senders=(Role.CLIENT,))
class LeaveRequest(wire.Message):
    """Ask the node to hand off its data and leave the cluster gracefully, then exit."""


@wire.message(85, senders=BOTH)
class LeaveReply(wire.Message):
    accepted: bool
