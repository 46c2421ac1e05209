"""The member list a client remembers beside its identity, for failover.

A client is given one or a few node addresses. The cluster may have many more
members, and the given ones may all be down when the next command runs, so the
client keeps the addresses of the members the last answering node knew, in
``IDENTITY_DIR/members.json``, and tries them after the given ones. The list is
a cache: it is refreshed (asked of the node that just served an operation) once
it is older than ``MEMBERS_STALE_S``; a file that cannot be read is treated as
no list (the next successful operation writes a good one); and members the
node saw as dead or gone are not remembered.

Pure apart from the two file functions: the caller passes the wall time in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from p2pfs.address import Address, parse_address

MEMBERS_FILE = "members.json"
# A remembered list older than this (seconds) is refreshed after the next successful
# operation: one small extra request every five minutes at most, while membership
# changes (joins, departures) reach clients within minutes.
MEMBERS_STALE_S = 300.0
# Addresses kept: failover tries at most FAILOVER_ATTEMPTS_MAX nodes anyway, and a
# larger cluster's list would only cost reading time.
MEMBERS_REMEMBERED_MAX = 64
# Member states (as `p2pfs members` names them) not worth trying.
MEMBER_STATES_FORGOTTEN = frozenset({"dead", "left"})


@dataclasses.dataclass(frozen=True, slots=True)
class RememberedMembers:
    addresses: tuple[Address, ...]
    learned_wall_ms: int

    def stale(self, now_wall_ms: int) -> bool:
        return now_wall_ms - self.learned_wall_ms >= MEMBERS_STALE_S * 1000 or now_wall_ms < self.learned_wall_ms


def worth_remembering(members: Iterable[tuple[str, int, str]]) -> tuple[Address, ...]:
    """The addresses of (host, port, state) members that may answer, in order, capped."""
    found: list[Address] = []
    for host, port, state in members:
        address = Address(host, port)
        if state not in MEMBER_STATES_FORGOTTEN and address not in found:
            found.append(address)
    return tuple(found[:MEMBERS_REMEMBERED_MAX])


def refresh_due(remembered: RememberedMembers | None, now_wall_ms: int) -> bool:
    """Whether to ask the node that just served an operation for the member list."""
    return remembered is None or remembered.stale(now_wall_ms)


def remember(directory: Path, members: Iterable, now_wall_ms: int) -> None:
    """Keep the addresses of ``members`` (as a node's MembersReply lists them) worth trying."""
    save_members(directory, worth_remembering((mb.host, mb.port, mb.state) for mb in members), now_wall_ms)


def load_members(directory: Path) -> RememberedMembers | None:
    """The list remembered in ``directory``, or None if there is none or it is unreadable."""
    try:
        facts = json.loads((directory / MEMBERS_FILE).read_text())
        addresses = tuple(parse_address(a) for a in facts["addresses"][:MEMBERS_REMEMBERED_MAX])
        learned_wall_ms = int(facts["learned_wall_ms"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a cache: having none only means fewer nodes to try
    return RememberedMembers(addresses, learned_wall_ms)


def save_members(directory: Path, addresses: Sequence[Address], now_wall_ms: int) -> None:
    """Replace the remembered list atomically (a reader sees the old list or the new one)."""
    path = directory / MEMBERS_FILE
    temp = path.with_name(f".{MEMBERS_FILE}.{os.getpid()}")
    facts = {"addresses": [str(a) for a in addresses], "learned_wall_ms": now_wall_ms}
    try:
        temp.write_text(json.dumps(facts, indent=1) + "\n")
        os.replace(temp, path)
    except OSError:
        # A read-only identity directory: the client works without the cache.
        with contextlib.suppress(OSError):
            temp.unlink()
