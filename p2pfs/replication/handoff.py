"""Hand-off: keys a node holds but no longer owns go to their owners, and a leave hands off all.

The local copy of a chunk is dropped only after every one of its ``rf`` owners
(all alive) has confirmed holding it: until then ours may be one of the ``rf``
copies. A name is dropped once every live owner holds it (or something newer).
Keys still hinted for a returning owner are left to hint delivery.

A graceful leave first tells every live member that this node is leaving, so
that all of them place data on the ring without it from then on: a new owner
then keeps what it is handed instead of dropping it as not its own (the
LEAVING state of Cassandra's token ring). Then it runs the same hand-off
against that ring.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable

import trio

from p2pfs import net
from p2pfs.ids import short_id
from p2pfs.replication import messages as dm
from p2pfs.replication.background import RepairPacer
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import BadReply, ReplicaError
from p2pfs.replication.hints import HintKind
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.placement import name_key
from p2pfs.replication.replicas import LIST_PAGE_NAMES, Replica, Replicas
from p2pfs.replication.view import RingView
from p2pfs.ring import Ring
from p2pfs.storage import ChunkCorrupt, ChunkMissing, NameEntry

log = logging.getLogger(__name__)

# Ids asked about in one HasChunks during hand-off.
HANDOFF_BATCH_IDS = 1024
# Names handed off together: each owner is asked about them with pages of its index.
HANDOFF_BATCH_NAMES = 1024
# A batch reads at most one page of an owner's index per this many of its names (then asks
# the rest one by one): a batch of names far apart never costs much more than one request each.
NAMES_PER_PAGE_READ = 10
# Seconds past the hand-off deadline that others keep a leaving node out of their ring
# (it announces LEFT within that time, or comes back and is welcome again).
LEAVING_MARGIN_S = 60.0
# The most a peer's Leaving may ask for beyond our own hand-off deadline.
LEAVING_MARGIN_S_MAX = 120.0


class Pusher:
    """Sends chunks from this node's store to a replica at the repair bandwidth."""

    def __init__(self, local: LocalStore, pacer: RepairPacer, offload: Offload) -> None:
        self._local = local
        self._pacer = pacer
        self._offload = offload
        # Chunks and their bytes pushed to peers by anti-entropy and hand-off (the admin's
        # repair metrics).
        self.sent_bytes = 0
        self.sent_chunks = 0

    async def push(self, replica: Replica, chunk_id: bytes) -> bool:
        """Give ``replica`` our copy; False if we hold no good copy any more."""
        try:
            data = await self._offload(self._local.chunks.get, chunk_id)
        except (ChunkMissing, ChunkCorrupt):
            return False
        await self._pacer.pace(len(data))
        await replica.store_chunk(chunk_id, data)
        self.sent_bytes += len(data)
        self.sent_chunks += 1
        return True


class HandOff:
    def __init__(
        self, *, config: ReplicationConfig, view: RingView, replicas: Replicas, local: LocalStore,
        pusher: Pusher, offload: Offload,
    ) -> None:
        self.config = config
        self.node_id = view.node_id
        self._view = view
        self._replicas = replicas
        self._local = local
        self._pusher = pusher
        self._offload = offload

    async def chunks(self, ring: Ring, chunk_ids: Iterable[bytes]) -> tuple[int, int]:
        """Make sure every live owner holds each chunk, then drop our copy if all ``rf`` do.

        Works ``HANDOFF_BATCH_IDS`` ids at a time, so what it holds is bounded whatever
        it is given. Returns (chunks handed off and dropped, chunks kept).
        """
        dropped = kept = 0
        batch: list[bytes] = []
        for chunk_id in chunk_ids:
            batch.append(chunk_id)
            if len(batch) == HANDOFF_BATCH_IDS:
                done = await self._chunk_batch(ring, batch)
                dropped, kept, batch = dropped + done[0], kept + done[1], []
        if batch:
            done = await self._chunk_batch(ring, batch)
            dropped, kept = dropped + done[0], kept + done[1]
        if dropped:
            log.info("handed off %d chunks to their owners and dropped our copies", dropped)
        return dropped, kept

    async def _chunk_batch(self, ring: Ring, chunk_ids: list[bytes]) -> tuple[int, int]:
        rf = self.config.rf
        alive = self._view.alive()
        pending: dict[str, list[bytes]] = defaultdict(list)
        owners_of: dict[bytes, list[str]] = {}
        # One worker-thread call for the batch's hints, not one a chunk (see ``hinted_among``).
        hinted = await self._offload(self._local.hints.hinted_among, HintKind.CHUNK, chunk_ids)
        for chunk_id in chunk_ids:
            if chunk_id in hinted:
                continue
            owners = ring.preference_list(chunk_id, rf)
            if self.node_id in owners:
                continue  # ours after all (the ring changed since the caller looked)
            owners_of[chunk_id] = owners
            for owner in owners:
                if owner in alive:
                    pending[owner].append(chunk_id)
        confirmed: dict[bytes, int] = defaultdict(int)
        for owner, ids in pending.items():
            replica = self._replicas(owner)
            for start in range(0, len(ids), HANDOFF_BATCH_IDS):
                batch = ids[start : start + HANDOFF_BATCH_IDS]
                try:
                    present = await replica.has_chunks(tuple(batch))
                    for chunk_id, held in zip(batch, present):
                        if held or await self._pusher.push(replica, chunk_id):
                            confirmed[chunk_id] += 1
                except ReplicaError as exc:
                    log.info("hand-off to %s paused: %s", short_id(owner), exc)
                    break
        done = [chunk_id for chunk_id, owners in owners_of.items()
                if len(owners) == min(rf, len(ring)) and confirmed[chunk_id] == len(owners)]
        await self._offload(self._local.drop_many_unless_hinted, done)  # one worker-thread call a batch
        return len(done), len(owners_of) - len(done)

    async def names(self, ring: Ring, names: Iterable[str]) -> int:
        """Push names we do not own to their owners; drop ours once every live owner has it.

        Works ``HANDOFF_BATCH_NAMES`` names at a time, and asks each owner about a batch
        with pages of its index (``_owner_entries``) rather than one request per name.
        Returns the names dropped.
        """
        dropped = 0
        batch: list[str] = []
        for name in names:
            batch.append(name)
            if len(batch) == HANDOFF_BATCH_NAMES:
                dropped += await self._name_batch(ring, batch)
                batch = []
        if batch:
            dropped += await self._name_batch(ring, batch)
        return dropped

    async def _name_batch(self, ring: Ring, names: list[str]) -> int:
        rf = self.config.rf
        alive = self._view.alive()
        ours: dict[str, NameEntry] = {}
        owners_of: dict[str, list[str]] = {}
        pending: dict[str, list[str]] = defaultdict(list)
        # The batch's entries in one worker-thread call, not one a name (a million at a leave).
        for entry in await self._offload(_entries_of, self._local, sorted(set(names))):
            name = entry.name
            ours[name] = entry
            owners_of[name] = [n for n in ring.preference_list(name_key(name), rf) if n != self.node_id]
            for owner in owners_of[name]:
                if owner in alive:
                    pending[owner].append(name)
        confirmed: dict[str, int] = defaultdict(int)
        for owner, owner_names in pending.items():
            replica = self._replicas(owner)
            try:
                held = await self._owner_entries(replica, owner_names)
                for name in owner_names:
                    theirs = held.get(name)
                    if theirs is None or ours[name].supersedes(theirs):
                        await replica.put_name(ours[name])
                    confirmed[name] += 1
            except ReplicaError as exc:
                log.info("name hand-off to %s paused: %s", short_id(owner), exc)
        done = [ours[name] for name, owners in owners_of.items()
                if owners and confirmed[name] == len(owners) and self.node_id not in ring.preference_list(name_key(name), rf)]
        # One worker-thread call and one commit for the batch: name by name, a leave of a
        # million names was a million commits, each an fsync.
        return await self._offload(_drop_names_unless_hinted, self._local, done)

    async def _owner_entries(self, replica: Replica, names: list[str]) -> dict[str, NameEntry]:
        """What ``replica`` holds of ``names`` (sorted): its entries, absent where it holds none.

        Read from pages of its index over the names' range (``ListNames``, tombstones
        included, ``LIST_PAGE_NAMES`` a page), which a leave's batch of consecutive names
        fills, at most one page per ``NAMES_PER_PAGE_READ`` names; the names past where
        the pages reached are asked one by one (``GetName``), so a sparse batch costs
        about what it did. A page out of order is the peer's fault (``BadReply``).
        """
        wanted = set(names)
        found: dict[str, NameEntry] = {}
        after = names[0][:-1]  # a name's prefix sorts before it (and is a name, or empty)
        reached: str | None = None  # every name up to here was listed, if it is held
        for _ in range(1 + len(names) // NAMES_PER_PAGE_READ):
            entries, more = await replica.list_names("", after, LIST_PAGE_NAMES)
            for entry in entries:
                if entry.name <= after:
                    raise BadReply(f"listed {entry.name!r:.80} after {after!r:.80}")
                after = entry.name
                if entry.name in wanted:
                    found[entry.name] = entry
            reached = after if more else None
            if not more or after >= names[-1]:
                break
        for name in names:
            if reached is not None and name > reached:
                entry = await replica.get_name(name)
                if entry is not None:
                    found[name] = entry
        return found

    # -- graceful leave -------------------------------------------------------------

    async def on_leaving(self, request: net.IncomingRequest) -> dm.LeavingReply:
        for_s = min(max(request.msg.for_s, 0.0), self.config.leave_handoff_timeout_s + LEAVING_MARGIN_S_MAX)
        self._view.mark_leaving(request.peer.node_id, for_s)
        log.info("%s is leaving: out of the ring", short_id(request.peer.node_id))
        return dm.LeavingReply()

    async def leave(self) -> bool:
        """Before leaving: give every chunk and name to its owners in the ring without us.

        Returns True if every key reached all its owners. Progress goes to the log.
        """
        with net.metered() as meter:
            return await self._leave(meter)

    async def _leave(self, meter: net.TrafficMeter) -> bool:
        for_s = self.config.leave_handoff_timeout_s + LEAVING_MARGIN_S
        self._view.mark_leaving(self.node_id, for_s)
        told = 0

        async def tell(node_id: str) -> None:
            nonlocal told
            try:
                await self._replicas.remote(node_id).leaving(for_s)
                told += 1
            except ReplicaError as exc:
                log.warning("leave: could not tell %s: %s", short_id(node_id), exc)

        others = sorted(self._view.alive() - {self.node_id})
        async with trio.open_nursery() as nursery:
            for node_id in others:
                nursery.start_soon(tell, node_id)
        log.info("leave: told %d of %d live members", told, len(others))
        without_me = await self._view.settled_ring()
        assert self.node_id not in without_me.members
        if len(without_me) == 0:
            log.warning("leaving a cluster of one: there is nobody to hand data to")
            return False
        # The store and the index are walked a batch at a time (a node may hold millions).
        log.info("leave: handing every chunk and name to its new owners")
        chunks_seen = dropped_chunks = kept_chunks = 0
        batches = self._local.chunks.iter_id_batches(HANDOFF_BATCH_IDS)
        while (batch := await self._offload(next, batches, None)) is not None:
            dropped, kept = await self._chunk_batch(without_me, batch)
            chunks_seen, dropped_chunks, kept_chunks = chunks_seen + len(batch), dropped_chunks + dropped, kept_chunks + kept
        names_seen = dropped_names = 0
        after = b""
        while True:
            rows, after = await self._offload(self._local.names.summaries_after, after, HANDOFF_BATCH_NAMES)
            names_seen += len(rows)
            dropped_names += await self.names(without_me, [row[0] for row in rows])
            if not after:
                break
        log.info("leave: handed off %d of %d chunks and %d of %d names, %s",
                 dropped_chunks, chunks_seen, dropped_names, names_seen, meter.summary())
        return kept_chunks == 0 and dropped_names == names_seen


def _entries_of(local: LocalStore, names: list[str]) -> list[NameEntry]:
    """This node's entries of ``names``, those it holds, in order. Blocking (a worker thread)."""
    return [entry for entry in map(local.names.get, names) if entry is not None]


def _drop_names_unless_hinted(local: LocalStore, entries: list[NameEntry]) -> int:
    """Drop each name still at the version handed off, unless hinted, in one commit; the count dropped.

    Blocking (a worker thread). A name rewritten meanwhile is kept (``remove_many_if``
    matches the version).
    """
    hinted = local.hints.hinted_among(HintKind.NAME, [e.name.encode() for e in entries])
    unhinted = [(e.name, e.version, e.writer) for e in entries if e.name.encode() not in hinted]
    return local.names.remove_many_if(unhinted) if unhinted else 0
