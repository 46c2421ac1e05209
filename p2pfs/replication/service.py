"""The data service: a node's stores, its coordinator, its background jobs, and its routes.

``DataService`` opens the node's chunk store, name index and hints, wires the
rooms of the replication layer to them, and runs them:

* ``coordinator``: puts, gets and deletes on behalf of clients (quorums in ``quorum``);
* ``handlers``: what this node answers as a replica;
* ``antientropy`` then ``handoff`` every ``anti_entropy_interval_s``, ``hinted``
  (hint delivery), ``scrub`` and ``gc``, each a round of ``background.run_rounds``;
* ``fsck``, on request.

Each room gets only what it uses (the stores, a ``RingView``, ``Replicas``, a
clock); none of them knows this one. The client-facing routes here turn the
rooms' typed errors into the wire's error codes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable

import trio

from p2pfs import errors, net, wire
from p2pfs.access import Operation
from p2pfs.clock import Clock
from p2pfs.membership import Member, MemberState
from p2pfs.net.access import authorize
from p2pfs.replication import client_messages as cm
from p2pfs.replication import messages as dm
from p2pfs.replication.antientropy import ANTI_ENTROPY_DIR_NAME, AntiEntropy
from p2pfs.replication.background import ROUND_JITTER_FRACTION, RepairPacer, round_deadline_s, run_rounds
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.errors import BadReply, ReplicaError
from p2pfs.replication.fsck import Fsck
from p2pfs.replication.gc import GarbageCollector
from p2pfs.replication.handlers import HAS_CHUNKS_MAX, ReplicaHandlers, check_name
from p2pfs.replication.handoff import HandOff, Pusher
from p2pfs.replication.hinted import HintDelivery
from p2pfs.replication.hints import HINTS_FILE_NAME, HintStore
from p2pfs.replication.local import LocalReplica, LocalStore
from p2pfs.replication.namerepair import NAME_REFILL_CHECK_INTERVAL_S, NameRefill
from p2pfs.replication.quorum import QuorumError
from p2pfs.replication.quorum_list import ListMerge, coverage_of_shares, list_quorum
from p2pfs.replication.replicas import LIST_PAGE_NAMES, Replicas
from p2pfs.replication.resumable import Resumable
from p2pfs.replication.scrub import Scrubber
from p2pfs.replication.view import PLACEMENT_FILE_NAME, RingView
from p2pfs.ring import Ring
from p2pfs.storage import NAMES_FILE_NAME, ChunkStore, Manifest, NameEntry, NameIndex, StorageError

__all__ = ["DataService", "QuorumError"]

log = logging.getLogger(__name__)

# Longest name prefix accepted by ls (a prefix is at most a name).
PREFIX_BYTES_MAX = 1024
# Rounds of paging one ls answer may take from the nodes (each round reads one page
# from the nodes lagging behind the merge). A round settles at least one more name
# unless a node sends only tombstones; past the cap the answer is a shorter page with
# its continuation, so a prefix full of deletes costs several requests, never a stall.
LS_ROUNDS_MAX = 64

@dataclasses.dataclass(frozen=True, slots=True)
class DataStats:
    """The data layer's figures for metrics and the status page, read at scrape time."""

    used_bytes: int
    capacity_bytes: int
    hints_pending: int
    corrupt_chunks_pending: int
    repair_sent_bytes: int  # chunk bytes pushed to peers by anti-entropy and hand-off
    repair_received_bytes: int  # chunk bytes pulled from peers by anti-entropy
    # Totals and queues of the background jobs (the node's admin metrics).
    repair_sent_chunks: int = 0
    repair_received_chunks: int = 0
    repair_queue_chunks: int = 0  # transfers anti-entropy decided on, not yet done
    read_repairs_running: int = 0
    chunks_held: int | None = None  # as of the last anti-entropy round
    under_replicated_keys: int | None = None  # the last anti-entropy round's estimate
    hints_delivered: int = 0
    gc_removed_chunks: int = 0
    gc_purged_tombstones: int = 0
    scrub_pass_chunks: int = 0
    scrub_pass_remaining_chunks: int = 0
    scrub_verified_chunks: int = 0
    scrub_corrupt_chunks: int = 0
    names_rows_quarantined: int = 0  # undecodable name-index rows removed since start (refilled from replicas)
    names_index_rebuilds: int = 0  # times the name-index file was found damaged and rebuilt since start


Route = Callable[[net.IncomingRequest], Awaitable[wire.Message | net.Reply]]


async def _to_thread(fn: Callable, *args):
    return await trio.to_thread.run_sync(fn, *args)


class DataService:
    """Chunk store, name index, hints, the coordinator and the background jobs of one node."""

    def __init__(
        self,
        *,
        node_id: str,
        data_dir: Path,
        capacity_bytes: int,
        config: ReplicationConfig,
        endpoint: net.Endpoint,
        members: Callable[[], list[Member]],
        clock: Clock,
        offload: Callable[..., Awaitable] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        # Disk work and hashing of large buffers leave the event loop through this
        # (a worker thread); the simulation runs them inline, as time must not pass.
        self._offload = offload or _to_thread
        self.rng = rng or random.Random()
        self.config = config
        self.clock = clock
        self._data_dir = data_dir
        self._capacity_bytes = capacity_bytes
        self._endpoint = endpoint
        self.view = RingView(node_id, config, members, clock, placement_file=data_dir / PLACEMENT_FILE_NAME)
        # Built by run() once the stores are open (see _wire).
        self.local: LocalStore | None = None
        self.coordinator: Coordinator | None = None
        self._replicas: Replicas | None = None
        self._hand_off: HandOff | None = None
        self._anti_entropy: AntiEntropy | None = None
        self._hints: HintDelivery | None = None
        self._gc: GarbageCollector | None = None
        self._scrubber: Scrubber | None = None
        self._name_refill: NameRefill | None = None
        self._pusher: Pusher | None = None
        # Repair's bandwidth budget, which a config reload changes (the node's admin).
        self.repair_pacer: RepairPacer | None = None
        self._routes: dict[type, Route] = {}

    def stats(self) -> DataStats | None:
        """What the node's admin listener reports of the data layer; None until the stores are open.

        Reads counters and the hint table (a COUNT over a small SQLite table): cheap
        enough for a scrape on the event loop.
        """
        if self.local is None or self._pusher is None or self._anti_entropy is None:
            return None
        return DataStats(
            used_bytes=self.local.chunks.used_bytes,
            capacity_bytes=self._capacity_bytes,
            hints_pending=self.local.hints.count(),
            corrupt_chunks_pending=len(self.local.corrupt_pending),
            repair_sent_bytes=self._pusher.sent_bytes,
            repair_received_bytes=self._anti_entropy.received_bytes,
            **self._job_stats(),
            names_rows_quarantined=self.local.names.rows_quarantined,
            names_index_rebuilds=self.local.names.rebuilds,
        )

    def _job_stats(self) -> dict[str, int | None]:
        anti_entropy, scrubber = self._anti_entropy, self._scrubber
        return {
            "repair_sent_chunks": self._pusher.sent_chunks,
            "repair_received_chunks": anti_entropy.received_chunks,
            "repair_queue_chunks": anti_entropy.queued_chunks,
            "read_repairs_running": self.coordinator.repairs.running,
            "chunks_held": anti_entropy.chunks_held,
            "under_replicated_keys": anti_entropy.under_replicated_keys,
            "hints_delivered": self._hints.delivered,
            "gc_removed_chunks": self._gc.removed_chunks,
            "gc_purged_tombstones": self._gc.purged_tombstones,
            "scrub_pass_chunks": scrubber.pass_chunks if scrubber else 0,
            "scrub_pass_remaining_chunks": scrubber.pass_remaining_chunks if scrubber else 0,
            "scrub_verified_chunks": scrubber.verified_chunks if scrubber else 0,
            "scrub_corrupt_chunks": scrubber.corrupt_chunks if scrubber else 0,
        }

    @property
    def store(self) -> ChunkStore:
        return self.local.chunks

    @property
    def names(self) -> NameIndex:
        return self.local.names

    # -- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Open the stores (scanning the chunk dir in a thread), then run the background jobs."""
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data dir {self._data_dir}: {exc.strerror}") from None
        chunks = await self._offload(lambda: ChunkStore(self._data_dir, self._capacity_bytes, clock=self.clock))
        names = await self._offload(NameIndex, self._data_dir / NAMES_FILE_NAME)
        hints = await self._offload(HintStore, self._data_dir / HINTS_FILE_NAME)
        try:
            self._wire(LocalStore(chunks, names, hints, self.clock))
            async with trio.open_nursery() as nursery:
                await nursery.start(self.coordinator.repairs.run)
                await nursery.start(self.view.run_rebuilds)
                await nursery.start(self._fsck.serve)  # fsck jobs outlive the requests that ask
                self._start_background(nursery)
                task_status.started()
        finally:
            names.close()
            hints.close()

    def _wire(self, local: LocalStore) -> None:
        config, view, offload, clock = self.config, self.view, self._offload, self.clock
        self.local = local
        replicas = Replicas(LocalReplica(self.node_id, local, offload), self._endpoint, view, offload)
        self.coordinator = Coordinator(
            node_id=self.node_id, config=config, view=view, replicas=replicas, local=local, clock=clock,
            offload=offload,
        )
        pacer = self.repair_pacer = RepairPacer(config.repair_bytes_per_s, clock)
        pusher = self._pusher = Pusher(local, pacer, offload)
        self._hand_off = HandOff(
            config=config, view=view, replicas=replicas, local=local, pusher=pusher, offload=offload
        )
        self._anti_entropy = AntiEntropy(
            config=config, view=view, replicas=replicas, local=local, pusher=pusher, pacer=pacer,
            offload=offload, snapshot_dir=self._data_dir / ANTI_ENTROPY_DIR_NAME,
        )
        self._name_refill = NameRefill(names=local.names, anti_entropy=self._anti_entropy, view=view)
        self._hints = HintDelivery(
            config=config, view=view, replicas=replicas, local=local, clock=clock, offload=offload
        )
        self._gc = GarbageCollector(
            config=config, view=view, replicas=replicas, local=local, clock=clock, offload=offload
        )
        if config.scrub_bytes_per_s > 0:
            self._scrubber = Scrubber(
                config=config, local=local, repair=self.coordinator.repair_chunk, rng=self.rng, offload=offload
            )
        self._replicas = replicas
        fsck = self._fsck = Fsck(config=config, view=view, replicas=replicas, offload=offload)
        self._routes = {
            **ReplicaHandlers(local, self.coordinator.observe, offload).routes(),
            dm.SyncChunks: self._anti_entropy.on_sync_chunks,
            dm.SyncNames: self._anti_entropy.on_sync_names,
            dm.Leaving: self._hand_off.on_leaving,
            dm.Fsck: fsck.on_fsck,
            dm.StoreChunkChain: self.coordinator.on_store_chunk_chain,
        }
        self._routes.update(Resumable(
            coordinator=self.coordinator, view=view, replicas=replicas, offload=offload,
            existing_file=self._existing_file,
        ).routes())

    def _start_background(self, nursery: trio.Nursery) -> None:
        config = self.config
        # (name, round, seconds between rounds, jitter): hints are handed back at a steady
        # pace; repair rounds are jittered so that nodes do not all repair at once.
        rounds = [
            ("hint delivery", self._hints.round, config.hint_delivery_interval_s, 0.0),
            ("anti-entropy", self._anti_entropy_and_hand_off, config.anti_entropy_interval_s,
             ROUND_JITTER_FRACTION),
            ("gc", self._gc.round, config.gc_interval_s, ROUND_JITTER_FRACTION),
            ("name refill", self._name_refill.round, NAME_REFILL_CHECK_INTERVAL_S, 0.0),
        ]
        for name, round_fn, interval_s, jitter_fraction in rounds:
            nursery.start_soon(functools.partial(
                run_rounds, name, round_fn, interval_s=interval_s, deadline_s=round_deadline_s(interval_s),
                rng=self.rng, jitter_fraction=jitter_fraction,
            ))
        if self._scrubber is not None:
            # One round after another: the scrub paces itself at scrub_bytes_per_s.
            nursery.start_soon(functools.partial(
                run_rounds, "scrub", self._scrubber.round, interval_s=0.0,
                deadline_s=self._scrubber.round_deadline_s(), rng=self.rng, jitter_fraction=0.0,
            ))

    async def _anti_entropy_and_hand_off(self) -> None:
        """One anti-entropy round, then the hand-off of what it found held here but owned elsewhere."""
        not_ours = await self._anti_entropy.round()
        if not_ours is not None:
            await self._hand_off.chunks(not_ours.ring, not_ours.chunk_ids)
            await self._hand_off.names(not_ours.ring, not_ours.names)

    def routes(self) -> dict[type, Route]:
        """Every route of the data layer; the node-to-node ones answer once the stores are open."""
        node_routes = (dm.StoreChunk, dm.FetchChunk, dm.HasChunks, dm.PutName, dm.GetName, dm.ListNames,
                       dm.ListChunks, dm.SyncChunks, dm.SyncNames, dm.Leaving, dm.Fsck, dm.StoreChunkChain)
        return {
            **{t: self._node_route for t in node_routes},
            dm.PutFile: self._put_file,
            dm.GetFile: self._get_file,
            dm.ListFiles: self._list_files,
            dm.RemoveFile: self._remove_file,
            dm.StatFile: self._stat_file,
            # A small file in the message itself (client_messages, codes 90-92).
            cm.PutSmallFile: self._put_small_file,
            cm.GetSmallFile: self._get_small_file,
            # Resumable gets and puts (resumable.py), answered once the stores are open.
            **{t: self._node_route for t in (dm.GetFileFrom, dm.HeldChunks, dm.PutFileKnown)},
        }

    async def _node_route(self, request: net.IncomingRequest) -> wire.Message | net.Reply:
        if isinstance(request.msg, dm.Fsck):  # sent by clients (wire sender roles), admins only
            authorize(request, Operation.FSCK)
        route = self._routes.get(type(request.msg))
        if route is None:
            raise net.RemoteError(wire.ErrorCode.UNAVAILABLE, "the data service is starting")
        try:
            return await route(request)
        except errors.LocalStorageError as exc:
            # This node's disk or index failed (full, read-only, a damaged row it has
            # just quarantined): the asker tries another replica; not a bug of ours.
            code = wire.ErrorCode.STORAGE_FULL if isinstance(exc, errors.StorageFull) else wire.ErrorCode.UNAVAILABLE
            raise net.RemoteError(code, f"this replica's storage failed: {exc}") from None

    # -- what the daemon, the simulation and the tests use ------------------------------

    def ring(self) -> Ring:
        return self.view.ring()

    async def read_name(self, name: str) -> NameEntry | None:
        return await self.coordinator.read_name(name)

    async def fetch_chunk(self, chunk_id: bytes, index: int = 0) -> bytes:
        return await self.coordinator.fetch_chunk(chunk_id, index)

    async def hand_off_everything(self) -> bool:
        """Before leaving: hand every chunk and name to its owners in the ring without this node."""
        return await self._hand_off.leave()

    async def put(
        self, name: str, pieces: AsyncIterable[bytes], size_bytes: int = -1, *, client: str = ""
    ) -> NameEntry:
        """Store a file for ``client``; RemoteError UNAVAILABLE short of a quorum, BAD_REQUEST on a size mismatch."""
        try:
            return await self.coordinator.put(name, pieces, size_bytes, client=client)
        except QuorumError as exc:
            raise net.RemoteError(wire.ErrorCode.UNAVAILABLE, f"put {name!r} failed: {exc}") from None
        except errors.BadInput as exc:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, str(exc)) from None

    async def remove(self, name: str, *, client: str = "") -> None:
        """Write a tombstone for ``name`` at quorum; RemoteError NOT_FOUND if there is no file."""
        await self._existing_file(name)
        try:
            await self.coordinator.remove(name, client=client)
        except QuorumError as exc:
            raise net.RemoteError(wire.ErrorCode.UNAVAILABLE, f"rm {name!r} failed: {exc}") from None

    async def _existing_file(self, name: str) -> NameEntry:
        """The newest entry of a file that exists; RemoteError NOT_FOUND (or UNAVAILABLE) otherwise."""
        try:
            entry = await self.coordinator.read_name(name)
        except QuorumError as exc:
            raise net.RemoteError(wire.ErrorCode.UNAVAILABLE, str(exc)) from None
        if entry is None or entry.manifest is None:
            raise net.RemoteError(wire.ErrorCode.NOT_FOUND, f"no file named {name!r}")
        return entry

    # -- client routes ------------------------------------------------------------------

    async def _put_file(self, request: net.IncomingRequest) -> dm.PutFileReply:
        msg = request.msg
        name = check_name(msg.name)
        client = authorize(request, Operation.PUT, name)
        if request.body is None:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, "a put carries the file as its body")
        entry = await self.put(name, request.body, msg.size_bytes, client=client)
        return _put_reply(entry)

    async def _put_small_file(self, request: net.IncomingRequest) -> dm.PutFileReply:
        """``_put_file`` for a file that came in its request (``cm.PutSmallFile``): the same put."""
        msg = request.msg
        name = check_name(msg.name)
        client = authorize(request, Operation.PUT, name)
        entry = await self.put(name, _pieces(msg.content), msg.size_bytes, client=client)
        return _put_reply(entry)

    async def _get_file(self, request: net.IncomingRequest) -> net.Reply:
        name = check_name(request.msg.name)
        authorize(request, Operation.GET, name)
        return self._streamed_file(name, (await self._existing_file(name)).manifest)

    async def _get_small_file(self, request: net.IncomingRequest) -> cm.SmallFile | net.Reply:
        """A get that takes a file held inline in its answer (``cm.GetSmallFile``); any other
        file is answered as ``_get_file`` answers, with a streamed body."""
        name = check_name(request.msg.name)
        authorize(request, Operation.GET, name)
        manifest = (await self._existing_file(name)).manifest
        if manifest.chunks:
            return self._streamed_file(name, manifest)
        # Checked against the file hash when its entry was read; at most INLINE_BYTES_MAX.
        return cm.SmallFile(name, manifest.size_bytes, manifest.file_hash, manifest.inline)

    def _streamed_file(self, name: str, manifest: Manifest) -> net.Reply:
        async def body(send: Callable[[bytes], Awaitable[None]]) -> None:
            try:
                await self.coordinator.stream_file(manifest, 0, send)
            except QuorumError as exc:
                raise net.RemoteError(wire.ErrorCode.UNAVAILABLE, str(exc)) from None

        return net.Reply(dm.GetFileReply(name, manifest.size_bytes, manifest.file_hash), body)

    async def _list_files(self, request: net.IncomingRequest) -> dm.ListFilesReply:
        """One page of live files, read from every node that may hold names (quorum_list.py).

        Every ring member is asked (and live nodes out of the ring, which may still
        hold what they are handing off), except members membership holds dead and
        peers that failed in the last ``replica_backoff_s``. Each pages through its
        index from ``after``; the answer says how much of the ring had enough of its
        replicas answer, and which nodes did not.
        """
        authorize(request, Operation.LIST)
        msg = request.msg
        prefix = msg.prefix
        if len(prefix.encode("utf-8", "surrogatepass")) > PREFIX_BYTES_MAX:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, f"a prefix is at most {PREFIX_BYTES_MAX} bytes")
        ring = self.view.ring()
        # Not asked: members membership holds dead, and peers that failed within
        # replica_backoff_s (a frozen node would cost every page a replica timeout).
        skipped = {m.node_id: "dead (membership)" for m in self.view.members() if m.state is MemberState.DEAD}
        for node_id in self.view.health.backing_off(self.clock.monotonic_s()):
            skipped.setdefault(node_id, f"failed in the last {self.config.replica_backoff_s:g} s")
        skipped.pop(self.node_id, None)
        everyone = self.view.everyone(ring)
        unanswered = {node_id: why for node_id, why in skipped.items() if node_id in everyone}
        merge = ListMerge(msg.limit, msg.after)
        page_names = min(msg.limit, LIST_PAGE_NAMES)

        async def read_page(node_id: str) -> None:
            cursor = merge.cursor(node_id)
            try:
                entries, more = await self._replicas(node_id).list_names(prefix, cursor, page_names)
                _check_page(entries, more, prefix, cursor)
            except ReplicaError as exc:
                log.info("listing at %s failed: %s", node_id[:12], exc)
                unanswered[node_id] = str(exc)[: dm.REASON_CHARS_MAX]
                merge.fail(node_id)
                if node_id != self.node_id:
                    self.view.failed(node_id)
                return
            merge.add(node_id, entries, more)

        to_read = [n for n in everyone if n not in skipped]
        for _ in range(LS_ROUNDS_MAX):
            if not to_read:
                break
            async with trio.open_nursery() as nursery:
                for node_id in to_read:
                    nursery.start_soon(read_page, node_id)
            to_read = merge.to_read()
        page = merge.page()
        # Off the event loop: the first call on a ring walks every token (about 0.1 s at 100 members).
        covered = coverage_of_shares(await self._offload(ring.answered_shares, self.config.rf,
                                                         set(ring.members) - set(unanswered)),
                                     list_quorum(self.config.rf, self.config.w, len(ring)))
        return dm.ListFilesReply(
            files=tuple(
                dm.FileInfo(e.name, e.manifest.size_bytes, e.manifest.created_ms, e.version.wall_ms,
                            e.version.logical)
                for e in page.entries
            ),
            complete=covered.complete,
            next_after=page.next_after,
            replicas_needed=covered.needed,
            coverage=tuple(dm.RangeAnswers(k, ppm) for k, ppm in sorted(covered.ring_ppm_by_answers.items())),
            unanswered=tuple(dm.Unanswered(n, why) for n, why in sorted(unanswered.items())),
        )

    async def _remove_file(self, request: net.IncomingRequest) -> dm.RemoveFileReply:
        name = check_name(request.msg.name)
        client = authorize(request, Operation.REMOVE, name)
        await self.remove(name, client=client)
        return dm.RemoveFileReply(name)

    async def _stat_file(self, request: net.IncomingRequest) -> dm.StatFileReply:
        name = check_name(request.msg.name)
        authorize(request, Operation.STAT, name)
        entry = await self._existing_file(name)
        manifest = entry.manifest
        ids = [ref.chunk_id for ref in manifest.chunks]
        holders: dict[bytes, list[str]] = {cid: [] for cid in ids}

        async def ask(node_id: str) -> None:
            replica = self._replicas(node_id)
            for start in range(0, len(ids), HAS_CHUNKS_MAX):
                batch = tuple(ids[start : start + HAS_CHUNKS_MAX])
                try:
                    present = await replica.has_chunks(batch)
                except ReplicaError as exc:
                    log.info("asking %s for chunks failed: %s", node_id[:12], exc)
                    return
                for cid, here in zip(batch, present):
                    if here:
                        holders[cid].append(node_id)

        async with trio.open_nursery() as nursery:
            for node_id in self.view.live_nodes():
                nursery.start_soon(ask, node_id)
        return dm.StatFileReply(
            name=name,
            size_bytes=manifest.size_bytes,
            file_hash=manifest.file_hash,
            created_ms=manifest.created_ms,
            version_wall_ms=entry.version.wall_ms,
            version_logical=entry.version.logical,
            writer=entry.writer,
            chunks=tuple(
                dm.ChunkInfo(ref.chunk_id, ref.size_bytes, tuple(sorted(holders[ref.chunk_id])))
                for ref in manifest.chunks
            ),
            writer_client=entry.client,
        )


def _put_reply(entry: NameEntry) -> dm.PutFileReply:
    manifest = entry.manifest
    return dm.PutFileReply(
        entry.name, manifest.size_bytes, manifest.file_hash, entry.version.wall_ms,
        entry.version.logical, len(manifest.chunks),
    )


async def _pieces(content: bytes) -> AsyncIterator[bytes]:
    """A file already in memory, as the stream of pieces a put reads."""
    if content:
        yield content


def _check_page(entries: list[NameEntry], more: bool, prefix: str, cursor: str) -> None:
    """A page the merge can rely on: names with the prefix, after the cursor, in order."""
    if more and not entries:
        raise BadReply("a page that says more but holds nothing")
    previous = cursor
    for entry in entries:
        if not entry.name.startswith(prefix) or (previous and entry.name <= previous):
            raise BadReply("names out of order, or outside the prefix asked")
        previous = entry.name
