"""Self-healing: anti-entropy, hand-off, scrub, garbage collection, fsck.

Left alone, a cluster returns to every chunk and every name held by exactly
its ``rf`` preference nodes:

* **Anti-entropy** (every ``anti_entropy_interval_s``): for each live peer it
  shares keys with, a node sends per-bucket digests of what both should hold;
  the peer answers with its ids (or name versions) for the buckets that differ;
  the node pushes what the peer lacks and pulls what it lacks itself. Ring
  changes (joins, leaves, a dead node's grace running out) show up here as
  differing digests, so the same loop moves data to new owners.
* **Hand-off**: keys a node holds but no longer owns are pushed to their owners;
  the local copy is dropped only after every owner has confirmed holding it.
  A graceful leave runs the same hand-off against the ring without the node.
* **Scrub**: chunks are re-read at ``scrub_bytes_per_s``; one that fails
  verification is quarantined and fetched again from a healthy replica.
* **Garbage collection**: chunks no live manifest refers to are deleted once
  unused for ``chunk_gc_grace_s``; tombstones older than
  ``tombstone_gc_grace_s`` are purged.

All repair traffic shares one token bucket (``repair_bytes_per_s``) and at most
``repair_concurrency`` peers at a time, so foreground puts and gets keep the
bandwidth they need.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Iterable

import trio

from p2pfs import net
from p2pfs.identity import short_id
from p2pfs.membership import MemberState
from p2pfs.replication import messages as dm
from p2pfs.replication.healing import (
    Pacer,
    bucket_digests,
    bucket_of,
    by_bucket,
    differing_buckets,
    name_item,
    shared_keys,
    split_ids,
)
from p2pfs.replication.hints import HintKind
from p2pfs.replication.placement import Target, name_key
from p2pfs.ring import Ring
from p2pfs.storage import ChunkCorrupt, ChunkMissing, StorageError, Timestamp

if TYPE_CHECKING:
    from p2pfs.replication.service import DataService

log = logging.getLogger(__name__)

# Chunk ids in one ListChunks page, and in one SyncChunks answer (32 bytes each: 2 MiB).
IDS_PER_MESSAGE_MAX = 65536
# Problems an fsck answer lists by name (the counts cover all of them).
FSCK_PROBLEMS_LISTED_MAX = 50
# Ids asked about in one HasChunks during hand-off.
HANDOFF_BATCH_IDS = 1024


def _errors() -> tuple[type[BaseException], ...]:
    return (net.NetError, net.RemoteError, StorageError)


class Healer:
    def __init__(self, service: DataService) -> None:
        self.s = service
        self.config = service.config
        burst_bytes = max(self.config.repair_bytes_per_s, 8 * 1024 * 1024)
        self._pacer = Pacer(self.config.repair_bytes_per_s, burst_bytes)
        self._rng = service.rng
        self.bytes_pushed = 0
        self.bytes_pulled = 0

    def routes(self) -> dict:
        return {
            dm.Leaving: self._on_leaving,
            dm.SyncChunks: self._on_sync_chunks,
            dm.SyncNames: self._on_sync_names,
            dm.ListChunks: self._on_list_chunks,
            dm.Fsck: self._on_fsck,
        }

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._every, self.config.anti_entropy_interval_s, self.anti_entropy_round)
            nursery.start_soon(self._every, self.config.gc_interval_s, self.gc_round)
            if self.config.scrub_bytes_per_s > 0:
                nursery.start_soon(self._scrub_forever)
            task_status.started()

    async def _every(self, interval_s: float, round_fn) -> None:
        """Run ``round_fn`` forever, jittered so that nodes do not all repair at once."""
        while True:
            await trio.sleep(interval_s * self._rng.uniform(0.75, 1.25))
            try:
                await round_fn()
            except _errors() as exc:
                log.warning("%s stopped early: %s", round_fn.__name__, exc)

    async def _pace(self, size_bytes: int) -> None:
        delay_s = self._pacer.delay_s(size_bytes, trio.current_time())
        if delay_s > 0:
            await trio.sleep(delay_s)

    def _alive(self) -> set[str]:
        return {m.node_id for m in self.s._members() if m.state is MemberState.ALIVE} | {self.s.node_id}

    # -- one round ------------------------------------------------------------

    async def anti_entropy_round(self) -> None:
        """Reconcile chunks and names with every live peer; hand off what is not ours."""
        if self.s.node_id in self.s.leaving:
            return  # the leave's own hand-off is at work
        ring = self.s.ring()
        rf = self.config.rf
        me = self.s.node_id
        chunk_ids = await self.s._offload(lambda: list(self.s.store.iter_ids()))
        chunks_by_peer, chunks_not_ours = shared_keys(ring, rf, me, chunk_ids)
        summaries = await self.s._offload(self.s.names.summaries)
        by_name = {name: (version, writer, tomb) for name, version, writer, tomb in summaries}
        names_by_key = {name_key(n): n for n in by_name}
        names_by_peer, names_not_ours = shared_keys(ring, rf, me, names_by_key)
        alive = self._alive()
        peers = sorted(((set(chunks_by_peer) | set(names_by_peer)) & alive) - {me})
        limiter = trio.CapacityLimiter(self.config.repair_concurrency)

        async def with_peer(peer: str) -> None:
            async with limiter:
                try:
                    await self._sync_chunks(peer, chunks_by_peer.get(peer, []))
                    await self._sync_names(peer, [names_by_key[k] for k in names_by_peer.get(peer, [])], by_name)
                except _errors() as exc:
                    log.info("anti-entropy with %s stopped: %s", short_id(peer), exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(with_peer, peer)
        await self.hand_off_chunks(ring, chunks_not_ours)
        await self.hand_off_names(ring, [names_by_key[k] for k in names_not_ours])

    # -- chunks ---------------------------------------------------------------

    async def _sync_chunks(self, peer: str, shared: list[bytes]) -> None:
        ours = by_bucket(shared)
        digests = bucket_digests(ours)
        reply = await self.s._call(peer, dm.SyncChunks(tuple(
            dm.BucketDigest(b, d, n) for b, (d, n) in sorted(digests.items())
        )))
        for bucket in reply.buckets:
            theirs = set(split_ids(bucket.ids))
            mine = set(ours.get(bucket.bucket, []))
            for chunk_id in sorted(mine - theirs):
                await self._push_chunk(peer, chunk_id)
            for chunk_id in sorted(theirs - mine):
                await self._pull_chunk(peer, chunk_id)

    async def _on_sync_chunks(self, request: net.IncomingRequest) -> dm.SyncChunksReply:
        peer = request.peer.node_id
        theirs = {d.bucket: (d.digest, d.count) for d in request.msg.buckets}
        ring = self.s.ring()
        chunk_ids = await self.s._offload(lambda: list(self.s.store.iter_ids()))
        by_peer, _ = shared_keys(ring, self.config.rf, self.s.node_id, chunk_ids)
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

    async def _push_chunk(self, peer: str, chunk_id: bytes) -> bool:
        try:
            data = await self.s._offload(self.s.store.get, chunk_id)
        except (ChunkMissing, ChunkCorrupt):
            return False
        await self._pace(len(data))
        await self.s._store_on(Target(peer), chunk_id, data)
        self.bytes_pushed += len(data)
        return True

    async def _pull_chunk(self, peer: str, chunk_id: bytes) -> None:
        reply = await self.s._call(peer, dm.FetchChunk(chunk_id))
        await self._pace(len(reply.data))
        await self.s._offload(self.s._store_local, chunk_id, reply.data, "")
        self.s.corrupt_pending.discard(chunk_id)
        self.bytes_pulled += len(reply.data)

    async def hand_off_chunks(self, ring: Ring, chunk_ids: Iterable[bytes]) -> tuple[int, int]:
        """Make sure every live owner holds each chunk, then drop our copy if all ``rf`` do.

        Chunks still hinted for a returning owner are left to hint delivery.
        Returns (chunks handed off and dropped, chunks kept).
        """
        rf = self.config.rf
        alive = self._alive()
        pending: dict[str, list[bytes]] = defaultdict(list)
        owners_of: dict[bytes, list[str]] = {}
        for chunk_id in chunk_ids:
            if await self.s._offload(self.s.hints.is_hinted, HintKind.CHUNK, chunk_id):
                continue
            owners = ring.preference_list(chunk_id, rf)
            if self.s.node_id in owners:
                continue  # ours after all (the ring changed since the caller looked)
            owners_of[chunk_id] = owners
            for owner in owners:
                if owner in alive:
                    pending[owner].append(chunk_id)
        confirmed: dict[bytes, int] = defaultdict(int)
        for owner, ids in pending.items():
            for start in range(0, len(ids), HANDOFF_BATCH_IDS):
                batch = ids[start : start + HANDOFF_BATCH_IDS]
                try:
                    present = (await self.s._call(owner, dm.HasChunks(tuple(batch)))).present
                    for chunk_id, held in zip(batch, present):
                        if held or await self._push_chunk(owner, chunk_id):
                            confirmed[chunk_id] += 1
                except _errors() as exc:
                    log.info("hand-off to %s paused: %s", short_id(owner), exc)
                    break
        dropped = kept = 0
        for chunk_id, owners in owners_of.items():
            # Drop only when all rf owners (every one alive) confirmed: the copy we
            # hold may be one of the rf copies until then.
            if len(owners) == min(rf, len(ring)) and confirmed[chunk_id] == len(owners):
                await self.s._offload(self._drop_chunk, chunk_id)
                dropped += 1
            else:
                kept += 1
        if dropped:
            log.info("handed off %d chunks to their owners and dropped our copies", dropped)
        return dropped, kept

    def _drop_chunk(self, chunk_id: bytes) -> None:
        if not self.s.hints.is_hinted(HintKind.CHUNK, chunk_id):
            self.s.store.delete(chunk_id)

    # -- names ------------------------------------------------------------------

    @staticmethod
    def _name_digests(rows: Iterable[tuple[str, Timestamp, str, bool]]) -> tuple[dict, dict]:
        """Rows grouped by bucket, and each bucket's digest."""
        grouped: dict[int, list[tuple]] = defaultdict(list)
        for row in rows:
            grouped[bucket_of(name_key(row[0]))].append(row)
        return grouped, bucket_digests({b: [name_item(*row) for row in rs] for b, rs in grouped.items()})

    async def _sync_names(self, peer: str, shared: list[str], by_name: dict) -> None:
        grouped, digests = self._name_digests((n, *by_name[n]) for n in shared)
        reply = await self.s._call(peer, dm.SyncNames(tuple(
            dm.BucketDigest(b, d, n) for b, (d, n) in sorted(digests.items())
        )))
        theirs = {s.name: (Timestamp(s.wall_ms, s.logical), s.writer) for s in reply.names}
        for bucket in reply.differing:
            for name, version, writer, _ in grouped.get(bucket, []):
                if name not in theirs or (version, writer) > theirs[name]:
                    entry = await self.s._offload(self.s.names.get, name)
                    if entry is not None:
                        await self.s._put_name_on(Target(peer), entry)
        for name, key in theirs.items():
            mine = by_name.get(name)
            if mine is None or key > (mine[0], mine[1]):
                entry = await self.s._get_name_from(peer, name)
                if entry is not None:
                    await self.s._offload(self.s.names.apply, entry)

    async def _on_sync_names(self, request: net.IncomingRequest) -> dm.SyncNamesReply:
        peer = request.peer.node_id
        theirs = {d.bucket: (d.digest, d.count) for d in request.msg.buckets}
        summaries = await self.s._offload(self.s.names.summaries)
        rows = {name_key(row[0]): row for row in summaries}
        by_peer, _ = shared_keys(self.s.ring(), self.config.rf, self.s.node_id, rows)
        grouped, digests = self._name_digests(rows[key] for key in by_peer.get(peer, []))
        differing = []
        answer = []
        for bucket in differing_buckets(digests, theirs):
            differing.append(bucket)
            for name, version, writer, tomb in grouped.get(bucket, []):
                answer.append(dm.NameSummary(name, version.wall_ms, version.logical, writer, tomb))
            if len(answer) > IDS_PER_MESSAGE_MAX // 4:
                break  # the rest differs too; the next round continues
        return dm.SyncNamesReply(tuple(differing), tuple(answer))

    async def hand_off_names(self, ring: Ring, names: Iterable[str]) -> int:
        """Push names we do not own to their owners; drop ours once every live owner has it."""
        rf = self.config.rf
        alive = self._alive()
        dropped = 0
        for name in names:
            entry = await self.s._offload(self.s.names.get, name)
            if entry is None:
                continue
            owners = [n for n in ring.preference_list(name_key(name), rf) if n != self.s.node_id]
            confirmed = 0
            for owner in owners:
                if owner not in alive:
                    continue
                try:
                    held = await self.s._get_name_from(owner, name)
                    if held is None or entry.supersedes(held):
                        await self.s._put_name_on(Target(owner), entry)
                    confirmed += 1
                except _errors() as exc:
                    log.info("name hand-off to %s paused: %s", short_id(owner), exc)
            if owners and confirmed == len(owners) and self.s.node_id not in ring.preference_list(
                name_key(name), rf
            ):
                if not await self.s._offload(self.s.hints.is_hinted, HintKind.NAME, name.encode()):
                    await self.s._offload(self.s.names.remove_if, name, entry.version, entry.writer)
                    dropped += 1
        return dropped

    # -- graceful leave ---------------------------------------------------------

    async def _on_leaving(self, request: net.IncomingRequest) -> dm.LeavingReply:
        for_s = min(max(request.msg.for_s, 0.0), self.config.leave_handoff_timeout_s + 120.0)
        self.s.leaving[request.peer.node_id] = trio.current_time() + for_s
        log.info("%s is leaving: out of the ring", short_id(request.peer.node_id))
        return dm.LeavingReply()

    async def hand_off_everything(self) -> bool:
        """Before leaving: give every chunk and name to its owners in the ring without us.

        First every live member is told we are leaving, so that all of them place
        data on the ring without us from now on: a new owner then keeps what we
        hand it instead of dropping it as not its own (the LEAVING state of
        Cassandra's token ring). Returns True if every key reached all its
        owners. Progress goes to the log.
        """
        for_s = self.config.leave_handoff_timeout_s + 60.0
        self.s.leaving[self.s.node_id] = trio.current_time() + for_s
        told = 0

        async def tell(node_id: str) -> None:
            nonlocal told
            try:
                await self.s._call(node_id, dm.Leaving(for_s))
                told += 1
            except _errors() as exc:
                log.warning("leave: could not tell %s: %s", short_id(node_id), exc)

        others = sorted(self._alive() - {self.s.node_id})
        async with trio.open_nursery() as nursery:
            for node_id in others:
                nursery.start_soon(tell, node_id)
        log.info("leave: told %d of %d live members", told, len(others))
        without_me = self.s.ring()
        assert self.s.node_id not in without_me.members
        if len(without_me) == 0:
            log.warning("leaving a cluster of one: there is nobody to hand data to")
            return False
        chunk_ids = await self.s._offload(lambda: list(self.s.store.iter_ids()))
        names = [n for n, *_ in await self.s._offload(self.s.names.summaries)]
        log.info("leave: handing %d chunks and %d names to their new owners", len(chunk_ids), len(names))
        dropped_chunks, kept_chunks = await self.hand_off_chunks(without_me, chunk_ids)
        dropped_names = await self.hand_off_names(without_me, names)
        log.info("leave: handed off %d of %d chunks and %d of %d names",
                 dropped_chunks, len(chunk_ids), dropped_names, len(names))
        return kept_chunks == 0 and dropped_names == len(names)

    # -- scrub --------------------------------------------------------------------

    async def _scrub_forever(self) -> None:
        while True:
            ids = await self.s._offload(lambda: list(self.s.store.iter_ids()))
            self._rng.shuffle(ids)
            if not ids:
                await trio.sleep(self.config.anti_entropy_interval_s)
            for chunk_id in ids:
                await self.scrub_one(chunk_id)

    async def scrub_one(self, chunk_id: bytes) -> bool:
        """Verify one chunk at the scrub rate; repair it from a replica if it fails. True if good."""
        try:
            size_bytes = await self.s._offload(self.s.store.size_of, chunk_id)
            good = await self.s._offload(self.s.store.verify, chunk_id)
        except ChunkMissing:
            return True  # deleted meanwhile
        await trio.sleep(size_bytes / self.config.scrub_bytes_per_s)
        if good:
            return True
        log.warning("scrub: chunk %s failed verification; repairing", chunk_id.hex()[:16])
        self.s.corrupt_pending.add(chunk_id)
        await self.s.repair_chunk(chunk_id)
        return False

    # -- garbage collection -------------------------------------------------------

    async def gc_round(self) -> tuple[int, int]:
        """Remove unreferenced chunks past their grace, and old tombstones. Returns the counts.

        Skipped unless every ring member answered: a chunk must not be judged
        unreferenced by a view that misses names.
        """
        now_ms = time.time_ns() // 1_000_000
        purged = await self.s._offload(
            self.s.names.purge_tombstones,
            Timestamp(max(0, now_ms - int(self.config.tombstone_gc_grace_s * 1000)), 0),
        )
        entries, _, unreachable = await self.s.collect_names(self._everyone(self.s.ring()))
        if unreachable:
            log.info("gc skipped: %d ring members did not answer", len(unreachable))
            return 0, purged
        referenced = {ref.chunk_id for e in entries.values() if e.manifest for ref in e.manifest.chunks}
        before_s = time.time() - self.config.chunk_gc_grace_s
        chunk_ids = await self.s._offload(lambda: list(self.s.store.iter_ids()))
        removed = 0
        for chunk_id in chunk_ids:
            if chunk_id not in referenced:
                if await self.s._offload(self.s.store.delete_if_unused_since, chunk_id, before_s):
                    removed += 1
        if removed or purged:
            log.info("gc: removed %d unreferenced chunks and %d old tombstones", removed, purged)
        return removed, purged

    def _everyone(self, ring: Ring) -> list[str]:
        """Nodes that may hold data: the ring's members, and live ones out of it (leaving)."""
        return sorted(set(ring.members) | self._alive())

    async def collect_chunks(self, node_ids: Iterable[str]) -> tuple[dict[str, set[bytes]], set[bytes], list[str]]:
        """Each node's chunk ids, the ids reported corrupt, and who did not answer."""
        held: dict[str, set[bytes]] = {}
        corrupt: set[bytes] = set()
        unreachable: list[str] = []

        async def collect(node_id: str) -> None:
            ids: set[bytes] = set()
            start_after = b""
            while True:
                try:
                    if node_id == self.s.node_id:
                        reply = self._list_chunks_local(start_after, IDS_PER_MESSAGE_MAX,
                                                        await self.s._offload(lambda: sorted(self.s.store.iter_ids())))
                    else:
                        reply = await self.s._call(node_id, dm.ListChunks(start_after, IDS_PER_MESSAGE_MAX))
                    page = list(split_ids(reply.ids))
                    corrupt.update(split_ids(reply.corrupt))
                except (net.NetError, net.RemoteError, ValueError):
                    unreachable.append(node_id)
                    return
                ids.update(page)
                if not reply.more or not page:
                    held[node_id] = ids
                    return
                start_after = page[-1]

        async with trio.open_nursery() as nursery:
            for node_id in node_ids:
                nursery.start_soon(collect, node_id)
        return held, corrupt, unreachable

    def _list_chunks_local(self, start_after: bytes, limit: int, all_ids: list[bytes]) -> dm.ListChunksReply:
        import bisect

        start = bisect.bisect_right(all_ids, start_after) if start_after else 0
        page = all_ids[start : start + limit]
        corrupt = b"".join(sorted(self.s.corrupt_pending)) if not start_after else b""
        return dm.ListChunksReply(b"".join(page), start + limit < len(all_ids), corrupt)

    async def _on_list_chunks(self, request: net.IncomingRequest) -> dm.ListChunksReply:
        limit = max(1, min(request.msg.limit, IDS_PER_MESSAGE_MAX))
        all_ids = await self.s._offload(lambda: sorted(self.s.store.iter_ids()))
        return self._list_chunks_local(request.msg.start_after, limit, all_ids)

    # -- fsck -----------------------------------------------------------------------

    async def fsck(self) -> dm.FsckReply:
        """The cluster's replication health as this node's ring sees it."""
        ring = self.s.ring()
        rf = self.config.rf
        wanted_copies = min(rf, len(ring))
        alive = self._alive()
        everyone = self._everyone(ring)
        entries, name_holders, names_unreachable = await self.s.collect_names(everyone)
        held, corrupt, chunks_unreachable = await self.collect_chunks(everyone)
        unreachable = sorted(set(names_unreachable) | set(chunks_unreachable))
        problems: list[dm.FsckProblem] = []
        counts = defaultdict(int)

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

    async def _on_fsck(self, request: net.IncomingRequest) -> dm.FsckReply:
        return await self.fsck()
