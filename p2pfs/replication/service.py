"""The data service: any node coordinates puts and gets; every node stores replicas.

A put streams the client's bytes through the coordinator: it cuts them into
chunks, hashes each (BLAKE3, in a worker thread), and writes each chunk to its
``rf`` preference nodes in parallel, at most ``put_window_chunks`` chunks in
flight. A chunk counts as written at ``w`` acknowledgements; a replica that is
down, suspected, or fails is replaced by the next fallback node, which keeps a
hint and hands the chunk over when the owner is back. The name entry (with the
manifest inline) is written last with the same quorum, so a client hears
"stored" only when everything is durable at quorum, and a failed put leaves the
name as it was.

A get reads the name from ``r`` replicas, takes the newest (last writer wins on
HLC and node id) and repairs replicas that answered with something older. It
then fetches chunks ahead of the client, each from the best replica first,
verifying every chunk against its id and moving on to the next replica on error,
timeout or corruption.

All decisions are in ``placement`` (pure); this module carries them out.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import random
import time
from pathlib import Path
from typing import AsyncIterable, Awaitable, Callable, Iterable

import trio

from p2pfs import net, wire
from p2pfs.address import Address
from p2pfs.identity import short_id
from p2pfs.membership import Member, MemberState
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.hints import HINTS_FILE_NAME, HintKind, HintStore
from p2pfs.replication.repair import Healer
from p2pfs.replication.placement import (
    ReplicaHealth,
    Target,
    name_key,
    newest,
    quorum_error,
    read_order,
    ring_members,
    stale_replicas,
    unavailable_members,
    write_plan,
)
from p2pfs.ring import Ring
from p2pfs.storage import (
    NAMES_FILE_NAME,
    BadName,
    ChunkCorrupt,
    ChunkMismatch,
    ChunkMissing,
    ChunkStore,
    ClockDriftError,
    FileHasher,
    HybridClock,
    ManifestBuilder,
    ManifestError,
    NameEntry,
    NameIndex,
    StorageError,
    StorageFull,
    chunk_id_of,
    validate_name,
)
from p2pfs.wire import ErrorCode

log = logging.getLogger(__name__)

# Names one ListNames answer carries; a listing pages through a node's index.
LIST_PAGE_NAMES = 1000
# Names `ls` returns at most; past it, the client is asked for a longer prefix.
LIST_NAMES_MAX = 100_000
# Chunk ids one HasChunks request may ask about.
HAS_CHUNKS_MAX = 4096
# Background repairs (read repair of names and chunks) running at once; more are dropped
# (anti-entropy catches what is dropped), so a burst of reads cannot pile up tasks.
REPAIRS_CONCURRENT_MAX = 16
# Longest name prefix accepted by ls (a prefix is at most a name).
PREFIX_BYTES_MAX = 1024


class QuorumError(Exception):
    """A write or read did not reach its quorum."""


Route = Callable[[net.IncomingRequest], Awaitable[wire.Message | net.Reply]]


@dataclasses.dataclass(slots=True)
class _Slot:
    """One chunk being fetched ahead of the client."""

    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    data: bytes | None = None
    error: str | None = None


async def _to_thread(fn: Callable, *args):
    return await trio.to_thread.run_sync(fn, *args)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _reason(exc: BaseException) -> str:
    if isinstance(exc, net.RemoteError):
        return exc.text
    if isinstance(exc, ChunkCorrupt):
        return "corrupt copy"
    return str(exc) or type(exc).__name__


class DataService:
    """Chunk store, name index, hints, and the put/get/ls/rm/stat coordinators."""

    def __init__(
        self,
        *,
        node_id: str,
        data_dir: Path,
        capacity_bytes: int,
        config: ReplicationConfig,
        endpoint: net.Endpoint,
        members: Callable[[], list[Member]],
        offload: Callable[..., Awaitable] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        # Disk work and hashing of large buffers leave the event loop through this
        # (a worker thread); the simulation runs them inline, as time must not pass.
        self._offload = offload or _to_thread
        self.rng = rng or random.Random()
        self.config = config
        self._data_dir = data_dir
        self._capacity_bytes = capacity_bytes
        self._endpoint = endpoint
        self._members = members
        self._hlc = HybridClock()
        self._health = ReplicaHealth(config.replica_backoff_s)
        self._ring: Ring = Ring([])
        self._ring_key: frozenset = frozenset()
        self._repairs = trio.CapacityLimiter(REPAIRS_CONCURRENT_MAX)
        self._nursery: trio.Nursery | None = None
        self.store: ChunkStore | None = None
        self.names: NameIndex | None = None
        self.hints: HintStore | None = None
        # Chunks found corrupt here and not yet stored again: fsck reports them.
        self.corrupt_pending: set[bytes] = set()
        # Members handing off to leave (this one too, when it leaves), and until when
        # (trio clock) they stay out of the ring: see Healer.hand_off_everything.
        self.leaving: dict[str, float] = {}
        self.healer = Healer(self)

    # -- lifecycle ------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Open the stores (scanning the chunk dir in a thread), then deliver hints forever."""
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data dir {self._data_dir}: {exc.strerror}") from None
        self.store = await self._offload(ChunkStore, self._data_dir, self._capacity_bytes)
        self.names = await self._offload(NameIndex, self._data_dir / NAMES_FILE_NAME)
        self.hints = await self._offload(HintStore, self._data_dir / HINTS_FILE_NAME)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._deliver_hints_forever)
                await nursery.start(self.healer.run)
                task_status.started()
        finally:
            self.names.close()
            self.hints.close()

    def routes(self) -> dict[type, Route]:
        return {
            dm.StoreChunk: self._on_store_chunk,
            dm.FetchChunk: self._on_fetch_chunk,
            dm.HasChunks: self._on_has_chunks,
            dm.PutName: self._on_put_name,
            dm.GetName: self._on_get_name,
            dm.ListNames: self._on_list_names,
            dm.PutFile: self._put_file,
            dm.GetFile: self._get_file,
            dm.ListFiles: self._list_files,
            dm.RemoveFile: self._remove_file,
            dm.StatFile: self._stat_file,
            **self.healer.routes(),
        }

    # -- the ring and the members -------------------------------------------

    def ring(self) -> Ring:
        """The current ring, rebuilt only when the set of ring members changed."""
        now_s = trio.current_time()
        for node_id in [n for n, until in self.leaving.items() if until <= now_s]:
            del self.leaving[node_id]
        chosen = frozenset(
            ring_members(self._members(), now_s, self.config.dead_grace_s, self.leaving)
        )
        if chosen != self._ring_key:
            self._ring = Ring(chosen)
            self._ring_key = chosen
            log.info("ring rebuilt: %d members", len(chosen))
        return self._ring

    def _unavailable(self) -> set[str]:
        down = unavailable_members(self._members()) | self._health.backing_off(trio.current_time())
        down.discard(self.node_id)
        return down

    def _address_of(self, node_id: str) -> Address:
        for member in self._members():
            if member.node_id == node_id:
                return member.address
        raise net.ConnectError(f"node {short_id(node_id)} is not a known member")

    async def _call(self, node_id: str, msg: wire.Message) -> wire.Message:
        return await self._endpoint.request(
            self._address_of(node_id), msg, timeout_s=self.config.replica_timeout_s, node_id=node_id
        )

    def _quorum(self, wanted: int, ring: Ring) -> int:
        """A quorum cannot exceed the number of ring members (a cluster smaller than rf)."""
        return min(wanted, len(ring))

    # -- replica writes -------------------------------------------------------

    async def _replicate(self, key: bytes, what: str, write: Callable[[Target], Awaitable[None]]) -> int:
        """Write to the key's replicas (stand-ins for the unavailable); raise QuorumError below w."""
        ring = self.ring()
        targets, spare = write_plan(ring, key, self.config.rf, self._unavailable())
        needed = self._quorum(self.config.w, ring)
        acks = 0
        errors: list[str] = []

        async def attempt(target: Target) -> None:
            nonlocal acks
            while True:
                try:
                    await write(target)
                except (net.NetError, net.RemoteError, StorageError) as exc:
                    errors.append(f"{short_id(target.node_id)}: {_reason(exc)}")
                    if target.node_id != self.node_id:
                        self._health.failed(target.node_id, trio.current_time())
                    if not spare:
                        return
                    target = Target(spare.pop(0), hint_for=target.hint_for or target.node_id)
                    continue
                self._health.succeeded(target.node_id)
                acks += 1
                return

        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(attempt, target)
        if acks < needed:
            raise QuorumError(quorum_error(what, acks, needed, errors))
        return acks

    async def _store_on(self, target: Target, chunk_id: bytes, data: bytes) -> None:
        if target.node_id == self.node_id:
            await self._offload(self._store_local, chunk_id, data, target.hint_for)
        else:
            await self._call(target.node_id, dm.StoreChunk(chunk_id, data, target.hint_for))

    def _store_local(self, chunk_id: bytes, data: bytes, hint_for: str) -> None:
        self.store.put(chunk_id, data)
        self.corrupt_pending.discard(chunk_id)
        if hint_for:
            self.hints.add(hint_for, HintKind.CHUNK, chunk_id, _wall_ms())

    async def _put_name_on(self, target: Target, entry: NameEntry) -> None:
        if target.node_id == self.node_id:
            await self._offload(self._apply_local, entry, target.hint_for)
        else:
            await self._call(target.node_id, dm.PutName(entry.encode(), target.hint_for))

    def _apply_local(self, entry: NameEntry, hint_for: str) -> bool:
        applied = self.names.apply(entry)
        if hint_for:
            self.hints.add(hint_for, HintKind.NAME, entry.name.encode("utf-8"), _wall_ms())
        return applied

    def _observe(self, entry: NameEntry) -> None:
        try:
            self._hlc.observe(entry.version, _wall_ms())
        except ClockDriftError as exc:
            log.warning("ignoring a version from the future: %s", exc)

    # -- node-to-node handlers ----------------------------------------------

    async def _on_store_chunk(self, request: net.IncomingRequest) -> dm.StoreChunkReply:
        msg = request.msg
        if msg.hint_for and len(msg.hint_for) != 64:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, "hint_for is not a node id")
        try:
            await self._offload(self._store_local, msg.chunk_id, msg.data, msg.hint_for)
        except ChunkMismatch as exc:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, str(exc)) from None
        except StorageFull as exc:
            raise net.RemoteError(ErrorCode.STORAGE_FULL, str(exc)) from None
        return dm.StoreChunkReply(True)

    async def _on_fetch_chunk(self, request: net.IncomingRequest) -> dm.ChunkData:
        try:
            data = await self._offload(self.store.get, request.msg.chunk_id)
        except ChunkMissing:
            raise net.RemoteError(ErrorCode.NOT_FOUND, "chunk not held here") from None
        except ChunkCorrupt:
            raise net.RemoteError(ErrorCode.NOT_FOUND, "chunk was corrupt here (quarantined)") from None
        return dm.ChunkData(data)

    async def _on_has_chunks(self, request: net.IncomingRequest) -> dm.HasChunksReply:
        ids = request.msg.chunk_ids
        if len(ids) > HAS_CHUNKS_MAX:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, f"at most {HAS_CHUNKS_MAX} ids per request")
        present = await self._offload(lambda: tuple(self.store.has(i) for i in ids))
        return dm.HasChunksReply(present)

    async def _on_put_name(self, request: net.IncomingRequest) -> dm.PutNameReply:
        try:
            entry = NameEntry.decode(request.msg.entry)
        except ManifestError as exc:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, f"bad name entry: {exc}") from None
        self._observe(entry)
        applied = await self._offload(self._apply_local, entry, request.msg.hint_for)
        return dm.PutNameReply(applied)

    async def _on_get_name(self, request: net.IncomingRequest) -> dm.GetNameReply:
        name = self._check_name(request.msg.name)
        entry = await self._offload(self.names.get, name)
        return dm.GetNameReply(None if entry is None else entry.encode())

    async def _on_list_names(self, request: net.IncomingRequest) -> dm.ListNamesReply:
        msg = request.msg
        limit = max(1, min(msg.limit, LIST_PAGE_NAMES))
        entries = await self._offload(self._list_local, msg.prefix, msg.start_after, limit + 1)
        return dm.ListNamesReply(tuple(e.encode() for e in entries[:limit]), len(entries) > limit)

    def _list_local(self, prefix: str, start_after: str, limit: int) -> list[NameEntry]:
        found = (e for e in self.names.list(prefix, include_tombstones=True) if e.name > start_after)
        return list(itertools.islice(found, limit))

    # -- reading a name ---------------------------------------------------------

    @staticmethod
    def _check_name(name: str) -> str:
        try:
            return validate_name(name)
        except BadName as exc:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, str(exc)) from None

    async def _get_name_from(self, node_id: str, name: str) -> NameEntry | None:
        if node_id == self.node_id:
            return await self._offload(self.names.get, name)
        reply = await self._call(node_id, dm.GetName(name))
        if reply.entry is None:
            return None
        try:
            entry = NameEntry.decode(reply.entry)
        except ManifestError as exc:
            raise net.RemoteError(ErrorCode.CORRUPT, f"bad name entry: {exc}") from None
        if entry.name != name:
            raise net.RemoteError(ErrorCode.CORRUPT, "answered with another name's entry")
        return entry

    async def read_name(self, name: str) -> NameEntry | None:
        """The newest entry for ``name`` among ``r`` replicas; stale ones are repaired.

        A stand-in's "nothing here" does not count towards ``r`` (it knows of the
        name only if it holds it under a hint), and "absent" is answered only once
        every reachable preferred replica has said so: otherwise a stand-in that
        answers first could hide a write that the preferred replicas hold (Riak's
        notfound_ok = false). Short of ``r`` answers, a version found is returned
        rather than an error; "absent" is never answered short of ``r``.
        """
        ring = self.ring()
        key = name_key(name)
        preferred = set(ring.preference_list(key, self.config.rf))
        targets, spare = write_plan(ring, key, self.config.rf, self._unavailable())
        needed = self._quorum(self.config.r, ring)
        answers: dict[str, NameEntry | None] = {}
        hint_of: dict[str, str] = {t.node_id: t.hint_for for t in targets}
        errors: list[str] = []
        enough = trio.Event()
        outstanding = len(targets)
        preferred_waiting = {t.node_id for t in targets} & preferred
        counted = 0

        async def ask(target: Target) -> None:
            nonlocal outstanding, counted
            while True:
                try:
                    entry = await self._get_name_from(target.node_id, name)
                    answers[target.node_id] = entry
                    if entry is not None or target.node_id in preferred:
                        counted += 1
                    break
                except (net.NetError, net.RemoteError) as exc:
                    errors.append(f"{short_id(target.node_id)}: {_reason(exc)}")
                    self._health.failed(target.node_id, trio.current_time())
                    preferred_waiting.discard(target.node_id)
                    if not spare:
                        break
                    target = Target(spare.pop(0), hint_for=target.hint_for or target.node_id)
                    hint_of[target.node_id] = target.hint_for
            preferred_waiting.discard(target.node_id)
            outstanding -= 1
            found = any(entry is not None for entry in answers.values())
            if (counted >= needed and (found or not preferred_waiting)) or outstanding == 0:
                enough.set()

        if targets:
            async with trio.open_nursery() as nursery:
                for target in targets:
                    nursery.start_soon(ask, target)
                await enough.wait()
                nursery.cancel_scope.cancel()
        winner = newest(answers.values())
        if counted < needed and winner is None:
            raise QuorumError(quorum_error(f"reading name {name!r}", counted, needed, errors))
        if winner is not None:
            self._observe(winner)
            for node_id in stale_replicas(answers, winner):
                self._spawn_repair(self._put_name_on, Target(node_id, hint_of.get(node_id, "")), winner)
        return winner

    def _spawn_repair(self, fn: Callable[..., Awaitable[None]], *args) -> None:
        """Run a repair in the background if there is room; anti-entropy covers what is dropped."""
        if self._nursery is None or self._repairs.available_tokens == 0:
            return

        async def repair() -> None:
            async with self._repairs:
                try:
                    await fn(*args)
                except (net.NetError, net.RemoteError, StorageError) as exc:
                    log.debug("repair %s failed: %s", fn.__name__, exc)

        self._nursery.start_soon(repair)

    async def _must_read(self, name: str) -> NameEntry | None:
        try:
            return await self.read_name(name)
        except QuorumError as exc:
            raise net.RemoteError(ErrorCode.UNAVAILABLE, str(exc)) from None

    # -- put --------------------------------------------------------------------

    async def _put_file(self, request: net.IncomingRequest) -> dm.PutFileReply:
        msg = request.msg
        name = self._check_name(msg.name)
        if request.body is None:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, "a put carries the file as its body")
        entry = await self.put(name, request.body, msg.size_bytes)
        manifest = entry.manifest
        return dm.PutFileReply(
            name, manifest.size_bytes, manifest.file_hash, entry.version.wall_ms,
            entry.version.logical, len(manifest.chunks),
        )

    async def put(self, name: str, pieces: AsyncIterable[bytes], size_bytes: int = -1) -> NameEntry:
        """Store a file from a stream of byte pieces of any size; return its name entry.

        Raises RemoteError (UNAVAILABLE when a quorum is not met, BAD_REQUEST when
        the stream does not have the announced size). The name changes only on success.
        """
        try:
            await self.read_name(name)  # orders this version after the one it replaces
        except QuorumError as exc:
            log.info("putting %r without reading its current version: %s", name, exc)
        chunk_size = self.config.chunk_size_bytes
        builder = ManifestBuilder(chunk_size)
        hasher = FileHasher()
        window = trio.Semaphore(self.config.put_window_chunks)
        failures: list[str] = []

        def hash_chunk(data: bytes) -> bytes:
            hasher.update(data)
            return chunk_id_of(data)

        async with trio.open_nursery() as nursery:

            async def write_chunk(index: int, chunk_id: bytes, data: bytes) -> None:
                try:
                    await self._replicate(
                        chunk_id, f"chunk {index}", lambda t: self._store_on(t, chunk_id, data)
                    )
                except QuorumError as exc:
                    failures.append(str(exc))
                    nursery.cancel_scope.cancel()
                finally:
                    window.release()

            chunk_indexes = itertools.count()

            async def dispatch(data: bytes) -> None:
                chunk_id = await self._offload(hash_chunk, data)
                builder.add(chunk_id, len(data))
                await window.acquire()
                nursery.start_soon(write_chunk, next(chunk_indexes), chunk_id, data)

            buffer = bytearray()
            async for piece in pieces:
                buffer += piece
                while len(buffer) >= chunk_size:
                    data = bytes(buffer[:chunk_size])
                    del buffer[:chunk_size]
                    await dispatch(data)
            if buffer:
                await dispatch(bytes(buffer))
        if failures:
            raise net.RemoteError(ErrorCode.UNAVAILABLE, f"put {name!r} failed: {failures[0]}")
        if size_bytes >= 0 and hasher.size_bytes != size_bytes:
            raise net.RemoteError(
                ErrorCode.BAD_REQUEST,
                f"received {hasher.size_bytes} bytes but the client announced {size_bytes} "
                "(did the file change while it was read?)",
            )
        wall_ms = _wall_ms()
        manifest = builder.finish(hasher.digest(), wall_ms)
        entry = NameEntry(name, self._hlc.now(wall_ms), self.node_id, manifest)
        try:
            await self._replicate(name_key(name), f"name {name!r}", lambda t: self._put_name_on(t, entry))
        except QuorumError as exc:
            raise net.RemoteError(ErrorCode.UNAVAILABLE, f"put {name!r} failed: {exc}") from None
        log.info("put %r: %d bytes in %d chunks", name, manifest.size_bytes, len(manifest.chunks))
        return entry

    # -- get --------------------------------------------------------------------

    async def _get_file(self, request: net.IncomingRequest) -> net.Reply:
        name = self._check_name(request.msg.name)
        manifest = (await self._existing_file(name)).manifest

        async def body(send: Callable[[bytes], Awaitable[None]]) -> None:
            await self._stream_chunks(manifest.chunks, send)

        return net.Reply(dm.GetFileReply(name, manifest.size_bytes, manifest.file_hash), body)

    async def _stream_chunks(self, refs, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send chunks in order while up to ``get_window_chunks`` are fetched ahead."""
        pending = iter(enumerate(refs))
        slots: collections.deque[_Slot] = collections.deque()
        failure: str | None = None
        async with trio.open_nursery() as nursery:

            def start_next() -> None:
                item = next(pending, None)
                if item is not None:
                    slot = _Slot()
                    slots.append(slot)
                    nursery.start_soon(self._fetch_into, slot, item[0], item[1].chunk_id)

            for _ in range(self.config.get_window_chunks):
                start_next()
            while slots:
                slot = slots.popleft()
                await slot.done.wait()
                if slot.error is not None:
                    failure = slot.error
                    nursery.cancel_scope.cancel()
                    break
                data, slot.data = slot.data, None
                start_next()
                await send(data)
        # Raised outside the nursery, which would wrap it in a group that the transport
        # reports as an internal error instead of this reason.
        if failure is not None:
            raise net.RemoteError(ErrorCode.UNAVAILABLE, failure)

    async def _fetch_into(self, slot: _Slot, index: int, chunk_id: bytes) -> None:
        try:
            slot.data = await self.fetch_chunk(chunk_id, index)
        except QuorumError as exc:
            slot.error = str(exc)
        finally:
            slot.done.set()

    async def fetch_chunk(self, chunk_id: bytes, index: int = 0) -> bytes:
        """A verified copy of a chunk, from the best replica that has a good one.

        Replicas found without it (or with a corrupt copy) while a later one
        served it are repaired in the background.
        """
        held = await self._offload(self.store.has, chunk_id)
        ring = self.ring()
        order = read_order(
            ring, chunk_id, self.config.rf, self._unavailable(),
            holder=self.node_id if held else None, rotate=index,
        )
        if not held and self.node_id in ring.preference_list(chunk_id, self.config.rf):
            order.append(self.node_id)  # in case it arrived since (cheap: a stat)
        errors: list[str] = []
        lacking: list[str] = []
        for node_id in order:
            try:
                if node_id == self.node_id:
                    data = await self._offload(self.store.get, chunk_id)
                else:
                    reply = await self._call(node_id, dm.FetchChunk(chunk_id))
                    data = reply.data
                    if await self._offload(chunk_id_of, data) != chunk_id:
                        raise net.RemoteError(ErrorCode.CORRUPT, "sent bytes that do not match the id")
            except (ChunkMissing, ChunkCorrupt) as exc:
                errors.append(f"{short_id(node_id)}: {_reason(exc)}")
                lacking.append(node_id)
                if isinstance(exc, ChunkCorrupt):
                    self.corrupt_pending.add(chunk_id)
                continue
            except net.RemoteError as exc:
                errors.append(f"{short_id(node_id)}: {_reason(exc)}")
                if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.CORRUPT):
                    lacking.append(node_id)
                continue
            except net.NetError as exc:
                errors.append(f"{short_id(node_id)}: {_reason(exc)}")
                self._health.failed(node_id, trio.current_time())
                continue
            preferred = set(ring.preference_list(chunk_id, self.config.rf))
            for other in lacking:
                if other in preferred:
                    self._spawn_repair(self._store_on, Target(other), chunk_id, data)
            return data
        raise QuorumError(f"chunk {chunk_id.hex()[:16]}: no replica could serve it ({'; '.join(errors)})")

    async def repair_chunk(self, chunk_id: bytes) -> bool:
        """Fetch a good copy of a chunk this node lost (to corruption) and store it again."""
        try:
            data = await self.fetch_chunk(chunk_id)
        except QuorumError as exc:
            log.warning("cannot repair chunk %s yet: %s", chunk_id.hex()[:16], exc)
            return False
        await self._offload(self._store_local, chunk_id, data, "")
        log.info("repaired chunk %s from a replica", chunk_id.hex()[:16])
        return True

    # -- ls, rm, stat -------------------------------------------------------------

    async def collect_names(
        self, node_ids: Iterable[str], prefix: str = "", names_max: int | None = None
    ) -> tuple[dict[str, NameEntry], dict[str, dict[str, tuple]], list[str]]:
        """Every entry with ``prefix`` held by the given nodes, page by page.

        Returns the newest entry of each name, which version each node holds of
        each name, and the nodes that did not answer. Raises RemoteError past
        ``names_max`` names.
        """
        merged: dict[str, NameEntry] = {}
        holders: dict[str, dict[str, tuple]] = {}
        unreachable: list[str] = []

        async def collect(node_id: str) -> None:
            start_after = ""
            while True:
                try:
                    if node_id == self.node_id:
                        entries = await self._offload(self._list_local, prefix, start_after, LIST_PAGE_NAMES + 1)
                        more = len(entries) > LIST_PAGE_NAMES
                        entries = entries[:LIST_PAGE_NAMES]
                    else:
                        reply = await self._call(node_id, dm.ListNames(prefix, start_after, LIST_PAGE_NAMES))
                        entries = [NameEntry.decode(raw) for raw in reply.entries]
                        more = reply.more
                except (net.NetError, net.RemoteError, ManifestError) as exc:
                    log.info("listing names on %s failed: %s", short_id(node_id), exc)
                    unreachable.append(node_id)
                    return
                for entry in entries:
                    holders.setdefault(entry.name, {})[node_id] = entry.key
                    held = merged.get(entry.name)
                    if held is None or entry.supersedes(held):
                        merged[entry.name] = entry
                if names_max is not None and len(merged) > names_max:
                    raise net.RemoteError(
                        ErrorCode.BAD_REQUEST, f"more than {names_max} names: give a longer prefix"
                    )
                if not more or not entries:
                    return
                start_after = entries[-1].name

        async with trio.open_nursery() as nursery:
            for node_id in node_ids:
                nursery.start_soon(collect, node_id)
        return merged, holders, unreachable

    def _live_nodes(self) -> list[str]:
        live = [m.node_id for m in self._members() if m.state is MemberState.ALIVE]
        return live if self.node_id in live else [*live, self.node_id]

    async def _list_files(self, request: net.IncomingRequest) -> dm.ListFilesReply:
        prefix = request.msg.prefix
        if len(prefix.encode("utf-8", "surrogatepass")) > PREFIX_BYTES_MAX:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, f"a prefix is at most {PREFIX_BYTES_MAX} bytes")
        merged, _, unreachable = await self.collect_names(self._live_nodes(), prefix, LIST_NAMES_MAX)
        files = tuple(
            dm.FileInfo(e.name, e.manifest.size_bytes, e.manifest.created_ms, e.version.wall_ms,
                        e.version.logical)
            for _, e in sorted(merged.items())
            if e.manifest is not None
        )
        return dm.ListFilesReply(files, not unreachable)

    async def _existing_file(self, name: str) -> NameEntry:
        """The newest entry of a file that exists; RemoteError NOT_FOUND otherwise."""
        entry = await self._must_read(name)
        if entry is None or entry.manifest is None:
            raise net.RemoteError(ErrorCode.NOT_FOUND, f"no file named {name!r}")
        return entry

    async def _remove_file(self, request: net.IncomingRequest) -> dm.RemoveFileReply:
        name = self._check_name(request.msg.name)
        await self.remove(name)
        return dm.RemoveFileReply(name)

    async def remove(self, name: str) -> None:
        """Write a tombstone for ``name`` at quorum; RemoteError NOT_FOUND if there is no file."""
        await self._existing_file(name)
        tombstone = NameEntry(name, self._hlc.now(_wall_ms()), self.node_id, None)
        try:
            await self._replicate(name_key(name), f"name {name!r}", lambda t: self._put_name_on(t, tombstone))
        except QuorumError as exc:
            raise net.RemoteError(ErrorCode.UNAVAILABLE, f"rm {name!r} failed: {exc}") from None
        log.info("removed %r", name)

    async def _stat_file(self, request: net.IncomingRequest) -> dm.StatFileReply:
        name = self._check_name(request.msg.name)
        entry = await self._existing_file(name)
        manifest = entry.manifest
        ids = [ref.chunk_id for ref in manifest.chunks]
        holders: dict[bytes, list[str]] = {cid: [] for cid in ids}
        live = self._live_nodes()

        async def ask(node_id: str) -> None:
            for start in range(0, len(ids), HAS_CHUNKS_MAX):
                batch = tuple(ids[start : start + HAS_CHUNKS_MAX])
                try:
                    if node_id == self.node_id:
                        present = await self._offload(lambda: [self.store.has(i) for i in batch])
                    else:
                        present = (await self._call(node_id, dm.HasChunks(batch))).present
                except (net.NetError, net.RemoteError) as exc:
                    log.info("asking %s for chunks failed: %s", short_id(node_id), exc)
                    return
                for cid, here in zip(batch, present):
                    if here:
                        holders[cid].append(node_id)

        async with trio.open_nursery() as nursery:
            for node_id in live:
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
        )

    # -- hinted handoff -------------------------------------------------------------

    async def _deliver_hints_forever(self) -> None:
        while True:
            await trio.sleep(self.config.hint_delivery_interval_s)
            await self.deliver_hints()

    async def deliver_hints(self) -> int:
        """Hand hinted chunks and names to owners that are alive again; returns how many."""
        expired = await self._offload(
            self.hints.expire, _wall_ms() - int(self.config.hint_ttl_s * 1000)
        )
        if expired:
            log.info("dropped %d expired hints", expired)
        alive = {m.node_id for m in self._members() if m.state is MemberState.ALIVE}
        in_ring = self.ring().members
        delivered = 0
        for owner in await self._offload(self.hints.owners):
            if owner not in in_ring:
                # Left, or dead past its grace period: it will not take these back. The
                # keys now belong to others, and anti-entropy and hand-off place them.
                dropped = await self._offload(self.hints.remove_owner, owner)
                log.info("dropped %d hints for %s, which is out of the ring", dropped, short_id(owner))
                continue
            if owner not in alive or owner == self.node_id:
                continue
            for hint in await self._offload(self.hints.for_owner, owner):
                try:
                    if hint.kind is HintKind.CHUNK:
                        data = await self._offload(self.store.get, hint.key)
                        await self._call(owner, dm.StoreChunk(hint.key, data, ""))
                    else:
                        entry = await self._offload(self.names.get, hint.key.decode("utf-8"))
                        if entry is not None:
                            await self._call(owner, dm.PutName(entry.encode(), ""))
                except (ChunkMissing, ChunkCorrupt):
                    pass  # nothing left to hand over; anti-entropy will find another copy
                except (net.NetError, net.RemoteError) as exc:
                    log.info("handing hints to %s paused: %s", short_id(owner), _reason(exc))
                    break
                await self._offload(self.hints.remove, hint)
                delivered += 1
                if hint.kind is HintKind.CHUNK:
                    await self._drop_if_not_ours(hint.key)
            if delivered:
                log.info("handed %d hinted items to %s", delivered, short_id(owner))
        return delivered

    async def _drop_if_not_ours(self, chunk_id: bytes) -> None:
        """A stand-in's copy goes once no owner waits for it and the ring does not place it here."""
        if self.node_id in self.ring().preference_list(chunk_id, self.config.rf):
            return

        def drop() -> None:
            if not self.hints.is_hinted(HintKind.CHUNK, chunk_id):
                self.store.delete(chunk_id)

        await self._offload(drop)
