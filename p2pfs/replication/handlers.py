"""What a node answers when another node asks it as a replica: the other side of ``RemoteReplica``.

Each handler checks what the peer sent and maps this node's storage errors to
the wire's error codes; the work is ``LocalStore``'s.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from p2pfs import net, wire
from p2pfs.replication import messages as dm
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.replicas import IDS_PER_MESSAGE_MAX, LIST_PAGE_NAMES
from p2pfs.storage import BadName, ChunkCorrupt, ChunkMismatch, ChunkMissing, ManifestError, NameEntry, StorageFull
from p2pfs.storage import validate_name
from p2pfs.storage.hlc import ClockDriftError
from p2pfs.storage.names import NameReadDeferred
from p2pfs.wire import ErrorCode

# Chunk ids one HasChunks request may ask about.
HAS_CHUNKS_MAX = 4096
# Length of a node id (hex of a SHA-256): what hint_for must be when set.
NODE_ID_CHARS = 64

Route = Callable[[net.IncomingRequest], Awaitable[wire.Message | net.Reply]]


def check_name(name: str) -> str:
    try:
        return validate_name(name)
    except BadName as exc:
        raise net.RemoteError(ErrorCode.BAD_REQUEST, str(exc)) from None


class ReplicaHandlers:
    def __init__(self, local: LocalStore, observe: Callable[[NameEntry], None], offload: Offload) -> None:
        self._local = local
        self._observe = observe
        self._offload = offload

    def routes(self) -> dict[type, Route]:
        return {
            dm.StoreChunk: self.on_store_chunk,
            dm.FetchChunk: self.on_fetch_chunk,
            dm.HasChunks: self.on_has_chunks,
            dm.PutName: self.on_put_name,
            dm.GetName: self.on_get_name,
            dm.ListNames: self.on_list_names,
            dm.ListChunks: self.on_list_chunks,
        }

    async def on_store_chunk(self, request: net.IncomingRequest) -> dm.StoreChunkReply:
        msg = request.msg
        if msg.hint_for and len(msg.hint_for) != NODE_ID_CHARS:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, "hint_for is not a node id")
        try:
            await self._offload(self._local.store_chunk, msg.chunk_id, msg.data, msg.hint_for)
        except ChunkMismatch as exc:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, str(exc)) from None
        except StorageFull as exc:
            raise net.RemoteError(ErrorCode.STORAGE_FULL, str(exc)) from None
        return dm.StoreChunkReply(True)

    async def on_fetch_chunk(self, request: net.IncomingRequest) -> dm.ChunkData:
        try:
            data = await self._offload(self._local.chunks.get, request.msg.chunk_id)
        except ChunkMissing:
            raise net.RemoteError(ErrorCode.NOT_FOUND, "chunk not held here") from None
        except ChunkCorrupt:
            raise net.RemoteError(ErrorCode.NOT_FOUND, "chunk was corrupt here (quarantined)") from None
        return dm.ChunkData(data)

    async def on_has_chunks(self, request: net.IncomingRequest) -> dm.HasChunksReply:
        ids = request.msg.chunk_ids
        if len(ids) > HAS_CHUNKS_MAX:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, f"at most {HAS_CHUNKS_MAX} ids per request")
        return dm.HasChunksReply(await self._offload(self._local.has_chunks, ids))

    async def on_put_name(self, request: net.IncomingRequest) -> dm.PutNameReply:
        try:
            entry = NameEntry.decode(request.msg.entry)
        except ManifestError as exc:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, f"bad name entry: {exc}") from None
        try:
            self._local.check_version(entry)  # a put, a hint (hint_for) or a hand-off alike
        except ClockDriftError as exc:
            raise net.RemoteError(ErrorCode.BAD_REQUEST, f"name entry {entry.name!r}: {exc}") from None
        self._observe(entry)
        applied = await self._offload(self._local.apply, entry, request.msg.hint_for)
        return dm.PutNameReply(applied)

    async def on_get_name(self, request: net.IncomingRequest) -> dm.GetNameReply:
        name = check_name(request.msg.name)
        names = self._local.names
        try:
            entry = names.get_nowait(name)  # no thread hop (NameIndex.get_nowait says why)
        except NameReadDeferred:
            entry = await self._offload(names.get, name)
        return dm.GetNameReply(None if entry is None else entry.encode())

    async def on_list_names(self, request: net.IncomingRequest) -> dm.ListNamesReply:
        msg = request.msg
        limit = max(1, min(msg.limit, LIST_PAGE_NAMES))
        entries = await self._offload(self._local.list_names, msg.prefix, msg.start_after, limit + 1)
        return dm.ListNamesReply(tuple(e.encode() for e in entries[:limit]), len(entries) > limit)

    async def on_list_chunks(self, request: net.IncomingRequest) -> dm.ListChunksReply:
        limit = max(1, min(request.msg.limit, IDS_PER_MESSAGE_MAX))
        page, corrupt, more = await self._offload(self._local.list_chunks, request.msg.start_after, limit)
        return dm.ListChunksReply(b"".join(page), more, b"".join(corrupt))
