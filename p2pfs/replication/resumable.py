"""Transfers that pick up where an interrupted one stopped: the coordinator's side.

Chunks are content-addressed, so what an interrupted transfer already moved is
named by chunk ids, and nothing needs to be remembered on the node:

- **get**: a client holding the first chunks of a version (verified against the
  version's manifest, which it kept beside its partial file) asks for the rest
  with ``GetFileFrom(name, file_hash, first_chunk)``. The node serves from
  ``first_chunk`` only if the newest version still has that ``file_hash``;
  otherwise it serves the newest version from its start, and the client drops its
  partial copy, so two versions never mix in one file.
- **put**: the client cuts the file itself (at the default chunk size, so its ids
  match those of a put the node cut), asks ``HeldChunks`` which chunks every one
  of their ``rf`` preferred nodes already holds (an interrupted put's chunks stay
  until garbage collection's ``chunk_gc_grace_s``), and sends ``PutFileKnown``
  with the manifest and only the other chunks. The node checks each chunk it
  receives against its id, checks again that each skipped chunk is held at the
  write quorum, then writes the name entry as an ordinary put does.

The client's whole-file hash for the skipped chunks is taken on trust: the
chunks are verified by id, and every get checks the whole file against that
hash, so a client that lies only damages its own file.
"""

from __future__ import annotations

import logging
from typing import AsyncIterable, Awaitable, Callable

import trio

from p2pfs import errors, net, wire
from p2pfs.access import Operation
from p2pfs.net.access import authorize
from p2pfs.replication import messages as dm
from p2pfs.replication.coordinator import ChunkWrites, Coordinator
from p2pfs.replication.errors import ReplicaError
from p2pfs.replication.handlers import HAS_CHUNKS_MAX
from p2pfs.replication.local import Offload
from p2pfs.replication.quorum import QuorumError, quorum_size
from p2pfs.replication.replicas import Replicas
from p2pfs.replication.view import RingView
from p2pfs.storage import Manifest, ManifestError, NameEntry, chunk_id_of

log = logging.getLogger(__name__)

ExistingFile = Callable[[str], Awaitable[NameEntry]]


class Resumable:
    """The routes of resumable gets and puts, over the coordinator of one node."""

    def __init__(self, *, coordinator: Coordinator, view: RingView, replicas: Replicas, offload: Offload,
                 existing_file: ExistingFile) -> None:
        self._coordinator = coordinator
        self._view = view
        self._replicas = replicas
        self._offload = offload
        self._existing_file = existing_file

    def routes(self) -> dict[type, Callable]:
        return {dm.GetFileFrom: self.on_get_from, dm.HeldChunks: self.on_held_chunks,
                dm.PutFileKnown: self.on_put_known}

    async def holders(self, chunk_ids: tuple[bytes, ...]) -> list[int]:
        """How many of each chunk's ``rf`` preferred nodes hold it (unreachable ones count as not)."""
        rf = self._coordinator.config.rf
        ring = self._view.ring()
        down = self._view.unavailable()
        wanted: dict[str, list[int]] = {}
        for index, chunk_id in enumerate(chunk_ids):
            for node_id in ring.preference_list(chunk_id, rf):
                if node_id not in down:
                    wanted.setdefault(node_id, []).append(index)
        counts = [0] * len(chunk_ids)

        async def ask(node_id: str, indexes: list[int]) -> None:
            replica = self._replicas(node_id)
            for start in range(0, len(indexes), HAS_CHUNKS_MAX):
                batch = indexes[start : start + HAS_CHUNKS_MAX]
                try:
                    present = await replica.has_chunks(tuple(chunk_ids[i] for i in batch))
                except ReplicaError as exc:
                    log.info("asking %s which chunks it holds failed: %s", node_id[:12], exc)
                    return
                for index, here in zip(batch, present):
                    counts[index] += bool(here)

        async with trio.open_nursery() as nursery:
            for node_id, indexes in wanted.items():
                nursery.start_soon(ask, node_id, indexes)
        return counts

    async def on_held_chunks(self, request: net.IncomingRequest) -> dm.HeldChunksReply:
        authorize(request, Operation.GET)  # says which contents the cluster holds: a read
        # Full replication: every preferred node (rf of them, fewer in a smaller cluster).
        replicas = quorum_size(self._coordinator.config.rf, len(self._view.ring()))
        counts = await self.holders(request.msg.chunk_ids)
        return dm.HeldChunksReply(tuple(count >= replicas for count in counts),
                                  self._coordinator.config.chunk_size_bytes)

    async def on_get_from(self, request: net.IncomingRequest) -> net.Reply:
        msg = request.msg
        authorize(request, Operation.GET, msg.name)
        entry = await self._existing_file(msg.name)
        manifest = entry.manifest
        same = msg.file_hash == manifest.file_hash and msg.first_chunk <= len(manifest.chunks)
        first_chunk = msg.first_chunk if same else 0
        coordinator = self._coordinator

        async def body(send: Callable[[bytes], Awaitable[None]]) -> None:
            try:
                await coordinator.stream_file(manifest, first_chunk, send)
            except QuorumError as exc:
                raise net.RemoteError(wire.ErrorCode.UNAVAILABLE, str(exc)) from None

        header = dm.GetFileFromReply(msg.name, manifest.encode(), entry.version.wall_ms,
                                     entry.version.logical, first_chunk)
        return net.Reply(header, body)

    async def on_put_known(self, request: net.IncomingRequest) -> dm.PutFileReply:
        msg = request.msg
        client = authorize(request, Operation.PUT, msg.name)
        if request.body is None:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, "a put carries the chunks to store as its body")
        try:
            given = Manifest.decode(msg.manifest)
        except ManifestError as exc:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, f"bad manifest: {exc}") from None
        chunk_size_bytes = self._coordinator.config.chunk_size_bytes
        if given.chunk_size_bytes != chunk_size_bytes:  # the same content is stored one way only
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, f"this cluster cuts files in chunks of "
                                  f"{chunk_size_bytes} bytes, not {given.chunk_size_bytes}")
        try:
            entry = await self.put_known(msg.name, given, msg.held, request.body, client=client)
        except QuorumError as exc:
            raise net.RemoteError(wire.ErrorCode.UNAVAILABLE, f"put {msg.name!r} failed: {exc}") from None
        manifest = entry.manifest
        return dm.PutFileReply(msg.name, manifest.size_bytes, manifest.file_hash, entry.version.wall_ms,
                               entry.version.logical, len(manifest.chunks))

    async def put_known(self, name: str, given: Manifest, held: bytes,
                        body: AsyncIterable[bytes], *, client: str = "") -> NameEntry:
        """Store the chunks the body carries, check the skipped ones, then write the name for ``client``."""
        coordinator = self._coordinator
        skipped = tuple(ref.chunk_id for i, ref in enumerate(given.chunks) if dm.is_held(held, i))
        w = quorum_size(coordinator.config.w, len(self._view.ring()))
        for chunk_id, count in zip(skipped, await self.holders(skipped)):
            if count < w:
                raise net.RemoteError(
                    wire.ErrorCode.UNAVAILABLE,
                    f"chunk {chunk_id.hex()[:16]} is held by {count} of its nodes, fewer than the write "
                    f"quorum {w}: send the put again whole",
                )
        inline = b""
        # Stored in the name entry on the same terms as Coordinator.put: shorter than a chunk, and small.
        if (len(given.chunks) == 1 and not skipped and given.size_bytes < given.chunk_size_bytes
                and given.size_bytes <= coordinator.config.inline_file_bytes_max):
            inline = await self._read_inline(given, body)
        else:
            await self._store_sent(given, held, body)
        wall_ms = coordinator.clock.wall_ms()
        if inline:
            manifest = Manifest((), given.size_bytes, given.file_hash, wall_ms, given.chunk_size_bytes, inline)
        else:
            manifest = Manifest(given.chunks, given.size_bytes, given.file_hash, wall_ms, given.chunk_size_bytes)
        entry = await coordinator.write_version(name, manifest, client)
        log.info("put %r: %d bytes in %d chunks, %d already held, for client %s", name, manifest.size_bytes,
                 len(manifest.chunks), len(skipped), client or "(none)")
        return entry

    @staticmethod
    async def _read_inline(given: Manifest, body: AsyncIterable[bytes]) -> bytes:
        """The one small chunk the body carries, checked against its id and the file hash."""
        data = bytearray()
        async for piece in body:
            data += piece
            if len(data) > given.size_bytes:
                raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, "the body carries more than the manifest lists")
        data = bytes(data)
        if chunk_id_of(data) != given.chunks[0].chunk_id or given.file_hash != given.chunks[0].chunk_id:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, "the body does not match the manifest")
        return data

    async def _store_sent(self, given: Manifest, held: bytes, body: AsyncIterable[bytes]) -> None:
        """Write each chunk the body carries at quorum, ``put_window_chunks`` at a time.

        Errors are raised past the nursery, so that the route sees them, not a group around them.
        """
        refused: list[str] = []
        # The client's stream failing is raised past the nursery, as in Coordinator.put.
        stream_error: errors.P2pfsError | None = None
        pieces = body.__aiter__()
        buffer = bytearray()

        async def take(size_bytes: int) -> bytes | None:
            while len(buffer) < size_bytes:
                piece = await anext(pieces, None)
                if piece is None:
                    return None
                if not buffer and len(piece) == size_bytes and isinstance(piece, bytes):
                    return piece  # the client sends one piece per chunk: no copy through the buffer
                buffer.extend(piece)
            data = bytes(memoryview(buffer)[:size_bytes])
            del buffer[:size_bytes]
            return data

        async with trio.open_nursery() as nursery:
            writes = ChunkWrites(self._coordinator, nursery)
            for index, ref in enumerate(given.chunks):
                if dm.is_held(held, index):
                    continue
                try:
                    data = await take(ref.size_bytes)
                except errors.P2pfsError as exc:
                    stream_error = exc
                    nursery.cancel_scope.cancel()
                    break
                if data is None:
                    refused.append("the body ended before the last chunk it should carry")
                elif await self._offload(chunk_id_of, data) != ref.chunk_id:
                    refused.append(f"chunk {index} does not match its id in the manifest")
                if refused:
                    nursery.cancel_scope.cancel()
                    break
                await writes.start(index, ref.chunk_id, data)
            else:
                try:
                    if buffer or await anext(pieces, None) is not None:
                        refused.append("the body carries more than the manifest lists")
                except errors.P2pfsError as exc:
                    stream_error = exc
        if refused:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, refused[0])
        if writes.failures:
            raise writes.failures[0]
        if stream_error is not None:
            raise stream_error
