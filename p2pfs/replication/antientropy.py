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
(``healing.BucketDigester``) instead of lists. The same walk writes the keys this
node replicates to one file per bucket (``keysnapshot``), so the keys of a bucket
that differs are one file's read, not a second walk.

A peer's request is answered from this node's last walk (``keysnapshot`` says why:
a walk per request outran the request deadline at a million names), and each
bucket is listed to a peer once per walk (``healing.buckets_to_answer``), so the
asker's next exchange gets the next buckets, up to ``EXCHANGES_PER_ROUND_MAX`` a
round: a node that lost a tenth of its chunks heals in one round rather than one
answer's worth per round. What a peer lists is checked before anything moves:
only chunk ids of the buckets it names that both nodes replicate
(``healing.placed_on_both``), only names of those buckets. A stale list costs a
question, not a transfer: the asker pulls only what it still lacks and pushes only
what the peer still lacks (``HasChunks``). Before this node's first walk ends, a request
waits for it at most ``FIRST_WALK_WAIT_S`` and is then refused (UNAVAILABLE): the asker goes
on with its other peers and asks again next round, rather than waiting out its deadline.

A round whose ring holds this node alone (a node just started, before membership converged)
does not walk: there is no one to exchange with. Work carried over from earlier rounds (see
``AntiEntropy.round``) goes on only on a ring that places keys as the one it began on.

Compatibility: the messages are unchanged. An older node asking this one gets the
answers it expects (ids or names of differing buckets), only from the last walk,
and each bucket once per walk, which its exchange loop takes as the next buckets.
This node asking an older one gets answers from a fresh walk, as before: the
older node may miss the deadline at scale, as it did.

All transfers share one bandwidth budget (``RepairPacer``) and at most
``repair_concurrency`` peers are worked with at once, so foreground puts and
gets keep the bandwidth they need.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import shutil
from pathlib import Path
from typing import AsyncIterator, Callable

import trio

from p2pfs import net, wire
from p2pfs.ids import short_id
from p2pfs.replication import messages as dm
from p2pfs.replication.background import RepairPacer
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import ReplicaError, ReplicaLacks
from p2pfs.replication.handoff import Pusher
from p2pfs.replication.fields import HAS_CHUNKS_IDS_MAX
from p2pfs.replication.healing import (
    BUCKET_SHIFT, BucketDigester, bucket_of, buckets_to_answer, digest_of, name_item, placed_on_both,
)
from p2pfs.replication.keysnapshot import KeySnapshot, SnapshotWriter
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.placement import NAME_KEY_PREFIX, name_key
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
# buckets; a bucket is reconciled at most once a round, so 256 covers every bucket differing
# one at a time. The round's deadline cuts sooner.
EXCHANGES_PER_ROUND_MAX = 256
# What a walk indexes: the chunk store and the name index, each with its own snapshot.
CHUNKS, NAMES = "chunks", "names"
# The walks' snapshots, under the data dir (keysnapshot: temporary, rewritten every round).
ANTI_ENTROPY_DIR_NAME = "antientropy"
# Chunks pulled from one peer at once: a pull waits on a round trip, a hash check and an
# fsync, so a few in flight keep the link busy; the repair pacer still bounds the bytes.
PULLS_IN_FLIGHT_MAX = 8
# Keys one SyncChunks or SyncNames answer aims at (its first bucket goes whatever its size, up
# to the message's cap): placing 65,536 ids on the ring cost an answering node ~0.5 CPU-s, past
# the asker's 10 s request deadline on a loaded machine, and the two answers of a heal's two
# peers held ~10 MiB decoded at once. 8,192 ids (256 KiB on the wire) are one bucket at two
# million chunks; a smaller answer costs an exchange more, a round trip (the asker makes up to
# EXCHANGES_PER_ROUND_MAX, enough for every bucket one at a time).
ANSWER_IDS_WANTED = 8192
ANSWER_NAMES_WANTED = ANSWER_IDS_WANTED // 4
# Keys a round hands to hand-off (held here, placed elsewhere); the rest the next round.
NOT_OURS_KEYS_PER_ROUND_MAX = 65536
# Rounds that go on exchanging from the same walks when each is cut by its deadline before its
# exchanges end (a big heal: at two million chunks a walk alone takes minutes); the next
# round after that walks afresh even so.
ROUNDS_PER_WALK_MAX = 8
# Peers whose cut exchange's listed buckets are kept for the next exchange (``_unfinished``):
# at most repair_concurrency exchanges run at once, so a few cover every cut one.
UNFINISHED_PEERS_MAX = 8
# How long a peer's sync request waits for this node's first walk of a kind (seconds): less
# than the asker's request deadline (replica_timeout_s, 10 s by default), so that a node whose
# first walk takes minutes (491 s at three million keys) answers "not ready" (UNAVAILABLE)
# and the asker goes on with its other peers, instead of each asker waiting out its deadline.
# A small store's walk ends well within it, and the request is answered as before. The walk
# a request starts or joins is kept when the wait ends, and goes on at the next walk.
FIRST_WALK_WAIT_S = 2.0
# Keys remembered one by one for the under-replicated estimate, exact while they fit.
SHORT_KEYS_TRACKED_MAX = 4096
# Past them, each key sets one bit of a bitmap and the keys are counted from the bits left
# unset (linear counting: Whang, Vander-Zanden and Taylor, "A linear-time probabilistic
# counting algorithm", 1990): 2^20 bits (128 KiB) count a million keys within ~0.1%. A set
# of the keys cost ~95 bytes a key, 6 MiB at its old cap of 65,536, which a heal of a tenth
# of 250,000 names' chunks reached (it grew the healing node's memory with its data).
SHORT_KEYS_BITMAP_BITS = 1 << 20

Summary = tuple[Timestamp, str, bool]  # version, writer, tombstone
Row = tuple[str, Timestamp, str, bool]  # name, version, writer, tombstone


@dataclasses.dataclass(frozen=True, slots=True)
class NotOurs:
    """What a round found held here that the ring places elsewhere: hand-off's work."""

    ring: Ring
    chunk_ids: list[bytes]
    names: list[str]


class ShortKeys:
    """The under-replicated estimate: keys short of a live copy, each counted once, in bounded memory.

    Exact up to SHORT_KEYS_TRACKED_MAX keys; past them an estimate (linear counting) whose
    memory does not grow with the keys, so a big heal's estimate costs what a small one's does.
    """

    def __init__(self) -> None:
        self._keys: set[bytes] = set()
        self._bits: bytearray | None = None  # SHORT_KEYS_BITMAP_BITS, made when the set is full
        self._counted = 0

    def add(self, key: bytes) -> None:
        if key in self._keys:
            return
        if len(self._keys) < SHORT_KEYS_TRACKED_MAX:
            self._keys.add(key)
            return
        if self._bits is None:
            self._bits = bytearray(SHORT_KEYS_BITMAP_BITS // 8)
        bit = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % SHORT_KEYS_BITMAP_BITS
        self._bits[bit >> 3] |= 1 << (bit & 7)

    def count(self, keys: int) -> None:
        """Keys found short without their ids at hand (a walk's, a failed peer's)."""
        self._counted += keys

    def total(self) -> int:
        return len(self._keys) + self._estimated() + self._counted

    def _estimated(self) -> int:
        """The distinct keys past the set, from the bitmap: m ln(m / unset bits)."""
        if self._bits is None:
            return 0
        unset = SHORT_KEYS_BITMAP_BITS - sum(byte.bit_count() for byte in self._bits)
        return round(SHORT_KEYS_BITMAP_BITS * math.log(SHORT_KEYS_BITMAP_BITS / max(unset, 1)))


@dataclasses.dataclass(slots=True)
class Walk:
    """What one walk over this node's chunks or names found."""

    writer: SnapshotWriter
    digester: BucketDigester = dataclasses.field(default_factory=BucketDigester)
    # Chunk ids or names placed elsewhere, at most NOT_OURS_KEYS_PER_ROUND_MAX.
    not_ours: list = dataclasses.field(default_factory=list)
    held: int = 0  # keys walked
    with_dead_peer: int = 0  # keys one of whose other replicas is not alive
    # Where the walk is: the last chunk id or name (UTF-8) walked, b"" before the first. A walk
    # cut by its round's deadline goes on from here in the next round (see ``AntiEntropy.round``).
    after: bytes = b""
    ring: Ring | None = None  # the ring the walk places keys on, from its first batch to its last
    alive: set[str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Walked:
    """What a round's exchanges need of its two walks; kept while a deadline cuts the exchanges."""

    ring: Ring
    peers: frozenset[str]  # the peers the walks found keys shared with
    chunks_held: int
    names_held: int
    with_dead_peer: int
    rounds: int = 1  # rounds that have exchanged from these walks


def _same_placement(a: Ring, b: Ring) -> bool:
    """True if the two rings place every key alike: the same members and the same placement.

    The ring view rebuilds its ring only when its members change, so a ring kept from an
    earlier round is the current one exactly when nothing that moves keys changed.
    """
    return a is b or (a.members == b.members
                      and (a.tokens_per_weight, a.probes, a.replicas) == (b.tokens_per_weight, b.probes, b.replicas))


def _walk_batch(walk: Walk, ring: Ring, rf: int, me: str, alive: set[str] | None,
                items: list, key_of: Callable, item_of: Callable, handed_of: Callable, cursor_of: Callable) -> None:
    """Place a batch of keys (in increasing order), feed the digests of the peers that share
    them, and write the keys this node replicates to its snapshot; of a key placed elsewhere,
    keep what hand-off needs (``handed_of``); then move the walk's cursor past the batch, in
    the same call, so that a walk cut between two calls goes on exactly after the batch it
    took in. Blocking (a worker thread)."""
    for item in items:
        key = key_of(item)
        position = key_hash(key)
        preferred = ring.preference_list(key, rf)
        walk.held += 1
        if me not in preferred:
            if len(walk.not_ours) < NOT_OURS_KEYS_PER_ROUND_MAX:
                walk.not_ours.append(handed_of(item))
            continue
        bucket = position >> BUCKET_SHIFT
        walk.writer.add(bucket, key)
        digest_item = item_of(item)
        dead = False
        for peer in preferred:
            if peer == me:
                continue
            walk.digester.add(peer, bucket, digest_item)
            dead = dead or (alive is not None and peer not in alive)
        walk.with_dead_peer += dead
    if items:
        walk.after = cursor_of(items[-1])


def _chunk_key(chunk_id: bytes) -> bytes:
    return chunk_id


def _row_key(row: Row) -> bytes:
    return name_key(row[0])


def _row_cursor(row: Row) -> bytes:
    return row[0].encode("utf-8")


def _row_item(row: Row) -> bytes:
    return name_item(*row)


def _row_name(row: Row) -> str:
    """What hand-off needs of a name placed elsewhere: a whole row (its version and writer
    decoded) costs ~3 times the name, and a ring change can fill the round's 65,536."""
    return row[0]


def _note_answered(answered: set[int], found: dict) -> None:
    """Each bucket is listed to a peer once per pass: an answer that lists nothing ends the
    asker's exchanges, and the next pass lists again what still differs. (Once per walk, a
    bucket whose exchange a round's deadline cut was not listed again until this node walked
    again, minutes at two million chunks.)"""
    if found:
        answered.update(found)
    else:
        answered.clear()


def _digest_messages(digests: dict[int, tuple[bytes, int]]) -> tuple[dm.BucketDigest, ...]:
    return tuple(dm.BucketDigest(b, d, n) for b, (d, n) in sorted(digests.items()))


class AntiEntropy:
    def __init__(
        self, *, config: ReplicationConfig, view: RingView, replicas: Replicas, local: LocalStore,
        pusher: Pusher, pacer: RepairPacer, offload: Offload, snapshot_dir: Path,
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
        # The last walk of each kind answers peers; the one before it stays on disk while a
        # request may still read it (a request takes seconds, a walk far longer).
        self._snapshot_dir = snapshot_dir
        self._snapshots: dict[str, KeySnapshot | None] = {CHUNKS: None, NAMES: None}
        self._previous_dirs: dict[str, Path | None] = {CHUNKS: None, NAMES: None}
        self._walk_locks = {CHUNKS: trio.Lock(), NAMES: trio.Lock()}
        self._walk_serials = itertools.count()
        # A walk of each kind that a round's deadline cut, to go on with (see ``round``).
        self._walks: dict[str, Walk | None] = {CHUNKS: None, NAMES: None}
        # The walks of the last round whose exchanges its deadline cut, to exchange from again.
        self._exchanges_cut: Walked | None = None
        # Walks of a round its deadline cut before its other walk ended: the next round's.
        self._walked: dict[str, Walk | None] = {CHUNKS: None, NAMES: None}
        # Per peer, the buckets an answer listed whose exchange was cut before they were
        # reconciled: the next exchange with that peer starts with them (the peer lists each
        # bucket once per pass, so they would wait for its next pass). One answer's ids a peer,
        # for at most UNFINISHED_PEERS_MAX peers.
        self._unfinished: dict[str, dict[int, list[bytes]]] = {}
        # Chunks being pulled now, by any peer's exchange (at most repair_concurrency at once).
        self._pulling: set[bytes] = set()

    async def round(self) -> NotOurs | None:
        """Reconcile chunks and names with every live peer; None while this node is leaving.

        On the way it estimates the keys (chunks and names) it shares that are short of a
        live copy: those whose other replicas include a member not alive or not answering,
        or that a replica (this node included) lacked. What a round repairs was
        under-replicated when it began; a clean cluster gives 0. Each holder counts a key,
        so the cluster's figure is the maximum over nodes, not the sum.
        """
        with net.metered() as meter:
            return await self._round(meter)

    async def _round(self, meter: net.TrafficMeter) -> NotOurs | None:
        if self.node_id in self._view.leaving:
            return None  # the leave's own hand-off is at work
        started_s = trio.current_time()
        received_before = self.received_chunks
        me = self.node_id
        alive = self._view.alive()
        ring_now = self._view.ring()
        if not set(ring_now.members) - {me}:
            # No peer to reconcile with: a restarted node's first round came 10 s after boot,
            # before membership had converged, and its walk (kept to the end on the ring it
            # began with) spent 491 s on three million keys to find 0 peers, and the heal
            # waited for it. Nothing is handed off either: a ring of this node alone places
            # everything here. The next round, once peers are in the ring, walks. The figures
            # are still given (a node alone is a cluster of one, and its metrics say a round ran):
            # the chunks from a listing of the store, far cheaper than a walk (no placement, no
            # digests), and 0 keys short, as a walk on this ring found (no other replica to lack).
            self.chunks_held = await self._offload(self._local.chunks.count_ids)
            self.under_replicated_keys = 0
            log.info("anti-entropy round: skipped, the ring has no member but this node; %d chunks held",
                     self.chunks_held)
            return NotOurs(ring_now, [], [])
        # Work carried over from earlier rounds (a cut walk, a walk whose round was cut before
        # its other walk ended, cut exchanges) goes on only while the ring places keys as it did
        # when the walk began: on another ring the keys' homes differ, so the walk would
        # exchange with the wrong peers, or with none (the ring of a node that had just
        # started). The ring changes when members join, leave or die past their grace, a few
        # times in a cluster's day; a walk dropped for it costs one walk.
        for kind, walked_before in self._walked.items():
            if walked_before is not None and not _same_placement(walked_before.ring, ring_now):
                self._walked[kind] = None
        if self._exchanges_cut is not None and not _same_placement(self._exchanges_cut.ring, ring_now):
            self._exchanges_cut = None
        # The work of a round is paged across rounds: the round's deadline (10 intervals, 600 s at
        # least) cut every round of a node holding two million chunks on a loaded machine, in its
        # walk or in its exchanges, and the next round began again from nothing, so a node that
        # lost chunks never healed. A walk cut short goes on where it stopped; exchanges cut
        # short go on, in the next round, from the same walks (their snapshots still answer
        # peers), up to ROUNDS_PER_WALK_MAX rounds, before the node walks again.
        cut = self._exchanges_cut
        if cut is not None and cut.rounds < ROUNDS_PER_WALK_MAX and None not in self._snapshots.values():
            walked = dataclasses.replace(cut, rounds=cut.rounds + 1)
            not_ours = NotOurs(walked.ring, [], [])  # handed off by the round that walks next
        else:
            self._exchanges_cut = None
            try:
                if self._walked[CHUNKS] is None:
                    self._walked[CHUNKS] = (await self._walk(CHUNKS, ring_now, alive))[0]
                if self._walked[NAMES] is None:
                    self._walked[NAMES] = (await self._walk(NAMES, self._walked[CHUNKS].ring, alive))[0]
            except trio.Cancelled:
                # Its deadline cut the round before its exchanges: still one line a round, with
                # what it cost (scripts/bench_pernode.py reads it). The walk goes on next round.
                log.info("anti-entropy round: %.3f s, cut in its walk (the next round goes on with it), %s",
                         trio.current_time() - started_s, meter.summary())
                raise
            chunks, names = self._walked[CHUNKS], self._walked[NAMES]
            self._walked = {CHUNKS: None, NAMES: None}
            walked = Walked(chunks.ring, frozenset(chunks.digester.peers() | names.digester.peers()), chunks.held,
                            names.held, chunks.with_dead_peer + names.with_dead_peer)
            not_ours = NotOurs(chunks.ring, chunks.not_ours, names.not_ours)
            del chunks, names
        ring = walked.ring
        chunk_snapshot, name_snapshot = self._snapshots[CHUNKS], self._snapshots[NAMES]
        peers = sorted((walked.peers & alive) - {me})
        limiter = trio.CapacityLimiter(self.config.repair_concurrency)
        short = ShortKeys()
        short.count(walked.with_dead_peer)

        async def with_peer(peer: str) -> None:
            chunk_digests = chunk_snapshot.digests(peer)
            name_digests = name_snapshot.digests(peer)
            async with limiter:
                try:
                    await self._sync_chunks(peer, ring, chunk_snapshot, chunk_digests, short)
                    await self._sync_names(peer, ring, name_snapshot, name_digests, short)
                except ReplicaError as exc:
                    short.count(sum(n for _, n in chunk_digests.values()) + sum(n for _, n in name_digests.values()))
                    log.info("anti-entropy with %s stopped: %s", short_id(peer), exc)

        self._exchanges_cut = walked  # until every exchange has ended
        try:
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(with_peer, peer)
        finally:
            # One line a round, whole or cut: what it cost and found (scripts/bench_pernode.py reads it).
            log.info("anti-entropy round: %.3f s, %d chunks and %d names walked, %d peers, %d chunks pulled, "
                     "%d keys short%s, %s", trio.current_time() - started_s, walked.chunks_held,
                     walked.names_held, len(peers), self.received_chunks - received_before, short.total(),
                     "" if walked.rounds == 1 else f", exchanges from the walks of {walked.rounds} rounds",
                     meter.summary())
        self._exchanges_cut = None
        self.chunks_held = walked.chunks_held
        self.under_replicated_keys = short.total()
        return not_ours

    async def refill_names(self) -> tuple[int, int]:
        """Name sync alone, with every live peer, whatever it shares with this node's index today.

        What a damaged (emptied) index needs at once, without waiting for the next
        round: each peer answers with the names this node should hold and lacks, and
        they are pulled. Returns (peers that answered, peers that did not).
        """
        ring = self._view.ring()
        _, snapshot = await self._walk(NAMES, ring, None)
        answered, failed = 0, 0
        for peer in sorted(self._view.alive() - {self.node_id}):
            try:
                # Keys found short here are the next round's estimate to make, not this refill's.
                await self._sync_names(peer, ring, snapshot, snapshot.digests(peer), ShortKeys())
            except ReplicaError as exc:
                log.info("refilling names from %s stopped: %s", short_id(peer), exc)
                failed += 1
                continue
            answered += 1
        return answered, failed

    # -- walks and their snapshots ----------------------------------------------------------

    async def _chunk_batches(self, walk: Walk) -> AsyncIterator[list[bytes]]:
        while batch := await self._offload(self._local.chunks.ids_after, walk.after, SCAN_BATCH_IDS):
            yield batch

    async def _name_batches(self, walk: Walk) -> AsyncIterator[list[Row]]:
        while True:
            rows, more = await self._offload(self._local.names.summaries_after, walk.after, SCAN_BATCH_NAMES)
            if rows:
                yield rows
            if not more:
                return

    async def _walk(self, kind: str, ring: Ring, alive: set[str] | None) -> tuple[Walk, KeySnapshot]:
        """Walk the chunk store or the name index once; its snapshot then answers peers."""
        async with self._walk_locks[kind]:  # one walk of a kind at a time
            return await self._walk_locked(kind, ring, alive)

    async def _walk_locked(self, kind: str, ring: Ring, alive: set[str] | None) -> tuple[Walk, KeySnapshot]:
        """Walk, or go on with the walk of this kind a deadline cut (on its own ring: one walk,
        one placement) if ``ring`` places keys as that ring does; on another ring the cut walk
        is dropped (see ``round``) and its directory removed by the next writer's."""
        walk = self._walks[kind]
        if walk is not None and not _same_placement(walk.ring, ring):
            walk = self._walks[kind] = None
        if walk is None:
            directory = self._snapshot_dir / f"{kind}-{next(self._walk_serials)}"
            writer = await self._offload(self._new_writer, kind, directory)
            walk = self._walks[kind] = Walk(writer, ring=ring, alive=alive)
        if kind == CHUNKS:
            batches, key_of, item_of, handed_of, cursor_of = (self._chunk_batches(walk), _chunk_key, _chunk_key,
                                                              _chunk_key, _chunk_key)
        else:
            batches, key_of, item_of, handed_of, cursor_of = (self._name_batches(walk), _row_key, _row_item,
                                                              _row_name, _row_cursor)
        async for batch in batches:
            await self._offload(_walk_batch, walk, walk.ring, self.config.rf, self.node_id, walk.alive, batch,
                                key_of, item_of, handed_of, cursor_of)
        await self._offload(walk.writer.finish)
        self._walks[kind] = None
        directory = walk.writer.directory
        snapshot = KeySnapshot(directory, walk.digester.all_digests())
        installed = self._snapshots[kind]
        self._previous_dirs[kind] = None if installed is None else installed.directory
        self._snapshots[kind] = snapshot
        return walk, snapshot

    async def _walk_chunks(self, ring: Ring, alive: set[str] | None) -> Walk:
        return (await self._walk(CHUNKS, ring, alive))[0]

    async def _walk_names(self, ring: Ring, alive: set[str] | None) -> Walk:
        return (await self._walk(NAMES, ring, alive))[0]

    def _new_writer(self, kind: str, directory: Path) -> SnapshotWriter:
        """A writer for a new walk, after removing this kind's walks that nothing reads any more
        (the one before the last, and any cut short or left by an earlier process). Blocking."""
        installed = self._snapshots[kind]
        keep = {self._previous_dirs[kind], None if installed is None else installed.directory}
        if self._snapshot_dir.is_dir():
            for old in self._snapshot_dir.glob(f"{kind}-*"):
                if old not in keep:
                    shutil.rmtree(old, ignore_errors=True)
        return SnapshotWriter(directory)

    async def _answering(self, kind: str) -> KeySnapshot:
        """The snapshot that answers a peer; before this node's first walk, that walk, for at
        most FIRST_WALK_WAIT_S, else an UNAVAILABLE error ("not ready"): the asker's exchange
        with this node stops there and its next round asks again."""
        snapshot = self._snapshots[kind]
        if snapshot is None:
            with trio.move_on_after(FIRST_WALK_WAIT_S):
                async with self._walk_locks[kind]:  # a request that found none waits for the walk under way
                    snapshot = self._snapshots[kind]
                    if snapshot is None:
                        _, snapshot = await self._walk_locked(kind, self._view.ring(), None)
            if snapshot is None:
                raise net.RemoteError(wire.ErrorCode.UNAVAILABLE, f"not ready: this node's first walk of its {kind} "
                                      "has not ended")
        return snapshot

    def _listed(self, snapshot: KeySnapshot, ring: Ring, peer: str, buckets: list[int],
                keys_max: int | None) -> dict[int, list[bytes]]:
        """The keys of ``buckets`` in ``snapshot`` that this node shares with ``peer``, in order.

        With ``keys_max``, buckets are taken in order while their keys fit (a bucket over it
        on its own is left out): what one answer carries. Blocking (reads files).
        """
        found: dict[int, list[bytes]] = {}
        total = 0
        for bucket in buckets:
            keys = placed_on_both(ring, self.config.rf, self.node_id, peer, bucket, snapshot.keys(bucket))
            if keys_max is not None and total + len(keys) > keys_max:
                if found or len(keys) <= keys_max:
                    break
                continue
            found[bucket] = keys
            total += len(keys)
        return found

    def _rows_listed(self, snapshot: KeySnapshot, ring: Ring, peer: str, buckets: list[int],
                     names_max: int | None) -> dict[int, list[Row]]:
        """``_listed`` for names: the versions held now of the names the walk listed. Blocking."""
        found: dict[int, list[Row]] = {}
        for bucket, keys in self._listed(snapshot, ring, peer, buckets, names_max).items():
            found[bucket] = self._local.names.summaries_of([key[len(NAME_KEY_PREFIX):] for key in keys])
        return found

    # -- chunks ---------------------------------------------------------------------

    async def _sync_chunks(self, peer: str, ring: Ring, snapshot: KeySnapshot,
                           digests: dict[int, tuple[bytes, int]], short: ShortKeys) -> None:
        remote = self._replicas.remote(peer)
        done: set[int] = set()
        fresh: dict[int, list[bytes]] = self._unfinished.pop(peer, {})
        for _ in range(EXCHANGES_PER_ROUND_MAX):
            if not fresh:
                answer = await remote.sync_chunks(_digest_messages(digests))
                for bucket, ids in answer:
                    if bucket not in done and bucket not in fresh:
                        fresh[bucket] = ids
                del answer
            if not fresh:
                # Equal, or only buckets reconciled this round still differ (an older peer
                # lists a bucket again after a push; the rings disagree for a moment; a put
                # landed meanwhile): the next round decides.
                return
            done.update(fresh)
            try:
                while fresh:  # one bucket's keys in memory at a time, besides the answer's
                    bucket, ids = next(iter(fresh.items()))
                    theirs = await self._offload(placed_on_both, ring, self.config.rf, self.node_id, peer, bucket, ids)
                    listed = await self._offload(self._listed, snapshot, ring, peer, [bucket], None)
                    now_held = await self._reconcile_bucket(peer, remote, listed.get(bucket, []), theirs, short)
                    del fresh[bucket]
                    if now_held:
                        digests[bucket] = (digest_of(now_held), len(now_held))
                    else:
                        digests.pop(bucket, None)
            except BaseException:
                if fresh and len(self._unfinished) < UNFINISHED_PEERS_MAX:
                    self._unfinished[peer] = fresh  # cut (the round's deadline, a peer's error)
                raise

    async def _reconcile_bucket(self, peer: str, remote, mine: list[bytes], theirs: list[bytes],
                                short: ShortKeys) -> set[bytes]:
        """Push and pull one bucket's difference; returns the ids held here after.

        ``mine`` and ``theirs`` are as of each side's last walk: what this node holds by now
        is not pulled again (``_pull``), and what the peer holds by now (``HasChunks``) is
        not pushed.
        """
        held = set(mine)
        to_pull = sorted(set(theirs) - held)
        to_push = []
        lacking = sorted(held - set(theirs))
        for start in range(0, len(lacking), HAS_CHUNKS_IDS_MAX):
            batch = lacking[start : start + HAS_CHUNKS_IDS_MAX]
            present = await remote.has_chunks(tuple(batch))
            to_push += [chunk_id for chunk_id, there in zip(batch, present) if not there]
        for chunk_id in (*to_push, *to_pull):
            short.add(chunk_id)
        self.queued_chunks += len(to_push) + len(to_pull)
        pushes_left = len(to_push)
        try:
            for chunk_id in to_push:
                await self._pusher.push(remote, chunk_id)
                pushes_left -= 1
                self.queued_chunks -= 1
        except BaseException:
            # What was not done (a peer's error, the round's deadline) leaves the queue;
            # the next round decides again.
            self.queued_chunks -= pushes_left + len(to_pull)
            raise
        await self._pull_all(peer, remote, to_pull, held)
        return held

    async def _pull_all(self, peer: str, remote, to_pull: list[bytes], held: set[bytes]) -> None:
        """Pull ``to_pull`` from the peer, ``PULLS_IN_FLIGHT_MAX`` at a time; ``held`` gains each.

        One at a time, a pull's round trip, hash check and fsync left the link idle: a node
        that lost 4,000 chunks took about 13 of them a second back on a loaded machine.
        The first peer error ends the pulls and is raised (the next round goes on). Each id
        leaves the repair queue as it is taken, or when the pulls are cut short.
        """
        ids = iter(to_pull)
        failures: list[ReplicaError] = []

        async def puller() -> None:
            for chunk_id in ids:  # shared: each puller takes the next id
                self.queued_chunks -= 1
                if failures:
                    continue  # drain the queue's count
                try:
                    if await self._pull(peer, remote, chunk_id):
                        held.add(chunk_id)
                except ReplicaError as exc:
                    failures.append(exc)

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(min(PULLS_IN_FLIGHT_MAX, len(to_pull))):
                    nursery.start_soon(puller)
        finally:
            self.queued_chunks -= sum(1 for _ in ids)  # cut short (the round's deadline)
        if failures:
            raise failures[0]

    async def _pull(self, peer: str, remote, chunk_id: bytes) -> bool:
        """Fetch one chunk the peer listed and store it; True if it is held here after.

        Not while another peer's exchange pulls it, nor if it came since this node's walk
        (from another peer, or a put): peers list the same lost chunks.
        """
        if chunk_id in self._pulling:
            return False
        self._pulling.add(chunk_id)
        try:
            if await self._offload(self._local.chunks.has, chunk_id):
                return True
            try:
                data = await remote.fetch_chunk(chunk_id)
            except ReplicaLacks as exc:
                # Listed, but gone since (collected, or quarantined as corrupt when read):
                # another replica or a later round supplies it; the rest of the exchange,
                # names included, goes on.
                log.info("anti-entropy: %s no longer holds chunk %s: %s", short_id(peer), chunk_id.hex()[:16], exc)
                return False
            await self._pacer.pace(len(data))
            await self._replicas.local.store_chunk(chunk_id, data)
        finally:
            self._pulling.discard(chunk_id)
        self.received_bytes += len(data)
        self.received_chunks += 1
        return True

    async def on_sync_chunks(self, request: net.IncomingRequest) -> dm.SyncChunksReply:
        """This node's ids in the buckets whose digests differ, from its last walk (see the module)."""
        peer = request.peer.node_id
        snapshot = await self._answering(CHUNKS)
        theirs = {d.bucket: (d.digest, d.count) for d in request.msg.buckets}
        answered = snapshot.answered(peer)
        picked = buckets_to_answer(snapshot.digests(peer), theirs, answered, IDS_PER_MESSAGE_MAX, ANSWER_IDS_WANTED)
        found = await self._offload(self._listed, snapshot, self._view.ring(), peer, picked, IDS_PER_MESSAGE_MAX)
        _note_answered(answered, found)
        return dm.SyncChunksReply(tuple(dm.BucketChunks(b, b"".join(sorted(ids))) for b, ids in found.items()))

    # -- names ------------------------------------------------------------------------

    async def _sync_names(self, peer: str, ring: Ring, snapshot: KeySnapshot,
                          digests: dict[int, tuple[bytes, int]], short: ShortKeys) -> None:
        remote = self._replicas.remote(peer)
        done: set[int] = set()
        for _ in range(EXCHANGES_PER_ROUND_MAX):
            differing, theirs = await remote.sync_names(_digest_messages(digests))
            fresh = [bucket for bucket in dict.fromkeys(differing) if bucket not in done]
            if not fresh:
                return  # equal, or still differing where this round reconciled (see _sync_chunks)
            done.update(fresh)
            # Only names of the buckets named (``RemoteReplica.sync_names``); one the ring does
            # not place on this node is still compared (a name the rings disagree on a moment),
            # and hand-off moves it on if this node takes it.
            by_bucket: dict[int, dict[str, tuple[Timestamp, str]]] = {bucket: {} for bucket in fresh}
            for name, key in theirs.items():
                bucket = bucket_of(name_key(name))
                if bucket in by_bucket:
                    by_bucket[bucket][name] = key
            for bucket in fresh:  # one bucket's names in memory at a time
                held = await self._offload(self._rows_listed, snapshot, ring, peer, [bucket], None)
                rows = {row[0]: row for row in held.get(bucket, [])}
                await self._reconcile_names(peer, remote, rows, by_bucket[bucket], short)
                items = [_row_item(row) for row in rows.values() if self._shares(ring, peer, row[0])]
                if items:
                    digests[bucket] = (digest_of(items), len(items))
                else:
                    digests.pop(bucket, None)

    def _shares(self, ring: Ring, peer: str, name: str) -> bool:
        preferred = ring.preference_list(name_key(name), self.config.rf)
        return peer in preferred and self.node_id in preferred

    async def _reconcile_names(self, peer: str, remote, rows: dict[str, Row],
                               theirs: dict[str, tuple[Timestamp, str]], short: ShortKeys) -> None:
        """Push what the peer lacks of one bucket, pull what it has newer; ``rows`` (this
        node's names there that it shares with the peer) becomes what is held here."""
        for name, version, writer, _ in list(rows.values()):
            if name not in theirs or (version, writer) > theirs[name]:
                short.add(name_key(name))
                entry = await self._offload(self._local.names.get, name)
                if entry is not None:
                    await remote.put_name(entry)
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

    async def on_sync_names(self, request: net.IncomingRequest) -> dm.SyncNamesReply:
        """The buckets whose digests differ and this node's versions there, from its last walk."""
        peer = request.peer.node_id
        snapshot = await self._answering(NAMES)
        theirs = {d.bucket: (d.digest, d.count) for d in request.msg.buckets}
        answered = snapshot.answered(peer)
        picked = buckets_to_answer(snapshot.digests(peer), theirs, answered, NAMES_PER_MESSAGE_MAX,
                                   ANSWER_NAMES_WANTED)
        found = await self._offload(self._rows_listed, snapshot, self._view.ring(), peer, picked,
                                    NAMES_PER_MESSAGE_MAX)
        _note_answered(answered, found)
        answer = [dm.NameSummary(name, version.wall_ms, version.logical, writer, tomb)
                  for rows in found.values() for name, version, writer, tomb in rows]
        return dm.SyncNamesReply(tuple(found), tuple(answer))
