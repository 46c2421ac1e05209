"""What the status page and ``/api/status`` show, and what ``/ready`` decides.

Built from the node's own objects when asked. The one thing a node does not
know about its peers is their used space: it asks each live member with the
same mutual-TLS status request the CLI uses, at most once per
``PEER_STATUS_MAX_AGE_S`` and only while someone is looking at the page.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import trio

from p2pfs import __version__
from p2pfs.errors import P2pfsError
from p2pfs.node.admin.metrics import MembershipEvents, Readiness, certificate_expiry_s, ring_share
from p2pfs.membership import MemberState
from p2pfs.node import messages as m

if TYPE_CHECKING:
    from p2pfs.node.daemon import Node

# Peers' used space is at most this old on the page: one status request per peer per
# this many seconds while the page is open, none while nobody looks.
PEER_STATUS_MAX_AGE_S = 5.0
# One peer's status answer; a slow peer shows its last known value (or none).
PEER_STATUS_TIMEOUT_S = 2.0


def readiness(node: Node) -> Readiness:
    """Ready to serve: joined (or the first node), enough live members for rf, disk writable."""
    reasons = []
    members = node.membership.members()
    others_alive = [mb for mb in members if mb.node_id != node.node_id and mb.state is MemberState.ALIVE]
    if node.cfg.node.seeds and not others_alive:
        reasons.append("not joined: no other member is alive")
    live = sum(1 for mb in members if mb.is_live)
    rf = node.cfg.replication.rf
    if live < rf:
        reasons.append(f"{live} live member(s), fewer than rf={rf}")
    stats = node.data.stats()
    if stats is None:
        reasons.append("the chunk store is not open yet")
    elif not os.access(node.cfg.data_dir, os.W_OK):
        reasons.append(f"data dir {node.cfg.data_dir} is not writable")
    elif stats.used_bytes >= stats.capacity_bytes:
        reasons.append("no capacity left for chunks")
    return Readiness(ok=not reasons, reasons=tuple(reasons))


class PeerUsage:
    """Used bytes of each peer, from their status answers, refreshed on demand."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.used_bytes: dict[str, int] = {}
        self._fetched_at_s = -PEER_STATUS_MAX_AGE_S

    async def refresh(self) -> None:
        now_s = trio.current_time()
        if now_s - self._fetched_at_s < PEER_STATUS_MAX_AGE_S:
            return
        self._fetched_at_s = now_s
        peers = [mb for mb in self._node.membership.members()
                 if mb.node_id != self._node.node_id and mb.is_live]
        async with trio.open_nursery() as nursery:
            for member in peers:
                nursery.start_soon(self._ask, member)

    async def _ask(self, member) -> None:
        try:
            reply = await self._node.endpoint.request(
                member.address, m.StatusRequest(), timeout_s=PEER_STATUS_TIMEOUT_S, node_id=member.node_id
            )
        except P2pfsError:
            return  # the page shows the last value it had
        if isinstance(reply, m.StatusReply):
            self.used_bytes[member.node_id] = reply.used_bytes


def status_document(node: Node, events: MembershipEvents, peers: PeerUsage) -> dict:
    """The JSON status API's answer (and the status page's data)."""
    now_s = trio.current_time()
    shares = ring_share(node)
    ready = readiness(node)
    stats = node.data.stats()
    members = []
    for member in sorted(node.membership.members(), key=lambda mb: mb.node_id):
        is_self = member.node_id == node.node_id
        used = stats.used_bytes if is_self and stats is not None else peers.used_bytes.get(member.node_id)
        members.append({
            "node_id": member.node_id,
            "address": str(member.address),
            "state": member.state.name.lower(),
            "state_for_s": round(now_s - member.state_since_s, 1),
            "incarnation": member.incarnation,
            "zone": member.zone,
            "capacity_bytes": member.capacity_bytes,
            "used_bytes": used,
            "ring_share": round(shares.get(member.node_id, 0.0), 4),
            "self": is_self,
        })
    return {
        "node": {
            "node_id": node.node_id,
            "address": str(node.cfg.node.advertise_address),
            "zone": node.cfg.node.zone,
            "version": __version__,
            "uptime_s": round(time.monotonic() - node.started_at_s, 1),
            "ready": ready.ok,
            "not_ready_because": list(ready.reasons),
            "rf": node.cfg.replication.rf,
            "capacity_bytes": node.cfg.node.capacity_bytes,
            "used_bytes": stats.used_bytes if stats is not None else None,
            "certificate_expiry_s": round(certificate_expiry_s(node.identity.cert)),
            "ca_certificate_expiry_s": round(certificate_expiry_s(node.identity.ca_cert)),
        },
        "members": members,
        "queues": {
            "hints_pending": stats.hints_pending if stats is not None else None,
            "corrupt_chunks_pending": stats.corrupt_chunks_pending if stats is not None else None,
            "repair_sent_bytes": stats.repair_sent_bytes if stats is not None else None,
            "repair_received_bytes": stats.repair_received_bytes if stats is not None else None,
            "repair_queue_chunks": stats.repair_queue_chunks if stats is not None else None,
            "under_replicated_keys": stats.under_replicated_keys if stats is not None else None,
            "hints_delivered": stats.hints_delivered if stats is not None else None,
        },
        "limits": {
            "client_bytes_per_s": node.client_limit.rate_bytes_per_s,
            "repair_bytes_per_s": node.cfg.replication.repair_bytes_per_s,
            "memory_budget_bytes": node.endpoint.limits.memory.size_bytes,
        },
        "events": [
            {"at_ms": e.at_ms, "node_id": e.node_id, "address": e.address, "before": e.before, "after": e.after}
            for e in reversed(events.recent)
        ],
    }
