"""Requests a client (or a node) sends to one node about the node itself. Codes 80-89."""

from __future__ import annotations

from p2pfs import wire
from p2pfs.wire import Role

BOTH = (Role.NODE, Role.CLIENT)


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


@wire.message(82, senders=BOTH)
class MembersRequest(wire.Message):
    pass


@wire.message(83, senders=BOTH)
class MembersReply(wire.Message):
    members: tuple[MemberInfo, ...]


@wire.message(84, senders=(Role.CLIENT,))
class LeaveRequest(wire.Message):
    """Ask the node to hand off its data and leave the cluster gracefully, then exit."""


@wire.message(85, senders=BOTH)
class LeaveReply(wire.Message):
    accepted: bool
