"""Garbage collection: chunks no live manifest refers to, and old tombstones.

A chunk is deleted once unused for ``chunk_gc_grace_s`` (its file's time is
stamped on every write and re-put, so chunks of a put in progress are never
collected); tombstones older than ``tombstone_gc_grace_s`` are purged. Chunks
are judged only when every node that may hold names answered: a chunk must
not be judged unreferenced by a view that misses names.

Memory is bounded whatever the cluster holds: names are read a page at a time
(``LIST_PAGE_NAMES``), and every chunk a name refers to goes into a Bloom filter of
``REFERENCE_FILTER_BITS`` (16 MiB) instead of a set (a set of two million ids costs
~200 MB). A filter never forgets an id it was given, so a referenced chunk is never
deleted; an unreferenced one it happens to match (a false positive: about 1 in 10^5
at two million references, 1 in 25 at twenty million) is kept for a later round,
whose filter is salted differently.

Traffic: a round first reads this node's own names (no traffic) and walks its chunks
(``GC_BATCH_IDS`` at a time) for the candidates: chunks past their grace that no name
here refers to. Only a chunk no name here refers to can be garbage, so a round that
finds none reads nothing from the other nodes: before, every round read every name
entry of every node (~42 MB per node and round at 100,000 names, rf = 3 on 3 nodes,
where every name is held on every node). With candidates, every other node's names are
read as before, and each reference only takes its id off the candidates (exact, held
as a set of at most ``GC_CANDIDATES_MAX``); past that many (a large cluster, where most
of a node's chunks belong to names held elsewhere) the references go into the filter
and a second walk judges the whole store, as every round did before. So a round costs
traffic when there may be garbage here, not every round; with many more nodes than rf
it still reads every node's names: a cost proportional to what changed would need
the references kept where the chunks are (Garage's block reference table), a new
message and a write-path change not made here.

Every version held anywhere counts, not only the newest: an overwritten file's
chunks stay until the stale copies of its name are gone (anti-entropy replaces
them within a round or two), which only ever keeps more.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

import trio

from p2pfs import net
from p2pfs.clock import Clock
from p2pfs.ids import short_id
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import BadReply, ReplicaError
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.replicas import LIST_PAGE_NAMES, PAGES_PER_NODE_MAX, Replicas
from p2pfs.replication.view import RingView
from p2pfs.storage import Timestamp

log = logging.getLogger(__name__)

# Bits of the reference filter: 2^27 bits = 16 MiB, held for the length of a round. With
# REFERENCE_FILTER_HASHES probes the false-positive rate is (1 - e^(-k n / m))^k: 1e-5 at
# n = 2 million references, 4% at 20 million (garbage then waits for a later round).
REFERENCE_FILTER_BITS = 1 << 27
# Probes per id, each 64 bits of one salted BLAKE2b-256 of the id.
REFERENCE_FILTER_HASHES = 4
# Local chunk ids judged per worker-thread call (the store is walked in id order).
GC_BATCH_IDS = 4096
# Candidates (chunks held here that no name here refers to) judged exactly, as a set of ids:
# ~6 MiB at 65,536. Past it the round judges the whole store against the filter instead.
GC_CANDIDATES_MAX = 65536


class ReferenceFilter:
    """A Bloom filter of chunk ids (Bloom 1970): no false negatives, rare false positives.

    ``salt`` changes the probes, so an id that collides in one round's filter does
    not collide in the next one's.
    """

    def __init__(self, bits: int, salt: bytes) -> None:
        assert bits > 0 and bits & (bits - 1) == 0, "a power of two: probes are masked"
        assert len(salt) <= hashlib.blake2b.SALT_SIZE
        self._mask = bits - 1
        self._bits = bytearray(bits // 8)
        self._salt = salt
        self.added = 0

    def _probes(self, chunk_id: bytes) -> list[int]:
        digest = hashlib.blake2b(chunk_id, digest_size=8 * REFERENCE_FILTER_HASHES, salt=self._salt).digest()
        return [int.from_bytes(digest[8 * i : 8 * i + 8], "big") & self._mask for i in range(REFERENCE_FILTER_HASHES)]

    def add(self, chunk_id: bytes) -> None:
        for bit in self._probes(chunk_id):
            self._bits[bit >> 3] |= 1 << (bit & 7)
        self.added += 1

    def __contains__(self, chunk_id: bytes) -> bool:
        return all(self._bits[bit >> 3] & (1 << (bit & 7)) for bit in self._probes(chunk_id))


def _unreferenced(ids: list[bytes], referenced: ReferenceFilter) -> list[bytes]:
    return [chunk_id for chunk_id in ids if chunk_id not in referenced]


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
        self.rounds = 0
        # References read from names this round (the round's log line).
        self._references_read = 0

    async def round(self) -> tuple[int, int]:
        """Remove unreferenced chunks past their grace, and old tombstones. Returns the counts.

        The other nodes' names are read only when this node's own names leave chunks to
        judge (see the module docstring): a round with nothing to collect costs no traffic.
        """
        with net.metered() as meter:
            return await self._round(meter)

    async def _round(self, meter: net.TrafficMeter) -> tuple[int, int]:
        started_s = trio.current_time()
        now_ms = self._clock.wall_ms()
        purged = await self._offload(
            self._local.names.purge_tombstones,
            Timestamp(max(0, now_ms - int(self.config.tombstone_gc_grace_s * 1000)), 0),
        )
        self.purged_tombstones += purged
        self.rounds += 1
        self._references_read = 0
        salt = hashlib.blake2b(b"%s %d" % (self._view.node_id.encode(), self.rounds), digest_size=16).digest()
        referenced = ReferenceFilter(REFERENCE_FILTER_BITS, salt)
        me = self._view.node_id
        before_ms = now_ms - int(self.config.chunk_gc_grace_s * 1000)
        if await self._references([me], referenced.add):
            log.info("gc skipped: this node's own names could not be read")
            return 0, purged
        candidates, judged = await self._candidates(referenced, before_ms)
        others = [n for n in self._view.everyone(self._view.ring()) if n != me]
        found = f"over {GC_CANDIDATES_MAX}" if candidates is None else str(len(candidates))
        read_others = candidates is None or bool(candidates)
        removed = 0
        if read_others:
            # Exact: each id another node's name refers to leaves the candidates. Too many
            # candidates to hold: every reference goes into the filter, and the store is
            # judged against it in a second walk, as every round did before.
            unreachable = await self._references(
                others, referenced.add if candidates is None else candidates.discard)
            if unreachable:
                log.info("gc skipped: %d ring members did not answer", len(unreachable))
                return 0, purged
            if candidates is None:
                removed = await self._remove_unreferenced(referenced, before_ms)
            else:
                for chunk_id in sorted(candidates):
                    removed += await self._remove(chunk_id, before_ms)
        if removed or purged:
            log.info("gc: removed %d unreferenced chunks and %d old tombstones", removed, purged)
        # One line a round: what it cost (scripts/bench_pernode.py reads it).
        log.info("gc round: %.3f s, %d references from %d nodes, %d chunks judged, %d removed, "
                 "%s candidates, %s", trio.current_time() - started_s, self._references_read,
                 1 + len(others) * read_others, judged, removed, found, meter.summary())
        return removed, purged

    async def _candidates(self, referenced: ReferenceFilter, before_ms: int) -> tuple[set[bytes] | None, int]:
        """The chunks held here that no name here refers to and that were not written since
        ``before_ms``; None once they pass ``GC_CANDIDATES_MAX``. Also the chunks walked."""
        candidates: set[bytes] | None = set()
        judged = 0
        batches = self._local.chunks.iter_id_batches(GC_BATCH_IDS)
        while (batch := await self._offload(next, batches, None)) is not None:
            judged += len(batch)
            if candidates is None:
                continue  # counting the store only: the second walk judges it
            unreferenced = await self._offload(_unreferenced, batch, referenced)
            if unreferenced:
                candidates.update(await self._offload(self._local.chunks.unused_since, unreferenced, before_ms))
                if len(candidates) > GC_CANDIDATES_MAX:
                    candidates = None
        return candidates, judged

    async def _remove_unreferenced(self, referenced: ReferenceFilter, before_ms: int) -> int:
        removed = 0
        batches = self._local.chunks.iter_id_batches(GC_BATCH_IDS)
        while (batch := await self._offload(next, batches, None)) is not None:
            for chunk_id in await self._offload(_unreferenced, batch, referenced):
                removed += await self._remove(chunk_id, before_ms)
        return removed

    async def _remove(self, chunk_id: bytes, before_ms: int) -> int:
        if not await self._offload(self._local.chunks.delete_if_unused_since, chunk_id, before_ms):
            return 0
        self.removed_chunks += 1
        return 1

    async def _references(self, node_ids, sink: Callable[[bytes], object]) -> list[str]:
        """Give ``sink`` every chunk a name held by ``node_ids`` refers to; returns the nodes that
        did not answer in full.

        Pages are read from all nodes at once; ``sink`` is called on the event loop between
        them (one writer: a bit lost to a race would delete a referenced chunk).
        """
        unreachable: list[str] = []

        async def collect(node_id: str) -> None:
            replica = self._replicas(node_id)
            after = ""
            for _ in range(PAGES_PER_NODE_MAX):
                try:
                    entries, more = await replica.list_names("", after, LIST_PAGE_NAMES)
                    if more and (not entries or not entries[-1].name.encode() > after.encode()):
                        raise BadReply("a page that does not move forward")
                except ReplicaError as exc:
                    log.info("gc: reading names from %s failed: %s", short_id(node_id), exc)
                    unreachable.append(node_id)
                    return
                for entry in entries:
                    if entry.manifest is not None:
                        for ref in entry.manifest.chunks:
                            sink(ref.chunk_id)
                            self._references_read += 1
                if not more:
                    return
                after = entries[-1].name
            unreachable.append(node_id)

        async with trio.open_nursery() as nursery:
            for node_id in node_ids:
                nursery.start_soon(collect, node_id)
        return unreachable
