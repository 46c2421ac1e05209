"""Hint delivery: a stand-in hands what it holds for a downed owner back once the owner is alive.

Hints expire after ``hint_ttl_s`` (anti-entropy is the safety net for what was
never handed over). A stand-in's copy of a chunk goes once no owner waits for
it and the ring does not place it on the stand-in (``quorum.keep_stand_in_copy``).
"""

from __future__ import annotations

import logging

from p2pfs.clock import Clock
from p2pfs.ids import short_id
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import ReplicaError
from p2pfs.replication.hints import HintKind
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.quorum import hint_plan, keep_stand_in_copy
from p2pfs.replication.replicas import Replicas
from p2pfs.replication.view import RingView
from p2pfs.storage import ChunkCorrupt, ChunkMissing

log = logging.getLogger(__name__)


class HintDelivery:
    def __init__(
        self, *, config: ReplicationConfig, view: RingView, replicas: Replicas, local: LocalStore,
        clock: Clock, offload: Offload,
    ) -> None:
        self.config = config
        self.node_id = view.node_id
        self._view = view
        self._replicas = replicas
        self._local = local
        self._clock = clock
        self._offload = offload
        self.delivered = 0  # hinted chunks and names handed to their owners (the admin's metric)

    async def round(self) -> int:
        """Hand hinted chunks and names to owners that are alive again; returns how many."""
        hints = self._local.hints
        expired = await self._offload(hints.expire, self._clock.wall_ms() - int(self.config.hint_ttl_s * 1000))
        if expired:
            log.info("dropped %d expired hints", expired)
        plan = hint_plan(await self._offload(hints.owners), self._view.ring().members, self._view.alive(),
                         self.node_id)
        for owner in plan.forget:
            dropped = await self._offload(hints.remove_owner, owner)
            log.info("dropped %d hints for %s, which is out of the ring", dropped, short_id(owner))
        delivered = 0
        for owner in plan.deliver:
            replica = self._replicas(owner)
            for hint in await self._offload(hints.for_owner, owner):
                try:
                    if hint.kind is HintKind.CHUNK:
                        data = await self._offload(self._local.chunks.get, hint.key)
                        await replica.store_chunk(hint.key, data)
                    else:
                        entry = await self._offload(self._local.names.get, hint.key.decode("utf-8"))
                        if entry is not None:
                            await replica.put_name(entry)
                except (ChunkMissing, ChunkCorrupt):
                    pass  # nothing left to hand over; anti-entropy will find another copy
                except ReplicaError as exc:
                    log.info("handing hints to %s paused: %s", short_id(owner), exc)
                    break
                await self._offload(hints.remove, hint)
                delivered += 1
                self.delivered += 1
                if hint.kind is HintKind.CHUNK:
                    await self._drop_if_not_ours(hint.key)
            if delivered:
                log.info("handed %d hinted items to %s", delivered, short_id(owner))
        return delivered

    async def _drop_if_not_ours(self, chunk_id: bytes) -> None:
        preferred = self._view.ring().preference_list(chunk_id, self.config.rf)
        if not keep_stand_in_copy(self.node_id, preferred, still_hinted=False):
            await self._offload(self._local.drop_unless_hinted, chunk_id)
