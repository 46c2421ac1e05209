"""Operations through any of several nodes: what is retried elsewhere, and when.

Every node can coordinate every operation, so a node that cannot be reached,
does not finish the handshake, or answers that it could not meet a quorum is no
reason to fail: the operation is tried at the next node. The nodes tried are
the given ones, in order, then those the client remembered from an earlier
answer (``members.py``), at most ``FAILOVER_ATTEMPTS_MAX`` in all, and a new
attempt starts only within ``FAILOVER_WINDOW_S`` of the first.

Whether an attempt may be repeated depends on what it may have done:

- Nothing was sent (``NodeUnreachable``: refused, timed out, no handshake):
  every operation is tried elsewhere.
- Reads (get, ls, stat, members, status, fsck) change nothing: always retried.
- rm writes a tombstone. A second one leaves the name removed whether or not
  the first arrived, exactly as if the one rm had arrived a little later: retried.
- put is sent again when its source can be read again from its start (a
  file, not a pipe): a file's chunks that the first attempt got to the cluster
  are not sent again (``resume.py``), a seekable stream is re-sent whole.
  Whatever the first attempt left, the new attempt becomes the name's newest
  version: at worst the same content is stored twice as two versions. A put
  from a stream already partly consumed cannot be re-sent.
- A get that already wrote bytes is retried only into a sink that can be
  rewound (a file): a pipe would get the first bytes twice. A get to a path
  resumes from the chunks it has verified (``resume.py``).

Any other error (not found, bad input, refused identity, a damaged answer) is
the same at every node and is raised at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, BinaryIO, Callable, Sequence, TypeVar

from p2pfs import errors
from p2pfs.address import Address
from p2pfs.client.attempts import FAILOVER_ATTEMPTS_MAX, FAILOVER_WINDOW_S, Attempts, nodes_to_try  # noqa: F401  (the caps: part of this module's interface)
from p2pfs.client.listing import LS_PAGE_FILES_MAX, check_page_files, listing_pages
from p2pfs.client.members import RememberedMembers, load_members, refresh_due, remember
from p2pfs.client.naming import LocalPath, Name, cluster_name
from p2pfs.client.node import Client, Progress
from p2pfs.clock import Clock, SystemClock
from p2pfs.identity import Identity

T = TypeVar("T")


def _open_local(path: Path) -> tuple[BinaryIO, int]:
    """A local file to put and its size, with errors a person can act on."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise errors.BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise errors.BadInput(f"{path} is a directory; put takes one file") from None
    except OSError as exc:
        raise errors.BadInput(f"{path}: {exc.strerror or exc}") from None
    return f, os.fstat(f.fileno()).st_size


class _Reader:
    """A put's source, counting what was read (and so whether re-sending needs a rewind)."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.read_bytes = 0

    def read(self, size: int) -> bytes:
        data = self.source.read(size)
        self.read_bytes += len(data)
        return data


class _Writer:
    """A get's sink, counting what was written (and so whether retrying needs a rewind)."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.written_bytes = 0

    def write(self, data: bytes) -> None:
        self.sink.write(data)
        self.written_bytes += len(data)


def _start_of(stream: Any) -> int | None:
    """Where a stream is now, if it can be moved back there; None for a pipe."""
    try:
        return stream.tell() if stream.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; set it straight back
    os.umask(mask)
    return mask


class Cluster:
    """The cluster, reached through any of ``nodes``: every operation fails over.

    ``remember_in`` (usually the identity directory) keeps the member list learnt
    from the nodes, so that a later operation can try them too.
    ``last_node`` is the node that served the last successful operation, and
    ``passed_over`` the failures of the nodes tried before it.
    """

    def __init__(self, identity: Identity, nodes: Sequence[Address], *, remember_in: Path | None = None,
                 clock: Clock | None = None, on_attempt: Callable[[Address, Exception | None], None] | None = None
                 ) -> None:
        if not nodes:
            raise errors.BadInput("no node given")
        self.identity = identity
        self.nodes = tuple(nodes)
        self.remember_in = remember_in
        self._clock = clock or SystemClock()
        # Hears each attempt's node and its error (None: it succeeded): a caller that must
        # know what every attempt may have done (the chaos history) learns it here.
        self._on_attempt = on_attempt or (lambda node, error: None)
        self.last_node: Address | None = None
        # The nodes the last successful operation failed at first, each with what happened there.
        self.passed_over: tuple[str, ...] = ()

    async def _run(self, what: str, operation: Callable[[Client], Awaitable[T]],
                   resend: Callable[[], str | None] = lambda: None) -> T:
        """Run ``operation`` at the first node that can; ``resend`` prepares a repeat
        after an attempt that may have sent something, or says why there can be none."""
        remembered = load_members(self.remember_in) if self.remember_in is not None else None
        attempts = Attempts(what, nodes_to_try(self.nodes, remembered.addresses if remembered else ()),
                            self._clock.monotonic_s())
        while (node := attempts.next_node(self._clock.monotonic_s())) is not None:
            try:
                async with Client.connect(self.identity, node) as client:
                    result = await operation(client)
                    await self._refresh(client, remembered)
            except errors.P2pfsError as exc:
                self._on_attempt(node, exc)
                attempts.failed(node, exc, resend)
                continue
            self._on_attempt(node, None)
            self.last_node = node
            self.passed_over = tuple(attempts.failures)
            return result
        raise attempts.exhausted()

    async def _refresh(self, client: Client, remembered: RememberedMembers | None) -> None:
        """Learn the member list from ``client``'s node when the remembered one is missing or stale."""
        if self.remember_in is None or not refresh_due(remembered, now_wall_ms := self._clock.wall_ms()):
            return
        try:
            found = await client.members()
        except (errors.Unavailable, errors.PeerFault):
            return  # a cache: the operation succeeded, and the next one asks again
        remember(self.remember_in, found, now_wall_ms)

    async def status(self):
        return await self._run("ask a node's status", lambda c: c.status())

    async def members(self):
        return await self._run("list the members", lambda c: c.members())

    async def ls(self, prefix: Name = "", *, after: str = "", limit: int = LS_PAGE_FILES_MAX):
        """One page: at most ``limit`` files with ``prefix`` after the name ``after``, in name order.

        The answer's ``next_after`` is where the next page starts ("" at the end);
        ``complete`` says whether every ring range had enough replicas answer
        (docs/CLIENT.md). ``ls_pages`` walks every page.
        """
        prefix = os.fspath(prefix)
        check_page_files(limit)
        return await self._run("list files", lambda c: c.ls(prefix, after, limit))

    async def ls_pages(self, prefix: Name = "", *, after: str = "", limit: int | None = None,
                       page_files: int = LS_PAGE_FILES_MAX) -> AsyncIterator[Any]:
        """Every page of the listing (or of its first ``limit`` files), one request each.

        Only one page is held at a time, here and at the node, so a million names
        stream through in bounded memory. Each page fails over on its own.
        """
        async for page in listing_pages(self.ls, os.fspath(prefix), after, limit, page_files):
            yield page

    async def stat(self, name: Name):
        name = cluster_name(name)
        return await self._run(f"stat {name!r}", lambda c: c.stat(name))

    async def fsck(self):
        return await self._run("check the cluster", lambda c: c.fsck())

    async def rm(self, name: Name):
        name = cluster_name(name)
        return await self._run(f"remove {name!r}", lambda c: c.rm(name))

    async def put(self, source: LocalPath | BinaryIO, name: Name | None = None, size_bytes: int = -1,
                  progress: Progress = lambda n: None):
        """Store a local file (a path) or a binary stream under ``name``.

        A path's name defaults to its file name; a stream needs one, and
        ``size_bytes`` when known (-1 if not). Re-sent at another node only if
        the source can be rewound (see the module's docstring). A path is cut
        into chunks here, and the chunks the cluster already holds are not sent
        (``resume.py``): the answer is then a ``resume.Stored``, which also
        gives ``sent_bytes``.
        """
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            name = cluster_name(path.name if name is None else name)
            file, size_bytes = _open_local(path)
            with file:
                return await self.put_file(file, name, path, progress)
        if name is None:
            raise errors.BadInput("putting a stream needs a name")
        return await self._put_stream(source, cluster_name(name), size_bytes, progress)

    async def _put_stream(self, source: BinaryIO, name: str, size_bytes: int, progress: Progress):
        start = _start_of(source)
        reader = _Reader(source)
        sent = 0

        def counted(count_bytes: int) -> None:
            nonlocal sent
            sent += count_bytes
            progress(count_bytes)

        def rewind() -> str | None:
            nonlocal sent
            if reader.read_bytes and start is None:
                return "its source cannot be read again"
            if start is not None:
                source.seek(start)
            reader.read_bytes = 0
            progress(-sent)  # the failed attempt's bytes will be sent again
            sent = 0
            return None

        return await self._run(f"put {name!r}", lambda c: c.put(reader, name, size_bytes, counted), rewind)

    async def get(self, name: Name, target: LocalPath | BinaryIO, progress: Progress = lambda n: None,
                  on_size: Callable[[int], None] = lambda size_bytes: None):
        """Fetch ``name`` into a local file (a path) or a binary stream, verified against its hash.

        A path is written through a partial file beside it, renamed into place
        only once every byte has arrived and matched (replacing a file that was
        there), so a failed get leaves the path as it was; a get that could not
        finish for want of a node keeps its verified chunks for the next get of
        the same path (``resume.py``), and answers with a ``resume.Fetched``.
        """
        name = cluster_name(name)
        if not isinstance(target, (str, os.PathLike)):
            return await self._get_stream(name, target, progress, on_size)
        return await self.get_file(name, Path(target), progress=progress, on_size=on_size)

    async def _get_stream(self, name: str, sink: BinaryIO, progress: Progress,
                          on_size: Callable[[int], None]):
        start = _start_of(sink)
        writer = _Writer(sink)

        def rewind() -> str | None:
            if writer.written_bytes and start is None:
                return "part of the file was already written to a stream that cannot be rewound"
            if start is not None:
                sink.seek(start)
                sink.truncate()
            progress(-writer.written_bytes)
            writer.written_bytes = 0
            return None

        return await self._run(f"get {name!r}", lambda c: c.get(name, writer, progress, on_size), rewind)

    # -- resumable transfers of local files (resume.py) -------------------------------

    async def put_file(self, file: BinaryIO, name: Name, path: LocalPath, progress: Progress = lambda n: None):
        """Put an open regular ``file`` (read from ``path``), sending only the chunks the
        cluster does not hold already; a ``resume.Stored``. Anything else (a FIFO, a
        device), or a file too large to cut at the default chunk size, is streamed whole."""
        from p2pfs.client.resume import Stored, can_cut, put_path

        import stat

        name = cluster_name(name)
        info = os.fstat(file.fileno())
        size_bytes = info.st_size if stat.S_ISREG(info.st_mode) else -1
        if size_bytes >= 0 and can_cut(size_bytes):
            return await put_path(self._run, Path(path), file, name, progress)
        reply = await self._put_stream(file, name, size_bytes, progress)
        return Stored(reply, reply.size_bytes)

    async def get_file(self, name: Name, target: LocalPath, *, file_mode: int | None = None,
                       may_replace: Callable[[], None] = lambda: None, progress: Progress = lambda n: None,
                       on_size: Callable[[int], None] = lambda size_bytes: None, local_error=None):
        """``get`` to a path, resumable (``resume.get_to_path``): ``file_mode`` defaults to 0666
        less the umask; ``may_replace`` raises if ``target`` may not be replaced after all;
        ``local_error(path, OSError)`` makes the error raised for a local file problem."""
        from p2pfs.client.resume import get_to_path, plain_local_error

        return await get_to_path(
            self._run, cluster_name(name), Path(target),
            file_mode=0o666 & ~_umask() if file_mode is None else file_mode, may_replace=may_replace,
            progress=progress, on_size=on_size, local_error=local_error or plain_local_error,
        )

    # -- directories (tree.py) ------------------------------------------------------------

    async def put_tree(self, directory: LocalPath, prefix: Name | None = None, *,
                       progress: Progress = lambda n: None, on_total=lambda files, size_bytes: None,
                       on_file=lambda outcome: None):
        """Store every regular file under ``directory`` as ``PREFIX/RELATIVE/PATH``
        (``prefix`` defaults to the directory's name); a ``tree.TreeResult``."""
        from p2pfs.client.tree import put_tree

        return await put_tree(self, directory, prefix, progress=progress, on_total=on_total, on_file=on_file)

    async def get_tree(self, prefix: Name, directory: LocalPath, *, force: bool = False,
                       progress: Progress = lambda n: None, on_total=lambda files, size_bytes: None,
                       on_file=lambda outcome: None):
        """Fetch every file named ``PREFIX/...`` into ``directory``, nothing outside it; a ``tree.TreeResult``."""
        from p2pfs.client.tree import get_tree

        return await get_tree(self, prefix, directory, force=force, progress=progress, on_total=on_total,
                              on_file=on_file)
