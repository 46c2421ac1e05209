"""Garbage collection: chunks no live manifest refers to, and old tombstones.

A chunk is deleted once unused for ``chunk_gc_grace_s`` (its file's time is
stamped on every write and re-put, so chunks of a put in progress are never
collected); tombstones older than ``tombstone_gc_grace_s`` are purged. Chunks
are judged only when every node that may hold names answered: a chunk must
not be judged unreferenced by a view that misses names.
"""

from __future__ import annotations

import logging

from p2pfs.clock import Clock
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.replicas import Replicas, collect_names
from p2pfs.replication.view import RingView
from p2pfs.storage import Timestamp

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(
        self, *, config: ReplicationConfig, view: RingView, replicas: Replicas, local: LocalStore,
        clock: Clock, offload: Offload,
    ) -> None:
        self.config = config
        self._view = view
        self._replicas = replicas
        self._local = local
        self._clock = clock
        self._offload = offload
        # Totals for the admin's metrics.
        self.removed_chunks = 0
        self.purged_tombstones = 0

    async def round(self) -> tuple[int, int]:
        """Remove unreferenced chunks past their grace, and old tombstones. Returns the counts."""
        now_ms = self._clock.wall_ms()
        purged = await self._offload(
            self._local.names.purge_tombstones,
            Timestamp(max(0, now_ms - int(self.config.tombstone_gc_grace_s * 1000)), 0),
        )
        self.purged_tombstones += purged
        everyone = self._view.everyone(self._view.ring())
        entries, _, unreachable, _ = await collect_names(self._replicas, everyone)
        if unreachable:
            log.info("gc skipped: %d ring members did not answer", len(unreachable))
            return 0, purged
        referenced = {ref.chunk_id for e in entries.values() if e.manifest for ref in e.manifest.chunks}
        before_ms = now_ms - int(self.config.chunk_gc_grace_s * 1000)
        removed = 0
        for chunk_id in await self._offload(self._local.chunk_ids):
            if chunk_id not in referenced:
                if await self._offload(self._local.chunks.delete_if_unused_since, chunk_id, before_ms):
                    removed += 1
                    self.removed_chunks += 1
        if removed or purged:
            log.info("gc: removed %d unreferenced chunks and %d old tombstones", removed, purged)
        return removed, purged
