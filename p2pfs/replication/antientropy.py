"""Anti-entropy: each pair of replicas compares what both should hold and exchanges the difference.

For each live peer it shares keys with, a node sends per-bucket digests of the
chunks (and, separately, the name versions) both should hold; the peer answers
with its ids (or name versions) for the buckets that differ; the node pushes
what the peer lacks and pulls what it lacks itself (``healing`` has the digest
tree). Ring changes (joins, leaves, a dead node's grace running out) show up
here as differing digests, so the same round moves data to new owners. What a
round finds held here but not owned here goes to ``handoff``.

All transfers share one bandwidth budget (``RepairPacer``) and at most
``repair_concurrency`` peers are worked with at once, so foreground puts and
gets keep the bandwidth they need.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Iterable

import trio

from p2pfs import net
from p2pfs.ids import short_id
from p2pfs.replication import messages as dm
from p2pfs.replication.background import RepairPacer
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import ReplicaError, ReplicaLacks
from p2pfs.replication.handoff import Pusher
from p2pfs.replication.healing import bucket_digests, bucket_of, by_bucket, differing_buckets, name_item, shared_keys
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.placement import name_key
from p2pfs.replication.replicas import IDS_PER_MESSAGE_MAX, Replicas
from p2pfs.replication.view import RingView
from p2pfs.ring import Ring
from p2pfs.storage import Timestamp
from p2pfs.storage.hlc import ClockDriftError

log = logging.getLogger(__name__)

# Name versions in one SyncNames answer (a summary is ~4 times an id's size).
NAMES_PER_MESSAGE_MAX = IDS_PER_MESSAGE_MAX // 4

Summary = tuple[Timestamp, str, bool]  # version, writer, tombstone


@dataclasses.dataclass(frozen=True, slots=True)
class NotOurs:
    """What a round found held here that the ring places elsewhere: hand-off's work."""

    ring: Ring
    chunk_ids: list[bytes]
    names: list[str]


def _name_digests(rows: Iterable[tuple[str, Timestamp, str, bool]]) -> tuple[dict, dict]:
    """Rows grouped by bucket, and each bucket's digest."""
    grouped: dict[int, list[tuple]] = defaultdict(list)
    for row in rows:
        grouped[bucket_of(name_key(row[0]))].append(row)
    return grouped, bucket_digests({b: [name_item(*row) for row in rs] for b, rs in grouped.items()})


def _digest_messages(digests: dict[int, tuple[bytes, int]]) -> tuple[dm.BucketDigest, ...]:
    return tuple(dm.BucketDigest(b, d, n) for b, (d, n) in sorted(digests.items()))


class AntiEntropy:
    def __init__(
        self, *, config: ReplicationConfig, view: RingView, replicas: Replicas, local: LocalStore,
        pusher: Pusher, pacer: RepairPacer, offload: Offload,
    ) -> None:
        self.config = config
        self.node_id = view.node_id
        self._view = view
        self._replicas = replicas
        self._local = local
        self._pusher = pusher
        # For the admin's metrics: chunks and their bytes pulled from peers; transfers a round
        # decided on and has not done yet (the repair queue); and, from the last whole round,
        # the chunks held and the keys found short of a live copy (see ``round``).
        self.received_bytes = 0
        self.received_chunks = 0
        self.queued_chunks = 0
        self.chunks_held: int | None = None
        self.under_replicated_keys: int | None = None
        self._pacer = pacer
        self._offload = offload

    async def round(self) -> NotOurs | None:
        """Reconcile chunks and names with every live peer; None while this node is leaving.

        On the way it estimates the keys (chunks and names) it shares that are short of a
        live copy: those whose other replicas include a member not alive or not answering,
        or that a replica (this node included) lacked. What a round repairs was
        under-replicated when it began; a clean cluster gives 0. Each holder counts a key,
        so the cluster's figure is the maximum over nodes, not the sum.
        """
        if self.node_id in self._view.leaving:
            return None  # the leave's own hand-off is at work
        ring = self._view.ring()
        rf = self.config.rf
        me = self.node_id
        chunk_ids = await self._offload(self._local.chunk_ids)
        chunks_by_peer, chunks_not_ours = shared_keys(ring, rf, me, chunk_ids)
        summaries = await self._offload(self._local.names.summaries)
        by_name = {name: (version, writer, tomb) for name, version, writer, tomb in summaries}
        names_by_key = {name_key(n): n for n in by_name}
        names_by_peer, names_not_ours = shared_keys(ring, rf, me, names_by_key)
        alive = self._view.alive()
        peers = sorted(((set(chunks_by_peer) | set(names_by_peer)) & alive) - {me})
        limiter = trio.CapacityLimiter(self.config.repair_concurrency)
        short: set[bytes] = set()  # chunk ids and name keys short of a live copy
        for by_peer in (chunks_by_peer, names_by_peer):
            for peer, keys in by_peer.items():
                if peer not in alive:
                    short.update(keys)

        async def with_peer(peer: str) -> None:
            async with limiter:
                try:
                    await self._sync_chunks(peer, chunks_by_peer.get(peer, []), short)
                    await self._sync_names(peer, [names_by_key[k] for k in names_by_peer.get(peer, [])], by_name,
                                           short)
                except ReplicaError as exc:
                    short.update(chunks_by_peer.get(peer, []))
                    short.update(names_by_peer.get(peer, []))
                    log.info("anti-entropy with %s stopped: %s", short_id(peer), exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(with_peer, peer)
        self.chunks_held = len(chunk_ids)
        self.under_replicated_keys = len(short)
        return NotOurs(ring, chunks_not_ours, [names_by_key[k] for k in names_not_ours])

    async def refill_names(self) -> tuple[int, int]:
        """Name sync alone, with every live peer, whatever it shares with this node's index today.

        What a damaged (emptied) index needs at once, without waiting for the next
        round: each peer answers with the names this node should hold and lacks, and
        they are pulled. Returns (peers that answered, peers that did not).
        """
        summaries = await self._offload(self._local.names.summaries)
        by_name = {name: (version, writer, tomb) for name, version, writer, tomb in summaries}
        names_by_key = {name_key(n): n for n in by_name}
        names_by_peer, _ = shared_keys(self._view.ring(), self.config.rf, self.node_id, names_by_key)
        answered, failed = 0, 0
        for peer in sorted(self._view.alive() - {self.node_id}):
            try:
                # Keys found short here are the next round's estimate to make, not this refill's.
                await self._sync_names(peer, [names_by_key[k] for k in names_by_peer.get(peer, [])], by_name,
                                       set())
            except ReplicaError as exc:
                log.info("refilling names from %s stopped: %s", short_id(peer), exc)
                failed += 1
                continue
            answered += 1
        return answered, failed

    # -- chunks ---------------------------------------------------------------------

    async def _sync_chunks(self, peer: str, shared: list[bytes], short: set[bytes]) -> None:
        ours = by_bucket(shared)
        remote = self._replicas.remote(peer)
        for bucket, ids in await remote.sync_chunks(_digest_messages(bucket_digests(ours))):
            theirs = set(ids)
            mine = set(ours.get(bucket, []))
            to_push, to_pull = sorted(mine - theirs), sorted(theirs - mine)
            short.update(to_push)
            short.update(to_pull)
            left = len(to_push) + len(to_pull)
            self.queued_chunks += left
            try:
                for chunk_id in to_push:
                    await self._pusher.push(remote, chunk_id)
                    left -= 1
                    self.queued_chunks -= 1
                for chunk_id in to_pull:
                    try:
                        data = await remote.fetch_chunk(chunk_id)
                    except ReplicaLacks as exc:
                        # Listed, but gone since (collected, or quarantined as corrupt when read):
                        # another replica or a later round supplies it; the rest of the exchange,
                        # names included, goes on.
                        log.info("anti-entropy: %s no longer holds chunk %s: %s", short_id(peer),
                                 chunk_id.hex()[:16], exc)
                        left -= 1
                        self.queued_chunks -= 1
                        continue
                    await self._pacer.pace(len(data))
                    await self._replicas.local.store_chunk(chunk_id, data)
                    self.received_bytes += len(data)
                    self.received_chunks += 1
                    left -= 1
                    self.queued_chunks -= 1
            finally:
                # What was not done (a peer's error, the round's deadline) leaves the queue;
                # the next round decides again.
                self.queued_chunks -= left

    async def on_sync_chunks(self, request: net.IncomingRequest) -> dm.SyncChunksReply:
        peer = request.peer.node_id
        theirs = {d.bucket: (d.digest, d.count) for d in request.msg.buckets}
        chunk_ids = await self._offload(self._local.chunk_ids)
        by_peer, _ = shared_keys(self._view.ring(), self.config.rf, self.node_id, chunk_ids)
        ours = by_bucket(by_peer.get(peer, []))
        answer = []
        total = 0
        for bucket in differing_buckets(bucket_digests(ours), theirs):
            ids = ours.get(bucket, [])
            total += len(ids)
            if total > IDS_PER_MESSAGE_MAX:
                break  # the rest differs too; the next round continues
            answer.append(dm.BucketChunks(bucket, b"".join(sorted(ids))))
        return dm.SyncChunksReply(tuple(answer))

    # -- names ------------------------------------------------------------------------

    async def _sync_names(self, peer: str, shared: list[str], by_name: dict[str, Summary],
                          short: set[bytes]) -> None:
        grouped, digests = _name_digests((n, *by_name[n]) for n in shared)
        remote = self._replicas.remote(peer)
        differing, theirs = await remote.sync_names(_digest_messages(digests))
        for bucket in differing:
            for name, version, writer, _ in grouped.get(bucket, []):
                if name not in theirs or (version, writer) > theirs[name]:
                    short.add(name_key(name))
                    entry = await self._offload(self._local.names.get, name)
                    if entry is not None:
                        await remote.put_name(entry)
        for name, key in theirs.items():
            mine = by_name.get(name)
            if mine is None or key > (mine[0], mine[1]):
                short.add(name_key(name))
                entry = await remote.get_name(name)
                if entry is None:
                    continue
                try:
                    self._local.check_version(entry)
                except ClockDriftError as exc:
                    log.warning("name sync with %s: refused %r: %s", short_id(peer), name, exc)
                    continue
                await self._replicas.local.put_name(entry)

    async def on_sync_names(self, request: net.IncomingRequest) -> dm.SyncNamesReply:
        peer = request.peer.node_id
        theirs = {d.bucket: (d.digest, d.count) for d in request.msg.buckets}
        summaries = await self._offload(self._local.names.summaries)
        rows = {name_key(row[0]): row for row in summaries}
        by_peer, _ = shared_keys(self._view.ring(), self.config.rf, self.node_id, rows)
        grouped, digests = _name_digests(rows[key] for key in by_peer.get(peer, []))
        differing = []
        answer = []
        for bucket in differing_buckets(digests, theirs):
            differing.append(bucket)
            for name, version, writer, tomb in grouped.get(bucket, []):
                answer.append(dm.NameSummary(name, version.wall_ms, version.logical, writer, tomb))
            if len(answer) > NAMES_PER_MESSAGE_MAX:
                break  # the rest differs too; the next round continues
        return dm.SyncNamesReply(tuple(differing), tuple(answer))
