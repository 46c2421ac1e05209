"""The Python client library: speak to one node over mutual TLS.

The CLI is a thin shell over this. Every call has a deadline; network and
remote failures become ``UserError``s with the CLI's exit codes, so a script
using the library gets the same clear messages as a person at the terminal.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, BinaryIO, Callable

import trio

from p2pfs import net, wire
from p2pfs.address import Address
from p2pfs.errors import ExitCode, UserError
from p2pfs.identity import Identity
from p2pfs.node import messages as m
from p2pfs.replication import messages as dm
from p2pfs.storage import FileHasher
from p2pfs.wire import ErrorCode

# Deadline for small requests (status, members, ...).
REQUEST_TIMEOUT_S = 10.0
# Deadline for a node's answer once a put's last byte is sent: the chunks still in
# flight and the name entry must reach their quorums.
PUT_COMMIT_TIMEOUT_S = 120.0
# Deadline for the first answer of a get, ls, rm or stat: a quorum read, or asking every node.
CLUSTER_REQUEST_TIMEOUT_S = 60.0
# Deadline for fsck, which lists every node's names and chunks.
FSCK_TIMEOUT_S = 300.0
# Bytes read from a local file per step: large reads keep per-call overhead low.
READ_BYTES = 1024 * 1024

Progress = Callable[[int], None]

_EXIT_FOR_ERROR = {
    ErrorCode.NOT_FOUND: ExitCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    ErrorCode.TIMEOUT: ExitCode.UNAVAILABLE,
    ErrorCode.BAD_REQUEST: ExitCode.BAD_INPUT,
    ErrorCode.FORBIDDEN: ExitCode.AUTH,
    ErrorCode.STORAGE_FULL: ExitCode.STORAGE_FULL,
}


@contextlib.contextmanager
def user_errors(node: Address):
    """Turn network and remote errors into UserErrors with the right exit code."""
    try:
        yield
    except net.HandshakeError as exc:
        raise UserError(f"cannot authenticate with {node}: {exc}", ExitCode.AUTH) from None
    except net.ConnectError as exc:
        raise UserError(f"cannot reach node {node}: {exc}", ExitCode.UNAVAILABLE) from None
    except net.RequestTimeout as exc:
        raise UserError(f"node {node} did not answer in time: {exc}", ExitCode.UNAVAILABLE) from None
    except net.ConnectionClosed as exc:
        raise UserError(f"connection to {node} lost: {exc}", ExitCode.UNAVAILABLE) from None
    except net.RemoteError as exc:
        raise UserError(exc.text, _EXIT_FOR_ERROR.get(exc.code, ExitCode.FAILURE)) from None


class Client:
    """A connection to one node. Use ``async with Client.connect(identity, address) as c``."""

    def __init__(self, conn: net.Connection, node: Address) -> None:
        self.conn = conn
        self.node = node

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, identity: Identity, node: Address) -> AsyncIterator["Client"]:
        with user_errors(node):
            async with net.client_connection(identity, node) as conn:
                yield cls(conn, node)

    async def _call(self, msg: wire.Message, expect: type, timeout_s: float = REQUEST_TIMEOUT_S,
                    body: AsyncIterator[bytes] | None = None):
        with user_errors(self.node):
            reply = await self.conn.request(msg, timeout_s=timeout_s, body=body)
        if not isinstance(reply, expect):
            raise UserError(f"node {self.node} answered {type(reply).__name__}, expected {expect.__name__}")
        return reply

    async def status(self) -> m.StatusReply:
        return await self._call(m.StatusRequest(), m.StatusReply)

    async def members(self) -> list[m.MemberInfo]:
        reply = await self._call(m.MembersRequest(), m.MembersReply)
        return list(reply.members)

    async def put(self, source: BinaryIO, name: str, size_bytes: int = -1,
                  progress: Progress = lambda n: None) -> dm.PutFileReply:
        """Stream ``source`` to the node under ``name``. ``size_bytes`` -1 if unknown."""

        async def body() -> AsyncIterator[bytes]:
            while data := await trio.to_thread.run_sync(source.read, READ_BYTES):
                yield data
                progress(len(data))

        return await self._call(dm.PutFile(name, size_bytes), dm.PutFileReply,
                                timeout_s=PUT_COMMIT_TIMEOUT_S, body=body())

    async def get(self, name: str, sink: BinaryIO, progress: Progress = lambda n: None,
                  on_size: Callable[[int], None] = lambda size_bytes: None) -> dm.GetFileReply:
        """Stream a file into ``sink``; raise UserError unless every byte arrived and verified.

        ``on_size`` hears the file's size as soon as the node has found it.
        """
        hasher = FileHasher()

        def write(data: bytes) -> None:
            sink.write(data)
            hasher.update(data)

        with user_errors(self.node):
            async with self.conn.open_request(dm.GetFile(name), timeout_s=CLUSTER_REQUEST_TIMEOUT_S) as response:
                header = response.msg
                if not isinstance(header, dm.GetFileReply) or response.body is None:
                    raise UserError(f"node {self.node} answered a get with {type(header).__name__}")
                on_size(header.size_bytes)
                async for data in response.body:
                    await trio.to_thread.run_sync(write, data)
                    progress(len(data))
        if hasher.size_bytes != header.size_bytes or hasher.digest() != header.file_hash:
            raise UserError(
                f"{name!r} arrived damaged ({hasher.size_bytes} of {header.size_bytes} bytes, "
                "hash mismatch); nothing was kept", ExitCode.FAILURE,
            )
        return header

    async def ls(self, prefix: str = "") -> dm.ListFilesReply:
        return await self._call(dm.ListFiles(prefix), dm.ListFilesReply, timeout_s=CLUSTER_REQUEST_TIMEOUT_S)

    async def rm(self, name: str) -> dm.RemoveFileReply:
        return await self._call(dm.RemoveFile(name), dm.RemoveFileReply, timeout_s=CLUSTER_REQUEST_TIMEOUT_S)

    async def fsck(self) -> dm.FsckReply:
        return await self._call(dm.Fsck(), dm.FsckReply, timeout_s=FSCK_TIMEOUT_S)

    async def leave(self) -> m.LeaveReply:
        return await self._call(m.LeaveRequest(), m.LeaveReply)

    async def stat(self, name: str) -> dm.StatFileReply:
        return await self._call(dm.StatFile(name), dm.StatFileReply, timeout_s=CLUSTER_REQUEST_TIMEOUT_S)


def run(async_fn, *args):
    """Run a client coroutine from synchronous code (the CLI)."""
    return trio.run(async_fn, *args)
