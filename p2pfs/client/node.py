"""A connection to one node over mutual TLS, and the errors it raises.

``p2pfs.client.failover`` runs operations through several of these in turn; the
CLI is a thin shell over that. Every call has a deadline; network and
remote failures become the classes of ``p2pfs.errors`` (``Unavailable``,
``NotFound``, ``AuthError``, ...) with a message a person can act on, so a
script using the library can catch what it can handle and gets the same clear
messages as a person at the terminal. Only the CLI turns them into exit codes.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, BinaryIO, Callable

import trio

from p2pfs import errors, net, wire
from p2pfs.address import Address
from p2pfs.client.deadlines import CLUSTER_REQUEST_TIMEOUT_S, FSCK_TIMEOUT_S, PUT_COMMIT_TIMEOUT_S, REQUEST_TIMEOUT_S
from p2pfs.client.faults import NodeUnreachable, check_client_identity, library_errors
from p2pfs.identity import Identity
from p2pfs.node import messages as m
from p2pfs.node import trust_messages as tm
from p2pfs.replication import client_messages as cm
from p2pfs.replication import messages as dm

# Bytes read from a local file per step: large reads keep per-call overhead low.
READ_BYTES = 1024 * 1024
# A put whose source is announced at most this long is read, and a get whose file is at most
# this long is written, on the event loop rather than in a worker thread: copying 64 KiB from
# a file or a buffer takes microseconds, while a thread hop cost a 4 KiB put or get about
# 0.1 ms of CPU each way (docs/BENCHMARKS.md, "Small files: CPU per operation"). Larger files
# keep the hop, so that a slow disk or pipe never holds up the connection's other requests.
SMALL_FILE_BYTES_MAX = 64 * 1024
# Fsck requests one check may take: a node answers each within a minute (FsckPending while it
# checks), so 720 are about 12 hours, past any cluster this client has checked (a million
# names took about an hour on a loaded machine).
FSCK_REQUESTS_MAX = 720

Progress = Callable[[int], None]

__all__ = [
    "CLUSTER_REQUEST_TIMEOUT_S", "FSCK_TIMEOUT_S", "PUT_COMMIT_TIMEOUT_S", "READ_BYTES", "REQUEST_TIMEOUT_S",
    "SMALL_FILE_BYTES_MAX", "Client", "NodeUnreachable", "Progress", "library_errors",
]


def _only_leaf(group: BaseExceptionGroup) -> BaseException | None:
    """The single exception inside (possibly nested) groups, or None if there are several."""
    while len(group.exceptions) == 1 and isinstance(group.exceptions[0], BaseExceptionGroup):
        group = group.exceptions[0]
    if len(group.exceptions) == 1:
        return group.exceptions[0]
    return None


class Client:
    """A connection to one node. Use ``async with Client.connect(identity, address) as c``."""

    def __init__(self, conn: net.Connection, node: Address) -> None:
        self.conn = conn
        self.node = node

    @property
    def speaks_small_files(self) -> bool:
        """Whether the node takes a small put and answers a small get in one message
        (``client_messages.PutSmallFile``, ``GetSmallFile``): it said so in the TLS handshake."""
        return wire.alpn_speaks(self.conn.alpn_protocol, wire.ALPN_SMALL_FILES)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, identity: Identity, node: Address) -> AsyncIterator["Client"]:
        check_client_identity(identity.role.value, identity.directory)
        with library_errors(node):
            try:
                async with net.client_connection(identity, node) as conn:
                    yield cls(conn, node)
            except BaseExceptionGroup as group:
                # The connection's reader runs in a nursery beside the caller's block, so
                # what the block raises arrives wrapped in a group; a lone error is raised
                # as itself, so that callers catch P2pfsError, not groups.
                leaf = _only_leaf(group)
                if leaf is None or not isinstance(leaf, Exception):
                    raise
                # Keep the leaf's own context (the network error it was translated from),
                # which raising it here would replace with the group.
                context = leaf.__context__
                try:
                    raise leaf
                finally:
                    leaf.__context__ = context

    async def _call(self, msg: wire.Message, expect: type, timeout_s: float = REQUEST_TIMEOUT_S,
                    body: AsyncIterator[bytes] | None = None):
        with library_errors(self.node):
            reply = await self.conn.request(msg, timeout_s=timeout_s, body=body)
        if not isinstance(reply, expect):
            raise errors.PeerFault(f"node {self.node} answered {type(reply).__name__}, expected {expect.__name__}")
        return reply

    async def status(self) -> m.StatusReply:
        return await self._call(m.StatusRequest(), m.StatusReply)

    async def members(self) -> list[m.MemberInfo]:
        reply = await self._call(m.MembersRequest(), m.MembersReply)
        return list(reply.members)

    async def put(self, source: BinaryIO, name: str, size_bytes: int = -1,
                  progress: Progress = lambda n: None) -> dm.PutFileReply:
        """Stream ``source`` to the node under ``name``. ``size_bytes`` -1 if unknown.

        A source announced at most ``SMALL_FILE_BYTES_MAX`` long is read on the event loop
        until it ends or more than announced has come (the node then refuses the put, as it
        refuses any size mismatch). One that ended goes in the request itself
        (``PutSmallFile``) when the node speaks it; anything else is streamed as a body.
        """
        head: list[bytes] = []  # what was read on the event loop
        read_bytes = 0
        small = 0 <= size_bytes <= SMALL_FILE_BYTES_MAX
        if small:
            while read_bytes <= size_bytes and (data := source.read(READ_BYTES)):
                head.append(data)
                read_bytes += len(data)
        ended = small and read_bytes <= size_bytes  # else more than announced came before the end
        if ended and read_bytes <= cm.SMALL_FILE_BYTES_MAX and self.speaks_small_files:
            reply = await self._call(cm.PutSmallFile(name, size_bytes, b"".join(head)), dm.PutFileReply,
                                     timeout_s=PUT_COMMIT_TIMEOUT_S)
            progress(read_bytes)
            return reply

        async def body() -> AsyncIterator[bytes]:
            for data in head:
                yield data
                progress(len(data))
            if ended:
                return
            while data := await trio.to_thread.run_sync(source.read, READ_BYTES):
                yield data
                progress(len(data))

        return await self._call(dm.PutFile(name, size_bytes), dm.PutFileReply,
                                timeout_s=PUT_COMMIT_TIMEOUT_S, body=body())

    async def get(self, name: str, sink: BinaryIO, progress: Progress = lambda n: None,
                  on_size: Callable[[int], None] = lambda size_bytes: None) -> dm.GetFileReply:
        """Stream a file into ``sink``; raise unless every byte arrived and verified.

        ``on_size`` hears the file's size as soon as the node has found it.
        """
        from p2pfs.net.heap import keep_freed_buffers  # here, as FileHasher: ctypes costs start-up time
        from p2pfs.storage import FileHasher  # here: the storage room costs every other command start-up time

        keep_freed_buffers()  # each received frame a reused buffer, not fresh pages (net.heap)
        hasher = FileHasher()

        def write(data: bytes) -> None:
            sink.write(data)
            hasher.update(data)

        in_message = self.speaks_small_files
        with library_errors(self.node):
            request = cm.GetSmallFile(name) if in_message else dm.GetFile(name)
            async with self.conn.open_request(request, timeout_s=CLUSTER_REQUEST_TIMEOUT_S) as response:
                header = response.msg
                if in_message and isinstance(header, cm.SmallFile) and response.body is None:
                    # The whole file came in the answer, at most cm.SMALL_FILE_BYTES_MAX: written here.
                    on_size(header.size_bytes)
                    if header.content:
                        write(header.content)
                        progress(len(header.content))
                    header = dm.GetFileReply(header.name, header.size_bytes, header.file_hash)
                elif isinstance(header, dm.GetFileReply) and response.body is not None:
                    on_size(header.size_bytes)
                    small = header.size_bytes <= SMALL_FILE_BYTES_MAX
                    async for data in response.body:
                        if small and hasher.size_bytes + len(data) <= SMALL_FILE_BYTES_MAX:
                            write(data)
                        else:
                            await trio.to_thread.run_sync(write, data)
                        progress(len(data))
                else:
                    raise errors.PeerFault(f"node {self.node} answered a get with {type(header).__name__}")
        if hasher.size_bytes != header.size_bytes or hasher.digest() != header.file_hash:
            raise errors.PeerFault(
                f"{name!r} arrived damaged ({hasher.size_bytes} of {header.size_bytes} bytes, "
                "hash mismatch); nothing was kept"
            )
        return header

    async def ls(self, prefix: str = "", after: str = "", limit: int = dm.FILES_PER_LIST_MAX) -> dm.ListFilesReply:
        """One page of at most ``limit`` files with ``prefix``, after the name ``after``."""
        return await self._call(dm.ListFiles(prefix, after, limit), dm.ListFilesReply,
                                timeout_s=CLUSTER_REQUEST_TIMEOUT_S)

    async def rm(self, name: str) -> dm.RemoveFileReply:
        return await self._call(dm.RemoveFile(name), dm.RemoveFileReply, timeout_s=CLUSTER_REQUEST_TIMEOUT_S)

    async def fsck(self) -> dm.FsckReply:
        """The node checks as a job and answers FsckPending while it runs (p2pfs/replication/fsck.py):
        each request ends within its deadline, and the next one joins the same job."""
        for _ in range(FSCK_REQUESTS_MAX):
            reply = await self._call(dm.Fsck(), wire.Message, timeout_s=FSCK_TIMEOUT_S)
            if isinstance(reply, dm.FsckReply):
                return reply
            if not isinstance(reply, dm.FsckPending):
                raise errors.PeerFault(f"node {self.node} answered {type(reply).__name__} to fsck")
        raise errors.Unavailable(f"node {self.node} did not finish its check within {FSCK_REQUESTS_MAX} requests")

    async def leave(self) -> m.LeaveReply:
        return await self._call(m.LeaveRequest(), m.LeaveReply)

    async def push_crl(self, crl_der: bytes) -> tm.CrlPushReply:
        """Hand the node a CRL (admin role); it spreads it through the cluster."""
        return await self._call(tm.CrlPush(crl_der), tm.CrlPushReply)

    async def reload(self) -> tm.ReloadReply:
        """Have the node re-read its certificate, key, trusted CAs and CRL (admin role)."""
        return await self._call(tm.ReloadRequest(), tm.ReloadReply)

    async def stat(self, name: str) -> dm.StatFileReply:
        return await self._call(dm.StatFile(name), dm.StatFileReply, timeout_s=CLUSTER_REQUEST_TIMEOUT_S)

    # -- resumable transfers (p2pfs.client.resume) --------------------------------------

    async def held_chunks(self, chunk_ids: tuple[bytes, ...]) -> dm.HeldChunksReply:
        """Which of ``chunk_ids`` (at most ``dm.HAS_CHUNKS_IDS_MAX``) all their preferred nodes
        hold, and the chunk size the cluster cuts files at."""
        reply = await self._call(dm.HeldChunks(chunk_ids), dm.HeldChunksReply, timeout_s=CLUSTER_REQUEST_TIMEOUT_S)
        if len(reply.held) != len(chunk_ids):
            raise errors.PeerFault(f"node {self.node} answered for {len(reply.held)} of {len(chunk_ids)} chunks")
        return reply

    async def put_known(self, name: str, manifest: bytes, held: bytes,
                        body: AsyncIterator[bytes]) -> dm.PutFileReply:
        """A put of a file cut here: ``body`` carries the chunks not marked in ``held``."""
        return await self._call(dm.PutFileKnown(name, manifest, held), dm.PutFileReply,
                                timeout_s=PUT_COMMIT_TIMEOUT_S, body=body)

    @contextlib.asynccontextmanager
    async def get_from(self, name: str, file_hash: bytes,
                       first_chunk: int) -> AsyncIterator[tuple[dm.GetFileFromReply, AsyncIterator[bytes | bytearray]]]:
        """A resumable get's header and body (chunks from ``header.first_chunk`` on)."""
        from p2pfs.net.heap import keep_freed_buffers  # here: ctypes costs other commands start-up time

        keep_freed_buffers()  # each received frame a reused buffer, not fresh pages (net.heap)
        with library_errors(self.node):
            async with self.conn.open_request(dm.GetFileFrom(name, file_hash, first_chunk),
                                              timeout_s=CLUSTER_REQUEST_TIMEOUT_S) as response:
                header = response.msg
                if not isinstance(header, dm.GetFileFromReply) or response.body is None:
                    raise errors.PeerFault(f"node {self.node} answered a get with {type(header).__name__}")
                # Each piece the buffer it was decrypted into: the caller copies it into its output.
                yield header, response.body.buffers()
