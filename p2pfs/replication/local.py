"""This node's own replica: its chunk store, name index and hints.

``LocalStore`` is the synchronous part (disk I/O, run in a worker thread): what
a write of a chunk or a name does here, including the hint a stand-in keeps.
``LocalReplica`` puts it behind the same async interface as a peer
(``replicas.RemoteReplica``), so that a coordinator or a background job writes
to "a replica" and never asks whether it is itself.
"""

from __future__ import annotations

import functools
import itertools
from typing import Awaitable, Callable

from p2pfs.clock import Clock
from p2pfs.replication.errors import LocalFailure, ReplicaLacks
from p2pfs.replication.hints import HintKind, HintStore
from p2pfs.storage import ChunkCorrupt, ChunkMissing, ChunkStore, NameEntry, NameIndex, StorageError
from p2pfs.storage.hlc import check_not_ahead
from p2pfs.storage.names import NameReadDeferred

Offload = Callable[..., Awaitable]


class LocalStore:
    """The node's stores and the bookkeeping that goes with a write. Thread-safe, blocking."""

    def __init__(self, chunks: ChunkStore, names: NameIndex, hints: HintStore, clock: Clock) -> None:
        self.chunks = chunks
        self.names = names
        self.hints = hints
        self._clock = clock
        chunks.count_also(lambda: names.inline_bytes)  # small files held inline use the same capacity
        # Chunks found corrupt here and not yet stored again: fsck reports them.
        self.corrupt_pending: set[bytes] = set()

    def store_chunk(self, chunk_id: bytes, data: bytes, hint_for: str, *, hashed: bool = False) -> None:
        """Write a chunk (``hashed``: see ``ChunkStore.put``) and the hint a stand-in keeps."""
        self.chunks.put(chunk_id, data, hashed=hashed)
        self.corrupt_pending.discard(chunk_id)
        if hint_for:
            self.hints.add(hint_for, HintKind.CHUNK, chunk_id, self._clock.wall_ms())

    def check_version(self, entry: NameEntry) -> None:
        """ClockDriftError if ``entry``'s version is beyond the allowed clock offset (never stored)."""
        check_not_ahead(entry.version, self._clock.wall_ms())

    def apply(self, entry: NameEntry, hint_for: str) -> bool:
        self.check_version(entry)
        if entry.manifest is not None and entry.manifest.inline:
            self.chunks.check_room(entry.manifest.inline_bytes)  # StorageFull, as for a chunk
        applied = self.names.apply(entry)
        if hint_for:
            self.hints.add(hint_for, HintKind.NAME, entry.name.encode("utf-8"), self._clock.wall_ms())
        return applied

    def has_chunks(self, chunk_ids) -> tuple[bool, ...]:
        return tuple(self.chunks.has(i) for i in chunk_ids)

    def list_names(self, prefix: str, start_after: str, limit: int) -> list[NameEntry]:
        """Up to ``limit`` entries (tombstones too) after ``start_after``, in name order."""
        found = self.names.list(prefix, include_tombstones=True, start_after=start_after)
        return list(itertools.islice(found, limit))

    def list_chunks(self, start_after: bytes, limit: int) -> tuple[list[bytes], list[bytes], bool]:
        """A page of held ids after ``start_after``, the ids pending repair (first page only), more?"""
        # One more than asked tells whether there is more; only the fan-out dirs the page
        # spans are listed, not the whole store (millions of ids).
        page = self.chunks.ids_after(start_after, limit + 1)
        corrupt = sorted(self.corrupt_pending) if not start_after else []
        return page[:limit], corrupt, len(page) > limit

    def drop_unless_hinted(self, chunk_id: bytes) -> bool:
        """Delete our copy unless an owner still waits for it; True if deleted."""
        if self.hints.is_hinted(HintKind.CHUNK, chunk_id):
            return False
        return self.chunks.delete(chunk_id)

    def drop_many_unless_hinted(self, chunk_ids: list[bytes]) -> None:
        """``drop_unless_hinted`` for a batch, its hints asked at once (``HintStore.hinted_among``)."""
        hinted = self.hints.hinted_among(HintKind.CHUNK, chunk_ids)
        for chunk_id in chunk_ids:
            if chunk_id not in hinted:
                self.chunks.delete(chunk_id)


class LocalReplica:
    """This node as a replica: the ``Replica`` interface over ``LocalStore``, off the event loop."""

    def __init__(self, node_id: str, local: LocalStore, offload: Offload) -> None:
        self.node_id = node_id
        self._local = local
        self._offload = offload

    async def store_chunk(self, chunk_id: bytes, data: bytes, hint_for: str = "", *, hashed: bool = False) -> None:
        try:
            await self._offload(functools.partial(self._local.store_chunk, hashed=hashed), chunk_id, data, hint_for)
        except StorageError as exc:
            raise LocalFailure(str(exc)) from exc

    async def fetch_chunk(self, chunk_id: bytes) -> bytes:
        try:
            return await self._offload(self._local.chunks.get, chunk_id)
        except ChunkMissing as exc:
            raise ReplicaLacks(str(exc)) from exc
        except ChunkCorrupt as exc:
            self._local.corrupt_pending.add(chunk_id)
            raise ReplicaLacks("corrupt copy") from exc

    async def has_chunks(self, chunk_ids: tuple[bytes, ...]) -> tuple[bool, ...]:
        return await self._offload(self._local.has_chunks, chunk_ids)

    async def put_name(self, entry: NameEntry, hint_for: str = "") -> bool:
        try:
            return await self._offload(self._local.apply, entry, hint_for)
        except StorageError as exc:
            raise LocalFailure(str(exc)) from exc

    async def get_name(self, name: str) -> NameEntry | None:
        """The entry held here; a damaged row or index fails this replica (LocalFailure), as a peer's would."""
        names = self._local.names
        try:
            try:
                return names.get_nowait(name)  # no thread hop (NameIndex.get_nowait says why)
            except NameReadDeferred:
                return await self._offload(names.get, name)
        except StorageError as exc:
            raise LocalFailure(str(exc)) from exc

    async def list_names(self, prefix: str, start_after: str, limit: int) -> tuple[list[NameEntry], bool]:
        try:
            entries = await self._offload(self._local.list_names, prefix, start_after, limit + 1)
        except StorageError as exc:
            raise LocalFailure(str(exc)) from exc
        return entries[:limit], len(entries) > limit

    async def list_chunks(self, start_after: bytes, limit: int) -> tuple[list[bytes], list[bytes], bool]:
        return await self._offload(self._local.list_chunks, start_after, limit)
