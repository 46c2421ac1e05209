"""Anti-entropy: each pair of replicas compares what both should hold and exchanges the difference.

For each live peer it shares keys with, a node sends per-bucket digests of the
chunks (and, separately, the name versions) both should hold; the peer answers
with its ids (or name versions) for the buckets that differ; the node pushes
what the peer lacks and pulls what it lacks itself (``healing`` has the digest
tree). Ring changes (joins, leaves, a dead node's grace running out) show up
here as differing digests, so the same round moves data to new owners. What a
round finds held here but not owned here goes to ``handoff``.

Memory stays bounded whatever a node holds (millions of chunks and names): the
digests are computed in one ordered walk of the store and the index, a batch at a
time (``SCAN_BATCH_IDS``, ``SCAN_BATCH_NAMES``), feeding running per-bucket hashes
(``healing.BucketDigester``) instead of lists; the keys of the buckets that differ
are then read in a second walk, only as many buckets as one answer carries
(``IDS_PER_MESSAGE_MAX`` ids, ``NAMES_PER_MESSAGE_MAX`` names). After the transfers
the node knows its new digest of those buckets and exchanges again, up to
``EXCHANGES_PER_ROUND_MAX`` times a round, so a node that lost a tenth of its
chunks heals in one round rather than one answer's worth per round. The digests
are those an older peer computes from whole lists, so the messages are unchanged.

All transfers share one bandwidth budget (``RepairPacer``) and at most
``repair_concurrency`` peers are worked with at once, so foreground puts and
gets keep the bandwidth they need.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import AsyncIterator, Callable

import trio

from p2pfs import net
from p2pfs.ids import short_id
from p2pfs.replication import messages as dm
from p2pfs.replication.background import RepairPacer
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import ReplicaError, ReplicaLacks
from p2pfs.replication.handoff import Pusher
from p2pfs.replication.healing import BUCKET_SHIFT, BucketDigester, differing_buckets, digest_of, name_item
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.placement import name_key
from p2pfs.replication.replicas import IDS_PER_MESSAGE_MAX, Replicas
from p2pfs.replication.view import RingView
from p2pfs.ring import Ring, key_hash
from p2pfs.storage import Timestamp
from p2pfs.storage.hlc import ClockDriftError

log = logging.getLogger(__name__)

# Name versions in one SyncNames answer (a summary is ~4 times an id's size).
NAMES_PER_MESSAGE_MAX = IDS_PER_MESSAGE_MAX // 4
# Chunk ids read from the store per worker-thread call of a walk: a batch is placed on the
# ring (~4 us an id) off the event loop, so a walk yields to it every ~20 ms.
SCAN_BATCH_IDS = 4096
# Name rows read from the index per query of a walk (each query holds the index lock).
SCAN_BATCH_NAMES = 1024
# Digest exchanges with one peer in one round: each moves one answer's worth of differing
# buckets and costs a walk of the store on both sides; a bucket is reconciled at most once a
# round, so 256 covers every bucket differing one at a time. The round's deadline cuts sooner.
EXCHANGES_PER_ROUND_MAX = 256
# Keys a round hands to hand-off (held here, placed elsewhere); the rest the next round.
NOT_OURS_KEYS_PER_ROUND_MAX = 65536
# Keys remembered one by one for the under-replicated estimate; past it they are counted,
# and a key short with two peers may then count twice.
SHORT_KEYS_TRACKED_MAX = 65536

Summary = tuple[Timestamp, str, bool]  # version, writer, tombstone
Row = tuple[str, Timestamp, str, bool]  # name, version, writer, tombstone


@dataclasses.dataclass(frozen=True, slots=True)
class NotOurs:
    """What a round found held here that the ring places elsewhere: hand-off's work."""

    ring: Ring
    chunk_ids: list[bytes]
    names: list[str]


class ShortKeys:
    """The under-replicated estimate: keys short of a live copy, each counted once while they fit."""

    def __init__(self) -> None:
        self._keys: set[bytes] = set()
        self._counted = 0

    def add(self, key: bytes) -> None:
        if key in self._keys:
            return
        if len(self._keys) < SHORT_KEYS_TRACKED_MAX:
            self._keys.add(key)
        else:
            self._counted += 1

    def count(self, keys: int) -> None:
        """Keys found short without their ids at hand (a walk's, a failed peer's)."""
        self._counted += keys

    def total(self) -> int:
        return len(self._keys) + self._counted


@dataclasses.dataclass(slots=True)
class Walk:
    """What one walk over this node's chunks or names found."""

    digester: BucketDigester = dataclasses.field(default_factory=BucketDigester)
    not_ours: list = dataclasses.field(default_factory=list)  # at most NOT_OURS_KEYS_PER_ROUND_MAX
    held: int = 0  # keys walked
    with_dead_peer: int = 0  # keys one of whose other replicas is not alive


def _walk_batch(walk: Walk, ring: Ring, rf: int, me: str, alive: set[str] | None, only_peer: str | None,
                items: list, key_of: Callable, item_of: Callable) -> None:
    """Place a batch of keys (in increasing order) and feed the digests of the peers that share them."""
    for item in items:
        key = key_of(item)
        position = key_hash(key)
        preferred = ring.preference_list(key, rf)
        walk.held += 1
        if me not in preferred:
            if only_peer is None and len(walk.not_ours) < NOT_OURS_KEYS_PER_ROUND_MAX:
                walk.not_ours.append(item)
            continue
        bucket = position >> BUCKET_SHIFT
        digest_item = item_of(item)
        dead = False
        for peer in preferred:
            if peer == me or (only_peer is not None and peer != only_peer):
                continue
            walk.digester.add(peer, bucket, digest_item)
            dead = dead or (alive is not None and peer not in alive)
        walk.with_dead_peer += dead


def _in_buckets(ring: Ring, rf: int, me: str, peer: str, buckets: frozenset[int], items: list,
                key_of: Callable, found: dict[int, list], everyone: bool = False) -> None:
    """Add to ``found`` the items of ``buckets`` that ``me`` shares with ``peer`` (``everyone``: held at all)."""
    for item in items:
        key = key_of(item)
        bucket = key_hash(key) >> BUCKET_SHIFT
        if bucket not in buckets:
            continue
        if not everyone:
            preferred = ring.preference_list(key, rf)
            if peer not in preferred or me not in preferred:
                continue
        found.setdefault(bucket, []).append(item)


def _chunk_key(chunk_id: bytes) -> bytes:
    return chunk_id


def _row_key(row: Row) -> bytes:
    return name_key(row[0])


def _row_item(row: Row) -> bytes:
    return name_item(*row)


def _buckets_within(differing: list[int], counts: dict[int, int], keys_max: int) -> list[int]:
    """The first differing buckets whose keys (by ``counts``) fit in ``keys_max``; at least one."""
    picked, total = [], 0
    for bucket in differing:
        total += counts.get(bucket, 0)
        if picked and total > keys_max:
            break
        picked.append(bucket)
    return picked


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
        started_s = trio.current_time()
        received_before = self.received_chunks
        ring = self._view.ring()
        me = self.node_id
        alive = self._view.alive()
        chunks = await self._walk_chunks(ring, alive)
        names = await self._walk_names(ring, alive)
        peers = sorted(((chunks.digester.peers() | names.digester.peers()) & alive) - {me})
        limiter = trio.CapacityLimiter(self.config.repair_concurrency)
        short = ShortKeys()
        short.count(chunks.with_dead_peer + names.with_dead_peer)

        async def with_peer(peer: str) -> None:
            chunk_digests = chunks.digester.digests(peer)
            name_digests = names.digester.digests(peer)
            async with limiter:
                try:
                    await self._sync_chunks(peer, ring, chunk_digests, short)
                    await self._sync_names(peer, ring, name_digests, short)
                except ReplicaError as exc:
                    short.count(sum(n for _, n in chunk_digests.values()) + sum(n for _, n in name_digests.values()))
                    log.info("anti-entropy with %s stopped: %s", short_id(peer), exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(with_peer, peer)
        self.chunks_held = chunks.held
        self.under_replicated_keys = short.total()
        # One line a round: what it cost and found (scripts/bench_pernode.py reads it).
        log.info("anti-entropy round: %.3f s, %d chunks and %d names walked, %d peers, %d chunks pulled, "
                 "%d keys short", trio.current_time() - started_s, chunks.held, names.held, len(peers),
                 self.received_chunks - received_before, self.under_replicated_keys)
        return NotOurs(ring, chunks.not_ours, [row[0] for row in names.not_ours])

    async def refill_names(self) -> tuple[int, int]:
        """Name sync alone, with every live peer, whatever it shares with this node's index today.

        What a damaged (emptied) index needs at once, without waiting for the next
        round: each peer answers with the names this node should hold and lacks, and
        they are pulled. Returns (peers that answered, peers that did not).
        """
        ring = self._view.ring()
        names = await self._walk_names(ring, None)
        answered, failed = 0, 0
        for peer in sorted(self._view.alive() - {self.node_id}):
            try:
                # Keys found short here are the next round's estimate to make, not this refill's.
                await self._sync_names(peer, ring, names.digester.digests(peer), ShortKeys())
            except ReplicaError as exc:
                log.info("refilling names from %s stopped: %s", short_id(peer), exc)
                failed += 1
                continue
            answered += 1
        return answered, failed

    # -- walks ------------------------------------------------------------------------

    async def _chunk_batches(self) -> AsyncIterator[list[bytes]]:
        batches = self._local.chunks.iter_id_batches(SCAN_BATCH_IDS)
        while (batch := await self._offload(next, batches, None)) is not None:
            yield batch

    async def _name_batches(self) -> AsyncIterator[list[Row]]:
        after = b""
        while True:
            rows, after = await self._offload(self._local.names.summaries_after, after, SCAN_BATCH_NAMES)
            if rows:
                yield rows
            if not after:
                return

    async def _walk_chunks(self, ring: Ring, alive: set[str] | None, only_peer: str | None = None) -> Walk:
        walk = Walk()
        async for batch in self._chunk_batches():
            await self._offload(_walk_batch, walk, ring, self.config.rf, self.node_id, alive, only_peer, batch,
                                _chunk_key, _chunk_key)
        return walk

    async def _walk_names(self, ring: Ring, alive: set[str] | None, only_peer: str | None = None) -> Walk:
        walk = Walk()
        async for batch in self._name_batches():
            await self._offload(_walk_batch, walk, ring, self.config.rf, self.node_id, alive, only_peer, batch,
                                _row_key, _row_item)
        return walk

    async def _chunks_in(self, ring: Ring, peer: str, buckets: list[int]) -> dict[int, list[bytes]]:
        found: dict[int, list[bytes]] = {}
        wanted = frozenset(buckets)
        async for batch in self._chunk_batches():
            await self._offload(_in_buckets, ring, self.config.rf, self.node_id, peer, wanted, batch, _chunk_key,
                                found)
        return found

    async def _rows_in(self, ring: Ring, peer: str, buckets: list[int], everyone: bool) -> dict[int, list[Row]]:
        found: dict[int, list[Row]] = {}
        wanted = frozenset(buckets)
        async for batch in self._name_batches():
            await self._offload(_in_buckets, ring, self.config.rf, self.node_id, peer, wanted, batch, _row_key,
                                found, everyone)
        return found

    # -- chunks ---------------------------------------------------------------------

    async def _sync_chunks(self, peer: str, ring: Ring, digests: dict[int, tuple[bytes, int]],
                           short: ShortKeys) -> None:
        remote = self._replicas.remote(peer)
        done: set[int] = set()
        for _ in range(EXCHANGES_PER_ROUND_MAX):
            answer = await remote.sync_chunks(_digest_messages(digests))
            if not answer or done.intersection(bucket for bucket, _ in answer):
                # Equal, or a bucket reconciled this round still differs (the two rings
                # disagree for a moment, or a put landed meanwhile): the next round decides.
                return
            done.update(bucket for bucket, _ in answer)
            ours = await self._chunks_in(ring, peer, [bucket for bucket, _ in answer])
            moved = 0
            for bucket, ids in answer:
                mine = ours.get(bucket, [])
                moved_here, now_held = await self._reconcile_bucket(peer, remote, mine, ids, short)
                moved += moved_here
                if now_held:
                    digests[bucket] = (digest_of(now_held), len(now_held))
                else:
                    digests.pop(bucket, None)
            if not moved:
                return  # nothing the peer lists can be moved now: the next round tries again

    async def _reconcile_bucket(self, peer: str, remote, mine: list[bytes], ids: list[bytes],
                                short: ShortKeys) -> tuple[int, set[bytes]]:
        """Push and pull one bucket's difference; returns (chunks moved, the ids held here after)."""
        theirs = set(ids)
        held = set(mine)
        to_push, to_pull = sorted(held - theirs), sorted(theirs - held)
        for chunk_id in (*to_push, *to_pull):
            short.add(chunk_id)
        left = len(to_push) + len(to_pull)
        moved = 0
        self.queued_chunks += left
        try:
            for chunk_id in to_push:
                moved += await self._pusher.push(remote, chunk_id)
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
                held.add(chunk_id)
                self.received_bytes += len(data)
                self.received_chunks += 1
                moved += 1
                left -= 1
                self.queued_chunks -= 1
        finally:
            # What was not done (a peer's error, the round's deadline) leaves the queue;
            # the next round decides again.
            self.queued_chunks -= left
        return moved, held

    async def on_sync_chunks(self, request: net.IncomingRequest) -> dm.SyncChunksReply:
        peer = request.peer.node_id
        theirs = {d.bucket: (d.digest, d.count) for d in request.msg.buckets}
        ring = self._view.ring()
        ours = (await self._walk_chunks(ring, None, only_peer=peer)).digester.digests(peer)
        differing = differing_buckets(ours, theirs)
        if not differing:
            return dm.SyncChunksReply(())
        # The rest differs too; the next exchange continues.
        picked = _buckets_within(differing, {b: n for b, (_, n) in ours.items()}, IDS_PER_MESSAGE_MAX)
        if ours.get(picked[0], (b"", 0))[1] > IDS_PER_MESSAGE_MAX:
            picked = []  # one bucket past what an answer carries (an older peer answers so too)
        found = await self._chunks_in(ring, peer, picked)
        return dm.SyncChunksReply(tuple(dm.BucketChunks(b, b"".join(sorted(found.get(b, [])))) for b in picked))

    # -- names ------------------------------------------------------------------------

    async def _sync_names(self, peer: str, ring: Ring, digests: dict[int, tuple[bytes, int]],
                          short: ShortKeys) -> None:
        remote = self._replicas.remote(peer)
        done: set[int] = set()
        for _ in range(EXCHANGES_PER_ROUND_MAX):
            differing, theirs = await remote.sync_names(_digest_messages(digests))
            if not differing or done.intersection(differing):
                return  # equal, or still differing where this round reconciled (see _sync_chunks)
            done.update(differing)
            held = await self._rows_in(ring, peer, differing, everyone=True)
            rows = {row[0]: row for bucket_rows in held.values() for row in bucket_rows}
            moved = await self._reconcile_names(peer, remote, ring, rows, theirs, short)
            shared: dict[int, list[bytes]] = {bucket: [] for bucket in differing}
            for row in rows.values():
                bucket = key_hash(_row_key(row)) >> BUCKET_SHIFT
                if bucket in shared and self._shares(ring, peer, row):
                    shared[bucket].append(_row_item(row))
            for bucket, items in shared.items():
                if items:
                    digests[bucket] = (digest_of(items), len(items))
                else:
                    digests.pop(bucket, None)
            if not moved:
                return

    def _shares(self, ring: Ring, peer: str, row: Row) -> bool:
        preferred = ring.preference_list(_row_key(row), self.config.rf)
        return peer in preferred and self.node_id in preferred

    async def _reconcile_names(self, peer: str, remote, ring: Ring, rows: dict[str, Row],
                               theirs: dict[str, tuple[Timestamp, str]], short: ShortKeys) -> int:
        """Push what the peer lacks of the differing buckets, pull what it has newer; ``rows`` (this
        node's names in those buckets) becomes what is held here. Returns the names moved."""
        moved = 0
        for name, version, writer, _ in list(rows.values()):
            if not self._shares(ring, peer, rows[name]):
                continue
            if name not in theirs or (version, writer) > theirs[name]:
                short.add(name_key(name))
                entry = await self._offload(self._local.names.get, name)
                if entry is not None:
                    await remote.put_name(entry)
                    moved += 1
        for name, key in theirs.items():
            mine = rows.get(name)
            if mine is None or key > (mine[1], mine[2]):
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
                rows[name] = (name, entry.version, entry.writer, entry.manifest is None)
                moved += 1
        return moved

    async def on_sync_names(self, request: net.IncomingRequest) -> dm.SyncNamesReply:
        peer = request.peer.node_id
        theirs = {d.bucket: (d.digest, d.count) for d in request.msg.buckets}
        ring = self._view.ring()
        ours = (await self._walk_names(ring, None, only_peer=peer)).digester.digests(peer)
        differing = differing_buckets(ours, theirs)
        # The rest differs too; the next exchange continues.
        picked = _buckets_within(differing, {b: n for b, (_, n) in ours.items()}, NAMES_PER_MESSAGE_MAX)
        found = await self._rows_in(ring, peer, picked, everyone=False)
        answer = [dm.NameSummary(name, version.wall_ms, version.logical, writer, tomb)
                  for bucket in picked for name, version, writer, tomb in found.get(bucket, [])]
        return dm.SyncNamesReply(tuple(picked), tuple(answer))
