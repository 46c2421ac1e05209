"""fsck: the cluster's replication health as this node's ring sees it.

Every node that may hold data (the ring's members and live nodes out of it) is
asked for its names and chunk ids; each name and each chunk a live file refers
to is classified against where the ring places it.
"""

from __future__ import annotations

from collections import defaultdict

from p2pfs import net
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.placement import name_key
from p2pfs.replication.replicas import Replicas, collect_chunks, collect_names
from p2pfs.replication.view import RingView

# Problems an fsck answer lists by name (the counts cover all of them).
FSCK_PROBLEMS_LISTED_MAX = 50


class Fsck:
    def __init__(self, *, config: ReplicationConfig, view: RingView, replicas: Replicas) -> None:
        self.config = config
        self._view = view
        self._replicas = replicas

    async def on_fsck(self, request: net.IncomingRequest) -> dm.FsckReply:
        return await self.run()

    async def run(self) -> dm.FsckReply:
        ring = self._view.ring()
        rf = self.config.rf
        wanted_copies = min(rf, len(ring))
        alive = self._view.alive()
        everyone = self._view.everyone(ring)
        entries, name_holders, names_unreachable, _ = await collect_names(self._replicas, everyone)
        held, corrupt, chunks_unreachable = await collect_chunks(self._replicas, everyone)
        unreachable = sorted(set(names_unreachable) | set(chunks_unreachable))
        problems: list[dm.FsckProblem] = []
        counts: dict[str, int] = defaultdict(int)

        def problem(kind: str, what: str, key: str, holders, wanted) -> None:
            counts[f"{what}_{kind}"] += 1
            if len(problems) < FSCK_PROBLEMS_LISTED_MAX:
                problems.append(dm.FsckProblem(kind, what, key, tuple(sorted(holders)), tuple(wanted)))

        def classify(what: str, key: str, holders: set[str], wanted: list[str]) -> None:
            # At risk: fewer live copies than rf, wherever they are. Not at risk but
            # not done: copies on the wrong nodes (after a join, say), or too many.
            live = holders & alive
            if not holders:
                problem("missing", what, key, holders, wanted)
            elif len(live) < wanted_copies:
                problem("under_replicated", what, key, holders, wanted)
            elif not set(wanted) <= live:
                problem("misplaced", what, key, holders, wanted)
            elif len(holders) > wanted_copies:
                problem("over_replicated", what, key, holders, wanted)

        for name, entry in sorted(entries.items()):
            current = {n for n, key in name_holders.get(name, {}).items() if key == entry.key}
            classify("names", name, current, ring.preference_list(name_key(name), rf))
        referenced = sorted({ref.chunk_id for e in entries.values() if e.manifest for ref in e.manifest.chunks})
        for chunk_id in referenced:
            holders = {n for n, ids in held.items() if chunk_id in ids}
            classify("chunks", chunk_id.hex(), holders, ring.preference_list(chunk_id, rf))
        for chunk_id in sorted(corrupt):
            problem("corrupt", "chunks", chunk_id.hex(), {n for n, ids in held.items() if chunk_id in ids},
                    ring.preference_list(chunk_id, rf))
        return dm.FsckReply(
            names_checked=len(entries),
            chunks_checked=len(referenced),
            names_under_replicated=counts["names_under_replicated"],
            chunks_under_replicated=counts["chunks_under_replicated"],
            chunks_over_replicated=counts["chunks_over_replicated"],
            names_over_replicated=counts["names_over_replicated"],
            names_misplaced=counts["names_misplaced"],
            chunks_misplaced=counts["chunks_misplaced"],
            chunks_missing=counts["chunks_missing"],
            chunks_corrupt=counts["chunks_corrupt"],
            nodes_asked=len(everyone),
            nodes_unreachable=tuple(unreachable),
            problems=tuple(problems),
        )
