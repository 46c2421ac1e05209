"""Replicas behind one async interface, whether this node or a peer; paged collection from many.

``Replicas(node_id)`` gives the ``Replica`` for any node: ``LocalReplica`` for
this one, ``RemoteReplica`` (a request with the replica deadline) for the
others. Either fails with a ``ReplicaError``; a peer's answer that does not
parse is a ``BadReply`` (``errors.PeerFault``), so a malformed reply costs one
exchange and never the node.

``collect_names`` and ``collect_chunks`` read every page of what a set of
nodes holds, all nodes at once.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Iterable, Protocol, TypeVar

import trio

from p2pfs import net, wire
from p2pfs.address import Address
from p2pfs.ids import short_id
from p2pfs.replication import messages as dm
from p2pfs.replication.errors import BadReply, ReplicaDown, ReplicaError, ReplicaLacks, ReplicaRefused
from p2pfs.replication.healing import bucket_of, split_ids
from p2pfs.replication.local import LocalReplica, Offload
from p2pfs.replication.placement import name_key
from p2pfs.replication.quorum_chain import message_timeout_ms
from p2pfs.replication.view import RingView
from p2pfs.storage import ManifestError, NameEntry, Timestamp, chunk_id_of
from p2pfs.wire import ErrorCode

log = logging.getLogger(__name__)

# Names one ListNames answer carries; a listing pages through a node's index.
LIST_PAGE_NAMES = 1000
# Chunk ids in one ListChunks page, and in one SyncChunks answer (32 bytes each: 2 MiB).
IDS_PER_MESSAGE_MAX = 65536
# Pages read from one node in one collection: 10^6 pages of names is 10^9 names,
# far past any node's index; a peer that pages on forever is cut off here.
PAGES_PER_NODE_MAX = 1_000_000


class Replica(Protocol):
    node_id: str

    async def store_chunk(self, chunk_id: bytes, data: bytes, hint_for: str = "", *, hashed: bool = False) -> None:
        """Store a chunk. ``hashed``: this process checked ``chunk_id`` against ``data``, which
        spares this node's own store a second hash; a peer always hashes what it receives."""
    async def fetch_chunk(self, chunk_id: bytes) -> bytes: ...
    async def has_chunks(self, chunk_ids: tuple[bytes, ...]) -> tuple[bool, ...]: ...
    async def put_name(self, entry: NameEntry, hint_for: str = "") -> bool: ...
    async def get_name(self, name: str) -> NameEntry | None: ...
    async def list_names(self, prefix: str, start_after: str, limit: int) -> tuple[list[NameEntry], bool]: ...
    async def list_chunks(self, start_after: bytes, limit: int) -> tuple[list[bytes], list[bytes], bool]: ...


M = TypeVar("M", bound=wire.Message)


class RemoteReplica:
    """A peer as a replica: each call one request, bounded by ``replica_timeout_s``."""

    def __init__(self, node_id: str, endpoint: net.Endpoint, view: RingView, offload: Offload) -> None:
        self.node_id = node_id
        self._endpoint = endpoint
        self._view = view
        self._offload = offload

    def _address(self) -> Address:
        member = self._view.members_by_id().get(self.node_id)
        if member is None:
            raise ReplicaDown(f"node {short_id(self.node_id)} is not a known member")
        return member.address

    async def _call(self, msg: wire.Message, reply_type: type[M], timeout_s: float | None = None) -> M:
        """``timeout_s``: the wait for the answer, ``replica_timeout_s`` unless given (a chain's hop)."""
        if timeout_s is None:
            timeout_s = self._view.config.replica_timeout_s
        try:
            reply = await self._endpoint.request(self._address(), msg, timeout_s=timeout_s, node_id=self.node_id)
        except net.NetError as exc:
            raise ReplicaDown(str(exc) or type(exc).__name__) from exc
        except net.RemoteError as exc:
            raise ReplicaRefused(exc.code, exc.text) from exc
        except (wire.WireError, net.ProtocolViolation) as exc:
            raise BadReply(f"malformed answer to {type(msg).__name__}: {exc}") from exc
        if not isinstance(reply, reply_type):
            raise BadReply(f"answered {type(msg).__name__} with {type(reply).__name__}")
        return reply

    async def store_chunk(
        self, chunk_id: bytes, data: bytes, hint_for: str = "", *, hashed: bool = False, timeout_s: float | None = None
    ) -> None:
        # ``hashed`` does not cross the wire: the peer verifies every chunk it receives.
        await self._call(dm.StoreChunk(chunk_id, data, hint_for), dm.StoreChunkReply, timeout_s)

    async def store_chunk_chain(
        self, chunk_id: bytes, data: bytes, hint_for: str, rest: tuple[dm.ChainLink, ...], timeout_s: float
    ) -> list[tuple[str, bool, str]]:
        """Store a chunk here and down ``rest`` (``quorum_chain.py``); the outcomes the peer reports, in
        chain order (its own first), waiting ``timeout_s`` while the peer has a margin less."""
        msg = dm.StoreChunkChain(chunk_id, data, hint_for, rest, message_timeout_ms(timeout_s))
        reply = await self._call(msg, dm.StoreChunkChainReply, timeout_s)
        return [(o.node_id, o.stored, o.reason) for o in reply.outcomes]

    async def fetch_chunk(self, chunk_id: bytes) -> bytes:
        try:
            reply = await self._call(dm.FetchChunk(chunk_id), dm.ChunkData)
        except ReplicaRefused as exc:
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.CORRUPT):
                raise ReplicaLacks(str(exc)) from exc
            raise
        if await self._offload(chunk_id_of, reply.data) != chunk_id:
            raise ReplicaLacks("sent bytes that do not match the id")
        return reply.data

    async def has_chunks(self, chunk_ids: tuple[bytes, ...]) -> tuple[bool, ...]:
        present = (await self._call(dm.HasChunks(chunk_ids), dm.HasChunksReply)).present
        if len(present) != len(chunk_ids):
            raise BadReply(f"answered {len(present)} of {len(chunk_ids)} ids")
        return present

    async def put_name(self, entry: NameEntry, hint_for: str = "") -> bool:
        return (await self._call(dm.PutName(entry.encode(), hint_for), dm.PutNameReply)).applied

    async def get_name(self, name: str) -> NameEntry | None:
        reply = await self._call(dm.GetName(name), dm.GetNameReply)
        if reply.entry is None:
            return None
        entry = _decode_entry(reply.entry)
        if entry.name != name:
            raise BadReply("answered with another name's entry")
        return entry

    async def list_names(self, prefix: str, start_after: str, limit: int) -> tuple[list[NameEntry], bool]:
        reply = await self._call(dm.ListNames(prefix, start_after, limit), dm.ListNamesReply)
        return [_decode_entry(raw) for raw in reply.entries], reply.more

    async def list_chunks(self, start_after: bytes, limit: int) -> tuple[list[bytes], list[bytes], bool]:
        reply = await self._call(dm.ListChunks(start_after, limit), dm.ListChunksReply)
        return _split(reply.ids), _split(reply.corrupt), reply.more

    # -- only ever asked of a peer ---------------------------------------------

    async def sync_chunks(self, digests: tuple[dm.BucketDigest, ...]) -> list[tuple[int, list[bytes]]]:
        """The peer's ids in each bucket whose digest differs from ours."""
        reply = await self._call(dm.SyncChunks(digests), dm.SyncChunksReply)
        return [(bucket.bucket, _split(bucket.ids)) for bucket in reply.buckets]

    async def sync_names(
        self, digests: tuple[dm.BucketDigest, ...]
    ) -> tuple[list[int], dict[str, tuple[Timestamp, str]]]:
        """The buckets whose digests differ, and the version the peer holds of each name in them.

        Names the answer lists outside those buckets are dropped: an honest peer sends none,
        and each would cost a fetch.
        """
        reply = await self._call(dm.SyncNames(digests), dm.SyncNamesReply)
        try:
            theirs = {s.name: (Timestamp(s.wall_ms, s.logical), s.writer) for s in reply.names}
        except ValueError as exc:
            raise BadReply(f"bad name version: {exc}") from exc
        differing = set(reply.differing)
        return list(reply.differing), {name: key for name, key in theirs.items()
                                       if bucket_of(name_key(name)) in differing}

    async def leaving(self, for_s: float) -> None:
        await self._call(dm.Leaving(for_s), dm.LeavingReply)


def _decode_entry(raw: bytes) -> NameEntry:
    try:
        return NameEntry.decode(raw)
    except ManifestError as exc:
        raise BadReply(f"bad name entry: {exc}") from exc


def _split(ids: bytes) -> list[bytes]:
    try:
        return list(split_ids(ids))
    except ValueError as exc:
        raise BadReply(str(exc)) from exc


class Replicas:
    """The replica of any node: this one's own store, or a peer over the network."""

    def __init__(self, local: LocalReplica, endpoint: net.Endpoint, view: RingView, offload: Offload) -> None:
        self.local = local
        self._endpoint = endpoint
        self._view = view
        self._offload = offload

    def __call__(self, node_id: str) -> Replica:
        if node_id == self.local.node_id:
            return self.local
        return self.remote(node_id)

    def remote(self, node_id: str) -> RemoteReplica:
        assert node_id != self.local.node_id, "asked a peer-only question of this node"
        return RemoteReplica(node_id, self._endpoint, self._view, self._offload)


Page = tuple[list, object | None]  # the items, and where the next page starts (None: done)


async def _collect_pages(
    replicas: Replicas,
    node_ids: Iterable[str],
    read_page: Callable[[Replica, object | None], Awaitable[Page]],
    on_page: Callable[[str, list], bool],
) -> list[str]:
    """Read every page from every node at once; ``on_page`` returns False to stop them all.

    Returns the nodes that did not answer in full (unreachable, or a bad answer).
    """
    unreachable: list[str] = []

    async def collect(node_id: str, nursery: trio.Nursery) -> None:
        replica = replicas(node_id)
        cursor = None
        for _ in range(PAGES_PER_NODE_MAX):
            try:
                items, after = await read_page(replica, cursor)
                if after is not None and cursor is not None and not after > cursor:
                    raise BadReply("a page that does not move forward")
            except ReplicaError as exc:
                log.info("collecting from %s failed: %s", short_id(node_id), exc)
                unreachable.append(node_id)
                return
            if not on_page(node_id, items):
                nursery.cancel_scope.cancel()
                return
            if after is None:
                return
            cursor = after
        unreachable.append(node_id)

    async with trio.open_nursery() as nursery:
        for node_id in node_ids:
            nursery.start_soon(collect, node_id, nursery)
    return unreachable


async def collect_names(
    replicas: Replicas, node_ids: Iterable[str], prefix: str = "", names_max: int | None = None
) -> tuple[dict[str, NameEntry], dict[str, dict[str, tuple]], list[str], bool]:
    """Every entry with ``prefix`` held by the given nodes.

    Returns the newest entry of each name, which version each node holds of
    each name, the nodes that did not answer, and whether it stopped past
    ``names_max`` names (then the rest is incomplete).
    """
    merged: dict[str, NameEntry] = {}
    holders: dict[str, dict[str, tuple]] = {}
    too_many = False

    async def read_page(replica: Replica, start_after) -> Page:
        entries, more = await replica.list_names(prefix, start_after or "", LIST_PAGE_NAMES)
        return entries, (entries[-1].name if more and entries else None)

    def on_page(node_id: str, entries: list[NameEntry]) -> bool:
        nonlocal too_many
        for entry in entries:
            holders.setdefault(entry.name, {})[node_id] = entry.key
            held = merged.get(entry.name)
            if held is None or entry.supersedes(held):
                merged[entry.name] = entry
        too_many = names_max is not None and len(merged) > names_max
        return not too_many

    unreachable = await _collect_pages(replicas, node_ids, read_page, on_page)
    return merged, holders, unreachable, too_many


async def collect_chunks(
    replicas: Replicas, node_ids: Iterable[str]
) -> tuple[dict[str, set[bytes]], set[bytes], list[str]]:
    """Each node's chunk ids (nodes that answered in full), the ids reported corrupt, who did not."""
    partial: dict[str, set[bytes]] = {}
    corrupt: set[bytes] = set()

    async def read_page(replica: Replica, start_after) -> Page:
        ids, bad, more = await replica.list_chunks(start_after or b"", IDS_PER_MESSAGE_MAX)
        corrupt.update(bad)
        return ids, (ids[-1] if more and ids else None)

    def on_page(node_id: str, ids: list[bytes]) -> bool:
        partial.setdefault(node_id, set()).update(ids)
        return True

    unreachable = await _collect_pages(replicas, node_ids, read_page, on_page)
    held = {n: ids for n, ids in partial.items() if n not in unreachable}
    return held, corrupt, unreachable
